//! The store's directory (generations, `CURRENT`, `LOCK`) and compaction: rewriting the live
//! generation into a fresh sled database once every park is empty. The design, and why each
//! step is safe, is in the module above ("One process", "Compaction").

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;

use super::{codec, open_db, sled_config, Open, Store, StoreError};

/// Compact when every park is empty and the store takes more than this on disk (and more than
/// twice what it took right after its last compaction): `park.compact_above`'s default.
pub const COMPACT_ABOVE: u64 = 8 * 1024 * 1024;

/// Free space a compaction needs beyond the store's size on disk before it starts.
const HEADROOM: u64 = 16 * 1024 * 1024;

/// The tree holding what a generation needs to know about itself.
const GENERATION_TREE: &[u8] = b"generation";
/// Key in [`GENERATION_TREE`]: the number added to sled's `generate_id` (u64 BE, framed).
const ID_BASE: &[u8] = b"id_base";
/// sled's own default tree.
const SLED_DEFAULT_TREE: &[u8] = b"__sled__default";

const CURRENT: &str = "CURRENT";
const CURRENT_TMP: &str = "CURRENT.tmp";
const LOCK: &str = "LOCK";
/// What sled 0.34 keeps in its directory: how a store from before generations is recognised
/// (and what is removed once it was compacted into `gen-1`).
const SLED_FILES: [&str; 3] = ["db", "conf", "blobs"];
const SLED_SNAPSHOT_PREFIX: &str = "snap.";

/// One generation of the store: a sled database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Generation {
    /// 0 for a store from before generations (sled's files directly in the store directory).
    pub number: u64,
    pub dir: PathBuf,
}

impl Generation {
    fn legacy(store: &Path) -> Self {
        Self {
            number: 0,
            dir: store.to_path_buf(),
        }
    }

    fn numbered(store: &Path, number: u64) -> Self {
        Self {
            number,
            dir: store.join(format!("gen-{number}")),
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The store's size on disk before and after (allocated blocks, as `du` counts them).
    pub before: u64,
    pub after: u64,
    /// The generation now live.
    pub generation: u64,
    /// Keys copied, all trees together.
    pub keys: u64,
}

/// When and whether the store compacts itself.
pub(super) struct State {
    /// Compact when drained and above this many bytes on disk; `u64::MAX`: never (the store
    /// of an offline command).
    above: AtomicU64,
    /// The store's size on disk after the last compaction, or at the last one that failed.
    after_last: AtomicU64,
    /// Compactions done in this process.
    done: AtomicU64,
    /// A background compaction is running (set and cleared under `background`'s lock).
    running: AtomicBool,
    background: Mutex<Option<JoinHandle<()>>>,
    /// One compaction at a time.
    one_at_a_time: Mutex<()>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            above: AtomicU64::new(u64::MAX),
            after_last: AtomicU64::new(0),
            done: AtomicU64::new(0),
            running: AtomicBool::new(false),
            background: Mutex::new(None),
            one_at_a_time: Mutex::new(()),
        }
    }
}

fn io_err(path: &Path, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    let what = what.into();
    move |source| StoreError::Io { path, what, source }
}

/// Bytes of disk the files under `dir` take, as `du` counts them (allocated blocks).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Takes the store's lock (`LOCK`, flock(2), exclusive), creating the directory if needed.
/// Held as long as the returned file is open, so by the process until it ends (or `exec`s: the
/// file is close-on-exec).
pub(super) fn lock(store: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all(store).map_err(io_err(store, "creating its directory"))?;
    let path = store.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(store, "opening its LOCK file"))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::InUse {
                path: store.to_path_buf(),
            });
        }
        return Err(io_err(store, "locking its LOCK file")(e));
    }
    Ok(file)
}

/// Whether sled's files lie directly in the store directory (a store from before generations,
/// or what is left of one compacted into `gen-1`).
fn has_legacy_files(store: &Path) -> bool {
    store.join("db").exists() || store.join("conf").exists()
}

fn remove_legacy_files(store: &Path) -> std::io::Result<()> {
    for name in SLED_FILES {
        let p = store.join(name);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p)?,
            Ok(_) => std::fs::remove_file(&p)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    for e in std::fs::read_dir(store)? {
        let e = e?;
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SLED_SNAPSHOT_PREFIX))
        {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// The `gen-<N>` directories in the store directory.
fn generation_dirs(store: &Path) -> Result<Vec<Generation>, StoreError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(store).map_err(io_err(store, "listing its directory"))? {
        let e = e.map_err(io_err(store, "listing its directory"))?;
        let Some(n) = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("gen-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if e.path().is_dir() {
            out.push(Generation::numbered(store, n));
        }
    }
    out.sort_by_key(|g| g.number);
    Ok(out)
}

/// The generation `CURRENT` names, if there is a `CURRENT`.
fn read_current(store: &Path) -> Result<Option<u64>, StoreError> {
    let text = match std::fs::read_to_string(store.join(CURRENT)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(store, "reading CURRENT")(e)),
    };
    match text
        .trim_end()
        .strip_prefix("gen-")
        .and_then(|n| n.parse::<u64>().ok())
    {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => Err(io_err(store, "reading CURRENT")(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{text:?} does not name a generation (gen-<N>)"),
        ))),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// How writing `CURRENT` failed.
enum SwitchError {
    /// Before the rename: `CURRENT` still names the old generation.
    NotSwitched(std::io::Error),
    /// Syncing the directory after the rename: `CURRENT` names the new generation, but it is
    /// unknown whether that survives a power loss.
    NotDurable(std::io::Error),
}

/// Points `CURRENT` at generation `number`: write a temporary file, fsync it, rename it over
/// `CURRENT`, fsync the directory.
fn write_current(store: &Path, number: u64) -> Result<(), SwitchError> {
    let tmp = store.join(CURRENT_TMP);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("gen-{number}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, store.join(CURRENT))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(SwitchError::NotSwitched(e));
    }
    sync_dir(store).map_err(SwitchError::NotDurable)
}

/// Finds the live generation, opens it, and removes what an interrupted compaction left.
///
/// - `CURRENT` names the live generation; any other `gen-<N>` is an unfinished copy, or an old
///   generation not yet deleted, and sled's files directly in the directory are a store from
///   before generations already copied into `gen-1`: all are removed, once the live one opened.
/// - No `CURRENT` but sled's files in the directory: a store from before generations, opened
///   as it is (generation 0); a `gen-<N>` beside it is an unfinished copy.
/// - Neither: a new store, created as `gen-1` (a `gen-<N>` there is one whose creation was
///   interrupted before `CURRENT` was written).
pub(super) fn open_live(store: &Path) -> Result<(Generation, sled::Db), StoreError> {
    let _ = std::fs::remove_file(store.join(CURRENT_TMP));
    let generations = generation_dirs(store)?;
    let live = match read_current(store)? {
        Some(n) => Generation::numbered(store, n),
        None if has_legacy_files(store) => Generation::legacy(store),
        None => {
            discard_all(
                store,
                &generations,
                "left by an interrupted creation of the store",
            );
            let first = Generation::numbered(store, 1);
            let db = open_db(&first.dir)?;
            match write_current(store, 1) {
                Ok(()) => {}
                Err(SwitchError::NotSwitched(e) | SwitchError::NotDurable(e)) => {
                    return Err(io_err(store, "writing CURRENT")(e))
                }
            }
            return Ok((first, db));
        }
    };
    if live.number > 0 && !live.dir.is_dir() {
        return Err(io_err(store, format!("CURRENT names gen-{}", live.number))(
            std::io::Error::new(std::io::ErrorKind::NotFound, "that directory is missing"),
        ));
    }
    let db = open_db(&live.dir)?;
    let stale: Vec<Generation> = generations.into_iter().filter(|g| *g != live).collect();
    discard_all(
        store,
        &stale,
        "left by an interrupted compaction (not the live generation)",
    );
    if live.number > 0 && has_legacy_files(store) {
        tracing::warn!(store = %store.display(), live = live.number, "removing the store's files from before generations, left by an interrupted compaction (they were copied into the live generation)");
        if let Err(e) = remove_legacy_files(store) {
            tracing::warn!(store = %store.display(), error = %e, "cannot remove them; trying again at the next start");
        }
    }
    Ok((live, db))
}

fn discard_all(store: &Path, generations: &[Generation], why: &str) {
    for g in generations {
        tracing::warn!(store = %store.display(), generation = g.number, "removing gen-{} ({why})", g.number);
        discard(g);
    }
}

/// Removes a generation that is not live.
fn discard(g: &Generation) {
    let removed = if g.number == 0 {
        remove_legacy_files(&g.dir)
    } else {
        std::fs::remove_dir_all(&g.dir)
    };
    match removed {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %g.dir.display(), error = %e, "cannot remove a generation of the park store that is not live; trying again at the next start")
        }
    }
}

/// The number a generation adds to sled's `generate_id`: 0 when it has none (a new store, or
/// one from before generations).
pub(super) fn read_id_base(db: &sled::Db) -> Result<u64, sled::Error> {
    if !db.tree_names().iter().any(|n| n == GENERATION_TREE) {
        return Ok(0);
    }
    let Some(v) = db.open_tree(GENERATION_TREE)?.get(ID_BASE)? else {
        return Ok(0);
    };
    match codec::decode(0, &v)
        .ok()
        .and_then(|p| <[u8; 8]>::try_from(p).ok())
    {
        Some(b) => Ok(u64::from_be_bytes(b)),
        None => Err(sled::Error::Unsupported(
            "the generation's id base is damaged".into(),
        )),
    }
}

/// A copy failed reading the live generation or writing the new one.
enum CopyError {
    Old(sled::Error),
    New(sled::Error),
}

/// Everything in a database, digested: its key count and a CRC32 over every tree's name, keys
/// and values in order (the generation tree left out), to check a copy against its original.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Digest {
    keys: u64,
    crc: u32,
}

struct Digester {
    keys: u64,
    crc: crc32fast::Hasher,
}

impl Digester {
    fn new() -> Self {
        Self {
            keys: 0,
            crc: crc32fast::Hasher::new(),
        }
    }
    fn tree(&mut self, name: &[u8]) {
        self.crc.update(&(name.len() as u64).to_be_bytes());
        self.crc.update(name);
    }
    fn kv(&mut self, k: &[u8], v: &[u8]) {
        self.keys += 1;
        for part in [k, v] {
            self.crc.update(&(part.len() as u64).to_be_bytes());
            self.crc.update(part);
        }
    }
    fn finish(self) -> Digest {
        Digest {
            keys: self.keys,
            crc: self.crc.finalize(),
        }
    }
}

/// The trees to copy, in a fixed order (sled's default tree first, then by name).
fn tree_names(db: &sled::Db) -> Vec<sled::IVec> {
    let mut names: Vec<sled::IVec> = db
        .tree_names()
        .into_iter()
        .filter(|n| n != SLED_DEFAULT_TREE && n != GENERATION_TREE)
        .collect();
    names.sort();
    names
}

fn digest(db: &sled::Db) -> Result<Digest, sled::Error> {
    let mut d = Digester::new();
    d.tree(SLED_DEFAULT_TREE);
    for kv in db.iter() {
        let (k, v) = kv?;
        d.kv(&k, &v);
    }
    for name in tree_names(db) {
        d.tree(&name);
        for kv in db.open_tree(&name)?.iter() {
            let (k, v) = kv?;
            d.kv(&k, &v);
        }
    }
    Ok(d.finish())
}

/// Copies every tree of `from`, key for key and byte for byte, into a new database at `dir`
/// with `id_base` in its generation tree, flushes it and closes it. Returns the digest of what
/// was copied.
fn copy(from: &sled::Db, dir: &Path, id_base: u64) -> Result<Digest, CopyError> {
    // No background flusher: if a write fails, this database is leaked, not dropped (below),
    // and nothing of it runs on.
    let to = sled_config(dir)
        .flush_every_ms(None)
        .open()
        .map_err(CopyError::New)?;
    let copied = copy_trees(from, &to, id_base);
    match &copied {
        // sled 0.34 can block forever dropping a database whose write failed (see "A full
        // disk"): leak it. Its files are removed; their space returns when the process ends.
        Err(CopyError::New(sled::Error::Io(_))) => std::mem::forget(to),
        _ => drop(to),
    }
    copied
}

fn copy_trees(from: &sled::Db, to: &sled::Db, id_base: u64) -> Result<Digest, CopyError> {
    let mut d = Digester::new();
    d.tree(SLED_DEFAULT_TREE);
    copy_tree(from, to, &mut d)?;
    for name in tree_names(from) {
        d.tree(&name);
        let source = from.open_tree(&name).map_err(CopyError::Old)?;
        let target = to.open_tree(&name).map_err(CopyError::New)?;
        copy_tree(&source, &target, &mut d)?;
    }
    to.open_tree(GENERATION_TREE)
        .and_then(|t| t.insert(ID_BASE, codec::encode(&id_base.to_be_bytes())))
        .map_err(CopyError::New)?;
    to.flush().map_err(CopyError::New)?;
    Ok(d.finish())
}

fn copy_tree(from: &sled::Tree, to: &sled::Tree, d: &mut Digester) -> Result<(), CopyError> {
    const BATCH_BYTES: usize = 4 * 1024 * 1024;
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    for kv in from.iter() {
        let (k, v) = kv.map_err(CopyError::Old)?;
        d.kv(&k, &v);
        pending += k.len() + v.len();
        batch.insert(k, v);
        if pending >= BATCH_BYTES {
            to.apply_batch(std::mem::take(&mut batch))
                .map_err(CopyError::New)?;
            pending = 0;
        }
    }
    to.apply_batch(batch).map_err(CopyError::New)
}

/// Opens the copy just closed. sled releases its directory's lock once its last background
/// task lets go of the database, which can be a moment after the drop returned.
fn reopen(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open_db(dir) {
            Err(StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            other => return other,
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl Store {
    /// The generation now live (0: a store from before generations).
    pub fn generation(&self) -> u64 {
        self.inner
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .generation
            .number
    }

    /// Compactions done by this process.
    pub fn compactions(&self) -> u64 {
        self.inner.compaction.done.load(Ordering::SeqCst)
    }

    /// From now on, compacts the store in the background whenever a release leaves every park
    /// empty and the store takes more than `above` bytes on disk (and more than twice what it
    /// took after its last compaction). Checks at once, too (the parks may be empty already).
    /// The daemon calls this; offline commands do not.
    pub fn compact_when_drained(&self, above: u64) {
        self.inner
            .compaction
            .above
            .store(above.min(u64::MAX - 1), Ordering::SeqCst);
        self.drained();
    }

    /// Called when a release emptied a park: starts a background compaction if every park is
    /// empty and it is on (see [`Store::compact_when_drained`]).
    pub(super) fn drained(&self) {
        let c = &self.inner.compaction;
        let above = c.above.load(Ordering::SeqCst);
        if above == u64::MAX || self.failed() || !self.parks_empty() {
            return;
        }
        // A few stat(2) calls: cheap enough here, and most drains stop at this.
        let on_disk = disk_usage(self.path());
        let threshold = above.max(c.after_last.load(Ordering::SeqCst).saturating_mul(2));
        if on_disk <= threshold {
            return;
        }
        let mut background = c.background.lock().unwrap_or_else(|p| p.into_inner());
        if c.running.load(Ordering::SeqCst) {
            return;
        }
        c.running.store(true, Ordering::SeqCst);
        let store = self.clone();
        let spawned = std::thread::Builder::new()
            .name("park-compact".into())
            .spawn(move || {
                store.compact_if_worth_it(on_disk, threshold);
                let c = &store.inner.compaction;
                let _background = c.background.lock().unwrap_or_else(|p| p.into_inner());
                c.running.store(false, Ordering::SeqCst);
            });
        match spawned {
            Ok(h) => *background = Some(h),
            Err(e) => {
                c.running.store(false, Ordering::SeqCst);
                tracing::warn!(error = %e, "cannot start a thread to compact the park store");
            }
        }
    }

    /// Waits for a background compaction, if one is running.
    pub fn wait_for_compaction(&self) {
        let handle = self
            .inner
            .compaction
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    fn compact_if_worth_it(&self, on_disk: u64, threshold: u64) {
        let c = &self.inner.compaction;
        if !self.parks_empty() || self.failed() {
            return; // a park filled again meanwhile: the next drain
        }
        let needed = on_disk + HEADROOM;
        let free = super::available_space(self.path()).unwrap_or(0);
        let compacted = if free < needed {
            Err(StoreError::NotCompacted {
                path: self.path().to_path_buf(),
                why: format!(
                    "{:.1} MiB free on its disk, a compaction needs {:.1} MiB",
                    mib(free),
                    mib(needed)
                ),
            })
        } else {
            tracing::info!(
                on_disk_mib = format!("{:.1}", mib(on_disk)),
                threshold_mib = format!("{:.1}", mib(threshold)),
                "every park is empty: compacting the park store"
            );
            self.compact()
        };
        if let Err(e) = compacted {
            // Not again until the store has doubled: no retrying in a loop.
            c.after_last.store(on_disk, Ordering::SeqCst);
            metrics::counter!("auditstream_park_compactions_total", "outcome" => "failed")
                .increment(1);
            tracing::warn!(error = %e, "the park store was not compacted; it goes on as it was (the next try waits until it has doubled on disk)");
        }
    }

    /// Rewrites the live generation into a fresh sled database and makes that the store (see
    /// "Compaction"), now, whatever the free space (the automatic compaction checks it first).
    /// Blocks every write to the store while it copies. Any state of the parks is copied; it
    /// is cheap when they are empty.
    pub fn compact(&self) -> Result<Compacted, StoreError> {
        let c = &self.inner.compaction;
        let _one = c.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        if self.failed() {
            return Err(self.unwritable());
        }
        let store = self.path().to_path_buf();
        let not_compacted = |why: String| StoreError::NotCompacted {
            path: store.clone(),
            why,
        };
        let before = disk_usage(&store);

        // From here until the swap no write reaches the live generation.
        let mut live = self.inner.live.write().unwrap_or_else(|p| p.into_inner());
        if self.failed() {
            return Err(self.unwritable());
        }
        let old = live.generation.clone();
        let next = Generation::numbered(&store, old.number + 1);
        if next.dir.exists() {
            std::fs::remove_dir_all(&next.dir)
                .map_err(|e| not_compacted(format!("removing {}: {e}", next.dir.display())))?;
        }
        // Above every sequence number the live generation handed out.
        let id_base = live.next_id().map_err(|e| self.sled_err(e))? + 1;
        let copied = match copy(&live.db, &next.dir, id_base) {
            Ok(d) => d,
            Err(e) => {
                discard(&next);
                return Err(match e {
                    CopyError::Old(e) => self.sled_err(e),
                    CopyError::New(e) => not_compacted(format!(
                        "writing the new generation {}: {e}",
                        next.dir.display()
                    )),
                });
            }
        };
        // Opened again as the store opens a generation, and checked against the original.
        let reopened = reopen(&next.dir).and_then(|db| {
            let open = Open::new(next.clone(), db).map_err(|source| StoreError::Sled {
                path: next.dir.clone(),
                source,
            })?;
            let found = digest(&open.db).map_err(|source| StoreError::Sled {
                path: next.dir.clone(),
                source,
            })?;
            if found != copied || open.id_base != id_base {
                return Err(not_compacted(format!(
                    "the copy does not match the original ({found:?} and id base {}, expected {copied:?} and {id_base})",
                    open.id_base
                )));
            }
            Ok(open)
        });
        let open = match reopened {
            Ok(open) => open,
            Err(e) => {
                discard(&next);
                return Err(not_compacted(e.to_string()));
            }
        };
        let durable = match write_current(&store, next.number) {
            Ok(()) => Ok(()),
            Err(SwitchError::NotSwitched(e)) => {
                drop(open);
                discard(&next);
                return Err(not_compacted(format!("writing CURRENT: {e}")));
            }
            Err(SwitchError::NotDurable(e)) => Err(e),
        };
        // CURRENT names the new generation: from here it is the store.
        let previous = std::mem::replace(&mut *live, std::mem::ManuallyDrop::new(open));
        drop(live);
        drop(std::mem::ManuallyDrop::into_inner(previous));
        if let Err(e) = durable {
            // Whether CURRENT's switch survives a power loss is unknown, so what is written
            // from now on might not: take no more writes, and restart (see "A full disk"). The
            // old generation stays until the next open, which keeps the one CURRENT names.
            self.fail(format!(
                "syncing the park's directory after switching to gen-{}: {e}",
                next.number
            ));
            return Err(self.unwritable());
        }
        discard(&old);
        let _ = sync_dir(&store);

        let after = disk_usage(&store);
        c.after_last.store(after, Ordering::SeqCst);
        c.done.fetch_add(1, Ordering::SeqCst);
        metrics::counter!("auditstream_park_compactions_total", "outcome" => "done").increment(1);
        metrics::gauge!("auditstream_park_compacted_bytes").set(after as f64);
        tracing::info!(
            generation = next.number,
            keys = copied.keys,
            "park compacted: {:.1} MiB → {:.1} MiB",
            mib(before),
            mib(after)
        );
        Ok(Compacted {
            before,
            after,
            generation: next.number,
            keys: copied.keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::batch::Batch;
    use crate::park::export::{ExportReason, Exporter};
    use crate::park::quarantine::QuarantineEntry;
    use crate::park::{Release, SinkPark};

    type Dump = BTreeMap<Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>>;

    fn batch(offset: i64, n: usize, pad: usize) -> Batch {
        Batch::for_test(offset, n, pad)
    }

    fn quarantined(offset: i64) -> QuarantineEntry {
        QuarantineEntry {
            quarantined_at: "2026-11-22T10:00:00.000Z".into(),
            sink: None,
            kind: "not_json".into(),
            reason: "expected a JSON object".into(),
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp_ms: Some(1),
            key: None,
            value: Some(format!("not json {offset}")),
            value_base64: None,
        }
    }

    /// Every tree of the live generation but its own `generation` tree, key for key, raw.
    fn dump(store: &Store) -> Dump {
        let live = store.live().unwrap();
        let rows = |t: &sled::Tree| {
            t.iter()
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    (k.to_vec(), v.to_vec())
                })
                .collect::<Vec<_>>()
        };
        let mut out = BTreeMap::new();
        out.insert(SLED_DEFAULT_TREE.to_vec(), rows(&live.db));
        for name in tree_names(&live.db) {
            out.insert(name.to_vec(), rows(&live.db.open_tree(&name).unwrap()));
        }
        out
    }

    /// Writes to every kind of tree that lives outside the parks; returns the sequence numbers
    /// it was given.
    async fn write_the_rest(store: &Store, round: i64, n: i64) -> Vec<u64> {
        let entries: Vec<_> = (0..n).map(|i| quarantined(round * 1000 + i)).collect();
        store.quarantine_durably(&entries).await.unwrap();
        let outbox = store.fifo::<serde_json::Value>("outbox").unwrap();
        let journal = store
            .fifo::<serde_json::Value>("integrity:archive")
            .unwrap();
        let alerts = store.table::<serde_json::Value>("alerts").unwrap();
        let mut seqs = Vec::new();
        for i in 0..n {
            seqs.push(
                outbox
                    .push(&serde_json::json!({"round": round, "message": i}))
                    .unwrap(),
            );
            seqs.push(
                journal
                    .push(&serde_json::json!({"key": format!("o/{round}/{i}"), "bytes": 123}))
                    .unwrap(),
            );
        }
        alerts
            .put("siem", &serde_json::json!({"incident": round}))
            .unwrap();
        store.check_writable().await.unwrap();
        seqs
    }

    /// Parks `n` batches of about `pad` × 100 bytes; returns their sequence numbers.
    async fn park(park: &SinkPark, n: usize, pad: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        for i in 0..n {
            seqs.push(
                park.append(&batch(i as i64 * 100, 100, pad), None)
                    .await
                    .unwrap(),
            );
        }
        seqs
    }

    /// Releases everything parked, exported first (the proof a release needs).
    fn release_all(park: &SinkPark, exports: &Path) {
        let exporter = Exporter::new(exports);
        loop {
            let group: Vec<_> = park.entries_iter().take(64).map(|p| p.unwrap()).collect();
            if group.is_empty() {
                return;
            }
            let proofs = exporter
                .export(park.name(), &group, ExportReason::Purged)
                .unwrap();
            for (p, proof) in group.iter().zip(proofs) {
                park.release(p, Release::Exported(proof)).unwrap();
            }
        }
    }

    fn gen_dirs(store: &Path) -> Vec<u64> {
        generation_dirs(store)
            .unwrap()
            .into_iter()
            .map(|g| g.number)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drain_compacts_the_store_keeps_every_other_tree_byte_for_byte_and_numbers_grow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("park");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.generation(), 1, "a new store starts as gen-1");
        let siem = store.sink_park("siem").unwrap();
        store.compact_when_drained(4 * 1024 * 1024);
        let mut seqs = write_the_rest(&store, 1, 50).await;
        seqs.extend(park(&siem, 120, 2500).await);
        seqs.extend(write_the_rest(&store, 2, 50).await);
        let grown = disk_usage(&path);
        assert!(grown > 24 << 20, "the park grew: {grown}");
        assert_eq!(store.compactions(), 0, "not while a park holds entries");

        release_all(&siem, &dir.path().join("exports"));
        // The release that emptied the last park started it; wait for it to end.
        store.wait_for_compaction();
        assert_eq!(store.compactions(), 1);
        assert_eq!(store.generation(), 2);
        assert_eq!(gen_dirs(&path), [2], "the old generation is deleted");
        let compacted = disk_usage(&path);
        assert!(
            compacted < grown / 4,
            "on disk: {grown} before, {compacted} after"
        );
        let expected = dump(&store);
        assert!(expected[b"quarantine".as_slice()].len() == 100);
        assert!(expected[b"outbox".as_slice()].len() == 100);
        assert!(expected[b"integrity:archive".as_slice()].len() == 100);
        assert!(expected[b"park:siem:meta".as_slice()].is_empty());
        assert_eq!(siem.verify().unwrap(), Default::default());

        // Sequence numbers go on growing, in the parks and the other FIFOs.
        let highest = *seqs.iter().max().unwrap();
        let more = park(&siem, 3, 10).await;
        assert!(more[0] > highest, "{more:?} after {highest}");
        let pushed = write_the_rest(&store, 3, 2).await;
        assert!(pushed[0] > more[2]);
        let after_writes = dump(&store);
        drop((siem, store));

        // A reopen sees the same, and numbers go on growing still.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.generation(), 2);
        assert_eq!(dump(&store), after_writes);
        let siem = store.sink_park("siem").unwrap();
        assert_eq!(siem.verify().unwrap().entries, 3);
        let again = park(&siem, 1, 10).await;
        assert!(again[0] > *pushed.iter().max().unwrap());
        // The FIFOs kept what compaction copied, byte for byte, followed by the later writes.
        for tree in ["quarantine", "outbox", "integrity:archive"] {
            let (copied, now) = (&expected[tree.as_bytes()], &after_writes[tree.as_bytes()]);
            assert_eq!(&now[..copied.len()], copied.as_slice(), "{tree}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compaction_copies_every_tree_byte_for_byte_even_a_full_park() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("park");
        let store = Store::open(&path).unwrap();
        let siem = store.sink_park("siem").unwrap();
        let archive = store.sink_park("archive").unwrap();
        write_the_rest(&store, 1, 20).await;
        park(&siem, 30, 300).await;
        park(&archive, 5, 30).await;
        siem.record_attempt(siem.head().unwrap().unwrap().seq, "503")
            .unwrap();
        let before = dump(&store);
        let done = store.compact().unwrap();
        assert_eq!(done.generation, 2);
        assert_eq!(
            done.keys,
            before.values().map(|rows| rows.len() as u64).sum::<u64>()
        );
        assert_eq!(dump(&store), before);
        assert_eq!(siem.verify().unwrap().entries, 30);
        assert_eq!(archive.verify().unwrap().entries, 5);
        assert_eq!(store.sinks_with_parks(), ["archive", "siem"]);
    }

    /// A store written before generations: sled's files directly in the store directory.
    fn make_legacy(path: &Path) {
        assert_eq!(read_current(path).unwrap(), Some(1));
        for e in std::fs::read_dir(path.join("gen-1")).unwrap() {
            let e = e.unwrap();
            std::fs::rename(e.path(), path.join(e.file_name())).unwrap();
        }
        std::fs::remove_dir(path.join("gen-1")).unwrap();
        std::fs::remove_file(path.join(CURRENT)).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_from_before_generations_opens_as_it_is_and_compacts_into_gen_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("park");
        let store = Store::open(&path).unwrap();
        let seqs = write_the_rest(&store, 1, 10).await;
        park(&store.sink_park("siem").unwrap(), 4, 10).await;
        let before = dump(&store);
        drop(store);
        make_legacy(&path);

        let store = Store::open(&path).unwrap();
        assert_eq!(store.generation(), 0);
        assert_eq!(dump(&store), before);
        assert!(gen_dirs(&path).is_empty() && read_current(&path).unwrap().is_none());
        let done = store.compact().unwrap();
        assert_eq!(done.generation, 1);
        assert_eq!(dump(&store), before);
        assert_eq!(read_current(&path).unwrap(), Some(1));
        assert!(!has_legacy_files(&path), "sled's old files are removed");
        let next = write_the_rest(&store, 2, 1).await;
        assert!(next[0] > *seqs.iter().max().unwrap());
        let after = dump(&store);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.generation(), 1);
        assert_eq!(dump(&store), after);
        assert_eq!(
            store.sink_park("siem").unwrap().verify().unwrap().entries,
            4
        );
    }

    /// A store (from before generations if `legacy`) with entries in every kind of tree and 5
    /// parked batches, compacted up to the copy but not switched: its directory, the store,
    /// the sequence numbers written, and the copy's generation.
    async fn copied_but_not_switched(
        legacy: bool,
    ) -> (tempfile::TempDir, Store, Vec<u64>, Generation) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("park");
        if legacy {
            drop(Store::open(&path).unwrap());
            make_legacy(&path);
        }
        let store = Store::open(&path).unwrap();
        let seqs = write_the_rest(&store, 1, 20).await;
        park(&store.sink_park("siem").unwrap(), 5, 10).await;
        let copy = copy_without_switching(&store);
        (dir, store, seqs, copy)
    }

    /// The steps of a compaction up to the copy (3 and 4), without switching: what a crash
    /// leaves at that point. Returns the copy's generation.
    fn copy_without_switching(store: &Store) -> Generation {
        let live = store.live().unwrap();
        let next = Generation::numbered(store.path(), live.generation.number + 1);
        let id_base = live.next_id().unwrap() + 1;
        assert!(copy(&live.db, &next.dir, id_base).is_ok());
        next
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_before_current_is_switched_keeps_the_old_generation_and_removes_the_copy() {
        for legacy in [false, true] {
            let (dir, store, seqs, copy) = copied_but_not_switched(legacy).await;
            let path = dir.path().join("park");
            let live = copy.number - 1;
            assert!(copy.dir.join("db").exists());
            // And a switch that had begun: CURRENT.tmp written, not renamed.
            std::fs::write(path.join(CURRENT_TMP), format!("gen-{}\n", copy.number)).unwrap();
            let before = dump(&store);
            drop(store); // the crash (nothing is written after the copy, as under the lock)

            let store = Store::open(&path).unwrap();
            assert_eq!(store.generation(), live, "legacy: {legacy}");
            assert!(!copy.dir.exists(), "the unfinished copy is removed");
            assert!(!path.join(CURRENT_TMP).exists());
            assert_eq!(dump(&store), before);
            assert_eq!(
                store.sink_park("siem").unwrap().verify().unwrap().entries,
                5
            );
            let next = write_the_rest(&store, 2, 1).await;
            assert!(next[0] > *seqs.iter().max().unwrap());
            // It compacts again afterwards, as if nothing had happened.
            assert_eq!(store.compact().unwrap().generation, live + 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_current_is_switched_keeps_the_new_generation_and_removes_the_old() {
        for legacy in [false, true] {
            let (dir, store, seqs, copy) = copied_but_not_switched(legacy).await;
            let path = dir.path().join("park");
            let old = copy.number - 1;
            assert!(write_current(&path, copy.number).is_ok());
            let before = dump(&store);
            drop(store); // the crash, before the swap and the old generation's deletion

            let store = Store::open(&path).unwrap();
            assert_eq!(store.generation(), old + 1, "legacy: {legacy}");
            assert_eq!(gen_dirs(&path), [old + 1]);
            assert!(!has_legacy_files(&path));
            assert_eq!(dump(&store), before);
            let siem = store.sink_park("siem").unwrap();
            assert_eq!(siem.verify().unwrap().entries, 5);
            let next = write_the_rest(&store, 2, 1).await;
            assert!(next[0] > *seqs.iter().max().unwrap());
            assert!(park(&siem, 1, 1).await[0] > next[0]);
        }
    }

    #[test]
    fn an_unfinished_new_store_is_started_again_and_a_missing_generation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("park");
        // Created up to gen-1's database, CURRENT not written yet.
        std::fs::create_dir_all(path.join("gen-1")).unwrap();
        std::fs::write(path.join("gen-1/db"), b"half a database").unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.generation(), 1);
        assert_eq!(read_current(&path).unwrap(), Some(1));
        drop(store);

        // CURRENT naming a generation that is not there is not taken for a new, empty store.
        std::fs::write(path.join(CURRENT), "gen-7\n").unwrap();
        let e = Store::open(&path).err().unwrap();
        assert!(e.to_string().contains("gen-7"), "{e}");
        std::fs::write(path.join(CURRENT), "rubbish\n").unwrap();
        let e = Store::open(&path).err().unwrap();
        assert!(e.to_string().contains("CURRENT"), "{e}");
    }

    #[test]
    fn a_second_opener_gets_in_use_before_during_and_after_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("park");
        let store = Store::open(&path).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::InUse { .. })));
        store.compact().unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::InUse { .. })));
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.generation(), 2);
    }

    #[test]
    fn a_failed_store_is_not_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("park");
        let store = Store::open(&path).unwrap();
        store.fail("a write failed (test)".into());
        assert!(matches!(
            store.compact(),
            Err(StoreError::Unwritable { .. })
        ));
        assert_eq!(gen_dirs(&path), [1]);
        std::mem::forget(store); // a failed store is never dropped
    }

    /// Appends (and releases), quarantine writes and FIFO pushes from several tasks while
    /// another thread compacts again and again: every acknowledged write is there afterwards,
    /// in every generation and after a reopen, and sequence numbers only grow.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_racing_with_compactions_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("park");
        let exports = dir.path().join("exports");
        let store = Store::open(&path).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let compactor = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    store.compact().unwrap();
                    n += 1;
                }
                n
            })
        };
        let mut tasks = tokio::task::JoinSet::new();
        for sink in ["a", "b"] {
            let park = store.sink_park(sink).unwrap();
            let exports = exports.clone();
            tasks.spawn(async move {
                let (mut acked, mut released) = (Vec::new(), Vec::new());
                for i in 0..150 {
                    let seq = park.append(&batch(i * 10, 10, 50), None).await.unwrap();
                    if let Some(&last) = acked.last() {
                        assert!(seq > last, "{sink}: {seq} after {last}");
                    }
                    acked.push(seq);
                    if i % 3 == 2 {
                        let head = park.head().unwrap().unwrap();
                        let proof = Exporter::new(&exports)
                            .export(sink, std::slice::from_ref(&head), ExportReason::Purged)
                            .unwrap();
                        park.release(&head, Release::Exported(proof.into_iter().next().unwrap()))
                            .unwrap();
                        released.push(head.seq);
                    }
                }
                (format!("park:{sink}:meta"), acked, released)
            });
        }
        {
            let store = store.clone();
            tasks.spawn(async move {
                let mut acked = Vec::new();
                for i in 0..150 {
                    store.quarantine_durably(&[quarantined(i)]).await.unwrap();
                    acked.push(i as u64);
                }
                ("quarantine".to_string(), acked, Vec::new())
            });
        }
        {
            let store = store.clone();
            tasks.spawn(async move {
                let outbox = store.fifo::<u64>("outbox").unwrap();
                let mut acked = Vec::new();
                for i in 0..300 {
                    acked.push(outbox.push(&i).unwrap());
                    if i % 10 == 9 {
                        store.flush().await.unwrap();
                    }
                }
                store.flush().await.unwrap();
                ("outbox".to_string(), acked, Vec::new())
            });
        }
        let mut results = Vec::new();
        while let Some(r) = tasks.join_next().await {
            results.push(r.unwrap());
        }
        stop.store(true, Ordering::SeqCst);
        let compactions = compactor.join().unwrap();
        assert!(
            compactions >= 2,
            "{compactions} compactions during the writes"
        );

        let check = |store: &Store| {
            let d = dump(store);
            let mut all_keys = Vec::new();
            for (tree, acked, released) in &results {
                let rows = &d[tree.as_bytes()];
                if tree == "quarantine" {
                    let offsets: Vec<u64> = rows
                        .iter()
                        .map(|(_, v)| {
                            let e: QuarantineEntry =
                                serde_json::from_slice(codec::decode(0, v).unwrap()).unwrap();
                            e.offset as u64
                        })
                        .collect();
                    assert_eq!(&offsets, acked, "every quarantined entry, in order");
                    continue;
                }
                let keys: Vec<u64> = rows.iter().map(|(k, _)| codec::key_to_u64(k)).collect();
                let kept: Vec<u64> = acked
                    .iter()
                    .copied()
                    .filter(|s| !released.contains(s))
                    .collect();
                assert_eq!(
                    keys, kept,
                    "{tree}: every acknowledged entry, nothing released"
                );
                all_keys.extend(acked.iter().copied());
            }
            for sink in ["a", "b"] {
                store.sink_park(sink).unwrap().verify().unwrap();
            }
            all_keys.sort();
            let n = all_keys.len();
            all_keys.dedup();
            assert_eq!(all_keys.len(), n, "no sequence number handed out twice");
        };
        check(&store);
        let generation = store.generation();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.generation(), generation);
        assert_eq!(gen_dirs(&path), [generation]);
        check(&store);
    }
}
