//! A VM admitted by the real Istio control plane: istiod (built from the istio.io/istio
//! module) on the real kube-apiserver; the real endpoint (store: kube) onboards the real
//! agent; the agent writes the sidecar's files under a root prefix; the real pilot-agent
//! starts from exactly those files the way the istio-sidecar package starts it
//! (istio-start.sh sources cluster.env, `PROV_CERT`/`OUTPUT_CERTS`, no iptables), with
//! `DISABLE_ENVOY=true`. The only host-side file the test adds is sidecar.env (the
//! package's place for host settings). istiod listens on 127.0.0.1:15012, and pilot-agent
//! runs in a mount namespace whose /etc/hosts is the one the agent wrote, so the rendered
//! `CA_ADDR`, `discoveryAddress` and istiod hosts line are what connect it. The same set-up
//! measures revocation (tests/istio_revocation.rs); tests/istioctl_oracle.rs compares
//! `onboarding-endpoint render` with the real istioctl.
//! docs/testing-kubernetes.md, "The VM end to end".

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

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::Agent;
use endpoint::{NS, Options, repo};
use istio::{Istiod, istio_bin_dir, uri_sans};
use istio_vm::*;
use kube::KubeHarness;
use x509_cert::Certificate;

#[test]
fn a_vm_onboarded_by_the_endpoint_is_admitted_by_real_istiod() {
    let started = Instant::now();
    let _ports = fixed_ports();
    if !running_as_root_or_skip("a_vm_onboarded_by_the_endpoint_is_admitted_by_real_istiod") {
        return;
    }
    let probe_port = unused_port();
    let Some(cluster) = VmCluster::start(MESH, Some(probe_port)) else {
        return;
    };
    let VmCluster {
        h,
        istiod,
        istio_bin,
        ..
    } = &cluster;
    // The VM reaches istiod through "the gateway", here loopback.
    let ep = cluster.endpoint(Options::default());
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
    let mut sidecar = start_sidecar(&root, istio_bin, &log);
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
    let mut sidecar = start_sidecar(&root, istio_bin, &agent.path("pilot-agent-2.log"));
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
