//! `serve` over the Kubernetes store: the plane UID and signing key shared by every replica
//! in a Secret, the watches.

use std::path::Path;

use super::{RunError, context, failed, run_endpoint, tls_config};
use crate::endpoint::config::EndpointConfig;
use crate::store::kube::{self as kube_store, KubeStore, KubeStoreSettings};
use crate::token;

pub(super) fn serve(
    cfg: &EndpointConfig,
    k: &KubeStoreSettings,
    config_path: &Path,
    dev: bool,
    rt: &tokio::runtime::Runtime,
) -> Result<(), RunError> {
    let tls_cfg = tls_config(cfg, config_path, dev, None)?;
    rt.block_on(async {
        let client = kube_store::client(k).await.map_err(failed)?;
        let namespace = client.default_namespace().to_string();
        // Every replica must sign and check session tokens with one key under one plane
        // UID: both live in a Secret of the endpoint's namespace (created once).
        let shared =
            kube_store::plane::load_or_create(&client, &namespace, &k.state_secret, || {
                Ok::<_, token::TokenError>(kube_store::plane::PlaneState {
                    plane_uid: uuid::Uuid::new_v4().to_string(),
                    signing_key_pem: token::generate_signing_key_pem()?,
                })
            })
            .await
            .map_err(failed)?;
        let plane_uid = cfg.plane_uid.clone().unwrap_or(shared.plane_uid);
        let key_pem = match &cfg.token_issuer.signing_key_file {
            Some(p) => std::fs::read_to_string(p).map_err(context(format!(
                "cannot read tokenIssuer.signingKeyFile {}",
                p.display()
            )))?,
            None => shared.signing_key_pem,
        };
        let tokens = token::SessionTokens::from_pem(
            &key_pem,
            &plane_uid,
            cfg.token_issuer.expiration.as_std(),
        )
        .map_err(context(format!(
            "session signing key in Secret {namespace}/{}",
            k.state_secret
        )))?;
        let store = KubeStore::new(client, k, &cfg.mesh.istio_namespace);
        store.start_watches(&cfg.mesh.istio_namespace);
        run_endpoint(cfg, config_path, store, plane_uid, tokens, tls_cfg).await
    })
}
