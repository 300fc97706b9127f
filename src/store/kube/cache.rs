//! The Kubernetes store's input caches: what the watches (kube-runtime `watcher`, the stream a
//! reflector is built on) report, converted once per event into the endpoint's types and
//! kept in the same `Index` the file store serves its synchronous reads from.
//!
//! kube's own reflector store keeps the raw objects; we keep converted ones instead, so a
//! read costs a map lookup and an object that does not parse is reported once, when it
//! arrives, while its last good version stays in force (as the file store does for a file).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;

use crate::api::istio::{Sidecar, WorkloadGroup};
use crate::api::policy::OnboardingPolicy;
use crate::store::manifests::{ConfigMap, FileResources, Index};

/// `(namespace, name)`.
pub type Key = (String, String);

/// One watch event, its object already converted (or the reason it could not be).
#[derive(Debug, Clone, PartialEq)]
pub enum CacheEvent<T> {
    /// A (re-)list starts: objects follow as `InitApply`, then `InitDone`.
    Init,
    InitApply(Key, Result<T, String>),
    /// The list is complete: it replaces what the cache held.
    InitDone,
    Apply(Key, Result<T, String>),
    Delete(Key),
}

/// Objects of one kind, with kube-runtime's reflector semantics: a re-list is buffered and
/// swapped in whole at `InitDone`, so readers never see a half-listed kind.
#[derive(Debug, Clone)]
pub struct KindCache<T> {
    items: BTreeMap<Key, T>,
    buffer: Option<BTreeMap<Key, T>>,
    listed: bool,
}

impl<T> Default for KindCache<T> {
    fn default() -> Self {
        KindCache {
            items: BTreeMap::new(),
            buffer: None,
            listed: false,
        }
    }
}

impl<T: Clone> KindCache<T> {
    /// Applies one event. Returns whether the visible content may have changed, and the
    /// problem to report when an object could not be converted (its last good version,
    /// if any, stays).
    pub fn apply(&mut self, ev: CacheEvent<T>) -> (bool, Option<String>) {
        match ev {
            CacheEvent::Init => {
                self.buffer = Some(BTreeMap::new());
                (false, None)
            }
            CacheEvent::InitApply(key, obj) => {
                let last_good = self.items.get(&key).cloned();
                let buffer = self.buffer.get_or_insert_with(BTreeMap::new);
                match obj {
                    Ok(o) => {
                        buffer.insert(key, o);
                        (false, None)
                    }
                    Err(e) => {
                        if let Some(old) = last_good {
                            buffer.insert(key, old);
                        }
                        (false, Some(e))
                    }
                }
            }
            CacheEvent::InitDone => {
                if let Some(b) = self.buffer.take() {
                    self.items = b;
                }
                self.listed = true;
                (true, None)
            }
            CacheEvent::Apply(key, Ok(o)) => {
                self.items.insert(key, o);
                (true, None)
            }
            CacheEvent::Apply(_, Err(e)) => (false, Some(e)),
            CacheEvent::Delete(key) => (self.items.remove(&key).is_some(), None),
        }
    }

    pub fn listed(&self) -> bool {
        self.listed
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.items.values()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WorkloadGroup,
    OnboardingPolicy,
    Sidecar,
    /// ConfigMaps of the Istio namespace (`istio`, `istio-<revision>`).
    IstioConfigMap,
    /// ConfigMaps named `istio-ca-root-cert`, in every namespace.
    RootCertConfigMap,
}

#[derive(Default)]
struct State {
    groups: KindCache<WorkloadGroup>,
    policies: KindCache<OnboardingPolicy>,
    sidecars: KindCache<Sidecar>,
    istio_config_maps: KindCache<ConfigMap>,
    root_certs: KindCache<ConfigMap>,
    index: Index,
}

/// Every cache the endpoint reads, and the index built from them.
pub struct Caches {
    istio_namespace: String,
    state: RwLock<State>,
}

impl Caches {
    pub fn new(istio_namespace: &str) -> Caches {
        Caches {
            istio_namespace: istio_namespace.to_string(),
            state: RwLock::new(State {
                index: Index::build(&BTreeMap::new(), istio_namespace).0,
                ..Default::default()
            }),
        }
    }

    pub fn apply_group(&self, ev: CacheEvent<WorkloadGroup>) -> Option<String> {
        self.update(|s| s.groups.apply(ev))
    }
    pub fn apply_policy(&self, ev: CacheEvent<OnboardingPolicy>) -> Option<String> {
        self.update(|s| s.policies.apply(ev))
    }
    pub fn apply_sidecar(&self, ev: CacheEvent<Sidecar>) -> Option<String> {
        self.update(|s| s.sidecars.apply(ev))
    }
    pub fn apply_config_map(&self, kind: Kind, ev: CacheEvent<ConfigMap>) -> Option<String> {
        self.update(|s| match kind {
            Kind::RootCertConfigMap => s.root_certs.apply(ev),
            _ => s.istio_config_maps.apply(ev),
        })
    }

    fn update(&self, f: impl FnOnce(&mut State) -> (bool, Option<String>)) -> Option<String> {
        let Ok(mut s) = self.state.write() else {
            return Some("input cache lock poisoned".into());
        };
        let (changed, problem) = f(&mut s);
        if changed {
            s.index = build_index(&s, &self.istio_namespace);
        }
        problem
    }

    pub fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> Option<T> {
        self.state.read().ok().map(|s| f(&s.index))
    }

    /// Every watch has delivered its first complete list.
    pub fn is_ready(&self) -> bool {
        self.state.read().is_ok_and(|s| {
            s.groups.listed()
                && s.policies.listed()
                && s.sidecars.listed()
                && s.istio_config_maps.listed()
                && s.root_certs.listed()
        })
    }
}

/// The file store's index, built from the caches (one pseudo-file; keys are unique in a
/// cluster, so no duplicates can arise).
fn build_index(s: &State, istio_namespace: &str) -> Index {
    let res = FileResources {
        workload_groups: s.groups.values().cloned().collect(),
        policies: s.policies.values().cloned().collect(),
        sidecars: s.sidecars.values().cloned().collect(),
        config_maps: s
            .istio_config_maps
            .values()
            .chain(s.root_certs.values())
            .cloned()
            .collect(),
    };
    let files = BTreeMap::from([(PathBuf::from("kubernetes"), res)]);
    Index::build(&files, istio_namespace).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::meta::ObjectMeta;

    fn key(ns: &str, n: &str) -> Key {
        (ns.into(), n.into())
    }

    fn group(ns: &str, n: &str, sa: &str) -> WorkloadGroup {
        WorkloadGroup {
            api_version: "networking.istio.io/v1".into(),
            kind: "WorkloadGroup".into(),
            metadata: ObjectMeta {
                name: n.into(),
                namespace: ns.into(),
                uid: Some(format!("uid-{n}")),
                ..Default::default()
            },
            spec: crate::api::istio::WorkloadGroupSpec {
                template: crate::api::istio::WorkloadEntrySpec {
                    service_account: Some(sa.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
            status: None,
        }
    }

    fn sa_of(c: &Caches, ns: &str, n: &str) -> Option<String> {
        c.with_index(|ix| {
            ix.workload_group(ns, n)
                .and_then(|g| g.spec.template.service_account.clone())
        })
        .flatten()
    }

    #[test]
    fn relist_is_swapped_in_whole_and_keeps_last_good_objects() {
        let c = Caches::new("istio-system");
        c.apply_group(CacheEvent::Init);
        c.apply_group(CacheEvent::InitApply(
            key("a", "g1"),
            Ok(group("a", "g1", "s1")),
        ));
        assert_eq!(sa_of(&c, "a", "g1"), None, "not visible before InitDone");
        c.apply_group(CacheEvent::InitDone);
        assert_eq!(sa_of(&c, "a", "g1").as_deref(), Some("s1"));

        // A bad edit is reported and the last good version stays.
        let p = c.apply_group(CacheEvent::Apply(key("a", "g1"), Err("bad spec".into())));
        assert_eq!(p.as_deref(), Some("bad spec"));
        assert_eq!(sa_of(&c, "a", "g1").as_deref(), Some("s1"));

        c.apply_group(CacheEvent::Apply(
            key("a", "g2"),
            Ok(group("a", "g2", "s2")),
        ));
        assert_eq!(sa_of(&c, "a", "g2").as_deref(), Some("s2"));

        // A re-list (after a dropped watch): g2 is gone, g1 does not parse (old copy stays).
        c.apply_group(CacheEvent::Init);
        c.apply_group(CacheEvent::InitApply(key("a", "g1"), Err("bad".into())));
        assert_eq!(
            sa_of(&c, "a", "g2").as_deref(),
            Some("s2"),
            "old list until done"
        );
        c.apply_group(CacheEvent::InitDone);
        assert_eq!(sa_of(&c, "a", "g2"), None);
        assert_eq!(sa_of(&c, "a", "g1").as_deref(), Some("s1"));

        c.apply_group(CacheEvent::Delete(key("a", "g1")));
        assert_eq!(sa_of(&c, "a", "g1"), None);
    }

    #[test]
    fn ready_once_every_kind_listed() {
        let c = Caches::new("istio-system");
        assert!(!c.is_ready());
        c.apply_group(CacheEvent::Init);
        c.apply_group(CacheEvent::InitDone);
        c.apply_policy(CacheEvent::Init);
        c.apply_policy(CacheEvent::InitDone);
        c.apply_sidecar(CacheEvent::InitDone);
        c.apply_config_map(Kind::IstioConfigMap, CacheEvent::InitDone);
        assert!(!c.is_ready());
        c.apply_config_map(Kind::RootCertConfigMap, CacheEvent::InitDone);
        assert!(c.is_ready());
    }

    #[test]
    fn config_maps_feed_mesh_config_and_root_cert() {
        let c = Caches::new("istio-system");
        let cm = |ns: &str, n: &str, k: &str, v: &str| ConfigMap {
            metadata: ObjectMeta {
                name: n.into(),
                namespace: ns.into(),
                ..Default::default()
            },
            data: BTreeMap::from([(k.to_string(), v.to_string())]),
        };
        c.apply_config_map(
            Kind::IstioConfigMap,
            CacheEvent::Apply(
                key("istio-system", "istio-canary"),
                Ok(cm(
                    "istio-system",
                    "istio-canary",
                    "mesh",
                    "trustDomain: td.example\n",
                )),
            ),
        );
        c.apply_config_map(
            Kind::RootCertConfigMap,
            CacheEvent::Apply(
                key("bookinfo", "istio-ca-root-cert"),
                Ok(cm("bookinfo", "istio-ca-root-cert", "root-cert.pem", "PEM")),
            ),
        );
        let mesh = c
            .with_index(|ix| ix.mesh_config(Some("canary")))
            .unwrap()
            .unwrap();
        assert_eq!(mesh["trustDomain"], "td.example");
        assert_eq!(
            c.with_index(|ix| ix.root_cert("bookinfo"))
                .flatten()
                .as_deref(),
            Some("PEM")
        );
        assert_eq!(c.with_index(|ix| ix.root_cert("other")).flatten(), None);
    }
}
