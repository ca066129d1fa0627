//! PostgreSQL on this node: which binaries, which data directory, which OS
//! user, and the files and processes around them.
//!
//! [`preflight`] only reads; everything that writes comes after it.

pub mod atomic;
pub mod files;
pub mod passwords;
pub mod pidfile;
pub mod process;
pub mod replication;
pub mod slots;
pub mod sql;
pub mod stop;
pub mod timeline;
pub mod tls;
pub mod wal;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

use crate::config::{ConfigError, PostgresConfig};

/// Where Debian (and the image) install PostgreSQL majors.
pub const DEFAULT_LIB_ROOT: &str = "/usr/lib/postgresql";

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

impl PgError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> PgError {
        PgError::Io { what: what.into(), source }
    }
}

/// The binaries of one major version.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub version: u32,
    pub dir: PathBuf,
}

impl Binaries {
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The loadable modules' directory (`pg_config --pkglibdir` on Debian
    /// and in the image: `<major>/lib` beside `<major>/bin`).
    pub fn libdir(&self) -> PathBuf {
        self.dir.parent().map_or_else(|| self.dir.join("../lib"), |p| p.join("lib"))
    }
}

/// What the data directory holds before tusk touches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirState {
    /// Missing or empty: bootstrap with initdb.
    Fresh,
    /// A PostgreSQL data directory of this major version.
    Existing,
}

/// The outcome of [`preflight`].
#[derive(Debug, Clone)]
pub struct Layout {
    pub binaries: Binaries,
    pub state: DataDirState,
}

/// The major versions installed under `lib_root`.
pub fn installed_versions(lib_root: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(lib_root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .filter(|major: &u32| lib_root.join(major.to_string()).join("bin/postgres").exists())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Reads the data directory and the installed binaries; writes nothing.
/// An existing `PGDATA/PG_VERSION` wins over `PGVERSION`. A non-empty
/// `PGDATA` that is not a PostgreSQL data directory is refused.
pub fn preflight(cfg: &PostgresConfig, lib_root: &Path) -> Result<Layout, ConfigError> {
    let data = &cfg.data;
    let (state, version) = match std::fs::read_dir(data) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (DataDirState::Fresh, cfg.version),
        Err(e) => return Err(ConfigError::new("PGDATA", format!("cannot read {}: {e}", data.display()))),
        Ok(mut entries) => {
            if entries.next().is_none() {
                (DataDirState::Fresh, cfg.version)
            } else {
                match std::fs::read_to_string(data.join("PG_VERSION")) {
                    Ok(v) => {
                        let found: u32 = v.trim().parse().map_err(|_| {
                            ConfigError::new(
                                "PGDATA",
                                format!("{}/PG_VERSION holds {:?}, not a major version", data.display(), v.trim()),
                            )
                        })?;
                        if found != cfg.version {
                            tracing::warn!(
                                pgversion = cfg.version,
                                data_version = found,
                                "PGDATA holds a PostgreSQL {found} cluster; using {found}, not PGVERSION={}",
                                cfg.version
                            );
                        }
                        (DataDirState::Existing, found)
                    }
                    Err(_) => {
                        return Err(ConfigError::new(
                            "PGDATA",
                            format!(
                                "{} is not empty and is not a PostgreSQL data directory (no PG_VERSION); refusing to touch it",
                                data.display()
                            ),
                        ));
                    }
                }
            }
        }
    };
    check_locales(cfg, state)?;
    let dir = lib_root.join(version.to_string()).join("bin");
    if !dir.join("postgres").exists() {
        let installed = installed_versions(lib_root);
        let list = if installed.is_empty() {
            "none".to_owned()
        } else {
            installed.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        };
        let var = if state == DataDirState::Existing && version != cfg.version { "PGDATA" } else { "PGVERSION" };
        return Err(ConfigError::new(
            var,
            format!("PostgreSQL {version} is not installed (no {}); installed: {list}", dir.join("postgres").display()),
        ));
    }
    Ok(Layout { binaries: Binaries { version, dir }, state })
}

/// Whether this system can load `name` (glibc's `newlocale`): what
/// PostgreSQL needs of every locale its configuration or databases name.
pub fn locale_available(name: &str) -> bool {
    if matches!(name, "C" | "POSIX" | "") {
        return true;
    }
    let Ok(c) = std::ffi::CString::new(name) else { return false };
    // SAFETY: `c` is a valid NUL-terminated string; a non-null result is a
    // locale object we own and free at once.
    unsafe {
        let loc = libc::newlocale(libc::LC_ALL_MASK, c.as_ptr(), std::ptr::null_mut());
        if loc.is_null() {
            return false;
        }
        libc::freelocale(loc);
    }
    true
}

/// The `lc_*` settings of a data directory's own configuration files
/// (initdb writes them; a Patroni member keeps them in
/// `postgresql.base.conf`): (parameter, locale).
fn data_locales(data: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in ["postgresql.conf", "postgresql.base.conf"] {
        let Ok(text) = std::fs::read_to_string(data.join(file)) else { continue };
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let Some((k, v)) = line.split_once('=') else { continue };
            let k = k.trim();
            if ["lc_messages", "lc_monetary", "lc_numeric", "lc_time"].contains(&k) {
                let v = v.trim().trim_matches('\'').to_owned();
                out.push((k.to_owned(), v));
            }
        }
    }
    out
}

/// A locale PostgreSQL would need and this system lacks is an error at
/// start (not at the first connection): `INITDB_LOCALE` for a fresh data
/// directory, the data directory's `lc_*` settings for an existing one.
fn check_locales(cfg: &PostgresConfig, state: DataDirState) -> Result<(), ConfigError> {
    let hint = "the image has C.UTF-8 and en_US.UTF-8; add others with the LOCALES build argument (README: Image)";
    match state {
        DataDirState::Fresh => {
            if !locale_available(&cfg.initdb_locale) {
                return Err(ConfigError::new(
                    "INITDB_LOCALE",
                    format!("locale {} is not installed on this system; {hint}", cfg.initdb_locale),
                ));
            }
        }
        DataDirState::Existing => {
            if let Some((k, v)) = data_locales(&cfg.data).into_iter().find(|(_, v)| !locale_available(v)) {
                return Err(ConfigError::new(
                    "PGDATA",
                    format!(
                        "the data directory's {k} is {v:?}, a locale not installed on this system (PostgreSQL would \
                         not start); {hint}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The OS user postgres and its tools run as: `postgres` when tusk is root
/// (PostgreSQL refuses to run as root), else tusk's own user; and the
/// environment they get ([`child_env`]).
#[derive(Debug, Clone)]
pub struct RunAs {
    pub uid: Uid,
    pub gid: Gid,
    /// `Some` when tusk switches user for its children.
    pub switch: bool,
    /// The whole environment of postgres's processes (nothing else is inherited).
    pub env: Vec<(String, String)>,
}

impl RunAs {
    /// The user for this process's privileges; `env`: the children's environment.
    pub fn resolve(env: Vec<(String, String)>) -> Result<RunAs, PgError> {
        if Uid::effective().is_root() {
            let user = User::from_name("postgres")
                .map_err(|e| PgError::Other(format!("cannot look up the postgres user: {e}")))?
                .ok_or_else(|| {
                    PgError::Other("running as root, but there is no 'postgres' user to run PostgreSQL as".into())
                })?;
            Ok(RunAs { uid: user.uid, gid: user.gid, switch: true, env })
        } else {
            Ok(RunAs { uid: Uid::effective(), gid: Gid::effective(), switch: false, env })
        }
    }

    /// Applies the user and the environment to a command.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.env_clear().envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.switch {
            cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
    }

    /// Gives `path` to the postgres user (no-op unless tusk is root).
    pub fn chown(&self, path: &Path) -> Result<(), PgError> {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid.as_raw()), Some(self.gid.as_raw()))
                .map_err(|e| PgError::io(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }

    fn chown_tree(&self, path: &Path) -> Result<(), PgError> {
        self.chown(path)?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| PgError::io(path.display().to_string(), e))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).map_err(|e| PgError::io(path.display().to_string(), e))? {
                let entry = entry.map_err(|e| PgError::io(path.display().to_string(), e))?;
                self.chown_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// Creates `PGROOT` (and `PGDATA`'s parent and the socket directory), owned
/// by the postgres user, `0700` on `PGDATA`. Errors name the variable.
pub fn prepare_directories(cfg: &PostgresConfig, run_as: &RunAs) -> Result<(), ConfigError> {
    // `adopt`: give an existing directory to the postgres user (PGROOT, as
    // Spilo does); other existing directories are only checked.
    let create = |var: &str, dir: &Path, mode: u32, adopt: bool| -> Result<(), ConfigError> {
        let existed = dir.exists();
        std::fs::create_dir_all(dir)
            .map_err(|e| ConfigError::new(var, format!("cannot create {}: {e}", dir.display())))?;
        if !existed {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| ConfigError::new(var, format!("cannot chmod {}: {e}", dir.display())))?;
        }
        if run_as.switch && (adopt || !existed) {
            let meta = std::fs::metadata(dir).map_err(|e| ConfigError::new(var, format!("{}: {e}", dir.display())))?;
            if meta.uid() != run_as.uid.as_raw() {
                run_as.chown(dir).map_err(|e| ConfigError::new(var, e.to_string()))?;
            }
        }
        writable(var, dir, run_as)
    };
    create("PGROOT", &cfg.root, 0o700, true)?;
    ensure_traversable("PGROOT", &cfg.root, &cfg.home, run_as)?;
    match cfg.data.parent() {
        Some(parent) if parent != cfg.root && !cfg.data.exists() => create("PGDATA", parent, 0o700, false)?,
        _ => {}
    }
    ensure_traversable("PGDATA", &cfg.data, &cfg.home, run_as)?;
    create("TUSK_SOCKET_DIR", &cfg.socket_dir, 0o2775, false)?;
    ensure_traversable("TUSK_SOCKET_DIR", &cfg.socket_dir, &cfg.home, run_as)?;
    if cfg.data.exists() {
        let meta = std::fs::metadata(&cfg.data).map_err(|e| ConfigError::new("PGDATA", e.to_string()))?;
        if run_as.switch && meta.uid() != run_as.uid.as_raw() {
            tracing::info!(path = %cfg.data.display(), "giving PGDATA to the postgres user");
            run_as.chown_tree(&cfg.data).map_err(|e| ConfigError::new("PGDATA", e.to_string()))?;
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&cfg.data, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| ConfigError::new("PGDATA", format!("cannot chmod 0700 {}: {e}", cfg.data.display())))?;
        }
    }
    Ok(())
}

/// Whether the postgres user has `bits` (r=4, w=2, x=1) on a file with `meta`.
fn permits(meta: &std::fs::Metadata, run_as: &RunAs, bits: u32) -> bool {
    let mode = meta.permissions().mode();
    let granted = if meta.uid() == run_as.uid.as_raw() {
        mode >> 6
    } else if meta.gid() == run_as.gid.as_raw() {
        mode >> 3
    } else {
        mode
    };
    granted & bits == bits
}

/// Checks that the postgres user can write `dir`.
fn writable(var: &str, dir: &Path, run_as: &RunAs) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(dir).map_err(|e| ConfigError::new(var, format!("{}: {e}", dir.display())))?;
    if !permits(&meta, run_as, 0o2) {
        return Err(ConfigError::new(var, format!("{} is not writable by uid {}", dir.display(), run_as.uid)));
    }
    Ok(())
}

/// Every directory above `path` must let the postgres user through. Those
/// inside `PGHOME` (the volume, often mounted with the host's owner and mode
/// 0700) are given to postgres, as Spilo gives it its volume; any other gives
/// an error naming `var` rather than a bare "Permission denied" from initdb.
fn ensure_traversable(var: &str, path: &Path, home: &Path, run_as: &RunAs) -> Result<(), ConfigError> {
    let mut blocked = Vec::new();
    for dir in path.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else { continue };
        if !permits(&meta, run_as, 0o1) {
            blocked.push((dir.to_owned(), meta.permissions().mode()));
        }
    }
    // Outermost first, so that each chown makes the next directory reachable.
    for (dir, mode) in blocked.into_iter().rev() {
        if run_as.switch && dir.starts_with(home) {
            tracing::info!(path = %dir.display(), "giving the directory to the postgres user, which could not enter it");
            run_as.chown(&dir).map_err(|e| ConfigError::new(var, e.to_string()))?;
            if mode & 0o100 == 0 {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o700))
                    .map_err(|e| ConfigError::new(var, format!("cannot chmod {}: {e}", dir.display())))?;
            }
        } else {
            return Err(ConfigError::new(
                var,
                format!(
                    "{} (mode {:o}) cannot be entered by uid {}, which runs PostgreSQL",
                    dir.display(),
                    mode & 0o7777,
                    run_as.uid
                ),
            ));
        }
    }
    Ok(())
}

/// The environment postgres and its tools get: the whitelist the
/// configuration read (`PATH`, `TZ`, `LANG`, `LC_*`), `HOME`, and what the
/// supervisor hands down in `extra` (where wal-push/wal-fetch find it:
/// paths only, no secret). `NOTIFY_SOCKET`, S3 and etcd secrets never
/// reach them.
pub fn child_env(cfg: &PostgresConfig, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = cfg.inherited_env.clone();
    env.push(("HOME".to_owned(), cfg.home.display().to_string()));
    env.extend(extra.iter().cloned());
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, HostFacts};

    fn cfg(data: &Path, version: &str) -> PostgresConfig {
        let env = [("PGDATA", data.to_str().unwrap()), ("PGVERSION", version)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let host = HostFacts { hostname: "h".into(), address: [127, 0, 0, 1].into(), memory_bytes: 1 << 30 };
        Config::from_map(&env, &host).unwrap().postgres
    }

    fn lib_with(versions: &[u32]) -> tempfile::TempDir {
        let lib = tempfile::tempdir().unwrap();
        for v in versions {
            let bin = lib.path().join(v.to_string()).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("postgres"), "").unwrap();
        }
        lib
    }

    #[test]
    fn locales_postgres_needs_are_checked_at_start() {
        assert!(locale_available("C") && locale_available("C.UTF-8") && locale_available("POSIX"));
        assert!(!locale_available("xx_NOWHERE.UTF-8"));
        let lib = lib_with(&[15]);
        // A fresh data directory: INITDB_LOCALE.
        let t = tempfile::tempdir().unwrap();
        let mut c = cfg(&t.path().join("data"), "15");
        c.initdb_locale = "xx_NOWHERE.UTF-8".into();
        let e = preflight(&c, lib.path()).unwrap_err();
        assert_eq!(e.var, "INITDB_LOCALE");
        assert!(e.message.contains("xx_NOWHERE.UTF-8"), "{e}");
        // An existing one: its lc_* settings, also in Patroni's base file.
        let data = t.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(data.join("postgresql.conf"), "lc_messages = 'C.UTF-8'\t\t# ok\n").unwrap();
        let c = cfg(&data, "15");
        assert!(preflight(&c, lib.path()).is_ok());
        std::fs::write(data.join("postgresql.base.conf"), "lc_time = 'xx_NOWHERE.UTF-8'\n#lc_numeric = 'yy'\n")
            .unwrap();
        let e = preflight(&c, lib.path()).unwrap_err();
        assert_eq!(e.var, "PGDATA");
        assert!(e.message.contains("lc_time") && e.message.contains("xx_NOWHERE.UTF-8"), "{e}");
    }

    #[test]
    fn preflight_states() {
        let lib = lib_with(&[15, 16]);
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        // missing → fresh
        let l = preflight(&cfg(&data, "16"), lib.path()).unwrap();
        assert_eq!((l.state, l.binaries.version), (DataDirState::Fresh, 16));
        // existing cluster: PG_VERSION wins
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        let l = preflight(&cfg(&data, "16"), lib.path()).unwrap();
        assert_eq!((l.state, l.binaries.version), (DataDirState::Existing, 15));
        // foreign content is refused and untouched
        std::fs::remove_file(data.join("PG_VERSION")).unwrap();
        std::fs::write(data.join("precious.txt"), "x").unwrap();
        let e = preflight(&cfg(&data, "15"), lib.path()).unwrap_err();
        assert_eq!(e.var, "PGDATA");
        assert!(data.join("precious.txt").exists());
        // missing major lists the installed ones
        let e = preflight(&cfg(&t.path().join("other"), "14"), lib.path()).unwrap_err();
        assert_eq!(e.var, "PGVERSION");
        assert!(e.message.contains("installed: 15, 16"), "{e}");
    }
}
