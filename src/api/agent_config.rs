//! The agent's two files (config.agent.onboarding.tetrate.io/v1alpha1):
//! `OnboardingConfiguration` (where to onboard, required) and `AgentConfiguration`
//! (how the agent behaves on this host, optional). Field for field as TSB documents them.

use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::meta::{Labels, NamespacedName};
use super::registration::AddressType;

pub const API_VERSION: &str = "config.agent.onboarding.tetrate.io/v1alpha1";
pub const DEFAULT_ENDPOINT_PORT: u16 = 15443;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnboardingConfiguration {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "onboarding_kind")]
    pub kind: String,
    pub onboarding_endpoint: OnboardingEndpoint,
    pub workload_group: NamespacedName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadInfoConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<RegistrationSettings>,
}

fn api_version() -> String {
    API_VERSION.to_string()
}
fn onboarding_kind() -> String {
    "OnboardingConfiguration".to_string()
}
fn agent_kind() -> String {
    "AgentConfiguration".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnboardingEndpoint {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_security: Option<ClientTransportSecurity>,
}

fn default_port() -> u16 {
    DEFAULT_ENDPOINT_PORT
}

/// oneof `tls` | `none`; unset means verified TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTransportSecurity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsClient>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub none: Option<PlainTextClient>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsClient {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sni: String,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// PEM file with extra CA certificates to trust (besides the system roots and
    /// `ONBOARDING_AGENT_ROOT_CERTS`). Not in TSB's schema; added because hand-distributing
    /// a CA into the OS store is exactly the toil this tool removes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PlainTextClient {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadInfoConfig {
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrationSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_over: Option<AddressType>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfiguration {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "agent_kind")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostEnvironment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<AgentSettings>,
}

impl Default for AgentConfiguration {
    fn default() -> Self {
        AgentConfiguration {
            api_version: api_version(),
            kind: agent_kind(),
            host: None,
            sidecar: None,
            settings: None,
        }
    }
}

/// oneof `auto` | `custom` | `aws` (| `gcp` | `azure`); unset means `auto`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEnvironment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<AutoHost>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomHost>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsHost>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpHost>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureHost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoHost {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomHost {
    #[serde(default)]
    pub credential: Vec<CredentialSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<HostInfoSource>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<Plugin>,
    /// A JWT read from a file on each use (for example one that another tool keeps fresh).
    /// Not in TSB's schema; a plugin that `cat`s a file is the TSB equivalent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Plugin {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostInfoSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<Plugin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicHostInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicHostInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interfaces: Option<NetworkInterfaces>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInterfaces {
    /// Regexes over interface names; empty means all.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsHost {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GcpHost {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gce: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureHost {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioSidecarConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<Output>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<Output>,
    /// How the agent restarts the sidecar; default `systemctl restart istio-sidecar.service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioSidecarConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Output {
    pub filename: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_backoff: Option<ExponentialBackoff>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExponentialBackoff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}
