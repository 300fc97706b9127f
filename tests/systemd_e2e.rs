//! The agent under a real systemd: a Debian bookworm root booted with systemd-nspawn (see
//! tests/support/nspawn.rs), the real `onboarding-agent` binary installed in it with the
//! production unit packaging/systemd/onboarding-agent.service, and the real
//! `onboarding-endpoint` on the host's loopback over TLS (test CA). The container shares the
//! host's network, so the agent reaches the endpoint at 127.0.0.1.
//!
//! `istio-sidecar.service` is a stand-in for Istio's sidecar: a unit that records each start
//! (its PID and the digest of the cluster.env it started on) and then sleeps. The test shows
//! that the agent really restarts it through systemd (its MainPID changes) after writing the
//! files, again after the WAR is deleted and the agent onboards on a new snapshot, and that
//! `systemctl stop onboarding-agent` unregisters.
//!
//! Needs root, systemd-nspawn, nsenter and (once, to build the cached root) debootstrap:
//! `apt-get install -y systemd-container debootstrap`. Without them the test prints a
//! SKIPPED line and passes, except under CI=true, where it fails.
//! More in docs/testing-systemd.md.

#[path = "support/agent.rs"]
mod agent_support;
#[path = "support/endpoint.rs"]
mod endpoint;
#[path = "support/nspawn.rs"]
mod nspawn;

use std::path::Path;
use std::time::{Duration, Instant};

use agent_support::onboarding_config;
use endpoint::{Endpoint, NS, Options, vm_jwt};
use nspawn::vm::{AGENT_UNIT, CLUSTER_ENV, SIDECAR_UNIT, STATE, TOKEN, WAR};
use nspawn::{Container, Root};
use sha2::Digest;

const STARTS: &str = "/run/istio-sidecar/starts";

const SIDECAR_STANDIN_UNIT: &str = "\
[Unit]
Description=Stand-in for Istio's sidecar (test): records each start, then sleeps
# The agent restarts it on every onboarding; never refuse a start for coming too often.
StartLimitIntervalSec=0

[Service]
# As Istio's istio-start.sh runs pilot-agent.
User=istio-proxy
RuntimeDirectory=istio-sidecar
RuntimeDirectoryPreserve=yes
ExecStart=/usr/local/bin/istio-sidecar-standin
";

const SIDECAR_STANDIN: &str = "\
#!/bin/sh
# Records this start (PID = the unit's MainPID, since the shell execs), the digest of the
# cluster.env it found and whether it (as istio-proxy) can read its token, so the test can
# tell the restart came after the files were written and that they are usable.
sum=$(sha256sum /var/lib/istio/envoy/cluster.env 2>/dev/null | cut -d' ' -f1)
token=missing
if [ -e /var/run/secrets/tokens/istio-token ]; then
  token=unreadable
  cat /var/run/secrets/tokens/istio-token >/dev/null 2>&1 && token=readable
fi
echo \"$$ ${sum:-none} $token\" >> /run/istio-sidecar/starts
exec sleep infinity
";

/// The test's only change to the production unit: debug logs.
const AGENT_DROPIN: &str = "\
[Service]
Environment=ONBOARDING_AGENT_LOG=debug
";

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Installs the agent, its unit and configuration, and the sidecar stand-in in the root.
fn install(root: &Root, ep: &Endpoint) {
    let agent = std::fs::read(env!("CARGO_BIN_EXE_onboarding-agent"))
        .unwrap_or_else(|e| panic!("the onboarding-agent binary: {e}"));
    root.write("/usr/bin/onboarding-agent", agent, 0o755);
    let unit = endpoint::repo().join("packaging/systemd/onboarding-agent.service");
    root.write(
        "/etc/systemd/system/onboarding-agent.service",
        endpoint::read(&unit),
        0o644,
    );
    root.write(
        "/etc/systemd/system/onboarding-agent.service.d/10-test.conf",
        AGENT_DROPIN,
        0o644,
    );
    root.write(
        "/etc/systemd/system/istio-sidecar.service",
        SIDECAR_STANDIN_UNIT,
        0o644,
    );
    root.write(
        "/usr/local/bin/istio-sidecar-standin",
        SIDECAR_STANDIN,
        0o755,
    );
    root.write(
        "/etc/hosts",
        "127.0.0.1 localhost\n::1 localhost ip6-localhost\n# kept by the agent\n",
        0o644,
    );

    root.write("/etc/onboarding-agent/ca.pem", &ep.ca_pem, 0o644);
    root.write(
        "/etc/onboarding-agent/jwt",
        vm_jwt("vm-0001", &ep.plane_uid),
        0o600,
    );
    root.write(
        "/etc/onboarding-agent/onboarding.config.yaml",
        onboarding_config(ep, Path::new("/etc/onboarding-agent/ca.pem"), "ratings"),
        0o644,
    );
    root.write(
        "/etc/onboarding-agent/agent.config.yaml",
        "apiVersion: config.agent.onboarding.tetrate.io/v1alpha1
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
",
        0o644,
    );
}

/// The container and the endpoint, with failure reports that carry the container's journal.
struct Harness {
    // Declared first so that it is dropped (powered off) first, while the endpoint still
    // answers the agent's unregistration.
    ct: Container,
    ep: Endpoint,
}

impl Harness {
    fn diag(&self) -> String {
        let status = self
            .ct
            .exec_timeout(
                &[
                    "systemctl",
                    "status",
                    "--no-pager",
                    "-l",
                    AGENT_UNIT,
                    SIDECAR_UNIT,
                ],
                Duration::from_secs(20),
            )
            .map(|o| o.stdout)
            .unwrap_or_else(|e| e);
        let ep_log = nspawn::strip_ansi(&self.ep.log.lock().map(|l| l.clone()).unwrap_or_default());
        format!(
            "\n--- systemctl status\n{status}\n--- journalctl -u {AGENT_UNIT} -u {SIDECAR_UNIT}\n{}\n--- agent state {STATE}\n{}\n--- sidecar starts\n{}\n--- endpoint log (tail)\n{}\n--- container console (tail)\n{}",
            self.ct.journal(&[AGENT_UNIT, SIDECAR_UNIT]),
            self.file(STATE).unwrap_or_else(|| "(unreadable)".into()),
            self.file(STARTS).unwrap_or_else(|| "(unreadable)".into()),
            nspawn::tail(&ep_log, 40),
            nspawn::tail(&self.ct.console(), 40),
        )
    }

    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}{}", self.diag())
    }

    fn check(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(&msg());
        }
    }

    fn wait(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > timeout {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }

    fn systemctl(&self, args: &[&str]) -> String {
        let mut full = vec!["systemctl"];
        full.extend_from_slice(args);
        let out = self
            .ct
            .exec_timeout(&full, Duration::from_secs(120))
            .unwrap_or_else(|e| self.fail(&e));
        self.check(out.ok(), || {
            format!(
                "{full:?} failed ({}): {}{}",
                out.status, out.stdout, out.stderr
            )
        });
        out.stdout
    }

    fn main_pid(&self, unit: &str) -> u32 {
        self.ct.unit_property(unit, "MainPID").parse().unwrap_or(0)
    }

    fn file(&self, path: &str) -> Option<String> {
        self.ct.read(path)
    }

    fn state(&self) -> serde_json::Value {
        self.file(STATE)
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The sidecar stand-in's starts: (pid, digest of the cluster.env it saw or "none",
    /// whether it could read the istio-token).
    fn sidecar_starts(&self) -> Vec<(u32, String, String)> {
        self.file(STARTS)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let pid = f.next()?.parse().ok()?;
                Some((pid, f.next()?.to_string(), f.next()?.to_string()))
            })
            .collect()
    }

    /// Waits until the sidecar runs under a MainPID other than `old`; returns the new one.
    fn wait_sidecar_restarted(&self, old: u32, what: &str) -> (u32, Duration) {
        let mut pid = old;
        let took = self.wait(what, Duration::from_secs(30), || {
            pid = self.main_pid(SIDECAR_UNIT);
            pid != 0 && pid != old && self.ct.unit_property(SIDECAR_UNIT, "ActiveState") == "active"
        });
        (pid, took)
    }

    /// The sidecar's latest start was `pid` and it started on the cluster.env now on disk.
    fn check_started_on_current_files(&self, pid: u32) {
        let current = self
            .file(CLUSTER_ENV)
            .map(|c| sha256_hex(c.as_bytes()))
            .unwrap_or_default();
        // The stand-in writes its line right after it starts; give it a moment.
        self.wait(
            "the sidecar stand-in to record its start",
            Duration::from_secs(10),
            || {
                self.sidecar_starts()
                    .last()
                    .is_some_and(|(p, _, _)| *p == pid)
            },
        );
        let starts = self.sidecar_starts();
        let (_, seen, token) = starts.last().cloned().unwrap_or_default();
        self.check(seen == current, || {
            format!("the sidecar (pid {pid}) started on cluster.env {seen}, but the file on disk is {current}: restarted before the files were written?")
        });
        self.check(token == "readable", || {
            format!("the sidecar (pid {pid}, user istio-proxy) found its istio-token {token}")
        });
    }
}

#[test]
fn agent_under_systemd_onboards_restarts_the_sidecar_and_unregisters_on_stop() {
    if !nspawn::available_or_skip("systemd_e2e") {
        return;
    }
    let t_total = Instant::now();
    let (tarball, built) = nspawn::cached_root();
    let t_cache = t_total.elapsed();

    let ep = Endpoint::start(Options {
        grace: "5m",
        keep_alive_interval: "1s",
        keep_alive_timeout: "3s",
        token_expiration: "1h",
    });
    let t = Instant::now();
    let root = Root::extract(&tarball);
    install(&root, &ep);
    let t_extract = t.elapsed();

    let t = Instant::now();
    let name = format!("onboarding-e2e-{}", std::process::id());
    let ct = root.boot(&name, Duration::from_secs(90));
    let t_boot = t.elapsed();
    let h = Harness { ct, ep };

    // The production unit passes systemd's own checks in the installed root.
    let verify = h.ct.exec(&[
        "systemd-analyze",
        "verify",
        "/etc/systemd/system/onboarding-agent.service",
    ]);
    h.check(verify.ok() && verify.stderr.trim().is_empty(), || {
        format!(
            "systemd-analyze verify onboarding-agent.service: {}\n{}{}",
            verify.status, verify.stdout, verify.stderr
        )
    });

    // What the istio-sidecar package's postinst does: its system user, then its unit runs
    // (without files yet) before anything onboards.
    let useradd = h.ct.exec(&[
        "useradd",
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "istio-proxy",
    ]);
    h.check(useradd.ok(), || {
        format!("useradd istio-proxy: {}", useradd.stderr)
    });
    h.systemctl(&["start", SIDECAR_UNIT]);
    let pid0 = h.main_pid(SIDECAR_UNIT);
    h.check(pid0 != 0, || "istio-sidecar.service has no MainPID".into());

    // Onboarding: enable --now also exercises the unit's [Install] section.
    let t = Instant::now();
    h.systemctl(&["enable", "--now", AGENT_UNIT]);
    h.wait(
        "the WAR in the endpoint's state dir",
        Duration::from_secs(30),
        || h.ep.war_path(WAR).exists(),
    );
    let (pid1, _) = h.wait_sidecar_restarted(
        pid0,
        "istio-sidecar.service to be restarted after onboarding",
    );
    let t_onboard = t.elapsed();
    h.wait("agent phase connected", Duration::from_secs(20), || {
        h.state()["phase"] == "connected"
    });
    h.check(h.state()["registration"] == format!("{NS}/{WAR}"), || {
        format!("state names another registration: {}", h.state())
    });
    h.check_started_on_current_files(pid1);

    // The files, inside the container, at the istio-sidecar package's paths with Istio's
    // modes; the token belongs to istio-proxy, whom pilot-agent runs as.
    for (path, mode, owner) in [
        (CLUSTER_ENV, 0o644, "root"),
        ("/etc/istio/config/mesh", 0o644, "root"),
        ("/etc/certs/root-cert.pem", 0o644, "root"),
        (TOKEN, 0o600, "istio-proxy"),
    ] {
        match h.ct.stat(path) {
            Ok((m, o)) => h.check(m == mode && o == owner, || {
                format!("{path}: mode {m:o} owner {o}, want {mode:o} {owner}")
            }),
            Err(e) => h.fail(&format!("{path} not written in the container: {e}")),
        }
    }
    let cluster_env = h.file(CLUSTER_ENV).unwrap_or_default();
    h.check(cluster_env.contains("ratings-vm"), || {
        format!("cluster.env does not name the service account:\n{cluster_env}")
    });
    h.check(
        h.file(TOKEN).as_deref() == Some("istio-token-for-bookinfo-ratings-vm"),
        || format!("istio-token: {:?}", h.file(TOKEN)),
    );
    let hosts = h.file("/etc/hosts").unwrap_or_default();
    h.check(
        hosts
            .starts_with("127.0.0.1 localhost\n::1 localhost ip6-localhost\n# kept by the agent\n")
            && hosts.contains("# BEGIN onboarding-agent")
            && hosts.contains("10.20.30.40 "),
        || format!("/etc/hosts:\n{hosts}"),
    );

    // The endpoint sees the agent connected; `onboarding-agent status` in the container
    // reads the daemon's state file.
    h.wait("AGENT CONNECTED True", Duration::from_secs(15), || {
        let (ok, out, _) = h.ep.cli(&["get", "war", "-A"]);
        ok && out.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(1) == Some(&WAR) && cols.get(2) == Some(&"True")
        })
    });
    let status = h.ct.exec(&["onboarding-agent", "status"]);
    h.check(
        status.ok() && status.stdout.contains(&format!("{NS}/{WAR}")),
        || {
            format!(
                "onboarding-agent status: {}{}",
                status.stdout, status.stderr
            )
        },
    );

    // Keep-alives (every second) leave the sidecar alone.
    std::thread::sleep(Duration::from_secs(3));
    h.check(h.main_pid(SIDECAR_UNIT) == pid1, || {
        format!(
            "the sidecar was restarted without a change (pid {pid1} -> {})",
            h.main_pid(SIDECAR_UNIT)
        )
    });

    // Change the WorkloadGroup, then delete the WAR: the agent's next keep-alive gets
    // registration_gone, it onboards on a new snapshot and restarts the sidecar again.
    let group = h.ep.path("config/workloadgroup.yaml");
    std::fs::write(
        &group,
        endpoint::read(&group).replace("serviceAccount: ratings-vm", "serviceAccount: ratings-v2"),
    )
    .unwrap_or_else(|e| h.fail(&format!("{}: {e}", group.display())));
    // The endpoint picks manifest edits up within a second.
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let (ok, _, err) = h.ep.cli(&["delete", "war", WAR, "-n", NS]);
    h.check(ok, || format!("delete war: {err}"));
    h.wait(
        "the token for the new snapshot",
        Duration::from_secs(30),
        || h.file(TOKEN).as_deref() == Some("istio-token-for-bookinfo-ratings-v2"),
    );
    let (pid2, _) = h.wait_sidecar_restarted(
        pid1,
        "istio-sidecar.service to be restarted after re-onboarding",
    );
    let t_reonboard = t.elapsed();
    h.check_started_on_current_files(pid2);
    h.check(
        h.file(CLUSTER_ENV)
            .is_some_and(|c| c.contains("ratings-v2")),
        || {
            format!(
                "cluster.env after re-onboarding:\n{:?}",
                h.file(CLUSTER_ENV)
            )
        },
    );
    h.wait("the WAR registered again", Duration::from_secs(15), || {
        h.ep.war_path(WAR).exists()
    });
    let starts = h.sidecar_starts();
    h.check(
        starts.iter().map(|(p, _, _)| *p).collect::<Vec<_>>() == vec![pid0, pid1, pid2],
        || format!("sidecar starts {starts:?}, want exactly [{pid0}, {pid1}, {pid2}]"),
    );

    // Stopping the agent unregisters (the WAR and its WorkloadEntry go) and leaves the
    // sidecar running.
    let t = Instant::now();
    h.systemctl(&["stop", AGENT_UNIT]);
    let t_stop = t.elapsed();
    h.check(!h.ep.war_path(WAR).exists(), || {
        "the WAR is still there after systemctl stop".into()
    });
    h.check(!h.ep.we_path(WAR).exists(), || {
        "the WorkloadEntry is still there after systemctl stop".into()
    });
    h.check(t_stop >= Duration::from_millis(900), || {
        format!("stop took {t_stop:?}: the agent did not wait the 1s propagation delay")
    });
    let restarts = h.ct.unit_property(AGENT_UNIT, "NRestarts");
    h.check(restarts == "0", || {
        format!("systemd restarted the agent {restarts} times: it crashed or exited")
    });
    let result = h.ct.unit_property(AGENT_UNIT, "Result");
    let exit = h.ct.unit_property(AGENT_UNIT, "ExecMainStatus");
    h.check(result == "success" && exit == "0", || {
        format!("the agent's stop: Result={result} ExecMainStatus={exit}")
    });
    let journal = h.ct.journal(&[AGENT_UNIT]);
    h.check(journal.contains("unregistered bookinfo/"), || {
        "the agent's journal does not show the unregistration".into()
    });
    h.check(h.main_pid(SIDECAR_UNIT) == pid2, || {
        "stopping the agent touched the sidecar".into()
    });

    let Harness { mut ct, ep } = h;
    let t = Instant::now();
    let status = ct.poweroff(Duration::from_secs(30));
    let t_poweroff = t.elapsed();
    assert!(
        status.is_some(),
        "the container did not power off cleanly:\n{}",
        nspawn::tail(&ct.console(), 40)
    );
    drop(ct);
    drop(ep);
    eprintln!(
        "systemd_e2e timings: root cache {} {t_cache:.1?}, extract+install {t_extract:.1?}, boot {t_boot:.1?}, \
         enable --now -> sidecar restarted {t_onboard:.1?}, delete WAR -> sidecar restarted {t_reonboard:.1?}, \
         stop (unregister) {t_stop:.1?}, poweroff {t_poweroff:.1?}, total {:.1?}",
        if built { "built" } else { "hit" },
        t_total.elapsed()
    );
}

#[test]
fn harness_pure_parts_mirror_from_apt_sources_cache_key_ansi() {
    let deb822 = "Types: deb\n# a comment\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n";
    let sources = vec![
        (
            "/etc/apt/sources.list".to_string(),
            "# nothing\n".to_string(),
        ),
        (
            "/etc/apt/sources.list.d/other.sources".to_string(),
            "Types: deb\nURIs: https://vendor.test/apt\nSuites: nodistro\nComponents: main\n"
                .to_string(),
        ),
        (
            "/etc/apt/sources.list.d/debian.sources".to_string(),
            deb822.to_string(),
        ),
    ];
    assert_eq!(
        nspawn::debian_mirror(&sources, "bookworm").as_deref(),
        Some("http://mirror.test/debian")
    );
    let list = vec![(
        "/etc/apt/sources.list".to_string(),
        "deb-src http://src.test/debian bookworm main\ndeb [signed-by=/k.gpg arch=amd64] http://list.test/debian bookworm main contrib # c\n".to_string(),
    )];
    assert_eq!(
        nspawn::debian_mirror(&list, "bookworm").as_deref(),
        Some("http://list.test/debian")
    );
    let disabled = vec![(
        "/etc/apt/sources.list.d/d.sources".to_string(),
        deb822.replace("Types: deb\n#", "Types: deb\nEnabled: no\n#"),
    )];
    assert_eq!(nspawn::debian_mirror(&disabled, "bookworm"), None);
    assert_eq!(nspawn::debian_mirror(&sources, "trixie"), None);

    assert_eq!(
        nspawn::strip_ansi("\u{1b}[0;32m  OK  \u{1b}[0m] Started \u{1b}[0;1;39mx\u{1b}[0m."),
        "  OK  ] Started x."
    );

    // The cache key follows the package list.
    assert_ne!(
        nspawn::cache_key("bookworm", "minbase", &["systemd"]),
        nspawn::cache_key("bookworm", "minbase", &["systemd", "dbus"])
    );
}
