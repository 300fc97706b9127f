//! Runs the real `onboarding-agent` binary for integration tests: its own root prefix,
//! configuration files, state file and a restart command (a script that records each call)
//! in a temporary directory, against an [`Endpoint`] from support/endpoint.rs.
//!
//! Use from an integration test with
//! `#[path = "support/endpoint.rs"] mod endpoint;` and
//! `#[path = "support/agent.rs"] mod agent_support;` (it refers to `crate::endpoint`).

#![allow(dead_code)] // each test uses a different part of this module

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::endpoint::{Endpoint, NS, collect_lines, die_with_parent, vm_jwt};

/// Paths inside the agent's directory.
pub const ONBOARDING_CONFIG: &str = "etc/onboarding-agent/onboarding.config.yaml";
pub const AGENT_CONFIG: &str = "etc/onboarding-agent/agent.config.yaml";
pub const STATE_FILE: &str = "state/state.json";
const RESTART_SCRIPT: &str = "restart-sidecar.sh";
const RESTART_LOG: &str = "restarts.log";

/// Variables of the test's own environment that would steer the agent's platform detection.
const HOST_ENV: [&str; 5] = [
    "ONBOARDING_CONFIG",
    "AGENT_CONFIG",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "ECS_CONTAINER_METADATA_URI_V4",
];

/// Polls `cond` every 50 ms; fails the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent's onboarding configuration for `ep`, trusting the CA file `ca`.
pub fn onboarding_config(ep: &Endpoint, ca: &Path, group: &str) -> String {
    format!(
        "apiVersion: config.agent.onboarding.tetrate.io/v1alpha1
kind: OnboardingConfiguration
onboardingEndpoint:
  host: 127.0.0.1
  port: {port}
  transportSecurity:
    tls: {{caFile: {ca}}}
workloadGroup: {{namespace: {NS}, name: {group}}}
workload:
  labels: {{version: v5}}
",
        port = ep.port(),
        ca = ca.display()
    )
}

/// What differs between the agents of the tests; `Agent::builder` gives the defaults: group
/// `ratings`, a custom host whose credential is a JWT file for subject `vm-0001` signed with
/// the test key, host information from `lo` only.
pub struct AgentBuilder<'a> {
    /// The real endpoint, or None for a stand-in speaking plain HTTP on `plain_port`.
    ep: Option<&'a Endpoint>,
    plain_port: u16,
    group: String,
    subject: String,
    credential_yaml: Option<String>,
    host_yaml: Option<String>,
    extra_config: String,
    env: Vec<(String, String)>,
}

impl AgentBuilder<'_> {
    /// The WorkloadGroup (in namespace bookinfo) to onboard to.
    pub fn group(mut self, group: &str) -> Self {
        self.group = group.to_string();
        self
    }

    /// The subject of the default JWT credential.
    pub fn subject(mut self, subject: &str) -> Self {
        self.subject = subject.to_string();
        self
    }

    /// Replaces the default credential source: list items under
    /// `host.custom.credential`, indented by four spaces.
    pub fn credential_yaml(mut self, yaml: impl Into<String>) -> Self {
        self.credential_yaml = Some(yaml.into());
        self
    }

    /// Replaces the whole `host:` section (a cloud platform or `auto`).
    pub fn host_yaml(mut self, yaml: impl Into<String>) -> Self {
        self.host_yaml = Some(yaml.into());
        self
    }

    /// Appended to the agent configuration after `settings.connection` (for instance
    /// `  connectedOver: LAN\n`).
    pub fn extra_config(mut self, yaml: &str) -> Self {
        self.extra_config = yaml.to_string();
        self
    }

    /// An environment variable for the agent process (metadata service addresses...).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Writes the directory, without starting the process.
    pub fn prepare(self) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("etc/onboarding-agent")).unwrap();
        std::fs::create_dir_all(p.join("root/etc")).unwrap();
        std::fs::write(
            p.join("root/etc/hosts"),
            "127.0.0.1 localhost\n# user line\n",
        )
        .unwrap();
        let plane_uid = self.ep.map(|ep| ep.plane_uid.clone()).unwrap_or_default();
        std::fs::write(p.join("jwt"), vm_jwt(&self.subject, &plane_uid)).unwrap();
        let restart = p.join(RESTART_SCRIPT);
        std::fs::write(
            &restart,
            format!(
                "#!/bin/sh\necho restarted >> {}\n",
                p.join(RESTART_LOG).display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&restart, std::fs::Permissions::from_mode(0o755)).unwrap();
        let onboarding = match self.ep {
            Some(ep) => {
                std::fs::write(p.join("ca.pem"), &ep.ca_pem).unwrap();
                onboarding_config(ep, &p.join("ca.pem"), &self.group)
            }
            None => format!(
                "apiVersion: config.agent.onboarding.tetrate.io/v1alpha1
kind: OnboardingConfiguration
onboardingEndpoint:
  host: 127.0.0.1
  port: {port}
  transportSecurity: {{none: {{}}}}
workloadGroup: {{namespace: {NS}, name: {group}}}
",
                port = self.plain_port,
                group = self.group
            ),
        };
        std::fs::write(p.join(ONBOARDING_CONFIG), onboarding).unwrap();
        let mut host = self.host_yaml.unwrap_or_else(|| {
            let credential = self
                .credential_yaml
                .unwrap_or_else(|| format!("    - file: {}\n", p.join("jwt").display()));
            format!(
                "host:
  custom:
    credential:
{credential}    hostinfo:
      basic:
        networkInterfaces: {{include: ['^lo$']}}
"
            )
        });
        if !host.ends_with('\n') {
            host.push('\n');
        }
        std::fs::write(
            p.join(AGENT_CONFIG),
            format!(
                "apiVersion: config.agent.onboarding.tetrate.io/v1alpha1
kind: AgentConfiguration
{host}settings:
  connection:
    retryPolicy:
      exponentialBackoff: {{initialInterval: 100ms, maxInterval: 500ms}}
{extra}",
                extra = self.extra_config
            ),
        )
        .unwrap();
        Agent {
            dir,
            env: self.env,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            started: Instant::now(),
            reader: None,
        }
    }

    pub fn start(self) -> Agent {
        let mut a = self.prepare();
        a.spawn();
        a
    }
}

/// One agent process with its own root, configs, state file and restart log. Killed when
/// dropped.
pub struct Agent {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// stderr of every process spawned so far, in order.
    log: Arc<Mutex<String>>,
    /// When the last process was spawned.
    started: Instant,
    /// The thread copying the last process's stderr into `log`.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    pub fn builder(ep: &Endpoint) -> AgentBuilder<'_> {
        AgentBuilder {
            ep: Some(ep),
            plain_port: 0,
            group: "ratings".into(),
            subject: "vm-0001".into(),
            credential_yaml: None,
            host_yaml: None,
            extra_config: String::new(),
            env: Vec::new(),
        }
    }

    /// An agent for a stand-in endpoint on 127.0.0.1:`port` speaking plain HTTP (for
    /// answers the real endpoint cannot give).
    pub fn builder_plain_text(port: u16) -> AgentBuilder<'static> {
        AgentBuilder {
            ep: None,
            plain_port: port,
            group: "ratings".into(),
            subject: "vm-0001".into(),
            credential_yaml: None,
            host_yaml: None,
            extra_config: String::new(),
            env: Vec::new(),
        }
    }

    /// A path in the agent's directory (configs, `ca.pem`, the state file).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A path under the agent's root prefix (the files it writes for the sidecar).
    pub fn root_file(&self, rel: &str) -> PathBuf {
        self.path("root").join(rel)
    }

    /// Starts a process on the directory (again, after `kill9` or `wait_exit`).
    pub fn spawn(&mut self) {
        self.spawn_program(&[env!("CARGO_BIN_EXE_onboarding-agent").into()]);
    }

    /// `spawn` with another agent binary: `program[0]` runs with `program[1..]` before the
    /// agent's own arguments (tests/package_arm64.rs: qemu-aarch64 and the packaged arm64
    /// agent).
    pub fn spawn_program(&mut self, program: &[std::ffi::OsString]) {
        let p = self.dir.path();
        let (first, rest) = program
            .split_first()
            .expect("spawn_program needs the program to run");
        let mut cmd = Command::new(first);
        die_with_parent(&mut cmd)
            .args(rest)
            .arg("--onboarding-config")
            .arg(p.join(ONBOARDING_CONFIG))
            .arg("--agent-config")
            .arg(p.join(AGENT_CONFIG))
            .arg("--root")
            .arg(p.join("root"))
            .arg("--state-file")
            .arg(p.join(STATE_FILE))
            .arg("--restart-command")
            .arg(p.join(RESTART_SCRIPT))
            .env("ONBOARDING_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for var in HOST_ENV {
            cmd.env_remove(var);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.started = Instant::now();
        let mut child = cmd.spawn().expect("start onboarding-agent");
        let stderr = child.stderr.take().unwrap();
        self.reader = Some(collect_lines(stderr, self.log.clone()));
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// How many times the agent ran the restart command.
    pub fn restarts(&self) -> usize {
        std::fs::read_to_string(self.path(RESTART_LOG))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// The state file, or null while it is missing or being replaced.
    pub fn state(&self) -> serde_json::Value {
        std::fs::read_to_string(self.path(STATE_FILE))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn wait_phase(&self, phase: &str, timeout: Duration) {
        let start = Instant::now();
        while self.state()["phase"] != phase {
            if start.elapsed() > timeout {
                panic!(
                    "agent never reached phase {phase}; state {}\nlog:\n{}",
                    self.state(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (30 s at most) for `connected`; returns how long onboarding took from process
    /// start. A failure shows the endpoint's log too.
    pub fn wait_connected(&self, ep: &Endpoint) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.state()["phase"] != "connected" {
            if Instant::now() > deadline {
                panic!(
                    "agent never connected; state {}\nagent log:\n{}\nendpoint log:\n{}",
                    self.state(),
                    self.log(),
                    ep.log.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.started.elapsed()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Let the reader take the last lines the process wrote (bounded: a process
                // the agent started could still hold the pipe open).
                if let Some(reader) = self.reader.take() {
                    let until = Instant::now() + Duration::from_secs(2);
                    while !reader.is_finished() && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                return status.code();
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent did not exit in {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (20 s at most) for exit code 0 (the agent unregisters first).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(status.code(), Some(0), "agent log:\n{}", self.log());
                return;
            }
            // The propagation delay (1s in the test endpoint) is waited out; a second
            // signal cuts it short.
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not stop; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A crash: SIGKILL, no unregistration.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL the agent");
            c.wait().expect("reap the agent");
        }
    }

    pub fn write_onboarding_config(&self, text: &str) {
        // Replace by rename, as editors and config management do.
        let tmp = self.path("etc/onboarding-agent/.edit.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(ONBOARDING_CONFIG)).unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
