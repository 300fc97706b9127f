//! Revocation measured with the real endpoint, agent, istiod and pilot-agent (`kubectl
//! delete war`, a policy that denies), and pilot-agent keeping a valid istio-token across
//! the agent's refreshes. docs/testing-kubernetes.md, "Revocation, measured"; the
//! operator's view is docs/endpoint.md, "Revoking a workload".

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
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::Agent;
use endpoint::{Endpoint, Extra, NS, Options, POLICY, StoreChoice};
use istio::{Istiod, istio_bin_dir, uri_sans};
use istio_vm::*;
use kube::KubeHarness;
use x509_cert::Certificate;

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
    if !running_as_root_or_skip(
        "revocation_timings_and_a_token_replaced_under_a_running_pilot_agent",
    ) {
        return;
    }
    let _ports = fixed_ports();
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
    // Short keep-alive and grace settings so the policy case ends within the test; the
    // figures for the defaults follow from the same steps (docs/testing-kubernetes.md).
    let settings = Options {
        grace: "20s",
        keep_alive_interval: "2s",
        keep_alive_timeout: "6s",
        token_expiration: "1h",
    };
    let ep = cluster.endpoint(settings);
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
    let mut sidecar = start_sidecar_with(&root, istio_bin, &log1, sidecar_env);
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
        istiod_counter(istiod, "citadel_server_authentication_failure_count").unwrap_or(0.0);
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
    let csr_before = istiod_counter(istiod, "citadel_server_csr_count")
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
    let csr_after = istiod_counter(istiod, "citadel_server_csr_count").unwrap_or(0.0);
    assert!(csr_after >= csr_before + 2.0, "{csr_before} -> {csr_after}");
    let failures_after =
        istiod_counter(istiod, "citadel_server_authentication_failure_count").unwrap_or(0.0);
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
    let mut sidecar = start_sidecar_with(&root, istio_bin, &log2, sidecar_env);
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
    if !running_as_root_or_skip(
        "a_running_pilot_agent_keeps_a_valid_istio_token_across_the_agents_refreshes",
    ) {
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
    std::fs::write(
        ep.path("config/workloadgroup.yaml"),
        workload_group(Some(1)),
    )
    .expect("write group");
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
