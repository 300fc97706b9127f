//! Where the endpoint's resources live. The core never touches a store; the endpoint's
//! shell reads inputs from one and writes registrations to one.
//!
//! Reads of inputs (WorkloadGroup, OnboardingPolicy, Sidecar, mesh config, root cert) are
//! synchronous: every store keeps them in an in-memory index (the file store re-reads its
//! directory on change; a Kubernetes store would fill the index from watches, as linkerd's
//! policy controller does). Writes and registration reads are async, because for a cluster
//! they are API calls.

pub mod file;
pub mod kube;
pub mod manifests;
pub mod watch;

use std::future::Future;
use std::time::SystemTime;

use crate::api::istio::{Sidecar, WorkloadEntry, WorkloadGroup};
use crate::api::policy::OnboardingPolicy;
use crate::api::registration::WorkloadAutoRegistration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Io(String),
    #[error("stored resource {what} is unreadable: {message}")]
    Corrupt { what: String, message: String },
    #[error("istio-token source failed: {0}")]
    Token(String),
    /// A namespace or name that is not a valid Kubernetes name (it would not stay inside
    /// the store's directory, or is not a name a cluster would accept).
    #[error("{kind} {namespace}/{name}: {message}")]
    InvalidName {
        kind: &'static str,
        namespace: String,
        name: String,
        message: String,
    },
}

/// A token for the sidecar to present to istiod (audience `istio-ca`). A bearer credential:
/// its `Debug` shows when it expires, never the token.
#[derive(Clone, PartialEq, Eq)]
pub struct IstioToken {
    pub token: String,
    pub expires_at: Option<SystemTime>,
}

impl std::fmt::Debug for IstioToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

pub trait Store: Send + Sync + 'static {
    fn workload_group(&self, namespace: &str, name: &str) -> Option<WorkloadGroup>;
    fn policies(&self, namespace: &str) -> Vec<OnboardingPolicy>;
    fn sidecars(&self, namespace: &str) -> Vec<Sidecar>;
    /// The mesh-wide MeshConfig (ConfigMap `istio` or `istio-<revision>`, key `mesh`),
    /// parsed; an empty object when there is none.
    fn mesh_config(&self, revision: Option<&str>) -> serde_json::Value;
    /// The mesh root certificate as the workload's namespace sees it
    /// (ConfigMap `istio-ca-root-cert`, key `root-cert.pem`).
    fn root_cert(&self, namespace: &str) -> Option<String>;
    /// Whether the inputs have been loaded at least once (readiness).
    fn is_ready(&self) -> bool;

    fn get_war(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<WorkloadAutoRegistration>, StoreError>> + Send;
    fn list_wars(
        &self,
        namespace: Option<&str>,
    ) -> impl Future<Output = Result<Vec<WorkloadAutoRegistration>, StoreError>> + Send;
    /// Creates or replaces.
    fn put_war(
        &self,
        war: &WorkloadAutoRegistration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Creates or replaces a registration whole: the WAR and its WorkloadEntry are both
    /// written, or neither is changed. A failure leaves the previous pair in place.
    fn put_registration(
        &self,
        war: &WorkloadAutoRegistration,
        entry: &WorkloadEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Creates or replaces.
    fn put_workload_entry(
        &self,
        entry: &WorkloadEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes a WAR and the WorkloadEntry it owns. Returns whether the WAR existed.
    fn delete_registration(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Deletes WorkloadEntries whose owning WAR no longer exists (what Kubernetes' garbage
    /// collector does for owner references). Returns how many went.
    fn collect_orphans(&self) -> impl Future<Output = Result<usize, StoreError>> + Send;
    /// Renews `instance`'s claim to be alive for `ttl` and returns the instances whose
    /// claims still hold (this one included), so that a replica's cleanup can judge WARs
    /// connected through a replica that died. `None`: the store cannot tell (one host).
    fn live_instances(
        &self,
        _instance: &str,
        _ttl: std::time::Duration,
    ) -> impl Future<Output = Result<Option<std::collections::HashSet<String>>, StoreError>> + Send
    {
        async { Ok(None) }
    }
    /// An istio-token for `service_account` in `namespace`.
    fn istio_token(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> impl Future<Output = Result<IstioToken, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_istio_token_never_shows_in_debug() {
        let t = IstioToken {
            token: "eyJhbGciOiJSUzI1NiJ9.secret-part.sig".into(),
            expires_at: Some(SystemTime::UNIX_EPOCH),
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret-part"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("expires_at"), "{shown}");
        let shown = format!("{t:#?}");
        assert!(!shown.contains("eyJ"), "{shown}");
    }
}
