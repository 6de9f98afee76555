//! The park's entry codec: what is parked reads back exactly, and a damaged entry is reported,
//! never a panic and never misread.
//!
//! - As a batch: the input's lines become records (the first line the batch's label); the
//!   header and records go through `encode` and come back equal from `decode`.
//! - Damage: a burst of up to 32 flipped bits inside a frame's header or inside its payload
//!   (what CRC-32 always catches) is reported as a `CorruptEntry`; a frame cut short is
//!   reported or, at worst, read as a different entry, never a panic.
//! - As stored bytes: the input read as a frame, as a header and as a records blob is
//!   reported or decoded, never a panic; a blob that decodes re-encodes to the same bytes
//!   (nothing ignored).
#![no_main]

use auditstream::batch::{Batch, Record};
use auditstream::event::TopicPartition;
use auditstream::park::codec::{decode, encode};
use auditstream::park::entry::{decode_records, encode_records, ParkedHeader};
use libfuzzer_sys::fuzz_target;

fn batch_from(data: &[u8]) -> Batch {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let label = lines.next().filter(|l| !l.is_empty()).map(str::to_string);
    let mut batch = Batch::new(
        TopicPartition {
            topic: "audit-events".into(),
            partition: 7,
        },
        label,
    );
    for (i, body) in lines.enumerate() {
        batch.push(Record {
            offset: 100 + 2 * i as i64,
            body: body.to_string(),
        });
    }
    batch
}

/// A small deterministic choice from the input, for where to damage a frame.
fn pick(data: &[u8], salt: u32) -> u32 {
    fnv1a(data) ^ salt.wrapping_mul(0x9e37_79b9)
}

fn fnv1a(data: &[u8]) -> u32 {
    // FNV-1a: not the codec's checksum, so the damage is independent of it.
    data.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Flips a burst of 1 to 32 bits that lies wholly within `frame[from..to]`.
fn burst(frame: &mut [u8], from: usize, to: usize, r: u32) {
    let bits = (to - from) * 8;
    if bits == 0 {
        return;
    }
    let len = (1 + (r >> 8) as usize % 32).min(bits);
    let start = from * 8 + (r as usize % (bits - len + 1));
    // First and last bits of the burst always flip; the ones between follow `r`.
    for k in 0..len {
        if k == 0 || k == len - 1 || (r >> (k % 32)) & 1 == 1 {
            let bit = start + k;
            frame[bit / 8] ^= 0x80 >> (bit % 8);
        }
    }
}

fn damaged_is_reported(frame: &[u8], data: &[u8], salt: u32) {
    let r = pick(data, salt);
    let mut header_hit = frame.to_vec();
    burst(&mut header_hit, 0, 5, r);
    assert!(decode(1, &header_hit).is_err(), "damage in the header");
    let mut payload_hit = frame.to_vec();
    burst(&mut payload_hit, 5, frame.len(), r.rotate_left(13));
    if payload_hit != frame {
        let e = decode(1, &payload_hit).expect_err("damage in the payload");
        assert_eq!(e.key, 1);
        assert!(!e.to_string().is_empty());
    }
    // Cut short: a header alone is never whole; beyond, the checksum decides.
    let cut = r as usize % frame.len();
    if cut < 5 {
        assert!(decode(1, &frame[..cut]).is_err());
    } else {
        let _ = decode(1, &frame[..cut]);
    }
}

/// The records blob's own account of itself, read leniently: (records, body bytes).
fn count_records(blob: &[u8]) -> Option<(u64, u64)> {
    let count = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?);
    let mut rest = &blob[4..];
    let mut bytes = 0u64;
    for _ in 0..count {
        let len = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
        rest = rest.get(12 + len..)?;
        bytes += len as u64;
    }
    Some((u64::from(count), bytes))
}

fuzz_target!(|data: &[u8]| {
    // Round trip of a batch and its header.
    let batch = batch_from(data);
    let header = ParkedHeader::new(&batch, Some("HTTP 503: \"busy\"\n"));
    let meta = encode(&serde_json::to_vec(&header).expect("a header serialises"));
    let records = encode(&encode_records(&batch));
    let back: ParkedHeader =
        serde_json::from_slice(decode(3, &meta).expect("a fresh header frame")).expect("JSON");
    assert_eq!(back, header);
    let blob = decode(3, &records).expect("a fresh records frame");
    let again = decode_records(3, &back, blob).expect("fresh records");
    assert_eq!(again, batch);

    damaged_is_reported(&meta, data, 1);
    damaged_is_reported(&records, data, 2);

    // The input as stored bytes.
    if let Ok(payload) = decode(5, data) {
        let _ = serde_json::from_slice::<ParkedHeader>(payload);
        let _ = decode_records(5, &header, payload);
    }
    let _ = serde_json::from_slice::<ParkedHeader>(data);
    let _ = decode_records(5, &header, data);
    if let Some((events, bytes)) = count_records(data) {
        let mut h = header.clone();
        h.events = events;
        h.bytes = bytes;
        if let Ok(b) = decode_records(5, &h, data) {
            assert_eq!(encode_records(&b), data, "decoded, but not all of it");
            assert_eq!(b.tp.topic.as_ref(), h.topic);
            assert_eq!(b.label, h.label);
        }
    }
});
