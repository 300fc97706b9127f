//! What `istioctl x workload entry configure` computes (reference/istio.md §1.2-1.6), as pure
//! functions over data: the ProxyConfig that becomes `mesh.yaml`, its `proxyMetadata`, the
//! `cluster.env` variables and the hosts entries. The deliberate differences from istioctl are
//! marked `FIX:` and listed in docs/bootstrap.md.
//!
//! [`compute`] runs the named steps of `steps` in istioctl's order; `encode` writes values
//! as Go does, `hosts` builds the hosts block.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};

mod encode;
mod hosts;
mod steps;
#[cfg(test)]
mod tests;

pub use super::sinks::{is_dns_name, shell_quote};
use super::{BootstrapError, BootstrapInput, Gateway, InterceptionMode};
use crate::api::meta::Labels;
use crate::api::protocol::HostsEntry;
pub use encode::{go_json_string, go_json_string_map, pod_ports_json};
pub use hosts::{egress_hosts, hosts_file, sidecar_problems};
pub use steps::{apply_proxy_config_overlay, local_exclude_ports};

/// The proxyMetadata key that makes istiod auto-register a WorkloadEntry on connect.
const AUTO_REGISTER_GROUP: &str = "ISTIO_META_AUTO_REGISTER_GROUP";

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

/// The whole computation: istioctl's steps in its order (see `steps` for each one).
pub fn compute(input: &BootstrapInput<'_>) -> Result<Computed, BootstrapError> {
    let wg = input.workload_group;
    let revision = input.revision.filter(|r| !r.is_empty());
    let istio_ns = input.istio_namespace;
    steps::check_names(istio_ns, revision)?;

    let steps::MeshDefaults {
        mut default_config,
        mut proxy_metadata,
        trust_domain: mesh_trust_domain,
    } = steps::mesh_defaults(input.mesh_config)?;
    let istiod_host = istiod_host(istio_ns, revision);
    let istiod_address = istiod_address(istio_ns, revision);
    steps::set_discovery_address(&mut default_config, revision, &istiod_address);
    steps::apply_annotation_overlays(wg, &mut default_config, &mut proxy_metadata)?;
    steps::set_readiness_probe(&mut default_config, wg.spec.probe.as_ref());

    let id = steps::workload_identity(input, &mesh_trust_domain);
    let mesh_id = steps::mesh_id(&default_config)?;
    steps::fill_proxy_metadata(&mut proxy_metadata, input, &id, mesh_id);
    let mesh_yaml = steps::mesh_yaml(&mut default_config, &proxy_metadata);

    // FIX: CA_ADDR always, not only for revisioned installs: istio-start.sh otherwise falls
    // back to istiod.istio-system.svc:15012 whatever the Istio namespace is.
    let ca_address = istiod_address.clone();
    let cluster_env = steps::cluster_env(
        input,
        &proxy_metadata,
        &default_config,
        &id.service_account,
        &ca_address,
    )?;
    let cluster_env_lines = steps::cluster_env_lines(&cluster_env, wg)?;
    let cluster_env_text = format!("{}\n", cluster_env_lines.join("\n"));

    let (hosts, warnings) = hosts::hosts_entries(input, &istiod_host);

    let steps::WorkloadIdentity {
        labels,
        canonical_service,
        canonical_revision,
        service_account,
        trust_domain,
    } = id;
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
