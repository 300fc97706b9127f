//! A real OpenID provider for tests: panva's `oidc-provider` (testdata/oidc-provider), run
//! with node over HTTPS on 127.0.0.1 with a test CA made here with rcgen, on a free port.
//!
//! Use from an integration test with `#[path = "support/oidc.rs"] mod oidc;`.
//! Needs `node` (>= 20.18) and `npm ci --prefix testdata/oidc-provider` once.
#![allow(dead_code)] // each test uses a different part of this module

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The default client of `issuer.mjs`: `client_credentials`, `attributes: {region: us-east}`.
pub const CLIENT_ID: &str = "vm-0001";
pub const CLIENT_SECRET: &str = "vm-0001-secret";

const READY_PREFIX: &str = "oidc-provider ready: issuer=";
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Options {
    /// How access tokens are signed: "RS256" or "ES256".
    pub alg: &'static str,
    /// Replaces the default client list (oidc-provider client metadata, `attributes` allowed).
    pub clients: Option<serde_json::Value>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            alg: "RS256",
            clients: None,
        }
    }
}

pub struct OidcProvider {
    child: Child,
    /// `https://127.0.0.1:<port>`: equals the tokens' `iss`.
    pub issuer: String,
    /// The test CA that signed the provider's TLS certificate.
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub client_id: String,
    pub client_secret: String,
    /// From spawn to the ready line.
    pub startup: Duration,
    dir: tempfile::TempDir,
}

pub fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/oidc-provider")
}

/// The `resource` that makes `issuer.mjs` put exactly `audience` into the token's `aud`.
pub fn resource_for(audience: &str) -> String {
    format!("urn:audience:{audience}")
}

fn check_prerequisites() {
    let node = Command::new("node").arg("--version").output();
    match node {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "these tests run a real OpenID provider with Node.js, and `node` is not on PATH: \
             install Node.js >= 20.18 (22 LTS recommended), then run \
             `npm ci --prefix testdata/oidc-provider`"
        ),
    }
    let module = provider_dir().join("node_modules/oidc-provider/package.json");
    assert!(
        module.exists(),
        "{} is missing: run `npm ci --prefix testdata/oidc-provider` once (it installs the \
         pinned oidc-provider from package-lock.json)",
        module.display()
    );
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made fresh so nothing expires.
fn write_tls(dir: &Path) -> (String, PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "oidc-provider test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");

    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &ca).expect("server certificate");

    let ca_file = dir.join("ca.crt");
    let cert_file = dir.join("server.crt");
    let key_file = dir.join("server.key");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    std::fs::write(&cert_file, cert.pem()).expect("write server certificate");
    std::fs::write(&key_file, key.serialize_pem()).expect("write server key");
    (ca.pem(), ca_file, cert_file, key_file)
}

impl OidcProvider {
    pub fn start() -> OidcProvider {
        Self::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> OidcProvider {
        check_prerequisites();
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca_pem, ca_file, cert_file, key_file) = write_tls(dir.path());
        let stderr_path = dir.path().join("issuer.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut command = Command::new("node");
        command
            .arg(provider_dir().join("issuer.mjs"))
            .current_dir(dir.path())
            .env("OIDC_PORT", "0")
            .env("OIDC_TLS_CERT", &cert_file)
            .env("OIDC_TLS_KEY", &key_file)
            .env("OIDC_AT_ALG", options.alg)
            .env_remove("OIDC_ISSUER")
            .env_remove("OIDC_CLIENTS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(clients) = &options.clients {
            command.env("OIDC_CLIENTS", clients.to_string());
        }
        let started = Instant::now();
        let mut child = command.spawn().expect("spawn node issuer.mjs");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout after the ready line, so the provider never blocks on a pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let issuer = loop {
            match rx.recv_timeout(START_TIMEOUT.saturating_sub(started.elapsed())) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(READY_PREFIX) {
                        break rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let mut err = String::new();
                    let _ = std::fs::File::open(&stderr_path)
                        .and_then(|mut f| f.read_to_string(&mut err));
                    panic!(
                        "the OpenID provider did not get ready within {START_TIMEOUT:?}; its stderr:\n{err}"
                    );
                }
            }
        };
        OidcProvider {
            child,
            issuer,
            ca_pem,
            ca_file,
            client_id: CLIENT_ID.to_owned(),
            client_secret: CLIENT_SECRET.to_owned(),
            startup: started.elapsed(),
            dir,
        }
    }

    /// An HTTP client that trusts only the test CA.
    pub fn http(&self) -> ureq::Agent {
        let ca = ureq::tls::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA PEM");
        ureq::Agent::config_builder()
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
                    .build(),
            )
            .http_status_as_error(false)
            .build()
            .into()
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// A `client_credentials` access token whose `aud` is `audience`, for the default client.
    pub fn token_for(&self, audience: &str) -> String {
        let (status, body) = self.request_token(
            &self.client_id,
            &self.client_secret,
            &resource_for(audience),
        );
        assert_eq!(status, 200, "token request failed: {body}");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }

    /// POST /token (client_secret_basic); returns the status and the JSON body.
    pub fn request_token(
        &self,
        client_id: &str,
        client_secret: &str,
        resource: &str,
    ) -> (u16, serde_json::Value) {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{client_id}:{client_secret}"));
        let mut response = self
            .http()
            .post(self.token_endpoint())
            .header("Authorization", format!("Basic {basic}"))
            .send_form([("grant_type", "client_credentials"), ("resource", resource)])
            .expect("token request");
        let status = response.status().as_u16();
        let body: serde_json::Value = response
            .body_mut()
            .read_json()
            .expect("token response JSON");
        (status, body)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
