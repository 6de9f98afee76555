//! Decoding: a Kafka message value becomes an [`Event`], or a [`Rejection`] that says why not.
//!
//! A value must be one UTF-8 JSON object no larger than `pipeline.max_event_bytes`. Everything
//! else (a tombstone, bad UTF-8, not JSON, an array or a scalar, too large, nested deeper than
//! serde_json's recursion limit of 128) is rejected with a reason; the source sends rejected
//! messages to the quarantine with their raw bytes, so nothing is dropped and nothing stops the
//! pipeline. Decoding never panics on input.

use std::fmt;

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
///
/// The value is checked, not kept parsed: each sink parses it when it renders it (see
/// [`Event`]). The check is serde_json's own syntax check plus the nesting limit its parser
/// enforces and its pairing of surrogate escapes, so what passes here parses there (but for a
/// number beyond `f64`).
pub fn decode(msg: RawMessage, max_bytes: usize) -> Result<Event, Box<Rejected>> {
    match check(&msg, max_bytes) {
        Ok(()) => Ok(Event {
            coords: msg.coords,
            timestamp_ms: msg.timestamp_ms,
            key: msg.key,
            headers: msg.headers,
            raw: msg.payload.unwrap_or_default(),
        }),
        Err(why) => Err(Box::new(Rejected { message: msg, why })),
    }
}

/// serde_json's parser refuses a value nested this deep (its recursion limit of 128).
const MAX_DEPTH: usize = 128;

fn check(msg: &RawMessage, max_bytes: usize) -> Result<(), Rejection> {
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
    // The syntax check allocates nothing; serde_json skips values without a depth limit, so
    // the depth is measured apart (only once the syntax is known to be good).
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| Rejection::NotJson(e.to_string()))?;
    let shape = Shape::of(payload);
    if shape.deepest >= MAX_DEPTH {
        return Err(Rejection::TooDeep);
    }
    // The syntax check does not pair surrogate escapes (`"\ud800"` alone passes it); the tree
    // parser refuses a lone one. Where the text has a surrogate escape, the tree decides (and
    // is dropped at once).
    if shape.surrogate_escape {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| Rejection::NotJson(e.to_string()))?;
    }
    match text.trim_start().as_bytes().first() {
        Some(b'{') => Ok(()),
        Some(b'[') => Err(Rejection::NotAnObject("array")),
        Some(b'"') => Err(Rejection::NotAnObject("string")),
        Some(b't' | b'f') => Err(Rejection::NotAnObject("boolean")),
        Some(b'n') => Err(Rejection::NotAnObject("null")),
        _ => Err(Rejection::NotAnObject("number")),
    }
}

/// What one pass over valid JSON text finds.
struct Shape {
    /// The deepest nesting of arrays and objects.
    deepest: usize,
    /// Whether a string holds a `\uD800`-`\uDFFF` escape.
    surrogate_escape: bool,
}

impl Shape {
    /// One pass over valid JSON text. Strings, most of an audit event's bytes, are crossed a
    /// quote or backslash at a time (`memchr2`), not byte by byte.
    fn of(json: &[u8]) -> Self {
        let mut shape = Shape {
            deepest: 0,
            surrogate_escape: false,
        };
        let (mut depth, mut i) = (0usize, 0usize);
        while let Some(&b) = json.get(i) {
            i += 1;
            match b {
                b'"' => loop {
                    let rest = json.get(i..).unwrap_or_default();
                    let Some(at) = memchr::memchr2(b'"', b'\\', rest) else {
                        return shape;
                    };
                    i += at + 1;
                    if rest[at] == b'"' {
                        break;
                    }
                    // A backslash: the byte after it is escaped.
                    if let Some([b'u', b'd' | b'D', b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F']) =
                        json.get(i..i + 3)
                    {
                        shape.surrogate_escape = true;
                    }
                    i += 1;
                },
                b'[' | b'{' => {
                    depth += 1;
                    shape.deepest = shape.deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        shape
    }
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
        let fields = e.fields().unwrap();
        let field = |path| crate::event::lookup(&fields, path).unwrap();
        assert_eq!(field("actor.id"), "u-1");
        assert_eq!(field("_kafka.partition"), 2);
        assert_eq!(field("_kafka.offset"), 41);
        assert_eq!(field("_kafka.key"), "ws-1");
        assert_eq!(field("_kafka.headers.trace"), "abc");
        assert_eq!(field("_kafka.timestamp"), "2023-11-14T22:13:20.000Z");
        assert_eq!(e.raw_str(), r#"{"id":"e1","actor":{"id":"u-1"}}"#);
    }

    /// Found by the `template_json` fuzz target: without serde_json's `float_roundtrip`, a
    /// long number was read one unit in the last place off, and the `json` helper's output
    /// did not read back to the event's value. Numbers are now read as a correct parser (Rust's
    /// own, or a SIEM's) reads them, and what templates write reads back the same.
    #[test]
    fn numbers_are_read_exactly_and_written_back_unchanged() {
        let text = "55555555505555555555505555555555555555555555555";
        let e = decode(msg(Some(format!(r#"{{"id":{text}}}"#).as_bytes())), 1024).unwrap();
        let fields = e.fields().unwrap();
        let id = &fields["id"];
        assert_eq!(id.as_f64().unwrap(), text.parse::<f64>().unwrap());
        let written = serde_json::to_string(id).unwrap();
        assert_eq!(
            &serde_json::from_str::<serde_json::Value>(&written).unwrap(),
            id
        );
    }

    /// Found by the `decode` fuzz target: a lone surrogate escape passed the syntax check, so
    /// the event was accepted and then failed to parse in every sink.
    #[test]
    fn a_lone_surrogate_escape_is_not_json_and_a_pair_is_text() {
        for lone in [
            r#"{"a":"\ud800b"}"#,
            r#"{"a":"\uDC00"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"\ud800":1}"#,
            r#"{"a":"\n\udbff"}"#,
        ] {
            assert!(
                matches!(reject(Some(lone.as_bytes())), Rejection::NotJson(_)),
                "{lone}"
            );
        }
        let pair = decode(msg(Some(br#"{"a":"\ud83d\ude00"}"#)), 1024).unwrap();
        assert_eq!(pair.fields().unwrap()["a"], "\u{1f600}");
        // An escaped backslash before `ud800` is text, not an escape.
        let text = decode(msg(Some(br#"{"a":"\\ud800"}"#)), 1024).unwrap();
        assert_eq!(text.fields().unwrap()["a"], "\\ud800");
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

    #[test]
    fn what_decodes_parses_and_the_depth_limit_is_the_parsers() {
        for depth in 100..140 {
            // A string holding brackets and an escaped quote does not count.
            let text = format!(
                r#"{{"a":{}"x]{{\""{}}}"#,
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            );
            let parsed = serde_json::from_str::<serde_json::Value>(&text);
            match decode(msg(Some(text.as_bytes())), usize::MAX) {
                Ok(e) => assert!(
                    e.fields().is_ok(),
                    "depth {depth} decoded but does not parse"
                ),
                Err(r) => {
                    assert_eq!(r.why, Rejection::TooDeep, "depth {depth}");
                    assert!(parsed.is_err(), "depth {depth} parses but was refused");
                }
            }
        }
    }

    /// The nesting of a parsed value, as `Shape` measures it in the text.
    fn nesting(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(nesting).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(nesting).max().unwrap_or(0),
            _ => 0,
        }
    }

    proptest::proptest! {
        /// Strings full of quotes, backslashes, brackets and text that looks like an escape
        /// neither hide nor add nesting, and written text (`\\ud800`) is not a surrogate
        /// escape.
        #[test]
        fn the_shape_is_the_values(value in json_value()) {
            let text = serde_json::to_string(&value).unwrap();
            let shape = Shape::of(text.as_bytes());
            proptest::prop_assert_eq!(shape.deepest, nesting(&value), "{}", text);
            proptest::prop_assert!(!shape.surrogate_escape, "{}", text);
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let text = "[a\\\\\"\\[\\]{}ud80é\u{1f600}]{0,12}";
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            text.prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(text, inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
