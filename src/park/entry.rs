//! One parked batch: a small header (JSON) and the records (binary), stored in two trees under
//! the same key so that listing and counting never read the records.
//!
//! Records blob (inside a [`codec`](super::codec) frame):
//!
//! ```text
//! [count: u32 BE] then count x [offset: i64 BE][length: u32 BE][body: length bytes]
//! ```

use serde::{Deserialize, Serialize};

use super::codec::CorruptEntry;
use crate::batch::{Batch, Record};
use crate::event::TopicPartition;

/// What is known of a parked batch without reading its records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedHeader {
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub events: u64,
    /// Sum of the records' lengths: what `park.max_bytes` counts.
    pub bytes: u64,
    /// The batch's label (the S3 key part), kept so a replay sends it under the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// When the batch was parked, RFC 3339 and milliseconds since the epoch.
    pub parked_at: String,
    pub parked_at_ms: i64,
    /// Delivery attempts since it was parked (the one that failed before parking counts).
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
}

impl ParkedHeader {
    /// The header of a batch parked now, after `error` (if a delivery failed).
    pub fn new(batch: &Batch, error: Option<&str>) -> Self {
        let now = chrono::Utc::now();
        let at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        Self {
            topic: batch.tp.topic.to_string(),
            partition: batch.tp.partition,
            first_offset: batch.first_offset().unwrap_or(0),
            last_offset: batch.last_offset().unwrap_or(0),
            events: batch.len() as u64,
            bytes: batch.bytes as u64,
            label: batch.label.clone(),
            parked_at: at.clone(),
            parked_at_ms: now.timestamp_millis(),
            attempts: u32::from(error.is_some()),
            last_error: error.map(str::to_string),
            last_attempt_at: error.map(|_| at),
        }
    }
}

/// A parked batch read back from the store: its sequence number, header and records.
#[derive(Debug, Clone)]
pub struct Parked {
    pub seq: u64,
    pub header: ParkedHeader,
    pub batch: Batch,
}

/// Encodes a batch's records.
pub fn encode_records(batch: &Batch) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + batch.bytes + batch.len() * 12);
    out.extend_from_slice(&(batch.len() as u32).to_be_bytes());
    for r in &batch.records {
        out.extend_from_slice(&r.offset.to_be_bytes());
        out.extend_from_slice(&(r.body.len() as u32).to_be_bytes());
        out.extend_from_slice(r.body.as_bytes());
    }
    out
}

/// Decodes records written by [`encode_records`] into the batch they came from. Anything else
/// (cut short, not UTF-8, bytes after the last record, not what the header counts) is reported.
pub fn decode_records(seq: u64, header: &ParkedHeader, blob: &[u8]) -> Result<Batch, CorruptEntry> {
    let bad = |reason: &str| CorruptEntry {
        key: seq,
        reason: reason.to_string(),
    };
    let mut rest = blob;
    let mut take = |n: usize| -> Result<&[u8], CorruptEntry> {
        if rest.len() < n {
            return Err(bad("records end early"));
        }
        let (a, b) = rest.split_at(n);
        rest = b;
        Ok(a)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("count"))?);
    let mut batch = Batch::new(
        TopicPartition {
            topic: header.topic.as_str().into(),
            partition: header.partition,
        },
        header.label.clone(),
    );
    for _ in 0..count {
        let offset = i64::from_be_bytes(take(8)?.try_into().map_err(|_| bad("offset"))?);
        let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("length"))?) as usize;
        let body = std::str::from_utf8(take(len)?)
            .map_err(|_| bad("a record is not UTF-8"))?
            .to_string();
        batch.push(Record { offset, body });
    }
    if !rest.is_empty() {
        return Err(bad("bytes after the last record"));
    }
    if batch.len() as u64 != header.events || batch.bytes as u64 != header.bytes {
        return Err(bad("records do not match the header"));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(bodies: &[String]) -> Batch {
        let mut b = Batch::new(
            TopicPartition {
                topic: "t".into(),
                partition: 3,
            },
            Some("2026/01/01/".into()),
        );
        for (i, body) in bodies.iter().enumerate() {
            b.push(Record {
                offset: 100 + i as i64 * 2,
                body: body.clone(),
            });
        }
        b
    }

    /// Found by the `park_codec` fuzz target: an empty batch followed by stray bytes decoded
    /// as the empty batch, the bytes ignored.
    #[test]
    fn stray_bytes_after_an_empty_batch_are_reported() {
        let b = batch(&[]);
        let h = ParkedHeader::new(&b, None);
        let blob = [0, 0, 0, 0, 0, 0, 0, 3, b'w', b's'];
        let e = decode_records(4, &h, &blob).unwrap_err();
        assert_eq!(e.key, 4);
        assert_eq!(e.reason, "bytes after the last record");
        assert_eq!(decode_records(4, &h, &blob[..4]).unwrap(), b);
    }

    proptest! {
        #[test]
        fn records_round_trip(bodies in proptest::collection::vec("\\PC{0,40}", 1..30)) {
            let b = batch(&bodies);
            let h = ParkedHeader::new(&b, Some("HTTP 503"));
            let back = decode_records(1, &h, &encode_records(&b)).unwrap();
            prop_assert_eq!(back, b);
        }

        #[test]
        fn bytes_after_the_records_are_reported(bodies in proptest::collection::vec("\\PC{0,40}", 0..8), extra in proptest::collection::vec(any::<u8>(), 1..16)) {
            let b = batch(&bodies);
            let h = ParkedHeader::new(&b, None);
            let mut blob = encode_records(&b);
            blob.extend_from_slice(&extra);
            prop_assert!(decode_records(1, &h, &blob).is_err());
        }

        #[test]
        fn garbage_is_reported_never_a_panic(blob in proptest::collection::vec(any::<u8>(), 0..200)) {
            let b = batch(&["x".to_string()]);
            let h = ParkedHeader::new(&b, None);
            let _ = decode_records(1, &h, &blob);
        }
    }
}
