//! The trusted issuers as configured (`authentication.jwt.issuers`) and their validation.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::*;

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

pub(super) fn invalid(issuer: &str, problem: impl Into<String>) -> IssuerConfigError {
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

/// A key-source or issuer URL that is not a plain `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

pub(crate) fn check_https_url(s: &str) -> Result<(), UrlError> {
    let Some(rest) = s.strip_prefix("https://") else {
        return Err(UrlError(format!("{s:?} must be an https:// URL")));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(UrlError(format!("{s:?} has no host")));
    }
    if s.chars().any(|c| c.is_whitespace() || c == '?' || c == '#') {
        return Err(UrlError(format!(
            "{s:?} must not contain whitespace, a query or a fragment"
        )));
    }
    http::Uri::try_from(s)
        .map(|_| ())
        .map_err(|e| UrlError(format!("{s:?} is not a valid URL: {e}")))
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
