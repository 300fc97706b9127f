//! OIDC JWTs from trusted issuers (hosts on premises): the endpoint half.
//!
//! The pure core is [`UnverifiedJwt::parse`] (read the header and `iss` without trusting
//! them, only to pick an issuer), [`select_issuer`] and [`verify_token`] (signature and
//! claims against one issuer's [`KeySet`] and a [`VerifyContext`]); it never reads the clock
//! or the network. The shell is [`JwtVerifier`]: it holds each issuer's keys, loaded at start
//! (inline `jwks`, `jwksFile`) or fetched over verified TLS (`jwksUri`, or OIDC discovery when
//! no source is given), refreshed when a token names an unknown `kid` (rate-limited) or when
//! the cached set is old.
//!
//! Accepted tokens: RS256 or ES256 only (never `none` or a shared-secret `HS*`); `iss` equal
//! to a configured issuer byte for byte; `aud` (a string or an array) containing the plane
//! UID; `exp` required and `nbf` honoured, both with [`LEEWAY_SECONDS`] of clock skew; a
//! non-empty `sub`. The header's `typ` is not checked (RFC 9068 access tokens say `at+jwt`,
//! ID tokens `JWT`); a `crit` header is refused because no extension is understood.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{VerifyContext, VerifyError};
use crate::api::identity::JwtIdentity;

/// Clock skew tolerated on `exp` and `nbf`, in seconds (shared by every platform).
pub const LEEWAY_SECONDS: i64 = super::CLOCK_LEEWAY_SECS;

/// Longer tokens are refused before any parsing; real OIDC tokens are a few KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// RSA keys shorter than this are not trusted, whatever the issuer publishes.
const MIN_RSA_BITS: usize = 2048;

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// One trusted issuer, as written in the endpoint's config under
/// `authentication.jwt.issuers` (TSB's `JwtIssuer`, plus `jwksFile` and `caFile`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerConfig {
    /// `https://` URL; a token's `iss` must equal it exactly.
    pub issuer: String,
    /// Goes into WorkloadAutoRegistration names: `^[0-9a-z]+(-[0-9a-z]+)*$`.
    pub short_name: String,
    /// Inline JWKS JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// A file holding the JWKS JSON, read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Where to fetch the JWKS (`https://`). With no key source at all, the endpoint uses
    /// OIDC discovery: `<issuer>/.well-known/openid-configuration` -> `jwks_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// PEM CA certificates that the issuer's TLS server certificate must chain to, for
    /// `jwksUri` and discovery. When set, these replace the public (webpki) roots for this
    /// issuer: put both in the file to trust both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_fields: Option<TokenFields>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenFields {
    /// Where the host's attributes (for OnboardingPolicy matching) are in the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<JsonPathField>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonPathField {
    /// See [`ClaimPath`] for the supported subset of JSONPath.
    pub json_path: String,
}

/// A trusted issuer's configuration is unusable. The message names the issuer and the field.
#[derive(Debug, thiserror::Error)]
pub enum IssuerConfigError {
    #[error("trusted JWT issuer {issuer:?}: {problem}")]
    Invalid { issuer: String, problem: String },
    #[error("trusted JWT issuer {issuer:?}: cannot read {field} {path}: {source}")]
    Read {
        issuer: String,
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(issuer: &str, problem: impl Into<String>) -> IssuerConfigError {
    IssuerConfigError::Invalid {
        issuer: issuer.to_owned(),
        problem: problem.into(),
    }
}

/// A validated issuer: what the pure checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    pub issuer: String,
    pub short_name: String,
    pub attributes: Option<ClaimPath>,
}

/// Where the keys of an issuer come from, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySourceConfig {
    Inline(String),
    File(PathBuf),
    Uri(String),
    Discovery,
}

impl IssuerConfig {
    /// Checks the fields (no I/O) and returns the issuer and its key source.
    pub fn validate(&self) -> Result<(Issuer, KeySourceConfig), IssuerConfigError> {
        let name = self.issuer.as_str();
        check_https_url(&self.issuer).map_err(|p| invalid(name, format!("issuer: {p}")))?;
        if !is_short_name(&self.short_name) {
            return Err(invalid(
                name,
                format!(
                    "shortName {:?} must match ^[0-9a-z]+(-[0-9a-z]+)*$ (it becomes part of \
                     WorkloadAutoRegistration names)",
                    self.short_name
                ),
            ));
        }
        let sources: Vec<&str> = [
            self.jwks.as_ref().map(|_| "jwks"),
            self.jwks_file.as_ref().map(|_| "jwksFile"),
            self.jwks_uri.as_ref().map(|_| "jwksUri"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sources.len() > 1 {
            return Err(invalid(
                name,
                format!(
                    "set at most one of jwks, jwksFile, jwksUri (found {}); none means OIDC \
                     discovery",
                    sources.join(" and ")
                ),
            ));
        }
        let source = match (&self.jwks, &self.jwks_file, &self.jwks_uri) {
            (Some(inline), _, _) => KeySourceConfig::Inline(inline.clone()),
            (_, Some(path), _) => KeySourceConfig::File(path.clone()),
            (_, _, Some(uri)) => {
                check_https_url(uri).map_err(|p| invalid(name, format!("jwksUri: {p}")))?;
                KeySourceConfig::Uri(uri.clone())
            }
            _ => KeySourceConfig::Discovery,
        };
        if self.ca_file.is_some()
            && matches!(
                source,
                KeySourceConfig::Inline(_) | KeySourceConfig::File(_)
            )
        {
            return Err(invalid(
                name,
                "caFile is only used to fetch keys over TLS (jwksUri or discovery); remove it \
                 or the static jwks/jwksFile",
            ));
        }
        let attributes = match self
            .token_fields
            .as_ref()
            .and_then(|f| f.attributes.as_ref())
        {
            Some(field) => Some(
                ClaimPath::parse(&field.json_path)
                    .map_err(|p| invalid(name, format!("tokenFields.attributes.jsonPath: {p}")))?,
            ),
            None => None,
        };
        Ok((
            Issuer {
                issuer: self.issuer.clone(),
                short_name: self.short_name.clone(),
                attributes,
            },
            source,
        ))
    }
}

/// Validates every issuer and that no two share an `issuer` or a `shortName`.
pub fn validate_issuers(
    configs: &[IssuerConfig],
) -> Result<Vec<(Issuer, KeySourceConfig)>, IssuerConfigError> {
    let mut issuers = HashSet::new();
    let mut short_names = HashSet::new();
    let mut out = Vec::with_capacity(configs.len());
    for config in configs {
        let validated = config.validate()?;
        if !issuers.insert(config.issuer.clone()) {
            return Err(invalid(&config.issuer, "listed twice"));
        }
        if !short_names.insert(config.short_name.clone()) {
            return Err(invalid(
                &config.issuer,
                format!(
                    "shortName {:?} is already used by another issuer; WAR names would collide",
                    config.short_name
                ),
            ));
        }
        out.push(validated);
    }
    Ok(out)
}

fn check_https_url(s: &str) -> Result<(), String> {
    let Some(rest) = s.strip_prefix("https://") else {
        return Err(format!("{s:?} must be an https:// URL"));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if s.chars().any(|c| c.is_whitespace() || c == '?' || c == '#') {
        return Err(format!(
            "{s:?} must not contain whitespace, a query or a fragment"
        ));
    }
    http::Uri::try_from(s)
        .map(|_| ())
        .map_err(|e| format!("{s:?} is not a valid URL: {e}"))
}

fn is_short_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        })
}

/// The supported subset of JSONPath for picking a claim: an optional `$`, then one or more
/// members, each `.name` (letters, digits, `_`, `-`, `:`) or `['any name']` / `["any name"]`
/// (for namespaced claims such as `https://example.com/attributes`). No wildcards, indexes
/// or filters. Examples: `.custom_attributes`, `$.ext.attributes`, `$['https://x.io/attrs']`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    source: String,
    members: Vec<String>,
}

impl ClaimPath {
    pub fn parse(path: &str) -> Result<ClaimPath, String> {
        let rest = path.strip_prefix('$').unwrap_or(path);
        if !path.starts_with(['$', '.']) {
            return Err(format!("{path:?} must start with `.` or `$`"));
        }
        let mut members = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':')))
                    .unwrap_or(after.len());
                if end == 0 {
                    return Err(format!(
                        "{path:?}: expected a member name after `.` (use ['...'] for other \
                         characters)"
                    ));
                }
                members.push(after[..end].to_owned());
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let quote = after.chars().next().filter(|c| *c == '\'' || *c == '"');
                let Some(quote) = quote else {
                    return Err(format!(
                        "{path:?}: only quoted members like ['name'] are supported in brackets"
                    ));
                };
                let body = &after[1..];
                let Some(close) = body.find(quote) else {
                    return Err(format!("{path:?}: unterminated quoted member"));
                };
                let Some(next) = body[close + 1..].strip_prefix(']') else {
                    return Err(format!("{path:?}: expected `]` after the quoted member"));
                };
                if close == 0 {
                    return Err(format!("{path:?}: empty member name"));
                }
                members.push(body[..close].to_owned());
                rest = next;
            } else {
                return Err(format!(
                    "{path:?}: unsupported syntax at {rest:?} (supported: .name and ['name'])"
                ));
            }
        }
        if members.is_empty() {
            return Err(format!("{path:?} names no claim"));
        }
        Ok(ClaimPath {
            source: path.to_owned(),
            members,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    fn lookup<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        self.members
            .iter()
            .try_fold(claims, |value, member| value.as_object()?.get(member))
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Attributes for policy matching: the JSON object at `path`, flattened to strings. Strings
/// are kept, numbers and booleans written as JSON, `null` dropped, nested objects and arrays
/// skipped (a policy cannot match them). A missing claim gives no attributes; a claim that is
/// not an object is refused, because the issuer then does not send what the config expects.
pub fn extract_attributes(
    claims: &Value,
    path: &ClaimPath,
) -> Result<BTreeMap<String, String>, VerifyError> {
    let Some(value) = path.lookup(claims) else {
        return Ok(BTreeMap::new());
    };
    let Some(object) = value.as_object() else {
        return Err(VerifyError::Invalid(format!(
            "the attributes claim at {path} is {}, expected an object of strings \
             (tokenFields.attributes.jsonPath)",
            json_kind(value)
        )));
    };
    let mut attributes = BTreeMap::new();
    for (key, value) in object {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            Value::Array(_) | Value::Object(_) => {
                tracing::debug!(attribute = %key, "skipping a nested attribute value");
                continue;
            }
        };
        attributes.insert(key.clone(), text);
    }
    Ok(attributes)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

/// The usable signing keys of one issuer, parsed from a JWKS. Keys for encryption, for other
/// algorithms or too weak are left out (and listed in [`KeySet::skipped`]): a JWKS often
/// carries such keys next to the signing ones.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
    skipped: Vec<String>,
}

#[derive(Clone)]
struct VerifyingKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
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

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Fails when it holds no usable key.
    pub fn from_jwks_json(json: &str) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_str(json).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
        let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
            return Err("JWKS has no \"keys\" array".to_owned());
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
            return Err(format!(
                "JWKS has no usable RS256 or ES256 signing key ({})",
                if skipped.is_empty() {
                    "it is empty".to_owned()
                } else {
                    skipped.join("; ")
                }
            ));
        }
        Ok(KeySet { keys, skipped })
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

fn verifying_key(entry: &Value) -> Result<VerifyingKey, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => return Err(format!("use is {other:?}, not sig")),
    }
    let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::RS256) | None, AlgorithmParameters::RSA(rsa)) => {
            let bits = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|e| format!("bad modulus: {e}"))?
                .iter()
                .skip_while(|b| **b == 0)
                .count()
                * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA key of {bits} bits is too short"));
            }
            Algorithm::RS256
        }
        (Some(KeyAlgorithm::ES256) | None, AlgorithmParameters::EllipticCurve(ec))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        (Some(alg), _) => return Err(format!("algorithm {alg:?} is not accepted")),
        (None, _) => return Err("not an RSA or P-256 key".to_owned()),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

// ---------------------------------------------------------------------------------------
// Pure verification
// ---------------------------------------------------------------------------------------

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

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
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
    let now = unix_seconds(ctx.now);
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

// ---------------------------------------------------------------------------------------
// Shell: key sources, fetching, caching
// ---------------------------------------------------------------------------------------

/// How often keys may be fetched from an issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// A token with an unknown `kid` refetches the JWKS at most this often per issuer, so
    /// made-up kids cannot turn the endpoint into a load generator against the issuer.
    pub min_interval: Duration,
    /// After a failed fetch with no keys cached, wait this long before trying again.
    pub retry_after_failure: Duration,
    /// Cached keys older than this are refetched (kept if the fetch fails), so keys the
    /// issuer withdrew stop being trusted.
    pub max_age: Duration,
    /// Whole-request timeout of one HTTP call.
    pub http_timeout: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            min_interval: Duration::from_secs(30),
            retry_after_failure: Duration::from_secs(5),
            max_age: Duration::from_secs(3600),
            http_timeout: Duration::from_secs(10),
        }
    }
}

/// Fetches an issuer's current key set. The production one speaks HTTPS; unit tests count
/// and script fetches.
trait FetchKeys: Send + Sync {
    fn fetch(&self) -> Result<KeySet, String>;
}

struct HttpKeys {
    agent: ureq::Agent,
    issuer: String,
    /// `None`: OIDC discovery.
    jwks_uri: Option<String>,
}

const MAX_DOCUMENT_BYTES: u64 = 1024 * 1024;

impl HttpKeys {
    fn get(&self, url: &str) -> Result<String, String> {
        let mut response = self
            .agent
            .get(url)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        response
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT_BYTES)
            .read_to_string()
            .map_err(|e| format!("GET {url}: reading the body: {e}"))
    }

    fn discover_jwks_uri(&self) -> Result<String, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let doc: Value = serde_json::from_str(&self.get(&url)?)
            .map_err(|e| format!("{url}: not a JSON document: {e}"))?;
        let announced = doc
            .get("issuer")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if announced != self.issuer {
            // OIDC Discovery §4.3: a mismatch means the document is for another issuer.
            return Err(format!(
                "{url} announces issuer {announced:?}, not {:?}; fix the configured issuer",
                self.issuer
            ));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{url} has no jwks_uri"))?;
        check_https_url(jwks_uri).map_err(|e| format!("{url}: jwks_uri {e}"))?;
        Ok(jwks_uri.to_owned())
    }
}

impl FetchKeys for HttpKeys {
    fn fetch(&self) -> Result<KeySet, String> {
        let uri = match &self.jwks_uri {
            Some(uri) => uri.clone(),
            None => self.discover_jwks_uri()?,
        };
        KeySet::from_jwks_json(&self.get(&uri)?).map_err(|e| format!("{uri}: {e}"))
    }
}

fn http_agent(
    issuer: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<ureq::Agent, IssuerConfigError> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| IssuerConfigError::Read {
            issuer: issuer.to_owned(),
            field: "caFile",
            path: path.to_owned(),
            source,
        })?;
        let mut roots = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => roots.push(cert),
                Ok(_) => {}
                Err(e) => {
                    return Err(invalid(
                        issuer,
                        format!("caFile {}: bad PEM: {e}", path.display()),
                    ));
                }
            }
        }
        if roots.is_empty() {
            return Err(invalid(
                issuer,
                format!("caFile {} holds no PEM certificate", path.display()),
            ));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)));
    }
    Ok(ureq::Agent::config_builder()
        .tls_config(tls.build())
        .https_only(true)
        .http_status_as_error(false)
        .max_redirects(3)
        .timeout_global(Some(timeout))
        .user_agent(concat!(
            "workload-onboarding-endpoint/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .into())
}

struct IssuerEntry {
    issuer: Issuer,
    /// `None`: keys are fixed (inline or file) and loaded at start.
    fetcher: Option<Box<dyn FetchKeys>>,
    keys: RwLock<Option<Cached>>,
    fetch: Mutex<FetchState>,
}

#[derive(Clone)]
struct Cached {
    keys: Arc<KeySet>,
    /// `None` for fixed keys, which never go stale.
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    attempts: u64,
}

struct Inner {
    issuers: Vec<IssuerEntry>,
    plain: Vec<Issuer>,
    policy: RefreshPolicy,
}

/// Verifies OIDC JWTs against the configured issuers, fetching their keys as needed. Cheap
/// to clone; share one per endpoint.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuers", &self.inner.plain)
            .finish()
    }
}

impl JwtVerifier {
    /// Validates the issuers and loads static keys (inline, files). Does no network I/O:
    /// remote keys are fetched on first use (or by [`JwtVerifier::prefetch`]).
    pub fn new(configs: &[IssuerConfig]) -> Result<JwtVerifier, IssuerConfigError> {
        Self::with_policy(configs, RefreshPolicy::default())
    }

    pub fn with_policy(
        configs: &[IssuerConfig],
        policy: RefreshPolicy,
    ) -> Result<JwtVerifier, IssuerConfigError> {
        let mut issuers = Vec::new();
        for ((issuer, source), config) in validate_issuers(configs)?.into_iter().zip(configs) {
            let name = issuer.issuer.clone();
            let (keys, fetcher): (Option<Arc<KeySet>>, Option<Box<dyn FetchKeys>>) = match source {
                KeySourceConfig::Inline(json) => {
                    let keys = KeySet::from_jwks_json(&json)
                        .map_err(|e| invalid(&name, format!("jwks: {e}")))?;
                    (Some(Arc::new(keys)), None)
                }
                KeySourceConfig::File(path) => {
                    let json = std::fs::read_to_string(&path).map_err(|source| {
                        IssuerConfigError::Read {
                            issuer: name.clone(),
                            field: "jwksFile",
                            path: path.clone(),
                            source,
                        }
                    })?;
                    let keys = KeySet::from_jwks_json(&json)
                        .map_err(|e| invalid(&name, format!("jwksFile {}: {e}", path.display())))?;
                    (Some(Arc::new(keys)), None)
                }
                KeySourceConfig::Uri(uri) => {
                    let agent = http_agent(&name, config.ca_file.as_deref(), policy.http_timeout)?;
                    let fetcher = HttpKeys {
                        agent,
                        issuer: name.clone(),
                        jwks_uri: Some(uri),
                    };
                    (None, Some(Box::new(fetcher) as Box<dyn FetchKeys>))
                }
                KeySourceConfig::Discovery => {
                    let agent = http_agent(&name, config.ca_file.as_deref(), policy.http_timeout)?;
                    let fetcher = HttpKeys {
                        agent,
                        issuer: name.clone(),
                        jwks_uri: None,
                    };
                    (None, Some(Box::new(fetcher) as Box<dyn FetchKeys>))
                }
            };
            if let Some(keys) = &keys
                && !keys.skipped().is_empty()
            {
                tracing::info!(issuer = %name, skipped = ?keys.skipped(), "JWKS keys left out");
            }
            issuers.push(IssuerEntry {
                issuer,
                fetcher,
                keys: RwLock::new(keys.map(|keys| Cached {
                    keys,
                    fetched_at: None,
                })),
                fetch: Mutex::new(FetchState::default()),
            });
        }
        Ok(Self::from_entries(issuers, policy))
    }

    fn from_entries(issuers: Vec<IssuerEntry>, policy: RefreshPolicy) -> JwtVerifier {
        let plain = issuers.iter().map(|e| e.issuer.clone()).collect();
        JwtVerifier {
            inner: Arc::new(Inner {
                issuers,
                plain,
                policy,
            }),
        }
    }

    /// The configured issuers, in config order.
    pub fn issuers(&self) -> &[Issuer] {
        &self.inner.plain
    }

    /// How many times the keys of `issuer` were fetched over the network (for metrics and
    /// tests); `None` for an unknown issuer.
    pub fn key_fetches(&self, issuer: &str) -> Option<u64> {
        let entry = self
            .inner
            .issuers
            .iter()
            .find(|e| e.issuer.issuer == issuer)?;
        Some(lock(&entry.fetch).attempts)
    }

    /// Fetches the keys of every remote issuer that has none yet. Returns the failures
    /// (issuer, reason); tokens from those issuers are answered `Unavailable` until a fetch
    /// succeeds.
    pub fn prefetch(&self) -> Vec<(String, String)> {
        let mut failures = Vec::new();
        for entry in &self.inner.issuers {
            if entry.fetcher.is_some()
                && let Err(e) = self.keys_for(entry, None)
            {
                failures.push((entry.issuer.issuer.clone(), e.to_string()));
            }
        }
        failures
    }

    /// Verifies a token, fetching keys if needed. Blocks on network I/O: from async code use
    /// [`JwtVerifier::verify`].
    pub fn verify_blocking(
        &self,
        token: &str,
        ctx: &VerifyContext,
    ) -> Result<VerifiedJwt, VerifyError> {
        let unverified = UnverifiedJwt::parse(token)?;
        // Only a configured issuer is ever contacted: the token's `iss` merely selects one.
        let issuer = select_issuer(&self.inner.plain, &unverified.issuer).map_err(|e| {
            if let Some(hint) = &e.log_hint {
                tracing::warn!("{hint}");
            }
            VerifyError::from(e)
        })?;
        let entry = self
            .inner
            .issuers
            .iter()
            .find(|e| e.issuer.issuer == issuer.issuer)
            .ok_or_else(|| VerifyError::UnknownIssuer(unverified.issuer.clone()))?;
        let keys = self.keys_for(entry, unverified.kid.as_deref())?;
        verify_token(token, &entry.issuer, &keys, ctx)
    }

    /// [`JwtVerifier::verify_blocking`] on tokio's blocking pool.
    pub async fn verify(
        &self,
        token: &str,
        ctx: &VerifyContext,
    ) -> Result<VerifiedJwt, VerifyError> {
        let this = self.clone();
        let token = token.to_owned();
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || this.verify_blocking(&token, &ctx))
            .await
            .map_err(|e| VerifyError::Unavailable(format!("JWT verification task failed: {e}")))?
    }

    /// The keys to check a token with `kid` against: cached ones when they know the kid and
    /// are fresh, otherwise refetched within the rate limit.
    fn keys_for(&self, entry: &IssuerEntry, kid: Option<&str>) -> Result<Arc<KeySet>, VerifyError> {
        let policy = &self.inner.policy;
        let fits = |c: &Cached| kid.is_none_or(|kid| c.keys.has_kid(kid));
        let fresh = |c: &Cached| c.fetched_at.is_none_or(|at| at.elapsed() < policy.max_age);
        let Some(fetcher) = &entry.fetcher else {
            return read(&entry.keys)
                .as_ref()
                .map(|c| c.keys.clone())
                .ok_or_else(|| {
                    VerifyError::Unavailable(format!("no keys for issuer {}", entry.issuer.issuer))
                });
        };
        if let Some(c) = read(&entry.keys).as_ref()
            && fits(c)
            && fresh(c)
        {
            return Ok(c.keys.clone());
        }
        // One fetch at a time per issuer; whoever waited here rechecks first.
        let mut state = lock(&entry.fetch);
        let cached = read(&entry.keys).clone();
        if let Some(c) = &cached
            && fits(c)
            && fresh(c)
        {
            return Ok(c.keys.clone());
        }
        let wait = if cached.is_some() {
            policy.min_interval
        } else {
            policy.retry_after_failure
        };
        if let Some(last) = state.last_attempt
            && last.elapsed() < wait
        {
            return match cached {
                // An unknown kid within the rate limit: verification reports the missing key.
                Some(c) => Ok(c.keys),
                None => Err(VerifyError::Unavailable(format!(
                    "keys of issuer {} could not be fetched: {}",
                    entry.issuer.issuer,
                    state.last_error.as_deref().unwrap_or("unknown error")
                ))),
            };
        }
        state.last_attempt = Some(Instant::now());
        state.attempts += 1;
        match fetcher.fetch() {
            Ok(keys) => {
                tracing::info!(
                    issuer = %entry.issuer.issuer,
                    keys = keys.len(),
                    skipped = ?keys.skipped(),
                    "fetched issuer keys"
                );
                let keys = Arc::new(keys);
                *write(&entry.keys) = Some(Cached {
                    keys: keys.clone(),
                    fetched_at: Some(Instant::now()),
                });
                state.last_error = None;
                Ok(keys)
            }
            Err(e) => {
                tracing::warn!(issuer = %entry.issuer.issuer, error = %e, "fetching issuer keys failed");
                state.last_error = Some(e.clone());
                match cached {
                    // Stale keys beat no keys while the issuer is unreachable.
                    Some(c) => Ok(c.keys),
                    None => Err(VerifyError::Unavailable(format!(
                        "keys of issuer {} could not be fetched: {e}",
                        entry.issuer.issuer
                    ))),
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const ISS: &str = "https://idp.example.corp";
    const PLANE: &str = "plane-uid-123";
    const NOW: u64 = 1_800_000_000;
    const JWKS: &str = include_str!("../../testdata/jwt/jwks.json");

    fn pem(name: &str) -> &'static str {
        match name {
            "trusted-rs256" => include_str!("../../testdata/jwt/trusted-rs256.key.pem"),
            "trusted-es256" => include_str!("../../testdata/jwt/trusted-es256.key.pem"),
            "attacker-rs256" => include_str!("../../testdata/jwt/attacker-rs256.key.pem"),
            "attacker-es256" => include_str!("../../testdata/jwt/attacker-es256.key.pem"),
            other => panic!("no test key {other}"),
        }
    }

    fn sign(key: &str, kid: Option<&str>, claims: &Value) -> String {
        let (alg, encoding) = if key.ends_with("rs256") {
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(pem(key).as_bytes()).expect("test RSA key"),
            )
        } else {
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(pem(key).as_bytes()).expect("test EC key"),
            )
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &encoding).expect("signing")
    }

    fn claims() -> Value {
        json!({
            "iss": ISS, "sub": "vm-0001", "aud": PLANE,
            "iat": NOW, "exp": NOW + 600,
            "custom_attributes": {"region": "us-east", "rack": 7, "prod": true, "none": null,
                                  "nested": {"a": "b"}, "list": ["x"]},
        })
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn config() -> IssuerConfig {
        IssuerConfig {
            issuer: ISS.into(),
            short_name: "corp".into(),
            jwks: Some(JWKS.into()),
            jwks_file: None,
            jwks_uri: None,
            ca_file: None,
            token_fields: Some(TokenFields {
                attributes: Some(JsonPathField {
                    json_path: ".custom_attributes".into(),
                }),
            }),
        }
    }

    fn ctx_at(now: u64) -> VerifyContext {
        VerifyContext {
            audience: PLANE.into(),
            now: UNIX_EPOCH + Duration::from_secs(now),
            peer_ip: None,
        }
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&[config()]).expect("test issuer config")
    }

    fn check(token: &str) -> Result<VerifiedJwt, VerifyError> {
        verifier().verify_blocking(token, &ctx_at(NOW))
    }

    #[test]
    fn valid_rs256_and_es256_tokens_verify() {
        for key in ["trusted-rs256", "trusted-es256"] {
            let verified = check(&sign(key, Some(key), &claims())).expect(key);
            assert_eq!(verified.identity.issuer, ISS);
            assert_eq!(verified.identity.subject, "vm-0001");
            assert_eq!(verified.short_name, "corp");
            assert_eq!(
                verified.expires_at,
                UNIX_EPOCH + Duration::from_secs(NOW + 600)
            );
        }
    }

    #[test]
    fn token_without_kid_is_checked_against_keys_of_its_algorithm() {
        check(&sign("trusted-es256", None, &claims())).expect("es256 without kid");
        let forged = check(&sign("attacker-rs256", None, &claims()));
        assert!(
            matches!(forged, Err(VerifyError::InvalidSignature(_))),
            "{forged:?}"
        );
    }

    #[test]
    fn audience_array_containing_the_plane_is_accepted() {
        let token = sign(
            "trusted-rs256",
            Some("trusted-rs256"),
            &with(claims(), "aud", json!(["other", PLANE])),
        );
        check(&token).expect("aud array");
    }

    #[test]
    fn each_failure_has_its_own_error() {
        let wrong_issuer = sign(
            "trusted-rs256",
            Some("trusted-rs256"),
            &with(claims(), "iss", json!("https://evil.example")),
        );
        let wrong_audience = sign(
            "trusted-rs256",
            Some("trusted-rs256"),
            &with(claims(), "aud", json!("another-plane")),
        );
        let expired = sign(
            "trusted-es256",
            Some("trusted-es256"),
            &with(claims(), "exp", json!(NOW - 61)),
        );
        let forged = sign("attacker-rs256", Some("trusted-rs256"), &claims());
        let forged_ec = sign("attacker-es256", Some("trusted-es256"), &claims());

        assert_eq!(
            check(&wrong_issuer),
            Err(VerifyError::UnknownIssuer("https://evil.example".into()))
        );
        assert_eq!(
            check(&wrong_audience),
            Err(VerifyError::WrongAudience {
                expected: PLANE.into(),
                found: "another-plane".into()
            })
        );
        assert!(matches!(check(&expired), Err(VerifyError::Expired(m)) if m.contains("expired")));
        assert!(matches!(
            check(&forged),
            Err(VerifyError::InvalidSignature(_))
        ));
        assert!(matches!(
            check(&forged_ec),
            Err(VerifyError::InvalidSignature(_))
        ));
        let codes: HashSet<_> = [&wrong_issuer, &wrong_audience, &expired, &forged]
            .iter()
            .map(|t| check(t).expect_err("refused").code())
            .collect();
        assert_eq!(codes.len(), 4, "four distinct error codes");
    }

    #[test]
    fn forged_signature_is_reported_whatever_the_claims_say() {
        let forged = sign(
            "attacker-es256",
            Some("trusted-es256"),
            &with(claims(), "exp", json!(NOW - 3600)),
        );
        assert!(matches!(
            check(&forged),
            Err(VerifyError::InvalidSignature(_))
        ));
    }

    #[test]
    fn expiry_and_not_before_allow_a_minute_of_skew() {
        let key = Some("trusted-rs256");
        let just_expired = sign(
            "trusted-rs256",
            key,
            &with(claims(), "exp", json!(NOW - 30)),
        );
        check(&just_expired).expect("within leeway");
        let future = sign(
            "trusted-rs256",
            key,
            &with(claims(), "nbf", json!(NOW + 120)),
        );
        assert!(
            matches!(check(&future), Err(VerifyError::Expired(m)) if m.contains("not valid before"))
        );
        let soon = sign(
            "trusted-rs256",
            key,
            &with(claims(), "nbf", json!(NOW + 30)),
        );
        check(&soon).expect("nbf within leeway");
        let no_exp = {
            let mut c = claims();
            c.as_object_mut().expect("object").remove("exp");
            sign("trusted-rs256", key, &c)
        };
        assert!(matches!(check(&no_exp), Err(VerifyError::Invalid(_))));
    }

    #[test]
    fn the_context_clock_is_used_not_the_system_clock() {
        // Expired long ago by the system clock, valid at the context's time.
        let old = json!({"iss": ISS, "sub": "vm", "aud": PLANE, "exp": 1_000_000_600});
        let token = sign("trusted-rs256", Some("trusted-rs256"), &old);
        verifier()
            .verify_blocking(&token, &ctx_at(1_000_000_000))
            .expect("valid at ctx.now");
    }

    #[test]
    fn unsigned_and_shared_secret_tokens_are_refused() {
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims()));
        assert!(
            matches!(check(&none), Err(VerifyError::InvalidSignature(m)) if m.contains("none"))
        );
        // HS256 with the issuer's public key as the "secret": the classic algorithm confusion.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(JWKS.as_bytes()),
        )
        .expect("hs256");
        assert!(matches!(check(&hs), Err(VerifyError::InvalidSignature(m)) if m.contains("HS256")));
        // An RS256 kid presented with an ES256 header.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("trusted-rs256".into());
        let confused = jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_ec_pem(pem("trusted-es256").as_bytes()).expect("ec"),
        )
        .expect("sign");
        assert!(matches!(
            check(&confused),
            Err(VerifyError::InvalidSignature(_))
        ));
    }

    #[test]
    fn malformed_tokens() {
        for token in ["", "abc", "a.b", "a.b.c.d.e", "!!.??.xx", "e30.e30.e30"] {
            assert!(
                matches!(check(token), Err(VerifyError::Malformed(_))),
                "{token:?}: {:?}",
                check(token)
            );
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(check(&huge), Err(VerifyError::Malformed(_))));
    }

    #[test]
    fn trailing_slash_mismatch_is_explained_in_the_log_not_the_answer() {
        let token = sign(
            "trusted-rs256",
            Some("trusted-rs256"),
            &with(claims(), "iss", json!(format!("{ISS}/"))),
        );
        // The caller learns that its own iss is not trusted, and nothing about the trusted one.
        match check(&token) {
            Err(e @ VerifyError::UnknownIssuer(_)) => {
                let shown = e.to_string();
                assert!(shown.contains(&format!("{ISS}/")), "{shown}");
                assert!(
                    !shown.replace(&format!("{ISS}/"), "").contains(ISS),
                    "the trusted issuer leaks: {shown}"
                );
                assert!(!shown.contains("trailing slash"), "{shown}");
            }
            other => panic!("{other:?}"),
        }
        // The operator's hint is there, for the log.
        let v = verifier();
        let issuers = v.issuers();
        let refused = select_issuer(issuers, &format!("{ISS}/")).unwrap_err();
        let hint = refused.log_hint.clone().expect("a hint for the log");
        assert!(
            hint.contains("trailing slash") && hint.contains(ISS),
            "{hint}"
        );
        assert_eq!(
            VerifyError::from(refused),
            VerifyError::UnknownIssuer(format!("{ISS}/"))
        );
        let far = select_issuer(issuers, "https://elsewhere.example").unwrap_err();
        assert_eq!(far.log_hint, None);
    }

    #[test]
    fn attributes_are_flattened_from_the_configured_path() {
        let verified =
            check(&sign("trusted-es256", Some("trusted-es256"), &claims())).expect("valid token");
        let expected: BTreeMap<String, String> =
            [("prod", "true"), ("rack", "7"), ("region", "us-east")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        assert_eq!(verified.identity.attributes, expected);

        let path = |p: &str| ClaimPath::parse(p).expect(p);
        let claims = json!({"a": {"b": {"k": "v"}}, "https://x.io/attrs": {"z": "1"}, "s": "str"});
        assert_eq!(
            extract_attributes(&claims, &path("$.a.b")).expect("ok")["k"],
            "v"
        );
        assert_eq!(
            extract_attributes(&claims, &path("$['https://x.io/attrs']")).expect("ok")["z"],
            "1"
        );
        assert!(
            extract_attributes(&claims, &path(".missing"))
                .expect("ok")
                .is_empty()
        );
        assert!(matches!(
            extract_attributes(&claims, &path(".s")),
            Err(VerifyError::Invalid(m)) if m.contains("a string")
        ));
    }

    #[test]
    fn claim_path_subset() {
        for ok in [".a", "$.a", "$.a.b_c-d", "$['x.y/z']", ".a[\"b c\"].d"] {
            ClaimPath::parse(ok).expect(ok);
        }
        for bad in [
            "", "a", "$", ".", "$..a", "$.a[0]", "$.*", "$['a'", "$.a b", "$['']",
        ] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn config_validation() {
        let err = |c: IssuerConfig| JwtVerifier::new(&[c]).expect_err("invalid").to_string();
        assert!(
            err(IssuerConfig {
                issuer: "http://idp".into(),
                ..config()
            })
            .contains("https://")
        );
        assert!(
            err(IssuerConfig {
                short_name: "Corp_1".into(),
                ..config()
            })
            .contains("shortName")
        );
        assert!(
            err(IssuerConfig {
                jwks_uri: Some("https://idp/jwks".into()),
                ..config()
            })
            .contains("at most one")
        );
        assert!(
            err(IssuerConfig {
                ca_file: Some("ca.pem".into()),
                ..config()
            })
            .contains("caFile")
        );
        assert!(
            err(IssuerConfig {
                jwks: Some("{\"keys\": []}".into()),
                ..config()
            })
            .contains("no usable")
        );
        assert!(
            err(IssuerConfig {
                jwks: None,
                jwks_file: Some("/nonexistent/jwks.json".into()),
                ..config()
            })
            .contains("jwksFile /nonexistent/jwks.json")
        );
        let twice = JwtVerifier::new(&[
            config(),
            IssuerConfig {
                issuer: "https://other".into(),
                ..config()
            },
        ])
        .expect_err("duplicate short name")
        .to_string();
        assert!(twice.contains("already used"), "{twice}");
        // No source at all is valid: OIDC discovery, fetched lazily.
        JwtVerifier::new(&[IssuerConfig {
            jwks: None,
            ..config()
        }])
        .expect("discovery");
    }

    #[test]
    fn jwks_file_is_loaded_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, JWKS).expect("write jwks");
        let verifier = JwtVerifier::new(&[IssuerConfig {
            jwks: None,
            jwks_file: Some(path.clone()),
            ..config()
        }])
        .expect("jwksFile config");
        // Read once at start: removing the file changes nothing.
        std::fs::remove_file(&path).expect("remove");
        let token = sign("trusted-es256", Some("trusted-es256"), &claims());
        verifier
            .verify_blocking(&token, &ctx_at(NOW))
            .expect("verifies with keys from the file");
        assert_eq!(verifier.key_fetches(ISS), Some(0));
    }

    #[test]
    fn config_deserializes_camel_case_and_refuses_unknown_fields() {
        let parsed: Vec<IssuerConfig> = serde_json::from_value(json!([{
            "issuer": ISS, "shortName": "corp", "jwksUri": "https://idp.example.corp/jwks",
            "caFile": "/etc/ca.pem", "tokenFields": {"attributes": {"jsonPath": ".custom_attributes"}}
        }]))
        .expect("camelCase config");
        assert_eq!(
            parsed[0].jwks_uri.as_deref(),
            Some("https://idp.example.corp/jwks")
        );
        let unknown = serde_json::from_value::<IssuerConfig>(json!({
            "issuer": ISS, "shortName": "corp", "jwks_uri": "x"
        }))
        .expect_err("snake_case is unknown")
        .to_string();
        assert!(unknown.contains("jwks_uri"), "{unknown}");
    }

    #[test]
    fn jwks_parsing_keeps_only_usable_signing_keys() {
        let mut doc: Value = serde_json::from_str(JWKS).expect("jwks");
        let keys = doc["keys"].as_array_mut().expect("keys");
        let mut enc = keys[0].clone();
        enc["kid"] = json!("enc");
        enc["use"] = json!("enc");
        keys.push(enc);
        keys.push(json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"}));
        keys.push(json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}));
        keys.push(json!({"kty": "RSA", "kid": "short", "n": "uUSWDg10RgXUZ2CUEh_nGXzDM8CGV1DGBkT1dIPCPtowCOB1Iw3wBsVffA2Wmm_dnD4fj6CaS_d7R_MMTXTF38flIiwHHZpls8r55aVPmpf1X2VWdwzZEzLaA_X3X5rmbD_HIAarRyXll_TZI8OwtNAjSc8ATiikNO2zAvBl1vU", "e": "AQAB"}));
        let set = KeySet::from_jwks_json(&doc.to_string()).expect("usable keys remain");
        assert_eq!(set.len(), 2);
        assert!(set.has_kid("trusted-rs256") && set.has_kid("trusted-es256"));
        assert!(!set.has_kid("enc") && !set.has_kid("hmac") && !set.has_kid("ed"));
        assert_eq!(set.skipped().len(), 4, "{:?}", set.skipped());
        assert!(KeySet::from_jwks_json("[]").is_err());
        assert!(KeySet::from_jwks_json("not json").is_err());
    }

    /// Hands out scripted JWKS documents and counts fetches: stands in for the network in
    /// the rate-limit tests (tests/jwt_oidc_provider.rs fetches from a real provider).
    struct ScriptedKeys {
        documents: Mutex<Vec<Result<String, String>>>,
        calls: Arc<AtomicU64>,
    }

    impl FetchKeys for ScriptedKeys {
        fn fetch(&self) -> Result<KeySet, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut docs = lock(&self.documents);
            let doc = if docs.len() > 1 {
                docs.remove(0)
            } else {
                docs[0].clone()
            };
            KeySet::from_jwks_json(&doc?)
        }
    }

    fn remote_verifier(
        documents: Vec<Result<String, String>>,
        policy: RefreshPolicy,
    ) -> (JwtVerifier, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let (issuer, _) = config().validate().expect("valid");
        let entry = IssuerEntry {
            issuer,
            fetcher: Some(Box::new(ScriptedKeys {
                documents: Mutex::new(documents),
                calls: calls.clone(),
            })),
            keys: RwLock::new(None),
            fetch: Mutex::new(FetchState::default()),
        };
        (JwtVerifier::from_entries(vec![entry], policy), calls)
    }

    fn only_es256_jwks() -> String {
        let mut doc: Value = serde_json::from_str(JWKS).expect("jwks");
        doc["keys"].as_array_mut().expect("keys").remove(0);
        doc.to_string()
    }

    #[test]
    fn unknown_kid_triggers_one_rate_limited_refresh() {
        // Signed up front: RSA signing in a debug build is slow enough to blur the timing.
        let es = sign("trusted-es256", Some("trusted-es256"), &claims());
        let rs = sign("trusted-rs256", Some("trusted-rs256"), &claims());
        let bogus = sign("attacker-rs256", Some("made-up"), &claims());
        let interval = Duration::from_secs(1);
        let (verifier, calls) = remote_verifier(
            vec![Ok(only_es256_jwks()), Ok(JWKS.to_owned())],
            RefreshPolicy {
                min_interval: interval,
                ..RefreshPolicy::default()
            },
        );
        let ctx = ctx_at(NOW);
        verifier
            .verify_blocking(&es, &ctx)
            .expect("first fetch has the EC key");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        std::thread::sleep(interval);
        // The issuer rotated in an RSA key: the unknown kid refetches once, then verifies.
        verifier
            .verify_blocking(&rs, &ctx)
            .expect("refreshed keys have the RSA key");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(verifier.key_fetches(ISS), Some(2));
        // Made-up kids within the rate limit do not fetch again.
        for _ in 0..5 {
            assert!(matches!(
                verifier.verify_blocking(&bogus, &ctx),
                Err(VerifyError::InvalidSignature(m)) if m.contains("made-up")
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Known kids keep working from the cache.
        verifier.verify_blocking(&rs, &ctx).expect("cached");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn unknown_kid_refetches_again_after_the_interval() {
        let policy = RefreshPolicy {
            min_interval: Duration::ZERO,
            ..RefreshPolicy::default()
        };
        let (verifier, calls) = remote_verifier(vec![Ok(JWKS.to_owned())], policy);
        let bogus = sign("attacker-rs256", Some("made-up"), &claims());
        for n in 1..=3 {
            let _ = verifier.verify_blocking(&bogus, &ctx_at(NOW));
            assert_eq!(calls.load(Ordering::SeqCst), n);
        }
    }

    #[test]
    fn unreachable_issuer_is_unavailable_and_retried_later() {
        let policy = RefreshPolicy {
            retry_after_failure: Duration::from_secs(3600),
            ..RefreshPolicy::default()
        };
        let (verifier, calls) = remote_verifier(vec![Err("connection refused".into())], policy);
        let token = sign("trusted-rs256", Some("trusted-rs256"), &claims());
        for _ in 0..3 {
            assert!(matches!(
                verifier.verify_blocking(&token, &ctx_at(NOW)),
                Err(VerifyError::Unavailable(m)) if m.contains("connection refused")
            ));
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "failures are rate-limited too"
        );
        assert_eq!(verifier.prefetch().len(), 1);
    }

    #[test]
    fn stale_keys_are_kept_when_the_refresh_fails() {
        let policy = RefreshPolicy {
            max_age: Duration::ZERO,
            min_interval: Duration::ZERO,
            ..RefreshPolicy::default()
        };
        let (verifier, calls) =
            remote_verifier(vec![Ok(JWKS.to_owned()), Err("issuer down".into())], policy);
        let token = sign("trusted-rs256", Some("trusted-rs256"), &claims());
        verifier
            .verify_blocking(&token, &ctx_at(NOW))
            .expect("fresh");
        verifier
            .verify_blocking(&token, &ctx_at(NOW))
            .expect("stale but kept");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn async_wrapper_runs_on_the_blocking_pool() {
        let token = sign("trusted-es256", Some("trusted-es256"), &claims());
        let verified = verifier()
            .verify(&token, &ctx_at(NOW))
            .await
            .expect("valid");
        assert_eq!(verified.identity.subject, "vm-0001");
    }
}
