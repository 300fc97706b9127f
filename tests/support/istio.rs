//! The real Istio control plane for integration tests: istiod (`pilot-discovery`) built
//! from the istio.io/istio Go module (tests/istio-harness/), run from outside a cluster
//! against a [`KubeHarness`], every listener on 127.0.0.1 at a free port.
//! docs/testing-kubernetes.md. Needs `mod kube;` (support/kube.rs) beside it.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::kube::{KubeHarness, built_bin_dir, die_with_parent};

/// The istio binaries and files, or `None` (skip, after a loud message) when they are not
/// built and this is not CI.
pub fn istio_bin_dir() -> Option<PathBuf> {
    built_bin_dir("istio-harness")
}

/// A free TCP port on 127.0.0.1 (the listener is closed again at once: a small window in
/// which another process could take it, which only makes a start-up fail loudly).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port on 127.0.0.1")
}

pub const MESH: &str = "trustDomain: cluster.local\n\
rootNamespace: istio-system\n\
defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n";

pub struct Istiod {
    pub bin_dir: PathBuf,
    pub http_port: u16,
    pub grpc_port: u16,
    pub secure_grpc_port: u16,
    pub monitoring_port: u16,
    pub webhook_port: u16,
    child: Child,
    log: PathBuf,
    // Last: removed once istiod is gone.
    dir: tempfile::TempDir,
}

impl Istiod {
    /// Installs what istiod needs on a bare API server (Istio's CRDs by server-side apply,
    /// namespace istio-system, ConfigMap `istio` with `mesh`), starts istiod, and waits
    /// for its `/ready` and for ConfigMap `istio-ca-root-cert` in `wait_ns` (which must
    /// exist).
    pub fn start(kube: &KubeHarness, bin_dir: &Path, mesh: &str, wait_ns: &str) -> Istiod {
        Istiod::start_on(kube, bin_dir, mesh, wait_ns, None)
    }

    /// As [`Istiod::start`], with the secure gRPC (CA and xDS) listener on 127.0.0.1 at
    /// `secure_grpc` when given: a VM's rendered files name istiod's port 15012, so a test
    /// that runs pilot-agent from them unchanged needs istiod there.
    pub fn start_on(
        kube: &KubeHarness,
        bin_dir: &Path,
        mesh: &str,
        wait_ns: &str,
        secure_grpc: Option<u16>,
    ) -> Istiod {
        let crds = bin_dir.join("crd-all.gen.yaml");
        let crds = crds.to_str().expect("UTF-8 path");
        // The bundle is ~1 MB: client-side apply would overflow the last-applied annotation.
        kube.kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=istio-harness",
            "-f",
            crds,
        ]);
        kube.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=120s",
            "crd",
            "-l",
            "chart=istio",
        ]);
        if !kube
            .kubectl_output(&["get", "namespace", "istio-system"], None)
            .status
            .success()
        {
            kube.kubectl(&["create", "namespace", "istio-system"]);
        }
        let cm = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": mesh, "meshNetworks": "networks: {}"},
        });
        kube.kubectl_in(
            &[
                "apply",
                "--server-side",
                "--field-manager=istio-harness",
                "-f",
                "-",
            ],
            Some(&cm.to_string()),
        );

        // An empty working directory: istiod reads plugged-in CA files from ./etc/cacerts
        // and must make its own CA here.
        let dir = tempfile::Builder::new()
            .prefix("istiod-")
            .tempdir()
            .expect("temp dir");
        let (http, grpc, sgrpc, mon, hook) = (
            free_port(),
            free_port(),
            secure_grpc.unwrap_or_else(free_port),
            free_port(),
            free_port(),
        );
        if let Some(port) = secure_grpc {
            assert!(
                TcpListener::bind(("127.0.0.1", port)).is_ok(),
                "127.0.0.1:{port} is taken: another istiod (or test) is using it"
            );
        }
        let log = dir.path().join("istiod.log");
        let logf = std::fs::File::create(&log).expect("istiod log");
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let mut cmd = Command::new(bin_dir.join("pilot-discovery"));
        cmd.current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("POD_NAME", "istiod-test")
            .env("POD_NAMESPACE", "istio-system")
            .env("REVISION", "default")
            .env("INJECT_ENABLED", "false")
            .env("VALIDATION_WEBHOOK_CONFIG_NAME", "")
            .env("INJECTION_WEBHOOK_CONFIG_NAME", "")
            .env("KUBECONFIG", kube.kubeconfig())
            .args([
                "discovery",
                "--kubeconfig",
                kube.kubeconfig().to_str().expect("UTF-8 path"),
                "--clusterID=Kubernetes",
                "--domain=cluster.local",
                "--meshConfig=./none",
                "--networksConfig=./none",
                "--ctrlz_port=0",
                "--ctrlz_address=127.0.0.1",
                "--log_output_level=default:info",
            ])
            .arg(format!("--httpAddr={}", addr(http)))
            .arg(format!("--httpsAddr={}", addr(hook)))
            .arg(format!("--grpcAddr={}", addr(grpc)))
            .arg(format!("--secureGRPCAddr={}", addr(sgrpc)))
            .arg(format!("--monitoringAddr={}", addr(mon)))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start pilot-discovery");
        let mut istiod = Istiod {
            bin_dir: bin_dir.to_path_buf(),
            http_port: http,
            grpc_port: grpc,
            secure_grpc_port: sgrpc,
            monitoring_port: mon,
            webhook_port: hook,
            child,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(Some(status)) = istiod.child.try_wait() {
                panic!("istiod exited ({status}):\n{}", istiod.log_tail(60));
            }
            if istiod
                .get(http, "/ready")
                .is_some_and(|(code, _)| code == 200)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "istiod not ready after 180s:\n{}",
                istiod.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        while !kube
            .kubectl_output(
                &["-n", wait_ns, "get", "configmap", "istio-ca-root-cert"],
                None,
            )
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "istiod wrote no istio-ca-root-cert into {wait_ns}:\n{}",
                istiod.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        istiod
    }

    /// A plain HTTP GET on 127.0.0.1:`port` (istiod's debug and readiness endpoints):
    /// status code and body, or `None` when nothing answers.
    pub fn get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let code = buf.split(' ').nth(1)?.parse().ok()?;
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The CA address a VM's pilot-agent dials. The host is `localhost` on purpose: istio's
    /// gRPC client checks a host containing "localhost" as `istiod.istio-system.svc`, which
    /// istiod's serving certificate covers (an IP would be checked as that IP and fail).
    pub fn ca_addr(&self) -> String {
        format!("localhost:{}", self.secure_grpc_port)
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        // SIGTERM first so istiod releases its leases; SIGKILL if it lingers.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds tests/istio-harness/xds-client (in the istio-harness module graph, so from the
/// Go build cache once the Istio binaries are built) into `dir` and returns its path.
pub fn build_xds_client(dir: &Path) -> PathBuf {
    let out = dir.join("xds-client");
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio-harness");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("./xds-client")
        .current_dir(&harness)
        .status()
        .expect("run go build for xds-client");
    assert!(status.success(), "go build ./xds-client failed");
    out
}

/// The URI SANs of a certificate (a workload's SPIFFE ID).
pub fn uri_sans(cert: &x509_cert::Certificate) -> Vec<String> {
    let mut out = Vec::new();
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id
            == <x509_cert::ext::pkix::SubjectAltName as x509_cert::der::oid::AssociatedOid>::OID
        {
            let san = <x509_cert::ext::pkix::SubjectAltName as x509_cert::der::Decode>::from_der(
                ext.extn_value.as_bytes(),
            )
            .expect("SAN");
            for name in san.0 {
                if let x509_cert::ext::pkix::name::GeneralName::UniformResourceIdentifier(uri) =
                    name
                {
                    out.push(uri.as_str().to_string());
                }
            }
        }
    }
    out
}

/// istio-start.sh and the pilot-agent it starts, killed together (on drop too, so a failed
/// assertion leaves no agent behind).
pub struct AgentGroup(pub std::process::Child);

impl AgentGroup {
    pub fn stop(&mut self) {
        let pgid = self.0.id() as libc::pid_t;
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: signal 0 only checks whether any member of the group is left.
        while unsafe { libc::kill(-pgid, 0) } == 0 {
            assert!(
                Instant::now() < deadline,
                "pilot-agent outlived its group kill"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentGroup {
    fn drop(&mut self) {
        let pgid = self.0.id() as libc::pid_t;
        // SAFETY: as in stop().
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}
