//! Body compression shared by the S3 and HTTP sinks.

use std::io::Write;

use crate::config::Compression;

/// Compresses `data`; returns the bytes and the `Content-Encoding` to send, if any.
pub fn compress(
    data: Vec<u8>,
    how: Compression,
) -> std::io::Result<(Vec<u8>, Option<&'static str>)> {
    match how {
        Compression::None => Ok((data, None)),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 4),
                flate2::Compression::fast(),
            );
            enc.write_all(&data)?;
            Ok((enc.finish()?, Some("gzip")))
        }
        Compression::Zstd => Ok((zstd::bulk::compress(&data, 3)?, Some("zstd"))),
    }
}

/// The file-name extension for a compression.
pub fn extension(how: Compression) -> &'static str {
    match how {
        Compression::None => "",
        Compression::Gzip => ".gz",
        Compression::Zstd => ".zst",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trips() {
        let data = b"{\"a\":1}\n".repeat(1000);
        let (gz, enc) = compress(data.clone(), Compression::Gzip).unwrap();
        assert_eq!(enc, Some("gzip"));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        let (zs, enc) = compress(data.clone(), Compression::Zstd).unwrap();
        assert_eq!(enc, Some("zstd"));
        assert_eq!(zstd::decode_all(&zs[..]).unwrap(), data);
        assert!(zs.len() < data.len() / 10);
    }
}
