//! istioctl as a live oracle: `onboarding-endpoint render` against the real `istioctl x
//! workload entry configure`, both reading the real API server (docs/testing-kubernetes.md,
//! docs/bootstrap.md for the documented differences).

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

use std::path::Path;
use std::process::Command;

use endpoint::NS;
use istio::istio_bin_dir;
use istio_vm::*;
use kube::KubeHarness;

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
