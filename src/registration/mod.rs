//! Registrations: the WorkloadAutoRegistration (WAR) for an onboarded workload and the Istio
//! WorkloadEntry derived from it. Pure functions over data; the store persists the results.

pub mod admission;
pub mod connection;
pub mod naming;
pub mod session;

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::api::identity::WorkloadIdentity;
use crate::api::istio::{self, WorkloadEntry, WorkloadGroup};
use crate::api::meta::{Labels, ObjectMeta, OwnerReference};
use crate::api::registration::{
    self as war_api, AddressType, Registration, WarSpec, WarStatus, WorkloadAutoRegistration,
    WorkloadGroupSnapshot,
};
use crate::api::validation;

/// Annotation on the WorkloadEntry naming the WAR it belongs to.
pub const ANNOTATION_REGISTRATION: &str = "runtime.onboarding.tetrate.io/registration";
/// Label on WAR and WorkloadEntry: the WorkloadGroup's name.
pub const LABEL_WORKLOAD_GROUP: &str = "runtime.onboarding.tetrate.io/workload-group";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistrationError {
    #[error("the registration lists no {0:?} address; the host reported {1}")]
    NoAddress(AddressType, String),
    #[error("invalid registration: {0}")]
    Invalid(String),
    /// A label Kubernetes would refuse: it must not reach the WorkloadEntry.
    #[error("invalid registration: workload.labels: {0}")]
    InvalidLabel(#[from] validation::InvalidLabel),
    #[error("invalid registration: host.addresses: {ip} {why}")]
    UnusableAddress { ip: String, why: String },
}

/// Takes the snapshot a WAR keeps of its WorkloadGroup at join time.
pub fn snapshot(group: &WorkloadGroup, taken_at: &str) -> WorkloadGroupSnapshot {
    let mut spec = group.spec.clone();
    // istioctl's readWorkloadGroup default, applied once here so that every later render of
    // this snapshot sees the same service account.
    if spec
        .template
        .service_account
        .as_deref()
        .is_none_or(str::is_empty)
    {
        spec.template.service_account = Some("default".to_string());
    }
    WorkloadGroupSnapshot {
        name: group.metadata.name.clone(),
        namespace: group.metadata.namespace.clone(),
        uid: group.metadata.uid.clone(),
        resource_version: group.metadata.resource_version.clone(),
        generation: group.metadata.generation,
        labels: group.metadata.labels.clone(),
        annotations: group.metadata.annotations.clone(),
        spec,
        taken_at: taken_at.to_string(),
    }
}

/// What the endpoint's configuration lets a registration contain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistrationRules {
    /// `registration.allowLoopbackAddresses`: accept 127.0.0.0/8 and ::1 as workload
    /// addresses (single-host trials and tests, where the mesh runs on the same machine).
    pub allow_loopback_addresses: bool,
}

/// Why the mesh could not use `ip` as a workload's address, or `None` when it can.
/// Unspecified, multicast and broadcast addresses are never usable; loopback only where
/// `rules` allow it. IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
pub fn unusable_address(ip: IpAddr, rules: RegistrationRules) -> Option<String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if ip.is_unspecified() {
        return Some("is the unspecified address (0.0.0.0 or ::): nothing can dial it".into());
    }
    if ip.is_multicast() {
        return Some("is a multicast address: a workload needs a unicast address".into());
    }
    if let IpAddr::V4(v4) = ip
        && v4.is_broadcast()
    {
        return Some("is the broadcast address: a workload needs a unicast address".into());
    }
    if ip.is_loopback() && !rules.allow_loopback_addresses {
        return Some(
            "is a loopback address, which only this host can reach; the endpoint accepts it \
             only with registration.allowLoopbackAddresses (single-host trials)"
                .into(),
        );
    }
    None
}

/// Checks what the agent sent before anything is stored: the endpoint is the trust
/// boundary, so labels are checked exactly as Kubernetes would and every address must be
/// one the mesh can use.
pub fn validate_registration(
    reg: &Registration,
    rules: RegistrationRules,
) -> Result<(), RegistrationError> {
    let bad = |m: String| Err(RegistrationError::Invalid(m));
    if reg.agent.version.trim().is_empty() {
        return bad("agent.version is required".into());
    }
    if reg.sidecar.istio.version.trim().is_empty() {
        return bad("sidecar.istio.version is required".into());
    }
    if let Some(rev) = &reg.sidecar.istio.revision
        && !is_revision(rev)
    {
        return bad(format!(
            "sidecar.istio.revision {rev:?} must be 1-56 chars of [a-z0-9-], starting and ending alphanumeric"
        ));
    }
    if reg.host.addresses.is_empty() {
        return bad("host.addresses must list at least one address".into());
    }
    for a in &reg.host.addresses {
        let Ok(ip) = a.ip.parse::<IpAddr>() else {
            return bad(format!("host.addresses: {:?} is not an IP address", a.ip));
        };
        if let Some(why) = unusable_address(ip, rules) {
            return Err(RegistrationError::UnusableAddress {
                ip: a.ip.clone(),
                why,
            });
        }
    }
    if let Some(w) = &reg.workload {
        validation::labels(&w.labels)?;
    }
    Ok(())
}

fn is_revision(s: &str) -> bool {
    (1..=56).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The address the mesh should dial: the first one of the type `settings.connectedOver`
/// asks for (VPC when unset).
pub fn workload_address(reg: &Registration) -> Result<String, RegistrationError> {
    let want = reg
        .settings
        .as_ref()
        .and_then(|s| s.connected_over)
        .unwrap_or_default();
    reg.host
        .addresses
        .iter()
        .find(|a| a.kind == want)
        .map(|a| a.ip.clone())
        .ok_or_else(|| {
            let have: Vec<String> = reg
                .host
                .addresses
                .iter()
                .map(|a| format!("{} ({:?})", a.ip, a.kind))
                .collect();
            RegistrationError::NoAddress(want, have.join(", "))
        })
}

/// Labels of the workload: the group's template labels, plus the agent's labels where they
/// do not clash. The group always wins, so a host cannot move itself to another `app`.
pub fn workload_labels(snapshot: &WorkloadGroupSnapshot, reg: &Registration) -> Labels {
    let mut labels = snapshot.spec.template.labels.clone();
    if let Some(w) = &reg.workload {
        for (k, v) in &w.labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    labels
}

/// A new WAR in the group's namespace, owned by the group.
pub fn new_war(
    name: &str,
    group: &WorkloadGroup,
    identity: WorkloadIdentity,
    registration: Registration,
    uid: &str,
    now: &str,
) -> WorkloadAutoRegistration {
    let mut labels = BTreeMap::new();
    labels.insert(
        LABEL_WORKLOAD_GROUP.to_string(),
        group.metadata.name.clone(),
    );
    WorkloadAutoRegistration {
        api_version: war_api::API_VERSION.to_string(),
        kind: war_api::KIND.to_string(),
        metadata: ObjectMeta {
            name: name.to_string(),
            namespace: group.metadata.namespace.clone(),
            uid: Some(uid.to_string()),
            creation_timestamp: Some(now.to_string()),
            generation: Some(1),
            labels,
            owner_references: group_owner(group).into_iter().collect(),
            ..Default::default()
        },
        spec: WarSpec {
            identity,
            registration,
            workload_group: snapshot(group, now),
        },
        status: WarStatus::default(),
    }
}

fn group_owner(group: &WorkloadGroup) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: istio::NETWORKING_API_VERSION.to_string(),
        kind: "WorkloadGroup".to_string(),
        name: group.metadata.name.clone(),
        uid: group.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The WorkloadEntry for a WAR: the snapshot's template with this host's address and labels,
/// owned by the WAR so deleting the WAR (or, through it, the group) removes it.
pub fn workload_entry(war: &WorkloadAutoRegistration) -> Result<WorkloadEntry, RegistrationError> {
    let snap = &war.spec.workload_group;
    let reg = &war.spec.registration;
    let mut spec = snap.spec.template.clone();
    spec.address = Some(workload_address(reg)?);
    spec.labels = workload_labels(snap, reg);
    let mut annotations = snap
        .spec
        .metadata
        .as_ref()
        .map(|m| m.annotations.clone())
        .unwrap_or_default();
    annotations.insert(
        ANNOTATION_REGISTRATION.to_string(),
        war.metadata.name.clone(),
    );
    if snap.spec.probe.is_some() {
        // As istiod does for auto-registered entries: the entry is unhealthy until the
        // sidecar reports its probe passing, so traffic never reaches a workload still booting.
        annotations.insert(
            "proxy.istio.io/health-checks-enabled".to_string(),
            "true".to_string(),
        );
    }
    let mut labels = snap
        .spec
        .metadata
        .as_ref()
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(LABEL_WORKLOAD_GROUP.to_string(), snap.name.clone());
    Ok(WorkloadEntry {
        api_version: istio::NETWORKING_API_VERSION.to_string(),
        kind: "WorkloadEntry".to_string(),
        metadata: ObjectMeta {
            name: war.metadata.name.clone(),
            namespace: war.metadata.namespace.clone(),
            labels,
            annotations,
            owner_references: war
                .metadata
                .uid
                .as_ref()
                .map(|uid| OwnerReference {
                    api_version: war_api::API_VERSION.to_string(),
                    kind: war_api::KIND.to_string(),
                    name: war.metadata.name.clone(),
                    uid: uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        },
        spec,
    })
}

/// An existing WAR reused by the same identity onboarding again: the snapshot stays as it
/// was (that is the point of it); what the agent reports about itself is refreshed.
/// Returns whether anything changed.
pub fn refresh_registration(war: &mut WorkloadAutoRegistration, reg: Registration) -> bool {
    if war.spec.registration == reg {
        return false;
    }
    war.spec.registration = reg;
    war.metadata.generation = Some(war.metadata.generation.unwrap_or(1) + 1);
    true
}

#[cfg(test)]
mod tests;
