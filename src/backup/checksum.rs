//! PostgreSQL's data page checksum (`pg_checksum_page`,
//! storage/checksum_impl.h): 32 interleaved FNV-1a-style sums over the
//! page read as little-endian u32 words, with `pd_checksum` as zero, mixed
//! with the block number and folded to 16 bits (never 0).

pub const BLCKSZ: usize = 8192;
/// Blocks per 1 GiB relation segment file.
pub const RELSEG_SIZE: u32 = 131_072;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C, 0xF8D4474F,
    0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC,
    0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6,
    0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

#[inline(always)]
fn comp(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// The checksum PostgreSQL stores in `pd_checksum` of block `blkno`.
pub fn page_checksum(page: &[u8; BLCKSZ], blkno: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    for (row_i, row) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, sum) in sums.iter_mut().enumerate() {
            let mut w = u32::from_le_bytes(row[4 * j..4 * j + 4].try_into().expect("4 bytes"));
            // pd_checksum: bytes 8..10 of the page, the low half of word 2.
            if row_i == 0 && j == 2 {
                w &= 0xFFFF_0000;
            }
            *sum = comp(*sum, w);
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = comp(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |a, s| a ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// What a page says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    Ok,
    /// New (all zero) or changed since the backup started (WAL replay
    /// rewrites it): not checked.
    Skipped,
    Corrupt,
}

/// Checks block `blkno` (absolute within the relation) against its stored
/// checksum. Pages whose LSN is at or after `start_lsn` may be torn by a
/// concurrent write and are left to WAL replay, as pg_basebackup does.
pub fn check_page(page: &[u8; BLCKSZ], blkno: u32, start_lsn: u64) -> PageCheck {
    let pd_upper = u16::from_le_bytes([page[14], page[15]]);
    if pd_upper == 0 {
        return if page.iter().all(|b| *b == 0) { PageCheck::Skipped } else { PageCheck::Corrupt };
    }
    let lsn_hi = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes")) as u64;
    let lsn_lo = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes")) as u64;
    if (lsn_hi << 32 | lsn_lo) >= start_lsn {
        return PageCheck::Skipped;
    }
    let stored = u16::from_le_bytes([page[8], page[9]]);
    if stored == page_checksum(page, blkno) { PageCheck::Ok } else { PageCheck::Corrupt }
}

/// Whether a file under PGDATA holds checksummed relation pages: under
/// `base/`, `global/` or a tablespace, named `<oid>[_fsm|_vm][.<segno>]`
/// (pg_basebackup's rule: not `pg_internal.init`, `pg_filenode.map`,
/// `PG_VERSION`, `pg_control`, temp files). Returns the segment number.
pub fn relation_segment(rel_path: &str) -> Option<u32> {
    let in_rel_dir =
        rel_path.starts_with("base/") || rel_path.starts_with("global/") || rel_path.starts_with("pg_tblspc/");
    if !in_rel_dir {
        return None;
    }
    let name = rel_path.rsplit('/').next()?;
    let (stem, seg) = match name.split_once('.') {
        Some((s, n)) => (s, n.parse::<u32>().ok()?),
        None => (name, 0),
    };
    let oid = stem
        .strip_suffix("_fsm")
        .or_else(|| stem.strip_suffix("_vm"))
        .or_else(|| stem.strip_suffix("_init"))
        .unwrap_or(stem);
    (!oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit())).then_some(seg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files() {
        assert_eq!(relation_segment("base/5/16384"), Some(0));
        assert_eq!(relation_segment("base/5/16384.2"), Some(2));
        assert_eq!(relation_segment("base/5/16384_fsm"), Some(0));
        assert_eq!(relation_segment("global/1262"), Some(0));
        assert_eq!(relation_segment("pg_tblspc/16400/PG_15_202209061/5/16401"), Some(0));
        assert_eq!(relation_segment("global/pg_control"), None);
        assert_eq!(relation_segment("base/5/pg_filenode.map"), None);
        assert_eq!(relation_segment("base/5/PG_VERSION"), None);
        assert_eq!(relation_segment("base/5/t3_16384"), None);
        assert_eq!(relation_segment("pg_xact/0000"), None);
    }

    #[test]
    fn new_and_recent_pages_are_skipped() {
        let zero = [0u8; BLCKSZ];
        assert_eq!(check_page(&zero, 0, 100), PageCheck::Skipped);
        let mut garbage = [0u8; BLCKSZ];
        garbage[100] = 1;
        assert_eq!(check_page(&garbage, 0, 100), PageCheck::Corrupt);
        let mut recent = [0u8; BLCKSZ];
        recent[4] = 200; // LSN 200 ≥ start 100
        recent[14] = 24; // pd_upper ≠ 0
        assert_eq!(check_page(&recent, 0, 100), PageCheck::Skipped);
        let mut old = recent;
        old[4] = 50;
        // A page is valid only with its own checksum; set it and flip a bit.
        let c = page_checksum(&old, 7);
        old[8..10].copy_from_slice(&c.to_le_bytes());
        assert_eq!(check_page(&old, 7, 100), PageCheck::Ok);
        assert_eq!(check_page(&old, 8, 100), PageCheck::Corrupt, "the block number is part of the checksum");
        old[4000] ^= 1;
        assert_eq!(check_page(&old, 7, 100), PageCheck::Corrupt);
    }
}
