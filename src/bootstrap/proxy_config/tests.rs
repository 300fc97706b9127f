use super::*;
use crate::api::istio::{IstioEgressListener, Sidecar};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn canonical_name_and_revision_rules() {
    assert_eq!(
        canonical_service(&Labels::new(), "wg"),
        ("wg".to_string(), "latest".to_string())
    );
    assert_eq!(
        canonical_service(&labels(&[("app", "a"), ("version", "v1")]), "wg"),
        ("a".to_string(), "v1".to_string())
    );
    assert_eq!(
        canonical_service(
            &labels(&[
                ("app", "a"),
                ("app.kubernetes.io/name", "k"),
                ("version", "v1"),
                ("app.kubernetes.io/version", "kv"),
            ]),
            "wg"
        ),
        ("k".to_string(), "kv".to_string())
    );
    assert_eq!(
        canonical_service(
            &labels(&[
                ("app.kubernetes.io/name", "k"),
                (LABEL_CANONICAL_NAME, "c"),
                (LABEL_CANONICAL_REVISION, "cr"),
                ("version", "v1"),
            ]),
            "wg"
        ),
        ("c".to_string(), "cr".to_string())
    );
    // Presence counts, not a non-empty value (lookupLabelValue).
    assert_eq!(
        canonical_service(&labels(&[("app", ""), ("version", "")]), "wg"),
        (String::new(), String::new())
    );
}

#[test]
fn shell_quoting_matches_istioctl_goldens() {
    assert_eq!(shell_quote(""), "''");
    assert_eq!(shell_quote("foo"), "'foo'");
    assert_eq!(shell_quote("10.10.10.10"), "'10.10.10.10'");
    assert_eq!(shell_quote("*"), "'*'");
    assert_eq!(shell_quote("it's"), "'it'\"'\"'s'");
    assert_eq!(shell_quote("{\"a\":\"b\"}"), "'{\"a\":\"b\"}'");
    // Only the odd character class of the Go raw string stays bare.
    assert_eq!(shell_quote("w.w-w/w"), "w.w-w/w");
    assert_eq!(shell_quote("w:w"), "w:w");
    assert_eq!(shell_quote("::1"), "'::1'");
}

#[test]
fn shell_quoted_values_survive_sh() {
    let values = [
        "plain",
        "it's",
        "a b",
        "$(echo no)",
        "`x`",
        "tab\there",
        "{\"k\": \"v\"}",
    ];
    for v in values {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(v)))
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), v);
    }
}

#[test]
fn go_json_escaping() {
    assert_eq!(
        go_json_string("a<b>&\"\\\n"),
        "\"a\\u003cb\\u003e\\u0026\\\"\\\\\\n\""
    );
    let m: BTreeMap<String, String> = [
        ("b".to_string(), "2".to_string()),
        ("a".to_string(), "1".to_string()),
    ]
    .into();
    assert_eq!(go_json_string_map(&m), "{\"a\":\"1\",\"b\":\"2\"}");
    let ports: BTreeMap<String, u32> =
        [("http".to_string(), 8080), ("grpc".to_string(), 9090)].into();
    assert_eq!(
        pod_ports_json(&ports).unwrap(),
        "[{\"name\":\"grpc\",\"containerPort\":9090,\"protocol\":\"\"},{\"name\":\"http\",\"containerPort\":8080,\"protocol\":\"\"}]"
    );
}

#[test]
fn labels_agent_adds_never_overrides() {
    let meta = labels(&[("app", "ratings"), ("class", "vm")]);
    let template = labels(&[("class", "bare-metal")]);
    let agent = labels(&[("app", "evil"), ("zone", "a")]);
    let got = workload_labels(&meta, &template, &agent);
    assert_eq!(
        got,
        labels(&[("app", "ratings"), ("class", "bare-metal"), ("zone", "a")])
    );
}

#[test]
fn overlay_replaces_fields_and_merges_metadata() {
    let mut dc: Map<String, Value> = serde_json::from_str(
        r#"{"tracing": {"zipkin": {"address": "z:9411"}, "sampling": 1}, "concurrency": 2}"#,
    )
    .unwrap();
    let mut md: BTreeMap<String, String> = [
        ("A".to_string(), "mesh".to_string()),
        ("B".to_string(), "mesh".to_string()),
    ]
    .into();
    let overlay: Map<String, Value> = serde_json::from_str(
        r#"{"tracing": {"sampling": 50}, "proxyMetadata": {"B": "annot", "C": "annot"}, "concurrency": null}"#,
    )
    .unwrap();
    apply_proxy_config_overlay(&mut dc, &mut md, &overlay, "test").unwrap();
    // A nested message is replaced as a whole (jsonpb), a null is skipped.
    assert_eq!(dc["tracing"], serde_json::json!({"sampling": 50}));
    assert_eq!(dc["concurrency"], serde_json::json!(2));
    assert_eq!(md["A"], "mesh");
    assert_eq!(md["B"], "annot");
    assert_eq!(md["C"], "annot");
    let bad: Map<String, Value> = serde_json::from_str(r#"{"proxyMetadata": {"N": 1}}"#).unwrap();
    let err = apply_proxy_config_overlay(&mut dc, &mut md, &bad, "src").unwrap_err();
    assert!(err.to_string().contains("proxyMetadata.N"), "{err}");
}

#[test]
fn exclude_ports() {
    assert_eq!(local_exclude_ports(0), "22,15090,15021,15020");
    assert_eq!(local_exclude_ports(15021), "22,15090,15021");
    assert_eq!(local_exclude_ports(16000), "22,15090,15021,16000");
}

#[test]
fn revision_naming() {
    assert!(!is_revisioned(None));
    assert!(!is_revisioned(Some("")));
    assert!(!is_revisioned(Some("default")));
    assert_eq!(
        istiod_host("istio-system", Some("default")),
        "istiod.istio-system.svc"
    );
    assert_eq!(
        istiod_address("mesh", Some("1-22")),
        "istiod-1-22.mesh.svc:15012"
    );
}

#[test]
fn egress_entries() {
    let listeners = vec![
        IstioEgressListener {
            bind: Some("127.0.0.2".into()),
            hosts: vec![
                "./*".into(),
                "bookinfo/details.bookinfo.svc".into(),
                "*/example.org".into(),
            ],
            ..Default::default()
        },
        IstioEgressListener {
            hosts: vec![
                "*/mysql.foo.com".into(),
                "*/example.org".into(),
                "~/*".into(),
            ],
            ..Default::default()
        },
        IstioEgressListener {
            capture_mode: Some("IPTABLES".into()),
            hosts: vec!["*/captured.example".into()],
            ..Default::default()
        },
    ];
    let mut taken = vec!["istiod.istio-system.svc".to_string()];
    let (got, problems) = egress_hosts(&sidecar(listeners), &mut taken);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        got,
        vec![
            HostsEntry {
                ip: "127.0.0.2".into(),
                hostnames: vec!["details.bookinfo.svc".into(), "example.org".into()],
                resolve: None
            },
            HostsEntry {
                ip: "127.0.0.1".into(),
                hostnames: vec!["mysql.foo.com".into()],
                resolve: None
            },
        ]
    );
}

fn sidecar(egress: Vec<IstioEgressListener>) -> Sidecar {
    Sidecar {
        api_version: "networking.istio.io/v1".into(),
        kind: "Sidecar".into(),
        metadata: crate::api::meta::ObjectMeta {
            name: "default".into(),
            namespace: "bookinfo".into(),
            ..Default::default()
        },
        spec: crate::api::istio::SidecarSpec {
            egress,
            ..Default::default()
        },
    }
}

#[test]
fn a_bad_egress_host_is_reported_and_only_it_is_skipped() {
    let listeners = vec![
        IstioEgressListener {
            hosts: vec![
                "bookinfo/details.bookinfo.svc".into(),
                "*/*.wild.example".into(),
                "*/evil\n8.8.8.8 bank.example".into(),
                "*/ratings.bookinfo.svc".into(),
                "*/has space.example".into(),
                "*/#comment".into(),
                "bookinfo/".into(),
            ],
            ..Default::default()
        },
        IstioEgressListener {
            bind: Some("127.0.0.9 evil.example".into()),
            hosts: vec!["*/not-written.example".into()],
            ..Default::default()
        },
        IstioEgressListener {
            bind: Some("127.0.0.3".into()),
            hosts: vec!["*/reviews.bookinfo.svc.".into()],
            ..Default::default()
        },
    ];
    let (got, problems) = egress_hosts(&sidecar(listeners), &mut Vec::new());
    assert_eq!(
        got,
        vec![
            HostsEntry {
                ip: "127.0.0.1".into(),
                hostnames: vec!["details.bookinfo.svc".into(), "ratings.bookinfo.svc".into()],
                resolve: None
            },
            HostsEntry {
                ip: "127.0.0.3".into(),
                hostnames: vec!["reviews.bookinfo.svc".into()],
                resolve: None
            },
        ]
    );
    assert_eq!(problems.len(), 5, "{problems:#?}");
    assert!(
        problems[0].starts_with(
            "Sidecar bookinfo/default: spec.egress[0].hosts[2]: \"*/evil\\n8.8.8.8 bank.example\" is not a valid host"
        ),
        "{}",
        problems[0]
    );
    for (p, field) in problems.iter().zip([
        "spec.egress[0].hosts[2]:",
        "spec.egress[0].hosts[4]:",
        "spec.egress[0].hosts[5]:",
        "spec.egress[0].hosts[6]:",
        "spec.egress[1].bind:",
    ]) {
        assert!(p.contains(field), "{p} should name {field}");
    }
    // The same answer for a check at load time.
    assert_eq!(sidecar_problems(&sidecar(vec![])), Vec::<String>::new());
}

#[test]
fn gateway_parsing() {
    assert_eq!(
        parse_gateway("10.0.0.1").unwrap(),
        Gateway::Ip("10.0.0.1".parse().unwrap())
    );
    assert_eq!(
        parse_gateway("fd00::2").unwrap(),
        Gateway::Ip("fd00::2".parse().unwrap())
    );
    assert_eq!(
        parse_gateway("lb-1234.elb.example.").unwrap(),
        Gateway::Hostname("lb-1234.elb.example".into())
    );
    assert!(parse_gateway("not a host").is_err());
    assert!(parse_gateway("-bad.example").is_err());
}
