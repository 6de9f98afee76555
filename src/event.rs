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

mod tree;

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

/// A map keyed by partition, looked up for every event: hashed with Fx, not SipHash (the keys
/// are the configured topics' partitions, which nobody outside chooses).
pub type PartitionMap<V> = rustc_hash::FxHashMap<TopicPartition, V>;

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

#[cfg(test)]
impl RawMessage {
    /// A message at `t/0@0` with `payload` as its value and nothing else (for unit tests).
    pub(crate) fn for_test(payload: &[u8]) -> Self {
        Self {
            coords: Coords {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            timestamp_ms: None,
            key: None,
            headers: vec![],
            payload: Some(Bytes::copy_from_slice(payload)),
        }
    }
}

/// A decoded audit event: a message whose value is one JSON object, with its Kafka metadata.
///
/// It holds the value's bytes, not a parsed tree. A parsed `serde_json::Value` costs about ten
/// times the text (a 500-byte event takes 5 KB), and up to `pipeline.max_in_flight_events`
/// events wait in the sinks' queues; so each sink parses the event when it renders it
/// ([`Event::fields`]) and drops the tree with the rendered record. Memory per waiting event
/// is its size plus this struct (see ARCHITECTURE.md, invariant 5).
#[derive(Debug)]
pub struct Event {
    pub coords: Coords,
    /// Milliseconds since the epoch, when the message has a timestamp.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// The message value exactly as received (valid UTF-8, one JSON object: `decode` checked).
    pub raw: Bytes,
}

impl Event {
    /// The event's fields, parsed from `raw`, with one field added: `_kafka` (topic,
    /// partition, offset, timestamp, key, headers), so templates can use the coordinates.
    ///
    /// `decode` checked the syntax, so this fails only where serde_json's tree is stricter
    /// than its syntax check (a number beyond `f64`); the caller quarantines the event then.
    pub fn fields(&self) -> Result<Value, serde_json::Error> {
        // From a `str`, serde_json takes each string as it is; from bytes it checks each one
        // as UTF-8 again (3 % of rendering). One check of the whole text is cheaper.
        let mut value: Value = match std::str::from_utf8(&self.raw) {
            Ok(text) => tree::parse(text)?,
            Err(_) => serde_json::from_slice(&self.raw)?,
        };
        if let Value::Object(map) = &mut value {
            map.insert("_kafka".into(), self.kafka_fields());
        }
        Ok(value)
    }

    /// The original message text.
    pub fn raw_str(&self) -> &str {
        // `decode` only builds events from valid UTF-8.
        std::str::from_utf8(&self.raw).unwrap_or_default()
    }

    /// The `_kafka` object templates see.
    fn kafka_fields(&self) -> Value {
        let text = |b: &[u8]| Value::String(String::from_utf8_lossy(b).into_owned());
        let timestamp = self
            .timestamp_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
            .unwrap_or(Value::Null);
        let headers: serde_json::Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_deref().map(text).unwrap_or(Value::Null)))
            .collect();
        serde_json::json!({
            "topic": &*self.coords.topic,
            "partition": self.coords.partition,
            "offset": self.coords.offset,
            "timestamp": timestamp,
            "key": self.key.as_deref().map(text).unwrap_or(Value::Null),
            "headers": headers,
        })
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
