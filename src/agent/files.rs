//! Writing the sidecar's boot files under the root prefix: atomically, with the modes the
//! endpoint gives (istio-token 0600), and only when content or mode differ, so that an
//! unchanged bootstrap never restarts the sidecar.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::api::protocol::BootstrapFile;
use crate::atomic;

/// Directories the istio-sidecar package reads its files from (reference/istio.md §1.7).
/// A bootstrap that names any other path is refused: whoever controls the endpoint's
/// templates must not be able to write `/etc/sudoers` on every host.
pub const ALLOWED_DIRS: &[&str] = &[
    "/etc/istio/",
    "/var/lib/istio/",
    "/etc/certs/",
    "/var/run/secrets/",
    "/run/secrets/",
];

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("the endpoint sent a file path {path:?} that the agent will not write: {reason}")]
    BadPath { path: String, reason: String },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the mode of {}: {source}", path.display())]
    Chmod {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot give {} to user {owner}: {source}", path.display())]
    Chown {
        path: PathBuf,
        owner: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
}

/// uid and gid of a local user from `/etc/passwd`, or None when it has no such user.
///
/// Not through NSS: the istio-sidecar package creates `istio-proxy` with useradd, so it is
/// always in the file, and NSS would map its modules (libnss_systemd and friends, ~0.7 MiB)
/// into the agent for the rest of its life.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    passwd_entry(&std::fs::read_to_string("/etc/passwd").ok()?, name)
}

fn passwd_entry(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// Hands `target` to `owner` when the agent can (it runs as root) and the user exists; the
/// istio-sidecar package creates `istio-proxy`, so before it is installed there is nobody
/// to give the file to and root keeps it.
fn apply_owner(target: &Path, owner: &str) -> Result<(), FilesError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let Some((uid, gid)) = lookup_user(owner) else {
        tracing::debug!(%owner, path = %target.display(), "no such user; leaving the file to root");
        return Ok(());
    };
    let meta = std::fs::metadata(target).map_err(|source| FilesError::Read {
        path: target.to_path_buf(),
        source,
    })?;
    if std::os::unix::fs::MetadataExt::uid(&meta) == uid {
        return Ok(());
    }
    std::os::unix::fs::chown(target, Some(uid), Some(gid)).map_err(|source| FilesError::Chown {
        path: target.to_path_buf(),
        owner: owner.to_string(),
        source,
    })
}

/// What a file on disk needs to match what the endpoint sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Same content, different permission bits.
    Mode,
    /// Missing or different content.
    Content,
}

pub fn change_needed(existing: Option<(&[u8], u32)>, content: &[u8], mode: u32) -> Change {
    match existing {
        None => Change::Content,
        Some((bytes, _)) if bytes != content => Change::Content,
        Some((_, m)) if m & 0o7777 != mode & 0o7777 => Change::Mode,
        Some(_) => Change::None,
    }
}

/// The result of applying a bootstrap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Host paths (without the root prefix) whose content was (re)written.
    pub written: Vec<String>,
    /// Whether any of them needs a sidecar restart.
    pub restart_needed: bool,
}

/// `root` + `abs`, refusing relative paths, `..`, and paths outside [`ALLOWED_DIRS`].
pub fn target_path(root: &Path, abs: &str) -> Result<PathBuf, FilesError> {
    let bad = |reason: &str| FilesError::BadPath {
        path: abs.to_string(),
        reason: reason.to_string(),
    };
    if !abs.starts_with('/') {
        return Err(bad("not an absolute path"));
    }
    if abs.contains('\0') {
        return Err(bad("contains NUL"));
    }
    // Checked on the string: Path::components() silently drops inner "." segments.
    if abs.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(bad("contains '.' or '..'"));
    }
    if abs.ends_with('/') {
        return Err(bad("names a directory"));
    }
    if !ALLOWED_DIRS.iter().any(|d| abs.starts_with(d)) {
        return Err(bad(&format!(
            "outside the sidecar's directories ({})",
            ALLOWED_DIRS.join(", ")
        )));
    }
    Ok(root.join(abs.trim_start_matches('/')))
}

/// Checks every path first, so a bad bootstrap writes nothing.
pub fn plan(root: &Path, files: &[BootstrapFile]) -> Result<Vec<PathBuf>, FilesError> {
    files.iter().map(|f| target_path(root, &f.path)).collect()
}

fn read_existing(path: &Path) -> Result<Option<(Vec<u8>, u32)>, FilesError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(path)
                .map_err(|source| FilesError::Read {
                    path: path.to_path_buf(),
                    source,
                })?
                .permissions()
                .mode();
            Ok(Some((bytes, mode)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FilesError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// What [`apply`] would write, without writing (so the caller can record that a restart
/// is pending before the first byte changes).
pub fn preview(root: &Path, files: &[BootstrapFile]) -> Result<Applied, FilesError> {
    let targets = plan(root, files)?;
    let mut out = Applied::default();
    for (file, target) in files.iter().zip(&targets) {
        let existing = read_existing(target)?;
        let existing_ref = existing.as_ref().map(|(b, m)| (b.as_slice(), *m));
        if change_needed(existing_ref, file.content.as_bytes(), file.mode) == Change::Content {
            out.written.push(file.path.clone());
            out.restart_needed |= file.restart_on_change;
        }
    }
    Ok(out)
}

/// Writes the files that differ from what is on disk.
pub fn apply(root: &Path, files: &[BootstrapFile]) -> Result<Applied, FilesError> {
    let targets = plan(root, files)?;
    let mut applied = Applied::default();
    for (file, target) in files.iter().zip(&targets) {
        let existing = read_existing(target)?;
        let existing_ref = existing.as_ref().map(|(b, m)| (b.as_slice(), *m));
        match change_needed(existing_ref, file.content.as_bytes(), file.mode) {
            Change::None => {}
            Change::Mode => {
                std::fs::set_permissions(target, std::fs::Permissions::from_mode(file.mode))
                    .map_err(|source| FilesError::Chmod {
                        path: target.clone(),
                        source,
                    })?;
            }
            Change::Content => {
                atomic::write_file(target, file.content.as_bytes(), file.mode)?;
                applied.written.push(file.path.clone());
                applied.restart_needed |= file.restart_on_change;
            }
        }
        if let Some(owner) = &file.owner {
            apply_owner(target, owner)?;
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, mode: u32, content: &str, restart: bool) -> BootstrapFile {
        BootstrapFile {
            path: path.into(),
            mode,
            content: content.into(),
            restart_on_change: restart,
            owner: None,
        }
    }

    #[test]
    fn passwd_lines() {
        let p = "root:x:0:0:root:/root:/bin/bash\nistio-proxy:x:998:997::/var/lib/istio:/bin/sh\n";
        assert_eq!(passwd_entry(p, "istio-proxy"), Some((998, 997)));
        assert_eq!(passwd_entry(p, "istio"), None);
        assert_eq!(passwd_entry("broken", "broken"), None);
    }

    #[test]
    fn owner_is_applied_when_root_and_user_exists() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = file("/etc/certs/token", 0o600, "x", false);
        // `nobody` exists on every Debian system; a missing user is not an error.
        f.owner = Some("nobody".into());
        let mut g = file("/etc/certs/other", 0o600, "y", false);
        g.owner = Some("no-such-user-here".into());
        apply(dir.path(), &[f, g]).unwrap();
        let meta = std::fs::metadata(dir.path().join("etc/certs/token")).unwrap();
        let nobody = lookup_user("nobody").map(|(u, _)| u);
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(Some(std::os::unix::fs::MetadataExt::uid(&meta)), nobody);
        } else {
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), unsafe {
                libc::geteuid()
            });
        }
        let other = std::fs::metadata(dir.path().join("etc/certs/other")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&other), unsafe {
            libc::geteuid()
        });
    }

    #[test]
    fn change_detection() {
        assert_eq!(change_needed(None, b"a", 0o644), Change::Content);
        assert_eq!(
            change_needed(Some((b"a", 0o100644)), b"a", 0o644),
            Change::None
        );
        assert_eq!(
            change_needed(Some((b"a", 0o100600)), b"a", 0o644),
            Change::Mode
        );
        assert_eq!(
            change_needed(Some((b"b", 0o100644)), b"a", 0o644),
            Change::Content
        );
    }

    #[test]
    fn paths_are_confined() {
        let root = Path::new("/tmp/root");
        assert_eq!(
            target_path(root, "/var/lib/istio/envoy/cluster.env").unwrap(),
            Path::new("/tmp/root/var/lib/istio/envoy/cluster.env")
        );
        for bad in [
            "var/lib/istio/x",
            "/etc/sudoers",
            "/etc/istio/../sudoers",
            "/etc/istio/./x",
            "/etc/istio/",
            "/etc/istiox/a",
        ] {
            assert!(target_path(root, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_only_changes_and_reports_restart() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let set = vec![
            file("/var/lib/istio/envoy/cluster.env", 0o644, "A=1\n", true),
            file("/var/run/secrets/tokens/istio-token", 0o600, "tok1", false),
        ];
        let preview_first = preview(root, &set).unwrap();
        let first = apply(root, &set).unwrap();
        assert_eq!(preview_first, first);
        assert_eq!(first.written.len(), 2);
        assert!(first.restart_needed);
        let token = root.join("var/run/secrets/tokens/istio-token");
        assert_eq!(
            std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
            0o600
        );

        assert_eq!(apply(root, &set).unwrap(), Applied::default());

        // Only the token changes: written, but no restart (pilot-agent re-reads it).
        let mut set2 = set.clone();
        set2[1].content = "tok2".into();
        let second = apply(root, &set2).unwrap();
        assert_eq!(second.written, vec!["/var/run/secrets/tokens/istio-token"]);
        assert!(!second.restart_needed);

        // A mode drift is repaired without counting as a content change.
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(apply(root, &set2).unwrap(), Applied::default());
        assert_eq!(
            std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_bad_path_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let set = vec![
            file("/etc/istio/config/mesh", 0o644, "x", true),
            file("/etc/passwd", 0o644, "x", true),
        ];
        assert!(matches!(
            apply(dir.path(), &set),
            Err(FilesError::BadPath { .. })
        ));
        assert!(!dir.path().join("etc/istio/config/mesh").exists());
    }
}
