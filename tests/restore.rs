//! Restores against the real PostgreSQL and a real garage (S3):
//! `tusk backup-fetch` of a backup taken by `tusk backup-push`, recovered
//! by a PostgreSQL that tusk does not run (`restore_command = 'tusk
//! wal-fetch %f %p'`, direct mode), compared table by table with the
//! source and checked by `pg_amcheck`; a damaged part, an unknown name and
//! a non-empty destination refused with nothing left behind; and clones
//! (`CLONE_METHOD=CLONE_WITH_WALE`), with point-in-time recovery. Run as
//! root (postgres runs as postgres).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use node::{Node, PG_BIN, require_root, test_dir};
use testbed::{Garage, shared_garage};

fn unique_prefix(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{test}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// A standalone tusk node archiving to `garage` under `prefix`; no
/// scheduled backups during the test.
fn storage_node(dir: &Path, garage: &Garage, prefix: &str) -> Node {
    let mut n = Node::new(dir);
    for (k, v) in garage.env() {
        if k.starts_with("AWS_") {
            n.set(&k, &v);
        }
    }
    n.set("WALG_S3_PREFIX", &format!("s3://{}/{prefix}", garage.bucket));
    n.set("WALG_UPLOAD_CONCURRENCY", "4");
    n.set("WALG_DOWNLOAD_CONCURRENCY", "4");
    n.set("BACKUP_SCHEDULE", "0 0 1 1 *");
    n
}

fn pgbench_init(n: &Node, scale: u32) {
    let out = Command::new(format!("{PG_BIN}/pgbench"))
        .args(["-i", "-s", &scale.to_string(), "-q", "-h"])
        .arg(n.socket_dir())
        .args(["-p", &n.pg_port.to_string(), "-U", "postgres", "postgres"])
        .output()
        .expect("pgbench");
    assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A digest of every row of the tables the tests compare.
const DIGEST_SQL: &str = "select string_agg(t || ':' || d, ' ' order by t) from (\
     select 'accounts' t, md5(string_agg(a::text, '|' order by aid)) d from pgbench_accounts a \
     union all select 'branches', md5(string_agg(b::text, '|' order by bid)) from pgbench_branches b \
     union all select 'tellers', md5(string_agg(x::text, '|' order by tid)) from pgbench_tellers x \
     union all select 'marker', md5(string_agg(m::text, '|' order by id)) from marker m) s";

/// Switches WAL and waits until the segment holding everything so far is archived.
fn archive_now(n: &Node) {
    let seg = n.psql("select pg_walfile_name(pg_switch_wal())");
    // `.done` too: a base backup's `.backup` file archived after the
    // segment can be the last archived name.
    let done = n.data().join(format!("pg_wal/archive_status/{seg}.done"));
    wait_for(&format!("{seg} archived"), Duration::from_secs(60), || {
        let last = n.psql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
        (done.exists() || last.as_str() >= seg.as_str()).then_some(())
    });
}

/// Waits for the first (automatic) backup, loads data, and takes a backup
/// by hand; returns its name.
fn loaded_source(n: &mut Node, scale: u32) -> String {
    n.start();
    n.wait_ready(1);
    n.wait_log("base backup complete", 1, Duration::from_secs(120));
    pgbench_init(n, scale);
    n.psql("create table marker (id int primary key, note text, at timestamptz default now())");
    n.psql("insert into marker (id, note) values (1, 'before the backup')");
    let (st, out, err) = n.run(&["backup-push"]);
    assert!(st.success(), "backup-push: {st}\n{out}\n{err}");
    let done: serde_json::Value = serde_json::from_str(out.trim()).expect("backup-push prints JSON");
    done["name"].as_str().expect("name").to_owned()
}

/// A PostgreSQL run by `pg_ctl` as postgres (not by tusk) on `data`, with
/// `restore_command` through `tusk wal-fetch` in direct mode: the
/// storage from the environment, no supervisor socket.
struct PlainPostgres {
    data: PathBuf,
    port: u16,
    sock: PathBuf,
}

impl PlainPostgres {
    fn start(data: &Path, source: &Node, recovery: &[(&str, &str)]) -> PlainPostgres {
        let port = ports::free_port();
        let sock = data.parent().unwrap().join("plain-sock");
        std::fs::create_dir_all(&sock).unwrap();
        chown_postgres(&sock);
        std::fs::write(data.join("recovery.signal"), b"").unwrap();
        chown_postgres(&data.join("recovery.signal"));
        let mut opts = format!(
            "-p {port} -k {} -c listen_addresses= -c archive_mode=off -c restore_command='{} wal-fetch %f %p'",
            sock.display(),
            node::tusk_bin()
        );
        for (k, v) in recovery {
            opts.push_str(&format!(" -c {k}='{v}'"));
        }
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--", "env", "-i"]);
        cmd.arg(format!("PATH={}", std::env::var("PATH").unwrap_or_default()));
        // No supervisor answers here: wal-fetch runs the archiver itself.
        cmd.arg(format!("TUSK_SOCKET_DIR={}", sock.display()));
        // Its prefetch decisions in the log (plain.log), for the tests.
        cmd.arg("TUSK_LOG_LEVEL=tusk=debug");
        for (k, v) in &source.env {
            if k.starts_with("AWS_") || k.starts_with("WALG_") {
                cmd.arg(format!("{k}={v}"));
            }
        }
        cmd.arg(format!("{PG_BIN}/pg_ctl"));
        cmd.args(["-D"]).arg(data).args(["-l"]).arg(data.parent().unwrap().join("plain.log"));
        cmd.args(["-w", "-t", "180", "-o", &opts, "start"]);
        let out = cmd.output().expect("pg_ctl");
        let log = std::fs::read_to_string(data.parent().unwrap().join("plain.log")).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start: {}\n{log}", String::from_utf8_lossy(&out.stderr));
        PlainPostgres { data: data.to_owned(), port, sock }
    }

    fn psql(&self, sql: &str) -> String {
        let out = Command::new(format!("{PG_BIN}/psql"))
            .args(["-X", "-A", "-t", "-h"])
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.parent().unwrap().join("plain.log")).unwrap_or_default()
    }

    fn wait_promoted(&self) {
        wait_for("the end of recovery", Duration::from_secs(180), || {
            (self.psql("select pg_is_in_recovery()") == "f").then_some(())
        });
    }
}

impl Drop for PlainPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_ctl"), "-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn chown_postgres(p: &Path) {
    let st = Command::new("chown").arg("postgres:postgres").arg(p).status().expect("chown");
    assert!(st.success());
}

fn amcheck(port: u16, sock: &Path) {
    let out = Command::new(format!("{PG_BIN}/pg_amcheck"))
        .args(["--install-missing", "--heapallindexed", "-h"])
        .arg(sock)
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .output()
        .expect("pg_amcheck");
    assert!(
        out.status.success(),
        "pg_amcheck: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `backup-fetch` + archive recovery by a PostgreSQL tusk does not run:
/// every table equal to the source, `pg_amcheck` clean, on a new timeline;
/// then the refusals, each leaving nothing behind.
#[test]
fn backup_fetch_restores_and_recovers() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("fetch");
    let dir = test_dir("restore-fetch");
    let mut src = storage_node(dir.path(), garage, &prefix);
    let name = loaded_source(&mut src, 10);
    // Written after the backup: reaches the copy only through the archive.
    src.psql("insert into marker (id, note) values (2, 'after the backup')");
    src.psql("update pgbench_accounts set abalance = abalance + 7 where aid % 97 = 0");
    archive_now(&src);
    let digest = src.psql(DIGEST_SQL);

    // Phase 1: fetch LATEST into a missing directory, as root: postgres's files.
    let restore_root = dir.path().join("restored");
    std::fs::create_dir_all(&restore_root).unwrap();
    chown_postgres(&restore_root);
    let dest = restore_root.join("data");
    let t0 = Instant::now();
    let (st, out, err) = src.run(&["backup-fetch", dest.to_str().unwrap(), "LATEST"]);
    assert!(st.success(), "phase 1, backup-fetch: {st}\n{out}\n{err}");
    eprintln!("backup-fetch took {:?}", t0.elapsed());
    let fetched: serde_json::Value = serde_json::from_str(out.trim()).expect("backup-fetch prints JSON");
    assert_eq!(fetched["name"], name.as_str(), "phase 1: LATEST is the newest backup");
    assert!(dest.join("global/pg_control").is_file(), "phase 1: pg_control restored");
    assert!(dest.join("backup_label").is_file(), "phase 1: backup_label restored");
    assert!(!restore_root.join(".data.tusk-restore").exists(), "phase 1: no staging directory left");
    let owner = Command::new("stat").args(["-c", "%U"]).arg(dest.join("base")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), "postgres", "phase 1: restored files are postgres's");

    // Phase 2: archive recovery to the end of the archive.
    {
        let pg = PlainPostgres::start(&dest, &src, &[]);
        pg.wait_promoted();
        assert_eq!(pg.psql(DIGEST_SQL), digest, "phase 2: the restored tables equal the source's");
        assert_eq!(
            pg.psql("select count(*) from marker"),
            "2",
            "phase 2: the write after the backup came from the archive"
        );
        let tl = pg.psql("select timeline_id from pg_control_checkpoint()");
        assert_ne!(tl, "1", "phase 2: the recovered copy is on a new timeline");
        amcheck(pg.port, &pg.sock);
    }

    // Phase 3: a name that does not exist: exit 1, naming it; nothing created.
    let missing = restore_root.join("missing");
    let (st, _, err) = src.run(&["backup-fetch", missing.to_str().unwrap(), "base_000000010000000000000099"]);
    assert_eq!(st.code(), Some(1), "phase 3: unknown backup: {err}");
    assert!(err.contains("base_000000010000000000000099"), "phase 3: the message names the backup: {err}");
    assert!(!missing.exists(), "phase 3: nothing created");

    // Phase 4: a non-empty destination is refused and left as it was.
    let (st, _, err) = src.run(&["backup-fetch", dest.to_str().unwrap(), "LATEST"]);
    assert_eq!(st.code(), Some(1), "phase 4: non-empty destination: {err}");
    assert!(err.contains("not empty"), "phase 4: {err}");
    assert!(dest.join("global/pg_control").is_file(), "phase 4: the existing directory is untouched");

    // Phase 5: a damaged part (same size, one byte changed) fails the
    // restore, naming the part, and leaves no data directory.
    let key = format!("{prefix}/basebackups_005/{name}/tar_partitions/part_001.tar.lz4");
    let (code, mut body) = garage.get_object(&key);
    assert_eq!(code, 200, "phase 5: read {key}");
    let mid = body.len() / 2;
    body[mid] ^= 0x5a;
    assert_eq!(garage.put_object(&key, &body), 200, "phase 5: write the damaged part");
    let damaged = restore_root.join("damaged");
    let (st, _, err) = src.run(&["backup-fetch", damaged.to_str().unwrap(), &name]);
    assert_eq!(st.code(), Some(1), "phase 5: a damaged part fails the restore: {err}");
    assert!(err.contains("part_001.tar.lz4"), "phase 5: the message names the part: {err}");
    assert!(!damaged.exists(), "phase 5: no data directory left");
    assert!(!restore_root.join(".damaged.tusk-restore").exists(), "phase 5: no staging directory left");
    src.stop_cleanly(Duration::from_secs(60));
}

/// `wal-fetch` with no supervisor prefetches, as WAL-G does: detached
/// `tusk wal-prefetch` processes store the next segments in
/// `pg_wal/.tusk-prefetch` and recovery takes most segments from there; a
/// prefetched file that fails validation (another segment's content under
/// the name) is discarded and the segment fetched from S3, so recovery
/// still ends with every row; at the end of the archive no copy is left.
#[test]
fn direct_wal_fetch_prefetches_and_validates() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("prefetch");
    let dir = test_dir("restore-prefetch");
    let mut src = storage_node(dir.path(), garage, &prefix);
    let name = loaded_source(&mut src, 1);
    // Twelve segments of WAL after the backup, each with a row.
    for i in 0..12 {
        src.psql(&format!("insert into marker (id, note) values ({}, repeat('x', 1000))", 100 + i));
        src.psql("select pg_switch_wal()");
    }
    archive_now(&src);
    let start = name.trim_start_matches("base_").to_owned();
    let seg = |n: u32| format!("{}{:08X}", &start[..16], u32::from_str_radix(&start[16..], 16).unwrap() + n);
    // Another segment's real content, to plant under the name of start+3.
    let foreign = std::fs::read(src.data().join("pg_wal").join(seg(2))).expect("the source keeps its WAL");
    let digest = src.psql("select md5(string_agg(m::text, '|' order by id)) from marker m");
    src.stop_cleanly(Duration::from_secs(60));

    let restore_root = dir.path().join("restored");
    std::fs::create_dir_all(&restore_root).unwrap();
    chown_postgres(&restore_root);
    let dest = restore_root.join("data");
    let (st, out, err) = src.run(&["backup-fetch", dest.to_str().unwrap(), &name]);
    assert!(st.success(), "backup-fetch: {st}\n{out}\n{err}");
    let pre = dest.join("pg_wal/.tusk-prefetch");
    std::fs::create_dir_all(&pre).unwrap();
    std::fs::write(pre.join(seg(3)), &foreign).unwrap();
    for p in [&pre, &pre.join(seg(3))] {
        chown_postgres(p);
    }

    let pg = PlainPostgres::start(&dest, &src, &[]);
    pg.wait_promoted();
    assert_eq!(
        pg.psql("select md5(string_agg(m::text, '|' order by id)) from marker m"),
        digest,
        "every row recovered"
    );
    let log = pg.log();
    let hits = log.matches("delivered from prefetch").count();
    assert!(hits >= 8, "most segments came from prefetch ({hits}):\n{log}");
    assert!(log.contains("prefetcher started"), "{log}");
    assert!(
        log.lines().any(|l| l.contains("discarding an invalid prefetched file") && l.contains(&seg(3))),
        "the planted file was refused:\n{log}"
    );
    assert!(
        log.contains(&format!("restored log file \"{}\" from archive", seg(3))),
        "and the segment fetched from S3 instead:\n{log}"
    );
    // The end of the archive cleared the directory (claims of a prefetcher
    // still running aside).
    let left = || -> Vec<String> {
        std::fs::read_dir(&pre)
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while left().iter().any(|n| !n.ends_with(".claim")) {
        assert!(Instant::now() < deadline, "prefetched copies left: {:?}\n{}", left(), pg.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every key under `prefix`.
fn keys(garage: &Garage, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut url =
            format!("{}/{}?list-type=2&prefix={}", garage.endpoint, garage.bucket, prefix.replace('/', "%2F"));
        if let Some(t) = &token {
            url.push_str(&format!(
                "&continuation-token={}",
                t.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
            ));
        }
        let body = String::from_utf8_lossy(&garage.curl(&[&url]).stdout).into_owned();
        out.extend(body.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_owned));
        token = body.split("<NextContinuationToken>").nth(1).and_then(|s| s.split('<').next()).map(str::to_owned);
        if token.is_none() {
            return out;
        }
    }
}

/// `CLONE_METHOD=CLONE_WITH_WALE` with `CLONE_TARGET_TIME` between two
/// commits: the clone has the first and not the second, runs on a new
/// timeline as its own primary, archives (and takes its first backup)
/// under its own prefix, and never writes to its source's. A target time
/// without a zone is refused with exit 78 naming the variable.
#[test]
fn clone_with_point_in_time_recovery() {
    require_root();
    let garage = shared_garage();
    let src_prefix = unique_prefix("pitr-src");
    let dir = test_dir("restore-pitr");
    let mut src = storage_node(&dir.path().join("src"), garage, &src_prefix);
    loaded_source(&mut src, 2);
    src.psql("insert into marker (id, note) values (2, 'before the target')");
    std::thread::sleep(Duration::from_millis(1500));
    let target = src.psql("select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'");
    std::thread::sleep(Duration::from_millis(1500));
    src.psql("insert into marker (id, note) values (3, 'after the target')");
    archive_now(&src);
    src.stop_cleanly(Duration::from_secs(60));
    let src_keys = keys(garage, &format!("{src_prefix}/"));

    let clone_prefix = unique_prefix("pitr-clone");
    let mut c = storage_node(&dir.path().join("clone"), garage, &clone_prefix);
    c.set("SCOPE", "clone");
    c.set("PATRONI_NAME", "clone-node");
    c.set("CLONE_METHOD", "CLONE_WITH_WALE");
    c.set("CLONE_SCOPE", "source");
    c.set("CLONE_WALG_S3_PREFIX", &format!("s3://{}/{src_prefix}", garage.bucket));

    // A target time without a zone: refused before anything happens.
    c.set("CLONE_TARGET_TIME", target.trim_end_matches("+00"));
    let (st, _, err) = c.run(&["config"]);
    assert_eq!(st.code(), Some(78), "a target time without a zone: {err}");
    assert!(err.contains("CLONE_TARGET_TIME"), "the message names the variable: {err}");

    c.set("CLONE_TARGET_TIME", &target);
    c.start();
    c.wait_ready(1);
    assert_eq!(c.psql("select pg_is_in_recovery()"), "f", "the clone is a primary");
    assert_eq!(
        c.psql("select string_agg(id::text, ',' order by id) from marker"),
        "1,2",
        "the clone has the commit before the target and not the one after"
    );
    let tl: u32 = c.psql("select timeline_id from pg_control_checkpoint()").parse().unwrap();
    assert!(tl >= 2, "the clone runs on a new timeline ({tl})");
    c.psql("insert into marker (id, note) values (10, 'written on the clone')");
    // Its first backup and its WAL go to its own prefix.
    c.wait_log("base backup complete", 1, Duration::from_secs(120));
    archive_now(&c);
    let own = keys(garage, &format!("{clone_prefix}/"));
    assert!(own.iter().any(|k| k.ends_with("_backup_stop_sentinel.json")), "the clone's own backup: {own:#?}");
    assert!(
        own.iter().any(|k| k.contains("/wal_005/") && k.contains(&format!("{tl:08X}"))),
        "the clone's WAL: {own:#?}"
    );
    assert_eq!(keys(garage, &format!("{src_prefix}/")), src_keys, "nothing written to the source's prefix");
    c.stop_cleanly(Duration::from_secs(60));
}

fn backup_names(n: &Node) -> Vec<String> {
    let (st, out, err) = n.run(&["backup-list", "--json"]);
    assert!(st.success(), "backup-list: {st}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("backup-list --json");
    v.as_array().expect("array").iter().map(|b| b["name"].as_str().expect("name").to_owned()).collect()
}

/// The 24-hex WAL segment names (timeline, log, segment) archived under `prefix`.
fn wal_segments(garage: &Garage, prefix: &str) -> Vec<String> {
    let mut segs: Vec<String> = keys(garage, &format!("{prefix}/wal_005/"))
        .iter()
        .filter_map(|k| k.rsplit('/').next())
        .filter(|f| f.len() >= 24 && f[..24].bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|f| f[..24].to_owned())
        .collect();
    segs.sort();
    segs.dedup();
    segs
}

/// Retention: four backups with `BACKUP_NUM_TO_RETAIN=2`, then `tusk
/// delete retain 2`: a dry run changes nothing; confirmed, the two newest
/// remain, the WAL before the older one is gone and the WAL from it on is
/// whole; point-in-time recovery inside the kept window still works.
/// Unknown names and bad arguments are refused with nothing deleted.
#[test]
fn retention_keeps_the_newest_and_their_wal() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("retain");
    let dir = test_dir("restore-retain");
    let mut src = storage_node(&dir.path().join("src"), garage, &prefix);
    src.set("BACKUP_NUM_TO_RETAIN", "2");
    src.start();
    src.wait_ready(1);
    src.wait_log("base backup complete", 1, Duration::from_secs(120));
    src.psql("create table marker (id int primary key, note text, at timestamptz default now())");
    let mut target = String::new();
    for i in 2..=4 {
        src.psql(&format!("insert into marker (id, note) values ({i}, 'before backup {i}')"));
        archive_now(&src);
        let (st, out, err) = src.run(&["backup-push"]);
        assert!(st.success(), "backup-push {i}: {st}\n{out}\n{err}");
        if i == 3 {
            // Inside the kept window: after backup 3, before row 30.
            src.psql("insert into marker (id, note) values (20, 'after backup 3')");
            std::thread::sleep(Duration::from_millis(1500));
            target =
                src.psql("select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'");
            std::thread::sleep(Duration::from_millis(1500));
            src.psql("insert into marker (id, note) values (30, 'after the target')");
            archive_now(&src);
        }
    }
    src.psql("insert into marker (id, note) values (40, 'after backup 4')");
    archive_now(&src);
    let before = backup_names(&src);
    assert_eq!(before.len(), 4, "four backups: {before:?}");
    let all_keys = keys(garage, &format!("{prefix}/"));

    // Refusals first: nothing deleted.
    let (st, _, err) = src.run(&["delete", "before", "base_000000010000000F00000000", "--confirm"]);
    assert_eq!(st.code(), Some(1), "an unknown backup: {err}");
    assert!(err.contains("base_000000010000000F00000000"), "the message names it: {err}");
    let (st, _, err) = src.run(&["delete", "retain", "0", "--confirm"]);
    assert_eq!(st.code(), Some(2), "retain 0: {err}");
    // The dry run says what would go and deletes nothing.
    let (st, out, err) = src.run(&["delete", "retain", "2", "--json"]);
    assert!(st.success(), "dry run: {st}\n{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("--json prints the plan");
    assert_eq!(plan["backups"], serde_json::json!([before[0], before[1]]), "{plan:#}");
    assert_eq!(plan["keep_from"], before[2].as_str(), "{plan:#}");
    assert!(err.contains("dry run"), "{err}");
    assert_eq!(keys(garage, &format!("{prefix}/")), all_keys, "a dry run deletes nothing");

    let (st, out, err) = src.run(&["delete", "retain", "2", "--confirm"]);
    assert!(st.success(), "delete retain 2 --confirm: {st}\n{out}\n{err}");
    assert_eq!(backup_names(&src), before[2..].to_vec(), "the two newest remain");
    let first_kept = before[2].trim_start_matches("base_").to_owned();
    let segs = wal_segments(garage, &prefix);
    assert!(segs.iter().all(|s| *s >= first_kept), "no WAL before {first_kept} remains: {segs:?}");
    assert_eq!(segs.first(), Some(&first_kept), "the kept backup's first segment remains: {segs:?}");
    let left = keys(garage, &format!("{prefix}/"));
    assert!(
        left.iter().all(|k| !k.contains(&before[0]) && !k.contains(&before[1])),
        "no object of a deleted backup remains: {left:#?}"
    );
    // Nothing left to delete now.
    let (st, _, err) = src.run(&["delete", "retain", "2", "--confirm"]);
    assert!(st.success() && err.contains("nothing to delete"), "{st}: {err}");
    src.stop_cleanly(Duration::from_secs(60));

    // Point-in-time recovery inside the kept window, from what remains.
    let clone_prefix = unique_prefix("retain-clone");
    let mut c = storage_node(&dir.path().join("clone"), garage, &clone_prefix);
    c.set("SCOPE", "clone");
    c.set("CLONE_METHOD", "CLONE_WITH_WALE");
    c.set("CLONE_SCOPE", "source");
    c.set("CLONE_WALG_S3_PREFIX", &format!("s3://{}/{prefix}", garage.bucket));
    c.set("CLONE_TARGET_TIME", &target);
    c.start();
    c.wait_ready(1);
    assert_eq!(
        c.psql("select string_agg(id::text, ',' order by id) from marker"),
        "2,3,20",
        "the clone holds what was committed before the target, from the oldest kept backup on"
    );
    c.stop_cleanly(Duration::from_secs(60));
}

/// `CLONE_METHOD=CLONE_WITH_BASEBACKUP` from a running source: the clone
/// holds the source's data and runs as its own primary on a new timeline.
#[test]
fn clone_with_basebackup() {
    require_root();
    let dir = test_dir("restore-basebackup");
    let mut src = Node::new(&dir.path().join("src"));
    src.start();
    src.wait_ready(1);
    src.psql("create table marker (id int primary key)");
    src.psql("insert into marker values (1), (2)");
    let mut c = Node::new(&dir.path().join("clone"));
    c.set("SCOPE", "clone");
    c.set("CLONE_METHOD", "CLONE_WITH_BASEBACKUP");
    c.set("CLONE_SCOPE", "source");
    c.set("CLONE_HOST", "127.0.0.1");
    c.set("CLONE_PORT", &src.pg_port.to_string());
    c.set("CLONE_USER", "standby");
    c.set("CLONE_PASSWORD", &src.stored_password("standby"));
    c.start();
    c.wait_ready(1);
    assert_eq!(c.psql("select string_agg(id::text, ',' order by id) from marker"), "1,2", "the source's data");
    assert_eq!(c.psql("select pg_is_in_recovery()"), "f", "the clone is a primary");
    let tl: u32 = c.psql("select timeline_id from pg_control_checkpoint()").parse().unwrap();
    assert!(tl >= 2, "the clone runs on a new timeline ({tl})");
    c.psql("insert into marker values (3)");
    assert_eq!(src.psql("select count(*) from marker"), "2", "the source is untouched");
    c.stop_cleanly(Duration::from_secs(60));
    src.stop_cleanly(Duration::from_secs(60));
}

/// A new replica of an HA cluster with a base backup in the bucket is
/// restored from S3 (then the archive, then streaming), not copied from
/// the leader with pg_basebackup.
#[test]
fn replica_from_s3() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("replica-s3");
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = cluster::Cluster::new("replica-s3", etcd, 2, |_| eps.clone());
    for n in &mut c.nodes {
        for (k, v) in garage.env() {
            if k.starts_with("AWS_") {
                n.set(&k, &v);
            }
        }
        n.set("WALG_S3_PREFIX", &format!("s3://{}/{prefix}", garage.bucket));
        n.set("BACKUP_SCHEDULE", "0 0 1 1 *");
        // The WAL since the backup is counted in LSN terms, as Spilo does:
        // the two segment switches below alone make about 32 MB, a third of
        // this small database, which would be over Spilo's default 30%.
        n.set("WALE_BACKUP_THRESHOLD_PERCENTAGE", "80");
    }
    c.nodes[0].start();
    let leader = c.wait_leader(Duration::from_secs(90), None);
    assert_eq!(leader, "n1");
    c.nodes[0].wait_log("base backup complete", 1, Duration::from_secs(120));
    pgbench_init(&c.nodes[0], 5);
    c.nodes[0].psql("create table marker (id int primary key, note text)");
    let (st, out, err) = c.nodes[0].run(&["backup-push"]);
    assert!(st.success(), "backup-push: {st}\n{out}\n{err}");
    // Written after the backup: comes through the archive or the stream.
    c.nodes[0].psql("insert into marker values (1, 'after the backup')");
    archive_now(&c.nodes[0]);
    c.nodes[0].psql("insert into marker values (2, 'after the archive')");

    c.nodes[1].start();
    c.wait_streaming("n2", Duration::from_secs(120));
    let log = c.nodes[1].log_text();
    assert!(log.contains("replica created from the base backup in S3"), "n2 did not restore from S3:\n{log}");
    assert!(!log.contains("replica created with pg_basebackup"), "n2 also ran pg_basebackup:\n{log}");
    wait_for("n2 to have both rows", Duration::from_secs(60), || {
        (cluster::try_sql(&c.nodes[1], "select count(*) from marker").as_deref() == Some("2")).then_some(())
    });
    assert_eq!(
        cluster::try_sql(&c.nodes[1], "select count(*) from pgbench_accounts").as_deref(),
        Some("500000"),
        "the replica holds the leader's data"
    );
    for n in &mut c.nodes {
        n.stop_cleanly(Duration::from_secs(30));
    }
}

fn http(method: &str, port: u16, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = cmd.arg(format!("http://127.0.0.1:{port}{path}")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The standby cluster's nodes use the source's role passwords (its
/// roles are the source's: the copy is read-only).
fn standby_cluster(name: &str, src: &Node, n: usize) -> cluster::Cluster {
    let etcd = testbed::shared_etcd();
    let eps = etcd.endpoints.join(",");
    let mut c = cluster::Cluster::new(name, etcd, n, |_| eps.clone());
    for node in &mut c.nodes {
        node.set("PGPASSWORD_SUPERUSER", &src.stored_password("postgres"));
        node.set("PGPASSWORD_STANDBY", &src.stored_password("standby"));
        node.set("PGPASSWORD_ADMIN", &src.stored_password("admin"));
    }
    c
}

fn wait_standby_leader(c: &cluster::Cluster, name: &str) {
    let port = c.api_port(name);
    wait_for(&format!("{name} as standby leader"), Duration::from_secs(120), || {
        (c.leader_key().as_deref() == Some(name) && http("GET", port, "/standby-leader", None).0 == 200).then_some(())
    });
}

/// A standby cluster streaming from another cluster's primary
/// (`STANDBY_HOST`): its leader holds the leader key as a standby
/// (`/standby-leader` 200, `/primary` and `/replica` 503, role
/// `standby_leader`), its replica cascades from it, and removing
/// `standby_cluster` with `PATCH /config` promotes it.
#[test]
fn standby_cluster_streams_then_promotes() {
    require_root();
    let dir = test_dir("standby-stream");
    let mut src = Node::new(&dir.path().join("src"));
    src.start();
    src.wait_ready(1);
    src.psql("create table marker (id int primary key)");
    src.psql("insert into marker values (1)");

    let mut c = standby_cluster("standby-stream", &src, 2);
    for n in &mut c.nodes {
        n.set("STANDBY_HOST", "127.0.0.1");
        n.set("STANDBY_PORT", &src.pg_port.to_string());
    }
    c.nodes[0].start();
    wait_standby_leader(&c, "n1");
    let p1 = c.api_port("n1");
    assert_eq!(http("GET", p1, "/primary", None).0, 503, "phase 1: a standby leader is not a primary");
    assert_eq!(http("GET", p1, "/replica", None).0, 503, "phase 1: nor a replica for load balancing");
    assert_eq!(http("GET", p1, "/leader", None).0, 200, "phase 1: it holds the leader key");
    let member = c.etcd.etcdctl(&["get", "--print-value-only", &format!("/service/{}/members/n1", c.scope)]);
    assert!(String::from_utf8_lossy(&member.stdout).contains(r#""role":"standby_leader""#), "phase 1: member key");
    assert_eq!(cluster::try_sql(&c.nodes[0], "select pg_is_in_recovery()").as_deref(), Some("t"));
    wait_for("phase 1: the source's rows on n1", Duration::from_secs(30), || {
        (cluster::try_sql(&c.nodes[0], "select count(*) from marker").as_deref() == Some("1")).then_some(())
    });

    // Phase 2: a replica cascades from the standby leader.
    c.nodes[1].start();
    c.wait_streaming("n2", Duration::from_secs(120));
    let sender = cluster::try_sql(&c.nodes[1], "select sender_port from pg_stat_wal_receiver");
    assert_eq!(sender, Some(c.nodes[0].pg_port.to_string()), "phase 2: n2 streams from the standby leader");
    src.psql("insert into marker values (2)");
    wait_for("phase 2: the source's new row on n2", Duration::from_secs(30), || {
        (cluster::try_sql(&c.nodes[1], "select count(*) from marker").as_deref() == Some("2")).then_some(())
    });

    // Phase 3: PATCH /config removes standby_cluster: n1 promotes, n2 follows it.
    let (code, body) = http("PATCH", p1, "/config", Some(r#"{"standby_cluster":null}"#));
    assert_eq!(code, 200, "phase 3: PATCH /config: {body}");
    let leader = c.wait_leader(Duration::from_secs(60), None);
    assert_eq!(leader, "n1", "phase 3: the standby leader promoted");
    // The API follows postgres by up to one HA round.
    wait_for("phase 3: /primary 200 on the promoted leader", Duration::from_secs(30), || {
        (http("GET", p1, "/primary", None).0 == 200).then_some(())
    });
    c.nodes[0].psql("insert into marker values (3)");
    wait_for("phase 3: n2 follows the promoted leader", Duration::from_secs(60), || {
        (cluster::try_sql(&c.nodes[1], "select count(*) from marker").as_deref() == Some("3")).then_some(())
    });
    assert_eq!(src.psql("select count(*) from marker"), "2", "phase 3: the source is untouched");
    for n in &mut c.nodes {
        n.stop_cleanly(Duration::from_secs(30));
    }
    src.stop_cleanly(Duration::from_secs(30));
}

/// A standby cluster from another cluster's archive only (`STANDBY_SCOPE`
/// and `STANDBY_WALG_S3_PREFIX`): bootstrapped from its latest backup,
/// then following the WAL the source archives.
#[test]
fn standby_cluster_from_the_archive() {
    require_root();
    let garage = shared_garage();
    let prefix = unique_prefix("standby-archive");
    let dir = test_dir("standby-archive");
    let mut src = storage_node(&dir.path().join("src"), garage, &prefix);
    loaded_source(&mut src, 1);
    let mut c = standby_cluster("standby-archive", &src, 1);
    for (k, v) in garage.env() {
        if k.starts_with("AWS_") {
            c.nodes[0].set(&k, &v);
        }
    }
    c.nodes[0].set("STANDBY_SCOPE", "source");
    c.nodes[0].set("STANDBY_WALG_S3_PREFIX", &format!("s3://{}/{prefix}", garage.bucket));
    c.nodes[0].start();
    wait_standby_leader(&c, "n1");
    assert!(c.nodes[0].log_text().contains("copied from the source's base backup"), "{}", c.nodes[0].log_text());
    src.psql("insert into marker (id, note) values (2, 'archived later')");
    archive_now(&src);
    wait_for("the archived row on the standby leader", Duration::from_secs(60), || {
        (cluster::try_sql(&c.nodes[0], "select count(*) from marker").as_deref() == Some("2")).then_some(())
    });
    c.nodes[0].stop_cleanly(Duration::from_secs(30));
    src.stop_cleanly(Duration::from_secs(30));
}
