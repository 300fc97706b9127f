//! The embedded store: inputs from a directory of manifests (re-read on change), registrations
//! as one YAML file per resource in a state directory, written atomically. The state files
//! are ordinary Kubernetes manifests: `kubectl apply -f <state>/` moves them to a cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::manifests::{self, FileResources, Index, Problem};
use super::{IstioToken, Store, StoreError};
use crate::api::istio::{Sidecar, WorkloadEntry, WorkloadGroup};
use crate::api::policy::OnboardingPolicy;
use crate::api::registration::WorkloadAutoRegistration;
use crate::atomic;

const WAR_DIR: &str = "workloadautoregistrations";
const WE_DIR: &str = "workloadentries";

/// How the embedded store gets istio-tokens (a cluster uses the TokenRequest API instead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioTokenSource {
    /// A file holding the token, read on each use (so another tool can keep it fresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// A command printing the token on stdout. It gets `NAMESPACE`, `SERVICE_ACCOUNT`,
    /// `AUDIENCE` (istio-ca) and `EXPIRATION_SECONDS` in its environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Requested lifetime, passed to the command; also the assumed lifetime of a token that
    /// is not a JWT. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<crate::api::duration::Duration>,
}

#[derive(Debug, Clone)]
pub struct FileStoreConfig {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub istio_namespace: String,
    pub istio_token: IstioTokenSource,
}

struct Inputs {
    /// Last good parse of each file.
    files: BTreeMap<PathBuf, FileResources>,
    index: Index,
    loaded: bool,
}

#[derive(Clone)]
pub struct FileStore {
    cfg: Arc<FileStoreConfig>,
    inputs: Arc<RwLock<Inputs>>,
}

impl FileStore {
    /// Opens the store and reads the config directory once. Problems found are returned for
    /// the caller to log; a missing config directory is an error.
    pub fn open(cfg: FileStoreConfig) -> Result<(FileStore, Vec<Problem>), StoreError> {
        if !cfg.config_dir.is_dir() {
            return Err(StoreError::Io(format!(
                "config directory {} does not exist (store.file.configDir)",
                cfg.config_dir.display()
            )));
        }
        for sub in [WAR_DIR, WE_DIR] {
            std::fs::create_dir_all(cfg.state_dir.join(sub)).map_err(|e| {
                StoreError::Io(format!(
                    "cannot create state directory {}: {e}",
                    cfg.state_dir.join(sub).display()
                ))
            })?;
        }
        let store = FileStore {
            inputs: Arc::new(RwLock::new(Inputs {
                files: BTreeMap::new(),
                index: Index::default(),
                loaded: false,
            })),
            cfg: Arc::new(cfg),
        };
        let problems = store.reload();
        Ok((store, problems))
    }

    pub fn config_dir(&self) -> &Path {
        &self.cfg.config_dir
    }

    /// Re-reads the config directory. A file that fails to parse keeps its last good
    /// content; a deleted file's resources go away.
    pub fn reload(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut paths = Vec::new();
        collect_manifest_paths(&self.cfg.config_dir, &mut paths, &mut problems);
        let previous = self
            .inputs
            .read()
            .map(|i| i.files.clone())
            .unwrap_or_default();
        let mut files = BTreeMap::new();
        for path in paths {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(Problem {
                        file: path.clone(),
                        line: None,
                        message: format!("cannot read: {e}"),
                        is_error: true,
                    });
                    if let Some(old) = previous.get(&path) {
                        files.insert(path, old.clone());
                    }
                    continue;
                }
            };
            let (res, mut ps) = manifests::parse_file(&path, &text);
            match res {
                Ok(r) => {
                    files.insert(path, r);
                }
                Err(()) => {
                    if let Some(old) = previous.get(&path) {
                        ps.push(Problem {
                            file: path.clone(),
                            line: None,
                            message: "keeping this file's last good content".into(),
                            is_error: false,
                        });
                        files.insert(path, old.clone());
                    }
                }
            }
            problems.extend(ps);
        }
        let (index, dups) = Index::build(&files, &self.cfg.istio_namespace);
        problems.extend(dups);
        if let Ok(mut inputs) = self.inputs.write() {
            *inputs = Inputs {
                files,
                index,
                loaded: true,
            };
        }
        problems
    }

    fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> Option<T> {
        self.inputs.read().ok().map(|i| f(&i.index))
    }

    fn war_path(&self, ns: &str, name: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join(WAR_DIR)
            .join(ns)
            .join(format!("{name}.yaml"))
    }

    fn we_path(&self, ns: &str, name: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join(WE_DIR)
            .join(ns)
            .join(format!("{name}.yaml"))
    }

    fn write_yaml<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StoreError> {
        let text = crate::yaml::to_string(value).map_err(|e| StoreError::Io(e.to_string()))?;
        tokio_block(|| atomic::write_file(path, text.as_bytes(), 0o644))
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    fn read_war(&self, path: &Path) -> Result<Option<WorkloadAutoRegistration>, StoreError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io(format!("{}: {e}", path.display()))),
        };
        crate::yaml::from_str(path, &text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: path.display().to_string(),
                message: e.to_string(),
            })
    }

    fn list_dir_yaml(&self, top: &str, ns: Option<&str>) -> Result<Vec<PathBuf>, StoreError> {
        let base = self.cfg.state_dir.join(top);
        let namespaces: Vec<PathBuf> = match ns {
            Some(ns) => vec![base.join(ns)],
            None => read_dir_sorted(&base)?
                .into_iter()
                .filter(|p| p.is_dir())
                .collect(),
        };
        let mut out = Vec::new();
        for dir in namespaces {
            for p in read_dir_sorted(&dir)? {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                if name
                    .as_deref()
                    .is_some_and(|n| n.ends_with(".yaml") && !atomic::is_temp_name(n))
                {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            v.sort();
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::Io(format!("{}: {e}", dir.display()))),
    }
}

fn collect_manifest_paths(dir: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(Problem {
                file: dir.to_path_buf(),
                line: None,
                message: format!("cannot list directory: {e}"),
                is_error: true,
            });
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            // Hidden files and directories: editor swap files, ConfigMap-mount `..data`.
            continue;
        }
        if p.is_dir() {
            collect_manifest_paths(&p, out, problems);
        } else if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
            out.push(p);
        }
    }
}

/// File I/O with fsync can block for milliseconds; inside the multi-threaded runtime let
/// tokio move other tasks off this worker meanwhile.
fn tokio_block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Store for FileStore {
    fn workload_group(&self, namespace: &str, name: &str) -> Option<WorkloadGroup> {
        self.with_index(|ix| ix.workload_group(namespace, name).cloned())
            .flatten()
    }

    fn policies(&self, namespace: &str) -> Vec<OnboardingPolicy> {
        self.with_index(|ix| ix.policies(namespace).to_vec())
            .unwrap_or_default()
    }

    fn sidecars(&self, namespace: &str) -> Vec<Sidecar> {
        self.with_index(|ix| ix.sidecars(namespace).to_vec())
            .unwrap_or_default()
    }

    fn mesh_config(&self, revision: Option<&str>) -> serde_json::Value {
        match self.with_index(|ix| ix.mesh_config(revision)) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                tracing::error!(error = %e, "mesh config is unreadable; rendering without it");
                serde_json::Value::Object(Default::default())
            }
            None => serde_json::Value::Object(Default::default()),
        }
    }

    fn root_cert(&self, namespace: &str) -> Option<String> {
        self.with_index(|ix| ix.root_cert(namespace)).flatten()
    }

    fn is_ready(&self) -> bool {
        self.inputs.read().map(|i| i.loaded).unwrap_or(false)
    }

    async fn get_war(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<WorkloadAutoRegistration>, StoreError> {
        self.read_war(&self.war_path(namespace, name))
    }

    async fn list_wars(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<WorkloadAutoRegistration>, StoreError> {
        let mut out = Vec::new();
        for p in self.list_dir_yaml(WAR_DIR, namespace)? {
            match self.read_war(&p) {
                Ok(Some(w)) => out.push(w),
                Ok(None) => {} // deleted between listing and reading
                Err(e) => tracing::warn!(error = %e, "skipping unreadable registration"),
            }
        }
        Ok(out)
    }

    async fn put_war(&self, war: &WorkloadAutoRegistration) -> Result<(), StoreError> {
        self.write_yaml(
            &self.war_path(&war.metadata.namespace, &war.metadata.name),
            war,
        )
    }

    async fn put_workload_entry(&self, entry: &WorkloadEntry) -> Result<(), StoreError> {
        self.write_yaml(
            &self.we_path(&entry.metadata.namespace, &entry.metadata.name),
            entry,
        )
    }

    async fn delete_registration(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let existed = remove_if_exists(&self.war_path(namespace, name))?;
        remove_if_exists(&self.we_path(namespace, name))?;
        Ok(existed)
    }

    async fn collect_orphans(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for p in self.list_dir_yaml(WE_DIR, None)? {
            let (Some(ns), Some(stem)) = (
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned()),
                p.file_stem().map(|n| n.to_string_lossy().into_owned()),
            ) else {
                continue;
            };
            if !self.war_path(&ns, &stem).exists() && remove_if_exists(&p)? {
                tracing::info!(namespace = %ns, name = %stem, "deleted WorkloadEntry whose WAR is gone");
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn istio_token(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<IstioToken, StoreError> {
        let src = &self.cfg.istio_token;
        let ttl = src
            .expiration
            .map(|d| d.as_std())
            .unwrap_or(Duration::from_secs(3600));
        let raw = if let Some(path) = &src.file {
            std::fs::read_to_string(path).map_err(|e| {
                StoreError::Token(format!(
                    "cannot read istioToken.file {}: {e}",
                    path.display()
                ))
            })?
        } else if let Some(cmd) = src.command.as_ref().filter(|c| !c.is_empty()) {
            let out = tokio_block(|| {
                Command::new(&cmd[0])
                    .args(&cmd[1..])
                    .env("NAMESPACE", namespace)
                    .env("SERVICE_ACCOUNT", service_account)
                    .env("AUDIENCE", "istio-ca")
                    .env("EXPIRATION_SECONDS", ttl.as_secs().to_string())
                    .output()
            })
            .map_err(|e| {
                StoreError::Token(format!("cannot run istioToken.command {:?}: {e}", cmd[0]))
            })?;
            if !out.status.success() {
                return Err(StoreError::Token(format!(
                    "istioToken.command {:?} failed ({}): {}",
                    cmd[0],
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            String::from_utf8(out.stdout)
                .map_err(|_| StoreError::Token("istioToken.command printed non-UTF-8".into()))?
        } else {
            // No source: the sidecar gets an empty token, as istioctl writes when it has none.
            // The endpoint warns about this at start-up.
            return Ok(IstioToken {
                token: String::new(),
                expires_at: None,
            });
        };
        let token = raw.trim().to_string();
        let expires_at = jwt_expiry(&token).or_else(|| Some(SystemTime::now() + ttl));
        Ok(IstioToken { token, expires_at })
    }
}

fn remove_if_exists(p: &Path) -> Result<bool, StoreError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::Io(format!(
            "cannot delete {}: {e}",
            p.display()
        ))),
    }
}

/// The `exp` of a JWT, read without verifying it: only to know when to fetch a new one.
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(v.get("exp")?.as_u64()?))
}

/// Watches the config directory and reloads on change. Runs until the returned watcher is
/// dropped; `on_reload` gets the problems of each reload.
pub fn watch(
    store: FileStore,
    on_reload: impl Fn(Vec<Problem>) + Send + 'static,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::{RecursiveMode, Watcher};
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok() {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(store.config_dir(), RecursiveMode::Recursive)?;
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Editors and `kubectl cp` write in several steps: let a burst settle.
                std::thread::sleep(Duration::from_millis(150));
                while rx.try_recv().is_ok() {}
                on_reload(store.reload());
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> FileStore {
        std::fs::create_dir_all(dir.join("config")).unwrap();
        FileStore::open(FileStoreConfig {
            config_dir: dir.join("config"),
            state_dir: dir.join("state"),
            istio_namespace: "istio-system".into(),
            istio_token: IstioTokenSource {
                file: None,
                command: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "echo token-for-$NAMESPACE-$SERVICE_ACCOUNT-$AUDIENCE".into(),
                ]),
                expiration: None,
            },
        })
        .unwrap()
        .0
    }

    #[test]
    fn bad_edit_keeps_last_good_content() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let f = dir.path().join("config/wg.yaml");
        std::fs::write(
            &f,
            "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: a, namespace: n}\nspec: {template: {}}\n",
        )
        .unwrap();
        assert!(s.reload().iter().all(|p| !p.is_error));
        assert!(s.workload_group("n", "a").is_some());
        std::fs::write(&f, "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: a, namespace: n}\nspec: {tmplate: {}}\n").unwrap();
        let problems = s.reload();
        assert!(
            problems
                .iter()
                .any(|p| p.is_error && p.message.contains("tmplate"))
        );
        assert!(
            s.workload_group("n", "a").is_some(),
            "last good content stays"
        );
        std::fs::remove_file(&f).unwrap();
        s.reload();
        assert!(s.workload_group("n", "a").is_none());
    }

    #[tokio::test]
    async fn token_command_gets_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let t = s.istio_token("bookinfo", "ratings-vm").await.unwrap();
        assert_eq!(t.token, "token-for-bookinfo-ratings-vm-istio-ca");
        assert!(t.expires_at.is_some());
    }

    #[test]
    fn jwt_expiry_reads_exp() {
        use base64::Engine;
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":2000000000}"#);
        assert_eq!(
            jwt_expiry(&format!("x.{p}.y")),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("not-a-jwt"), None);
    }
}
