//! The Kubernetes store against the real kube-apiserver and etcd (tests/kube-harness/, via
//! support/kube.rs) with the real kubectl: the real endpoint binary (store: kube) running
//! with the least-privilege ServiceAccount of packaging/kubernetes/rbac.yaml, the real
//! agent over TLS. The harness has no controller-manager, so no garbage collector: the
//! tests check owner references and what the endpoint deletes itself.

#[path = "support/agent.rs"]
mod agent_support;
#[path = "support/crd_schema.rs"]
mod crd_schema;
#[path = "support/endpoint.rs"]
mod endpoint;
#[path = "support/kube.rs"]
mod kube;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use agent_support::{Agent, wait_for};
use endpoint::{
    Endpoint, Extra, MESH, NS, Options, POLICY, StoreChoice, WORKLOAD_GROUP, onboard, read, repo,
};
use kube::{KubeHarness, service_account_kubeconfig};

const WAR: &str = "ratings-jwt-corp-vm-0001";
const TOKEN: &str = "var/run/secrets/tokens/istio-token";
const ENDPOINT_NS: &str = "onboarding";

fn crds_output() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn packaged_crds_equal_the_generated_ones() {
    let packaged = repo().join("packaging/kubernetes/crds.yaml");
    let generated = crds_output();
    if std::env::var("UPDATE_CRDS").is_ok_and(|v| v == "1") {
        std::fs::write(&packaged, &generated).unwrap();
    }
    assert_eq!(
        read(&packaged),
        generated,
        "packaging/kubernetes/crds.yaml differs from `onboarding-endpoint crds`; \
         regenerate it with UPDATE_CRDS=1 cargo test --test kube_store packaged_crds"
    );
}

/// A cluster with Istio's CRDs (from testdata/schemas/istio), ours (from the binary), the
/// namespaces, the VM's ServiceAccount, the WorkloadGroup, policy and ConfigMaps the file
/// store tests use, and the endpoint's RBAC.
fn cluster() -> Option<KubeHarness> {
    let h = KubeHarness::start()?;
    for crd in [
        "workloadgroups.networking.istio.io.yaml",
        "workloadentries.networking.istio.io.yaml",
        "sidecars.networking.istio.io.yaml",
    ] {
        let path = repo().join("testdata/schemas/istio").join(crd);
        h.kubectl(&["apply", "--server-side", "-f", path.to_str().unwrap()]);
    }
    h.kubectl_in(&["apply", "-f", "-"], Some(&crds_output()));
    h.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/workloadautoregistrations.runtime.onboarding.tetrate.io",
        "crd/onboardingpolicies.authorization.onboarding.tetrate.io",
        "crd/workloadgroups.networking.istio.io",
        "crd/workloadentries.networking.istio.io",
        "crd/sidecars.networking.istio.io",
    ]);
    for ns in [NS, "istio-system", ENDPOINT_NS] {
        h.kubectl(&["create", "namespace", ns]);
    }
    // No controller-manager: ServiceAccounts are made by hand.
    h.kubectl(&["-n", NS, "create", "serviceaccount", "ratings-vm"]);
    for manifest in [WORKLOAD_GROUP, POLICY, MESH] {
        h.kubectl_in(&["apply", "-f", "-"], Some(manifest));
    }
    let rbac = repo().join("packaging/kubernetes/rbac.yaml");
    h.kubectl(&["apply", "-f", rbac.to_str().unwrap()]);
    Some(h)
}

fn kube_endpoint(h: &KubeHarness, opts: Options, instance: &str) -> Endpoint {
    let kubeconfig = service_account_kubeconfig(h, ENDPOINT_NS, "onboarding-endpoint", h.dir());
    Endpoint::start_in(
        opts,
        Extra::default(),
        StoreChoice {
            store: Some(format!(
                "store:\n  kube: {{kubeconfig: {}, namespace: {ENDPOINT_NS}, istioTokenExpiration: 10m}}",
                kubeconfig.display()
            )),
            instance_name: Some(instance.to_string()),
        },
    )
}

fn war_json(h: &KubeHarness, name: &str) -> Option<serde_json::Value> {
    let out = h.kubectl_output(&["-n", NS, "get", "war", name, "-o", "json"], None);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn token_review(h: &KubeHarness, token: &str, audience: &str) -> serde_json::Value {
    let review = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    });
    h.kubectl_json(&["create", "-f", "-"], Some(&review.to_string()))
}

#[test]
fn onboarding_through_the_kube_store_creates_api_objects_read_back_with_kubectl() {
    let Some(h) = cluster() else { return };
    let ep = kube_endpoint(&h, Options::default(), "endpoint-a");
    let agent = Agent::builder(&ep).start();
    agent.wait_phase("connected", Duration::from_secs(60));

    // `kubectl get war -A`: the columns spec/004 shows, from the CRD's printer columns.
    let table = h.kubectl(&["get", "war", "-A"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .split("  ")
        .filter(|s| !s.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        ["NAMESPACE", "NAME", "AGENT CONNECTED", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], [NS, WAR, "True"], "{table}");
    let wide = h.kubectl(&["get", "war", "-n", NS, "-o", "wide"]);
    assert!(
        wide.contains("CONNECTED TO") && wide.contains("endpoint-a"),
        "{wide}"
    );

    // `kubectl describe war`: identity, registration, conditions.
    let described = h.kubectl(&["-n", NS, "describe", "war", WAR]);
    // kubectl aligns values per block; compare with runs of spaces collapsed.
    let squeezed: Vec<String> = described
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for needle in [
        "Kind: WorkloadAutoRegistration",
        "Identity:",
        "Jwt:",
        "Subject: vm-0001",
        "Registration:",
        "Addresses:",
        "Labels:",
        "Version: v5",
        "Conditions:",
        "Type: AgentConnected",
        "Reason: AgentEstablishedConnection",
        "Connected To: endpoint-a",
    ] {
        assert!(
            squeezed.iter().any(|l| l == needle),
            "describe lacks {needle:?}:\n{described}"
        );
    }

    // Owner references: WorkloadGroup -> WAR -> WorkloadEntry, with the server's uids.
    let wg = h.kubectl_json(&["-n", NS, "get", "workloadgroup", "ratings"], None);
    let war = war_json(&h, WAR).unwrap();
    let owner = &war["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "WorkloadGroup");
    assert_eq!(owner["uid"], wg["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    let we = h.kubectl_json(&["-n", NS, "get", "workloadentry", WAR], None);
    let owner = &we["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "WorkloadAutoRegistration");
    assert_eq!(owner["uid"], war["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    assert_eq!(we["spec"]["serviceAccount"], "ratings-vm");
    assert_eq!(we["spec"]["labels"]["version"], "v5");
    assert!(we["spec"]["address"].is_string(), "{we}");
    // Status went through the status subresource by server-side apply, as our manager.
    assert_eq!(
        war["status"]["activeAgentConnection"]["connectedTo"],
        "endpoint-a"
    );
    let with_fields = h.kubectl_json(
        &["-n", NS, "get", "war", WAR, "--show-managed-fields"],
        None,
    );
    let managers: Vec<(String, String)> = with_fields["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or("").to_string(),
                m["subresource"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("onboarding-endpoint".into(), "status".into())),
        "{managers:?}"
    );

    // The istio-token is a TokenRequest token for the group's ServiceAccount that a
    // TokenReview for audience istio-ca accepts (and no other audience).
    let token = read(&agent.root_file(TOKEN));
    let review = token_review(&h, token.trim(), "istio-ca");
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        format!("system:serviceaccount:{NS}:ratings-vm")
    );
    let other = token_review(&h, token.trim(), "another-audience");
    assert_ne!(other["status"]["authenticated"], true, "{other}");

    // The endpoint's own CLI reads the same store.
    let (ok, out, err) = ep.cli(&["get", "war", "-A"]);
    assert!(ok, "{err}");
    assert!(out.contains(WAR) && out.contains("True"), "{out}");

    // The shared state Secret exists, made by the endpoint (create-if-absent).
    let secret = h.kubectl_json(
        &[
            "-n",
            ENDPOINT_NS,
            "get",
            "secret",
            "onboarding-endpoint-state",
        ],
        None,
    );
    assert!(secret["data"]["plane-uid"].is_string(), "{secret}");
    drop(agent);
}

#[test]
fn deleted_war_makes_the_agent_onboard_again_with_the_current_group() {
    let Some(h) = cluster() else { return };
    let ep = kube_endpoint(
        &h,
        Options {
            keep_alive_interval: "1s",
            keep_alive_timeout: "3s",
            ..Options::default()
        },
        "endpoint-a",
    );
    let agent = Agent::builder(&ep).start();
    agent.wait_phase("connected", Duration::from_secs(60));
    let first_uid = war_json(&h, WAR).unwrap()["metadata"]["uid"].clone();

    // The group changes; running workloads keep their snapshot...
    h.kubectl(&[
        "-n",
        NS,
        "patch",
        "workloadgroup",
        "ratings",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"labels":{"app":"ratings","class":"vm","edition":"two"}}}}"#,
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let we = h.kubectl_json(&["-n", NS, "get", "workloadentry", WAR], None);
    assert!(we["spec"]["labels"].get("edition").is_none(), "{we}");

    // ...until their WAR is deleted: the agent onboards again with the current group.
    h.kubectl(&["-n", NS, "delete", "war", WAR]);
    wait_for("a new WAR", Duration::from_secs(60), || {
        war_json(&h, WAR).is_some_and(|w| w["metadata"]["uid"] != first_uid)
    });
    wait_for(
        "the WorkloadEntry of the new snapshot",
        Duration::from_secs(30),
        || {
            let out =
                h.kubectl_output(&["-n", NS, "get", "workloadentry", WAR, "-o", "json"], None);
            out.status.success()
                && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .is_ok_and(|we| we["spec"]["labels"]["edition"] == "two")
        },
    );
    let war = war_json(&h, WAR).unwrap();
    let we = h.kubectl_json(&["-n", NS, "get", "workloadentry", WAR], None);
    assert_eq!(
        we["metadata"]["ownerReferences"][0]["uid"],
        war["metadata"]["uid"]
    );
    drop(agent);
}

#[test]
fn packaged_manifests_apply_to_the_real_api_server() {
    let Some(h) = KubeHarness::start() else {
        return;
    };
    let dir = repo().join("packaging/kubernetes");
    let out = h.kubectl(&["apply", "--server-side", "-k", dir.to_str().unwrap()]);
    for applied in [
        "customresourcedefinition.apiextensions.k8s.io/workloadautoregistrations.runtime.onboarding.tetrate.io",
        "clusterrole.rbac.authorization.k8s.io/onboarding-endpoint",
        "deployment.apps/onboarding-endpoint",
        "service/onboarding-endpoint",
    ] {
        assert!(out.contains(applied), "{applied} not applied:\n{out}");
    }
    let d = h.kubectl_json(
        &[
            "-n",
            ENDPOINT_NS,
            "get",
            "deployment",
            "onboarding-endpoint",
        ],
        None,
    );
    assert_eq!(d["spec"]["replicas"], 2);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "the pod name is the instance"
    );
    assert!(
        d["spec"]["template"]["spec"]["initContainers"].is_null(),
        "the base runs with the endpoint's image alone"
    );

    // An overlay as docs/install.md shows it: the local-repository component and its image.
    let overlay = tempfile::tempdir().unwrap();
    // Kustomize takes a base only by a relative path: up to / from the overlay, then down.
    let up = "../".repeat(overlay.path().components().count() - 1);
    let base = format!("{up}{}", dir.display().to_string().trim_start_matches('/'));
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {base}\n\
             components:\n- {base}/components/local-repository\nimages:\n\
             - {{name: onboarding-repository, newName: registry.example/onboarding-repository, newTag: v1}}\n",
        ),
    )
    .unwrap();
    h.kubectl(&[
        "apply",
        "--server-side",
        "-k",
        overlay.path().to_str().unwrap(),
    ]);
    let d = h.kubectl_json(
        &[
            "-n",
            ENDPOINT_NS,
            "get",
            "deployment",
            "onboarding-endpoint",
        ],
        None,
    );
    let init = &d["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["name"], "repository");
    assert_eq!(init["image"], "registry.example/onboarding-repository:v1");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"], c["image"],
        "the component leaves the endpoint container as it was"
    );
}

/// All WARs in the workload namespace, as the API server has them.
fn wars(h: &KubeHarness) -> Vec<serde_json::Value> {
    let list = h.kubectl_json(&["-n", NS, "get", "war", "-o", "json"], None);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn entries(h: &KubeHarness) -> Vec<serde_json::Value> {
    let list = h.kubectl_json(&["-n", NS, "get", "workloadentry", "-o", "json"], None);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn connected(war: &serde_json::Value) -> Option<(String, String)> {
    let cond = war["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "AgentConnected")?;
    Some((
        cond["status"].as_str()?.to_string(),
        war["status"]["activeAgentConnection"]["connectedTo"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    ))
}

/// Every WAR has exactly one WorkloadEntry, owned by it (same name, the WAR's uid), each
/// identity has one WAR, and every entry validates against Istio's WorkloadEntry CRD schema
/// (testdata/schemas/istio). Returns the WARs' uids by name.
fn check_registrations(h: &KubeHarness, n: usize) -> std::collections::BTreeMap<String, String> {
    let wars = wars(h);
    let entries = entries(h);
    assert_eq!(wars.len(), n, "WARs: {wars:#?}");
    assert_eq!(entries.len(), n, "WorkloadEntries: {entries:#?}");
    let subjects: std::collections::BTreeSet<String> = wars
        .iter()
        .map(|w| w["spec"]["identity"]["jwt"]["subject"].to_string())
        .collect();
    assert_eq!(subjects.len(), n, "one WAR per identity");
    let uids: std::collections::BTreeMap<String, String> = wars
        .iter()
        .map(|w| {
            (
                w["metadata"]["name"].as_str().unwrap().to_string(),
                w["metadata"]["uid"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for we in &entries {
        let name = we["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            we["metadata"]["ownerReferences"][0]["uid"].as_str(),
            uids.get(name).map(String::as_str),
            "{we}"
        );
        let errors = crd_schema::validate_workload_entry(we);
        assert!(errors.is_empty(), "WorkloadEntry {name}: {errors:?}\n{we}");
    }
    uids
}

/// An OnboardingPolicy that lets the fleet of these tests (vm-0000 .. vm-0099) onboard.
fn allow_fleet(h: &KubeHarness) {
    let subjects: Vec<String> = (0..100).map(subject).collect();
    h.kubectl_in(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: authorization.onboarding.tetrate.io/v1alpha1
kind: OnboardingPolicy
metadata: {{name: allow-fleet, namespace: {NS}}}
spec:
  allow:
  - workloads:
    - jwt:
        issuer: {issuer}
        subjects: [{subjects}]
    onboardTo:
    - workloadGroupSelector: {{matchLabels: {{app: ratings}}}}
",
            issuer = endpoint::ISSUER,
            subjects = subjects.join(", ")
        )),
    );
}

fn subject(i: usize) -> String {
    format!("vm-{i:04}")
}

fn war_name(i: usize) -> String {
    format!("ratings-jwt-corp-{}", subject(i))
}

/// Two replicas (kube store, one API server, instances endpoint-a and endpoint-b) serve one
/// fleet: 50 onboardings at once, alternating between the replicas, and one identity
/// onboarding through both at the same moment. The 50 "agents" are threads making the
/// agent's calls (authorize + register) through the real HTTPS API with the test helpers of
/// support/endpoint.rs: 50 agent processes, each with its own root and sidecar stand-in,
/// are too heavy for the 2-core machines the suite runs on; the real agent against the kube
/// store is exercised by the other tests here.
#[test]
fn fifty_onboardings_through_two_replicas_give_fifty_wars_and_no_duplicate() {
    let Some(h) = cluster() else { return };
    allow_fleet(&h);
    let a = kube_endpoint(&h, Options::default(), "endpoint-a");
    let b = kube_endpoint(&h, Options::default(), "endpoint-b");
    assert_eq!(a.plane_uid, b.plane_uid, "the replicas share the plane");

    let n = 50;
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for i in 0..n {
            let ep = if i % 2 == 0 { &a } else { &b };
            s.spawn(move || onboard(ep, &subject(i)));
        }
    });
    let elapsed = started.elapsed();
    eprintln!(
        "kube store: {n} concurrent onboardings through 2 replicas in {:.2}s = {:.1} onboardings/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    let uids = check_registrations(&h, n);
    for i in 0..n {
        let war = war_json(&h, &war_name(i)).unwrap();
        let expected = if i % 2 == 0 {
            "endpoint-a"
        } else {
            "endpoint-b"
        };
        assert_eq!(
            connected(&war),
            Some(("True".into(), expected.into())),
            "{war}"
        );
    }

    // One identity through both replicas at once: both calls succeed, one WAR.
    let race = 99;
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| onboard(&a, &subject(race)));
        let tb = s.spawn(|| onboard(&b, &subject(race)));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert!(ra.1.is_object() && rb.1.is_object());
    let after = check_registrations(&h, n + 1);
    for (name, uid) in &uids {
        assert_eq!(after.get(name), Some(uid), "{name} kept its WAR");
    }
    assert!(after.contains_key(&war_name(race)));
}

/// Keep-alives (the agent's POST /v1/keepalive with its session token) for `tokens`, each
/// through the replica it names; panics on any answer but 200.
fn keep_alive(tokens: &[(String, usize)], eps: &[&Endpoint]) {
    for (token, ep) in tokens {
        let (s, body) = eps[*ep].call("POST", "/v1/keepalive", Some(token), None);
        assert_eq!(s, 200, "keep-alive through replica {ep}: {body}");
    }
}

/// One replica killed (SIGKILL) while its agents keep alive: they move to the other
/// replica, which takes their WARs over (`connectedTo` changes), with nothing lost or
/// duplicated; then both replicas restart and again nothing is lost. Agents are threads of
/// API calls as above: an agent names one endpoint address, and moving it is what a
/// Service in front of the replicas does, which this test has no stand-in for.
#[test]
fn killed_replica_hands_its_agents_over_and_restarts_lose_nothing() {
    let Some(h) = cluster() else { return };
    allow_fleet(&h);
    let opts = || Options {
        keep_alive_interval: "1s",
        keep_alive_timeout: "3s",
        grace: "5m",
        ..Options::default()
    };
    let mut a = kube_endpoint(&h, opts(), "endpoint-a");
    let mut b = kube_endpoint(&h, opts(), "endpoint-b");
    let n = 20;
    let tokens: Vec<(String, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let ep = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || (onboard(ep, &subject(i)).0, i % 2))
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let uids = check_registrations(&h, n);

    // Replica a dies under load; b keeps answering its own agents throughout.
    keep_alive(&tokens, &[&a, &b]);
    a.kill();
    let moved: Vec<(String, usize)> = tokens.iter().map(|(t, _)| (t.clone(), 1)).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        keep_alive(&moved, &[&a, &b]);
        let all_b = wars(&h)
            .iter()
            .all(|w| connected(w) == Some(("True".into(), "endpoint-b".into())));
        if all_b {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "WARs not taken over by endpoint-b: {:#?}",
            wars(&h)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        check_registrations(&h, n),
        uids,
        "nothing lost or duplicated"
    );
    // Past a keep-alive timeout of b's own, still all connected through b.
    for _ in 0..8 {
        keep_alive(&moved, &[&a, &b]);
        std::thread::sleep(Duration::from_millis(500));
    }
    for w in wars(&h) {
        assert_eq!(
            connected(&w),
            Some(("True".into(), "endpoint-b".into())),
            "{w}"
        );
    }

    // Both replicas restarted: the registrations are all still there, the same objects,
    // and the agents carry on through either replica with their session tokens.
    a.restart();
    b.restart();
    for _ in 0..8 {
        keep_alive(&tokens, &[&a, &b]);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        check_registrations(&h, n),
        uids,
        "nothing lost after both restarted"
    );
    for w in wars(&h) {
        assert_eq!(connected(&w).map(|c| c.0), Some("True".into()), "{w}");
    }
}

/// Grace-period cleanup through the kube store with the real agent: killed (SIGKILL, no
/// unregister), its WAR shows AGENT CONNECTED False, then the WAR and its WorkloadEntry go
/// after the grace period. Then a replica dies together with its agent: the other replica
/// (whose Lease shows it alive while the dead one's lapses) does the same for that WAR.
#[test]
fn grace_period_cleanup_through_the_kube_store_even_when_the_replica_died_too() {
    let Some(h) = cluster() else { return };
    let opts = || Options {
        keep_alive_interval: "1s",
        keep_alive_timeout: "3s",
        grace: "6s",
        ..Options::default()
    };
    let mut a = kube_endpoint(&h, opts(), "endpoint-a");
    let b = kube_endpoint(&h, opts(), "endpoint-b");
    let column = |name: &str| {
        let out = h.kubectl_output(&["-n", NS, "get", "war", name, "--no-headers"], None);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .map(str::to_string)
    };

    let mut agent = Agent::builder(&a).subject("vm-0001").start();
    agent.wait_phase("connected", Duration::from_secs(60));
    assert_eq!(column(WAR).as_deref(), Some("True"));
    agent.kill9();
    wait_for("AGENT CONNECTED False", Duration::from_secs(30), || {
        column(WAR).as_deref() == Some("False")
    });
    wait_for(
        "the WAR and its WorkloadEntry gone",
        Duration::from_secs(60),
        || {
            war_json(&h, WAR).is_none()
                && !h
                    .kubectl_output(&["-n", NS, "get", "workloadentry", WAR], None)
                    .status
                    .success()
        },
    );

    // The replica and its agent die together: only endpoint-b is left to judge.
    // (An agent of API calls: its keep-alives stop when the replica dies, as a real agent's
    // would reach no one.)
    let (token, _) = onboard(&a, "vm-0002");
    let other = "ratings-jwt-corp-vm-0002";
    wait_for(
        "vm-0002 connected through endpoint-a",
        Duration::from_secs(30),
        || {
            keep_alive(&[(token.clone(), 0)], &[&a]);
            war_json(&h, other).as_ref().and_then(connected)
                == Some(("True".into(), "endpoint-a".into()))
        },
    );
    keep_alive(&[(token, 0)], &[&a]);
    a.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while column(other).as_deref() != Some("False") {
        assert!(
            std::time::Instant::now() < deadline,
            "endpoint-b did not mark the dead replica's agent disconnected; leases:\n{}\nendpoint-b:\n{}",
            h.kubectl(&["-n", ENDPOINT_NS, "get", "lease", "-o", "yaml"]),
            b.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_for(
        "endpoint-b deletes it after the grace period",
        Duration::from_secs(60),
        || {
            war_json(&h, other).is_none()
                && !h
                    .kubectl_output(&["-n", NS, "get", "workloadentry", other], None)
                    .status
                    .success()
        },
    );
    let leases = h.kubectl(&["-n", ENDPOINT_NS, "get", "lease", "-o", "name"]);
    assert!(
        leases.contains("onboarding-endpoint-endpoint-a")
            && leases.contains("onboarding-endpoint-endpoint-b"),
        "{leases}"
    );
    drop(b);
}

/// Every OnboardingPolicy or WorkloadAutoRegistration shown in README.md and docs/*.md, as a
/// reader would copy it, is accepted by the real API server under the generated CRDs (a
/// server-side dry run: schema, required fields, enums). An example the CRDs would refuse is
/// an example nobody can use.
#[test]
fn every_example_object_in_the_docs_is_accepted_by_the_api_server() {
    let Some(h) = cluster() else {
        return;
    };
    let mut docs = vec![repo().join("README.md")];
    let mut in_docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    in_docs.sort();
    docs.extend(in_docs);
    let ours = [
        "authorization.onboarding.tetrate.io/",
        "runtime.onboarding.tetrate.io/",
    ];
    let mut checked = Vec::new();
    for doc in &docs {
        let text = read(doc);
        let mut block: Option<String> = None;
        for line in text.lines() {
            match (&mut block, line.trim_start()) {
                (None, l) if l.starts_with("```yaml") => block = Some(String::new()),
                (Some(b), l) if l.starts_with("```") => {
                    for part in b.split("\n---") {
                        let Ok(value) = serde_saphyr::from_str::<serde_json::Value>(part) else {
                            continue;
                        };
                        let api = value["apiVersion"].as_str().unwrap_or_default();
                        if !ours.iter().any(|g| api.starts_with(g)) {
                            continue;
                        }
                        let mut obj = value.clone();
                        let ns = obj["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or(NS)
                            .to_string();
                        obj["metadata"]["namespace"] = serde_json::Value::String(ns.clone());
                        // The namespace an example names may not exist yet in this cluster.
                        let _ = h.kubectl_output(&["create", "namespace", &ns], None);
                        let out = h.kubectl_output(
                            &["apply", "--dry-run=server", "-f", "-"],
                            Some(&obj.to_string()),
                        );
                        assert!(
                            out.status.success(),
                            "{}: this example is refused by the API server: {}\n{part}",
                            doc.display(),
                            String::from_utf8_lossy(&out.stderr)
                        );
                        checked.push(format!("{} {}", doc.display(), obj["kind"]));
                    }
                    block = None;
                }
                (Some(b), _) => {
                    b.push_str(line);
                    b.push('\n');
                }
                (None, _) => {}
            }
        }
    }
    assert!(
        checked.iter().any(|c| c.contains("OnboardingPolicy")),
        "no OnboardingPolicy example found in the docs: {checked:?}"
    );
    eprintln!("accepted by the API server: {checked:#?}");
}
