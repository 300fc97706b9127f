//! The local repository (`localRepository` in the endpoint configuration): the DEB/RPM
//! packages of the onboarding agent and of Istio's sidecar, served under `/install/` so that
//! a VM can download them from the endpoint it will onboard through (docs/install.md).
//!
//! Pure part: [`parse`] maps the request path to the one file it may name (or [`NotFound`]),
//! and [`etag`], [`not_modified`], [`range`] and [`checksum_line`] decide the HTTP answer.
//! I/O part: [`Repository`] opens that file under the configured directory without following
//! links, streams it, and computes a `.sha256` the operator did not place.
//!
//! Unauthenticated on purpose: a VM downloads the agent before it has any identity. The
//! endpoint only serves TLS, so the packages and their checksums come over the same
//! authenticated channel the agent will later use.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::io::{Read, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use warp::Reply;

use super::server::Progress;
use crate::lock;

/// Package format, the first segment of `/install/<format>/<arch>/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Deb,
    Rpm,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Deb => "deb",
            Format::Rpm => "rpm",
        }
    }

    fn parse(s: &str) -> Option<Format> {
        match s {
            "deb" => Some(Format::Deb),
            "rpm" => Some(Format::Rpm),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Deb => "application/vnd.debian.binary-package",
            Format::Rpm => "application/x-rpm",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    fn parse(s: &str) -> Option<Arch> {
        match s {
            "amd64" => Some(Arch::Amd64),
            "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Package {
    OnboardingAgent,
    IstioSidecar,
}

impl Package {
    pub fn as_str(self) -> &'static str {
        match self {
            Package::OnboardingAgent => "onboarding-agent",
            Package::IstioSidecar => "istio-sidecar",
        }
    }
}

/// One file of the repository, as a request path names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// `Some` for `/install/istio-sidecar/<revision>/...` (a revisioned Istio's sidecar).
    pub revision: Option<String>,
    pub format: Format,
    pub arch: Arch,
    pub package: Package,
    /// The `.sha256` of the package rather than the package.
    pub checksum: bool,
}

impl Artifact {
    /// The package's file name as downloaded (`onboarding-agent.deb`): what `curl -O` saves
    /// and what the `.sha256` line names.
    pub fn package_file_name(&self) -> String {
        format!("{}.{}", self.package.as_str(), self.format.as_str())
    }

    /// The package's path relative to the repository directory, the same as its URL path
    /// after `/install/`.
    pub fn package_path(&self) -> String {
        let prefix = match &self.revision {
            Some(r) => format!("istio-sidecar/{r}/"),
            None => String::new(),
        };
        format!(
            "{prefix}{}/{}/{}",
            self.format.as_str(),
            self.arch.as_str(),
            self.package_file_name()
        )
    }

    /// The requested file's path relative to the repository directory.
    pub fn path(&self) -> String {
        if self.checksum {
            format!("{}.sha256", self.package_path())
        } else {
            self.package_path()
        }
    }

    pub fn content_type(&self) -> &'static str {
        if self.checksum {
            "text/plain; charset=utf-8"
        } else {
            self.format.content_type()
        }
    }
}

/// The request path names no file of the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no such file in the local repository")]
pub struct NotFound;

/// What the repository serves, for messages.
pub const SHAPES: &str = "/install/{deb,rpm}/{amd64,arm64}/{onboarding-agent,istio-sidecar}.{deb,rpm}[.sha256] \
     and /install/istio-sidecar/<revision>/{deb,rpm}/{amd64,arm64}/istio-sidecar.{deb,rpm}[.sha256]";

/// Maps the raw (still percent-encoded) request path after `/install/` to the file it
/// names. Only the exact shapes of [`SHAPES`] are accepted, so no request can name a path
/// outside the repository: every segment is one of a few fixed words or a DNS-1123 label,
/// and anything else (`..`, `.`, empty segments, any `%` escape, a backslash, upper case,
/// an extension that does not match the format) is [`NotFound`].
pub fn parse(tail: &str) -> Result<Artifact, NotFound> {
    // Every accepted path is made of these bytes; rejecting the rest up front means no
    // escape (`%2e`, `%2f`) is ever decoded into something that matches.
    if !tail
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-./".contains(&b))
    {
        return Err(NotFound);
    }
    let segments: Vec<&str> = tail.split('/').collect();
    let (revision, rest) = match segments.as_slice() {
        ["istio-sidecar", revision, rest @ ..] if rest.len() == 3 => {
            crate::api::validation::dns1123_label(revision).map_err(|_| NotFound)?;
            (Some(revision.to_string()), rest)
        }
        rest @ [_, _, _] => (None, rest),
        _ => return Err(NotFound),
    };
    let [format, arch, file] = rest else {
        return Err(NotFound);
    };
    let format = Format::parse(format).ok_or(NotFound)?;
    let arch = Arch::parse(arch).ok_or(NotFound)?;
    let (file, checksum) = match file.strip_suffix(".sha256") {
        Some(f) => (f, true),
        None => (*file, false),
    };
    let name = file
        .strip_suffix(format.as_str())
        .and_then(|f| f.strip_suffix('.'))
        .ok_or(NotFound)?;
    let package = match name {
        "onboarding-agent" if revision.is_none() => Package::OnboardingAgent,
        "istio-sidecar" => Package::IstioSidecar,
        _ => return Err(NotFound),
    };
    Ok(Artifact {
        revision,
        format,
        arch,
        package,
        checksum,
    })
}

/// The entity tag of a file: its size and modification time (to the nanosecond), not a
/// hash of its content. Hashing would mean reading a package of tens of MiB for every
/// request just to answer `304`; size and mtime change whenever the operator replaces a
/// package (a copy or a rename gives a new mtime), which is the only way it changes.
pub fn etag(size: u64, modified: SystemTime) -> String {
    let since = modified.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "\"{size:x}-{:x}.{:08x}\"",
        since.as_secs(),
        since.subsec_nanos()
    )
}

/// `Last-Modified` (IMF-fixdate, whole seconds).
pub fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

fn opaque(tag: &str) -> &str {
    tag.trim().strip_prefix("W/").unwrap_or(tag.trim())
}

/// Whether a conditional GET is answered `304 Not Modified` (RFC 9110, 13.2.2):
/// `If-None-Match` (weak comparison, `*` matches) decides when present and
/// `If-Modified-Since` is then ignored; otherwise the file is unmodified when its mtime, to
/// the second, is not after the date given. A date that does not parse is ignored.
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: &str,
    modified: SystemTime,
) -> bool {
    if let Some(inm) = if_none_match {
        return inm
            .split(',')
            .any(|t| t.trim() == "*" || opaque(t) == opaque(etag));
    }
    let Some(since) = if_modified_since.and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    else {
        return false;
    };
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    secs(modified) <= secs(since)
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The whole file (no `Range`, one we ignore, or a stale `If-Range`).
    Full,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// `416 Range Not Satisfiable`.
    Unsatisfiable,
}

/// One `bytes=` range (RFC 9110, 14.2). Several ranges, another unit and malformed values
/// are ignored (the whole file, as the RFC allows), never an error. An `If-Range` that is
/// neither the current strong ETag nor the current `Last-Modified` also means the whole
/// file, so a resumed download never splices two versions of a package.
pub fn range(
    header: Option<&str>,
    if_range: Option<&str>,
    size: u64,
    etag: &str,
    last_modified: &str,
) -> Range {
    let Some(header) = header else {
        return Range::Full;
    };
    if let Some(ir) = if_range {
        let ir = ir.trim();
        if ir != etag && ir != last_modified {
            return Range::Full;
        }
    }
    let Some((unit, spec)) = header.trim().split_once('=') else {
        return Range::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return Range::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Full;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match num(last) {
            Some(0) => Range::Unsatisfiable,
            Some(_) if size == 0 => Range::Unsatisfiable,
            Some(n) => Range::Part {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            None => Range::Full,
        },
        // `a-`: from a to the end.
        (false, true) => match num(first) {
            Some(a) if a >= size => Range::Unsatisfiable,
            Some(a) => Range::Part {
                start: a,
                end: size - 1,
            },
            None => Range::Full,
        },
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= size {
                    Range::Unsatisfiable
                } else {
                    Range::Part {
                        start: a,
                        end: b.min(size - 1),
                    }
                }
            }
            _ => Range::Full,
        },
        (true, true) => Range::Full,
    }
}

/// A `.sha256` file's content exactly as `sha256sum` writes it and `sha256sum --check`
/// reads it: the hex digest, two spaces (text mode), the file name, a newline.
pub fn checksum_line(hex: &str, file_name: &str) -> String {
    format!("{hex}  {file_name}\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// At most this many distinct missing files are logged at warn; the rest at debug. The
/// revision segment is any DNS-1123 label a client makes up, so without a bound anyone
/// could fill the log (and the set that remembers what was logged).
const MAX_REPORTED_MISSING: usize = 64;

/// A computed checksum, valid while the package keeps its size and mtime.
#[derive(Debug, Clone)]
struct Checksum {
    size: u64,
    modified: SystemTime,
    hex: String,
}

/// What a file lookup found.
enum Found {
    File(std::fs::File, Metadata),
    Missing,
    /// A link, a directory, a device: refused, with why.
    Refused(&'static str),
}

/// The configured directory and what the endpoint remembers about it.
#[derive(Debug)]
pub struct Repository {
    dir: PathBuf,
    checksums: Mutex<HashMap<String, Checksum>>,
    reported: Mutex<HashSet<String>>,
}

const CHECKSUMS: &str = "local repository checksums";
const REPORTED: &str = "local repository missing files";

impl Repository {
    pub fn new(dir: PathBuf) -> Repository {
        Repository {
            dir,
            checksums: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashSet::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens `rel` (a path [`parse`] produced, so plain names joined by `/`) under the
    /// directory. Every directory on the way must be a real directory, not a link, and the
    /// file is opened with `O_NOFOLLOW` and must be a regular file: a link planted in the
    /// repository never leads the endpoint out of it. `O_NONBLOCK` keeps a FIFO from
    /// blocking the open (it is then refused as not a regular file). The configured
    /// directory itself may be a link: the operator chose it. The directories are checked
    /// before the open walks them again, so swapping one for a link in between would
    /// escape; only someone who can write the repository could do that, and that is the
    /// operator, who decides what it serves anyway (the endpoint never writes there).
    async fn open_async(&self, rel: String) -> std::io::Result<Found> {
        // A few syscalls on a local directory, but they may block (NFS, a slow disk):
        // off the async workers.
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || open_under(&dir, &rel))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Logs a missing file at warn the first time (bounded by [`MAX_REPORTED_MISSING`]).
    fn report_missing(&self, rel: &str) {
        let first = match lock::lock(&self.reported, REPORTED) {
            Ok(mut seen) if seen.len() < MAX_REPORTED_MISSING => seen.insert(rel.to_string()),
            _ => false,
        };
        let path = self.dir.join(rel);
        if first {
            tracing::warn!(file = %path.display(), "local repository: a VM asked for a file that is not there; place it to serve it");
        } else {
            tracing::debug!(file = %path.display(), "local repository: missing file asked for again");
        }
    }

    /// The package's SHA-256, from the cache while its size and mtime are unchanged.
    async fn sha256_of(
        &self,
        rel: &str,
        file: std::fs::File,
        meta: &Metadata,
    ) -> std::io::Result<String> {
        let modified = meta.modified()?;
        let size = meta.len();
        if let Ok(cache) = lock::lock(&self.checksums, CHECKSUMS)
            && let Some(c) = cache.get(rel)
            && c.size == size
            && c.modified == modified
        {
            return Ok(c.hex.clone());
        }
        let digest = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut f = file;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok(hex(&h.finalize()))
        })
        .await
        .map_err(std::io::Error::other)??;
        if let Ok(mut cache) = lock::lock(&self.checksums, CHECKSUMS) {
            cache.insert(
                rel.to_string(),
                Checksum {
                    size,
                    modified,
                    hex: digest.clone(),
                },
            );
        }
        Ok(digest)
    }
}

fn open_under(dir: &Path, rel: &str) -> std::io::Result<Found> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut path = dir.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    let Some((file, dirs)) = parts.split_last() else {
        return Ok(Found::Missing);
    };
    for d in dirs {
        path.push(d);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Ok(Found::Refused("a directory on its path is a symbolic link"));
            }
            Ok(_) => return Ok(Found::Missing),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
            Err(e) => return Err(e),
        }
    }
    path.push(file);
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Found::Refused("it is a symbolic link"));
        }
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(Found::Refused("it is not a regular file"));
    }
    Ok(Found::File(f, meta))
}

/// The request headers the repository reads.
#[derive(Debug, Default, Clone)]
pub struct Conditions {
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    pub range: Option<String>,
    pub if_range: Option<String>,
}

impl Conditions {
    pub fn from_headers(h: &HeaderMap) -> Conditions {
        let get = |name: header::HeaderName| {
            // Several If-None-Match lines are one list (RFC 9110, 5.3).
            let values: Vec<&str> = h
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(", "))
        };
        Conditions {
            if_none_match: get(header::IF_NONE_MATCH),
            if_modified_since: h
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            range: h
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            if_range: h
                .get(header::IF_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }
}

fn text(status: StatusCode, body: String) -> warp::reply::Response {
    let mut r = warp::reply::with_status(body, status).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub const NOT_CONFIGURED: &str = "this onboarding endpoint has no local repository: set localRepository.directory in its configuration to serve packages under /install/ (docs/install.md)\n";

/// The answer to `GET /install/<tail>`, or `HEAD` with `head`: the same status and headers
/// (`Content-Length` included) with no body. hyper leaves out the body of a HEAD answer on
/// HTTP/1.1 but would send it on HTTP/2, which clients refuse as a protocol error.
pub async fn respond(
    repo: Option<&Repository>,
    tail: &str,
    cond: &Conditions,
    progress: Option<Progress>,
    head: bool,
) -> warp::reply::Response {
    let r = answer(repo, tail, cond, progress).await;
    if head {
        let (parts, _) = r.into_parts();
        return warp::reply::Response::from_parts(parts, Default::default());
    }
    r
}

/// `repo` is `None` without `localRepository`. `progress` is told of every chunk sent, so a
/// long download is not taken for an idle connection.
async fn answer(
    repo: Option<&Repository>,
    tail: &str,
    cond: &Conditions,
    progress: Option<Progress>,
) -> warp::reply::Response {
    let Some(repo) = repo else {
        return text(StatusCode::NOT_FOUND, NOT_CONFIGURED.into());
    };
    let Ok(art) = parse(tail) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("the local repository has no such file; it serves {SHAPES}\n"),
        );
    };
    match serve(repo, &art, cond, progress).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(file = %repo.dir.join(art.path()).display(), error = %e, "local repository: cannot read");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the endpoint cannot read {} from its local repository\n",
                    art.path()
                ),
            )
        }
    }
}

fn refused(repo: &Repository, rel: &str, why: &str) -> warp::reply::Response {
    tracing::warn!(file = %repo.dir.join(rel).display(), why, "local repository: refused to serve");
    text(
        StatusCode::NOT_FOUND,
        format!(
            "{rel} in the local repository is refused: {why}; the operator must place the file itself at {rel}\n"
        ),
    )
}

async fn serve(
    repo: &Repository,
    art: &Artifact,
    cond: &Conditions,
    progress: Option<Progress>,
) -> std::io::Result<warp::reply::Response> {
    let rel = art.path();
    match repo.open_async(rel.clone()).await? {
        Found::File(f, meta) => {
            return send_file(f, &meta, art.content_type(), cond, progress).await;
        }
        Found::Refused(why) => return Ok(refused(repo, &rel, why)),
        Found::Missing if !art.checksum => {
            repo.report_missing(&rel);
            return Ok(text(
                StatusCode::NOT_FOUND,
                format!(
                    "the local repository has no {rel}: the operator must place that file in the endpoint's localRepository directory (docs/install.md)\n"
                ),
            ));
        }
        Found::Missing => {}
    }
    // A `.sha256` the operator did not place: computed from the package, so placing the
    // package alone is enough (and the two cannot disagree).
    let pkg = art.package_path();
    let (f, meta) = match repo.open_async(pkg.clone()).await? {
        Found::File(f, meta) => (f, meta),
        Found::Refused(why) => return Ok(refused(repo, &pkg, why)),
        Found::Missing => {
            repo.report_missing(&pkg);
            return Ok(text(
                StatusCode::NOT_FOUND,
                format!(
                    "the local repository has no {pkg}, so no {rel} either: the operator must place {pkg} in the endpoint's localRepository directory (its .sha256 is computed from it unless placed beside it)\n"
                ),
            ));
        }
    };
    let digest = repo.sha256_of(&pkg, f, &meta).await?;
    let body = checksum_line(&digest, &art.package_file_name()).into_bytes();
    let modified = meta.modified()?;
    // The checksum's validators follow the package's, with a suffix so they never equal
    // the package's own.
    let tag = format!(
        "{}-sha256\"",
        etag(meta.len(), modified).trim_end_matches('"')
    );
    Ok(send_bytes(body, &tag, modified, art.content_type(), cond))
}

fn validators(h: &mut HeaderMap, tag: &str, modified: SystemTime, content_type: &str) {
    let mut set = |name: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    };
    set(header::ETAG, tag);
    set(header::LAST_MODIFIED, &http_date(modified));
    set(header::ACCEPT_RANGES, "bytes");
    set(header::CONTENT_TYPE, content_type);
    // A package keeps its URL across versions: caches must revalidate (cheap, `304`).
    set(header::CACHE_CONTROL, "no-cache");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
}

/// The status and byte range to send, before any body is read.
fn plan(
    cond: &Conditions,
    size: u64,
    tag: &str,
    modified: SystemTime,
) -> Result<(StatusCode, u64, u64), StatusCode> {
    if not_modified(
        cond.if_none_match.as_deref(),
        cond.if_modified_since.as_deref(),
        tag,
        modified,
    ) {
        return Err(StatusCode::NOT_MODIFIED);
    }
    match range(
        cond.range.as_deref(),
        cond.if_range.as_deref(),
        size,
        tag,
        &http_date(modified),
    ) {
        Range::Full => Ok((StatusCode::OK, 0, size)),
        Range::Part { start, end } => Ok((StatusCode::PARTIAL_CONTENT, start, end - start + 1)),
        Range::Unsatisfiable => Err(StatusCode::RANGE_NOT_SATISFIABLE),
    }
}

fn head_only(status: StatusCode, size: u64) -> warp::reply::Response {
    let mut r = warp::reply::with_status(warp::reply(), status).into_response();
    if status == StatusCode::RANGE_NOT_SATISFIABLE
        && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
    {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}

fn framing(r: &mut warp::reply::Response, status: StatusCode, start: u64, len: u64, size: u64) {
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
}

/// Streams (part of) an open file: 64 KiB at a time, never the whole file in memory.
async fn send_file(
    f: std::fs::File,
    meta: &Metadata,
    content_type: &str,
    cond: &Conditions,
    progress: Option<Progress>,
) -> std::io::Result<warp::reply::Response> {
    let size = meta.len();
    let modified = meta.modified()?;
    let tag = etag(size, modified);
    let (status, start, len) = match plan(cond, size, &tag, modified) {
        Ok(p) => p,
        Err(status) => {
            let mut r = head_only(status, size);
            validators(r.headers_mut(), &tag, modified, content_type);
            return Ok(r);
        }
    };
    let mut file = tokio::fs::File::from_std(f);
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await?;
    }
    let stream =
        tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024).inspect(move |_| {
            if let Some(p) = &progress {
                p.touch();
            }
        });
    let mut r = warp::reply::stream(stream).into_response();
    framing(&mut r, status, start, len, size);
    validators(r.headers_mut(), &tag, modified, content_type);
    Ok(r)
}

/// As [`send_file`], for a body computed in memory (a checksum line).
fn send_bytes(
    body: Vec<u8>,
    tag: &str,
    modified: SystemTime,
    content_type: &str,
    cond: &Conditions,
) -> warp::reply::Response {
    let size = body.len() as u64;
    let (status, start, len) = match plan(cond, size, tag, modified) {
        Ok(p) => p,
        Err(status) => {
            let mut r = head_only(status, size);
            validators(r.headers_mut(), tag, modified, content_type);
            return r;
        }
    };
    let from = usize::try_from(start).unwrap_or(usize::MAX).min(body.len());
    let to = usize::try_from(start + len)
        .unwrap_or(usize::MAX)
        .min(body.len());
    let mut r = warp::reply::Response::new(body[from..to].to_vec().into());
    framing(&mut r, status, start, len, size);
    validators(r.headers_mut(), tag, modified, content_type);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn art(
        revision: Option<&str>,
        format: Format,
        arch: Arch,
        package: Package,
        checksum: bool,
    ) -> Artifact {
        Artifact {
            revision: revision.map(str::to_string),
            format,
            arch,
            package,
            checksum,
        }
    }

    #[test]
    fn every_shape_of_the_spec_maps_to_its_own_path() {
        for format in [Format::Deb, Format::Rpm] {
            for arch in [Arch::Amd64, Arch::Arm64] {
                for package in [Package::OnboardingAgent, Package::IstioSidecar] {
                    for checksum in [false, true] {
                        let (f, a, p) = (format.as_str(), arch.as_str(), package.as_str());
                        let ext = if checksum { ".sha256" } else { "" };
                        let tail = format!("{f}/{a}/{p}.{f}{ext}");
                        let got = parse(&tail).unwrap();
                        assert_eq!(got, art(None, format, arch, package, checksum), "{tail}");
                        assert_eq!(got.path(), tail, "the file path is the URL path");
                        assert_eq!(got.package_file_name(), format!("{p}.{f}"));
                    }
                }
                let tail = format!(
                    "istio-sidecar/1-24-0/{}/{}/istio-sidecar.{}",
                    format.as_str(),
                    arch.as_str(),
                    format.as_str()
                );
                let got = parse(&tail).unwrap();
                assert_eq!(
                    got,
                    art(Some("1-24-0"), format, arch, Package::IstioSidecar, false)
                );
                assert_eq!(got.path(), tail);
                let sum = parse(&format!("{tail}.sha256")).unwrap();
                assert!(sum.checksum && sum.package_path() == tail);
            }
        }
        assert_eq!(
            parse("deb/amd64/onboarding-agent.deb.sha256")
                .unwrap()
                .content_type(),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            parse("rpm/arm64/istio-sidecar.rpm").unwrap().content_type(),
            "application/x-rpm"
        );
    }

    #[test]
    fn anything_else_is_not_found() {
        for tail in [
            "",
            "/",
            "deb",
            "deb/amd64",
            "deb/amd64/",
            "../config.yaml",
            "deb/amd64/../../x",
            "deb/amd64/..%2f..%2fx",
            "deb/amd64/onboarding-agent%2edeb",
            "deb%2famd64%2fonboarding-agent.deb",
            "deb/amd64/./onboarding-agent.deb",
            "deb//amd64/onboarding-agent.deb",
            "/deb/amd64/onboarding-agent.deb",
            "deb/amd64/onboarding-agent.deb/",
            "deb/amd64/onboarding-agent.rpm",
            "rpm/amd64/onboarding-agent.deb",
            "deb/amd64/onboarding-agent.deb.sha512",
            "deb/amd64/onboarding-agent.deb.sha256.sha256",
            "deb/amd64/onboarding-agentdeb",
            "deb/amd64/onboarding-agent",
            "deb/amd64/.deb",
            "deb/x86_64/onboarding-agent.deb",
            "deb/i386/onboarding-agent.deb",
            "DEB/amd64/onboarding-agent.deb",
            "deb/amd64/Onboarding-Agent.deb",
            "deb\\amd64\\onboarding-agent.deb",
            "deb/amd64/istio-proxy.deb",
            "tgz/amd64/onboarding-agent.tgz",
            "deb/amd64/onboarding-agent.deb\0",
            "deb/amd64/onboarding-agent.deb?x=1",
            // Revisioned: only istio-sidecar, only a DNS-1123 label.
            "istio-sidecar/canary/deb/amd64/onboarding-agent.deb",
            "istio-sidecar/../deb/amd64/istio-sidecar.deb",
            "istio-sidecar/./deb/amd64/istio-sidecar.deb",
            "istio-sidecar//deb/amd64/istio-sidecar.deb",
            "istio-sidecar/-canary/deb/amd64/istio-sidecar.deb",
            "istio-sidecar/canary./deb/amd64/istio-sidecar.deb",
            "istio-sidecar/1.24/deb/amd64/istio-sidecar.deb",
            "istio-sidecar/Canary/deb/amd64/istio-sidecar.deb",
            "istio-sidecar/canary/deb/amd64",
            "istio-sidecar/canary/extra/deb/amd64/istio-sidecar.deb",
            "onboarding-agent/canary/deb/amd64/onboarding-agent.deb",
        ] {
            assert_eq!(parse(tail), Err(NotFound), "{tail:?}");
        }
        let long = "a".repeat(64);
        assert_eq!(
            parse(&format!("istio-sidecar/{long}/deb/amd64/istio-sidecar.deb")),
            Err(NotFound),
            "a revision longer than a DNS-1123 label"
        );
        assert!(
            parse(&format!(
                "istio-sidecar/{}/deb/amd64/istio-sidecar.deb",
                &long[..63]
            ))
            .is_ok()
        );
    }

    #[test]
    fn the_checksum_line_is_what_sha256sum_writes() {
        // `printf abc | sha256sum` names `-`; with a file it names the file after two spaces.
        let d = hex(&Sha256::digest(b"abc"));
        assert_eq!(
            checksum_line(&d, "onboarding-agent.deb"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  onboarding-agent.deb\n"
        );
    }

    fn t(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn the_etag_changes_with_size_or_mtime() {
        let a = etag(100, t(1_700_000_000, 5));
        assert!(a.starts_with('"') && a.ends_with('"'), "{a}");
        assert_eq!(a, etag(100, t(1_700_000_000, 5)));
        assert_ne!(a, etag(101, t(1_700_000_000, 5)));
        assert_ne!(a, etag(100, t(1_700_000_000, 6)), "nanoseconds count");
        assert_ne!(a, etag(100, t(1_700_000_001, 5)));
    }

    #[test]
    fn conditional_requests() {
        let m = t(1_700_000_000, 500_000_000);
        let tag = etag(10, m);
        let date = http_date(m);
        assert!(not_modified(Some(&tag), None, &tag, m));
        assert!(
            not_modified(Some(&format!("W/{tag}")), None, &tag, m),
            "weak comparison"
        );
        assert!(
            not_modified(Some(&format!("\"x\", {tag}")), None, &tag, m),
            "a list"
        );
        assert!(not_modified(Some("*"), None, &tag, m));
        assert!(!not_modified(Some("\"other\""), None, &tag, m));
        // If-None-Match decides when present, even against a matching date.
        assert!(!not_modified(Some("\"other\""), Some(&date), &tag, m));
        // Dates are whole seconds: the file's sub-second mtime is not "after" its own date.
        assert!(not_modified(None, Some(&date), &tag, m));
        assert!(not_modified(
            None,
            Some(&http_date(t(1_700_000_100, 0))),
            &tag,
            m
        ));
        assert!(!not_modified(
            None,
            Some(&http_date(t(1_699_999_999, 0))),
            &tag,
            m
        ));
        assert!(
            !not_modified(None, Some("yesterday"), &tag, m),
            "unparsable: ignored"
        );
        assert!(!not_modified(None, None, &tag, m));
    }

    #[test]
    fn ranges() {
        let (tag, lm) = ("\"t\"", "Tue, 14 Nov 2023 22:13:20 GMT");
        let r = |h: &str| range(Some(h), None, 100, tag, lm);
        assert_eq!(range(None, None, 100, tag, lm), Range::Full);
        assert_eq!(r("bytes=0-9"), Range::Part { start: 0, end: 9 });
        assert_eq!(r("bytes=90-"), Range::Part { start: 90, end: 99 });
        assert_eq!(r("bytes=-10"), Range::Part { start: 90, end: 99 });
        assert_eq!(r("bytes=-1000"), Range::Part { start: 0, end: 99 });
        assert_eq!(r("bytes=50-1000"), Range::Part { start: 50, end: 99 });
        assert_eq!(r("Bytes = 1-1"), Range::Part { start: 1, end: 1 });
        assert_eq!(r("bytes=100-"), Range::Unsatisfiable);
        assert_eq!(r("bytes=100-200"), Range::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Range::Unsatisfiable);
        assert_eq!(
            range(Some("bytes=-5"), None, 0, tag, lm),
            Range::Unsatisfiable
        );
        assert_eq!(
            range(Some("bytes=0-"), None, 0, tag, lm),
            Range::Unsatisfiable
        );
        // Ignored: the whole file.
        for ignored in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(r(ignored), Range::Full, "{ignored}");
        }
        // If-Range: only the current validators keep the range.
        assert_eq!(
            range(Some("bytes=0-9"), Some(tag), 100, tag, lm),
            Range::Part { start: 0, end: 9 }
        );
        assert_eq!(
            range(Some("bytes=0-9"), Some(lm), 100, tag, lm),
            Range::Part { start: 0, end: 9 }
        );
        assert_eq!(
            range(Some("bytes=0-9"), Some("\"old\""), 100, tag, lm),
            Range::Full
        );
        assert_eq!(
            range(Some("bytes=0-9"), Some("W/\"t\""), 100, tag, lm),
            Range::Full,
            "If-Range compares strongly"
        );
    }

    #[test]
    fn the_plan_puts_not_modified_before_ranges() {
        let m = t(1_700_000_000, 0);
        let tag = etag(100, m);
        let cond = Conditions {
            if_none_match: Some(tag.clone()),
            range: Some("bytes=0-9".into()),
            ..Default::default()
        };
        assert_eq!(plan(&cond, 100, &tag, m), Err(StatusCode::NOT_MODIFIED));
        let cond = Conditions {
            range: Some("bytes=10-19".into()),
            ..Default::default()
        };
        assert_eq!(
            plan(&cond, 100, &tag, m),
            Ok((StatusCode::PARTIAL_CONTENT, 10, 10))
        );
        let cond = Conditions {
            range: Some("bytes=200-".into()),
            ..Default::default()
        };
        assert_eq!(
            plan(&cond, 100, &tag, m),
            Err(StatusCode::RANGE_NOT_SATISFIABLE)
        );
        assert_eq!(
            plan(&Conditions::default(), 100, &tag, m),
            Ok((StatusCode::OK, 0, 100))
        );
    }

    #[test]
    fn links_and_special_files_are_refused_and_missing_files_are_missing() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("deb/amd64")).unwrap();
        std::fs::write(dir.path().join("deb/amd64/onboarding-agent.deb"), "pkg").unwrap();
        assert!(matches!(
            open_under(dir.path(), "deb/amd64/onboarding-agent.deb").unwrap(),
            Found::File(_, m) if m.len() == 3
        ));
        assert!(matches!(
            open_under(dir.path(), "deb/amd64/istio-sidecar.deb").unwrap(),
            Found::Missing
        ));
        assert!(matches!(
            open_under(dir.path(), "rpm/amd64/istio-sidecar.rpm").unwrap(),
            Found::Missing
        ));
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            dir.path().join("deb/amd64/istio-sidecar.deb"),
        )
        .unwrap();
        assert!(matches!(
            open_under(dir.path(), "deb/amd64/istio-sidecar.deb").unwrap(),
            Found::Refused(_)
        ));
        // A linked directory on the way.
        std::fs::create_dir_all(outside.path().join("amd64")).unwrap();
        std::fs::write(outside.path().join("amd64/onboarding-agent.rpm"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("rpm")).unwrap();
        assert!(matches!(
            open_under(dir.path(), "rpm/amd64/onboarding-agent.rpm").unwrap(),
            Found::Refused(_)
        ));
        // A directory where the file should be, and a FIFO (which must not block).
        std::fs::create_dir_all(dir.path().join("deb/arm64/onboarding-agent.deb")).unwrap();
        assert!(matches!(
            open_under(dir.path(), "deb/arm64/onboarding-agent.deb").unwrap(),
            Found::Refused(_)
        ));
        let fifo = dir.path().join("deb/arm64/istio-sidecar.deb");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            open_under(dir.path(), "deb/arm64/istio-sidecar.deb").unwrap(),
            Found::Refused(_)
        ));
    }
}
