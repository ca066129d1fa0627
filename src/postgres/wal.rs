//! WAL file names, LSNs, timelines and their history files, page headers:
//! pure functions, the one place for them (archiving, the HA loop).

/// WAL segment size when nothing else is known (PostgreSQL's default).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// `XLP_LONG_HEADER`: the first page of a segment carries the long header.
const XLP_LONG_HEADER: u16 = 0x0002;
/// The oldest page magic WAL-G accepts (PostgreSQL 9.x); newer majors are higher.
const MIN_PAGE_MAGIC: u16 = 0xD061;
/// Size of `XLogLongPageHeaderData` (std header 24 + sysid 8 + seg size 4 + block size 4).
pub const LONG_HEADER_LEN: usize = 40;

/// What kind of file `archive_command` or `restore_command` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`
    Segment(SegmentName),
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.partial` (end of a timeline at promotion)
    Partial(SegmentName),
    /// `TTTTTTTT.history`
    History(u32),
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.XXXXXXXX.backup`
    Backup,
}

/// Timeline, log and segment of a 24-hex segment name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub tli: u32,
    pub log: u32,
    pub seg: u32,
}

impl SegmentName {
    pub fn parse(s: &str) -> Option<SegmentName> {
        if s.len() != 24 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let h = |r: std::ops::Range<usize>| u32::from_str_radix(&s[r], 16).ok();
        Some(SegmentName { tli: h(0..8)?, log: h(8..16)?, seg: h(16..24)? })
    }

    /// Segments per "log" (xlogid) for a segment size.
    fn per_log(seg_size: u64) -> u64 {
        0x1_0000_0000 / seg_size
    }

    /// The segment number (position in the WAL stream, timeline aside).
    pub fn segno(&self, seg_size: u64) -> u64 {
        self.log as u64 * Self::per_log(seg_size) + self.seg as u64
    }

    pub fn from_segno(tli: u32, segno: u64, seg_size: u64) -> SegmentName {
        let per = Self::per_log(seg_size);
        SegmentName { tli, log: (segno / per) as u32, seg: (segno % per) as u32 }
    }

    /// The segment that holds `lsn`.
    pub fn of_lsn(tli: u32, lsn: u64, seg_size: u64) -> SegmentName {
        Self::from_segno(tli, lsn / seg_size, seg_size)
    }

    pub fn start_lsn(&self, seg_size: u64) -> u64 {
        self.segno(seg_size) * seg_size
    }
}

impl std::fmt::Display for SegmentName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.tli, self.log, self.seg)
    }
}

/// Classifies a file name; `None` for anything that is not a WAL archive file.
pub fn classify(name: &str) -> Option<Kind> {
    if let Some(seg) = SegmentName::parse(name) {
        return Some(Kind::Segment(seg));
    }
    if let Some(base) = name.strip_suffix(".partial") {
        return SegmentName::parse(base).map(Kind::Partial);
    }
    if let Some(tli) = name.strip_suffix(".history") {
        if tli.len() == 8 && tli.bytes().all(|b| b.is_ascii_hexdigit()) {
            return u32::from_str_radix(tli, 16).ok().map(Kind::History);
        }
        return None;
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        let (seg, off) = rest.split_once('.')?;
        if SegmentName::parse(seg).is_some() && off.len() == 8 && off.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(Kind::Backup);
        }
    }
    None
}

/// The fields of a segment's first page that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader {
    pub magic: u16,
    pub tli: u32,
    pub pageaddr: u64,
    pub sysid: u64,
    pub seg_size: u32,
    pub block_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("too short for a WAL page header ({0} bytes)")]
    Short(usize),
    #[error("bad WAL page magic {0:#06x}")]
    Magic(u16),
    #[error("the first page has no long header (xlp_info {0:#06x})")]
    NotLong(u16),
    #[error("implausible segment size {0}")]
    SegSize(u32),
}

/// Parses the long page header at the start of a segment (little-endian,
/// as on every platform PostgreSQL images run on).
pub fn parse_long_header(b: &[u8]) -> Result<LongHeader, HeaderError> {
    if b.len() < LONG_HEADER_LEN {
        return Err(HeaderError::Short(b.len()));
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let magic = u16_at(0);
    if magic < MIN_PAGE_MAGIC || magic >> 8 != 0xD0 && magic >> 8 != 0xD1 {
        return Err(HeaderError::Magic(magic));
    }
    let info = u16_at(2);
    if info & XLP_LONG_HEADER == 0 {
        return Err(HeaderError::NotLong(info));
    }
    let seg_size = u32_at(32);
    if !seg_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg_size) {
        return Err(HeaderError::SegSize(seg_size));
    }
    Ok(LongHeader { magic, tli: u32_at(4), pageaddr: u64_at(8), sysid: u64_at(24), seg_size, block_size: u32_at(36) })
}

/// One line of a timeline history file: `parent_tli<TAB>switchpoint<TAB>reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub tli: u32,
    /// The LSN where timeline `tli` ended (the next one began).
    pub end: u64,
    /// Why the timeline ended (`no recovery target specified`, ...).
    pub reason: String,
}

/// Parses a timeline history file (PostgreSQL's format); comments and blank
/// lines are skipped, a malformed line is an error.
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tli, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim_start();
        let (lsn, reason) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let tli = tli.parse::<u32>().map_err(|_| format!("bad line {line:?}"))?;
        let lsn = parse_lsn(lsn).ok_or_else(|| format!("bad switch point in {line:?}"))?;
        out.push(HistoryEntry { tli, end: lsn, reason: reason.trim().to_owned() });
    }
    Ok(out)
}

/// `X/Y` (`0/3000060`) → LSN in bytes.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// LSN in bytes → `X/Y`, as PostgreSQL prints it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The timeline PostgreSQL reads segment `segno` from when it recovers
/// along `target`'s history (`history` = the parsed `target.history`, empty
/// for timeline 1): the newest timeline that began at or before that
/// segment — the segment holding a switch point is read from the new timeline.
pub fn timeline_of_segment(target: u32, history: &[HistoryEntry], segno: u64, seg_size: u64) -> u32 {
    // Timeline i of the history began where the previous entry ended.
    let mut tli = target;
    for (i, e) in history.iter().enumerate().rev() {
        // Entry i ends timeline e.tli at e.end; the following timeline begins there.
        if segno >= e.end / seg_size {
            return tli;
        }
        tli = e.tli;
        if i == 0 {
            return tli;
        }
    }
    tli
}

#[cfg(test)]
mod tests {
    use super::*;

    const SZ: u64 = DEFAULT_SEGMENT_SIZE;

    #[test]
    fn names() {
        let s = SegmentName::parse("000000010000000A0000002F").unwrap();
        assert_eq!((s.tli, s.log, s.seg), (1, 10, 0x2F));
        assert_eq!(s.to_string(), "000000010000000A0000002F");
        assert_eq!(s.segno(SZ), 10 * 256 + 0x2F);
        // next segment wraps the log at 256 segments of 16 MiB
        let last = SegmentName::parse("0000000100000001000000FF").unwrap();
        let next = SegmentName::from_segno(1, last.segno(SZ) + 1, SZ);
        assert_eq!(next.to_string(), "000000010000000200000000");
        // 64 MiB segments: 64 per log
        let big = SegmentName::parse("00000001000000010000003F").unwrap();
        assert_eq!(
            SegmentName::from_segno(1, big.segno(64 << 20) + 1, 64 << 20).to_string(),
            "000000010000000200000000"
        );
        assert_eq!(SegmentName::of_lsn(2, 0x3_0100_0028, SZ).to_string(), "000000020000000300000001");
        for bad in ["", "00000001000000010000003", "00000001000000010000003G", "x00000001000000010000003F"] {
            assert!(SegmentName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn kinds() {
        let seg = SegmentName { tli: 1, log: 0, seg: 3 };
        assert_eq!(classify("000000010000000000000003"), Some(Kind::Segment(seg)));
        assert_eq!(classify("000000010000000000000003.partial"), Some(Kind::Partial(seg)));
        assert_eq!(classify("0000000A.history"), Some(Kind::History(10)));
        assert_eq!(classify("000000010000000000000003.00000028.backup"), Some(Kind::Backup));
        for bad in ["RECOVERYXLOG", "1.history", "000000010000000000000003.lz4", "../etc/passwd", "0000000A.history.x"]
        {
            assert_eq!(classify(bad), None, "{bad}");
        }
    }

    fn header(magic: u16, info: u16, sysid: u64, seg_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[0..2].copy_from_slice(&magic.to_le_bytes());
        b[2..4].copy_from_slice(&info.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&0x0300_0000u64.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&seg_size.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    #[test]
    fn long_headers() {
        let h = parse_long_header(&header(0xD110, 0x0006, 7_300_000_000_000_000_001, 16 << 20)).unwrap();
        assert_eq!(
            (h.magic, h.tli, h.sysid, h.seg_size, h.pageaddr),
            (0xD110, 1, 7_300_000_000_000_000_001, 16 << 20, 0x0300_0000)
        );
        assert_eq!(parse_long_header(&[0; 10]), Err(HeaderError::Short(10)));
        assert_eq!(parse_long_header(&header(0x1234, 2, 1, 16 << 20)), Err(HeaderError::Magic(0x1234)));
        assert_eq!(parse_long_header(&header(0xD110, 0, 1, 16 << 20)), Err(HeaderError::NotLong(0)));
        assert_eq!(parse_long_header(&header(0xD110, 2, 1, 12345)), Err(HeaderError::SegSize(12345)));
        assert!(parse_long_header(&vec![0u8; 8192]).is_err(), "a zero page is not WAL");
    }

    #[test]
    fn history_and_timelines() {
        let text = "1\t0/5000000\tno recovery target specified\n\n2\t0/8000060\tbefore 2000-01-01\n";
        let h = parse_history(text).unwrap();
        assert_eq!(
            h,
            vec![
                HistoryEntry { tli: 1, end: 0x500_0000, reason: "no recovery target specified".into() },
                HistoryEntry { tli: 2, end: 0x800_0060, reason: "before 2000-01-01".into() }
            ]
        );
        assert!(parse_history("1\tgarbage\n").is_err());
        // Timeline 3: segments before 5 on 1, 5..8 on 2 (5 holds the switch), 8 on.. on 3.
        let tl = |segno| timeline_of_segment(3, &h, segno, SZ);
        assert_eq!([tl(3), tl(4), tl(5), tl(7), tl(8), tl(9)], [1, 1, 2, 2, 3, 3]);
        // No history: everything on the target timeline.
        assert_eq!(timeline_of_segment(1, &[], 42, SZ), 1);
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0), "0/0");
    }
}
