//! The embedded store: inputs from a directory of manifests (re-read on change), registrations
//! as one YAML file per resource in a state directory, written atomically. The state files
//! are ordinary Kubernetes manifests: `kubectl apply -f <state>/` moves them to a cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::manifests::{self, FileResources, Index, ManifestLimits, Problem};
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
    /// Bounds on each manifest file (size, documents).
    pub manifest_limits: ManifestLimits,
}

struct Inputs {
    /// Last good parse of each file.
    files: BTreeMap<PathBuf, FileResources>,
    /// What each file held when last looked at (good or bad): a file that looks the same is
    /// neither parsed nor reported again.
    seen: BTreeMap<PathBuf, Seen>,
    index: Index,
    loaded: bool,
}

/// The state of one manifest file, as far as telling a change goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// SHA-256 of the content.
    Content([u8; 32]),
    /// Over the size limit: (size, modification time), which is all that was looked at.
    TooLarge(u64, Option<SystemTime>),
    /// Could not be read; the message.
    Unreadable(String),
}

/// What one pass over the config directory found.
#[derive(Debug, Clone, Default)]
pub struct Reloaded {
    /// Whether any manifest was added, removed or changed since the last pass (always true
    /// for the first one). A pass that changed nothing replaced nothing.
    pub changed: bool,
    /// Problems of the files that changed (a file that did not change is not reported
    /// again), and of the index when something changed.
    pub problems: Vec<Problem>,
}

#[derive(Clone)]
pub struct FileStore {
    cfg: Arc<FileStoreConfig>,
    inputs: Arc<RwLock<Inputs>>,
    /// Passes that changed something, for tests and logs.
    reloads: Arc<AtomicU64>,
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
                seen: BTreeMap::new(),
                index: Index::default(),
                loaded: false,
            })),
            cfg: Arc::new(cfg),
            reloads: Arc::new(AtomicU64::new(0)),
        };
        let problems = store.reload();
        Ok((store, problems))
    }

    pub fn config_dir(&self) -> &Path {
        &self.cfg.config_dir
    }

    /// Re-reads the config directory and returns the problems of the files that changed.
    /// A file that fails to parse or is over the limits keeps its last good content; a
    /// deleted file's resources go away.
    pub fn reload(&self) -> Vec<Problem> {
        self.refresh().problems
    }

    /// How many passes over the config directory changed something (the first load
    /// included).
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// One pass over the config directory: files whose content is what it was are neither
    /// parsed nor reported again, and when nothing changed the index is left as it is.
    pub fn refresh(&self) -> Reloaded {
        let limits = self.cfg.manifest_limits;
        let mut problems = Vec::new();
        let mut paths = Vec::new();
        let mut listing = Vec::new();
        collect_manifest_paths(&self.cfg.config_dir, &mut paths, &mut listing);
        let (previous, previously_seen, loaded) = self
            .inputs
            .read()
            .map(|i| (i.files.clone(), i.seen.clone(), i.loaded))
            .unwrap_or_default();
        let mut changed = !loaded;
        let mut files = BTreeMap::new();
        let mut seen = BTreeMap::new();
        // A directory that cannot be listed is reported when it becomes so, like a file.
        for p in listing {
            let now = Seen::Unreadable(p.message.clone());
            if previously_seen.get(&p.file) != Some(&now) {
                changed = true;
                problems.push(p.clone());
            }
            seen.insert(p.file, now);
        }
        for path in paths {
            let keep_last_good = |files: &mut BTreeMap<PathBuf, FileResources>,
                                  ps: &mut Vec<Problem>| {
                if let Some(old) = previous.get(&path) {
                    ps.push(Problem {
                        file: path.clone(),
                        line: None,
                        message: "keeping this file's last good content".into(),
                        is_error: false,
                    });
                    files.insert(path.clone(), old.clone());
                }
            };
            let (now, text) = match read_manifest(&path, &limits) {
                Ok(ManifestRead::Text(text)) => {
                    use sha2::{Digest, Sha256};
                    (
                        Seen::Content(Sha256::digest(text.as_bytes()).into()),
                        Some(text),
                    )
                }
                Ok(ManifestRead::TooLarge(size, mtime)) => (Seen::TooLarge(size, mtime), None),
                Err(message) => (Seen::Unreadable(message), None),
            };
            if previously_seen.get(&path) == Some(&now) {
                // Unchanged since the last pass: same resources, nothing new to say.
                if let Some(old) = previous.get(&path) {
                    files.insert(path.clone(), old.clone());
                }
                seen.insert(path, now);
                continue;
            }
            changed = true;
            let mut ps = Vec::new();
            match (&now, text) {
                (_, Some(text)) => {
                    let (res, file_problems) = manifests::parse_file_with(&path, &text, &limits);
                    ps.extend(file_problems);
                    match res {
                        Ok(r) => {
                            files.insert(path.clone(), r);
                        }
                        Err(()) => keep_last_good(&mut files, &mut ps),
                    }
                }
                (Seen::TooLarge(size, _), None) => {
                    ps.push(manifests::too_large(&path, *size, &limits));
                    keep_last_good(&mut files, &mut ps);
                }
                (Seen::Unreadable(message), None) => {
                    ps.push(Problem {
                        file: path.clone(),
                        line: None,
                        message: message.clone(),
                        is_error: true,
                    });
                    keep_last_good(&mut files, &mut ps);
                }
                (Seen::Content(_), None) => {}
            }
            problems.extend(ps);
            seen.insert(path, now);
        }
        // A file that went away.
        changed |= previously_seen.keys().any(|p| !seen.contains_key(p));
        if !changed {
            return Reloaded::default();
        }
        let (index, dups) = Index::build(&files, &self.cfg.istio_namespace);
        problems.extend(dups);
        if let Ok(mut inputs) = self.inputs.write() {
            *inputs = Inputs {
                files,
                seen,
                index,
                loaded: true,
            };
        }
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Reloaded {
            changed: true,
            problems,
        }
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

/// A manifest file's content, or why it was not read.
enum ManifestRead {
    Text(String),
    /// Over the limit: its size and modification time.
    TooLarge(u64, Option<SystemTime>),
}

/// Reads a manifest if it is within the size limit. The size is checked before reading and
/// the read itself is bounded, because a file can grow between the two.
fn read_manifest(path: &Path, limits: &ManifestLimits) -> Result<ManifestRead, String> {
    use std::io::Read;
    // metadata() first, so that a FIFO dropped into the directory is not opened (which
    // would block the reload until a writer appears).
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file; not read".into());
    }
    if meta.len() > limits.max_file_bytes {
        return Ok(ManifestRead::TooLarge(meta.len(), meta.modified().ok()));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limits.max_file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limits.max_file_bytes {
        let size = std::fs::metadata(path)
            .map(|m| m.len())
            .unwrap_or(bytes.len() as u64);
        return Ok(ManifestRead::TooLarge(size, None));
    }
    String::from_utf8(bytes)
        .map(ManifestRead::Text)
        .map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
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

pub use super::watch::watch;

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
            manifest_limits: ManifestLimits::default(),
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

    fn store_with_limits(dir: &Path, limits: ManifestLimits) -> FileStore {
        std::fs::create_dir_all(dir.join("config")).unwrap();
        FileStore::open(FileStoreConfig {
            config_dir: dir.join("config"),
            state_dir: dir.join("state"),
            istio_namespace: "istio-system".into(),
            istio_token: IstioTokenSource {
                file: None,
                command: None,
                expiration: None,
            },
            manifest_limits: limits,
        })
        .unwrap()
        .0
    }

    const WG_A: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: a, namespace: n}\nspec: {template: {}}\n";

    #[test]
    fn oversized_manifest_is_refused_by_name_and_keeps_last_good_content() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ManifestLimits {
            max_file_bytes: 4096,
            max_documents: 1000,
        };
        let s = store_with_limits(dir.path(), limits);
        let f = dir.path().join("config/wg.yaml");
        std::fs::write(&f, WG_A).unwrap();
        assert!(s.reload().iter().all(|p| !p.is_error));
        assert!(s.workload_group("n", "a").is_some());

        // The same group, padded past the limit with a comment: not parsed at all.
        let big = format!(
            "{}#{}\n",
            WG_A.replace("name: a", "name: b"),
            "x".repeat(8192)
        );
        std::fs::write(&f, &big).unwrap();
        let problems = s.reload();
        let err = problems.iter().find(|p| p.is_error).expect("an error");
        assert_eq!(err.file, f);
        assert!(
            err.message.contains(&format!("{} bytes", big.len()))
                && err.message.contains("4096")
                && err.message.contains("maxManifestBytes"),
            "{err}"
        );
        assert!(
            s.workload_group("n", "a").is_some(),
            "last good content stays"
        );
        assert!(s.workload_group("n", "b").is_none());
        assert!(s.reload().is_empty(), "reported once, not on every pass");

        // Back within the limit: read again.
        std::fs::write(&f, WG_A.replace("name: a", "name: b")).unwrap();
        assert!(s.reload().iter().all(|p| !p.is_error));
        assert!(s.workload_group("n", "b").is_some());
    }

    #[test]
    fn a_file_growing_past_the_limit_is_read_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.yaml");
        std::fs::write(&f, "x".repeat(100)).unwrap();
        let limits = ManifestLimits {
            max_file_bytes: 10,
            max_documents: 10,
        };
        assert!(matches!(
            read_manifest(&f, &limits),
            Ok(ManifestRead::TooLarge(100, _))
        ));
        let roomy = ManifestLimits {
            max_file_bytes: 1000,
            max_documents: 10,
        };
        assert!(matches!(read_manifest(&f, &roomy), Ok(ManifestRead::Text(t)) if t.len() == 100));
        assert!(
            read_manifest(dir.path(), &roomy).is_err(),
            "a directory is no manifest"
        );
    }

    #[test]
    fn an_unchanged_directory_is_no_reload() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_with_limits(dir.path(), ManifestLimits::default());
        let f = dir.path().join("config/wg.yaml");
        std::fs::write(&f, WG_A).unwrap();
        assert!(s.refresh().changed);
        let n = s.reload_count();
        assert!(!s.refresh().changed);
        std::fs::write(&f, WG_A).unwrap(); // rewritten, same bytes
        assert!(!s.refresh().changed);
        assert_eq!(s.reload_count(), n);
        std::fs::remove_file(&f).unwrap();
        assert!(s.refresh().changed, "a removal is a change");
        assert!(s.workload_group("n", "a").is_none());
        assert_eq!(s.reload_count(), n + 1);
    }
}
