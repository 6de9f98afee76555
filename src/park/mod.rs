//! The park: auditstream's persistent store, one sled database at `park.path`.
//!
//! When a sink cannot deliver, its batches are *parked* here, durably, so their Kafka offsets
//! can be committed and the other sinks go on at full speed; when the sink recovers, the park
//! is *replayed* in order. The quarantine lives here too.
//!
//! # Trees
//!
//! | tree | key | value |
//! |---|---|---|
//! | `park:<sink>:meta` | seq (u64 BE) | frame(JSON [`ParkedHeader`]): range, counts, parked time, attempts, last error |
//! | `park:<sink>:data` | seq (u64 BE) | frame(records blob, see [`entry`]) |
//! | `counters` | sink name | frame(JSON [`Counts`]): entries, events, bytes |
//! | `quarantine` | seq (u64 BE) | frame(JSON [`quarantine::QuarantineEntry`]) |
//! | `alerts` | sink name | frame(JSON alert incident state), a [`records::Table`] |
//! | `outbox` | seq (u64 BE) | frame(JSON alert message not yet sent everywhere), a [`records::Fifo`] |
//! | `health` | `ready` | the time of the last `/ready` write check |
//! | `integrity:<sink>` | seq (u64 BE) | frame(JSON object written since the sink's last digest), a [`records::Fifo`] |
//!
//! Sequence numbers come from sled's `generate_id`, which only grows (also across restarts),
//! so each sink's trees iterate oldest first: a FIFO per sink. Every value is framed by
//! [`codec`] (version byte, CRC32, payload) and checked on every read; a damaged entry is
//! reported and exported, never silently misread.
//!
//! # Rules
//!
//! 1. **Durable before committed.** An entry counts as parked (and its events' offsets may be
//!    committed) only after [`SinkPark::append`] returns, which flushes the database.
//! 2. **Removed only when released.** [`SinkPark::release`] needs a [`Release`]: either the
//!    [`Receipt`] a sink returned for delivering *that* batch, or the [`export::Exported`]
//!    proof that it was written to `expired_dir` and fsynced. No other code path deletes.
//!    Entries are read with [`SinkPark::head`] and never popped before delivery.
//! 3. **One transaction per change.** An append writes meta, data and the sink's counters in
//!    one sled transaction; a release removes both and decrements the counters in one.
//!    Removals are not flushed: a removal lost in a crash means a batch is delivered twice,
//!    never lost.
//! 4. **Counters, not scans.** Entries, events and bytes per sink are kept in `counters` and
//!    mirrored in memory ([`ParkCounts`]); `len()` is never used at run time. On open they are
//!    checked against a scan of the meta tree and repaired (with a warning) if they differ.
//!
//! # When data leaves
//!
//! Delivered (receipt), or exported: expired after `park.max_age`, dropped to make room when
//! `when_full = "drop_oldest"`, purged by `auditstream parked purge`, or damaged.
//!
//! # One process
//!
//! sled locks its directory: while the daemon runs, another process cannot open the store
//! and says so ([`StoreError::InUse`]).

pub mod codec;
pub mod entry;
pub mod export;
pub mod quarantine;
mod queue;
pub mod records;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use codec::CorruptEntry;
pub use entry::{Parked, ParkedHeader};
pub use queue::{ParkCounts, Release, SinkPark};

/// Problems with the store, typed at the module boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the park store at {path} is in use by another process (a running daemon?); sled allows one process at a time")]
    InUse { path: PathBuf },
    #[error("the park store at {path}: {source}")]
    Sled {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(transparent)]
    Corrupt(#[from] CorruptEntry),
    #[error("encoding an entry: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("a release does not match entry {seq}: {why}")]
    WrongRelease { seq: u64, why: &'static str },
}

/// Persisted counts of one sink's park.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub entries: u64,
    pub events: u64,
    pub bytes: u64,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    quarantine: sled::Tree,
    counters: sled::Tree,
    /// Bytes parked across all sinks (for `park.max_bytes`).
    total_bytes: AtomicU64,
    /// Each sink's counts, once its park is opened.
    parks: Mutex<HashMap<String, Arc<ParkCounts>>>,
    /// Rung whenever an entry leaves any park.
    freed: tokio::sync::Notify,
}

/// The sled database and its trees.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let sled_err = |source| StoreError::Sled {
            path: path.to_path_buf(),
            source,
        };
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::InUse {
                        path: path.to_path_buf(),
                    }
                }
                other => sled_err(other),
            })?;
        let quarantine = db.open_tree("quarantine").map_err(sled_err)?;
        let counters = db.open_tree("counters").map_err(sled_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                db,
                quarantine,
                counters,
                total_bytes: AtomicU64::new(0),
                parks: Mutex::new(HashMap::new()),
                freed: tokio::sync::Notify::new(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn sled_err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.inner.path.clone(),
            source,
        }
    }

    /// The next key: a big-endian sequence number, increasing across restarts.
    fn next_key(&self) -> Result<[u8; 8], StoreError> {
        self.inner
            .db
            .generate_id()
            .map(u64::to_be_bytes)
            .map_err(|e| self.sled_err(e))
    }

    fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.inner.db.open_tree(name).map_err(|e| self.sled_err(e))
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner
            .db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| self.sled_err(e))
    }

    /// Bytes parked across all sinks.
    pub fn total_bytes(&self) -> u64 {
        self.inner.total_bytes.load(Ordering::Relaxed)
    }

    /// The names of sinks that have a park in this store (from earlier runs too).
    pub fn sinks_with_parks(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .db
            .tree_names()
            .iter()
            .filter_map(|n| {
                let n = std::str::from_utf8(n).ok()?;
                n.strip_prefix("park:")?
                    .strip_suffix(":meta")
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }

    /// Opens the park of sink `name`, checking its counters against the store.
    pub fn sink_park(&self, name: &str) -> Result<SinkPark, StoreError> {
        SinkPark::open(self.clone(), name)
    }
}

/// A receipt or export proof for one entry, checked by [`SinkPark::release`].
fn check_release(parked: &Parked, release: &Release) -> Result<(), StoreError> {
    match release {
        Release::Delivered(r) if r.is_for(&parked.batch) => Ok(()),
        Release::Delivered(_) => Err(StoreError::WrongRelease {
            seq: parked.seq,
            why: "the receipt is for another batch",
        }),
        Release::Exported(e) if e.seq() == parked.seq => Ok(()),
        Release::Exported(_) => Err(StoreError::WrongRelease {
            seq: parked.seq,
            why: "the export proof is for another entry",
        }),
    }
}
