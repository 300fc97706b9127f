//! The onboarding-agent packages as users install them (packaging/README.md).
//!
//! `deb_installs_onboards_upgrades_removes_and_purges_under_systemd`: a Debian bookworm root
//! booted with systemd-nspawn (tests/support/nspawn.rs). Inside it, the spec's commands
//! verbatim: `sha256sum --check onboarding-agent.deb.sha256`, `apt-get install -y
//! ./onboarding-agent.deb` (apt installs the local file; the package depends on nothing, so
//! no network), then one configuration file plus the credential, `systemctl enable --now
//! onboarding-agent`: the agent onboards against the real endpoint on the host, writes the
//! files and restarts the stand-in `istio-sidecar.service` (as in tests/systemd_e2e.rs);
//! an upgrade to a newer package keeps the edited conffile and the registration;
//! `systemctl stop` unregisters; `apt-get remove` keeps the conffiles and the state, `apt-get
//! purge` removes them, the agent's state and links, and its /etc/hosts block, and leaves
//! the administrator's own files.
//!
//! `deb_installed_agent_feeds_the_real_pilot_agent_under_systemd`: the same install, but
//! istio-sidecar.service is the real thing: istio-start.sh running the real pilot-agent
//! (built from istio.io/istio, static, copied into the root; `DISABLE_ENVOY=true`, as
//! istio-proxy),
//! against real istiod on the real kube-apiserver (tests/support/istio.rs, kube.rs) and the
//! endpoint on the kube store. After `systemctl enable --now onboarding-agent` the agent
//! onboards and restarts the sidecar; pilot-agent reads the rendered cluster.env, resolves
//! istiod through the hosts block the agent wrote into the container's /etc/hosts (the
//! container shares the host network; istiod listens on 127.0.0.1:15012), sends a CSR with
//! the istio-token the agent wrote and puts the certificate istiod signed into /etc/certs.
//! Without the kube-harness and istio-harness binaries (GO_BIN_CACHE) it skips like the
//! others.
//!
//! `rpm_installs_into_a_prepared_root`: an RPM distribution cannot be booted here (no
//! RPM-based root can be built from Debian's archive), so the .rpm is installed with `rpm
//! --root` into an extracted Debian root (which has the /bin/sh and systemctl its scriptlets
//! call), and its file list, config files, scriptlets and unit are checked, then a
//! reinstall keeps an edited config and an erase saves it as .rpmsave.
//!
//! All need the packages from `packaging/build-packages.sh` in target/packages (.ci/run
//! builds them first); without them, or without root and systemd-nspawn, the tests print a
//! SKIPPED line and pass, except under CI=true, where they fail.

#[path = "support/agent.rs"]
mod agent_support;
#[path = "support/endpoint.rs"]
mod endpoint;
#[path = "support/istio.rs"]
mod istio;
#[path = "support/istio_vm.rs"]
mod istio_vm;
#[path = "support/kube.rs"]
mod kube;
#[path = "support/nspawn.rs"]
mod nspawn;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::onboarding_config;
use endpoint::{Endpoint, NS, Options, vm_jwt};
use istio::uri_sans;
use istio_vm::{SA, VmCluster};
use nspawn::{Container, Root};
use x509_cert::Certificate;

const WAR: &str = "ratings-jwt-corp-vm-0001";
const AGENT_UNIT: &str = "onboarding-agent.service";
const SIDECAR_UNIT: &str = "istio-sidecar.service";
const STATE: &str = "/var/lib/onboarding-agent/state.json";
const TOKEN: &str = "/var/run/secrets/tokens/istio-token";
const CLUSTER_ENV: &str = "/var/lib/istio/envoy/cluster.env";

const SIDECAR_STANDIN_UNIT: &str = "\
[Unit]
Description=Stand-in for Istio's sidecar (test): sleeps; the test watches its MainPID
StartLimitIntervalSec=0

[Service]
User=istio-proxy
ExecStart=/bin/sleep infinity
";

/// The edited agent.config.yaml (the package's conffile): a JWT file credential and the
/// loopback interface, since the host has no cloud to detect.
const AGENT_CONFIG: &str = "\
# edited by the administrator
apiVersion: config.agent.onboarding.tetrate.io/v1alpha1
kind: AgentConfiguration
host:
  custom:
    credential:
    - file: /etc/onboarding-agent/jwt
    hostinfo:
      basic:
        networkInterfaces: {include: ['^lo$']}
settings:
  connection:
    retryPolicy:
      exponentialBackoff: {initialInterval: 200ms, maxInterval: 2s}
";

const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n# kept by the admin\n";

fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn packages_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .map(Path::to_path_buf)
        .unwrap_or(tmp)
        .join("packages")
}

/// The package of `kind` in the local repository layout build-packages.sh writes, or a
/// SKIPPED line (a failure under CI=true) when it was not built.
fn package_or_skip(test: &str, kind: &str) -> Option<PathBuf> {
    let p = packages_dir().join(format!("install/{kind}/amd64/onboarding-agent.{kind}"));
    if p.is_file() && p.with_extension(format!("{kind}.sha256")).is_file() {
        return Some(p);
    }
    let why = format!(
        "{} (and its .sha256) not built: run packaging/build-packages.sh",
        p.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}; set CI=true to make this a failure");
    None
}

fn host(cmd: &mut Command) -> String {
    let out =
        nspawn::run_with_timeout(cmd, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.ok(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// A newer package with the same content: the .deb unpacked, its version bumped, rebuilt.
fn upgrade_deb(deb: &Path, work: &Path) -> (PathBuf, String) {
    let tree = work.join("tree");
    host(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = endpoint::read(&control);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap_or_else(|| panic!("no Version in {text}"))
        .to_string();
    let newer = format!("{version}+test1");
    std::fs::write(
        &control,
        text.replace(
            &format!("Version: {version}\n"),
            &format!("Version: {newer}\n"),
        ),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", control.display()));
    let out = work.join("onboarding-agent-newer.deb");
    host(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&tree)
            .arg(&out),
    );
    (out, newer)
}

struct Harness {
    ct: Container,
    ep: Endpoint,
}

impl Harness {
    fn diag(&self) -> String {
        let ep_log = nspawn::strip_ansi(&self.ep.log.lock().map(|l| l.clone()).unwrap_or_default());
        format!(
            "\n--- journal\n{}\n--- endpoint log (tail)\n{}",
            nspawn::tail(&self.ct.journal(&[AGENT_UNIT, SIDECAR_UNIT]), 60),
            nspawn::tail(&ep_log, 30)
        )
    }

    fn sh(&self, script: &str) -> nspawn::Output {
        self.ct
            .exec_timeout(&["sh", "-c", script], Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("{e}{}", self.diag()))
    }

    fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        if !out.ok() {
            panic!(
                "`{script}` failed ({}):\n{}{}{}",
                out.status,
                out.stdout,
                out.stderr,
                self.diag()
            );
        }
        out.stdout
    }

    fn exists(&self, path: &str) -> bool {
        self.sh(&format!("test -e '{path}' || test -L '{path}'"))
            .ok()
    }

    fn wait(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}{}",
                    self.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn main_pid(&self, unit: &str) -> u32 {
        self.ct.unit_property(unit, "MainPID").parse().unwrap_or(0)
    }

    fn state(&self) -> serde_json::Value {
        self.ct
            .read(STATE)
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn connected(&self) -> bool {
        let s = self.state();
        s["phase"] == "connected" && s["registration"] == format!("{NS}/{WAR}")
    }
}

#[test]
fn deb_installs_onboards_upgrades_removes_and_purges_under_systemd() {
    const TEST: &str = "package_e2e (deb)";
    if !nspawn::available_or_skip(TEST) {
        return;
    }
    let Some(deb) = package_or_skip(TEST, "deb") else {
        return;
    };
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (newer_deb, newer_version) = upgrade_deb(&deb, work.path());

    let (tarball, _) = nspawn::cached_root();
    let ep = Endpoint::start(Options {
        grace: "5m",
        keep_alive_interval: "1s",
        keep_alive_timeout: "3s",
        token_expiration: "1h",
    });
    let root = Root::extract(&tarball);
    // What the user downloads, as downloaded (spec/001's file names).
    root.write("/root/onboarding-agent.deb", read_bytes(&deb), 0o644);
    root.write(
        "/root/onboarding-agent.deb.sha256",
        read_bytes(&deb.with_extension("deb.sha256")),
        0o644,
    );
    root.write(
        "/root/onboarding-agent-newer.deb",
        read_bytes(&newer_deb),
        0o644,
    );
    // The administrator's files, staged to be put in place after the install.
    root.write("/root/stage/ca.pem", &ep.ca_pem, 0o644);
    root.write("/root/stage/jwt", vm_jwt("vm-0001", &ep.plane_uid), 0o600);
    root.write(
        "/root/stage/onboarding.config.yaml",
        onboarding_config(&ep, Path::new("/etc/onboarding-agent/ca.pem"), "ratings"),
        0o644,
    );
    root.write("/root/stage/agent.config.yaml", AGENT_CONFIG, 0o644);
    root.write(
        "/etc/systemd/system/istio-sidecar.service",
        SIDECAR_STANDIN_UNIT,
        0o644,
    );
    root.write("/etc/hosts", HOSTS, 0o644);
    let name = format!("onboarding-pkg-{}", std::process::id());
    let ct = root.boot(&name, Duration::from_secs(90));
    let h = Harness { ct, ep };

    h.sh_ok("useradd --system --no-create-home --shell /usr/sbin/nologin istio-proxy");
    h.sh_ok("systemctl start istio-sidecar.service");
    let pid0 = h.main_pid(SIDECAR_UNIT);
    assert_ne!(pid0, 0, "the sidecar stand-in did not start{}", h.diag());

    // The spec's commands, verbatim, in the download directory.
    let check = h.sh_ok("cd /root && sha256sum --check onboarding-agent.deb.sha256");
    assert!(
        check.contains("onboarding-agent.deb: OK"),
        "sha256sum --check: {check}"
    );
    h.sh_ok("cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y ./onboarding-agent.deb");

    // Installed: the binaries run (the static musl build on this Debian), the unit is
    // enabled but skipped until configured, the conffiles are registered.
    let version = h.sh_ok("onboarding-agent --version");
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "onboarding-agent --version: {version}"
    );
    h.sh_ok("onboarding-agent-oidc-credential-plugin --help >/dev/null 2>&1 || test $? -eq 2");
    assert_eq!(
        h.sh("systemctl is-enabled onboarding-agent").stdout.trim(),
        "enabled"
    );
    assert_eq!(
        h.sh("systemctl is-active onboarding-agent").stdout.trim(),
        "inactive"
    );
    let conffiles = h.sh_ok("cat /var/lib/dpkg/info/onboarding-agent.conffiles");
    for f in [
        "/etc/onboarding-agent/agent.config.yaml",
        "/etc/onboarding-agent/onboarding.config.yaml.example",
    ] {
        assert!(
            conffiles.lines().any(|l| l == f),
            "{f} not a conffile: {conffiles}"
        );
    }
    let unit_path = h.sh_ok("systemctl show -p FragmentPath --value onboarding-agent");
    // bookworm is merged-/usr: systemd finds the packaged /usr/lib unit through /lib.
    assert!(
        [
            "/usr/lib/systemd/system/onboarding-agent.service",
            "/lib/systemd/system/onboarding-agent.service"
        ]
        .contains(&unit_path.trim()),
        "systemd loads the unit from {unit_path}"
    );
    let listed = h.sh_ok("dpkg -L onboarding-agent");
    assert!(
        listed
            .lines()
            .any(|l| l == "/usr/lib/systemd/system/onboarding-agent.service"),
        "dpkg -L: {listed}"
    );
    assert_eq!(
        h.ct.read("/usr/lib/systemd/system/onboarding-agent.service")
            .unwrap_or_default(),
        endpoint::read(&endpoint::repo().join("packaging/systemd/onboarding-agent.service")),
        "the packaged unit is not packaging/systemd/onboarding-agent.service"
    );
    let verify = h.sh("systemd-analyze verify /usr/lib/systemd/system/onboarding-agent.service");
    assert!(
        verify.ok() && verify.stderr.trim().is_empty(),
        "systemd-analyze verify: {}{}",
        verify.stdout,
        verify.stderr
    );

    // One configuration file (plus the credential and CA it names), the conffile edited.
    h.sh_ok(
        "install -m 0644 /root/stage/onboarding.config.yaml /root/stage/ca.pem /etc/onboarding-agent/ \
         && install -m 0600 /root/stage/jwt /etc/onboarding-agent/jwt \
         && cat /root/stage/agent.config.yaml > /etc/onboarding-agent/agent.config.yaml",
    );
    h.sh_ok("systemctl enable --now onboarding-agent");
    h.wait(
        "the WAR in the endpoint's store",
        Duration::from_secs(30),
        || h.ep.war_path(WAR).exists(),
    );
    let mut pid1 = 0;
    h.wait(
        "istio-sidecar.service restarted",
        Duration::from_secs(30),
        || {
            pid1 = h.main_pid(SIDECAR_UNIT);
            pid1 != 0 && pid1 != pid0
        },
    );
    h.wait("the agent connected", Duration::from_secs(20), || {
        h.connected()
    });
    assert_eq!(
        h.ct.read(TOKEN).as_deref(),
        Some("istio-token-for-bookinfo-ratings-vm"),
        "istio-token{}",
        h.diag()
    );
    assert!(
        h.ct.read("/etc/hosts")
            .unwrap_or_default()
            .contains("# BEGIN onboarding-agent")
    );

    // Upgrade: the edited conffile stays (no prompt: the package's copy did not change), the
    // agent is restarted on the new package and registered again under the same name.
    let before = h.main_pid(AGENT_UNIT);
    h.sh_ok("cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y ./onboarding-agent-newer.deb");
    let installed = h.sh_ok("dpkg-query -W -f '${Version}' onboarding-agent");
    assert_eq!(installed, newer_version);
    assert_eq!(
        h.ct.read("/etc/onboarding-agent/agent.config.yaml")
            .as_deref(),
        Some(AGENT_CONFIG),
        "the upgrade did not keep the edited agent.config.yaml"
    );
    h.wait(
        "the agent restarted on the new package",
        Duration::from_secs(30),
        || {
            let pid = h.main_pid(AGENT_UNIT);
            pid != 0 && pid != before
        },
    );
    h.wait(
        "the agent connected after the upgrade",
        Duration::from_secs(30),
        || h.connected() && h.ep.war_path(WAR).exists(),
    );

    // Stop unregisters.
    h.sh_ok("systemctl stop onboarding-agent");
    assert!(
        !h.ep.war_path(WAR).exists(),
        "the WAR survived systemctl stop{}",
        h.diag()
    );
    assert!(
        h.ct.journal(&[AGENT_UNIT])
            .contains("unregistered bookinfo/")
    );

    // Remove: the program goes, configuration and state stay (Debian policy 6.7/10.7.3).
    h.sh_ok("DEBIAN_FRONTEND=noninteractive apt-get remove -y onboarding-agent");
    for gone in [
        "/usr/bin/onboarding-agent",
        "/usr/bin/onboarding-agent-oidc-credential-plugin",
        "/usr/lib/systemd/system/onboarding-agent.service",
    ] {
        assert!(!h.exists(gone), "{gone} still there after remove");
    }
    for kept in [
        "/etc/onboarding-agent/agent.config.yaml",
        "/etc/onboarding-agent/onboarding.config.yaml.example",
        "/etc/onboarding-agent/onboarding.config.yaml",
        STATE,
        TOKEN,
    ] {
        assert!(
            h.exists(kept),
            "{kept} gone after remove (only purge removes it)"
        );
    }
    let status = h.sh_ok("dpkg-query -W -f '${db:Status-Abbrev}' onboarding-agent");
    assert_eq!(status.trim(), "rc", "dpkg status after remove");

    // Purge: conffiles, state (with the istio-token it holds), the agent's links and its
    // hosts block go; what the administrator created stays, and so does the rest of /etc/hosts.
    h.sh_ok("DEBIAN_FRONTEND=noninteractive apt-get purge -y onboarding-agent");
    for gone in [
        "/etc/onboarding-agent/agent.config.yaml",
        "/etc/onboarding-agent/onboarding.config.yaml.example",
        "/var/lib/onboarding-agent",
        TOKEN,
        CLUSTER_ENV,
        "/etc/istio/config/mesh",
        "/etc/certs/root-cert.pem",
        "/etc/systemd/system/multi-user.target.wants/onboarding-agent.service",
    ] {
        assert!(!h.exists(gone), "{gone} still there after purge");
    }
    for kept in [
        "/etc/onboarding-agent/onboarding.config.yaml",
        "/etc/onboarding-agent/ca.pem",
        "/etc/onboarding-agent/jwt",
    ] {
        assert!(h.exists(kept), "purge removed the administrator's {kept}");
    }
    assert_eq!(
        h.ct.read("/etc/hosts").as_deref(),
        Some(HOSTS),
        "/etc/hosts after purge"
    );
    assert!(
        !h.sh("dpkg-query -W onboarding-agent").ok()
            || h.sh_ok("dpkg-query -W -f '${db:Status-Abbrev}' onboarding-agent")
                .trim()
                == "un",
        "dpkg still knows onboarding-agent after purge"
    );
    assert_eq!(
        h.main_pid(SIDECAR_UNIT),
        pid1,
        "the package touched the sidecar"
    );
}

/// `rpm` on the host with `args`, against the root `dir`.
/// The install guide's commands verbatim inside the booted Debian root, downloading from
/// the endpoint's local repository (docs/install.md) on the host: `curl -fLO` of the package
/// and its `.sha256` (curl trusts the endpoint's CA through `CURL_CA_BUNDLE`, so the
/// commands stay as written), `sha256sum --check`, `apt-get install -y
/// ./onboarding-agent.deb` (as root, so without `sudo`, which minbase lacks), `rm`. The
/// container is on the host network, so it reaches the endpoint on 127.0.0.1.
#[test]
fn deb_downloaded_from_the_endpoints_local_repository_installs_with_the_spec_commands() {
    const TEST: &str = "package_e2e (deb from /install/)";
    if !nspawn::available_or_skip(TEST) {
        return;
    }
    let Some(deb) = package_or_skip(TEST, "deb") else {
        return;
    };
    // build-packages.sh's install/ directory is the local repository layout as it is.
    let repository = packages_dir().join("install");
    let (tarball, _) = nspawn::cached_root();
    let mut ep = Endpoint::start(Options::default());
    ep.reconfigure(|t| {
        format!(
            "{t}localRepository: {{directory: '{}'}}\n",
            repository.display()
        )
    });
    let root = Root::extract(&tarball);
    root.write("/root/endpoint-ca.pem", &ep.ca_pem, 0o644);
    let name = format!("onboarding-repo-{}", std::process::id());
    let ct = root.boot(&name, Duration::from_secs(90));
    let h = Harness { ct, ep };

    let endpoint = h.ep.url.trim_start_matches("https://").to_string();
    let out = h.sh_ok(&format!(
        r#"set -e
cd /root
export CURL_CA_BUNDLE=/root/endpoint-ca.pem DEBIAN_FRONTEND=noninteractive

curl -fLO "https://{endpoint}/install/deb/amd64/onboarding-agent.deb"

curl -fLO "https://{endpoint}/install/deb/amd64/onboarding-agent.deb.sha256"

sha256sum --check onboarding-agent.deb.sha256

apt-get install -y ./onboarding-agent.deb

rm onboarding-agent.deb onboarding-agent.deb.sha256
"#
    ));
    assert!(
        out.contains("onboarding-agent.deb: OK"),
        "sha256sum --check: {out}"
    );
    let built = host(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Version"),
    );
    assert_eq!(
        h.sh_ok("dpkg-query -W -f '${Status} ${Version}' onboarding-agent"),
        format!("install ok installed {}", built.trim()),
        "installed from the downloaded file"
    );
    let version = h.sh_ok("onboarding-agent --version");
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "onboarding-agent --version: {version}"
    );
    assert!(!h.exists("/root/onboarding-agent.deb"));
    // A package the operator did not place: curl -f fails, and the answer names the file.
    let missing = h.sh(&format!(
        "cd /root && CURL_CA_BUNDLE=/root/endpoint-ca.pem curl -fLO \"https://{endpoint}/install/deb/amd64/istio-sidecar.deb\""
    ));
    assert!(!missing.ok(), "a missing package was downloaded");
    let body = h.sh_ok(&format!(
        "CURL_CA_BUNDLE=/root/endpoint-ca.pem curl -sS \"https://{endpoint}/install/deb/amd64/istio-sidecar.deb\""
    ));
    assert!(
        body.contains("must place") && body.contains("deb/amd64/istio-sidecar.deb"),
        "{body}"
    );
}

fn rpm(dir: &Path, args: &[&str]) -> nspawn::Output {
    let mut cmd = Command::new("rpm");
    cmd.arg("--root").arg(dir).args(args);
    nspawn::run_with_timeout(&mut cmd, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"))
}

fn rpm_ok(dir: &Path, args: &[&str]) -> String {
    let out = rpm(dir, args);
    assert!(
        out.ok(),
        "rpm {args:?}: {}\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

#[test]
fn rpm_installs_into_a_prepared_root() {
    const TEST: &str = "package_e2e (rpm)";
    if !nspawn::available_or_skip(TEST) {
        return;
    }
    let Some(pkg) = package_or_skip(TEST, "rpm") else {
        return;
    };
    let which = Command::new("sh").args(["-c", "command -v rpm"]).output();
    if !which.is_ok_and(|o| o.status.success()) {
        let why = "no `rpm` command (apt-get install -y rpm)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{TEST}: {why}");
        }
        eprintln!("SKIPPED {TEST}: {why}");
        return;
    }
    let sum = host(
        Command::new("sha256sum")
            .arg("--check")
            .arg("onboarding-agent.rpm.sha256")
            .current_dir(pkg.parent().unwrap_or(Path::new("."))),
    );
    assert!(sum.contains("onboarding-agent.rpm: OK"), "{sum}");

    let (tarball, _) = nspawn::cached_root();
    let root = Root::extract(&tarball);
    let dir = root.path("/");
    let pkg_s = pkg.to_string_lossy().into_owned();
    rpm_ok(&dir, &["--initdb"]);
    // --nodeps: the Debian root's rpm database is empty, so nothing provides /bin/sh there.
    rpm_ok(&dir, &["-i", "--nodeps", &pkg_s]);

    let mut files: Vec<String> = rpm_ok(&dir, &["-ql", "onboarding-agent"])
        .lines()
        .map(str::to_string)
        .collect();
    files.sort();
    let mut want = vec![
        "/etc/onboarding-agent/agent.config.yaml",
        "/etc/onboarding-agent/onboarding.config.yaml.example",
        "/usr/bin/onboarding-agent",
        "/usr/bin/onboarding-agent-oidc-credential-plugin",
        "/usr/lib/systemd/system/onboarding-agent.service",
        "/usr/share/doc/onboarding-agent/README.packaging.md",
        "/usr/share/doc/onboarding-agent/agent.md",
        "/usr/share/licenses/onboarding-agent/LICENSE",
    ];
    want.sort();
    assert_eq!(files, want, "rpm -ql");
    let configs = rpm_ok(&dir, &["-qc", "onboarding-agent"]);
    assert_eq!(
        configs.lines().collect::<Vec<_>>(),
        [
            "/etc/onboarding-agent/agent.config.yaml",
            "/etc/onboarding-agent/onboarding.config.yaml.example"
        ],
        "rpm -qc"
    );
    let noreplace = rpm_ok(
        &dir,
        &[
            "-q",
            "--qf",
            "[%{FILENAMES} %{FILEFLAGS:fflags}\n]",
            "onboarding-agent",
        ],
    );
    for f in ["agent.config.yaml ", "onboarding.config.yaml.example "] {
        let line = noreplace.lines().find(|l| l.contains(f)).unwrap_or("");
        assert!(
            line.ends_with(" cn"),
            "{f}is not %config(noreplace): {line:?}"
        );
    }
    let scripts = rpm_ok(&dir, &["-q", "--scripts", "onboarding-agent"]);
    for (script, file) in [
        ("postinstall scriptlet", "packaging/rpm/post.sh"),
        ("preuninstall scriptlet", "packaging/rpm/preun.sh"),
        ("postuninstall scriptlet", "packaging/rpm/postun.sh"),
    ] {
        assert!(scripts.contains(script), "no {script}: {scripts}");
        let body = endpoint::read(&endpoint::repo().join(file));
        assert!(
            scripts.contains(body.trim()),
            "{script} is not {file}:\n{scripts}"
        );
    }
    assert_eq!(
        endpoint::read(&root.path("/usr/lib/systemd/system/onboarding-agent.service")),
        endpoint::read(&endpoint::repo().join("packaging/systemd/onboarding-agent.service"))
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.path("/usr/bin/onboarding-agent"))
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0);
        assert_eq!(mode, 0o755, "/usr/bin/onboarding-agent mode");
    }
    // The binary runs in the prepared root (chroot: the static build needs nothing from it).
    let out = host(
        Command::new("chroot")
            .arg(&dir)
            .args(["/usr/bin/onboarding-agent", "--version"]),
    );
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");

    // %config(noreplace): a reinstall keeps the edited file; an erase saves it as .rpmsave
    // and removes what the agent created (here: its state directory).
    let cfg = root.path("/etc/onboarding-agent/agent.config.yaml");
    std::fs::write(&cfg, AGENT_CONFIG).unwrap_or_else(|e| panic!("{}: {e}", cfg.display()));
    rpm_ok(&dir, &["-U", "--replacepkgs", "--nodeps", &pkg_s]);
    assert_eq!(
        endpoint::read(&cfg),
        AGENT_CONFIG,
        "reinstall replaced the edited config"
    );
    root.write(STATE, "{}", 0o600);
    rpm_ok(&dir, &["-e", "--nodeps", "onboarding-agent"]);
    assert!(!root.path("/usr/bin/onboarding-agent").exists());
    assert!(
        !root.path("/var/lib/onboarding-agent").exists(),
        "erase left the state"
    );
    assert_eq!(
        endpoint::read(&root.path("/etc/onboarding-agent/agent.config.yaml.rpmsave")),
        AGENT_CONFIG
    );
}

/// What the istio-sidecar package installs as istio-sidecar.service (Istio's
/// tools/packaging/common/istio.service), with `WorkingDirectory=/` spelled out: the script
/// reads `./var/lib/istio/envoy/*.env` and pilot-agent `./etc/...` relative to `/`.
/// `User=istio-proxy` (systemd then sets `$USER`) with `EXEC_USER=istio-proxy` in
/// sidecar.env: the script starts pilot-agent directly, as istio-proxy, instead of from root
/// through `sudo -E -u istio-proxy` (the package's unit runs as root), since the minimal
/// root has no sudo; pilot-agent runs as the same user either way.
const SIDECAR_UNIT_REAL: &str = "\
[Unit]
Description=istio-sidecar: the real pilot-agent, started by istio-start.sh (test)
StartLimitIntervalSec=0

[Service]
User=istio-proxy
WorkingDirectory=/
ExecStart=/bin/bash /usr/local/bin/istio-start.sh
Restart=always
RestartSec=2s
";

/// The host settings the istio-sidecar package leaves to the administrator: no Envoy
/// binary here (pilot-agent alone obtains the certificate), the binaries' directory, the
/// user the script runs pilot-agent as, and the pod name istio-start.sh would otherwise
/// take from `hostname -s`.
const SIDECAR_ENV: &str = "\
DISABLE_ENVOY=true
ISTIO_BIN_BASE=/usr/local/bin
EXEC_USER=istio-proxy
POD_NAME=vm-1
";

/// The installed package feeding the real sidecar: istiod (built from istio.io/istio) on
/// the real kube-apiserver, the endpoint on the kube store, and inside the booted Debian
/// root the .deb installed with apt, configured, `systemctl enable --now onboarding-agent`;
/// the agent onboards, writes the files and restarts istio-sidecar.service, which here is
/// istio-start.sh running the real pilot-agent (`DISABLE_ENVOY=true`). pilot-agent resolves
/// `istiod.istio-system.svc` through the hosts block the agent wrote into the container's
/// own /etc/hosts (the container is on the host network, istiod on 127.0.0.1:15012),
/// authenticates with the istio-token the agent wrote, and puts the workload certificate
/// istiod signed into /etc/certs (`OUTPUT_CERTS`).
#[test]
fn deb_installed_agent_feeds_the_real_pilot_agent_under_systemd() {
    const TEST: &str = "package_e2e (deb + real pilot-agent)";
    let started = Instant::now();
    if !nspawn::available_or_skip(TEST) {
        return;
    }
    let Some(deb) = package_or_skip(TEST, "deb") else {
        return;
    };
    // The WorkloadGroup has no probe: issuing a certificate needs none.
    let Some(cluster) = VmCluster::start(istio::MESH, None) else {
        return;
    };
    let VmCluster {
        h: kube,
        istiod,
        istio_bin,
        ..
    } = &cluster;
    // The VM reaches istiod through "the gateway", here the host's loopback, which the
    // container shares.
    let ep = cluster.endpoint(Options::default());

    let (tarball, _) = nspawn::cached_root();
    let root = Root::extract(&tarball);
    root.write("/root/onboarding-agent.deb", read_bytes(&deb), 0o644);
    root.write(
        "/root/onboarding-agent.deb.sha256",
        read_bytes(&deb.with_extension("deb.sha256")),
        0o644,
    );
    root.write("/root/stage/ca.pem", &ep.ca_pem, 0o644);
    root.write("/root/stage/jwt", vm_jwt("vm-0001", &ep.plane_uid), 0o600);
    root.write(
        "/root/stage/onboarding.config.yaml",
        onboarding_config(&ep, Path::new("/etc/onboarding-agent/ca.pem"), "ratings"),
        0o644,
    );
    root.write("/root/stage/agent.config.yaml", AGENT_CONFIG, 0o644);
    // What the istio-sidecar package would have put in place: its binaries (pilot-agent is
    // a static Go binary, so it runs in any root), its unit, and the host's sidecar.env.
    root.write(
        "/usr/local/bin/pilot-agent",
        read_bytes(&istio_bin.join("pilot-agent")),
        0o755,
    );
    root.write(
        "/usr/local/bin/istio-start.sh",
        read_bytes(&istio_bin.join("istio-start.sh")),
        0o755,
    );
    root.write(
        "/etc/systemd/system/istio-sidecar.service",
        SIDECAR_UNIT_REAL,
        0o644,
    );
    root.write("/var/lib/istio/envoy/sidecar.env", SIDECAR_ENV, 0o644);
    root.write("/etc/hosts", HOSTS, 0o644);
    let name = format!("onboarding-istio-{}", std::process::id());
    let ct = root.boot(&name, Duration::from_secs(90));
    let h = Harness { ct, ep };
    let diag = || format!("{}\n--- istiod (tail)\n{}", h.diag(), istiod.log_tail(40));

    h.sh_ok("useradd --system --no-create-home --shell /usr/sbin/nologin istio-proxy");
    // What the istio-sidecar package's postinst does: the user, and the directories
    // pilot-agent writes into (certificates, its gRPC bootstrap and XDS socket) as its.
    h.sh_ok(
        "install -d -o istio-proxy -g istio-proxy /etc/certs /etc/istio/proxy /etc/istio/config \
         /var/lib/istio/envoy /var/log/istio",
    );
    h.sh_ok("cd /root && sha256sum --check onboarding-agent.deb.sha256");
    h.sh_ok("cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y ./onboarding-agent.deb");
    h.sh_ok(
        "install -m 0644 /root/stage/onboarding.config.yaml /root/stage/ca.pem /etc/onboarding-agent/ \
         && install -m 0600 /root/stage/jwt /etc/onboarding-agent/jwt \
         && cat /root/stage/agent.config.yaml > /etc/onboarding-agent/agent.config.yaml",
    );
    assert!(
        !h.exists("/etc/certs/cert-chain.pem"),
        "a workload certificate before onboarding"
    );
    h.sh_ok("systemctl enable --now onboarding-agent");
    h.wait("the agent connected", Duration::from_secs(60), || {
        h.connected()
    });
    let cluster_env = h.ct.read(CLUSTER_ENV).unwrap_or_default();
    for line in [
        "CA_ADDR='istiod.istio-system.svc:15012'",
        "ISTIO_CUSTOM_IP_TABLES='true'",
        &format!("ISTIO_META_WORKLOAD_ENTRY='{WAR}'"),
    ] {
        assert!(
            cluster_env.lines().any(|l| l == line),
            "cluster.env lacks {line}:\n{cluster_env}"
        );
    }
    assert!(
        h.ct.read("/etc/hosts")
            .unwrap_or_default()
            .contains("127.0.0.1 istiod.istio-system.svc"),
        "the hosts block does not point istiod at the loopback{}",
        diag()
    );

    // pilot-agent, restarted by the agent, fetches the certificate from istiod.
    let mut chain = String::new();
    h.wait(
        "pilot-agent writes /etc/certs/cert-chain.pem",
        Duration::from_secs(120),
        || {
            chain = h.ct.read("/etc/certs/cert-chain.pem").unwrap_or_default();
            !chain.is_empty()
        },
    );
    assert_eq!(
        h.ct.stat("/etc/certs/cert-chain.pem")
            .map(|(_, owner)| owner),
        Ok("istio-proxy".to_string()),
        "cert-chain.pem not written by pilot-agent running as istio-proxy"
    );
    let certs = Certificate::load_pem_chain(chain.as_bytes())
        .unwrap_or_else(|e| panic!("cert-chain.pem: {e}\n{chain}"));
    assert_eq!(
        uri_sans(&certs[0]),
        vec![format!("spiffe://cluster.local/ns/{NS}/sa/{SA}")],
        "the workload certificate's identity"
    );
    let published_root = kube.kubectl(&[
        "-n",
        NS,
        "get",
        "configmap",
        "istio-ca-root-cert",
        "-o",
        "jsonpath={.data.root-cert\\.pem}",
    ]);
    let root_cert = h.ct.read("/etc/certs/root-cert.pem").unwrap_or_default();
    assert_eq!(
        root_cert.trim(),
        published_root.trim(),
        "/etc/certs/root-cert.pem is not istiod's root"
    );
    let roots = Certificate::load_pem_chain(published_root.as_bytes())
        .unwrap_or_else(|e| panic!("istiod's root: {e}"));
    assert_eq!(
        certs[0].tbs_certificate.issuer, roots[0].tbs_certificate.subject,
        "the workload certificate is not issued by the mesh root"
    );
    assert_eq!(
        h.sh("systemctl is-active istio-sidecar.service")
            .stdout
            .trim(),
        "active",
        "{}",
        diag()
    );
    assert_eq!(
        h.sh("systemctl is-active onboarding-agent.service")
            .stdout
            .trim(),
        "active",
        "{}",
        diag()
    );
    // The certificate came from a CSR pilot-agent sent istiod (authenticated with the
    // istio-token the agent wrote), not from a file anyone placed.
    let journal = h.ct.journal(&[SIDECAR_UNIT]);
    assert!(
        journal.contains("generated new workload certificate"),
        "pilot-agent did not log a certificate from istiod{}",
        diag()
    );
    eprintln!(
        "{TEST}: pilot-agent got {} from istiod in {:?} (whole test)\n--- istio-sidecar.service journal (tail)\n{}",
        uri_sans(&certs[0]).join(","),
        started.elapsed(),
        nspawn::tail(&journal, 25)
    );
}
