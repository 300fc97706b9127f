//! Watching the onboarding config file. The watch is on its directory, not the file:
//! editors and config management replace the file by rename (and Kubernetes ConfigMaps swap
//! a `..data` symlink), which a watch on the old inode would never see.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", dir.display())]
pub struct WatchError {
    pub dir: PathBuf,
    #[source]
    pub source: notify::Error,
}

/// Whether an event on `changed` may have changed the file named `name`.
pub fn is_relevant(changed: &Path, name: &OsString) -> bool {
    match changed.file_name() {
        Some(n) => n == name || n == "..data",
        None => false,
    }
}

/// Calls `on_change` (from notify's thread) whenever the file at `file` may have changed.
/// Keep the returned watcher alive for as long as the watch should last.
pub fn watch(
    file: &Path,
    on_change: impl Fn() + Send + 'static,
) -> Result<RecommendedWatcher, WatchError> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let wrap = |source| WatchError {
        dir: dir.clone(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            let content_event = !matches!(event.kind, notify::EventKind::Access(_));
            if content_event && event.paths.iter().any(|p| is_relevant(p, &name)) {
                on_change();
            }
        }
    })
    .map_err(wrap)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(wrap)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn relevance() {
        let name = OsString::from("onboarding.config.yaml");
        assert!(is_relevant(
            Path::new("/etc/oa/onboarding.config.yaml"),
            &name
        ));
        assert!(is_relevant(Path::new("/etc/oa/..data"), &name));
        assert!(!is_relevant(Path::new("/etc/oa/agent.config.yaml"), &name));
    }

    #[test]
    fn sees_rename_over_the_file_and_ignores_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("onboarding.config.yaml");
        std::fs::write(&file, "a").unwrap();
        let (tx, rx) = mpsc::channel();
        let _w = watch(&file, move || {
            let _ = tx.send(());
        })
        .unwrap();
        std::fs::write(dir.path().join("other.yaml"), "x").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        crate::atomic::write_file(&file, b"b", 0o644).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}
