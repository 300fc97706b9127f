//! A real Kubernetes control plane for integration tests: the `kube-harness` program
//! (tests/kube-harness/) runs an embedded etcd and the real kube-apiserver on 127.0.0.1
//! and prints one JSON "ready line"; this module spawns it in a temporary directory,
//! parses that line, and offers the real `kubectl` against it. docs/testing-kubernetes.md.
//!
//! The binaries are built from Go modules by `tests/kube-harness/build.sh` (cached under
//! `.cache/go-bin/`). When they are missing: under `CI=true` the test fails, naming the
//! command; otherwise it is skipped loudly, unless `KUBE_HARNESS_BUILD=1` asks the test to
//! run the build itself (minutes when cold).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The binary directory a build script (`tests/<module>/build.sh`) fills, or `None`
/// (after a loud message) when it is not built and the test should skip. Panics under CI.
pub fn built_bin_dir(module: &str) -> Option<PathBuf> {
    let script = repo().join("tests").join(module).join("build.sh");
    let run = |arg: Option<&str>| {
        let mut c = Command::new("bash");
        c.arg(&script);
        if let Some(a) = arg {
            c.arg(a);
        }
        c.current_dir(repo())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
    };
    let dir = run(Some("--print-dir"));
    assert!(
        dir.status.success(),
        "{} --print-dir failed: {}",
        script.display(),
        String::from_utf8_lossy(&dir.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&dir.stdout).trim());
    if run(Some("--check")).status.success() {
        return Some(dir);
    }
    let cmd = format!("bash {}", script.display());
    if std::env::var("KUBE_HARNESS_BUILD").is_ok_and(|v| v == "1") {
        eprintln!("building the {module} binaries (KUBE_HARNESS_BUILD=1): {cmd}");
        let status = Command::new("bash")
            .arg(&script)
            .current_dir(repo())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
        assert!(status.success(), "{cmd} failed ({status})");
        return Some(dir);
    }
    if in_ci() {
        panic!(
            "the {module} binaries are not built (or are stale) in {}: run `{cmd}` first \
             (.ci/run does this before the tests)",
            dir.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED: the {module} binaries are not built in {}.\n*** Build them with: {cmd}\n\
         *** (or set KUBE_HARNESS_BUILD=1 to let the test build them; CI=true makes this a failure)\n",
        dir.display()
    );
    None
}

/// Makes a child die (SIGKILL) when the thread that spawned it exits, so that even a
/// SIGKILLed test runner leaves no server behind.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// The harness's ready line (tests/kube-harness/cmd/kube-harness/main.go).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    pub ready: bool,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub etcd: String,
    pub data_dir: PathBuf,
    pub ca_file: PathBuf,
    pub service_account_issuer: String,
    pub apiserver_pid: u32,
}

/// A running etcd + kube-apiserver. Dropping it closes the harness's stdin, which stops
/// the apiserver and etcd; the temporary directory goes after that.
pub struct KubeHarness {
    pub bin_dir: PathBuf,
    pub ready: Ready,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
    // Last: removed after the processes are gone.
    dir: tempfile::TempDir,
}

impl KubeHarness {
    /// Starts the harness, or returns `None` (skip) when the binaries are not built and
    /// this is not CI. Panics with the harness's log when it does not become ready.
    pub fn start() -> Option<Self> {
        let bin_dir = built_bin_dir("kube-harness")?;
        Some(Self::start_in(&bin_dir))
    }

    pub fn start_in(bin_dir: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kube-harness-")
            .tempdir()
            .expect("temp dir");
        let mut cmd = Command::new(bin_dir.join("kube-harness"));
        cmd.arg("--data-dir")
            .arg(dir.path())
            .arg("--bin-dir")
            .arg(bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}",
                bin_dir.join("kube-harness").display()
            )
        });
        let stdin = child.stdin.take();
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr piped");
        collect_lines(err_pipe, stderr.clone());

        // The ready line arrives on stdout; read it on a thread so that a harness that
        // hangs cannot hang the test past the deadline.
        let out = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so the harness never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(240)) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                let apiserver_log = std::fs::read_to_string(dir.path().join("kube-apiserver.log"))
                    .unwrap_or_default();
                let tail: String = apiserver_log
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!(
                    "kube-harness did not print its ready line ({other:?}).\n--- harness stderr:\n{log}\n--- kube-apiserver.log (tail):\n{tail}"
                );
            }
        };
        let ready: Ready = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("kube-harness ready line is not JSON ({e}): {line}"));
        assert!(ready.ready, "ready line says not ready: {line}");
        assert!(
            ready.server.starts_with("https://127.0.0.1:"),
            "server {}",
            ready.server
        );
        KubeHarness {
            bin_dir: bin_dir.to_path_buf(),
            ready,
            child,
            stdin,
            stderr,
            dir,
        }
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.ready.kubeconfig
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubectl --kubeconfig=<admin> ARGS`, its raw output.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("kubectl stdin");
            pipe.write_all(input.as_bytes())
                .expect("write kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// `kubectl ARGS`; panics with kubectl's stderr when it fails. Returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_in(args, None)
    }

    /// `kubectl ARGS` with `input` on stdin (for `-f -`); panics when it fails.
    pub fn kubectl_in(&self, args: &[&str], input: Option<&str>) -> String {
        let out = self.kubectl_output(args, input);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("kubectl output is UTF-8")
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str], input: Option<&str>) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl_in(&all, input);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kubectl {} gave no JSON ({e}): {out}", args.join(" ")))
    }

    /// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
    pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?}: {what}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for KubeHarness {
    fn drop(&mut self) {
        // EOF on stdin is the harness's stop signal: apiserver first, then etcd.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
    }
}

/// Appends each line of `pipe` to `log`, on a thread of its own, until the pipe closes.
pub fn collect_lines(pipe: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut l) = log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
}

/// A kubeconfig that authenticates as ServiceAccount `ns/sa` with a TokenRequest token.
pub fn service_account_kubeconfig(h: &KubeHarness, ns: &str, sa: &str, dir: &Path) -> PathBuf {
    let token = h.kubectl(&["-n", ns, "create", "token", sa, "--duration", "2h"]);
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: harness
  cluster: {{server: {server}, certificate-authority: {ca}}}
users:
- name: {sa}
  user: {{token: {token}}}
contexts:
- name: {sa}
  context: {{cluster: harness, user: {sa}, namespace: {ns}}}
current-context: {sa}
",
            server = h.ready.server,
            ca = h.ready.ca_file.display(),
            token = token.trim()
        ),
    )
    .unwrap();
    path
}
