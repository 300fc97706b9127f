//! A VM admitted by the real Istio control plane: istiod (built from the istio.io/istio
//! module) on the real kube-apiserver; the real endpoint (store: kube) onboards the real
//! agent; the agent writes the sidecar's files under a root prefix; the real pilot-agent
//! starts from exactly those files the way the istio-sidecar package starts it
//! (istio-start.sh sources cluster.env, `PROV_CERT`/`OUTPUT_CERTS`, no iptables), with
//! `DISABLE_ENVOY=true`. The only host-side file the test adds is sidecar.env (the
//! package's place for host settings). istiod listens on 127.0.0.1:15012, and pilot-agent
//! runs in a mount namespace whose /etc/hosts is the one the agent wrote, so the rendered
//! `CA_ADDR`, `discoveryAddress` and istiod hosts line are what connect it. The same set-up
//! measures revocation (`kubectl delete war`, a policy that denies) and shows pilot-agent
//! keeping a valid istio-token across the agent's refreshes; the live istioctl oracle
//! compares `onboarding-endpoint render` with the real istioctl.
//! docs/testing-kubernetes.md, "The VM end to end" and "Revocation, measured".

#[path = "support/agent.rs"]
mod agent_support;
#[path = "support/endpoint.rs"]
mod endpoint;
#[path = "support/istio.rs"]
mod istio;
#[path = "support/kube.rs"]
mod kube;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::Agent;
use endpoint::{Endpoint, Extra, NS, Options, POLICY, StoreChoice, repo};
use istio::{Istiod, istio_bin_dir};
use kube::{KubeHarness, die_with_parent};
use x509_cert::Certificate;
use x509_cert::der::{Decode, oid::AssociatedOid};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

const WAR: &str = "ratings-jwt-corp-vm-0001";
const SA: &str = "ratings-vm";
const ENDPOINT_NS: &str = "onboarding";
/// The port every rendered file names for istiod (CA and xDS).
const ISTIOD_PORT: u16 = 15012;

/// The mesh config istiod and the endpoint read. A mesh-wide `ISTIO_META_AUTO_REGISTER_GROUP`
/// (left from a setup that used istiod's auto-registration) must not reach the VM: istiod
/// would register a second entry for it and ignore the endpoint's.
const MESH: &str = "trustDomain: cluster.local
rootNamespace: istio-system
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  proxyMetadata:
    ISTIO_META_AUTO_REGISTER_GROUP: ratings
";

fn workload_group(probe_port: u16) -> String {
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
  probe:
    periodSeconds: 1
    tcpSocket: {{port: {probe_port}}}
"#
    )
}

const SERVICE_ENTRY: &str = r#"apiVersion: networking.istio.io/v1
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

fn crds_output() -> String {
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

/// A kubeconfig that authenticates as ServiceAccount `ns/sa` with a TokenRequest token.
fn service_account_kubeconfig(h: &KubeHarness, ns: &str, sa: &str, dir: &Path) -> PathBuf {
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
    .expect("write kubeconfig");
    path
}

fn uri_sans(cert: &Certificate) -> Vec<String> {
    let mut out = Vec::new();
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id == SubjectAltName::OID {
            let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).expect("SAN");
            for name in san.0 {
                if let GeneralName::UniformResourceIdentifier(uri) = name {
                    out.push(uri.as_str().to_string());
                }
            }
        }
    }
    out
}

/// istio-start.sh and the pilot-agent it starts, killed together (on drop too).
struct AgentGroup(std::process::Child);

impl AgentGroup {
    fn stop(&mut self) {
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

/// Starts istio-start.sh in `root` (the VM's `/`), in a mount namespace whose /etc/hosts is
/// the agent's `root/etc/hosts`: pilot-agent resolves istiod's name through the hosts line
/// the endpoint rendered.
fn start_sidecar(root: &Path, istio_bin: &Path, log: &Path) -> AgentGroup {
    start_sidecar_with(root, istio_bin, log, "")
}

/// As [`start_sidecar`], with more host settings (`KEY=value` lines) in sidecar.env.
fn start_sidecar_with(root: &Path, istio_bin: &Path, log: &Path, extra: &str) -> AgentGroup {
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

fn wait_until<T>(
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

fn fixed_ports() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding it leaves nothing running (everything is killed on
    // drop), so a poisoned lock is still a free port.
    FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_vm_onboarded_by_the_endpoint_is_admitted_by_real_istiod() {
    let started = Instant::now();
    let _ports = fixed_ports();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // The mount namespace that gives pilot-agent the agent's /etc/hosts needs root.
        assert!(
            std::env::var("CI").is_err(),
            "istio_vm_e2e needs root (unshare --mount) and CI is set"
        );
        eprintln!("SKIPPED a_vm_onboarded_by_the_endpoint_is_admitted_by_real_istiod: needs root");
        return;
    }
    let Some(h) = KubeHarness::start() else {
        return;
    };
    let Some(istio_bin) = istio_bin_dir() else {
        return;
    };
    for ns in [NS, ENDPOINT_NS] {
        h.kubectl(&["create", "namespace", ns]);
    }
    h.kubectl(&["-n", NS, "create", "serviceaccount", SA]);
    let istiod = Istiod::start_on(&h, &istio_bin, MESH, NS, Some(ISTIOD_PORT));

    h.kubectl_in(&["apply", "-f", "-"], Some(&crds_output()));
    h.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/workloadautoregistrations.runtime.onboarding.tetrate.io",
        "crd/onboardingpolicies.authorization.onboarding.tetrate.io",
    ]);
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe target");
    let probe_port = probe.local_addr().expect("addr").port();
    drop(probe);
    h.kubectl_in(&["apply", "-f", "-"], Some(&workload_group(probe_port)));
    h.kubectl_in(&["apply", "-f", "-"], Some(POLICY));
    h.kubectl_in(&["apply", "-f", "-"], Some(SERVICE_ENTRY));
    let rbac = repo().join("packaging/kubernetes/rbac.yaml");
    h.kubectl(&["apply", "-f", rbac.to_str().expect("UTF-8")]);

    let kubeconfig = service_account_kubeconfig(&h, ENDPOINT_NS, "onboarding-endpoint", h.dir());
    let mut ep = Endpoint::start_in(
        Options::default(),
        Extra::default(),
        StoreChoice {
            store: Some(format!(
                "store:\n  kube: {{kubeconfig: {}, namespace: {ENDPOINT_NS}, istioTokenExpiration: 10m}}",
                kubeconfig.display()
            )),
            instance_name: Some("endpoint-a".into()),
        },
    );
    // The VM reaches istiod through "the gateway", here loopback.
    ep.reconfigure(|t| t.replace("istiodGateway: 10.20.30.40", "istiodGateway: 127.0.0.1"));
    let agent = Agent::builder(&ep).start();
    agent.wait_phase("connected", Duration::from_secs(60));

    let root = agent.root_file("");
    let cluster_env =
        std::fs::read_to_string(root.join("var/lib/istio/envoy/cluster.env")).expect("cluster.env");
    let hosts = std::fs::read_to_string(root.join("etc/hosts")).expect("hosts");
    // The mesh root the endpoint rendered, read before pilot-agent's OUTPUT_CERTS (the
    // same directory) writes its own copy.
    let rendered_root =
        std::fs::read_to_string(root.join("etc/certs/root-cert.pem")).expect("root-cert.pem");
    let published_root = h.kubectl(&[
        "-n",
        NS,
        "get",
        "configmap",
        "istio-ca-root-cert",
        "-o",
        "jsonpath={.data.root-cert\\.pem}",
    ]);
    assert_eq!(rendered_root.trim(), published_root.trim());
    assert!(
        cluster_env.contains(&format!("\nISTIO_META_WORKLOAD_ENTRY='{WAR}'\n")),
        "{cluster_env}"
    );
    assert!(
        hosts.contains("127.0.0.1 istiod.istio-system.svc"),
        "{hosts}"
    );

    let log = agent.path("pilot-agent.log");
    let mut sidecar = start_sidecar(&root, &istio_bin, &log);
    let diag = || {
        format!(
            "--- pilot-agent:\n{}\n--- istiod:\n{}",
            std::fs::read_to_string(agent.path("pilot-agent.log")).unwrap_or_default(),
            istiod.log_tail(40)
        )
    };
    let chain = wait_until(
        "pilot-agent writes cert-chain.pem",
        Duration::from_secs(90),
        diag,
        || {
            std::fs::read(root.join("etc/certs/cert-chain.pem"))
                .ok()
                .filter(|p| !p.is_empty())
        },
    );
    let certs = Certificate::load_pem_chain(&chain).expect("PEM chain");
    assert_eq!(
        uri_sans(&certs[0]),
        vec![format!("spiffe://cluster.local/ns/{NS}/sa/{SA}")]
    );
    let root_ca = Certificate::load_pem_chain(rendered_root.as_bytes()).expect("root PEM");
    assert_eq!(
        certs[0].tbs_certificate.issuer, root_ca[0].tbs_certificate.subject,
        "issued by the mesh root the endpoint rendered"
    );

    // pilot-agent's gRPC xDS bootstrap holds the node metadata it sends istiod: what
    // cluster.env's ISTIO_META_* became (only those reach the node).
    let bootstrap_path = root.join("etc/istio/proxy/grpc-bootstrap.json");
    let bootstrap: serde_json::Value = wait_until(
        "pilot-agent writes its gRPC xDS bootstrap",
        Duration::from_secs(30),
        diag,
        || {
            std::fs::read(&bootstrap_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        },
    );
    let node = &bootstrap["node"];
    assert_eq!(node["metadata"]["WORKLOAD_ENTRY"], WAR, "{node}");
    assert_eq!(node["metadata"]["NAMESPACE"], NS, "{node}");
    assert_eq!(node["metadata"]["SERVICE_ACCOUNT"], SA, "{node}");
    assert!(
        node["metadata"].get("AUTO_REGISTER_GROUP").is_none(),
        "{node}"
    );

    // An xDS stream through pilot-agent's local proxy, as the sidecar's Envoy would open it.
    let socket = root.join("etc/istio/proxy/XDS");
    wait_until(
        "pilot-agent's XDS socket",
        Duration::from_secs(30),
        diag,
        || socket.exists().then_some(()),
    );
    let xds_client = istio::build_xds_client(agent.path("").as_path());
    let mut xds = Command::new(&xds_client)
        .arg(&bootstrap_path)
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start xds-client");
    let xds_out = xds.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(xds_out)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no xDS answer through pilot-agent in 60s\n{}", diag()));
    assert!(
        first.starts_with("response type=type.googleapis.com/envoy.config.listener.v3.Listener"),
        "{first}\n{}",
        diag()
    );
    // istiod names a connection `<proxy id>-<n>`, the proxy id being the node id's
    // `<POD_NAME>.<POD_NAMESPACE>` part.
    let proxy_id = node["id"]
        .as_str()
        .and_then(|id| id.split('~').nth(2))
        .expect("node id sidecar~ip~id~domain")
        .to_string();
    let client = wait_until(
        "istiod lists the VM's proxy as connected",
        Duration::from_secs(30),
        || {
            format!(
                "{:?}\n{}",
                istiod.get(istiod.http_port, "/debug/connections"),
                diag()
            )
        },
        || {
            let (_, body) = istiod.get(istiod.http_port, "/debug/connections")?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let found = v["clients"].as_array()?.iter().find(|c| {
                c["connectionId"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(&format!("{proxy_id}-")))
            });
            found.cloned()
        },
    );
    // The connection came through pilot-agent (istiod's /debug/connections lists no
    // metadata; that the node carried WORKLOAD_ENTRY shows below, in istiod taking the entry).
    assert!(
        client["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{client}"
    );

    // istiod took the entry the endpoint registered as this proxy's (ISTIO_META_WORKLOAD_ENTRY)
    // and, once the probe target answers, marks it healthy.
    let we = || h.kubectl_json(&["-n", NS, "get", "workloadentry", WAR], None);
    wait_until(
        "istiod becomes the WorkloadEntry's controller",
        Duration::from_secs(30),
        || format!("{}\n{}", we(), diag()),
        || {
            we()["metadata"]["annotations"]["istio.io/workloadController"]
                .as_str()
                .map(|_| ())
        },
    );
    // Nothing listens on the probe port yet: pilot-agent reports the probe failing, and an
    // entry with health checks that is not Healthy=True is no endpoint at all
    // (serviceentry/controller.go drops it).
    let shard_has_vm = || {
        istiod
            .get(istiod.http_port, "/debug/endpointShardz")
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .map(|v| {
                v["ratings-vm.bookinfo.svc.cluster.local"][NS]["Shards"]
                    .to_string()
                    .contains("127.0.0.1")
            })
    };
    let health_is = |we: &serde_json::Value, status: &str| {
        we["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Healthy" && c["status"] == status)
        })
    };
    let healthy = |we: &serde_json::Value| health_is(we, "True");
    // pilot-agent sends its first probe result right after the stream's first LDS request,
    // and istiod may handle it before its informer has seen the `workloadController`
    // annotation it just wrote; `state.Store.UpdateHealth` then drops it without retry
    // (istio pilot/pkg/autoregistration/internal/state/store.go, `IsControllerOf`). So the
    // test asserts on transitions made after istiod became the controller, which istiod
    // always takes; docs/testing-kubernetes.md describes what this race means for a real VM.
    assert!(
        !healthy(&we()),
        "no Healthy=True before the probe target answers"
    );
    assert_eq!(
        shard_has_vm(),
        Some(false),
        "an entry that is not Healthy=True is no endpoint"
    );
    let mut probe_target =
        Some(std::net::TcpListener::bind(("127.0.0.1", probe_port)).expect("probe port"));
    wait_until(
        "the WorkloadEntry turns Healthy=True once the probe target answers",
        Duration::from_secs(60),
        || format!("{}\n{}", we(), diag()),
        || healthy(&we()).then_some(()),
    );
    // The probe target goes away: Healthy=False, and the VM is no endpoint.
    drop(probe_target.take());
    wait_until(
        "the WorkloadEntry reports Healthy=False while the probe fails",
        Duration::from_secs(60),
        || format!("{}\n{}", we(), diag()),
        || health_is(&we(), "False").then_some(()),
    );
    wait_until(
        "an unhealthy VM is no endpoint",
        Duration::from_secs(30),
        diag,
        || (shard_has_vm() == Some(false)).then_some(()),
    );
    probe_target =
        Some(std::net::TcpListener::bind(("127.0.0.1", probe_port)).expect("probe port"));
    wait_until(
        "the WorkloadEntry turns Healthy=True again",
        Duration::from_secs(60),
        || format!("{}\n{}", we(), diag()),
        || healthy(&we()).then_some(()),
    );
    let entries = h.kubectl_json(&["-n", NS, "get", "workloadentry"], None);
    let names: Vec<&str> = entries["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, [WAR], "exactly the endpoint's WorkloadEntry");

    // The entry's address is a healthy endpoint of the ServiceEntry that selects it.
    let shard = wait_until(
        "the VM is an endpoint of ratings-vm.bookinfo.svc.cluster.local",
        Duration::from_secs(30),
        diag,
        || {
            let (_, body) = istiod.get(istiod.http_port, "/debug/endpointShardz")?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let shards = v["ratings-vm.bookinfo.svc.cluster.local"][NS]["Shards"].clone();
            shards.to_string().contains("127.0.0.1").then_some(shards)
        },
    );
    eprintln!("endpoint shard: {shard}");
    drop(xds.stdin.take());
    let _ = xds.kill();
    let _ = xds.wait();
    sidecar.stop();

    // `kubectl delete war`: the agent onboards again (a new WAR and WorkloadEntry), and the
    // sidecar, restarted from the files as they are now, gets a certificate again and
    // istiod takes the new entry.
    let first_uid = we()["metadata"]["uid"].clone();
    h.kubectl(&["-n", NS, "delete", "war", WAR]);
    wait_until(
        "a new WorkloadEntry after re-onboarding",
        Duration::from_secs(60),
        || format!("{}\n{}", agent.log(), diag()),
        || {
            let out =
                h.kubectl_output(&["-n", NS, "get", "workloadentry", WAR, "-o", "json"], None);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (out.status.success() && v["metadata"]["uid"] != first_uid).then_some(())
        },
    );
    for f in ["etc/certs/cert-chain.pem", "etc/certs/key.pem"] {
        std::fs::remove_file(root.join(f)).expect("remove the old certificate");
    }
    // As above: the probe turns healthy only once istiod controls the new entry.
    drop(probe_target.take());
    let mut sidecar = start_sidecar(&root, &istio_bin, &agent.path("pilot-agent-2.log"));
    let diag = || {
        format!(
            "--- pilot-agent (second run):\n{}\n--- istiod:\n{}",
            std::fs::read_to_string(agent.path("pilot-agent-2.log")).unwrap_or_default(),
            istiod.log_tail(40)
        )
    };
    let chain = wait_until(
        "pilot-agent gets a certificate again after re-onboarding",
        Duration::from_secs(90),
        || {
            format!(
                "{}\n{}",
                std::fs::read_to_string(agent.path("pilot-agent-2.log")).unwrap_or_default(),
                istiod.log_tail(40)
            )
        },
        || {
            std::fs::read(root.join("etc/certs/cert-chain.pem"))
                .ok()
                .filter(|p| !p.is_empty())
        },
    );
    let certs = Certificate::load_pem_chain(&chain).expect("PEM chain");
    assert_eq!(
        uri_sans(&certs[0]),
        vec![format!("spiffe://cluster.local/ns/{NS}/sa/{SA}")]
    );
    wait_until(
        "pilot-agent's XDS socket again",
        Duration::from_secs(30),
        diag,
        || socket.exists().then_some(()),
    );
    let mut xds = Command::new(&xds_client)
        .arg(&bootstrap_path)
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start xds-client");
    wait_until(
        "istiod becomes the controller of the re-registered WorkloadEntry",
        Duration::from_secs(30),
        || format!("{}\n{}", we(), diag()),
        || {
            let w = we();
            (w["metadata"]["uid"] != first_uid
                && w["metadata"]["annotations"]["istio.io/workloadController"].is_string())
            .then_some(())
        },
    );
    probe_target =
        Some(std::net::TcpListener::bind(("127.0.0.1", probe_port)).expect("probe port"));
    wait_until(
        "the re-registered WorkloadEntry turns Healthy=True",
        Duration::from_secs(60),
        || format!("{}\n{}", we(), diag()),
        || healthy(&we()).then_some(()),
    );
    drop(probe_target);
    drop(xds.stdin.take());
    let _ = xds.kill();
    let _ = xds.wait();
    sidecar.stop();
    eprintln!("took {:?}", started.elapsed());
}

/// packaging/kubernetes/vmgateway/ (the Gateway and VirtualServices that expose the
/// endpoint and istiod through istio-system's vmgateway) is accepted by the real API
/// server with Istio's CRDs (schema and CEL validation), applied with kubectl's own
/// kustomize, and istiod reads every object of it as config.
#[test]
fn the_vmgateway_routing_is_accepted_and_read_by_istiod() {
    let Some(h) = KubeHarness::start() else {
        return;
    };
    let Some(istio_bin) = istio_bin_dir() else {
        return;
    };
    h.kubectl(&["create", "namespace", NS]);
    let istiod = Istiod::start(&h, &istio_bin, MESH, NS);
    let dir = repo().join("packaging/kubernetes/vmgateway");
    let dir = dir.to_str().expect("UTF-8 path");
    h.kubectl(&["apply", "--dry-run=server", "-k", dir]);
    let applied = h.kubectl(&["apply", "-k", dir]);
    let mut wanted = vec![
        ("Gateway", "vmgateway"),
        ("VirtualService", "onboarding-endpoint"),
        ("VirtualService", "istiod-vmgateway"),
    ];
    assert_eq!(applied.lines().count(), wanted.len(), "{applied}");
    wait_until(
        "istiod's /debug/configz lists the vmgateway objects",
        Duration::from_secs(30),
        || istiod.log_tail(40),
        || {
            let (_, body) = istiod.get(istiod.http_port, "/debug/configz")?;
            let all: serde_json::Value = serde_json::from_str(&body).ok()?;
            let found = |kind: &str, name: &str| {
                all.as_array().is_some_and(|items| {
                    items.iter().any(|c| {
                        c["kind"] == kind
                            && c["metadata"]["name"] == name
                            && c["metadata"]["namespace"] == "istio-system"
                    })
                })
            };
            wanted.retain(|(kind, name)| !found(kind, name));
            wanted.is_empty().then_some(())
        },
    );
}

/// The same WorkloadGroup rendered by the real `istioctl x workload entry configure`
/// against the API server and by `onboarding-endpoint render` from what that server holds
/// (ConfigMap `istio`, `istio-ca-root-cert`, istioctl's own token): every file equal,
/// except for the documented differences (docs/bootstrap.md). REDIRECT mode, so the only
/// one these groups reach is fix 2 (`CA_ADDR` always written); fix 7 (port order) is
/// avoided by giving each group at most one port.
#[test]
fn render_matches_live_istioctl_except_documented_differences() {
    let Some(h) = KubeHarness::start() else {
        return;
    };
    let Some(istio_bin) = istio_bin_dir() else {
        return;
    };
    h.kubectl(&["create", "namespace", NS]);
    h.kubectl(&["create", "namespace", "istio-system"]);
    // No controller-manager: even the default ServiceAccount is made by hand.
    for sa in ["default", SA, "reviews"] {
        h.kubectl(&["-n", NS, "create", "serviceaccount", sa]);
    }
    let mesh = "trustDomain: cluster.local\ndefaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n  proxyMetadata:\n    FOO: bar\n  statusPort: 15021\n";
    let ca = endpoint::test_ca();
    let cms = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "istio", "namespace": "istio-system"}, "data": {"mesh": mesh}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "istio-ca-root-cert", "namespace": NS},
         "data": {"root-cert.pem": ca.ca_pem}},
    ]});
    h.kubectl_in(&["apply", "-f", "-"], Some(&cms.to_string()));
    let work = tempfile::tempdir().expect("temp dir");
    let mesh_file = work.path().join("mesh-cm.yaml");
    std::fs::write(
        &mesh_file,
        h.kubectl(&["-n", "istio-system", "get", "cm", "istio", "-o", "yaml"]),
    )
    .expect("write mesh");

    // A revisioned control plane: its own mesh ConfigMap, here without discoveryAddress so
    // both sides derive `istiod-canary`.
    let canary_mesh =
        "trustDomain: cluster.local\ndefaultConfig:\n  proxyMetadata:\n    FOO: canary\n";
    h.kubectl_in(
        &["apply", "-f", "-"],
        Some(
            &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "istio-canary", "namespace": "istio-system"},
                "data": {"mesh": canary_mesh}})
            .to_string(),
        ),
    );
    let canary_mesh_file = work.path().join("mesh-canary-cm.yaml");
    std::fs::write(
        &canary_mesh_file,
        h.kubectl(&[
            "-n",
            "istio-system",
            "get",
            "cm",
            "istio-canary",
            "-o",
            "yaml",
        ]),
    )
    .expect("write canary mesh");
    // An east-west gateway a cloud load balancer publishes by DNS name only (istio#31624):
    // istioctl finds the Service but no IP.
    const GATEWAY_HOST: &str = "eastwest-1234.elb.example";
    h.kubectl_in(
        &["apply", "-f", "-"],
        Some(
            &serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
                "spec": {"type": "LoadBalancer",
                         "ports": [{"name": "tcp-istiod", "port": 15012}]}})
            .to_string(),
        ),
    );
    h.kubectl(&[
        "-n",
        "istio-system",
        "patch",
        "service",
        "istio-eastwestgateway",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"status":{{"loadBalancer":{{"ingress":[{{"hostname":"{GATEWAY_HOST}"}}]}}}}}}"#
        ),
    ]);

    struct Case {
        name: &'static str,
        group: String,
        internal_ip: &'static str,
        /// An IP, or the gateway's DNS name (then istioctl gets no `--ingressIP` and looks
        /// up the istio-eastwestgateway Service).
        ingress: &'static str,
        revision: Option<&'static str>,
        /// Our default (NONE, fix 4) instead of `--interception-mode redirect`.
        none_mode: bool,
    }
    let simple = |name: &str, ports: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  metadata:\n    labels: {{app: {name}}}\n  template:\n    serviceAccount: {SA}\n{ports}"
        )
    };
    let cases = [
        Case {
            name: "plain-ipv4",
            group: format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {{name: ratings, namespace: {NS}}}\nspec:\n  template:\n    serviceAccount: {SA}\n"
            ),
            internal_ip: "10.0.0.5",
            ingress: "10.0.0.1",
            revision: None,
            none_mode: false,
        },
        Case {
            name: "labels-port-network-probe",
            group: format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {{name: reviews, namespace: {NS}}}\nspec:\n  metadata:\n    labels: {{app: reviews, version: v2}}\n    annotations: {{proxy.istio.io/config: '{{\"proxyMetadata\": {{\"BAR\": \"baz\"}}}}'}}\n  template:\n    labels: {{class: vm}}\n    serviceAccount: reviews\n    network: vm-net\n    ports: {{http: 9080}}\n  probe:\n    initialDelaySeconds: 2\n    httpGet: {{path: /ready, port: 9080}}\n"
            ),
            internal_ip: "192.168.7.9",
            ingress: "172.16.0.1",
            revision: None,
            none_mode: false,
        },
        Case {
            name: "default-sa-ipv6",
            group: format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {{name: details, namespace: {NS}}}\nspec:\n  metadata:\n    labels: {{app.kubernetes.io/name: details}}\n  template:\n    ports: {{grpc: 7070}}\n"
            ),
            internal_ip: "fd00:10:96::5",
            ingress: "fd00:10:96::1",
            revision: None,
            none_mode: false,
        },
        Case {
            name: "revision-canary",
            group: simple("canaryapp", "    ports: {http: 8080}\n"),
            internal_ip: "10.0.0.6",
            ingress: "10.0.0.2",
            revision: Some("canary"),
            none_mode: false,
        },
        Case {
            name: "several-ports",
            group: simple(
                "multiport",
                "    ports: {http: 8080, grpc-api: 9090, tcp-db: 5432, http-admin: 15000}\n",
            ),
            internal_ip: "10.0.0.7",
            ingress: "10.0.0.3",
            revision: None,
            none_mode: false,
        },
        Case {
            name: "hostname-gateway",
            group: simple("edge", "    ports: {http: 8080}\n"),
            internal_ip: "10.0.0.8",
            ingress: GATEWAY_HOST,
            revision: None,
            none_mode: false,
        },
        Case {
            name: "none-mode",
            group: simple("plainnone", "    ports: {http: 8080, tcp: 9000}\n"),
            internal_ip: "10.0.0.9",
            ingress: "10.0.0.4",
            revision: None,
            none_mode: true,
        },
    ];
    for case in &cases {
        let dir = work.path().join(case.name);
        let (ictl, ours) = (dir.join("istioctl"), dir.join("ours"));
        std::fs::create_dir_all(&ictl).expect("mkdir");
        let wg = dir.join("workloadgroup.yaml");
        std::fs::write(&wg, &case.group).expect("write group");
        let ingress_is_ip = case.ingress.parse::<std::net::IpAddr>().is_ok();
        let mut istioctl = Command::new(istio_bin.join("istioctl"));
        istioctl
            .args([
                "x",
                "workload",
                "entry",
                "configure",
                "--clusterID",
                "Kubernetes",
            ])
            .arg("--kubeconfig")
            .arg(h.kubeconfig())
            .arg("-f")
            .arg(&wg)
            .arg("-o")
            .arg(&ictl)
            .args(["--internalIP", case.internal_ip]);
        if ingress_is_ip {
            istioctl.args(["--ingressIP", case.ingress]);
        }
        if let Some(rev) = case.revision {
            istioctl.args(["--revision", rev]);
        }
        let out = istioctl.output().expect("run istioctl");
        assert!(
            out.status.success(),
            "{}: istioctl: {}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut render = Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"));
        render
            .args(["render", "--cluster-id", "Kubernetes"])
            .arg("-f")
            .arg(&wg)
            .arg("-o")
            .arg(&ours)
            .arg("--mesh-config")
            .arg(if case.revision.is_some() {
                &canary_mesh_file
            } else {
                &mesh_file
            })
            .arg("--root-cert")
            .arg(ictl.join("root-cert.pem"))
            .arg("--token")
            .arg(ictl.join("istio-token"))
            .args([
                "--internal-ip",
                case.internal_ip,
                "--ingress-ip",
                case.ingress,
            ]);
        if !case.none_mode {
            render.args(["--interception-mode", "redirect"]);
        }
        if let Some(rev) = case.revision {
            render.args(["--revision", rev]);
        }
        let out = render.output().expect("run render");
        assert!(
            out.status.success(),
            "{}: render: {}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |d: &Path, f: &str| {
            std::fs::read_to_string(d.join(f))
                .unwrap_or_else(|e| panic!("{}: {}: {e}", case.name, d.join(f).display()))
        };
        let names = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .expect("read dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&ictl), names(&ours), "{}", case.name);
        let istiod_host = match case.revision {
            Some(rev) => format!("istiod-{rev}.istio-system.svc"),
            None => "istiod.istio-system.svc".to_string(),
        };
        // Not vacuous: istioctl wrote what the group and the server say.
        let hosts = read(&ictl, "hosts");
        if ingress_is_ip {
            assert_eq!(
                hosts,
                format!("{} {istiod_host}\n", case.ingress),
                "{}",
                case.name
            );
            assert_eq!(hosts, read(&ours, "hosts"), "{}: hosts", case.name);
        } else {
            // Fix 3: istioctl found the gateway Service but no IP and wrote nothing; we
            // write what the agent resolves.
            assert_eq!(hosts, "", "{}", case.name);
            assert_eq!(
                read(&ours, "hosts"),
                format!(
                    "# {istiod_host}: the address(es) of {}, resolved on the VM (onboarding-agent does this)\n",
                    case.ingress
                ),
                "{}",
                case.name
            );
        }
        let mesh_yaml = read(&ictl, "mesh.yaml");
        match case.revision {
            Some(rev) => {
                assert!(mesh_yaml.contains("FOO: canary"), "{}", case.name);
                assert!(
                    mesh_yaml.contains(&format!(
                        "discoveryAddress: istiod-{rev}.istio-system.svc:15012"
                    )),
                    "{}: {mesh_yaml}",
                    case.name
                );
            }
            None => assert!(mesh_yaml.contains("FOO: bar"), "{}", case.name),
        }
        assert_eq!(read(&ictl, "root-cert.pem"), ca.ca_pem, "{}", case.name);
        assert!(
            read(&ictl, "cluster.env").contains(&format!("ISTIO_SVC_IP='{}'", case.internal_ip)),
            "{}",
            case.name
        );
        for f in ["mesh.yaml", "root-cert.pem", "istio-token"] {
            assert_eq!(read(&ictl, f), read(&ours, f), "{}: {f}", case.name);
        }
        // cluster.env: istioctl's lines plus fix 2 (CA_ADDR, which istioctl writes only
        // for a revision) and, in NONE mode, fix 4's two lines; with several ports the
        // order of ISTIO_INBOUND_PORTS is istioctl's map order (fix 7), so that line is
        // compared as a set.
        let theirs = read(&ictl, "cluster.env");
        let mut expected: Vec<String> = theirs.lines().map(str::to_string).collect();
        let ca_addr = format!("CA_ADDR='{istiod_host}:15012'");
        if case.revision.is_some() {
            assert!(expected.contains(&ca_addr), "{}: {theirs}", case.name);
        } else {
            assert!(!theirs.contains("\nCA_ADDR="), "{theirs}");
            expected.push(ca_addr);
        }
        if case.none_mode {
            expected.push("ISTIO_META_INTERCEPTION_MODE='NONE'".into());
            expected.push("ISTIO_CUSTOM_IP_TABLES='true'".into());
        }
        let mine = read(&ours, "cluster.env");
        let mut got: Vec<String> = mine.lines().map(str::to_string).collect();
        let port_set = |lines: &mut Vec<String>| {
            for l in lines.iter_mut() {
                if let Some(v) = l.strip_prefix("ISTIO_INBOUND_PORTS=") {
                    let mut ports: Vec<&str> = v.trim_matches('\'').split(',').collect();
                    ports.sort();
                    *l = format!("ISTIO_INBOUND_PORTS=<{}>", ports.join(","));
                }
            }
            lines.sort();
        };
        port_set(&mut expected);
        port_set(&mut got);
        assert_eq!(
            got, expected,
            "{}:\n--- istioctl\n{theirs}\n--- ours\n{mine}",
            case.name
        );
        // istioctl's token is a TokenRequest token for the group's ServiceAccount.
        let token = read(&ictl, "istio-token");
        let payload = token.split('.').nth(1).expect("JWT");
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .expect("base64"),
        )
        .expect("claims");
        assert_eq!(claims["aud"], serde_json::json!(["istio-ca"]), "{claims}");
    }
    // Several ports: our order is by port name (fix 7), one line istioctl may or may not
    // happen to match.
    let mine = std::fs::read_to_string(work.path().join("several-ports/ours/cluster.env"))
        .expect("cluster.env");
    assert!(
        mine.contains("\nISTIO_INBOUND_PORTS='9090,8080,15000,5432'\n"),
        "{mine}"
    );
}

/// A counter from istiod's Prometheus endpoint (the sum over its label sets), or `None`
/// when istiod does not list it (a counter never incremented is not listed).
fn istiod_counter(istiod: &Istiod, name: &str) -> Option<f64> {
    let (_, body) = istiod.get(istiod.monitoring_port, "/metrics")?;
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name{...} v`, `name v`, or the exporter's `name_total ...`.
        let rest = rest.strip_prefix("_total").unwrap_or(rest);
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// The serial number of the leaf certificate in `path`, once the file holds a whole chain
/// (pilot-agent rewrites it in place, so a read can see it half written).
fn leaf_serial(path: &Path) -> Option<Vec<u8>> {
    let pem = std::fs::read(path).ok()?;
    let certs = Certificate::load_pem_chain(&pem).ok()?;
    Some(
        certs
            .first()?
            .tbs_certificate
            .serial_number
            .as_bytes()
            .to_vec(),
    )
}

/// A numeric claim of a JWT (`exp`, `iat`: unix seconds).
fn jwt_time(token: &str, claim: &str) -> u64 {
    let payload = token.trim().split('.').nth(1).expect("JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .expect("base64"),
    )
    .expect("claims");
    claims[claim]
        .as_u64()
        .unwrap_or_else(|| panic!("{claim} in {claims}"))
}

fn jwt_exp(token: &str) -> u64 {
    jwt_time(token, "exp")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Polls `f` every 100 ms; returns the time from `since` to the first `true`. Fails after
/// `bound`, a generous upper bound: the figures are printed, not asserted tightly.
fn time_until(
    what: &str,
    since: Instant,
    bound: Duration,
    diag: impl Fn() -> String,
    mut f: impl FnMut() -> bool,
) -> Duration {
    loop {
        if f() {
            return since.elapsed();
        }
        if since.elapsed() > bound {
            panic!("{what}: not within {bound:?}\n{}", diag());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Revocation measured with the real endpoint, agent, istiod and pilot-agent
/// (docs/testing-kubernetes.md, "Revocation, measured"; the operator's view is in
/// docs/endpoint.md, "Revoking a workload"). The figures are printed (`--nocapture`),
/// only generous bounds asserted. On the way, the agent replaces the istio-token while
/// pilot-agent runs, and pilot-agent's next certificate signing requests still succeed
/// with no authentication failure at istiod.
#[test]
fn revocation_timings_and_a_token_replaced_under_a_running_pilot_agent() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").is_err(),
            "istio_vm_e2e needs root (unshare --mount) and CI is set"
        );
        eprintln!(
            "SKIPPED revocation_timings_and_a_token_replaced_under_a_running_pilot_agent: needs root"
        );
        return;
    }
    let Some(h) = KubeHarness::start() else {
        return;
    };
    let Some(istio_bin) = istio_bin_dir() else {
        return;
    };
    let _ports = fixed_ports();
    for ns in [NS, ENDPOINT_NS] {
        h.kubectl(&["create", "namespace", ns]);
    }
    h.kubectl(&["-n", NS, "create", "serviceaccount", SA]);
    let istiod = Istiod::start_on(&h, &istio_bin, MESH, NS, Some(ISTIOD_PORT));
    h.kubectl_in(&["apply", "-f", "-"], Some(&crds_output()));
    h.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/workloadautoregistrations.runtime.onboarding.tetrate.io",
        "crd/onboardingpolicies.authorization.onboarding.tetrate.io",
    ]);
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe target");
    let probe_port = probe.local_addr().expect("addr").port();
    drop(probe);
    h.kubectl_in(&["apply", "-f", "-"], Some(&workload_group(probe_port)));
    h.kubectl_in(&["apply", "-f", "-"], Some(POLICY));
    h.kubectl_in(&["apply", "-f", "-"], Some(SERVICE_ENTRY));
    let rbac = repo().join("packaging/kubernetes/rbac.yaml");
    h.kubectl(&["apply", "-f", rbac.to_str().expect("UTF-8")]);
    let kubeconfig = service_account_kubeconfig(&h, ENDPOINT_NS, "onboarding-endpoint", h.dir());
    // Short keep-alive and grace settings so the policy case ends within the test; the
    // figures for the defaults follow from the same steps (docs/testing-kubernetes.md).
    let settings = Options {
        grace: "20s",
        keep_alive_interval: "2s",
        keep_alive_timeout: "6s",
        token_expiration: "1h",
    };
    let mut ep = Endpoint::start_in(
        settings,
        Extra::default(),
        StoreChoice {
            store: Some(format!(
                "store:\n  kube: {{kubeconfig: {}, namespace: {ENDPOINT_NS}, istioTokenExpiration: 10m}}",
                kubeconfig.display()
            )),
            instance_name: Some("endpoint-a".into()),
        },
    );
    ep.reconfigure(|t| t.replace("istiodGateway: 10.20.30.40", "istiodGateway: 127.0.0.1"));
    // Shared by the diagnostics and the steps that stop and start it.
    let agent = std::cell::RefCell::new(Agent::builder(&ep).start());
    agent
        .borrow()
        .wait_phase("connected", Duration::from_secs(60));
    let root = agent.borrow().root_file("");
    let token_path = root.join("var/run/secrets/tokens/istio-token");
    let cert_path = root.join("etc/certs/cert-chain.pem");
    let xds_client = istio::build_xds_client(agent.borrow().path("").as_path());
    let bootstrap_path = root.join("etc/istio/proxy/grpc-bootstrap.json");
    let socket = root.join("etc/istio/proxy/XDS");

    // pilot-agent asks for 20 s certificates, so it renews about every 10 s: each renewal
    // is a signing request to istiod, authenticated by what the VM holds.
    let sidecar_env = "SECRET_TTL=20s\n";
    let log1 = agent.borrow().path("pilot-agent.log");
    let mut sidecar = start_sidecar_with(&root, &istio_bin, &log1, sidecar_env);
    let diag = |log: &Path| {
        format!(
            "--- pilot-agent:\n{}\n--- istiod:\n{}\n--- agent:\n{}",
            std::fs::read_to_string(log).unwrap_or_default(),
            istiod.log_tail(40),
            agent.borrow().log()
        )
    };
    let we = || h.kubectl_json(&["-n", NS, "get", "workloadentry", WAR], None);
    let we_exists = || {
        h.kubectl_output(&["-n", NS, "get", "workloadentry", WAR], None)
            .status
            .success()
    };
    let shard_has_vm = || {
        istiod
            .get(istiod.http_port, "/debug/endpointShardz")
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .is_some_and(|v| {
                v["ratings-vm.bookinfo.svc.cluster.local"][NS]["Shards"]
                    .to_string()
                    .contains("127.0.0.1")
            })
    };
    let healthy = |we: &serde_json::Value| {
        we["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Healthy" && c["status"] == "True")
        })
    };
    // An xDS stream through pilot-agent makes istiod take the current entry; the probe
    // target then answers (after that, so istiod sees the transition: the race in
    // docs/testing-kubernetes.md) and the VM becomes a healthy endpoint.
    let join_endpoints = |log: &Path| -> (std::process::Child, std::net::TcpListener) {
        wait_until(
            "pilot-agent's XDS socket",
            Duration::from_secs(60),
            || diag(log),
            || socket.exists().then_some(()),
        );
        let xds = Command::new(&xds_client)
            .arg(&bootstrap_path)
            .arg(&socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start xds-client");
        wait_until(
            "istiod becomes the controller of the current WorkloadEntry",
            Duration::from_secs(60),
            || format!("{}\n{}", we(), diag(log)),
            || {
                we()["metadata"]["annotations"]["istio.io/workloadController"]
                    .as_str()
                    .map(|_| ())
            },
        );
        let target = std::net::TcpListener::bind(("127.0.0.1", probe_port)).expect("probe port");
        wait_until(
            "the WorkloadEntry turns Healthy=True",
            Duration::from_secs(60),
            || format!("{}\n{}", we(), diag(log)),
            || healthy(&we()).then_some(()),
        );
        wait_until(
            "the VM is an endpoint of ratings-vm",
            Duration::from_secs(30),
            || diag(log),
            || shard_has_vm().then_some(()),
        );
        (xds, target)
    };
    let stop_xds = |mut xds: std::process::Child| {
        drop(xds.stdin.take());
        let _ = xds.kill();
        let _ = xds.wait();
    };
    let vm_jwt = || endpoint::vm_jwt("vm-0001", &ep.plane_uid);
    // A fresh istio-token for the VM's session, as the agent's refresh asks for it.
    let bootstrap_status = |session: &str| ep.call("GET", "/v1/bootstrap", Some(session), None);
    // The session the VM holds: what its agent gets when it renews (authorize with the
    // VM's credential while its WAR exists).
    let vm_session = || {
        let (status, body) = endpoint::authorize(&ep, &vm_jwt());
        assert_eq!(status, 200, "authorize: {body}");
        body["token"].as_str().expect("session token").to_string()
    };

    wait_until(
        "pilot-agent writes cert-chain.pem",
        Duration::from_secs(90),
        || diag(&log1),
        || std::fs::read(&cert_path).ok().filter(|p| !p.is_empty()),
    );
    let (xds, probe_target) = join_endpoints(&log1);
    let session = vm_session();
    let (status, body) = bootstrap_status(&session);
    assert_eq!(
        status, 200,
        "the VM's session gets a fresh istio-token: {body}"
    );

    // (a) The agent stops (SIGKILL: no unregister) and the operator deletes the WAR.
    agent.borrow_mut().kill9();
    let first_uid = we()["metadata"]["uid"].clone();
    let t0 = Instant::now();
    h.kubectl(&["-n", NS, "delete", "war", WAR]);
    let deleted_in = t0.elapsed();
    let token_refused = time_until(
        "delete war: the VM's session gets no istio-token",
        t0,
        Duration::from_secs(30),
        || diag(&log1),
        || bootstrap_status(&session).0 != 200,
    );
    let (status, body) = bootstrap_status(&session);
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["code"], "registration_gone", "{body}");
    let we_gone = time_until(
        "delete war: the WorkloadEntry is deleted",
        t0,
        Duration::from_secs(60),
        || {
            format!(
                "{}\n{}",
                ep.log.lock().map(|l| l.clone()).unwrap_or_default(),
                diag(&log1)
            )
        },
        || !we_exists(),
    );
    let shard_gone = time_until(
        "delete war: the VM's address leaves istiod's endpoints",
        t0,
        Duration::from_secs(90),
        || diag(&log1),
        || !shard_has_vm(),
    );
    // Not a revocation of the identity: the policy still admits the VM's credential.
    let (status, body) = endpoint::authorize(&ep, &vm_jwt());
    assert_eq!(
        status, 200,
        "after delete war the credential still onboards: {body}"
    );
    eprintln!(
        "revocation (delete war, agent stopped): kubectl delete took {deleted_in:?}; \
         istio-token refused to the VM's session after {token_refused:?} (410 registration_gone); \
         WorkloadEntry deleted after {we_gone:?}; address gone from istiod's endpointShardz after {shard_gone:?}; \
         authorize with the VM's credential still answers 200"
    );

    // Restore: the agent starts again and onboards (a new WAR and WorkloadEntry). It writes
    // a new istio-token while pilot-agent, started with the old one, keeps running.
    let old_token = std::fs::read_to_string(&token_path).expect("old istio-token");
    let old_inode =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&token_path).expect("istio-token"));
    let failures_before =
        istiod_counter(&istiod, "citadel_server_authentication_failure_count").unwrap_or(0.0);
    agent.borrow_mut().spawn();
    wait_until(
        "a new WorkloadEntry after re-onboarding",
        Duration::from_secs(60),
        || diag(&log1),
        || {
            let out =
                h.kubectl_output(&["-n", NS, "get", "workloadentry", WAR, "-o", "json"], None);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (out.status.success() && v["metadata"]["uid"] != first_uid).then_some(())
        },
    );
    let new_token = wait_until(
        "the agent replaces the istio-token",
        Duration::from_secs(30),
        || diag(&log1),
        || {
            std::fs::read_to_string(&token_path)
                .ok()
                .filter(|t| !t.is_empty() && *t != old_token)
        },
    );
    let replaced_at = Instant::now();
    // Replaced by rename (a reader sees the old file or the new one, never half of one).
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&token_path).expect("istio-token")),
        old_inode
    );
    // The file pilot-agent reads (its working directory is the VM's /): a TokenRequest
    // token the API server accepts for istio-ca, not near its expiry.
    let review = h.kubectl_json(
        &["create", "-f", "-"],
        Some(
            &serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": new_token.trim(), "audiences": ["istio-ca"]},
            })
            .to_string(),
        ),
    );
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        format!("system:serviceaccount:{NS}:{SA}"),
        "{review}"
    );
    let lifetime = jwt_exp(&new_token).saturating_sub(unix_now());
    assert!(lifetime > 500, "istio-token valid for {lifetime}s only");
    // pilot-agent, still the process started with the old token, renews its certificate
    // three times after the replacement: every request succeeds, and istiod counts no
    // authentication failure.
    let csr_before = istiod_counter(&istiod, "citadel_server_csr_count")
        .expect("istiod counts signing requests (citadel_server_csr_count)");
    let mut last_serial = leaf_serial(&cert_path).expect("a certificate");
    // Three renewals, two or more requests: a request counted before `csr_before` may write
    // its certificate after it.
    for n in 1..=3 {
        last_serial = wait_until(
            &format!("pilot-agent renews its certificate ({n}) after the token was replaced"),
            Duration::from_secs(60),
            || diag(&log1),
            || leaf_serial(&cert_path).filter(|s| *s != last_serial),
        );
    }
    let csr_after = istiod_counter(&istiod, "citadel_server_csr_count").unwrap_or(0.0);
    assert!(csr_after >= csr_before + 2.0, "{csr_before} -> {csr_after}");
    let failures_after =
        istiod_counter(&istiod, "citadel_server_authentication_failure_count").unwrap_or(0.0);
    assert_eq!(
        failures_after,
        failures_before,
        "istiod refused a signing request after the token was replaced\n{}",
        diag(&log1)
    );
    let pa_log = std::fs::read_to_string(&log1).unwrap_or_default();
    assert!(
        !pa_log.contains("failed to sign CSR"),
        "pilot-agent failed a signing request\n{pa_log}"
    );
    eprintln!(
        "token replaced under a running pilot-agent: istio-token valid {lifetime}s more; \
         {} signing requests in {:?} after the replacement, 0 authentication failures",
        csr_after - csr_before,
        replaced_at.elapsed()
    );

    // The sidecar restarts (its xDS stream names the entry; istiod takes the new one on
    // connect), and the VM becomes a healthy endpoint again.
    stop_xds(xds);
    drop(probe_target);
    sidecar.stop();
    // The socket file of the stopped pilot-agent would be dialled before the new one
    // listens.
    std::fs::remove_file(&socket).expect("remove the old XDS socket");
    let log2 = agent.borrow().path("pilot-agent-2.log");
    let mut sidecar = start_sidecar_with(&root, &istio_bin, &log2, sidecar_env);
    let (xds, probe_target) = join_endpoints(&log2);

    // (b) The policy stops admitting the identity; the agent keeps running.
    let session = vm_session();
    let (status, body) = bootstrap_status(&session);
    assert_eq!(status, 200, "{body}");
    let deny = POLICY.replace("subjects: [vm-0001, ", "subjects: [");
    assert_ne!(deny, POLICY);
    let t0 = Instant::now();
    h.kubectl_in(&["apply", "-f", "-"], Some(&deny));
    let token_refused = time_until(
        "deny: the VM's session gets no istio-token",
        t0,
        Duration::from_secs(30),
        || diag(&log2),
        || bootstrap_status(&session).0 != 200,
    );
    let (status, body) = bootstrap_status(&session);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "session_revoked", "{body}");
    let (status, body) = endpoint::authorize(&ep, &vm_jwt());
    assert_eq!(status, 403, "the credential no longer onboards: {body}");
    let we_gone = time_until(
        "deny: the WorkloadEntry is deleted",
        t0,
        Duration::from_secs(120),
        || {
            format!(
                "{}\n{}",
                ep.log.lock().map(|l| l.clone()).unwrap_or_default(),
                diag(&log2)
            )
        },
        || !we_exists(),
    );
    let shard_gone = time_until(
        "deny: the VM's address leaves istiod's endpoints",
        t0,
        Duration::from_secs(150),
        || diag(&log2),
        || !shard_has_vm(),
    );
    // What the VM already holds outlives all this: its running pilot-agent still gets
    // certificates for the workload's identity after its address is gone.
    let serial_at_gone = leaf_serial(&cert_path).expect("a certificate");
    let renewed = time_until(
        "deny: pilot-agent still renews its certificate",
        t0,
        shard_gone + Duration::from_secs(60),
        || diag(&log2),
        || leaf_serial(&cert_path).is_some_and(|s| s != serial_at_gone),
    );
    let certs =
        Certificate::load_pem_chain(&std::fs::read(&cert_path).expect("chain")).expect("PEM chain");
    assert_eq!(
        uri_sans(&certs[0]),
        vec![format!("spiffe://cluster.local/ns/{NS}/sa/{SA}")]
    );
    eprintln!(
        "revocation (policy denies, agent running): istio-token refused after {token_refused:?} \
         (403 session_revoked; authorize 403); WorkloadEntry deleted after {we_gone:?}; \
         address gone from istiod's endpointShardz after {shard_gone:?} \
         (keepAliveInterval 2s, keepAliveTimeout 6s, gracePeriod 20s); \
         pilot-agent still renewed its workload certificate at {renewed:?}, after the address was gone"
    );
    stop_xds(xds);
    drop(probe_target);
    sidecar.stop();
}

/// The agent's scheduled istio-token refresh, seen by a running pilot-agent. The endpoint
/// runs its file store with an `istioToken.command` that mints tokens the way the
/// TokenRequest API does (the API server's own ServiceAccount signing key, its issuer, the
/// ServiceAccount's uid, audience istio-ca), but for `EXPIRATION_SECONDS` = 40 s: the API
/// refuses lifetimes under 10 minutes, which would put the agent's first refresh 8 minutes
/// out. Every token is checked by the real API server (istiod's TokenReview).
///
/// pilot-agent starts without a certificate, so its connection to istiod's CA carries no
/// client certificate and each signing request is authenticated by the token it reads
/// from the file at that moment. The test waits until the first token has expired and the
/// agent has replaced it (by rename) at least once, then for three certificate renewals:
/// istiod counts no authentication failure. The control at the end shows the check can
/// fail: with the agent stopped, the expired first token put back, istiod counts one; and
/// pilot-agent then renews with its certificate all the same (the revocation bound in
/// docs/endpoint.md).
#[test]
fn a_running_pilot_agent_keeps_a_valid_istio_token_across_the_agents_refreshes() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").is_err(),
            "istio_vm_e2e needs root (unshare --mount) and CI is set"
        );
        eprintln!(
            "SKIPPED a_running_pilot_agent_keeps_a_valid_istio_token_across_the_agents_refreshes: needs root"
        );
        return;
    }
    let Some(h) = KubeHarness::start() else {
        return;
    };
    let Some(istio_bin) = istio_bin_dir() else {
        return;
    };
    let _ports = fixed_ports();
    h.kubectl(&["create", "namespace", NS]);
    h.kubectl(&["-n", NS, "create", "serviceaccount", SA]);
    let istiod = Istiod::start_on(&h, &istio_bin, MESH, NS, Some(ISTIOD_PORT));

    // The header (key id) and claims of a real TokenRequest token, to mint short ones alike.
    let real = h.kubectl(&[
        "-n",
        NS,
        "create",
        "token",
        SA,
        "--audience",
        "istio-ca",
        "--duration",
        "10m",
    ]);
    let mut parts = real.trim().split('.');
    let header = parts.next().expect("JWT header").to_string();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            parts.next().expect("JWT payload"),
        )
        .expect("base64"),
    )
    .expect("claims");
    let sa_uid = claims["kubernetes.io"]["serviceaccount"]["uid"]
        .as_str()
        .expect("serviceaccount uid");
    let issuer = claims["iss"].as_str().expect("iss");
    let work = tempfile::tempdir().expect("temp dir");
    let mint = work.path().join("mint-istio-token.sh");
    std::fs::write(
        &mint,
        format!(
            r#"#!/bin/sh
# A TokenRequest token for $NAMESPACE/$SERVICE_ACCOUNT, audience $AUDIENCE, lasting
# $EXPIRATION_SECONDS, signed with the API server's ServiceAccount key.
set -eu
[ "$NAMESPACE/$SERVICE_ACCOUNT/$AUDIENCE" = "{NS}/{SA}/istio-ca" ]
b64() {{ openssl base64 -A | tr '+/' '-_' | tr -d '='; }}
now=$(date +%s)
payload=$(printf '{{"aud":["istio-ca"],"exp":%d,"iat":%d,"nbf":%d,"iss":"{issuer}","jti":"%s","kubernetes.io":{{"namespace":"{NS}","serviceaccount":{{"name":"{SA}","uid":"{sa_uid}"}}}},"sub":"system:serviceaccount:{NS}:{SA}"}}' \
  $((now + EXPIRATION_SECONDS)) "$now" "$now" "$(cat /proc/sys/kernel/random/uuid)" | b64)
sig=$(printf '%s.%s' '{header}' "$payload" | openssl dgst -sha256 -sign '{key}' | b64)
printf '%s.%s.%s\n' '{header}' "$payload" "$sig"
"#,
            key = h.ready.data_dir.join("pki/sa.key").display(),
        ),
    )
    .expect("write mint script");

    let mut ep = Endpoint::start_in(
        Options::default(),
        Extra::default(),
        StoreChoice {
            store: Some(format!(
                "store:\n  file: {{configDir: config, stateDir: state}}\nistioToken:\n  expiration: 40s\n  command: [sh, {}]",
                mint.display()
            )),
            instance_name: None,
        },
    );
    // The store's inputs: the mesh config and root istiod uses, the group with istiod's
    // ServiceAccount.
    let root_pem = h.kubectl(&[
        "-n",
        NS,
        "get",
        "configmap",
        "istio-ca-root-cert",
        "-o",
        "jsonpath={.data.root-cert\\.pem}",
    ]);
    let indent = |text: &str| {
        text.trim_end()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let mesh_yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio-ca-root-cert, namespace: {NS}}}\ndata:\n  root-cert.pem: |\n{}",
        indent(MESH),
        indent(&root_pem)
    );
    std::fs::write(ep.path("config/mesh.yaml"), mesh_yaml).expect("write mesh");
    std::fs::write(ep.path("config/workloadgroup.yaml"), workload_group(1)).expect("write group");
    ep.reconfigure(|t| t.replace("istiodGateway: 10.20.30.40", "istiodGateway: 127.0.0.1"));
    let mut agent = Agent::builder(&ep).start();
    agent.wait_phase("connected", Duration::from_secs(60));
    let root = agent.root_file("");
    let token_path = root.join("var/run/secrets/tokens/istio-token");
    let cert_path = root.join("etc/certs/cert-chain.pem");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/certs/root-cert.pem"))
            .expect("root-cert.pem")
            .trim(),
        root_pem.trim(),
        "the endpoint renders istiod's root\n{}",
        ep.log.lock().map(|l| l.clone()).unwrap_or_default()
    );
    let first = std::fs::read_to_string(&token_path).expect("istio-token");
    let first_exp = jwt_exp(&first);
    assert_eq!(
        first_exp - jwt_time(&first, "iat"),
        40,
        "a 40 s token (istioToken.expiration)"
    );

    let log = agent.path("pilot-agent.log");
    let mut sidecar = start_sidecar_with(&root, &istio_bin, &log, "SECRET_TTL=20s\n");
    let diag = || {
        format!(
            "--- pilot-agent:\n{}\n--- istiod:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            istiod.log_tail(40)
        )
    };
    let mut serial = wait_until(
        "pilot-agent writes cert-chain.pem",
        Duration::from_secs(90),
        diag,
        || leaf_serial(&cert_path),
    );
    let failures = || istiod_counter(&istiod, "citadel_server_authentication_failure_count");
    assert_eq!(
        failures(),
        None,
        "no authentication failure yet\n{}",
        diag()
    );

    // The first token expires; by then the agent has fetched fresh ones on its schedule.
    wait_until(
        "the first istio-token has expired",
        Duration::from_secs(60),
        diag,
        || (unix_now() > first_exp + 1).then_some(()),
    );
    let current = std::fs::read_to_string(&token_path).expect("istio-token");
    assert_ne!(
        current,
        first,
        "the agent replaced the token\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("fetched a fresh bootstrap"),
        "{}",
        agent.log()
    );
    let csr_before = istiod_counter(&istiod, "citadel_server_csr_count")
        .expect("istiod counts signing requests (citadel_server_csr_count)");
    let mut renewals = 0;
    // Three renewals, two or more requests: a request counted before `csr_before` may write
    // its certificate after it.
    while renewals < 3 {
        serial = wait_until(
            "pilot-agent renews its certificate",
            Duration::from_secs(60),
            diag,
            || leaf_serial(&cert_path).filter(|s| *s != serial),
        );
        renewals += 1;
        let now_token = std::fs::read_to_string(&token_path).expect("istio-token");
        assert!(
            jwt_exp(&now_token) > unix_now(),
            "the token pilot-agent reads is current"
        );
    }
    let csr_after = istiod_counter(&istiod, "citadel_server_csr_count").unwrap_or(0.0);
    let citadel = || {
        istiod
            .get(istiod.monitoring_port, "/metrics")
            .map(|(_, b)| {
                b.lines()
                    .filter(|l| l.starts_with("citadel_server"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    assert!(
        csr_after >= csr_before + 2.0,
        "{csr_before} -> {csr_after}\n{}",
        citadel()
    );
    assert_eq!(
        failures(),
        None,
        "istiod refused a request of pilot-agent after the agent's refreshes\n{}",
        diag()
    );
    let refreshes = agent.log().matches("fetched a fresh bootstrap").count();
    assert!(refreshes >= 2, "{}", agent.log());
    eprintln!(
        "token refresh under a running pilot-agent: {refreshes} refreshes of a 40 s istio-token, \
         {renewals} certificate renewals after the first token expired, 0 authentication failures"
    );

    // Control: the agent stops; the expired first token goes back where pilot-agent reads
    // it. Its next request fails authentication (so the requests above were authenticated
    // by the token), and pilot-agent then renews with its certificate regardless.
    agent.kill9();
    let tmp = root.join("var/run/secrets/tokens/.control");
    std::fs::write(&tmp, &first).expect("write");
    std::fs::rename(&tmp, &token_path).expect("rename");
    let failed = wait_until(
        "istiod refuses the expired token",
        Duration::from_secs(60),
        diag,
        || failures().filter(|f| *f >= 1.0),
    );
    let t0 = Instant::now();
    let serial_at_failure = leaf_serial(&cert_path).expect("a certificate");
    wait_until(
        "pilot-agent renews its certificate with the expired token in place",
        Duration::from_secs(60),
        diag,
        || leaf_serial(&cert_path).filter(|s| *s != serial_at_failure),
    );
    eprintln!(
        "control: {failed} authentication failure(s) with the expired token; pilot-agent renewed \
         with its certificate {:?} later",
        t0.elapsed()
    );
    let certs =
        Certificate::load_pem_chain(&std::fs::read(&cert_path).expect("chain")).expect("PEM chain");
    assert_eq!(
        uri_sans(&certs[0]),
        vec![format!("spiffe://cluster.local/ns/{NS}/sa/{SA}")]
    );
    sidecar.stop();
}
