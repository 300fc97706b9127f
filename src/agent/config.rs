//! Loading and validating the agent's two configuration documents.
//!
//! `OnboardingConfiguration` (required) says where to onboard; `AgentConfiguration`
//! (optional) says how the agent behaves on this host. Each comes from a file or, for
//! containers, from an environment variable holding the YAML or JSON itself
//! (`ONBOARDING_CONFIG`, `AGENT_CONFIG`). Every error names where the document came from and
//! the field to fix, because the reader is someone editing that file by hand.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::agent_config::{
    API_VERSION, AgentConfiguration, CredentialSource, OnboardingConfiguration, Plugin,
};
use crate::api::registration::AddressType;
use crate::api::validation;
use crate::yaml::{self, YamlError};

pub const DEFAULT_ONBOARDING_CONFIG: &str = "/etc/onboarding-agent/onboarding.config.yaml";
pub const DEFAULT_AGENT_CONFIG: &str = "/etc/onboarding-agent/agent.config.yaml";
/// The onboarding configuration itself (YAML or JSON), instead of a file.
pub const ENV_ONBOARDING_CONFIG: &str = "ONBOARDING_CONFIG";
/// The agent configuration itself (YAML or JSON), instead of a file.
pub const ENV_AGENT_CONFIG: &str = "AGENT_CONFIG";
/// Extra CA certificates (PEM) to trust for the endpoint, besides the system roots.
pub const ENV_ROOT_CERTS: &str = "ONBOARDING_AGENT_ROOT_CERTS";

pub const DEFAULT_RESTART_COMMAND: [&str; 3] = ["systemctl", "restart", "istio-sidecar.service"];
const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(15);
const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a configuration document came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Env(&'static str),
}

impl Origin {
    /// The name used in YAML errors (`file:line: ...`).
    fn yaml_name(&self) -> PathBuf {
        match self {
            Origin::File(p) => p.clone(),
            Origin::Env(name) => PathBuf::from(format!("${name}")),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(name) => write!(f, "${name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read the file: {source}")]
    Read {
        origin: Origin,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: the file is missing; {hint}")]
    Missing { origin: Origin, hint: &'static str },
    #[error("{0}")]
    Yaml(#[from] YamlError),
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: Origin,
        field: String,
        message: String,
    },
}

/// A field that failed validation, before we know which document it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

impl FieldError {
    fn at(self, origin: &Origin) -> ConfigError {
        ConfigError::Invalid {
            origin: origin.clone(),
            field: self.field,
            message: self.message,
        }
    }
}

/// Both documents, validated, plus the extra trust roots from the environment.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub onboarding: OnboardingConfiguration,
    pub onboarding_origin: Origin,
    pub agent: AgentConfiguration,
    pub agent_origin: Option<Origin>,
    /// PEM from `ONBOARDING_AGENT_ROOT_CERTS`, if set.
    pub env_root_certs: Option<String>,
}

/// What the command line asked for; `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub onboarding_config: Option<PathBuf>,
    pub agent_config: Option<PathBuf>,
}

/// Loads both documents. A path given on the command line wins over the environment, the
/// environment over the default path. The agent configuration is optional: a missing default
/// file means the defaults, but a file named on the command line must exist.
pub fn load(req: &Request, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigError> {
    let env_nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());

    let (onboarding_origin, onboarding_text) =
        match (&req.onboarding_config, env_nonempty(ENV_ONBOARDING_CONFIG)) {
            (Some(p), _) => (Origin::File(p.clone()), read_required(p, ONBOARDING_HINT)?),
            (None, Some(text)) => (Origin::Env(ENV_ONBOARDING_CONFIG), text),
            (None, None) => {
                let p = PathBuf::from(DEFAULT_ONBOARDING_CONFIG);
                (
                    Origin::File(p.clone()),
                    read_required(&p, ONBOARDING_DEFAULT_HINT)?,
                )
            }
        };
    let onboarding = parse_onboarding(&onboarding_origin, &onboarding_text)?;

    let (agent_origin, agent_text) = match (&req.agent_config, env_nonempty(ENV_AGENT_CONFIG)) {
        (Some(p), _) => (
            Some(Origin::File(p.clone())),
            Some(read_required(p, AGENT_HINT)?),
        ),
        (None, Some(text)) => (Some(Origin::Env(ENV_AGENT_CONFIG)), Some(text)),
        (None, None) => {
            let p = PathBuf::from(DEFAULT_AGENT_CONFIG);
            match std::fs::read_to_string(&p) {
                Ok(text) => (Some(Origin::File(p)), Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
                Err(source) => {
                    return Err(ConfigError::Read {
                        origin: Origin::File(p),
                        source,
                    });
                }
            }
        }
    };
    let agent = match (&agent_origin, agent_text) {
        (Some(origin), Some(text)) => parse_agent(origin, &text)?,
        _ => AgentConfiguration::default(),
    };

    Ok(Loaded {
        onboarding,
        onboarding_origin,
        agent,
        agent_origin,
        env_root_certs: env_nonempty(ENV_ROOT_CERTS),
    })
}

const ONBOARDING_DEFAULT_HINT: &str = "no configuration was named, so the agent looked at this default path: pass --onboarding-config PATH, set $ONBOARDING_CONFIG to the configuration itself, or create the OnboardingConfiguration there (see docs/agent.md)";
const ONBOARDING_HINT: &str =
    "create the OnboardingConfiguration there (see docs/agent.md) or set $ONBOARDING_CONFIG";
const AGENT_HINT: &str = "create the AgentConfiguration there or leave out --agent-config";

fn read_required(path: &Path, hint: &'static str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| {
        let origin = Origin::File(path.to_path_buf());
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::Missing { origin, hint }
        } else {
            ConfigError::Read { origin, source }
        }
    })
}

/// Reads and validates an onboarding configuration file (used again when it changes).
pub fn load_onboarding_file(path: &Path) -> Result<OnboardingConfiguration, ConfigError> {
    let origin = Origin::File(path.to_path_buf());
    let text = read_required(path, ONBOARDING_HINT)?;
    parse_onboarding(&origin, &text)
}

pub fn parse_onboarding(
    origin: &Origin,
    text: &str,
) -> Result<OnboardingConfiguration, ConfigError> {
    if yaml::documents(text).is_empty() {
        return Err(field_err(
            "onboardingEndpoint",
            "the document is empty; it needs at least onboardingEndpoint.host and workloadGroup",
        )
        .at(origin));
    }
    let cfg: OnboardingConfiguration = yaml::from_str(&origin.yaml_name(), text)?;
    validate_onboarding(&cfg).map_err(|e| e.at(origin))?;
    Ok(cfg)
}

pub fn parse_agent(origin: &Origin, text: &str) -> Result<AgentConfiguration, ConfigError> {
    // An empty file is a valid, all-defaults AgentConfiguration.
    if yaml::documents(text).is_empty() {
        return Ok(AgentConfiguration::default());
    }
    let cfg: AgentConfiguration = yaml::from_str(&origin.yaml_name(), text)?;
    validate_agent(&cfg).map_err(|e| e.at(origin))?;
    Ok(cfg)
}

pub fn validate_onboarding(cfg: &OnboardingConfiguration) -> Result<(), FieldError> {
    check_type_meta(&cfg.api_version, &cfg.kind, "OnboardingConfiguration")?;
    let ep = &cfg.onboarding_endpoint;
    if ep.host.trim().is_empty() {
        return Err(field_err("onboardingEndpoint.host", "must not be empty"));
    }
    if !is_valid_host(&ep.host) {
        return Err(field_err(
            "onboardingEndpoint.host",
            format!(
                "{:?} is not a hostname or IP address (write only the host: no scheme, port or path)",
                ep.host
            ),
        ));
    }
    if ep.port == 0 {
        return Err(field_err("onboardingEndpoint.port", "must be 1..65535"));
    }
    if let Some(ts) = &ep.transport_security {
        if ts.tls.is_some() && ts.none.is_some() {
            return Err(field_err(
                "onboardingEndpoint.transportSecurity",
                "set either tls or none, not both",
            ));
        }
        if let Some(tls) = &ts.tls {
            if !tls.sni.is_empty() && !is_valid_dns_name(&tls.sni) {
                return Err(field_err(
                    "onboardingEndpoint.transportSecurity.tls.sni",
                    format!("{:?} is not a DNS name", tls.sni),
                ));
            }
            if let Some(ca) = &tls.ca_file
                && ca.trim().is_empty()
            {
                return Err(field_err(
                    "onboardingEndpoint.transportSecurity.tls.caFile",
                    "must not be empty when set",
                ));
            }
        }
    }
    let wg = &cfg.workload_group;
    // The same rules the endpoint enforces (src/api/validation.rs): Kubernetes' own.
    validation::dns1123_label(&wg.namespace).map_err(|e| {
        field_err(
            "workloadGroup.namespace",
            format!("{e} (a Kubernetes namespace name)"),
        )
    })?;
    validation::dns1123_subdomain(&wg.name).map_err(|e| {
        field_err(
            "workloadGroup.name",
            format!("{e} (a Kubernetes object name)"),
        )
    })?;
    if let Some(w) = &cfg.workload {
        for (key, value) in &w.labels {
            validation::label_key(key)
                .and_then(|()| validation::label_value(value))
                .map_err(|e| field_err(format!("workload.labels.{key}"), e.to_string()))?;
        }
    }
    Ok(())
}

/// The cloud host kinds take no settings yet (`ec2: {}`); the metadata addresses come from
/// the environment (docs/identity.md). Anything else is refused rather than ignored.
fn check_empty_settings(field: &str, v: Option<&serde_json::Value>) -> Result<(), FieldError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::Object(m)) if m.is_empty() => Ok(()),
        Some(other) => Err(field_err(
            field,
            format!("takes no settings (write {{}}), got {other}"),
        )),
    }
}

pub fn validate_agent(cfg: &AgentConfiguration) -> Result<(), FieldError> {
    check_type_meta(&cfg.api_version, &cfg.kind, "AgentConfiguration")?;
    if let Some(host) = &cfg.host {
        let set = [
            host.auto.is_some(),
            host.custom.is_some(),
            host.aws.is_some(),
            host.gcp.is_some(),
            host.azure.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            return Err(field_err(
                "host",
                "set exactly one of auto, custom, aws, gcp, azure",
            ));
        }
        if let Some(aws) = &host.aws {
            if aws.ec2.is_some() && aws.ecs.is_some() {
                return Err(field_err("host.aws", "set ec2 or ecs, not both"));
            }
            for (name, v) in [("ec2", &aws.ec2), ("ecs", &aws.ecs)] {
                check_empty_settings(&format!("host.aws.{name}"), v.as_ref())?;
            }
        }
        if let Some(g) = &host.gcp {
            check_empty_settings("host.gcp.gce", g.gce.as_ref())?;
        }
        if let Some(a) = &host.azure {
            check_empty_settings("host.azure.compute", a.compute.as_ref())?;
        }
        if let Some(custom) = &host.custom {
            if custom.credential.is_empty() {
                return Err(field_err(
                    "host.custom.credential",
                    "needs at least one credential source (file or plugin)",
                ));
            }
            for (i, c) in custom.credential.iter().enumerate() {
                validate_credential_source(c).map_err(|e| FieldError {
                    field: format!("host.custom.credential[{i}]{}", e.field),
                    message: e.message,
                })?;
            }
            if let Some(hi) = &custom.hostinfo {
                if hi.plugin.is_some() {
                    return Err(field_err(
                        "host.custom.hostinfo.plugin",
                        "host info plugins are not supported yet; use hostinfo.basic",
                    ));
                }
                if let Some(ni) = hi
                    .basic
                    .as_ref()
                    .and_then(|b| b.network_interfaces.as_ref())
                {
                    for (list, patterns) in [("include", &ni.include), ("exclude", &ni.exclude)] {
                        for (i, p) in patterns.iter().enumerate() {
                            if let Err(e) = regex_lite::Regex::new(p) {
                                return Err(field_err(
                                    format!(
                                        "host.custom.hostinfo.basic.networkInterfaces.{list}[{i}]"
                                    ),
                                    format!("invalid regular expression {p:?}: {e}"),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(sidecar) = &cfg.sidecar {
        if let Some(rev) = sidecar.istio.as_ref().and_then(|i| i.revision.as_ref())
            && !is_revision(rev)
        {
            return Err(field_err(
                "sidecar.istio.revision",
                format!(
                    "{rev:?} is not a revision name (1..56 lower case letters, digits and '-')"
                ),
            ));
        }
        if let Some(cmd) = &sidecar.restart_command
            && cmd.first().is_none_or(|c| c.trim().is_empty())
        {
            return Err(field_err(
                "sidecar.restartCommand",
                "must name a program, e.g. [systemctl, restart, istio-sidecar.service]",
            ));
        }
    }
    if let Some(conn) = cfg.settings.as_ref().and_then(|s| s.connection.as_ref()) {
        if let Some(t) = conn.timeout
            && t.0.is_zero()
        {
            return Err(field_err(
                "settings.connection.timeout",
                "must be greater than 0",
            ));
        }
        if let Some(eb) = conn
            .retry_policy
            .as_ref()
            .and_then(|r| r.exponential_backoff.as_ref())
        {
            let initial = eb.initial_interval.map(|d| d.0);
            let max = eb.max_interval.map(|d| d.0);
            if initial.is_some_and(|d| d.is_zero()) {
                return Err(field_err(
                    "settings.connection.retryPolicy.exponentialBackoff.initialInterval",
                    "must be greater than 0",
                ));
            }
            let initial = initial.unwrap_or(DEFAULT_RETRY_INITIAL);
            let max = max.unwrap_or(DEFAULT_RETRY_MAX.max(initial));
            if max < initial {
                return Err(field_err(
                    "settings.connection.retryPolicy.exponentialBackoff.maxInterval",
                    "must not be less than initialInterval",
                ));
            }
        }
    }
    Ok(())
}

fn validate_credential_source(c: &CredentialSource) -> Result<(), FieldError> {
    match (&c.plugin, &c.file) {
        (Some(_), Some(_)) => Err(field_err("", "set either plugin or file, not both")),
        (None, None) => Err(field_err("", "set plugin or file")),
        (None, Some(f)) if f.trim().is_empty() => Err(field_err(".file", "must not be empty")),
        (Some(p), None) => validate_plugin(p).map_err(|e| FieldError {
            field: format!(".plugin{}", e.field),
            message: e.message,
        }),
        _ => Ok(()),
    }
}

fn validate_plugin(p: &Plugin) -> Result<(), FieldError> {
    if p.name.trim().is_empty() {
        return Err(field_err(".name", "must not be empty"));
    }
    if p.path.as_ref().is_some_and(|s| s.trim().is_empty()) {
        return Err(field_err(
            ".path",
            "must not be empty when set (leave it out to look up onboarding-agent-<name>-plugin on PATH)",
        ));
    }
    for (i, e) in p.env.iter().enumerate() {
        if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
            return Err(field_err(
                format!(".env[{i}].name"),
                "must be a non-empty environment variable name",
            ));
        }
    }
    Ok(())
}

fn check_type_meta(api_version: &str, kind: &str, want_kind: &str) -> Result<(), FieldError> {
    if api_version != API_VERSION {
        return Err(field_err(
            "apiVersion",
            format!("{api_version:?} is not supported; use {API_VERSION}"),
        ));
    }
    if kind != want_kind {
        return Err(field_err(
            "kind",
            format!("{kind:?} is not expected here; use {want_kind}"),
        ));
    }
    Ok(())
}

/// A hostname or an IP address (IPv6 with or without brackets).
pub fn is_valid_host(s: &str) -> bool {
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<std::net::IpAddr>().is_ok() || is_valid_dns_name(s)
}

pub fn is_valid_dns_name(s: &str) -> bool {
    validation::is_hostname(s)
}

fn is_dns1123_label(s: &str) -> bool {
    validation::dns1123_label(s).is_ok()
}

#[cfg(test)]
fn is_label_key(k: &str) -> bool {
    validation::label_key(k).is_ok()
}

fn is_revision(s: &str) -> bool {
    (1..=56).contains(&s.len()) && is_dns1123_label(s)
}

impl Loaded {
    /// Credential sources in the order they are tried.
    pub fn credential_sources(&self) -> &[CredentialSource] {
        self.agent
            .host
            .as_ref()
            .and_then(|h| h.custom.as_ref())
            .map(|c| c.credential.as_slice())
            .unwrap_or(&[])
    }

    /// Include and exclude regexes over interface names.
    pub fn interface_filters(&self) -> (Vec<String>, Vec<String>) {
        self.agent
            .host
            .as_ref()
            .and_then(|h| h.custom.as_ref())
            .and_then(|c| c.hostinfo.as_ref())
            .and_then(|h| h.basic.as_ref())
            .and_then(|b| b.network_interfaces.as_ref())
            .map(|n| (n.include.clone(), n.exclude.clone()))
            .unwrap_or_default()
    }

    pub fn connected_over(&self) -> AddressType {
        self.onboarding
            .settings
            .as_ref()
            .and_then(|s| s.connected_over)
            .unwrap_or_default()
    }

    pub fn revision(&self) -> Option<String> {
        self.agent
            .sidecar
            .as_ref()
            .and_then(|s| s.istio.as_ref())
            .and_then(|i| i.revision.clone())
    }

    /// The command that restarts the sidecar (the command line flag overrides this).
    pub fn restart_command(&self) -> Vec<String> {
        self.agent
            .sidecar
            .as_ref()
            .and_then(|s| s.restart_command.clone())
            .unwrap_or_else(|| {
                DEFAULT_RESTART_COMMAND
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            })
    }

    /// Exponential backoff bounds for every retry (endpoint calls and plugin calls).
    pub fn retry_bounds(&self) -> (Duration, Duration) {
        let eb = self
            .agent
            .settings
            .as_ref()
            .and_then(|s| s.connection.as_ref())
            .and_then(|c| c.retry_policy.as_ref())
            .and_then(|r| r.exponential_backoff.as_ref());
        let initial = eb
            .and_then(|e| e.initial_interval)
            .map(|d| d.0)
            .unwrap_or(DEFAULT_RETRY_INITIAL);
        let max = eb
            .and_then(|e| e.max_interval)
            .map(|d| d.0)
            .unwrap_or(DEFAULT_RETRY_MAX.max(initial));
        (initial, max)
    }

    /// How long one plugin call may take.
    pub fn plugin_timeout(&self) -> Duration {
        self.agent
            .settings
            .as_ref()
            .and_then(|s| s.connection.as_ref())
            .and_then(|c| c.timeout)
            .map(|d| d.0)
            .unwrap_or(DEFAULT_PLUGIN_TIMEOUT)
    }

    /// The onboarding config file to watch, if it is a file.
    pub fn watched_file(&self) -> Option<&Path> {
        match &self.onboarding_origin {
            Origin::File(p) => Some(p),
            Origin::Env(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const GOOD: &str = "\
apiVersion: config.agent.onboarding.tetrate.io/v1alpha1
kind: OnboardingConfiguration
onboardingEndpoint:
  host: onboarding.example
workloadGroup:
  namespace: bookinfo
  name: ratings
workload:
  labels: {version: v5}
settings:
  connectedOver: INTERNET
";

    fn origin() -> Origin {
        Origin::File(PathBuf::from(
            "/etc/onboarding-agent/onboarding.config.yaml",
        ))
    }

    fn err_of(text: &str) -> String {
        parse_onboarding(&origin(), text).unwrap_err().to_string()
    }

    #[test]
    fn parses_tsb_example_with_defaults() {
        let cfg = parse_onboarding(&origin(), GOOD).unwrap();
        assert_eq!(cfg.onboarding_endpoint.port, 15443);
        assert_eq!(cfg.workload_group.name, "ratings");
        assert_eq!(
            cfg.settings.unwrap().connected_over,
            Some(AddressType::Internet)
        );
    }

    #[test]
    fn json_content_is_accepted() {
        let json = r#"{"onboardingEndpoint":{"host":"127.0.0.1","port":8443,
            "transportSecurity":{"tls":{"sni":"ep.example"}}},
            "workloadGroup":{"namespace":"ns","name":"g"}}"#;
        let cfg = parse_onboarding(&Origin::Env(ENV_ONBOARDING_CONFIG), json).unwrap();
        assert_eq!(cfg.onboarding_endpoint.port, 8443);
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = GOOD.replace("  name: ratings", "  name: ratings\n  nmae: x");
        let e = err_of(&text);
        assert!(
            e.starts_with("/etc/onboarding-agent/onboarding.config.yaml:8: "),
            "{e}"
        );
        assert!(e.contains("nmae"), "{e}");
    }

    #[test]
    fn missing_required_field_is_named() {
        let text = "onboardingEndpoint:\n  host: a.example\n";
        let e = err_of(text);
        assert!(e.contains("workloadGroup"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            (
                GOOD.replace("host: onboarding.example", "host: https://x:1"),
                "onboardingEndpoint.host",
            ),
            (
                GOOD.replace("namespace: bookinfo", "namespace: Book_Info"),
                "workloadGroup.namespace",
            ),
            (
                GOOD.replace("name: ratings", "name: ''"),
                "workloadGroup.name",
            ),
            (
                GOOD.replace("{version: v5}", "{version: 'bad value'}"),
                "workload.labels.version",
            ),
            (
                GOOD.replace(
                    "host: onboarding.example",
                    "host: a.example\n  transportSecurity: {tls: {}, none: {}}",
                ),
                "onboardingEndpoint.transportSecurity",
            ),
            (GOOD.replace("v1alpha1\nkind", "v9\nkind"), "apiVersion"),
            (
                GOOD.replace("kind: OnboardingConfiguration", "kind: AgentConfiguration"),
                "kind",
            ),
        ];
        for (text, field) in cases {
            let e = err_of(&text);
            assert!(
                e.starts_with(&format!(
                    "/etc/onboarding-agent/onboarding.config.yaml: {field}: "
                )),
                "{field}: {e}"
            );
        }
        assert!(err_of("# nothing\n").contains("empty"));
    }

    #[test]
    fn hosts_and_names() {
        for ok in ["a.example", "10.0.0.1", "::1", "[fd00::1]", "localhost"] {
            assert!(is_valid_host(ok), "{ok}");
        }
        for bad in ["", "a b", "http://a", "a:15443", "-a.example", "1.2.3"] {
            assert!(!is_valid_host(bad), "{bad}");
        }
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("Bad/"));
    }

    fn agent_err(text: &str) -> String {
        parse_agent(&Origin::File("agent.yaml".into()), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn agent_config_validation() {
        assert_eq!(
            parse_agent(&Origin::File("a".into()), "# empty\n").unwrap(),
            AgentConfiguration::default()
        );
        let ok = "host:\n  custom:\n    credential:\n    - file: /run/jwt\n    hostinfo:\n      basic:\n        networkInterfaces: {include: ['^eth'], exclude: ['^docker']}\n";
        parse_agent(&Origin::File("a".into()), ok).unwrap();

        let e = agent_err("host:\n  custom:\n    credential: []\n");
        assert!(e.starts_with("agent.yaml: host.custom.credential: "), "{e}");
        let e =
            agent_err("host:\n  custom:\n    credential:\n    - {file: /a, plugin: {name: x}}\n");
        assert!(e.contains("host.custom.credential[0]: set either"), "{e}");
        let e = agent_err("host:\n  custom:\n    credential:\n    - plugin: {name: ''}\n");
        assert!(e.contains("host.custom.credential[0].plugin.name"), "{e}");
        let e = agent_err(
            "host:\n  custom:\n    credential: [{file: /a}]\n    hostinfo: {basic: {networkInterfaces: {include: ['(']}}}\n",
        );
        assert!(
            e.contains("networkInterfaces.include[0]: invalid regular expression"),
            "{e}"
        );
        let e = agent_err("host: {auto: {}, custom: {credential: [{file: /a}]}}\n");
        assert!(e.contains("host: set exactly one"), "{e}");
        let e = agent_err("sidecar: {istio: {revision: Canary}}\n");
        assert!(e.contains("sidecar.istio.revision"), "{e}");
        let e = agent_err("sidecar: {restartCommand: []}\n");
        assert!(e.contains("sidecar.restartCommand"), "{e}");
        let e = agent_err(
            "settings: {connection: {retryPolicy: {exponentialBackoff: {initialInterval: 10s, maxInterval: 1s}}}}\n",
        );
        assert!(e.contains("maxInterval"), "{e}");
        let e = agent_err("settings: {connection: {timeout: 3x}}\n");
        assert!(e.starts_with("agent.yaml:1: "), "{e}");
    }

    #[test]
    fn cloud_hosts_are_accepted_and_checked() {
        for ok in [
            "host: {auto: {}}\n",
            "host: {aws: {ec2: {}}}\n",
            "host: {aws: {ecs: {}}}\n",
            "host: {gcp: {gce: {}}}\n",
            "host: {azure: {}}\n",
        ] {
            parse_agent(&Origin::File("a".into()), ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let e = agent_err("host: {aws: {ec2: {}, ecs: {}}}\n");
        assert!(e.contains("host.aws: set ec2 or ecs"), "{e}");
        let e = agent_err("host: {aws: {ec2: {imds: 'http://x'}}}\n");
        assert!(e.contains("host.aws.ec2: takes no settings"), "{e}");
        let e = agent_err("host: {aws: {ec2: {}}, gcp: {}}\n");
        assert!(e.contains("host: set exactly one"), "{e}");
    }

    #[test]
    fn load_prefers_flag_then_env_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("onboarding.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let env: HashMap<&str, String> = HashMap::from([
            (ENV_ONBOARDING_CONFIG, GOOD.replace("ratings", "from-env")),
            (ENV_ROOT_CERTS, "PEM".to_string()),
        ]);
        let lookup = |k: &str| env.get(k).cloned();
        let from_env = load(&Request::default(), &lookup).unwrap();
        assert_eq!(from_env.onboarding.workload_group.name, "from-env");
        assert_eq!(
            from_env.onboarding_origin,
            Origin::Env(ENV_ONBOARDING_CONFIG)
        );
        assert_eq!(from_env.env_root_certs.as_deref(), Some("PEM"));
        assert!(from_env.watched_file().is_none());

        let req = Request {
            onboarding_config: Some(file.clone()),
            agent_config: None,
        };
        let from_file = load(&req, &lookup).unwrap();
        assert_eq!(from_file.onboarding.workload_group.name, "ratings");
        assert_eq!(from_file.watched_file(), Some(file.as_path()));
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let req = Request {
            onboarding_config: Some(PathBuf::from("/nonexistent/onboarding.yaml")),
            agent_config: None,
        };
        let e = load(&req, &|_| None).unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/onboarding.yaml: "), "{e}");
        assert!(e.contains("missing"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("o.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let req = Request {
            onboarding_config: Some(file),
            agent_config: Some(PathBuf::from("/nonexistent/agent.yaml")),
        };
        let e = load(&req, &|_| None).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "/nonexistent/agent.yaml: the file is missing; create the AgentConfiguration"
            ),
            "{e}"
        );
    }

    #[test]
    fn derived_settings_defaults() {
        let loaded = Loaded {
            onboarding: parse_onboarding(&origin(), GOOD).unwrap(),
            onboarding_origin: origin(),
            agent: AgentConfiguration::default(),
            agent_origin: None,
            env_root_certs: None,
        };
        assert_eq!(
            loaded.restart_command(),
            vec!["systemctl", "restart", "istio-sidecar.service"]
        );
        assert_eq!(
            loaded.retry_bounds(),
            (Duration::from_secs(1), Duration::from_secs(15))
        );
        assert_eq!(loaded.connected_over(), AddressType::Internet);
        assert!(loaded.credential_sources().is_empty());
    }
}
