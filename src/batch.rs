//! Batching: one sink's rendered records grouped per partition, up to `max_events`,
//! `max_bytes` or `max_age`, whichever comes first.
//!
//! A batch holds records of one partition only, in offset order, so a sink that sends its
//! batches one after another keeps Kafka's order per partition. [`Batcher`] is the pure state
//! (testable without a clock); [`batches`] drives it from a stream and a timer.
//!
//! A batch can carry a `label` computed from the item that opened it (the S3 sink's object
//! key is rendered on the batch's first event), so the work is done once per batch.
//!
//! **A full window closes batches.** The events in open batches count against the source's
//! in-flight window. With many partitions, open batches can hold the whole window before any
//! fills (24 partitions × 10,000 events > 50,000), and then nothing more is read until
//! `max_age` (30 s for S3): the rate would fall to a window per `max_age`. So while the
//! source waits for room, [`batches`] closes every open batch as soon as nothing more waits
//! to be batched for the sink ([`FullWindow`]): no event is queued or being rendered, so no
//! batch can grow. A sink that is itself the slow one still has events waiting and fills
//! its batches; at full speed, with room in the window, batches fill to their limits.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::event::{PartitionMap, TopicPartition};

/// One event rendered for one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub body: String,
}

/// Records of one partition, in offset order, sent together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub tp: TopicPartition,
    pub records: Vec<Record>,
    /// Sum of the records' body lengths.
    pub bytes: usize,
    /// Computed from the first record's item when the batch opened (see the module header).
    pub label: Option<String>,
}

impl Batch {
    /// A batch of partition `t/0` with `n` records from `offset` on, each `{"o":OFFSET,"pad":"x…"}`
    /// with `pad` bytes of padding (for unit tests).
    #[cfg(test)]
    pub(crate) fn for_test(offset: i64, n: usize, pad: usize) -> Self {
        let mut b = Self::new(
            TopicPartition {
                topic: "t".into(),
                partition: 0,
            },
            None,
        );
        for o in offset..offset + n as i64 {
            b.push(Record {
                offset: o,
                body: format!("{{\"o\":{o},\"pad\":\"{}\"}}", "x".repeat(pad)),
            });
        }
        b
    }

    pub fn new(tp: TopicPartition, label: Option<String>) -> Self {
        Self {
            tp,
            records: Vec::new(),
            bytes: 0,
            label,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn offsets(&self) -> Vec<i64> {
        self.records.iter().map(|r| r.offset).collect()
    }

    pub fn first_offset(&self) -> Option<i64> {
        self.records.first().map(|r| r.offset)
    }

    pub fn last_offset(&self) -> Option<i64> {
        self.records.last().map(|r| r.offset)
    }

    /// The records joined by newlines, with a final newline: what the file and stdout sinks
    /// write and what NDJSON bodies hold.
    pub fn lines(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes + self.records.len());
        for r in &self.records {
            out.extend_from_slice(r.body.as_bytes());
            out.push(b'\n');
        }
        out
    }

    pub fn push(&mut self, r: Record) {
        self.bytes += r.body.len();
        self.records.push(r);
    }
}

struct Open {
    batch: Batch,
    deadline: Instant,
}

/// Open batches per partition, and the limits that close them.
pub struct Batcher {
    limits: BatchConfig,
    open: PartitionMap<Open>,
}

impl Batcher {
    pub fn new(limits: BatchConfig) -> Self {
        Self {
            limits,
            open: PartitionMap::default(),
        }
    }

    /// Adds a record; returns the batches this closes (at most two: the one the record did not
    /// fit into, and the record's own when it is full at once). `label` is called when the
    /// record opens a new batch. The partition is looked up once.
    pub fn push(
        &mut self,
        tp: TopicPartition,
        record: Record,
        now: Instant,
        label: impl FnOnce() -> Option<String>,
    ) -> Vec<Batch> {
        let mut closed = Vec::new();
        let max_bytes = self.limits.max_bytes.as_usize();
        let deadline = now + self.limits.max_age.get();
        let mut open = match self.open.entry(tp) {
            Entry::Occupied(mut e) => {
                let open = e.get_mut();
                if !open.batch.is_empty() && open.batch.bytes + record.body.len() > max_bytes {
                    let fresh = Open {
                        batch: Batch::new(open.batch.tp.clone(), label()),
                        deadline,
                    };
                    closed.push(std::mem::replace(open, fresh).batch);
                }
                e
            }
            Entry::Vacant(e) => {
                let batch = Batch::new(e.key().clone(), label());
                e.insert_entry(Open { batch, deadline })
            }
        };
        let batch = &mut open.get_mut().batch;
        batch.push(record);
        if batch.len() >= self.limits.max_events || batch.bytes >= max_bytes {
            closed.push(open.remove().batch);
        }
        closed
    }

    /// When the oldest open batch reaches `max_age`.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|o| o.deadline).min()
    }

    /// Closes the batches that have reached `max_age`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Batch> {
        let expired: Vec<TopicPartition> = self
            .open
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(tp, _)| tp.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|tp| self.open.remove(&tp).map(|o| o.batch))
            .collect()
    }

    /// Closes every open batch (the input has ended).
    pub fn drain(&mut self) -> Vec<Batch> {
        self.open.drain().map(|(_, o)| o.batch).collect()
    }
}

/// When a sink's open batches go out before they fill (see the module header).
pub struct FullWindow {
    /// Whether the source waits for room in its window.
    pub held: watch::Receiver<bool>,
    /// The sink's events not yet handed to the batcher (queued or being rendered).
    pub waiting: Box<dyn Fn() -> u64 + Send>,
}

impl FullWindow {
    /// The window is full and no batch can grow.
    fn now(&mut self) -> bool {
        *self.held.borrow_and_update() && (self.waiting)() == 0
    }
}

/// A run of rendered records, each with its context (see [`batches`]).
pub type Run<C> = Vec<(TopicPartition, Record, C)>;

/// Turns a stream of records into a stream of batches, closing batches by count, size and age.
/// The records come in runs (`Vec`s, as rendered together), and a run is pushed whole: the
/// clock is read and the age timer set once per run, not once per record, which kept a
/// sink's one batching task as busy as all its rendering. Each record carries a context `C`
/// from which `label` computes a new batch's label. When the input ends, the open batches are
/// flushed and the stream ends. While the window is full and nothing more waits for this
/// sink (`full`), the open batches are flushed (see the module header).
pub fn batches<S, C, L>(
    input: S,
    limits: BatchConfig,
    full: FullWindow,
    label: L,
) -> impl Stream<Item = Batch>
where
    S: Stream<Item = Run<C>> + Send + 'static,
    C: Send + 'static,
    L: Fn(&C) -> Option<String> + Send + 'static,
{
    struct State<C, L> {
        input: Pin<Box<dyn Stream<Item = Run<C>> + Send>>,
        batcher: Batcher,
        ready: VecDeque<Batch>,
        ended: bool,
        full: FullWindow,
        watching: bool,
        label: L,
    }
    let state = State {
        input: Box::pin(input),
        batcher: Batcher::new(limits),
        ready: VecDeque::new(),
        ended: false,
        full,
        watching: true,
        label,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(b) = st.ready.pop_front() {
                return Some((b, st));
            }
            if st.ended {
                return None;
            }
            // The open batches are all due now, once the input has nothing ready.
            let flush = st.full.now();
            let deadline = match st.batcher.next_deadline() {
                Some(_) if flush => Some(Instant::now()),
                d => d,
            };
            tokio::select! {
                biased;
                run = st.input.next() => match run {
                    Some(run) => {
                        let now = Instant::now();
                        for (tp, r, ctx) in run {
                            let label = &st.label;
                            let closed = st.batcher.push(tp, r, now, || label(&ctx));
                            st.ready.extend(closed);
                        }
                    }
                    None => {
                        st.ended = true;
                        st.ready.extend(st.batcher.drain());
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    let closed = if flush {
                        st.batcher.drain()
                    } else {
                        st.batcher.take_expired(Instant::now())
                    };
                    st.ready.extend(closed);
                }
                // Looked at again at the top of the loop. An error: the source is gone (its
                // last word stays), and the input ends soon.
                changed = st.full.held.changed(), if st.watching => {
                    st.watching = changed.is_ok();
                }
            }
        }
    })
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, HumanDuration};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition: p,
        }
    }

    fn rec(offset: i64, len: usize) -> Record {
        Record {
            offset,
            body: "x".repeat(len),
        }
    }

    fn no_label() -> Option<String> {
        None
    }

    fn limits(events: usize, bytes: u64, age_ms: u64) -> BatchConfig {
        BatchConfig {
            max_events: events,
            max_bytes: ByteSize(bytes),
            max_age: HumanDuration::from_millis(age_ms),
        }
    }

    #[test]
    fn closes_on_count_and_keeps_partitions_apart() {
        let mut b = Batcher::new(limits(2, 1 << 20, 1000));
        let now = Instant::now();
        assert!(b.push(tp(0), rec(0, 1), now, no_label).is_empty());
        assert!(b.push(tp(1), rec(0, 1), now, no_label).is_empty());
        let full = b.push(tp(0), rec(1, 1), now, no_label);
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].tp, tp(0));
        assert_eq!(full[0].offsets(), vec![0, 1]);
        let rest = b.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].tp, tp(1));
    }

    #[test]
    fn closes_before_exceeding_bytes_and_sends_an_oversized_record_alone() {
        let mut b = Batcher::new(limits(100, 10, 1000));
        let now = Instant::now();
        assert!(b.push(tp(0), rec(0, 6), now, no_label).is_empty());
        let closed = b.push(tp(0), rec(1, 6), now, no_label);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].offsets(), vec![0]);
        let closed = b.push(tp(0), rec(2, 50), now, no_label);
        assert_eq!(closed.len(), 2);
        assert_eq!(closed[0].offsets(), vec![1]);
        assert_eq!(closed[1].offsets(), vec![2]);
    }

    #[test]
    fn closes_on_age() {
        let mut b = Batcher::new(limits(100, 1 << 20, 500));
        let t0 = Instant::now();
        b.push(tp(0), rec(0, 1), t0, no_label);
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(500)));
        assert!(b.take_expired(t0 + Duration::from_millis(499)).is_empty());
        assert_eq!(b.take_expired(t0 + Duration::from_millis(500)).len(), 1);
        assert_eq!(b.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_flushes_by_age_and_at_the_end() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (_held, held) = watch::channel(false);
        let mut out = Box::pin(batches(
            tokio_stream_from(rx),
            limits(100, 1 << 20, 1000),
            FullWindow {
                held,
                waiting: Box::new(|| 0),
            },
            |first: &i64| Some(format!("opened by {first}")),
        ));
        tx.send(vec![(tp(0), rec(0, 1), 0)]).unwrap();
        let first = out.next().await.unwrap();
        assert_eq!(first.offsets(), vec![0], "closed by age");
        assert_eq!(first.label.as_deref(), Some("opened by 0"));
        tx.send(vec![(tp(0), rec(1, 1), 1), (tp(1), rec(0, 1), 2)])
            .unwrap();
        drop(tx);
        let mut rest: Vec<_> = vec![out.next().await.unwrap(), out.next().await.unwrap()];
        rest.sort_by_key(|b| b.tp.partition);
        assert_eq!(rest[0].offsets(), vec![1], "flushed at end");
        assert_eq!(rest[1].label.as_deref(), Some("opened by 2"));
        assert!(out.next().await.is_none());
    }

    /// While the source waits for room and nothing more waits for the sink, open batches go
    /// out without waiting for their age, whether the window was full before they opened or
    /// filled while they waited. With events still waiting (this sink is the slow one), or
    /// with room in the window, batches wait for their limits.
    #[tokio::test(start_paused = true)]
    async fn a_full_window_closes_the_open_batches_without_waiting_for_their_age() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (held, held_rx) = watch::channel(true);
        let waiting = Arc::new(AtomicU64::new(0));
        let mut out = Box::pin(batches(
            tokio_stream_from(rx),
            limits(100, 1 << 20, 60_000),
            FullWindow {
                held: held_rx,
                waiting: Box::new({
                    let waiting = waiting.clone();
                    move || waiting.load(Ordering::Relaxed)
                }),
            },
            |_: &()| None,
        ));
        let t0 = Instant::now();
        tx.send(vec![(tp(0), rec(0, 1), ()), (tp(1), rec(0, 1), ())])
            .unwrap();
        let mut both = [out.next().await.unwrap(), out.next().await.unwrap()];
        both.sort_by_key(|b| b.tp.partition);
        assert_eq!(both[0].offsets(), vec![0]);
        assert_eq!(both[1].offsets(), vec![0]);
        assert_eq!(t0.elapsed(), Duration::ZERO, "not by age");

        held.send_replace(false);
        tx.send(vec![(tp(0), rec(1, 1), ())]).unwrap();
        let fill = async {
            // The batch is open and waiting when the window fills.
            tokio::task::yield_now().await;
            held.send_replace(true);
        };
        let (b, ()) = tokio::join!(out.next(), fill);
        assert_eq!(b.unwrap().offsets(), vec![1]);
        assert_eq!(t0.elapsed(), Duration::ZERO, "not by age");

        held.send_replace(false);
        tx.send(vec![(tp(0), rec(2, 1), ())]).unwrap();
        let b = out.next().await.unwrap();
        assert_eq!(b.offsets(), vec![2]);
        assert_eq!(t0.elapsed(), Duration::from_secs(60), "by age, with room");

        held.send_replace(true);
        waiting.store(5, Ordering::Relaxed);
        let t1 = Instant::now();
        tx.send(vec![(tp(0), rec(3, 1), ())]).unwrap();
        let b = out.next().await.unwrap();
        assert_eq!(b.offsets(), vec![3]);
        assert_eq!(
            t1.elapsed(),
            Duration::from_secs(60),
            "by age, events waiting"
        );
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
    ) -> impl Stream<Item = T> + Send {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
