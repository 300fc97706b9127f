//! A real systemd for end-to-end tests: a Debian bookworm root (debootstrap, cached as a
//! tarball under `target/nspawn-cache/`) booted with `systemd-nspawn` on the host network,
//! driven from outside with `nsenter`. The recipe and its pitfalls are in
//! ../shared/reference/systemd-nspawn.md; this is that recipe as code.
//!
//! Every container is powered off when its `Container` is dropped (also on a panic), and
//! `systemd-nspawn` gets PR_SET_PDEATHSIG so that even a SIGKILLed test runner takes its
//! container down (nspawn turns its SIGTERM into an orderly shutdown of the container).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;

/// Where the agent and the sidecar keep their files in a VM, and the names the suites that
/// run them in a container (systemd_e2e, package_e2e) look for.
pub mod vm {
    pub const WAR: &str = "ratings-jwt-corp-vm-0001";
    pub const AGENT_UNIT: &str = "onboarding-agent.service";
    pub const SIDECAR_UNIT: &str = "istio-sidecar.service";
    pub const STATE: &str = "/var/lib/onboarding-agent/state.json";
    pub const TOKEN: &str = "/var/run/secrets/tokens/istio-token";
    pub const CLUSTER_ENV: &str = "/var/lib/istio/envoy/cluster.env";
}

pub const SUITE: &str = "bookworm";
pub const VARIANT: &str = "minbase";
/// What the root needs besides minbase: systemd as PID 1, D-Bus for systemctl's
/// friends, iproute2 so the host's interfaces can be inspected from inside, curl for the
/// install guide's downloads from the endpoint's local repository (tests/package_e2e.rs).
pub const PACKAGES: &[&str] = &["systemd", "systemd-sysv", "dbus", "iproute2", "curl"];
/// The host packages this harness needs (and .ci/run installs).
pub const HOST_PACKAGES: &str = "systemd-container debootstrap";

/// The commands a container needs on the host, and which of them only building the
/// cached root needs.
const HOST_COMMANDS: &[(&str, bool)] = &[
    ("systemd-nspawn", false),
    ("nsenter", false),
    ("tar", false),
    ("debootstrap", true),
];

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp: the cache sits beside it so that it survives
    // between runs and follows CARGO_TARGET_DIR.
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map(Path::to_path_buf).unwrap_or(tmp)
}

pub fn cache_dir() -> PathBuf {
    target_dir().join("nspawn-cache")
}

/// The cached root's file name: keyed by everything that changes its content.
pub fn cache_key(suite: &str, variant: &str, packages: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(format!("{suite}\n{variant}\n{}\n", packages.join(",")));
    let digest = h.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{suite}-{variant}-{hex}.tar")
}

pub fn cached_root_path() -> PathBuf {
    cache_dir().join(cache_key(SUITE, VARIANT, PACKAGES))
}

fn in_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(cmd).is_file())
}

/// What is missing on this host to boot a container, if anything.
pub fn missing_prerequisites() -> Option<String> {
    let mut problems = Vec::new();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        problems.push("not running as root (systemd-nspawn and nsenter need it)".to_string());
    }
    let need_debootstrap = !cached_root_path().is_file();
    for (cmd, only_for_build) in HOST_COMMANDS {
        if (!only_for_build || need_debootstrap) && !in_path(cmd) {
            problems.push(format!("no `{cmd}` command"));
        }
    }
    if !Path::new("/sys/fs/cgroup").is_dir() {
        problems.push("no cgroup file system at /sys/fs/cgroup".to_string());
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "{} (as root: apt-get install -y {HOST_PACKAGES})",
            problems.join(", ")
        ))
    }
}

/// Decides whether a systemd test runs here: true when it can. Otherwise it fails under
/// CI=true (the suite must not silently vanish from CI) or prints a skip line and returns
/// false on a developer machine.
pub fn available_or_skip(test: &str) -> bool {
    let Some(why) = missing_prerequisites() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: cannot run the real-systemd suite under CI=true: {why}");
    }
    eprintln!("SKIPPED {test}: {why}; set CI=true to make this a failure");
    false
}

/// The Debian archive URI for `suite` in the machine's apt sources (deb822 `.sources`
/// stanzas or one-line `.list` entries), so debootstrap uses the mirror the machine is
/// configured for. `None` lets debootstrap use its default.
pub fn debian_mirror(sources: &[(String, String)], suite: &str) -> Option<String> {
    for (name, text) in sources {
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let field = |key: &str| {
                    stanza.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().to_string())
                    })
                };
                let enabled = field("Enabled").is_none_or(|v| v != "no");
                let types_deb =
                    field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
                let suite_ok =
                    field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
                let main =
                    field("Components").is_some_and(|c| c.split_whitespace().any(|c| c == "main"));
                let uri = field("URIs").and_then(|u| {
                    u.split_whitespace()
                        .find(|u| u.starts_with("http://") || u.starts_with("https://"))
                        .map(str::to_string)
                });
                if enabled && types_deb && suite_ok && main && uri.is_some() {
                    return uri;
                }
            }
        } else {
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                let mut words = line.split_whitespace();
                if words.next() != Some("deb") {
                    continue;
                }
                // Skip the options bracket: `deb [signed-by=...] URI suite components`.
                let mut rest: Vec<&str> = words.collect();
                if rest.first().is_some_and(|w| w.starts_with('[')) {
                    let close = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
                    rest.drain(..=close);
                }
                if let [uri, s, comps @ ..] = rest.as_slice()
                    && *s == suite
                    && comps.contains(&"main")
                    && (uri.starts_with("http://") || uri.starts_with("https://"))
                {
                    return Some(uri.to_string());
                }
            }
        }
    }
    None
}

/// The machine's apt source files, in apt's order (sources.list, then sources.list.d).
fn apt_sources() -> Vec<(String, String)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    files
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            Some((p.display().to_string(), text))
        })
        .collect()
}

/// Runs `cmd` to completion within `timeout`, killing it (and failing) when it overruns.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let out_pipe = child.stdout.take();
    let err_pipe = child.stderr.take();
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out_t = reader(out_pipe.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err_t = reader(err_pipe.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err_t.join().unwrap_or_default();
                return Err(format!(
                    "{shown} did not finish within {timeout:?}; killed it. stderr:\n{stderr}"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

/// Holds an exclusive flock(2) on a file until dropped (released by the kernel if the
/// process dies), so concurrent runs sharing the target directory build the root once.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> FileLock {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // SAFETY: flock(2) on a file descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {}", path.display());
        FileLock(f)
    }
}

/// The cached root tarball, built with debootstrap when it is not there yet. Returns the
/// path and whether it was built now.
pub fn cached_root() -> (PathBuf, bool) {
    cached_root_of(SUITE, PACKAGES)
}

/// The cached `suite` root (minbase plus `packages`), built with debootstrap when it is not
/// there yet (tests/package_distros.rs runs the agent in older Debian releases). A suite the
/// machine's apt sources do not list is fetched from the mirror they use for bookworm.
pub fn cached_root_of(suite: &str, packages: &[&str]) -> (PathBuf, bool) {
    reap_stale();
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let tarball = dir.join(cache_key(suite, VARIANT, packages));
    let _lock = FileLock::acquire(&dir.join(".lock"));
    if tarball.is_file() {
        return (tarball, false);
    }
    let build = dir.join(format!("build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    let mut cmd = Command::new("debootstrap");
    cmd.arg(format!("--variant={VARIANT}"));
    if !packages.is_empty() {
        cmd.arg(format!("--include={}", packages.join(",")));
    }
    cmd.arg(suite).arg(&build);
    let sources = apt_sources();
    let mirror = debian_mirror(&sources, suite).or_else(|| debian_mirror(&sources, SUITE));
    if let Some(m) = &mirror {
        cmd.arg(m);
    }
    eprintln!(
        "building the {suite} root with debootstrap (once; cached as {}), mirror {}",
        tarball.display(),
        mirror.as_deref().unwrap_or("debootstrap's default")
    );
    let out = run_with_timeout(&mut cmd, Duration::from_secs(900)).unwrap_or_else(|e| {
        let _ = std::fs::remove_dir_all(&build);
        panic!("debootstrap: {e}")
    });
    if !out.ok() {
        let log =
            std::fs::read_to_string(build.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&build);
        panic!(
            "debootstrap failed ({}):\n{}\n{}\ndebootstrap.log (tail):\n{}",
            out.status,
            tail(&out.stdout, 30),
            tail(&out.stderr, 30),
            tail(&log, 40)
        );
    }
    // Host-specific files debootstrap copied in; each container gets its own.
    for f in ["etc/hostname", "etc/resolv.conf", "etc/machine-id"] {
        let _ = std::fs::remove_file(build.join(f));
    }
    let partial = dir.join(format!(".partial-{}.tar", std::process::id()));
    let out = run_with_timeout(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&build)
            .arg("-cf")
            .arg(&partial)
            .arg("."),
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("tar: {e}"));
    let _ = std::fs::remove_dir_all(&build);
    assert!(out.ok(), "tar of the root failed: {}", out.stderr);
    std::fs::rename(&partial, &tarball).unwrap_or_else(|e| panic!("{}: {e}", tarball.display()));
    (tarball, true)
}

/// `text` without ANSI escape sequences (systemd's and tracing's colours), for reports.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to the final byte (@ to ~).
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Names that carry the creating test process's pid, so leftovers of a test runner that
/// was killed (no unwinding, no Drop) can be told from those of a run still going.
const ROOT_PREFIX: &str = "nspawn-root-";
const CGROUP_PREFIX: &str = "nspawn-test-";

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in `<prefix><pid>-...`, if `name` is one of ours.
fn owner_pid(name: &str, prefix: &str) -> Option<i32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Removes the roots and cgroups that killed test runners left behind. Their containers
/// are gone already (PR_SET_PDEATHSIG); a cgroup that still holds a process is left alone.
pub fn reap_stale() {
    if let Ok(dir) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_pid(&name, ROOT_PREFIX).is_some_and(|p| !pid_alive(p)) {
                eprintln!("removing {}, left by a killed test run", e.path().display());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    for hierarchy in cgroup_dirs("") {
        if let Ok(dir) = std::fs::read_dir(&hierarchy) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if owner_pid(&name, CGROUP_PREFIX).is_some_and(|p| !pid_alive(p)) {
                    remove_cgroup(&e.path());
                }
            }
        }
    }
}

/// The cgroup directories a container's nspawn runs in, per host layout.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        // Pure cgroup2.
        vec![base.join(name)]
    } else {
        // Hybrid (name=systemd v1 plus unified v2) or legacy v1.
        ["systemd", "unified"]
            .iter()
            .map(|h| base.join(h))
            .filter(|h| h.is_dir())
            .map(|h| h.join(name))
            .collect()
    }
}

/// Removes a cgroup directory tree (cgroupfs directories go with rmdir, deepest first).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A booted container. Files can be read and written on the host side through `path()`.
pub struct Container {
    pub name: String,
    root: Option<tempfile::TempDir>,
    nspawn: Option<Child>,
    pub pid1: i32,
    console: Arc<Mutex<String>>,
    cgroups: Vec<PathBuf>,
}

/// A root extracted from the cached tarball, to be customised before `boot`.
pub struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    /// Extracts the cached root into a fresh directory under target/tmp.
    pub fn extract(tarball: &Path) -> Root {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{ROOT_PREFIX}{}-", std::process::id()))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap_or_else(|e| panic!("temporary root: {e}"));
        let out = run_with_timeout(
            Command::new("tar")
                .arg("--numeric-owner")
                .arg("-xpf")
                .arg(tarball)
                .arg("-C")
                .arg(dir.path()),
            Duration::from_secs(300),
        )
        .unwrap_or_else(|e| panic!("extracting the root: {e}"));
        assert!(out.ok(), "extracting {}: {}", tarball.display(), out.stderr);
        let root = Root { dir };
        // A machine that has booted before: with no machine-id, systemd would treat the boot
        // as the first one and apply the presets (Debian's: enable everything), starting
        // units the test means to start itself.
        let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .unwrap_or_else(|e| panic!("a random machine id: {e}"))
            .trim()
            .replace('-', "");
        root.write("/etc/machine-id", format!("{id}\n"), 0o444);
        root
    }

    /// The host path of `abs` inside the root. Only for the files the root's own tree holds:
    /// an absolute symlink on the way (`/var/run` -> `/run`) would lead out of the root,
    /// which `write` refuses.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.dir.path().join(abs.trim_start_matches('/'))
    }

    /// Writes a file inside the root (parents created) with `mode`.
    pub fn write(&self, abs: &str, content: impl AsRef<[u8]>, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(abs);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
            let real = parent
                .canonicalize()
                .unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
            let root = self
                .dir
                .path()
                .canonicalize()
                .unwrap_or_else(|e| panic!("{}: {e}", self.dir.path().display()));
            assert!(
                real.starts_with(&root),
                "{abs}: resolves outside the container root (to {}); write it from inside",
                real.display()
            );
        }
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    /// Boots the root as machine `name`: nspawn in its own cgroup, on the host network,
    /// waiting (up to `timeout`) until systemd reports the system running.
    pub fn boot(self, name: &str, timeout: Duration) -> Container {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let cgroup = format!(
            "{CGROUP_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let cgroups = cgroup_dirs(&cgroup);
        for cg in &cgroups {
            std::fs::create_dir_all(cg).unwrap_or_else(|e| panic!("cgroup {}: {e}", cg.display()));
        }
        // The shell moves itself into the new cgroups, then becomes nspawn (same pid).
        let mut script = String::new();
        for cg in &cgroups {
            script.push_str(&format!("echo $$ > {}/cgroup.procs && ", cg.display()));
        }
        script.push_str("exec \"$@\"");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .arg("systemd-nspawn")
            .arg("-D")
            .arg(self.dir.path())
            .arg("-M")
            .arg(name)
            .args(["-b", "--register=no", "--keep-unit", "--console=read-only"])
            .env("SYSTEMD_LOG_COLOR", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl(2) is async-signal-safe; it runs in the child between fork and exec.
        // nspawn answers SIGTERM with an orderly shutdown of the container, so a test runner
        // killed without unwinding still takes its container down.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start systemd-nspawn: {e}"));
        let console = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = console.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut c) = console.lock() {
                        c.push_str(&line);
                        c.push('\n');
                    }
                }
            });
        }
        let mut c = Container {
            name: name.to_string(),
            root: Some(self.dir),
            nspawn: Some(child),
            pid1: 0,
            console,
            cgroups,
        };
        c.wait_booted(timeout);
        c
    }
}

/// The pid of the child of `parent` whose command is `comm`, if any.
fn child_named(parent: u32, comm: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && name == comm {
            return Some(pid);
        }
    }
    None
}

impl Container {
    /// A file's content as the container sees it (its own /run, its symlinks), read from
    /// inside; `None` when it cannot be read.
    pub fn read(&self, abs: &str) -> Option<String> {
        self.exec_timeout(&["cat", "--", abs], Duration::from_secs(20))
            .ok()
            .filter(Output::ok)
            .map(|o| o.stdout)
    }

    /// A file's permission bits and owner's name, as the container sees them.
    pub fn stat(&self, abs: &str) -> Result<(u32, String), String> {
        let out = self.exec_timeout(
            &["stat", "-L", "-c", "%a %U", "--", abs],
            Duration::from_secs(20),
        )?;
        if !out.ok() {
            return Err(out.stderr.trim().to_string());
        }
        let (mode, owner) = out
            .stdout
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("stat {abs}: {:?}", out.stdout))?;
        let mode = u32::from_str_radix(mode, 8).map_err(|e| format!("{abs}: {e}"))?;
        Ok((mode, owner.to_string()))
    }

    pub fn console(&self) -> String {
        strip_ansi(&self.console.lock().map(|c| c.clone()).unwrap_or_default())
    }

    fn nspawn_exited(&mut self) -> Option<ExitStatus> {
        self.nspawn
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn wait_booted(&mut self, timeout: Duration) {
        let start = Instant::now();
        let nspawn_pid = self.nspawn.as_ref().map(|c| c.id()).unwrap_or(0);
        while self.pid1 == 0 {
            if let Some(status) = self.nspawn_exited() {
                panic!(
                    "systemd-nspawn exited ({status}) before the container booted:\n{}",
                    self.console()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "no container PID 1 (systemd) after {timeout:?}:\n{}",
                self.console()
            );
            self.pid1 = child_named(nspawn_pid, "systemd").unwrap_or(0);
            std::thread::sleep(Duration::from_millis(50));
        }
        // systemctl needs PID 1's private socket.
        let private = PathBuf::from(format!("/proc/{}/root/run/systemd/private", self.pid1));
        while !private.exists() {
            if let Some(status) = self.nspawn_exited() {
                panic!(
                    "systemd-nspawn exited ({status}) during boot:\n{}",
                    self.console()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "systemd in the container did not open /run/systemd/private within {timeout:?}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1));
        let out = self
            .exec_timeout(&["systemctl", "is-system-running", "--wait"], left)
            .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", self.console()));
        let state = out.stdout.trim().to_string();
        if state != "running" {
            // A unit of the minimal root that failed is not what the tests are about, but
            // say which, so that a change in the root is visible.
            let failed = self.exec(&["systemctl", "--failed", "--no-legend", "--plain"]);
            assert_eq!(
                state,
                "degraded",
                "the container did not come up: {state} {}\nconsole:\n{}",
                out.stderr,
                self.console()
            );
            eprintln!(
                "container {} is degraded; failed units:\n{}",
                self.name, failed.stdout
            );
        }
    }

    /// Runs a command inside the container (all its namespaces) with a clean environment.
    pub fn exec_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid1.to_string())
            .args(["-a", "-r", "-w", "--"])
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0");
        run_with_timeout(&mut cmd, timeout)
    }

    /// `exec_timeout` with 60 s, panicking when the command cannot be run or overruns.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_timeout(args, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("in container {}: {e}", self.name))
    }

    /// Runs `args` and panics with its output (and `context`) unless it succeeds.
    pub fn exec_ok(&self, args: &[&str], context: impl Fn() -> String) -> String {
        let out = self.exec(args);
        assert!(
            out.ok(),
            "{args:?} failed ({}):\n{}{}\n{}",
            out.status,
            out.stdout,
            out.stderr,
            context()
        );
        out.stdout
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn unit_property(&self, unit: &str, prop: &str) -> String {
        self.exec(&["systemctl", "show", "-p", prop, "--value", unit])
            .stdout
            .trim()
            .to_string()
    }

    pub fn journal(&self, units: &[&str]) -> String {
        let mut args = vec!["journalctl", "--no-pager", "-o", "short-precise"];
        for u in units {
            args.push("-u");
            args.push(u);
        }
        match self.exec_timeout(&args, Duration::from_secs(20)) {
            Ok(o) => format!("{}{}", o.stdout, o.stderr),
            Err(e) => format!("(no journal: {e})"),
        }
    }

    /// Clean poweroff (SIGRTMIN+4 to PID 1); SIGKILL for the whole container if it does not
    /// go within `timeout`. Idempotent.
    pub fn poweroff(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.nspawn.take()?;
        if self.pid1 > 0 {
            // SAFETY: kill(2); pid1 is the container's init, a child of our nspawn.
            unsafe { libc::kill(self.pid1, libc::SIGRTMIN() + 4) };
        } else {
            // Not booted yet: nspawn's SIGTERM shuts the container down.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if start.elapsed() > timeout => {
                    eprintln!(
                        "container {} did not power off within {timeout:?}; killing it",
                        self.name
                    );
                    if self.pid1 > 0 {
                        // SIGKILL of a PID namespace's init kills every process in it.
                        // SAFETY: kill(2) as above.
                        unsafe { libc::kill(self.pid1, libc::SIGKILL) };
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break None,
            }
        };
        for cg in &self.cgroups {
            remove_cgroup(cg);
        }
        status
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.poweroff(Duration::from_secs(20));
        // The root goes with its TempDir, now that nothing runs in it.
        self.root.take();
    }
}
