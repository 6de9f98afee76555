//! What the fuzz targets share: turning fuzz bytes into an audit event, and the independent CEF
//! and LEEF readers of `tests/common/siem_readers.rs`.

use auditstream::decode::decode;
use auditstream::event::{Coords, Event, RawMessage};
use serde_json::{json, Map, Value};

#[path = "../../tests/common/siem_readers.rs"]
pub mod siem_readers;

/// The Kafka timestamp every fuzzed event carries (so formats always have a time).
pub const KAFKA_TIMESTAMP_MS: i64 = 1_772_600_000_000;

/// The fields the built-in formats map, in the order [`event_from`] fills them from
/// NUL-separated strings.
pub const FIELDS: &[&str] = &[
    "action",
    "actor.id",
    "actor.name",
    "workspace",
    "id",
    "outcome",
    "metadata.ip",
    "metadata.user_agent",
    "metadata.request_id",
    "actor.type",
    "entity.type",
    "entity.id",
    "changes.note.old",
    "timestamp",
];

/// An event made from fuzz bytes, and the JSON value it was made from (what a sink must give
/// back). Bytes that are one JSON object are that event (the corpus's seeds are the fixture
/// events); any other bytes are read as text, split on NUL, and the pieces become the string
/// values of [`FIELDS`], so every mapped field sees hostile text.
pub fn event_from(data: &[u8]) -> Option<(Value, Event)> {
    let (input, payload) = match serde_json::from_slice::<Value>(data) {
        Ok(v @ Value::Object(_)) => (v, data.to_vec()),
        _ => {
            let text = String::from_utf8_lossy(data);
            let mut v = Value::Object(Map::new());
            for (field, piece) in FIELDS.iter().zip(text.split('\0')) {
                set(&mut v, field, Value::String(piece.to_string()));
            }
            let payload = serde_json::to_vec(&v).expect("a Value serialises");
            (v, payload)
        }
    };
    let msg = RawMessage {
        coords: Coords {
            topic: "audit-events".into(),
            partition: 1,
            offset: 100,
        },
        timestamp_ms: Some(KAFKA_TIMESTAMP_MS),
        key: None,
        headers: vec![],
        payload: Some(payload.into()),
    };
    // Too deep, or a number beyond f64: not an event a sink renders (quarantined); the
    // decode target covers those.
    let event = decode(msg, usize::MAX).ok()?;
    event.fields().ok()?;
    Some((without_kafka(&input), event))
}

/// Whether `error` is the render error the README documents for a name looked up in a list
/// (which `default` cannot cover), and following one of [`FIELDS`] through `fields` does
/// look up that name in a list.
pub fn looks_up_a_name_in_a_list(fields: &Value, error: &str) -> bool {
    FIELDS.iter().any(|path| {
        let mut at = fields;
        for step in path.split('.') {
            match at {
                Value::Object(m) => match m.get(step) {
                    Some(next) => at = next,
                    None => return false,
                },
                Value::Array(_) => {
                    return step.parse::<usize>().is_err()
                        && error.contains(&format!("looks up `{step}` in a list"));
                }
                _ => return false,
            }
        }
        false
    })
}

fn set(v: &mut Value, path: &str, value: Value) {
    let mut at = v;
    let mut parts = path.split('.').peekable();
    while let Some(k) = parts.next() {
        let map = match at {
            Value::Object(m) => m,
            _ => return,
        };
        if parts.peek().is_none() {
            map.insert(k.to_string(), value);
            return;
        }
        at = map.entry(k.to_string()).or_insert_with(|| json!({}));
    }
}

/// `_kafka` is the field decoding adds (replacing one the producer sent): not part of the
/// input a sink must give back.
pub fn without_kafka(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "_kafka")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A dotted path into a value; `null` where it leads nowhere (as `default x null` renders).
pub fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// A value as the CEF and LEEF helpers write it: strings as they are, null as nothing,
/// anything else as JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
