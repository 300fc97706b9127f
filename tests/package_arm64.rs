//! The arm64 packages (packaging/README.md): cross-built on this amd64 machine, so their agent
//! is run here under qemu-user (`qemu-aarch64`, called directly: no binfmt registration).
//!
//! - `arm64_packages_say_arm64_and_carry_what_amd64_does`: the .deb's `Architecture` is
//!   `arm64`, the .rpm's `%{ARCH}` is `aarch64`, every `.sha256` passes `sha256sum --check`,
//!   and both packages list the same files as their amd64 builds.
//! - `arm64_agent_from_the_deb_is_a_static_aarch64_executable`: the binaries unpacked from
//!   the .deb (`dpkg-deb -x`) are 64-bit little-endian ELF for `EM_AARCH64`, static-pie (type
//!   `ET_DYN`, no program interpreter, no shared library; read from the ELF headers, and
//!   `file` agrees).
//! - `arm64_agent_from_the_deb_onboards_under_qemu`: that agent under qemu: `--version`,
//!   `--help`, the plugin's, a usage error and a configuration error (exit 2, naming the file
//!   and the field), then a real onboarding over TLS against the endpoint on the host (ring's
//!   aarch64 code, the openat/fchown file writes, the restart command), `status` on the state
//!   it wrote, and SIGTERM: unregistered, exit 0.
//!
//! They need the arm64 packages from `ARCHES="amd64 arm64" packaging/build-packages.sh`
//! (.ci/run builds them), `qemu-aarch64` (Debian's qemu-user-static or qemu-user), `dpkg-deb`,
//! `rpm` and `file`. Without them a test prints a SKIPPED line and passes, except under
//! CI=true, where it fails.

#[path = "support/agent.rs"]
mod agent_support;
#[path = "support/endpoint.rs"]
mod endpoint;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use agent_support::{Agent, STATE_FILE};
use endpoint::{Endpoint, NS, Options, read};

const WAR: &str = "ratings-jwt-corp-vm-0001";
const TOKEN: &str = "var/run/secrets/tokens/istio-token";
const CLUSTER_ENV: &str = "var/lib/istio/envoy/cluster.env";
/// ELF's machine number for AArch64 (`EM_AARCH64` in elf.h).
const EM_AARCH64: u16 = 183;
const PT_INTERP: u32 = 3;
const PT_DYNAMIC: u32 = 2;

fn packages_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .map(Path::to_path_buf)
        .unwrap_or(tmp)
        .join("packages")
}

/// Fails under CI=true, else prints a SKIPPED line; returns None either way.
fn skip<T>(test: &str, why: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}; set CI=true to make this a failure");
    None
}

fn on_path(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

/// The host commands a test needs, or a skip (a failure under CI) naming what is missing.
fn commands_or_skip(test: &str, cmds: &[&str]) -> Option<()> {
    let missing: Vec<&str> = cmds
        .iter()
        .copied()
        .filter(|c| on_path(c).is_none())
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    skip(
        test,
        &format!(
            "no {} command (as root: apt-get install -y dpkg rpm file)",
            missing.join(", ")
        ),
    )
}

/// qemu-user for aarch64: Debian's qemu-user-static names it `qemu-aarch64-static`,
/// qemu-user `qemu-aarch64`.
fn qemu_or_skip(test: &str) -> Option<PathBuf> {
    on_path("qemu-aarch64-static")
        .or_else(|| on_path("qemu-aarch64"))
        .or_else(|| {
            skip(
                test,
                "no qemu-aarch64-static or qemu-aarch64 (as root: apt-get install -y qemu-user-static)",
            )
        })
}

/// The package of `kind` for `arch` in the layout build-packages.sh writes (the local
/// repository's copy, whose .sha256 names it as downloaded).
fn package_or_skip(test: &str, kind: &str, arch: &str) -> Option<PathBuf> {
    let p = packages_dir().join(format!("install/{kind}/{arch}/onboarding-agent.{kind}"));
    if p.is_file() && p.with_extension(format!("{kind}.sha256")).is_file() {
        return Some(p);
    }
    skip(
        test,
        &format!(
            "{} (and its .sha256) not built: run ARCHES=\"amd64 arm64\" packaging/build-packages.sh",
            p.display()
        ),
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The data files a .deb installs (`dpkg-deb -c`), directories left out, sorted.
fn deb_files(deb: &Path) -> Vec<String> {
    let listing = run_ok(Command::new("dpkg-deb").arg("-c").arg(deb));
    let mut files: Vec<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    files.sort();
    files
}

fn rpm_files(rpm: &Path) -> Vec<String> {
    let mut files: Vec<String> = run_ok(Command::new("rpm").arg("-qlp").arg(rpm))
        .lines()
        .map(str::to_string)
        .collect();
    files.sort();
    files
}

/// The .deb's data unpacked into a temporary directory.
fn unpack(deb: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    run_ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()));
    dir
}

#[test]
fn arm64_packages_say_arm64_and_carry_what_amd64_does() {
    const TEST: &str = "package_arm64 (metadata)";
    if commands_or_skip(TEST, &["dpkg-deb", "rpm", "sha256sum"]).is_none() {
        return;
    }
    let (Some(deb), Some(rpm)) = (
        package_or_skip(TEST, "deb", "arm64"),
        package_or_skip(TEST, "rpm", "arm64"),
    ) else {
        return;
    };
    let (Some(deb_amd64), Some(rpm_amd64)) = (
        package_or_skip(TEST, "deb", "amd64"),
        package_or_skip(TEST, "rpm", "amd64"),
    ) else {
        return;
    };

    let field = |f: &str| {
        run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "onboarding-agent");
    assert_eq!(field("Architecture"), "arm64");
    let rpm_q = |fmt: &str| run_ok(Command::new("rpm").args(["-qp", "--qf", fmt]).arg(&rpm));
    assert_eq!(rpm_q("%{NAME}"), "onboarding-agent");
    assert_eq!(rpm_q("%{ARCH}"), "aarch64");

    // Every checksum as users check it: the local repository's (named as downloaded) and
    // the versioned files' beside the packages.
    for pkg in [&deb, &rpm] {
        let dir = pkg.parent().unwrap_or(Path::new("."));
        let name = pkg.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let ok = run_ok(
            Command::new("sha256sum")
                .arg("--check")
                .arg(format!("{name}.sha256"))
                .current_dir(dir),
        );
        assert_eq!(ok.trim(), format!("{name}: OK"));
    }
    let version = env!("CARGO_PKG_VERSION");
    let versioned: Vec<PathBuf> = std::fs::read_dir(packages_dir())
        .unwrap_or_else(|e| panic!("{}: {e}", packages_dir().display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with(&format!("onboarding-agent_{version}-"))
                && n.ends_with("_arm64.deb.sha256")
                || n.starts_with(&format!("onboarding-agent-{version}-"))
                    && n.ends_with(".aarch64.rpm.sha256")
        })
        .collect();
    assert_eq!(
        versioned.len(),
        2,
        "versioned arm64 checksums: {versioned:?}"
    );
    for sum in versioned {
        let name = sum.file_name().unwrap_or_default().to_string_lossy();
        let ok = run_ok(
            Command::new("sha256sum")
                .arg("--check")
                .arg(name.as_ref())
                .current_dir(packages_dir()),
        );
        assert!(ok.trim().ends_with(": OK"), "{ok}");
    }

    // The same package on both architectures: the agent, its plugin, the unit, the configs.
    let files = deb_files(&deb);
    assert_eq!(
        files,
        deb_files(&deb_amd64),
        "arm64 and amd64 .deb contents"
    );
    for f in [
        "/usr/bin/onboarding-agent",
        "/usr/bin/onboarding-agent-oidc-credential-plugin",
        "/usr/lib/systemd/system/onboarding-agent.service",
        "/etc/onboarding-agent/agent.config.yaml",
    ] {
        assert!(
            files.iter().any(|l| l == f),
            "{f} not in the .deb: {files:?}"
        );
    }
    assert_eq!(
        rpm_files(&rpm),
        rpm_files(&rpm_amd64),
        "arm64 and amd64 .rpm contents"
    );
}

/// What the ELF headers say about an executable.
#[derive(Debug, PartialEq, Eq)]
struct Elf {
    /// ELFCLASS64 and little endian (only such files are read further).
    class64_le: bool,
    /// e_type: 2 ET_EXEC (fixed address), 3 ET_DYN (PIE, static-pie or a shared library).
    kind: u16,
    machine: u16,
    /// A PT_INTERP segment: the kernel loads a dynamic linker first.
    interp: bool,
    /// A PT_DYNAMIC segment (a static-pie has one for its own relocations).
    dynamic: bool,
}

const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

fn elf_facts(bytes: &[u8]) -> Result<Elf, String> {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(format!("truncated at {o}"))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(format!("truncated at {o}"))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            })
            .ok_or(format!("truncated at {o}"))
    };
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    // EI_CLASS 2 = ELFCLASS64, EI_DATA 1 = little endian.
    let class64_le = bytes.get(4) == Some(&2) && bytes.get(5) == Some(&1);
    if !class64_le {
        return Ok(Elf {
            class64_le,
            kind: 0,
            machine: 0,
            interp: false,
            dynamic: false,
        });
    }
    let kind = u16_at(16)?;
    let machine = u16_at(18)?;
    let phoff = usize::try_from(u64_at(32)?).map_err(|e| e.to_string())?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    let (mut interp, mut dynamic) = (false, false);
    for i in 0..phnum {
        match u32_at(phoff + i * phentsize)? {
            PT_INTERP => interp = true,
            PT_DYNAMIC => dynamic = true,
            _ => {}
        }
    }
    Ok(Elf {
        class64_le,
        kind,
        machine,
        interp,
        dynamic,
    })
}

#[test]
fn elf_facts_tell_the_host_binary_from_a_static_aarch64_one() {
    // The test binary itself: a dynamically linked (glibc) PIE for this host, so the parser
    // is seen to tell machines and interpreters apart.
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let elf = elf_facts(&read_bytes(&exe)).unwrap_or_else(|e| panic!("{e}"));
    assert!(elf.class64_le);
    if cfg!(target_arch = "x86_64") {
        assert_eq!(elf.machine, 62, "EM_X86_64");
    } else if cfg!(target_arch = "aarch64") {
        assert_eq!(elf.machine, EM_AARCH64);
    }
    assert!(
        elf.interp && elf.dynamic,
        "the test binary is dynamically linked: {elf:?}"
    );
    assert!(elf_facts(b"#!/bin/sh\n").is_err());
    // A fixed-address executable's header: e_type at 16, e_machine at 18, no segments.
    let mut header = vec![0u8; 64];
    header[..6].copy_from_slice(b"\x7fELF\x02\x01");
    header[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    header[18..20].copy_from_slice(&EM_AARCH64.to_le_bytes());
    let elf = elf_facts(&header).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((elf.kind, elf.machine), (ET_EXEC, EM_AARCH64));
    assert!(!elf.interp && !elf.dynamic);
}

fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn arm64_agent_from_the_deb_is_a_static_aarch64_executable() {
    const TEST: &str = "package_arm64 (ELF)";
    if commands_or_skip(TEST, &["dpkg-deb", "file", "readelf"]).is_none() {
        return;
    }
    let Some(deb) = package_or_skip(TEST, "deb", "arm64") else {
        return;
    };
    let tree = unpack(&deb);
    for b in [
        "onboarding-agent",
        "onboarding-agent-oidc-credential-plugin",
    ] {
        let path = tree.path().join("usr/bin").join(b);
        let elf =
            elf_facts(&read_bytes(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(elf.class64_le, "{b}: not a 64-bit little-endian ELF");
        assert_eq!(elf.machine, EM_AARCH64, "{b}: e_machine");
        assert!(
            !elf.interp,
            "{b}: has a program interpreter (dynamically linked)"
        );
        // static-pie (packaging/aarch64-musl-static-pie-linker): position independent, so
        // loaded at a random address, as the amd64 build.
        assert_eq!(elf.kind, ET_DYN, "{b}: e_type (not static-pie)");
        // Its dynamic section is for its own relocations: no library.
        let d = run_ok(Command::new("readelf").arg("-dW").arg(&path));
        assert!(!d.contains("(NEEDED)"), "{b} needs shared libraries:\n{d}");
        let file = run_ok(Command::new("file").arg("-b").arg(&path));
        assert!(
            file.contains("ARM aarch64") && file.contains("static-pie linked"),
            "file {b}: {file}"
        );
        eprintln!(
            "{b} (arm64): {} B; file: {}",
            read_bytes(&path).len(),
            file.trim()
        );
    }
}

/// The arm64 agent from the .deb under qemu: `[qemu, agent]`, the tree kept alive.
fn arm64_agent(test: &str) -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    commands_or_skip(test, &["dpkg-deb"])?;
    let qemu = qemu_or_skip(test)?;
    let deb = package_or_skip(test, "deb", "arm64")?;
    let tree = unpack(&deb);
    let bin = tree.path().join("usr/bin");
    Some((tree, qemu, bin))
}

fn qemu(qemu: &Path, bin: &Path, args: &[&str]) -> Output {
    run(Command::new(qemu)
        .arg(bin)
        .args(args)
        .env_remove("ONBOARDING_CONFIG")
        .env_remove("AGENT_CONFIG"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn arm64_agent_from_the_deb_onboards_under_qemu() {
    const TEST: &str = "package_arm64 (qemu)";
    let Some((tree, qemu_bin, bin)) = arm64_agent(TEST) else {
        return;
    };
    let agent_bin = bin.join("onboarding-agent");
    let plugin_bin = bin.join("onboarding-agent-oidc-credential-plugin");
    let version = env!("CARGO_PKG_VERSION");

    // Help and version, as kubectl spells them (src/agent/cli.rs).
    let out = qemu(&qemu_bin, &agent_bin, &["--version"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("onboarding-agent {version}")
    );
    let out = qemu(&qemu_bin, &agent_bin, &["--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    assert!(
        help.contains("Usage:") && help.contains("--onboarding-config PATH"),
        "{help}"
    );
    let out = qemu(&qemu_bin, &plugin_bin, &["--version"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("onboarding-agent-oidc-credential-plugin {version}")
    );

    // A usage error and a configuration error: exit 2 and what to fix.
    let out = qemu(&qemu_bin, &agent_bin, &["--onboarding"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("unexpected argument \"--onboarding\""),
        "{}",
        text(&out.stderr)
    );
    let bad = tree.path().join("onboarding.config.yaml");
    std::fs::write(
        &bad,
        "onboardingEndpoint: {host: ep.example}\nworkloadGroup: {namespace: Bad_NS, name: g}\n",
    )
    .unwrap_or_else(|e| panic!("{}: {e}", bad.display()));
    let bad_s = bad.to_string_lossy().into_owned();
    let out = qemu(&qemu_bin, &agent_bin, &["--onboarding-config", &bad_s]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{bad_s}: workloadGroup.namespace: \"Bad_NS\"")),
        "{err}"
    );

    // The real thing: onboarding over TLS against the endpoint, the sidecar's files written,
    // the restart command run, the registration connected, then SIGTERM unregisters.
    let ep = Endpoint::start(Options {
        grace: "5m",
        keep_alive_interval: "1s",
        keep_alive_timeout: "3s",
        token_expiration: "1h",
    });
    let mut agent = Agent::builder(&ep).prepare();
    agent.spawn_program(&[OsString::from(&qemu_bin), OsString::from(&agent_bin)]);
    // Emulated, the agent is several times slower than native (20 s there).
    agent.wait_phase("connected", Duration::from_secs(120));
    assert!(ep.war_path(WAR).exists(), "no WAR at the endpoint");
    assert_eq!(
        read(&agent.root_file(TOKEN)),
        "istio-token-for-bookinfo-ratings-vm"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(agent.root_file(TOKEN))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600, "istio-token mode");
    }
    assert!(read(&agent.root_file(CLUSTER_ENV)).contains("ratings"));
    assert_eq!(agent.restarts(), 1, "{}", agent.log());
    assert_eq!(agent.state()["registration"], format!("{NS}/{WAR}"));

    let state_file = agent.path(STATE_FILE).to_string_lossy().into_owned();
    let out = qemu(
        &qemu_bin,
        &agent_bin,
        &["status", "--state-file", &state_file],
    );
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    assert!(
        shown.contains("phase                    connected"),
        "{shown}"
    );

    // qemu-user delivers the signal to the emulated agent.
    agent.signal(libc::SIGTERM);
    let code = agent.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", agent.log());
    assert!(!ep.war_path(WAR).exists(), "WAR not deleted by unregister");
    assert_eq!(agent.state()["phase"], "stopped");
}
