//! The endpoint's configuration file (`onboarding-endpoint serve --config endpoint.yaml`).
//! Every field has a production default except the TLS certificate (no silent plain text)
//! and the store's directories. Relative paths are relative to the config file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::duration::Duration;
use crate::api::registration::AddressType;
use crate::identity::aws::api::AwsApiConfig;
use crate::identity::aws::ecs::EcsConfig;
use crate::identity::aws::replay::IpCidr;
use crate::identity::azure::AzureConfig;
use crate::identity::gcp::GcpConfig;
use crate::identity::jwt::IssuerConfig;
use crate::store::file::IstioTokenSource;

mod paths;
pub use paths::ConfigPaths;

pub const API_VERSION: &str = "config.endpoint.onboarding.tetrate.io/v1alpha1";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:15443";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConfig {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    /// `host:port` to listen on. Default `0.0.0.0:15443`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Shown as `connectedTo` in WARs. Default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
    /// The onboarding plane's UID (audience of credentials and session tokens). Generated
    /// and persisted in the state directory when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plane_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub token_issuer: TokenIssuerConfig,
    #[serde(default)]
    pub registration: RegistrationConfig,
    #[serde(default)]
    pub authentication: AuthenticationConfig,
    pub store: StoreConfig,
    #[serde(default)]
    pub mesh: MeshSettings,
    #[serde(default)]
    pub istio_token: Option<IstioTokenSource>,
    #[serde(default)]
    pub templates: TemplatesConfig,
    #[serde(default)]
    pub server: ServerLimits,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Packages served under `/install/` (docs/install.md). Absent: `/install/` is 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_repository: Option<LocalRepository>,
}

/// `localRepository`: the directory whose `deb/`, `rpm/` and `istio-sidecar/` the endpoint
/// serves under `/install/` (src/endpoint/install.rs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRepository {
    pub directory: PathBuf,
}

fn api_version() -> String {
    API_VERSION.into()
}
fn kind() -> String {
    "EndpointConfiguration".into()
}
fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenIssuerConfig {
    /// Session token lifetime. Default 1h.
    #[serde(default = "one_hour")]
    pub expiration: Duration,
    /// PKCS#8 P-256 key. Default `<stateDir>/session-signing-key.pem`, generated (0600)
    /// when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
}

impl Default for TokenIssuerConfig {
    fn default() -> Self {
        TokenIssuerConfig {
            expiration: one_hour(),
            signing_key_file: None,
        }
    }
}

fn one_hour() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrationConfig {
    /// How long a disconnected agent's WAR and WorkloadEntry survive. Default 5m.
    #[serde(default = "five_minutes")]
    pub grace_period: Duration,
    /// What `unregister` tells the agent to wait before stopping the sidecar. Default 10s.
    #[serde(default = "ten_seconds")]
    pub propagation_delay: Duration,
    /// How often agents send keep-alives. Default 15s.
    #[serde(default = "fifteen_seconds")]
    pub keep_alive_interval: Duration,
    /// No keep-alive for this long marks the agent disconnected. Default 3 intervals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_timeout: Option<Duration>,
    /// Accept loopback addresses (127.0.0.0/8, ::1) as a workload's address. Only for
    /// trials where the mesh and the "VM" are the same machine: no other host can reach a
    /// loopback address. Default false. Unspecified and multicast addresses are always
    /// refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_loopback_addresses: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            grace_period: five_minutes(),
            propagation_delay: ten_seconds(),
            keep_alive_interval: fifteen_seconds(),
            keep_alive_timeout: None,
            allow_loopback_addresses: false,
        }
    }
}

impl RegistrationConfig {
    pub fn keep_alive_timeout(&self) -> std::time::Duration {
        self.keep_alive_timeout
            .map(|d| d.as_std())
            .unwrap_or(self.keep_alive_interval.as_std() * 3)
    }
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn fifteen_seconds() -> Duration {
    Duration::from_secs(15)
}

/// Which credentials the endpoint accepts. Every platform is off until configured here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthenticationConfig {
    #[serde(default)]
    pub jwt: JwtAuthentication,
    /// AWS EC2 identity documents and ECS task roles (docs/identity.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsAuthentication>,
    /// GCE instance identity tokens; present = enabled (Google's JWKS by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpConfig>,
    /// Azure attested data; present = enabled (needs `rootCertificates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureConfig>,
    /// One live session per cloud host (EC2 instance, ECS task, GCE instance, Azure VM): a
    /// second concurrent session for the same host is refused (`session_conflict`). Default
    /// true.
    #[serde(default = "yes")]
    pub one_session_per_host: bool,
}

impl Default for AuthenticationConfig {
    fn default() -> Self {
        AuthenticationConfig {
            jwt: JwtAuthentication::default(),
            aws: None,
            gcp: None,
            azure: None,
            one_session_per_host: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// `authentication.aws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsAuthentication {
    /// Present = EC2 identity documents are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Authentication>,
    /// Present = ECS task-role proofs are accepted (forwarded to an allowed STS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<EcsConfig>,
    /// The AWS API, for the EC2 instance's IAM role and state. Without it the role is
    /// unknown and policies listing `ec2.iamRoleNames` never match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<AwsApiSettings>,
}

/// `authentication.aws.ec2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ec2Authentication {
    /// Certificates trusted beside the built-in `rsa2048` ones (a new region, a rotated
    /// certificate, the legacy forms' certificates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Ec2CertificateFile>,
    /// Accept the legacy raw `signature` (RSA-1024). Default false.
    #[serde(default)]
    pub allow_signature: bool,
    /// Accept the legacy DSA/SHA-1 `pkcs7`. Default false.
    #[serde(default)]
    pub allow_pkcs7_dsa: bool,
    /// How EC2 agents reach this endpoint. `VPC` (default): the request's source address must
    /// be the document's `privateIp`. `INTERNET`: through NAT, no binding is possible.
    #[serde(default)]
    pub connected_over: AddressType,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed: for a request from one of them,
    /// the last address in that header is checked instead of the proxy's. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<IpCidr>,
    /// Refuse a first onboarding (no WAR yet) with a document older than this since its
    /// `pendingTime`. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_since_pending: Option<Duration>,
}

/// One operator-supplied certificate for EC2 identity documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ec2CertificateFile {
    pub region: String,
    /// Which signature form it verifies. Default `rsa2048`.
    #[serde(default)]
    pub form: Ec2SignatureForm,
    /// PEM file (one or more certificates).
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ec2SignatureForm {
    #[default]
    Rsa2048,
    Pkcs7,
    Signature,
}

/// `authentication.aws.api`. Credentials come from `credentialsFile` (the AWS shared
/// credentials format) or from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN` in the endpoint's environment; never from this file itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsApiSettings {
    /// One address for EC2 and IAM (a VPC endpoint proxy, a local AWS API); default the
    /// public regional endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// The profile in `credentialsFile`. Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Refuse instances whose state is not `running`. Default false.
    #[serde(default)]
    pub require_running: bool,
}

impl AwsApiSettings {
    /// The API client's settings with credentials read from the file or `env`.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<AwsApiConfig, String> {
        let (id, secret, token) = match &self.credentials_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "authentication.aws.api.credentialsFile {}: {e}",
                        path.display()
                    )
                })?;
                let profile = self.profile.as_deref().unwrap_or("default");
                let values = shared_credentials(&text, profile);
                let get = |k: &str| values.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                (
                    get("aws_access_key_id"),
                    get("aws_secret_access_key"),
                    get("aws_session_token"),
                )
            }
            None => (
                env("AWS_ACCESS_KEY_ID"),
                env("AWS_SECRET_ACCESS_KEY"),
                env("AWS_SESSION_TOKEN"),
            ),
        };
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        match (nonempty(id), nonempty(secret)) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(AwsApiConfig {
                endpoint: self.endpoint.clone(),
                access_key_id,
                secret_access_key,
                session_token: nonempty(token),
                require_running: self.require_running,
            }),
            _ => Err(match &self.credentials_file {
                Some(p) => format!(
                    "authentication.aws.api: {} has no aws_access_key_id and aws_secret_access_key in profile [{}]",
                    p.display(),
                    self.profile.as_deref().unwrap_or("default")
                ),
                None => "authentication.aws.api: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the endpoint's environment, or credentialsFile".into(),
            }),
        }
    }
}

/// `key = value` lines of one `[profile]` section of an AWS shared credentials file.
fn shared_credentials(text: &str, profile: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == profile;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtAuthentication {
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreConfig {
    /// The embedded store: manifests in a directory, registrations in files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileStoreSettings>,
    /// The Kubernetes API (docs/endpoint.md, "In a cluster").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<crate::store::kube::KubeStoreSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileStoreSettings {
    /// Manifests read by the endpoint (WorkloadGroup, OnboardingPolicy, Sidecar, ConfigMaps
    /// `istio` and `istio-ca-root-cert`); re-read on change.
    pub config_dir: PathBuf,
    /// Where registrations, the plane UID and the session signing key are kept.
    pub state_dir: PathBuf,
    /// Manifest files larger than this are not read (their last good content stays).
    /// Default 4 MiB.
    #[serde(default = "default_manifest_bytes")]
    pub max_manifest_bytes: u64,
    /// Documents per manifest file (`kind: List` items included). Default 1000.
    #[serde(default = "default_manifest_documents")]
    pub max_manifest_documents: usize,
}

fn default_manifest_bytes() -> u64 {
    crate::store::manifests::DEFAULT_MAX_MANIFEST_BYTES
}
fn default_manifest_documents() -> usize {
    crate::store::manifests::DEFAULT_MAX_MANIFEST_DOCUMENTS
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSettings {
    /// `ISTIO_META_CLUSTER_ID`. Default `Kubernetes` (Istio's default cluster name).
    #[serde(default = "default_cluster")]
    pub cluster_id: String,
    #[serde(default = "default_istio_ns")]
    pub istio_namespace: String,
    /// The Istio revision sidecars connect to (`istiod-<rev>`); default revision when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// How VMs reach istiod: the east-west gateway's IP or host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istiod_gateway: Option<String>,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            cluster_id: default_cluster(),
            istio_namespace: default_istio_ns(),
            revision: None,
            istiod_gateway: None,
        }
    }
}

fn default_cluster() -> String {
    "Kubernetes".into()
}
fn default_istio_ns() -> String {
    "istio-system".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplatesConfig {
    /// A directory whose `manifest.yaml` and templates override or add to the built-in ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerLimits {
    /// Largest accepted request body. Default 64 KiB.
    #[serde(default = "default_body")]
    pub max_body_bytes: u64,
    /// A request (headers and body) must complete within this. Default 30s.
    #[serde(default = "thirty_seconds")]
    pub request_timeout: Duration,
    /// A TLS handshake must complete within this. Default 10s.
    #[serde(default = "ten_seconds")]
    pub handshake_timeout: Duration,
    /// Concurrent connections beyond this wait in the kernel backlog. Default 10000.
    #[serde(default = "default_max_conn")]
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_body_bytes: default_body(),
            request_timeout: thirty_seconds(),
            handshake_timeout: ten_seconds(),
            max_connections: default_max_conn(),
        }
    }
}

fn default_body() -> u64 {
    64 * 1024
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn default_max_conn() -> usize {
    10_000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,workload_onboarding=debug`. `RUST_LOG` wins.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What is wrong with a configuration that parsed: one line naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

impl From<String> for InvalidConfig {
    fn from(s: String) -> Self {
        InvalidConfig(s)
    }
}

impl From<&str> for InvalidConfig {
    fn from(s: &str) -> Self {
        InvalidConfig(s.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Yaml(#[from] crate::yaml::YamlError),
    #[error("{}: {message}", path.display())]
    Invalid { message: String, path: PathBuf },
}

impl EndpointConfig {
    pub fn load(path: &Path) -> Result<EndpointConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: EndpointConfig = crate::yaml::from_str(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate()
            .and_then(|()| cfg.check_local_repository())
            .map_err(|e| ConfigError::Invalid {
                message: e.0,
                path: path.to_path_buf(),
            })?;
        Ok(cfg)
    }

    /// The one check at load that looks at the disk: a repository directory that is not
    /// there would make every download a 404, so the endpoint refuses to start instead.
    fn check_local_repository(&self) -> Result<(), InvalidConfig> {
        let Some(r) = &self.local_repository else {
            return Ok(());
        };
        match std::fs::metadata(&r.directory) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(format!(
                "localRepository.directory: {} is not a directory",
                r.directory.display()
            )
            .into()),
            Err(e) => Err(format!(
                "localRepository.directory: {}: {e} (create it and place the packages there, docs/install.md)",
                r.directory.display()
            )
            .into()),
        }
    }

    /// Joins every relative path of the configuration to `base` (the config file's
    /// directory). Which fields are paths is [`ConfigPaths`]' business: the compiler makes
    /// each section list all its fields there.
    fn resolve_paths(&mut self, base: &Path) {
        self.visit_paths(&mut |p| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        });
    }

    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.kind != "EndpointConfiguration" {
            return Err(format!("kind must be EndpointConfiguration, not {:?}", self.kind).into());
        }
        self.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            format!(
                "listen: {:?} is not host:port (e.g. 0.0.0.0:15443)",
                self.listen
            )
        })?;
        if self.token_issuer.expiration.as_std() < std::time::Duration::from_secs(60) {
            return Err("tokenIssuer.expiration: must be at least 1m".into());
        }
        let r = &self.registration;
        if r.keep_alive_interval.as_std().is_zero() {
            return Err("registration.keepAliveInterval: must be more than 0".into());
        }
        if r.keep_alive_timeout() <= r.keep_alive_interval.as_std() {
            return Err(
                "registration.keepAliveTimeout: must be longer than keepAliveInterval".into(),
            );
        }
        if let Some(uid) = &self.plane_uid
            && (uid.is_empty() || uid.len() > 128 || uid.contains(char::is_whitespace))
        {
            return Err("planeUid: must be 1-128 characters without spaces".into());
        }
        if let Some(t) = &self.istio_token
            && t.file.is_some()
            && t.command.is_some()
        {
            return Err("istioToken: set file or command, not both".into());
        }
        match (&self.store.file, &self.store.kube) {
            (Some(_), None) => {}
            (None, Some(k)) => {
                if self.istio_token.is_some() {
                    return Err(
                        "istioToken: only the file store reads tokens from a file or a command; \
                         the kube store asks the TokenRequest API (store.kube.istioTokenExpiration)"
                            .into(),
                    );
                }
                k.validate().map_err(|e| format!("store.kube.{e}"))?;
            }
            _ => return Err("store: set exactly one of file or kube".into()),
        }
        crate::identity::jwt::validate_issuers(&self.authentication.jwt.issuers)
            .map_err(|e| format!("authentication.jwt.issuers: {e}"))?;
        self.validate_cloud()
    }

    fn validate_cloud(&self) -> Result<(), InvalidConfig> {
        let auth = &self.authentication;
        if let Some(aws) = &auth.aws {
            if aws.ec2.is_none() && aws.ecs.is_none() {
                return Err(
                    "authentication.aws: set ec2 and/or ecs (each enables that credential)".into(),
                );
            }
            if aws.api.is_some() && aws.ec2.is_none() {
                return Err(
                    "authentication.aws.api: only EC2 uses the AWS API; set aws.ec2".into(),
                );
            }
            if let Some(ec2) = &aws.ec2 {
                if ec2
                    .max_age_since_pending
                    .is_some_and(|d| d.as_std().is_zero())
                {
                    return Err("authentication.aws.ec2.maxAgeSincePending: must be more than 0 (or unset for no limit)".into());
                }
                for (i, c) in ec2.certificates.iter().enumerate() {
                    if c.region.trim().is_empty() {
                        return Err(format!(
                            "authentication.aws.ec2.certificates[{i}].region: must not be empty"
                        )
                        .into());
                    }
                }
            }
            if let Some(ecs) = &aws.ecs
                && ecs.allowed_sts.is_empty()
            {
                return Err("authentication.aws.ecs.allowedSts: list at least one STS address (e.g. https://sts.amazonaws.com)".into());
            }
        }
        if let Some(g) = &auth.gcp {
            let set = [
                g.jwks.is_some(),
                g.jwks_file.is_some(),
                g.jwks_uri.is_some(),
            ];
            if set.iter().filter(|b| **b).count() > 1 {
                return Err("authentication.gcp: set only one of jwks, jwksFile, jwksUri".into());
            }
        }
        if let Some(a) = &auth.azure
            && a.root_certificates.is_empty()
        {
            return Err("authentication.azure.rootCertificates: list the PEM roots Azure's attested-data signer chains to".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("endpoint.yaml");
        std::fs::write(
            &p,
            "store:\n  file: {configDir: config, stateDir: /var/lib/x}\n",
        )
        .unwrap();
        let c = EndpointConfig::load(&p).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        let file = c.store.file.as_ref().unwrap();
        assert_eq!(file.config_dir, dir.path().join("config"));
        assert_eq!(file.state_dir, PathBuf::from("/var/lib/x"));
        assert_eq!(c.registration.grace_period.as_std().as_secs(), 300);
        assert_eq!(c.registration.keep_alive_timeout().as_secs(), 45);
        assert_eq!(c.token_issuer.expiration.as_std().as_secs(), 3600);
        assert!(
            !c.registration.allow_loopback_addresses,
            "loopback workload addresses are refused unless asked for"
        );
    }

    #[test]
    fn loopback_addresses_are_allowed_only_when_asked() {
        let c = load_text("registration: {allowLoopbackAddresses: true}\n").unwrap();
        assert!(c.registration.allow_loopback_addresses);
    }

    #[test]
    fn misspelled_field_is_named_with_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("endpoint.yaml");
        std::fs::write(
            &p,
            "store:\n  file: {configDir: c, stateDir: s}\nregistration:\n  gracePeriood: 1m\n",
        )
        .unwrap();
        let e = EndpointConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("gracePeriood") && e.contains("endpoint.yaml:4"),
            "{e}"
        );
    }

    fn load_text(text: &str) -> Result<EndpointConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.yaml");
        std::fs::write(
            &p,
            format!("store:\n  file: {{configDir: c, stateDir: s}}\n{text}"),
        )
        .unwrap();
        EndpointConfig::load(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn cloud_platforms_are_off_until_configured_and_defaults_are_secure() {
        let c = load_text("").unwrap();
        assert!(c.authentication.aws.is_none());
        assert!(c.authentication.gcp.is_none() && c.authentication.azure.is_none());
        assert!(c.authentication.one_session_per_host);

        let c = load_text(
            "authentication:\n  aws:\n    ec2:\n      certificates: [{region: us-east-2, file: sim.pem}]\n    api: {endpoint: 'http://127.0.0.1:5000', credentialsFile: creds}\n  gcp: {jwksFile: jwks.json}\n  azure: {rootCertificates: [root.pem]}\n",
        )
        .unwrap();
        let ec2 = c.authentication.aws.as_ref().unwrap().ec2.as_ref().unwrap();
        assert_eq!(
            ec2.connected_over,
            AddressType::Vpc,
            "bound to the source by default"
        );
        assert!(ec2.trusted_proxies.is_empty() && ec2.max_age_since_pending.is_none());
        assert!(!ec2.allow_signature && !ec2.allow_pkcs7_dsa);
        assert_eq!(ec2.certificates[0].form, Ec2SignatureForm::Rsa2048);
        // Paths are relative to the config file.
        assert!(ec2.certificates[0].file.is_absolute());
        let api = c.authentication.aws.as_ref().unwrap().api.as_ref().unwrap();
        assert!(api.credentials_file.as_ref().unwrap().is_absolute());
        assert!(!api.require_running);
        assert!(c.authentication.azure.as_ref().unwrap().root_certificates[0].is_absolute());
        assert!(
            c.authentication
                .gcp
                .as_ref()
                .unwrap()
                .jwks_file
                .as_ref()
                .unwrap()
                .is_absolute()
        );
    }

    #[test]
    fn cloud_settings_are_validated() {
        for (text, want) in [
            ("authentication:\n  aws: {}\n", "set ec2 and/or ecs"),
            (
                "authentication:\n  aws:\n    ecs: {allowedSts: []}\n",
                "allowedSts",
            ),
            (
                "authentication:\n  aws:\n    ecs: {}\n    api: {}\n",
                "only EC2 uses the AWS API",
            ),
            (
                "authentication:\n  aws:\n    ec2: {maxAgeSincePending: 0s}\n",
                "maxAgeSincePending",
            ),
            (
                "authentication:\n  aws:\n    ec2: {trustedProxies: [10.0.0.0/33]}\n",
                "prefix",
            ),
            (
                "authentication:\n  aws:\n    ec2: {connectedOver: LAN}\n",
                "LAN",
            ),
            (
                "authentication:\n  gcp: {jwksFile: a, jwksUri: 'https://x'}\n",
                "only one of",
            ),
            (
                "authentication:\n  azure: {rootCertificates: []}\n",
                "rootCertificates",
            ),
            (
                "authentication:\n  aws:\n    ec2: {allowSignatures: true}\n",
                "allowSignatures",
            ),
        ] {
            let e = load_text(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn aws_api_credentials_from_env_or_shared_file_never_inline() {
        let s = AwsApiSettings {
            require_running: true,
            ..Default::default()
        };
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIDENV".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".to_string()),
            _ => None,
        };
        let c = s.resolve(&env).unwrap();
        assert_eq!(c.access_key_id, "AKIDENV");
        assert!(c.require_running && c.session_token.is_none());
        let e = s.resolve(&|_| None).unwrap_err();
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("credentials");
        std::fs::write(
            &f,
            "[default]\naws_access_key_id = AKIDDEF\naws_secret_access_key = s1\n\n# other\n[onboarding]\naws_access_key_id=AKIDONB\naws_secret_access_key=s2\naws_session_token=tok\n",
        )
        .unwrap();
        let from_file = |profile: Option<&str>| AwsApiSettings {
            credentials_file: Some(f.clone()),
            profile: profile.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(
            from_file(None).resolve(&env).unwrap().access_key_id,
            "AKIDDEF"
        );
        let c = from_file(Some("onboarding")).resolve(&env).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token.as_deref()),
            ("AKIDONB", Some("tok"))
        );
        let e = from_file(Some("nope")).resolve(&env).unwrap_err();
        assert!(e.contains("[nope]"), "{e}");
        // Inline keys are not a field: the config file never holds the secret.
        let e = load_text("authentication:\n  aws:\n    ec2: {}\n    api: {secretAccessKey: x}\n")
            .unwrap_err();
        assert!(e.contains("secretAccessKey"), "{e}");
    }

    #[test]
    fn local_repository_is_relative_to_the_config_and_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.yaml");
        let write = |text: &str| {
            std::fs::write(
                &p,
                format!("store:\n  file: {{configDir: c, stateDir: s}}\n{text}"),
            )
            .unwrap()
        };
        write("");
        assert_eq!(EndpointConfig::load(&p).unwrap().local_repository, None);

        write("localRepository: {directory: repo}\n");
        let e = EndpointConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("localRepository.directory") && e.contains("repo"),
            "{e}"
        );
        std::fs::write(dir.path().join("repo"), "a file").unwrap();
        let e = EndpointConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        std::fs::remove_file(dir.path().join("repo")).unwrap();
        std::fs::create_dir(dir.path().join("repo")).unwrap();
        let c = EndpointConfig::load(&p).unwrap();
        assert_eq!(
            c.local_repository.unwrap().directory,
            dir.path().join("repo")
        );

        write("localRepository: {}\n");
        let e = EndpointConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn bad_listen_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.yaml");
        std::fs::write(
            &p,
            "listen: localhost\nstore:\n  file: {configDir: c, stateDir: s}\n",
        )
        .unwrap();
        let e = EndpointConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
    }
}
