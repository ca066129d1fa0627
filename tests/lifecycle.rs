//! Lifecycle of a standalone node: real binary, real PostgreSQL.

#[path = "support/node.rs"]
mod node;
#[path = "support/ports.rs"]
mod ports;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use node::{Node, require_root, test_dir};

/// As root: bootstrap, write, SIGTERM, restart on the same data, read back;
/// TLS and the generated password over TCP; SIGHUP reloads.
#[test]
fn root_bootstrap_write_stop_restart_read() {
    require_root();
    let dir = test_dir("root");
    let mut n = Node::new(dir.path());
    // A volume mounted with the host's root owner and mode 0700: tusk gives
    // it to postgres instead of letting initdb fail on "Permission denied".
    std::fs::set_permissions(n.home(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    n.start();
    n.wait_ready(1);
    n.psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept across restarts')");

    // Ownership and modes: PGROOT and PGDATA belong to postgres, PGDATA is 0700.
    use std::os::unix::fs::MetadataExt;
    let pg_uid = nix::unistd::User::from_name("postgres").unwrap().unwrap().uid.as_raw();
    for p in [n.home(), n.root(), n.data()] {
        assert_eq!(std::fs::metadata(&p).unwrap().uid(), pg_uid, "{}", p.display());
    }
    assert_eq!(std::fs::metadata(n.data()).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(n.root().join("pgpass")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(n.psql("SHOW data_checksums"), "on");
    assert_eq!(n.psql("SHOW restart_after_crash"), "off");
    assert_eq!(n.psql("SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'postgres'"), "UTF8");
    assert_eq!(
        n.psql("SELECT string_agg(rolname || ':' || rolreplication || rolcreatedb, ',' ORDER BY rolname) FROM pg_roles WHERE rolname IN ('admin','standby')"),
        "admin:falsetrue,standby:truefalse"
    );

    // The generated password works over TLS; plain TCP is refused.
    let pw = n.stored_password("postgres");
    let tls = format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require", n.pg_port);
    assert_eq!(n.psql_tcp(&tls, &pw, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").unwrap(), "t");
    assert!(n.psql_tcp(&tls, "wrong", "SELECT 1").unwrap_err().contains("password authentication failed"));
    let plain = format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable", n.pg_port);
    // loopback allows password auth without TLS, as in Spilo; other addresses need TLS
    assert!(n.psql_tcp(&plain, &pw, "SELECT 1").is_ok());
    let standby_pw = n.stored_password("standby");
    let repl = format!("host=127.0.0.1 port={} user=standby dbname=postgres sslmode=require", n.pg_port);
    assert!(n.psql_tcp(&repl, &standby_pw, "SELECT 1").is_ok());
    // The passwords are never logged.
    let log = n.log_text();
    assert!(!log.contains(&pw) && !log.contains(&standby_pw), "a password leaked into the log");

    // SIGHUP: reload, still serving.
    n.signal(Signal::SIGHUP);
    n.wait_log("postgres reloaded", 1, Duration::from_secs(10));
    n.wait_log("received SIGHUP, reloading configuration files", 1, Duration::from_secs(10));
    assert_eq!(n.psql("SELECT count(*) FROM t"), "1");

    // SIGTERM: clean stop, exit 0, within the budget.
    let t0 = Instant::now();
    n.signal(Signal::SIGTERM);
    let st = n.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "log:\n{}", n.log_text());
    assert!(t0.elapsed() < Duration::from_secs(8), "stop took {:?}", t0.elapsed());
    assert_eq!(n.cluster_state(), "shut down");
    assert!(n.log_text().contains("checkpoint before shutdown done"));

    // Restart on the same data: same passwords, the row is there.
    n.start();
    n.wait_ready(2);
    assert_eq!(n.psql("SELECT v FROM t"), "kept across restarts");
    assert_eq!(n.stored_password("postgres"), pw, "passwords are kept, not regenerated");
    assert_eq!(n.log_text().matches("running initdb").count(), 1, "no second initdb");
    n.signal(Signal::SIGINT);
    assert_eq!(n.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// Started as the postgres user: runs as that user, no switching.
#[test]
fn postgres_user_bootstrap_write_stop_restart_read() {
    require_root();
    let dir = test_dir("pguser");
    let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    let mut n = Node::new(dir.path());
    for d in [dir.path().to_path_buf(), n.home()] {
        std::os::unix::fs::chown(d, Some(pg.uid.as_raw()), Some(pg.gid.as_raw())).unwrap();
    }
    n.as_user = Some((pg.uid.as_raw(), pg.gid.as_raw()));
    n.set("PGPASSWORD_SUPERUSER", "given-superuser-pw");
    n.start();
    n.wait_ready(1);
    n.psql("CREATE TABLE t AS SELECT 42 AS v");
    // A password given in the environment is used as it is.
    let tls = format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require", n.pg_port);
    assert_eq!(n.psql_tcp(&tls, "given-superuser-pw", "SELECT v FROM t").unwrap(), "42");
    let pgpass = std::fs::read_to_string(n.root().join("pgpass")).unwrap();
    assert!(!pgpass.contains(":postgres:"), "given passwords are not stored");
    n.signal(Signal::SIGTERM);
    assert_eq!(n.wait_exit(Duration::from_secs(10)).code(), Some(0));
    n.start();
    n.wait_ready(2);
    assert_eq!(n.psql("SELECT v FROM t"), "42");
    n.signal(Signal::SIGTERM);
    assert_eq!(n.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// SIGKILL of the postmaster: the supervisor notices, cleans up the orphaned
/// backends, restarts postgres (crash recovery), and says why.
#[test]
fn postmaster_crash_is_recovered() {
    require_root();
    let dir = test_dir("crash");
    let mut n = Node::new(dir.path());
    n.start();
    n.wait_ready(1);
    n.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS v");
    for round in 1..=2 {
        let pm = n.postmaster_pid().expect("postmaster.pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pm), Signal::SIGKILL).unwrap();
        n.wait_ready(round + 1);
        assert_ne!(n.postmaster_pid(), Some(pm));
        assert_eq!(n.psql("SELECT count(*) FROM t"), "1000");
    }
    let log = n.log_text();
    assert!(log.contains("postgres exited unexpectedly"), "{log}");
    assert!(log.contains("signal: 9"), "the log says why: {log}");
    // SIGQUIT: immediate shutdown, exit 0; the next start recovers.
    n.signal(Signal::SIGQUIT);
    assert_eq!(n.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert_ne!(n.cluster_state(), "shut down");
    n.start();
    n.wait_ready(4);
    assert_eq!(n.psql("SELECT count(*) FROM t"), "1000");
    // Two SIGTERMs: the second escalates to immediate. Dirty buffers make
    // the checkpoint before the fast shutdown take long enough for the
    // second signal to land in the middle of the stop.
    n.psql("INSERT INTO t SELECT generate_series(1001, 300000)");
    let before = n.log_text().len();
    n.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(5));
    n.signal(Signal::SIGTERM);
    assert_eq!(n.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let stop_log = n.log_text()[before..].to_owned();
    assert!(
        stop_log.contains("second stop request: immediate shutdown")
            || stop_log.lines().any(|l| l.contains("stopping postgres") && l.contains("immediate")),
        "the second SIGTERM did not escalate:\n{stop_log}"
    );
    // Immediate shutdown skips the shutdown checkpoint: the control file says so.
    assert_eq!(n.cluster_state(), "in production", "second SIGTERM:\n{stop_log}");
}

/// sd_notify: READY=1 once postgres accepts connections, STOPPING=1 on stop;
/// NOTIFY_SOCKET and secrets never reach postgres; JSON logs on request.
#[test]
fn notify_json_logs_and_child_environment() {
    require_root();
    let dir = test_dir("notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut n = Node::new(dir.path());
    n.set("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .set("TUSK_LOG_FORMAT", "json")
        .set("PGPASSWORD_ADMIN", "admin-secret-value")
        .set("AWS_SECRET_ACCESS_KEY", "aws-secret-value");
    n.start();
    let mut msgs = Vec::new();
    let mut buf = [0u8; 512];
    while !msgs.iter().any(|m: &String| m.contains("READY=1")) {
        let len = sock.recv(&mut buf).expect("a notification before the timeout");
        msgs.push(String::from_utf8_lossy(&buf[..len]).into_owned());
    }
    assert!(msgs.iter().any(|m| m.starts_with("STATUS=")), "{msgs:?}");
    n.wait_ready(1);
    // Every log line is one JSON object, postgres's included.
    let log = n.log_text();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some() && v.get("message").is_some(), "{line}");
    }
    assert!(log.contains(r#""target":"postgres""#));
    // The postmaster's environment is a whitelist.
    let pm = n.postmaster_pid().unwrap();
    let environ = std::fs::read(format!("/proc/{pm}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    for secret in ["NOTIFY_SOCKET", "aws-secret-value", "admin-secret-value", "PGPASSWORD"] {
        assert!(!environ.contains(secret), "{secret} reached postgres");
    }
    assert!(!log.contains("admin-secret-value"));
    n.signal(Signal::SIGTERM);
    let len = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..len]).contains("STOPPING=1"));
    assert_eq!(n.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// A stop at any moment of start-up is a clean stop (exit 0) that leaves
/// the data shut down, including a stop that reaches the postmaster before
/// it has installed its signal handlers (it dies of the fast-shutdown
/// signal itself, having done nothing). The stops land at staggered delays
/// after tusk starts, across the fork of the postmaster.
#[test]
fn stop_during_start_up_is_clean() {
    require_root();
    let dir = test_dir("earlystop");
    let mut n = Node::new(dir.path());
    n.start();
    n.wait_ready(1);
    n.stop_cleanly(Duration::from_secs(10));
    // When the postmaster is forked, measured on the running machine.
    let t0 = Instant::now();
    n.start();
    n.wait_log("postmaster started", 2, Duration::from_secs(30));
    let fork = t0.elapsed();
    n.stop_cleanly(Duration::from_secs(10));
    let mut unstarted = 0;
    for i in 0..24u32 {
        n.start();
        // From 10 ms before the fork to 13 ms after it, in 1 ms steps.
        std::thread::sleep((fork + Duration::from_millis(i.into())).saturating_sub(Duration::from_millis(10)));
        n.stop_cleanly(Duration::from_secs(10));
        let state = n.cluster_state();
        assert!(state == "shut down", "round {i}: {state}\n{}", n.log_text());
        unstarted = n.log_text().matches("stopped before it had started").count();
    }
    eprintln!("postmaster forked {fork:?} after tusk started; {unstarted} stops came before its handlers");
    // The data is intact: postgres starts and serves.
    n.start();
    n.wait_ready_since_start();
    assert_eq!(n.psql("SELECT 1"), "1");
    n.stop_cleanly(Duration::from_secs(10));
}
