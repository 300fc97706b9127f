//! Where the static agent from the amd64 .deb actually runs (packaging/README.md, "Where the
//! static binary was run"): Debian releases older than the build host, each a debootstrapped
//! root cached beside the systemd suites' bookworm root (tests/support/nspawn.rs).
//!
//! In each root the .deb's files are unpacked (`dpkg-deb -x`, as dpkg would place them), the
//! root's glibc version is read (`getconf GNU_LIBC_VERSION`) and checked to be the release's,
//! then, inside the root under `systemd-nspawn --pipe` (its own /proc and /dev, the host's
//! network): both binaries' `--version`, the shipped agent.config.yaml without an
//! onboarding.config.yaml (exit 2, naming the file to write), and a real onboarding over TLS
//! against the endpoint on the host: the sidecar's files written into a `--root` prefix in
//! the distribution's tree, the restart command run, and on SIGTERM the registration
//! deleted and exit 0.
//!
//! Only Debian's archive is reachable from this workplace, so: Debian 11 (bullseye, glibc
//! 2.31) and Debian 12 (bookworm, glibc 2.36). Debian 10 is no longer in the archive's suites
//! (it moved to the archive of old releases), and RPM distributions and Ubuntu are not in
//! Debian's archive at all.
//!
//! Needs root, systemd-nspawn, debootstrap (once per root) and the packages from
//! `packaging/build-packages.sh`; without them the tests print a SKIPPED line and pass,
//! except under CI=true, where they fail.

#[path = "support/endpoint.rs"]
mod endpoint;
#[path = "support/nspawn.rs"]
mod nspawn;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use endpoint::{Endpoint, NS, Options, die_with_parent, vm_jwt};
use nspawn::Root;

const WAR: &str = "ratings-jwt-corp-vm-0001";
/// Where the test puts the agent's own files inside the distribution's root.
const DIR: &str = "/srv/onboarding-test";

fn packages_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .map(Path::to_path_buf)
        .unwrap_or(tmp)
        .join("packages")
}

fn deb_or_skip(test: &str) -> Option<PathBuf> {
    let p = packages_dir().join("install/deb/amd64/onboarding-agent.deb");
    if p.is_file() {
        return Some(p);
    }
    let why = format!("{} not built: run packaging/build-packages.sh", p.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}; set CI=true to make this a failure");
    None
}

/// `systemd-nspawn` running `args` in `root` without booting it: no machine registration or
/// scope of its own (the test runner is not a systemd unit), the host's network.
fn nspawn_cmd(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("systemd-nspawn");
    cmd.arg("--quiet")
        .arg("--directory")
        .arg(root)
        .args(["--pipe", "--register=no", "--keep-unit"])
        // Without --boot nspawn SIGKILLs the payload on SIGTERM; the agent must see SIGTERM.
        .arg("--kill-signal=SIGTERM")
        .arg("--setenv=ONBOARDING_AGENT_LOG=debug")
        .arg("--")
        .args(args);
    cmd
}

fn in_root(root: &Path, args: &[&str]) -> nspawn::Output {
    nspawn::run_with_timeout(&mut nspawn_cmd(root, args), Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn in_root_ok(root: &Path, args: &[&str]) -> String {
    let out = in_root(root, args);
    assert!(
        out.ok(),
        "{args:?} in {}: {}\n{}{}",
        root.display(),
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn state(root: &Root) -> serde_json::Value {
    std::fs::read_to_string(root.path(&format!("{DIR}/state.json")))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The whole check in the root of `suite` (cached tarball `tarball`), whose glibc must be
/// `glibc`.
fn agent_runs_in(test: &str, tarball: &Path, glibc: &str) {
    let Some(deb) = deb_or_skip(test) else {
        return;
    };
    let root = Root::extract(tarball);
    let dir = root.path("/");
    let out = nspawn::run_with_timeout(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.ok(), "dpkg-deb -x: {}", out.stderr);

    let libc = in_root_ok(&dir, &["getconf", "GNU_LIBC_VERSION"]);
    assert_eq!(libc.trim(), glibc, "{test}: the root's C library");
    let os = in_root_ok(&dir, &["cat", "/etc/os-release"]);
    let pretty = os
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("?")
        .trim_matches('"')
        .to_string();
    eprintln!("{test}: {pretty}, {}", libc.trim());

    let version = env!("CARGO_PKG_VERSION");
    let v = in_root_ok(&dir, &["/usr/bin/onboarding-agent", "--version"]);
    assert_eq!(v.trim(), format!("onboarding-agent {version}"));
    let v = in_root_ok(
        &dir,
        &[
            "/usr/bin/onboarding-agent-oidc-credential-plugin",
            "--version",
        ],
    );
    assert_eq!(
        v.trim(),
        format!("onboarding-agent-oidc-credential-plugin {version}")
    );

    // As installed and not configured yet: the packaged agent.config.yaml, no
    // onboarding.config.yaml. A configuration error (2), naming the file to write.
    let out = in_root(&dir, &["/usr/bin/onboarding-agent"]);
    assert_eq!(out.status.code(), Some(2), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("/etc/onboarding-agent/onboarding.config.yaml: the file is missing"),
        "{}",
        out.stderr
    );

    // Onboarding over TLS against the endpoint on the host (same network namespace).
    let ep = Endpoint::start(Options {
        grace: "5m",
        keep_alive_interval: "1s",
        keep_alive_timeout: "3s",
        token_expiration: "1h",
    });
    root.write(&format!("{DIR}/ca.pem"), &ep.ca_pem, 0o644);
    root.write(
        &format!("{DIR}/jwt"),
        vm_jwt("vm-0001", &ep.plane_uid),
        0o600,
    );
    root.write(
        &format!("{DIR}/onboarding.config.yaml"),
        format!(
            "apiVersion: config.agent.onboarding.tetrate.io/v1alpha1
kind: OnboardingConfiguration
onboardingEndpoint:
  host: 127.0.0.1
  port: {port}
  transportSecurity:
    tls: {{caFile: {DIR}/ca.pem}}
workloadGroup: {{namespace: {NS}, name: ratings}}
",
            port = ep.port()
        ),
        0o644,
    );
    root.write(
        &format!("{DIR}/agent.config.yaml"),
        format!(
            "apiVersion: config.agent.onboarding.tetrate.io/v1alpha1
kind: AgentConfiguration
host:
  custom:
    credential:
    - file: {DIR}/jwt
    hostinfo:
      basic:
        networkInterfaces: {{include: ['^lo$']}}
settings:
  connection:
    retryPolicy:
      exponentialBackoff: {{initialInterval: 200ms, maxInterval: 2s}}
"
        ),
        0o644,
    );
    root.write(
        &format!("{DIR}/restart.sh"),
        format!("#!/bin/sh\necho restarted >> {DIR}/restarts.log\n"),
        0o755,
    );
    root.write(
        &format!("{DIR}/root/etc/hosts"),
        "127.0.0.1 localhost\n",
        0o644,
    );
    let onboarding = format!("{DIR}/onboarding.config.yaml");
    let agent_config = format!("{DIR}/agent.config.yaml");
    let prefix = format!("{DIR}/root");
    let state_file = format!("{DIR}/state.json");
    let restart = format!("{DIR}/restart.sh");
    let mut cmd = nspawn_cmd(
        &dir,
        &[
            "/usr/bin/onboarding-agent",
            "--onboarding-config",
            &onboarding,
            "--agent-config",
            &agent_config,
            "--root",
            &prefix,
            "--state-file",
            &state_file,
            "--restart-command",
            &restart,
        ],
    );
    die_with_parent(&mut cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("systemd-nspawn: {e}"));
    let mut stderr = child.stderr.take();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    while state(&root)["phase"] != "connected" {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{test}: the agent exited ({status}) before connecting:\n{}",
                log.join().unwrap_or_default()
            );
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{test}: the agent did not connect in 60 s; state {}\n{}",
                state(&root),
                log.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ep.war_path(WAR).exists(), "{test}: no WAR at the endpoint");
    assert_eq!(state(&root)["registration"], format!("{NS}/{WAR}"));
    // The token is the agent's link into its current generation, absolute as seen inside the
    // root: read it through the root (chroot) rather than from the host's side.
    let token = nspawn::run_with_timeout(
        Command::new("chroot").arg(&dir).args([
            "cat",
            &format!("{DIR}/root/var/run/secrets/tokens/istio-token"),
        ]),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        token.stdout, "istio-token-for-bookinfo-ratings-vm",
        "{test}: {}",
        token.stderr
    );
    let restarts =
        std::fs::read_to_string(root.path(&format!("{DIR}/restarts.log"))).unwrap_or_default();
    assert_eq!(
        restarts.lines().count(),
        1,
        "restart command runs: {restarts:?}"
    );

    // SIGTERM to nspawn reaches the agent (--kill-signal): it unregisters and exits 0.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{test}: the agent did not stop on SIGTERM:\n{}",
                log.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = log.join().unwrap_or_default();
    assert!(status.success(), "{test}: exit {status}:\n{log}");
    assert!(!ep.war_path(WAR).exists(), "{test}: WAR left:\n{log}");
    assert_eq!(state(&root)["phase"], "stopped");
}

#[test]
fn static_agent_from_the_deb_runs_on_debian_11_bullseye() {
    const TEST: &str = "package_distros (Debian 11)";
    if !nspawn::available_or_skip(TEST) {
        return;
    }
    // minbase alone: the agent needs nothing from the distribution.
    let t = Instant::now();
    let (tarball, built) = nspawn::cached_root_of("bullseye", &[]);
    if built {
        eprintln!("{TEST}: debootstrapped bullseye in {:?}", t.elapsed());
    }
    agent_runs_in(TEST, &tarball, "glibc 2.31");
}

#[test]
fn static_agent_from_the_deb_runs_on_debian_12_bookworm() {
    const TEST: &str = "package_distros (Debian 12)";
    if !nspawn::available_or_skip(TEST) {
        return;
    }
    // The systemd suites' root, already cached.
    let (tarball, _) = nspawn::cached_root();
    agent_runs_in(TEST, &tarball, "glibc 2.36");
}
