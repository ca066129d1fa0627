//! The container image, end to end with podman: build it (scripts/build-image.sh),
//! run it standalone on a bind-mounted volume, write a row, stop it (SIGTERM must
//! end in exit code 0 well inside podman's 10 s), start it again on the same volume
//! and read the row back; `patronictl` (a symlink to tusk) inside it, on the
//! standalone container and on an HA container against the test bed's etcd.
//!
//! Needs root, podman and a reachable Debian mirror (scripts/podman-setup.sh
//! installs podman when missing).

#[path = "support/podman.rs"]
mod podman;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/testbed.rs"]
mod testbed;

use podman::{Container, Podman, is_root, script, text};
use ports::free_port;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TAG: &str = "localhost/tusk:test";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

#[test]
fn image_runs_postgres_and_stops_cleanly() {
    assert!(is_root(), "the image test needs root (rootful podman, debootstrap); CI runs as root");
    let pgversion = std::env::var("PGVERSION").unwrap_or_else(|_| "15".into());

    // Build (the previous build under our tag is removed once replaced).
    let podman = Podman::setup();
    let previous = podman.image_id(TAG);
    let t = Instant::now();
    let build = script(
        "build-image.sh",
        &[TAG],
        &[("CONTAINERS_CONF", &podman.conf), ("PGVERSION", &pgversion)],
        BUILD_TIMEOUT,
    );
    eprintln!("build-image.sh took {:?}", t.elapsed());
    let size_line = build
        .lines()
        .find(|l| l.starts_with("image size: "))
        .unwrap_or_else(|| panic!("build-image.sh reported no image size: {build}"));
    eprintln!("{size_line}");
    let size = podman.ok(&["image", "inspect", "--format", "{{.Size}}", TAG]);
    let size_mb = size.parse::<u64>().expect("image size") / 1_000_000;
    // LLVM JIT (WITH_JIT=true) adds ~160 MB.
    let limit_mb = if std::env::var("WITH_JIT").as_deref() == Ok("true") { 460 } else { 300 };
    assert!(size_mb > 0 && size_mb <= limit_mb, "image is {size_mb} MB, expected <= {limit_mb} MB");
    if let (Some(old), Some(new)) = (previous, podman.image_id(TAG))
        && old != new
    {
        let _ = podman.output(&["rmi", &old]);
    }

    // Run standalone (no ETCD3_* variables) on a fresh volume.
    let volume = tempfile::Builder::new().prefix("tusk-image-").tempdir().expect("tempdir");
    // Left as tempdir makes it: root-owned, mode 0700, like a private host
    // directory; tusk must give the mount point to the postgres user.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let ctr = Container { podman: podman.clone(), name: format!("tusk-image-test-{}-{nanos}", std::process::id()) };
    let (pg_port, api_port) = (free_port(), free_port());
    let t = Instant::now();
    podman.ok(&[
        "run",
        "-d",
        "--name",
        &ctr.name,
        "--network",
        "host",
        "-v",
        &format!("{}:/home/postgres/pgdata", volume.path().display()),
        "-e",
        &format!("PGPORT={pg_port}"),
        "-e",
        &format!("APIPORT={api_port}"),
        "-e",
        r#"TUSK_PG_PARAMETERS={"shared_buffers":"64MB"}"#,
        TAG,
    ]);
    let started = t.elapsed();
    let ready = ctr.wait_ready(pg_port, READY_TIMEOUT);
    eprintln!("podman run took {started:?}; postgres ready {:?} after run", started + ready);

    // tusk is PID 1.
    let cmdline = ctr.podman.ok(&["exec", &ctr.name, "cat", "/proc/1/cmdline"]);
    let argv0 = cmdline.split('\0').next().unwrap_or_default();
    assert!(argv0.ends_with("tusk"), "PID 1 is {cmdline:?}, not tusk");

    // The image's HEALTHCHECK (tusk healthcheck through the REST API).
    let t = Instant::now();
    loop {
        let out = podman.output(&["healthcheck", "run", &ctr.name]);
        if out.status.success() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "podman healthcheck run: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // patronictl is there, and says why a standalone node has no cluster.
    let out = podman.output(&["exec", &ctr.name, "patronictl", "version"]);
    assert!(out.status.success() && text(&out.stdout).starts_with("patronictl version "), "{}", text(&out.stderr));
    let out = podman.output(&["exec", &ctr.name, "patronictl", "list"]);
    assert_eq!(out.status.code(), Some(78), "patronictl list standalone: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ETCD3_HOSTS"), "{}", text(&out.stderr));

    let out = ctr.psql(pg_port, "create table image_test (v text); insert into image_test values ('kept')");
    assert!(out.status.success(), "create/insert: {}", text(&out.stderr));

    // SIGTERM: clean exit (0) well within the 10 s before podman's SIGKILL.
    let t = Instant::now();
    podman.ok(&["stop", "-t", "10", &ctr.name]);
    let stop = t.elapsed();
    let code = podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", &ctr.name]);
    eprintln!("podman stop took {stop:?}, exit code {code}");
    assert_eq!(code, "0", "exit code after podman stop");
    assert!(stop < Duration::from_secs(10), "stop took {stop:?}");

    // Same container, same volume: the row survived.
    let t = Instant::now();
    podman.ok(&["start", &ctr.name]);
    let ready = ctr.wait_ready(pg_port, READY_TIMEOUT);
    eprintln!("restart: ready {:?} after podman start (polling {ready:?})", t.elapsed());
    let out = ctr.psql(pg_port, "select v from image_test");
    assert!(out.status.success(), "select: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "kept");

    let t = Instant::now();
    podman.ok(&["stop", "-t", "10", &ctr.name]);
    let code = podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", &ctr.name]);
    eprintln!("second stop took {:?}, exit code {code}", t.elapsed());
    assert_eq!(code, "0", "exit code after the second podman stop");
    drop(ctr);

    patronictl_in_ha(&podman);
    locales(&podman);
}

/// An HA container (one member) on the test bed's etcd with mutual TLS:
/// `podman exec <c> patronictl list` shows it, from the container's own
/// environment, with no configuration file.
fn patronictl_in_ha(podman: &Podman) {
    let etcd = testbed::shared_etcd();
    let volume = tempfile::Builder::new().prefix("tusk-image-ha-").tempdir().expect("tempdir");
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let ctr = Container { podman: podman.clone(), name: format!("tusk-image-ha-{}-{nanos}", std::process::id()) };
    let scope = format!("image-{}", std::process::id());
    let (pg_port, api_port) = (free_port(), free_port());
    let certs = etcd.dir.display().to_string();
    let env = [
        format!("SCOPE={scope}"),
        "PATRONI_NAME=pg1".to_owned(),
        format!("PGPORT={pg_port}"),
        format!("APIPORT={api_port}"),
        format!("PG_CONNECT_ADDRESS=127.0.0.1:{pg_port}"),
        format!("RESTAPI_CONNECT_ADDRESS=127.0.0.1:{api_port}"),
        format!("ETCD3_HOSTS={}", etcd.endpoints.join(",")),
        "ETCD3_PROTOCOL=https".to_owned(),
        format!("ETCD3_CACERT={}", etcd.ca.display()),
        format!("ETCD3_CERT={}", etcd.cert.display()),
        format!("ETCD3_KEY={}", etcd.key.display()),
        r#"TUSK_BOOTSTRAP_DCS={"ttl":10,"loop_wait":2,"retry_timeout":3}"#.to_owned(),
        r#"TUSK_PG_PARAMETERS={"shared_buffers":"64MB"}"#.to_owned(),
    ];
    let mut args: Vec<String> = ["run", "-d", "--name", &ctr.name, "--network", "host"].map(String::from).to_vec();
    args.extend(["-v".into(), format!("{}:/home/postgres/pgdata", volume.path().display())]);
    args.extend(["-v".into(), format!("{certs}:{certs}:ro")]);
    for e in &env {
        args.extend(["-e".into(), e.clone()]);
    }
    args.push(TAG.into());
    podman.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    ctr.wait_ready(pg_port, READY_TIMEOUT);
    let t0 = Instant::now();
    let table = loop {
        let out = podman.output(&["exec", &ctr.name, "patronictl", "list"]);
        let table = text(&out.stdout);
        if out.status.success() && table.contains("| Leader | running |") {
            break table;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "patronictl list in the container: {table}{}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("podman exec {} patronictl list:\n{table}", ctr.name);
    assert!(table.starts_with(&format!("+ Cluster: {scope} (")), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with(&format!("| pg1    | 127.0.0.1:{pg_port} | Leader | running |"))),
        "{table}"
    );
    let json = podman.ok(&["exec", &ctr.name, "patronictl", "list", "-f", "json"]);
    let members: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(members.len(), 1, "{json}");
    assert_eq!((members[0]["Member"].as_str(), members[0]["Role"].as_str()), (Some("pg1"), Some("Leader")), "{json}");
    podman.ok(&["stop", "-t", "10", &ctr.name]);
    assert_eq!(podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", &ctr.name]), "0");
}

/// The image's locales: a data directory initialised with `en_US.UTF-8`
/// outside tusk (as most Spilo and Patroni clusters were) comes up and
/// serves, and so does a clone of it in a second container; a locale the
/// image lacks stops tusk at start with exit 78.
fn locales(podman: &Podman) {
    let volume = tempfile::Builder::new().prefix("tusk-image-locale-").tempdir().expect("tempdir");
    let mount = format!("{}:/home/postgres/pgdata", volume.path().display());
    podman.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        "-v",
        &mount,
        TAG,
        "-c",
        "install -d -o postgres -g postgres /home/postgres/pgdata/pgroot && \
         setpriv --reuid=postgres --regid=postgres --init-groups \
         initdb --locale=en_US.UTF-8 -D /home/postgres/pgdata/pgroot/data >/dev/null",
    ]);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let ctr = Container { podman: podman.clone(), name: format!("tusk-image-locale-{}-{nanos}", std::process::id()) };
    let (pg_port, api_port) = (free_port(), free_port());
    podman.ok(&[
        "run",
        "-d",
        "--name",
        &ctr.name,
        "--network",
        "host",
        "-v",
        &mount,
        "-e",
        &format!("PGPORT={pg_port}"),
        "-e",
        &format!("APIPORT={api_port}"),
        TAG,
    ]);
    ctr.wait_ready(pg_port, READY_TIMEOUT);
    let out = ctr.psql(
        pg_port,
        "select datcollate || ' ' || current_setting('lc_messages') from pg_database where datname = 'postgres'",
    );
    assert!(out.status.success(), "en_US data: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "en_US.UTF-8 en_US.UTF-8");
    // en_US sorts case-insensitively first ('a' before 'B'); C would not.
    let out = ctr.psql(pg_port, "select ('a' < 'B')::text");
    assert!(out.status.success(), "collation at work: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "true", "en_US.UTF-8 collation");

    // A clone of that cluster (pg_basebackup into a second container): it
    // comes up with the en_US collation too.
    let out = ctr.psql(
        pg_port,
        "create table marker (v text); insert into marker values ('en_US source'); \
         do $$ begin if not exists (select from pg_roles where rolname = 'standby') then \
         create role standby login replication; end if; end $$; alter role standby password 'clone-pw'",
    );
    assert!(out.status.success(), "prepare the source: {}", text(&out.stderr));
    let clone_volume = tempfile::Builder::new().prefix("tusk-image-clone-").tempdir().expect("tempdir");
    let clone = Container { podman: podman.clone(), name: format!("tusk-image-clone-{}-{nanos}", std::process::id()) };
    let (clone_pg, clone_api) = (free_port(), free_port());
    podman.ok(&[
        "run",
        "-d",
        "--name",
        &clone.name,
        "--network",
        "host",
        "-v",
        &format!("{}:/home/postgres/pgdata", clone_volume.path().display()),
        "-e",
        &format!("PGPORT={clone_pg}"),
        "-e",
        &format!("APIPORT={clone_api}"),
        "-e",
        "SCOPE=enclone",
        "-e",
        "CLONE_METHOD=CLONE_WITH_BASEBACKUP",
        "-e",
        "CLONE_SCOPE=en",
        "-e",
        "CLONE_HOST=127.0.0.1",
        "-e",
        &format!("CLONE_PORT={pg_port}"),
        "-e",
        "CLONE_USER=standby",
        "-e",
        "CLONE_PASSWORD=clone-pw",
        TAG,
    ]);
    // Not the first answer: the clone's recovery run answers too, then
    // stops; tusk says when postgres serves as the clone's primary.
    let t0 = Instant::now();
    let logs = |name: &str| {
        let out = podman.output(&["logs", name]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    };
    while !logs(&clone.name).contains("PostgreSQL is ready") {
        assert!(t0.elapsed() < READY_TIMEOUT, "the clone never became ready");
        assert_eq!(podman.state(&clone.name), "running", "the clone container stopped");
        std::thread::sleep(Duration::from_millis(250));
    }
    clone.wait_ready(clone_pg, READY_TIMEOUT);
    let out = clone.psql(
        clone_pg,
        "select datcollate || ' ' || ('a' < 'B')::text || ' ' || (select v from marker) || ' ' || \
         pg_is_in_recovery()::text from pg_database where datname = 'postgres'",
    );
    assert!(out.status.success(), "the clone: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "en_US.UTF-8 true en_US source false", "the clone of an en_US cluster");
    podman.ok(&["stop", "-t", "10", &clone.name]);
    assert_eq!(podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", &clone.name]), "0");
    drop(clone);
    podman.ok(&["stop", "-t", "10", &ctr.name]);
    assert_eq!(podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", &ctr.name]), "0");
    drop(ctr);

    // A locale the image lacks: refused at start, naming it and the variable.
    let fresh = tempfile::Builder::new().prefix("tusk-image-nolocale-").tempdir().expect("tempdir");
    let out = podman.output(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/home/postgres/pgdata", fresh.path().display()),
        "-e",
        "INITDB_LOCALE=de_DE",
        TAG,
    ]);
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(78), "INITDB_LOCALE=de_DE: {log}");
    assert!(log.contains("INITDB_LOCALE") && log.contains("de_DE.UTF-8"), "the error names both: {log}");
}
