//! A cloud metadata simulator for tests and demos: AWS IMDSv2 (identity document and
//! `rsa2048` PKCS#7), the GCE identity token, Azure attested data and compute metadata, and
//! the ECS container credentials endpoint, signed with test keys, on 127.0.0.1 only.
//!
//! The simulator signs exactly the shapes the real services produce, so the endpoint runs
//! its real verifiers against it once it trusts the simulator's test certificates
//! ([`Simulator::write_trust`]). Nothing here is used by the verifiers themselves.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use der::Decode;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use x509_cert::Certificate;

use workload_onboarding::identity::cms;

/// The kid of the simulator's GCE signing key.
pub const GCP_KID: &str = "sim-gcp-1";

/// What the simulated machine is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulatedHost {
    pub aws_account: String,
    pub aws_region: String,
    pub aws_zone: String,
    pub aws_instance_id: String,
    pub private_ip: String,
    pub gcp_project_id: String,
    pub gcp_project_number: u64,
    pub gcp_zone: String,
    pub gcp_instance_id: String,
    pub gcp_instance_name: String,
    pub gcp_service_account: String,
    pub azure_subscription: String,
    pub azure_resource_group: String,
    pub azure_vm_id: String,
    pub azure_vm_name: String,
    pub azure_location: String,
    /// ECS container credentials served at `/v2/credentials/sim` (e.g. from moto's
    /// AssumeRole), and the task metadata at `/v4/task`.
    #[serde(default)]
    pub ecs_credentials: Option<serde_json::Value>,
    #[serde(default)]
    pub ecs_task_metadata: Option<serde_json::Value>,
}

impl Default for SimulatedHost {
    fn default() -> Self {
        SimulatedHost {
            aws_account: "123456789012".into(),
            aws_region: "us-east-2".into(),
            aws_zone: "us-east-2b".into(),
            aws_instance_id: "i-0123456789abcdef0".into(),
            private_ip: "127.0.0.1".into(),
            gcp_project_id: "gcp-example".into(),
            gcp_project_number: 234567890121,
            gcp_zone: "us-central1-a".into(),
            gcp_instance_id: "693197132356332126".into(),
            gcp_instance_name: "sim-vm".into(),
            gcp_service_account: "sim@gcp-example.iam.gserviceaccount.com".into(),
            azure_subscription: "11111111-2222-3333-4444-555555555555".into(),
            azure_resource_group: "azure-example".into(),
            azure_vm_id: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            azure_vm_name: "sim-vm".into(),
            azure_location: "westeurope".into(),
            ecs_credentials: None,
            ecs_task_metadata: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

fn setup(e: impl std::fmt::Display) -> SimError {
    SimError::Setup(e.to_string())
}

/// Keys and certificates the simulator signs with.
pub struct SimulatorKeys {
    aws_key: rsa::RsaPrivateKey,
    aws_cert: Certificate,
    aws_cert_pem: String,
    gcp_key_pem: String,
    gcp_jwks: String,
    azure_root_pem: String,
    azure_leaf_key: rsa::RsaPrivateKey,
    azure_leaf: Certificate,
}

impl SimulatorKeys {
    /// Load the four test keys (`aws-region-key.pem`, `gcp-key.pem`, `azure-root-key.pem`,
    /// `azure-leaf-key.pem`, PKCS#8) from `dir` and make the certificates.
    pub fn load(dir: &Path) -> Result<SimulatorKeys, SimError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| setup(format!("{}: {e}", dir.join(name).display())))
        };
        let aws_pem = read("aws-region-key.pem")?;
        let gcp_pem = read("gcp-key.pem")?;
        let root_pem = read("azure-root-key.pem")?;
        let leaf_pem = read("azure-leaf-key.pem")?;

        let rcgen_key = |pem: &str| {
            rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(pem, &rcgen::PKCS_RSA_SHA256)
                .map_err(setup)
        };
        let aws_kp = rcgen_key(&aws_pem)?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(setup)?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(
            rcgen::DnType::OrganizationName,
            "Simulated Amazon Web Services LLC",
        );
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x51, 0x4d, 0x01]));
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2199, 1, 1);
        let aws_cert_pem = p.self_signed(&aws_kp).map_err(setup)?.pem();

        let root_kp = rcgen_key(&root_pem)?;
        let mut rp = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(setup)?;
        rp.distinguished_name = rcgen::DistinguishedName::new();
        rp.distinguished_name
            .push(rcgen::DnType::CommonName, "Simulated Azure Test Root");
        rp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rp.not_before = rcgen::date_time_ymd(2020, 1, 1);
        rp.not_after = rcgen::date_time_ymd(2199, 1, 1);
        let root = rcgen::CertifiedIssuer::self_signed(rp, root_kp).map_err(setup)?;
        let leaf_kp = rcgen_key(&leaf_pem)?;
        let mut lp = rcgen::CertificateParams::new(vec!["sim.metadata.azure.com".to_string()])
            .map_err(setup)?;
        lp.distinguished_name = rcgen::DistinguishedName::new();
        lp.distinguished_name
            .push(rcgen::DnType::CommonName, "sim.metadata.azure.com");
        lp.not_before = rcgen::date_time_ymd(2020, 1, 1);
        lp.not_after = rcgen::date_time_ymd(2199, 1, 1);
        let leaf = lp.signed_by(&leaf_kp, &root).map_err(setup)?;

        let gcp_key = rsa::RsaPrivateKey::from_pkcs8_pem(&gcp_pem).map_err(setup)?;
        let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let gcp_jwks = serde_json::json!({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": GCP_KID,
            "n": b64(gcp_key.n().to_bytes_be()), "e": b64(gcp_key.e().to_bytes_be()),
        }]})
        .to_string();

        Ok(SimulatorKeys {
            aws_key: rsa::RsaPrivateKey::from_pkcs8_pem(&aws_pem).map_err(setup)?,
            aws_cert: cms::certificates_from_pem(aws_cert_pem.as_bytes())
                .map_err(setup)?
                .remove(0),
            aws_cert_pem,
            gcp_key_pem: gcp_pem,
            gcp_jwks,
            azure_root_pem: root.pem(),
            azure_leaf_key: rsa::RsaPrivateKey::from_pkcs8_pem(&leaf_pem).map_err(setup)?,
            azure_leaf: Certificate::from_der(leaf.der()).map_err(setup)?,
        })
    }

    pub fn aws_certificate_pem(&self) -> &str {
        &self.aws_cert_pem
    }
    pub fn gcp_jwks(&self) -> &str {
        &self.gcp_jwks
    }
    pub fn azure_root_pem(&self) -> &str {
        &self.azure_root_pem
    }
}

fn unix_now() -> u64 {
    workload_onboarding::clock::unix(SystemTime::now())
        .max(0)
        .unsigned_abs()
}

/// The simulator: signing logic (usable without the HTTP server) and its state.
pub struct Simulator {
    keys: SimulatorKeys,
    host: SimulatedHost,
    /// Unix seconds of the simulated launch (`pendingTime`).
    launched_at: u64,
    imds_tokens: Mutex<Vec<String>>,
}

impl Simulator {
    pub fn new(keys: SimulatorKeys, host: SimulatedHost) -> Simulator {
        Simulator {
            keys,
            host,
            launched_at: unix_now(),
            imds_tokens: Mutex::new(Vec::new()),
        }
    }

    pub fn host(&self) -> &SimulatedHost {
        &self.host
    }

    /// The identity document, formatted as IMDS does (two-space indent, `" : "`, no
    /// trailing newline).
    pub fn aws_document(&self) -> String {
        let h = &self.host;
        let pending = time::OffsetDateTime::from_unix_timestamp(self.launched_at as i64)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let fields: Vec<(&str, String)> = vec![
            ("accountId", format!("\"{}\"", h.aws_account)),
            ("architecture", "\"x86_64\"".into()),
            ("availabilityZone", format!("\"{}\"", h.aws_zone)),
            ("billingProducts", "null".into()),
            ("devpayProductCodes", "null".into()),
            ("marketplaceProductCodes", "null".into()),
            ("imageId", "\"ami-0123456789abcdef0\"".into()),
            ("instanceId", format!("\"{}\"", h.aws_instance_id)),
            ("instanceType", "\"t3.micro\"".into()),
            ("kernelId", "null".into()),
            ("pendingTime", format!("\"{pending}\"")),
            ("privateIp", format!("\"{}\"", h.private_ip)),
            ("ramdiskId", "null".into()),
            ("region", format!("\"{}\"", h.aws_region)),
            ("version", "\"2017-09-30\"".into()),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("  \"{k}\" : {v}"))
            .collect();
        format!("{{\n{}\n}}", body.join(",\n"))
    }

    /// The `rsa2048` body: base64 PKCS#7 over [`Simulator::aws_document`], 64-char lines.
    pub fn aws_rsa2048(&self) -> Result<String, SimError> {
        let der = cms::build_signed_data(
            self.aws_document().as_bytes(),
            &self.keys.aws_cert,
            &self.keys.aws_key,
            false,
            self.launched_at + 3,
        )
        .map_err(setup)?;
        Ok(wrap64(
            &base64::engine::general_purpose::STANDARD.encode(der),
        ))
    }

    /// A GCE identity token (`format=full`) for `audience`, issued at `iat`.
    pub fn gcp_token(&self, audience: &str, iat: u64) -> Result<String, SimError> {
        let h = &self.host;
        let claims = serde_json::json!({
            "iss": "https://accounts.google.com",
            "aud": audience,
            "azp": "100000000000000000001",
            "sub": "100000000000000000001",
            "email": h.gcp_service_account,
            "email_verified": true,
            "iat": iat,
            "exp": iat + 3600,
            "google": {"compute_engine": {
                "project_id": h.gcp_project_id,
                "project_number": h.gcp_project_number,
                "zone": h.gcp_zone,
                "instance_id": h.gcp_instance_id,
                "instance_name": h.gcp_instance_name,
                "instance_creation_timestamp": self.launched_at,
            }},
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(GCP_KID.to_string());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(self.keys.gcp_key_pem.as_bytes())
            .map_err(setup)?;
        jsonwebtoken::encode(&header, &claims, &key).map_err(setup)
    }

    /// Azure attested data (`{"encoding":"pkcs7","signature":...}`) for `nonce`.
    pub fn azure_attested(&self, nonce: &str) -> Result<String, SimError> {
        let h = &self.host;
        let content = serde_json::json!({
            "nonce": nonce,
            "plan": {"name": "", "product": "", "publisher": ""},
            "timeStamp": {"createdOn": "11/28/26 00:16:17 -0000", "expiresOn": "11/28/26 06:16:17 -0000"},
            "vmId": h.azure_vm_id,
            "subscriptionId": h.azure_subscription,
            "sku": "22_04-lts-gen2",
            "licenseType": "",
        })
        .to_string();
        let der = cms::build_signed_data(
            content.as_bytes(),
            &self.keys.azure_leaf,
            &self.keys.azure_leaf_key,
            true,
            unix_now(),
        )
        .map_err(setup)?;
        Ok(serde_json::json!({
            "encoding": "pkcs7",
            "signature": base64::engine::general_purpose::STANDARD.encode(der),
        })
        .to_string())
    }

    fn azure_compute(&self) -> String {
        let h = &self.host;
        serde_json::json!({
            "vmId": h.azure_vm_id, "subscriptionId": h.azure_subscription,
            "resourceGroupName": h.azure_resource_group, "name": h.azure_vm_name,
            "location": h.azure_location,
        })
        .to_string()
    }

    /// Write what an endpoint must trust: `aws-rsa2048-<region>.pem`, `gcp-jwks.json`,
    /// `azure-root.pem`, and `host.json` (the simulated identity).
    pub fn write_trust(&self, dir: &Path) -> Result<(), SimError> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join(format!("aws-rsa2048-{}.pem", self.host.aws_region)),
            &self.keys.aws_cert_pem,
        )?;
        std::fs::write(dir.join("gcp-jwks.json"), &self.keys.gcp_jwks)?;
        std::fs::write(dir.join("azure-root.pem"), &self.keys.azure_root_pem)?;
        std::fs::write(
            dir.join("host.json"),
            serde_json::to_vec_pretty(&self.host).map_err(setup)?,
        )?;
        Ok(())
    }

    /// Answer one request: (status, content type, body).
    pub fn respond(
        &self,
        method: &str,
        target: &str,
        headers: &BTreeMap<String, String>,
    ) -> (u16, &'static str, String) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let q: BTreeMap<String, String> = serde_urlencoded::from_str(query).unwrap_or_default();
        let header = |n: &str| headers.get(n).map(String::as_str);
        let text = "text/plain";
        let json = "application/json";
        let imds_ok = || {
            header("x-aws-ec2-metadata-token").is_some_and(|t| {
                self.imds_tokens
                    .lock()
                    .map(|toks| toks.iter().any(|x| x == t))
                    .unwrap_or(false)
            })
        };
        match (method, path) {
            ("PUT", "/latest/api/token") => {
                let ttl = header("x-aws-ec2-metadata-token-ttl-seconds")
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|v| (1..=21600).contains(v));
                if ttl.is_none() || header("x-forwarded-for").is_some() {
                    return (400, text, "missing or invalid TTL header".into());
                }
                let token = format!("sim-{:016x}", rand_u64());
                if let Ok(mut toks) = self.imds_tokens.lock() {
                    toks.push(token.clone());
                }
                (200, text, token)
            }
            ("GET", p) if p.starts_with("/latest/") && !imds_ok() => (401, text, String::new()),
            ("GET", "/latest/dynamic/instance-identity/document") => {
                (200, json, self.aws_document())
            }
            ("GET", "/latest/dynamic/instance-identity/rsa2048") => match self.aws_rsa2048() {
                Ok(b) => (200, text, b),
                Err(e) => (500, text, e.to_string()),
            },
            ("GET", "/computeMetadata/v1/instance/service-accounts/default/identity") => {
                if header("metadata-flavor") != Some("Google") {
                    return (403, text, "Missing Metadata-Flavor:Google header".into());
                }
                let Some(aud) = q.get("audience").filter(|a| !a.is_empty()) else {
                    return (400, text, "non-empty audience parameter required".into());
                };
                if q.get("format").map(String::as_str) != Some("full") {
                    return (400, text, "the simulator serves format=full only".into());
                }
                match self.gcp_token(aud, unix_now()) {
                    Ok(t) => (200, text, t),
                    Err(e) => (500, text, e.to_string()),
                }
            }
            ("GET", "/metadata/attested/document") | ("GET", "/metadata/instance/compute")
                if header("metadata") != Some("true") =>
            {
                (
                    400,
                    json,
                    r#"{"error":"Bad request. Required metadata header not specified"}"#.into(),
                )
            }
            ("GET", "/metadata/attested/document") => {
                let nonce = q.get("nonce").cloned().unwrap_or_default();
                match self.azure_attested(&nonce) {
                    Ok(b) => (200, json, b),
                    Err(e) => (500, text, e.to_string()),
                }
            }
            ("GET", "/metadata/instance/compute") => (200, json, self.azure_compute()),
            ("GET", "/v2/credentials/sim") => match &self.host.ecs_credentials {
                Some(c) => (200, json, c.to_string()),
                None => (404, text, "no ECS credentials configured".into()),
            },
            ("GET", "/v4/task") => match &self.host.ecs_task_metadata {
                Some(c) => (200, json, c.to_string()),
                None => (404, text, "no ECS task metadata configured".into()),
            },
            _ => (404, text, "not found".into()),
        }
    }
}

fn wrap64(s: &str) -> String {
    s.as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    // The IMDS session token only has to be unguessable by accident in a test.
    if getrandom_fill(&mut b).is_err() {
        return unix_now();
    }
    u64::from_le_bytes(b)
}

fn getrandom_fill(b: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(b)
}

/// A running simulator server.
pub struct SimulatorServer {
    pub addr: SocketAddr,
}

impl SimulatorServer {
    /// Serve `sim` on `127.0.0.1:<port>` (0 = any) from a background thread.
    pub fn start(sim: Arc<Simulator>, port: u16) -> Result<SimulatorServer, SimError> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let sim = sim.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(&sim, conn) {
                        tracing::debug!(error = %e, "simulator connection");
                    }
                });
            }
        });
        Ok(SimulatorServer { addr })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve(sim: &Simulator, conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return Ok(());
        };
        let (method, target) = (method.to_string(), target.to_string());
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len.min(1 << 20)];
        reader.read_exact(&mut body)?;
        let (status, ctype, body) = sim.respond(&method, &target, &headers);
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            _ => "Error",
        };
        // The GCE metadata server marks every answer; clients (and `host: auto`) rely on it.
        let flavor = if target.starts_with("/computeMetadata/") {
            "Metadata-Flavor: Google\r\n"
        } else {
            ""
        };
        let mut w = &conn;
        write!(
            w,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n{flavor}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        w.flush()?;
        if headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
}
