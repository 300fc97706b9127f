//! The VM set-up the real-Istio tests share (tests/istio_vm_e2e.rs, istio_revocation.rs,
//! istioctl_oracle.rs, package_e2e.rs): the bookinfo `ratings` WorkloadGroup and its
//! ServiceEntry, the mesh config, the CRDs, and pilot-agent started from the agent's files
//! the way the istio-sidecar package starts it. docs/testing-kubernetes.md.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::endpoint::NS;
use crate::istio::AgentGroup;
use crate::kube::die_with_parent;

pub const WAR: &str = "ratings-jwt-corp-vm-0001";
pub const SA: &str = "ratings-vm";
pub const ENDPOINT_NS: &str = "onboarding";
/// The port every rendered file names for istiod (CA and xDS).
pub const ISTIOD_PORT: u16 = 15012;

/// The mesh config istiod and the endpoint read. A mesh-wide `ISTIO_META_AUTO_REGISTER_GROUP`
/// (left from a setup that used istiod's auto-registration) must not reach the VM: istiod
/// would register a second entry for it and ignore the endpoint's.
pub const MESH: &str = "trustDomain: cluster.local
rootNamespace: istio-system
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  proxyMetadata:
    ISTIO_META_AUTO_REGISTER_GROUP: ratings
";

pub fn workload_group(probe_port: Option<u16>) -> String {
    let probe = probe_port
        .map(|p| format!("  probe:\n    periodSeconds: 1\n    tcpSocket: {{port: {p}}}\n"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: ratings
  namespace: {NS}
  labels: {{app: ratings}}
spec:
  metadata:
    labels: {{app: ratings}}
  template:
    labels: {{app: ratings, class: vm}}
    serviceAccount: {SA}
    ports: {{http: 8080}}
{probe}"#
    )
}

pub const SERVICE_ENTRY: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings-vm, namespace: bookinfo}
spec:
  hosts: [ratings-vm.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {name: http, number: 8080, protocol: HTTP}
  workloadSelector:
    labels: {app: ratings}
"#;

/// The CRDs as `onboarding-endpoint crds` prints them.
pub fn crds_output() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"))
        .arg("crds")
        .output()
        .expect("run onboarding-endpoint crds");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 CRDs")
}

/// Starts istio-start.sh in `root` (the VM's `/`), in a mount namespace whose /etc/hosts is
/// the agent's `root/etc/hosts`: pilot-agent resolves istiod's name through the hosts line
/// the endpoint rendered.
pub fn start_sidecar(root: &Path, istio_bin: &Path, log: &Path) -> AgentGroup {
    start_sidecar_with(root, istio_bin, log, "")
}

/// As [`start_sidecar`], with more host settings (`KEY=value` lines) in sidecar.env.
pub fn start_sidecar_with(root: &Path, istio_bin: &Path, log: &Path, extra: &str) -> AgentGroup {
    std::fs::write(
        root.join("var/lib/istio/envoy/sidecar.env"),
        format!(
            "DISABLE_ENVOY=true\nISTIO_BIN_BASE='{}'\nEXEC_USER=vm-test\nPOD_NAME=vm-1\n{extra}",
            istio_bin.display()
        ),
    )
    .expect("write sidecar.env");
    let logf = std::fs::File::create(log).expect("log");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1/etc/hosts\" /etc/hosts && exec bash \"$2\"")
        .arg("sh")
        .arg(root)
        .arg(istio_bin.join("istio-start.sh"))
        .current_dir(root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root)
        .env("USER", "vm-test")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("log fd"))
        .stderr(logf);
    die_with_parent(&mut cmd);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    AgentGroup(cmd.spawn().expect("start istio-start.sh"))
}

pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut diag: impl FnMut() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what}: not within {timeout:?}\n{}", diag());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The tests that run istiod on 127.0.0.1:15012 (and pilot-agent on its fixed local
/// ports) take turns: the test harness runs test functions in parallel.
static FIXED_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn fixed_ports() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding it leaves nothing running (everything is killed on
    // drop), so a poisoned lock is still a free port.
    FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// False (after printing why) when the test cannot run for lack of root: the mount
/// namespace that gives pilot-agent the agent's /etc/hosts needs it. Under CI that is a
/// failure, never a skip.
pub fn running_as_root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "{test} needs root (unshare --mount) and CI is set"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// The real API server with real istiod on 127.0.0.1:15012 (the port every rendered file
/// names), and what the endpoint needs there: the namespaces, the group's ServiceAccount,
/// our CRDs (established), the `ratings` WorkloadGroup, the policy, the ServiceEntry that
/// selects the VM, the packaged RBAC, and a kubeconfig for the endpoint's ServiceAccount.
/// Fields drop in order: istiod before the API server it watches.
pub struct VmCluster {
    pub istiod: crate::istio::Istiod,
    pub h: crate::kube::KubeHarness,
    pub istio_bin: std::path::PathBuf,
    /// The endpoint's ServiceAccount (`onboarding/onboarding-endpoint`), never admin.
    pub kubeconfig: std::path::PathBuf,
}

impl VmCluster {
    /// `None` when the Go binaries are not built (the harness says why, and fails under CI).
    /// `probe_port`: the WorkloadGroup's TCP readiness probe, if any.
    pub fn start(mesh: &str, probe_port: Option<u16>) -> Option<VmCluster> {
        let h = crate::kube::KubeHarness::start()?;
        let istio_bin = crate::istio::istio_bin_dir()?;
        for ns in [NS, ENDPOINT_NS] {
            h.kubectl(&["create", "namespace", ns]);
        }
        h.kubectl(&["-n", NS, "create", "serviceaccount", SA]);
        let istiod = crate::istio::Istiod::start_on(&h, &istio_bin, mesh, NS, Some(ISTIOD_PORT));
        h.kubectl_in(&["apply", "-f", "-"], Some(&crds_output()));
        h.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/workloadautoregistrations.runtime.onboarding.tetrate.io",
            "crd/onboardingpolicies.authorization.onboarding.tetrate.io",
        ]);
        h.kubectl_in(&["apply", "-f", "-"], Some(&workload_group(probe_port)));
        h.kubectl_in(&["apply", "-f", "-"], Some(crate::endpoint::POLICY));
        h.kubectl_in(&["apply", "-f", "-"], Some(SERVICE_ENTRY));
        let rbac = crate::endpoint::repo().join("packaging/kubernetes/rbac.yaml");
        h.kubectl(&["apply", "-f", &rbac.to_string_lossy()]);
        let kubeconfig = crate::kube::service_account_kubeconfig(
            &h,
            ENDPOINT_NS,
            "onboarding-endpoint",
            h.dir(),
        );
        Some(VmCluster {
            istiod,
            h,
            istio_bin,
            kubeconfig,
        })
    }

    /// The real endpoint on the kube store, as the endpoint's ServiceAccount, with the
    /// istiod gateway at loopback (where the VM reaches istiod here).
    pub fn endpoint(&self, opts: crate::endpoint::Options) -> crate::endpoint::Endpoint {
        let mut ep = crate::endpoint::Endpoint::start_in(
            opts,
            crate::endpoint::Extra::default(),
            crate::endpoint::StoreChoice {
                store: Some(format!(
                    "store:\n  kube: {{kubeconfig: {}, namespace: {ENDPOINT_NS}, istioTokenExpiration: 10m}}",
                    self.kubeconfig.display()
                )),
                instance_name: Some("endpoint-a".into()),
            },
        );
        ep.reconfigure(|t| t.replace("istiodGateway: 10.20.30.40", "istiodGateway: 127.0.0.1"));
        ep
    }
}

/// A loopback port nothing listens on yet (the probe target's, bound later by the test).
pub fn unused_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe target");
    probe.local_addr().expect("addr").port()
}
