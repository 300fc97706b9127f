//! Reading a directory of Kubernetes-style manifests into an index of the inputs the endpoint
//! needs. Pure over `(path, text)` pairs, so it is tested without a file system.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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

/// Parses one manifest file. `Err` carries the problems that make the file unusable.
pub fn parse_file(path: &Path, text: &str) -> (Result<FileResources, ()>, Vec<Problem>) {
    let mut out = FileResources::default();
    let mut problems = Vec::new();
    for doc in yaml::documents(text) {
        let tm: TypeMeta = match doc.parse(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(e.into());
                continue;
            }
        };
        let line = Some(doc.line_offset + 1);
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
            "WorkloadGroup" => match doc.parse::<WorkloadGroup>(path) {
                Ok(mut wg) => {
                    default_namespace(&mut wg.metadata);
                    if wg.metadata.name.is_empty() {
                        problems.push(err("WorkloadGroup has no metadata.name".into()));
                    } else {
                        out.workload_groups.push(wg);
                    }
                }
                Err(e) => problems.push(e.into()),
            },
            "Sidecar" => match doc.parse::<Sidecar>(path) {
                Ok(mut sc) => {
                    default_namespace(&mut sc.metadata);
                    out.sidecars.push(sc);
                }
                Err(e) => problems.push(e.into()),
            },
            "OnboardingPolicy" => {
                if tm.api_version != policy::API_VERSION {
                    problems.push(err(format!(
                        "OnboardingPolicy has apiVersion {:?}; expected {}",
                        tm.api_version,
                        policy::API_VERSION
                    )));
                    continue;
                }
                match doc.parse::<OnboardingPolicy>(path) {
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
                    Err(e) => problems.push(e.into()),
                }
            }
            "ConfigMap" => match doc.parse::<ConfigMap>(path) {
                Ok(mut cm) => {
                    default_namespace(&mut cm.metadata);
                    out.config_maps.push(cm);
                }
                Err(e) => problems.push(e.into()),
            },
            "" => problems.push(err("document has no kind".into())),
            other => problems.push(warn(format!(
                "kind {other:?} is not read by the onboarding endpoint; skipped"
            ))),
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
    problems
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
    pub fn mesh_config(&self, revision: Option<&str>) -> Result<serde_json::Value, String> {
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
        .map_err(|e| e.to_string())
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
    fn stable_uid_is_stable_and_uuid_shaped() {
        let a = stable_uid("WorkloadGroup", "ns", "n");
        assert_eq!(a, stable_uid("WorkloadGroup", "ns", "n"));
        assert_ne!(a, stable_uid("WorkloadGroup", "ns", "m"));
        assert_eq!(a.len(), 36);
    }
}
