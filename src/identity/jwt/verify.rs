//! Pure verification: read a token without trusting it, pick its issuer, check signature
//! and claims against one issuer's keys and a [`VerifyContext`]. No clock, no network.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use super::keys::VerifyingKey;
use super::*;
use crate::api::identity::JwtIdentity;
use crate::identity::{VerifyContext, VerifyError};

/// What can be read from a token before trusting it: only used to pick the issuer and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedJwt {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub issuer: String,
}

fn b64url(part: &str) -> Result<Vec<u8>, VerifyError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| VerifyError::Malformed(format!("token part is not base64url: {e}")))
}

impl UnverifiedJwt {
    pub fn parse(token: &str) -> Result<UnverifiedJwt, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Malformed(format!(
                "token is {} bytes, more than the {MAX_TOKEN_BYTES} accepted",
                token.len()
            )));
        }
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err(VerifyError::Malformed(format!(
                "a JWT has 3 dot-separated parts, this has {} (an encrypted JWE is not accepted)",
                parts.len()
            )));
        }
        let header: Value = serde_json::from_slice(&b64url(parts[0])?)
            .map_err(|e| VerifyError::Malformed(format!("token header is not JSON: {e}")))?;
        let Some(header) = header.as_object() else {
            return Err(VerifyError::Malformed(
                "token header is not an object".into(),
            ));
        };
        let alg = match header.get("alg").and_then(Value::as_str) {
            Some("RS256") => Algorithm::RS256,
            Some("ES256") => Algorithm::ES256,
            Some(none) if none.eq_ignore_ascii_case("none") => {
                return Err(VerifyError::InvalidSignature(
                    "unsigned token (alg \"none\") refused".into(),
                ));
            }
            Some(hs) if hs.starts_with("HS") => {
                return Err(VerifyError::InvalidSignature(format!(
                    "shared-secret algorithm {hs} refused: only RS256 and ES256 are accepted"
                )));
            }
            Some(other) => {
                return Err(VerifyError::InvalidSignature(format!(
                    "algorithm {other:?} is not accepted: only RS256 and ES256"
                )));
            }
            None => return Err(VerifyError::Malformed("token header has no alg".into())),
        };
        if header.contains_key("crit") {
            return Err(VerifyError::Invalid(
                "token header has critical extensions (crit), none of which is supported".into(),
            ));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => {
                return Err(VerifyError::Malformed(
                    "token header kid is not a string".into(),
                ));
            }
        };
        let claims: Value = serde_json::from_slice(&b64url(parts[1])?)
            .map_err(|e| VerifyError::Malformed(format!("token claims are not JSON: {e}")))?;
        let issuer = match claims.get("iss") {
            Some(Value::String(iss)) => iss.clone(),
            Some(_) => return Err(VerifyError::Malformed("iss claim is not a string".into())),
            None => {
                return Err(VerifyError::Malformed(
                    "token has no iss claim, so no issuer can be trusted for it".into(),
                ));
            }
        };
        Ok(UnverifiedJwt { alg, kid, issuer })
    }
}

/// Why no configured issuer fits a token's `iss`. The caller learns only that its `iss` is
/// not trusted ([`VerifyError::UnknownIssuer`] through `From`); `log_hint` may name a trusted
/// issuer and so goes to the endpoint's log only: an unauthenticated caller must not be able
/// to discover the trusted issuer's URL by sending near misses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerNotTrusted {
    pub iss: String,
    pub log_hint: Option<String>,
}

impl From<IssuerNotTrusted> for VerifyError {
    fn from(e: IssuerNotTrusted) -> VerifyError {
        VerifyError::UnknownIssuer(e.iss)
    }
}

/// Picks the configured issuer whose `issuer` equals `iss` exactly. When only a trailing
/// slash differs, the refusal carries a hint for the operator (the most common
/// misconfiguration).
pub fn select_issuer<'a>(issuers: &'a [Issuer], iss: &str) -> Result<&'a Issuer, IssuerNotTrusted> {
    if let Some(issuer) = issuers.iter().find(|i| i.issuer == iss) {
        return Ok(issuer);
    }
    let near = issuers
        .iter()
        .find(|i| i.issuer.trim_end_matches('/') == iss.trim_end_matches('/'));
    Err(IssuerNotTrusted {
        iss: iss.to_owned(),
        log_hint: near.map(|near| {
            format!(
                "a token's iss {iss:?} differs from the trusted issuer {:?} only by a trailing \
                 slash; `iss` must match the configured issuer exactly, so if this token's \
                 issuer is meant to be trusted, configure it with the token's value",
                near.issuer
            )
        }),
    })
}

/// A token that verified: the identity for the WAR and policy, and the issuer's short name
/// for WAR naming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedJwt {
    pub identity: JwtIdentity,
    pub short_name: String,
    /// The token's `exp`.
    pub expires_at: SystemTime,
}

/// Verifies `token` as issued by `issuer`, whose keys are `keys`, for `ctx.audience` at
/// `ctx.now`. The signature is checked before any claim, so a forged token is reported as
/// such whatever it claims.
pub fn verify_token(
    token: &str,
    issuer: &Issuer,
    keys: &KeySet,
    ctx: &VerifyContext,
) -> Result<VerifiedJwt, VerifyError> {
    let unverified = UnverifiedJwt::parse(token)?;
    if unverified.issuer != issuer.issuer {
        return Err(VerifyError::UnknownIssuer(format!(
            "{} (this token was checked against {})",
            unverified.issuer, issuer.issuer
        )));
    }
    let claims = verify_signature(token, &unverified, keys)?;
    check_claims(&claims, issuer, ctx)
}

fn verify_signature(
    token: &str,
    unverified: &UnverifiedJwt,
    keys: &KeySet,
) -> Result<Value, VerifyError> {
    let candidates: Vec<&VerifyingKey> = match &unverified.kid {
        Some(kid) => {
            let with_kid: Vec<&VerifyingKey> = keys
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if with_kid.is_empty() {
                return Err(VerifyError::InvalidSignature(format!(
                    "the issuer has no signing key with kid {kid:?}"
                )));
            }
            if !with_kid.iter().any(|k| k.alg == unverified.alg) {
                return Err(VerifyError::InvalidSignature(format!(
                    "key {kid:?} is for {:?} but the token says {:?}",
                    with_kid[0].alg, unverified.alg
                )));
            }
            with_kid
        }
        None => keys.keys.iter().collect(),
    };
    let mut validation = Validation::new(unverified.alg);
    // Only the signature here: time and audience are checked against the context's clock
    // below (jsonwebtoken would read the system clock).
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let mut tried = 0;
    for key in candidates.into_iter().filter(|k| k.alg == unverified.alg) {
        tried += 1;
        match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature
                | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_)
                | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => continue,
                jsonwebtoken::errors::ErrorKind::Base64(_)
                | jsonwebtoken::errors::ErrorKind::Json(_)
                | jsonwebtoken::errors::ErrorKind::Utf8(_)
                | jsonwebtoken::errors::ErrorKind::InvalidToken => {
                    return Err(VerifyError::Malformed(e.to_string()));
                }
                _ => return Err(VerifyError::Invalid(e.to_string())),
            },
        }
    }
    Err(VerifyError::InvalidSignature(
        match (tried, &unverified.kid) {
            (0, _) => format!("the issuer publishes no {:?} key", unverified.alg),
            (_, Some(kid)) => format!("signature does not match key {kid:?}"),
            (n, None) => format!(
                "signature matches none of the issuer's {n} {:?} keys",
                unverified.alg
            ),
        },
    ))
}

fn numeric_date(claims: &Value, name: &str) -> Result<Option<i64>, VerifyError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or_else(|| VerifyError::Malformed(format!("{name} claim is out of range"))),
        Some(_) => Err(VerifyError::Malformed(format!(
            "{name} claim is not a number of seconds"
        ))),
    }
}

fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{seconds} (unix seconds)"))
}

fn check_claims(
    claims: &Value,
    issuer: &Issuer,
    ctx: &VerifyContext,
) -> Result<VerifiedJwt, VerifyError> {
    let now = crate::clock::unix(ctx.now);
    let Some(exp) = numeric_date(claims, "exp")? else {
        return Err(VerifyError::Invalid(
            "token has no exp claim; tokens without an expiry are not accepted".into(),
        ));
    };
    if now > exp.saturating_add(LEEWAY_SECONDS) {
        return Err(VerifyError::Expired(format!(
            "token expired at {} (endpoint time {}, {LEEWAY_SECONDS}s leeway)",
            rfc3339(exp),
            rfc3339(now)
        )));
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now.saturating_add(LEEWAY_SECONDS) < nbf
    {
        return Err(VerifyError::Expired(format!(
            "token is not valid before {} (endpoint time {}, {LEEWAY_SECONDS}s leeway): check \
             the clocks of the issuer and the endpoint",
            rfc3339(nbf),
            rfc3339(now)
        )));
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&ctx.audience.as_str()) {
        return Err(VerifyError::WrongAudience {
            expected: ctx.audience.clone(),
            found: if audiences.is_empty() {
                "(none)".to_owned()
            } else {
                audiences.join(", ")
            },
        });
    }
    let subject = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        _ => {
            return Err(VerifyError::Invalid(
                "token has no sub claim: the host cannot be identified".into(),
            ));
        }
    };
    let attributes = match &issuer.attributes {
        Some(path) => extract_attributes(claims, path)?,
        None => BTreeMap::new(),
    };
    let expires_at = if exp >= 0 {
        UNIX_EPOCH + Duration::from_secs(exp.unsigned_abs())
    } else {
        UNIX_EPOCH
    };
    Ok(VerifiedJwt {
        identity: JwtIdentity {
            issuer: issuer.issuer.clone(),
            subject,
            attributes,
        },
        short_name: issuer.short_name.clone(),
        expires_at,
    })
}
