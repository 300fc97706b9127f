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
use crate::api::validation;
use crate::atomic;
use crate::lock;

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

const INPUTS: &str = "config directory index";

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
        let (previous, previously_seen, loaded) = match lock::read(&self.inputs, INPUTS) {
            Ok(i) => (i.files.clone(), i.seen.clone(), i.loaded),
            Err(e) => {
                tracing::error!("{e}");
                return Reloaded::default();
            }
        };
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
        match lock::write(&self.inputs, INPUTS) {
            Ok(mut inputs) => {
                *inputs = Inputs {
                    files,
                    seen,
                    index,
                    loaded: true,
                }
            }
            Err(e) => {
                tracing::error!("{e}");
                return Reloaded::default();
            }
        }
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Reloaded {
            changed: true,
            problems,
        }
    }

    /// `None` when the inputs cannot be trusted (see `crate::lock`): the reads answer as if
    /// there were none, so requests are denied rather than judged on a half-made index.
    fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> Option<T> {
        lock::read(&self.inputs, INPUTS).ok().map(|i| f(&i.index))
    }

    fn war_path(&self, ns: &str, name: &str) -> Result<PathBuf, StoreError> {
        state_path(
            &self.cfg.state_dir,
            WAR_DIR,
            "WorkloadAutoRegistration",
            ns,
            name,
        )
    }

    fn we_path(&self, ns: &str, name: &str) -> Result<PathBuf, StoreError> {
        state_path(&self.cfg.state_dir, WE_DIR, "WorkloadEntry", ns, name)
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
            Some(ns) => {
                validation::dns1123_label(ns).map_err(|e| StoreError::InvalidName {
                    kind: "namespace",
                    namespace: ns.to_string(),
                    name: String::new(),
                    message: e.to_string(),
                })?;
                vec![base.join(ns)]
            }
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

    /// Start-up repair of the state directory, for `serve` (never for the read-only CLI
    /// commands, which must not race a running endpoint's writes): removes the temporary
    /// files of writes a crash interrupted, writes again every WorkloadEntry that is
    /// missing or differs from what its WAR says (a crash between the two writes of a
    /// registration), and removes WorkloadEntries without a WAR.
    pub async fn recover(&self) -> Result<Recovery, StoreError> {
        let mut r = Recovery::default();
        for dir in state_dirs(&self.cfg.state_dir) {
            r.stale_temps += atomic::remove_stale_temps(&dir)
                .map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
        }
        for war in self.list_wars(None).await? {
            let (ns, name) = (&war.metadata.namespace, &war.metadata.name);
            let entry = match crate::registration::workload_entry(&war) {
                Ok(e) => e,
                Err(e) => {
                    r.problems.push(format!(
                        "WorkloadAutoRegistration {ns}/{name}: cannot derive its WorkloadEntry: {e}"
                    ));
                    continue;
                }
            };
            let path = self.we_path(ns, name)?;
            let current: Option<WorkloadEntry> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| crate::yaml::from_str(&path, &t).ok());
            if current.as_ref() != Some(&entry) {
                self.write_yaml(&path, &entry)?;
                r.entries_repaired += 1;
            }
        }
        r.orphans_removed = self.collect_orphans().await?;
        Ok(r)
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

/// `<state>/<top>/<namespace>/<name>.yaml`, for names Kubernetes would accept only. The
/// names come from agents, session tokens and manifests: whatever slipped past the checks
/// upstream, nothing here may address a file outside `<state>/<top>/` (defence in depth).
fn state_path(
    state_dir: &Path,
    top: &str,
    kind: &'static str,
    ns: &str,
    name: &str,
) -> Result<PathBuf, StoreError> {
    let refuse = |message: String| StoreError::InvalidName {
        kind,
        namespace: ns.to_string(),
        name: name.to_string(),
        message,
    };
    validation::namespaced_name(ns, name).map_err(|e| refuse(e.to_string()))?;
    let file = format!("{name}.yaml");
    // Valid names cannot hold '/' or be '.'/'..'; check the components anyway, so that a
    // future relaxation of the rules cannot open a way out of the directory.
    for part in [ns, file.as_str()] {
        let mut c = Path::new(part).components();
        if !matches!(
            (c.next(), c.next()),
            (Some(std::path::Component::Normal(_)), None)
        ) {
            return Err(refuse(format!("{part:?} is not a single path component")));
        }
    }
    Ok(state_dir.join(top).join(ns).join(file))
}

/// Directories of the state tree where the store (or `serve`, for the plane UID and the
/// signing key) writes atomically: the state directory, its subdirectories and theirs.
fn state_dirs(state_dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![state_dir.to_path_buf()];
    let mut level = vec![state_dir.to_path_buf()];
    for _ in 0..2 {
        let mut next = Vec::new();
        for dir in &level {
            for p in read_dir_sorted(dir).unwrap_or_default() {
                // Never follow a link out of the state tree.
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    next.push(p);
                }
            }
        }
        out.extend(next.iter().cloned());
        level = next;
    }
    out
}

/// What [`FileStore::recover`] found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Temporary files of writes a crash interrupted, removed.
    pub stale_temps: usize,
    /// WorkloadEntries written again from their WAR (missing, or not what the WAR says).
    pub entries_repaired: usize,
    /// WorkloadEntries without a WAR, removed.
    pub orphans_removed: usize,
    /// What could not be repaired (logged by the caller; the rest went on).
    pub problems: Vec<String>,
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
        lock::read(&self.inputs, INPUTS).is_ok_and(|i| i.loaded)
    }

    async fn get_war(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<WorkloadAutoRegistration>, StoreError> {
        self.read_war(&self.war_path(namespace, name)?)
    }

    async fn list_wars(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<WorkloadAutoRegistration>, StoreError> {
        let mut out = Vec::new();
        for p in self.list_dir_yaml(WAR_DIR, namespace)? {
            match self.read_war(&p) {
                // A WAR is only what its path says it is: a file whose metadata names
                // another place (copied or hand-made) would make later writes go there.
                Ok(Some(w))
                    if self
                        .war_path(&w.metadata.namespace, &w.metadata.name)
                        .ok()
                        .as_ref()
                        != Some(&p) =>
                {
                    tracing::warn!(path = %p.display(), namespace = %w.metadata.namespace, name = %w.metadata.name, "skipping a registration whose metadata does not match its file name");
                }
                Ok(Some(w)) => out.push(w),
                Ok(None) => {} // deleted between listing and reading
                Err(e) => tracing::warn!(error = %e, "skipping unreadable registration"),
            }
        }
        Ok(out)
    }

    async fn put_war(&self, war: &WorkloadAutoRegistration) -> Result<(), StoreError> {
        self.write_yaml(
            &self.war_path(&war.metadata.namespace, &war.metadata.name)?,
            war,
        )
    }

    async fn put_registration(
        &self,
        war: &WorkloadAutoRegistration,
        entry: &WorkloadEntry,
    ) -> Result<(), StoreError> {
        let war_path = self.war_path(&war.metadata.namespace, &war.metadata.name)?;
        let we_path = self.we_path(&entry.metadata.namespace, &entry.metadata.name)?;
        // The WAR is the registration's commit record: it is written last, so `get war`
        // and the API never see one whose WorkloadEntry is missing. A crash between the
        // two writes leaves a WorkloadEntry without (or newer than) its WAR, which
        // `collect_orphans` and `recover` clean up.
        let previous = match std::fs::read(&we_path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(StoreError::Io(format!("{}: {e}", we_path.display())));
            }
        };
        self.write_yaml(&we_path, entry)?;
        if let Err(e) = self.write_yaml(&war_path, war) {
            // Put the WorkloadEntry back as it was, so the pair stays whole.
            let undo = match &previous {
                Some(bytes) => tokio_block(|| atomic::write_file(&we_path, bytes, 0o644))
                    .map_err(|e| e.to_string()),
                None => remove_if_exists(&we_path)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            if let Err(u) = undo {
                tracing::error!(error = %u, path = %we_path.display(), "cannot roll back a WorkloadEntry after its WAR failed to write; the next start-up repairs it");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn put_workload_entry(&self, entry: &WorkloadEntry) -> Result<(), StoreError> {
        self.write_yaml(
            &self.we_path(&entry.metadata.namespace, &entry.metadata.name)?,
            entry,
        )
    }

    async fn delete_registration(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        // WAR first: a failure in between leaves an orphan WorkloadEntry, collected later,
        // never a WAR without its entry.
        let existed = remove_if_exists(&self.war_path(namespace, name)?)?;
        remove_if_exists(&self.we_path(namespace, name)?)?;
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
            // A file whose name is not a valid registration's cannot have a WAR either.
            let has_war = self.war_path(&ns, &stem).is_ok_and(|w| w.exists());
            if !has_war && remove_if_exists(&p)? {
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
    fn a_poisoned_index_answers_nothing_rather_than_a_half_made_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        std::fs::write(
            dir.path().join("config/wg.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: a, namespace: n}\nspec: {template: {}}\n",
        )
        .unwrap();
        s.reload();
        assert!(s.workload_group("n", "a").is_some());
        assert!(s.is_ready());
        std::thread::scope(|t| {
            let _ = t
                .spawn(|| {
                    let _w = s.inputs.write().unwrap();
                    panic!("poisoning the index on purpose");
                })
                .join();
        });
        assert!(s.workload_group("n", "a").is_none());
        assert!(!s.is_ready(), "readiness reports the broken index");
        // A reload neither panics nor installs anything.
        assert!(!s.refresh().changed);
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

    fn registration(ns: &str, name: &str) -> (WorkloadAutoRegistration, WorkloadEntry) {
        let group: WorkloadGroup = crate::yaml::from_str(
            Path::new("wg.yaml"),
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {{name: ratings, namespace: {ns:?}, uid: u-g}}\nspec: {{template: {{labels: {{app: ratings}}}}}}\n"
            ),
        )
        .unwrap();
        let reg = crate::api::registration::Registration {
            host: crate::api::registration::HostInfo {
                addresses: vec![crate::api::registration::Address {
                    ip: "10.0.0.7".into(),
                    kind: crate::api::registration::AddressType::Vpc,
                }],
            },
            ..Default::default()
        };
        let identity =
            crate::api::identity::WorkloadIdentity::Jwt(crate::api::identity::JwtIdentity {
                issuer: "https://idp".into(),
                subject: "vm-1".into(),
                attributes: Default::default(),
            });
        let war = crate::registration::new_war(name, &group, identity, reg, "u-1", "t");
        let entry = crate::registration::workload_entry(&war).unwrap();
        (war, entry)
    }

    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn names_that_would_leave_the_state_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir.path().join("root/a"));
        for (ns, name) in [
            ("../../x", "ratings-vm"),
            ("..", "w"),
            ("bookinfo", "../../../escape"),
            ("bookinfo", ".."),
            ("bookinfo", "a/b"),
            ("", "w"),
            ("bookinfo", ""),
        ] {
            let (mut war, mut entry) = registration("bookinfo", "w");
            war.metadata.namespace = ns.into();
            war.metadata.name = name.into();
            entry.metadata.namespace = ns.into();
            entry.metadata.name = name.into();
            let e = s.put_registration(&war, &entry).await.unwrap_err();
            assert!(
                matches!(e, StoreError::InvalidName { .. }),
                "{ns:?}/{name:?}: {e}"
            );
            assert!(matches!(
                s.put_war(&war).await,
                Err(StoreError::InvalidName { .. })
            ));
            assert!(matches!(
                s.get_war(ns, name).await,
                Err(StoreError::InvalidName { .. })
            ));
            assert!(matches!(
                s.delete_registration(ns, name).await,
                Err(StoreError::InvalidName { .. })
            ));
        }
        assert!(matches!(
            s.list_wars(Some("../x")).await,
            Err(StoreError::InvalidName { .. })
        ));
        assert!(
            files_under(dir.path())
                .iter()
                .all(|f| f.starts_with("root/a/config")),
            "{:?}",
            files_under(dir.path())
        );
        // A WAR file whose metadata names another place is not listed (the sweep would
        // otherwise write it back there).
        let (mut war, _) = registration("bookinfo", "w");
        war.metadata.namespace = "../../x".into();
        let text = crate::yaml::to_string(&war).unwrap();
        let p = dir
            .path()
            .join("root/a/state/workloadautoregistrations/bookinfo/w.yaml");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        assert_eq!(s.list_wars(None).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn a_registration_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let state = dir.path().join("state");
        let (war, entry) = registration("bookinfo", "w");
        let war_file = state.join("workloadautoregistrations/bookinfo/w.yaml");
        let we_file = state.join("workloadentries/bookinfo/w.yaml");

        // The WAR cannot be written (a non-empty directory where its file goes; rename(2)
        // fails even for root): the new WorkloadEntry written before it is taken back.
        std::fs::create_dir_all(war_file.join("x")).unwrap();
        assert!(matches!(
            s.put_registration(&war, &entry).await,
            Err(StoreError::Io(_))
        ));
        assert!(!we_file.exists(), "WorkloadEntry without its WAR");
        std::fs::remove_dir_all(&war_file).unwrap();

        s.put_registration(&war, &entry).await.unwrap();
        assert_eq!(s.get_war("bookinfo", "w").await.unwrap(), Some(war.clone()));
        let before = std::fs::read(&we_file).unwrap();

        // A later registration that fails leaves the previous pair as it was.
        let (mut war2, mut entry2) = registration("bookinfo", "w");
        war2.spec.registration.host.addresses[0].ip = "10.0.0.8".into();
        entry2.spec.address = Some("10.0.0.8".into());
        let dir_war = state.join("workloadautoregistrations/bookinfo");
        let saved = std::fs::read(&war_file).unwrap();
        std::fs::remove_file(&war_file).unwrap();
        std::fs::create_dir_all(war_file.join("x")).unwrap();
        assert!(s.put_registration(&war2, &entry2).await.is_err());
        assert_eq!(
            std::fs::read(&we_file).unwrap(),
            before,
            "previous entry restored"
        );
        std::fs::remove_dir_all(&war_file).unwrap();
        std::fs::write(&war_file, saved).unwrap();
        assert_eq!(s.get_war("bookinfo", "w").await.unwrap(), Some(war));
        // No temporary file is left behind by the failed writes.
        for d in [dir_war, state.join("workloadentries/bookinfo")] {
            let names: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(names.iter().all(|n| !atomic::is_temp_name(n)), "{names:?}");
        }
    }

    #[tokio::test]
    async fn recover_removes_temps_completes_entries_and_drops_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let state = dir.path().join("state");
        let (war, entry) = registration("bookinfo", "w");
        s.put_registration(&war, &entry).await.unwrap();
        let (war_b, entry_b) = registration("bookinfo", "b");
        s.put_registration(&war_b, &entry_b).await.unwrap();
        let we = state.join("workloadentries/bookinfo/w.yaml");
        let good = std::fs::read_to_string(&we).unwrap();
        // A crash between the two writes of each kind, and temporary files of interrupted
        // writes at every level of the state tree.
        std::fs::remove_file(&we).unwrap();
        let we_b = state.join("workloadentries/bookinfo/b.yaml");
        std::fs::write(&we_b, good.replace("10.0.0.7", "10.9.9.9")).unwrap();
        let orphan = state.join("workloadentries/bookinfo/gone.yaml");
        std::fs::write(&orphan, good.replace("name: w", "name: gone")).unwrap();
        let temps = [
            state.join(".plane-uid.tmp.1.0"),
            state.join("workloadautoregistrations/.x.tmp.1.1"),
            state.join("workloadautoregistrations/bookinfo/.w.yaml.tmp.1.2"),
            state.join("workloadentries/bookinfo/.w.yaml.tmp.1.3"),
        ];
        for t in &temps {
            std::fs::write(t, b"partial").unwrap();
        }
        let r = s.recover().await.unwrap();
        assert_eq!(
            (r.stale_temps, r.entries_repaired, r.orphans_removed),
            (4, 2, 1),
            "{r:?}"
        );
        assert!(r.problems.is_empty(), "{r:?}");
        assert!(temps.iter().all(|t| !t.exists()));
        assert_eq!(std::fs::read_to_string(&we).unwrap(), good);
        assert!(std::fs::read_to_string(&we_b).unwrap().contains("10.0.0.7"));
        assert!(!orphan.exists());
        // Nothing left to do the second time.
        assert_eq!(s.recover().await.unwrap(), Recovery::default());
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
