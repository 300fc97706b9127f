//! The agent end to end: the real `onboarding-agent` binary against the real
//! `onboarding-endpoint` binary over real TLS on loopback (test CA from rcgen), JWT
//! credentials signed with the test keys, the embedded file store, the agent's root prefix in
//! a temporary directory and the sidecar restart pointed at a script that records each call.

#[path = "support/agent.rs"]
mod agent_support;
#[path = "support/endpoint.rs"]
mod endpoint;
#[path = "support/oidc.rs"]
mod oidc;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::{Agent, STATE_FILE, onboarding_config, wait_for};
use endpoint::{Endpoint, NS, Options, read};

const WAR: &str = "ratings-jwt-corp-vm-0001";
const CLUSTER_ENV: &str = "var/lib/istio/envoy/cluster.env";
const TOKEN: &str = "var/run/secrets/tokens/istio-token";

fn war_table(ep: &Endpoint) -> String {
    let (ok, out, err) = ep.cli(&["get", "war", "-A"]);
    assert!(ok, "get war: {err}");
    out
}

fn war_connected(ep: &Endpoint, name: &str) -> Option<String> {
    war_table(ep)
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
}

/// Adds a second WorkloadGroup that the test policy also admits (label app=ratings).
fn add_group(ep: &Endpoint, name: &str, service_account: &str) {
    std::fs::write(
        ep.path(&format!("config/{name}.yaml")),
        format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: {name}
  namespace: bookinfo
  labels: {{app: ratings}}
spec:
  metadata:
    labels: {{app: ratings}}
  template:
    labels: {{app: ratings, class: vm}}
    serviceAccount: {service_account}
    network: vm-network
    ports: {{http: 8080}}
"
        ),
    )
    .unwrap();
}

fn fast_endpoint() -> Endpoint {
    Endpoint::start(Options {
        grace: "5m",
        keep_alive_interval: "1s",
        keep_alive_timeout: "3s",
        token_expiration: "1h",
    })
}

#[test]
fn onboards_writes_files_reconnects_without_restart_and_unregisters_on_sigterm() {
    let mut ep = fast_endpoint();
    let t0 = Instant::now();
    let mut agent = Agent::builder(&ep).start();
    agent.wait_phase("connected", Duration::from_secs(20));
    let onboard_time = t0.elapsed();

    // The sidecar's files, at the istio-sidecar package's paths, with Istio's modes.
    let cluster_env = read(&agent.root_file(CLUSTER_ENV));
    assert!(cluster_env.contains("ratings"), "{cluster_env}");
    for (rel, mode) in [
        (CLUSTER_ENV, 0o644),
        ("etc/istio/config/mesh", 0o644),
        ("etc/certs/root-cert.pem", 0o644),
        (TOKEN, 0o600),
    ] {
        let meta = std::fs::metadata(agent.root_file(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}\n{}", agent.log()));
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{rel}");
    }
    assert_eq!(
        read(&agent.root_file(TOKEN)),
        "istio-token-for-bookinfo-ratings-vm"
    );
    // The agent-owned /etc/hosts block points istiod at the gateway; user lines are kept.
    let hosts = read(&agent.root_file("etc/hosts"));
    assert!(
        hosts.starts_with("127.0.0.1 localhost\n# user line\n"),
        "{hosts}"
    );
    assert!(hosts.contains("# BEGIN onboarding-agent"), "{hosts}");
    assert!(hosts.contains("10.20.30.40 "), "{hosts}");
    assert_eq!(agent.restarts(), 1, "one restart after the first write");

    // The endpoint sees the registration connected.
    wait_for("AGENT CONNECTED True", Duration::from_secs(10), || {
        war_connected(&ep, WAR).as_deref() == Some("True")
    });
    let state = agent.state();
    assert_eq!(state["registration"], format!("{NS}/{WAR}"));
    assert_eq!(state["connectedTo"], "endpoint-test");
    assert!(state["tokenExpiresAt"].is_string(), "{state}");

    // `status` prints the state file.
    let out = Command::new(env!("CARGO_BIN_EXE_onboarding-agent"))
        .args(["status", "--state-file"])
        .arg(agent.path(STATE_FILE))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("registration (war)       {NS}/{WAR}")),
        "{shown}"
    );
    assert!(
        shown.contains("phase                    connected"),
        "{shown}"
    );

    // Kill the endpoint: the agent notices (keep-alive every second), keeps the sidecar
    // alone, and reconnects when the endpoint is back on the same port.
    let files_before = read(&agent.root_file(CLUSTER_ENV));
    let port = ep.port();
    ep.kill();
    agent.wait_phase("reconnecting", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.state()["lastError"]
            .as_str()
            .unwrap_or("")
            .contains("keep-alive")
    );
    ep.restart_same_port();
    assert_eq!(ep.port(), port);
    agent.wait_phase("connected", Duration::from_secs(20));
    assert_eq!(
        agent.restarts(),
        1,
        "no sidecar restart for an endpoint outage"
    );
    assert_eq!(read(&agent.root_file(CLUSTER_ENV)), files_before);
    wait_for(
        "AGENT CONNECTED True after reconnect",
        Duration::from_secs(10),
        || war_connected(&ep, WAR).as_deref() == Some("True"),
    );

    // SIGTERM: unregister, wait the propagation delay (1s in the test config), exit 0.
    let t = Instant::now();
    agent.signal(libc::SIGTERM);
    let code = agent.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", agent.log());
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "waited the propagation delay"
    );
    assert!(!ep.war_path(WAR).exists(), "WAR deleted by unregister");
    assert!(
        !ep.we_path(WAR).exists(),
        "WorkloadEntry deleted by unregister"
    );
    assert_eq!(agent.state()["phase"], "stopped");
    assert!(
        agent.log().contains("unregistered bookinfo/"),
        "{}",
        agent.log()
    );
    eprintln!("onboarding (start to connected, incl. restart): {onboard_time:?}");
}

#[test]
fn config_edit_onboards_again_and_invalid_edit_is_ignored() {
    let ep = fast_endpoint();
    add_group(&ep, "ratings-canary", "ratings-canary-vm");
    let agent = Agent::builder(&ep).start();
    agent.wait_phase("connected", Duration::from_secs(20));
    assert_eq!(agent.restarts(), 1);

    // An invalid edit: the agent keeps running on the old config and says why.
    agent.write_onboarding_config("onboardingEndpoint: {host: 'not a host'}\n");
    wait_for(
        "the invalid edit to be reported",
        Duration::from_secs(10),
        || {
            agent.state()["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("config change ignored"))
        },
    );
    assert!(
        agent.log().contains("keeping the previous one"),
        "{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent.state()["phase"], "connected");
    assert_eq!(agent.restarts(), 1);

    // A valid edit naming another group: onboard again, new files, one more restart; the
    // old registration is unregistered.
    agent.write_onboarding_config(&onboarding_config(
        &ep,
        &agent.path("ca.pem"),
        "ratings-canary",
    ));
    let new_war = "ratings-canary-jwt-corp-vm-0001";
    wait_for(
        "registration in the new group",
        Duration::from_secs(20),
        || {
            agent.state()["registration"] == format!("{NS}/{new_war}")
                && agent.state()["phase"] == "connected"
        },
    );
    assert!(
        read(&agent.root_file(CLUSTER_ENV)).contains("ratings-canary-vm"),
        "{}",
        read(&agent.root_file(CLUSTER_ENV))
    );
    assert_eq!(agent.restarts(), 2, "{}", agent.log());
    assert!(ep.war_path(new_war).exists());
    assert!(!ep.war_path(WAR).exists(), "old WAR unregistered");
}

#[test]
fn deleted_war_onboards_again_with_the_new_snapshot() {
    let ep = fast_endpoint();
    let agent = Agent::builder(&ep).start();
    agent.wait_phase("connected", Duration::from_secs(20));
    let before = read(&agent.root_file(CLUSTER_ENV));
    assert!(before.contains("ratings-vm"), "{before}");

    // Change the live WorkloadGroup: the running workload keeps its snapshot.
    let group = ep.path("config/workloadgroup.yaml");
    std::fs::write(
        &group,
        read(&group).replace("serviceAccount: ratings-vm", "serviceAccount: ratings-v2"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(read(&agent.root_file(CLUSTER_ENV)), before);
    assert_eq!(agent.restarts(), 1);

    // Delete the WAR: the next keep-alive gets registration_gone, the agent onboards again
    // and the sidecar restarts on files rendered from the new snapshot.
    let (ok, _, err) = ep.cli(&["delete", "war", WAR, "-n", NS]);
    assert!(ok, "{err}");
    wait_for(
        "files from the new snapshot",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(agent.root_file(CLUSTER_ENV))
                .is_ok_and(|s| s.contains("ratings-v2"))
        },
    );
    wait_for("the restart", Duration::from_secs(10), || {
        agent.restarts() == 2
    });
    agent.wait_phase("connected", Duration::from_secs(10));
    assert!(ep.war_path(WAR).exists(), "WAR created again");
    assert!(
        agent.log().contains("registration was deleted"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_revoked_session_is_dropped_and_onboarding_backs_off_until_the_policy_allows_again() {
    let ep = fast_endpoint();
    let agent = Agent::builder(&ep).start();
    agent.wait_phase("connected", Duration::from_secs(20));

    // The policy stops admitting vm-0001: its next keep-alive is refused as session_revoked,
    // and the agent must not keep retrying the old session; it onboards from scratch, which
    // the policy denies, and backs off.
    let policy = ep.path("config/policy.yaml");
    let allowed = read(&policy);
    std::fs::write(&policy, allowed.replace("vm-0001, ", "")).unwrap();
    wait_for("the revocation", Duration::from_secs(20), || {
        agent.log().contains("revoked this session")
    });
    wait_for("a denied onboarding", Duration::from_secs(20), || {
        agent.log().contains("policy_denied")
    });
    let log = agent.log();
    assert!(
        !log.contains("session is no longer valid"),
        "a revoked session is not retried as an expired one:\n{log}"
    );

    // Allowed again: the agent comes back by itself.
    std::fs::write(&policy, allowed).unwrap();
    agent.wait_phase("connected", Duration::from_secs(30));
    assert!(ep.war_path(WAR).exists(), "WAR created again");
}

#[test]
fn session_and_istio_tokens_are_renewed_before_they_expire() {
    let mut ep = Endpoint::start(Options {
        grace: "5m",
        keep_alive_interval: "2s",
        keep_alive_timeout: "6s",
        token_expiration: "1m",
    });
    // Istio tokens that live 8 seconds, different each time (short, yet with room for a
    // loaded 2-core machine to fetch the next one: the agent starts 4s before expiry).
    let cfg = read(&ep.config);
    std::fs::write(
        &ep.config,
        cfg.replace(
            "istioToken:\n  command: [sh, -c, \"echo istio-token-for-$NAMESPACE-$SERVICE_ACCOUNT\"]",
            "istioToken:\n  expiration: 8s\n  command: [sh, -c, \"echo istio-token-$(date +%s%N)\"]",
        ),
    )
    .unwrap();
    ep.restart_same_port();
    let agent = Agent::builder(&ep).start();
    agent.wait_phase("connected", Duration::from_secs(20));

    // For a minute, sample: the istio-token on disk and the session token must never be
    // past their expiry, and the sidecar must not be restarted for a token change.
    let mut tokens = std::collections::BTreeSet::new();
    let first_session_expiry = agent.state()["tokenExpiresAt"]
        .as_str()
        .unwrap()
        .to_string();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(58) {
        let state = agent.state();
        let now = std::time::SystemTime::now();
        for key in ["istioTokenExpiresAt", "tokenExpiresAt"] {
            let at = state[key]
                .as_str()
                .unwrap_or_else(|| panic!("{key} in {state}"));
            let at = workload_onboarding::timestamp::parse(at).unwrap();
            assert!(at > now, "{key} {state} already expired\n{}", agent.log());
        }
        tokens.insert(std::fs::read_to_string(agent.root_file(TOKEN)).unwrap());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        tokens.len() >= 10,
        "istio-token refreshed: {} distinct",
        tokens.len()
    );
    assert!(
        tokens.iter().all(|t| t.starts_with("istio-token-")),
        "never torn"
    );
    let log = agent.log();
    assert!(log.contains("renewed the session token"), "{log}");
    assert_ne!(agent.state()["tokenExpiresAt"], first_session_expiry);
    assert!(!log.contains("no longer valid"), "{log}");
    assert_eq!(
        agent.restarts(),
        1,
        "token refreshes do not restart the sidecar"
    );
    assert_eq!(agent.state()["phase"], "connected");
}

#[test]
fn onboards_with_the_oidc_credential_plugin_against_a_real_provider() {
    // The whole on-premise chain: agent -> OIDC plugin (client_credentials, resource = plane
    // UID) -> a real OpenID provider -> endpoint (issuer discovery + JWKS over TLS) -> policy.
    let provider = oidc::OidcProvider::start();
    let mut ep = fast_endpoint();
    let cfg = read(&ep.config);
    std::fs::write(
        &ep.config,
        cfg.replacen(
            "store:\n",
            &format!(
                "    - issuer: {}\n      shortName: testidp\n      caFile: {}\n      tokenFields: {{attributes: {{jsonPath: .attributes}}}}\nstore:\n",
                provider.issuer,
                provider.ca_file.display()
            ),
            1,
        ),
    )
    .unwrap();
    std::fs::write(
        ep.path("config/policy-oidc.yaml"),
        format!(
            "apiVersion: authorization.onboarding.tetrate.io/v1alpha1
kind: OnboardingPolicy
metadata: {{name: allow-oidc-vms, namespace: bookinfo}}
spec:
  allow:
  - workloads:
    - jwt:
        issuer: {}
        subjects: [{}]
    onboardTo:
    - workloadGroupSelector: {{matchLabels: {{app: ratings}}}}
",
            provider.issuer,
            oidc::CLIENT_ID
        ),
    )
    .unwrap();
    ep.restart_same_port();

    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), format!("{}\n", provider.client_secret)).unwrap();
    let credential = format!(
        "    - plugin:
        name: oidc-credential
        path: {plugin}
        env:
        - {{name: OIDC_ISSUER, value: '{issuer}'}}
        - {{name: OIDC_CLIENT_ID, value: {client}}}
        - {{name: OIDC_CLIENT_SECRET_FILE, value: {secret}}}
        - {{name: OIDC_CA_FILE, value: {ca}}}
",
        plugin = env!("CARGO_BIN_EXE_onboarding-agent-oidc-credential-plugin"),
        issuer = provider.issuer,
        client = provider.client_id,
        secret = secret.path().display(),
        ca = provider.ca_file.display()
    );
    let agent = Agent::builder(&ep).credential_yaml(credential).start();
    agent.wait_phase("connected", Duration::from_secs(30));
    let war = format!("ratings-jwt-testidp-{}", oidc::CLIENT_ID);
    assert_eq!(agent.state()["registration"], format!("{NS}/{war}"));
    assert!(ep.war_path(&war).exists());
    assert!(agent.root_file(CLUSTER_ENV).exists());
    assert_eq!(agent.restarts(), 1);
    let log = agent.log();
    assert!(
        log.contains("credential from plugin \"oidc-credential\""),
        "{log}"
    );
    assert!(
        !log.contains(&provider.client_secret),
        "the secret is never logged"
    );
}

/// The file set under `root`: (relative path, content) for every regular file the
/// bootstrap writes (temporary files excluded).
fn file_set(root: &Path) -> Vec<(String, Vec<u8>)> {
    [
        CLUSTER_ENV,
        "etc/istio/config/mesh",
        "etc/certs/root-cert.pem",
        TOKEN,
    ]
    .iter()
    .map(|rel| {
        (
            rel.to_string(),
            std::fs::read(root.join(rel)).unwrap_or_default(),
        )
    })
    .collect()
}

#[test]
fn sigkill_during_writes_leaves_the_old_or_the_new_set_and_the_restart_is_not_lost() {
    let ep = fast_endpoint();
    add_group(&ep, "ratings-canary", "ratings-canary-vm");

    // The old set (group ratings) and the new set (group ratings-canary), from full runs.
    let old_agent = Agent::builder(&ep).start();
    old_agent.wait_phase("connected", Duration::from_secs(20));
    let old = file_set(&old_agent.path("root"));
    drop(old_agent);
    let t0 = Instant::now();
    let new_agent = Agent::builder(&ep).group("ratings-canary").start();
    wait_for("new set written", Duration::from_secs(20), || {
        new_agent.restarts() == 1
    });
    let full_run = t0.elapsed();
    let new = file_set(&new_agent.path("root"));
    drop(new_agent);
    assert_ne!(old[0].1, new[0].1, "the two sets differ");

    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64;
    let mut killed_after_switch = 0;
    let iterations = 12;
    for i in 0..iterations {
        let mut agent = Agent::builder(&ep).group("ratings-canary").prepare();
        for (rel, content) in &old {
            let p = agent.root_file(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
        // A random point in [0, 1.2 x the time a full run takes].
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let window = full_run.as_micros() as u64 * 12 / 10;
        agent.spawn();
        let delay = if i % 2 == 0 {
            // Anywhere in the run.
            let d = Duration::from_micros(seed % window.max(1));
            std::thread::sleep(d);
            d
        } else {
            // Right inside the write phase: the writes take a millisecond or two of a run of
            // a hundred, so wait (spinning) for the first file to change, then kill within
            // the next 2 ms.
            let first = agent.root_file(CLUSTER_ENV);
            let started = Instant::now();
            while std::fs::read(&first).is_ok_and(|c| c == old[0].1) {
                assert!(started.elapsed() < Duration::from_secs(20), "no write seen");
                std::hint::spin_loop();
            }
            let extra = Duration::from_micros(seed % 2000);
            let spin = Instant::now();
            while spin.elapsed() < extra {
                std::hint::spin_loop();
            }
            started.elapsed()
        };
        agent.kill9();

        let after = file_set(&agent.path("root"));
        let mut n_new = 0;
        for ((rel, got), ((_, o), (_, n))) in after.iter().zip(old.iter().zip(&new)) {
            assert!(
                got == o || got == n,
                "iteration {i}: {rel} is neither the old nor the new file (torn) after SIGKILL at {delay:?}"
            );
            n_new += usize::from(got == n && o != n);
        }
        let differing = new.iter().zip(&old).filter(|(a, b)| a != b).count();
        assert!(
            n_new == 0 || n_new == differing,
            "iteration {i}: SIGKILL at {delay:?} left a mix: {n_new} of {differing} files new\n{after:?}"
        );
        if n_new == differing {
            killed_after_switch += 1;
        }
        let restarts_before = agent.restarts();

        // The next run completes the set, and the sidecar is restarted on it even when the
        // killed run had already written every file (restartPending in the state file).
        agent.spawn();
        agent.wait_phase("connected", Duration::from_secs(20));
        assert_eq!(file_set(&agent.path("root")), new, "iteration {i}");
        assert!(
            agent.restarts() >= 1,
            "iteration {i}: files changed but the sidecar was never restarted (killed at {delay:?}, {restarts_before} restarts before)\n{}",
            agent.log()
        );
        assert_eq!(agent.state()["restartPending"], false);
        let leftovers: Vec<_> = std::fs::read_dir(agent.root_file("var/lib/istio/envoy"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary files cleaned up: {leftovers:?}"
        );
    }
    eprintln!(
        "{killed_after_switch} of {iterations} kills came after the switch to the new set, the rest before; none left a mix"
    );
}

#[test]
fn missing_or_invalid_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_onboarding-agent"))
        .arg("--onboarding-config")
        .arg(&missing)
        .args(["--state-file"])
        .arg(dir.path().join("state.json"))
        .env_remove("ONBOARDING_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("missing"),
        "{err}"
    );

    let bad = dir.path().join("onboarding.yaml");
    std::fs::write(
        &bad,
        "onboardingEndpoint: {host: ep.example}\nworkloadGroup: {namespace: Bad_NS, name: g}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_onboarding-agent"))
        .arg("--onboarding-config")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{}: workloadGroup.namespace: \"Bad_NS\"",
            bad.display()
        )),
        "{err}"
    );

    // A valid onboarding config from the environment and no agent config at all: there is
    // no credential source (cloud platforms are not detected yet), named as such.
    let valid = r#"{"onboardingEndpoint":{"host":"127.0.0.1"},"workloadGroup":{"namespace":"ns","name":"g"}}"#;
    if !Path::new("/etc/onboarding-agent/agent.config.yaml").exists() {
        let out = Command::new(env!("CARGO_BIN_EXE_onboarding-agent"))
            .env("ONBOARDING_CONFIG", valid)
            .env_remove("AGENT_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("host.custom.credential: no credential source"),
            "{err}"
        );
    }

    let out = Command::new(env!("CARGO_BIN_EXE_onboarding-agent"))
        .env("ONBOARDING_CONFIG", valid)
        .env("AGENT_CONFIG", "host:\n  custom:\n    credential: []\n")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("$AGENT_CONFIG: host.custom.credential: needs at least one"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_onboarding-agent"))
        .env("ONBOARDING_CONFIG", valid)
        .arg("--agent-config")
        .arg(dir.path().join("absent-agent.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("absent-agent.yaml: the file is missing"),
        "{err}"
    );
}

/// The onboarding configuration with a given `transportSecurity.tls` block.
fn config_with_tls(ep: &Endpoint, tls: &str) -> String {
    format!(
        "apiVersion: config.agent.onboarding.tetrate.io/v1alpha1
kind: OnboardingConfiguration
onboardingEndpoint:
  host: 127.0.0.1
  port: {port}
  transportSecurity:
    tls: {tls}
workloadGroup: {{namespace: {NS}, name: ratings}}
",
        port = ep.port()
    )
}

#[test]
fn tls_sni_override_root_certs_from_env_and_insecure_skip_verify() {
    let ep = fast_endpoint();
    let ca = |a: &Agent| a.path("ca.pem").display().to_string();

    // `sni` names the certificate to expect when `host` is an address: the test
    // certificate's name `localhost` is checked, and accepted.
    let mut a = Agent::builder(&ep).prepare();
    a.write_onboarding_config(&config_with_tls(
        &ep,
        &format!("{{sni: localhost, caFile: {}}}", ca(&a)),
    ));
    a.spawn();
    a.wait_phase("connected", Duration::from_secs(20));
    a.stop();

    // An `sni` the certificate does not carry: verification fails, the agent keeps trying
    // and says why; nothing is written.
    let mut a = Agent::builder(&ep).prepare();
    a.write_onboarding_config(&config_with_tls(
        &ep,
        &format!("{{sni: not-the-endpoint.example, caFile: {}}}", ca(&a)),
    ));
    a.spawn();
    wait_for("a TLS error in the state", Duration::from_secs(20), || {
        a.state()["lastError"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("certificate"))
    });
    assert_ne!(a.state()["phase"], "connected", "{}", a.state());
    assert!(!a.root_file(CLUSTER_ENV).exists());
    assert_eq!(a.restarts(), 0);
    a.stop();

    // No caFile: the CA comes from ONBOARDING_AGENT_ROOT_CERTS (the container setup).
    let ca_pem = ep.ca_pem.clone();
    let mut a = Agent::builder(&ep)
        .env("ONBOARDING_AGENT_ROOT_CERTS", ca_pem)
        .prepare();
    a.write_onboarding_config(&config_with_tls(&ep, "{}"));
    a.spawn();
    a.wait_phase("connected", Duration::from_secs(20));
    a.stop();

    // Neither: the certificate is unknown and refused...
    let mut a = Agent::builder(&ep).prepare();
    a.write_onboarding_config(&config_with_tls(&ep, "{}"));
    a.spawn();
    wait_for(
        "an untrusted-certificate error",
        Duration::from_secs(20),
        || {
            a.state()["lastError"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("certificate"))
        },
    );
    assert_ne!(a.state()["phase"], "connected");
    a.stop();

    // ...unless the config explicitly opts out of verification, which is shouted about.
    let mut a = Agent::builder(&ep).prepare();
    a.write_onboarding_config(&config_with_tls(&ep, "{insecureSkipVerify: true}"));
    a.spawn();
    a.wait_phase("connected", Duration::from_secs(20));
    assert!(a.log().contains("insecureSkipVerify is set"), "{}", a.log());
    a.stop();
}

/// A stand-in for the onboarding endpoint over plain HTTP/1.1, for answers the real endpoint
/// cannot give: each request gets `answer(path, how many times this path was asked before)`,
/// a JSON body (with status 200, or 403 when it is an API error), on a connection closed
/// after it.
struct FakeEndpoint {
    port: u16,
    hits: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeEndpoint {
    fn start(answer: impl Fn(&str, usize) -> String + Send + 'static) -> FakeEndpoint {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let n = {
                    let mut hits = seen.lock().unwrap();
                    let n = hits.iter().filter(|p| **p == path).count();
                    hits.push(path.clone());
                    n
                };
                let json = answer(&path, n);
                let status = if json.starts_with("{\"code\"") {
                    "403 Forbidden"
                } else {
                    "200 OK"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                    json.len()
                );
            }
        });
        FakeEndpoint { port, hits }
    }

    fn count(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

fn in_secs(s: u64) -> String {
    workload_onboarding::timestamp::format(std::time::SystemTime::now() + Duration::from_secs(s))
}

/// The endpoint is the one that decides the sidecar's files, but not that one of them becomes
/// setuid root: a bootstrap with such a mode is refused whole and the last good files stay.
#[test]
fn a_bootstrap_with_a_setuid_or_writable_mode_is_refused_and_the_files_stay() {
    let war = r#"{"namespace":"bookinfo","name":"ratings-fake"}"#;
    let bootstrap = |env: &str, env_mode: u32, token_mode: u32| {
        serde_json::json!({
            "files": [
                {"path": "/var/lib/istio/envoy/cluster.env", "mode": env_mode, "content": env},
                {"path": "/var/run/secrets/tokens/istio-token", "mode": token_mode,
                 "content": "tok", "restartOnChange": false},
            ],
            "hosts": [],
            // Short, so that the agent fetches a fresh bootstrap within seconds.
            "istioTokenExpiresAt": in_secs(4),
        })
    };
    let fake = FakeEndpoint::start(move |path, n| match path {
        "/v1/discovery" => {
            r#"{"planeUid":"plane-fake","instance":"fake-0","platforms":["jwt"]}"#.to_string()
        }
        "/v1/authorize" => format!(
            r#"{{"token":"session","expiresAt":"{}","registration":{war}}}"#,
            in_secs(3600)
        ),
        "/v1/register" => serde_json::json!({
            "registration": serde_json::from_str::<serde_json::Value>(war).unwrap(),
            "reused": false,
            "bootstrap": bootstrap("GOOD=1\n", 0o644, 0o600),
            "keepAlive": {"intervalSeconds": 60, "timeoutSeconds": 180},
        })
        .to_string(),
        // Every other refresh: a setuid cluster.env, or a world-writable token.
        "/v1/bootstrap" if n % 2 == 0 => bootstrap("EVIL=1\n", 0o4755, 0o600).to_string(),
        "/v1/bootstrap" => bootstrap("EVIL=1\n", 0o644, 0o646).to_string(),
        "/v1/keepalive" => {
            format!(r#"{{"registration":{war},"connectedTo":"fake-0"}}"#)
        }
        "/v1/unregister" => r#"{"propagationDelaySeconds":0}"#.to_string(),
        _ => r#"{"code":"bad_request","message":"no such path"}"#.to_string(),
    });
    let mut agent = Agent::builder_plain_text(fake.port).start();
    agent.wait_phase("connected", Duration::from_secs(20));
    let cluster_env = agent.root_file(CLUSTER_ENV);
    assert_eq!(read(&cluster_env), "GOOD=1\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(fake.count("/v1/bootstrap") >= 2
        && agent.log().contains("lets everyone write")
        && agent.log().contains("sets the setuid bit"))
    {
        assert!(
            Instant::now() < deadline,
            "no two refused refreshes; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = agent.log();
    assert!(
        log.contains("file mode 4755 (octal) is not allowed: it sets the setuid bit"),
        "{log}"
    );
    assert!(
        log.contains("file mode 0646 (octal) is not allowed: it lets everyone write"),
        "{log}"
    );
    // Nothing of the refused answers reached the disk.
    assert_eq!(read(&cluster_env), "GOOD=1\n");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&cluster_env), 0o644);
    assert_eq!(mode(&agent.root_file(TOKEN)), 0o600);
    let state = agent.state();
    assert!(
        state["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("is not allowed")),
        "{state}"
    );
    agent.stop();
}

/// Text from the endpoint reaches the log with its control characters escaped: a forged log
/// line or a terminal escape sequence arrives as visible text.
#[test]
fn endpoint_text_cannot_forge_log_lines() {
    let fake = FakeEndpoint::start(|path, _| {
        match path {
        "/v1/discovery" => {
            r#"{"planeUid":"plane-fake","instance":"fake-0","platforms":["jwt"]}"#.to_string()
        }
        // Not a valid authorize answer: the agent reports what it got, and retries.
        _ => "{\"code\":\"policy_denied\",\"message\":\"no\\n2099-01-01T00:00:00.000Z  INFO onboarded\\u001b[2J\"}".to_string(),
    }
    });
    let agent = Agent::builder_plain_text(fake.port).start();
    wait_for("a failed onboarding", Duration::from_secs(20), || {
        agent.log().contains("onboarding failed")
    });
    wait_for(
        "the error in the state file",
        Duration::from_secs(10),
        || agent.state()["lastError"].is_string(),
    );
    let log = agent.log();
    assert!(!log.contains('\u{1b}'), "{log}");
    assert!(!log.contains("\n2099-01-01"), "{log}");
    assert!(
        log.contains("no\\n2099-01-01T00:00:00.000Z  INFO onboarded\\u{1b}[2J"),
        "{log}"
    );
    // `status` prints the same text escaped.
    let out = Command::new(env!("CARGO_BIN_EXE_onboarding-agent"))
        .args(["status", "--state-file"])
        .arg(agent.path(STATE_FILE))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains("\n2099"),
        "{shown}"
    );
}

fn agent_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_onboarding-agent"))
        .args(args)
        .env_remove("ONBOARDING_CONFIG")
        .env_remove("AGENT_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn help_version_and_exit_codes_follow_kubectl() {
    for args in [&["help"][..], &["--help"], &["-h"]] {
        let out = agent_cmd(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            text.contains("Usage:") && text.contains("--onboarding-config PATH"),
            "{text}"
        );
        assert!(text.contains("onboarding-agent status"), "{text}");
    }
    for args in [
        &["status", "--help"][..],
        &["help", "status"],
        &["status", "-h"],
    ] {
        let out = agent_cmd(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            text.contains("--json") && text.contains("--state-file PATH"),
            "{text}"
        );
    }
    for args in [&["version"][..], &["--version"], &["-V"]] {
        let out = agent_cmd(args);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("onboarding-agent {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
    // Usage errors: 2, the error and where to get help, nothing on stdout.
    for (args, says) in [
        (&["statsu"][..], "unknown command \"statsu\""),
        (&["--rot", "/x"], "unexpected argument \"--rot\""),
        (
            &["status", "--root", "/x"],
            "unexpected argument \"--root\" for `status`",
        ),
        (&["help", "nope"], "no help for \"nope\""),
    ] {
        let out = agent_cmd(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with(&format!("error: {says}")), "{err}");
        assert!(err.contains("--help` for usage"), "{err}");
        assert!(out.stdout.is_empty());
    }
    // A runtime failure: 1, with the cause once.
    let dir = tempfile::tempdir().unwrap();
    let out = agent_cmd(&[
        "status",
        "--state-file",
        &dir.path().join("none.json").display().to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Not a terminal: no colours.
    assert!(!err.contains('\u{1b}'), "{err}");
    // No configuration named and none at the default path: say where it looked and how to
    // name one.
    if !Path::new("/etc/onboarding-agent/onboarding.config.yaml").exists() {
        let out = agent_cmd(&[
            "--state-file",
            &dir.path().join("s.json").display().to_string(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("/etc/onboarding-agent/onboarding.config.yaml")
                && err.contains("default path")
                && err.contains("pass --onboarding-config PATH"),
            "{err}"
        );
    }
}
