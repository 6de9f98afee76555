//! What the running pipeline can tell about itself: each sink's state and counters, and the
//! source's. Workers own and update their entries; everyone else (the demo's progress line,
//! the admin API, alerts and metrics) reads snapshots.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use crate::park::ParkCounts;

/// A sink's health, as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Delivering normally.
    Healthy,
    /// A delivery failed and is being retried.
    Retrying,
    /// Retries are exhausted or the destination refused the data; deliveries are held.
    Broken,
    /// Held deliveries are being caught up.
    Recovering,
}

impl SinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkState::Healthy => "healthy",
            SinkState::Retrying => "retrying",
            SinkState::Broken => "broken",
            SinkState::Recovering => "recovering",
        }
    }
}

#[derive(Debug, Clone)]
struct Health {
    state: SinkState,
    since: SystemTime,
    last_error: Option<String>,
    /// Why this sink holds the stream back (its park is full, or cannot be written), while it
    /// does.
    holding: Option<String>,
}

/// One sink's live status.
#[derive(Debug)]
pub struct SinkStatus {
    pub name: String,
    pub kind: &'static str,
    pub destination: String,
    health: Mutex<Health>,
    delivered: AtomicU64,
    replayed: AtomicU64,
    quarantined: AtomicU64,
    /// Events waiting in this sink's queue, as its worker last saw.
    queued: AtomicU64,
    /// Events routed to this sink that it has not finished (delivered, parked or
    /// quarantined): its share of the source's in-flight window.
    unfinished: AtomicU64,
    park: Arc<ParkCounts>,
}

/// Counts `n` down, never below zero (a count read by a status page must not wrap).
fn saturating_sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
        Some(c.saturating_sub(n))
    });
}

/// A copy of one sink's status at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct SinkSnapshot {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub destination: String,
    pub state: SinkState,
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
    pub last_error: Option<String>,
    /// Set while this sink holds the stream back: its park is full (`when_full = "block"`) or
    /// cannot be written. Kafka keeps the data; the source stops reading for every sink.
    pub holding: Option<String>,
    pub delivered_events: u64,
    /// Of the delivered events, those that came from the park.
    pub replayed_events: u64,
    pub quarantined_events: u64,
    pub parked_entries: u64,
    pub parked_events: u64,
    pub parked_bytes: u64,
    /// When the oldest parked batch was parked (RFC 3339), if any.
    pub oldest_parked_at: Option<String>,
    #[serde(skip)]
    pub oldest_parked_ms: Option<i64>,
    /// When the newest parked batch was parked (RFC 3339), if any.
    pub newest_parked_at: Option<String>,
    /// Events waiting in this sink's queue (not yet batched).
    pub queued_events: u64,
}

impl SinkStatus {
    pub fn new(name: &str, kind: &'static str, destination: String, park: Arc<ParkCounts>) -> Self {
        Self {
            name: name.to_string(),
            kind,
            destination,
            health: Mutex::new(Health {
                state: SinkState::Healthy,
                since: SystemTime::now(),
                last_error: None,
                holding: None,
            }),
            delivered: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            unfinished: AtomicU64::new(0),
            park,
        }
    }

    /// This sink's park counts.
    pub fn park(&self) -> &ParkCounts {
        &self.park
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves to `state`; `since` changes only when the state does. Returns the previous state.
    pub fn set_state(&self, state: SinkState, error: Option<String>) -> SinkState {
        let mut h = self.health();
        let before = h.state;
        if before != state {
            h.state = state;
            h.since = SystemTime::now();
        }
        if error.is_some() {
            h.last_error = error;
        }
        before
    }

    pub fn state(&self) -> SinkState {
        self.health().state
    }

    /// Says why the sink holds the stream back, or (`None`) that it no longer does.
    pub fn set_holding(&self, why: Option<String>) {
        self.health().holding = why;
    }

    /// Events routed to this sink's queue (queued, and unfinished until
    /// [`SinkStatus::sub_unfinished`]).
    pub fn add_queued(&self, n: u64) {
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.unfinished.fetch_add(n, Ordering::Relaxed);
    }

    /// Events this sink finished: delivered, parked or quarantined.
    pub fn sub_unfinished(&self, n: u64) {
        saturating_sub(&self.unfinished, n);
    }

    /// Events routed to this sink and not yet finished: what it holds of the in-flight window.
    pub fn unfinished(&self) -> u64 {
        self.unfinished.load(Ordering::Relaxed)
    }

    /// Events its worker took from the queue.
    pub fn sub_queued(&self, n: u64) {
        saturating_sub(&self.queued, n);
    }

    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_replayed(&self, n: u64) {
        self.replayed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_quarantined(&self, n: u64) {
        self.quarantined.fetch_add(n, Ordering::Relaxed);
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> SinkSnapshot {
        let h = self.health().clone();
        SinkSnapshot {
            name: self.name.clone(),
            kind: self.kind,
            destination: self.destination.clone(),
            state: h.state,
            since: h.since,
            last_error: h.last_error,
            holding: h.holding,
            delivered_events: self.delivered(),
            replayed_events: self.replayed.load(Ordering::Relaxed),
            quarantined_events: self.quarantined(),
            parked_entries: self.park.entries(),
            parked_events: self.park.events(),
            parked_bytes: self.park.bytes(),
            oldest_parked_at: self.park.oldest_ms().and_then(|ms| {
                chrono::DateTime::from_timestamp_millis(ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            }),
            oldest_parked_ms: self.park.oldest_ms(),
            newest_parked_at: self.park.newest_ms().and_then(|ms| {
                chrono::DateTime::from_timestamp_millis(ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            }),
            queued_events: self.queued(),
        }
    }
}

/// What is known of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PartitionStat {
    /// The position stored for commit (the next offset to read).
    pub committed: Option<i64>,
    /// Messages behind the partition's end, as librdkafka last reported.
    pub lag: Option<i64>,
}

/// The source's counters.
#[derive(Debug, Default)]
pub struct SourceStatus {
    partitions: Mutex<std::collections::BTreeMap<crate::event::TopicPartition, PartitionStat>>,
    consumed: AtomicU64,
    rejected: AtomicU64,
    committable: AtomicU64,
    in_flight: AtomicU64,
    /// Whether the source waits for room in its window; the sinks' batching watches it.
    paused: tokio::sync::watch::Sender<bool>,
    assigned: AtomicU64,
    closed: AtomicBool,
}

impl SourceStatus {
    /// The consumer has been closed (it left its group) and the source thread is ending.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
    pub fn set_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
    pub fn add_consumed(&self) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
    pub fn set_progress(&self, committable: u64, in_flight: usize) {
        self.committable.store(committable, Ordering::Relaxed);
        self.in_flight.store(in_flight as u64, Ordering::Relaxed);
    }
    pub fn set_paused(&self, paused: bool) {
        self.paused
            .send_if_modified(|p| std::mem::replace(p, paused) != paused);
    }
    /// Follows [`Self::paused`]: while it is true, the sinks close their open batches rather
    /// than wait to fill them (see [`crate::batch`]).
    pub fn watch_paused(&self) -> tokio::sync::watch::Receiver<bool> {
        self.paused.subscribe()
    }
    fn partitions_mut(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::BTreeMap<crate::event::TopicPartition, PartitionStat>,
    > {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn set_committed(&self, tp: &crate::event::TopicPartition, position: i64) {
        self.partitions_mut()
            .entry(tp.clone())
            .or_default()
            .committed = Some(position);
    }
    pub fn set_lag(&self, tp: &crate::event::TopicPartition, lag: i64) {
        self.partitions_mut().entry(tp.clone()).or_default().lag = Some(lag);
    }
    /// Forgets partitions this consumer no longer owns.
    pub fn retain_partitions(&self, keep: impl Fn(&crate::event::TopicPartition) -> bool) {
        self.partitions_mut().retain(|tp, _| keep(tp));
    }
    pub fn partitions(&self) -> Vec<(crate::event::TopicPartition, PartitionStat)> {
        self.partitions_mut()
            .iter()
            .map(|(tp, p)| (tp.clone(), *p))
            .collect()
    }
    pub fn set_assigned(&self, n: usize) {
        self.assigned.store(n as u64, Ordering::Relaxed);
    }
    /// Messages read from Kafka.
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }
    /// Messages that could not be decoded (sent to the quarantine).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
    /// Messages finished by everyone they were routed to, in the committable prefix.
    pub fn committable(&self) -> u64 {
        self.committable.load(Ordering::Relaxed)
    }
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
    pub fn paused(&self) -> bool {
        *self.paused.borrow()
    }
    pub fn assigned(&self) -> u64 {
        self.assigned.load(Ordering::Relaxed)
    }
}

/// The status of the whole pipeline.
#[derive(Debug, Default)]
pub struct Status {
    pub source: SourceStatus,
    pub sinks: Vec<Arc<SinkStatus>>,
    /// Where the admin API listens, once it does.
    pub admin_addr: std::sync::OnceLock<std::net::SocketAddr>,
}

impl Status {
    pub fn sink(&self, name: &str) -> Option<&Arc<SinkStatus>> {
        self.sinks.iter().find(|s| s.name == name)
    }
}

mod rfc3339 {
    use serde::Serializer;
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let t: chrono::DateTime<chrono::Utc> = (*t).into();
        s.collect_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }
}
