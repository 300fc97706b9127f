//! The shell: key sources, fetching over HTTPS and caching, refresh by age and on an
//! unknown `kid` (rate-limited). JWT issuers and Google's keys (GCP identity tokens) share
//! it: one fetcher, one cache, one set of key-source rules (https only, at most
//! [`MAX_KEY_REDIRECTS`] redirects, RSA keys of at least [`MIN_RSA_BITS`], refetch by age).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::config::{check_https_url, invalid};
use super::*;
use crate::http_client::{CaFileError, HttpClient};
use crate::identity::{VerifyContext, VerifyError};

/// Redirects a key source may answer with before the fetch fails.
pub const MAX_KEY_REDIRECTS: u32 = 3;

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

/// Fetching a key set failed; the message names the URL or file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {detail}")]
    Get { url: String, detail: String },
    #[error("{url}: not a JSON document: {detail}")]
    NotJson { url: String, detail: String },
    #[error("{url} announces issuer {announced:?}, not {issuer:?}; fix the configured issuer")]
    WrongIssuer {
        url: String,
        announced: String,
        issuer: String,
    },
    #[error("{url} has no jwks_uri")]
    NoJwksUri { url: String },
    #[error("{url}: jwks_uri {problem}")]
    BadJwksUri { url: String, problem: UrlError },
    #[error("{}: {detail}", path.display())]
    ReadFile { path: PathBuf, detail: String },
    #[error("{origin}: {error}")]
    Keys { origin: String, error: JwksError },
}

/// Fetches a key set. The production ones speak HTTPS or re-read a file; unit tests count
/// and script fetches.
pub(crate) trait FetchKeys: Send + Sync {
    fn fetch(&self) -> Result<KeySet, FetchError>;
}

/// Keys over HTTPS: a JWKS URI, or OIDC discovery from an issuer.
pub(crate) struct HttpKeys {
    agent: ureq::Agent,
    locate: Locate,
}

enum Locate {
    JwksUri(String),
    Discovery { issuer: String },
}

const MAX_DOCUMENT_BYTES: u64 = 1024 * 1024;

/// The HTTP client of every key source: https only (redirects included), at most
/// [`MAX_KEY_REDIRECTS`] redirects, `ca_file` (when given) instead of the public roots.
pub(crate) fn key_source_agent(
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<ureq::Agent, CaFileError> {
    Ok(HttpClient::new(timeout)
        .https_only()
        .max_redirects(MAX_KEY_REDIRECTS)
        .user_agent(concat!(
            "workload-onboarding-endpoint/",
            env!("CARGO_PKG_VERSION")
        ))
        .ca_file(ca_file)?
        .build())
}

impl HttpKeys {
    pub(crate) fn jwks_uri(agent: ureq::Agent, uri: String) -> HttpKeys {
        HttpKeys {
            agent,
            locate: Locate::JwksUri(uri),
        }
    }

    fn discovery(agent: ureq::Agent, issuer: String) -> HttpKeys {
        HttpKeys {
            agent,
            locate: Locate::Discovery { issuer },
        }
    }

    fn get(&self, url: &str) -> Result<String, FetchError> {
        let get = |detail: String| FetchError::Get {
            url: url.to_owned(),
            detail,
        };
        let mut response = self
            .agent
            .get(url)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| get(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(get(format!("HTTP {status}")));
        }
        response
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT_BYTES)
            .read_to_string()
            .map_err(|e| get(format!("reading the body: {e}")))
    }

    fn discover_jwks_uri(&self, issuer: &str) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc: Value =
            serde_json::from_str(&self.get(&url)?).map_err(|e| FetchError::NotJson {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        let announced = doc
            .get("issuer")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if announced != issuer {
            // OIDC Discovery §4.3: a mismatch means the document is for another issuer.
            return Err(FetchError::WrongIssuer {
                url,
                announced: announced.to_owned(),
                issuer: issuer.to_owned(),
            });
        }
        let Some(jwks_uri) = doc.get("jwks_uri").and_then(Value::as_str) else {
            return Err(FetchError::NoJwksUri { url });
        };
        check_https_url(jwks_uri).map_err(|problem| FetchError::BadJwksUri {
            url: url.clone(),
            problem,
        })?;
        Ok(jwks_uri.to_owned())
    }
}

impl FetchKeys for HttpKeys {
    fn fetch(&self) -> Result<KeySet, FetchError> {
        let uri = match &self.locate {
            Locate::JwksUri(uri) => uri.clone(),
            Locate::Discovery { issuer } => self.discover_jwks_uri(issuer)?,
        };
        KeySet::from_jwks_json(&self.get(&uri)?)
            .map_err(|error| FetchError::Keys { origin: uri, error })
    }
}

/// Keys in a file, re-read on every fetch (an operator replaces the file when keys rotate).
pub(crate) struct FileKeys(pub(crate) PathBuf);

impl FetchKeys for FileKeys {
    fn fetch(&self) -> Result<KeySet, FetchError> {
        let text = std::fs::read_to_string(&self.0).map_err(|e| FetchError::ReadFile {
            path: self.0.clone(),
            detail: e.to_string(),
        })?;
        KeySet::from_jwks_json(&text).map_err(|error| FetchError::Keys {
            origin: self.0.display().to_string(),
            error,
        })
    }
}

fn http_agent(
    issuer: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<ureq::Agent, IssuerConfigError> {
    key_source_agent(ca_file, timeout).map_err(|e| match e {
        CaFileError::Read { path, source } => IssuerConfigError::Read {
            issuer: issuer.to_owned(),
            field: "caFile",
            path,
            source,
        },
        other => invalid(issuer, format!("caFile {other}")),
    })
}

/// One key source's cached keys and its fetch bookkeeping.
pub(crate) struct KeyCache {
    /// Whose keys, for messages: `issuer https://idp.example`, `Google`.
    label: String,
    /// `None`: keys are fixed (inline or a file read once) and loaded at start.
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

impl KeyCache {
    /// Keys that never change.
    pub(crate) fn fixed(label: String, keys: KeySet) -> KeyCache {
        KeyCache::new(
            label,
            None,
            Some(Cached {
                keys: Arc::new(keys),
                fetched_at: None,
            }),
        )
    }

    /// Keys from `fetcher`, none yet: the first use fetches.
    pub(crate) fn remote(label: String, fetcher: Box<dyn FetchKeys>) -> KeyCache {
        KeyCache::new(label, Some(fetcher), None)
    }

    /// Keys from `fetcher`, starting with `keys` (loaded now, so a bad source fails at start).
    pub(crate) fn preloaded(label: String, fetcher: Box<dyn FetchKeys>, keys: KeySet) -> KeyCache {
        KeyCache::new(
            label,
            Some(fetcher),
            Some(Cached {
                keys: Arc::new(keys),
                fetched_at: Some(Instant::now()),
            }),
        )
    }

    fn new(label: String, fetcher: Option<Box<dyn FetchKeys>>, keys: Option<Cached>) -> KeyCache {
        KeyCache {
            label,
            fetcher,
            keys: RwLock::new(keys),
            fetch: Mutex::new(FetchState::default()),
        }
    }

    pub(crate) fn is_remote(&self) -> bool {
        self.fetcher.is_some()
    }

    /// How many fetches were attempted.
    pub(crate) fn attempts(&self) -> Result<u64, VerifyError> {
        Ok(self.lock_fetch()?.attempts)
    }

    fn lock_fetch(&self) -> Result<std::sync::MutexGuard<'_, FetchState>, VerifyError> {
        crate::lock::lock(&self.fetch, "key fetch")
            .map_err(|e| VerifyError::Unavailable(e.to_string()))
    }

    fn cached(&self) -> Result<Option<Cached>, VerifyError> {
        crate::lock::read(&self.keys, "key cache")
            .map(|c| c.clone())
            .map_err(|e| VerifyError::Unavailable(e.to_string()))
    }

    /// The keys to check a token with `kid` against: cached ones when they know the kid and
    /// are fresh, otherwise refetched within the rate limit.
    pub(crate) fn keys_for(
        &self,
        kid: Option<&str>,
        policy: &RefreshPolicy,
    ) -> Result<Arc<KeySet>, VerifyError> {
        let fits = |c: &Cached| kid.is_none_or(|kid| c.keys.has_kid(kid));
        let fresh = |c: &Cached| c.fetched_at.is_none_or(|at| at.elapsed() < policy.max_age);
        let Some(fetcher) = &self.fetcher else {
            return self
                .cached()?
                .map(|c| c.keys)
                .ok_or_else(|| VerifyError::Unavailable(format!("no keys for {}", self.label)));
        };
        if let Some(c) = self.cached()?
            && fits(&c)
            && fresh(&c)
        {
            return Ok(c.keys);
        }
        // One fetch at a time per source; whoever waited here rechecks first.
        let mut state = self.lock_fetch()?;
        let cached = self.cached()?;
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
                    "keys of {} could not be fetched: {}",
                    self.label,
                    state.last_error.as_deref().unwrap_or("unknown error")
                ))),
            };
        }
        state.last_attempt = Some(Instant::now());
        state.attempts += 1;
        match fetcher.fetch() {
            Ok(keys) => {
                tracing::info!(
                    source = %self.label,
                    keys = keys.len(),
                    skipped = ?keys.skipped(),
                    "fetched signing keys"
                );
                let keys = Arc::new(keys);
                *crate::lock::write(&self.keys, "key cache")
                    .map_err(|e| VerifyError::Unavailable(e.to_string()))? = Some(Cached {
                    keys: keys.clone(),
                    fetched_at: Some(Instant::now()),
                });
                state.last_error = None;
                Ok(keys)
            }
            Err(e) => {
                tracing::warn!(source = %self.label, error = %e, "fetching signing keys failed");
                state.last_error = Some(e.to_string());
                match cached {
                    // Stale keys beat no keys while the source is unreachable.
                    Some(c) => Ok(c.keys),
                    None => Err(VerifyError::Unavailable(format!(
                        "keys of {} could not be fetched: {e}",
                        self.label
                    ))),
                }
            }
        }
    }
}

pub(super) struct IssuerEntry {
    pub(super) issuer: Issuer,
    pub(super) cache: KeyCache,
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
            let label = format!("issuer {name}");
            let cache = match source {
                KeySourceConfig::Inline(json) => {
                    let keys = KeySet::from_jwks_json(&json)
                        .map_err(|e| invalid(&name, format!("jwks: {e}")))?;
                    KeyCache::fixed(label, keys)
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
                    KeyCache::fixed(label, keys)
                }
                KeySourceConfig::Uri(uri) => {
                    let agent = http_agent(&name, config.ca_file.as_deref(), policy.http_timeout)?;
                    KeyCache::remote(label, Box::new(HttpKeys::jwks_uri(agent, uri)))
                }
                KeySourceConfig::Discovery => {
                    let agent = http_agent(&name, config.ca_file.as_deref(), policy.http_timeout)?;
                    KeyCache::remote(label, Box::new(HttpKeys::discovery(agent, name.clone())))
                }
            };
            if let Ok(Some(c)) = cache.cached()
                && !c.keys.skipped().is_empty()
            {
                tracing::info!(issuer = %name, skipped = ?c.keys.skipped(), "JWKS keys left out");
            }
            issuers.push(IssuerEntry { issuer, cache });
        }
        Ok(Self::from_entries(issuers, policy))
    }

    pub(super) fn from_entries(issuers: Vec<IssuerEntry>, policy: RefreshPolicy) -> JwtVerifier {
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
        entry.cache.attempts().ok()
    }

    /// Fetches the keys of every remote issuer that has none yet. Returns the failures
    /// (issuer, reason); tokens from those issuers are answered `Unavailable` until a fetch
    /// succeeds.
    pub fn prefetch(&self) -> Vec<(String, String)> {
        let mut failures = Vec::new();
        for entry in &self.inner.issuers {
            if entry.cache.is_remote()
                && let Err(e) = entry.cache.keys_for(None, &self.inner.policy)
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
        let keys = entry
            .cache
            .keys_for(unverified.kid.as_deref(), &self.inner.policy)?;
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
}
