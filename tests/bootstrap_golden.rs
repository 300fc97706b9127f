//! Golden files for our own templates (templates/, plus an operator override directory).
//!
//! Each directory under testdata/golden/bootstrap/ (except `common`) is a case: `case.yaml`
//! holds the render parameters, other inputs sit beside it or in `common/`, and `expected/`
//! holds what the endpoint would send the agent: one file per manifest entry (named by the
//! entry's `name`) and `bootstrap.json` with paths, modes, restart flags and hosts entries.
//!
//! After an intended change to the templates or the renderer, regenerate and review the diff:
//!
//!     UPDATE_GOLDEN=1 cargo test --test bootstrap_golden

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};
use workload_onboarding::api::istio::Sidecar;
use workload_onboarding::api::meta::Labels;
use workload_onboarding::api::protocol::Bootstrap;
// Offline rendering is the endpoint binary's `render` command: the tests compile its source.
#[allow(dead_code)]
#[path = "../src/bin/onboarding-endpoint/render.rs"]
mod render;

use render::{read_mesh_config, read_workload_group};
use workload_onboarding::bootstrap::{
    BootstrapInput, InstanceIp, InterceptionMode, Renderer, parse_gateway,
};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaseSpec {
    revision: Option<String>,
    istio_namespace: Option<String>,
    cluster_id: Option<String>,
    mesh_config: Option<String>,
    internal_ip: Option<String>,
    external_ip: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    agent_labels: Labels,
    workload_entry: Option<String>,
    sidecar: Option<String>,
    templates: Option<String>,
    #[serde(default)]
    redirect: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden/bootstrap")
}

fn render_case(dir: &Path) -> Bootstrap {
    let spec_path = dir.join("case.yaml");
    let spec: CaseSpec = workload_onboarding::yaml::from_str(
        &spec_path,
        &std::fs::read_to_string(&spec_path).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let common = root().join("common");
    let wg = read_workload_group(&common.join("workloadgroup.yaml")).unwrap();
    let mesh_path = match &spec.mesh_config {
        Some(f) => dir.join(f),
        None => common.join("mesh.yaml"),
    };
    let mesh: Value = read_mesh_config(&mesh_path).unwrap();
    let root_cert = std::fs::read_to_string(common.join("root-cert.pem")).unwrap();
    let token = std::fs::read_to_string(common.join("istio-token")).unwrap();
    let sidecar: Option<Sidecar> = spec.sidecar.as_ref().map(|f| {
        let p = dir.join(f);
        workload_onboarding::yaml::from_str(&p, &std::fs::read_to_string(&p).unwrap())
            .unwrap_or_else(|e| panic!("{e}"))
    });
    let renderer = Renderer::new(spec.templates.as_ref().map(|t| dir.join(t)).as_deref())
        .unwrap_or_else(|e| panic!("{e}"));

    let mut input = BootstrapInput::new(&wg);
    input.mesh_config = &mesh;
    input.root_cert = &root_cert;
    input.istio_token = &token;
    input.istio_token_expires_at = Some("2026-03-01T13:00:00Z".into());
    input.revision = spec.revision.as_deref();
    if let Some(ns) = &spec.istio_namespace {
        input.istio_namespace = ns;
    }
    if let Some(c) = &spec.cluster_id {
        input.cluster_id = c;
    }
    input.instance_ip = match (&spec.internal_ip, &spec.external_ip) {
        (Some(ip), _) => Some(InstanceIp::Internal(ip.clone())),
        (None, Some(ip)) => Some(InstanceIp::External(ip.clone())),
        (None, None) => None,
    };
    input.istiod_gateway = spec.gateway.as_deref().map(|g| parse_gateway(g).unwrap());
    input.agent_labels = &spec.agent_labels;
    input.workload_entry_name = spec.workload_entry.as_deref();
    input.sidecar = sidecar.as_ref();
    if spec.redirect {
        input.interception_mode = InterceptionMode::Redirect;
    }
    renderer.render(&input).unwrap_or_else(|e| panic!("{e}"))
}

/// The case's expected directory contents: file name -> bytes.
fn expected_files(dir: &Path, bootstrap: &Bootstrap) -> BTreeMap<String, String> {
    let renderer_names: Vec<String> = {
        let spec: CaseSpec = workload_onboarding::yaml::from_str(
            &dir.join("case.yaml"),
            &std::fs::read_to_string(dir.join("case.yaml")).unwrap(),
        )
        .unwrap();
        Renderer::new(spec.templates.as_ref().map(|t| dir.join(t)).as_deref())
            .unwrap()
            .files()
            .iter()
            .map(|f| f.name.clone())
            .collect()
    };
    let mut out = BTreeMap::new();
    let mut index = Vec::new();
    for (name, file) in renderer_names.iter().zip(&bootstrap.files) {
        out.insert(name.clone(), file.content.clone());
        index.push(json!({
            "name": name,
            "path": file.path,
            "mode": format!("{:04o}", file.mode),
            "restartOnChange": file.restart_on_change,
        }));
    }
    let meta = json!({
        "files": index,
        "hosts": bootstrap.hosts,
        "istioTokenExpiresAt": bootstrap.istio_token_expires_at,
    });
    out.insert(
        "bootstrap.json".into(),
        format!("{}\n", serde_json::to_string_pretty(&meta).unwrap()),
    );
    out
}

fn cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "common"))
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let all = cases();
    assert!(all.len() >= 6, "cases: {all:?}");
    let mut failures = Vec::new();
    for dir in all {
        let case = dir.file_name().unwrap().to_string_lossy().into_owned();
        let bootstrap = render_case(&dir);
        let want = expected_files(&dir, &bootstrap);
        let expected_dir = dir.join("expected");
        if update {
            let _ = std::fs::remove_dir_all(&expected_dir);
            std::fs::create_dir_all(&expected_dir).unwrap();
            for (name, content) in &want {
                std::fs::write(expected_dir.join(name), content).unwrap();
            }
            continue;
        }
        let mut have = BTreeMap::new();
        match std::fs::read_dir(&expected_dir) {
            Ok(entries) => {
                for e in entries {
                    let e = e.unwrap();
                    have.insert(
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(e.path()).unwrap(),
                    );
                }
            }
            Err(e) => failures.push(format!("{case}: no expected/ ({e})")),
        }
        for (name, content) in &want {
            match have.get(name) {
                Some(h) if h == content => {}
                Some(h) => failures.push(format!(
                    "{case}/expected/{name} differs\n--- expected\n{h}\n--- rendered\n{content}"
                )),
                None => failures.push(format!("{case}/expected/{name} is missing")),
            }
        }
        for name in have.keys().filter(|n| !want.contains_key(*n)) {
            failures.push(format!("{case}/expected/{name} is not rendered any more"));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nIf the change is intended: UPDATE_GOLDEN=1 cargo test --test bootstrap_golden",
        failures.join("\n\n")
    );
}

/// Properties the goldens are meant to show, asserted directly so that a careless golden
/// update cannot hide them.
#[test]
fn golden_cases_show_what_they_claim() {
    let env_of = |b: &Bootstrap| {
        b.files
            .iter()
            .find(|f| f.path == "/var/lib/istio/envoy/cluster.env")
            .unwrap()
            .content
            .clone()
    };
    let plain = render_case(&root().join("plain"));
    let env = env_of(&plain);
    assert!(env.contains("\nISTIO_META_INTERCEPTION_MODE='NONE'\n"));
    assert!(env.contains("\nISTIO_META_WORKLOAD_ENTRY='ratings-aws-"));
    assert!(env.contains("\nISTIO_META_DNS_AUTO_ALLOCATE='true'\n"));
    assert_eq!(plain.hosts.len(), 1);
    assert_eq!(plain.hosts[0].ip, "10.0.0.100");

    let rev = render_case(&root().join("revisioned"));
    let env = env_of(&rev);
    assert!(
        env.contains("\nCA_ADDR='istiod-1-22-3.istio-mesh.svc:15012'\n"),
        "{env}"
    );
    assert!(env.contains("\nTRUST_DOMAIN='corp.example'\n"), "{env}");
    assert_eq!(rev.hosts[0].hostnames, vec!["istiod-1-22-3.istio-mesh.svc"]);
    let mesh = &rev.files[1].content;
    assert!(mesh.contains("  discoveryAddress: istiod-1-22-3.istio-mesh.svc:15012\n"));

    let labels = render_case(&root().join("agent-labels"));
    let env = env_of(&labels);
    assert!(env.contains("\"app\":\"ratings\""), "{env}");
    assert!(env.contains("\"version\":\"v1\""), "{env}");
    assert!(
        env.contains("\"topology.example/zone\":\"us-east-2b\""),
        "{env}"
    );
    assert!(env.contains("\nCANONICAL_SERVICE='ratings'\n"), "{env}");

    let egress = render_case(&root().join("egress-sidecar"));
    let hosts: Vec<(String, Vec<String>)> = egress
        .hosts
        .iter()
        .map(|h| (h.ip.clone(), h.hostnames.clone()))
        .collect();
    assert_eq!(
        hosts,
        vec![
            ("10.0.0.100".into(), vec!["istiod.istio-system.svc".into()]),
            (
                "127.0.0.2".into(),
                vec![
                    "details.bookinfo.svc".into(),
                    "reviews.bookinfo.svc.cluster.local".into()
                ]
            ),
            ("127.0.0.1".into(), vec!["mysql.foo.com".into()]),
        ]
    );
    assert!(env_of(&egress).contains("\nREWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION='true'\n"));

    let hostname = render_case(&root().join("hostname-gateway"));
    assert_eq!(
        hostname.hosts[0].resolve.as_deref(),
        Some("eastwest-1234.elb.example")
    );

    let ov = render_case(&root().join("operator-override"));
    let paths: Vec<&str> = ov.files.iter().map(|f| f.path.as_str()).collect();
    assert!(paths.contains(&"/var/lib/istio/envoy/sidecar.env"));
    let bootstrap_tmpl = ov
        .files
        .iter()
        .find(|f| f.path == "/var/lib/istio/envoy/custom_bootstrap_tmpl.json")
        .unwrap();
    // Go template syntax reaches the VM untouched.
    assert!(bootstrap_tmpl.content.contains("\"id\": \"{{ .nodeID }}\""));
    let token = ov
        .files
        .iter()
        .find(|f| f.path == "/var/run/secrets/tokens/istio-token")
        .unwrap();
    assert!(token.content.ends_with('\n'));
    assert_eq!(token.mode, 0o600);
}

// ---------------------------------------------------------------------------------------
// `onboarding-endpoint render` through the real binary, with inputs as users have them.

fn render_bin(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"))
        .arg("render")
        .args(args)
        .output()
        .expect("onboarding-endpoint runs")
}

fn dir_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

/// What `kubectl get cm istio -n istio-system -o yaml` prints: server-set metadata, a second
/// data key, and the mesh config as a block string under `data.mesh`.
fn kubectl_configmap(mesh: &str) -> String {
    let indented: String = mesh
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>();
    format!(
        "apiVersion: v1\ndata:\n  mesh: |-\n{indented}  meshNetworks: 'networks: {{}}'\nkind: ConfigMap\nmetadata:\n  annotations:\n    meta.helm.sh/release-name: istiod\n    meta.helm.sh/release-namespace: istio-system\n  creationTimestamp: \"2026-01-05T10:11:12Z\"\n  labels:\n    app.kubernetes.io/managed-by: Helm\n    install.operator.istio.io/owning-resource: unknown\n    istio.io/rev: default\n    operator.istio.io/component: Pilot\n    release: istiod\n  name: istio\n  namespace: istio-system\n  resourceVersion: \"1234\"\n  uid: 5d0a4b1e-2c3f-4e8a-9b7c-0f1e2d3c4b5a\n"
    )
}

#[test]
fn render_binary_takes_the_istio_configmap_as_kubectl_prints_it() {
    let common = root().join("common");
    let tmp = tempfile::tempdir().unwrap();
    let mesh = std::fs::read_to_string(common.join("mesh.yaml")).unwrap();
    let cm = tmp.path().join("istio-cm.yaml");
    std::fs::write(&cm, kubectl_configmap(&mesh)).unwrap();
    // `-o json` of a list holding it works too.
    let list = tmp.path().join("list.json");
    let cm_value: serde_json::Value =
        workload_onboarding::yaml::from_str(&cm, &std::fs::read_to_string(&cm).unwrap()).unwrap();
    std::fs::write(
        &list,
        serde_json::to_string_pretty(
            &json!({"apiVersion": "v1", "kind": "List", "items": [cm_value]}),
        )
        .unwrap(),
    )
    .unwrap();
    let mut outputs = Vec::new();
    for (name, mesh_file) in [
        ("bare", common.join("mesh.yaml")),
        ("configmap", cm),
        ("list", list),
    ] {
        let out_dir = tmp.path().join(name);
        let out = render_bin(&[
            "-f".as_ref(),
            common.join("workloadgroup.yaml").as_os_str(),
            "-o".as_ref(),
            out_dir.as_os_str(),
            "--mesh-config".as_ref(),
            mesh_file.as_os_str(),
            "--root-cert".as_ref(),
            common.join("root-cert.pem").as_os_str(),
            "--token".as_ref(),
            common.join("istio-token").as_os_str(),
            "--ingress-ip".as_ref(),
            "10.0.0.9".as_ref(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(stderr.is_empty(), "{name}: nothing was left out: {stderr}");
        outputs.push(dir_files(&out_dir));
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], outputs[2]);
    // The mesh config was read, not ignored.
    assert!(
        outputs[1]["mesh.yaml"].contains("meshId: mesh1"),
        "{:?}",
        outputs[1]
    );
    assert!(outputs[1]["cluster.env"].contains("\nISTIO_META_MESH_ID='mesh1'\n"));

    // Another kind of object is refused with a hint, not read as an empty mesh config.
    let svc = tmp.path().join("svc.yaml");
    std::fs::write(
        &svc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: istiod}\n",
    )
    .unwrap();
    let out = render_bin(&[
        "-f".as_ref(),
        common.join("workloadgroup.yaml").as_os_str(),
        "-o".as_ref(),
        tmp.path().join("svc-out").as_os_str(),
        "--mesh-config".as_ref(),
        svc.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("a Service is not a mesh config")
            && stderr.contains("kubectl get cm istio"),
        "{stderr}"
    );
}

#[test]
fn render_binary_says_what_it_left_empty() {
    let common = root().join("common");
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let out = render_bin(&[
        "-f".as_ref(),
        common.join("workloadgroup.yaml").as_os_str(),
        "-o".as_ref(),
        out_dir.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let files = dir_files(&out_dir);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    // The same files as istioctl writes, each empty one named on stderr with its remedy.
    assert_eq!(
        names,
        [
            "cluster.env",
            "hosts",
            "istio-token",
            "mesh.yaml",
            "root-cert.pem"
        ],
        "{stderr}"
    );
    for want in [
        "render: no --root-cert: root-cert.pem is left empty",
        "kubectl get cm istio-ca-root-cert -n istio-system",
        "render: no --token: istio-token is left empty",
        "kubectl create token bookinfo-ratings -n bookinfo --audience istio-ca",
        "render: root-cert.pem is empty",
        "render: istio-token is empty",
        "render: hosts is empty: no --ingress-ip was given",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    assert_eq!(files["istio-token"], "");
    assert!(files["cluster.env"].contains("\nSERVICE_ACCOUNT='bookinfo-ratings'\n"));
}

#[test]
fn render_binary_refuses_a_proxy_metadata_key_that_is_a_command() {
    let common = root().join("common");
    let tmp = tempfile::tempdir().unwrap();
    let wg = std::fs::read_to_string(common.join("workloadgroup.yaml"))
        .unwrap()
        .replace(
            "metadata:\n  name: ratings\n",
            "metadata:\n  name: ratings\n  annotations:\n    proxy.istio.io/config: |\n      proxyMetadata:\n        \"X=1;touch /tmp/p;Y\": \"v\"\n",
        );
    assert!(wg.contains("touch"));
    let wg_path = tmp.path().join("wg.yaml");
    std::fs::write(&wg_path, wg).unwrap();
    let out_dir = tmp.path().join("out");
    let out = render_bin(&[
        "-f".as_ref(),
        wg_path.as_os_str(),
        "-o".as_ref(),
        out_dir.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("WorkloadGroup bookinfo/ratings")
            && stderr.contains("proxyMetadata")
            && stderr.contains("\"X=1;touch /tmp/p;Y\" is not a valid environment variable name"),
        "{stderr}"
    );
    assert!(!out_dir.join("cluster.env").exists());
}
