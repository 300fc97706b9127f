//! Compatibility with `istioctl x workload entry configure`: for the inputs of istioctl's own
//! tests (testdata/istioctl-vmconfig, see SOURCE.md there) `onboarding-endpoint render` writes
//! the same bytes, except for the deliberate fixes listed in docs/bootstrap.md. Each fix is
//! applied to the golden file explicitly here, so a new difference fails the test.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

// Offline rendering is the endpoint binary's `render` command: the tests compile its source.
#[allow(dead_code)]
#[path = "../src/bin/onboarding-endpoint/render.rs"]
mod render;

use render::{InterceptionArg, RenderArgs, run};

struct Case {
    dir: &'static str,
    internal_ip: &'static str,
    ingress_ip: Option<&'static str>,
    revision: Option<&'static str>,
}

const IPV4: Case = Case {
    dir: "vmconfig/ipv4",
    internal_ip: "10.10.10.10",
    ingress_ip: Some("10.10.10.11"),
    revision: Some("rev-1"),
};
const IPV6: Case = Case {
    dir: "vmconfig/ipv6",
    internal_ip: "fd00:10:96::1",
    ingress_ip: Some("fd00:10:96::2"),
    revision: Some("rev-1"),
};
const NIL_PROXY_METADATA: Case = Case {
    dir: "vmconfig-nil-proxy-metadata",
    internal_ip: "10.10.10.10",
    ingress_ip: None,
    revision: None,
};

fn case_dir(case: &Case) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/istioctl-vmconfig")
        .join(case.dir)
}

fn golden(case: &Case, name: &str) -> String {
    let p = case_dir(case).join(format!("{name}.golden"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs the offline render with the inputs istioctl's test used; returns file name -> content.
fn render(case: &Case, mode: InterceptionArg) -> (tempfile::TempDir, BTreeMap<String, String>) {
    let dir = case_dir(case);
    let out = tempfile::tempdir().unwrap();
    let args = RenderArgs {
        file: dir.join("workloadgroup.yaml"),
        output: out.path().to_path_buf(),
        mesh_config: Some(dir.join("meshconfig.yaml")),
        revision: case.revision.map(String::from),
        cluster_id: "Kubernetes".into(),
        internal_ip: Some(case.internal_ip.into()),
        external_ip: None,
        ingress_ip: case.ingress_ip.map(String::from),
        // istioctl's fake cluster served these; the goldens are the verbatim copies.
        root_cert: Some(dir.join("root-cert.pem.golden")),
        token: Some(dir.join("istio-token.golden")),
        istio_namespace: "istio-system".into(),
        trust_domain: None,
        templates: None,
        interception_mode: mode,
    };
    run(&args).unwrap_or_else(|e| panic!("render {}: {e:#}", case.dir));
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        files.insert(name, std::fs::read_to_string(entry.path()).unwrap());
    }
    (out, files)
}

/// Splits a cluster.env into lines, checking istioctl's format on the way.
fn env_lines(text: &str) -> Vec<String> {
    assert!(text.ends_with('\n'), "cluster.env ends with a newline");
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "cluster.env lines are sorted by bytes");
    lines
}

fn join_lines(mut lines: Vec<String>) -> String {
    lines.sort();
    format!("{}\n", lines.join("\n"))
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected exactly one {from:?} in:\n{text}"
    );
    text.replace(from, to)
}

/// The golden cluster.env with our documented fixes applied.
fn expected_cluster_env(case: &Case, mode: InterceptionArg) -> String {
    let golden = golden(case, "cluster.env");
    let mut lines = env_lines(&golden);
    // Fix 1: TRUST_DOMAIN is never empty (istioctl writes '' without a mesh trustDomain).
    let td = lines
        .iter()
        .position(|l| l == "TRUST_DOMAIN=''")
        .expect("istioctl wrote an empty TRUST_DOMAIN");
    lines[td] = "TRUST_DOMAIN='cluster.local'".into();
    // Fix 2: CA_ADDR is always written. istioctl writes it only for revisioned installs.
    let ca = match case.revision {
        Some(rev) => format!("CA_ADDR='istiod-{rev}.istio-system.svc:15012'"),
        None => "CA_ADDR='istiod.istio-system.svc:15012'".to_string(),
    };
    if case.revision.is_some() {
        assert!(
            lines.contains(&ca),
            "istioctl already writes {ca} when revisioned"
        );
    } else {
        assert!(!lines.iter().any(|l| l.starts_with("CA_ADDR=")));
        lines.push(ca);
    }
    // Fix 3: no iptables unless REDIRECT is asked for.
    if mode == InterceptionArg::None {
        lines.push("ISTIO_META_INTERCEPTION_MODE='NONE'".into());
        lines.push("ISTIO_CUSTOM_IP_TABLES='true'".into());
    }
    join_lines(lines)
}

/// The golden mesh.yaml with our fixes applied (only TRUST_DOMAIN shows up there).
fn expected_mesh(case: &Case) -> String {
    replace_once(
        &golden(case, "mesh.yaml"),
        "    TRUST_DOMAIN: \"\"\n",
        "    TRUST_DOMAIN: cluster.local\n",
    )
}

fn check_case(case: &Case, mode: InterceptionArg) {
    let (out, files) = render(case, mode);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "cluster.env",
            "hosts",
            "istio-token",
            "mesh.yaml",
            "root-cert.pem"
        ]
    );
    assert_eq!(
        files["cluster.env"],
        expected_cluster_env(case, mode),
        "{}",
        case.dir
    );
    assert_eq!(files["mesh.yaml"], expected_mesh(case), "{}", case.dir);
    // Unchanged from istioctl, byte for byte.
    assert_eq!(files["hosts"], golden(case, "hosts"), "{}", case.dir);
    assert_eq!(files["root-cert.pem"], golden(case, "root-cert.pem"));
    assert_eq!(files["istio-token"], golden(case, "istio-token"));
    // Modes differ on purpose: istioctl writes everything 0744; the token is a secret.
    let mode_of = |n: &str| {
        std::fs::metadata(out.path().join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode_of("cluster.env"), 0o644);
    assert_eq!(mode_of("mesh.yaml"), 0o644);
    assert_eq!(mode_of("istio-token"), 0o600);
}

#[test]
fn ipv4_matches_istioctl_except_documented_fixes() {
    check_case(&IPV4, InterceptionArg::None);
}

#[test]
fn ipv6_matches_istioctl_except_documented_fixes() {
    check_case(&IPV6, InterceptionArg::None);
}

#[test]
fn nil_proxy_metadata_matches_istioctl_except_documented_fixes() {
    check_case(&NIL_PROXY_METADATA, InterceptionArg::None);
}

/// With iptables REDIRECT (istioctl's assumption) only the CA_ADDR and TRUST_DOMAIN fixes remain.
#[test]
fn redirect_mode_differs_only_by_ca_addr_and_trust_domain() {
    for case in [&IPV4, &IPV6, &NIL_PROXY_METADATA] {
        check_case(case, InterceptionArg::Redirect);
    }
}

#[test]
fn each_fix_is_visible_against_the_golden() {
    let (_out, files) = render(&NIL_PROXY_METADATA, InterceptionArg::None);
    let golden_env = golden(&NIL_PROXY_METADATA, "cluster.env");
    let ours = &files["cluster.env"];
    // TRUST_DOMAIN (istio issue: an empty value overrides pilot-agent's cluster.local default).
    assert!(golden_env.contains("\nTRUST_DOMAIN=''\n"));
    assert!(ours.contains("\nTRUST_DOMAIN='cluster.local'\n"));
    assert!(files["mesh.yaml"].contains("\n    TRUST_DOMAIN: cluster.local\n"));
    // CA_ADDR for a non-revisioned install.
    assert!(!golden_env.contains("CA_ADDR="));
    assert!(ours.contains("\nCA_ADDR='istiod.istio-system.svc:15012'\n"));
    // No iptables.
    assert!(!golden_env.contains("INTERCEPTION_MODE"));
    assert!(ours.contains("\nISTIO_META_INTERCEPTION_MODE='NONE'\n"));
    assert!(ours.contains("\nISTIO_CUSTOM_IP_TABLES='true'\n"));
    // Nothing else: same number of lines plus the three.
    assert_eq!(ours.lines().count(), golden_env.lines().count() + 3);
}

/// A gateway known only by a DNS name: istioctl writes an empty hosts file (istio#31624);
/// we write a line the reader can act on and hand the name to the agent to resolve.
#[test]
fn hostname_gateway_is_not_silently_dropped() {
    let dir = case_dir(&IPV4);
    let out = tempfile::tempdir().unwrap();
    let args = RenderArgs {
        file: dir.join("workloadgroup.yaml"),
        output: out.path().to_path_buf(),
        mesh_config: Some(dir.join("meshconfig.yaml")),
        revision: Some("rev-1".into()),
        cluster_id: "Kubernetes".into(),
        internal_ip: Some("10.10.10.10".into()),
        external_ip: None,
        ingress_ip: Some("eastwest-1234.elb.example".into()),
        root_cert: None,
        token: None,
        istio_namespace: "istio-system".into(),
        trust_domain: None,
        templates: None,
        interception_mode: InterceptionArg::None,
    };
    run(&args).unwrap();
    let hosts = std::fs::read_to_string(out.path().join("hosts")).unwrap();
    assert_eq!(
        hosts,
        "# istiod-rev-1.istio-system.svc: the address(es) of eastwest-1234.elb.example, resolved on the VM (onboarding-agent does this)\n"
    );
    // cluster.env and mesh.yaml do not depend on how istiod is reached.
    assert_eq!(
        std::fs::read_to_string(out.path().join("cluster.env")).unwrap(),
        expected_cluster_env(&IPV4, InterceptionArg::None)
    );
}
