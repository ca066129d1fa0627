//! WAL-G's compression formats: LZ4 frame (`.lz4`), zstd frame (`.zst`),
//! brotli stream (`.br`), none (no extension, or a trailing dot as WAL-G
//! v3.0.5 writes it).

use std::io::{Read, Write};

use crate::config::Compression;

/// Every extension a reader accepts, in the order tusk prefers them when
/// (unexpectedly) several objects exist for one name. `""` = no extension,
/// `"."` = WAL-G's trailing-dot quirk.
pub const READ_EXTENSIONS: [&str; 5] = ["lz4", "zst", "br", "", "."];

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{ext} compression failed: {source}")]
    Compress { ext: &'static str, source: std::io::Error },
    #[error("cannot decompress {what}: {source}")]
    Decompress { what: String, source: std::io::Error },
    #[error("{what} decompresses to more than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
}

/// The codec for an object name extension (without the dot).
pub fn from_extension(ext: &str) -> Option<Compression> {
    match ext {
        "lz4" => Some(Compression::Lz4),
        "zst" => Some(Compression::Zstd),
        "br" => Some(Compression::Brotli),
        "" | "." => Some(Compression::None),
        _ => None,
    }
}

/// Copies `input` to `out` in 256 KiB reads (fewer system calls than
/// `io::copy`'s 8 KiB buffer; below the allocator's mmap threshold, so the
/// buffer is reused rather than faulted in again for every file).
fn pump(input: &mut impl Read, out: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
    }
}

/// Compresses everything `input` yields. `size_hint` sizes the output buffer.
pub fn compress(method: Compression, mut input: impl Read, size_hint: usize) -> Result<Vec<u8>, CodecError> {
    let ext = method.extension();
    let err = |source| CodecError::Compress { ext, source };
    match method {
        Compression::None => {
            let mut out = Vec::with_capacity(size_hint);
            input.read_to_end(&mut out).map_err(err)?;
            Ok(out)
        }
        Compression::Lz4 => {
            // WAL-G (pierrec/lz4) writes 4 MiB blocks; any block size decodes,
            // and LZ4's window is 64 KiB anyway: 256 KiB blocks keep the
            // encoder's buffers small and reused. With a content checksum, so
            // a corrupted object fails to decode.
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max256KB)
                .content_checksum(true);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::with_capacity(size_hint / 4));
            pump(&mut input, &mut enc).map_err(err)?;
            enc.finish().map_err(|e| err(std::io::Error::other(e)))
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::Encoder::new(Vec::with_capacity(size_hint / 4), 3).map_err(err)?;
            enc.include_checksum(true).map_err(err)?;
            pump(&mut input, &mut enc).map_err(err)?;
            enc.finish().map_err(err)
        }
        Compression::Brotli => {
            let mut out = Vec::with_capacity(size_hint / 4);
            {
                // Quality 5, window 22: a fraction of the time of the default (11)
                // for WAL, with most of the ratio.
                let mut enc = brotli::CompressorWriter::new(&mut out, 64 << 10, 5, 22);
                pump(&mut input, &mut enc).map_err(err)?;
                enc.flush().map_err(err)?;
            }
            Ok(out)
        }
    }
}

/// Decompresses `data` (the object named `what`), refusing output beyond
/// `limit` bytes.
pub fn decompress(method: Compression, data: &[u8], limit: u64, what: &str) -> Result<Vec<u8>, CodecError> {
    let derr = |source| CodecError::Decompress { what: what.to_owned(), source };
    let mut out = Vec::with_capacity((limit.min(64 << 20)) as usize);
    let read = match method {
        Compression::None => (&mut &data[..]).take(limit + 1).read_to_end(&mut out),
        Compression::Lz4 => lz4_flex::frame::FrameDecoder::new(data).take(limit + 1).read_to_end(&mut out),
        Compression::Zstd => {
            zstd::stream::Decoder::with_buffer(data).map_err(derr)?.take(limit + 1).read_to_end(&mut out)
        }
        Compression::Brotli => brotli::Decompressor::new(data, 64 << 10).take(limit + 1).read_to_end(&mut out),
    };
    read.map_err(derr)?;
    if out.len() as u64 > limit {
        return Err(CodecError::TooLarge { what: what.to_owned(), limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        // Something WAL-like: structured records then a zero tail.
        let mut v: Vec<u8> = (0..200_000u32).flat_map(|i| (i.wrapping_mul(2_654_435_761) >> 7).to_le_bytes()).collect();
        v.resize(3 << 20, 0);
        v
    }

    #[test]
    fn round_trips() {
        let data = sample();
        for m in [Compression::Lz4, Compression::Zstd, Compression::Brotli, Compression::None] {
            let c = compress(m, &data[..], data.len()).unwrap();
            if m != Compression::None {
                assert!(c.len() < data.len() / 2, "{m:?} compresses");
            }
            let d = decompress(m, &c, 16 << 20, "x").unwrap();
            assert!(d == data, "{m:?} round trip");
            assert!(matches!(decompress(m, &c, 1000, "x"), Err(CodecError::TooLarge { .. })), "{m:?} limit");
        }
    }

    #[test]
    fn formats_are_the_standard_frames() {
        let data = sample();
        // LZ4 frame magic 0x184D2204, zstd frame magic 0xFD2FB528 (little-endian).
        let l = compress(Compression::Lz4, &data[..], 0).unwrap();
        assert_eq!(&l[..4], &[0x04, 0x22, 0x4D, 0x18]);
        let z = compress(Compression::Zstd, &data[..], 0).unwrap();
        assert_eq!(&z[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
        // zstd's own one-shot decoder reads it (any standard reader would).
        assert!(zstd::bulk::decompress(&z, 8 << 20).unwrap() == data);
    }

    #[test]
    fn corrupt_input_fails() {
        let data = sample();
        for m in [Compression::Lz4, Compression::Zstd, Compression::Brotli] {
            let mut c = compress(m, &data[..], 0).unwrap();
            let n = c.len();
            c.truncate(n / 2);
            assert!(decompress(m, &c, 16 << 20, "x").is_err(), "{m:?} truncated");
        }
        assert!(decompress(Compression::Lz4, b"not lz4 at all", 16 << 20, "x").is_err());
        // A flipped byte inside the data is caught by the frame checksums.
        for m in [Compression::Lz4, Compression::Zstd] {
            let mut c = compress(m, &data[..], 0).unwrap();
            let mid = c.len() / 2;
            c[mid] ^= 0x55;
            assert!(decompress(m, &c, 16 << 20, "x").is_err(), "{m:?} bit flip");
        }
    }

    #[test]
    fn extensions() {
        assert_eq!(from_extension("lz4"), Some(Compression::Lz4));
        assert_eq!(from_extension("zst"), Some(Compression::Zstd));
        assert_eq!(from_extension("br"), Some(Compression::Brotli));
        assert_eq!(from_extension(""), Some(Compression::None));
        assert_eq!(from_extension("."), Some(Compression::None));
        assert_eq!(from_extension("lzo"), None);
    }
}
