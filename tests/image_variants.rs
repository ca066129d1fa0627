//! Image variants and ways to run the image, each a smoke test (start on a
//! fresh volume, write a row, `podman stop` exits 0 within the grace):
//! - PostgreSQL 17 on Debian 13 (trixie), chosen by build arguments
//!   (SUITE=trixie PGVERSION=17 scripts/build-image.sh);
//! - the default image (PostgreSQL 15, Debian 12) with a read-only root
//!   filesystem: only the data volume and tmpfs on /run and /tmp are writable;
//! - the default image under rootless podman (a non-root user with subuid/
//!   subgid ranges, the default user namespace), as Fedora CoreOS users run it.
//!
//! Needs root (it makes the rootless user), podman and a reachable Debian
//! mirror (scripts/podman-setup.sh, scripts/rootless-setup.sh).

#[path = "support/podman.rs"]
mod podman;
#[path = "support/ports.rs"]
mod ports;

use podman::{Container, Podman, is_root, text};
use ports::free_port;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The default image; the compose test uses the same tag, and
/// build-image.sh reuses an image built from the same binary and inputs.
const PG15: &str = "localhost/tusk:compose";
const PG17: &str = "localhost/tusk:pg17";
const READY: Duration = Duration::from_secs(60);

fn podman() -> &'static Podman {
    static P: OnceLock<Podman> = OnceLock::new();
    P.get_or_init(|| {
        assert!(is_root(), "the image tests need root (rootful podman, debootstrap, useradd); CI runs as root");
        Podman::setup()
    })
}

/// The default image, built once per test binary (or reused).
fn pg15() -> &'static str {
    static SIZE: OnceLock<u64> = OnceLock::new();
    let size = *SIZE.get_or_init(|| podman().build_tusk(PG15, &[]));
    eprintln!("PostgreSQL 15 / Debian 12 image: {size} MB");
    assert!(size <= 250, "the default image is {size} MB, more than 250 MB");
    PG15
}

/// Start on a fresh volume, write a row, stop (exit 0 within the grace),
/// start again and read the row, stop again. `extra` goes before the image.
fn smoke(podman: &Podman, image: &str, version: &str, volume: &str, extra: &[&str]) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let ctr = Container { podman: podman.clone(), name: format!("tusk-variant-{}-{nanos}", std::process::id()) };
    let (pg_port, api_port) = (free_port(), free_port());
    let mut args: Vec<String> = ["run", "-d", "--name", &ctr.name, "--network", "host"].map(String::from).to_vec();
    args.extend(["-v".into(), format!("{volume}:/home/postgres/pgdata")]);
    args.extend(["-e".into(), format!("PGPORT={pg_port}"), "-e".into(), format!("APIPORT={api_port}")]);
    args.extend(["-e".into(), r#"TUSK_PG_PARAMETERS={"shared_buffers":"64MB"}"#.into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(image.into());
    let t = Instant::now();
    podman.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let run = t.elapsed();
    let ready = run + ctr.wait_ready(pg_port, READY);
    let out = ctr.psql(
        pg_port,
        "create table smoke (v text); insert into smoke values ('kept'); \
         select current_setting('server_version_num')",
    );
    assert!(out.status.success(), "write: {}", text(&out.stderr));
    let v = text(&out.stdout);
    assert!(v.lines().last().is_some_and(|l| l.starts_with(version)), "server_version_num {v:?}, wanted {version}");
    let stop = ctr.stop_clean();

    let t = Instant::now();
    podman.ok(&["start", &ctr.name]);
    let again = t.elapsed() + ctr.wait_ready(pg_port, READY);
    let out = ctr.psql(pg_port, "select v from smoke");
    assert_eq!(text(&out.stdout), "kept", "the row after a restart: {}", text(&out.stderr));
    let stop2 = ctr.stop_clean();
    eprintln!(
        "{image} {extra:?}: podman run {run:?}, ready {ready:?} after run; stop {stop:?} (exit 0); \
         start again: ready {again:?}; stop {stop2:?} (exit 0)"
    );
}

#[test]
fn pg17_on_trixie() {
    let podman = podman();
    let t = Instant::now();
    let size = podman.build_tusk(PG17, &[("SUITE", "trixie"), ("PGVERSION", "17")]);
    eprintln!("PostgreSQL 17 / Debian 13 image: {size} MB (build {:?}, base included when missing)", t.elapsed());
    assert!(size <= 300, "the PostgreSQL 17 image is {size} MB");
    let out = podman.ok(&["run", "--rm", "--entrypoint", "cat", PG17, "/etc/debian_version"]);
    assert!(out.starts_with("13."), "Debian {out}, not 13");
    let volume = tempfile::Builder::new().prefix("tusk-pg17-").tempdir().expect("tempdir");
    smoke(podman, PG17, "17", &volume.path().display().to_string(), &[]);
}

#[test]
fn read_only_root_filesystem() {
    let podman = podman();
    let image = pg15();
    let volume = tempfile::Builder::new().prefix("tusk-ro-").tempdir().expect("tempdir");
    // Exactly these writable: the volume, /run and /tmp (not podman's
    // default extra tmpfs on /var/tmp).
    let extra = ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/run", "--tmpfs", "/tmp"];
    smoke(podman, image, "15", &volume.path().display().to_string(), &extra);
}

#[test]
fn rootless_podman() {
    let root = podman();
    let image = pg15();
    let rootless = root.rootless();
    let r = rootless.rootless.as_ref().expect("rootless");
    // The image moves to the user's storage by podman save / load, unless
    // the user already has this very image.
    let id = root.ok(&["image", "inspect", "--format", "{{.Id}}", image]);
    let theirs = rootless.output(&["image", "inspect", "--format", "{{.Id}}", image]);
    if !theirs.status.success() || text(&theirs.stdout) != id {
        let t = Instant::now();
        let tar = tempfile::Builder::new().prefix("tusk-rootless-").suffix(".tar").tempfile_in("/var/tmp").unwrap();
        root.ok(&["save", "-o", &tar.path().display().to_string(), image]);
        std::fs::set_permissions(tar.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        rootless.ok(&["load", "-i", &tar.path().display().to_string()]);
        eprintln!("podman save | load into {}'s storage: {:?}", r.user, t.elapsed());
    }
    let driver = rootless.ok(&["info", "--format", "{{.Store.GraphDriverName}}"]);
    // The volume: a directory the user owns (inside, the container's root).
    let volume = format!("{}/tusk-rootless-{}", r.home, std::process::id());
    let out = podman::bounded(rootless.command("mkdir").args(["-p", &volume]), Duration::from_secs(10));
    assert!(out.status.success(), "mkdir {volume}: {}", text(&out.stderr));
    struct Cleanup<'a>(&'a Podman, String);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            // Files of the container's postgres belong to a subordinate uid.
            let _ = self.0.output(&["unshare", "rm", "-rf", &self.1]);
        }
    }
    let _cleanup = Cleanup(&rootless, volume.clone());
    eprintln!("rootless as {} (storage driver {driver})", r.user);
    smoke(&rootless, image, "15", &volume, &[]);
}
