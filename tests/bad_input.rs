//! Bad input: each case exits with its clear error and changes nothing on disk.

#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;

use std::time::Duration;

use node::{Node, require_root, snapshot, test_dir};

/// Runs the daemon to completion and returns (exit code, output).
fn run_daemon(n: &mut Node) -> (Option<i32>, String) {
    n.start();
    let st = n.wait_exit(Duration::from_secs(30));
    (st.code(), n.log_text())
}

/// The error line names `var`; nothing under `dir` changed.
fn assert_refused(n: &mut Node, var: &str, words: &str) {
    let before = snapshot(&n.dir.join("home"));
    let _ = std::fs::remove_file(&n.log);
    let (code, out) = run_daemon(n);
    assert_eq!(code, Some(78), "exit status for {var}: {out}");
    let line =
        out.lines().find(|l| l.contains("configuration error")).unwrap_or_else(|| panic!("no error line: {out}"));
    assert!(line.contains(var) && line.contains(words), "{var} / {words:?} not in {line:?}");
    let _ = std::fs::remove_file(&n.log);
    assert_eq!(before, snapshot(&n.dir.join("home")), "{var}: something changed on disk");
}

#[test]
fn foreign_pgdata_is_refused_and_untouched() {
    require_root();
    let dir = test_dir("foreign");
    let mut n = Node::new(dir.path());
    let data = n.data();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("family-photos.tar"), b"precious").unwrap();
    assert_refused(&mut n, "PGDATA", "not a PostgreSQL data directory");
    assert_eq!(std::fs::read(data.join("family-photos.tar")).unwrap(), b"precious");
}

/// A locale this system lacks stops tusk at start (exit 78, nothing
/// written), naming it: in INITDB_LOCALE for a fresh data directory, in an
/// existing data directory's lc_* settings otherwise.
#[test]
fn missing_locale_is_refused_at_start() {
    require_root();
    let dir = test_dir("locale");
    let mut n = Node::new(dir.path());
    n.set("INITDB_LOCALE", "xx_NOWHERE");
    assert_refused(&mut n, "INITDB_LOCALE", "xx_NOWHERE.UTF-8 is not installed");
    assert!(!n.data().exists());
    // Existing data made elsewhere with a locale this system lacks.
    n.env.remove("INITDB_LOCALE");
    n.start();
    n.wait_ready(1);
    n.stop_cleanly(Duration::from_secs(30));
    let conf = n.data().join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).unwrap().replace("lc_time = 'C.UTF-8'", "lc_time = 'xx_NOWHERE.UTF-8'");
    std::fs::write(&conf, text).unwrap();
    assert_refused(&mut n, "PGDATA", "lc_time is \"xx_NOWHERE.UTF-8\"");
}

#[test]
fn missing_major_version_lists_installed_ones() {
    require_root();
    let dir = test_dir("major");
    let mut n = Node::new(dir.path());
    n.set("PGVERSION", "14");
    assert_refused(&mut n, "PGVERSION", "installed: 15");
    assert!(!n.root().exists());
}

#[test]
fn unwritable_pgroot() {
    require_root();
    let dir = test_dir("unwritable");
    // As the postgres user, with PGHOME owned by root (0755): PGROOT cannot be created.
    let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    let mut n = Node::new(dir.path());
    n.as_user = Some((pg.uid.as_raw(), pg.gid.as_raw()));
    assert_refused(&mut n, "PGROOT", "cannot create");
    // An existing PGROOT the user cannot write.
    std::fs::create_dir_all(n.root()).unwrap();
    assert_refused(&mut n, "PGROOT", "not writable");
}

#[test]
fn garbage_values() {
    require_root();
    let dir = test_dir("garbage");
    for (var, value, words) in [
        ("PGPORT", "54x32", "not a TCP port"),
        ("PGVERSION", "banana", "not a PostgreSQL major version"),
        ("ETCD3_HOSTS", "'a:1','b:2", "cannot parse"),
        ("ETCD3_CACERT", "/nonexistent/ca.pem", "ETCD3_HOSTS"),
        ("TUSK_SHUTDOWN_TIMEOUT", "eventually", "not a duration"),
        ("SSL_CERTIFICATE_FILE", "/nonexistent/server.crt", "no private key"),
        ("PATRONI_SCOPE", "other", "contradicts"),
    ] {
        let mut n = Node::new(dir.path());
        n.set(var, value);
        if var == "PATRONI_SCOPE" {
            n.set("SCOPE", "superman");
        }
        let reported = if var == "PATRONI_SCOPE" {
            "SCOPE"
        } else if var == "SSL_CERTIFICATE_FILE" {
            "SSL_PRIVATE_KEY_FILE"
        } else {
            var
        };
        assert_refused(&mut n, reported, words);
        // `tusk config` agrees, on one line, with 78.
        let (st, _, err) = n.run(&["config"]);
        assert_eq!(st.code(), Some(78), "{var}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(reported), "{err}");
    }
    assert!(!dir.path().join("home/pgdata").exists());
}

/// HA mode over an etcd that authenticates nobody (plain http, no client
/// certificate, no user) would share generated passwords there: without
/// the superuser's and the replication role's passwords tusk refuses to
/// start, naming the variable. With them it starts, and Spilo's etcd v2
/// variables beside ETCD3_* are ignored with a warning.
#[test]
fn open_etcd_needs_the_passwords() {
    require_root();
    let dir = test_dir("openetcd");
    let mut n = Node::new(dir.path());
    n.set("SCOPE", "open").set("ETCD3_HOSTS", "127.0.0.1:9");
    assert_refused(&mut n, "PGPASSWORD_SUPERUSER", "does not authenticate its clients");
    n.set("PGPASSWORD_SUPERUSER", "su-pw");
    assert_refused(&mut n, "PGPASSWORD_STANDBY", "does not authenticate its clients");
    n.set("PATRONI_REPLICATION_PASSWORD", "rep-pw").set("ETCD_HOST", "127.0.0.1:2379");
    n.start();
    n.wait_log("ETCD_HOST is ignored", 1, Duration::from_secs(30));
    n.stop_cleanly(Duration::from_secs(30));
    let log = n.log_text();
    assert!(!log.contains("su-pw") && !log.contains("rep-pw"), "a password in the log:\n{log}");
}

#[test]
fn config_prints_json_without_secrets() {
    let dir = test_dir("config");
    let mut n = Node::new(dir.path());
    n.set("PGPASSWORD_SUPERUSER", "sup3r-secret").set("SCOPE", "superman");
    let (st, out, err) = n.run(&["config"]);
    assert_eq!(st.code(), Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["scope"], "superman");
    assert_eq!(v["postgres"]["port"], n.pg_port);
    assert_eq!(v["credentials"]["superuser"]["password"], "<redacted>");
    assert!(!out.contains("sup3r-secret"));
    assert!(v["etcd"].is_null(), "standalone");
}

/// A parameter postgres rejects: postgres cannot start; tusk says why (postgres's
/// own FATAL line) and exits 1 after a few attempts instead of looping forever.
#[test]
fn parameter_postgres_rejects_fails_the_container() {
    require_root();
    let dir = test_dir("badparam");
    let mut n = Node::new(dir.path());
    n.set("TUSK_PG_PARAMETERS", r#"{"shared_buffers":"lots"}"#);
    let (code, out) = run_daemon(&mut n);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(r#"invalid value for parameter "shared_buffers""#), "{out}");
    assert!(out.contains("postgres failed to start; giving up"), "{out}");
}
