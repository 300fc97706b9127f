//! Reading a directory of Kubernetes-style manifests into an index of the inputs the endpoint
//! needs. Pure over `(path, text)` pairs, so it is tested without a file system.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::api::istio::{self, Sidecar, WorkloadGroup};
use crate::api::meta::{ObjectMeta, TypeMeta};
use crate::api::policy::{self, OnboardingPolicy};
use crate::yaml::{self, YamlError};

/// Resources found in one file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileResources {
    pub workload_groups: Vec<WorkloadGroup>,
    pub policies: Vec<OnboardingPolicy>,
    pub sidecars: Vec<Sidecar>,
    /// (namespace, name) -> data, for the ConfigMaps we read.
    pub config_maps: Vec<ConfigMap>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// Something wrong or odd in a file. Errors make the file's new content be ignored (the last
/// good content stays in force); warnings are logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub message: String,
    pub is_error: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl From<YamlError> for Problem {
    fn from(e: YamlError) -> Self {
        Problem {
            file: e.file,
            line: e.line,
            message: e.message,
            is_error: true,
        }
    }
}

/// How much one manifest file may hold. A manifest directory is edited by people and tools,
/// and one runaway file (a log appended to, a dump of a whole cluster) must not cost the
/// endpoint seconds of parsing and gigabytes of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestLimits {
    /// Larger files are not read (the last good content stays in force).
    pub max_file_bytes: u64,
    /// Documents per file, `kind: List` items included.
    pub max_documents: usize,
}

pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
pub const DEFAULT_MAX_MANIFEST_DOCUMENTS: usize = 1000;

impl Default for ManifestLimits {
    fn default() -> Self {
        ManifestLimits {
            max_file_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_documents: DEFAULT_MAX_MANIFEST_DOCUMENTS,
        }
    }
}

/// The error for a file over [`ManifestLimits::max_file_bytes`].
pub fn too_large(path: &Path, size: u64, limits: &ManifestLimits) -> Problem {
    Problem {
        file: path.to_path_buf(),
        line: None,
        message: format!(
            "the file is {size} bytes; manifests over {} bytes are not read \
             (store.file.maxManifestBytes): split it or raise the limit",
            limits.max_file_bytes
        ),
        is_error: true,
    }
}

/// `kubectl get -o yaml` of several objects: `kind: List` with the objects in `items`.
#[derive(Deserialize)]
struct List {
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

/// Where one object of a file comes from: a document of its own, or an item of a `List`
/// document (whose errors name the item, since the parser's lines are the List's).
enum Source<'a> {
    Document(&'a yaml::Document<'a>),
    ListItem {
        value: &'a serde_json::Value,
        index: usize,
        line: u64,
    },
}

impl Source<'_> {
    fn line(&self) -> u64 {
        match self {
            Source::Document(d) => d.line_offset + 1,
            Source::ListItem { line, .. } => *line,
        }
    }

    fn parse<T: DeserializeOwned>(&self, path: &Path) -> Result<T, Problem> {
        match self {
            Source::Document(d) => d.parse(path).map_err(Problem::from),
            Source::ListItem { value, index, line } => T::deserialize(*value).map_err(|e| {
                let name = value
                    .pointer("/metadata/name")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                Problem {
                    file: path.to_path_buf(),
                    line: Some(*line),
                    message: format!("List items[{index}] {name:?}: {e}"),
                    is_error: true,
                }
            }),
        }
    }
}

/// Parses one manifest file with the default [`ManifestLimits`].
pub fn parse_file(path: &Path, text: &str) -> (Result<FileResources, ()>, Vec<Problem>) {
    parse_file_with(path, text, &ManifestLimits::default())
}

/// Parses one manifest file. `Err` carries the problems that make the file unusable.
pub fn parse_file_with(
    path: &Path,
    text: &str,
    limits: &ManifestLimits,
) -> (Result<FileResources, ()>, Vec<Problem>) {
    let mut out = FileResources::default();
    let mut problems = Vec::new();
    let too_many = |count: usize| Problem {
        file: path.to_path_buf(),
        line: None,
        message: format!(
            "the file holds {count} or more documents (List items included); at most {} are \
             read per file (store.file.maxManifestDocuments): split it or raise the limit",
            limits.max_documents
        ),
        is_error: true,
    };
    let docs = yaml::documents(text);
    if docs.len() > limits.max_documents {
        return (Err(()), vec![too_many(docs.len())]);
    }
    let mut objects = 0usize;
    for doc in &docs {
        let tm: TypeMeta = match doc.parse(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(e.into());
                continue;
            }
        };
        if tm.kind == "List" && tm.api_version == "v1" {
            let list: List = match doc.parse(path) {
                Ok(l) => l,
                Err(e) => {
                    problems.push(e.into());
                    continue;
                }
            };
            objects += list.items.len();
            if objects > limits.max_documents {
                return (Err(()), vec![too_many(objects)]);
            }
            for (index, value) in list.items.iter().enumerate() {
                let src = Source::ListItem {
                    value,
                    index,
                    line: doc.line_offset + 1,
                };
                match serde_json::from_value::<TypeMeta>(value.clone()) {
                    Ok(tm) if tm.kind == "List" => problems.push(Problem {
                        file: path.to_path_buf(),
                        line: Some(src.line()),
                        message: format!("List items[{index}] is a List itself; not read"),
                        is_error: true,
                    }),
                    Ok(tm) => add_object(path, &tm, &src, &mut out, &mut problems),
                    Err(e) => problems.push(Problem {
                        file: path.to_path_buf(),
                        line: Some(src.line()),
                        message: format!("List items[{index}] is not an object: {e}"),
                        is_error: true,
                    }),
                }
            }
        } else {
            objects += 1;
            add_object(path, &tm, &Source::Document(doc), &mut out, &mut problems);
        }
    }
    problems.extend(check_names(path, &mut out));
    if problems.iter().any(|p| p.is_error) {
        (Err(()), problems)
    } else {
        (Ok(out), problems)
    }
}

/// Namespaces and names as Kubernetes requires them (src/api/validation.rs), and the labels
/// of WorkloadGroups (they reach WorkloadEntries). They become lookups, file paths and
/// WorkloadEntry fields, so a resource that breaks a rule is dropped with an error naming
/// the file and the resource, and the file keeps its last good content.
fn check_names(path: &Path, out: &mut FileResources) -> Vec<Problem> {
    use crate::api::validation;
    let mut problems = Vec::new();
    let mut keep = |kind: &str, meta: &ObjectMeta, extra: &[(&str, &crate::api::meta::Labels)]| {
        let mut why = validation::namespaced_name(&meta.namespace, &meta.name)
            .err()
            .map(|e| format!("metadata.{e}"));
        for (field, labels) in [("metadata.labels", &meta.labels)]
            .into_iter()
            .chain(extra.iter().copied())
        {
            if why.is_none() {
                why = validation::labels(labels)
                    .err()
                    .map(|e| format!("{field}: {e}"));
            }
        }
        match why {
            None => true,
            Some(why) => {
                problems.push(Problem {
                    file: path.to_path_buf(),
                    line: None,
                    message: format!(
                        "{kind} {:?} in namespace {:?} is refused: {why}",
                        meta.name, meta.namespace
                    ),
                    is_error: true,
                });
                false
            }
        }
    };
    out.workload_groups.retain(|wg| {
        let mut extra = vec![("spec.template.labels", &wg.spec.template.labels)];
        if let Some(m) = &wg.spec.metadata {
            extra.push(("spec.metadata.labels", &m.labels));
        }
        keep("WorkloadGroup", &wg.metadata, &extra)
    });
    out.policies
        .retain(|p| keep("OnboardingPolicy", &p.metadata, &[]));
    out.sidecars.retain(|sc| keep("Sidecar", &sc.metadata, &[]));
    out.config_maps
        .retain(|cm| keep("ConfigMap", &cm.metadata, &[]));
    // What would reach a shell on every VM of the group (proxyMetadata keys in cluster.env)
    // is refused now, naming the field, rather than at the first registration.
    out.workload_groups.retain(|wg| {
        let snapshot = crate::registration::snapshot(wg, "");
        match crate::bootstrap::proxy_config::check_workload_group(&snapshot) {
            Ok(()) => true,
            Err(e) => {
                problems.push(Problem {
                    file: path.to_path_buf(),
                    line: None,
                    message: format!("WorkloadGroup is refused: {e}"),
                    is_error: true,
                });
                false
            }
        }
    });
    // A bad egress host is skipped (its neighbours kept) when files are rendered; say so once
    // when the Sidecar is loaded, too.
    for sc in &out.sidecars {
        for message in crate::bootstrap::proxy_config::sidecar_problems(sc) {
            problems.push(Problem {
                file: path.to_path_buf(),
                line: None,
                message,
                is_error: false,
            });
        }
    }
    problems
}

/// Reads one object (`tm` says what it is) into `out`.
fn add_object(
    path: &Path,
    tm: &TypeMeta,
    src: &Source<'_>,
    out: &mut FileResources,
    problems: &mut Vec<Problem>,
) {
    let line = Some(src.line());
    let warn = |message: String| Problem {
        file: path.to_path_buf(),
        line,
        message,
        is_error: false,
    };
    let err = |message: String| Problem {
        file: path.to_path_buf(),
        line,
        message,
        is_error: true,
    };
    match tm.kind.as_str() {
        "WorkloadGroup" | "Sidecar" if !istio::is_networking_api_version(&tm.api_version) => {
            problems.push(err(format!(
                "{} has apiVersion {:?}; expected networking.istio.io/v1, v1beta1 or v1alpha3",
                tm.kind, tm.api_version
            )))
        }
        "WorkloadGroup" => match src.parse::<WorkloadGroup>(path) {
            Ok(mut wg) => {
                default_namespace(&mut wg.metadata);
                if wg.metadata.name.is_empty() {
                    problems.push(err("WorkloadGroup has no metadata.name".into()));
                } else {
                    out.workload_groups.push(wg);
                }
            }
            Err(e) => problems.push(e),
        },
        "Sidecar" => match src.parse::<Sidecar>(path) {
            Ok(mut sc) => {
                default_namespace(&mut sc.metadata);
                out.sidecars.push(sc);
            }
            Err(e) => problems.push(e),
        },
        "OnboardingPolicy" => {
            if tm.api_version != policy::API_VERSION {
                problems.push(err(format!(
                    "OnboardingPolicy has apiVersion {:?}; expected {}",
                    tm.api_version,
                    policy::API_VERSION
                )));
                return;
            }
            match src.parse::<OnboardingPolicy>(path) {
                Ok(mut p) => {
                    default_namespace(&mut p.metadata);
                    if let Err(issues) = crate::policy::validate(&p) {
                        problems.push(warn(format!(
                            "OnboardingPolicy {}/{} allows nothing until fixed: {}",
                            p.metadata.namespace,
                            p.metadata.name,
                            issues.join("; ")
                        )));
                    }
                    out.policies.push(p);
                }
                Err(e) => problems.push(e),
            }
        }
        "ConfigMap" => match src.parse::<ConfigMap>(path) {
            Ok(mut cm) => {
                default_namespace(&mut cm.metadata);
                out.config_maps.push(cm);
            }
            Err(e) => problems.push(e),
        },
        "" => problems.push(err("document has no kind".into())),
        other => problems.push(warn(format!(
            "kind {other:?} is not read by the onboarding endpoint; skipped"
        ))),
    }
}

fn default_namespace(meta: &mut ObjectMeta) {
    // What `kubectl apply` does without a namespace in the file or the context.
    if meta.namespace.is_empty() {
        meta.namespace = "default".to_string();
    }
}

/// The union of every file's resources, queried by the endpoint.
#[derive(Debug, Clone, Default)]
pub struct Index {
    groups: BTreeMap<(String, String), WorkloadGroup>,
    policies: BTreeMap<String, Vec<OnboardingPolicy>>,
    sidecars: BTreeMap<String, Vec<Sidecar>>,
    config_maps: BTreeMap<(String, String), ConfigMap>,
    pub istio_namespace: String,
}

impl Index {
    /// Builds the index from per-file resources (in path order, so a later duplicate of the
    /// same name wins deterministically; duplicates are reported).
    pub fn build(
        files: &BTreeMap<PathBuf, FileResources>,
        istio_namespace: &str,
    ) -> (Index, Vec<Problem>) {
        let mut ix = Index {
            istio_namespace: istio_namespace.to_string(),
            ..Default::default()
        };
        let mut problems = Vec::new();
        for (path, res) in files {
            for wg in &res.workload_groups {
                let key = (wg.metadata.namespace.clone(), wg.metadata.name.clone());
                let mut wg = wg.clone();
                if wg.metadata.uid.is_none() {
                    wg.metadata.uid = Some(stable_uid("WorkloadGroup", &key.0, &key.1));
                }
                if ix.groups.insert(key.clone(), wg).is_some() {
                    problems.push(Problem {
                        file: path.clone(),
                        line: None,
                        message: format!(
                            "WorkloadGroup {}/{} is defined more than once; this file's copy wins",
                            key.0, key.1
                        ),
                        is_error: false,
                    });
                }
            }
            for p in &res.policies {
                ix.policies
                    .entry(p.metadata.namespace.clone())
                    .or_default()
                    .push(p.clone());
            }
            for s in &res.sidecars {
                ix.sidecars
                    .entry(s.metadata.namespace.clone())
                    .or_default()
                    .push(s.clone());
            }
            for cm in &res.config_maps {
                ix.config_maps.insert(
                    (cm.metadata.namespace.clone(), cm.metadata.name.clone()),
                    cm.clone(),
                );
            }
        }
        (ix, problems)
    }

    pub fn workload_group(&self, ns: &str, name: &str) -> Option<&WorkloadGroup> {
        self.groups.get(&(ns.to_string(), name.to_string()))
    }
    pub fn workload_groups(&self) -> impl Iterator<Item = &WorkloadGroup> {
        self.groups.values()
    }
    pub fn policies(&self, ns: &str) -> &[OnboardingPolicy] {
        self.policies.get(ns).map(Vec::as_slice).unwrap_or(&[])
    }
    pub fn sidecars(&self, ns: &str) -> &[Sidecar] {
        self.sidecars.get(ns).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `mesh` key of ConfigMap `istio[-<rev>]` in the Istio namespace. Returns the parse
    /// error instead of silently using defaults.
    pub fn mesh_config(
        &self,
        revision: Option<&str>,
    ) -> Result<serde_json::Value, yaml::YamlError> {
        let name = match revision {
            Some(r) if !r.is_empty() && r != "default" => format!("istio-{r}"),
            _ => "istio".to_string(),
        };
        let Some(cm) = self
            .config_maps
            .get(&(self.istio_namespace.clone(), name.clone()))
        else {
            return Ok(serde_json::Value::Object(Default::default()));
        };
        let Some(mesh) = cm.data.get("mesh") else {
            return Ok(serde_json::Value::Object(Default::default()));
        };
        yaml::from_str::<serde_json::Value>(
            Path::new(&format!(
                "ConfigMap {}/{name} key mesh",
                self.istio_namespace
            )),
            mesh,
        )
    }

    /// ConfigMap `istio-ca-root-cert` in `ns` (what istiod publishes to every namespace),
    /// else the one in the Istio namespace.
    pub fn root_cert(&self, ns: &str) -> Option<String> {
        [ns, self.istio_namespace.as_str()].iter().find_map(|n| {
            self.config_maps
                .get(&(n.to_string(), "istio-ca-root-cert".to_string()))
                .and_then(|cm| cm.data.get("root-cert.pem").cloned())
        })
    }
}

/// Owner references need a UID. Kubernetes assigns one; manifests on disk usually have none,
/// so the file store derives one from kind/namespace/name: stable across restarts, so the
/// WARs it wrote keep pointing at the same owner.
pub fn stable_uid(kind: &str, ns: &str, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{kind}/{ns}/{name}").as_bytes());
    let h: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: ratings, namespace: bookinfo, labels: {app: ratings}}
spec:
  template: {serviceAccount: ratings-vm}
---
apiVersion: authorization.onboarding.tetrate.io/v1alpha1
kind: OnboardingPolicy
metadata: {name: p, namespace: bookinfo}
spec:
  allow:
  - workloads: [{jwt: {issuer: "https://idp.example"}}]
    onboardTo: [{workloadGroupSelector: {}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    trustDomain: example.org
    defaultConfig:
      proxyMetadata: {A: b}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio-ca-root-cert, namespace: bookinfo}
data:
  root-cert.pem: CERT
---
apiVersion: v1
kind: Service
metadata: {name: x}
"#;

    #[test]
    fn parses_kinds_and_builds_index() {
        let (res, problems) = parse_file(Path::new("m.yaml"), GOOD);
        let res = res.unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(!problems[0].is_error);
        assert!(problems[0].message.contains("Service"));
        let files = BTreeMap::from([(PathBuf::from("m.yaml"), res)]);
        let (ix, dup) = Index::build(&files, "istio-system");
        assert!(dup.is_empty());
        let wg = ix.workload_group("bookinfo", "ratings").unwrap();
        assert!(wg.metadata.uid.is_some());
        assert_eq!(ix.policies("bookinfo").len(), 1);
        assert_eq!(ix.mesh_config(None).unwrap()["trustDomain"], "example.org");
        assert_eq!(ix.root_cert("bookinfo").as_deref(), Some("CERT"));
        assert_eq!(ix.root_cert("other"), None);
    }

    #[test]
    fn typo_is_an_error_with_file_and_line() {
        let text = "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: a}\nspec:\n  template:\n    serviceAcount: x\n";
        let (res, problems) = parse_file(Path::new("wg.yaml"), text);
        assert!(res.is_err());
        let p = &problems[0];
        assert!(p.is_error);
        assert_eq!(p.line, Some(6), "{p}");
        assert!(p.message.contains("serviceAcount"), "{p}");
    }

    #[test]
    fn names_and_labels_that_kubernetes_refuses_are_not_indexed() {
        let wg = |ns: &str, name: &str, labels: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {{name: {name:?}, namespace: {ns:?}}}\nspec:\n  template: {{labels: {labels}}}\n"
            )
        };
        let policy = |ns: &str| {
            format!(
                "apiVersion: authorization.onboarding.tetrate.io/v1alpha1\nkind: OnboardingPolicy\nmetadata: {{name: p, namespace: {ns:?}}}\nspec:\n  allow:\n  - workloads: [{{jwt: {{issuer: \"https://idp\"}}}}]\n    onboardTo: [{{workloadGroupSelector: {{}}}}]\n"
            )
        };
        let cases = [
            (
                wg("../../x", "ratings", "{}"),
                "WorkloadGroup \"ratings\" in namespace \"../../x\"",
                "metadata.namespace",
            ),
            (
                wg("bookinfo", "../war", "{}"),
                "WorkloadGroup \"../war\"",
                "metadata.name",
            ),
            (
                wg("Book", "ratings", "{}"),
                "WorkloadGroup",
                "DNS-1123 label",
            ),
            (
                wg("bookinfo", "ratings", "{'bad key': x}"),
                "WorkloadGroup",
                "spec.template.labels: label \"bad key\"",
            ),
            (
                policy("../../x"),
                "OnboardingPolicy \"p\" in namespace \"../../x\"",
                "metadata.namespace",
            ),
        ];
        for (text, resource, why) in cases {
            let (res, problems) = parse_file(Path::new("bad.yaml"), &text);
            assert!(res.is_err(), "{text}");
            let p = problems.iter().find(|p| p.is_error).unwrap();
            let shown = p.to_string();
            assert!(shown.starts_with("bad.yaml: "), "{shown}");
            assert!(shown.contains(resource) && shown.contains(why), "{shown}");
        }
        // The good document of a file stays out of the index too (the file keeps its last
        // good content, as for any error in it).
        let mixed = format!(
            "{}---\n{}",
            wg("bookinfo", "ok", "{}"),
            wg("a/b", "x", "{}")
        );
        assert!(parse_file(Path::new("m.yaml"), &mixed).0.is_err());
    }

    #[test]
    fn a_command_in_proxy_metadata_and_a_bad_egress_host_are_reported_at_load() {
        let hostile = r#"apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: ratings
  namespace: bookinfo
  annotations:
    proxy.istio.io/config: '{"proxyMetadata": {"X=1;touch /tmp/p;Y": "v"}}'
spec:
  template: {serviceAccount: ratings-vm}
"#;
        let (res, problems) = parse_file(Path::new("wg.yaml"), hostile);
        assert!(res.is_err());
        let shown = problems.iter().find(|p| p.is_error).unwrap().to_string();
        assert!(
            shown.contains("wg.yaml") && shown.contains("X=1;touch /tmp/p;Y"),
            "{shown}"
        );

        let sidecar = r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: bookinfo}
spec:
  egress:
  - hosts: ["bookinfo/good.example", "bookinfo/bad host"]
"#;
        let (res, problems) = parse_file(Path::new("sc.yaml"), sidecar);
        assert_eq!(res.unwrap().sidecars.len(), 1, "the Sidecar stays in force");
        let warning = problems.iter().find(|p| !p.is_error).unwrap().to_string();
        assert!(
            warning.contains("spec.egress[0].hosts[1]") && warning.contains("bad host"),
            "{warning}"
        );
    }

    #[test]
    fn stable_uid_is_stable_and_uuid_shaped() {
        let a = stable_uid("WorkloadGroup", "ns", "n");
        assert_eq!(a, stable_uid("WorkloadGroup", "ns", "n"));
        assert_ne!(a, stable_uid("WorkloadGroup", "ns", "m"));
        assert_eq!(a.len(), 36);
    }

    /// `kubectl get workloadgroups,onboardingpolicies,configmaps -n bookinfo -o yaml`, as
    /// kubectl 1.30 prints it (server-set metadata, last-applied annotations, managedFields).
    const KUBECTL_LIST: &str = r#"apiVersion: v1
items:
- apiVersion: networking.istio.io/v1
  kind: WorkloadGroup
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"networking.istio.io/v1","kind":"WorkloadGroup","metadata":{"annotations":{},"labels":{"app":"ratings"},"name":"ratings","namespace":"bookinfo"},"spec":{"metadata":{"labels":{"app":"ratings"}},"template":{"serviceAccount":"ratings-vm","network":"vm-network","ports":{"http":8080}}}}
    creationTimestamp: "2024-05-02T10:11:12Z"
    generation: 1
    labels:
      app: ratings
    managedFields:
    - apiVersion: networking.istio.io/v1
      fieldsType: FieldsV1
      fieldsV1:
        f:metadata:
          f:annotations:
            .: {}
            f:kubectl.kubernetes.io/last-applied-configuration: {}
      manager: kubectl-client-side-apply
      operation: Update
      time: "2024-05-02T10:11:12Z"
    name: ratings
    namespace: bookinfo
    resourceVersion: "4711"
    uid: 6a1f3c2e-0b7d-4c1e-9f5a-2d8e7b3c4a10
  spec:
    metadata:
      labels:
        app: ratings
    template:
      network: vm-network
      ports:
        http: 8080
      serviceAccount: ratings-vm
- apiVersion: authorization.onboarding.tetrate.io/v1alpha1
  kind: OnboardingPolicy
  metadata:
    creationTimestamp: "2024-05-02T10:11:13Z"
    generation: 1
    name: allow-vms
    namespace: bookinfo
    resourceVersion: "4712"
    uid: 0c9d7e1a-3b2f-4e5d-8a6b-1f2e3d4c5b6a
  spec:
    allow:
    - onboardTo:
      - workloadGroupSelector:
          matchLabels:
            app: ratings
      workloads:
      - jwt:
          issuer: https://idp.example
- apiVersion: v1
  data:
    root-cert.pem: |
      -----BEGIN CERTIFICATE-----
      ROOT
      -----END CERTIFICATE-----
  kind: ConfigMap
  metadata:
    annotations:
      kubernetes.io/description: Contains a CA bundle that can be used to verify the kube-apiserver
        when using internal endpoints such as the internal service IP or kubernetes.default.svc.
    creationTimestamp: "2024-05-01T08:00:00Z"
    labels:
      istio.io/config: "true"
    name: istio-ca-root-cert
    namespace: bookinfo
    resourceVersion: "1200"
    uid: 7e6d5c4b-3a29-4180-9f7e-6d5c4b3a2918
kind: List
metadata:
  resourceVersion: ""
"#;

    #[test]
    fn kubectl_list_output_loads_every_item() {
        let (res, problems) = parse_file(Path::new("exported.yaml"), KUBECTL_LIST);
        assert!(problems.is_empty(), "{problems:?}");
        let res = res.unwrap();
        assert_eq!(res.workload_groups.len(), 1);
        assert_eq!(res.policies.len(), 1);
        assert_eq!(res.config_maps.len(), 1);
        let files = BTreeMap::from([(PathBuf::from("exported.yaml"), res)]);
        let (ix, _) = Index::build(&files, "istio-system");
        let wg = ix.workload_group("bookinfo", "ratings").unwrap();
        assert_eq!(
            wg.metadata.uid.as_deref(),
            Some("6a1f3c2e-0b7d-4c1e-9f5a-2d8e7b3c4a10"),
            "the cluster's UID is kept"
        );
        assert_eq!(ix.policies("bookinfo")[0].metadata.name, "allow-vms");
        assert!(ix.root_cert("bookinfo").unwrap().contains("ROOT"));
    }

    #[test]
    fn a_bad_list_item_is_named_and_fails_the_file() {
        let text =
            KUBECTL_LIST.replace("      serviceAccount: ratings-vm", "      serviceAcount: x");
        let (res, problems) = parse_file(Path::new("exported.yaml"), &text);
        assert!(res.is_err());
        let p = problems.iter().find(|p| p.is_error).unwrap();
        assert!(
            p.message.contains("items[0]")
                && p.message.contains("ratings")
                && p.message.contains("serviceAcount"),
            "{p}"
        );
        assert_eq!(p.line, Some(1));
    }

    #[test]
    fn document_count_is_bounded() {
        let limits = ManifestLimits {
            max_file_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_documents: 3,
        };
        let doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
        let three = [doc; 3].join("---\n");
        assert!(
            parse_file_with(Path::new("ok.yaml"), &three, &limits)
                .0
                .is_ok()
        );
        let four = [doc; 4].join("---\n");
        let (res, problems) = parse_file_with(Path::new("many.yaml"), &four, &limits);
        assert!(res.is_err());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, Path::new("many.yaml"));
        assert!(problems[0].message.contains("at most 3"), "{}", problems[0]);
        // List items count too.
        let items: String = (0..4)
            .map(|i| format!("- {{apiVersion: v1, kind: ConfigMap, metadata: {{name: c{i}}}}}\n"))
            .collect();
        let list = format!("apiVersion: v1\nkind: List\nitems:\n{items}");
        let (res, problems) = parse_file_with(Path::new("list.yaml"), &list, &limits);
        assert!(res.is_err());
        assert!(
            problems[0].message.contains("List items included"),
            "{}",
            problems[0]
        );
    }
}
