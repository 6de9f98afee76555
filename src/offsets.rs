//! The offset tracker: which Kafka offsets may be committed.
//!
//! # The rule
//!
//! An offset is committed only when it and every offset registered before it on its partition
//! have been *finished* by every sink the event was routed to. Finished means one of: delivered
//! (the sink confirmed), durably parked (written and flushed), or quarantined (written and
//! flushed). A later message finishing first never moves the commit past an earlier one. This is
//! what makes the daemon at-least-once: after a crash, Kafka hands back everything from the
//! first unfinished message on.
//!
//! # How
//!
//! The source [`register`](Tracker::register)s every message it reads, in offset order per
//! partition, with the [`Pending`] set of [`Slot`]s that must finish it: one slot per sink the
//! event was routed to, or the quarantine slot for a message that could not be decoded. A
//! message routed nowhere is registered with an empty set and is finished at once.
//!
//! Workers report [`Finished`] (a slot and a list of offsets of one partition) over a channel;
//! the source applies each report with [`finish`](Tracker::finish), which clears the slot's bit.
//! Clearing is idempotent, so a report delivered twice, or a report for an offset that a
//! re-assignment registered again, can never finish work that was not done.
//!
//! Per partition the tracker keeps a queue of `(offset, pending)` in offset order. When the
//! head's set becomes empty it is popped and the partition's commit position becomes
//! `offset + 1` (Kafka's convention: the next offset to read). So the commit position is always
//! the end of the contiguous finished prefix.
//!
//! # Rebalances
//!
//! [`revoke`](Tracker::revoke) forgets a partition (after its position has been committed);
//! late reports for it are ignored. [`assign`](Tracker::assign) starts a fresh queue; Kafka
//! resumes it from the committed position, so the new owner may see a few duplicates but never
//! a gap.
//!
//! # Memory
//!
//! [`in_flight`](Tracker::in_flight) counts registered messages not yet committed. The source
//! takes no more messages from librdkafka while it is at `pipeline.max_in_flight_events`,
//! which bounds every queue and batch behind it.
//!
//! This module is pure: no Kafka, no I/O, no clock. It is unit- and property-tested below.

use std::collections::VecDeque;

use crate::event::{PartitionMap, TopicPartition};

/// One party that must finish an event: a sink (by its index in the configuration) or the
/// quarantine. Slots are bits of a `u64`, so there are at most 63 sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot(u8);

impl Slot {
    /// The quarantine of messages that could not be decoded.
    pub const QUARANTINE: Slot = Slot(63);

    /// The slot of the sink at `index`; `None` past the 63rd sink.
    pub fn sink(index: usize) -> Option<Slot> {
        u8::try_from(index).ok().filter(|i| *i < 63).map(Slot)
    }

    fn bit(self) -> u64 {
        1 << self.0
    }
}

/// The slots that have not yet finished an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending(u64);

impl Pending {
    pub const NONE: Pending = Pending(0);

    pub fn of(slot: Slot) -> Self {
        Pending(slot.bit())
    }

    #[must_use]
    pub fn with(self, slot: Slot) -> Self {
        Pending(self.0 | slot.bit())
    }

    pub fn contains(self, slot: Slot) -> bool {
        self.0 & slot.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn clear(&mut self, slot: Slot) {
        self.0 &= !slot.bit();
    }
}

/// A report that `slot` has finished these offsets of one partition.
#[derive(Debug, Clone)]
pub struct Finished {
    pub slot: Slot,
    pub tp: TopicPartition,
    pub offsets: Vec<i64>,
}

/// How a registered offset follows the last one registered on its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// The first since the partition was assigned, or the offset right after the last.
    InSequence,
    /// `skipped` offsets lie between the last one registered and this one. Kafka leaves such
    /// gaps (a transaction's commit marker takes an offset; compaction removes records), so
    /// the commit moves past them; but a broker that failed to send records would look the
    /// same, so the source counts and logs them.
    AfterGap { skipped: i64 },
}

/// Why a message was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The offset is not after the last one registered on its partition: Kafka delivered it
    /// again. It is already being processed, so the source skips it.
    #[error("offset {offset} is not after {last}, the last registered")]
    NotAfterLast { offset: i64, last: i64 },
}

#[derive(Debug, Default)]
struct PartitionLog {
    /// Registered offsets not yet committed, in increasing order, with who still owes them.
    entries: VecDeque<(i64, Pending)>,
    last_registered: Option<i64>,
    /// The next offset to read: one past the end of the finished prefix.
    position: Option<i64>,
    /// `position` moved since it was last taken by `take_moved`.
    moved: bool,
}

impl PartitionLog {
    /// Pops the finished prefix and moves the position past it.
    fn advance(&mut self) -> usize {
        let mut popped = 0;
        while let Some((offset, pending)) = self.entries.front() {
            if !pending.is_empty() {
                break;
            }
            self.position = Some(offset + 1);
            self.moved = true;
            self.entries.pop_front();
            popped += 1;
        }
        popped
    }
}

/// Tracks, per partition, the contiguous prefix of finished messages.
#[derive(Debug, Default)]
pub struct Tracker {
    partitions: PartitionMap<PartitionLog>,
    in_flight: usize,
    committed: u64,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a partition afresh (a new assignment).
    pub fn assign(&mut self, tp: TopicPartition) {
        if let Some(old) = self.partitions.insert(tp, PartitionLog::default()) {
            self.in_flight -= old.entries.len();
        }
    }

    /// Stops tracking a partition; returns its last finished position, which the caller
    /// commits before giving the partition up.
    pub fn revoke(&mut self, tp: &TopicPartition) -> Option<i64> {
        let log = self.partitions.remove(tp)?;
        self.in_flight -= log.entries.len();
        log.position
    }

    /// Registers a message that `pending` must finish. Offsets must increase per partition;
    /// they may skip (see [`Registered::AfterGap`]).
    pub fn register(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        pending: Pending,
    ) -> Result<Registered, RegisterError> {
        let log = match self.partitions.get_mut(tp) {
            Some(log) => log,
            None => self.partitions.entry(tp.clone()).or_default(),
        };
        let registered = match log.last_registered {
            Some(last) if offset <= last => {
                return Err(RegisterError::NotAfterLast { offset, last });
            }
            Some(last) if offset > last + 1 => Registered::AfterGap {
                skipped: offset - last - 1,
            },
            _ => Registered::InSequence,
        };
        log.last_registered = Some(offset);
        log.entries.push_back((offset, pending));
        self.in_flight += 1;
        let popped = log.advance();
        self.in_flight -= popped;
        self.committed += popped as u64;
        Ok(registered)
    }

    /// Records that `slot` finished `offset`. Unknown partitions and offsets (revoked, or
    /// already committed) are ignored.
    pub fn finish(&mut self, tp: &TopicPartition, offset: i64, slot: Slot) {
        self.finish_all(tp, &[offset], slot);
    }

    /// Applies a whole report.
    pub fn apply(&mut self, report: &Finished) {
        self.finish_all(&report.tp, &report.offsets, report.slot);
    }

    /// Records that `slot` finished `offsets` of `tp`, looking the partition up once; then
    /// pops the finished prefix.
    fn finish_all(&mut self, tp: &TopicPartition, offsets: &[i64], slot: Slot) {
        let Some(log) = self.partitions.get_mut(tp) else {
            return;
        };
        // A report's offsets ascend and mostly follow each other in the log, so the entry just
        // after the last one found is looked at first, and the log searched only when it is
        // not the one.
        let mut next = 0;
        for &offset in offsets {
            let found = match log.entries.get(next) {
                Some(&(o, _)) if o == offset => Some(next),
                _ => log.entries.binary_search_by_key(&offset, |(o, _)| *o).ok(),
            };
            if let Some(i) = found {
                log.entries[i].1.clear(slot);
                next = i + 1;
            }
        }
        let popped = log.advance();
        self.in_flight -= popped;
        self.committed += popped as u64;
    }

    /// The next offset to read on `tp` (the commit position), once anything has finished.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp).and_then(|l| l.position)
    }

    /// Every partition's commit position.
    pub fn positions(&self) -> Vec<(TopicPartition, i64)> {
        self.partitions
            .iter()
            .filter_map(|(tp, l)| l.position.map(|p| (tp.clone(), p)))
            .collect()
    }

    /// The positions that moved since the last call, to be stored for the next commit.
    pub fn take_moved(&mut self) -> Vec<(TopicPartition, i64)> {
        self.partitions
            .iter_mut()
            .filter(|(_, l)| l.moved)
            .filter_map(|(tp, l)| {
                l.moved = false;
                l.position.map(|p| (tp.clone(), p))
            })
            .collect()
    }

    /// Messages registered and not yet committable.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Messages that have become committable since the tracker was created.
    pub fn committed_messages(&self) -> u64 {
        self.committed
    }

    /// The oldest unfinished offset on `tp`, with who still owes it.
    pub fn oldest_pending(&self, tp: &TopicPartition) -> Option<(i64, Pending)> {
        self.partitions.get(tp)?.entries.front().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition: p,
        }
    }

    fn sinks(n: usize) -> Pending {
        (0..n).fold(Pending::NONE, |p, i| p.with(Slot::sink(i).unwrap()))
    }

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut t = Tracker::new();
        let (a, b) = (Slot::sink(0).unwrap(), Slot::sink(1).unwrap());
        for o in 10..15 {
            t.register(&tp(0), o, sinks(2)).unwrap();
        }
        assert_eq!(t.position(&tp(0)), None);
        // Offset 12 finishes first, on both sinks: nothing may move.
        t.finish(&tp(0), 12, a);
        t.finish(&tp(0), 12, b);
        assert_eq!(t.position(&tp(0)), None);
        // 10 finishes on one sink only: still nothing.
        t.finish(&tp(0), 10, a);
        assert_eq!(t.position(&tp(0)), None);
        t.finish(&tp(0), 10, b);
        assert_eq!(t.position(&tp(0)), Some(11));
        t.finish(&tp(0), 11, a);
        t.finish(&tp(0), 11, b);
        // 11 done, 12 was already done: the prefix jumps to 13.
        assert_eq!(t.position(&tp(0)), Some(13));
        assert_eq!(t.in_flight(), 2);
        assert_eq!(t.take_moved(), vec![(tp(0), 13)]);
        assert!(t.take_moved().is_empty());
    }

    #[test]
    fn a_message_routed_nowhere_finishes_at_once_but_waits_its_turn() {
        let mut t = Tracker::new();
        let a = Slot::sink(0).unwrap();
        t.register(&tp(0), 0, Pending::of(a)).unwrap();
        assert_eq!(
            t.register(&tp(0), 1, Pending::NONE),
            Ok(Registered::InSequence)
        );
        assert_eq!(t.position(&tp(0)), None);
        t.finish(&tp(0), 0, a);
        assert_eq!(t.position(&tp(0)), Some(2));
        assert_eq!(
            t.register(&tp(0), 5, Pending::NONE),
            Ok(Registered::AfterGap { skipped: 3 })
        );
        assert_eq!(t.position(&tp(0)), Some(6));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.committed_messages(), 3);
    }

    #[test]
    fn repeated_and_stale_reports_change_nothing_they_should_not() {
        let mut t = Tracker::new();
        let (a, b) = (Slot::sink(0).unwrap(), Slot::sink(1).unwrap());
        t.register(&tp(0), 0, sinks(2)).unwrap();
        t.finish(&tp(0), 0, a);
        t.finish(&tp(0), 0, a);
        assert_eq!(t.position(&tp(0)), None, "a twice is not a and b");
        t.finish(&tp(0), 99, b); // never registered
        t.finish(&tp(7), 0, b); // unknown partition
        assert_eq!(t.position(&tp(0)), None);
        assert_eq!(
            t.register(&tp(0), 0, sinks(2)),
            Err(RegisterError::NotAfterLast { offset: 0, last: 0 })
        );
    }

    #[test]
    fn revoke_forgets_and_assign_starts_afresh() {
        let mut t = Tracker::new();
        let a = Slot::sink(0).unwrap();
        for o in 0..4 {
            t.register(&tp(0), o, Pending::of(a)).unwrap();
        }
        t.finish(&tp(0), 0, a);
        assert_eq!(t.revoke(&tp(0)), Some(1));
        assert_eq!(t.in_flight(), 0);
        t.finish(&tp(0), 1, a); // late report for the old assignment
        assert_eq!(t.position(&tp(0)), None);
        t.assign(tp(0));
        // Kafka resumes at the committed position 1.
        t.register(&tp(0), 1, Pending::of(a)).unwrap();
        t.finish(&tp(0), 1, a);
        assert_eq!(t.position(&tp(0)), Some(2));
    }

    #[test]
    fn quarantine_is_its_own_slot() {
        let mut t = Tracker::new();
        t.register(&tp(0), 0, Pending::of(Slot::QUARANTINE))
            .unwrap();
        t.finish(&tp(0), 0, Slot::sink(0).unwrap());
        assert_eq!(t.position(&tp(0)), None);
        t.finish(&tp(0), 0, Slot::QUARANTINE);
        assert_eq!(t.position(&tp(0)), Some(1));
        assert!(Slot::sink(63).is_none());
        assert!(Slot::sink(62).is_some());
    }

    proptest! {
        /// Whatever order sinks finish in, alone or in reports of several offsets in any order,
        /// the position never passes an unfinished offset, and once everything has finished it
        /// is one past the last offset.
        #[test]
        fn never_commits_past_unfinished_work(
            partitions in 1usize..4,
            counts in proptest::collection::vec(1usize..40, 4),
            gaps in proptest::collection::vec(1i64..3, 160),
            routes in proptest::collection::vec(0u64..8, 160),
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..600),
            report_sizes in proptest::collection::vec(0usize..6, 1..50),
        ) {
            let mut t = Tracker::new();
            // (partition, offset, pending) of every registered message.
            let mut registered: Vec<(i32, i64, Pending)> = Vec::new();
            let mut k = 0;
            for (p, count) in counts.iter().enumerate().take(partitions) {
                let mut offset = 0;
                for _ in 0..*count {
                    offset += gaps[k % gaps.len()];
                    let mask = routes[k % routes.len()];
                    let pending = (0..3).filter(|b| mask & (1 << b) != 0)
                        .fold(Pending::NONE, |acc, b| acc.with(Slot::sink(b).unwrap()));
                    t.register(&tp(p as i32), offset, pending).unwrap();
                    registered.push((p as i32, offset, pending));
                    k += 1;
                }
            }
            // Work still owed, finished in a random order.
            let mut owed: Vec<(i32, i64, Slot)> = registered.iter().flat_map(|(p, o, pend)| {
                (0..3).map(|b| Slot::sink(b).unwrap())
                    .filter(|s| pend.contains(*s))
                    .map(move |s| (*p, *o, s))
            }).collect();
            let check = |t: &Tracker, owed: &[(i32, i64, Slot)]| {
                for p in 0..partitions as i32 {
                    if let Some(pos) = t.position(&tp(p)) {
                        prop_assert!(
                            !owed.iter().any(|(q, o, _)| *q == p && *o < pos),
                            "position {} passed unfinished work on partition {}", pos, p
                        );
                    }
                }
                Ok(())
            };
            // Each step finishes one piece of work and a few more of the same partition and
            // sink, in whatever order they are found, as one report.
            for (step, idx) in order.iter().enumerate() {
                if owed.is_empty() { break; }
                let (p, o, s) = owed.swap_remove(idx.index(owed.len()));
                let mut offsets = vec![o];
                let more = report_sizes[step % report_sizes.len()];
                while offsets.len() <= more {
                    let Some(j) = owed.iter().position(|(q, _, r)| *q == p && *r == s) else { break };
                    offsets.push(owed.swap_remove(j).1);
                }
                t.apply(&Finished { slot: s, tp: tp(p), offsets });
                check(&t, &owed)?;
            }
            for (p, o, s) in owed.drain(..) {
                t.finish(&tp(p), o, s);
            }
            for p in 0..partitions as i32 {
                let last = registered.iter().filter(|(q, _, _)| *q == p).map(|(_, o, _)| *o).max().unwrap();
                prop_assert_eq!(t.position(&tp(p)), Some(last + 1));
            }
            prop_assert_eq!(t.in_flight(), 0);
            prop_assert_eq!(t.committed_messages(), registered.len() as u64);
        }
    }
}
