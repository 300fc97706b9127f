//! Runs the real `onboarding-endpoint` binary over real TLS on loopback, in a temporary
//! directory, for integration tests. JWTs are signed with the test keys in testdata/jwt.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ISSUER: &str = "https://idp.test.example";
pub const NS: &str = "bookinfo";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Makes the child die (SIGKILL) with the thread that spawns it, even when the test runner
/// is SIGKILLed, so that no test leaves a server behind.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Appends each line of `pipe` to `log`, on a thread of its own, until the pipe closes.
pub fn collect_lines(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut l) = log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    })
}

/// A test CA and a server certificate for 127.0.0.1/localhost, as PEM.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn test_ca() -> TestCa {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    TestCa {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

pub const WORKLOAD_GROUP: &str = r#"apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: ratings
  namespace: bookinfo
  labels: {app: ratings}
spec:
  metadata:
    labels: {app: ratings}
  template:
    labels: {app: ratings, class: vm}
    serviceAccount: ratings-vm
    network: vm-network
    ports: {http: 8080}
"#;

pub const POLICY: &str = r#"apiVersion: authorization.onboarding.tetrate.io/v1alpha1
kind: OnboardingPolicy
metadata: {name: allow-vms, namespace: bookinfo}
spec:
  allow:
  - workloads:
    - jwt:
        issuer: https://idp.test.example
        subjects: [vm-0001, vm-0002, vm-0003, vm-0004, vm-0005, vm-0006, vm-0007, vm-0008]
    onboardTo:
    - workloadGroupSelector: {matchLabels: {app: ratings}}
"#;

pub const MESH: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    trustDomain: cluster.local
    defaultConfig:
      proxyMetadata: {ISTIO_META_DNS_CAPTURE: "true"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio-ca-root-cert, namespace: bookinfo}
data:
  root-cert.pem: |
    -----BEGIN CERTIFICATE-----
    TESTROOT
    -----END CERTIFICATE-----
"#;

pub struct Options {
    pub grace: &'static str,
    pub keep_alive_interval: &'static str,
    pub keep_alive_timeout: &'static str,
    pub token_expiration: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            grace: "5m",
            keep_alive_interval: "15s",
            keep_alive_timeout: "45s",
            token_expiration: "1h",
        }
    }
}

/// What a test adds to the standard endpoint (cloud platforms, their policies, and the
/// environment the endpoint runs with).
#[derive(Default)]
pub struct Extra {
    /// YAML inserted under `authentication:` (indented by two spaces, after `jwt`).
    pub authentication: String,
    /// Additional manifests for the config directory: (file name, content).
    pub manifests: Vec<(String, String)>,
    /// Environment variables for the endpoint process.
    pub env: Vec<(String, String)>,
}

/// Where an endpoint keeps its registrations and what it is called: tests of the
/// Kubernetes store and of several replicas set these.
#[derive(Default)]
pub struct StoreChoice {
    /// Replaces the `store:` and `istioToken:` sections (e.g. a `store: {kube: ...}`).
    pub store: Option<String>,
    /// Replaces `instanceName: endpoint-test`.
    pub instance_name: Option<String>,
}

pub struct Endpoint {
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    pub config: PathBuf,
    pub ca_pem: String,
    child: Option<Child>,
    pub url: String,
    pub plane_uid: String,
    pub log: Arc<Mutex<String>>,
}

impl Endpoint {
    /// The endpoint's log once it contains `needle`. Its stderr is read by a thread, so a
    /// line about a request may arrive after the response: never assert on the log at once.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
            if log.contains(needle) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the endpoint's log did not contain {needle:?} within 10s:\n{log}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn start(opts: Options) -> Endpoint {
        Endpoint::start_with(opts, Extra::default())
    }

    pub fn start_with(opts: Options, extra: Extra) -> Endpoint {
        Endpoint::start_in(opts, extra, StoreChoice::default())
    }

    pub fn start_in(opts: Options, extra: Extra, choice: StoreChoice) -> Endpoint {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("config")).unwrap();
        for (name, content) in &extra.manifests {
            std::fs::write(p.join("config").join(name), content).unwrap();
        }
        std::fs::write(p.join("config/workloadgroup.yaml"), WORKLOAD_GROUP).unwrap();
        std::fs::write(p.join("config/policy.yaml"), POLICY).unwrap();
        std::fs::write(p.join("config/mesh.yaml"), MESH).unwrap();
        let ca = test_ca();
        std::fs::write(p.join("tls.crt"), &ca.cert_pem).unwrap();
        std::fs::write(p.join("tls.key"), &ca.key_pem).unwrap();
        std::fs::write(p.join("ca.pem"), &ca.ca_pem).unwrap();
        let jwks = repo().join("testdata/jwt/jwks.json");
        let config = p.join("endpoint.yaml");
        std::fs::write(
            &config,
            format!(
                r#"apiVersion: config.endpoint.onboarding.tetrate.io/v1alpha1
kind: EndpointConfiguration
listen: 127.0.0.1:0
instanceName: {instance}
tls: {{certFile: tls.crt, keyFile: tls.key}}
tokenIssuer: {{expiration: {exp}}}
registration:
  gracePeriod: {grace}
  propagationDelay: 1s
  keepAliveInterval: {kai}
  keepAliveTimeout: {kat}
  # The agents of these tests run on this host and report 127.0.0.1 (networkInterfaces
  # include lo): a single-host trial, which the endpoint refuses unless told.
  allowLoopbackAddresses: true
authentication:
  jwt:
    issuers:
    - issuer: {ISSUER}
      shortName: corp
      jwksFile: {jwks}
      tokenFields: {{attributes: {{jsonPath: .attributes}}}}
{auth_extra}
{store}
mesh:
  istiodGateway: 10.20.30.40
# Small enough that an oversized test body still fits the socket buffers: the endpoint
# answers 413 without reading it, and a larger body would meet a closed connection.
server: {{maxBodyBytes: 8192}}
"#,
                instance = choice.instance_name.as_deref().unwrap_or("endpoint-test"),
                store = choice.store.as_deref().unwrap_or(
                    "store:\n  file: {configDir: config, stateDir: state}\nistioToken:\n  command: [sh, -c, \"echo istio-token-for-$NAMESPACE-$SERVICE_ACCOUNT\"]"
                ),
                exp = opts.token_expiration,
                grace = opts.grace,
                kai = opts.keep_alive_interval,
                kat = opts.keep_alive_timeout,
                jwks = jwks.display(),
                auth_extra = extra
                    .authentication
                    .lines()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        )
        .unwrap();
        let mut ep = Endpoint {
            dir,
            env: extra.env,
            config,
            ca_pem: ca.ca_pem,
            child: None,
            url: String::new(),
            plane_uid: String::new(),
            log: Arc::new(Mutex::new(String::new())),
        };
        ep.spawn();
        ep
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"));
        let mut child = die_with_parent(&mut cmd)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start onboarding-endpoint");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let _reader = collect_lines(stderr, self.log.clone());
        let mut lines = BufReader::new(stdout).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("onboarding-endpoint listening on ") => break l,
                Some(Ok(_)) => continue,
                _ => {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "endpoint exited before listening:\n{}",
                        self.log.lock().unwrap()
                    )
                }
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let mut parts = line
            .trim_start_matches("onboarding-endpoint listening on ")
            .split_whitespace();
        self.url = parts.next().unwrap().to_string();
        self.plane_uid = parts
            .next()
            .unwrap()
            .trim_start_matches("plane-uid=")
            .to_string();
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same state (a new port when listening on :0).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts again on the same port, so that an agent configured for it reconnects.
    pub fn restart_same_port(&mut self) {
        let port = self.port();
        self.kill();
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(
            &self.config,
            text.replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}")),
        )
        .unwrap();
        self.spawn();
    }

    pub fn client(&self) -> ureq::Agent {
        let certs = vec![
            ureq::tls::Certificate::from_pem(self.ca_pem.as_bytes())
                .unwrap()
                .to_owned(),
        ];
        ureq::Agent::config_builder()
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
                    .build(),
            )
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into()
    }

    /// POST or GET `path` with an optional bearer and JSON body; returns (status, JSON).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let (status, json, _) = self.call_with_headers(method, path, bearer, body);
        (status, json)
    }

    /// As [`Endpoint::call`], with the answer's headers.
    pub fn call_with_headers(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value, ureq::http::HeaderMap) {
        let agent = self.client();
        let url = format!("{}{}", self.url, path);
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let mut resp = if method == "GET" {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.call().unwrap()
        } else {
            let mut r = agent.post(&url);
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            match body {
                Some(b) => r.send_json(b).unwrap(),
                None => r.send_empty().unwrap(),
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.body_mut().read_to_string().unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json, headers)
    }

    /// Rewrites the config file (`edit` gets its text) and restarts on the same state.
    pub fn reconfigure(&mut self, edit: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(&text)).unwrap();
        self.restart();
    }

    /// Runs a CLI subcommand against this endpoint's store (`get war -A`, ...).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn war_path(&self, name: &str) -> PathBuf {
        self.path(&format!("state/workloadautoregistrations/{NS}/{name}.yaml"))
    }

    pub fn we_path(&self, name: &str) -> PathBuf {
        self.path(&format!("state/workloadentries/{NS}/{name}.yaml"))
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT signed with one of the test keys in testdata/jwt (`trusted-rs256`,
/// `trusted-es256`, `attacker-rs256`, ...), claiming `kid` = the key name unless `kid` is given.
pub fn sign_jwt(key: &str, kid: Option<&str>, claims: serde_json::Value) -> String {
    let pem = std::fs::read(repo().join(format!("testdata/jwt/{key}.key.pem"))).unwrap();
    let (alg, enc) = if key.ends_with("es256") {
        (
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
        )
    } else {
        (
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
    };
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.unwrap_or(key).to_string());
    jsonwebtoken::encode(&header, &claims, &enc).unwrap()
}

/// A valid credential for `sub` addressed to `aud`.
pub fn vm_jwt(sub: &str, aud: &str) -> String {
    sign_jwt(
        "trusted-rs256",
        None,
        serde_json::json!({"iss": ISSUER, "sub": sub, "aud": aud, "iat": now(), "exp": now() + 600,
                           "attributes": {"region": "us-east"}}),
    )
}

pub fn registration_body() -> serde_json::Value {
    serde_json::json!({"registration": {
        "agent": {"version": "0.1.0"},
        "sidecar": {"istio": {"version": "1.24.0"}},
        "host": {"addresses": [{"ip": "10.0.0.7", "type": "VPC"}]},
        "workload": {"labels": {"version": "v5"}}
    }})
}

pub fn authorize(ep: &Endpoint, jwt: &str) -> (u16, serde_json::Value) {
    ep.call(
        "POST",
        "/v1/authorize",
        None,
        Some(
            serde_json::json!({"workloadGroup": {"namespace": NS, "name": "ratings"},
                                "credential": {"type": "jwt", "token": jwt}}),
        ),
    )
}

/// authorize + register; returns (session token, register response).
pub fn onboard(ep: &Endpoint, sub: &str) -> (String, serde_json::Value) {
    let (s, a) = authorize(ep, &vm_jwt(sub, &ep.plane_uid));
    assert_eq!(s, 200, "authorize: {a}");
    let token = a["token"].as_str().unwrap().to_string();
    let (s, r) = ep.call(
        "POST",
        "/v1/register",
        Some(&token),
        Some(registration_body()),
    );
    assert_eq!(s, 200, "register: {r}");
    (token, r)
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
