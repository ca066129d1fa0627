//! Files tusk owns are written whole or not at all.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{PgError, RunAs};

/// Writes `content` to `path` through a temporary file and a rename, so that
/// a reader (postgres reloading) never sees half a file.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32, run_as: &RunAs) -> Result<(), PgError> {
    let tmp = path.with_extension("tusk-tmp");
    let io = |e| PgError::io(format!("write {}", path.display()), e);
    {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io)?;
        f.write_all(content).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    run_as.chown(&tmp)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}
