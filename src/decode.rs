//! Decoding: a Kafka message value becomes an [`Event`], or a [`Rejection`] that says why not.
//!
//! A value must be one UTF-8 JSON object no larger than `pipeline.max_event_bytes`. Everything
//! else (a tombstone, bad UTF-8, not JSON, an array or a scalar, too large, nested deeper than
//! serde_json's recursion limit of 128) is rejected with a reason; the source sends rejected
//! messages to the quarantine with their raw bytes, so nothing is dropped and nothing stops the
//! pipeline. Decoding never panics on input.

use std::fmt;

use serde_json::{Map, Value};

use crate::event::{Event, RawMessage};

/// Why a message is not an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The message has no value (a tombstone).
    Empty,
    TooLarge {
        size: usize,
        max: usize,
    },
    NotUtf8 {
        valid_up_to: usize,
    },
    NotJson(String),
    /// Valid JSON, but not an object (the kind is `array`, `string`, `number`, ...).
    NotAnObject(&'static str),
    /// Nested deeper than the parser allows; refused to protect the stack.
    TooDeep,
}

impl Rejection {
    /// A short stable label, used as a metric label and in listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Empty => "empty",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::NotUtf8 { .. } => "not_utf8",
            Rejection::NotJson(_) => "not_json",
            Rejection::NotAnObject(_) => "not_an_object",
            Rejection::TooDeep => "too_deep",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Empty => write!(f, "the message has no value"),
            Rejection::TooLarge { size, max } => write!(
                f,
                "the message is {size} bytes, more than pipeline.max_event_bytes ({max})"
            ),
            Rejection::NotUtf8 { valid_up_to } => {
                write!(
                    f,
                    "the message is not UTF-8 (invalid byte at {valid_up_to})"
                )
            }
            Rejection::NotJson(e) => write!(f, "the message is not JSON: {e}"),
            Rejection::NotAnObject(kind) => {
                write!(f, "the message is a JSON {kind}, not an object")
            }
            Rejection::TooDeep => write!(f, "the message is nested too deeply (limit 128)"),
        }
    }
}

/// A message that is not an event, handed back whole for the quarantine.
#[derive(Debug)]
pub struct Rejected {
    pub message: RawMessage,
    pub why: Rejection,
}

/// Decodes one message. On rejection the message is handed back for the quarantine.
pub fn decode(msg: RawMessage, max_bytes: usize) -> Result<Event, Box<Rejected>> {
    match parse(&msg, max_bytes) {
        Ok(mut object) => {
            object.insert("_kafka".into(), kafka_fields(&msg));
            Ok(Event {
                raw: msg.payload.unwrap_or_default(),
                coords: msg.coords,
                data: handlebars::Context::from(Value::Object(object)),
            })
        }
        Err(why) => Err(Box::new(Rejected { message: msg, why })),
    }
}

fn parse(msg: &RawMessage, max_bytes: usize) -> Result<Map<String, Value>, Rejection> {
    let payload = msg.payload.as_deref().ok_or(Rejection::Empty)?;
    if payload.len() > max_bytes {
        return Err(Rejection::TooLarge {
            size: payload.len(),
            max: max_bytes,
        });
    }
    let text = std::str::from_utf8(payload).map_err(|e| Rejection::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Rejection::NotAnObject(json_kind(&other))),
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => Err(Rejection::TooDeep),
        Err(e) => Err(Rejection::NotJson(e.to_string())),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The `_kafka` object templates see.
fn kafka_fields(msg: &RawMessage) -> Value {
    let text = |b: &[u8]| Value::String(String::from_utf8_lossy(b).into_owned());
    let timestamp = msg
        .timestamp_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null);
    let headers: Map<String, Value> = msg
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_deref().map(text).unwrap_or(Value::Null)))
        .collect();
    serde_json::json!({
        "topic": &*msg.coords.topic,
        "partition": msg.coords.partition,
        "offset": msg.coords.offset,
        "timestamp": timestamp,
        "key": msg.key.as_deref().map(text).unwrap_or(Value::Null),
        "headers": headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Coords;
    use bytes::Bytes;

    fn msg(payload: Option<&[u8]>) -> RawMessage {
        RawMessage {
            coords: Coords {
                topic: "audit".into(),
                partition: 2,
                offset: 41,
            },
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(Bytes::from_static(b"ws-1")),
            headers: vec![("trace".into(), Some(Bytes::from_static(b"abc")))],
            payload: payload.map(Bytes::copy_from_slice),
        }
    }

    fn reject(payload: Option<&[u8]>) -> Rejection {
        decode(msg(payload), 64).unwrap_err().why
    }

    #[test]
    fn an_object_becomes_an_event_with_kafka_fields() {
        let e = decode(msg(Some(br#"{"id":"e1","actor":{"id":"u-1"}}"#)), 1024).unwrap();
        assert_eq!(e.field("actor.id").unwrap(), "u-1");
        assert_eq!(e.field("_kafka.partition").unwrap(), 2);
        assert_eq!(e.field("_kafka.offset").unwrap(), 41);
        assert_eq!(e.field("_kafka.key").unwrap(), "ws-1");
        assert_eq!(e.field("_kafka.headers.trace").unwrap(), "abc");
        assert_eq!(
            e.field("_kafka.timestamp").unwrap(),
            "2023-11-14T22:13:20.000Z"
        );
        assert_eq!(e.raw_str(), r#"{"id":"e1","actor":{"id":"u-1"}}"#);
    }

    #[test]
    fn every_kind_of_malformed_message_is_rejected_with_its_reason() {
        assert_eq!(reject(None), Rejection::Empty);
        assert_eq!(
            reject(Some(&[b'{'; 65])),
            Rejection::TooLarge { size: 65, max: 64 }
        );
        assert_eq!(
            reject(Some(b"{\"a\":\"\xff\"}")),
            Rejection::NotUtf8 { valid_up_to: 6 }
        );
        assert!(matches!(reject(Some(b"not json")), Rejection::NotJson(_)));
        assert!(matches!(reject(Some(b"{} {}")), Rejection::NotJson(_)));
        assert_eq!(reject(Some(b"[1,2]")), Rejection::NotAnObject("array"));
        assert_eq!(reject(Some(b"42")), Rejection::NotAnObject("number"));
        assert_eq!(reject(Some(b"\"s\"")), Rejection::NotAnObject("string"));
        let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        assert_eq!(
            decode(msg(Some(deep.as_bytes())), usize::MAX)
                .unwrap_err()
                .why,
            Rejection::TooDeep
        );
    }
}
