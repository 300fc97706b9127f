//! What every endpoint replica must share: the plane UID (the audience of credentials and
//! session tokens) and the key that signs session tokens (an agent renews through any
//! replica). The file store keeps them in its state directory; in a cluster they live in one
//! Secret in the endpoint's namespace, created once by whichever replica starts first.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::store::StoreError;

pub const KEY_PLANE_UID: &str = "plane-uid";
pub const KEY_SIGNING_KEY: &str = "session-signing-key.pem";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneState {
    pub plane_uid: String,
    pub signing_key_pem: String,
}

/// The state held in a Secret's data, or what is wrong with it.
/// The plane's Secret cannot be used as it is; each message names the Secret and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaneSecretError {
    #[error(
        "Secret {name} has no key {key:?}; delete the Secret to let the endpoint create it anew (agents then onboard again)"
    )]
    MissingKey { name: String, key: &'static str },
    #[error("Secret {name} key {key:?} is not UTF-8")]
    NotUtf8 { name: String, key: &'static str },
    #[error("Secret {name} key {key:?} is empty")]
    Empty { name: String, key: &'static str },
}

pub fn from_secret_data(
    name: &str,
    data: &BTreeMap<String, ByteString>,
) -> Result<PlaneState, PlaneSecretError> {
    let get = |key: &'static str| -> Result<String, PlaneSecretError> {
        let name = name.to_string();
        let v = data.get(key).ok_or_else(|| PlaneSecretError::MissingKey {
            name: name.clone(),
            key,
        })?;
        String::from_utf8(v.0.clone()).map_err(|_| PlaneSecretError::NotUtf8 { name, key })
    };
    let plane_uid = get(KEY_PLANE_UID)?.trim().to_string();
    if plane_uid.is_empty() {
        return Err(PlaneSecretError::Empty {
            name: name.to_string(),
            key: KEY_PLANE_UID,
        });
    }
    Ok(PlaneState {
        plane_uid,
        signing_key_pem: get(KEY_SIGNING_KEY)?,
    })
}

pub fn to_secret(name: &str, namespace: &str, s: &PlaneState) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "onboarding-endpoint".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([
            (
                KEY_PLANE_UID.to_string(),
                ByteString(s.plane_uid.clone().into_bytes()),
            ),
            (
                KEY_SIGNING_KEY.to_string(),
                ByteString(s.signing_key_pem.clone().into_bytes()),
            ),
        ])),
        ..Default::default()
    }
}

/// Reads the shared state, creating it with `make()` when absent. Two replicas starting at
/// once both try to create; the API server lets one win (AlreadyExists for the other), and
/// the loser reads the winner's, so every replica ends up with the same key and UID.
pub async fn load_or_create<E: std::fmt::Display>(
    client: &Client,
    namespace: &str,
    name: &str,
    make: impl FnOnce() -> Result<PlaneState, E>,
) -> Result<PlaneState, StoreError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |s: Secret| {
        from_secret_data(&format!("{namespace}/{name}"), &s.data.unwrap_or_default())
            .map_err(|e| StoreError::Io(e.to_string()))
    };
    let io = |e: kube::Error| StoreError::Io(format!("Secret {namespace}/{name}: {e}"));
    if let Some(s) = api.get_opt(name).await.map_err(io)? {
        return read(s);
    }
    let state = make().map_err(|e| StoreError::Io(e.to_string()))?;
    match api
        .create(&PostParams::default(), &to_secret(name, namespace, &state))
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "created the plane's shared state");
            Ok(state)
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => read(api.get(name).await.map_err(io)?),
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trip_and_clear_errors() {
        let st = PlaneState {
            plane_uid: "p-1".into(),
            signing_key_pem: "-----BEGIN PRIVATE KEY-----\n".into(),
        };
        let s = to_secret("state", "onboarding", &st);
        assert_eq!(
            from_secret_data("state", s.data.as_ref().unwrap()).unwrap(),
            st
        );
        let mut data = s.data.unwrap();
        data.remove(KEY_SIGNING_KEY);
        let e = from_secret_data("onboarding/state", &data).unwrap_err();
        assert!(
            e.to_string().contains("session-signing-key.pem")
                && e.to_string().contains("onboarding/state"),
            "{e}"
        );
        data.insert(KEY_SIGNING_KEY.into(), ByteString(b"k".to_vec()));
        data.insert(KEY_PLANE_UID.into(), ByteString(b"  ".to_vec()));
        assert!(
            from_secret_data("s", &data)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
