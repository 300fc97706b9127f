//! Gathers what a bootstrap render needs from the store and the WAR, then calls the pure
//! renderer in `crate::bootstrap`. The WorkloadGroup always comes from the WAR's snapshot.

use std::path::Path;

use crate::api::istio::Sidecar;
use crate::api::meta::Labels;
use crate::api::protocol::Bootstrap;
use crate::api::registration::{AddressType, WorkloadAutoRegistration};
use crate::bootstrap::{self, BootstrapError, BootstrapInput, InstanceIp};
use crate::endpoint::config::MeshSettings;
use crate::registration;
use crate::store::{IstioToken, Store};

pub struct Renderer {
    templates: bootstrap::Renderer,
    mesh: MeshSettings,
    gateway: Option<bootstrap::Gateway>,
    warned: WarnOnce,
}

impl Renderer {
    pub fn new(template_dir: Option<&Path>, mesh: MeshSettings) -> Result<Self, BootstrapError> {
        let gateway = mesh
            .istiod_gateway
            .as_deref()
            .map(bootstrap::parse_gateway)
            .transpose()?;
        Ok(Renderer {
            templates: bootstrap::Renderer::new(template_dir)?,
            mesh,
            gateway,
            warned: WarnOnce::default(),
        })
    }

    pub fn render<S: Store>(
        &self,
        store: &S,
        war: &WorkloadAutoRegistration,
        token: &IstioToken,
    ) -> Result<Bootstrap, BootstrapError> {
        let ns = &war.metadata.namespace;
        let reg = &war.spec.registration;
        let snapshot = &war.spec.workload_group;
        let mesh_config = store.mesh_config(self.mesh.revision.as_deref());
        let root_cert = store.root_cert(ns).unwrap_or_default();
        let agent_labels: Labels = reg
            .workload
            .as_ref()
            .map(|w| w.labels.clone())
            .unwrap_or_default();
        let labels = registration::workload_labels(snapshot, reg);
        let sidecars = store.sidecars(ns);
        let sidecar = select_sidecar(&sidecars, &labels);
        let connected_over = reg
            .settings
            .as_ref()
            .and_then(|s| s.connected_over)
            .unwrap_or_default();
        let instance_ip = registration::workload_address(reg)
            .ok()
            .map(|ip| match connected_over {
                AddressType::Vpc => InstanceIp::Internal(ip),
                AddressType::Internet => InstanceIp::External(ip),
            });
        // The sidecar's revision wins over the endpoint's default: the agent knows which
        // istio-sidecar package is installed.
        let revision = reg
            .sidecar
            .istio
            .revision
            .as_deref()
            .or(self.mesh.revision.as_deref());
        let mut input = BootstrapInput::new(snapshot);
        input.mesh_config = &mesh_config;
        input.root_cert = &root_cert;
        input.istio_token = &token.token;
        input.istio_token_expires_at = token.expires_at.map(crate::timestamp::format);
        input.revision = revision;
        input.cluster_id = &self.mesh.cluster_id;
        input.istio_namespace = &self.mesh.istio_namespace;
        input.instance_ip = instance_ip;
        input.istiod_gateway = self.gateway.clone();
        input.agent_labels = &agent_labels;
        input.workload_entry_name = Some(&war.metadata.name);
        input.sidecar = sidecar;
        let computed = bootstrap::compute(&input)?;
        if let Some(sidecar) = sidecar {
            for problem in self.warned.fresh(sidecar, &computed.warnings) {
                tracing::warn!("{problem}");
            }
        }
        self.templates.render_computed(&input, &computed)
    }
}

/// Remembers which Sidecar contents have been reported, so a bad egress host is logged once
/// per version of the Sidecar (each change to it is reported again) rather than on every
/// register and bootstrap call of every workload it selects.
#[derive(Debug, Default)]
struct WarnOnce {
    seen: std::sync::Mutex<std::collections::HashSet<u64>>,
}

/// Bounds the memory a stream of edited Sidecars can take; forgetting only means a repeat.
const WARN_ONCE_CAPACITY: usize = 4096;

impl WarnOnce {
    /// `problems` when this version of `sidecar` has not been reported yet, else nothing.
    fn fresh(&self, sidecar: &Sidecar, problems: &[String]) -> Vec<String> {
        use std::hash::{Hash, Hasher};
        if problems.is_empty() {
            return Vec::new();
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        sidecar.metadata.namespace.hash(&mut h);
        sidecar.metadata.name.hash(&mut h);
        // The spec's canonical JSON (maps are ordered) identifies the version.
        serde_json::to_string(&sidecar.spec)
            .unwrap_or_default()
            .hash(&mut h);
        let key = h.finish();
        // Poisoned (see `crate::lock`): report every time rather than trust the memory.
        let Ok(mut seen) = crate::lock::lock(&self.seen, "reported Sidecar problems") else {
            return problems.to_vec();
        };
        if seen.len() >= WARN_ONCE_CAPACITY {
            seen.clear();
        }
        if seen.insert(key) {
            problems.to_vec()
        } else {
            Vec::new()
        }
    }
}

/// The Sidecar resource that applies to a workload with `labels`: the first (by name) whose
/// `workloadSelector` matches, else the namespace-wide one without a selector — Istio's rule.
pub fn select_sidecar<'a>(sidecars: &'a [Sidecar], labels: &Labels) -> Option<&'a Sidecar> {
    let mut sorted: Vec<&Sidecar> = sidecars.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let selects = |s: &Sidecar| {
        s.spec.workload_selector.as_ref().is_some_and(|sel| {
            !sel.labels.is_empty() && sel.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
    };
    let unselective = |s: &Sidecar| {
        s.spec
            .workload_selector
            .as_ref()
            .is_none_or(|sel| sel.labels.is_empty())
    };
    sorted
        .iter()
        .copied()
        .find(|s| selects(s))
        .or_else(|| sorted.iter().copied().find(|s| unselective(s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::istio::{SidecarSpec, WorkloadSelector};
    use crate::api::meta::ObjectMeta;

    fn sc(name: &str, sel: &[(&str, &str)]) -> Sidecar {
        Sidecar {
            api_version: "networking.istio.io/v1".into(),
            kind: "Sidecar".into(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "ns".into(),
                ..Default::default()
            },
            spec: SidecarSpec {
                workload_selector: (!sel.is_empty()).then(|| WorkloadSelector {
                    labels: sel
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn sidecar_problems_are_reported_once_per_version() {
        let w = WarnOnce::default();
        let mut a = sc("default", &[]);
        a.spec.egress = vec![crate::api::istio::IstioEgressListener {
            hosts: vec!["*/ok.example".into(), "*/bad host".into()],
            ..Default::default()
        }];
        let problems = crate::bootstrap::proxy_config::sidecar_problems(&a);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with(
                "Sidecar ns/default: spec.egress[0].hosts[1]: \"*/bad host\" is not a valid host"
            ),
            "{problems:?}"
        );
        assert_eq!(w.fresh(&a, &problems), problems);
        // The next render of the same Sidecar says nothing.
        assert!(w.fresh(&a, &problems).is_empty());
        // An edited Sidecar (a new load) is reported again.
        a.spec.egress[0].hosts.push("*/also bad".into());
        let problems = crate::bootstrap::proxy_config::sidecar_problems(&a);
        assert_eq!(w.fresh(&a, &problems).len(), 2);
        // Same name in another namespace is another resource.
        let mut b = a.clone();
        b.metadata.namespace = "other".into();
        assert_eq!(w.fresh(&b, &problems).len(), 2);
        assert!(w.fresh(&b, &[]).is_empty());
    }

    #[test]
    fn selector_beats_namespace_default() {
        let all = vec![
            sc("a-default", &[]),
            sc("b-vm", &[("app", "ratings"), ("class", "vm")]),
        ];
        let l: Labels = [("app", "ratings"), ("class", "vm"), ("version", "v1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(select_sidecar(&all, &l).unwrap().metadata.name, "b-vm");
        let other: Labels = [("app", "x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            select_sidecar(&all, &other).unwrap().metadata.name,
            "a-default"
        );
        assert!(select_sidecar(&all[1..], &other).is_none());
    }
}
