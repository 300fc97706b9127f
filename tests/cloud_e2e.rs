//! Cloud platforms end to end: the real `onboarding-agent` and `onboarding-endpoint` binaries
//! over TLS on loopback, the agent reading the `cloud-metadata-simulator` binary (IMDSv2,
//! GCE, Azure IMDS, the ECS credentials endpoint, signed with the test keys in
//! testdata/cloud-sim), the endpoint trusting what the simulator wrote with `--write-trust`,
//! and moto's server (a real local AWS API) for the IAM role lookup and the ECS STS proof.
//!
//! The refusals are exercised against the endpoint's API with credentials the simulator
//! library signs, each with its own error code. Tests needing moto are skipped without it,
//! unless CI=true.
#![cfg(all(feature = "endpoint", feature = "agent"))]

#[path = "support/agent.rs"]
mod agent_support;
#[path = "support/endpoint.rs"]
mod endpoint;
#[path = "support/moto.rs"]
mod moto;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use agent_support::{Agent, wait_for};
use base64::Engine;
use endpoint::{Endpoint, Extra, NS, Options, read};
// The simulator is a test and demo tool, not library code: its binary owns it and the tests
// compile the same source.
#[allow(dead_code)]
#[path = "../src/bin/cloud-metadata-simulator/simulator.rs"]
mod simulator;

use simulator::{SimulatedHost, Simulator, SimulatorKeys};

const ACCOUNT: &str = "123456789012";
const SUBSCRIPTION: &str = "11111111-2222-3333-4444-555555555555";

fn keys_dir() -> PathBuf {
    endpoint::repo().join("testdata/cloud-sim")
}

fn sim(host: SimulatedHost) -> Simulator {
    Simulator::new(SimulatorKeys::load(&keys_dir()).unwrap(), host)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// The `cloud-metadata-simulator` binary, serving `host` on a free port.
struct SimProcess {
    child: Child,
    url: String,
    trust: tempfile::TempDir,
}

impl SimProcess {
    fn start(host: &SimulatedHost) -> SimProcess {
        let trust = tempfile::tempdir().unwrap();
        let host_file = trust.path().join("host-in.json");
        std::fs::write(&host_file, serde_json::to_vec(host).unwrap()).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloud-metadata-simulator"));
        let mut child = endpoint::die_with_parent(&mut cmd)
            .arg("--keys")
            .arg(keys_dir())
            .arg("--write-trust")
            .arg(trust.path())
            .arg("--host")
            .arg(&host_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cloud-metadata-simulator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("http://127.0.0.1:"), "simulator: {line:?}");
        SimProcess {
            child,
            url: line.trim().to_string(),
            trust,
        }
    }

    fn trust(&self, name: &str) -> String {
        self.trust.path().join(name).display().to_string()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn policy(workloads: &str) -> (String, String) {
    (
        "cloud-policy.yaml".into(),
        format!(
            "apiVersion: authorization.onboarding.tetrate.io/v1alpha1
kind: OnboardingPolicy
metadata: {{name: allow-cloud, namespace: bookinfo}}
spec:
  allow:
  - workloads:
{workloads}
    onboardTo:
    - workloadGroupSelector: {{matchLabels: {{app: ratings}}}}
"
        ),
    )
}

fn fast() -> Options {
    Options {
        grace: "5m",
        keep_alive_interval: "1s",
        keep_alive_timeout: "3s",
        token_expiration: "1h",
    }
}

/// POST /v1/authorize with a credential (and optionally a bearer and X-Forwarded-For).
fn authorize_with(
    ep: &Endpoint,
    credential: serde_json::Value,
    bearer: Option<&str>,
    forwarded_for: Option<&str>,
) -> (u16, serde_json::Value) {
    let agent = ep.client();
    let mut req = agent.post(format!("{}/v1/authorize", ep.url));
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {b}"));
    }
    if let Some(x) = forwarded_for {
        req = req.header("x-forwarded-for", x);
    }
    let mut resp = req
        .send_json(serde_json::json!({
            "workloadGroup": {"namespace": NS, "name": "ratings"},
            "credential": credential,
        }))
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

fn authorize(ep: &Endpoint, credential: serde_json::Value) -> (u16, serde_json::Value) {
    authorize_with(ep, credential, None, None)
}

fn assert_refused(r: &(u16, serde_json::Value), status: u16, code: &str, what: &str) {
    assert_eq!(r.0, status, "{what}: {}", r.1);
    assert_eq!(r.1["code"], code, "{what}: {}", r.1);
}

fn ec2_credential(s: &Simulator) -> serde_json::Value {
    serde_json::json!({"type": "aws-ec2", "document": s.aws_document(), "rsa2048": s.aws_rsa2048().unwrap()})
}

fn war_yaml(ep: &Endpoint, name: &str) -> String {
    let p = ep.war_path(name);
    wait_for(&format!("WAR {name}"), Duration::from_secs(10), || {
        p.exists()
    });
    read(&p)
}

fn assert_bootstrapped(agent: &Agent, war: &str) {
    let env = read(&agent.root_file("var/lib/istio/envoy/cluster.env"));
    assert!(env.contains(war), "cluster.env should name {war}:\n{env}");
    assert_eq!(agent.restarts(), 1, "one sidecar restart");
}

#[test]
fn ec2_end_to_end_with_one_live_session_per_instance() {
    let host = SimulatedHost::default();
    let simp = SimProcess::start(&host);
    let ep = Endpoint::start_with(
        fast(),
        Extra {
            authentication: format!(
                "aws:\n  ec2:\n    certificates:\n    - {{region: us-east-2, file: {}}}\n",
                simp.trust("aws-rsa2048-us-east-2.pem")
            ),
            manifests: vec![policy(&format!(
                "    - aws: {{accounts: [\"{ACCOUNT}\"], regions: [us-east-2], zones: [us-east-2b], ec2: {{}}}}"
            ))],
            ..Extra::default()
        },
    );
    let (s, d) = ep.call("GET", "/v1/discovery", None, None);
    assert_eq!(s, 200);
    assert_eq!(d["platforms"], serde_json::json!(["jwt", "aws-ec2"]));

    let mut agent = Agent::builder(&ep)
        .host_yaml("host:\n  aws:\n    ec2: {}")
        .env("ONBOARDING_AGENT_AWS_IMDS", &simp.url)
        .start();
    let took = agent.wait_connected(&ep);
    eprintln!(
        "EC2: agent connected {:.0} ms after start",
        took.as_millis()
    );
    let war = "ratings-aws-aws-123456789012-us-east-2b-ec2-i-0123456789abcdef0";
    let yaml = war_yaml(&ep, war);
    assert!(yaml.contains("instanceId: i-0123456789abcdef0"), "{yaml}");
    assert_bootstrapped(&agent, war);
    assert!(
        agent.log().contains("AWS EC2 instance metadata"),
        "{}",
        agent.log()
    );

    // The same document from another process on this host (same source address) while the
    // agent is connected: a second concurrent session for the instance.
    let stolen = sim(host.clone());
    let r = authorize(&ep, ec2_credential(&stolen));
    assert_refused(&r, 409, "session_conflict", "second concurrent session");
    ep.wait_log("second concurrent session refused");
    // Keep-alives keep the agent's session (several intervals go by).
    std::thread::sleep(Duration::from_millis(3500));
    assert_refused(
        &authorize(&ep, ec2_credential(&stolen)),
        409,
        "session_conflict",
        "still live after the keep-alive timeout",
    );
    assert_eq!(agent.state()["phase"], "connected");

    // The agent crashes (SIGKILL, no unregister) and comes back at once: its old session is
    // still live, so it is refused as a second session until that times out (3s), then
    // takes the instance over and reuses its WAR.
    agent.kill9();
    let mut agent = Agent::builder(&ep)
        .host_yaml("host:\n  aws:\n    ec2: {}")
        .env("ONBOARDING_AGENT_AWS_IMDS", &simp.url)
        .start();
    let took = agent.wait_connected(&ep);
    eprintln!(
        "EC2: a restarted agent got its instance back {:.0} ms after start (keep-alive timeout 3s)",
        took.as_millis()
    );
    let log = agent.log();
    // The old session's last keep-alive came at most one interval (1s) before the kill, so
    // it is live for at least 2s after it: an agent connected sooner than that must have
    // been refused first. On a loaded machine the restarted agent may only get to its first
    // call after the old session expired; then no conflict is owed.
    if took < Duration::from_secs(2) {
        assert!(log.contains("session_conflict"), "{log}");
    } else if !log.contains("session_conflict") {
        eprintln!(
            "EC2: the restarted agent's first call came after the old session expired; \
             the conflict path was not exercised in this run"
        );
    }
    assert!(log.contains("existing registration reused"), "{log}");

    // SIGTERM: the agent unregisters, which ends its session: the instance may onboard
    // again at once.
    agent.stop();
    assert!(!ep.war_path(war).exists(), "unregister deleted the WAR");
    let r = authorize(&ep, ec2_credential(&stolen));
    assert_eq!(r.0, 200, "{}", r.1);
}

#[test]
fn ec2_refusals_each_with_its_own_code() {
    let trust = tempfile::tempdir().unwrap();
    let base = SimulatedHost::default();
    // "Launched" now: its pendingTime is this second.
    let other_instance = sim(SimulatedHost {
        aws_instance_id: "i-0fedcba9876543210".into(),
        ..base.clone()
    });
    let other_made = Instant::now();
    other_instance.write_trust(trust.path()).unwrap();
    // Sessions lapse after 3s without a keep-alive: long enough that a loaded machine still
    // makes the second authorize below while the first session is live, short enough that
    // it has lapsed after the 6s wait further down.
    let ep = Endpoint::start_with(
        fast(),
        Extra {
            authentication: format!(
                "aws:\n  ec2:\n    maxAgeSincePending: 4s\n    certificates:\n    - {{region: us-east-2, file: {}}}\n",
                trust.path().join("aws-rsa2048-us-east-2.pem").display()
            ),
            manifests: vec![policy(&format!(
                "    - aws: {{accounts: [\"{ACCOUNT}\"], ec2: {{}}}}"
            ))],
            ..Extra::default()
        },
    );

    // Replay from another address: the document belongs to 10.0.0.5, the request comes
    // from 127.0.0.1.
    let elsewhere = sim(SimulatedHost {
        private_ip: "10.0.0.5".into(),
        aws_instance_id: "i-0aaaaaaaaaaaaaaa5".into(),
        ..base.clone()
    });
    let r = authorize(&ep, ec2_credential(&elsewhere));
    assert_refused(&r, 401, "wrong_source_address", "replay from another host");
    // X-Forwarded-For from an untrusted peer changes nothing.
    let r = authorize_with(&ep, ec2_credential(&elsewhere), None, Some("10.0.0.5"));
    assert_refused(&r, 401, "wrong_source_address", "forged X-Forwarded-For");

    // A region this endpoint has no certificate for.
    let nowhere = sim(SimulatedHost {
        aws_region: "xx-nowhere-1".into(),
        aws_zone: "xx-nowhere-1a".into(),
        ..base.clone()
    });
    let r = authorize(&ep, ec2_credential(&nowhere));
    assert_refused(&r, 401, "unknown_issuer", "unknown region");

    // A known region, but the document is not signed by that region's certificate.
    let west = sim(SimulatedHost {
        aws_region: "us-west-2".into(),
        aws_zone: "us-west-2a".into(),
        ..base.clone()
    });
    let r = authorize(&ep, ec2_credential(&west));
    assert_refused(&r, 401, "invalid_signature", "wrong region certificate");
    assert!(
        r.1["message"]
            .as_str()
            .unwrap()
            .contains("not from the pinned AWS certificate"),
        "{}",
        r.1
    );

    // The document inside the PKCS#7 altered (same length, so the structure holds).
    let genuine = &other_instance;
    let doc = genuine.aws_document();
    let der = base64::engine::general_purpose::STANDARD
        .decode(genuine.aws_rsa2048().unwrap().replace('\n', ""))
        .unwrap();
    let at = der
        .windows(8)
        .position(|w| w == b"t3.micro")
        .expect("embedded document");
    let mut tampered = der.clone();
    tampered[at..at + 8].copy_from_slice(b"t3.large");
    let r = authorize(
        &ep,
        serde_json::json!({"type": "aws-ec2", "document": "",
            "rsa2048": base64::engine::general_purpose::STANDARD.encode(&tampered)}),
    );
    assert_refused(&r, 401, "invalid_signature", "tampered document");
    assert!(
        r.1["message"].as_str().unwrap().contains("altered"),
        "{}",
        r.1
    );

    // A different document beside a genuine PKCS#7: only the signed one counts.
    let r = authorize(
        &ep,
        serde_json::json!({"type": "aws-ec2", "document": doc.replace("t3.micro", "t3.large"),
            "rsa2048": genuine.aws_rsa2048().unwrap()}),
    );
    assert_refused(&r, 401, "invalid_credential", "document outside the PKCS#7");

    // The legacy RSA-1024 form is off unless configured.
    let r = authorize(
        &ep,
        serde_json::json!({"type": "aws-ec2", "document": doc, "signature": "c2ln"}),
    );
    assert_refused(&r, 403, "unsupported_platform", "legacy signature form");

    // One live session per instance; the agent renewing with its session token continues
    // it, and its old token can then no longer keep a session alive.
    let a = sim(base.clone());
    let a_made = Instant::now();
    let (s, first) = authorize(&ep, ec2_credential(&a));
    assert_eq!(s, 200, "{first}");
    let t1 = first["token"].as_str().unwrap().to_string();
    let (s, r) = ep.call(
        "POST",
        "/v1/register",
        Some(&t1),
        Some(endpoint::registration_body()),
    );
    assert_eq!(s, 200, "{r}");
    assert_refused(
        &authorize(&ep, ec2_credential(&a)),
        409,
        "session_conflict",
        "second concurrent session",
    );
    let (s, renewed) = authorize_with(&ep, ec2_credential(&a), Some(&t1), None);
    assert_eq!(s, 200, "renewal with the session token: {renewed}");
    let t2 = renewed["token"].as_str().unwrap().to_string();
    let (s, k) = ep.call("POST", "/v1/keepalive", Some(&t2), None);
    assert_eq!(s, 200, "{k}");
    let (s, k) = ep.call("POST", "/v1/keepalive", Some(&t1), None);
    assert_eq!(s, 409, "the replaced token: {k}");

    // Maximum age since pendingTime, for first onboardings only. Both documents were
    // "launched" when their simulators were made: wait until both are older than 4s (plus
    // a second, as pendingTime has whole seconds).
    let old = Duration::from_secs(6);
    std::thread::sleep(
        old.saturating_sub(other_made.elapsed())
            .max(old.saturating_sub(a_made.elapsed())),
    );
    let r = authorize(&ep, ec2_credential(&other_instance));
    assert_refused(
        &r,
        401,
        "credential_expired",
        "first onboarding of an old document",
    );
    assert!(
        r.1["message"]
            .as_str()
            .unwrap()
            .contains("onboards new instances only within"),
        "{}",
        r.1
    );
    // The first instance has a WAR: re-onboarding once its session lapsed is allowed.
    let (s, again) = authorize(&ep, ec2_credential(&a));
    assert_eq!(s, 200, "re-onboarding of a registered instance: {again}");
}

#[test]
fn ec2_through_a_trusted_proxy() {
    let trust = tempfile::tempdir().unwrap();
    let behind = sim(SimulatedHost {
        private_ip: "10.0.0.5".into(),
        ..SimulatedHost::default()
    });
    behind.write_trust(trust.path()).unwrap();
    let ep = Endpoint::start_with(
        fast(),
        Extra {
            authentication: format!(
                "aws:\n  ec2:\n    trustedProxies: [127.0.0.1/32]\n    certificates:\n    - {{region: us-east-2, file: {}}}\n",
                trust.path().join("aws-rsa2048-us-east-2.pem").display()
            ),
            manifests: vec![policy(&format!(
                "    - aws: {{accounts: [\"{ACCOUNT}\"], ec2: {{}}}}"
            ))],
            ..Extra::default()
        },
    );
    // The proxy (127.0.0.1 here) forwards the client's address; its entry is the last one.
    // A client-written entry is not believed: only the one the proxy appended (the last).
    let r = authorize_with(
        &ep,
        ec2_credential(&behind),
        None,
        Some("10.0.0.5, 10.0.0.9"),
    );
    assert_refused(
        &r,
        401,
        "wrong_source_address",
        "forwarded address of another host",
    );
    let r = authorize(&ep, ec2_credential(&behind));
    assert_refused(
        &r,
        401,
        "wrong_source_address",
        "proxy without X-Forwarded-For",
    );
    let r = authorize_with(
        &ep,
        ec2_credential(&behind),
        None,
        Some("203.0.113.9, 10.0.0.5"),
    );
    assert_eq!(r.0, 200, "{}", r.1);
}

#[test]
fn ec2_iam_role_policy_through_the_aws_api() {
    let Some(moto) = moto::start_moto() else {
        return;
    };
    let ids = moto::boto3(
        &moto,
        r#"
iam = c('iam'); ec2 = c('ec2')
iam.create_role(RoleName='web-role', AssumeRolePolicyDocument='{}')
iam.create_instance_profile(InstanceProfileName='web-profile')
iam.add_role_to_instance_profile(InstanceProfileName='web-profile', RoleName='web-role')
iam.create_role(RoleName='db-role', AssumeRolePolicyDocument='{}')
iam.create_instance_profile(InstanceProfileName='db-profile')
iam.add_role_to_instance_profile(InstanceProfileName='db-profile', RoleName='db-role')
ami = ec2.describe_images()['Images'][0]['ImageId']
run = lambda p: ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, IamInstanceProfile={'Name': p})['Instances'][0]['InstanceId']
web = run('web-profile'); db = run('db-profile'); stopped = run('web-profile')
ec2.stop_instances(InstanceIds=[stopped])
print(web, db, stopped)
"#,
    );
    let ids: Vec<&str> = ids.split_whitespace().collect();
    let (web, db, stopped) = (ids[0], ids[1], ids[2]);
    let host = |id: &str| SimulatedHost {
        aws_region: "us-east-1".into(),
        aws_zone: "us-east-1a".into(),
        aws_instance_id: id.into(),
        ..SimulatedHost::default()
    };
    let simp = SimProcess::start(&host(web));
    let ep = Endpoint::start_with(
        fast(),
        Extra {
            authentication: format!(
                "aws:\n  ec2:\n    certificates:\n    - {{region: us-east-1, file: {}}}\n  api:\n    endpoint: {}\n    requireRunning: true\n",
                simp.trust("aws-rsa2048-us-east-1.pem"),
                moto.url
            ),
            manifests: vec![policy(&format!(
                "    - aws: {{accounts: [\"{ACCOUNT}\"], ec2: {{iamRoleNames: [web-role]}}}}"
            ))],
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ],
        },
    );
    let mut agent = Agent::builder(&ep)
        .host_yaml("host:\n  aws:\n    ec2: {}")
        .env("ONBOARDING_AGENT_AWS_IMDS", &simp.url)
        .start();
    let took = agent.wait_connected(&ep);
    eprintln!(
        "EC2 with the IAM role from the AWS API: agent connected {:.0} ms after start",
        took.as_millis()
    );
    let war = format!("ratings-aws-aws-123456789012-us-east-1a-ec2-{web}");
    let yaml = war_yaml(&ep, &war);
    assert!(
        yaml.contains("web-role"),
        "the WAR carries the role:\n{yaml}"
    );
    assert_bootstrapped(&agent, &war);
    agent.stop();

    // Another role: the policy does not admit it.
    let r = authorize(&ep, ec2_credential(&sim(host(db))));
    assert_refused(&r, 403, "policy_denied", "instance with another IAM role");
    // The endpoint's log reaches us through a reader thread: give it a moment.
    wait_for(
        "the denial naming the role in the log",
        Duration::from_secs(10),
        || ep.log.lock().unwrap().contains("db-role"),
    );
    // requireRunning: a stopped instance's document is refused.
    let r = authorize(&ep, ec2_credential(&sim(host(stopped))));
    assert_refused(&r, 401, "invalid_credential", "stopped instance");
    assert!(
        r.1["message"].as_str().unwrap().contains("not running"),
        "{}",
        r.1
    );
    // An instance the AWS account does not have.
    let r = authorize(&ep, ec2_credential(&sim(host("i-00000000000000000"))));
    assert_refused(&r, 401, "invalid_credential", "unknown instance");
}

#[test]
fn ecs_end_to_end_through_sts_with_host_auto() {
    let Some(moto) = moto::start_moto() else {
        return;
    };
    let task_id = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let creds = moto::boto3(
        &moto,
        &format!(
            r#"
arn = c('iam').create_role(RoleName='app-task-role', AssumeRolePolicyDocument='{{}}')['Role']['Arn']
cr = c('sts').assume_role(RoleArn=arn, RoleSessionName='{task_id}')['Credentials']
print(json.dumps({{'AccessKeyId': cr['AccessKeyId'], 'SecretAccessKey': cr['SecretAccessKey'], 'Token': cr['SessionToken'], 'Expiration': str(cr['Expiration']), 'RoleArn': arn}}))
"#
        ),
    );
    let host = SimulatedHost {
        ecs_credentials: Some(serde_json::from_str(&creds).unwrap()),
        ecs_task_metadata: Some(serde_json::json!({
            "Cluster": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/prod"),
            "TaskARN": format!("arn:aws:ecs:us-east-1:{ACCOUNT}:task/prod/{task_id}"),
            "AvailabilityZone": "us-east-1a",
        })),
        ..SimulatedHost::default()
    };
    let simp = SimProcess::start(&host);
    let ep = Endpoint::start_with(
        fast(),
        Extra {
            authentication: format!("aws:\n  ecs:\n    allowedSts: [{}]\n", moto.url),
            manifests: vec![policy(&format!(
                "    - aws: {{accounts: [\"{ACCOUNT}\"], ecs: {{clusters: [prod], iamRoleNames: [app-task-role]}}}}"
            ))],
            ..Extra::default()
        },
    );
    let closed = closed_port_url();
    let mut agent = Agent::builder(&ep)
        .host_yaml("host:\n  auto: {}")
        .env(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/credentials/sim",
        )
        .env("ONBOARDING_AGENT_ECS_CREDENTIALS_HOST", &simp.url)
        .env("ECS_CONTAINER_METADATA_URI_V4", format!("{}/v4", simp.url))
        .env("ONBOARDING_AGENT_AWS_STS_URL", format!("{}/", moto.url))
        .env("ONBOARDING_AGENT_AWS_STS_REGION", "us-east-1")
        .env("ONBOARDING_AGENT_AWS_IMDS", &closed)
        .env("ONBOARDING_AGENT_GCP_METADATA", &closed)
        .env("ONBOARDING_AGENT_AZURE_IMDS", closed)
        .start();
    let took = agent.wait_connected(&ep);
    eprintln!(
        "ECS: agent connected {:.0} ms after start",
        took.as_millis()
    );
    assert!(
        agent.log().contains("detected the platform") && agent.log().contains("aws-ecs"),
        "{}",
        agent.log()
    );
    let war = format!("ratings-aws-aws-123456789012-us-east-1-ecs-prod-{task_id}");
    let yaml = war_yaml(&ep, &war);
    assert!(yaml.contains("app-task-role"), "{yaml}");
    assert_bootstrapped(&agent, &war);
    agent.stop();
}

#[test]
fn gcp_end_to_end_with_host_auto_and_refusals() {
    let host = SimulatedHost::default();
    let simp = SimProcess::start(&host);
    let ep = Endpoint::start_with(
        fast(),
        Extra {
            authentication: format!("gcp:\n  jwksFile: {}\n", simp.trust("gcp-jwks.json")),
            manifests: vec![policy(
                "    - gcp: {projects: [gcp-example], regions: [us-central1], gce: {serviceAccounts: [sim@gcp-example.iam.gserviceaccount.com], instanceNames: [sim-vm]}}",
            )],
            ..Extra::default()
        },
    );
    // `host: auto`: only the GCE metadata server answers (the others are closed ports).
    let closed = closed_port_url();
    let mut agent = Agent::builder(&ep)
        .host_yaml("host:\n  auto: {}")
        .env("ONBOARDING_AGENT_GCP_METADATA", &simp.url)
        .env("ONBOARDING_AGENT_AWS_IMDS", &closed)
        .env("ONBOARDING_AGENT_AZURE_IMDS", closed)
        .start();
    let took = agent.wait_connected(&ep);
    eprintln!(
        "GCP: agent connected {:.0} ms after start",
        took.as_millis()
    );
    assert!(
        agent.log().contains("detected the platform") && agent.log().contains("gcp"),
        "{}",
        agent.log()
    );
    let war = "ratings-gcp-gcp-example-us-central1-a-gce-693197132356332126";
    let yaml = war_yaml(&ep, war);
    assert!(
        yaml.contains("sim@gcp-example.iam.gserviceaccount.com"),
        "{yaml}"
    );
    assert_bootstrapped(&agent, war);

    let s = sim(host);
    let now = unix_now();
    let gcp = |t: String| serde_json::json!({"type": "gcp", "token": t});
    // While the agent is connected, another token for the same instance.
    let r = authorize(&ep, gcp(s.gcp_token(&ep.plane_uid, now - 10).unwrap()));
    assert_refused(&r, 409, "session_conflict", "second concurrent GCE session");
    agent.stop();

    let r = authorize(&ep, gcp(s.gcp_token("another-plane", now).unwrap()));
    assert_refused(&r, 401, "wrong_audience", "token for another plane");
    let r = authorize(&ep, gcp(s.gcp_token(&ep.plane_uid, now - 7200).unwrap()));
    assert_refused(&r, 401, "credential_expired", "expired token");
    let token = s.gcp_token(&ep.plane_uid, now - 20).unwrap();
    let r = authorize(&ep, gcp(token.clone()));
    assert_eq!(r.0, 200, "{}", r.1);
    let r = authorize(&ep, gcp(token));
    assert_refused(&r, 401, "credential_reused", "the same token twice");
}

#[test]
fn azure_end_to_end_with_endpoint_nonce_and_refusals() {
    let host = SimulatedHost::default();
    let simp = SimProcess::start(&host);
    let ep = Endpoint::start_with(
        fast(),
        Extra {
            authentication: format!(
                "azure:\n  rootCertificates: [{}]\n",
                simp.trust("azure-root.pem")
            ),
            manifests: vec![policy(&format!(
                "    - azure: {{subscriptions: [\"{SUBSCRIPTION}\"], resourceGroups: [Azure-Example], locations: [westeurope], compute: {{names: [sim-vm]}}}}"
            ))],
            ..Extra::default()
        },
    );
    let mut agent = Agent::builder(&ep)
        .host_yaml("host:\n  azure: {}")
        .env("ONBOARDING_AGENT_AZURE_IMDS", &simp.url)
        .start();
    let took = agent.wait_connected(&ep);
    eprintln!(
        "Azure: agent connected {:.0} ms after start",
        took.as_millis()
    );
    let war = format!(
        "ratings-azure-{SUBSCRIPTION}-azure-example-vm-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    );
    let yaml = war_yaml(&ep, &war);
    assert!(yaml.contains("sim-vm"), "{yaml}");
    assert_bootstrapped(&agent, &war);
    agent.stop();

    let s = sim(host.clone());
    let compute = serde_json::json!({"vmId": host.azure_vm_id, "subscriptionId": host.azure_subscription,
        "resourceGroupName": host.azure_resource_group, "name": host.azure_vm_name, "location": host.azure_location});
    let nonce = || -> String {
        let (st, n) = ep.call("POST", "/v1/nonce", None, None);
        assert_eq!(st, 200, "{n}");
        n["nonce"].as_str().unwrap().to_string()
    };
    let attested = |n: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(&s.azure_attested(n).unwrap()).unwrap();
        v["signature"].as_str().unwrap().to_string()
    };
    let cred = |sig: String, n: &str| serde_json::json!({"type": "azure", "signature": sig, "nonce": n, "instanceMetadata": compute});
    // The document signs another nonce than the one presented.
    let issued = nonce();
    let r = authorize(
        &ep,
        cred(attested("0123456789abcdef0123456789abcdef"), &issued),
    );
    assert_refused(&r, 401, "wrong_nonce", "document signed over another nonce");
    // A nonce this endpoint never issued.
    let made_up = "fedcba9876543210fedcba9876543210";
    let r = authorize(&ep, cred(attested(made_up), made_up));
    assert_refused(&r, 401, "wrong_nonce", "nonce not issued here");
    // A good one, then the same again.
    let n = nonce();
    let good = cred(attested(&n), &n);
    let r = authorize(&ep, good.clone());
    assert_eq!(r.0, 200, "{}", r.1);
    let r = authorize(&ep, good);
    assert_refused(&r, 401, "wrong_nonce", "nonce used twice");
    // GET works too; the unsigned metadata must match the signed vmId.
    let (st, _) = ep.call("GET", "/v1/nonce", None, None);
    assert_eq!(st, 200);
    let n = nonce();
    let mut lying = cred(attested(&n), &n);
    lying["instanceMetadata"]["vmId"] = serde_json::json!("99999999-0000-0000-0000-000000000000");
    let r = authorize(&ep, lying);
    assert_refused(&r, 401, "invalid_credential", "metadata of another VM");
}

#[test]
fn platforms_not_configured_are_refused_and_auto_gives_up_fast() {
    let ep = Endpoint::start(fast());
    let (_, d) = ep.call("GET", "/v1/discovery", None, None);
    assert_eq!(d["platforms"], serde_json::json!(["jwt"]));
    let s = sim(SimulatedHost::default());
    let r = authorize(&ep, ec2_credential(&s));
    assert_refused(&r, 403, "unsupported_platform", "EC2 not enabled");
    let (st, n) = ep.call("POST", "/v1/nonce", None, None);
    assert_eq!(
        (st, n["code"].as_str()),
        (403, Some("unsupported_platform"))
    );

    // `host: auto` on a host without any metadata service: a clear start-up error within
    // about one probe timeout, no hang.
    let closed = closed_port_url();
    let dir = tempfile::tempdir().unwrap();
    let onboarding = dir.path().join("onboarding.yaml");
    std::fs::write(
        &onboarding,
        format!(
            "onboardingEndpoint: {{host: 127.0.0.1, port: {}}}\nworkloadGroup: {{namespace: {NS}, name: ratings}}\n",
            ep.port()
        ),
    )
    .unwrap();
    let agent_cfg = dir.path().join("agent.yaml");
    std::fs::write(&agent_cfg, "host: {auto: {}}\n").unwrap();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_onboarding-agent"))
        .arg("--onboarding-config")
        .arg(&onboarding)
        .arg("--agent-config")
        .arg(&agent_cfg)
        .arg("--state-file")
        .arg(dir.path().join("state.json"))
        .env("ONBOARDING_AGENT_AWS_IMDS", &closed)
        .env("ONBOARDING_AGENT_GCP_METADATA", &closed)
        .env("ONBOARDING_AGENT_AZURE_IMDS", &closed)
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("ONBOARDING_CONFIG")
        .env_remove("AGENT_CONFIG")
        .output()
        .unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("host: auto found no cloud metadata service"),
        "{err}"
    );
    eprintln!(
        "host: auto on a non-cloud host gave up after {:.0} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn offline_identity_verify_command() {
    let d = endpoint::repo().join("testdata/aws-iid/rsa2048-us-west-2-2021");
    let out = Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"))
        .args(["identity", "verify", "--platform", "aws", "--document"])
        .arg(d.join("document.json"))
        .arg("--rsa2048")
        .arg(d.join("rsa2048.b64"))
        .args(["--at", "2021-09-03T21:30:00Z"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("us-west-2a"), "{stdout}");

    // A GCP token for another audience: the exact reason, non-zero exit.
    let dir = tempfile::tempdir().unwrap();
    let s = sim(SimulatedHost::default());
    s.write_trust(dir.path()).unwrap();
    std::fs::write(
        dir.path().join("token.jwt"),
        s.gcp_token("plane-a", unix_now()).unwrap(),
    )
    .unwrap();
    let run = |aud: &str| {
        Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"))
            .args(["identity", "verify", "--platform", "gcp", "--token"])
            .arg(dir.path().join("token.jwt"))
            .arg("--jwks")
            .arg(dir.path().join("gcp-jwks.json"))
            .args(["--audience", aud])
            .output()
            .unwrap()
    };
    let ok = run("plane-a");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("sim-vm"));
    let bad = run("plane-b");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("audience") && err.contains("plane-b"), "{err}");
}
