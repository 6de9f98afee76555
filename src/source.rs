//! The Kafka source: one thread that polls the consumer group, decodes, fans out, and commits.
//!
//! The thread does, in a loop:
//! 1. apply the sinks' [`Finished`] reports to the offset [`Tracker`] and *store* the moved
//!    positions (librdkafka commits stored offsets every `auto.commit.interval.ms`, on
//!    rebalance and at close; `enable.auto.offset.store` is off so nothing else is stored);
//! 2. serve the consumer's queue: rebalances, errors, statistics (never messages, see below);
//! 3. take as many messages as the in-flight window (`max_in_flight_events`) has room for,
//!    at most `TAKE_AT_MOST` a turn: copy each out, [`decode`](crate::decode) it, register it
//!    with the tracker (owed by the sinks whose filter matches, or by the quarantine), then
//!    queue it.
//!
//! It never blocks on a sink. The messages wait in a queue of the source's own
//! (`source/messages.rs`), apart from the consumer's queue, so when the sinks fall behind the
//! source simply takes none and goes on serving the consumer's queue: the consumer stays in
//! its group (`max.poll.interval.ms`), librdkafka stops fetching once its bounded read-ahead
//! is full ([`client_config`]), and memory stays bounded. Nothing is paused, so nothing read
//! ahead is thrown away, and reading goes on the moment the window has room.
//!
//! Rebalances run inside `poll` on this thread. On revoke, the reports received so far are
//! applied and the revoked partitions' positions are committed synchronously before they go;
//! late reports for them are ignored. On assign, partitions start afresh from the committed
//! offsets. The next owner may see a few duplicates, never a gap.
//!
//! Stopping: [`SourceControl::drain`] stops reading, closes the sinks' queues (they flush their
//! batches) and waits until every worker has dropped its report sender, then commits the final
//! positions. [`SourceControl::stop_now`] commits what is finished and returns at once.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use rustc_hash::FxHashMap;

use crate::config::KafkaConfig;
use crate::decode::decode;
use crate::event::{Coords, RawMessage, TopicPartition};
use crate::fanout::Router;
use crate::offsets::{Finished, Pending, Registered, Slot, Tracker};
use crate::park::quarantine::{Quarantine, QuarantineEntry};
use crate::status::Status;

mod messages;
use messages::{Lent, Messages, Route};

/// Limits the source enforces.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub kafka: KafkaConfig,
    pub max_event_bytes: usize,
    pub max_in_flight: usize,
}

/// How the pipeline tells the source thread to stop.
#[derive(Debug, Default)]
pub struct SourceControl(AtomicU8);

const RUN: u8 = 0;
const DRAIN: u8 = 1;
const STOP_NOW: u8 = 2;

impl SourceControl {
    /// Stop reading, let the sinks flush, commit, return.
    pub fn drain(&self) {
        let _ = self
            .0
            .compare_exchange(RUN, DRAIN, Ordering::SeqCst, Ordering::SeqCst);
    }
    /// Commit what is finished and return now.
    pub fn stop_now(&self) {
        self.0.store(STOP_NOW, Ordering::SeqCst);
    }
    fn stage(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

/// State shared between the poll loop and the rebalance callbacks (which run inside `poll`,
/// on the same thread, so the lock is never contended).
struct Shared {
    tracker: Tracker,
    reports: Receiver<Finished>,
    /// False once every worker has dropped its sender.
    reports_open: bool,
    /// Where partitions' messages are forwarded as they are assigned; `None` once the source
    /// is being dropped (the queue goes before the consumer).
    route: Option<Route>,
    /// Set once the final commit was made: the revoke that closing the consumer triggers
    /// must not commit again (synchronously, to a broker that may have gone).
    closing: bool,
    status: Arc<Status>,
}

impl Shared {
    /// Applies every report received so far; returns how many.
    fn apply_reports(&mut self) -> usize {
        let mut n = 0;
        loop {
            match self.reports.try_recv() {
                Ok(r) => {
                    self.tracker.apply(&r);
                    n += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.reports_open = false;
                    break;
                }
            }
        }
        if n > 0 {
            self.status
                .source
                .set_progress(self.tracker.committed_messages(), self.tracker.in_flight());
        }
        n
    }
}

struct SourceContext {
    shared: Arc<Mutex<Shared>>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn topic_partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition {
            topic: e.topic().into(),
            partition: e.partition(),
        })
        .collect()
}

/// `topic/partition=offset, ...` for logs.
fn show(positions: &[(TopicPartition, i64)]) -> String {
    let mut v: Vec<String> = positions
        .iter()
        .map(|(tp, o)| format!("{tp}={o}"))
        .collect();
    v.sort();
    v.join(", ")
}

fn position_list(positions: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (tp, pos) in positions {
        if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*pos)) {
            tracing::error!(partition = %tp, error = %e, "cannot list an offset to commit");
        }
    }
    tpl
}

impl ClientContext for SourceContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of each partition.
    fn stats(&self, stats: rdkafka::Statistics) {
        let s = lock(&self.shared);
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    let tp = TopicPartition {
                        topic: topic.as_str().into(),
                        partition: *p,
                    };
                    s.status.source.set_lag(&tp, part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let tpl = match rebalance {
            Rebalance::Assign(tpl) => {
                // Before `assign` starts fetching them: see `messages`, "Order".
                if let Some(route) = lock(&self.shared).route {
                    route.forward(consumer, tpl);
                }
                return;
            }
            Rebalance::Revoke(tpl) => tpl,
            Rebalance::Error(_) => return,
        };
        let mut s = lock(&self.shared);
        s.apply_reports();
        let revoked = topic_partitions(tpl);
        let positions: Vec<(TopicPartition, i64)> = revoked
            .iter()
            .filter_map(|tp| s.tracker.revoke(tp).map(|p| (tp.clone(), p)))
            .collect();
        tracing::info!(partitions = ?revoked.iter().map(ToString::to_string).collect::<Vec<_>>(), "partitions revoked");
        if !positions.is_empty() && !s.closing {
            match commit_within(consumer, &position_list(&positions), COMMIT_WAIT) {
                Ok(()) => {
                    tracing::info!(positions = %show(&positions), "committed revoked partitions")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not commit revoked partitions; the next owner re-reads a little more")
                }
            }
        }
        s.status
            .source
            .set_progress(s.tracker.committed_messages(), s.tracker.in_flight());
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut s = lock(&self.shared);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = topic_partitions(tpl);
                tracing::info!(partitions = ?assigned.iter().map(ToString::to_string).collect::<Vec<_>>(), "partitions assigned");
                for tp in assigned {
                    s.tracker.assign(tp);
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance failed"),
        }
        let assignment = consumer
            .assignment()
            .map(|a| topic_partitions(&a))
            .unwrap_or_default();
        s.status.source.set_assigned(assignment.len());
        s.status
            .source
            .retain_partitions(|tp| assignment.contains(tp));
    }
}

/// A Kafka source, connected and subscribed.
pub struct Source {
    /// Declared before the consumer: fields drop in order, and its queue must go first.
    messages: Messages,
    consumer: BaseConsumer<SourceContext>,
    intake: Intake,
    control: Arc<SourceControl>,
    /// Whether the sinks hold reading back: set when the window is full, cleared when half of
    /// it has finished (shown as `paused`; the spilling of a slow sink looks at it).
    held: bool,
}

/// The most messages taken in one turn of the poll loop; the reports and offsets are
/// looked at between turns.
const TAKE_AT_MOST: usize = 1024;

/// How long a turn waits for a message when none is there and the window has room. The
/// consumer's queue (rebalances) and the sinks' reports wait at most this long meanwhile.
const MESSAGE_WAIT: Duration = Duration::from_millis(100);

/// How long a turn waits on the consumer's queue when no message may be taken (the window is
/// full): reading goes on this soon after the sinks finish some.
const HELD_WAIT: Duration = Duration::from_millis(5);

/// What turns a polled message into queued work: decode, register, route.
struct Intake {
    shared: Arc<Mutex<Shared>>,
    settings: SourceSettings,
    /// `None` once stopping began: the sinks' queues are closed.
    router: Option<Router>,
    quarantine: Option<Quarantine>,
    status: Arc<Status>,
    topics: FxHashMap<String, Arc<str>>,
    last_error: Option<(String, Instant)>,
    /// Whether a message came on the consumer's queue (said once).
    unrouted: bool,
}

/// How long librdkafka waits before fetching a partition again once its prefetch queue is
/// full (`fetch.queue.backoff.ms`; librdkafka's default is 1000). The source empties that
/// queue far sooner while it catches up on a backlog, so at the default it then waited for
/// the rest of the second with nothing to read: seen in the bench, reading stopped for
/// 0.3 – 0.8 s after every 165,000 – 225,000 events, and the sink sat idle meanwhile.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// How much librdkafka reads ahead (`queued.max.messages.kbytes`; librdkafka's default is
/// 65536, 64 MiB). What it reads ahead is outside the window of `max_in_flight_events`: it
/// waits in the source's message queue, and librdkafka stops fetching a partition while the
/// queue it forwards to holds this much (a fetch already sent can add up to
/// `max.partition.fetch.bytes`, 1 MiB, per partition). 2 MiB is about 30 ms of reading at the
/// bench's rate, and librdkafka looks again every `fetch.queue.backoff.ms`.
const QUEUED_MAX_MESSAGES_KBYTES: &str = "2048";

/// The librdkafka configuration for the consumer: auditstream's settings, then the user's
/// `[kafka.properties]` (which cannot override the ones that guard at-least-once).
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("auto.offset.reset", "earliest");
    c.set("statistics.interval.ms", "5000");
    c.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    c.set("queued.max.messages.kbytes", QUEUED_MAX_MESSAGES_KBYTES);
    for (k, v) in &kafka.properties {
        c.set(k, v.to_string());
    }
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    c
}

impl Source {
    /// Creates the consumer and subscribes to the topics.
    pub fn connect(
        settings: SourceSettings,
        router: Router,
        quarantine: Quarantine,
        reports: Receiver<Finished>,
        control: Arc<SourceControl>,
        status: Arc<Status>,
    ) -> Result<Self, KafkaError> {
        let shared = Arc::new(Mutex::new(Shared {
            tracker: Tracker::new(),
            reports,
            reports_open: true,
            route: None,
            closing: false,
            status: status.clone(),
        }));
        let consumer: BaseConsumer<SourceContext> = client_config(&settings.kafka)
            .create_with_context(SourceContext {
                shared: shared.clone(),
            })?;
        let messages = Messages::new(&consumer);
        // Before subscribing: the first assignment must find the route.
        lock(&shared).route = Some(messages.route());
        let topics: Vec<&str> = settings.kafka.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(brokers = %settings.kafka.brokers, group = %settings.kafka.group_id, ?topics, "subscribed");
        Ok(Self {
            messages,
            consumer,
            intake: Intake {
                shared,
                settings,
                router: Some(router),
                quarantine: Some(quarantine),
                status,
                topics: FxHashMap::default(),
                last_error: None,
                unrouted: false,
            },
            control,
            held: false,
        })
    }

    /// The poll loop. Blocks the calling thread until stopped.
    pub fn run(mut self) {
        loop {
            match self.control.stage() {
                STOP_NOW => break,
                DRAIN if self.intake.router.is_some() => self.begin_drain(),
                _ => {}
            }
            let draining = self.intake.router.is_none();
            let (in_flight, open) = self.settle();
            if !open && draining {
                break; // every worker is done
            }
            let room = match draining {
                true => 0,
                false => self.intake.settings.max_in_flight.saturating_sub(in_flight),
            };
            // The consumer's queue carries no messages (they wait in `self.messages`), but
            // serving it is what keeps the consumer in its group, whatever the window.
            let events_wait = match (draining, room) {
                (true, _) => Duration::from_millis(20),
                (false, 0) => HELD_WAIT,
                (false, _) => Duration::ZERO,
            };
            match self.consumer.poll(events_wait) {
                // Not expected (see `messages`, "Order"), but never dropped.
                Some(Ok(m)) if !draining => self.intake.ingest_unrouted(&Lent::of_borrowed(&m)),
                Some(Ok(_)) => {} // read after the stop began: not registered, so not committed
                Some(Err(e)) => self.intake.log_error(e),
                None => {}
            }
            let intake = &mut self.intake;
            self.messages
                .take(room.min(TAKE_AT_MOST), MESSAGE_WAIT, |m| match m {
                    Ok(m) => intake.ingest(&m),
                    Err(e) => intake.log_error(e),
                });
        }
        self.commit_final();
        let status = self.intake.status.clone();
        drop(self); // closes the consumer: it leaves the group
        status.source.set_closed();
    }

    /// Applies reports, stores moved positions, and notes whether the sinks hold reading
    /// back. Returns the messages in flight, and false once every worker has finished (the
    /// report channel is closed).
    fn settle(&mut self) -> (usize, bool) {
        let (moved, in_flight, open) = {
            let mut s = lock(&self.intake.shared);
            s.apply_reports();
            // Positions also move without a report: a message no sink wanted (filtered out)
            // is finished as soon as it is registered.
            let moved = s.tracker.take_moved();
            if !moved.is_empty() {
                s.status
                    .source
                    .set_progress(s.tracker.committed_messages(), s.tracker.in_flight());
            }
            (moved, s.tracker.in_flight(), s.reports_open)
        };
        if !moved.is_empty() {
            for (tp, pos) in &moved {
                self.intake.status.source.set_committed(tp, *pos);
            }
            if let Err(e) = self.consumer.store_offsets(&position_list(&moved)) {
                // A partition revoked a moment ago; its position was committed on revoke.
                tracing::debug!(error = %e, "could not store some offsets");
            }
        }
        let max = self.intake.settings.max_in_flight;
        if !self.held && in_flight >= max {
            self.set_held(true);
            tracing::info!(
                in_flight,
                "sinks are behind: the window is full, so reading waits for room (the consumer keeps polling and stays in its group)"
            );
        } else if self.held && in_flight <= max / 2 {
            self.set_held(false);
            tracing::info!(in_flight, "half the window is free: reading at full speed");
        }
        (in_flight, open)
    }

    fn set_held(&mut self, held: bool) {
        self.held = held;
        self.intake.status.source.set_paused(held);
    }

    /// Stops reading: closes the sinks' queues so they flush and finish.
    fn begin_drain(&mut self) {
        tracing::info!("stopping: no more reading; sinks flush their batches");
        self.intake.router = None;
        self.intake.quarantine = None;
    }

    /// Commits every finished position and waits for the coordinator's answer, at most
    /// [`COMMIT_WAIT`].
    fn commit_final(&mut self) {
        let positions = {
            let mut s = lock(&self.intake.shared);
            s.apply_reports();
            s.closing = true;
            s.tracker.positions()
        };
        if positions.is_empty() {
            return;
        }
        match commit_within(&self.consumer, &position_list(&positions), COMMIT_WAIT) {
            Ok(()) => tracing::info!(positions = %show(&positions), "committed final offsets"),
            Err(e) => {
                tracing::error!(error = %e, "final commit failed; the next start re-reads from the last commit (duplicates, never a gap)")
            }
        }
    }
}

/// How long a commit of our own (on revoke, at the stop) waits for the coordinator.
const COMMIT_WAIT: Duration = Duration::from_secs(10);

/// Commits `offsets` and waits for the group coordinator's answer, at most `wait`.
/// rdkafka's synchronous commit waits without limit, which would hang a stop (or a rebalance)
/// for as long as a broker is unreachable; a commit that is not confirmed in time means the
/// next owner re-reads a little (at-least-once), never that anything is skipped.
fn commit_within<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: &TopicPartitionList,
    wait: Duration,
) -> Result<(), String> {
    use rdkafka::bindings as rd;
    use rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR as NO_ERROR;
    let describe = |err: rd::rd_kafka_resp_err_t| -> String {
        // SAFETY: rd_kafka_err2str returns a static, NUL-terminated string for any code.
        unsafe { std::ffi::CStr::from_ptr(rd::rd_kafka_err2str(err)) }
            .to_string_lossy()
            .into_owned()
    };
    let timeout_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the client handle and the partition list outlive these calls; the reply queue
    // is ours (librdkafka keeps its own reference until it has answered), and the event is
    // destroyed once read.
    unsafe {
        let rk = consumer.client().native_ptr();
        let queue = rd::rd_kafka_queue_new(rk);
        let err = rd::rd_kafka_commit_queue(rk, offsets.ptr(), queue, None, std::ptr::null_mut());
        let result = if err != NO_ERROR {
            Err(describe(err))
        } else {
            let event = rd::rd_kafka_queue_poll(queue, timeout_ms);
            if event.is_null() {
                Err(format!(
                    "no answer from the group coordinator within {wait:?}"
                ))
            } else {
                let err = rd::rd_kafka_event_error(event);
                rd::rd_kafka_event_destroy(event);
                if err == NO_ERROR {
                    Ok(())
                } else {
                    Err(describe(err))
                }
            }
        };
        rd::rd_kafka_queue_destroy(queue);
        result
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        // The message queue is destroyed first (it is declared first); a rebalance while the
        // consumer closes must not forward partitions to it.
        lock(&self.intake.shared).route = None;
    }
}

impl Intake {
    fn ingest(&mut self, m: &Lent<'_>) {
        self.status.source.add_consumed();
        let raw = copy_message(m, &mut self.topics);
        let tp = raw.coords.topic_partition();
        let offset = raw.coords.offset;
        let (Some(router), Some(quarantine)) = (&self.router, &self.quarantine) else {
            return;
        };
        match decode(raw, self.settings.max_event_bytes) {
            Ok(event) => {
                let pending = router.matching(&event);
                if register(&self.shared, &tp, offset, pending) {
                    router.send(Arc::new(event), pending);
                }
            }
            Err(rejected) => {
                let (raw, why) = (rejected.message, rejected.why);
                if register(&self.shared, &tp, offset, Pending::of(Slot::QUARANTINE)) {
                    self.status.source.add_rejected();
                    metrics::counter!("auditstream_rejected_events_total", "reason" => why.kind())
                        .increment(1);
                    let entry = QuarantineEntry::new(&raw, None, why.kind(), why.to_string());
                    quarantine.submit(Slot::QUARANTINE, entry);
                }
            }
        }
    }

    /// A message that came on the consumer's queue, not the message queue: its partition was
    /// not routed (see `messages`, "Order"). It is read all the same (skipping it would let a
    /// later commit pass it), but the window does not hold such a partition back, so it is said.
    fn ingest_unrouted(&mut self, m: &Lent<'_>) {
        if !self.unrouted {
            self.unrouted = true;
            tracing::warn!(topic = m.topic(), partition = m.partition(), "a message came on the consumer's queue: its partition is not routed to the source's message queue, so max_in_flight_events does not hold it back");
        }
        self.ingest(m);
    }

    /// Logs a Kafka error, once a minute while it repeats.
    fn log_error(&mut self, e: KafkaError) {
        let text = e.to_string();
        let repeat = matches!(&self.last_error, Some((t, at)) if *t == text && at.elapsed() < Duration::from_secs(60));
        if !repeat {
            tracing::warn!(error = %text, "kafka");
            self.last_error = Some((text, Instant::now()));
        }
    }
}

/// Registers a message; false (and a debug line) when Kafka delivered it twice.
fn register(shared: &Mutex<Shared>, tp: &TopicPartition, offset: i64, pending: Pending) -> bool {
    let mut s = lock(shared);
    match s.tracker.register(tp, offset, pending) {
        Ok(Registered::InSequence) => true,
        Ok(Registered::AfterGap { skipped }) => {
            metrics::counter!("auditstream_skipped_offsets_total").increment(skipped as u64);
            tracing::debug!(partition = %tp, offset, skipped, "offsets skipped before this message (a transaction marker, compaction, or records the broker did not send)");
            true
        }
        Err(e) => {
            tracing::debug!(partition = %tp, error = %e, "skipping a message delivered twice");
            false
        }
    }
}

/// Copies a message out of librdkafka's buffer. Topic names are shared, not copied.
fn copy_message(m: &Lent<'_>, topics: &mut FxHashMap<String, Arc<str>>) -> RawMessage {
    let topic = match topics.get(m.topic()) {
        Some(t) => t.clone(),
        None => {
            let t: Arc<str> = m.topic().into();
            topics.insert(m.topic().to_string(), t.clone());
            t
        }
    };
    RawMessage {
        coords: Coords {
            topic,
            partition: m.partition(),
            offset: m.offset(),
        },
        timestamp_ms: m.timestamp_ms(),
        key: m.key().map(Bytes::copy_from_slice),
        headers: m
            .headers()
            .map(|(name, value)| (name.into_owned(), value.map(Bytes::copy_from_slice)))
            .collect(),
        payload: m.payload().map(Bytes::copy_from_slice),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(properties: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "g".into(),
            topics: vec!["audit".into()],
            properties: properties
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        crate::config::PropertyValue::Text(v.to_string()),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn the_fetch_settings_are_auditstreams_unless_the_user_sets_them() {
        let ours = [
            ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
            ("queued.max.messages.kbytes", QUEUED_MAX_MESSAGES_KBYTES),
        ];
        let c = client_config(&kafka(&[]));
        for (key, value) in ours {
            assert_eq!(c.get(key), Some(value), "{key}");
        }
        let c = client_config(&kafka(&[
            ("fetch.queue.backoff.ms", "250"),
            ("queued.max.messages.kbytes", "65536"),
        ]));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("250"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("65536"));
    }

    #[test]
    fn the_commit_settings_stay_auditstreams() {
        let c = client_config(&kafka(&[
            ("enable.auto.offset.store", "true"),
            ("auto.offset.reset", "latest"),
        ]));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
    }
}
