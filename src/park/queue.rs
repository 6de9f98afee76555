//! One sink's park: a durable FIFO of batches (see the rules in the module above).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::codec::{self, key_to_u64, CorruptEntry};
use super::entry::{decode_records, encode_records, Parked, ParkedHeader};
use super::export::Exported;
use super::{check_release, Counts, Store, StoreError};
use crate::batch::Batch;
use crate::sink::Receipt;

/// What lets an entry leave the park.
#[derive(Debug)]
pub enum Release {
    /// The sink delivered this very batch.
    Delivered(Receipt),
    /// The entry was exported to `expired_dir` and the file fsynced.
    Exported(Exported),
}

/// One sink's park counts, kept in memory for status, metrics and limits.
#[derive(Debug, Default)]
pub struct ParkCounts {
    entries: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    /// When the oldest entry was parked (ms since the epoch), 0 when empty.
    oldest_ms: AtomicI64,
    /// When the newest entry was parked, 0 when empty.
    newest_ms: AtomicI64,
    /// Held from a change's transaction until these counts show it, so that two changes of
    /// this park (an append and a release racing) update them in the order they committed.
    order: std::sync::Mutex<()>,
}

impl ParkCounts {
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    /// When the oldest parked entry was parked, if any.
    pub fn oldest_ms(&self) -> Option<i64> {
        match self.oldest_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }
    /// When the newest parked entry was parked, if any.
    pub fn newest_ms(&self) -> Option<i64> {
        match (self.entries(), self.newest_ms.load(Ordering::Relaxed)) {
            (0, _) | (_, 0) => None,
            (_, ms) => Some(ms),
        }
    }
    fn set(&self, c: Counts) {
        self.entries.store(c.entries, Ordering::Relaxed);
        self.events.store(c.events, Ordering::Relaxed);
        self.bytes.store(c.bytes, Ordering::Relaxed);
    }
}

/// The park of one sink.
#[derive(Clone)]
pub struct SinkPark {
    store: Store,
    name: Arc<str>,
    /// The names of its trees (looked up in the store's open database at each use).
    meta: Arc<str>,
    data: Arc<str>,
    counts: Arc<ParkCounts>,
}

type TxError = TransactionError<StoreError>;

impl SinkPark {
    /// The store this park lives in (for the quarantine of refused records).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn open(store: Store, name: &str) -> Result<Self, StoreError> {
        let counts = {
            let mut parks = store.inner.parks.lock().unwrap_or_else(|p| p.into_inner());
            parks.entry(name.to_string()).or_default().clone()
        };
        let park = Self::handle(store, name, counts);
        park.check_counters()?;
        park.store.recount_total();
        Ok(park)
    }

    fn handle(store: Store, name: &str, counts: Arc<ParkCounts>) -> Self {
        Self {
            store,
            name: name.into(),
            meta: format!("park:{name}:meta").into(),
            data: format!("park:{name}:data").into(),
            counts,
        }
    }

    fn meta(&self) -> Result<sled::Tree, StoreError> {
        self.store.tree(&self.meta)
    }

    fn data(&self) -> Result<sled::Tree, StoreError> {
        self.store.tree(&self.data)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The in-memory counts (shared with the status).
    pub fn counts(&self) -> Arc<ParkCounts> {
        self.counts.clone()
    }

    pub fn entries(&self) -> u64 {
        self.counts.entries()
    }

    /// Bytes parked across all sinks of the store.
    pub fn total_bytes(&self) -> u64 {
        self.store.total_bytes()
    }

    /// Resolves when any park in the store has released an entry (room may have appeared).
    pub async fn room(&self) {
        self.store.inner.freed.notified().await
    }

    /// Compares the persisted counters with a scan of the headers; repairs them if they differ.
    /// Returns the counts found.
    fn check_counters(&self) -> Result<Counts, StoreError> {
        let mut scanned = Counts::default();
        let (mut oldest, mut newest) = (0, 0);
        for kv in self.meta()?.iter() {
            let (k, v) = kv.map_err(|e| self.store.sled_err(e))?;
            let h = decode_header(key_to_u64(&k), &v)?;
            if scanned.entries == 0 {
                oldest = h.parked_at_ms;
            }
            newest = h.parked_at_ms;
            scanned.entries += 1;
            scanned.events += h.events;
            scanned.bytes += h.bytes;
        }
        let stored = self.persisted_counts()?;
        if stored != scanned {
            tracing::warn!(sink = %self.name, ?stored, ?scanned, "park counters did not match the store (an interrupted write?); using the scanned values");
            let w = self.store.writing()?;
            w.tree("counters")?
                .insert(
                    self.name.as_bytes(),
                    codec::encode(&serde_json::to_vec(&scanned)?),
                )
                .map_err(|e| self.store.sled_err(e))?;
        }
        self.counts.set(scanned);
        self.counts.oldest_ms.store(oldest, Ordering::Relaxed);
        self.counts.newest_ms.store(newest, Ordering::Relaxed);
        if scanned.entries > 0 {
            tracing::info!(sink = %self.name, entries = scanned.entries, events = scanned.events, bytes = scanned.bytes, "parked batches from an earlier run");
        }
        Ok(scanned)
    }

    fn persisted_counts(&self) -> Result<Counts, StoreError> {
        match self
            .store
            .tree("counters")?
            .get(self.name.as_bytes())
            .map_err(|e| self.store.sled_err(e))?
        {
            Some(v) => Ok(serde_json::from_slice(codec::decode(0, &v)?)?),
            None => Ok(Counts::default()),
        }
    }

    /// Parks a batch (after `error`, when a delivery failed) and flushes: once this returns,
    /// the batch is durable and its offsets may be committed. Returns its sequence number.
    pub async fn append(&self, batch: &Batch, error: Option<&str>) -> Result<u64, StoreError> {
        let header = ParkedHeader::new(batch, error);
        let key = self.insert(&header, batch)?;
        // The flush reaches whichever generation is live by now (see "Compaction").
        self.store.flush().await?;
        Ok(key)
    }

    /// An append's transaction: the entry and its counters, with a new sequence number, in the
    /// generation held for it; then the counts in memory. Returns the number.
    fn insert(&self, header: &ParkedHeader, batch: &Batch) -> Result<u64, StoreError> {
        let meta_value = codec::encode(&serde_json::to_vec(header)?);
        let data_value = codec::encode(&encode_records(batch));
        let name = self.name.as_bytes();
        let (events, bytes) = (header.events, header.bytes);
        let w = self.store.writing()?;
        let key = w.next_key()?;
        let [meta, data, counters] = w.trees([&self.meta, &self.data, "counters"])?;
        let order = self.counts.order.lock().unwrap_or_else(|p| p.into_inner());
        let updated = (&meta, &data, &counters)
            .transaction(|(m, d, c)| {
                m.insert(&key, meta_value.as_slice())?;
                d.insert(&key, data_value.as_slice())?;
                let mut n = read_counts(c.get(name)?)?;
                n.entries += 1;
                n.events += events;
                n.bytes += bytes;
                c.insert(name, write_counts(&n)?)?;
                Ok(n)
            })
            .map_err(|e| self.tx_err(e))?;
        if self.counts.entries() == 0 {
            self.counts
                .oldest_ms
                .store(header.parked_at_ms, Ordering::Relaxed);
        }
        self.counts
            .newest_ms
            .store(header.parked_at_ms, Ordering::Relaxed);
        self.counts.set(updated);
        drop(order);
        self.store.recount_total();
        Ok(key_to_u64(&key))
    }

    /// The oldest entry, read in full (records checked), without removing it.
    pub fn head(&self) -> Result<Option<Parked>, StoreError> {
        let Some((k, v)) = self.meta()?.first().map_err(|e| self.store.sled_err(e))? else {
            return Ok(None);
        };
        self.read(key_to_u64(&k), &v).map(Some)
    }

    /// The oldest `limit` entries' headers, for listings.
    pub fn headers(&self, limit: usize) -> Result<Vec<(u64, ParkedHeader)>, StoreError> {
        self.meta()?
            .iter()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.store.sled_err(e))?;
                let seq = key_to_u64(&k);
                Ok((seq, decode_header(seq, &v)?))
            })
            .collect()
    }

    /// The newest entry's header.
    pub fn newest(&self) -> Result<Option<(u64, ParkedHeader)>, StoreError> {
        match self.meta()?.last().map_err(|e| self.store.sled_err(e))? {
            Some((k, v)) => {
                let seq = key_to_u64(&k);
                Ok(Some((seq, decode_header(seq, &v)?)))
            }
            None => Ok(None),
        }
    }

    /// Every entry in order, read in full, for exports and offline replays.
    pub fn entries_iter(&self) -> Box<dyn Iterator<Item = Result<Parked, StoreError>> + '_> {
        match self.meta() {
            Ok(meta) => Box::new(meta.iter().map(move |kv| {
                let (k, v) = kv.map_err(|e| self.store.sled_err(e))?;
                self.read(key_to_u64(&k), &v)
            })),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn read(&self, seq: u64, meta: &[u8]) -> Result<Parked, StoreError> {
        let header = decode_header(seq, meta)?;
        let data = self
            .data()?
            .get(seq.to_be_bytes())
            .map_err(|e| self.store.sled_err(e))?
            .ok_or_else(|| CorruptEntry {
                key: seq,
                reason: "its records are missing".into(),
            })?;
        let batch = decode_records(seq, &header, codec::decode(seq, &data)?)?;
        Ok(Parked { seq, header, batch })
    }

    /// The header of entry `seq`, when its records cannot be read (for exporting it).
    pub fn header_of(&self, seq: u64) -> Option<ParkedHeader> {
        let v = self.meta().ok()?.get(seq.to_be_bytes()).ok()??;
        decode_header(seq, &v).ok()
    }

    /// Records a failed delivery attempt of entry `seq`.
    pub fn record_attempt(&self, seq: u64, error: &str) -> Result<(), StoreError> {
        let key = seq.to_be_bytes();
        let w = self.store.writing()?;
        let meta = w.tree(&self.meta)?;
        let Some(v) = meta.get(key).map_err(|e| self.store.sled_err(e))? else {
            return Ok(());
        };
        let mut h = decode_header(seq, &v)?;
        h.attempts = h.attempts.saturating_add(1);
        h.last_error = Some(error.to_string());
        h.last_attempt_at =
            Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        // Only if the entry is still there (a concurrent release may have removed it).
        let _ = meta
            .compare_and_swap(key, Some(v), Some(codec::encode(&serde_json::to_vec(&h)?)))
            .map_err(|e| self.store.sled_err(e))?;
        Ok(())
    }

    /// Removes an entry in exchange for its receipt or export proof.
    pub fn release(&self, parked: &Parked, release: Release) -> Result<(), StoreError> {
        check_release(parked, &release)?;
        self.remove(parked.seq, parked.header.events, parked.header.bytes)
    }

    /// Removes a damaged entry once it was exported (its header may be unreadable).
    pub fn release_damaged(&self, exported: Exported) -> Result<(), StoreError> {
        let seq = exported.seq();
        let (events, bytes) = self.header_of(seq).map_or((0, 0), |h| (h.events, h.bytes));
        self.remove(seq, events, bytes)
    }

    fn remove(&self, seq: u64, events: u64, bytes: u64) -> Result<(), StoreError> {
        let key = seq.to_be_bytes();
        let name = self.name.as_bytes();
        let w = self.store.writing()?;
        let [meta, data, counters] = w.trees([&self.meta, &self.data, "counters"])?;
        let order = self.counts.order.lock().unwrap_or_else(|p| p.into_inner());
        let result = (&meta, &data, &counters)
            .transaction(|(m, d, c)| {
                if m.remove(&key)?.is_none() {
                    // Already released (an expiry and a delivery raced): nothing to count.
                    return Ok(None);
                }
                d.remove(&key)?;
                let mut n = read_counts(c.get(name)?)?;
                n.entries = n.entries.saturating_sub(1);
                n.events = n.events.saturating_sub(events);
                n.bytes = n.bytes.saturating_sub(bytes);
                c.insert(name, write_counts(&n)?)?;
                Ok(Some(n))
            })
            .map_err(|e| self.tx_err(e))?;
        let Some(n) = result else {
            return Ok(());
        };
        self.counts.set(n);
        let oldest = match meta.first() {
            Ok(Some((k, v))) => decode_header(key_to_u64(&k), &v)
                .map(|h| h.parked_at_ms)
                .unwrap_or(0),
            _ => 0,
        };
        self.counts.oldest_ms.store(oldest, Ordering::Relaxed);
        drop((order, meta, w));
        self.store.recount_total();
        self.store.inner.freed.notify_waiters();
        if n.entries == 0 {
            self.store.drained();
        }
        Ok(())
    }

    fn tx_err(&self, e: TxError) -> StoreError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => self.store.sled_err(e),
        }
    }

    /// Scans both trees and checks every entry's frames and the counters: for tests and
    /// `parked list --verify`. Returns the counts found.
    pub fn verify(&self) -> Result<Counts, StoreError> {
        let mut found = Counts::default();
        for p in self.entries_iter() {
            let p = p?;
            found.entries += 1;
            found.events += p.header.events;
            found.bytes += p.header.bytes;
        }
        let data_keys = self.data()?.iter().keys().count() as u64;
        if data_keys != found.entries {
            return Err(CorruptEntry {
                key: 0,
                reason: format!("{data_keys} record sets for {} headers", found.entries),
            }
            .into());
        }
        let stored = self.persisted_counts()?;
        if stored != found {
            return Err(CorruptEntry {
                key: 0,
                reason: format!("counters {stored:?} but the store holds {found:?}"),
            }
            .into());
        }
        Ok(found)
    }
}

fn decode_header(seq: u64, v: &[u8]) -> Result<ParkedHeader, StoreError> {
    Ok(serde_json::from_slice(codec::decode(seq, v)?)?)
}

fn read_counts(v: Option<sled::IVec>) -> Result<Counts, ConflictableTransactionError<StoreError>> {
    let Some(v) = v else {
        return Ok(Counts::default());
    };
    let payload = codec::decode(0, &v)
        .map_err(|e| ConflictableTransactionError::Abort(StoreError::Corrupt(e)))?;
    serde_json::from_slice(payload)
        .map_err(|e| ConflictableTransactionError::Abort(StoreError::Encode(e)))
}

fn write_counts(c: &Counts) -> Result<Vec<u8>, ConflictableTransactionError<StoreError>> {
    serde_json::to_vec(c)
        .map(|v| codec::encode(&v))
        .map_err(|e| ConflictableTransactionError::Abort(StoreError::Encode(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::park::export::{ExportReason, Exporter};

    fn batch(offset: i64) -> Batch {
        Batch::for_test(offset, 10, 0)
    }

    /// The intake appends while the replayer releases each entry as soon as it can read it (a
    /// drain catching up): afterwards the counts in memory (for `/status`, the metrics and
    /// `park.max_bytes`) are the ones on disk, whatever order the two finished in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_and_a_release_racing_leave_the_counts_in_memory_as_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        // Exports on tmpfs when there is one, so a release is quick next to an append's flush.
        let exports = match std::path::Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm").unwrap(),
            false => tempfile::tempdir().unwrap(),
        };
        let store = Store::open(&dir.path().join("park")).unwrap();
        let park = store.sink_park("siem").unwrap();
        let releaser = {
            let park = park.clone();
            let exporter = Exporter::new(exports.path());
            std::thread::spawn(move || {
                let mut released = 0;
                while released < 300 {
                    let Some(head) = park.head().unwrap() else {
                        std::hint::spin_loop();
                        continue;
                    };
                    let proof = exporter
                        .export("siem", std::slice::from_ref(&head), ExportReason::Purged)
                        .unwrap();
                    park.release(&head, Release::Exported(proof.into_iter().next().unwrap()))
                        .unwrap();
                    released += 1;
                }
            })
        };
        for i in 0..300 {
            park.append(&batch(i * 10), None).await.unwrap();
        }
        releaser.join().unwrap();
        let on_disk = park.verify().unwrap();
        assert_eq!(on_disk, Counts::default());
        let c = park.counts();
        assert_eq!((c.entries(), c.events(), c.bytes()), (0, 0, 0));
        assert_eq!(store.total_bytes(), 0, "the total of parked bytes drifted");
        assert_eq!(c.oldest_ms(), None);
        assert_eq!(c.newest_ms(), None);
    }
}
