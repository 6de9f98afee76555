//! The data that travels through the pipeline: where a message came from ([`Coords`]), the
//! message as read from Kafka ([`RawMessage`]) and the decoded [`Event`] every sink renders.
//!
//! `Coords` travel with every event, record and batch: nothing reaches the offset tracker
//! without them.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a message sits in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Coords {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Coords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// A topic and partition: the unit of ordering and of offset commits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

impl Coords {
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition {
            topic: self.topic.clone(),
            partition: self.partition,
        }
    }
}

/// A Kafka message copied out of librdkafka's buffers, before decoding.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub coords: Coords,
    /// Milliseconds since the epoch, when the message has a timestamp.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// `None` for a tombstone (a message without a value).
    pub payload: Option<Bytes>,
}

/// A decoded audit event: a JSON object plus its Kafka coordinates.
///
/// `data` is the object as sent, with one field added: `_kafka` (topic, partition, offset,
/// timestamp, key, headers), so templates can use the coordinates. It is a handlebars
/// `Context` so that every sink renders from the same parsed value without copying it.
#[derive(Debug)]
pub struct Event {
    pub coords: Coords,
    /// The message value exactly as received (valid UTF-8, one JSON object).
    pub raw: Bytes,
    pub data: handlebars::Context,
}

impl Event {
    /// The event's fields (including `_kafka`).
    pub fn value(&self) -> &Value {
        self.data.data()
    }

    /// The original message text.
    pub fn raw_str(&self) -> &str {
        // `decode` only builds events from valid UTF-8.
        std::str::from_utf8(&self.raw).unwrap_or_default()
    }

    /// Looks up a dotted field path such as `actor.id`.
    pub fn field(&self, path: &str) -> Option<&Value> {
        lookup(self.value(), path)
    }
}

/// Looks up a dotted field path (`actor.id`, `changes.role.new`, `tags.0`) in a JSON value.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, part| match v {
        Value::Object(map) => map.get(part),
        Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}
