//! Pure conversions between the API server's objects and the endpoint's API types. The
//! endpoint's types are strict (`deny_unknown_fields`, a small `ObjectMeta`); objects from a
//! cluster carry server fields (managedFields, deletionGracePeriodSeconds, ...), so metadata
//! is mapped field by field and specs are parsed from their JSON.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::ConfigMap as KubeConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::crds::{PolicyObject, PolicyObjectSpec, WarObject, WarObjectSpec};
use crate::api::istio::{Sidecar, WorkloadEntry, WorkloadGroup};
use crate::api::meta::{ObjectMeta, OwnerReference};
use crate::api::policy::{self, OnboardingPolicy};
use crate::api::registration::{self as war_api, WorkloadAutoRegistration};
use crate::store::manifests::ConfigMap;

pub fn time_to_string(t: &metav1::Time) -> String {
    let secs = t.0.as_second();
    let st = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH
    };
    crate::timestamp::format(st)
}

#[cfg(test)]
fn time_from_string(s: &str) -> Option<metav1::Time> {
    let st = crate::timestamp::parse(s)?;
    let secs = st.duration_since(UNIX_EPOCH).ok()?.as_secs();
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).ok()?)
        .ok()
        .map(metav1::Time)
}

pub fn meta_from_kube(m: &metav1::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone().unwrap_or_default(),
        namespace: m.namespace.clone().unwrap_or_default(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        generation: m.generation,
        creation_timestamp: m.creation_timestamp.as_ref().map(time_to_string),
        labels: m.labels.clone().unwrap_or_default(),
        annotations: m.annotations.clone().unwrap_or_default(),
        owner_references: m
            .owner_references
            .iter()
            .flatten()
            .map(|o| OwnerReference {
                api_version: o.api_version.clone(),
                kind: o.kind.clone(),
                name: o.name.clone(),
                uid: o.uid.clone(),
                controller: o.controller,
                block_owner_deletion: o.block_owner_deletion,
            })
            .collect(),
        managed_fields: None,
        finalizers: m.finalizers.clone().unwrap_or_default(),
        deletion_timestamp: m.deletion_timestamp.as_ref().map(time_to_string),
        generate_name: m.generate_name.clone(),
    }
}

fn non_empty<K: Ord, V>(m: &BTreeMap<K, V>) -> Option<BTreeMap<K, V>>
where
    BTreeMap<K, V>: Clone,
{
    (!m.is_empty()).then(|| m.clone())
}

/// What a client may set when it writes an object: name, namespace, labels, annotations,
/// owner references and finalizers. uid, resourceVersion, generation and timestamps are the
/// server's, so they are left out (a create carrying a uid is refused).
pub fn meta_to_kube(m: &ObjectMeta) -> metav1::ObjectMeta {
    metav1::ObjectMeta {
        name: Some(m.name.clone()),
        namespace: Some(m.namespace.clone()),
        labels: non_empty(&m.labels),
        annotations: non_empty(&m.annotations),
        owner_references: (!m.owner_references.is_empty()).then(|| {
            m.owner_references
                .iter()
                .map(|o| metav1::OwnerReference {
                    api_version: o.api_version.clone(),
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    uid: o.uid.clone(),
                    controller: o.controller,
                    block_owner_deletion: o.block_owner_deletion,
                })
                .collect()
        }),
        finalizers: (!m.finalizers.is_empty()).then(|| m.finalizers.clone()),
        ..Default::default()
    }
}

pub fn war_from_object(o: WarObject) -> WorkloadAutoRegistration {
    WorkloadAutoRegistration {
        api_version: war_api::API_VERSION.to_string(),
        kind: war_api::KIND.to_string(),
        metadata: meta_from_kube(&o.metadata),
        spec: o.spec.0,
        status: o.status.unwrap_or_default(),
    }
}

/// The WAR as sent to the API server on create (the status goes separately, through the
/// status subresource).
pub fn war_to_object(w: &WorkloadAutoRegistration) -> WarObject {
    let mut o = WarObject::new(&w.metadata.name, WarObjectSpec(w.spec.clone()));
    o.metadata = meta_to_kube(&w.metadata);
    o
}

/// Server-side apply body for the WAR's metadata and spec (fields this endpoint owns).
pub fn war_apply_body(w: &WorkloadAutoRegistration) -> Result<Value, serde_json::Error> {
    Ok(json!({
        "apiVersion": war_api::API_VERSION,
        "kind": war_api::KIND,
        "metadata": meta_to_kube(&w.metadata),
        "spec": serde_json::to_value(&w.spec)?,
    }))
}

/// Server-side apply body for the status subresource. Fields this manager set before and
/// leaves out now (e.g. `activeAgentConnection` after a disconnect) are removed by the server.
pub fn war_status_apply_body(
    w: &WorkloadAutoRegistration,
    server_generation: Option<i64>,
) -> Result<Value, serde_json::Error> {
    let mut status = w.status.clone();
    // The generation the status speaks about is the server's (ours counts locally and the
    // API server keeps its own for the spec).
    if let Some(g) = server_generation {
        status.observed_generation = Some(g);
        for c in &mut status.conditions {
            c.observed_generation = Some(g);
        }
    }
    Ok(json!({
        "apiVersion": war_api::API_VERSION,
        "kind": war_api::KIND,
        "metadata": {"name": w.metadata.name, "namespace": w.metadata.namespace},
        "status": serde_json::to_value(&status)?,
    }))
}

pub fn policy_from_object(o: &PolicyObject) -> OnboardingPolicy {
    OnboardingPolicy {
        api_version: policy::API_VERSION.to_string(),
        kind: policy::KIND.to_string(),
        metadata: meta_from_kube(&o.metadata),
        spec: o.spec.0.clone(),
    }
}

/// A policy object as written by tests and tools (the inverse of `policy_from_object`).
pub fn policy_to_object(p: &OnboardingPolicy) -> PolicyObject {
    let mut o = PolicyObject::new(&p.metadata.name, PolicyObjectSpec(p.spec.clone()));
    o.metadata = meta_to_kube(&p.metadata);
    o
}

/// A watched object whose spec does not parse: the kind, the object and serde's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {message}")]
pub struct ConvertError {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub message: String,
}

fn spec_of<T: serde::de::DeserializeOwned + Default>(
    o: &DynamicObject,
    kind: &'static str,
) -> Result<T, ConvertError> {
    match o.data.get("spec") {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| ConvertError {
            kind,
            namespace: o.metadata.namespace.clone().unwrap_or_default(),
            name: o.metadata.name.clone().unwrap_or_default(),
            message: e.to_string(),
        }),
    }
}

pub fn workload_group_from_dynamic(o: &DynamicObject) -> Result<WorkloadGroup, ConvertError> {
    Ok(WorkloadGroup {
        api_version: crate::api::istio::NETWORKING_API_VERSION.to_string(),
        kind: "WorkloadGroup".to_string(),
        metadata: meta_from_kube(&o.metadata),
        spec: spec_of(o, "WorkloadGroup")?,
        status: None,
    })
}

pub fn sidecar_from_dynamic(o: &DynamicObject) -> Result<Sidecar, ConvertError> {
    Ok(Sidecar {
        api_version: crate::api::istio::NETWORKING_API_VERSION.to_string(),
        kind: "Sidecar".to_string(),
        metadata: meta_from_kube(&o.metadata),
        spec: spec_of(o, "Sidecar")?,
    })
}

pub fn config_map_from_kube(c: &KubeConfigMap) -> ConfigMap {
    ConfigMap {
        metadata: meta_from_kube(&c.metadata),
        data: c.data.clone().unwrap_or_default(),
    }
}

/// Server-side apply body for a WorkloadEntry, owned by the WAR with uid `war_uid` (the
/// uid the API server gave the WAR, which the entry built from our copy cannot know).
/// Only the fields set here are this endpoint's: istiod's health annotations and status on
/// the same entry stay untouched.
pub fn workload_entry_apply_body(
    e: &WorkloadEntry,
    war_uid: &str,
) -> Result<Value, serde_json::Error> {
    let mut meta = e.metadata.clone();
    for o in &mut meta.owner_references {
        if o.kind == war_api::KIND && o.api_version == war_api::API_VERSION {
            o.uid = war_uid.to_string();
        }
    }
    Ok(json!({
        "apiVersion": e.api_version,
        "kind": e.kind,
        "metadata": meta_to_kube(&meta),
        "spec": serde_json::to_value(&e.spec)?,
    }))
}

/// The uid of the WAR owning a WorkloadEntry, when it is one of ours.
pub fn owning_war_uid(meta: &metav1::ObjectMeta) -> Option<&str> {
    meta.owner_references.iter().flatten().find_map(|o| {
        (o.kind == war_api::KIND && o.api_version == war_api::API_VERSION).then_some(o.uid.as_str())
    })
}

/// A JWT's `exp` as the TokenRequest API reports it.
pub fn expiry(t: &metav1::Time) -> Option<SystemTime> {
    u64::try_from(t.0.as_second())
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registration::{
        ActiveAgentConnection, Condition, ConditionStatus, Registration, WarSpec, WarStatus,
        WorkloadGroupSnapshot,
    };

    fn war() -> WorkloadAutoRegistration {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), "ratings".to_string());
        WorkloadAutoRegistration {
            api_version: war_api::API_VERSION.into(),
            kind: war_api::KIND.into(),
            metadata: ObjectMeta {
                name: "ratings-jwt-x".into(),
                namespace: "bookinfo".into(),
                uid: Some("local-uid".into()),
                resource_version: Some("7".into()),
                generation: Some(3),
                creation_timestamp: Some("2026-01-02T03:04:05Z".into()),
                labels,
                owner_references: vec![OwnerReference {
                    api_version: "networking.istio.io/v1".into(),
                    kind: "WorkloadGroup".into(),
                    name: "ratings".into(),
                    uid: "wg-uid".into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }],
                ..Default::default()
            },
            spec: WarSpec {
                identity: crate::api::identity::WorkloadIdentity::Jwt(
                    crate::api::identity::JwtIdentity {
                        issuer: "https://idp".into(),
                        subject: "vm-1".into(),
                        attributes: BTreeMap::new(),
                    },
                ),
                registration: Registration::default(),
                workload_group: WorkloadGroupSnapshot {
                    name: "ratings".into(),
                    namespace: "bookinfo".into(),
                    uid: None,
                    resource_version: None,
                    generation: None,
                    labels: BTreeMap::new(),
                    annotations: BTreeMap::new(),
                    spec: Default::default(),
                    taken_at: "2026-01-02T03:04:05Z".into(),
                },
            },
            status: WarStatus {
                observed_generation: Some(3),
                conditions: vec![Condition {
                    kind: "AgentConnected".into(),
                    status: ConditionStatus::True,
                    reason: "AgentEstablishedConnection".into(),
                    message: String::new(),
                    last_transition_time: "2026-01-02T03:04:05Z".into(),
                    observed_generation: Some(3),
                }],
                active_agent_connection: Some(ActiveAgentConnection {
                    connected_to: "pod-a".into(),
                }),
            },
        }
    }

    #[test]
    fn create_body_leaves_server_fields_out() {
        let o = war_to_object(&war());
        assert_eq!(o.metadata.uid, None);
        assert_eq!(o.metadata.resource_version, None);
        assert_eq!(o.metadata.generation, None);
        assert_eq!(o.metadata.creation_timestamp, None);
        assert!(o.status.is_none(), "status goes through the subresource");
        let owners = o.metadata.owner_references.unwrap();
        assert_eq!(owners[0].uid, "wg-uid");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(owners[0].block_owner_deletion, Some(true));
        let v = serde_json::to_value(war_to_object(&war())).unwrap();
        assert_eq!(v["apiVersion"], war_api::API_VERSION);
        assert_eq!(v["spec"]["identity"]["jwt"]["subject"], "vm-1");
    }

    #[test]
    fn object_round_trips_to_the_api_type() {
        let mut o = war_to_object(&war());
        o.metadata.uid = Some("server-uid".into());
        o.metadata.creation_timestamp = time_from_string("2026-01-02T03:04:05Z");
        o.metadata.managed_fields = Some(vec![Default::default()]);
        o.metadata.deletion_grace_period_seconds = Some(30);
        o.status = Some(war().status);
        let w = war_from_object(o);
        assert_eq!(w.metadata.uid.as_deref(), Some("server-uid"));
        assert_eq!(
            w.metadata.creation_timestamp.as_deref(),
            Some("2026-01-02T03:04:05Z")
        );
        assert_eq!(w.spec, war().spec);
        assert_eq!(w.status, war().status);
    }

    #[test]
    fn status_body_speaks_of_the_server_generation_and_omits_cleared_fields() {
        let mut w = war();
        let v = war_status_apply_body(&w, Some(1)).unwrap();
        assert_eq!(v["status"]["observedGeneration"], 1);
        assert_eq!(v["status"]["conditions"][0]["observedGeneration"], 1);
        assert_eq!(v["status"]["activeAgentConnection"]["connectedTo"], "pod-a");
        assert!(v.get("spec").is_none());
        w.status.active_agent_connection = None;
        let v = war_status_apply_body(&w, None).unwrap();
        assert!(v["status"].get("activeAgentConnection").is_none());
        assert_eq!(v["status"]["observedGeneration"], 3);
    }

    #[test]
    fn workload_entry_gets_the_servers_war_uid() {
        let w = war();
        let e = crate::registration::workload_entry(&WorkloadAutoRegistration {
            spec: WarSpec {
                registration: Registration {
                    host: crate::api::registration::HostInfo {
                        addresses: vec![crate::api::registration::Address {
                            ip: "10.0.0.5".into(),
                            kind: Default::default(),
                        }],
                    },
                    ..Default::default()
                },
                ..w.spec.clone()
            },
            ..w
        })
        .unwrap();
        let v = workload_entry_apply_body(&e, "server-uid").unwrap();
        let owners = v["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0]["uid"], "server-uid");
        assert_eq!(owners[0]["kind"], war_api::KIND);
        assert_eq!(owners[0]["controller"], true);
        assert_eq!(owners[0]["blockOwnerDeletion"], true);
        assert_eq!(v["spec"]["address"], "10.0.0.5");
        assert!(v["metadata"].get("uid").is_none());
        let meta: metav1::ObjectMeta = serde_json::from_value(v["metadata"].clone()).unwrap();
        assert_eq!(owning_war_uid(&meta), Some("server-uid"));
    }

    #[test]
    fn dynamic_workload_group_with_server_fields_parses() {
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadGroup",
            "metadata": {
                "name": "ratings", "namespace": "bookinfo", "uid": "u1",
                "resourceVersion": "12", "generation": 2,
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {"template": {"serviceAccount": "ratings-vm", "ports": {"http": 9080}}},
            "status": {"conditions": []}
        }))
        .unwrap();
        let wg = workload_group_from_dynamic(&o).unwrap();
        assert_eq!(wg.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(wg.metadata.generation, Some(2));
        assert_eq!(
            wg.spec.template.service_account.as_deref(),
            Some("ratings-vm")
        );
        let bad: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "WorkloadGroup",
            "metadata": {"name": "x", "namespace": "n"},
            "spec": {"template": {"ports": {"http": "not-a-number"}}}
        }))
        .unwrap();
        let e = workload_group_from_dynamic(&bad).unwrap_err();
        assert!(e.to_string().contains("WorkloadGroup n/x"), "{e}");
    }
}
