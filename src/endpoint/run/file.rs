//! `serve` over the file store: the plane UID and signing key in the state directory, the
//! crash repair and the directory watch.

use std::path::Path;

use super::{RunError, context, failed, run_endpoint, tls_config};
use crate::endpoint::config::{EndpointConfig, FileStoreSettings};
use crate::endpoint::plane;
use crate::store::file::{self, FileStore, FileStoreConfig, IstioTokenSource};
use crate::store::manifests::{ManifestLimits, Problem};
use crate::token;

/// The file store's settings from the configuration (no `istioToken`: an empty source, the
/// sidecars get an empty token).
pub fn file_store_config(cfg: &EndpointConfig, f: &FileStoreSettings) -> FileStoreConfig {
    FileStoreConfig {
        config_dir: f.config_dir.clone(),
        state_dir: f.state_dir.clone(),
        istio_namespace: cfg.mesh.istio_namespace.clone(),
        istio_token: cfg.istio_token.clone().unwrap_or(IstioTokenSource {
            file: None,
            command: None,
            expiration: None,
        }),
        manifest_limits: ManifestLimits {
            max_file_bytes: f.max_manifest_bytes,
            max_documents: f.max_manifest_documents,
        },
    }
}

pub(super) fn serve(
    cfg: &EndpointConfig,
    f: &FileStoreSettings,
    config_path: &Path,
    dev: bool,
    rt: &tokio::runtime::Runtime,
) -> Result<(), RunError> {
    let state = &f.state_dir;
    std::fs::create_dir_all(state).map_err(context(format!(
        "cannot create state directory {}",
        state.display()
    )))?;

    let plane_uid = plane::plane_uid(cfg.plane_uid.as_deref(), state).map_err(failed)?;
    let key_path = plane::signing_key_path(cfg.token_issuer.signing_key_file.as_deref(), state);
    let key_pem = plane::signing_key(&key_path).map_err(failed)?;
    let tokens = token::SessionTokens::from_pem(
        key_pem.pem(),
        &plane_uid,
        cfg.token_issuer.expiration.as_std(),
    )
    .map_err(context(format!(
        "session signing key {}",
        key_path.display()
    )))?;
    let tls_cfg = tls_config(cfg, config_path, dev, Some(state))?;
    if cfg.istio_token.is_none() {
        tracing::warn!("no istioToken source configured: sidecars get an empty istio-token");
    }

    let (store, problems) = FileStore::open(file_store_config(cfg, f)).map_err(failed)?;
    log_problems(&problems);
    recover_state(&store, rt)?;
    let _watcher = file::watch(store.clone(), |p| {
        tracing::info!("config directory changed; reloaded");
        log_problems(&p);
    })
    .map_err(context("cannot watch the config directory"))?;
    rt.block_on(run_endpoint(
        cfg,
        config_path,
        store,
        plane_uid,
        tokens,
        tls_cfg,
    ))
}

/// Repairs what a crash may have left in the state directory, before serving.
fn recover_state(store: &FileStore, rt: &tokio::runtime::Runtime) -> Result<(), RunError> {
    let r = rt
        .block_on(store.recover())
        .map_err(context("cannot repair the state directory"))?;
    for p in &r.problems {
        tracing::warn!("{p}");
    }
    if r.stale_temps + r.entries_repaired + r.orphans_removed > 0 {
        tracing::info!(
            stale_temps = r.stale_temps,
            entries_repaired = r.entries_repaired,
            orphans_removed = r.orphans_removed,
            "repaired the state directory after an interrupted run"
        );
    }
    Ok(())
}

fn log_problems(problems: &[Problem]) {
    for p in problems {
        if p.is_error {
            tracing::error!("{p}");
        } else {
            tracing::warn!("{p}");
        }
    }
}
