//! The real Kubernetes control plane the Kubernetes-store suites run on: kube-apiserver
//! and etcd built from Go modules (tests/kube-harness/), driven with the real kubectl.
//! These tests prove the parts later suites rely on: the version, RBAC-enforcing admin
//! access, and the TokenRequest / TokenReview APIs with the `istio-ca` audience.
//! docs/testing-kubernetes.md.

#[path = "support/kube.rs"]
mod kube;

use kube::KubeHarness;

const K8S_VERSION: &str = "v1.37.2";

fn token_review(h: &KubeHarness, token: &str, audience: &str) -> serde_json::Value {
    let review = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    });
    h.kubectl_json(&["create", "-f", "-"], Some(&review.to_string()))
}

#[test]
fn kube_apiserver_serves_version_token_request_and_token_review() {
    let Some(h) = KubeHarness::start() else {
        return;
    };

    // Both sides report the version the binaries were built for (the ldflags work).
    let v = h.kubectl_json(&["version"], None);
    assert_eq!(v["clientVersion"]["gitVersion"], K8S_VERSION, "{v}");
    assert_eq!(v["serverVersion"]["gitVersion"], K8S_VERSION, "{v}");

    // RBAC is on: an unknown user (impersonated by the admin) is refused.
    let denied = h.kubectl_output(&["--as=nobody", "get", "namespaces"], None);
    assert!(!denied.status.success(), "RBAC should refuse user nobody");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    // No controller-manager: the test creates the ServiceAccount itself.
    h.kubectl(&["create", "namespace", "vm-ns"]);
    h.kubectl(&["-n", "vm-ns", "create", "serviceaccount", "vm-sa"]);

    let token = h.kubectl(&[
        "-n",
        "vm-ns",
        "create",
        "token",
        "vm-sa",
        "--audience",
        "istio-ca",
        "--duration",
        "10m",
    ]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");

    let review = token_review(&h, token, "istio-ca");
    let status = &review["status"];
    assert_eq!(status["authenticated"], true, "{review}");
    assert_eq!(
        status["user"]["username"], "system:serviceaccount:vm-ns:vm-sa",
        "{review}"
    );
    assert!(
        status["user"]["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "system:serviceaccounts")),
        "istiod requires the caller in system:serviceaccounts: {review}"
    );
    assert_eq!(
        status["audiences"],
        serde_json::json!(["istio-ca"]),
        "{review}"
    );

    // The audience is checked: the same token is refused for another audience.
    let wrong = token_review(&h, token, "some-other-audience");
    assert_ne!(wrong["status"]["authenticated"], true, "{wrong}");

    // The token's own claims: issuer and a lifetime of 10 minutes.
    let payload = token.split('.').nth(1).expect("JWT payload");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .expect("base64url payload"),
    )
    .expect("JSON claims");
    assert_eq!(claims["iss"], h.ready.service_account_issuer.as_str());
    assert_eq!(claims["aud"], serde_json::json!(["istio-ca"]));
    let lifetime = claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0);
    assert_eq!(lifetime, 600, "{claims}");
}

#[test]
fn harness_stops_apiserver_when_its_stdin_closes() {
    let Some(h) = KubeHarness::start() else {
        return;
    };
    let pid = h.ready.apiserver_pid;
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "apiserver pid {pid} not running"
    );
    drop(h);
    // Dropping closes the harness's stdin: it must take the apiserver down with it (its
    // zombie would keep /proc/PID until the harness, which reaps it, has exited too).
    KubeHarness::wait_for(
        "kube-apiserver to exit after the harness stopped",
        std::time::Duration::from_secs(20),
        || (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(()),
    );
}
