//! File-system access for a root process working in directories that less privileged users
//! can write (`/var/run/secrets`, `/etc/certs` and `/var/lib/istio/envoy` belong to
//! istio-proxy): every operation goes through an open directory (`*at(2)` calls), never
//! through a path the kernel would resolve again, and never follows a symbolic link that
//! such a user could have planted.
//!
//! A directory is *trusted* when only root (or the agent's own user) can change its entries:
//! owned by root or us, not writable by group or others (group root excepted). A symlink is
//! followed only when it lives in a trusted directory (root put it there: `/var/run -> /run`);
//! anywhere else it is refused. Files are opened with `O_NOFOLLOW`, and ownership and modes
//! are changed through the opened descriptor (`fchown`, `fchmod`), so a link swapped in
//! between a check and a use changes nothing.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one walk before giving up (the kernel's own limit).
const MAX_LINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum SafeFsError {
    #[error(
        "refusing to follow the symbolic link {}: {reason}; a link there may have been planted by that user (remove it, the agent recreates what it needs)",
        path.display()
    )]
    UntrustedLink { path: PathBuf, reason: String },
    #[error(
        "refusing to use {}: {}; only root may be able to write it",
        path.display(),
        reason.replace("its directory", "it")
    )]
    Untrusted { path: PathBuf, reason: String },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SafeFsError {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> SafeFsError {
        SafeFsError::Io {
            path: path.into(),
            source,
        }
    }
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Whether the agent runs as root (and so can and must give files to their owners).
pub fn is_root() -> bool {
    euid() == 0
}

/// Why a directory with this owner and mode is not trusted, or None when it is.
pub fn distrust_reason(uid: u32, gid: u32, mode: u32, me: u32) -> Option<String> {
    if uid != 0 && uid != me {
        return Some(format!("its directory belongs to uid {uid}"));
    }
    if mode & 0o002 != 0 {
        return Some("its directory is writable by everyone".into());
    }
    if mode & 0o020 != 0 && gid != 0 {
        return Some(format!("its directory is writable by group {gid}"));
    }
    None
}

/// File metadata from `fstat`/`fstatat`.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
}

impl Meta {
    // The nlink cast is needed: nlink_t is u64 on x86_64 but u32 on aarch64 (the arm64
    // package); clippy on x86_64 sees only the former.
    #[allow(clippy::unnecessary_cast)]
    fn from_stat(st: &libc::stat) -> Meta {
        Meta {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink as u64,
            size: st.st_size.max(0) as u64,
        }
    }
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

fn fstat(fd: libc::c_int) -> io::Result<Meta> {
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is a valid out pointer.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(Meta::from_stat(&st))
}

/// An open directory, with the path it was reached by (for messages only: never resolved
/// again).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens a directory the administrator named (the `--root` prefix, `/`): trusted as
    /// given, links and all.
    pub fn open_trusted(path: &Path) -> Result<Dir, SafeFsError> {
        let c = cstr(path.as_os_str()).map_err(|e| SafeFsError::io(path, e))?;
        // SAFETY: c is a valid NUL-terminated string.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| SafeFsError::io(path, e))?;
        Ok(Dir {
            // SAFETY: fd was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }

    fn err(&self, name: &OsStr, source: io::Error) -> SafeFsError {
        SafeFsError::io(self.path.join(name), source)
    }

    pub fn meta(&self) -> Result<Meta, SafeFsError> {
        fstat(self.raw()).map_err(|e| SafeFsError::io(&self.path, e))
    }

    /// None when this directory is trusted, else why not.
    pub fn distrust(&self) -> Result<Option<String>, SafeFsError> {
        let m = self.meta()?;
        Ok(distrust_reason(m.uid, m.gid, m.mode, euid()))
    }

    /// `lstat` of an entry (never follows it); None when missing.
    pub fn stat_at(&self, name: &OsStr) -> Result<Option<Meta>, SafeFsError> {
        let c = cstr(name).map_err(|e| self.err(name, e))?;
        // SAFETY: see fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, NUL-terminated name, valid out pointer.
        match check(unsafe {
            libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
        }) {
            Ok(_) => Ok(Some(Meta::from_stat(&st))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(name, e)),
        }
    }

    /// The target of a symlink entry; None when missing or not a link.
    pub fn read_link_at(&self, name: &OsStr) -> Result<Option<PathBuf>, SafeFsError> {
        let c = cstr(name).map_err(|e| self.err(name, e))?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: valid fd and name; buf is writable for its length.
        let n =
            unsafe { libc::readlinkat(self.raw(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::EINVAL) => Ok(None),
                _ => Err(self.err(name, e)),
            };
        }
        buf.truncate(n as usize);
        Ok(Some(PathBuf::from(OsString::from_vec(buf))))
    }

    /// Opens an entry that must be a directory, without following a link.
    pub fn open_dir_at(&self, name: &OsStr) -> Result<Option<Dir>, SafeFsError> {
        let c = cstr(name).map_err(|e| self.err(name, e))?;
        // SAFETY: valid fd and name.
        let fd = unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => Err(SafeFsError::NotADirectory {
                    path: self.path.join(name),
                }),
                _ => Err(self.err(name, e)),
            };
        }
        Ok(Some(Dir {
            // SAFETY: fd was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: self.path.join(name),
        }))
    }

    pub fn mkdir_at(&self, name: &OsStr, mode: u32) -> Result<(), SafeFsError> {
        let c = cstr(name).map_err(|e| self.err(name, e))?;
        // SAFETY: valid fd and name.
        match check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) }) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(self.err(name, e)),
        }
    }

    /// Walks `rel` (relative, no `..` from the caller) one component at a time. A symlink is
    /// followed only inside a trusted directory; with `create`, missing directories are made
    /// with `mode`. None when a component is missing and `create` is false.
    pub fn walk(&self, rel: &Path, create: Option<u32>) -> Result<Option<Dir>, SafeFsError> {
        let mut todo: Vec<OsString> = components(rel);
        todo.reverse();
        let mut cur = self.reopen()?;
        let mut links = 0;
        while let Some(name) = todo.pop() {
            if name == "." || name.is_empty() {
                continue;
            }
            if name == ".." {
                // Only reachable through a trusted link's target.
                cur = cur.open_dir_at(OsStr::new(".."))?.ok_or_else(|| {
                    SafeFsError::NotADirectory {
                        path: cur.path.join(".."),
                    }
                })?;
                continue;
            }
            let meta = match cur.stat_at(&name)? {
                Some(m) => m,
                None => match create {
                    Some(mode) => {
                        cur.mkdir_at(&name, mode)?;
                        match cur.stat_at(&name)? {
                            Some(m) => m,
                            None => {
                                return Err(cur.err(&name, io::ErrorKind::NotFound.into()));
                            }
                        }
                    }
                    None => return Ok(None),
                },
            };
            if meta.is_symlink() {
                let here = cur.path.join(&name);
                if let Some(reason) = cur.distrust()? {
                    return Err(SafeFsError::UntrustedLink { path: here, reason });
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(SafeFsError::io(
                        here,
                        io::Error::from_raw_os_error(libc::ELOOP),
                    ));
                }
                let Some(target) = cur.read_link_at(&name)? else {
                    return Err(SafeFsError::NotADirectory { path: here });
                };
                let mut more = components(&target);
                more.reverse();
                todo.extend(more);
                if target.is_absolute() {
                    cur = Dir::open_trusted(Path::new("/"))?;
                }
                continue;
            }
            cur = cur
                .open_dir_at(&name)?
                .ok_or_else(|| cur.err(&name, io::ErrorKind::NotFound.into()))?;
        }
        Ok(Some(cur))
    }

    /// A second descriptor for the same directory.
    pub fn reopen(&self) -> Result<Dir, SafeFsError> {
        let d = self
            .open_dir_at(OsStr::new("."))?
            .ok_or_else(|| SafeFsError::NotADirectory {
                path: self.path.clone(),
            })?;
        Ok(Dir {
            fd: d.fd,
            path: self.path.clone(),
        })
    }

    /// Opens a regular file for reading without following a link and without blocking on a
    /// FIFO. None when the entry is missing, is a link, or is not a regular file.
    pub fn open_file_at(&self, name: &OsStr) -> Result<Option<(File, Meta)>, SafeFsError> {
        let c = cstr(name).map_err(|e| self.err(name, e))?;
        // SAFETY: valid fd and name.
        let fd = unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_RDONLY
                    | libc::O_NOFOLLOW
                    | libc::O_NONBLOCK
                    | libc::O_NOCTTY
                    | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENXIO) => Ok(None),
                _ => Err(self.err(name, e)),
            };
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let meta = fstat(file.as_raw_fd()).map_err(|e| self.err(name, e))?;
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some((file, meta)))
    }

    /// Reads a regular file (see [`Dir::open_file_at`]) of at most `limit` bytes; longer
    /// files come back cut at `limit + 1` bytes, so that they compare unequal to anything
    /// the agent would write.
    pub fn read_file_at(
        &self,
        name: &OsStr,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, Meta)>, SafeFsError> {
        let Some((file, meta)) = self.open_file_at(name)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.err(name, e))?;
        Ok(Some((bytes, meta)))
    }

    /// Creates a new file (never an existing entry, never through a link) with `mode`.
    pub fn create_file_at(&self, name: &OsStr, mode: u32) -> Result<File, SafeFsError> {
        let c = cstr(name).map_err(|e| self.err(name, e))?;
        // SAFETY: valid fd and name.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })
        .map_err(|e| self.err(name, e))?;
        // SAFETY: fd was just opened and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        // The umask may have cleared bits of `mode`.
        fchmod(file.as_raw_fd(), mode).map_err(|e| self.err(name, e))?;
        Ok(file)
    }

    pub fn symlink_at(&self, target: &Path, name: &OsStr) -> Result<(), SafeFsError> {
        let t = cstr(target.as_os_str()).map_err(|e| self.err(name, e))?;
        let c = cstr(name).map_err(|e| self.err(name, e))?;
        // SAFETY: valid strings and fd.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), c.as_ptr()) })
            .map_err(|e| self.err(name, e))?;
        Ok(())
    }

    /// rename(2) within this directory: replaces `to` (a link there is replaced, not followed).
    pub fn rename_at(&self, from: &OsStr, to: &OsStr) -> Result<(), SafeFsError> {
        let f = cstr(from).map_err(|e| self.err(from, e))?;
        let t = cstr(to).map_err(|e| self.err(to, e))?;
        // SAFETY: valid strings and fd.
        check(unsafe { libc::renameat(self.raw(), f.as_ptr(), self.raw(), t.as_ptr()) })
            .map_err(|e| self.err(to, e))?;
        Ok(())
    }

    /// Removes a non-directory entry (a link itself, never what it points at); missing is
    /// fine.
    pub fn unlink_at(&self, name: &OsStr) -> Result<(), SafeFsError> {
        let c = cstr(name).map_err(|e| self.err(name, e))?;
        // SAFETY: valid fd and name.
        match check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) }) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(name, e)),
        }
    }

    /// Removes an entry and, for a directory, everything below it, without following links.
    pub fn remove_tree_at(&self, name: &OsStr) -> Result<(), SafeFsError> {
        match self.stat_at(name)? {
            None => Ok(()),
            Some(m) if m.is_dir() => {
                if let Some(sub) = self.open_dir_at(name)? {
                    for entry in sub.entries()? {
                        sub.remove_tree_at(&entry)?;
                    }
                }
                let c = cstr(name).map_err(|e| self.err(name, e))?;
                // SAFETY: valid fd and name.
                check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) })
                    .map_err(|e| self.err(name, e))?;
                Ok(())
            }
            Some(_) => self.unlink_at(name),
        }
    }

    /// The names in this directory (without `.` and `..`).
    pub fn entries(&self) -> Result<Vec<OsString>, SafeFsError> {
        let fd = self.reopen()?.fd.into_raw_fd();
        // SAFETY: fdopendir takes over fd on success.
        let dirp = unsafe { libc::fdopendir(fd) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fd is still ours when fdopendir failed.
            unsafe { libc::close(fd) };
            return Err(SafeFsError::io(&self.path, e));
        }
        let mut names = Vec::new();
        loop {
            // SAFETY: dirp is a valid DIR*; readdir's result is valid until the next call.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                break;
            }
            // SAFETY: d_name is NUL-terminated.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
            let bytes = name.to_bytes();
            if bytes != b"." && bytes != b".." {
                names.push(OsString::from_vec(bytes.to_vec()));
            }
        }
        // SAFETY: dirp came from fdopendir and is closed once.
        unsafe { libc::closedir(dirp) };
        Ok(names)
    }

    pub fn chmod(&self, mode: u32) -> Result<(), SafeFsError> {
        fchmod(self.raw(), mode).map_err(|e| SafeFsError::io(&self.path, e))
    }

    pub fn chown(&self, uid: u32, gid: u32) -> Result<(), SafeFsError> {
        fchown(self.raw(), uid, gid).map_err(|e| SafeFsError::io(&self.path, e))
    }

    /// Makes renames in this directory durable.
    pub fn sync(&self) -> Result<(), SafeFsError> {
        // SAFETY: valid fd.
        check(unsafe { libc::fsync(self.raw()) })
            .map(|_| ())
            .map_err(|e| SafeFsError::io(&self.path, e))
    }
}

pub fn fchmod(fd: libc::c_int, mode: u32) -> io::Result<()> {
    // SAFETY: fd is open.
    check(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(|_| ())
}

pub fn fchown(fd: libc::c_int, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fd is open.
    check(unsafe { libc::fchown(fd, uid, gid) }).map(|_| ())
}

/// The normal components of a path, root and `.` dropped, `..` kept.
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn trust_rules() {
        assert_eq!(distrust_reason(0, 0, 0o40755, 1000), None);
        assert_eq!(distrust_reason(1000, 1000, 0o40755, 1000), None);
        assert_eq!(distrust_reason(0, 0, 0o40775, 1000), None);
        assert!(
            distrust_reason(998, 998, 0o40755, 0)
                .unwrap()
                .contains("uid 998")
        );
        assert!(
            distrust_reason(0, 0, 0o41777, 0)
                .unwrap()
                .contains("everyone")
        );
        assert!(
            distrust_reason(0, 998, 0o40775, 0)
                .unwrap()
                .contains("group 998")
        );
    }

    #[test]
    fn links_are_followed_in_trusted_directories_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("run/secrets")).unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::fs::create_dir_all(root.join("elsewhere")).unwrap();
        // Root's own link (as /var/run -> /run), relative and absolute.
        std::os::unix::fs::symlink("../run", root.join("var/run")).unwrap();
        std::os::unix::fs::symlink(root.join("run"), root.join("var/run-abs")).unwrap();
        let top = Dir::open_trusted(root).unwrap();
        let d = top
            .walk(Path::new("var/run/secrets"), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            d.meta().unwrap().uid,
            std::fs::metadata(root.join("run/secrets"))
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .unwrap()
        );
        assert!(
            top.walk(Path::new("var/run-abs/secrets"), None)
                .unwrap()
                .is_some()
        );
        assert!(
            top.walk(Path::new("var/missing/x"), None)
                .unwrap()
                .is_none()
        );
        // In a directory everyone can write, the same link is refused.
        std::fs::set_permissions(
            root.join("run/secrets"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere"), root.join("run/secrets/tokens"))
            .unwrap();
        let e = top
            .walk(Path::new("var/run/secrets/tokens"), Some(0o755))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refusing to follow") && e.contains("writable by everyone"),
            "{e}"
        );
        // A file where a directory should be is an error, not followed or replaced.
        std::fs::write(root.join("var/file"), "x").unwrap();
        assert!(top.walk(Path::new("var/file/x"), Some(0o755)).is_err());
        // Creating missing directories.
        let made = top.walk(Path::new("a/b/c"), Some(0o750)).unwrap().unwrap();
        assert_eq!(made.meta().unwrap().perm() & 0o700, 0o700);
        assert!(root.join("a/b/c").is_dir());
    }

    #[test]
    fn files_are_read_without_following_or_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open_trusted(dir.path()).unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::fs::write(dir.path().join("plain"), "p").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("link")).unwrap();
        let fifo = CString::new(dir.path().join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(
            d.read_file_at(OsStr::new("plain"), 10).unwrap().unwrap().0,
            b"p"
        );
        assert!(d.read_file_at(OsStr::new("link"), 10).unwrap().is_none());
        assert!(d.read_file_at(OsStr::new("fifo"), 10).unwrap().is_none());
        assert!(d.read_file_at(OsStr::new("none"), 10).unwrap().is_none());
        assert_eq!(
            d.read_link_at(OsStr::new("link")).unwrap(),
            Some(dir.path().join("secret"))
        );
        assert_eq!(d.read_link_at(OsStr::new("plain")).unwrap(), None);
        // A new file never goes through an existing link.
        assert!(d.create_file_at(OsStr::new("link"), 0o600).is_err());
        assert_eq!(std::fs::read(dir.path().join("secret")).unwrap(), b"s");
        // Removing a tree removes links, not what they point at.
        std::fs::create_dir_all(dir.path().join("t/u")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("t/u/l")).unwrap();
        d.remove_tree_at(OsStr::new("t")).unwrap();
        assert!(!dir.path().join("t").exists());
        assert!(dir.path().join("secret").exists());
        let mut names = d.entries().unwrap();
        names.sort();
        assert_eq!(names, ["fifo", "link", "plain", "secret"]);
    }
}
