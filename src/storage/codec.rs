//! WAL-G's compression formats: LZ4 frame (`.lz4`), zstd frame (`.zst`),
//! brotli stream (`.br`), none (no extension, or a trailing dot as WAL-G
//! v3.0.5 writes it). Whole buffers ([`compress`], [`decompress`]) for WAL
//! files; a streaming [`Encoder`] for what does not fit in memory.
//!
//! Read only ([`decompress`], [`decoder`]; the encoders refuse them):
//! WAL-G's `lzma` (`.lzma`: the LZMA "alone" format of ulikunitz/xz's
//! `lzma.Writer` — 13-byte header, unknown size, end marker — decoded by
//! `lzma-rs`; an xz container is refused by name) and WAL-E's lzop files
//! (`.lzo`, [`super::lzop`]).

use std::io::{Read, Write};

use super::lzop::LzopReader;
use crate::config::Compression;

/// Every extension a reader accepts, in the order tusk prefers them when
/// (unexpectedly) several objects exist for one name: tusk's and WAL-G's
/// checksummed formats first, WAL-G's `lzma`, WAL-E's `lzo`, then none.
/// `""` = no extension, `"."` = WAL-G's trailing-dot quirk.
pub const READ_EXTENSIONS: [&str; 7] = ["lz4", "zst", "br", "lzma", "lzo", "", "."];

/// The most memory the LZMA dictionary may take while decoding (WAL-G's
/// writer uses 8 MiB, `xz -9` 64 MiB): a header asking for more is decoded
/// only as long as the output fits in this much.
const LZMA_MEMLIMIT: usize = 64 << 20;
/// An LZMA-alone header: properties, dictionary size, uncompressed size.
const LZMA_HEADER: usize = 13;
/// The first byte of an xz container (`FD 37 7A 58 5A 00`). It is not a
/// valid LZMA properties byte, so it tells the two apart.
const XZ_FIRST: u8 = 0xFD;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{ext} compression failed: {source}")]
    Compress { ext: &'static str, source: std::io::Error },
    #[error("cannot decompress {what}: {source}")]
    Decompress { what: String, source: std::io::Error },
    #[error("{what} decompresses to more than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("tusk reads {ext} but never writes it: new objects are lz4, zst, br or uncompressed")]
    ReadOnly { ext: &'static str },
}

/// The codec for an object name extension (without the dot).
pub fn from_extension(ext: &str) -> Option<Compression> {
    match ext {
        "lz4" => Some(Compression::Lz4),
        "zst" => Some(Compression::Zstd),
        "br" => Some(Compression::Brotli),
        "lzma" => Some(Compression::Lzma),
        "lzo" => Some(Compression::Lzo),
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
/// The read-only methods are refused ([`CodecError::ReadOnly`]).
pub fn compress(method: Compression, mut input: impl Read, size_hint: usize) -> Result<Vec<u8>, CodecError> {
    let ext = method.extension();
    let err = |source| CodecError::Compress { ext, source };
    match method {
        Compression::Lzma | Compression::Lzo => Err(CodecError::ReadOnly { ext }),
        Compression::None => {
            let mut out = Vec::with_capacity(size_hint);
            input.read_to_end(&mut out).map_err(err)?;
            Ok(out)
        }
        Compression::Lz4 => lz4_frame(&mut input, size_hint).map_err(err),
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

/// A streaming encoder into `W`: write the uncompressed bytes, then
/// [`Encoder::finish`] ends the frame and returns `W`. The same formats as
/// [`compress`] (any standard reader, and [`decompress`], reads them); the
/// read-only methods are refused.
pub enum Encoder<W: Write> {
    None(W),
    Lz4(lz4_flex::frame::FrameEncoder<W>),
    Zstd(zstd::stream::Encoder<'static, W>),
    Brotli(Box<brotli::CompressorWriter<W>>),
}

impl<W: Write> Encoder<W> {
    pub fn new(method: Compression, out: W) -> Result<Encoder<W>, CodecError> {
        let ext = method.extension();
        let err = |source| CodecError::Compress { ext, source };
        Ok(match method {
            Compression::Lzma | Compression::Lzo => return Err(CodecError::ReadOnly { ext }),
            Compression::None => Encoder::None(out),
            Compression::Lz4 => {
                use lz4_flex::frame::{BlockSize, FrameInfo};
                let info = FrameInfo::new().block_size(BlockSize::Max256KB).block_checksums(true);
                Encoder::Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(info, out))
            }
            Compression::Zstd => {
                let mut enc = zstd::stream::Encoder::new(out, 3).map_err(err)?;
                enc.include_checksum(true).map_err(err)?;
                Encoder::Zstd(enc)
            }
            // Quality 5, window 22, as for WAL.
            Compression::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(out, 64 << 10, 5, 22))),
        })
    }

    /// Ends the frame; returns the writer.
    pub fn finish(self) -> Result<W, CodecError> {
        let err = |ext, source| CodecError::Compress { ext, source };
        match self {
            Encoder::None(mut w) => w.flush().map(|()| w).map_err(|e| err("", e)),
            Encoder::Lz4(e) => e.finish().map_err(|e| err("lz4", std::io::Error::other(e))),
            Encoder::Zstd(e) => e.finish().map_err(|e| err("zst", e)),
            Encoder::Brotli(e) => Ok(e.into_inner()),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Lz4(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Brotli(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Lz4(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Brotli(e) => e.flush(),
        }
    }
}

/// LZ4 block size: 256 KiB (frame descriptor code 5). LZ4's window is 64 KiB,
/// so larger blocks gain next to nothing; WAL-G writes 4 MiB blocks and any
/// size decodes.
const LZ4_BLOCK: usize = 256 << 10;
/// FLG: version 01, independent blocks, block checksums; BD: 256 KiB blocks.
const LZ4_FLG: u8 = 0b0111_0000;
const LZ4_BD: u8 = 5 << 4;

/// Writes an LZ4 frame (the standard format every LZ4 reader decodes):
/// independent 256 KiB blocks, each with its XXH32 checksum, so a corrupted
/// object fails to decode. An all-zero block (the tail of a switched
/// segment) is copied from a block compressed once per process, so a
/// mostly empty segment costs little more than reading it.
fn lz4_frame(input: &mut impl Read, size_hint: usize) -> std::io::Result<Vec<u8>> {
    static ZERO_BLOCK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let zero_block = ZERO_BLOCK.get_or_init(|| {
        let mut b = Vec::new();
        push_lz4_block(&mut b, &vec![0u8; LZ4_BLOCK], &mut Vec::new());
        b
    });
    let mut out = Vec::with_capacity((size_hint / 8).max(64));
    out.extend_from_slice(&0x184D_2204u32.to_le_bytes());
    out.extend_from_slice(&[LZ4_FLG, LZ4_BD]);
    out.push((xxhash_rust::xxh32::xxh32(&[LZ4_FLG, LZ4_BD], 0) >> 8) as u8);
    let mut chunk = vec![0u8; LZ4_BLOCK];
    let mut scratch = Vec::new();
    loop {
        let n = read_full(input, &mut chunk)?;
        if n == 0 {
            break;
        }
        if n == LZ4_BLOCK && all_zero(&chunk) {
            out.extend_from_slice(zero_block);
        } else {
            push_lz4_block(&mut out, &chunk[..n], &mut scratch);
        }
        if n < LZ4_BLOCK {
            break;
        }
    }
    out.extend_from_slice(&0u32.to_le_bytes()); // EndMark
    Ok(out)
}

/// One compressed stream made of pieces compressed independently, so that
/// several threads can compress consecutive chunks of one stream (a base
/// backup's tar): [`header`](ChunkCodec::header), then
/// [`chunk`](ChunkCodec::chunk) for each piece in order, then
/// [`trailer`](ChunkCodec::trailer). LZ4: one frame of independent blocks;
/// zstd: one frame per chunk (a valid stream of concatenated frames); none:
/// the bytes. Brotli has no such form ([`ChunkCodec::new`] refuses it, and
/// the read-only methods).
#[derive(Debug, Clone, Copy)]
pub struct ChunkCodec {
    method: Compression,
}

impl ChunkCodec {
    pub fn new(method: Compression) -> Option<ChunkCodec> {
        matches!(method, Compression::Lz4 | Compression::Zstd | Compression::None).then_some(ChunkCodec { method })
    }

    pub fn header(&self) -> Vec<u8> {
        match self.method {
            Compression::Lz4 => {
                let mut out = 0x184D_2204u32.to_le_bytes().to_vec();
                out.extend_from_slice(&[LZ4_FLG, LZ4_BD]);
                out.push((xxhash_rust::xxh32::xxh32(&[LZ4_FLG, LZ4_BD], 0) >> 8) as u8);
                out
            }
            _ => Vec::new(),
        }
    }

    /// Compresses one piece, appending to `out`.
    pub fn chunk(&self, data: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self.method {
            Compression::Lz4 => {
                let mut scratch = Vec::new();
                for block in data.chunks(LZ4_BLOCK) {
                    push_lz4_block(out, block, &mut scratch);
                }
                Ok(())
            }
            Compression::Zstd => {
                let err = |source| CodecError::Compress { ext: "zst", source };
                let mut c = zstd::bulk::Compressor::new(3).map_err(err)?;
                c.include_checksum(true).map_err(err)?;
                out.extend_from_slice(&c.compress(data).map_err(err)?);
                Ok(())
            }
            Compression::None => {
                out.extend_from_slice(data);
                Ok(())
            }
            Compression::Brotli | Compression::Lzma | Compression::Lzo => {
                unreachable!("ChunkCodec::new refuses {:?}", self.method)
            }
        }
    }

    pub fn trailer(&self) -> Vec<u8> {
        match self.method {
            Compression::Lz4 => 0u32.to_le_bytes().to_vec(),
            _ => Vec::new(),
        }
    }
}

/// One block: size (high bit: stored uncompressed), data, XXH32 of the data.
fn push_lz4_block(out: &mut Vec<u8>, data: &[u8], scratch: &mut Vec<u8>) {
    scratch.resize(lz4_flex::block::get_maximum_output_size(data.len()), 0);
    let stored = match lz4_flex::block::compress_into(data, scratch) {
        Ok(len) if len < data.len() => {
            out.extend_from_slice(&(len as u32).to_le_bytes());
            &scratch[..len]
        }
        _ => {
            out.extend_from_slice(&(data.len() as u32 | 0x8000_0000).to_le_bytes());
            data
        }
    };
    out.extend_from_slice(stored);
    out.extend_from_slice(&xxhash_rust::xxh32::xxh32(stored, 0).to_le_bytes());
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn all_zero(b: &[u8]) -> bool {
    // OR-folds of 4 KiB vectorize; the early exit is per 4 KiB.
    b.chunks(4096).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// A streaming decoder of `input` (for objects too large to hold, such as
/// base backup parts).
pub fn decoder<'a, R: Read + 'a>(method: Compression, input: R) -> std::io::Result<Box<dyn Read + 'a>> {
    Ok(match method {
        Compression::None => Box::new(input),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
        // Concatenated frames (tusk's parallel zstd parts) decode as one stream.
        Compression::Zstd => Box::new(zstd::stream::Decoder::new(input)?),
        Compression::Brotli => Box::new(brotli::Decompressor::new(input, 64 << 10)),
        Compression::Lzma => Box::new(LzmaReader::new(input)),
        Compression::Lzo => Box::new(LzopReader::new(input)),
    })
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
        Compression::Lzma => lzma_whole(data, &mut out, limit + 1).map(|()| out.len()),
        Compression::Lzo => LzopReader::new(data).take(limit + 1).read_to_end(&mut out),
    };
    // First: a decoder stopped at the limit may report that as its error.
    if out.len() as u64 > limit {
        return Err(CodecError::TooLarge { what: what.to_owned(), limit });
    }
    read.map_err(derr)?;
    Ok(out)
}

fn lzma_options() -> lzma_rs::decompress::Options {
    lzma_rs::decompress::Options { memlimit: Some(LZMA_MEMLIMIT), ..Default::default() }
}

fn lzma_error(e: lzma_rs::error::Error) -> std::io::Error {
    match e {
        lzma_rs::error::Error::IoError(e) => e,
        e => std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    }
}

fn lzma_too_short() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "shorter than the 13-byte LZMA header")
}

fn xz_refused() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "this is an xz container; tusk reads the LZMA-alone format that WAL-G's lzma method writes",
    )
}

/// Decodes a whole LZMA-alone object into `out`, at most `max` bytes (the
/// decoder stops with an error once the output reaches it).
fn lzma_whole(data: &[u8], out: &mut Vec<u8>, max: u64) -> std::io::Result<()> {
    if data.first() == Some(&XZ_FIRST) {
        return Err(xz_refused());
    }
    if data.len() < LZMA_HEADER {
        return Err(lzma_too_short());
    }
    let mut capped = Capped { out, left: max };
    lzma_rs::lzma_decompress_with_options(&mut &data[..], &mut capped, &lzma_options()).map_err(lzma_error)
}

/// A `Vec` that takes at most `left` more bytes, then fails every write.
struct Capped<'a> {
    out: &'a mut Vec<u8>,
    left: u64,
}

impl Write for Capped<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 && !buf.is_empty() {
            return Err(std::io::Error::other("output limit reached"));
        }
        let n = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        self.out.extend_from_slice(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A streaming LZMA-alone decoder over `R`: input is pushed into
/// `lzma-rs`'s decoder in 64 KiB pieces and its output (a dictionary's
/// worth at a time) served from a buffer. Memory: the dictionary (at most
/// [`LZMA_MEMLIMIT`]) and one buffer of output.
struct LzmaReader<R> {
    input: R,
    /// `None` once the input ended and the decoder finished.
    stream: Option<lzma_rs::decompress::Stream<Vec<u8>>>,
    chunk: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    /// Input bytes read so far (up to the header's size).
    seen: usize,
    /// An error was returned: every later read fails too.
    failed: bool,
}

impl<R: Read> LzmaReader<R> {
    fn new(input: R) -> LzmaReader<R> {
        LzmaReader {
            input,
            stream: Some(lzma_rs::decompress::Stream::new_with_options(&lzma_options(), Vec::new())),
            chunk: vec![0u8; 64 << 10],
            out: Vec::new(),
            pos: 0,
            seen: 0,
            failed: false,
        }
    }

    /// Feeds one piece of input (or finishes the stream at its end).
    fn step(&mut self) -> std::io::Result<()> {
        let n = loop {
            match self.input.read(&mut self.chunk) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        let Some(stream) = self.stream.as_mut() else { return Ok(()) };
        if n == 0 {
            if self.seen < LZMA_HEADER {
                return Err(lzma_too_short());
            }
            if let Some(stream) = self.stream.take() {
                self.out = stream.finish().map_err(lzma_error)?;
                self.pos = 0;
            }
            return Ok(());
        }
        if self.seen == 0 && self.chunk[0] == XZ_FIRST {
            return Err(xz_refused());
        }
        self.seen = self.seen.saturating_add(n).min(LZMA_HEADER);
        stream.write_all(&self.chunk[..n])?;
        if let Some(produced) = stream.get_output_mut() {
            // `out` is drained: hand its allocation back for the next output.
            std::mem::swap(produced, &mut self.out);
            produced.clear();
            self.pos = 0;
        }
        Ok(())
    }
}

impl<R: Read> Read for LzmaReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.failed {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the lzma stream failed to decode"));
            }
            if self.stream.is_none() {
                return Ok(0);
            }
            if let Err(e) = self.step() {
                self.failed = true;
                return Err(e);
            }
        }
    }
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
    fn streaming_encoders_write_the_same_formats() {
        let data = sample();
        for m in [Compression::Lz4, Compression::Zstd, Compression::Brotli, Compression::None] {
            let mut enc = Encoder::new(m, Vec::new()).unwrap();
            // Odd-sized writes, as a tar stream would give.
            for chunk in data.chunks(100_003) {
                enc.write_all(chunk).unwrap();
            }
            let c = enc.finish().unwrap();
            if m != Compression::None {
                assert!(c.len() < data.len() / 2, "{m:?} compresses");
            }
            assert!(decompress(m, &c, 16 << 20, "x").unwrap() == data, "{m:?} round trip");
        }
        let l = Encoder::new(Compression::Lz4, Vec::new()).unwrap().finish().unwrap();
        assert_eq!(&l[..4], &[0x04, 0x22, 0x4D, 0x18]);
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
    fn lz4_zero_blocks_and_odd_sizes() {
        for len in [0usize, 1, 1000, LZ4_BLOCK, LZ4_BLOCK + 1, 3 * LZ4_BLOCK + 17, 16 << 20] {
            let mut data = vec![0u8; len];
            if len > 10 {
                data[..10].copy_from_slice(b"WAL header");
            }
            let c = compress(Compression::Lz4, &data[..], len).unwrap();
            assert!(decompress(Compression::Lz4, &c, 32 << 20, "x").unwrap() == data, "{len}");
        }
        let c = compress(Compression::Lz4, &vec![0u8; 16 << 20][..], 16 << 20).unwrap();
        assert!(c.len() < 128 << 10, "a zero segment is small: {}", c.len());
        // Incompressible data is stored, still a valid frame.
        let noise: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let c = compress(Compression::Lz4, &noise[..], noise.len()).unwrap();
        assert!(decompress(Compression::Lz4, &c, 1 << 20, "x").unwrap() == noise);
    }

    /// The reference `lz4` tool reads tusk's frames. `lz4` is part of the
    /// test bed (scripts/install-testbed.sh): its absence fails the test.
    #[test]
    fn lz4_cli_reads_our_frames() {
        let version = std::process::Command::new("lz4").arg("--version").output();
        assert!(
            version.as_ref().is_ok_and(|o| o.status.success()),
            "the lz4 tool is required (install it with scripts/install-testbed.sh): {version:?}"
        );
        let data = sample();
        let c = compress(Compression::Lz4, &data[..], data.len()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.lz4"), &c).unwrap();
        let out = std::process::Command::new("lz4").args(["-d", "-c"]).arg(dir.path().join("x.lz4")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == data);
    }

    #[test]
    fn extensions() {
        assert_eq!(from_extension("lz4"), Some(Compression::Lz4));
        assert_eq!(from_extension("zst"), Some(Compression::Zstd));
        assert_eq!(from_extension("br"), Some(Compression::Brotli));
        assert_eq!(from_extension(""), Some(Compression::None));
        assert_eq!(from_extension("."), Some(Compression::None));
        assert_eq!(from_extension("lzma"), Some(Compression::Lzma));
        assert_eq!(from_extension("lzo"), Some(Compression::Lzo));
        assert_eq!(from_extension("gz"), None);
        assert_eq!(from_extension("xz"), None);
        for ext in READ_EXTENSIONS {
            let m = from_extension(ext).unwrap();
            assert!(m.extension() == ext || ext == ".", "{ext}");
        }
    }

    /// A WAL-sized (16 MiB) input shaped like a segment: 8 KiB pages with
    /// a page header, records of integers and text, some random bytes (a
    /// record CRC, toasted data), and the zero tail of a switched segment.
    fn wal_sample(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut v = Vec::with_capacity(len);
        let used = len / 4 * 3;
        let mut i = 0u64;
        while v.len() < used {
            if v.len() % 8192 < 64 {
                // Page header: magic, info, timeline, page address.
                v.resize(v.len() / 8192 * 8192, 0);
                v.extend_from_slice(&0xD116u16.to_le_bytes());
                v.extend_from_slice(&2u16.to_le_bytes());
                v.extend_from_slice(&1u32.to_le_bytes());
                v.extend_from_slice(&(0x0300_0000u64 + v.len() as u64).to_le_bytes());
            }
            v.extend_from_slice(&(60 + (i % 40) as u32).to_le_bytes());
            v.extend_from_slice(&(1000 + i / 3).to_le_bytes());
            v.extend_from_slice(&(rnd() as u32).to_le_bytes());
            write!(v, "INSERT accounts {i} 'user{}' balance {}", i % 977, i * 31 % 10_007).unwrap();
            if i.is_multiple_of(7) {
                for _ in 0..4 {
                    v.extend_from_slice(&rnd().to_le_bytes());
                }
            }
            i += 1;
        }
        v.resize(len, 0);
        v
    }

    /// Runs a reference tool of the test bed with `input` on its standard
    /// input. `xz` and `lzop` are installed by scripts/install-testbed.sh:
    /// their absence fails the test (it never passes without them).
    fn reference_tool(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        use std::process::{Command, Stdio};
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("the {program} tool is required (install it with scripts/install-testbed.sh): {e}")
            });
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// Hands out at most 7,777 bytes per read, as a network stream would.
    struct Dribble<'a>(&'a [u8]);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(7777);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn streamed(method: Compression, c: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(method, Dribble(c))?.read_to_end(&mut out).map(|_| out)
    }

    /// Both ways of reading an object (whole, streaming) give `data`, and
    /// the whole-buffer read honours its limit (checked up to 4 MiB: a
    /// decode costs seconds in a debug build).
    fn assert_decodes(method: Compression, c: &[u8], data: &[u8], label: &str) {
        let len = data.len() as u64;
        assert!(decompress(method, c, len, "x").unwrap() == data, "{label}: whole");
        assert!(streamed(method, c).unwrap() == data, "{label}: streamed");
        if len > 0 && len <= 4 << 20 {
            let r = decompress(method, c, len - 1, "x");
            assert!(matches!(r, Err(CodecError::TooLarge { .. })), "{label}: limit: {r:?}");
        }
    }

    /// xz's settings for WAL-G's header: lc=3 lp=0 pb=2 (xz's default), an
    /// 8 MiB dictionary, a fast match finder (ulikunitz's is a greedy one).
    const WALG_LZMA: &str = "--lzma1=preset=0,dict=8MiB";

    /// WAL-G's `lzma` objects: what `xz --format=lzma` writes is the format
    /// WAL-G's writer produces (same header, end marker).
    #[test]
    fn lzma_objects_from_the_xz_tool_decode() {
        let data = wal_sample(16 << 20);
        let c = reference_tool("xz", &["--format=lzma", "-c", WALG_LZMA], &data);
        // WAL-G's writer (ulikunitz/xz lzma.NewWriter, default settings)
        // writes this same header: lc=3 lp=0 pb=2, an 8 MiB dictionary, an
        // unknown size (so the stream ends with the end marker).
        assert_eq!(&c[..13], &[0x5D, 0, 0, 0x80, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(c.len() < data.len() / 4, "compresses: {}", c.len());
        assert_decodes(Compression::Lzma, &c, &data, "xz, WAL-G's settings");
        // Other dictionary sizes (256 KiB, 64 MiB), an empty and a 1-byte input.
        let mib = &data[..1 << 20];
        for (preset, input) in [("-0", mib), ("-9", mib), ("-1", &b""[..]), ("-1", &b"x"[..])] {
            let c = reference_tool("xz", &["--format=lzma", "-c", preset], input);
            assert_decodes(Compression::Lzma, &c, input, &format!("xz {preset}, {} bytes", input.len()));
        }
    }

    #[test]
    fn lzma_truncated_corrupt_or_xz_fails() {
        let data = wal_sample(1 << 20);
        let c = reference_tool("xz", &["--format=lzma", "-c", WALG_LZMA], &data);
        let both = |c: &[u8]| {
            [
                decompress(Compression::Lzma, c, 16 << 20, "x").map_err(|e| e.to_string()),
                streamed(Compression::Lzma, c).map_err(|e| e.to_string()),
            ]
        };
        for cut in [0, 1, 5, 12, 13, 14, c.len() / 2, c.len() - 6, c.len() - 1] {
            for r in both(&c[..cut]) {
                assert!(r.is_err(), "truncated at {cut} of {}: no error", c.len());
            }
        }
        let mut t = c.clone();
        t.extend_from_slice(b"junk");
        for r in both(&t) {
            assert!(r.is_err(), "trailing data after the end marker");
        }
        // An xz container is refused by name (WAL-G never writes one).
        let xz = reference_tool("xz", &["--format=xz", "-c"], &data[..1000]);
        for r in both(&xz) {
            assert!(r.as_ref().is_err_and(|e| e.contains("xz container")), "{r:?}");
        }
        // LZMA-alone has no checksum: a flipped byte cannot always be told
        // from data. It must never panic, both readers must agree, and in
        // practice the range decoder notices (a wrong end, a distance beyond
        // the output). Byte 13, the range coder's first, is always 0 and
        // ignored: flipping it changes nothing.
        let small = wal_sample(64 << 10);
        let c = reference_tool("xz", &["--format=lzma", "-c", WALG_LZMA], &small);
        let (mut noticed, mut unnoticed) = (0, 0);
        for at in (0..c.len()).step_by(c.len() / 151 + 1) {
            let mut bad = c.clone();
            bad[at] ^= 0x10;
            let [whole, stream] = both(&bad);
            assert_eq!(whole.is_err(), stream.is_err(), "flip at {at}: the two readers disagree");
            match whole {
                Err(_) => noticed += 1,
                Ok(out) if out == small => {}
                Ok(_) => unnoticed += 1,
            }
        }
        println!("lzma: {noticed} flipped bytes noticed, {unnoticed} decoded to other data");
        assert!(unnoticed * 20 <= noticed, "{noticed} flips noticed, {unnoticed} decoded to other data");
    }

    /// WAL-E's `.lzo` objects: `lzop --stdout` fed on standard input, as
    /// WAL-E runs it; lzop's other methods and checksum options.
    #[test]
    fn lzo_objects_from_the_lzop_tool_decode() {
        let data = wal_sample(16 << 20);
        let c = reference_tool("lzop", &["--stdout"], &data);
        assert_eq!(&c[..9], &crate::storage::lzop::MAGIC);
        assert!(c.len() < data.len() / 2, "compresses: {}", c.len());
        assert_decodes(Compression::Lzo, &c, &data, "lzop");
        let part = &data[..2 << 20];
        for opts in [&["-1"][..], &["-9"], &["--crc32"], &["--no-checksum"]] {
            let mut args = vec!["--stdout"];
            args.extend_from_slice(opts);
            let c = reference_tool("lzop", &args, part);
            assert_decodes(Compression::Lzo, &c, part, &format!("lzop {opts:?}"));
        }
        // Incompressible blocks are stored; empty input has no block at all.
        let mut x: u32 = 7;
        let noise: Vec<u8> = (0..(600 << 10))
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect();
        for input in [&noise[..], b"", b"x"] {
            let c = reference_tool("lzop", &["--stdout"], input);
            assert_decodes(Compression::Lzo, &c, input, &format!("lzop, {} bytes", input.len()));
        }
    }

    #[test]
    fn lzo_truncated_or_corrupt_fails() {
        // Three lzop blocks (256 KiB each).
        let data = wal_sample(640 << 10);
        let c = reference_tool("lzop", &["--stdout"], &data);
        let both = |c: &[u8]| {
            [decompress(Compression::Lzo, c, 16 << 20, "x").is_err(), streamed(Compression::Lzo, c).is_err()]
        };
        for cut in (0..c.len()).step_by(c.len() / 151 + 1).chain([c.len() - 4, c.len() - 1]) {
            assert_eq!(both(&c[..cut]), [true, true], "truncated at {cut} of {}", c.len());
        }
        // lzop's default Adler-32 of every block, the header checksum and
        // the structure catch any flipped byte, wherever it is.
        for at in (0..c.len()).step_by(c.len() / 199 + 1).chain([c.len() - 1]) {
            let mut bad = c.clone();
            bad[at] ^= 0x04;
            assert_eq!(both(&bad), [true, true], "flip at {at} of {}", c.len());
        }
        // Without checksums a flip may go unnoticed, but never panics.
        let c = reference_tool("lzop", &["--stdout", "--no-checksum"], &data);
        for at in (0..c.len()).step_by(c.len() / 199 + 1) {
            let mut bad = c.clone();
            bad[at] ^= 0x81;
            let _ = both(&bad);
        }
    }

    #[test]
    fn read_only_methods_are_refused_for_writing() {
        for m in [Compression::Lzma, Compression::Lzo] {
            assert!(!m.writable());
            let e = compress(m, &b"x"[..], 1).unwrap_err();
            assert!(matches!(e, CodecError::ReadOnly { .. }), "{m:?}: {e}");
            assert!(e.to_string().contains("never writes"), "{e}");
            assert!(matches!(Encoder::new(m, Vec::new()), Err(CodecError::ReadOnly { .. })), "{m:?}");
            assert!(ChunkCodec::new(m).is_none(), "{m:?}");
        }
        for m in [Compression::Lz4, Compression::Zstd, Compression::Brotli, Compression::None] {
            assert!(m.writable(), "{m:?}");
        }
    }

    /// Decode time of one 16 MiB segment per format, in the build it runs
    /// in (`cargo test --release --lib -- --ignored decode_speed --nocapture`).
    #[test]
    #[ignore]
    fn decode_speed_of_a_wal_segment() {
        let data = wal_sample(16 << 20);
        let objects = [
            (Compression::Lzma, reference_tool("xz", &["--format=lzma", "-c", WALG_LZMA], &data)),
            (Compression::Lzo, reference_tool("lzop", &["--stdout"], &data)),
            (Compression::Lz4, compress(Compression::Lz4, &data[..], data.len()).unwrap()),
            (Compression::Zstd, compress(Compression::Zstd, &data[..], data.len()).unwrap()),
        ];
        for (m, c) in &objects {
            let mut best = f64::MAX;
            let mut best_stream = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                assert!(decompress(*m, c, 16 << 20, "x").unwrap() == data);
                best = best.min(t.elapsed().as_secs_f64());
                let t = std::time::Instant::now();
                assert!(streamed(*m, c).unwrap() == data);
                best_stream = best_stream.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{m:?}: {} -> 16 MiB: whole {:.0} ms, streamed {:.0} ms (best of 5)",
                c.len(),
                best * 1e3,
                best_stream * 1e3
            );
        }
    }

    #[test]
    fn chunked_streams_decode_as_one() {
        let data: Vec<u8> = (0..(3 << 20) + 12345u32).map(|i| (i % 251) as u8 ^ (i >> 13) as u8).collect();
        for method in [Compression::Lz4, Compression::Zstd, Compression::None] {
            let c = ChunkCodec::new(method).unwrap();
            let mut out = c.header();
            for piece in data.chunks(1 << 20) {
                c.chunk(piece, &mut out).unwrap();
            }
            out.extend_from_slice(&c.trailer());
            assert_eq!(decompress(method, &out, data.len() as u64, "t").unwrap(), data, "{method:?}");
        }
        assert!(ChunkCodec::new(Compression::Brotli).is_none());
    }
}
