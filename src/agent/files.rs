//! Writing the sidecar's boot files under the root prefix: the whole set at once (see
//! [`apply`]), with the modes and owners the endpoint gives (istio-token 0600, istio-proxy),
//! and only when content or mode differ, so that an unchanged bootstrap never restarts the
//! sidecar.
//!
//! The directories the sidecar reads from belong to istio-proxy (`/var/run/secrets`,
//! `/etc/certs`, `/var/lib/istio/envoy`), so a compromised sidecar can put anything there.
//! The agent runs as root: everything here goes through [`safefs`], which never follows a
//! link such a user could have planted, reads with `O_NOFOLLOW` and changes owners and modes
//! through the opened descriptor only.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::safefs::{self, Dir, SafeFsError};
use crate::api::protocol::{BootstrapFile, FileMode};
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

/// Longest existing file the agent reads back to compare (the endpoint's whole answer is
/// limited to 4 MiB).
const MAX_EXISTING: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("the endpoint sent a file path {path:?} that the agent will not write: {reason}")]
    BadPath { path: String, reason: String },
    #[error("{what}: {source}")]
    Fs {
        what: &'static str,
        #[source]
        source: SafeFsError,
    },
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
}

const READING: &str = "cannot read the sidecar's files";
const WRITING: &str = "cannot write the sidecar's files";

fn fs_err(what: &'static str) -> impl Fn(SafeFsError) -> FilesError {
    move |source| FilesError::Fs { what, source }
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

/// The uid and gid each file should get: its `owner` when the agent runs as root and the
/// user exists (the istio-sidecar package creates `istio-proxy`, so before it is installed
/// there is nobody to give the file to and root keeps it).
fn resolve_owners(files: &[BootstrapFile]) -> Vec<Option<(u32, u32)>> {
    files
        .iter()
        .map(|f| {
            let owner = f.owner.as_deref()?;
            let found = lookup_user(owner);
            if found.is_none() {
                tracing::debug!(%owner, path = %f.path, "no such user; leaving the file to root");
            }
            found
        })
        .collect()
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

/// Mode and group of each directory inside a generation (keyed by its path relative to the
/// generation, `""` for the generation itself), from the files below it as `(path, mode,
/// group of the owner)`:
/// - only world-readable files below: `0755`;
/// - only files others may not read, all of one group: `0750` and that group (pilot-agent,
///   running as istio-proxy, reaches its 0600 token; nobody else can even list the names);
/// - both: `0711`, traversable but not listable, each branch deciding for itself.
///
/// A group of `None` leaves the directory's group alone (root's, or the agent's own).
pub fn dir_perms(files: &[(&str, u32, Option<u32>)]) -> BTreeMap<String, (u32, Option<u32>)> {
    #[derive(Default)]
    struct Below {
        public: bool,
        secret_groups: Vec<Option<u32>>,
    }
    let mut dirs: BTreeMap<String, Below> = BTreeMap::new();
    for (abs, mode, group) in files {
        let rel = abs.trim_start_matches('/');
        let mut dir = rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        loop {
            let b = dirs.entry(dir.to_string()).or_default();
            if mode & 0o004 != 0 {
                b.public = true;
            } else if !b.secret_groups.contains(group) {
                b.secret_groups.push(*group);
            }
            if dir.is_empty() {
                break;
            }
            dir = dir.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        }
    }
    dirs.into_iter()
        .map(|(d, b)| {
            let perm = match (b.public, b.secret_groups.as_slice()) {
                (_, []) => (0o755, None),
                (false, [g]) => (0o750, *g),
                _ => (0o711, None),
            };
            (d, perm)
        })
        .collect()
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

/// The directory (relative to the root prefix) and the name of a checked host path.
fn split(abs: &str) -> (&Path, &OsStr) {
    let rel = abs.trim_start_matches('/');
    match rel.rsplit_once('/') {
        Some((dir, name)) => (Path::new(dir), OsStr::new(name)),
        None => (Path::new(""), OsStr::new(rel)),
    }
}

/// A file found on disk.
struct Existing {
    bytes: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// What is at one target path now.
struct Found {
    /// The path is already our link into `current`.
    linked: bool,
    existing: Option<Existing>,
}

fn read_in(dir: &Dir, abs: &str) -> Result<Option<Existing>, SafeFsError> {
    let (parent, name) = split(abs);
    let Some(d) = dir.walk(parent, None)? else {
        return Ok(None);
    };
    Ok(d.read_file_at(name, MAX_EXISTING)?
        .map(|(bytes, m)| Existing {
            bytes,
            mode: m.perm(),
            uid: m.uid,
            gid: m.gid,
        }))
}

/// Where the link at `abs` points when it is ours.
fn link_dest(root: &Path, abs: &str) -> PathBuf {
    root.join(GENERATIONS_DIR)
        .join(CURRENT)
        .join(abs.trim_start_matches('/'))
}

/// Looks at every target without following anything a less privileged user could have
/// planted: our own link is recognised by its text and the file behind it is read from the
/// generation; anything else must be a plain file with a single name (a hard link to a file
/// elsewhere, a FIFO or a link counts as absent and is never read).
fn survey(
    root: &Path,
    top: &Dir,
    current: Option<&Dir>,
    files: &[BootstrapFile],
) -> Result<Vec<Found>, SafeFsError> {
    files
        .iter()
        .map(|f| -> Result<Found, SafeFsError> {
            let (parent, name) = split(&f.path);
            let Some(dir) = top.walk(parent, None)? else {
                return Ok(Found {
                    linked: false,
                    existing: None,
                });
            };
            let linked = dir.read_link_at(name)? == Some(link_dest(root, &f.path));
            let existing = if linked {
                match current {
                    Some(c) => read_in(c, &f.path)?,
                    None => None,
                }
            } else {
                dir.read_file_at(name, MAX_EXISTING)?
                    .filter(|(_, m)| m.nlink == 1)
                    .map(|(bytes, m)| Existing {
                        bytes,
                        mode: m.perm(),
                        uid: m.uid,
                        gid: m.gid,
                    })
            };
            Ok(Found { linked, existing })
        })
        .collect()
}

fn absolute(root: &Path) -> Result<PathBuf, FilesError> {
    // Symlink targets are absolute; a relative root would make them dangle.
    let root = std::path::absolute(root).map_err(|e| FilesError::Fs {
        what: READING,
        source: SafeFsError::io(root, e),
    })?;
    std::fs::create_dir_all(&root).map_err(|e| FilesError::Fs {
        what: WRITING,
        source: SafeFsError::io(&root, e),
    })?;
    Ok(root)
}

/// `<root>/var/lib/onboarding-agent/bootstrap`, created when `create`. It and the state
/// directory above it must be root's alone: whoever can write them can swap a generation.
/// Both are kept traversable (0755): pilot-agent runs as istio-proxy and reads its files
/// through them, whatever a unit's `StateDirectoryMode` or an admin set.
fn open_generations(top: &Dir, create: bool) -> Result<Option<Dir>, SafeFsError> {
    let mode = create.then_some(0o755);
    let (state_rel, bootstrap) = GENERATIONS_DIR
        .rsplit_once('/')
        .unwrap_or(("", GENERATIONS_DIR));
    let Some(state) = top.walk(Path::new(state_rel), mode)? else {
        return Ok(None);
    };
    let Some(gens) = state.walk(Path::new(bootstrap), mode)? else {
        return Ok(None);
    };
    for d in [&state, &gens] {
        if let Some(reason) = d.distrust()? {
            return Err(SafeFsError::Untrusted {
                path: d.path().to_path_buf(),
                reason,
            });
        }
        let m = d.meta()?;
        if create && m.perm() & 0o005 != 0o005 {
            d.chmod(0o755)?;
        }
    }
    Ok(Some(gens))
}

/// The generation `current` points at, if any.
fn open_current(gens: &Dir) -> Result<Option<Dir>, SafeFsError> {
    match gens.read_link_at(OsStr::new(CURRENT))? {
        Some(name) if is_generation_name(&name) => gens.open_dir_at(name.as_os_str()),
        _ => Ok(None),
    }
}

fn is_generation_name(name: &Path) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with("gen-") && !n.contains('/'))
}

/// What [`apply`] would write, without writing (so the caller can record that a restart
/// is pending before the first byte changes).
pub fn preview(root: &Path, files: &[BootstrapFile]) -> Result<Applied, FilesError> {
    let root = absolute(root)?;
    plan(&root, files)?;
    let top = Dir::open_trusted(&root).map_err(fs_err(READING))?;
    let gens = open_generations(&top, false).map_err(fs_err(READING))?;
    let current = match &gens {
        Some(g) => open_current(g).map_err(fs_err(READING))?,
        None => None,
    };
    let found = survey(&root, &top, current.as_ref(), files).map_err(fs_err(READING))?;
    let mut out = Applied::default();
    for (file, found) in files.iter().zip(&found) {
        let existing = found
            .existing
            .as_ref()
            .map(|e| (e.bytes.as_slice(), e.mode));
        if change_needed(existing, file.content.as_bytes(), file.mode.bits()) == Change::Content {
            out.written.push(file.path.clone());
            out.restart_needed |= file.restart_on_change;
        }
    }
    Ok(out)
}

/// Where the agent keeps generations of the file set, relative to the root prefix.
pub const GENERATIONS_DIR: &str = "var/lib/onboarding-agent/bootstrap";
const CURRENT: &str = "current";

/// One file of a generation.
struct Entry<'a> {
    abs: &'a str,
    content: &'a [u8],
    mode: u32,
    /// uid and gid to give it (applied only when the agent runs as root).
    owner: Option<(u32, u32)>,
}

fn perms_of(entries: &[Entry]) -> BTreeMap<String, (u32, Option<u32>)> {
    let list: Vec<_> = entries
        .iter()
        .map(|e| (e.abs, e.mode, e.owner.map(|(_, g)| g)))
        .collect();
    dir_perms(&list)
}

/// Writes the bootstrap so that the set of files flips from the old to the new one at a single
/// instant, as Kubernetes does for ConfigMap volumes: every file of a set is written into a
/// fresh generation directory under [`GENERATIONS_DIR`], each path the sidecar reads is a
/// symlink to `<generations>/current/<path>`, and one `rename(2)` of the `current` symlink
/// switches the whole set. Killed at any point, the agent leaves the old set or the new one,
/// never a mix (the files live in four directories, so renaming them one by one could not
/// promise that). Nothing is written when nothing changed.
pub fn apply(root: &Path, files: &[BootstrapFile]) -> Result<Applied, FilesError> {
    let root = &absolute(root)?;
    plan(root, files)?;
    let top = Dir::open_trusted(root).map_err(fs_err(WRITING))?;
    let gens = open_generations(&top, true)
        .map_err(fs_err(WRITING))?
        .ok_or_else(|| FilesError::Fs {
            what: WRITING,
            source: SafeFsError::io(
                root.join(GENERATIONS_DIR),
                std::io::ErrorKind::NotFound.into(),
            ),
        })?;
    remove_generation_temps(&gens);
    let current = open_current(&gens).map_err(fs_err(READING))?;
    let found = survey(root, &top, current.as_ref(), files).map_err(fs_err(READING))?;
    let owners = resolve_owners(files);
    let mut applied = Applied::default();
    let mut any_change = false;
    for (file, found) in files.iter().zip(&found) {
        let existing = found
            .existing
            .as_ref()
            .map(|e| (e.bytes.as_slice(), e.mode));
        match change_needed(existing, file.content.as_bytes(), file.mode.bits()) {
            Change::None => {}
            Change::Mode => any_change = true,
            Change::Content => {
                any_change = true;
                applied.written.push(file.path.clone());
                applied.restart_needed |= file.restart_on_change;
            }
        }
        any_change |= !found.linked;
    }
    let wanted: Vec<Entry> = files
        .iter()
        .zip(&owners)
        .map(|(f, owner)| Entry {
            abs: &f.path,
            content: f.content.as_bytes(),
            mode: f.mode.bits(),
            owner: *owner,
        })
        .collect();
    if !any_change {
        // Owners may still need fixing (istio-proxy created after the files were written).
        if let Some(cur) = &current {
            fix_owners(cur, &wanted).map_err(fs_err(WRITING))?;
        }
        return Ok(applied);
    }
    // First time through (plain files, or nothing yet): capture what is there now as a
    // generation and point the paths at it, so that switching paths to links changes no
    // content; only the `current` swap below does. A copy grants nobody more than the
    // original did: same owner, no added bits.
    if found.iter().any(|f| !f.linked) {
        let snapshot: Vec<Entry> = files
            .iter()
            .zip(&found)
            .filter_map(|(f, found)| {
                let e = found.existing.as_ref()?;
                Some(Entry {
                    abs: &f.path,
                    content: &e.bytes,
                    mode: FileMode::masked(e.mode).bits(),
                    owner: Some((e.uid, e.gid)),
                })
            })
            .collect();
        let gen_old = write_generation(&gens, &snapshot)?;
        switch_current(&gens, &gen_old)?;
        for file in files {
            link_to_current(&top, root, &file.path)?;
        }
    }
    let gen_new = write_generation(&gens, &wanted)?;
    switch_current(&gens, &gen_new)?;
    remove_old_generations(&gens, &gen_new);
    Ok(applied)
}

/// Gives each file of the current generation its owner and each directory its mode and
/// group, through descriptors.
fn fix_owners(generation: &Dir, entries: &[Entry]) -> Result<(), SafeFsError> {
    if safefs::is_root() {
        for e in entries {
            let Some((uid, gid)) = e.owner else { continue };
            let (parent, name) = split(e.abs);
            let Some(dir) = generation.walk(parent, None)? else {
                continue;
            };
            if let Some((file, meta)) = dir.open_file_at(name)?
                && (meta.uid != uid || meta.gid != gid)
            {
                safefs::fchown(file.as_raw_fd(), uid, gid)
                    .map_err(|err| SafeFsError::io(dir.path().join(name), err))?;
            }
        }
    }
    apply_dir_perms(generation, entries)
}

fn apply_dir_perms(generation: &Dir, entries: &[Entry]) -> Result<(), SafeFsError> {
    for (rel, (mode, group)) in perms_of(entries) {
        let Some(d) = generation.walk(Path::new(&rel), None)? else {
            continue;
        };
        let m = d.meta()?;
        if let Some(g) = group
            && safefs::is_root()
            && m.gid != g
        {
            // uid -1: leave the owner (root) as it is.
            d.chown(u32::MAX, g)?;
        }
        if m.perm() != mode {
            d.chmod(mode)?;
        }
    }
    Ok(())
}

/// Writes a complete generation under a temporary name, then renames it into place: a
/// generation directory is either whole or absent. It is built closed (0700) and opened to
/// the sidecar only once every file has its owner.
fn write_generation(gens: &Dir, entries: &[Entry]) -> Result<String, FilesError> {
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
    let tmp_name = format!(".{name}.tmp");
    let tmp = OsStr::new(&tmp_name);
    let w = fs_err(WRITING);
    gens.mkdir_at(tmp, 0o700).map_err(&w)?;
    let gen_dir = gens.open_dir_at(tmp).map_err(&w)?.ok_or_else(|| {
        w(SafeFsError::io(
            gens.path().join(tmp),
            std::io::ErrorKind::NotFound.into(),
        ))
    })?;
    for e in entries {
        let (parent, file_name) = split(e.abs);
        let dir = gen_dir
            .walk(parent, Some(0o700))
            .map_err(&w)?
            .ok_or_else(|| {
                w(SafeFsError::io(
                    gen_dir.path().join(parent),
                    std::io::ErrorKind::NotFound.into(),
                ))
            })?;
        let path = dir.path().join(file_name);
        let mut f = dir.create_file_at(file_name, e.mode).map_err(&w)?;
        let io = |err| w(SafeFsError::io(&path, err));
        f.write_all(e.content).map_err(io)?;
        if let Some((uid, gid)) = e.owner
            && safefs::is_root()
        {
            safefs::fchown(f.as_raw_fd(), uid, gid).map_err(io)?;
        }
        f.sync_all().map_err(io)?;
    }
    apply_dir_perms(&gen_dir, entries).map_err(&w)?;
    gens.rename_at(tmp, OsStr::new(&name)).map_err(&w)?;
    gens.sync().map_err(&w)?;
    Ok(name)
}

/// Points `current` at `gen` with one rename.
fn switch_current(gens: &Dir, gen_name: &str) -> Result<(), FilesError> {
    let w = fs_err(WRITING);
    let tmp = format!(".{CURRENT}.tmp.{}", std::process::id());
    let tmp = OsStr::new(&tmp);
    gens.remove_tree_at(tmp).map_err(&w)?;
    gens.symlink_at(Path::new(gen_name), tmp).map_err(&w)?;
    gens.rename_at(tmp, OsStr::new(CURRENT)).map_err(&w)?;
    gens.sync().map_err(&w)
}

/// Replaces whatever is at the target of `abs` by a symlink into `current`, atomically. The
/// directory may belong to istio-proxy: it is reached without following its links, and the
/// rename replaces whatever entry is there (a link included) rather than writing through it.
fn link_to_current(top: &Dir, root: &Path, abs: &str) -> Result<(), FilesError> {
    let w = fs_err(WRITING);
    let (parent, name) = split(abs);
    let dir = top.walk(parent, Some(0o755)).map_err(&w)?.ok_or_else(|| {
        w(SafeFsError::io(
            root.join(parent),
            std::io::ErrorKind::NotFound.into(),
        ))
    })?;
    let tmp = format!(
        ".{}.tmp.{}.link",
        name.to_string_lossy(),
        std::process::id()
    );
    let tmp = OsStr::new(&tmp);
    dir.unlink_at(tmp).map_err(&w)?;
    dir.symlink_at(&link_dest(root, abs), tmp).map_err(&w)?;
    if let Err(e) = dir.rename_at(tmp, name) {
        let _ = dir.unlink_at(tmp);
        return Err(w(e));
    }
    dir.sync().map_err(&w)
}

/// Generations other than `keep` (and what `current` points at) are no longer read.
fn remove_old_generations(gens: &Dir, keep: &str) {
    let Ok(entries) = gens.entries() else {
        return;
    };
    for e in entries {
        let name = e.to_string_lossy();
        if name.starts_with("gen-") && name != keep {
            let _ = gens.remove_tree_at(&e);
        }
    }
}

/// Half-written generations and link temporaries a killed agent left behind.
fn remove_generation_temps(gens: &Dir) {
    let Ok(entries) = gens.entries() else {
        return;
    };
    for e in entries {
        let name = e.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp") {
            let _ = gens.remove_tree_at(&e);
        }
    }
}

/// Temporary links a killed agent left beside the paths it writes (only ours:
/// `.<name>.tmp.`), removed without following anything.
pub fn remove_stale_temps(root: &Path, files: &[BootstrapFile]) {
    let Ok(top) = Dir::open_trusted(root) else {
        return;
    };
    let mut seen = std::collections::BTreeSet::new();
    for f in files {
        if target_path(root, &f.path).is_err() {
            continue;
        }
        let (parent, name) = split(&f.path);
        let prefix = format!(".{}.tmp.", name.to_string_lossy());
        if !seen.insert((parent.to_path_buf(), prefix.clone())) {
            continue;
        }
        let Ok(Some(dir)) = top.walk(parent, None) else {
            continue;
        };
        let Ok(entries) = dir.entries() else {
            continue;
        };
        for entry in entries {
            if entry.to_string_lossy().starts_with(&prefix)
                && dir
                    .stat_at(&entry)
                    .is_ok_and(|m| m.is_some_and(|m| !m.is_dir()))
            {
                let _ = dir.unlink_at(&entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(path: &str, mode: u32, content: &str, restart: bool) -> BootstrapFile {
        BootstrapFile {
            path: path.into(),
            mode: FileMode::new(mode).unwrap(),
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

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn is_root() -> bool {
        safefs::is_root()
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
        assert_eq!(mode(&state), 0o755);
        assert_eq!(mode(&root.join(GENERATIONS_DIR)), 0o755);
        // The public files' directories are open; the token's are not (it has no owner
        // here, so they are root's alone), and the generation itself is traversable only.
        let real = |rel: &str| std::fs::canonicalize(target_path(root, rel).unwrap()).unwrap();
        // <generation>/var/lib/istio/envoy/cluster.env
        let env = real("/var/lib/istio/envoy/cluster.env");
        let generation = env.ancestors().nth(5).unwrap().to_path_buf();
        assert!(
            generation.starts_with(root.join(GENERATIONS_DIR)),
            "{generation:?}"
        );
        assert_eq!(mode(&generation), 0o711);
        assert_eq!(mode(&generation.join("var")), 0o711);
        for d in [
            "var/lib",
            "var/lib/istio",
            "var/lib/istio/envoy",
            "etc",
            "etc/certs",
        ] {
            assert_eq!(mode(&generation.join(d)), 0o755, "{d}");
        }
        for d in ["var/run", "var/run/secrets", "var/run/secrets/tokens"] {
            assert_eq!(mode(&generation.join(d)), 0o750, "{d}");
        }
    }

    #[test]
    fn directory_modes_follow_the_files_below() {
        let perms = dir_perms(&[
            ("/etc/certs/root-cert.pem", 0o644, None),
            ("/var/lib/istio/envoy/cluster.env", 0o644, None),
            ("/var/run/secrets/tokens/istio-token", 0o600, Some(997)),
            ("/var/run/secrets/other/key", 0o640, None),
        ]);
        assert_eq!(perms[""], (0o711, None));
        assert_eq!(perms["etc/certs"], (0o755, None));
        assert_eq!(perms["var"], (0o711, None));
        assert_eq!(perms["var/run/secrets/tokens"], (0o750, Some(997)));
        // Two secrets of different groups: each branch closes itself.
        assert_eq!(perms["var/run/secrets"], (0o711, None));
        assert_eq!(perms["var/run/secrets/other"], (0o750, None));
        assert_eq!(perms.len(), 11, "{perms:?}");
    }

    /// The token's directories let its owner through and nobody else, with real users.
    #[test]
    fn only_the_token_owner_reads_the_token() {
        if !is_root() || lookup_user("nobody").is_none() {
            eprintln!("skipped: needs root and user nobody");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // Let other users reach the root prefix, as on a real host.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path();
        let mut files = set("a");
        files[2].owner = Some("nobody".into());
        apply(root, &files).unwrap();
        let token = target_path(root, "/var/run/secrets/tokens/istio-token").unwrap();
        let env = target_path(root, "/var/lib/istio/envoy/cluster.env").unwrap();
        let (nobody_uid, nobody_gid) = lookup_user("nobody").unwrap();
        let as_user = |uid: u32, gid: u32, path: &Path| {
            std::process::Command::new("setpriv")
                .args([
                    format!("--reuid={uid}"),
                    format!("--regid={gid}"),
                    "--clear-groups".into(),
                    "cat".into(),
                ])
                .arg(path)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        assert!(
            as_user(nobody_uid, nobody_gid, &token),
            "the owner reads its token"
        );
        assert!(as_user(nobody_uid, nobody_gid, &env));
        // Another unprivileged user: the public files yes, the token's directory no.
        assert!(as_user(65533, 65533, &env));
        assert!(!as_user(65533, 65533, &token));
        let real = std::fs::canonicalize(&token).unwrap();
        let tokens_dir = real.parent().unwrap();
        let meta = std::fs::metadata(tokens_dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o750);
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), nobody_gid);
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    }

    /// What a compromised sidecar user can do in the directories it owns.
    fn hand_to_sidecar_user(root: &Path, rels: &[&str]) {
        for rel in rels {
            std::os::unix::fs::chown(root.join(rel), Some(65534), Some(65534)).unwrap();
        }
    }

    fn generation_contents(root: &Path) -> String {
        fn walk(p: &Path, out: &mut String) {
            for e in std::fs::read_dir(p).unwrap() {
                let e = e.unwrap();
                let t = e.file_type().unwrap();
                if t.is_dir() {
                    walk(&e.path(), out);
                } else if t.is_file() {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        let mut out = String::new();
        walk(&root.join(GENERATIONS_DIR), &mut out);
        out
    }

    #[test]
    fn a_planted_link_is_neither_read_nor_chowned() {
        if !is_root() {
            eprintln!("skipped: needs root to hand directories to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, "TOP-SECRET\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut files = set("a");
        files[2].owner = Some("nobody".into());
        apply(&root, &files).unwrap();
        hand_to_sidecar_user(
            &root,
            &["var/run/secrets", "var/run/secrets/tokens", "etc/certs"],
        );
        // The sidecar user swaps our links for links to a file only root may read.
        for rel in [
            "var/run/secrets/tokens/istio-token",
            "etc/certs/root-cert.pem",
        ] {
            let p = root.join(rel);
            std::fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink(&secret, &p).unwrap();
        }
        // Whether the agent even opened the secret shows in its access time (relatime
        // updates an atime older than the mtime on the first read).
        let old_atime = |p: &Path| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000);
            std::fs::File::open(p)
                .unwrap()
                .set_times(std::fs::FileTimes::new().set_accessed(t))
                .unwrap();
        };
        let atime =
            |p: &Path| std::os::unix::fs::MetadataExt::atime(&std::fs::metadata(p).unwrap());
        let control = dir.path().join("control");
        std::fs::write(&control, "x").unwrap();
        old_atime(&control);
        let _ = std::fs::read(&control).unwrap();
        let atime_kept = atime(&control) != 1000;
        old_atime(&secret);
        let applied = apply(&root, &files).unwrap();
        assert_eq!(applied.written.len(), 2, "{applied:?}");
        if atime_kept {
            assert_eq!(
                atime(&secret),
                1000,
                "the agent read the file behind a planted link"
            );
        } else {
            eprintln!(
                "this file system keeps no access times: not checking that the secret was never read"
            );
        }
        // Neither given away nor copied where the sidecar user could read it.
        let meta = std::fs::metadata(&secret).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "TOP-SECRET\n");
        let copied = generation_contents(&root);
        assert!(!copied.contains("TOP-SECRET"), "{copied}");
        // Our links are back and the set is whole.
        assert_eq!(read_set(&root), vec!["A=a\n", "cert-a", "tok-a"]);
        assert!(
            std::fs::symlink_metadata(root.join("var/run/secrets/tokens/istio-token"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_hard_link_or_fifo_in_place_of_a_file_is_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let secret = dir.path().join("key.pem");
        std::fs::write(&secret, "PRIVATE KEY").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let envoy = root.join("var/lib/istio/envoy");
        let certs = root.join("etc/certs");
        std::fs::create_dir_all(&envoy).unwrap();
        std::fs::create_dir_all(&certs).unwrap();
        // Before the first apply (plain files are snapshotted then): a hard link to a
        // secret, and a FIFO that would block a reader forever.
        std::fs::hard_link(&secret, certs.join("root-cert.pem")).unwrap();
        let fifo = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
            envoy.join("cluster.env").as_os_str(),
        ))
        .unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        apply(&root, &set("a")).unwrap();
        assert!(!generation_contents(&root).contains("PRIVATE KEY"));
        assert_eq!(read_set(&root), vec!["A=a\n", "cert-a", "tok-a"]);
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "PRIVATE KEY");
    }

    #[test]
    fn a_planted_directory_link_is_refused_and_the_last_files_stay() {
        if !is_root() {
            eprintln!("skipped: needs root to hand directories to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        apply(&root, &set("a")).unwrap();
        hand_to_sidecar_user(&root, &["var/run/secrets"]);
        let tokens = root.join("var/run/secrets/tokens");
        std::fs::rename(&tokens, dir.path().join("old-tokens")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &tokens).unwrap();
        let e = apply(&root, &set("b")).unwrap_err().to_string();
        assert!(
            e.contains("refusing to follow the symbolic link")
                && e.contains("var/run/secrets/tokens")
                && e.contains("uid 65534"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        // Refused before anything was written: the last good set is still current.
        assert_eq!(
            std::fs::read_to_string(root.join("var/lib/istio/envoy/cluster.env")).unwrap(),
            "A=a\n"
        );
        assert!(preview(&root, &set("b")).is_err());
        // The state directory must be root's alone too.
        std::fs::remove_file(&tokens).unwrap();
        hand_to_sidecar_user(&root, &["var/lib/onboarding-agent/bootstrap"]);
        let e = apply(&root, &set("b")).unwrap_err().to_string();
        assert!(
            e.contains("refusing to use") && e.contains("bootstrap"),
            "{e}"
        );
    }

    #[test]
    fn stale_temps_of_our_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let envoy = dir.path().join("var/lib/istio/envoy");
        std::fs::create_dir_all(&envoy).unwrap();
        std::fs::write(envoy.join(".cluster.env.tmp.99.0"), "torn").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", envoy.join(".cluster.env.tmp.1.link")).unwrap();
        std::fs::write(envoy.join("key.pem.tmp.123"), "istio's own").unwrap();
        remove_stale_temps(dir.path(), &set("a"));
        assert!(!envoy.join(".cluster.env.tmp.99.0").exists());
        assert!(std::fs::symlink_metadata(envoy.join(".cluster.env.tmp.1.link")).is_err());
        assert!(Path::new("/etc/passwd").exists());
        assert!(envoy.join("key.pem.tmp.123").exists());
    }

    #[test]
    fn a_killed_switch_leaves_old_or_new() {
        // The steps of `apply` before the final swap change nothing a reader sees: replay
        // them by hand and check the visible set after each.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        apply(root, &set("a")).unwrap();
        let generations = root.join(GENERATIONS_DIR);
        let gens = Dir::open_trusted(&generations).unwrap();
        let b = set("b");
        let entries: Vec<Entry> = b
            .iter()
            .map(|f| Entry {
                abs: &f.path,
                content: f.content.as_bytes(),
                mode: f.mode.bits(),
                owner: None,
            })
            .collect();
        let new_gen = write_generation(&gens, &entries).unwrap();
        assert_eq!(
            read_set(root),
            vec!["A=a\n", "cert-a", "tok-a"],
            "after writing"
        );
        // A half-written generation (killed mid-way) is cleaned up and never read.
        std::fs::create_dir_all(generations.join(".gen-x.tmp/etc")).unwrap();
        switch_current(&gens, &new_gen).unwrap();
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
