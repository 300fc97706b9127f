//! Writing the sidecar's boot files under the root prefix: the whole set at once (see
//! [`apply`]), with the modes and owners the endpoint gives (istio-token 0600, istio-proxy),
//! and only when content or mode differ, so that an unchanged bootstrap never restarts the
//! sidecar.

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

/// Where the agent keeps generations of the file set, relative to the root prefix.
pub const GENERATIONS_DIR: &str = "var/lib/onboarding-agent/bootstrap";
const CURRENT: &str = "current";

/// Writes the bootstrap so that the set of files flips from the old to the new one at a single
/// instant, as Kubernetes does for ConfigMap volumes: every file of a set is written into a
/// fresh generation directory under [`GENERATIONS_DIR`], each path the sidecar reads is a
/// symlink to `<generations>/current/<path>`, and one `rename(2)` of the `current` symlink
/// switches the whole set. Killed at any point, the agent leaves the old set or the new one,
/// never a mix (the files live in four directories, so renaming them one by one could not
/// promise that). Nothing is written when nothing changed.
pub fn apply(root: &Path, files: &[BootstrapFile]) -> Result<Applied, FilesError> {
    // Symlink targets are absolute; a relative root would make them dangle.
    let root = &std::path::absolute(root).map_err(|source| FilesError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    let targets = plan(root, files)?;
    let generations = root.join(GENERATIONS_DIR);
    remove_generation_temps(&generations);
    let mut applied = Applied::default();
    let mut any_change = false;
    for (file, target) in files.iter().zip(&targets) {
        let existing = read_existing(target)?;
        let existing_ref = existing.as_ref().map(|(b, m)| (b.as_slice(), *m));
        match change_needed(existing_ref, file.content.as_bytes(), file.mode) {
            Change::None => {}
            Change::Mode => any_change = true,
            Change::Content => {
                any_change = true;
                applied.written.push(file.path.clone());
                applied.restart_needed |= file.restart_on_change;
            }
        }
        any_change |= !links_into_current(target, &generations, &file.path);
    }
    if !any_change {
        // Something else (a unit's StateDirectoryMode, an admin) may have closed the
        // directories the links go through since they were written.
        make_traversable(root, &generations)?;
        // Owners may still need fixing (istio-proxy created after the files were written).
        for (file, target) in files.iter().zip(&targets) {
            if let Some(owner) = &file.owner {
                apply_owner(target, owner)?;
            }
        }
        return Ok(applied);
    }
    // First time through (plain files, or nothing yet): capture what is there now as a
    // generation and point the paths at it, so that switching paths to links changes no
    // content; only the `current` swap below does.
    if targets
        .iter()
        .zip(files)
        .any(|(t, f)| !links_into_current(t, &generations, &f.path))
    {
        let mut snapshot = Vec::new();
        for (f, t) in files.iter().zip(&targets) {
            if let Some((bytes, mode)) = read_existing(t)? {
                snapshot.push(BootstrapFile {
                    content: String::from_utf8_lossy(&bytes).into_owned(),
                    mode: mode & 0o7777,
                    ..f.clone()
                });
            }
        }
        let gen_old = write_generation(&generations, &snapshot)?;
        switch_current(&generations, &gen_old)?;
        for (file, target) in files.iter().zip(&targets) {
            link_to_current(target, &generations, &file.path)?;
        }
    }
    let gen_new = write_generation(&generations, files)?;
    switch_current(&generations, &gen_new)?;
    remove_old_generations(&generations, &gen_new);
    Ok(applied)
}

fn in_generation(gen_dir: &Path, abs: &str) -> PathBuf {
    gen_dir.join(abs.trim_start_matches('/'))
}

/// Whether `target` is already our symlink to `<generations>/current/<path>`.
fn links_into_current(target: &Path, generations: &Path, abs: &str) -> bool {
    std::fs::read_link(target).is_ok_and(|l| l == in_generation(&generations.join(CURRENT), abs))
}

/// Writes a complete generation under a temporary name, then renames it into place: a
/// generation directory is either whole or absent.
fn write_generation(generations: &Path, files: &[BootstrapFile]) -> Result<String, FilesError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "gen-{nanos}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = generations.join(format!(".{name}.tmp"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FilesError::Write(atomic::WriteError { path, source })
    };
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    for f in files {
        let path = in_generation(&tmp, &f.path);
        atomic::write_file(&path, f.content.as_bytes(), f.mode)?;
        if let Some(owner) = &f.owner {
            apply_owner(&path, owner)?;
        }
        // The directories in a generation must let istio-proxy through whatever the umask.
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&tmp)) {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).map_err(io(d))?;
            dir = d.parent();
        }
    }
    let root = generations
        .ancestors()
        .nth(GENERATIONS_DIR.split('/').count())
        .unwrap_or(generations);
    make_traversable(root, generations)?;
    let dest = generations.join(&name);
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    std::fs::File::open(generations)
        .and_then(|d| d.sync_all())
        .map_err(io(generations))?;
    Ok(name)
}

/// Opens `/var/lib/onboarding-agent` and `bootstrap/` (0755): pilot-agent runs as istio-proxy
/// and reads its files through them.
fn make_traversable(root: &Path, generations: &Path) -> Result<(), FilesError> {
    for dir in generations.ancestors().take_while(|d| *d != root) {
        if dir == root.join("var/lib") || dir == root.join("var") {
            break;
        }
        if !dir.exists() {
            continue;
        }
        let mode = std::fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0);
        if mode & 0o005 != 0o005 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(
                |source| FilesError::Chmod {
                    path: dir.to_path_buf(),
                    source,
                },
            )?;
        }
    }
    Ok(())
}

/// Points `current` at `gen` with one rename.
fn switch_current(generations: &Path, gen_name: &str) -> Result<(), FilesError> {
    let link = generations.join(CURRENT);
    let tmp = generations.join(format!(".{CURRENT}.tmp.{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FilesError::Write(atomic::WriteError { path, source })
    };
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(gen_name, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &link).map_err(io(&link))?;
    std::fs::File::open(generations)
        .and_then(|d| d.sync_all())
        .map_err(io(generations))
}

/// Replaces whatever is at `target` by a symlink into `current`, atomically.
fn link_to_current(target: &Path, generations: &Path, abs: &str) -> Result<(), FilesError> {
    let dest = in_generation(&generations.join(CURRENT), abs);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FilesError::Write(atomic::WriteError { path, source })
    };
    let dir = target.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}.link", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&dest, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, target).map_err(io(target))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Generations other than `keep` (and what `current` points at) are no longer read.
fn remove_old_generations(generations: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(generations) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("gen-") && name != keep {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Half-written generations and link temporaries a killed agent left behind.
fn remove_generation_temps(generations: &Path) {
    let Ok(entries) = std::fs::read_dir(generations) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp") {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
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

    fn set(tag: &str) -> Vec<BootstrapFile> {
        vec![
            file(
                "/var/lib/istio/envoy/cluster.env",
                0o644,
                &format!("A={tag}\n"),
                true,
            ),
            file(
                "/etc/certs/root-cert.pem",
                0o644,
                &format!("cert-{tag}"),
                true,
            ),
            file(
                "/var/run/secrets/tokens/istio-token",
                0o600,
                &format!("tok-{tag}"),
                false,
            ),
        ]
    }

    fn read_set(root: &Path) -> Vec<String> {
        set("x")
            .iter()
            .map(|f| {
                std::fs::read_to_string(target_path(root, &f.path).unwrap()).unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn the_set_switches_through_one_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Plain files from before (an older agent, or istioctl by hand).
        let cluster_env = root.join("var/lib/istio/envoy/cluster.env");
        std::fs::create_dir_all(cluster_env.parent().unwrap()).unwrap();
        std::fs::write(&cluster_env, "A=hand\n").unwrap();
        let a = apply(root, &set("a")).unwrap();
        assert!(a.restart_needed);
        assert_eq!(read_set(root), vec!["A=a\n", "cert-a", "tok-a"]);
        for f in set("a") {
            let t = target_path(root, &f.path).unwrap();
            assert!(
                std::fs::symlink_metadata(&t)
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "{t:?}"
            );
        }
        let token = target_path(root, "/var/run/secrets/tokens/istio-token").unwrap();
        assert_eq!(
            std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Nothing changed: nothing written, no new generation.
        let gens = |root: &Path| {
            std::fs::read_dir(root.join(GENERATIONS_DIR))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("gen-"))
                .collect::<Vec<_>>()
        };
        let before = gens(root);
        assert_eq!(apply(root, &set("a")).unwrap(), Applied::default());
        assert_eq!(gens(root), before);
        // A new set replaces the whole set; the old generation goes.
        let b = apply(root, &set("b")).unwrap();
        assert_eq!(b.written.len(), 3);
        assert_eq!(read_set(root), vec!["A=b\n", "cert-b", "tok-b"]);
        assert_eq!(gens(root).len(), 1);
        assert_ne!(gens(root), before);
    }

    #[test]
    fn directories_on_the_way_stay_open_to_istio_proxy() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        apply(root, &set("a")).unwrap();
        let state = root.join("var/lib/onboarding-agent");
        // What systemd's StateDirectoryMode=0750 would do at the next start.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(apply(root, &set("a")).unwrap(), Applied::default());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o755);
        assert_eq!(mode(&root.join(GENERATIONS_DIR)), 0o755);
        let token = std::fs::canonicalize(
            target_path(root, "/var/run/secrets/tokens/istio-token").unwrap(),
        )
        .unwrap();
        let mut d = token.parent();
        while let Some(p) = d.filter(|p| p.starts_with(root.join(GENERATIONS_DIR))) {
            assert_eq!(mode(p), 0o755, "{p:?}");
            d = p.parent();
        }
    }

    #[test]
    fn a_killed_switch_leaves_old_or_new() {
        // The steps of `apply` before the final swap change nothing a reader sees: replay
        // them by hand and check the visible set after each.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        apply(root, &set("a")).unwrap();
        let generations = root.join(GENERATIONS_DIR);
        let new_gen = write_generation(&generations, &set("b")).unwrap();
        assert_eq!(
            read_set(root),
            vec!["A=a\n", "cert-a", "tok-a"],
            "after writing"
        );
        // A half-written generation (killed mid-way) is cleaned up and never read.
        std::fs::create_dir_all(generations.join(".gen-x.tmp/etc")).unwrap();
        switch_current(&generations, &new_gen).unwrap();
        assert_eq!(
            read_set(root),
            vec!["A=b\n", "cert-b", "tok-b"],
            "after the swap"
        );
        apply(root, &set("b")).unwrap();
        assert!(!generations.join(".gen-x.tmp").exists());
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
