//! The shell: key sources, fetching over HTTPS and caching, refresh by age and on an
//! unknown `kid` (rate-limited).

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::config::{check_https_url, invalid};
use super::*;
use crate::identity::{VerifyContext, VerifyError};

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
pub(super) trait FetchKeys: Send + Sync {
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

pub(super) struct IssuerEntry {
    pub(super) issuer: Issuer,
    /// `None`: keys are fixed (inline or file) and loaded at start.
    pub(super) fetcher: Option<Box<dyn FetchKeys>>,
    pub(super) keys: RwLock<Option<Cached>>,
    pub(super) fetch: Mutex<FetchState>,
}

#[derive(Clone)]
pub(super) struct Cached {
    pub(super) keys: Arc<KeySet>,
    /// `None` for fixed keys, which never go stale.
    pub(super) fetched_at: Option<Instant>,
}

#[derive(Default)]
pub(super) struct FetchState {
    pub(super) last_attempt: Option<Instant>,
    pub(super) last_error: Option<String>,
    pub(super) attempts: u64,
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
