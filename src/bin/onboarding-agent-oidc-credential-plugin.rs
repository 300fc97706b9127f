//! `onboarding-agent-oidc-credential-plugin`: a credential plugin for the onboarding agent
//! that gets a JWT access token from an OIDC provider with the OAuth 2.0 `client_credentials`
//! grant (Keycloak, Okta, Dex, Entra ID, oidc-provider...), addressed to the onboarding
//! plane's UID. Protocol and configuration: docs/credential-plugins.md.
//!
//! stdin: `{"audience": "<plane uid>"}`. Success: exit 0 and
//! `{"credential": {"@type": "...JwtCredential", "token": "<jwt>"}, "expiresAt": "<RFC 3339>"}`
//! on stdout. Failure: exit 1 and `{"code": <google.rpc.Code>, "message": "..."}` on stdout.
//! Diagnostics go to stderr; the client secret and the token never do.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use workload_onboarding::http_client::{CaFileError, HttpClient};
use workload_onboarding::secret::Secret;

use workload_onboarding::identity::plugin::{
    AnyCredential, CREDENTIAL_SERVICE, GET_CREDENTIAL_METHOD, GetCredentialRequest,
    GetCredentialResponse, Status, code,
};

/// A cached token is reused while more than this much of its life is left (or half of its
/// lifetime, for short-lived tokens), so the agent never presents one about to expire.
const CACHE_MIN_REMAINING: Duration = Duration::from_secs(300);
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

const HELP: &str = "\
A credential plugin for onboarding-agent: gets a JWT access token from an OIDC provider
with the OAuth 2.0 client_credentials grant, addressed to the onboarding plane's UID.
The agent runs it (see docs/credential-plugins.md); it takes no arguments.

Usage:
  onboarding-agent-oidc-credential-plugin < request.json
  onboarding-agent-oidc-credential-plugin help | --help | -h
  onboarding-agent-oidc-credential-plugin version | --version | -V

stdin:  {\"audience\": \"<plane uid>\"}
stdout: the GetCredential response (exit 0) or a google.rpc.Status (exit 1 when the
        token could not be obtained, 2 when the plugin is called or configured wrongly)

Environment (docs/credential-plugins.md has the details):
  OIDC_ISSUER               issuer URL (https://); the token endpoint is found by discovery
  OIDC_TOKEN_ENDPOINT       the token endpoint URL (https://) instead; one of the two is required
  OIDC_CLIENT_ID            the client's id (required)
  OIDC_CLIENT_SECRET_FILE   a file holding the client secret (or OIDC_CLIENT_SECRET, the secret)
  OIDC_AUTH_METHOD          client_secret_basic (default) | client_secret_post
  OIDC_AUDIENCE_PARAM       resource (default) | audience | none: how the plane UID is asked for
  OIDC_RESOURCE_TEMPLATE    the value sent, {audience} replaced by the plane UID
                            [default: urn:audience:{audience} for resource, else {audience}]
  OIDC_SCOPE                the scope parameter, if the provider needs one
  OIDC_CA_FILE              PEM CA certificates the provider's certificate must chain to
  OIDC_TOKEN_CACHE          a file to cache the token in between runs (0600)
";

/// Exit statuses, as the agent's and the endpoint's: 0 success, 1 a runtime failure (the
/// provider refused or could not be reached), 2 a usage or configuration error (a retry
/// cannot fix it).
const EXIT_RUNTIME: i32 = 1;
const EXIT_USAGE: i32 = 2;

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let outcome = match args.first().map(|a| a.to_string_lossy().into_owned()) {
        None => run(&|name| std::env::var(name).ok(), SystemTime::now()),
        Some(a) if args.len() == 1 && matches!(a.as_str(), "help" | "--help" | "-h") => {
            print!("{HELP}");
            std::process::exit(0);
        }
        Some(a) if args.len() == 1 && matches!(a.as_str(), "version" | "--version" | "-V") => {
            println!(
                "onboarding-agent-oidc-credential-plugin {}",
                env!("CARGO_PKG_VERSION")
            );
            std::process::exit(0);
        }
        Some(a) => Err((
            EXIT_USAGE,
            fail(
                code::INVALID_ARGUMENT,
                format!(
                    "unexpected argument {a:?}: the plugin takes its settings from the environment (run it with --help)"
                ),
            ),
        )),
    };
    let (exit, body) = match outcome {
        Ok(response) => (0, serde_json::to_string(&response)),
        Err((exit, status)) => {
            eprintln!(
                "oidc-credential plugin: {} ({}): {}",
                status.code_name(),
                status.code,
                status.message
            );
            (exit, serde_json::to_string(&status))
        }
    };
    let body = body.unwrap_or_else(|e| {
        format!(
            r#"{{"code":{},"message":"cannot encode the reply: {e}"}}"#,
            code::INTERNAL
        )
    });
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{body}")
        .and_then(|_| stdout.flush())
        .is_err()
    {
        std::process::exit(EXIT_RUNTIME);
    }
    std::process::exit(exit);
}

fn fail(code: i32, message: impl Into<String>) -> Status {
    Status::new(code, message)
}

/// The whole plugin, with the environment and the clock passed in; a failure comes with its
/// exit status.
fn run(
    env: &dyn Fn(&str) -> Option<String>,
    now: SystemTime,
) -> Result<GetCredentialResponse, (i32, Status)> {
    let (request, config) = prepare(env).map_err(|s| (EXIT_USAGE, s))?;
    obtain(&request, &config, now).map_err(|s| (EXIT_RUNTIME, s))
}

/// What the caller got wrong, if anything: the RPC asked for, the request, the settings.
fn prepare(env: &dyn Fn(&str) -> Option<String>) -> Result<(GetCredentialRequest, Config), Status> {
    check_rpc(env)?;
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_REQUEST_BYTES)
        .read_to_end(&mut input)
        .map_err(|e| {
            fail(
                code::INVALID_ARGUMENT,
                format!("cannot read the request on stdin: {e}"),
            )
        })?;
    let request: GetCredentialRequest = serde_json::from_slice(&input).map_err(|e| {
        fail(
            code::INVALID_ARGUMENT,
            format!(
                "stdin is not a GetCredential request ({{\"audience\": \"<plane uid>\"}}): {e}"
            ),
        )
    })?;
    if request.audience.trim().is_empty() {
        return Err(fail(
            code::INVALID_ARGUMENT,
            "the request's audience is empty",
        ));
    }
    let config = Config::from_env(env)?;
    Ok((request, config))
}

/// Gets the token (from the cache or the provider).
fn obtain(
    request: &GetCredentialRequest,
    config: &Config,
    now: SystemTime,
) -> Result<GetCredentialResponse, Status> {
    let cache = config.cache_file.as_deref();
    if let Some(path) = cache
        && let Some(hit) = read_cache(path, config, &request.audience, now)
    {
        eprintln!(
            "oidc-credential plugin: reusing the cached token (expires {})",
            rfc3339(hit.expires_at)
        );
        return Ok(response(hit.token, hit.expires_at));
    }
    let token = fetch_token(config, &request.audience)?;
    let expires_at = check_token(
        &token.access_token,
        &request.audience,
        token.expires_in,
        now,
    )?;
    if let Some(path) = cache {
        let entry = CacheEntry {
            token_endpoint: config.endpoint_key(),
            client_id: config.client_id.clone(),
            audience: request.audience.clone(),
            token: token.access_token.clone(),
            issued_at: unix_u64(now),
            expires_at,
        };
        // A cache that cannot be written costs a token request next time, nothing more.
        if let Err(e) = write_cache(path, &entry) {
            eprintln!(
                "oidc-credential plugin: warning: cannot write the token cache {}: {e}",
                path.display()
            );
        }
    }
    Ok(response(token.access_token, expires_at))
}

fn response(token: String, expires_at: u64) -> GetCredentialResponse {
    GetCredentialResponse {
        credential: AnyCredential::jwt(token),
        expires_at: Some(rfc3339(expires_at)),
    }
}

/// Run by the agent, the protocol variables say what is asked; run by hand, they may be unset.
fn check_rpc(env: &dyn Fn(&str) -> Option<String>) -> Result<(), Status> {
    if let Some(service) = env("RPC_SERVICE_NAME").filter(|s| !s.is_empty())
        && service != CREDENTIAL_SERVICE
    {
        return Err(fail(
            code::UNIMPLEMENTED,
            format!(
                "this is a credential plugin ({CREDENTIAL_SERVICE}); it does not implement {service}"
            ),
        ));
    }
    if let Some(method) = env("RPC_METHOD_NAME").filter(|s| !s.is_empty())
        && method != GET_CREDENTIAL_METHOD
    {
        return Err(fail(
            code::UNIMPLEMENTED,
            format!("method {method} is not implemented (only {GET_CREDENTIAL_METHOD})"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AudienceParam {
    /// RFC 8707 `resource=` (needs an absolute URI).
    Resource,
    /// `audience=` (Auth0, Keycloak token exchange, some gateways).
    Audience,
    /// Nothing sent: the provider fixes `aud` per client.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthMethod {
    Basic,
    Post,
}

struct Config {
    issuer: Option<String>,
    token_endpoint: Option<String>,
    client_id: String,
    client_secret: String,
    ca_file: Option<PathBuf>,
    audience_param: AudienceParam,
    template: String,
    scope: Option<String>,
    auth: AuthMethod,
    cache_file: Option<PathBuf>,
}

impl Config {
    fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Status> {
        let get = |name: &str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let bad = |message: String| fail(code::FAILED_PRECONDITION, message);
        let issuer = get("OIDC_ISSUER");
        let token_endpoint = get("OIDC_TOKEN_ENDPOINT");
        if issuer.is_none() && token_endpoint.is_none() {
            return Err(bad(
                "set OIDC_ISSUER (the token endpoint is found by OIDC discovery) or OIDC_TOKEN_ENDPOINT".into(),
            ));
        }
        for (name, url) in [
            ("OIDC_ISSUER", &issuer),
            ("OIDC_TOKEN_ENDPOINT", &token_endpoint),
        ] {
            if let Some(url) = url
                && !url.starts_with("https://")
            {
                return Err(bad(format!("{name} must be an https:// URL, not {url:?}")));
            }
        }
        let client_id = get("OIDC_CLIENT_ID").ok_or_else(|| bad("set OIDC_CLIENT_ID".into()))?;
        let client_secret = match (
            env("OIDC_CLIENT_SECRET").filter(|s| !s.is_empty()),
            get("OIDC_CLIENT_SECRET_FILE"),
        ) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "set OIDC_CLIENT_SECRET or OIDC_CLIENT_SECRET_FILE, not both".into(),
                ));
            }
            (Some(secret), None) => secret,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| bad(format!("cannot read OIDC_CLIENT_SECRET_FILE {path}: {e}")))?;
                // Files written by `echo` or editors end with a newline that is not part of
                // the secret; a provider then answers a baffling invalid_client.
                text.trim_end_matches(['\n', '\r']).to_owned()
            }
            (None, None) => {
                return Err(bad(
                    "set OIDC_CLIENT_SECRET_FILE (or OIDC_CLIENT_SECRET)".into()
                ));
            }
        };
        if client_secret.is_empty() {
            return Err(bad("the client secret is empty".into()));
        }
        let audience_param = match get("OIDC_AUDIENCE_PARAM").as_deref() {
            None | Some("resource") => AudienceParam::Resource,
            Some("audience") => AudienceParam::Audience,
            Some("none") => AudienceParam::None,
            Some(other) => {
                return Err(bad(format!(
                    "OIDC_AUDIENCE_PARAM is {other:?}; use resource (RFC 8707, the default), audience or none"
                )));
            }
        };
        let template = get("OIDC_RESOURCE_TEMPLATE").unwrap_or_else(|| match audience_param {
            AudienceParam::Resource => "urn:audience:{audience}".into(),
            _ => "{audience}".into(),
        });
        if audience_param != AudienceParam::None && !template.contains("{audience}") {
            return Err(bad(format!(
                "OIDC_RESOURCE_TEMPLATE {template:?} has no {{audience}} placeholder for the plane UID"
            )));
        }
        let auth = match get("OIDC_AUTH_METHOD").as_deref() {
            None | Some("client_secret_basic") => AuthMethod::Basic,
            Some("client_secret_post") => AuthMethod::Post,
            Some(other) => {
                return Err(bad(format!(
                    "OIDC_AUTH_METHOD is {other:?}; use client_secret_basic (default) or client_secret_post"
                )));
            }
        };
        Ok(Config {
            issuer,
            token_endpoint,
            client_id,
            client_secret,
            ca_file: get("OIDC_CA_FILE").map(PathBuf::from),
            audience_param,
            template,
            scope: get("OIDC_SCOPE"),
            auth,
            cache_file: get("OIDC_TOKEN_CACHE").map(PathBuf::from),
        })
    }

    /// What identifies the provider in the cache: a token from another one is not reused.
    fn endpoint_key(&self) -> String {
        self.token_endpoint
            .clone()
            .or_else(|| self.issuer.clone())
            .unwrap_or_default()
    }

    /// The form fields of the token request (the secret only with client_secret_post).
    fn form(&self, audience: &str) -> Vec<(&'static str, String)> {
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        let value = self.template.replace("{audience}", audience);
        match self.audience_param {
            AudienceParam::Resource => form.push(("resource", value)),
            AudienceParam::Audience => form.push(("audience", value)),
            AudienceParam::None => {}
        }
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.clone()));
        }
        if self.auth == AuthMethod::Post {
            form.push(("client_id", self.client_id.clone()));
            form.push(("client_secret", self.client_secret.clone()));
        }
        form
    }

    /// RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined and base64ed.
    fn basic_auth(&self) -> String {
        let pair = format!(
            "{}:{}",
            form_urlencode(&self.client_id),
            form_urlencode(&self.client_secret)
        );
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn http_agent(config: &Config) -> Result<ureq::Agent, Status> {
    let client = HttpClient::new(HTTP_TIMEOUT)
        .https_only()
        // ureq's default, kept from before the shared builder.
        .max_redirects(10)
        .user_agent(concat!(
            "onboarding-agent-oidc-credential-plugin/",
            env!("CARGO_PKG_VERSION")
        ))
        .ca_file(config.ca_file.as_deref())
        .map_err(|e| {
            let message = match &e {
                CaFileError::Read { path, source } => {
                    format!("cannot read OIDC_CA_FILE {}: {source}", path.display())
                }
                _ => format!("OIDC_CA_FILE {e}"),
            };
            fail(code::FAILED_PRECONDITION, message)
        })?;
    Ok(client.build())
}

fn unreachable(what: &str, e: impl std::fmt::Display) -> Status {
    fail(code::UNAVAILABLE, format!("{what}: {e}"))
}

fn read_body(
    response: &mut ureq::http::Response<ureq::Body>,
    what: &str,
) -> Result<String, Status> {
    response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_string()
        .map_err(|e| unreachable(what, e))
}

fn discover_token_endpoint(agent: &ureq::Agent, issuer: &str) -> Result<String, Status> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let mut response = agent.get(&url).call().map_err(|e| unreachable(&url, e))?;
    let status = response.status();
    let body = read_body(&mut response, &url)?;
    if !status.is_success() {
        let code = if status.is_server_error() {
            code::UNAVAILABLE
        } else {
            code::FAILED_PRECONDITION
        };
        return Err(fail(
            code,
            format!("{url}: HTTP {status}; is OIDC_ISSUER right?"),
        ));
    }
    let doc: Value = serde_json::from_str(&body).map_err(|e| {
        fail(
            code::FAILED_PRECONDITION,
            format!("{url}: not a JSON document: {e}"),
        )
    })?;
    match doc.get("token_endpoint").and_then(Value::as_str) {
        Some(endpoint) if endpoint.starts_with("https://") => Ok(endpoint.to_owned()),
        Some(endpoint) => Err(fail(
            code::FAILED_PRECONDITION,
            format!("{url}: token_endpoint {endpoint:?} is not https"),
        )),
        None => Err(fail(
            code::FAILED_PRECONDITION,
            format!("{url} has no token_endpoint"),
        )),
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

// Debug of the types that hold the client secret or a token: everything but those.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("issuer", &self.issuer)
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &Secret::new(()))
            .field("ca_file", &self.ca_file)
            .field("audience_param", &self.audience_param)
            .field("scope", &self.scope)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &Secret::new(()))
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

impl std::fmt::Debug for CacheEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheEntry")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("token", &Secret::new(()))
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

fn fetch_token(config: &Config, audience: &str) -> Result<TokenResponse, Status> {
    let agent = http_agent(config)?;
    let endpoint = match (&config.token_endpoint, &config.issuer) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Some(issuer)) => discover_token_endpoint(&agent, issuer)?,
        (None, None) => {
            return Err(fail(
                code::FAILED_PRECONDITION,
                "no token endpoint configured",
            ));
        }
    };
    let form = config.form(audience);
    let mut request = agent.post(&endpoint).header("Accept", "application/json");
    if config.auth == AuthMethod::Basic {
        request = request.header("Authorization", config.basic_auth());
    }
    let mut response = request
        .send_form(form.iter().map(|(k, v)| (*k, v.as_str())))
        .map_err(|e| unreachable(&endpoint, e))?;
    let status = response.status();
    let body = read_body(&mut response, &endpoint)?;
    if !status.is_success() {
        return Err(token_error(&endpoint, status.as_u16(), &body));
    }
    serde_json::from_str(&body).map_err(|e| {
        fail(
            code::INTERNAL,
            format!("{endpoint}: the token response has no access_token string: {e}"),
        )
    })
}

/// Maps an OAuth error response (RFC 6749 §5.2) to a Status an operator can act on.
fn token_error(endpoint: &str, http_status: u16, body: &str) -> Status {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = parsed.get("error").and_then(Value::as_str).unwrap_or("");
    let description = parsed
        .get("error_description")
        .and_then(Value::as_str)
        .unwrap_or("");
    let detail = if error.is_empty() {
        format!("HTTP {http_status}")
    } else if description.is_empty() {
        format!("HTTP {http_status} {error}")
    } else {
        format!("HTTP {http_status} {error}: {description}")
    };
    let (code, hint) = match (http_status, error) {
        (_, "invalid_client") | (401, _) => (
            code::UNAUTHENTICATED,
            "check OIDC_CLIENT_ID and the client secret (a stray newline or space in the secret file is a common cause)",
        ),
        (_, "invalid_target") => (
            code::FAILED_PRECONDITION,
            "the provider does not know this resource: check OIDC_RESOURCE_TEMPLATE / OIDC_AUDIENCE_PARAM and the provider's resource (API) configuration",
        ),
        (_, "invalid_scope") => (code::FAILED_PRECONDITION, "check OIDC_SCOPE"),
        (_, "unauthorized_client" | "access_denied") => (
            code::PERMISSION_DENIED,
            "the provider does not allow this client the client_credentials grant",
        ),
        (s, _) if s >= 500 => (
            code::UNAVAILABLE,
            "the provider failed; the agent will retry",
        ),
        _ => (
            code::FAILED_PRECONDITION,
            "the provider refused the token request",
        ),
    };
    fail(code, format!("{endpoint}: {detail}; {hint}"))
}

/// Checks that the provider gave a JWT addressed to the plane, and returns when it expires
/// (its `exp`, else `expires_in`). Not a signature check: the endpoint does that.
fn check_token(
    token: &str,
    audience: &str,
    expires_in: Option<u64>,
    now: SystemTime,
) -> Result<u64, Status> {
    let claims = jwt_claims(token).ok_or_else(|| {
        fail(
            code::FAILED_PRECONDITION,
            "the provider returned an opaque access token, not a JWT: configure it to issue JWT \
             access tokens for this client or resource (oidc-provider: resourceIndicators with \
             accessTokenFormat 'jwt'; Keycloak and Okta issue JWTs by default)",
        )
    })?;
    let auds: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !auds.contains(&audience) {
        return Err(fail(
            code::FAILED_PRECONDITION,
            format!(
                "the provider issued a token for audience {auds:?}, not the onboarding plane {audience:?}, \
                 so the endpoint would refuse it: check OIDC_AUDIENCE_PARAM and OIDC_RESOURCE_TEMPLATE \
                 (and the provider's audience mapping)"
            ),
        ));
    }
    match claims.get("exp").and_then(Value::as_u64) {
        Some(exp) => Ok(exp),
        None => expires_in.map(|s| unix_u64(now) + s).ok_or_else(|| {
            fail(
                code::FAILED_PRECONDITION,
                "the token has no exp and the response no expires_in",
            )
        }),
    }
}

fn jwt_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
}

/// The cache keeps unsigned seconds (a clock before 1970 counts as the epoch).
fn unix_u64(t: SystemTime) -> u64 {
    workload_onboarding::clock::unix(t).max(0).unsigned_abs()
}

fn rfc3339(unix_seconds: u64) -> String {
    workload_onboarding::timestamp::format(UNIX_EPOCH + Duration::from_secs(unix_seconds))
}

/// The token cache file (0600): one token, for one provider, client and audience.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheEntry {
    token_endpoint: String,
    client_id: String,
    audience: String,
    token: String,
    issued_at: u64,
    expires_at: u64,
}

fn read_cache(path: &Path, config: &Config, audience: &str, now: SystemTime) -> Option<CacheEntry> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            eprintln!(
                "oidc-credential plugin: warning: cannot read the token cache {}: {e}",
                path.display()
            );
            return None;
        }
    };
    let entry: CacheEntry = match serde_json::from_str(&text) {
        Ok(entry) => entry,
        Err(e) => {
            eprintln!(
                "oidc-credential plugin: ignoring the unreadable token cache {}: {e}",
                path.display()
            );
            return None;
        }
    };
    let usable = entry.token_endpoint == config.endpoint_key()
        && entry.client_id == config.client_id
        && entry.audience == audience
        && fresh_enough(&entry, unix_u64(now));
    usable.then_some(entry)
}

fn fresh_enough(entry: &CacheEntry, now: u64) -> bool {
    let lifetime = entry.expires_at.saturating_sub(entry.issued_at);
    let margin = CACHE_MIN_REMAINING.as_secs().min(lifetime / 2);
    entry.expires_at.saturating_sub(now) > margin && now >= entry.issued_at.saturating_sub(60)
}

fn write_cache(path: &Path, entry: &CacheEntry) -> Result<(), String> {
    let json = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
    workload_onboarding::atomic::write_file(path, &json, 0o600).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn debug_hides_the_client_secret_and_tokens() {
        let entry = CacheEntry {
            token_endpoint: "https://idp.example/token".into(),
            client_id: "vm".into(),
            audience: "plane".into(),
            token: "eyJ.cached-token.sig".into(),
            issued_at: 1,
            expires_at: 2,
        };
        let response = TokenResponse {
            access_token: "eyJ.fresh-token.sig".into(),
            expires_in: Some(60),
        };
        let shown = format!("{entry:?} {response:?}");
        assert!(
            !shown.contains("cached-token") && !shown.contains("fresh-token"),
            "{shown}"
        );
        assert!(
            shown.contains("client_id") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("OIDC_ISSUER", "https://idp.example"),
            ("OIDC_CLIENT_ID", "vm 1"),
            ("OIDC_CLIENT_SECRET", "s3cr:t&+"),
        ]
    }

    #[test]
    fn form_and_basic_auth() {
        let config = Config::from_env(&env_of(&base())).expect("config");
        assert_eq!(
            config.form("plane-1"),
            vec![
                ("grant_type", "client_credentials".to_owned()),
                ("resource", "urn:audience:plane-1".to_owned())
            ]
        );
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(config.basic_auth().trim_start_matches("Basic "))
            .expect("base64");
        assert_eq!(
            String::from_utf8(decoded).expect("utf8"),
            "vm+1:s3cr%3At%26%2B"
        );

        let mut pairs = base();
        pairs.extend([
            ("OIDC_AUDIENCE_PARAM", "audience"),
            ("OIDC_SCOPE", "onboard"),
            ("OIDC_AUTH_METHOD", "client_secret_post"),
        ]);
        let post = Config::from_env(&env_of(&pairs)).expect("config").form("p");
        assert!(post.contains(&("audience", "p".to_owned())));
        assert!(post.contains(&("scope", "onboard".to_owned())));
        assert!(post.contains(&("client_secret", "s3cr:t&+".to_owned())));
    }

    #[test]
    fn config_errors_are_failed_precondition_and_name_the_variable() {
        let check = |pairs: &[(&str, &str)], needle: &str| {
            let err = Config::from_env(&env_of(pairs)).expect_err("invalid");
            assert_eq!(err.code, code::FAILED_PRECONDITION);
            assert!(
                err.message.contains(needle),
                "{} lacks {needle}",
                err.message
            );
        };
        check(
            &[("OIDC_CLIENT_ID", "x"), ("OIDC_CLIENT_SECRET", "y")],
            "OIDC_ISSUER",
        );
        check(
            &[
                ("OIDC_ISSUER", "http://idp"),
                ("OIDC_CLIENT_ID", "x"),
                ("OIDC_CLIENT_SECRET", "y"),
            ],
            "https://",
        );
        check(
            &[("OIDC_ISSUER", "https://idp"), ("OIDC_CLIENT_SECRET", "y")],
            "OIDC_CLIENT_ID",
        );
        check(
            &[("OIDC_ISSUER", "https://idp"), ("OIDC_CLIENT_ID", "x")],
            "OIDC_CLIENT_SECRET_FILE",
        );
        let mut pairs = base();
        pairs.push(("OIDC_AUDIENCE_PARAM", "aud"));
        check(&pairs, "OIDC_AUDIENCE_PARAM");
        let mut pairs = base();
        pairs.push(("OIDC_RESOURCE_TEMPLATE", "urn:fixed"));
        check(&pairs, "{audience}");
    }

    #[test]
    fn rpc_names_are_checked_when_set() {
        assert!(check_rpc(&env_of(&[])).is_ok());
        assert!(
            check_rpc(&env_of(&[
                ("RPC_SERVICE_NAME", CREDENTIAL_SERVICE),
                ("RPC_METHOD_NAME", "GetCredential")
            ]))
            .is_ok()
        );
        assert_eq!(
            check_rpc(&env_of(&[("RPC_METHOD_NAME", "GetHostInfo")]))
                .expect_err("other method")
                .code,
            code::UNIMPLEMENTED
        );
    }

    fn jwt(claims: Value) -> String {
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.sig",
            b64(&serde_json::json!({"alg": "RS256"})),
            b64(&claims)
        )
    }

    #[test]
    fn token_checks() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let good = jwt(serde_json::json!({"aud": ["x", "plane"], "exp": 1600}));
        assert_eq!(check_token(&good, "plane", None, now).expect("ok"), 1600);
        let no_exp = jwt(serde_json::json!({"aud": "plane"}));
        assert_eq!(
            check_token(&no_exp, "plane", Some(600), now).expect("ok"),
            1600
        );
        let other = jwt(serde_json::json!({"aud": "another", "exp": 1600}));
        assert!(
            check_token(&other, "plane", None, now)
                .expect_err("aud")
                .message
                .contains("another")
        );
        assert!(
            check_token("opaque-token", "plane", None, now)
                .expect_err("opaque")
                .message
                .contains("opaque")
        );
    }

    #[test]
    fn oauth_errors_map_to_codes() {
        assert_eq!(
            token_error("e", 401, r#"{"error":"invalid_client"}"#).code,
            code::UNAUTHENTICATED
        );
        assert_eq!(
            token_error("e", 400, r#"{"error":"invalid_client"}"#).code,
            code::UNAUTHENTICATED
        );
        assert_eq!(
            token_error("e", 400, r#"{"error":"invalid_target"}"#).code,
            code::FAILED_PRECONDITION
        );
        assert_eq!(token_error("e", 503, "busy").code, code::UNAVAILABLE);
        assert!(
            token_error(
                "e",
                400,
                r#"{"error":"invalid_scope","error_description":"nope"}"#
            )
            .message
            .contains("invalid_scope: nope")
        );
    }

    #[test]
    fn cache_freshness() {
        let entry = |issued_at, expires_at| CacheEntry {
            token_endpoint: String::new(),
            client_id: String::new(),
            audience: String::new(),
            token: String::new(),
            issued_at,
            expires_at,
        };
        // A one-hour token is reused until five minutes before expiry.
        assert!(fresh_enough(&entry(0, 3600), 3000));
        assert!(!fresh_enough(&entry(0, 3600), 3300));
        // A ten-minute token until half its life is gone.
        assert!(fresh_enough(&entry(0, 600), 299));
        assert!(!fresh_enough(&entry(0, 600), 300));
        // A clock that went back past the issue time: do not trust the entry.
        assert!(!fresh_enough(&entry(10_000, 13_600), 5_000));
    }
}
