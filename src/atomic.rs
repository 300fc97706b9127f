//! Crash-safe file replacement: write a temporary file beside the target, fsync it, rename
//! it over the target, fsync the directory. A reader (or a crash) sees the old file or the new
//! one, never a torn one; a failed write (full disk) leaves the old file in place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Replaces `path` with `contents`, created with permission bits `mode` (e.g. 0o600).
/// Parent directories are created (0755) when missing.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), WriteError> {
    let wrap = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(wrap)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have cleared bits of `mode`; the caller asked for exactly `mode`.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(wrap)
}

/// Same directory (so the rename is atomic), hidden, unique per process and call.
fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

/// Whether `name` is one of our temporary files (left behind only by a crash mid-write).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp.")
}

/// Removes temporary files a crash left in `dir` (not recursive). Only files and links
/// with our temporary names go (a link itself, never what it points at); directories are
/// left alone. Call it where no write of this process or another can be in flight (at
/// start-up), or it may remove a temporary file just before its rename.
pub fn remove_stale_temps(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if is_temp_name(&entry.file_name().to_string_lossy()) && !entry.file_type()?.is_dir() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_exact_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/token");
        write_file(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_file(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn failed_rename_leaves_target_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: rename(2) must fail, even for root.
        let p = dir.path().join("target");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("keep"), b"old").unwrap();
        let err = write_file(&p, b"new", 0o644).unwrap_err();
        assert!(err.to_string().contains("target"), "{err}");
        assert_eq!(fs::read(p.join("keep")).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["target".to_string()]);
    }

    #[test]
    fn stale_temps_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".cluster.env.tmp.12.0"), b"x").unwrap();
        fs::write(dir.path().join("cluster.env"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        assert!(dir.path().join("cluster.env").exists());
    }

    #[test]
    fn stale_temps_leave_directories_and_link_targets() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("precious");
        fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(".a.yaml.tmp.1.0")).unwrap();
        fs::create_dir(dir.path().join(".d.tmp.1.1")).unwrap();
        fs::write(dir.path().join(".hidden"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        assert!(!dir.path().join(".a.yaml.tmp.1.0").exists());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(dir.path().join(".d.tmp.1.1").is_dir());
        assert!(dir.path().join(".hidden").exists());
        assert_eq!(remove_stale_temps(&dir.path().join("missing")).unwrap(), 0);
    }
}
