//! The real Istio control plane on the real API server: istiod (pilot-discovery) built from
//! the istio.io/istio module runs against tests/kube-harness, and the real pilot-agent,
//! started the way the istio-sidecar package starts it on a VM (its own istio-start.sh,
//! cluster.env and sidecar.env, no iptables, no Envoy), gets a workload certificate for
//! the ServiceAccount whose TokenRequest token it holds. docs/testing-kubernetes.md.

#[path = "support/istio.rs"]
mod istio;
#[path = "support/kube.rs"]
mod kube;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use istio::{AgentGroup, Istiod, MESH, free_port, istio_bin_dir, uri_sans};
use kube::{KubeHarness, die_with_parent};
use x509_cert::Certificate;

const NS: &str = "vm-ns";
const SA: &str = "vm-sa";

fn write(root: &Path, rel: &str, body: &str, mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, body).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn pilot_agent_gets_a_workload_certificate_from_real_istiod_with_a_token_request_token() {
    let Some(kube) = KubeHarness::start() else {
        return;
    };
    let Some(istio_bin) = istio_bin_dir() else {
        return;
    };
    kube.kubectl(&["create", "namespace", NS]);
    kube.kubectl(&["-n", NS, "create", "serviceaccount", SA]);
    let istiod = Istiod::start(&kube, &istio_bin, MESH, NS);

    // The files a VM holds, under a root prefix (pilot-agent's paths are relative to its
    // working directory, `/` on a VM).
    let root = tempfile::Builder::new()
        .prefix("vm-root-")
        .tempdir()
        .expect("temp dir");
    let root = root.path();
    let token = kube.kubectl(&[
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
    write(
        root,
        "var/run/secrets/tokens/istio-token",
        token.trim(),
        0o600,
    );
    let root_cert = kube.kubectl(&[
        "-n",
        NS,
        "get",
        "configmap",
        "istio-ca-root-cert",
        "-o",
        "jsonpath={.data.root-cert\\.pem}",
    ]);
    assert!(root_cert.contains("BEGIN CERTIFICATE"), "{root_cert}");
    write(root, "etc/certs/root-cert.pem", &root_cert, 0o644);
    let status_port = free_port();
    write(
        root,
        "etc/istio/config/mesh",
        &format!(
            "trustDomain: cluster.local\ndefaultConfig:\n  discoveryAddress: {}\n  statusPort: {status_port}\n",
            istiod.ca_addr()
        ),
        0o644,
    );
    // What `istioctl x workload entry configure` puts in cluster.env, with CA_ADDR aimed at
    // the loopback istiod (see Istiod::ca_addr for why the host is `localhost`).
    write(
        root,
        "var/lib/istio/envoy/cluster.env",
        &format!(
            "ISTIO_NAMESPACE='{NS}'\nSERVICE_ACCOUNT='{SA}'\nTRUST_DOMAIN='cluster.local'\n\
             ISTIO_META_CLUSTER_ID='Kubernetes'\nISTIO_META_MESH_ID='cluster.local'\n\
             ISTIO_META_NETWORK=''\nISTIO_CP_AUTH='MUTUAL_TLS'\nISTIO_SVC_IP='127.0.0.1'\n\
             CANONICAL_SERVICE='vm'\nCANONICAL_REVISION='latest'\nCA_ADDR='{}'\n",
            istiod.ca_addr()
        ),
        0o644,
    );
    // The host's own settings: no iptables, no Envoy, the binaries from the build cache,
    // and the current user as EXEC_USER so istio-start.sh starts pilot-agent without sudo.
    write(
        root,
        "var/lib/istio/envoy/sidecar.env",
        &format!(
            "ISTIO_CUSTOM_IP_TABLES=true\nDISABLE_ENVOY=true\nISTIO_BIN_BASE='{}'\n\
             EXEC_USER=vm-test\nPOD_NAME=vm-1\n",
            istio_bin.display()
        ),
        0o644,
    );

    let log = root.join("pilot-agent.log");
    let logf = std::fs::File::create(&log).expect("log");
    let mut cmd = Command::new("bash");
    cmd.arg(istio_bin.join("istio-start.sh"))
        .current_dir(root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root)
        .env("USER", "vm-test")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("log fd"))
        .stderr(logf);
    die_with_parent(&mut cmd);
    // istio-start.sh does not exec pilot-agent when EXEC_USER is the current user: it runs
    // as the script's child. A process group of its own lets the guard stop both.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut agent = AgentGroup(cmd.spawn().expect("start istio-start.sh"));

    let chain_path = root.join("etc/certs/cert-chain.pem");
    let deadline = Instant::now() + Duration::from_secs(90);
    let chain = loop {
        if let Ok(pem) = std::fs::read(&chain_path)
            && !pem.is_empty()
        {
            break pem;
        }
        if let Ok(Some(status)) = agent.0.try_wait() {
            panic!(
                "pilot-agent exited ({status}):\n{}\n--- istiod:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default(),
                istiod.log_tail(40)
            );
        }
        if Instant::now() > deadline {
            panic!(
                "pilot-agent wrote no cert-chain.pem in 90s:\n{}\n--- istiod:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default(),
                istiod.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    agent.stop();

    let certs = Certificate::load_pem_chain(&chain).expect("PEM chain");
    let leaf = &certs[0];
    assert_eq!(
        uri_sans(leaf),
        vec![format!("spiffe://cluster.local/ns/{NS}/sa/{SA}")]
    );
    let root_ca = Certificate::load_pem_chain(root_cert.as_bytes()).expect("root PEM");
    assert_eq!(
        leaf.tbs_certificate.issuer, root_ca[0].tbs_certificate.subject,
        "the workload certificate is issued by the mesh root istiod published"
    );
    let key_mode = std::fs::metadata(root.join("etc/certs/key.pem"))
        .expect("key.pem written")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o077, 0, "key.pem mode {key_mode:o}");
}
