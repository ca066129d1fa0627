//! The lzop file format, as WAL-E writes it (`lzop --stdout` into
//! `wal_005/<segment>.lzo` and `part_<n>.tar.lzo`): read-only.
//!
//! ```text
//! magic      89 4C 5A 4F 00 0D 0A 1A 0A
//! header     version u16, library version u16, [version needed u16],
//!            method u8, [level u8], flags u32, [filter u32], mode u32,
//!            mtime u32, [mtime high u32], name length u8, name,
//!            checksum u32 (Adler-32, or CRC-32 with F_H_CRC32, of the
//!            header after the magic); [extra field: length u32, data,
//!            checksum u32]                    ([..]: version >= 0.94 / flag)
//! blocks     uncompressed length u32 (0 ends the stream), compressed
//!            length u32, [Adler-32 u32] [CRC-32 u32] of the uncompressed
//!            data, then — only when compressed < uncompressed —
//!            [Adler-32 u32] [CRC-32 u32] of the compressed data, then the
//!            data: LZO1X, or stored when both lengths are equal
//! ```
//!
//! All integers big-endian. Every checksum the flags announce is verified;
//! the LZO1X blocks are decoded by the `lzo` crate (safe Rust, bounds
//! checked: a corrupt block is an error, never a panic). Zero bytes after
//! the end marker are ignored, as WAL-G does; anything else there is an
//! error.

use std::io::{self, Read};

/// The nine bytes every lzop file starts with.
pub const MAGIC: [u8; 9] = [0x89, b'L', b'Z', b'O', 0x00, b'\r', b'\n', 0x1a, b'\n'];

/// lzop's own limit on a block's uncompressed size (its MAX_BLOCK_SIZE).
const MAX_BLOCK: u32 = 64 << 20;
/// The newest format version lzop (1.04) writes or extracts.
const NEWEST: u16 = 0x1040;
/// An extra header field larger than this is refused (lzop writes none).
const MAX_EXTRA: u32 = 1 << 20;

const F_ADLER32_D: u32 = 0x0001;
const F_ADLER32_C: u32 = 0x0002;
const F_H_EXTRA_FIELD: u32 = 0x0040;
const F_CRC32_D: u32 = 0x0100;
const F_CRC32_C: u32 = 0x0200;
const F_MULTIPART: u32 = 0x0400;
const F_H_FILTER: u32 = 0x0800;
const F_H_CRC32: u32 = 0x1000;
/// Every flag lzop defines, the operating system byte and the character set
/// nibble; the remaining bits are reserved.
const F_KNOWN: u32 = 0x0000_3fff | 0xff00_0000 | 0x00f0_0000;

/// The LZO1X methods (lzo1x_1, lzo1x_1_15, lzo1x_999): one decoder for all.
const LZO1X_METHODS: [u8; 3] = [1, 2, 3];

#[derive(Debug, thiserror::Error)]
pub enum LzopError {
    #[error("not an lzop file (bad magic)")]
    Magic,
    #[error("truncated: the data ends inside the {0}")]
    Truncated(&'static str),
    #[error("lzop format version {0:#06x} is not supported")]
    Version(u16),
    #[error("compression method {0} is not LZO1X (lzop's methods 1 to 3)")]
    Method(u8),
    #[error("unknown header flags {0:#010x}")]
    Flags(u32),
    #[error("{0}, which tusk does not read")]
    Unsupported(&'static str),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("block {block}: {what}")]
    Block { block: u64, what: String },
    #[error("block {block}: {kind} checksum mismatch")]
    Checksum { block: u64, kind: &'static str },
    #[error("block {block}: LZO1X: {source}")]
    Lzo { block: u64, source: lzo::Error },
    #[error("data after the end of the lzop stream")]
    Trailing,
    #[error(transparent)]
    Io(io::Error),
}

impl From<LzopError> for io::Error {
    fn from(e: LzopError) -> io::Error {
        match e {
            LzopError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

enum State {
    Header,
    Blocks,
    Done,
    /// An error was returned: every later read returns one too, so a caller
    /// that reads on can never take what came before for the whole stream.
    Failed,
}

/// Decodes an lzop stream from `R` as it is read.
pub struct LzopReader<R> {
    input: R,
    state: State,
    flags: u32,
    /// Blocks decoded so far (for messages).
    block: u64,
    out: Vec<u8>,
    pos: usize,
    compressed: Vec<u8>,
}

impl<R: Read> LzopReader<R> {
    pub fn new(input: R) -> LzopReader<R> {
        LzopReader { input, state: State::Header, flags: 0, block: 0, out: Vec::new(), pos: 0, compressed: Vec::new() }
    }

    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), LzopError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => LzopError::Truncated(what),
            _ => LzopError::Io(e),
        })
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, LzopError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    fn header(&mut self) -> Result<(), LzopError> {
        let mut magic = [0u8; 9];
        self.input.read_exact(&mut magic).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => LzopError::Magic,
            _ => LzopError::Io(e),
        })?;
        if magic != MAGIC {
            return Err(LzopError::Magic);
        }
        // The fields as read, for the header checksum.
        let mut h = Header { bytes: Vec::with_capacity(64) };
        let version = h.u16(self)?;
        let _library = h.u16(self)?;
        if !(0x0900..=NEWEST).contains(&version) {
            return Err(LzopError::Version(version));
        }
        let new_format = version >= 0x0940;
        if new_format {
            let needed = h.u16(self)?;
            if !(0x0900..=NEWEST).contains(&needed) {
                return Err(LzopError::Version(needed));
            }
        }
        let method = h.u8(self)?;
        if !LZO1X_METHODS.contains(&method) {
            return Err(LzopError::Method(method));
        }
        if new_format {
            let _level = h.u8(self)?;
        }
        let flags = h.u32(self)?;
        if flags & !F_KNOWN != 0 {
            return Err(LzopError::Flags(flags & !F_KNOWN));
        }
        if flags & F_MULTIPART != 0 {
            return Err(LzopError::Unsupported("a multi-part lzop file"));
        }
        if flags & F_H_FILTER != 0 {
            let _filter = h.u32(self)?;
            return Err(LzopError::Unsupported("an lzop filter"));
        }
        let _mode = h.u32(self)?;
        let _mtime = h.u32(self)?;
        if new_format {
            let _mtime_high = h.u32(self)?;
        }
        let name_len = h.u8(self)?;
        let mut name = vec![0u8; name_len as usize];
        self.exact(&mut name, "header")?;
        h.bytes.extend_from_slice(&name);
        let crc = flags & F_H_CRC32 != 0;
        let sum = self.u32("header")?;
        if sum != checksum(crc, &h.bytes) {
            return Err(LzopError::HeaderChecksum);
        }
        if flags & F_H_EXTRA_FIELD != 0 {
            let len = self.u32("extra header field")?;
            if len > MAX_EXTRA {
                return Err(LzopError::Unsupported("an extra header field over 1 MiB"));
            }
            let mut extra = Vec::with_capacity(4 + len as usize);
            extra.extend_from_slice(&len.to_be_bytes());
            extra.resize(4 + len as usize, 0);
            self.exact(&mut extra[4..], "extra header field")?;
            if self.u32("extra header field")? != checksum(crc, &extra) {
                return Err(LzopError::HeaderChecksum);
            }
        }
        self.flags = flags;
        tracing::trace!(version, method, flags, "lzop header");
        Ok(())
    }

    /// Decodes the next block into `out`; `false` at the end marker.
    fn next_block(&mut self) -> Result<bool, LzopError> {
        let block = self.block;
        let bad = |what: String| LzopError::Block { block, what };
        let dst_len = self.u32("block header (no end marker)")?;
        if dst_len == 0 {
            return Ok(false);
        }
        if dst_len == u32::MAX {
            return Err(LzopError::Unsupported("a split lzop file"));
        }
        if dst_len > MAX_BLOCK {
            return Err(bad(format!("uncompressed size {dst_len} exceeds lzop's 64 MiB")));
        }
        let src_len = self.u32("block header")?;
        if src_len == 0 || src_len > dst_len {
            return Err(bad(format!("compressed size {src_len} for {dst_len} bytes")));
        }
        let flags = self.flags;
        let d_adler = if flags & F_ADLER32_D != 0 { Some(self.u32("block header")?) } else { None };
        let d_crc = if flags & F_CRC32_D != 0 { Some(self.u32("block header")?) } else { None };
        let stored = src_len == dst_len;
        // A stored block has no checksums of its own compressed form.
        let c_adler = if flags & F_ADLER32_C != 0 && !stored { Some(self.u32("block header")?) } else { None };
        let c_crc = if flags & F_CRC32_C != 0 && !stored { Some(self.u32("block header")?) } else { None };

        // Read as it arrives, not allocated from the announced size: a
        // short corrupt object cannot make this reserve 64 MiB.
        let mut data = std::mem::take(&mut self.compressed);
        data.clear();
        (&mut self.input).take(u64::from(src_len)).read_to_end(&mut data).map_err(LzopError::Io)?;
        if data.len() != src_len as usize {
            return Err(LzopError::Truncated("block data"));
        }
        verify(block, "compressed Adler-32", c_adler, || adler32(&data))?;
        verify(block, "compressed CRC-32", c_crc, || crc32fast::hash(&data))?;
        if stored {
            self.compressed = std::mem::replace(&mut self.out, data);
        } else {
            self.out.clear();
            self.out.resize(dst_len as usize, 0);
            let n = lzo::decompress_into(&data, &mut self.out).map_err(|source| LzopError::Lzo { block, source })?;
            if n != dst_len as usize {
                return Err(bad(format!("decompressed to {n} bytes, {dst_len} announced")));
            }
            self.compressed = data;
        }
        verify(block, "uncompressed Adler-32", d_adler, || adler32(&self.out))?;
        verify(block, "uncompressed CRC-32", d_crc, || crc32fast::hash(&self.out))?;
        self.pos = 0;
        self.block += 1;
        Ok(true)
    }

    /// After the end marker: zero padding only, up to the end of the input.
    fn trailer(&mut self) -> Result<(), LzopError> {
        let mut buf = [0u8; 8192];
        loop {
            match self.input.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) if buf[..n].iter().all(|&b| b == 0) => {}
                Ok(_) => return Err(LzopError::Trailing),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LzopError::Io(e)),
            }
        }
    }

    fn step(&mut self) -> Result<(), LzopError> {
        match self.state {
            State::Header => {
                self.header()?;
                self.state = State::Blocks;
            }
            State::Blocks => {
                if !self.next_block()? {
                    self.trailer()?;
                    self.out.clear();
                    self.pos = 0;
                    self.state = State::Done;
                }
            }
            State::Done | State::Failed => {}
        }
        Ok(())
    }
}

impl<R: Read> Read for LzopReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.state {
                State::Done => return Ok(0),
                State::Failed => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "the lzop stream failed to decode"));
                }
                State::Header | State::Blocks => {
                    if let Err(e) = self.step() {
                        self.state = State::Failed;
                        return Err(e.into());
                    }
                }
            }
        }
    }
}

/// Header fields read so far (their bytes feed the header checksum).
struct Header {
    bytes: Vec<u8>,
}

impl Header {
    fn take<R: Read, const N: usize>(&mut self, r: &mut LzopReader<R>) -> Result<[u8; N], LzopError> {
        let mut b = [0u8; N];
        r.exact(&mut b, "header")?;
        self.bytes.extend_from_slice(&b);
        Ok(b)
    }

    fn u8<R: Read>(&mut self, r: &mut LzopReader<R>) -> Result<u8, LzopError> {
        Ok(self.take::<R, 1>(r)?[0])
    }

    fn u16<R: Read>(&mut self, r: &mut LzopReader<R>) -> Result<u16, LzopError> {
        Ok(u16::from_be_bytes(self.take(r)?))
    }

    fn u32<R: Read>(&mut self, r: &mut LzopReader<R>) -> Result<u32, LzopError> {
        Ok(u32::from_be_bytes(self.take(r)?))
    }
}

fn checksum(crc: bool, data: &[u8]) -> u32 {
    if crc { crc32fast::hash(data) } else { adler32(data) }
}

fn verify(block: u64, kind: &'static str, want: Option<u32>, got: impl FnOnce() -> u32) -> Result<(), LzopError> {
    match want {
        Some(w) if w != got() => Err(LzopError::Checksum { block, kind }),
        _ => Ok(()),
    }
}

/// Adler-32 (RFC 1950) from its initial value 1, as lzop computes it.
fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    // The most bytes before `b` can overflow a u32 (zlib's NMAX).
    const NMAX: usize = 5552;
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(NMAX) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adler32_known_values() {
        assert_eq!(adler32(b""), 1);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        // Long enough to wrap the modulus many times.
        let v: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let slow = {
            let (mut a, mut b) = (1u64, 0u64);
            for &x in &v {
                a = (a + u64::from(x)) % 65_521;
                b = (b + a) % 65_521;
            }
            ((b << 16) | a) as u32
        };
        assert_eq!(adler32(&v), slow);
    }

    /// A minimal lzop file built by hand: `flags`, then `blocks` of
    /// (uncompressed, stored-or-LZO1X body).
    fn build(flags: u32, blocks: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&0x1040u16.to_be_bytes());
        h.extend_from_slice(&0x20a0u16.to_be_bytes());
        h.extend_from_slice(&0x0940u16.to_be_bytes());
        h.push(1); // method LZO1X_1
        h.push(5); // level
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&0o100644u32.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        h.push(0); // no name
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&h);
        f.extend_from_slice(&checksum(flags & F_H_CRC32 != 0, &h).to_be_bytes());
        for (raw, lzo) in blocks {
            let body = lzo.unwrap_or(raw);
            f.extend_from_slice(&(raw.len() as u32).to_be_bytes());
            f.extend_from_slice(&(body.len() as u32).to_be_bytes());
            if flags & F_ADLER32_D != 0 {
                f.extend_from_slice(&adler32(raw).to_be_bytes());
            }
            if flags & F_CRC32_D != 0 {
                f.extend_from_slice(&crc32fast::hash(raw).to_be_bytes());
            }
            if lzo.is_some() {
                if flags & F_ADLER32_C != 0 {
                    f.extend_from_slice(&adler32(body).to_be_bytes());
                }
                if flags & F_CRC32_C != 0 {
                    f.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
                }
            }
            f.extend_from_slice(body);
        }
        f.extend_from_slice(&0u32.to_be_bytes());
        f
    }

    fn decode(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        LzopReader::new(data).read_to_end(&mut out).map(|_| out)
    }

    /// `abcabcabcab` as LZO1X: three literals (first byte 17 + 3), an M2
    /// match of 8 bytes at distance 3 (`0b111_010_00`, high byte 0), the
    /// end marker.
    const ABC_RAW: &[u8] = b"abcabcabcab";
    const ABC_LZO: [u8; 9] = [20, b'a', b'b', b'c', 0xE8, 0x00, 0x11, 0x00, 0x00];

    #[test]
    fn every_checksum_flag_is_honoured() {
        let all = [F_ADLER32_D, F_ADLER32_C, F_CRC32_D, F_CRC32_C, F_H_CRC32];
        for mask in 0..(1u32 << all.len()) {
            let flags = all.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).fold(0, |f, (_, b)| f | b);
            let f = build(flags, &[(ABC_RAW, Some(&ABC_LZO[..])), (&b"stored"[..], None)]);
            assert_eq!(decode(&f).unwrap(), b"abcabcabcabstored", "flags {flags:#x}");
            // A flipped bit in a literal of the LZO1X block: caught by a
            // compressed or an uncompressed checksum.
            let mut bad = f.clone();
            let at = f.windows(ABC_LZO.len()).position(|w| w == ABC_LZO).unwrap() + 2;
            bad[at] ^= 0x20;
            let r = decode(&bad);
            if flags & (F_ADLER32_D | F_ADLER32_C | F_CRC32_D | F_CRC32_C) != 0 {
                assert!(r.is_err(), "flags {flags:#x}: corruption unnoticed");
            }
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        let good = build(F_ADLER32_D, &[(ABC_RAW, Some(&ABC_LZO[..]))]);
        assert!(decode(b"").unwrap_err().to_string().contains("bad magic"));
        assert!(decode(b"\x89LZO\0\r\n\x1a\nxx").is_err());
        // Every truncation fails (no end marker, or inside a field).
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "truncated at {n}");
        }
        // Header checksum.
        let mut h = good.clone();
        h[20] ^= 1; // inside the flags
        assert!(decode(&h).is_err());
        // Trailing zeros are padding; other trailing bytes are not.
        let mut z = good.clone();
        z.extend_from_slice(&[0; 100]);
        assert_eq!(decode(&z).unwrap(), ABC_RAW);
        let mut t = good.clone();
        t.extend_from_slice(b"junk");
        assert!(decode(&t).is_err());
        // A block announcing more than lzop's maximum, or more compressed than raw bytes.
        let mut big = build(0, &[]);
        let end = big.len() - 4;
        big.truncate(end);
        big.extend_from_slice(&(MAX_BLOCK + 1).to_be_bytes());
        big.extend_from_slice(&10u32.to_be_bytes());
        assert!(decode(&big).is_err());
        // A crafted LZO1X block whose back-reference points before the
        // start of the output (it aborted the process with another decoder).
        let crafted = [0x12u8, b'a', 0x40, 0x10, 0x11, 0x00, 0x00];
        let f = build(0, &[(&[0u8; 64][..], Some(&crafted[..]))]);
        assert!(decode(&f).is_err());
        // A reader that failed keeps failing.
        let mut r = LzopReader::new(&t[..]);
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert!(r.read(&mut [0u8; 16]).is_err());
    }

    #[test]
    fn unsupported_headers_are_named() {
        let msg = |f: &[u8]| decode(f).unwrap_err().to_string();
        let mut m = build(0, &[]);
        m[15] = 0x80; // method byte: zlib
        assert!(msg(&m).contains("method 128"), "{}", msg(&m));
        let mut f = build(F_H_FILTER, &[]);
        f.splice(21..21, 1u32.to_be_bytes()); // the filter follows the flags
        assert!(msg(&f).contains("filter"), "{}", msg(&f));
        let r = build(0x0001_0000, &[]);
        assert!(msg(&r).contains("flags"), "{}", msg(&r));
    }
}
