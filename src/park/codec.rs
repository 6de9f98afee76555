//! The frame around every value in the park: `[version: u8][crc32(payload): u32 BE][payload]`.
//! Decoding checks both and reports a damaged entry instead of misreading it.

/// The frame format written by this version.
const VERSION: u8 = 1;
const HEADER: usize = 5;

/// An entry whose frame does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("damaged park entry {key}: {reason}")]
pub struct CorruptEntry {
    /// The entry's key, as a sequence number.
    pub key: u64,
    pub reason: String,
}

/// Frames a payload.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(VERSION);
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a frame and returns its payload.
pub fn decode(key: u64, frame: &[u8]) -> Result<&[u8], CorruptEntry> {
    let bad = |reason: String| CorruptEntry { key, reason };
    if frame.len() < HEADER {
        return Err(bad(format!(
            "{} bytes is shorter than a header",
            frame.len()
        )));
    }
    if frame[0] != VERSION {
        return Err(bad(format!("unknown format version {}", frame[0])));
    }
    let want = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
    let payload = &frame[HEADER..];
    let got = crc32fast::hash(payload);
    if got != want {
        return Err(bad(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x})"
        )));
    }
    Ok(payload)
}

/// Reads a big-endian sequence-number key.
pub fn key_to_u64(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let frame = encode(&payload);
            prop_assert_eq!(decode(1, &frame).unwrap(), &payload[..]);
        }

        #[test]
        fn any_flipped_bit_is_caught(payload in proptest::collection::vec(any::<u8>(), 1..256), at in any::<proptest::sample::Index>(), bit in 0u8..8) {
            let mut frame = encode(&payload);
            let i = at.index(frame.len());
            frame[i] ^= 1 << bit;
            prop_assert!(decode(7, &frame).is_err());
        }

        #[test]
        fn never_panics_on_garbage(frame in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(0, &frame);
        }
    }

    #[test]
    fn keys_are_big_endian() {
        assert_eq!(key_to_u64(&258u64.to_be_bytes()), 258);
    }
}
