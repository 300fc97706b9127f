//! The Kubernetes store: inputs (WorkloadGroup, OnboardingPolicy, Sidecar, the `istio` and
//! `istio-ca-root-cert` ConfigMaps) from watches into an in-memory index; registrations
//! (WorkloadAutoRegistration, WorkloadEntry) as API objects; istio-tokens from the
//! TokenRequest API. Several endpoint replicas can share one API server: nothing a restart
//! would lose lives only in memory (see docs/endpoint.md, "In a cluster").

pub mod cache;
pub mod convert;
pub mod crds;
pub mod plane;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap as KubeConfigMap, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use self::cache::{CacheEvent, Caches, Kind};
use self::crds::{PolicyObject, WarObject};
use super::{IstioToken, Store, StoreError};
use crate::api::istio::{Sidecar, WorkloadEntry, WorkloadGroup};
use crate::api::policy::OnboardingPolicy;
use crate::api::registration::WorkloadAutoRegistration;
use crate::registration::LABEL_WORKLOAD_GROUP;

pub const DEFAULT_FIELD_MANAGER: &str = "onboarding-endpoint";
pub const DEFAULT_STATE_SECRET: &str = "onboarding-endpoint-state";
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";
/// Marks the Leases by which endpoint replicas say they are alive.
pub const LEASE_LABEL: &str = "onboarding.tetrate.io/endpoint-instance";
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// `store.kube` in the endpoint's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeStoreSettings {
    /// A kubeconfig file; absent = in-cluster (the pod's ServiceAccount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; default its current context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The endpoint's own namespace (where the shared state Secret lives). Default: the
    /// pod's namespace in a cluster, else the kubeconfig context's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Secret holding the plane UID and the session signing key that every replica shares.
    /// Created (once, race-safe) when missing. Default `onboarding-endpoint-state`.
    #[serde(default = "default_state_secret")]
    pub state_secret: String,
    /// Server-side apply field manager for WAR status and WorkloadEntries.
    /// Default `onboarding-endpoint`.
    #[serde(default = "default_field_manager")]
    pub field_manager: String,
    /// Lifetime of the istio-tokens requested for sidecars (TokenRequest
    /// `expirationSeconds`). Default 1h, at least 10m (the API server's minimum).
    #[serde(default = "one_hour")]
    pub istio_token_expiration: crate::api::duration::Duration,
}

fn default_state_secret() -> String {
    DEFAULT_STATE_SECRET.into()
}
fn default_field_manager() -> String {
    DEFAULT_FIELD_MANAGER.into()
}
fn one_hour() -> crate::api::duration::Duration {
    crate::api::duration::Duration::from_secs(3600)
}

/// A `store.kube` setting is unusable: the field (under `store.kube`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingsError {
    pub field: &'static str,
    pub message: String,
}

impl KubeStoreSettings {
    /// Problems show as `field: message` for the caller to prefix.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |field, message: String| Err(SettingsError { field, message });
        if self.istio_token_expiration.as_std() < MIN_TOKEN_LIFETIME {
            return err(
                "istioTokenExpiration",
                "must be at least 10m (the TokenRequest API refuses shorter lifetimes)".into(),
            );
        }
        if !crate::registration::naming::is_dns1123_subdomain(&self.state_secret) {
            return err(
                "stateSecret",
                format!("{:?} is not a valid Secret name", self.state_secret),
            );
        }
        if self.field_manager.trim().is_empty() || self.field_manager.len() > 128 {
            return err("fieldManager", "must be 1-128 characters".into());
        }
        if let Some(ns) = &self.namespace
            && !crate::registration::naming::is_dns1123_subdomain(ns)
        {
            return err("namespace", format!("{ns:?} is not a valid namespace name"));
        }
        Ok(())
    }
}

/// The Lease of one endpoint instance.
pub fn lease_name(instance: &str) -> String {
    format!("onboarding-endpoint-{instance}")
}

fn api_err(what: &str, e: kube::Error) -> StoreError {
    StoreError::Io(format!("{what}: {e}"))
}

fn is_status(e: &kube::Error, f: impl Fn(&kube::core::Status) -> bool) -> bool {
    matches!(e, kube::Error::Api(s) if f(s))
}

pub fn gvk_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub fn workload_group_resource() -> ApiResource {
    gvk_resource(
        "networking.istio.io",
        "v1",
        "WorkloadGroup",
        "workloadgroups",
    )
}
pub fn workload_entry_resource() -> ApiResource {
    gvk_resource(
        "networking.istio.io",
        "v1",
        "WorkloadEntry",
        "workloadentries",
    )
}
pub fn sidecar_resource() -> ApiResource {
    gvk_resource("networking.istio.io", "v1", "Sidecar", "sidecars")
}

/// Connects to the API server as configured.
pub async fn client(settings: &KubeStoreSettings) -> Result<Client, StoreError> {
    let mut config = match &settings.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                StoreError::Io(format!("store.kube.kubeconfig {}: {e}", path.display()))
            })?;
            let opts = kube::config::KubeConfigOptions {
                context: settings.context.clone(),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| {
                    StoreError::Io(format!("store.kube.kubeconfig {}: {e}", path.display()))
                })?
        }
        None => kube::Config::incluster().map_err(|e| {
            StoreError::Io(format!(
                "not running in a cluster ({e}); set store.kube.kubeconfig"
            ))
        })?,
    };
    if let Some(ns) = &settings.namespace {
        config.default_namespace = ns.clone();
    }
    Client::try_from(config).map_err(|e| StoreError::Io(format!("Kubernetes client: {e}")))
}

#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    field_manager: String,
    token_lifetime: Duration,
    caches: Arc<Caches>,
    /// The API server's uid of each WAR this process wrote, for its WorkloadEntry's owner
    /// reference (the WAR the service builds carries a uid of its own making).
    war_uids: Arc<Mutex<HashMap<(String, String), String>>>,
}

impl KubeStore {
    pub fn new(client: Client, settings: &KubeStoreSettings, istio_namespace: &str) -> KubeStore {
        KubeStore {
            client,
            field_manager: settings.field_manager.clone(),
            token_lifetime: settings.istio_token_expiration.as_std(),
            caches: Arc::new(Caches::new(istio_namespace)),
            war_uids: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Starts the watches that fill the input caches; they run (re-listing and backing off
    /// on errors) until the runtime stops. Problems are logged.
    pub fn start_watches(&self, istio_namespace: &str) {
        let c = self.client.clone();
        let caches = self.caches.clone();
        spawn_watch(
            "WorkloadGroup",
            Api::<DynamicObject>::all_with(c.clone(), &workload_group_resource()),
            watcher::Config::default(),
            {
                let caches = caches.clone();
                move |ev| caches.apply_group(map_event(ev, convert::workload_group_from_dynamic))
            },
        );
        spawn_watch(
            "Sidecar",
            Api::<DynamicObject>::all_with(c.clone(), &sidecar_resource()),
            watcher::Config::default(),
            {
                let caches = caches.clone();
                move |ev| caches.apply_sidecar(map_event(ev, convert::sidecar_from_dynamic))
            },
        );
        spawn_watch(
            "OnboardingPolicy",
            Api::<PolicyObject>::all(c.clone()),
            watcher::Config::default(),
            {
                let caches = caches.clone();
                move |ev| {
                    caches.apply_policy(map_event(ev, |o| {
                        let p = convert::policy_from_object(o);
                        // Checked here as the file store checks files: a policy with an
                        // error allows nothing (policy::evaluate), and the operator learns why.
                        if let Err(issues) = crate::policy::validate(&p) {
                            tracing::warn!(
                                "OnboardingPolicy {}/{} allows nothing until fixed: {}",
                                p.metadata.namespace,
                                p.metadata.name,
                                issues.join("; ")
                            );
                        }
                        Ok(p)
                    }))
                }
            },
        );
        spawn_watch(
            "ConfigMap (Istio namespace)",
            Api::<KubeConfigMap>::namespaced(c.clone(), istio_namespace),
            watcher::Config::default(),
            {
                let caches = caches.clone();
                move |ev| {
                    caches.apply_config_map(
                        Kind::IstioConfigMap,
                        map_event(ev, |o| Ok(convert::config_map_from_kube(o))),
                    )
                }
            },
        );
        spawn_watch(
            "ConfigMap istio-ca-root-cert",
            Api::<KubeConfigMap>::all(c),
            watcher::Config::default().fields("metadata.name=istio-ca-root-cert"),
            move |ev| {
                caches.apply_config_map(
                    Kind::RootCertConfigMap,
                    map_event(ev, |o| Ok(convert::config_map_from_kube(o))),
                )
            },
        );
    }

    fn wars(&self, ns: &str) -> Api<WarObject> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn entries(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &workload_entry_resource())
    }

    fn apply_params(&self) -> PatchParams {
        // force: these fields are the endpoint's; a hand edit (`kubectl edit`) of them is
        // taken back rather than failing the agent's call.
        PatchParams::apply(&self.field_manager).force()
    }

    fn remember_uid(&self, ns: &str, name: &str, uid: Option<&str>) {
        if let (Some(uid), Ok(mut m)) = (uid, self.war_uids.lock()) {
            m.insert((ns.to_string(), name.to_string()), uid.to_string());
        }
    }

    /// Creates a new WAR, or adopts the one another replica created a moment earlier for the
    /// same identity (names derive from identities, so two replicas onboarding one host race
    /// on one name: one create wins, the other gets AlreadyExists).
    async fn create_war(&self, war: &WorkloadAutoRegistration) -> Result<WarObject, StoreError> {
        let (ns, name) = (&war.metadata.namespace, &war.metadata.name);
        let api = self.wars(ns);
        let pp = PostParams {
            field_manager: Some(self.field_manager.clone()),
            ..Default::default()
        };
        match api.create(&pp, &convert::war_to_object(war)).await {
            Ok(o) => Ok(o),
            Err(e) if is_status(&e, |s| s.is_already_exists()) => {
                let existing = api
                    .get(name)
                    .await
                    .map_err(|e| api_err(&format!("WAR {ns}/{name}"), e))?;
                if existing.spec.0.identity != war.spec.identity {
                    return Err(StoreError::Io(format!(
                        "WAR {ns}/{name} exists for another identity"
                    )));
                }
                tracing::debug!(registration = %format!("{ns}/{name}"), "WAR created concurrently by another instance; adopted");
                Ok(existing)
            }
            Err(e) => Err(api_err(&format!("cannot create WAR {ns}/{name}"), e)),
        }
    }
}

/// Maps one watcher event to a cache event, converting the object.
fn map_event<K: Resource, T>(
    ev: Event<K>,
    conv: impl Fn(&K) -> Result<T, convert::ConvertError>,
) -> CacheEvent<T> {
    let key = |o: &K| {
        (
            o.meta().namespace.clone().unwrap_or_default(),
            o.meta().name.clone().unwrap_or_default(),
        )
    };
    match ev {
        Event::Init => CacheEvent::Init,
        // The cache keeps the message to report; the object keeps its last good version.
        Event::InitApply(o) => CacheEvent::InitApply(key(&o), conv(&o).map_err(|e| e.to_string())),
        Event::InitDone => CacheEvent::InitDone,
        Event::Apply(o) => CacheEvent::Apply(key(&o), conv(&o).map_err(|e| e.to_string())),
        Event::Delete(o) => CacheEvent::Delete(key(&o)),
    }
}

fn spawn_watch<K>(
    what: &'static str,
    api: Api<K>,
    cfg: watcher::Config,
    mut apply: impl FnMut(Event<K>) -> Option<String> + Send + 'static,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let stream = watcher::watcher(api, cfg).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut listed = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    let done = matches!(ev, Event::InitDone);
                    if let Some(problem) = apply(ev) {
                        tracing::error!(
                            kind = what,
                            "{problem}; its last good version (if any) stays in force"
                        );
                    }
                    if done && !listed {
                        listed = true;
                        tracing::info!(kind = what, "watch listed");
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = what, error = %e, "watch failed; retrying (is the CRD installed and the endpoint's RBAC applied?)");
                }
            }
        }
    });
}

impl Store for KubeStore {
    fn workload_group(&self, namespace: &str, name: &str) -> Option<WorkloadGroup> {
        self.caches
            .with_index(|ix| ix.workload_group(namespace, name).cloned())
            .flatten()
    }

    fn policies(&self, namespace: &str) -> Vec<OnboardingPolicy> {
        self.caches
            .with_index(|ix| ix.policies(namespace).to_vec())
            .unwrap_or_default()
    }

    fn sidecars(&self, namespace: &str) -> Vec<Sidecar> {
        self.caches
            .with_index(|ix| ix.sidecars(namespace).to_vec())
            .unwrap_or_default()
    }

    fn mesh_config(&self, revision: Option<&str>) -> serde_json::Value {
        match self.caches.with_index(|ix| ix.mesh_config(revision)) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                tracing::error!(error = %e, "mesh config is unreadable; rendering without it");
                serde_json::Value::Object(Default::default())
            }
            None => serde_json::Value::Object(Default::default()),
        }
    }

    fn root_cert(&self, namespace: &str) -> Option<String> {
        self.caches
            .with_index(|ix| ix.root_cert(namespace))
            .flatten()
    }

    fn is_ready(&self) -> bool {
        self.caches.is_ready()
    }

    async fn get_war(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<WorkloadAutoRegistration>, StoreError> {
        let o = self
            .wars(namespace)
            .get_opt(name)
            .await
            .map_err(|e| api_err(&format!("cannot read WAR {namespace}/{name}"), e))?;
        Ok(o.map(|o| {
            self.remember_uid(namespace, name, o.metadata.uid.as_deref());
            convert::war_from_object(o)
        }))
    }

    async fn list_wars(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<WorkloadAutoRegistration>, StoreError> {
        let api: Api<WarObject> = match namespace {
            Some(ns) => self.wars(ns),
            None => Api::all(self.client.clone()),
        };
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| api_err("cannot list WARs", e))?;
        let mut out: Vec<WorkloadAutoRegistration> = list
            .items
            .into_iter()
            .map(convert::war_from_object)
            .collect();
        out.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        Ok(out)
    }

    async fn put_war(&self, war: &WorkloadAutoRegistration) -> Result<(), StoreError> {
        let (ns, name) = (&war.metadata.namespace, &war.metadata.name);
        let api = self.wars(ns);
        let (uid, generation) = if war.metadata.resource_version.is_none() {
            let o = self.create_war(war).await?;
            (o.metadata.uid.clone(), o.metadata.generation)
        } else {
            let uid = war.metadata.uid.clone().ok_or_else(|| {
                StoreError::Io(format!("WAR {ns}/{name} read from the API has no uid"))
            })?;
            // A JSON patch guarded by the uid: it fails (404, or 422 on the test) rather than
            // re-create a WAR that `kubectl delete war` removed meanwhile, or touch a newer
            // WAR of the same name. An unchanged spec makes no write on the server.
            let patch = json_patch::Patch(vec![
                json_patch::PatchOperation::Test(json_patch::TestOperation {
                    path: json_patch::jsonptr::PointerBuf::parse("/metadata/uid")
                        .map_err(|e| StoreError::Io(e.to_string()))?,
                    value: serde_json::Value::String(uid.clone()),
                }),
                json_patch::PatchOperation::Replace(json_patch::ReplaceOperation {
                    path: json_patch::jsonptr::PointerBuf::parse("/spec")
                        .map_err(|e| StoreError::Io(e.to_string()))?,
                    value: serde_json::to_value(&war.spec)
                        .map_err(|e| StoreError::Io(e.to_string()))?,
                }),
            ]);
            let o = api
                .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await
                .map_err(|e| api_err(&format!("cannot update WAR {ns}/{name}"), e))?;
            (o.metadata.uid.clone(), o.metadata.generation)
        };
        self.remember_uid(ns, name, uid.as_deref());
        let mut body = convert::war_status_apply_body(war, generation)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        // The uid in the applied object makes the server refuse (409) a status write to a
        // WAR of the same name created after ours was deleted, and keeps an apply from
        // creating one.
        body["metadata"]["uid"] = serde_json::json!(uid);
        api.patch_status(name, &self.apply_params(), &Patch::Apply(body))
            .await
            .map_err(|e| api_err(&format!("cannot write the status of WAR {ns}/{name}"), e))?;
        Ok(())
    }

    async fn put_registration(
        &self,
        war: &WorkloadAutoRegistration,
        entry: &WorkloadEntry,
    ) -> Result<(), StoreError> {
        // The entry's ownerReference needs the WAR's server-assigned uid, so the WAR goes
        // first; a new WAR whose entry cannot be written is deleted again, so that no WAR is
        // listed without its WorkloadEntry. An existing WAR keeps its previous entry.
        let is_new = war.metadata.resource_version.is_none();
        self.put_war(war).await?;
        if let Err(e) = self.put_workload_entry(entry).await {
            if is_new {
                let (ns, name) = (&war.metadata.namespace, &war.metadata.name);
                if let Err(undo) = self.delete_registration(ns, name).await {
                    tracing::error!(war = %format!("{ns}/{name}"), error = %undo, "cannot roll back a WAR whose WorkloadEntry failed");
                }
            }
            return Err(e);
        }
        Ok(())
    }

    async fn put_workload_entry(&self, entry: &WorkloadEntry) -> Result<(), StoreError> {
        let (ns, name) = (&entry.metadata.namespace, &entry.metadata.name);
        let owner = entry
            .metadata
            .owner_references
            .iter()
            .find(|o| o.kind == crate::api::registration::KIND)
            .map(|o| o.name.clone());
        let war_uid = match owner {
            Some(war_name) => {
                let known = self
                    .war_uids
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&(ns.clone(), war_name.clone())).cloned());
                match known {
                    Some(uid) => uid,
                    None => self
                        .wars(ns)
                        .get(&war_name)
                        .await
                        .map_err(|e| api_err(&format!("WAR {ns}/{war_name}"), e))?
                        .metadata
                        .uid
                        .unwrap_or_default(),
                }
            }
            None => String::new(),
        };
        let body = convert::workload_entry_apply_body(entry, &war_uid)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        self.entries(ns)
            .patch(name, &self.apply_params(), &Patch::Apply(body))
            .await
            .map_err(|e| api_err(&format!("cannot apply WorkloadEntry {ns}/{name}"), e))?;
        Ok(())
    }

    async fn delete_registration(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        // Background propagation: in a cluster the garbage collector removes the
        // WorkloadEntry; it is deleted here too so that the store does not depend on it.
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        let existed = match self.wars(namespace).delete(name, &dp).await {
            Ok(_) => true,
            Err(e) if is_status(&e, |s| s.is_not_found()) => false,
            Err(e) => return Err(api_err(&format!("cannot delete WAR {namespace}/{name}"), e)),
        };
        if let Ok(mut m) = self.war_uids.lock() {
            m.remove(&(namespace.to_string(), name.to_string()));
        }
        match self.entries(namespace).delete(name, &dp).await {
            Ok(_) => {}
            Err(e) if is_status(&e, |s| s.is_not_found()) => {}
            Err(e) => {
                return Err(api_err(
                    &format!("cannot delete WorkloadEntry {namespace}/{name}"),
                    e,
                ));
            }
        }
        Ok(existed)
    }

    async fn collect_orphans(&self) -> Result<usize, StoreError> {
        // Entries first, then WARs: an entry is always written after its WAR, so every
        // owner that exists at the first list is in the second.
        let entries =
            Api::<DynamicObject>::all_with(self.client.clone(), &workload_entry_resource())
                .list(&ListParams::default().labels(LABEL_WORKLOAD_GROUP))
                .await
                .map_err(|e| api_err("cannot list WorkloadEntries", e))?;
        let live: HashSet<String> = Api::<WarObject>::all(self.client.clone())
            .list_metadata(&ListParams::default())
            .await
            .map_err(|e| api_err("cannot list WARs", e))?
            .items
            .into_iter()
            .filter_map(|w| w.metadata.uid)
            .collect();
        let mut removed = 0;
        for e in entries.items {
            let Some(owner) = convert::owning_war_uid(&e.metadata) else {
                continue; // not one of ours (e.g. istiod's auto-registration)
            };
            if live.contains(owner) {
                continue;
            }
            let (ns, name) = (e.namespace().unwrap_or_default(), e.name_any());
            // Preconditions: an entry re-applied meanwhile (a new WAR of the same name) stays.
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: e.metadata.uid.clone(),
                    resource_version: e.metadata.resource_version.clone(),
                }),
                ..Default::default()
            };
            match self.entries(&ns).delete(&name, &dp).await {
                Ok(_) => {
                    tracing::info!(namespace = %ns, name = %name, "deleted WorkloadEntry whose WAR is gone");
                    removed += 1;
                }
                Err(e) if is_status(&e, |s| s.is_not_found() || s.is_conflict()) => {}
                Err(e) => {
                    return Err(api_err(
                        &format!("cannot delete WorkloadEntry {ns}/{name}"),
                        e,
                    ));
                }
            }
        }
        Ok(removed)
    }

    async fn live_instances(
        &self,
        instance: &str,
        ttl: Duration,
    ) -> Result<Option<HashSet<String>>, StoreError> {
        // One Lease per replica in the endpoint's namespace, renewed by each cleanup pass
        // (which runs several times per keep-alive timeout). A replica killed without
        // notice stops renewing, and the others take over its WARs (sweep_action).
        let name = lease_name(instance);
        if !crate::registration::naming::is_dns1123_subdomain(&name) {
            return Err(StoreError::Io(format!(
                "instanceName {instance:?} cannot name a Lease; use a DNS-1123 name (the pod name is one)"
            )));
        }
        let api: Api<Lease> = Api::default_namespaced(self.client.clone());
        let ns = self.client.default_namespace().to_string();
        let now = std::time::SystemTime::now();
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(std::collections::BTreeMap::from([(
                    LEASE_LABEL.to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(instance.to_string()),
                lease_duration_seconds: Some(ttl.as_secs().max(1) as i32),
                renew_time: k8s_openapi::jiff::Timestamp::try_from(now)
                    .ok()
                    .map(MicroTime),
                ..Default::default()
            }),
        };
        api.patch(&name, &self.apply_params(), &Patch::Apply(&lease))
            .await
            .map_err(|e| api_err(&format!("cannot renew Lease {ns}/{name}"), e))?;
        let leases = api
            .list(&ListParams::default().labels(LEASE_LABEL))
            .await
            .map_err(|e| api_err(&format!("cannot list Leases in {ns}"), e))?;
        Ok(Some(
            leases
                .items
                .into_iter()
                .filter_map(|l| {
                    let spec = l.spec?;
                    let renewed = spec.renew_time.map(|t| std::time::SystemTime::from(t.0));
                    let duration = spec
                        .lease_duration_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .map(Duration::from_secs);
                    crate::registration::connection::lease_alive(renewed, duration, now)
                        .then_some(spec.holder_identity)
                        .flatten()
                })
                .collect(),
        ))
    }

    async fn istio_token(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<IstioToken, StoreError> {
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![ISTIO_CA_AUDIENCE.to_string()]),
                expiration_seconds: Some(self.token_lifetime.as_secs() as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let resp = api
            .create_token_request(service_account, &PostParams::default(), &req)
            .await
            .map_err(|e| {
                if is_status(&e, |s| s.is_not_found()) {
                    StoreError::Token(format!(
                        "ServiceAccount {namespace}/{service_account} does not exist (the WorkloadGroup's template.serviceAccount)"
                    ))
                } else {
                    StoreError::Token(format!(
                        "TokenRequest for ServiceAccount {namespace}/{service_account}: {e}"
                    ))
                }
            })?;
        let status = resp.status.ok_or_else(|| {
            StoreError::Token("the TokenRequest API answered without a token".into())
        })?;
        let token = status.token.filter(|t| !t.is_empty()).ok_or_else(|| {
            StoreError::Token("the TokenRequest API answered without a token".into())
        })?;
        Ok(IstioToken {
            expires_at: status
                .expiration_timestamp
                .as_ref()
                .and_then(convert::expiry)
                .or_else(|| crate::store::file::jwt_expiry(&token)),
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::endpoint::config::EndpointConfig;

    fn load(store: &str, extra: &str) -> Result<EndpointConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.yaml");
        std::fs::write(&p, format!("store:\n{store}\n{extra}")).unwrap();
        EndpointConfig::load(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn kube_store_config_defaults_and_checks() {
        let c = load("  kube: {kubeconfig: kc.yaml}", "").unwrap();
        let k = c.store.kube.as_ref().unwrap();
        assert!(
            k.kubeconfig.as_ref().unwrap().is_absolute(),
            "relative to the config file"
        );
        assert_eq!(k.field_manager, "onboarding-endpoint");
        assert_eq!(k.state_secret, "onboarding-endpoint-state");
        assert_eq!(k.istio_token_expiration.as_std().as_secs(), 3600);
        assert!(c.store.file.is_none());
        // In-cluster: an empty block is enough.
        assert!(load("  kube: {}", "").is_ok());

        let e = load("  kube: {istioTokenExpiration: 5m}", "").unwrap_err();
        assert!(
            e.contains("store.kube.istioTokenExpiration") && e.contains("10m"),
            "{e}"
        );
        let e = load("  kube: {}\n  file: {configDir: c, stateDir: s}", "").unwrap_err();
        assert!(e.contains("exactly one of file or kube"), "{e}");
        let e = load("  {}", "").unwrap_err();
        assert!(e.contains("exactly one of file or kube"), "{e}");
        let e = load("  kube: {}", "istioToken: {command: [x]}\n").unwrap_err();
        assert!(
            e.contains("istioToken") && e.contains("TokenRequest"),
            "{e}"
        );
        let e = load("  kube: {stateSecret: Not_A_Name}", "").unwrap_err();
        assert!(e.contains("store.kube.stateSecret"), "{e}");
        let e = load("  kube: {kubeconfg: x}", "").unwrap_err();
        assert!(e.contains("kubeconfg"), "{e}");
    }
}
