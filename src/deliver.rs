//! The delivery worker: one per sink, the whole life of an event inside that sink.
//!
//! ```text
//!                  ┌──────── park empty: deliver ──── ok ──────────────► report finished
//! queue -> render -> batch ┤                  └─ fails: park it ─┐
//! (or quarantine)          └──────── park not empty: park it ────┴─► (flushed) report finished
//!                                                                  │
//!               replayer: head of the park -> deliver -> release ◄─┘ (in order, one at a time)
//! ```
//!
//! **Rendering** is most of a sink's CPU, so the events waiting in its queue are taken in
//! chunks (up to [`RENDER_CHUNK`], whatever is ready), each chunk is rendered as a task (on
//! any core), and the results are put back in queue order before batching.
//!
//! **Intake.** While the sink's park is empty, each batch is delivered directly. A batch whose
//! delivery fails is parked at once (durably), and so is every batch after it while the park
//! holds anything: nothing overtakes, and the sink never holds up the source, so the other
//! sinks go on at full speed. A batch counts as finished (its offsets may be committed) when
//! it is delivered or when its park write is flushed.
//!
//! **Replayer.** Sends the oldest parked batch again and again, and removes it only with the
//! receipt of its delivery. The sink's state follows ([`SinkState`]):
//! - `retrying`: a delivery failed; the head is retried on the `[sinks.retry]` schedule
//!   (exponential, jittered, obeying `Retry-After`) until `max_elapsed` has passed;
//! - `broken`: a permanent error, retries past `max_elapsed`, or a failure while recovering;
//!   the head is *probed* on a schedule doubling from `initial_interval` up to
//!   `park.probe_max_interval`;
//! - `recovering`: a delivery of the head succeeded; the park is drained in order as fast as
//!   the sink accepts, each batch removed after its receipt;
//! - `healthy`: the park is empty; the intake delivers directly again.
//!
//! **Spilling.** A sink that is slow but not failing would hold the source's in-flight window
//! (`pipeline.max_in_flight_events`) and, once it is full, every other sink would wait for it.
//! So when the window has filled for that reason and this sink holds at least its share of
//! the window unfinished (and another sink far less), its next batches go to the park instead
//! (the same path as a failure: durable, then finished), the window frees, and the others go
//! on at full speed; the replayer delivers the park in order at the slow sink's own pace
//! (`recovering`). With a single sink there is nobody to let through, so it never spills.
//!
//! **Limits.** When the park reaches `park.max_bytes`, `when_full = "block"` makes the intake
//! wait for room (its queue fills, the source stops reading, Kafka keeps the data, and
//! since the group has one position per partition the other sinks wait too), and
//! `"drop_oldest"` exports this sink's oldest batches to `expired_dir` to make room. Batches
//! parked longer than `park.max_age` are exported and removed. A park that cannot be written
//! (full disk, sled error) holds the batch and its offsets and retries until it can.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::batch::{self, Batch, Record};
use crate::config::{BatchConfig, RetryConfig, WhenFull};
use crate::event::{Event, RawMessage};
use crate::offsets::{Finished, Slot};
use crate::park::export::{ExportReason, Exporter};
use crate::park::quarantine::{Quarantine, QuarantineEntry};
use crate::park::{Release, SinkPark, StoreError};
use crate::sink::{DeliveryError, Sink};
use crate::status::{SinkState, SinkStatus};
use crate::template::Templates;

/// The most events rendered by one task (a chunk takes what the queue holds, up to this).
/// Large, because handing a chunk from task to task costs a wake-up (tens of µs when the
/// other core has gone to sleep): at 128, the two cores were rarely both rendering; at 1024
/// (about 5 ms of rendering) they nearly always are. Small enough that the events of
/// `render_tasks()` chunks are a small part of the in-flight window.
const RENDER_CHUNK: usize = 1024;

/// Chunks rendered at once, one per core.
fn render_tasks() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The park settings a worker obeys.
#[derive(Debug, Clone)]
pub struct ParkLimits {
    pub max_bytes: u64,
    pub when_full: WhenFull,
    pub max_age: Duration,
    pub probe_max_interval: Duration,
    pub exporter: Exporter,
}

/// Everything one sink's worker needs.
pub struct Worker {
    /// The sink's index in the configuration (its template and status).
    pub index: usize,
    pub slot: Slot,
    pub sink: Box<dyn Sink>,
    pub templates: Arc<Templates>,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    /// Batches delivered at once; above 1, order across batches is given up.
    pub concurrency: usize,
    pub status: Arc<SinkStatus>,
    pub reports: Sender<Finished>,
    pub quarantine: Quarantine,
    pub park: SinkPark,
    pub limits: ParkLimits,
    /// Rung by the admin API to probe a broken sink at once.
    pub probe_now: Arc<Notify>,
    /// Whether the source waits for room in its window: the batches are then closed once
    /// nothing more is queued for this sink (see [`crate::batch`]).
    pub held: tokio::sync::watch::Receiver<bool>,
    /// When this sink spills to its park to let the others through; `None`: never.
    pub spill: Option<Spill>,
    /// What this sink hides of each event (`redact`, `pseudonymise`).
    pub redactor: Option<crate::redact::Redactor>,
    /// Where the objects this sink writes are journaled for the integrity digests.
    pub journal: Option<crate::integrity::Journal>,
}

/// The spilling rule (see the module header).
#[derive(Clone)]
pub struct Spill {
    /// The pipeline's status: whether the window has filled (the source's `paused`).
    pub status: Arc<crate::status::Status>,
    /// The queue length from which this sink can count as the one holding the window.
    pub backlog: usize,
}

/// The shared parts of a running worker: the intake and the replayer.
struct Running {
    w: Worker,
    /// Rings when the intake parks something.
    parked: Notify,
    /// The error that made the intake park, for the replayer's first wait.
    intake_failure: Mutex<Option<DeliveryError>>,
}

impl Worker {
    /// Runs until the queue closes and every batch is delivered or parked.
    pub async fn run(self, queue: UnboundedReceiver<Arc<Event>>) {
        let r = Arc::new(Running {
            w: self,
            parked: Notify::new(),
            intake_failure: Mutex::new(None),
        });
        if r.w.park.entries() > 0 {
            // Parked batches from an earlier run: the sink was failing when it stopped, and
            // nothing is delivered directly until they are replayed.
            r.w.status.set_state(
                SinkState::Retrying,
                Some(format!(
                    "{} parked events from an earlier run are waiting to be replayed",
                    r.w.park.counts().events()
                )),
            );
        }
        r.check_health().await;
        // Aborted with the worker, even when the worker itself is aborted at a stop's deadline.
        let replayer = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            r.clone().replay().in_current_span(),
        ));
        let (render, label, seen) = (r.clone(), r.clone(), r.clone());
        // Rendering is most of a sink's CPU: the events waiting in the queue are taken in
        // chunks (`recv_many`: one wake-up for many events, where `recv` stops at tokio's
        // budget of 128 per poll), rendered as tasks on every core, put back in order
        // (`buffered`), and handed to the batcher a chunk at a time. They count as queued (on
        // the status page) until their chunk is rendered.
        let records = futures::stream::unfold(queue, |mut q| async move {
            let mut chunk = Vec::with_capacity(RENDER_CHUNK);
            (q.recv_many(&mut chunk, RENDER_CHUNK).await > 0).then_some((chunk, q))
        })
        .map(move |events| {
            let r = render.clone();
            tokio::spawn(async move {
                let n = events.len();
                (n, events.into_iter().filter_map(|e| r.render(e)).collect())
            })
        })
        .buffered(render_tasks())
        .map(
            move |done: Result<(usize, Vec<_>), tokio::task::JoinError>| match done {
                Ok((n, records)) => {
                    seen.w.status.sub_queued(n as u64);
                    records
                }
                // Rendering does not panic; if it ever did, the worker stops as it would have
                // without the tasks. Either way the chunk's offsets are never reported, so
                // nothing after them is committed.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // The runtime is shutting down.
                Err(_) => Vec::new(),
            },
        );
        let waiting = r.w.status.clone();
        let full = batch::FullWindow {
            held: r.w.held.clone(),
            waiting: Box::new(move || waiting.queued()),
        };
        let batches = batch::batches(records, r.w.batch, full, move |first: &Arc<Event>| {
            label.label(first)
        });
        // Rendering and batching run in their own task, at most two batches ahead of delivery:
        // the next batch is rendered (on the other core) while this one is sent.
        let (ahead_tx, ahead_rx) = tokio::sync::mpsc::channel(2);
        let _ahead = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            batches
                .map(Ok)
                .forward(futures::sink::unfold(ahead_tx, |tx, b| async move {
                    tx.send(b).await.map(|_| tx)
                }))
                .in_current_span(),
        ));
        futures::stream::unfold(ahead_rx, |mut rx| async move {
            rx.recv().await.map(|b| (b, rx))
        })
        .for_each_concurrent(r.w.concurrency.max(1), |b| {
            let r = r.clone();
            async move { r.take(b).await }
        })
        .await;
        // Parked batches are durable; the next start replays what is left.
        replayer.abort();
        let _ = replayer.await;
        tracing::info!(sink = %r.w.status.name, parked = r.w.park.entries(), "sink worker finished");
    }
}

impl Running {
    fn name(&self) -> &str {
        &self.w.status.name
    }

    /// The start-up check of the destination. A failure is logged and shown as `retrying`; the
    /// worker goes on (the park takes what cannot be delivered), it never stops the daemon.
    async fn check_health(&self) {
        match self.w.sink.health_check().await {
            Ok(()) => {
                tracing::info!(sink = %self.name(), destination = %self.w.status.destination, "destination reachable")
            }
            Err(e) => {
                self.w
                    .status
                    .set_state(SinkState::Retrying, Some(e.to_string()));
                tracing::error!(sink = %self.name(), destination = %self.w.status.destination, error = %e, "start-up check failed: the destination is not reachable or not writable; what cannot be delivered will be parked");
            }
        }
    }

    /// The label of a batch this event opens: the S3 object key part. A key template that
    /// fails on this event files the batch under `unrendered-key/` and says so.
    fn label(&self, first: &Event) -> Option<String> {
        match self.w.templates.render_key(self.w.index, first)? {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(sink = %self.name(), coords = %first.coords, error = %e, "the key template failed on a batch's first event; the batch goes under unrendered-key/");
                metrics::counter!("auditstream_key_render_failures_total", "sink" => self.name().to_string()).increment(1);
                Some("unrendered-key/".into())
            }
        }
    }

    /// Renders one event, or quarantines it for this sink.
    fn render(
        &self,
        event: Arc<Event>,
    ) -> Option<(crate::event::TopicPartition, Record, Arc<Event>)> {
        let rendered = self
            .w
            .templates
            .render_redacted(self.w.index, self.w.redactor.as_ref(), &event)
        .map_err(|e| e.to_string())
            .and_then(|body| {
                if self.w.sink.one_record_per_line()
                    && memchr::memchr2(b'\n', b'\r', body.as_bytes()).is_some()
                {
                    Err("the rendered record contains a line break, and this sink writes one record per line (use the `json` helper for values that may hold line breaks)".to_string())
                } else {
                    Ok(body)
                }
            });
        match rendered {
            Ok(body) => Some((
                event.coords.topic_partition(),
                Record {
                    offset: event.coords.offset,
                    body,
                },
                event,
            )),
            Err(e) => {
                let msg = RawMessage {
                    coords: event.coords.clone(),
                    timestamp_ms: None,
                    key: None,
                    headers: vec![],
                    // A sink that must not see personal data does not leave it in the
                    // quarantine either.
                    payload: Some(match &self.w.redactor {
                        None => event.raw.clone(),
                        // Fields that do not parse cannot be redacted: only the reason is kept.
                        Some(r) => match event.fields() {
                            Ok(mut fields) => {
                                r.apply(&mut fields);
                                if let serde_json::Value::Object(m) = &mut fields {
                                    m.remove("_kafka");
                                }
                                fields.to_string().into()
                            }
                            Err(_) => bytes::Bytes::new(),
                        },
                    }),
                };
                let entry = QuarantineEntry::new(&msg, Some(self.name()), "render_failed", e);
                self.w.status.add_quarantined(1);
                self.w.status.sub_unfinished(1);
                self.w.quarantine.submit(self.w.slot, entry);
                None
            }
        }
    }

    /// Reports a batch's offsets finished for this sink.
    fn finished(&self, batch: &Batch) {
        let report = Finished {
            slot: self.w.slot,
            tp: batch.tp.clone(),
            offsets: batch.offsets(),
        };
        self.w.status.sub_unfinished(batch.len() as u64);
        // The source has gone only when the pipeline is stopping at once.
        let _ = self.w.reports.send(report);
    }

    /// One delivery attempt, measured.
    async fn attempt(&self, batch: &Batch) -> Result<crate::sink::Receipt, DeliveryError> {
        let sink = self.name().to_string();
        let started = Instant::now();
        let result = self.w.sink.deliver(batch).await;
        metrics::histogram!("auditstream_delivery_duration_seconds", "sink" => sink.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("auditstream_batch_events", "sink" => sink.clone())
            .record(batch.len() as f64);
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter!("auditstream_delivery_attempts_total", "sink" => sink, "outcome" => outcome).increment(1);
        result
    }

    /// What a receipt asks for before its batch counts as delivered (offsets committed, or its
    /// park entry removed): the objects written are journaled for the integrity digests, and
    /// the records the destination refused for good are quarantined, both durably.
    async fn settle_receipt(&self, batch: &Batch, receipt: &crate::sink::Receipt) {
        if let Some(journal) = &self.w.journal {
            if !receipt.objects().is_empty() {
                let mut wait = Duration::from_millis(100);
                let mut failing = false;
                while let Err(e) = journal.record(batch, receipt.objects()).await {
                    let why = format!("cannot journal written objects for the integrity digest: {e}; the batch and its offsets wait");
                    tracing::error!(sink = %self.name(), "{why}");
                    self.w.status.set_holding(Some(why));
                    failing = true;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                if failing {
                    self.w.status.set_holding(None);
                }
            }
        }
        self.quarantine_refused(batch, receipt).await;
    }

    /// Writes the records the destination refused for good to the quarantine, durably.
    async fn quarantine_refused(&self, batch: &Batch, receipt: &crate::sink::Receipt) {
        if receipt.refused().is_empty() {
            return;
        }
        let entries: Vec<QuarantineEntry> = receipt
            .refused()
            .iter()
            .filter_map(|r| {
                let record = batch.records.get(r.index)?;
                let msg = RawMessage {
                    coords: crate::event::Coords {
                        topic: batch.tp.topic.clone(),
                        partition: batch.tp.partition,
                        offset: record.offset,
                    },
                    timestamp_ms: None,
                    key: None,
                    headers: vec![],
                    payload: Some(record.body.clone().into()),
                };
                Some(QuarantineEntry::new(
                    &msg,
                    Some(self.name()),
                    "refused_by_destination",
                    r.reason.clone(),
                ))
            })
            .collect();
        let mut wait = Duration::from_millis(100);
        while let Err(e) = self.w.park.store().quarantine_durably(&entries).await {
            tracing::error!(sink = %self.name(), error = %e, "cannot write refused records to the quarantine; the batch waits");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        let n = entries.len() as u64;
        self.w.status.add_quarantined(n);
        metrics::counter!("auditstream_quarantined_events_total", "sink" => self.name().to_string()).increment(n);
        for e in &entries {
            tracing::error!(sink = %self.name(), topic = %e.topic, partition = e.partition, offset = e.offset, reason = %e.reason, "the destination refused a record for good; it is in the quarantine (auditstream quarantine list)");
        }
    }

    fn delivered(&self, batch: &Batch, receipt: &crate::sink::Receipt, replayed: bool) {
        let n = (batch.len() - receipt.refused().len().min(batch.len())) as u64;
        self.w.status.add_delivered(n);
        let sink = self.name().to_string();
        metrics::counter!("auditstream_delivered_events_total", "sink" => sink.clone())
            .increment(n);
        if replayed {
            self.w.status.add_replayed(n);
            metrics::counter!("auditstream_replayed_events_total", "sink" => sink).increment(n);
        }
    }

    /// Whether this sink is the one holding the source back (see "Spilling"): the window has
    /// filled, this sink holds its share of the window unfinished, and some other sink holds
    /// far less (while every sink is busy, as when catching up, nobody spills). Unfinished,
    /// not queued: a slow sink's rendered events wait in its batcher and ahead of delivery,
    /// so its queue alone can look short while it holds the whole window.
    fn should_spill(&self) -> bool {
        let Some(s) = &self.w.spill else {
            return false;
        };
        let mine = self.w.status.unfinished();
        let others = s
            .status
            .sinks
            .iter()
            .filter(|o| !Arc::ptr_eq(o, &self.w.status))
            .map(|o| o.unfinished())
            .min()
            .unwrap_or(mine);
        s.status.source.paused() && mine >= s.backlog as u64 && others.saturating_mul(4) <= mine
    }

    /// Intake: deliver directly while the park is empty, park otherwise or on failure.
    async fn take(&self, batch: Batch) {
        if self.w.park.entries() == 0 && self.should_spill() {
            tracing::info!(sink = %self.name(), unfinished = self.w.status.unfinished(), "this sink is behind and holds the other sinks back: spilling its batches to the park, to be delivered in order at its own pace");
            metrics::counter!("auditstream_spills_total", "sink" => self.name().to_string())
                .increment(1);
        }
        if self.w.park.entries() == 0 && !self.should_spill() {
            match self.attempt(&batch).await {
                Ok(receipt) => {
                    self.settle_receipt(&batch, &receipt).await;
                    self.delivered(&batch, &receipt, false);
                    self.finished(&batch);
                    // A failed start-up check said `retrying`; a delivery says otherwise.
                    if self.w.status.state() != SinkState::Healthy && self.w.park.entries() == 0 {
                        self.transition(SinkState::Healthy, None);
                    }
                    return;
                }
                Err(e) => {
                    let state = if e.is_permanent() {
                        SinkState::Broken
                    } else {
                        SinkState::Retrying
                    };
                    self.transition(state, Some(&e));
                    let detail = e.to_string();
                    *self
                        .intake_failure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(e);
                    self.park(batch, Some(&detail)).await;
                    return;
                }
            }
        }
        self.park(batch, None).await;
    }

    /// Parks a batch durably (making room first), then reports it finished.
    async fn park(&self, batch: Batch, error: Option<&str>) {
        self.make_room(&batch).await;
        let mut wait = Duration::from_millis(100);
        let mut failing = false;
        loop {
            match self.w.park.append(&batch, error).await {
                Ok(_) => break,
                Err(e) => {
                    let why = format!("cannot park a batch: {e}; its offsets are held back until the park can be written");
                    tracing::error!(sink = %self.name(), error = %e, "{why}");
                    metrics::counter!("auditstream_park_write_failures_total", "sink" => self.name().to_string()).increment(1);
                    self.w.status.set_holding(Some(why));
                    failing = true;
                    tokio::time::sleep(wait).await;
                    // Often: a short wait, so the stream goes on soon after space returns.
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        if failing {
            tracing::info!(sink = %self.name(), "the park can be written again");
            self.w.status.set_holding(None);
        }
        let n = batch.len() as u64;
        metrics::counter!("auditstream_parked_events_total", "sink" => self.name().to_string())
            .increment(n);
        self.finished(&batch);
        self.parked.notify_one();
    }

    /// Waits for room in the park (`block`) or makes it (`drop_oldest`).
    async fn make_room(&self, batch: &Batch) {
        let mut told = false;
        loop {
            let total = self.w.park.total_bytes();
            if total == 0 || total + batch.bytes as u64 <= self.w.limits.max_bytes {
                if told {
                    tracing::info!(sink = %self.name(), "the park has room again; taking new events");
                    self.w.status.set_holding(None);
                }
                return;
            }
            if self.w.limits.when_full == WhenFull::DropOldest && self.w.park.entries() > 0 {
                self.export_head(ExportReason::DroppedOldest).await;
                continue;
            }
            if !told {
                told = true;
                let why = format!(
                    "the park is full ({total} of {} bytes): sink `{}` takes no new events until it drains; the source stops reading once the window is full, so every sink of this group waits (Kafka keeps the data)",
                    self.w.limits.max_bytes,
                    self.name()
                );
                tracing::error!(sink = %self.name(), "{why}");
                self.w.status.set_holding(Some(why));
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.w.park.room()).await;
        }
    }

    /// Exports the oldest parked batch and removes it (expiry, or dropping to make room).
    async fn export_head(&self, reason: ExportReason) {
        let head = match self.w.park.head() {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => return self.handle_store_error(e).await,
        };
        let exporter = self.w.limits.exporter.clone();
        let sink = self.name().to_string();
        let entry = head.clone();
        let exported = tokio::task::spawn_blocking(move || {
            exporter.export(&sink, std::slice::from_ref(&entry), reason)
        })
        .await;
        match exported {
            Ok(Ok(mut proofs)) if !proofs.is_empty() => {
                let path = proofs[0].path.clone();
                if let Err(e) = self
                    .w
                    .park
                    .release(&head, Release::Exported(proofs.remove(0)))
                {
                    return self.handle_store_error(e).await;
                }
                let n = head.header.events;
                let what = match reason {
                    ExportReason::Expired => "expired",
                    _ => "dropped",
                };
                metrics::counter!(format!("auditstream_{what}_events_total"), "sink" => self.name().to_string()).increment(n);
                tracing::error!(sink = %self.name(), events = n, parked_at = %head.header.parked_at, export = %path.display(), reason = reason.as_str(), "parked events left the park undelivered; they are in the export file");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(sink = %self.name(), error = %e, dir = %self.w.limits.exporter.dir().display(), "cannot write an export; the batch stays parked");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => tracing::error!(sink = %self.name(), error = %e, "the exporter failed"),
        }
    }

    /// A store error while reading the park: a damaged entry is exported and removed; other
    /// errors are logged and waited out.
    async fn handle_store_error(&self, e: StoreError) {
        match e {
            StoreError::Corrupt(c) => {
                let header = self.w.park.header_of(c.key);
                tracing::error!(sink = %self.name(), entry = c.key, problem = %c.reason, "a parked entry is damaged; exporting what is readable and removing it");
                let exported = self.w.limits.exporter.export_damaged(
                    self.name(),
                    c.key,
                    header.as_ref(),
                    &c.reason,
                );
                match exported {
                    Ok(proof) => {
                        if let Err(e) = self.w.park.release_damaged(proof) {
                            tracing::error!(sink = %self.name(), error = %e, "cannot remove a damaged entry");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        metrics::counter!("auditstream_damaged_entries_total", "sink" => self.name().to_string()).increment(1);
                    }
                    Err(e) => {
                        tracing::error!(sink = %self.name(), error = %e, "cannot export a damaged entry");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
            other => {
                tracing::error!(sink = %self.name(), error = %other, "cannot read the park; retrying");
                self.w
                    .status
                    .set_state(self.w.status.state(), Some(format!("park store: {other}")));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Exports parked batches older than `park.max_age` (the head is the oldest).
    async fn expire_old(&self) {
        let max_age = self.w.limits.max_age;
        while let Some(oldest) = self.w.park.counts().oldest_ms() {
            let age_ms = chrono::Utc::now().timestamp_millis() - oldest;
            if age_ms < 0 || (age_ms as u128) < max_age.as_millis() {
                return;
            }
            let before = self.w.park.entries();
            self.export_head(ExportReason::Expired).await;
            if self.w.park.entries() >= before {
                return; // could not export; try again at the next sweep
            }
        }
    }

    /// Moves to `state`, logging the transitions people care about.
    fn transition(&self, state: SinkState, error: Option<&DeliveryError>) {
        let before = self
            .w
            .status
            .set_state(state, error.map(ToString::to_string));
        if before == state {
            return;
        }
        let parked = self.w.park.counts();
        match state {
            SinkState::Retrying => {
                tracing::warn!(sink = %self.name(), error = %error.map(ToString::to_string).unwrap_or_default(), "delivery failed: parking this sink's batches and retrying")
            }
            SinkState::Broken => {
                tracing::error!(sink = %self.name(), error = %error.map(ToString::to_string).unwrap_or_default(), parked_events = parked.events(), "sink is broken: its batches are parked (nothing is lost) and it is probed until it recovers")
            }
            SinkState::Recovering => {
                tracing::info!(sink = %self.name(), parked_events = parked.events(), "sink accepts deliveries again: replaying the park in order")
            }
            SinkState::Healthy => {
                tracing::info!(sink = %self.name(), "park drained: delivering directly again")
            }
        }
    }

    /// The replayer: drains the park in order, with retries and probes while the sink fails.
    async fn replay(self: Arc<Self>) {
        let sweep =
            (self.w.limits.max_age / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut trouble: Option<Trouble> = None;
        let mut next_sweep = Instant::now();
        // The head delivered but not yet removed (the store could not be written): its removal
        // is retried without sending it again and again.
        let mut unreleased: Option<(u64, crate::sink::Receipt)> = None;
        loop {
            if Instant::now() >= next_sweep {
                self.expire_old().await;
                next_sweep = Instant::now() + sweep;
            }
            if self.w.park.entries() == 0 {
                if trouble.is_none() && self.w.status.state() == SinkState::Recovering {
                    self.transition(SinkState::Healthy, None);
                }
                tokio::select! {
                    _ = self.parked.notified() => {}
                    _ = tokio::time::sleep_until(next_sweep) => {}
                }
                continue;
            }
            // The intake parked after a failure: wait as that failure says before retrying.
            let hint = self
                .intake_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(e) = hint {
                let t = trouble.get_or_insert_with(|| Trouble::new(&self.w.retry, &self.w.limits));
                let (state, wait) = t.after(&e, self.w.status.state());
                self.transition(state, Some(&e));
                self.pause(wait, next_sweep).await;
                continue;
            }
            let head = match self.w.park.head() {
                Ok(Some(h)) => h,
                Ok(None) => continue,
                Err(e) => {
                    self.handle_store_error(e).await;
                    continue;
                }
            };
            if let Some((seq, receipt)) = unreleased.take() {
                if seq == head.seq {
                    if let Err(e) = self
                        .w
                        .park
                        .release(&head, Release::Delivered(receipt.clone()))
                    {
                        unreleased = Some((seq, receipt));
                        self.handle_store_error(e).await;
                    }
                    continue;
                }
            }
            match self.attempt(&head.batch).await {
                Ok(receipt) => {
                    self.settle_receipt(&head.batch, &receipt).await;
                    self.delivered(&head.batch, &receipt, true);
                    if let Err(e) = self
                        .w
                        .park
                        .release(&head, Release::Delivered(receipt.clone()))
                    {
                        unreleased = Some((head.seq, receipt));
                        self.handle_store_error(e).await;
                    }
                    trouble = None;
                    let state = if self.w.park.entries() > 0 {
                        SinkState::Recovering
                    } else {
                        SinkState::Healthy
                    };
                    self.transition(state, None);
                }
                Err(e) => {
                    if let Err(se) = self.w.park.record_attempt(head.seq, &e.to_string()) {
                        tracing::warn!(sink = %self.name(), error = %se, "cannot record a failed attempt");
                    }
                    let t =
                        trouble.get_or_insert_with(|| Trouble::new(&self.w.retry, &self.w.limits));
                    let (state, wait) = t.after(&e, self.w.status.state());
                    self.transition(state, Some(&e));
                    metrics::counter!("auditstream_delivery_retries_total", "sink" => self.name().to_string()).increment(1);
                    self.pause(wait, next_sweep).await;
                }
            }
        }
    }

    /// Sleeps `wait` (cut short by a probe request from the admin API), sweeping for expired
    /// entries when a sweep falls due meanwhile.
    async fn pause(&self, wait: Duration, next_sweep: Instant) {
        let until = Instant::now() + wait;
        let probe_now = self.w.probe_now.notified();
        tokio::pin!(probe_now);
        if next_sweep < until {
            tokio::select! {
                _ = tokio::time::sleep_until(next_sweep) => self.expire_old().await,
                _ = &mut probe_now => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = &mut probe_now => {}
        }
    }
}

/// One stretch of failures: when it began and the two schedules.
struct Trouble {
    since: Instant,
    max_elapsed: Duration,
    retry: ExponentialBackoff,
    probe: ExponentialBackoff,
    broken: bool,
}

impl Trouble {
    fn new(retry: &RetryConfig, limits: &ParkLimits) -> Self {
        let probe = ExponentialBackoff {
            current_interval: retry.initial_interval.get(),
            initial_interval: retry.initial_interval.get(),
            max_interval: limits.probe_max_interval,
            randomization_factor: 0.1,
            multiplier: 2.0,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        Self {
            since: Instant::now(),
            max_elapsed: retry.max_elapsed.get(),
            retry: backoff_policy(retry),
            probe,
            broken: false,
        }
    }

    /// The state after a failed attempt and how long to wait before the next one.
    fn after(&mut self, e: &DeliveryError, current: SinkState) -> (SinkState, Duration) {
        if e.is_permanent()
            || current == SinkState::Recovering
            || self.since.elapsed() >= self.max_elapsed
        {
            self.broken = true;
        }
        let (state, wait) = if self.broken {
            (SinkState::Broken, self.probe.next_backoff())
        } else {
            (SinkState::Retrying, self.retry.next_backoff())
        };
        let wait = wait.unwrap_or(self.probe.max_interval);
        // A destination that asks us to wait is obeyed, within the probe ceiling.
        let wait = e
            .retry_after
            .map(|ra| ra.min(self.probe.max_interval).max(wait))
            .unwrap_or(wait);
        (state, wait)
    }
}

/// Exponential backoff with jitter from `[sinks.retry]`, never giving up by itself.
pub fn backoff_policy(retry: &RetryConfig) -> ExponentialBackoff {
    ExponentialBackoff {
        // `current_interval` is where the schedule starts; the default would start at 500ms
        // whatever `initial_interval` says.
        current_interval: retry.initial_interval.get(),
        initial_interval: retry.initial_interval.get(),
        max_interval: retry.max_interval.get(),
        randomization_factor: 0.3,
        multiplier: 2.0,
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn retry() -> RetryConfig {
        RetryConfig {
            initial_interval: HumanDuration::from_millis(100),
            max_interval: HumanDuration::from_millis(700),
            max_elapsed: HumanDuration::from_secs(60),
        }
    }

    fn limits() -> ParkLimits {
        ParkLimits {
            max_bytes: 1 << 30,
            when_full: WhenFull::Block,
            max_age: Duration::from_secs(3600),
            probe_max_interval: Duration::from_secs(5),
            exporter: Exporter::new(std::path::Path::new("/nonexistent")),
        }
    }

    #[test]
    fn the_schedule_starts_at_initial_interval_and_doubles_to_the_cap() {
        let mut p = backoff_policy(&retry());
        let waits: Vec<u128> = (0..6)
            .map(|_| p.next_backoff().unwrap().as_millis())
            .collect();
        for (w, base) in waits.iter().zip([100u128, 200, 400, 700, 700, 700]) {
            let (lo, hi) = (base * 7 / 10, base * 13 / 10);
            assert!((lo..=hi).contains(w), "{waits:?}");
        }
    }

    #[test]
    fn permanent_errors_and_failures_while_recovering_break_the_sink_at_once() {
        let mut t = Trouble::new(&retry(), &limits());
        let (s, _) = t.after(&DeliveryError::retryable("503"), SinkState::Healthy);
        assert_eq!(s, SinkState::Retrying);
        let (s, _) = t.after(&DeliveryError::permanent("401"), SinkState::Retrying);
        assert_eq!(s, SinkState::Broken);
        let (s, _) = t.after(&DeliveryError::retryable("503"), SinkState::Broken);
        assert_eq!(
            s,
            SinkState::Broken,
            "broken stays broken until a delivery succeeds"
        );

        let mut t = Trouble::new(&retry(), &limits());
        let (s, _) = t.after(&DeliveryError::retryable("reset"), SinkState::Recovering);
        assert_eq!(s, SinkState::Broken);
    }

    #[test]
    fn probes_double_up_to_the_probe_ceiling_and_retry_after_is_obeyed() {
        let mut t = Trouble::new(&retry(), &limits());
        let waits: Vec<Duration> = (0..10)
            .map(|_| {
                t.after(&DeliveryError::permanent("403"), SinkState::Broken)
                    .1
            })
            .collect();
        assert!(waits[0] < Duration::from_millis(150), "{waits:?}");
        assert!(
            waits.iter().all(|w| *w <= Duration::from_millis(5500)),
            "{waits:?}"
        );
        assert!(waits[9] >= Duration::from_millis(4500), "{waits:?}");
        let mut t = Trouble::new(&retry(), &limits());
        let mut e = DeliveryError::retryable("429");
        e.retry_after = Some(Duration::from_secs(3));
        assert_eq!(t.after(&e, SinkState::Healthy).1, Duration::from_secs(3));
    }
}
