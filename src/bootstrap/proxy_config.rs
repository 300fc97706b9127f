//! What `istioctl x workload entry configure` computes (reference/istio.md §1.2-1.6), as pure
//! functions over data: the ProxyConfig that becomes `mesh.yaml`, its `proxyMetadata`, the
//! `cluster.env` variables and the hosts entries. The deliberate differences from istioctl are
//! marked `FIX:` and listed in docs/bootstrap.md.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::goyaml;
use super::sinks::{env_line, env_name_problem, env_value_problem, is_dns_label};

/// The proxyMetadata key that makes istiod auto-register a WorkloadEntry on connect.
const AUTO_REGISTER_GROUP: &str = "ISTIO_META_AUTO_REGISTER_GROUP";

pub use super::sinks::{is_dns_name, shell_quote};
use super::{BootstrapError, BootstrapInput, Gateway, InstanceIp, InterceptionMode};
use crate::api::istio::{ReadinessProbe, Sidecar};
use crate::api::meta::Labels;
use crate::api::protocol::HostsEntry;

pub const ANNOTATION_PROXY_CONFIG: &str = "proxy.istio.io/config";
pub const LABEL_CANONICAL_NAME: &str = "service.istio.io/canonical-name";
pub const LABEL_CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
pub const ISTIOD_PORT: u16 = 15012;
/// Where an egress listener binds in NONE mode when the Sidecar gives no `bind`.
pub const DEFAULT_EGRESS_BIND: &str = "127.0.0.1";

/// Everything computed before templates run; templates get it as context.
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    /// The final ProxyConfig (`defaultConfig` of `mesh.yaml`) as JSON.
    pub default_config: Map<String, Value>,
    pub proxy_metadata: BTreeMap<String, String>,
    pub cluster_env: BTreeMap<String, String>,
    /// `KEY='value'` lines, sorted by bytes, as istioctl's `mapToString`.
    pub cluster_env_lines: Vec<String>,
    /// `cluster.env` as istioctl writes it: the lines joined by newlines plus a trailing one.
    pub cluster_env_text: String,
    /// `mesh.yaml` as istioctl writes it (go-yaml v2 style).
    pub mesh_yaml: String,
    pub labels: Labels,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub service_account: String,
    pub trust_domain: String,
    pub istiod_host: String,
    pub istiod_address: String,
    pub ca_address: String,
    pub hosts: Vec<HostsEntry>,
    /// Inputs that were partly skipped (a bad Sidecar egress host), one message each naming
    /// the resource and the field. The caller logs them; nothing here is fatal.
    pub warnings: Vec<String>,
}

/// `revision != "" && revision != "default"`, as istioctl's `isRevisioned`.
pub fn is_revisioned(revision: Option<&str>) -> bool {
    matches!(revision, Some(r) if !r.is_empty() && r != "default")
}

/// `istiod[-<rev>].<ns>.svc`
pub fn istiod_host(istio_namespace: &str, revision: Option<&str>) -> String {
    match revision {
        Some(rev) if is_revisioned(Some(rev)) => format!("istiod-{rev}.{istio_namespace}.svc"),
        _ => format!("istiod.{istio_namespace}.svc"),
    }
}

/// `istiod[-<rev>].<ns>.svc:15012`
pub fn istiod_address(istio_namespace: &str, revision: Option<&str>) -> String {
    format!("{}:{ISTIOD_PORT}", istiod_host(istio_namespace, revision))
}

/// `labels.CanonicalService`: the first of the name labels *present* (even if empty), else the
/// workload name; the first revision label present, else `latest`.
pub fn canonical_service(labels: &Labels, workload_name: &str) -> (String, String) {
    let name = [LABEL_CANONICAL_NAME, "app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|k| labels.get(*k))
        .cloned()
        .unwrap_or_else(|| workload_name.to_string());
    let revision = [
        LABEL_CANONICAL_REVISION,
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k))
    .cloned()
    .unwrap_or_else(|| "latest".to_string());
    (name, revision)
}

/// The workload's labels: `spec.metadata.labels`, overridden by `spec.template.labels` (as
/// istioctl), then the agent's labels for keys the group does not set: an agent may add
/// labels, never change the group's.
pub fn workload_labels(
    metadata_labels: &Labels,
    template_labels: &Labels,
    agent_labels: &Labels,
) -> Labels {
    let mut labels = metadata_labels.clone();
    for (k, v) in template_labels {
        labels.insert(k.clone(), v.clone());
    }
    for (k, v) in agent_labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    labels
}

/// A string as Go's `encoding/json` writes it (HTML-safe escaping included).
pub fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `json.Marshal(map[string]string)`: keys in byte order.
pub fn go_json_string_map(map: &BTreeMap<String, String>) -> String {
    let body: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{}:{}", go_json_string(k), go_json_string(v)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// `ISTIO_META_POD_PORTS`: `json.Marshal([]model.PodPort)` sorted by name. `PodPort` omits an
/// empty `name` but always writes `protocol` (empty here), as istioctl's own
/// `TestWorkloadEntryToPodPortsMeta` expects.
pub fn pod_ports_json(ports: &BTreeMap<String, u32>) -> Option<String> {
    if ports.is_empty() {
        return None;
    }
    let items: Vec<String> = ports
        .iter()
        .map(|(name, port)| {
            let name = if name.is_empty() {
                String::new()
            } else {
                format!("\"name\":{},", go_json_string(name))
            };
            format!("{{{name}\"containerPort\":{port},\"protocol\":\"\"}}")
        })
        .collect();
    Some(format!("[{}]", items.join(",")))
}

/// Lays a `proxy.istio.io/config` overlay on the ProxyConfig the way istioctl does: jsonpb
/// replaces each top-level field the overlay sets (nested messages are not merged), while
/// istioctl itself merges `proxyMetadata` key by key into what it had.
pub fn apply_proxy_config_overlay(
    default_config: &mut Map<String, Value>,
    proxy_metadata: &mut BTreeMap<String, String>,
    overlay: &Map<String, Value>,
    source: &str,
) -> Result<(), BootstrapError> {
    for (k, v) in overlay {
        if v.is_null() {
            // jsonpb skips nulls.
            continue;
        }
        if k == "proxyMetadata" {
            for (mk, mv) in string_map(v, &format!("{source}: proxyMetadata"))? {
                proxy_metadata.insert(mk, mv);
            }
        } else {
            default_config.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}

fn string_map(v: &Value, what: &str) -> Result<BTreeMap<String, String>, BootstrapError> {
    let obj = v.as_object().ok_or_else(|| BootstrapError::Input {
        what: what.to_string(),
        message: "must be a map of strings".into(),
    })?;
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        // proxyMetadata becomes cluster.env, which a root shell sources: a key that is not a
        // variable name would be read as a command. Refuse the whole resource, naming the key.
        if let Some(problem) = env_name_problem(k) {
            return Err(BootstrapError::Input {
                what: what.to_string(),
                message: problem,
            });
        }
        if let Some(problem) = v.as_str().and_then(env_value_problem) {
            return Err(BootstrapError::Input {
                what: format!("{what}.{k}"),
                message: problem,
            });
        }
        match v {
            Value::String(s) => {
                out.insert(k.clone(), s.clone());
            }
            Value::Null => {}
            other => {
                return Err(BootstrapError::Input {
                    what: format!("{what}.{k}"),
                    message: format!(
                        "must be a string, found {other}: quote it (proxyMetadata values are strings)"
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// The readiness probe as protobuf JSON: unset and zero fields are omitted.
fn probe_json(probe: &ReadinessProbe) -> Value {
    fn strip(v: Value) -> Option<Value> {
        match v {
            Value::Null => None,
            Value::Bool(false) => None,
            Value::String(s) if s.is_empty() => None,
            Value::Number(n) if n.as_f64() == Some(0.0) => None,
            Value::Array(a) if a.is_empty() => None,
            Value::Array(a) => Some(Value::Array(a.into_iter().filter_map(strip).collect())),
            Value::Object(m) => Some(Value::Object(
                m.into_iter()
                    .filter_map(|(k, v)| strip(v).map(|v| (k, v)))
                    .collect(),
            )),
            other => Some(other),
        }
    }
    let raw = serde_json::to_value(probe).unwrap_or(Value::Null);
    strip(raw).unwrap_or_else(|| Value::Object(Map::new()))
}

/// `statusPort` of the ProxyConfig as istioctl reads it for `ISTIO_LOCAL_EXCLUDE_PORTS`.
fn status_port(default_config: &Map<String, Value>) -> Result<i64, BootstrapError> {
    match default_config.get("statusPort") {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| bad_status_port(n)),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| bad_status_port(s)),
        Some(other) => Err(bad_status_port(other)),
    }
}

fn bad_status_port(v: impl std::fmt::Display) -> BootstrapError {
    BootstrapError::Input {
        what: "mesh config defaultConfig.statusPort".into(),
        message: format!("must be a port number, found {v}"),
    }
}

/// `22,15090,15021` plus the status port (15020 unless the ProxyConfig sets another).
pub fn local_exclude_ports(status_port: i64) -> String {
    let mut s = String::from("22,15090,15021");
    if status_port != 15090 && status_port != 15021 {
        if status_port != 0 {
            s.push_str(&format!(",{status_port}"));
        } else {
            s.push_str(",15020");
        }
    }
    s
}

/// Hosts entries for the Sidecar's egress listeners in NONE mode: each concrete hostname of a
/// listener maps to the address the listener binds (127.0.0.1 when the Sidecar names none),
/// so the application reaches the listener by name. Wildcards cannot go into /etc/hosts and
/// are skipped; a name already claimed (istiod, an earlier listener) keeps its first address.
///
/// A host that is neither a wildcard nor a DNS name, or a `bind` that is not an IP address,
/// is left out and reported (second value, one message per problem naming the Sidecar and
/// the field): its valid neighbours are still written.
pub fn egress_hosts(sidecar: &Sidecar, taken: &mut Vec<String>) -> (Vec<HostsEntry>, Vec<String>) {
    let mut by_ip: Vec<HostsEntry> = Vec::new();
    let mut problems = Vec::new();
    let resource = format!(
        "Sidecar {}/{}",
        sidecar.metadata.namespace, sidecar.metadata.name
    );
    for (i, listener) in sidecar.spec.egress.iter().enumerate() {
        if listener
            .capture_mode
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("IPTABLES"))
        {
            // Traffic to this listener is captured by iptables, not reached by name.
            continue;
        }
        let ip = match listener.bind.as_deref() {
            None | Some("") => DEFAULT_EGRESS_BIND.to_string(),
            Some(b) if b.starts_with("unix://") => DEFAULT_EGRESS_BIND.to_string(),
            Some(b) => match b.parse::<IpAddr>() {
                Ok(ip) => ip.to_string(),
                Err(_) => {
                    problems.push(format!(
                        "{resource}: spec.egress[{i}].bind: {b:?} is not an IP address; \
                         the listener's hosts are not written to /etc/hosts"
                    ));
                    continue;
                }
            },
        };
        for (j, host) in listener.hosts.iter().enumerate() {
            let dns = host.split_once('/').map(|(_, d)| d).unwrap_or(host);
            if dns == "*" || dns == "~" || dns.strip_prefix("*.").is_some_and(is_dns_name) {
                // Wildcards are valid Istio hosts that /etc/hosts cannot express.
                continue;
            }
            if !is_dns_name(dns) {
                problems.push(format!(
                    "{resource}: spec.egress[{i}].hosts[{j}]: {host:?} is not a valid host \
                     (namespace/dns-name, the name of letters, digits, '-' and '.'); \
                     skipped, the other hosts are written to /etc/hosts"
                ));
                continue;
            }
            let dns = dns.trim_end_matches('.');
            if taken.iter().any(|t| t == dns) {
                continue;
            }
            taken.push(dns.to_string());
            match by_ip.iter_mut().find(|e| e.ip == ip) {
                Some(e) => e.hostnames.push(dns.to_string()),
                None => by_ip.push(HostsEntry {
                    ip: ip.clone(),
                    hostnames: vec![dns.to_string()],
                    resolve: None,
                }),
            }
        }
    }
    (by_ip, problems)
}

/// Whether a WorkloadGroup can be rendered at all, whatever the mesh config and the agent
/// bring: its `proxy.istio.io/config` annotations parse, their `proxyMetadata` keys are shell
/// variable names and their values strings without NUL. For a store to refuse the resource
/// when it loads it, naming the resource, the field and the key, rather than at the first
/// registration.
pub fn check_workload_group(
    wg: &crate::api::registration::WorkloadGroupSnapshot,
) -> Result<(), BootstrapError> {
    compute(&BootstrapInput::new(wg)).map(|_| ())
}

/// What is wrong with a Sidecar for the hosts block (see [`egress_hosts`]); empty when
/// nothing. For a store or a check command to report when it loads the resource.
pub fn sidecar_problems(sidecar: &Sidecar) -> Vec<String> {
    egress_hosts(sidecar, &mut Vec::new()).1
}

/// Parses an `--ingress-ip` style value: an IP address, else a DNS name.
pub fn parse_gateway(s: &str) -> Result<Gateway, BootstrapError> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Gateway::Ip(ip));
    }
    if is_dns_name(s) {
        return Ok(Gateway::Hostname(s.trim_end_matches('.').to_string()));
    }
    Err(BootstrapError::Input {
        what: "istiod gateway".into(),
        message: format!("{s:?} is neither an IP address nor a DNS name"),
    })
}

/// The whole computation.
pub fn compute(input: &BootstrapInput<'_>) -> Result<Computed, BootstrapError> {
    let wg = input.workload_group;
    let spec = &wg.spec;
    let template = &spec.template;
    let revision = input.revision.filter(|r| !r.is_empty());
    let istio_ns = input.istio_namespace;
    // Both become part of istiod's host name, which goes into /etc/hosts, mesh.yaml and
    // cluster.env; the revision can come from the agent's registration.
    if !is_dns_label(istio_ns) {
        return Err(BootstrapError::Input {
            what: "Istio namespace".into(),
            message: format!(
                "{istio_ns:?} is not a Kubernetes namespace name (lower-case letters, digits and '-', at most 63)"
            ),
        });
    }
    if let Some(rev) = revision
        && !is_dns_label(rev)
    {
        return Err(BootstrapError::Input {
            what: "revision".into(),
            message: format!(
                "{rev:?} is not an Istio revision name (lower-case letters, digits and '-', at most 63)"
            ),
        });
    }

    // Mesh-wide config: only `defaultConfig` and `trustDomain` matter here.
    let mesh = match input.mesh_config {
        Value::Null => Map::new(),
        Value::Object(m) => m.clone(),
        other => {
            return Err(BootstrapError::Input {
                what: "mesh config".into(),
                message: format!("must be a MeshConfig map, found {other}"),
            });
        }
    };
    let mut default_config = match mesh.get("defaultConfig") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(BootstrapError::Input {
                what: "mesh config defaultConfig".into(),
                message: "must be a ProxyConfig map".into(),
            });
        }
    };
    default_config.retain(|_, v| !v.is_null());
    let mut proxy_metadata = match default_config.remove("proxyMetadata") {
        None => BTreeMap::new(),
        Some(v) => string_map(&v, "mesh config defaultConfig.proxyMetadata")?,
    };
    let mesh_trust_domain = match mesh.get("trustDomain") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(BootstrapError::Input {
                what: "mesh config trustDomain".into(),
                message: format!("must be a string, found {other}"),
            });
        }
    };

    let istiod_host = istiod_host(istio_ns, revision);
    let istiod_address = istiod_address(istio_ns, revision);
    if is_revisioned(revision)
        && default_config
            .get("discoveryAddress")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        default_config.insert(
            "discoveryAddress".into(),
            Value::String(istiod_address.clone()),
        );
    }

    let spec_annotations = spec.metadata.as_ref().map(|m| &m.annotations);
    let overlays = [
        ("metadata.annotations", Some(&wg.annotations)),
        ("spec.metadata.annotations", spec_annotations),
    ];
    for (where_, annotations) in overlays {
        let Some(yaml) = annotations.and_then(|a| a.get(ANNOTATION_PROXY_CONFIG)) else {
            continue;
        };
        let source = format!(
            "WorkloadGroup {}/{} {where_}[{ANNOTATION_PROXY_CONFIG}]",
            wg.namespace, wg.name
        );
        let overlay: Value =
            crate::yaml::from_str(std::path::Path::new(&source), yaml).map_err(|e| {
                BootstrapError::Input {
                    what: source.clone(),
                    message: e.message,
                }
            })?;
        match overlay {
            Value::Null => {}
            Value::Object(m) => {
                apply_proxy_config_overlay(&mut default_config, &mut proxy_metadata, &m, &source)?
            }
            _ => {
                return Err(BootstrapError::Input {
                    what: source,
                    message: "must be a ProxyConfig map".into(),
                });
            }
        }
    }

    match &spec.probe {
        Some(probe) => {
            default_config.insert("readinessProbe".into(), probe_json(probe));
        }
        None => {
            default_config.remove("readinessProbe");
        }
    }

    let empty = Labels::new();
    let metadata_labels = spec.metadata.as_ref().map(|m| &m.labels).unwrap_or(&empty);
    let mut labels = workload_labels(metadata_labels, &template.labels, input.agent_labels);
    let (canonical_service, canonical_revision) = canonical_service(&labels, &wg.name);
    let service_account = template
        .service_account
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_string());
    // FIX: never an empty TRUST_DOMAIN (istioctl writes '' when the mesh config has none, and
    // pilot-agent then uses '' instead of its own cluster.local default).
    let trust_domain = [
        mesh_trust_domain.as_str(),
        input.trust_domain.unwrap_or_default(),
    ]
    .into_iter()
    .find(|s| !s.is_empty())
    .unwrap_or(DEFAULT_TRUST_DOMAIN)
    .to_string();
    let mesh_id = match default_config.get("meshId") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(BootstrapError::Input {
                what: "defaultConfig.meshId".into(),
                message: format!("must be a string, found {other}"),
            });
        }
    };

    let md = &mut proxy_metadata;
    md.insert("CANONICAL_SERVICE".into(), canonical_service.clone());
    md.insert("CANONICAL_REVISION".into(), canonical_revision.clone());
    md.insert("POD_NAMESPACE".into(), wg.namespace.clone());
    md.insert("SERVICE_ACCOUNT".into(), service_account.clone());
    md.insert("TRUST_DOMAIN".into(), trust_domain.clone());
    md.insert("ISTIO_META_CLUSTER_ID".into(), input.cluster_id.to_string());
    md.insert("ISTIO_META_MESH_ID".into(), mesh_id);
    md.insert(
        "ISTIO_META_NETWORK".into(),
        template.network.clone().unwrap_or_default(),
    );
    if let Some(ports) = pod_ports_json(&template.ports) {
        md.insert("ISTIO_META_POD_PORTS".into(), ports);
    }
    md.insert("ISTIO_META_WORKLOAD_NAME".into(), wg.name.clone());
    labels.insert(LABEL_CANONICAL_NAME.into(), canonical_service.clone());
    labels.insert(LABEL_CANONICAL_REVISION.into(), canonical_revision.clone());
    md.insert("ISTIO_METAJSON_LABELS".into(), go_json_string_map(&labels));
    if input.dns_capture {
        md.insert("ISTIO_META_DNS_CAPTURE".into(), "true".into());
    }
    if let Some(we) = input.workload_entry_name.filter(|s| !s.is_empty()) {
        // Lets istiod find the WorkloadEntry we registered and take health reports for it.
        md.insert("ISTIO_META_WORKLOAD_ENTRY".into(), we.to_string());
        // FIX: never ask istiod to auto-register an entry we registered ourselves. istiod's
        // OnConnect (pilot/pkg/autoregistration/controller.go) tries AUTO_REGISTER_GROUP
        // before WORKLOAD_ENTRY, so one coming from the mesh config or an annotation would
        // make it create a second entry `<group>-<ip>` and ignore ours (and its health).
        md.remove(AUTO_REGISTER_GROUP);
    }
    default_config.insert(
        "proxyMetadata".into(),
        Value::Object(
            proxy_metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    );
    let mut mesh_doc = Map::new();
    mesh_doc.insert(
        "defaultConfig".into(),
        Value::Object(default_config.clone()),
    );
    let mesh_yaml = goyaml::to_string(&Value::Object(mesh_doc));

    // cluster.env: proxyMetadata with the overrides on top.
    let inbound_ports: Vec<String> = template.ports.values().map(|p| p.to_string()).collect();
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    overrides.insert(
        "ISTIO_INBOUND_PORTS".into(),
        if inbound_ports.is_empty() {
            "*".into()
        } else {
            inbound_ports.join(",")
        },
    );
    overrides.insert("ISTIO_NAMESPACE".into(), wg.namespace.clone());
    overrides.insert(
        "ISTIO_SERVICE".into(),
        format!("{}.{}", wg.name, wg.namespace),
    );
    overrides.insert("ISTIO_SERVICE_CIDR".into(), "*".into());
    overrides.insert(
        "ISTIO_LOCAL_EXCLUDE_PORTS".into(),
        local_exclude_ports(status_port(&default_config)?),
    );
    overrides.insert("SERVICE_ACCOUNT".into(), service_account.clone());
    // FIX: CA_ADDR always, not only for revisioned installs: istio-start.sh otherwise falls
    // back to istiod.istio-system.svc:15012 whatever the Istio namespace is.
    let ca_address = istiod_address.clone();
    overrides.insert("CA_ADDR".into(), ca_address.clone());
    match &input.instance_ip {
        Some(InstanceIp::Internal(ip)) => {
            overrides.insert("ISTIO_SVC_IP".into(), ip.clone());
        }
        Some(InstanceIp::External(ip)) => {
            overrides.insert("ISTIO_SVC_IP".into(), ip.clone());
            overrides.insert(
                "REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION".into(),
                "true".into(),
            );
        }
        None => {}
    }
    if input.interception_mode == InterceptionMode::None {
        // FIX (spec/001): workload onboarding runs without iptables. istiod builds no
        // capture listeners for NONE, and istio-start.sh skips iptables with
        // ISTIO_CUSTOM_IP_TABLES=true.
        overrides.insert("ISTIO_META_INTERCEPTION_MODE".into(), "NONE".into());
        overrides.insert("ISTIO_CUSTOM_IP_TABLES".into(), "true".into());
    }
    let mut cluster_env = proxy_metadata.clone();
    cluster_env.extend(overrides);
    // Every key and value is checked again where it is written, whatever its source (names
    // and flags reach here too): one line per variable or no file at all.
    let mut cluster_env_lines: Vec<String> = cluster_env
        .iter()
        .map(|(k, v)| {
            env_line(k, v).map_err(|e| BootstrapError::Input {
                what: format!("cluster.env for WorkloadGroup {}/{}", wg.namespace, wg.name),
                message: e.0,
            })
        })
        .collect::<Result<_, _>>()?;
    cluster_env_lines.sort();
    let cluster_env_text = format!("{}\n", cluster_env_lines.join("\n"));

    let mut hosts = Vec::new();
    let mut warnings = Vec::new();
    let mut taken = vec![istiod_host.clone()];
    match &input.istiod_gateway {
        Some(Gateway::Ip(ip)) => hosts.push(HostsEntry {
            ip: ip.to_string(),
            hostnames: vec![istiod_host.clone()],
            resolve: None,
        }),
        // FIX: istioctl writes an empty hosts file for a gateway known only by a hostname
        // (istio#31624); the agent resolves the name on the VM instead.
        Some(Gateway::Hostname(name)) => hosts.push(HostsEntry {
            ip: String::new(),
            hostnames: vec![istiod_host.clone()],
            resolve: Some(name.clone()),
        }),
        None => {}
    }
    if input.interception_mode == InterceptionMode::None
        && let Some(sidecar) = input.sidecar
    {
        let (entries, problems) = egress_hosts(sidecar, &mut taken);
        hosts.extend(entries);
        warnings.extend(problems);
    }

    Ok(Computed {
        default_config,
        proxy_metadata,
        cluster_env,
        cluster_env_lines,
        cluster_env_text,
        mesh_yaml,
        labels,
        canonical_service,
        canonical_revision,
        service_account,
        trust_domain,
        istiod_host,
        istiod_address,
        ca_address,
        hosts,
        warnings,
    })
}

/// The `hosts` file of the offline render (one `<ip> <names>` line per entry, as istioctl).
/// An entry the agent must resolve becomes a comment saying so: there is no address to write.
pub fn hosts_file(entries: &[HostsEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        match &e.resolve {
            Some(name) => out.push_str(&format!(
                "# {}: the address(es) of {name}, resolved on the VM (onboarding-agent does this)\n",
                e.hostnames.join(" ")
            )),
            None => out.push_str(&format!("{} {}\n", e.ip, e.hostnames.join(" "))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::istio::IstioEgressListener;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn canonical_name_and_revision_rules() {
        assert_eq!(
            canonical_service(&Labels::new(), "wg"),
            ("wg".to_string(), "latest".to_string())
        );
        assert_eq!(
            canonical_service(&labels(&[("app", "a"), ("version", "v1")]), "wg"),
            ("a".to_string(), "v1".to_string())
        );
        assert_eq!(
            canonical_service(
                &labels(&[
                    ("app", "a"),
                    ("app.kubernetes.io/name", "k"),
                    ("version", "v1"),
                    ("app.kubernetes.io/version", "kv"),
                ]),
                "wg"
            ),
            ("k".to_string(), "kv".to_string())
        );
        assert_eq!(
            canonical_service(
                &labels(&[
                    ("app.kubernetes.io/name", "k"),
                    (LABEL_CANONICAL_NAME, "c"),
                    (LABEL_CANONICAL_REVISION, "cr"),
                    ("version", "v1"),
                ]),
                "wg"
            ),
            ("c".to_string(), "cr".to_string())
        );
        // Presence counts, not a non-empty value (lookupLabelValue).
        assert_eq!(
            canonical_service(&labels(&[("app", ""), ("version", "")]), "wg"),
            (String::new(), String::new())
        );
    }

    #[test]
    fn shell_quoting_matches_istioctl_goldens() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("foo"), "'foo'");
        assert_eq!(shell_quote("10.10.10.10"), "'10.10.10.10'");
        assert_eq!(shell_quote("*"), "'*'");
        assert_eq!(shell_quote("it's"), "'it'\"'\"'s'");
        assert_eq!(shell_quote("{\"a\":\"b\"}"), "'{\"a\":\"b\"}'");
        // Only the odd character class of the Go raw string stays bare.
        assert_eq!(shell_quote("w.w-w/w"), "w.w-w/w");
        assert_eq!(shell_quote("w:w"), "w:w");
        assert_eq!(shell_quote("::1"), "'::1'");
    }

    #[test]
    fn shell_quoted_values_survive_sh() {
        let values = [
            "plain",
            "it's",
            "a b",
            "$(echo no)",
            "`x`",
            "tab\there",
            "{\"k\": \"v\"}",
        ];
        for v in values {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(v)))
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), v);
        }
    }

    #[test]
    fn go_json_escaping() {
        assert_eq!(
            go_json_string("a<b>&\"\\\n"),
            "\"a\\u003cb\\u003e\\u0026\\\"\\\\\\n\""
        );
        let m: BTreeMap<String, String> = [
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]
        .into();
        assert_eq!(go_json_string_map(&m), "{\"a\":\"1\",\"b\":\"2\"}");
        let ports: BTreeMap<String, u32> =
            [("http".to_string(), 8080), ("grpc".to_string(), 9090)].into();
        assert_eq!(
            pod_ports_json(&ports).unwrap(),
            "[{\"name\":\"grpc\",\"containerPort\":9090,\"protocol\":\"\"},{\"name\":\"http\",\"containerPort\":8080,\"protocol\":\"\"}]"
        );
    }

    #[test]
    fn labels_agent_adds_never_overrides() {
        let meta = labels(&[("app", "ratings"), ("class", "vm")]);
        let template = labels(&[("class", "bare-metal")]);
        let agent = labels(&[("app", "evil"), ("zone", "a")]);
        let got = workload_labels(&meta, &template, &agent);
        assert_eq!(
            got,
            labels(&[("app", "ratings"), ("class", "bare-metal"), ("zone", "a")])
        );
    }

    #[test]
    fn overlay_replaces_fields_and_merges_metadata() {
        let mut dc: Map<String, Value> = serde_json::from_str(
            r#"{"tracing": {"zipkin": {"address": "z:9411"}, "sampling": 1}, "concurrency": 2}"#,
        )
        .unwrap();
        let mut md: BTreeMap<String, String> = [
            ("A".to_string(), "mesh".to_string()),
            ("B".to_string(), "mesh".to_string()),
        ]
        .into();
        let overlay: Map<String, Value> = serde_json::from_str(
            r#"{"tracing": {"sampling": 50}, "proxyMetadata": {"B": "annot", "C": "annot"}, "concurrency": null}"#,
        )
        .unwrap();
        apply_proxy_config_overlay(&mut dc, &mut md, &overlay, "test").unwrap();
        // A nested message is replaced as a whole (jsonpb), a null is skipped.
        assert_eq!(dc["tracing"], serde_json::json!({"sampling": 50}));
        assert_eq!(dc["concurrency"], serde_json::json!(2));
        assert_eq!(md["A"], "mesh");
        assert_eq!(md["B"], "annot");
        assert_eq!(md["C"], "annot");
        let bad: Map<String, Value> =
            serde_json::from_str(r#"{"proxyMetadata": {"N": 1}}"#).unwrap();
        let err = apply_proxy_config_overlay(&mut dc, &mut md, &bad, "src").unwrap_err();
        assert!(err.to_string().contains("proxyMetadata.N"), "{err}");
    }

    #[test]
    fn exclude_ports() {
        assert_eq!(local_exclude_ports(0), "22,15090,15021,15020");
        assert_eq!(local_exclude_ports(15021), "22,15090,15021");
        assert_eq!(local_exclude_ports(16000), "22,15090,15021,16000");
    }

    #[test]
    fn revision_naming() {
        assert!(!is_revisioned(None));
        assert!(!is_revisioned(Some("")));
        assert!(!is_revisioned(Some("default")));
        assert_eq!(
            istiod_host("istio-system", Some("default")),
            "istiod.istio-system.svc"
        );
        assert_eq!(
            istiod_address("mesh", Some("1-22")),
            "istiod-1-22.mesh.svc:15012"
        );
    }

    #[test]
    fn egress_entries() {
        let listeners = vec![
            IstioEgressListener {
                bind: Some("127.0.0.2".into()),
                hosts: vec![
                    "./*".into(),
                    "bookinfo/details.bookinfo.svc".into(),
                    "*/example.org".into(),
                ],
                ..Default::default()
            },
            IstioEgressListener {
                hosts: vec![
                    "*/mysql.foo.com".into(),
                    "*/example.org".into(),
                    "~/*".into(),
                ],
                ..Default::default()
            },
            IstioEgressListener {
                capture_mode: Some("IPTABLES".into()),
                hosts: vec!["*/captured.example".into()],
                ..Default::default()
            },
        ];
        let mut taken = vec!["istiod.istio-system.svc".to_string()];
        let (got, problems) = egress_hosts(&sidecar(listeners), &mut taken);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            got,
            vec![
                HostsEntry {
                    ip: "127.0.0.2".into(),
                    hostnames: vec!["details.bookinfo.svc".into(), "example.org".into()],
                    resolve: None
                },
                HostsEntry {
                    ip: "127.0.0.1".into(),
                    hostnames: vec!["mysql.foo.com".into()],
                    resolve: None
                },
            ]
        );
    }

    fn sidecar(egress: Vec<IstioEgressListener>) -> Sidecar {
        Sidecar {
            api_version: "networking.istio.io/v1".into(),
            kind: "Sidecar".into(),
            metadata: crate::api::meta::ObjectMeta {
                name: "default".into(),
                namespace: "bookinfo".into(),
                ..Default::default()
            },
            spec: crate::api::istio::SidecarSpec {
                egress,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_bad_egress_host_is_reported_and_only_it_is_skipped() {
        let listeners = vec![
            IstioEgressListener {
                hosts: vec![
                    "bookinfo/details.bookinfo.svc".into(),
                    "*/*.wild.example".into(),
                    "*/evil\n8.8.8.8 bank.example".into(),
                    "*/ratings.bookinfo.svc".into(),
                    "*/has space.example".into(),
                    "*/#comment".into(),
                    "bookinfo/".into(),
                ],
                ..Default::default()
            },
            IstioEgressListener {
                bind: Some("127.0.0.9 evil.example".into()),
                hosts: vec!["*/not-written.example".into()],
                ..Default::default()
            },
            IstioEgressListener {
                bind: Some("127.0.0.3".into()),
                hosts: vec!["*/reviews.bookinfo.svc.".into()],
                ..Default::default()
            },
        ];
        let (got, problems) = egress_hosts(&sidecar(listeners), &mut Vec::new());
        assert_eq!(
            got,
            vec![
                HostsEntry {
                    ip: "127.0.0.1".into(),
                    hostnames: vec!["details.bookinfo.svc".into(), "ratings.bookinfo.svc".into()],
                    resolve: None
                },
                HostsEntry {
                    ip: "127.0.0.3".into(),
                    hostnames: vec!["reviews.bookinfo.svc".into()],
                    resolve: None
                },
            ]
        );
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(
            problems[0].starts_with(
                "Sidecar bookinfo/default: spec.egress[0].hosts[2]: \"*/evil\\n8.8.8.8 bank.example\" is not a valid host"
            ),
            "{}",
            problems[0]
        );
        for (p, field) in problems.iter().zip([
            "spec.egress[0].hosts[2]:",
            "spec.egress[0].hosts[4]:",
            "spec.egress[0].hosts[5]:",
            "spec.egress[0].hosts[6]:",
            "spec.egress[1].bind:",
        ]) {
            assert!(p.contains(field), "{p} should name {field}");
        }
        // The same answer for a check at load time.
        assert_eq!(sidecar_problems(&sidecar(vec![])), Vec::<String>::new());
    }

    #[test]
    fn gateway_parsing() {
        assert_eq!(
            parse_gateway("10.0.0.1").unwrap(),
            Gateway::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_gateway("fd00::2").unwrap(),
            Gateway::Ip("fd00::2".parse().unwrap())
        );
        assert_eq!(
            parse_gateway("lb-1234.elb.example.").unwrap(),
            Gateway::Hostname("lb-1234.elb.example".into())
        );
        assert!(parse_gateway("not a host").is_err());
        assert!(parse_gateway("-bad.example").is_err());
    }
}
