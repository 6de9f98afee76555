//! The source's message queue: where the assigned partitions' messages wait, apart from the
//! consumer's queue of events, until the in-flight window has room for them.
//!
//! librdkafka puts what it fetches for a partition on that partition's fetch queue, and
//! forwards it to the consumer's queue, the one `poll` serves. That queue also carries the
//! rebalances, errors and statistics, and must be served at least every
//! `max.poll.interval.ms` or the consumer leaves its group. So with one queue, a source whose
//! sinks are behind could stop taking messages only by pausing its partitions, and a pause
//! costs: librdkafka throws away what it has read ahead (a version barrier) and fetches it
//! again after the resume, and the resume does not wake its fetching thread, which slept up
//! to a second meanwhile unless the source sent a request to wake it.
//!
//! Instead, each partition's fetch queue is forwarded, as the partition is assigned, to a
//! queue of the source's own, [`Messages`]. The source serves the consumer's queue on every
//! turn (events only) and takes from this one only as many messages as the window has room
//! for. The rest wait here, and librdkafka stops fetching a partition once
//! `queued.max.messages.kbytes` wait on the queue it forwards to: what waits is bounded,
//! kept, and never fetched twice, and reading goes on the moment there is room.
//!
//! **Order.** [`Route::forward`] runs in the rebalance callback *before* `assign` starts
//! fetching the partitions, and librdkafka leaves a forwarding the application set alone when
//! it starts fetching, so none of a partition's messages reaches the consumer's queue and one
//! queue keeps them in offset order. Messages of a revoked partition that still wait here
//! belong to an outdated fetch and librdkafka drops them when they are taken.
//!
//! **Lifetime.** A taken message points into librdkafka's buffers: [`Messages::take`] lends
//! each one to a closure and destroys it after (a panic included), so none outlives the call.
//! The queue is destroyed (and what waits in it dropped) before the consumer, which the
//! source ensures by declaring it first; a message left in it would keep the consumer from
//! closing.

use std::borrow::Cow;
use std::ffi::{c_void, CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::TopicPartitionList;

/// The queue the assigned partitions' messages are forwarded to; see the module header.
pub(super) struct Messages {
    queue: NonNull<rd::rd_kafka_queue_t>,
}

// SAFETY: the source builds this on one thread and runs it on another (`Pipeline` moves it to
// a blocking task), then uses it from that thread only; librdkafka's queues may be used from
// any thread.
unsafe impl Send for Messages {}

impl Messages {
    pub fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Self {
        // SAFETY: the handle is live; the queue is destroyed (on drop) before the consumer is.
        let queue = unsafe { rd::rd_kafka_queue_new(consumer.client().native_ptr()) };
        Self {
            queue: NonNull::new(queue).expect("librdkafka creates a queue or aborts"),
        }
    }

    /// Where the rebalance callback forwards partitions as they are assigned.
    pub fn route(&self) -> Route {
        Route(self.queue)
    }

    /// Takes at most `max` messages, in offset order per partition, waiting up to `wait` for
    /// the first when none is there; lends each to `each`, then destroys it. Returns how many
    /// were taken.
    ///
    /// One at a time (`rd_kafka_consume_queue`), not in batches: librdkafka's batch call moves
    /// a partition's read position past the offset of a fetch error as if it were a message
    /// read, and a cooperative rebalance resumes fetching from that position, past a message
    /// never read. The single call leaves the position alone for an error.
    pub fn take(
        &mut self,
        max: usize,
        wait: Duration,
        mut each: impl FnMut(Result<Lent<'_>, KafkaError>),
    ) -> usize {
        let mut wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        for taken in 0..max {
            // SAFETY: the queue is ours and live; a message returned is ours until destroyed.
            let message = unsafe { rd::rd_kafka_consume_queue(self.queue.as_ptr(), wait_ms) };
            let Some(message) = NonNull::new(message).map(Taken) else {
                return taken;
            };
            each(message.lend());
            wait_ms = 0;
        }
        max
    }
}

/// A message taken from the queue: ours until dropped, which destroys it (also when `each`
/// panics, so librdkafka gets back what the message holds).
struct Taken(NonNull<rd::rd_kafka_message_t>);

impl Taken {
    fn lend(&self) -> Result<Lent<'_>, KafkaError> {
        // SAFETY: the message is live until `self` is dropped, and the borrow cannot outlive
        // `self`.
        Lent::of_raw(unsafe { self.0.as_ref() })
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        // SAFETY: taken from librdkafka, destroyed once.
        unsafe { rd::rd_kafka_message_destroy(self.0.as_ptr()) }
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; the messages still waiting are dropped.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// The queue of a live [`Messages`], for the rebalance callback, which runs inside the
/// consumer's `poll` where it cannot reach the source. The source clears its copy before the
/// queue is destroyed (`Source`'s `Drop`), so a rebalance during the consumer's close, after
/// that, forwards nothing.
#[derive(Clone, Copy)]
pub(super) struct Route(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: a pointer to a librdkafka queue, which may be used from any thread; it is used
// only while the queue lives (see above).
unsafe impl Send for Route {}

impl Route {
    /// Forwards the messages of `partitions` to the queue. Called for partitions about to be
    /// assigned, before `assign` (see "Order").
    pub fn forward<C: ConsumerContext>(
        self,
        consumer: &BaseConsumer<C>,
        partitions: &TopicPartitionList,
    ) {
        for e in partitions.elements() {
            let Ok(topic) = CString::new(e.topic()) else {
                tracing::error!(topic = e.topic(), "a topic name with a NUL byte: not read");
                continue;
            };
            // SAFETY: the handle is live and the name a C string; the partition's queue handle
            // is ours to destroy, which releases the handle, not the partition's queue.
            unsafe {
                let partition = rd::rd_kafka_queue_get_partition(
                    consumer.client().native_ptr(),
                    topic.as_ptr(),
                    e.partition(),
                );
                if partition.is_null() {
                    tracing::error!(
                        topic = e.topic(),
                        partition = e.partition(),
                        "librdkafka has no queue for an assigned partition: it is not read until the next assignment (its lag grows)"
                    );
                    continue;
                }
                rd::rd_kafka_queue_forward(partition, self.0.as_ptr());
                rd::rd_kafka_queue_destroy(partition);
            }
        }
    }
}

/// A message lent by librdkafka, read in place.
pub(super) struct Lent<'a>(&'a rd::rd_kafka_message_t);

impl<'a> Lent<'a> {
    /// A message or, where librdkafka reports an error in its place (a partition's fetch
    /// failed), the error.
    fn of_raw(m: &'a rd::rd_kafka_message_t) -> Result<Self, KafkaError> {
        if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Ok(Self(m))
        } else if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF {
            Err(KafkaError::PartitionEOF(m.partition))
        } else {
            Err(KafkaError::MessageConsumption(m.err.into()))
        }
    }

    /// A message `poll` returned from the consumer's queue.
    pub fn of_borrowed(m: &'a BorrowedMessage<'_>) -> Self {
        // SAFETY: the pointer is the borrowed message's, live as long as it is.
        Self(unsafe { &*m.ptr() })
    }

    pub fn topic(&self) -> &'a str {
        // SAFETY: a consumed message's topic handle is live while the message is, and its
        // name is a C string.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.0.rkt)) };
        // Topic names are ASCII by Kafka's rules; one that is not shows as empty in the
        // event's coordinates rather than stopping the source.
        name.to_str().unwrap_or_default()
    }

    pub fn partition(&self) -> i32 {
        self.0.partition
    }

    pub fn offset(&self) -> i64 {
        self.0.offset
    }

    pub fn payload(&self) -> Option<&'a [u8]> {
        bytes_at(self.0.payload, self.0.len)
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        bytes_at(self.0.key, self.0.key_len)
    }

    /// The message's timestamp (create or log-append time), in ms since the epoch.
    pub fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the message is live; `kind` is written.
        let ms = unsafe { rd::rd_kafka_message_timestamp(self.0, &mut kind) };
        let known = kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        (known && ms != -1).then_some(ms)
    }

    /// The message's headers, in order, each a name (bytes that are not UTF-8 replaced) and a
    /// value (`None` for a null value).
    pub fn headers(&self) -> impl Iterator<Item = (Cow<'a, str>, Option<&'a [u8]>)> {
        let mut headers = std::ptr::null_mut();
        // SAFETY: the message is live; librdkafka parses its headers once and keeps them with
        // the message, so they live as long as it does.
        let found = unsafe { rd::rd_kafka_message_headers(self.0, &mut headers) };
        let headers = (found == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then_some(headers as *const rd::rd_kafka_headers_t);
        (0..).map_while(move |i| {
            let headers = headers?;
            let (mut name, mut value, mut len) = (std::ptr::null(), std::ptr::null(), 0);
            // SAFETY: the headers are live (above); an index past the last is answered with
            // an error, which ends the iteration.
            let err =
                unsafe { rd::rd_kafka_header_get_all(headers, i, &mut name, &mut value, &mut len) };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                return None;
            }
            // SAFETY: a header's name is a C string that lives with the headers.
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
            Some((name, bytes_at(value as *mut c_void, len)))
        })
    }
}

/// The `len` bytes at `at`, or `None` where librdkafka has none (a null key, payload or
/// header value).
fn bytes_at<'a>(at: *mut c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: librdkafka gives a pointer to `len` bytes that live with the message, or null.
    (!at.is_null()).then(|| unsafe { std::slice::from_raw_parts(at as *const u8, len) })
}
