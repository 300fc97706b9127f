//! The steps of [`super::compute`], in the order it runs them. Each is a pure function over
//! data and says which part of `istioctl x workload entry configure` it mirrors
//! (reference/istio.md §1.2-1.6); the deliberate differences are marked `FIX:`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::encode::{go_json_string_map, pod_ports_json, probe_json};
use super::{
    ANNOTATION_PROXY_CONFIG, AUTO_REGISTER_GROUP, DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN,
    LABEL_CANONICAL_NAME, LABEL_CANONICAL_REVISION, canonical_service, is_revisioned,
    workload_labels,
};
use crate::api::istio::ReadinessProbe;
use crate::api::meta::Labels;
use crate::api::registration::WorkloadGroupSnapshot;
use crate::bootstrap::goyaml;
use crate::bootstrap::sinks::{env_line, env_name_problem, env_value_problem, is_dns_label};
use crate::bootstrap::{BootstrapError, BootstrapInput, InstanceIp, InterceptionMode};

/// The Istio namespace and the revision become part of istiod's host name, which goes into
/// /etc/hosts, mesh.yaml and cluster.env; the revision can come from the agent's
/// registration. istioctl takes both from its flags unchecked; we refuse what is not a label.
pub(super) fn check_names(istio_ns: &str, revision: Option<&str>) -> Result<(), BootstrapError> {
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
    Ok(())
}

/// What the mesh-wide config contributes: its `defaultConfig` (null fields dropped, as
/// jsonpb does), that config's `proxyMetadata`, and `trustDomain` (empty when unset).
pub(super) struct MeshDefaults {
    pub default_config: Map<String, Value>,
    pub proxy_metadata: BTreeMap<String, String>,
    pub trust_domain: String,
}

/// Reads the MeshConfig as istioctl's `createMeshConfig` does: only `defaultConfig` and
/// `trustDomain` matter here.
pub(super) fn mesh_defaults(mesh_config: &Value) -> Result<MeshDefaults, BootstrapError> {
    let mesh = match mesh_config {
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
    let proxy_metadata = match default_config.remove("proxyMetadata") {
        None => BTreeMap::new(),
        Some(v) => string_map(&v, "mesh config defaultConfig.proxyMetadata")?,
    };
    let trust_domain = match mesh.get("trustDomain") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(BootstrapError::Input {
                what: "mesh config trustDomain".into(),
                message: format!("must be a string, found {other}"),
            });
        }
    };
    Ok(MeshDefaults {
        default_config,
        proxy_metadata,
        trust_domain,
    })
}

/// istioctl sets `discoveryAddress` to the revisioned istiod for a revisioned install, unless
/// the mesh config already names one.
pub(super) fn set_discovery_address(
    default_config: &mut Map<String, Value>,
    revision: Option<&str>,
    istiod_address: &str,
) {
    if is_revisioned(revision)
        && default_config
            .get("discoveryAddress")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        default_config.insert(
            "discoveryAddress".into(),
            Value::String(istiod_address.to_string()),
        );
    }
}

/// istioctl's `proxy.istio.io/config` overlays: the WorkloadGroup's own annotation, then the
/// one in its `spec.metadata`, each laid on with [`apply_proxy_config_overlay`].
pub(super) fn apply_annotation_overlays(
    wg: &WorkloadGroupSnapshot,
    default_config: &mut Map<String, Value>,
    proxy_metadata: &mut BTreeMap<String, String>,
) -> Result<(), BootstrapError> {
    let spec_annotations = wg.spec.metadata.as_ref().map(|m| &m.annotations);
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
                apply_proxy_config_overlay(default_config, proxy_metadata, &m, &source)?
            }
            _ => {
                return Err(BootstrapError::Input {
                    what: source,
                    message: "must be a ProxyConfig map".into(),
                });
            }
        }
    }
    Ok(())
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

pub(super) fn string_map(
    v: &Value,
    what: &str,
) -> Result<BTreeMap<String, String>, BootstrapError> {
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

/// istioctl replaces the ProxyConfig's `readinessProbe` with the WorkloadGroup's probe (and
/// drops a mesh-wide one when the group has none).
pub(super) fn set_readiness_probe(
    default_config: &mut Map<String, Value>,
    probe: Option<&ReadinessProbe>,
) {
    match probe {
        Some(probe) => {
            default_config.insert("readinessProbe".into(), probe_json(probe));
        }
        None => {
            default_config.remove("readinessProbe");
        }
    }
}

/// Who the workload is in the mesh.
pub(super) struct WorkloadIdentity {
    /// The workload's labels with the canonical name and revision labels set.
    pub labels: Labels,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub service_account: String,
    pub trust_domain: String,
}

/// istioctl's labels, `CanonicalService`, service account (`default` when the template names
/// none) and trust domain.
pub(super) fn workload_identity(
    input: &BootstrapInput<'_>,
    mesh_trust_domain: &str,
) -> WorkloadIdentity {
    let wg = input.workload_group;
    let template = &wg.spec.template;
    let empty = Labels::new();
    let metadata_labels = wg
        .spec
        .metadata
        .as_ref()
        .map(|m| &m.labels)
        .unwrap_or(&empty);
    let mut labels = workload_labels(metadata_labels, &template.labels, input.agent_labels);
    let (canonical_service, canonical_revision) = canonical_service(&labels, &wg.name);
    labels.insert(LABEL_CANONICAL_NAME.into(), canonical_service.clone());
    labels.insert(LABEL_CANONICAL_REVISION.into(), canonical_revision.clone());
    let service_account = template
        .service_account
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_string());
    // FIX: never an empty TRUST_DOMAIN (istioctl writes '' when the mesh config has none, and
    // pilot-agent then uses '' instead of its own cluster.local default).
    let trust_domain = [mesh_trust_domain, input.trust_domain.unwrap_or_default()]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or(DEFAULT_TRUST_DOMAIN)
        .to_string();
    WorkloadIdentity {
        labels,
        canonical_service,
        canonical_revision,
        service_account,
        trust_domain,
    }
}

/// `ISTIO_META_MESH_ID`: the ProxyConfig's `meshId`, empty when unset, as istioctl.
pub(super) fn mesh_id(default_config: &Map<String, Value>) -> Result<String, BootstrapError> {
    match default_config.get("meshId") {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(BootstrapError::Input {
            what: "defaultConfig.meshId".into(),
            message: format!("must be a string, found {other}"),
        }),
    }
}

/// The `proxyMetadata` istioctl adds to the ProxyConfig (the workload's identity, cluster,
/// network, ports and labels), over what the mesh config and the annotations set.
pub(super) fn fill_proxy_metadata(
    md: &mut BTreeMap<String, String>,
    input: &BootstrapInput<'_>,
    id: &WorkloadIdentity,
    mesh_id: String,
) {
    let wg = input.workload_group;
    let template = &wg.spec.template;
    md.insert("CANONICAL_SERVICE".into(), id.canonical_service.clone());
    md.insert("CANONICAL_REVISION".into(), id.canonical_revision.clone());
    md.insert("POD_NAMESPACE".into(), wg.namespace.clone());
    md.insert("SERVICE_ACCOUNT".into(), id.service_account.clone());
    md.insert("TRUST_DOMAIN".into(), id.trust_domain.clone());
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
    md.insert(
        "ISTIO_METAJSON_LABELS".into(),
        go_json_string_map(&id.labels),
    );
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
}

/// Puts `proxyMetadata` into the ProxyConfig and writes `mesh.yaml` as istioctl does
/// (`defaultConfig:` only, go-yaml v2 style).
pub(super) fn mesh_yaml(
    default_config: &mut Map<String, Value>,
    proxy_metadata: &BTreeMap<String, String>,
) -> String {
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
    goyaml::to_string(&Value::Object(mesh_doc))
}

/// `cluster.env` as istioctl's `createClusterEnv`: `proxyMetadata` with its overrides on top
/// (inbound ports, namespace, service, CIDR, excluded ports, service account, CA address,
/// the instance IP and, in NONE mode, no iptables).
pub(super) fn cluster_env(
    input: &BootstrapInput<'_>,
    proxy_metadata: &BTreeMap<String, String>,
    default_config: &Map<String, Value>,
    service_account: &str,
    ca_address: &str,
) -> Result<BTreeMap<String, String>, BootstrapError> {
    let wg = input.workload_group;
    let inbound_ports: Vec<String> = wg
        .spec
        .template
        .ports
        .values()
        .map(|p| p.to_string())
        .collect();
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
        local_exclude_ports(status_port(default_config)?),
    );
    overrides.insert("SERVICE_ACCOUNT".into(), service_account.to_string());
    overrides.insert("CA_ADDR".into(), ca_address.to_string());
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
    Ok(cluster_env)
}

/// `KEY='value'` lines sorted by bytes, as istioctl's `mapToString`. Every key and value is
/// checked again here, whatever its source (names and flags reach here too): one line per
/// variable or no file at all.
pub(super) fn cluster_env_lines(
    cluster_env: &BTreeMap<String, String>,
    wg: &WorkloadGroupSnapshot,
) -> Result<Vec<String>, BootstrapError> {
    let mut lines: Vec<String> = cluster_env
        .iter()
        .map(|(k, v)| {
            env_line(k, v).map_err(|e| BootstrapError::Input {
                what: format!("cluster.env for WorkloadGroup {}/{}", wg.namespace, wg.name),
                message: e.0,
            })
        })
        .collect::<Result<_, _>>()?;
    lines.sort();
    Ok(lines)
}

/// `statusPort` of the ProxyConfig as istioctl reads it for `ISTIO_LOCAL_EXCLUDE_PORTS`.
pub(super) fn status_port(default_config: &Map<String, Value>) -> Result<i64, BootstrapError> {
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
