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
//!
//! # A full disk
//!
//! sled 0.34 does not survive a failed log write (ENOSPC) in the same process: the failing
//! flush returns the error, later flushes can wait forever for that write, and dropping the
//! database then blocks forever too (seen on a full tmpfs: `TreeInner::drop` waiting in
//! `make_stable`); a second open in the same process cannot take the directory's lock while the
//! first one lives. So after the first sled I/O error the store is *failed*: every later call
//! returns [`StoreError::Unwritable`] at once, without touching sled (no hang, no write), the
//! intake holds its batch and offsets and says why, and [`Store::restart_when_space_returns`]
//! waits until the park's filesystem has room again ([`RESTART_FREE_BYTES`]) and re-executes
//! the daemon in place (same pid, same arguments, same log): the new process opens the store
//! from disk as after a crash. What the failed writes had put in memory is gone with the old
//! process, which is right: it was never acknowledged (the append returned an error, its
//! offsets were not committed). Removals not yet flushed come back, so a batch may be delivered
//! twice, never lost. A failed store is never dropped (it is leaked as the process ends).

pub mod codec;
pub mod entry;
pub mod export;
pub mod quarantine;
mod queue;
pub mod records;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    #[error("the park store at {path} cannot be written ({why}); the daemon restarts itself once the disk has room")]
    Unwritable { path: PathBuf, why: String },
    #[error("a release does not match entry {seq}: {why}")]
    WrongRelease { seq: u64, why: &'static str },
}

impl StoreError {
    /// Whether the store cannot take writes now (a full disk, or a write that failed for
    /// another I/O reason), rather than a problem with one entry.
    pub fn is_unwritable(&self) -> bool {
        matches!(
            self,
            StoreError::Sled {
                source: sled::Error::Io(_),
                ..
            } | StoreError::Unwritable { .. }
        )
    }
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
    /// The database, and the trees looked up in it.
    open: std::mem::ManuallyDrop<Open>,
    /// A sled I/O error was seen: the store takes no more calls (see "A full disk").
    failed: AtomicBool,
    /// The error that failed it.
    why: Mutex<String>,
    /// Bytes parked across all sinks (for `park.max_bytes`).
    total_bytes: AtomicU64,
    /// Each sink's counts, once its park is opened.
    parks: Mutex<HashMap<String, Arc<ParkCounts>>>,
    /// Rung whenever an entry leaves any park.
    freed: tokio::sync::Notify,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.failed.load(Ordering::SeqCst) {
            // SAFETY: dropped once, here, and never used again.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.open) }
        }
        // A failed sled database can block forever in its drop: it is left to the process's end.
    }
}

/// One open sled database and the trees looked up in it.
struct Open {
    db: sled::Db,
    trees: Mutex<HashMap<String, sled::Tree>>,
}

/// The sled database and its trees.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Free space the park's filesystem needs before a failed store is opened again.
pub const RESTART_FREE_BYTES: u64 = 4 * 1024 * 1024;

fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(path)
        .cache_capacity(64 * 1024 * 1024)
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StoreError::InUse {
                    path: path.to_path_buf(),
                }
            }
            other => StoreError::Sled {
                path: path.to_path_buf(),
                source: other,
            },
        })
}

/// Bytes an unprivileged writer can still use on the filesystem holding `path`.
pub fn available_space(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_db(path)?;
        let store = Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                open: std::mem::ManuallyDrop::new(Open {
                    db,
                    trees: Mutex::new(HashMap::new()),
                }),
                failed: AtomicBool::new(false),
                why: Mutex::new(String::new()),
                total_bytes: AtomicU64::new(0),
                parks: Mutex::new(HashMap::new()),
                freed: tokio::sync::Notify::new(),
            }),
        };
        store.tree("quarantine")?;
        store.tree("counters")?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn sled_err(&self, source: sled::Error) -> StoreError {
        if matches!(source, sled::Error::Io(_)) {
            *self.inner.why.lock().unwrap_or_else(|p| p.into_inner()) = source.to_string();
            if !self.inner.failed.swap(true, Ordering::SeqCst) {
                tracing::error!(path = %self.inner.path.display(), error = %source, "the park store failed to write; it takes no more writes in this process, and the daemon restarts itself in place once the disk has room again");
            }
        }
        StoreError::Sled {
            path: self.inner.path.clone(),
            source,
        }
    }

    /// Whether the store failed (see "A full disk").
    pub fn failed(&self) -> bool {
        self.inner.failed.load(Ordering::SeqCst)
    }

    /// The database, unless the store failed.
    fn current(&self) -> Result<&Open, StoreError> {
        if self.failed() {
            return Err(StoreError::Unwritable {
                path: self.inner.path.clone(),
                why: self
                    .inner
                    .why
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            });
        }
        Ok(&self.inner.open)
    }

    /// Once the store has failed and the park's filesystem has [`RESTART_FREE_BYTES`] free
    /// again, re-executes this process in place (see "A full disk"). Returns only if that
    /// fails.
    pub async fn restart_when_space_returns(&self) -> std::io::Error {
        let dir = self.inner.path.clone();
        let mut told = false;
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if !self.failed() {
                continue;
            }
            let free = available_space(&dir).unwrap_or(0);
            if free < RESTART_FREE_BYTES {
                if !told {
                    told = true;
                    tracing::error!(path = %dir.display(), free, needed = RESTART_FREE_BYTES, "waiting for room on the park's disk; the stream is held (Kafka keeps the data)");
                }
                continue;
            }
            tracing::warn!(path = %dir.display(), free, "the park's disk has room again: restarting in place to open the park store afresh (events not yet acknowledged are read again from Kafka)");
            let exe = match std::env::current_exe() {
                Ok(e) => e,
                Err(e) => return e,
            };
            use std::os::unix::process::CommandExt;
            return std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .exec();
        }
    }

    /// Tree `name`.
    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        let [t] = self.trees([name])?;
        Ok(t)
    }

    /// Several trees (for a transaction over them).
    fn trees<const N: usize>(&self, names: [&str; N]) -> Result<[sled::Tree; N], StoreError> {
        let open = self.current()?;
        let mut cache = open.trees.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(N);
        for name in names {
            let t = match cache.get(name) {
                Some(t) => t.clone(),
                None => {
                    let t = open.db.open_tree(name).map_err(|e| self.sled_err(e))?;
                    cache.insert(name.to_string(), t.clone());
                    t
                }
            };
            out.push(t);
        }
        Ok(out
            .try_into()
            .unwrap_or_else(|_: Vec<sled::Tree>| unreachable!("one tree per name")))
    }

    /// Sets the total of parked bytes from the parks' counts.
    fn recount_total(&self) {
        let total = self
            .inner
            .parks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| c.bytes())
            .sum();
        self.inner.total_bytes.store(total, Ordering::Relaxed);
    }

    /// The next key: a big-endian sequence number, increasing across restarts.
    fn next_key(&self) -> Result<[u8; 8], StoreError> {
        self.current()?
            .db
            .generate_id()
            .map(u64::to_be_bytes)
            .map_err(|e| self.sled_err(e))
    }

    fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.tree(name)
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let open = self.current()?;
        open.db
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
        let Ok(open) = self.current() else {
            return Vec::new();
        };
        let mut names: Vec<String> = open
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
