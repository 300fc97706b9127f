//! The endpoint end to end: the real binary over real TLS on loopback, JWT credentials signed
//! with the test keys, the embedded file store in a temporary directory.

#[path = "support/crd_schema.rs"]
mod crd_schema;
#[path = "support/endpoint.rs"]
mod endpoint;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use endpoint::*;
use serde_json::json;

const WAR: &str = "ratings-jwt-corp-vm-0001";

fn file<'a>(reg: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    reg["bootstrap"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("no {path} in {reg}"))
}

#[test]
fn jwt_onboarding_yields_war_schema_valid_entry_and_files() {
    let ep = Endpoint::start(Options::default());
    let (s, d) = ep.call("GET", "/v1/discovery", None, None);
    assert_eq!(s, 200);
    assert_eq!(d["planeUid"], ep.plane_uid.as_str());

    let (_token, reg) = onboard(&ep, "vm-0001");
    assert_eq!(reg["registration"]["name"], WAR);
    assert_eq!(reg["reused"], false);

    // The WAR: identity, registration, snapshot, connected.
    let war: serde_json::Value = serde_saphyr::from_str(&read(&ep.war_path(WAR))).unwrap();
    assert_eq!(war["kind"], "WorkloadAutoRegistration");
    assert_eq!(war["spec"]["identity"]["jwt"]["subject"], "vm-0001");
    assert_eq!(
        war["spec"]["identity"]["jwt"]["attributes"]["region"],
        "us-east"
    );
    assert_eq!(
        war["spec"]["workloadGroup"]["spec"]["template"]["serviceAccount"],
        "ratings-vm"
    );
    assert_eq!(war["status"]["conditions"][0]["type"], "AgentConnected");
    assert_eq!(war["status"]["conditions"][0]["status"], "True");
    assert_eq!(
        war["status"]["activeAgentConnection"]["connectedTo"],
        "endpoint-test"
    );
    assert_eq!(
        war["metadata"]["ownerReferences"][0]["kind"],
        "WorkloadGroup"
    );

    // The WorkloadEntry validates against Istio's CRD schema and is owned by the WAR.
    let we: serde_json::Value = serde_saphyr::from_str(&read(&ep.we_path(WAR))).unwrap();
    let errors = crd_schema::validate_workload_entry(&we);
    assert!(errors.is_empty(), "{errors:?}\n{we}");
    assert_eq!(we["spec"]["address"], "10.0.0.7");
    assert_eq!(we["spec"]["labels"]["app"], "ratings");
    assert_eq!(we["spec"]["labels"]["version"], "v5");
    assert_eq!(
        we["metadata"]["ownerReferences"][0]["kind"],
        "WorkloadAutoRegistration"
    );
    assert_eq!(
        we["metadata"]["ownerReferences"][0]["uid"],
        war["metadata"]["uid"]
    );

    // The files, from the snapshot, without iptables.
    let env = file(&reg, "/var/lib/istio/envoy/cluster.env")["content"]
        .as_str()
        .unwrap();
    for line in [
        "SERVICE_ACCOUNT='ratings-vm'",
        "ISTIO_META_INTERCEPTION_MODE='NONE'",
        "ISTIO_CUSTOM_IP_TABLES='true'",
        "CA_ADDR='istiod.istio-system.svc:15012'",
        "TRUST_DOMAIN='cluster.local'",
        "ISTIO_SVC_IP='10.0.0.7'",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing from\n{env}");
    }
    let token = file(&reg, "/var/run/secrets/tokens/istio-token");
    assert_eq!(
        token["content"].as_str().unwrap().trim(),
        "istio-token-for-bookinfo-ratings-vm"
    );
    assert_eq!(token["mode"], 0o600);
    assert!(
        file(&reg, "/etc/certs/root-cert.pem")["content"]
            .as_str()
            .unwrap()
            .contains("TESTROOT")
    );
    let hosts = &reg["bootstrap"]["hosts"];
    assert_eq!(hosts[0]["ip"], "10.20.30.40", "{hosts}");

    // `get war -A` prints the kubectl table.
    let (ok, out, err) = ep.cli(&["get", "war", "-A"]);
    assert!(ok, "{err}");
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("NAMESPACE   NAME"), "{out}");
    assert!(header.contains("AGENT CONNECTED   AGE"), "{out}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], &["bookinfo", WAR, "True"], "{out}");
    let (ok, out, _) = ep.cli(&["describe", "war", WAR, "-n", "bookinfo"]);
    assert!(ok && out.contains("Subject:  vm-0001"), "{out}");

    // Metrics count what happened.
    let agent = ep.client();
    let mut m = agent.get(format!("{}/metrics", ep.url)).call().unwrap();
    let metrics = m.body_mut().read_to_string().unwrap();
    assert!(
        metrics.contains(r#"onboarding_authorizations_total{outcome="allowed",platform="jwt"} 1"#),
        "{metrics}"
    );
}

#[test]
fn denied_without_policy_and_with_non_matching_policy() {
    let ep = Endpoint::start(Options::default());
    // A subject the policy does not list.
    let (s, e) = authorize(&ep, &vm_jwt("intruder", &ep.plane_uid));
    assert_eq!((s, e["code"].as_str()), (403, Some("policy_denied")), "{e}");
    assert!(
        !e["message"].as_str().unwrap().contains("vm-0001"),
        "no policy details leak: {e}"
    );
    // A namespace with a group but no policy at all.
    std::fs::write(
        ep.path("config/other.yaml"),
        endpoint::WORKLOAD_GROUP.replace("namespace: bookinfo", "namespace: other"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, e) = ep.call(
            "POST",
            "/v1/authorize",
            None,
            Some(
                json!({"workloadGroup": {"namespace": "other", "name": "ratings"},
                        "credential": {"type": "jwt", "token": vm_jwt("vm-0001", &ep.plane_uid)}}),
            ),
        );
        assert_eq!((s, e["code"].as_str()), (403, Some("policy_denied")), "{e}");
        if ep.log.lock().unwrap().contains("WorkloadGroup's namespace") || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = ep.log.lock().unwrap().clone();
    assert!(log.contains("onboarding denied"), "{log}");
    // The denial names the value compared and what was allowed (tests/endpoint_cli.rs
    // checks the whole line).
    assert!(
        log.replace("\\\"", "\"")
            .contains("jwt.subjects: \"intruder\" not in [\"vm-0001\""),
        "{log}"
    );
}

#[test]
fn bad_credentials_each_get_their_own_error() {
    let ep = Endpoint::start(Options::default());
    let uid = ep.plane_uid.clone();
    let t = now();
    let cases = [
        (
            "wrong issuer",
            sign_jwt(
                "trusted-rs256",
                None,
                json!({"iss": "https://evil.example", "sub": "vm-0001", "aud": uid, "exp": t + 600}),
            ),
            "unknown_issuer",
        ),
        (
            "wrong audience",
            sign_jwt(
                "trusted-rs256",
                None,
                json!({"iss": ISSUER, "sub": "vm-0001", "aud": "another-plane", "exp": t + 600}),
            ),
            "wrong_audience",
        ),
        (
            "expired",
            sign_jwt(
                "trusted-es256",
                None,
                json!({"iss": ISSUER, "sub": "vm-0001", "aud": uid, "exp": t - 3600}),
            ),
            "credential_expired",
        ),
        (
            "forged",
            sign_jwt(
                "attacker-rs256",
                Some("trusted-rs256"),
                json!({"iss": ISSUER, "sub": "vm-0001", "aud": uid, "exp": t + 600}),
            ),
            "invalid_signature",
        ),
        ("garbage", "not.a.jwt".to_string(), "malformed_credential"),
    ];
    for (what, jwt, code) in cases {
        let (s, e) = authorize(&ep, &jwt);
        assert_eq!(e["code"], code, "{what}: {e}");
        assert!((400..500).contains(&s), "{what}: {s}");
    }
    // ES256 works as well as RS256.
    let es = sign_jwt(
        "trusted-es256",
        None,
        json!({"iss": ISSUER, "sub": "vm-0002", "aud": uid, "exp": t + 600}),
    );
    assert_eq!(authorize(&ep, &es).0, 200);
    // Session calls without or with a bad token.
    let (s, e) = ep.call("POST", "/v1/keepalive", None, None);
    assert_eq!((s, e["code"].as_str()), (401, Some("session_invalid")));
    let (s, e) = ep.call("POST", "/v1/keepalive", Some("abc.def.ghi"), None);
    assert_eq!((s, e["code"].as_str()), (401, Some("session_invalid")));
    // Oversized and malformed bodies.
    // The endpoint answers 413 from the Content-Length alone and closes without reading
    // the body, so the client may instead see its write fail: either way nothing is read.
    let big = "x".repeat(16 * 1024);
    match ep
        .client()
        .post(format!("{}/v1/authorize", ep.url))
        .send_json(json!({"pad": big}))
    {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let e: serde_json::Value = resp.body_mut().read_json().unwrap();
            assert_eq!(
                (status, e["code"].as_str()),
                (413, Some("payload_too_large")),
                "{e}"
            );
        }
        Err(ureq::Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
        Err(e) => panic!("oversized body: {e}"),
    }
    let (s, e) = ep.call(
        "POST",
        "/v1/authorize",
        None,
        Some(json!({"workloadGroup": 1})),
    );
    assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")), "{e}");
}

#[test]
fn same_identity_reuses_its_war_and_snapshot_is_isolated() {
    let ep = Endpoint::start(Options::default());
    let (_t, first) = onboard(&ep, "vm-0001");
    let uid_before = read(&ep.war_path(WAR));

    // The group changes: existing registrations keep their snapshot.
    let changed = endpoint::WORKLOAD_GROUP
        .replace("serviceAccount: ratings-vm", "serviceAccount: ratings-v2");
    std::fs::write(ep.path("config/workloadgroup.yaml"), changed).unwrap();
    std::thread::sleep(Duration::from_millis(800)); // the watcher reloads
    let (token, again) = onboard(&ep, "vm-0001");
    assert_eq!(again["reused"], true);
    assert_eq!(again["registration"], first["registration"]);
    let env = |r: &serde_json::Value| {
        file(r, "/var/lib/istio/envoy/cluster.env")["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(env(&again), env(&first), "snapshot, not the live group");
    let war: serde_json::Value = serde_saphyr::from_str(&read(&ep.war_path(WAR))).unwrap();
    let before: serde_json::Value = serde_saphyr::from_str(&uid_before).unwrap();
    assert_eq!(war["metadata"]["uid"], before["metadata"]["uid"]);
    let (s, b) = ep.call("GET", "/v1/bootstrap", Some(&token), None);
    assert_eq!(s, 200);
    assert!(b["files"].to_string().contains("ratings-vm"));

    // Deleting the WAR by hand: the next keep-alive says so, and onboarding again takes a
    // new snapshot.
    let (ok, out, err) = ep.cli(&["delete", "war", WAR, "-n", "bookinfo"]);
    assert!(ok, "{out}{err}");
    assert!(!ep.we_path(WAR).exists(), "WorkloadEntry goes with its WAR");
    let (s, e) = ep.call("POST", "/v1/keepalive", Some(&token), None);
    assert_eq!(
        (s, e["code"].as_str()),
        (410, Some("registration_gone")),
        "{e}"
    );
    let (_t, fresh) = onboard(&ep, "vm-0001");
    assert_eq!(fresh["reused"], false);
    assert!(
        env(&fresh).contains("SERVICE_ACCOUNT='ratings-v2'"),
        "{}",
        env(&fresh)
    );
}

#[test]
fn disconnected_registrations_are_deleted_after_the_grace_period() {
    let ep = Endpoint::start(Options {
        grace: "2s",
        keep_alive_interval: "300ms",
        keep_alive_timeout: "1s",
        ..Options::default()
    });
    let (token, _) = onboard(&ep, "vm-0001");
    // While keep-alives flow, the WAR stays connected past timeout + grace.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        let (s, _) = ep.call("POST", "/v1/keepalive", Some(&token), None);
        assert_eq!(s, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(ep.war_path(WAR).exists());
    // Silence: disconnected after ~1s, deleted ~2s later, WorkloadEntry too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_false = false;
    while ep.war_path(WAR).exists() && Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(ep.war_path(WAR)) {
            saw_false |= text.contains("status: 'False'")
                || text.contains("status: \"False\"")
                || text.contains("status: False");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_false, "AgentConnected went False before deletion");
    assert!(!ep.war_path(WAR).exists(), "WAR deleted after grace");
    assert!(!ep.we_path(WAR).exists(), "WorkloadEntry deleted with it");
    let (s, e) = ep.call("POST", "/v1/keepalive", Some(&token), None);
    assert_eq!((s, e["code"].as_str()), (410, Some("registration_gone")));
}

#[test]
fn restart_loses_no_registration_and_sessions_survive() {
    let mut ep = Endpoint::start(Options::default());
    let (token, _) = onboard(&ep, "vm-0001");
    let (_t2, _) = onboard(&ep, "vm-0002");
    let uid = ep.plane_uid.clone();
    ep.restart();
    assert_eq!(ep.plane_uid, uid, "plane UID persists");
    assert!(ep.war_path(WAR).exists());
    assert!(ep.war_path("ratings-jwt-corp-vm-0002").exists());
    // The signing key persisted too: the old session token still works.
    let (s, k) = ep.call("POST", "/v1/keepalive", Some(&token), None);
    assert_eq!(s, 200, "{k}");
    let (ok, out, _) = ep.cli(&["get", "war", "-n", "bookinfo"]);
    assert!(ok && out.lines().count() == 3, "{out}");
    assert!(
        out.starts_with("NAME"),
        "no NAMESPACE column without -A: {out}"
    );
}

#[test]
fn unregister_deletes_and_returns_the_propagation_delay() {
    let ep = Endpoint::start(Options::default());
    let (token, _) = onboard(&ep, "vm-0003");
    let name = "ratings-jwt-corp-vm-0003";
    let (s, u) = ep.call("POST", "/v1/unregister", Some(&token), None);
    assert_eq!(s, 200);
    assert_eq!(u["propagationDelaySeconds"], 1.0);
    assert!(!ep.war_path(name).exists() && !ep.we_path(name).exists());
}

#[test]
fn config_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("endpoint.yaml");
    std::fs::write(
        &cfg,
        "store:\n  file: {configDir: c, stateDir: s}\nregistration: {gracePeriod: 5 minutes}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("endpoint.yaml:3") && err.contains("duration"),
        "{err}"
    );
    // No certificate and no --dev: refuse to serve.
    std::fs::create_dir_all(dir.path().join("c")).unwrap();
    std::fs::write(
        &cfg,
        "listen: 127.0.0.1:0\nstore:\n  file: {configDir: c, stateDir: s}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--dev") && err.contains("tls.certFile"),
        "{err}"
    );
    // The state dir got the signing key with 0600.
    let mode = std::fs::metadata(dir.path().join("s/session-signing-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Authorizes `sub` and returns the session token (no register).
fn session_token(ep: &Endpoint, sub: &str) -> String {
    let (s, a) = authorize(ep, &vm_jwt(sub, &ep.plane_uid));
    assert_eq!(s, 200, "authorize: {a}");
    a["token"].as_str().unwrap().to_string()
}

fn register(ep: &Endpoint, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    ep.call("POST", "/v1/register", Some(token), Some(body))
}

/// Waits until the endpoint has reloaded a changed config directory: `ready` is asked
/// until it holds (or 10s pass).
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_old_session_token_cannot_outlive_its_war_or_its_policy() {
    let ep = Endpoint::start(Options::default());
    let code = |r: &(u16, serde_json::Value)| (r.0, r.1["code"].as_str().unwrap_or("").to_string());

    // Token A made the WAR; token B was issued while it existed (a renewal).
    let (a, _) = onboard(&ep, "vm-0001");
    let b = session_token(&ep, "vm-0001");

    // Deleting the WAR ends both sessions: neither can bring it back, nor keep it alive.
    let (ok, out, err) = ep.cli(&["delete", "war", WAR, "-n", NS]);
    assert!(ok, "{out}{err}");
    for t in [&a, &b] {
        let r = register(&ep, t, registration_body());
        assert_eq!(code(&r), (410, "registration_gone".into()), "{}", r.1);
        assert!(!ep.war_path(WAR).exists(), "an old token recreated the WAR");
        assert!(!ep.we_path(WAR).exists());
        for (m, path) in [("POST", "/v1/keepalive"), ("GET", "/v1/bootstrap")] {
            let r = ep.call(m, path, Some(t), None);
            assert_eq!(
                code(&r),
                (410, "registration_gone".into()),
                "{path}: {}",
                r.1
            );
        }
    }
    // Onboarding again with a fresh credential is what deleting a WAR asks for, and works.
    let (c, fresh) = onboard(&ep, "vm-0001");
    assert_eq!(fresh["reused"], false);
    // A session for another VM that authorized but has not registered yet.
    let d = session_token(&ep, "vm-0002");

    // The operator takes vm-0001 and vm-0002 out of the policy.
    std::fs::write(
        ep.path("config/policy.yaml"),
        endpoint::POLICY.replace("vm-0001, vm-0002, ", ""),
    )
    .unwrap();
    wait_for("the policy to deny vm-0001", || {
        authorize(&ep, &vm_jwt("vm-0001", &ep.plane_uid)).0 == 403
    });

    // Every call that creates or extends something refuses the revoked identity at once,
    // with unexpired tokens.
    let revoked = (403, "session_revoked".to_string());
    let r = register(&ep, &c, registration_body());
    assert_eq!(code(&r), revoked, "{}", r.1);
    let msg = r.1["message"].as_str().unwrap();
    assert!(
        msg.contains("OnboardingPolicy") && !msg.contains("vm-0003"),
        "{msg}"
    );
    for (m, path) in [("POST", "/v1/keepalive"), ("GET", "/v1/bootstrap")] {
        let r = ep.call(m, path, Some(&c), None);
        assert_eq!(code(&r), revoked, "{path}: {}", r.1);
    }
    let r = register(&ep, &d, registration_body());
    assert_eq!(code(&r), revoked, "{}", r.1);
    assert!(!ep.war_path("ratings-jwt-corp-vm-0002").exists());
    // The defect as found: WAR deleted and policy changed, then register with the old token.
    let (ok, out, err) = ep.cli(&["delete", "war", WAR, "-n", NS]);
    assert!(ok, "{out}{err}");
    let r = register(&ep, &c, registration_body());
    assert_eq!(code(&r), revoked, "{}", r.1);
    assert!(
        !ep.war_path(WAR).exists(),
        "a revoked session recreated the WAR"
    );
    // An identity still allowed is untouched.
    let (_e, other) = onboard(&ep, "vm-0003");
    assert_eq!(other["reused"], false);
    ep.wait_log("session revoked");
}

#[test]
fn names_from_manifests_and_agents_cannot_leave_the_state_directory() {
    let evil_group = endpoint::WORKLOAD_GROUP.replace("namespace: bookinfo", "namespace: ../../x");
    let evil_policy = endpoint::POLICY.replace("namespace: bookinfo", "namespace: ../../x");
    let ep = Endpoint::start_with(
        Options::default(),
        Extra {
            manifests: vec![
                ("evil-group.yaml".into(), evil_group),
                ("evil-policy.yaml".into(), evil_policy),
            ],
            ..Extra::default()
        },
    );
    wait_for("the refusal in the log", || {
        let log = ep.log.lock().unwrap();
        log.contains("evil-group.yaml") && log.contains("evil-policy.yaml")
    });
    let log = ep.log.lock().unwrap().clone();
    assert!(
        log.contains(r#"WorkloadGroup \"ratings\" in namespace \"../../x\" is refused"#)
            || log.contains(r#"WorkloadGroup "ratings" in namespace "../../x" is refused"#),
        "{log}"
    );
    for ns in ["../../x", "..", "a/b", "Bookinfo", ""] {
        let (s, e) = ep.call(
            "POST",
            "/v1/authorize",
            None,
            Some(
                json!({"workloadGroup": {"namespace": ns, "name": "ratings"},
                        "credential": {"type": "jwt", "token": vm_jwt("vm-0001", &ep.plane_uid)}}),
            ),
        );
        assert_eq!(
            (s, e["code"].as_str()),
            (400, Some("bad_request")),
            "{ns:?}: {e}"
        );
        assert!(e["message"].as_str().unwrap().contains("namespace"), "{e}");
    }
    let (s, e) = ep.call(
        "POST",
        "/v1/authorize",
        None,
        Some(
            json!({"workloadGroup": {"namespace": NS, "name": "../ratings"},
                    "credential": {"type": "jwt", "token": vm_jwt("vm-0001", &ep.plane_uid)}}),
        ),
    );
    assert_eq!((s, e["code"].as_str()), (400, Some("bad_request")), "{e}");
    // The valid manifests next to the bad ones still work.
    onboard(&ep, "vm-0001");
    // Nothing was written outside the state directory's own layout.
    let mut found = Vec::new();
    let mut stack = vec![ep.dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p.strip_prefix(ep.dir.path()).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    for f in &found {
        assert!(
            f.starts_with("config/")
                || f.starts_with("state/")
                || ["endpoint.yaml", "tls.crt", "tls.key", "ca.pem"].contains(&f.as_str()),
            "unexpected file {f} in {found:?}"
        );
        assert!(!f.contains("x/"), "{f}");
    }
    let wars: Vec<_> = found
        .iter()
        .filter(|f| f.starts_with("state/workloadautoregistrations/"))
        .collect();
    assert_eq!(
        wars,
        [&format!("state/workloadautoregistrations/{NS}/{WAR}.yaml")]
    );
}

#[test]
fn registrations_the_mesh_cannot_use_are_refused() {
    let mut ep = Endpoint::start(Options::default());
    let token = session_token(&ep, "vm-0001");
    let body = |ip: &str, labels: serde_json::Value| {
        json!({"registration": {
            "agent": {"version": "0.1.0"},
            "sidecar": {"istio": {"version": "1.24.0"}},
            "host": {"addresses": [{"ip": ip, "type": "VPC"}]},
            "workload": {"labels": labels}}})
    };
    for (labels, named) in [
        (json!({"my label": "x"}), "my label"),
        (json!({"-lead": "x"}), "-lead"),
        (json!({"version": "v5\nINJECTED=1"}), "version"),
        (json!({"version": "$(touch /tmp/p)"}), "version"),
        (json!({"version": "has space"}), "version"),
    ] {
        let (s, e) = register(&ep, &token, body("10.0.0.7", labels.clone()));
        assert_eq!(
            (s, e["code"].as_str()),
            (400, Some("invalid_registration")),
            "{labels}: {e}"
        );
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("label {:?}", named)),
            "{labels}: the message names the label: {msg}"
        );
        assert!(!ep.war_path(WAR).exists() && !ep.we_path(WAR).exists());
    }
    for ip in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
        let (s, e) = register(&ep, &token, body(ip, json!({})));
        assert_eq!(
            (s, e["code"].as_str()),
            (400, Some("invalid_registration")),
            "{ip}: {e}"
        );
        assert!(e["message"].as_str().unwrap().contains(ip), "{e}");
        assert!(!ep.war_path(WAR).exists());
    }
    // The test endpoint allows loopback (its agents run on this host).
    let (s, e) = register(&ep, &token, body("127.0.0.1", json!({"version": "v5"})));
    assert_eq!(s, 200, "{e}");
    let we = read(&ep.we_path(WAR));
    assert!(we.contains("127.0.0.1"), "{we}");

    // By default an endpoint refuses it, and says which setting would allow it.
    ep.reconfigure(|t| {
        t.replace(
            "allowLoopbackAddresses: true",
            "allowLoopbackAddresses: false",
        )
    });
    let token = session_token(&ep, "vm-0001");
    for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        let (s, e) = register(&ep, &token, body(ip, json!({})));
        assert_eq!(
            (s, e["code"].as_str()),
            (400, Some("invalid_registration")),
            "{ip}: {e}"
        );
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("registration.allowLoopbackAddresses"),
            "{e}"
        );
    }
    let (s, e) = register(&ep, &token, body("10.0.0.7", json!({"version": "v6"})));
    assert_eq!(s, 200, "{e}");
}

#[test]
fn a_registration_that_cannot_be_written_whole_is_absent_and_answered_503() {
    let ep = Endpoint::start(Options::default());
    let token = session_token(&ep, "vm-0001");
    // The WorkloadEntry cannot be written: its namespace directory is a file (this works
    // for root too, unlike permissions).
    let blocker = ep.path(&format!("state/workloadentries/{NS}"));
    std::fs::write(&blocker, b"in the way").unwrap();
    let (s, e, headers) = ep.call_with_headers(
        "POST",
        "/v1/register",
        Some(&token),
        Some(registration_body()),
    );
    assert_eq!((s, e["code"].as_str()), (503, Some("unavailable")), "{e}");
    let retry = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|r| r > 0), "{headers:?}");
    assert!(
        !ep.war_path(WAR).exists(),
        "no WAR without its WorkloadEntry"
    );
    let (ok, out, err) = ep.cli(&["get", "war", "-A"]);
    assert!(
        !out.contains(WAR),
        "get war lists a half registration: {out}{err} ({ok})"
    );
    // Once the store works again, the same session registers whole.
    std::fs::remove_file(&blocker).unwrap();
    let (s, r) = register(&ep, &token, registration_body());
    assert_eq!(s, 200, "{r}");
    assert!(ep.war_path(WAR).exists() && ep.we_path(WAR).exists());
}

#[test]
fn start_up_removes_crash_leftovers_and_completes_registrations() {
    let mut ep = Endpoint::start(Options::default());
    onboard(&ep, "vm-0001");
    let entry = read(&ep.we_path(WAR));
    ep.kill();
    // What a crash can leave: temporary files of interrupted writes, a WAR whose
    // WorkloadEntry was never written, a WorkloadEntry whose WAR was never written.
    let temps = [
        "state/.plane-uid.tmp.4242.0".to_string(),
        format!("state/workloadautoregistrations/{NS}/.{WAR}.yaml.tmp.4242.1"),
        format!("state/workloadentries/{NS}/.{WAR}.yaml.tmp.4242.2"),
    ];
    for t in &temps {
        std::fs::write(ep.path(t), b"half written").unwrap();
    }
    std::fs::remove_file(ep.we_path(WAR)).unwrap();
    let orphan = ep.we_path("ratings-jwt-corp-vm-0009");
    std::fs::write(&orphan, entry.replace(WAR, "ratings-jwt-corp-vm-0009")).unwrap();
    ep.restart();
    for t in &temps {
        assert!(!ep.path(t).exists(), "{t} is still there");
    }
    assert_eq!(
        read(&ep.we_path(WAR)),
        entry,
        "the WorkloadEntry is completed from its WAR"
    );
    assert!(!orphan.exists(), "the orphan WorkloadEntry is removed");
    ep.wait_log("repaired the state directory");
}
