//! Message decoding: any bytes become an event or a quarantine reason, never a panic, and
//! nothing is lost on either side.
//!
//! - An event holds its raw bytes, and its fields are exactly the JSON object that was sent
//!   (plus `_kafka`): what decodes parses (but for a number beyond `f64`, which the sink
//!   quarantines), and what parses as an object is not refused (the depth check agrees with
//!   serde_json's recursion limit).
//! - A rejection hands the whole message back, with the reason an independent check expects
//!   (tombstone, too large, not UTF-8 at the right byte, not JSON, not an object, too deep).
//! - The quarantine entry made from a rejection survives the park's frame and JSON and gives
//!   back the exact payload bytes (as text, or base64 when not UTF-8).
//!
//! The fuzz input is the message value; the key, a header and the timestamp are derived from
//! it so their odd values (not UTF-8, out-of-range times) are covered too.
#![no_main]

use auditstream::decode::{decode, Rejection};
use auditstream::event::{Coords, RawMessage};
use auditstream::park::codec;
use auditstream::park::quarantine::QuarantineEntry;
use base64::Engine;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn message(data: &[u8], timestamp_ms: Option<i64>) -> RawMessage {
    let head = &data[..data.len().min(16)];
    RawMessage {
        coords: Coords {
            topic: "audit".into(),
            partition: 3,
            offset: 41,
        },
        timestamp_ms,
        key: Some(Bytes::copy_from_slice(head)),
        headers: vec![
            ("trace".into(), Some(Bytes::copy_from_slice(head))),
            ("empty".into(), None),
        ],
        payload: Some(Bytes::copy_from_slice(data)),
    }
}

/// What decoding must say about `data`, worked out independently with serde_json's tree:
/// the event's fields, a rejection's kind, or `Err(None)` where several kinds are right (the
/// tree parser stops at the first of a syntax error, the depth limit or a number beyond
/// `f64`; decoding checks syntax first and leaves numbers to the sink that parses them).
fn expected(data: &[u8], max: usize) -> Result<Value, Option<&'static str>> {
    if data.len() > max {
        return Err(Some("too_large"));
    }
    if std::str::from_utf8(data).is_err() {
        return Err(Some("not_utf8"));
    }
    match serde_json::from_slice::<Value>(data) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Some("not_an_object")),
        Err(_) => Err(None),
    }
}

fn out_of_range(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("number out of range")
}

fn check(data: &[u8], max: usize, timestamp_ms: Option<i64>) {
    let msg = message(data, timestamp_ms);
    match (decode(msg.clone(), max), expected(data, max)) {
        (Ok(event), Ok(want)) => {
            assert_eq!(event.raw.as_ref(), data, "the raw bytes are kept");
            assert_eq!(event.coords, msg.coords);
            let got = event.fields().expect("what decodes parses");
            let kafka = &got["_kafka"];
            assert_eq!(kafka["topic"], "audit");
            assert_eq!(kafka["partition"], 3);
            assert_eq!(kafka["offset"], 41);
            assert!(kafka["timestamp"].is_string() || kafka["timestamp"].is_null());
            assert!(kafka["key"].is_string());
            assert!(kafka["headers"]["empty"].is_null());
            // Every field that was sent is there, unchanged; `_kafka` is reserved.
            let (Value::Object(got), Value::Object(want)) = (&got, &want) else {
                panic!("an event is an object")
            };
            for (k, v) in want {
                if k != "_kafka" {
                    assert_eq!(got.get(k), Some(v), "field {k:?}");
                }
            }
            assert_eq!(
                got.len(),
                want.len() + usize::from(!want.contains_key("_kafka"))
            );
        }
        (Ok(event), Err(kind)) => {
            // Accepted though the tree parser refuses it: only for a number beyond `f64`,
            // which the sink then quarantines (its render fails on `fields`).
            assert_eq!(kind, None, "decoded, but expected a rejection");
            let e = event.fields().expect_err("the tree parser refused it");
            assert!(out_of_range(&e), "decoded, but does not parse: {e}");
        }
        (Err(rejected), want) => {
            let why = &rejected.why;
            match want {
                Ok(_) => panic!("rejected ({why}), but it is an object"),
                Err(Some(kind)) => assert_eq!(why.kind(), kind, "{why}"),
                Err(None) => assert!(
                    matches!(why.kind(), "not_json" | "too_deep" | "not_an_object"),
                    "{why}"
                ),
            }
            assert!(!why.to_string().is_empty());
            if let Rejection::NotUtf8 { valid_up_to } = why {
                let e = std::str::from_utf8(data).unwrap_err();
                assert_eq!(*valid_up_to, e.valid_up_to());
            }
            // Handed back whole for the quarantine.
            let back = &rejected.message;
            assert_eq!(back.payload.as_deref(), Some(data));
            assert_eq!(back.key, msg.key);
            assert_eq!(back.headers, msg.headers);
            assert_eq!(back.coords, msg.coords);
            assert_eq!(back.timestamp_ms, msg.timestamp_ms);
            quarantine_round_trip(back, why);
        }
    }
}

/// The quarantine entry for a rejected message: through the park's frame and back, and the
/// payload bytes recovered exactly.
fn quarantine_round_trip(msg: &RawMessage, why: &Rejection) {
    let entry = QuarantineEntry::new(msg, None, why.kind(), why.to_string());
    let stored = codec::encode(&serde_json::to_vec(&entry).expect("an entry serialises"));
    let payload = codec::decode(9, &stored).expect("a fresh frame checks out");
    let back: QuarantineEntry = serde_json::from_slice(payload).expect("an entry reads back");
    assert_eq!(back, entry);
    let bytes = match (&back.value, &back.value_base64) {
        (None, None) => None,
        (Some(text), None) => Some(text.as_bytes().to_vec()),
        (None, Some(b64)) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("valid base64"),
        ),
        other => panic!("a payload is kept as text or base64, not both: {other:?}"),
    };
    assert_eq!(bytes.as_deref(), msg.payload.as_deref());
    assert_eq!(back.offset, msg.coords.offset);
}

fuzz_target!(|data: &[u8]| {
    // An i64 from the first bytes: any timestamp a broker could send, most out of range.
    let mut ts = [0u8; 8];
    let n = data.len().min(8);
    ts[..n].copy_from_slice(&data[..n]);
    let odd_time = i64::from_le_bytes(ts);

    check(data, 1 << 20, Some(1_772_600_000_000));
    check(data, data.len(), Some(odd_time));
    if !data.is_empty() {
        check(data, data.len() - 1, None);
    }

    // A tombstone is always rejected, and handed back.
    let mut tomb = message(data, None);
    tomb.payload = None;
    let r = decode(tomb, 1 << 20).expect_err("a tombstone is not an event");
    assert_eq!(r.why, Rejection::Empty);
    quarantine_round_trip(&r.message, &r.why);
});
