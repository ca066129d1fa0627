//! Timeline numbers stay unique in a cluster.
//!
//! PostgreSQL's promotion takes the first timeline after its own for which
//! it finds no history file (in `pg_wal` or through `restore_command`). A
//! replica that never saw the cluster's newest timeline (it lagged, or the
//! member that promoted to it was stopped a moment later, before anyone
//! followed it) takes that same number again: two histories then share one
//! timeline ID, and pg_rewind, which compares histories by ID, finds "no
//! rewind required" on the member that diverged. That member would stream
//! the new leader's WAL onto its own different records.
//!
//! Two defences: before promoting, [`reserve`] writes a placeholder history
//! file for every timeline the cluster's `history` key says is taken, so the
//! promotion picks a new number; and a former primary whose newest timeline
//! ([`newest`]) equals the leader's knows it diverged where pg_rewind cannot
//! see it (the caller refuses to stream).

use std::path::Path;

use super::atomic::write_atomic;
use super::{PgError, RunAs};

/// How a placeholder's one line begins. It names no parent, so a standby
/// that rescans for a newer timeline before its promotion finds it "not a
/// child" of its own and stays where it is; nothing reads more of it (only
/// files PostgreSQL marks `.ready` are archived).
pub const PLACEHOLDER: &str = "# tusk: placeholder";

fn history_name(tli: u32) -> String {
    format!("{tli:08X}.history")
}

/// The timeline of a `NNNNNNNN.history` file name.
fn history_tli(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".history")?;
    (hex.len() == 8).then(|| u32::from_str_radix(hex, 16).ok()).flatten()
}

/// Writes a placeholder history file for each timeline after `own` up to
/// `cluster` (the cluster's newest, by the `history` key) that `pg_wal`
/// lacks; returns the timelines it reserved.
pub fn reserve(data: &Path, own: u32, cluster: u32, run_as: &RunAs) -> Result<Vec<u32>, PgError> {
    let wal = data.join("pg_wal");
    let mut reserved = Vec::new();
    for tli in own.saturating_add(1)..=cluster {
        let path = wal.join(history_name(tli));
        if path.exists() {
            continue;
        }
        let text = format!(
            "{PLACEHOLDER}: timeline {tli} is taken in this cluster (etcd's history key); this file only keeps a \
             promotion here from taking its number\n"
        );
        write_atomic(&path, text.as_bytes(), 0o600, run_as)?;
        reserved.push(tli);
    }
    Ok(reserved)
}

/// The newest timeline this data directory has run on: the control file's
/// (its last checkpoint's) or a newer history file's in `pg_wal` (a
/// promotion writes it before any checkpoint on the new timeline);
/// placeholders do not count.
pub fn newest(data: &Path, control: u32) -> u32 {
    let Ok(dir) = std::fs::read_dir(data.join("pg_wal")) else { return control };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let tli = history_tli(e.file_name().to_str()?)?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            (!text.starts_with(PLACEHOLDER)).then_some(tli)
        })
        .fold(control, u32::max)
}

/// Where the leader's history left timeline `own` (the LSN its next
/// timeline began at), when that history is known and `own` is an older
/// timeline of it: `history` is the `history` key's lines, which describe
/// timeline `history_tl`; `None` until that is the leader's (`leader_tl`).
pub fn switch_point(history: &[(u32, u64, String)], history_tl: u32, leader_tl: u32, own: u32) -> Option<u64> {
    if history_tl != leader_tl || own >= leader_tl {
        return None;
    }
    history.iter().find(|(tli, _, _)| *tli == own).map(|(_, end, _)| *end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> RunAs {
        RunAs { uid: nix::unistd::Uid::effective(), gid: nix::unistd::Gid::effective(), switch: false, env: Vec::new() }
    }

    #[test]
    fn reserves_what_is_missing_and_placeholders_do_not_count() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("pg_wal")).expect("pg_wal");
        // Timeline 3's real history is here (streamed); 2 and 4 are missing.
        std::fs::write(d.path().join("pg_wal/00000003.history"), "1\t0/5000000\tx\n2\t0/6000000\ty\n").expect("write");
        assert_eq!(reserve(d.path(), 1, 4, &me()).expect("reserve"), vec![2, 4]);
        let text = std::fs::read_to_string(d.path().join("pg_wal/00000004.history")).expect("placeholder");
        assert!(text.starts_with(PLACEHOLDER) && text.ends_with('\n'), "{text}");
        // PostgreSQL reads no entry from it (comment lines are skipped).
        assert_eq!(super::super::wal::parse_history(&text), Ok(Vec::new()));
        assert_eq!(newest(d.path(), 1), 3);
        assert_eq!(newest(d.path(), 5), 5);
        // Nothing to reserve when this member is on the cluster's timeline.
        assert_eq!(reserve(d.path(), 4, 4, &me()).expect("reserve"), Vec::<u32>::new());
        assert_eq!(reserve(d.path(), 5, 0, &me()).expect("reserve"), Vec::<u32>::new());
        // Other files in pg_wal are not history files.
        std::fs::write(d.path().join("pg_wal/000000090000000000000001"), "").expect("segment");
        std::fs::write(d.path().join("pg_wal/0000000A.history.tusk-tmp"), "").expect("tmp");
        assert_eq!(newest(d.path(), 1), 3);
        assert_eq!(newest(&d.path().join("absent"), 2), 2);
    }

    #[test]
    fn switch_points() {
        let h = vec![(1, 0x500_0000, "a".to_owned()), (3, 0x700_0000, "b".to_owned())];
        // The key describes timeline 4, the leader's.
        assert_eq!(switch_point(&h, 4, 4, 1), Some(0x500_0000));
        assert_eq!(switch_point(&h, 4, 4, 3), Some(0x700_0000));
        // Timeline 2 is not on the leader's path: nothing to compare with.
        assert_eq!(switch_point(&h, 4, 4, 2), None);
        // On the leader's timeline (or past it), or a key not yet the leader's.
        assert_eq!(switch_point(&h, 4, 4, 4), None);
        assert_eq!(switch_point(&h, 4, 5, 1), None);
        assert_eq!(switch_point(&[], 1, 1, 1), None);
    }

    #[test]
    fn history_file_names() {
        assert_eq!(history_name(10), "0000000A.history");
        assert_eq!(history_tli("0000000A.history"), Some(10));
        assert_eq!(history_tli("A.history"), None);
        assert_eq!(history_tli("0000000A.historyx"), None);
    }
}
