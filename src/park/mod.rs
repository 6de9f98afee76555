//! The park: auditstream's persistent store, a sled database in the directory `park.path`
//! (one *generation* of it at a time, see "Compaction").
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
//! | `generation` | `id_base` | frame(u64 BE): added to sled's `generate_id` in this generation (see "Compaction") |
//!
//! Sequence numbers are sled's `generate_id` plus the generation's `id_base`; `generate_id`
//! only grows (also across restarts) and each generation's base is above every number the one
//! before handed out, so sequence numbers only grow, and each sink's trees iterate oldest
//! first: a FIFO per sink. Every value is framed by [`codec`] (version byte, CRC32, payload)
//! and checked on every read; a damaged entry is reported and exported, never silently
//! misread.
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
//!    checked against a scan of the meta tree and repaired (with a warning) if they differ. The
//!    mirror takes the counts each transaction wrote, in the order the park's transactions
//!    committed (a lock per park from the transaction to the mirror), and the total across
//!    sinks (`park.max_bytes`, `/status`) is summed from the mirrors, never kept by adding and
//!    subtracting (an append and a release racing made such a total drift).
//!
//! # When data leaves
//!
//! Delivered (receipt), or exported: expired after `park.max_age`, dropped to make room when
//! `when_full = "drop_oldest"`, purged by `auditstream parked purge`, or damaged.
//!
//! # One process
//!
//! The store takes an exclusive flock(2) on `park.path/LOCK` before it reads anything else in
//! the directory, and holds it until the process ends (or re-executes itself: the file is
//! close-on-exec). While the daemon runs, another process cannot open the store and says so
//! ([`StoreError::InUse`]). sled also locks each generation's directory, but that lock alone
//! would leave a window during a compaction (a second process reading `CURRENT` just before
//! the switch and opening the old generation once the daemon closed it); `LOCK` covers the
//! whole store, every generation, at every step.
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
//!
//! # Compaction
//!
//! sled 0.34 reuses the space a removal frees, but never gives it back to the filesystem: a
//! long outage grows its files, and they stay at their peak after the drain. So the store is
//! rewritten into a fresh sled database once every park is empty, when what is left to copy is
//! small (the quarantine, counters, alert states and outbox, `/ready`'s health value, the
//! integrity journals).
//!
//! **Layout.** `park.path` holds `LOCK`, `CURRENT` (one line, `gen-<N>`) and the generations
//! `gen-<N>/`, each a sled database; `CURRENT` names the live one. A new store starts as
//! `gen-1`. A store from before generations (sled's files directly in `park.path`, no
//! `CURRENT`) opens as it is, as generation 0, and its first compaction writes `gen-1`. On
//! open, with the lock held: `CURRENT.tmp` is removed; a `gen-<N>` that `CURRENT` does not name
//! is an unfinished copy or an old generation not yet deleted and is removed, as are sled's
//! files directly in `park.path` when `CURRENT` exists (a store from before generations that
//! was already copied), each with a warning, once the live generation has opened. (An
//! auditstream from before generations, started on a compacted store, would not find it: it
//! opens `park.path` itself.)
//!
//! **When.** The daemon ([`Store::compact_when_drained`], `park.compact_above`, default
//! [`COMPACT_ABOVE`] = 8 MiB) starts one in a background thread when a release leaves every
//! park empty (and once at start), if the store then takes more than `compact_above` on disk
//! and more than twice what it took right after its last compaction (so a store whose live
//! quarantine is large is not copied at every drain). The size is taken where the release
//! happens (a few stat(2) calls); the thread is started only when a compaction is due. Never while the store is failed, one at
//! a time, and only with the store's size on disk plus 16 MiB free on its filesystem. If one
//! fails, the next waits until the store has doubled on disk again: no retrying in a loop.
//! Offline commands never compact. Each is logged (`park compacted: X MiB → Y MiB`) and
//! counted (`auditstream_park_compactions_total{outcome}`, `auditstream_park_compacted_bytes`).
//!
//! **Steps** ([`Store::compact`]), and what a crash at each leaves:
//! 1. Take the write side of the store's `RwLock` over the live generation: from here until
//!    step 6 nothing is written to the live generation (see "Readers and writers").
//! 2. Take an id from the live generation's `generate_id`; the new generation's `id_base` is
//!    that plus the old base plus one, above every sequence number handed out so far.
//! 3. Create `gen-<N+1>` and copy every tree into it, key for key and byte for byte (sled's
//!    default tree, the parks, counters, quarantine, alerts, outbox, health, integrity
//!    journals: whatever is there), with `generation/id_base`; flush it, close it.
//! 4. Open it again as the store opens a generation, and check it against the original: the
//!    same trees, keys and values (a count and CRC32 over all of them in order) and the
//!    `id_base`.
//! 5. Point `CURRENT` at it: write `CURRENT.tmp`, fsync it, rename it over `CURRENT`, fsync
//!    the directory.
//! 6. Swap the store's live generation for the new one (the cached trees belong to their
//!    generation and go with it) and release the lock.
//! 7. Close the old generation and delete it (`gen-<N>/`, or sled's files in `park.path`).
//!
//! A crash (or kill -9) before the rename of step 5 leaves `CURRENT` on the old generation,
//! complete and untouched (nothing was written to it since step 1): the next open removes the
//! partial `gen-<N+1>`. From the rename on, `CURRENT` names the new generation, which was
//! complete and durable before the rename; nothing was written to the old one after its copy,
//! so the next open, which removes the old one, loses nothing. A failure (an I/O error, a full
//! disk, a copy that does not check out) before the rename leaves the old generation live and
//! removes the new one; a new generation whose write failed is leaked, not closed (see "A
//! full disk": its close can block forever, and sled's concurrency control is global to the
//! process, so a stuck close could stall the live generation too), so its deleted files hold
//! their space until the process ends (tested on a full tmpfs). If the directory's fsync
//! after the rename fails, it is unknown which generation survives a power loss, so the store
//! becomes failed (no more writes, the daemon restarts in place) and the next open keeps the
//! one `CURRENT` names.
//!
//! The in-memory counts of the parks are not touched: a compaction copies the counters with
//! the entries they count.
//!
//! **Readers and writers.** Every write to sled (the append and release transactions, a
//! recorded attempt, a repaired counter, a quarantine entry, a push, update or removal in a
//! `Fifo` or `Table`, `/ready`'s health write), with the sequence numbers it takes, runs while
//! holding the read side of the lock (`Store::writing`), never across an `.await`; a
//! compaction's write side waits for those to finish and holds new ones back until the swap.
//! So a write lands either in the old generation before its copy (and is copied) or in the new
//! one: never in the old one after its copy. Reads take the lock only to look a tree up: a
//! read that started before a swap may finish on the old generation, which was complete (its
//! copy is the same), and sled keeps a closed generation readable while a handle lives (its
//! deleted files stay open). Writes wait for the length of a compaction, which copies what
//! lives outside the parks (usually little) and opens one database.
//!
//! Rule 1 across a compaction: [`SinkPark::append`] commits its transaction under the lock,
//! then flushes the database live when the flush starts. If a compaction ran in between, the
//! entry was in the old generation when it was copied, and the new generation was flushed
//! before `CURRENT` named it: the entry is durable whichever database the flush reaches (a
//! flush of the old one still writes to its open, possibly deleted, files and returns). The
//! same holds for the quarantine's and the `/ready` check's write-then-flush. Removals not
//! flushed before a compaction are in the copy, which is flushed: a compaction makes them
//! durable.

pub mod codec;
mod compact;
pub mod entry;
pub mod export;
pub mod quarantine;
mod queue;
pub mod records;

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};

pub use codec::CorruptEntry;
pub use compact::{disk_usage, Compacted, COMPACT_ABOVE};
pub use entry::{Parked, ParkedHeader};
pub use queue::{ParkCounts, Release, SinkPark};

/// Problems with the store, typed at the module boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the park store at {path} is in use by another process (a running daemon?); one process at a time")]
    InUse { path: PathBuf },
    #[error("the park store at {path}: {source}")]
    Sled {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("the park store at {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Corrupt(#[from] CorruptEntry),
    #[error("encoding an entry: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the park store at {path} cannot be written ({why}); the daemon restarts itself once the disk has room")]
    Unwritable { path: PathBuf, why: String },
    #[error("a release does not match entry {seq}: {why}")]
    WrongRelease { seq: u64, why: &'static str },
    #[error("the park store at {path} was not compacted: {why}")]
    NotCompacted { path: PathBuf, why: String },
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
    /// The lock on `LOCK`, held as long as the store is open (see "One process").
    _lock: std::fs::File,
    /// The live generation: its database, and the trees looked up in it. Writers hold the read
    /// side for the whole of a write; a compaction takes the write side (see "Compaction").
    live: RwLock<ManuallyDrop<Open>>,
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
    /// When and whether to compact, and the compaction running in the background.
    compaction: compact::State,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.failed.load(Ordering::SeqCst) {
            let live = self.live.get_mut().unwrap_or_else(|p| p.into_inner());
            // SAFETY: dropped once, here, and never used again.
            unsafe { ManuallyDrop::drop(live) }
        }
        // A failed sled database can block forever in its drop: it is left to the process's end.
    }
}

/// One open generation: its sled database and the trees looked up in it.
struct Open {
    generation: compact::Generation,
    db: sled::Db,
    /// Added to sled's `generate_id` to make sequence numbers (see "Compaction").
    id_base: u64,
    trees: Mutex<HashMap<String, sled::Tree>>,
}

impl Open {
    fn new(generation: compact::Generation, db: sled::Db) -> Result<Self, sled::Error> {
        let id_base = compact::read_id_base(&db)?;
        Ok(Self {
            generation,
            db,
            id_base,
            trees: Mutex::new(HashMap::new()),
        })
    }

    /// Tree `name`, looked up once per generation.
    fn tree(&self, name: &str) -> Result<sled::Tree, sled::Error> {
        let mut cache = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = cache.get(name) {
            return Ok(t.clone());
        }
        let t = self.db.open_tree(name)?;
        cache.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// The next sequence number: above every one handed out before, in this generation or an
    /// earlier one.
    fn next_id(&self) -> Result<u64, sled::Error> {
        Ok(self.id_base + self.db.generate_id()?)
    }
}

/// The sled database and its trees.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// The live generation held for one write: while it lives, a compaction cannot copy the
/// database away from under the write (see "Compaction"). Take trees and keys from it, not
/// from the [`Store`]: the store's own lookups take the same lock again, which can deadlock
/// when a compaction is waiting for it.
struct Writing<'a> {
    store: &'a Store,
    open: RwLockReadGuard<'a, ManuallyDrop<Open>>,
}

impl Writing<'_> {
    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.open.tree(name).map_err(|e| self.store.sled_err(e))
    }

    /// Several trees (for a transaction over them).
    fn trees<const N: usize>(&self, names: [&str; N]) -> Result<[sled::Tree; N], StoreError> {
        let mut out = Vec::with_capacity(N);
        for name in names {
            out.push(self.tree(name)?);
        }
        Ok(out
            .try_into()
            .unwrap_or_else(|_: Vec<sled::Tree>| unreachable!("one tree per name")))
    }

    /// The next key: a big-endian sequence number, increasing across restarts and compactions.
    fn next_key(&self) -> Result<[u8; 8], StoreError> {
        self.open
            .next_id()
            .map(u64::to_be_bytes)
            .map_err(|e| self.store.sled_err(e))
    }
}

/// Free space the park's filesystem needs before a failed store is opened again.
pub const RESTART_FREE_BYTES: u64 = 4 * 1024 * 1024;

/// sled's settings for a generation the store uses.
fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(64 * 1024 * 1024)
}

fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    sled_config(path).open().map_err(|e| match e {
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
    /// Opens (or creates) the store at `path`: takes its lock, finds the live generation and
    /// removes what an interrupted compaction left (see "Compaction").
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let lock = compact::lock(path)?;
        let (generation, db) = compact::open_live(path)?;
        let open = Open::new(generation, db).map_err(|source| StoreError::Sled {
            path: path.to_path_buf(),
            source,
        })?;
        let store = Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                _lock: lock,
                live: RwLock::new(ManuallyDrop::new(open)),
                failed: AtomicBool::new(false),
                why: Mutex::new(String::new()),
                total_bytes: AtomicU64::new(0),
                parks: Mutex::new(HashMap::new()),
                freed: tokio::sync::Notify::new(),
                compaction: compact::State::default(),
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
            self.fail(source.to_string());
        }
        StoreError::Sled {
            path: self.inner.path.clone(),
            source,
        }
    }

    /// Marks the store failed (see "A full disk").
    fn fail(&self, why: String) {
        *self.inner.why.lock().unwrap_or_else(|p| p.into_inner()) = why.clone();
        if !self.inner.failed.swap(true, Ordering::SeqCst) {
            tracing::error!(path = %self.inner.path.display(), error = %why, "the park store failed to write; it takes no more writes in this process, and the daemon restarts itself in place once the disk has room again");
        }
    }

    /// Whether the store failed (see "A full disk").
    pub fn failed(&self) -> bool {
        self.inner.failed.load(Ordering::SeqCst)
    }

    fn unwritable(&self) -> StoreError {
        StoreError::Unwritable {
            path: self.inner.path.clone(),
            why: self
                .inner
                .why
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// The live generation, unless the store failed. Held only for a lookup or one write.
    fn live(&self) -> Result<RwLockReadGuard<'_, ManuallyDrop<Open>>, StoreError> {
        if self.failed() {
            return Err(self.unwritable());
        }
        Ok(self.inner.live.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The live generation held for a write (see [`Writing`]).
    fn writing(&self) -> Result<Writing<'_>, StoreError> {
        Ok(Writing {
            store: self,
            open: self.live()?,
        })
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

    /// Tree `name`, for reading. A write takes its trees from [`Store::writing`] instead.
    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.live()?.tree(name).map_err(|e| self.sled_err(e))
    }

    /// Sets the total of parked bytes from the parks' counts, after a change to one of them.
    /// Summed and stored under the parks' lock, so the last change's sum is the one that stays.
    fn recount_total(&self) {
        let parks = self.inner.parks.lock().unwrap_or_else(|p| p.into_inner());
        let total = parks.values().map(|c| c.bytes()).sum();
        self.inner.total_bytes.store(total, Ordering::Relaxed);
    }

    /// Whether every park opened in this process is empty.
    fn parks_empty(&self) -> bool {
        self.inner
            .parks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .all(|c| c.entries() == 0)
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let db = self.live()?.db.clone();
        db.flush_async()
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
        let Ok(open) = self.live() else {
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
