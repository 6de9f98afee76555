//! The Kafka source: one thread that polls the consumer group, decodes, fans out, and commits.
//!
//! The thread does, in a loop:
//! 1. apply the sinks' [`Finished`] reports to the offset [`Tracker`] and *store* the moved
//!    positions (librdkafka commits stored offsets every `auto.commit.interval.ms`, on
//!    rebalance and at close; `enable.auto.offset.store` is off so nothing else is stored);
//! 2. pause every assigned partition when `max_in_flight_events` are in flight, resume at half;
//! 3. poll one message: copy it out, [`decode`](crate::decode) it, register it with the tracker
//!    (owed by the sinks whose filter matches, or by the quarantine), then queue it.
//!
//! It never blocks on a sink: when sinks fall behind, it pauses partitions and keeps polling,
//! so the consumer stays in its group (`max.poll.interval.ms`) and memory stays bounded (what
//! librdkafka reads ahead is bounded too: [`client_config`]). librdkafka does not wake its
//! fetching thread on a resume, which left the sinks idle for up to a second after each one;
//! a [`FetchWaker`] request wakes it.
//!
//! Rebalances run inside `poll` on this thread. On revoke, the reports received so far are
//! applied and the revoked partitions' positions are committed synchronously before they go;
//! late reports for them are ignored. On assign, partitions start afresh from the committed
//! offsets. The next owner may see a few duplicates, never a gap.
//!
//! Stopping: [`SourceControl::drain`] stops reading, closes the sinks' queues (they flush their
//! batches) and waits until every worker has dropped its report sender, then commits the final
//! positions. [`SourceControl::stop_now`] commits what is finished and returns at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::decode::decode;
use crate::event::{Coords, RawMessage, TopicPartition};
use crate::fanout::Router;
use crate::offsets::{Finished, Pending, Registered, Slot, Tracker};
use crate::park::quarantine::{Quarantine, QuarantineEntry};
use crate::status::Status;

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
    assignment_changed: bool,
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
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
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
                s.assignment_changed = true;
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
    waker: FetchWaker,
    consumer: BaseConsumer<SourceContext>,
    intake: Intake,
    control: Arc<SourceControl>,
    paused: bool,
    last_error: Option<(String, Instant)>,
}

/// What turns a polled message into queued work: decode, register, route.
struct Intake {
    shared: Arc<Mutex<Shared>>,
    settings: SourceSettings,
    /// `None` once stopping began: the sinks' queues are closed.
    router: Option<Router>,
    quarantine: Option<Quarantine>,
    status: Arc<Status>,
    topics: HashMap<String, Arc<str>>,
}

/// How long librdkafka waits before fetching a partition again once its prefetch queue is
/// full (`fetch.queue.backoff.ms`; librdkafka's default is 1000). The source empties that
/// queue far sooner while it catches up on a backlog, so at the default it then waited for
/// the rest of the second with nothing to read: seen in the bench, reading stopped for
/// 0.3 – 0.8 s after every 165,000 – 225,000 events, and the sink sat idle meanwhile.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// How much librdkafka reads ahead per partition (`queued.max.messages.kbytes`; librdkafka's
/// default is 65536, 64 MiB per partition). What it reads ahead is outside the window of
/// `max_in_flight_events`, so at the default a consumer of 32 partitions could hold 2 GiB
/// before the daemon sees a message; and each pause throws it away, to be fetched again on
/// resume. 2 MiB keeps two fetches' worth per partition (`max.partition.fetch.bytes` is 1 MiB).
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
            assignment_changed: false,
            closing: false,
            status: status.clone(),
        }));
        let consumer: BaseConsumer<SourceContext> = client_config(&settings.kafka)
            .create_with_context(SourceContext {
                shared: shared.clone(),
            })?;
        let topics: Vec<&str> = settings.kafka.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(brokers = %settings.kafka.brokers, group = %settings.kafka.group_id, ?topics, "subscribed");
        Ok(Self {
            waker: FetchWaker::new(&consumer),
            consumer,
            intake: Intake {
                shared,
                settings,
                router: Some(router),
                quarantine: Some(quarantine),
                status,
                topics: HashMap::new(),
            },
            control,
            paused: false,
            last_error: None,
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
            if !self.settle() && draining {
                break; // every worker is done
            }
            // While paused, nothing arrives to end the wait early, and the resume is decided in
            // `settle` between polls: a long wait here would leave the sinks to empty their
            // queues before reading starts again.
            let timeout = Duration::from_millis(match (draining, self.paused) {
                (true, _) => 20,
                (false, true) => 5,
                (false, false) => 100,
            });
            match self.consumer.poll(timeout) {
                Some(Ok(m)) if !draining => self.intake.ingest(&m),
                Some(Ok(_)) => {} // read after the stop began: not registered, so not committed
                Some(Err(e)) => self.log_error(e),
                None => {}
            }
        }
        self.commit_final();
        let status = self.intake.status.clone();
        drop(self); // closes the consumer: it leaves the group
        status.source.set_closed();
    }

    /// Applies reports, stores moved positions, pauses or resumes. Returns false once every
    /// worker has finished (the report channel is closed).
    fn settle(&mut self) -> bool {
        self.waker.read_answers();
        let (moved, in_flight, assignment_changed, open) = {
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
            let changed = std::mem::take(&mut s.assignment_changed);
            (moved, s.tracker.in_flight(), changed, s.reports_open)
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
        if !self.paused && in_flight >= max {
            self.set_paused(true);
            tracing::info!(
                in_flight,
                "sinks are behind: pausing partitions (still polling, so the group membership holds)"
            );
        } else if self.paused && in_flight <= max / 2 && self.intake.router.is_some() {
            self.set_paused(false);
            tracing::info!(in_flight, "resuming partitions");
        } else if self.paused && assignment_changed {
            self.set_paused(true);
        }
        open
    }

    fn set_paused(&mut self, paused: bool) {
        let result = self.consumer.assignment().and_then(|a| {
            if paused {
                self.consumer.pause(&a)
            } else {
                self.consumer.resume(&a)?;
                self.waker.wake(&self.consumer, &a);
                Ok(())
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, paused, "could not pause/resume partitions");
        }
        self.paused = paused;
        self.intake.status.source.set_paused(paused);
    }

    /// Stops reading: closes the sinks' queues so they flush and finish.
    fn begin_drain(&mut self) {
        tracing::info!("stopping: no more reading; sinks flush their batches");
        self.set_paused(true);
        self.intake.router = None;
        self.intake.quarantine = None;
    }

    fn log_error(&mut self, e: KafkaError) {
        let text = e.to_string();
        let repeat = matches!(&self.last_error, Some((t, at)) if *t == text && at.elapsed() < Duration::from_secs(60));
        if !repeat {
            tracing::warn!(error = %text, "kafka");
            self.last_error = Some((text, Instant::now()));
        }
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

/// Wakes librdkafka's fetcher after a resume, by asking the resumed partitions' leaders for
/// their end offsets.
///
/// librdkafka fetches on one thread per broker, which sleeps up to a second when none of its
/// partitions may be fetched. `resume` clears the partitions' pause flags (before it returns)
/// but wakes no broker thread, so the first fetch after a resume came 760 – 800 ms later
/// (measured with `debug=fetch`) and the sinks idled meanwhile. Any request for a broker wakes
/// its thread, which then sees the resumed partitions and fetches them; a ListOffsets request
/// goes to each partition's leader, the thread that fetches it. The request only reads, so it
/// cannot change where fetching resumes, as a seek (also a wake-up) would. The answers are read
/// and dropped.
struct FetchWaker {
    /// Where librdkafka puts the answers; owned, destroyed on drop.
    answers: *mut rdkafka::bindings::rd_kafka_queue_t,
    /// Requests sent whose answer has not been read: the queue is looked at only while some
    /// are, not on every turn of the poll loop.
    awaited: usize,
}

impl FetchWaker {
    fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Self {
        // SAFETY: the handle is live; the queue is destroyed (on drop) before the consumer is.
        let answers =
            unsafe { rdkafka::bindings::rd_kafka_queue_new(consumer.client().native_ptr()) };
        Self {
            answers,
            awaited: 0,
        }
    }

    /// Asks the leaders of `partitions` for their end offsets, without waiting for them.
    fn wake<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partitions: &TopicPartitionList,
    ) {
        if partitions.count() == 0 {
            return;
        }
        let mut latest = partitions.clone();
        if let Err(e) = latest.set_all_offsets(Offset::End) {
            tracing::debug!(error = %e, "cannot ask for end offsets");
            return;
        }
        // SAFETY: librdkafka copies the list before this returns; the answer queue is ours and
        // live; null options are the defaults.
        unsafe {
            rdkafka::bindings::rd_kafka_ListOffsets(
                consumer.client().native_ptr(),
                latest.ptr(),
                std::ptr::null(),
                self.answers,
            )
        }
        self.awaited += 1;
    }

    /// Reads and drops the answers that have come.
    fn read_answers(&mut self) {
        use rdkafka::bindings as rd;
        while self.awaited > 0 {
            // SAFETY: the queue is ours and live; an event is destroyed once read.
            unsafe {
                let event = rd::rd_kafka_queue_poll(self.answers, 0);
                if event.is_null() {
                    return;
                }
                if rd::rd_kafka_event_error(event)
                    != rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
                {
                    let why = std::ffi::CStr::from_ptr(rd::rd_kafka_event_error_string(event));
                    tracing::debug!(error = %why.to_string_lossy(), "end offsets asked after a resume");
                }
                rd::rd_kafka_event_destroy(event);
            }
            self.awaited -= 1;
        }
    }
}

// SAFETY: the source is built on one thread and run on another (`Pipeline` moves it to a
// blocking task); librdkafka's queues may be used from any thread.
unsafe impl Send for FetchWaker {}

impl Drop for FetchWaker {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; answers still to come are dropped.
        unsafe { rdkafka::bindings::rd_kafka_queue_destroy(self.answers) }
    }
}

impl Intake {
    fn ingest(&mut self, m: &BorrowedMessage<'_>) {
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
fn copy_message(m: &BorrowedMessage<'_>, topics: &mut HashMap<String, Arc<str>>) -> RawMessage {
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
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(Bytes::copy_from_slice),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice)))
                    .collect()
            })
            .unwrap_or_default(),
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
