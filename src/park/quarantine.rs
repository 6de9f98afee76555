//! The quarantine: messages that could not be decoded, and events one sink could not render.
//!
//! Nothing is dropped quietly: each such message is written here with its raw bytes, the
//! reason and its Kafka coordinates, counted, and logged. Its offset is finished (may be
//! committed) only after the write is flushed. `auditstream quarantine list|export` reads it.
//!
//! Writes go through one task ([`run_writer`]) that groups what arrives together into one
//! flush, so a burst of bad messages costs one fsync, not one each.

use std::sync::mpsc::Sender;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::codec::{self, key_to_u64};
use super::{Store, StoreError};
use crate::event::{RawMessage, TopicPartition};
use crate::offsets::{Finished, Slot};

/// One quarantined message, as stored and as `quarantine export` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// RFC 3339, UTC.
    pub quarantined_at: String,
    /// The sink that could not render it; absent when the message could not be decoded (then
    /// no sink received it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sink: Option<String>,
    /// A short label: `not_json`, `too_large`, `render_failed`, ...
    pub kind: String,
    /// What went wrong, in words.
    pub reason: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timestamp_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
    /// The message value when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<String>,
    /// The message value, base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value_base64: Option<String>,
}

impl QuarantineEntry {
    /// An entry for a message, keeping its value as text or base64.
    pub fn new(msg: &RawMessage, sink: Option<&str>, kind: &str, reason: String) -> Self {
        let (value, value_base64) = match msg.payload.as_deref() {
            None => (None, None),
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => (Some(s.to_string()), None),
                Err(_) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(b)),
                ),
            },
        };
        Self {
            quarantined_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sink: sink.map(str::to_string),
            kind: kind.to_string(),
            reason,
            topic: msg.coords.topic.to_string(),
            partition: msg.coords.partition,
            offset: msg.coords.offset,
            timestamp_ms: msg.timestamp_ms,
            key: msg
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            value,
            value_base64,
        }
    }
}

/// A request to quarantine: the entry, and the slot whose work it finishes.
#[derive(Debug)]
struct Request {
    slot: Slot,
    entry: QuarantineEntry,
}

/// Where stages send what they quarantine. Cloned into the source and every sink worker.
#[derive(Clone)]
pub struct Quarantine {
    tx: UnboundedSender<Request>,
}

impl Quarantine {
    /// A handle and the receiver [`run_writer`] consumes.
    pub fn channel() -> (Quarantine, QuarantineQueue) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Quarantine { tx }, QuarantineQueue(rx))
    }

    /// Queues an entry; `slot`'s work on that offset is finished once it is flushed.
    pub fn submit(&self, slot: Slot, entry: QuarantineEntry) {
        tracing::warn!(
            sink = entry.sink.as_deref().unwrap_or("-"),
            kind = %entry.kind,
            topic = %entry.topic,
            partition = entry.partition,
            offset = entry.offset,
            reason = %entry.reason,
            "quarantined"
        );
        if self.tx.send(Request { slot, entry }).is_err() {
            tracing::error!("the quarantine writer has stopped; this offset stays uncommitted");
        }
    }
}

/// The receiving end, owned by [`run_writer`].
pub struct QuarantineQueue(UnboundedReceiver<Request>);

impl Store {
    fn quarantine_append(&self, entries: &[&QuarantineEntry]) -> Result<(), StoreError> {
        let w = self.writing()?;
        let tree = w.tree("quarantine")?;
        for entry in entries {
            let key = w.next_key()?;
            let value = codec::encode(&serde_json::to_vec(entry)?);
            tree.insert(key, value).map_err(|e| self.sled_err(e))?;
        }
        Ok(())
    }

    /// Writes entries to the quarantine and flushes them to disk: for callers that must know
    /// the entries are durable before they go on (a sink's refused records).
    pub async fn quarantine_durably(&self, entries: &[QuarantineEntry]) -> Result<(), StoreError> {
        let refs: Vec<&QuarantineEntry> = entries.iter().collect();
        self.quarantine_append(&refs)?;
        self.flush().await
    }

    /// Every quarantined entry, oldest first, with its sequence number.
    pub fn quarantine_entries(
        &self,
    ) -> Box<dyn Iterator<Item = Result<(u64, QuarantineEntry), StoreError>> + '_> {
        let tree = match self.tree("quarantine") {
            Ok(t) => t,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(tree.iter().map(move |kv| {
            let (k, v) = kv.map_err(|e| self.sled_err(e))?;
            let key = key_to_u64(&k);
            let payload = codec::decode(key, &v)?;
            Ok((key, serde_json::from_slice(payload)?))
        }))
    }
}

/// Writes quarantine requests, flushes, then reports their offsets finished. Runs until every
/// [`Quarantine`] handle is dropped and the queue is empty. A store error is logged and retried:
/// the offsets are held back until the write succeeds, never reported on failure.
pub async fn run_writer(store: Store, queue: QuarantineQueue, reports: Sender<Finished>) {
    let mut rx = queue.0;
    let mut group = Vec::new();
    while rx.recv_many(&mut group, 1024).await > 0 {
        let entries: Vec<&QuarantineEntry> = group.iter().map(|r| &r.entry).collect();
        let mut wait = Duration::from_millis(100);
        loop {
            let written = match store.quarantine_append(&entries) {
                Ok(()) => store.flush().await,
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?wait, "cannot write to the quarantine; offsets are held back until it works");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
        for r in &group {
            // Per sink for render failures; without a sink label for messages no sink got.
            match &r.entry.sink {
                Some(sink) => metrics::counter!("auditstream_quarantined_events_total", "sink" => sink.clone()).increment(1),
                None => metrics::counter!("auditstream_quarantined_events_total").increment(1),
            }
        }
        for r in group.drain(..) {
            let report = Finished {
                slot: r.slot,
                tp: TopicPartition {
                    topic: r.entry.topic.as_str().into(),
                    partition: r.entry.partition,
                },
                offsets: vec![r.entry.offset],
            };
            // The source has gone only when the pipeline is stopping at once; nothing to do.
            let _ = reports.send(report);
        }
    }
}
