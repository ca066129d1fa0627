//! Files the supervisor writes on behalf of the postgres user, resolved
//! beneath `PGDATA` through directory file descriptors.
//!
//! The supervisor runs as root and writes where a `wal-fetch` client (the
//! postgres user) tells it to. Checking the path first and writing to it
//! later would let postgres swap a directory for a symbolic link in between
//! and steer root's write anywhere. So nothing here resolves a path by name
//! twice: `PGDATA` is opened once, every directory below it is opened with
//! `openat(O_DIRECTORY | O_NOFOLLOW)` relative to the previous one (a
//! symbolic link anywhere below `PGDATA` is refused, not followed), each
//! directory must be owned by the postgres user when tusk is root, and the
//! file is created (`O_CREAT | O_EXCL | O_NOFOLLOW`), chowned (`fchown`)
//! and renamed (`renameat`) inside the directory descriptor so opened. A
//! later swap of any name cannot move a write that already holds the
//! descriptors, and root only ever creates files in directories postgres
//! itself may write to.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("{} is not an absolute path", .0.display())]
    NotAbsolute(PathBuf),
    #[error("{} is outside this node's PGDATA", .0.display())]
    Outside(PathBuf),
    #[error("{}: {name:?} is a symbolic link or not a directory (refused)", path.display())]
    NotDirectory { path: PathBuf, name: String },
    #[error("{}: {name:?} is not owned by the postgres user (refused)", path.display())]
    Owner { path: PathBuf, name: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn cstr(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// `openat(dir, name, flags)`; `dir = None` opens `name` as given.
fn openat(dir: Option<&OwnedFd>, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<OwnedFd> {
    let c = cstr(name)?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: c is a valid NUL-terminated string; the returned fd is new and owned here.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(last_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is a valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(last_error());
    }
    Ok(st)
}

/// A directory below `PGDATA`, opened without following any symbolic link.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// For messages only; never used to reach the directory again.
    path: PathBuf,
    /// uid/gid the created files get, and the uid every directory must have.
    owner: Option<(u32, u32)>,
}

/// `path` split into (directories below `pgdata`, file name). `path` must
/// start with `pgdata` as configured or as canonicalized (a client names
/// files from its working directory, which is the canonical form), and
/// consist of plain names only (no `.` or `..`).
pub fn split(pgdata: &Path, path: &Path) -> Result<(Vec<std::ffi::OsString>, std::ffi::OsString), BeneathError> {
    if !path.is_absolute() {
        return Err(BeneathError::NotAbsolute(path.to_owned()));
    }
    let outside = || BeneathError::Outside(path.to_owned());
    let rel = match path.strip_prefix(pgdata) {
        Ok(r) => r.to_owned(),
        Err(_) => {
            let canonical =
                pgdata.canonicalize().map_err(|e| BeneathError::Io { path: pgdata.to_owned(), source: e })?;
            path.strip_prefix(&canonical).map_err(|_| outside())?.to_owned()
        }
    };
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n.to_owned()),
            _ => return Err(outside()),
        }
    }
    let file = names.pop().ok_or_else(outside)?;
    Ok((names, file))
}

impl Dir {
    /// Opens `pgdata` (as configured: the operator's path, symbolic links in
    /// it included) and then each of `below` with no symbolic link followed.
    /// With `owner`, `pgdata` and every directory below must belong to its uid.
    pub fn open(pgdata: &Path, below: &[impl AsRef<OsStr>], owner: Option<(u32, u32)>) -> Result<Dir, BeneathError> {
        let fd = openat(None, pgdata.as_os_str(), libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| BeneathError::Io { path: pgdata.to_owned(), source: e })?;
        let mut dir = Dir { fd, path: pgdata.to_owned(), owner };
        dir.check_owner(pgdata.as_os_str())?;
        for name in below {
            dir = dir.subdir(name.as_ref())?;
        }
        Ok(dir)
    }

    /// The directory that holds `path` (see [`split`]) and the file name.
    pub fn parent_of(
        pgdata: &Path,
        path: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<(Dir, std::ffi::OsString), BeneathError> {
        let (dirs, file) = split(pgdata, path)?;
        Ok((Dir::open(pgdata, &dirs, owner)?, file))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, name: &OsStr) -> impl FnOnce(std::io::Error) -> BeneathError + '_ {
        let path = self.path.join(name);
        move |source| BeneathError::Io { path, source }
    }

    fn check_owner(&self, name: &OsStr) -> Result<(), BeneathError> {
        let st = fstat(&self.fd).map_err(self.io(OsStr::new("")))?;
        if let Some((uid, _)) = self.owner
            && st.st_uid != uid
        {
            return Err(BeneathError::Owner { path: self.path.clone(), name: name.to_string_lossy().into_owned() });
        }
        Ok(())
    }

    /// The subdirectory `name`; a symbolic link (or anything but a
    /// directory) is refused.
    pub fn subdir(&self, name: &OsStr) -> Result<Dir, BeneathError> {
        let fd = openat(Some(&self.fd), name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0).map_err(
            |e| match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
                    BeneathError::NotDirectory { path: self.path.clone(), name: name.to_string_lossy().into_owned() }
                }
                _ => BeneathError::Io { path: self.path.join(name), source: e },
            },
        )?;
        let d = Dir { fd, path: self.path.join(name), owner: self.owner };
        d.check_owner(name)?;
        Ok(d)
    }

    /// `subdir(name)`, created (mode 0700, owned by the owner) when absent.
    pub fn subdir_create(&self, name: &OsStr) -> Result<Dir, BeneathError> {
        let c = cstr(name).map_err(self.io(name))?;
        // SAFETY: c is a valid NUL-terminated string, the fd is open.
        if unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) } == 0 {
            let d = Dir {
                fd: openat(Some(&self.fd), name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
                    .map_err(self.io(name))?,
                path: self.path.join(name),
                owner: self.owner,
            };
            d.fchown(&d.fd, name)?;
            return Ok(d);
        }
        let e = last_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(self.io(name)(e));
        }
        self.subdir(name)
    }

    fn fchown(&self, fd: &OwnedFd, name: &OsStr) -> Result<(), BeneathError> {
        if let Some((uid, gid)) = self.owner {
            // SAFETY: fd is open.
            if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } < 0 {
                return Err(self.io(name)(last_error()));
            }
        }
        Ok(())
    }

    /// Opens the regular file `name` for reading; a symbolic link is refused.
    pub fn open_file(&self, name: &OsStr) -> Result<File, BeneathError> {
        let fd = openat(Some(&self.fd), name, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0)
            .map_err(self.io(name))?;
        let st = fstat(&fd).map_err(self.io(name))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(BeneathError::Io {
                path: self.path.join(name),
                source: std::io::Error::other("not a regular file"),
            });
        }
        Ok(File::from(fd))
    }

    /// Writes `data` under `name`: a new temporary file in this directory
    /// (mode 0600, owned by the owner), then `renameat` over `name`. A
    /// symbolic link at `name` is replaced, never followed.
    pub fn write_new(&self, name: &OsStr, data: &[u8]) -> Result<(), BeneathError> {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".tusk-tmp");
        let _ = self.unlink(&tmp_name);
        let fd =
            openat(Some(&self.fd), &tmp_name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600)
                .map_err(self.io(&tmp_name))?;
        let r = self.fchown(&fd, &tmp_name).and_then(|()| {
            let mut f = File::from(fd);
            f.write_all(data).map_err(self.io(&tmp_name))
        });
        if let Err(e) = r.and_then(|()| self.rename_to(&tmp_name, self, name)) {
            let _ = self.unlink(&tmp_name);
            return Err(e);
        }
        Ok(())
    }

    /// Creates the file `name` (mode 0600) holding `content`, only if
    /// nothing is there: `Ok(false)` when it exists (someone else holds the
    /// claim).
    pub fn create_new(&self, name: &OsStr, content: &[u8]) -> Result<bool, BeneathError> {
        match openat(Some(&self.fd), name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600) {
            Ok(fd) => {
                self.fchown(&fd, name)?;
                File::from(fd).write_all(content).map_err(self.io(name))?;
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(self.io(name)(e)),
        }
    }

    /// How long ago `name` (not followed if a link) was last modified;
    /// `None` when it does not exist.
    pub fn age(&self, name: &OsStr) -> Option<std::time::Duration> {
        let c = cstr(name).ok()?;
        // SAFETY: an all-zero stat is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: c is valid, the fd is open, st is a valid out pointer.
        if unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } < 0 {
            return None;
        }
        let mtime = std::time::UNIX_EPOCH
            + std::time::Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec.clamp(0, 999_999_999) as u32);
        Some(std::time::SystemTime::now().duration_since(mtime).unwrap_or_default())
    }

    /// `renameat(self/from, to/to_name)`.
    pub fn rename_to(&self, from: &OsStr, to: &Dir, to_name: &OsStr) -> Result<(), BeneathError> {
        let a = cstr(from).map_err(self.io(from))?;
        let b = cstr(to_name).map_err(to.io(to_name))?;
        // SAFETY: both strings are valid, both fds are open.
        if unsafe { libc::renameat(self.fd.as_raw_fd(), a.as_ptr(), to.fd.as_raw_fd(), b.as_ptr()) } < 0 {
            return Err(to.io(to_name)(last_error()));
        }
        Ok(())
    }

    /// `unlinkat(self/name)` (a file; a symbolic link itself, never its target).
    pub fn unlink(&self, name: &OsStr) -> Result<(), BeneathError> {
        let c = cstr(name).map_err(self.io(name))?;
        // SAFETY: c is valid, the fd is open.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } < 0 {
            return Err(self.io(name)(last_error()));
        }
        Ok(())
    }

    /// Names in this directory (without `.` and `..`).
    pub fn names(&self) -> Result<Vec<std::ffi::OsString>, BeneathError> {
        // Through /proc/self/fd: reads the directory this descriptor holds,
        // whatever its name now points to.
        let dup = self.fd.try_clone().map_err(self.io(OsStr::new("")))?;
        let proc = PathBuf::from(format!("/proc/self/fd/{}", dup.as_raw_fd()));
        let rd = std::fs::read_dir(&proc).map_err(self.io(OsStr::new("")))?;
        Ok(rd.flatten().map(|e| e.file_name()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_plain_names_below_pgdata() {
        let d = tempfile::tempdir().unwrap();
        let pgdata = d.path().join("data");
        std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
        let (dirs, file) = split(&pgdata, &pgdata.join("pg_wal/RECOVERYXLOG")).unwrap();
        assert_eq!(dirs, vec![std::ffi::OsString::from("pg_wal")]);
        assert_eq!(file, "RECOVERYXLOG");
        assert!(matches!(split(&pgdata, &pgdata.join("pg_wal/../../x")), Err(BeneathError::Outside(_))));
        assert!(matches!(split(&pgdata, Path::new("/etc/passwd")), Err(BeneathError::Outside(_))));
        assert!(matches!(split(&pgdata, Path::new("pg_wal/x")), Err(BeneathError::NotAbsolute(_))));
        assert!(matches!(split(&pgdata, &pgdata), Err(BeneathError::Outside(_))));
    }

    #[test]
    fn symlinks_below_pgdata_are_refused_and_writes_stay_in_the_opened_directory() {
        let d = tempfile::tempdir().unwrap();
        let pgdata = d.path().join("data");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, pgdata.join("link")).unwrap();
        let e = Dir::parent_of(&pgdata, &pgdata.join("link/x"), None).unwrap_err();
        assert!(matches!(e, BeneathError::NotDirectory { .. }), "{e}");
        // A directory opened, then swapped for a link: the write lands in the
        // directory that was opened, not where the name points now.
        let (dir, name) = Dir::parent_of(&pgdata, &pgdata.join("pg_wal/x"), None).unwrap();
        std::fs::rename(pgdata.join("pg_wal"), pgdata.join("pg_wal.old")).unwrap();
        std::os::unix::fs::symlink(&outside, pgdata.join("pg_wal")).unwrap();
        dir.write_new(&name, b"abc").unwrap();
        assert_eq!(std::fs::read(pgdata.join("pg_wal.old/x")).unwrap(), b"abc");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // A symlink at the file name itself is replaced, not followed.
        std::os::unix::fs::symlink(outside.join("target"), pgdata.join("pg_wal.old/y")).unwrap();
        dir.write_new(OsStr::new("y"), b"def").unwrap();
        assert!(!outside.join("target").exists());
        assert!(std::fs::symlink_metadata(pgdata.join("pg_wal.old/y")).unwrap().is_file());
        assert_eq!(dir.names().unwrap().len(), 2);
    }

    #[test]
    fn a_foreign_owner_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        let e = Dir::open(d.path(), &[] as &[&str], Some((me + 1, 0))).unwrap_err();
        assert!(matches!(e, BeneathError::Owner { .. }), "{e}");
        Dir::open(d.path(), &[] as &[&str], Some((me, nix::unistd::getgid().as_raw()))).unwrap();
    }
}
