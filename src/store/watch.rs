//! Watching the file store's config directory: reload when a manifest's content may have
//! changed, and only then.
//!
//! inotify also reports opens, reads and closes, including those of the reload itself (and of
//! `onboarding-endpoint get`, editors, backups): reacting to them made the endpoint re-read
//! its directory several times a second forever. So only events that can change content wake
//! the reload, a burst of them is debounced into one pass, and a pass that finds every file
//! as it was ([`FileStore::refresh`] compares content hashes) counts as no reload at all.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::EventKind;
use notify::event::{AccessKind, AccessMode, ModifyKind};

use super::file::FileStore;
use super::manifests::Problem;

/// Quiet time after the last event before the directory is read: editors, `kubectl cp` and
/// ConfigMap mounts write in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// A directory written to without pause is still read this often.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// Whether an event can mean a manifest's content changed: a file or directory created,
/// written, renamed or removed, or closed after writing. Opens, reads, closes after reading
/// and metadata changes (atime, permissions) cannot.
pub fn is_content_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        // Data, Name (renames), and kinds a backend could not classify.
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        // Unclassified events: reading the directory again is cheap when nothing changed.
        EventKind::Any | EventKind::Other => true,
    }
}

/// Waits for the first wake-up, then until [`DEBOUNCE`] passes without another (at most
/// [`MAX_DELAY`]). Returns false when the watcher is gone.
fn next_burst(rx: &Receiver<()>, debounce: Duration, max_delay: Duration) -> bool {
    if rx.recv().is_err() {
        return false;
    }
    let start = Instant::now();
    loop {
        let left = max_delay.saturating_sub(start.elapsed());
        if left.is_zero() {
            return true;
        }
        match rx.recv_timeout(debounce.min(left)) {
            Ok(()) => continue,
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return true,
        }
    }
}

/// Watches the config directory and reloads when a manifest changed. Runs until the
/// returned watcher is dropped; `on_change` gets the problems of each reload that changed
/// something (so each manifest error is reported once per change of its file).
pub fn watch(
    store: FileStore,
    on_change: impl Fn(Vec<Problem>) + Send + 'static,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::{RecursiveMode, Watcher};
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let wake = match ev {
            Ok(ev) => is_content_change(&ev.kind),
            // Lost events (queue overflow): look again.
            Err(_) => true,
        };
        if wake {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(store.config_dir(), RecursiveMode::Recursive)?;
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            while next_burst(&rx, DEBOUNCE, MAX_DELAY) {
                let r = store.refresh();
                if r.changed {
                    on_change(r.problems);
                }
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    use super::*;
    use crate::store::Store;
    use crate::store::file::{FileStoreConfig, IstioTokenSource};
    use crate::store::manifests::ManifestLimits;

    #[test]
    fn only_content_changes_wake_the_reload() {
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            assert!(is_content_change(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ] {
            assert!(!is_content_change(&kind), "{kind:?}");
        }
    }

    #[test]
    fn a_burst_is_one_wake_up() {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..50 {
            tx.send(()).unwrap();
        }
        assert!(next_burst(&rx, Duration::from_millis(50), MAX_DELAY));
        assert!(rx.try_recv().is_err(), "the burst was drained");
        drop(tx);
        assert!(!next_burst(&rx, Duration::from_millis(50), MAX_DELAY));
    }

    const WG: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: a, namespace: n}\nspec: {template: {}}\n";
    const BAD: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: b, namespace: n}\nspec: {tmplate: {}}\n";

    fn read_everything(dir: &Path) {
        for e in std::fs::read_dir(dir).unwrap() {
            let mut s = String::new();
            std::fs::File::open(e.unwrap().path())
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
        }
    }

    /// Waits until `f` holds or `timeout` passes.
    fn eventually(timeout: Duration, f: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f()
    }

    #[test]
    fn reads_do_not_reload_and_a_change_reloads_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("wg.yaml"), WG).unwrap();
        // A file with an error: reported once, not on every pass.
        std::fs::write(config.join("bad.yaml"), BAD).unwrap();
        let (store, problems) = FileStore::open(FileStoreConfig {
            config_dir: config.clone(),
            state_dir: dir.path().join("state"),
            istio_namespace: "istio-system".into(),
            istio_token: IstioTokenSource {
                file: None,
                command: None,
                expiration: None,
            },
            manifest_limits: ManifestLimits::default(),
        })
        .unwrap();
        assert!(problems.iter().any(|p| p.message.contains("tmplate")));
        assert_eq!(store.reload_count(), 1);
        let calls: Arc<Mutex<Vec<Vec<Problem>>>> = Arc::default();
        let _w = {
            let calls = calls.clone();
            watch(store.clone(), move |p| calls.lock().unwrap().push(p)).unwrap()
        };

        // Anyone reading the directory, for a while longer than several debounce periods.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            read_everything(&config);
            std::thread::sleep(Duration::from_millis(30));
        }
        std::thread::sleep(DEBOUNCE * 3);
        assert_eq!(
            calls.lock().unwrap().len(),
            0,
            "{:?}",
            calls.lock().unwrap()
        );
        assert_eq!(store.reload_count(), 1, "reads do not count as reloads");

        // Touching a file without changing it is no reload either.
        std::fs::write(config.join("wg.yaml"), WG).unwrap();
        std::thread::sleep(DEBOUNCE * 4);
        assert_eq!(calls.lock().unwrap().len(), 0);
        assert_eq!(store.reload_count(), 1);

        // One change: exactly one reload, which reports only the changed file.
        std::fs::write(config.join("wg.yaml"), WG.replace("name: a", "name: c")).unwrap();
        assert!(eventually(Duration::from_secs(5), || calls
            .lock()
            .unwrap()
            .len()
            == 1));
        assert!(store.workload_group("n", "c").is_some());
        assert!(store.workload_group("n", "a").is_none());
        // Its own reads and the reads of others keep it at one.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1000) {
            read_everything(&config);
            std::thread::sleep(Duration::from_millis(30));
        }
        std::thread::sleep(DEBOUNCE * 3);
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(store.reload_count(), 2);
        assert!(
            calls[0].iter().all(|p| !p.message.contains("tmplate")),
            "the unchanged bad file is not reported again: {:?}",
            calls[0]
        );
    }
}
