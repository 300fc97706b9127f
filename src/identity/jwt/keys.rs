//! An issuer's signing keys, parsed from its JWKS (pure).

use std::fmt;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::*;

/// The usable signing keys of one issuer, parsed from a JWKS. Keys for encryption, for other
/// algorithms or too weak are left out (and listed in [`KeySet::skipped`]): a JWKS often
/// carries such keys next to the signing ones.
#[derive(Clone)]
pub struct KeySet {
    pub(super) keys: Vec<VerifyingKey>,
    skipped: Vec<String>,
}

#[derive(Clone)]
pub(super) struct VerifyingKey {
    pub(super) kid: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| format!("{:?}/{:?}", k.kid, k.alg))
                    .collect::<Vec<_>>(),
            )
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// A JWKS document with no usable key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not valid JSON: {0}")]
    NotJson(String),
    #[error("JWKS has no \"keys\" array")]
    NoKeysArray,
    /// Every key was left out (the reasons), or there was none.
    #[error(
        "JWKS has no usable RS256 or ES256 signing key ({})",
        if skipped.is_empty() { "it is empty".to_owned() } else { skipped.join("; ") }
    )]
    NoUsableKey { skipped: Vec<String> },
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Fails when it holds no usable key.
    pub fn from_jwks_json(json: &str) -> Result<KeySet, JwksError> {
        let doc: Value =
            serde_json::from_str(json).map_err(|e| JwksError::NotJson(e.to_string()))?;
        let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
            return Err(JwksError::NoKeysArray);
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let label = entry
                .get("kid")
                .and_then(Value::as_str)
                .map(|k| format!("kid {k:?}"))
                .unwrap_or_else(|| format!("key #{index}"));
            match verifying_key(entry) {
                Ok(key) => keys.push(key),
                Err(why) => skipped.push(format!("{label}: {why}")),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey { skipped });
        }
        Ok(KeySet { keys, skipped })
    }

    /// The key with `kid` for `alg`, if the set has one.
    pub fn key(&self, kid: &str, alg: Algorithm) -> Option<&DecodingKey> {
        self.keys
            .iter()
            .find(|k| k.alg == alg && k.kid.as_deref() == Some(kid))
            .map(|k| &k.key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Keys that were left out, with the reason.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
}

/// Why a JWKS entry was left out.
#[derive(Debug, thiserror::Error)]
enum Skip {
    #[error("not a JWK: {0}")]
    NotJwk(String),
    #[error("use is {0}, not sig")]
    NotSigning(String),
    #[error("bad modulus: {0}")]
    BadModulus(String),
    #[error("RSA key of {0} bits is too short")]
    ShortRsa(usize),
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("not an RSA or P-256 key")]
    KeyType,
    #[error("unusable key: {0}")]
    Unusable(String),
}

fn verifying_key(entry: &Value) -> Result<VerifyingKey, Skip> {
    let jwk: Jwk =
        serde_json::from_value(entry.clone()).map_err(|e| Skip::NotJwk(e.to_string()))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => return Err(Skip::NotSigning(format!("{other:?}"))),
    }
    let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::RS256) | None, AlgorithmParameters::RSA(rsa)) => {
            let bits = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|e| Skip::BadModulus(e.to_string()))?
                .iter()
                .skip_while(|b| **b == 0)
                .count()
                * 8;
            if bits < MIN_RSA_BITS {
                return Err(Skip::ShortRsa(bits));
            }
            Algorithm::RS256
        }
        (Some(KeyAlgorithm::ES256) | None, AlgorithmParameters::EllipticCurve(ec))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        (Some(alg), _) => return Err(Skip::Algorithm(format!("{alg:?}"))),
        (None, _) => return Err(Skip::KeyType),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| Skip::Unusable(e.to_string()))?;
    Ok(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}
