//! The endpoint's HTTP API (src/api/protocol.rs) over ureq: discovery, authorize, register,
//! keep-alive, bootstrap, unregister. JSON error bodies become [`ClientError::Api`] with the
//! endpoint's stable code, so the main loop can tell "onboard again" from "try later".
//!
//! TLS: the endpoint is verified against the system roots plus `ONBOARDING_AGENT_ROOT_CERTS`
//! and `tls.caFile`. The `sni` override works by putting the SNI name in the URL (so it is
//! also the name verified and the Host header) and resolving it to the configured host.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::api::agent_config::OnboardingEndpoint;
use crate::api::meta::NamespacedName;
use crate::api::protocol::{
    ApiError, AuthorizeRequest, AuthorizeResponse, Bootstrap, Credential, DiscoveryResponse,
    ErrorCode, KeepAliveResponse, NonceResponse, PATH_AUTHORIZE, PATH_BOOTSTRAP, PATH_DISCOVERY,
    PATH_KEEPALIVE, PATH_NONCE, PATH_REGISTER, PATH_UNREGISTER, RegisterRequest, RegisterResponse,
    UnregisterResponse,
};
use crate::api::registration::Registration;
use crate::http_client::{HttpClient, pem_certificates};

/// Per-request limit; the API's bodies are a few kilobytes.
const MAX_BODY: u64 = 4 * 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// System CA bundles, in the order distributions put them.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",   // RHEL, Fedora
    "/etc/ssl/ca-bundle.pem",             // SUSE
    "/etc/ssl/cert.pem",                  // Alpine, macOS
];

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Transport-level failure: DNS, connect, TLS handshake, timeout.
    #[error("cannot reach the onboarding endpoint at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The endpoint answered with an API error.
    #[error("the onboarding endpoint refused {what}: {code}: {message}")]
    Api {
        what: &'static str,
        status: u16,
        code: ErrorCode,
        message: String,
    },
    /// An answer that is not what the protocol says.
    #[error("unexpected answer from the onboarding endpoint to {what} (HTTP {status}): {detail}")]
    Unexpected {
        what: &'static str,
        status: u16,
        detail: String,
    },
    #[error("TLS setup: {0}")]
    TlsSetup(String),
}

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// How to reach the endpoint, derived from the onboarding config.
#[derive(Clone)]
pub struct Transport {
    /// `https://<sni or host>:<port>` or `http://<host>:<port>`.
    pub base_url: String,
    /// Where to connect, when it differs from the URL's host (the `sni` override).
    pub connect_to: Option<(String, u16)>,
    pub plain_text: bool,
    pub insecure_skip_verify: bool,
    /// Extra trust roots (PEM), each with where it came from, for error messages.
    pub extra_roots: Vec<(String, String)>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("base_url", &self.base_url)
            .field("connect_to", &self.connect_to)
            .field("plain_text", &self.plain_text)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Decides the URL, SNI and trust settings; reads `tls.caFile`.
pub fn transport(
    ep: &OnboardingEndpoint,
    env_root_certs: Option<&str>,
) -> Result<Transport, ClientError> {
    let ts = ep.transport_security.clone().unwrap_or_default();
    if ts.none.is_some() {
        return Ok(Transport {
            base_url: format!("http://{}:{}", url_host(&ep.host), ep.port),
            connect_to: None,
            plain_text: true,
            insecure_skip_verify: false,
            extra_roots: Vec::new(),
        });
    }
    let tls = ts.tls.unwrap_or_default();
    let mut extra_roots = Vec::new();
    if let Some(pem) = env_root_certs {
        extra_roots.push((
            format!("${}", super::config::ENV_ROOT_CERTS),
            pem.to_string(),
        ));
    }
    if let Some(ca) = &tls.ca_file {
        let pem = std::fs::read_to_string(ca).map_err(|e| {
            ClientError::TlsSetup(format!(
                "onboardingEndpoint.transportSecurity.tls.caFile: cannot read {ca}: {e}"
            ))
        })?;
        extra_roots.push((ca.clone(), pem));
    }
    let (url_name, connect_to) = if tls.sni.is_empty() {
        (url_host(&ep.host), None)
    } else {
        (tls.sni.clone(), Some((ep.host.clone(), ep.port)))
    };
    Ok(Transport {
        base_url: format!("https://{url_name}:{}", ep.port),
        connect_to,
        plain_text: false,
        insecure_skip_verify: tls.insecure_skip_verify,
        extra_roots,
    })
}

/// Certificates from a PEM text; an error names where the text came from.
pub fn parse_certs(origin: &str, pem: &str) -> Result<Vec<Certificate<'static>>, ClientError> {
    pem_certificates(pem.as_bytes()).map_err(|e| ClientError::TlsSetup(format!("{origin}: {e}")))
}

fn system_roots() -> Option<(String, Vec<Certificate<'static>>)> {
    let from_env = std::env::var("SSL_CERT_FILE").ok();
    let candidates = from_env
        .iter()
        .map(String::as_str)
        .chain(SYSTEM_BUNDLES.iter().copied());
    for path in candidates {
        if let Ok(pem) = std::fs::read_to_string(Path::new(path))
            && let Ok(certs) = parse_certs(path, &pem)
        {
            return Some((path.to_string(), certs));
        }
    }
    None
}

/// Resolves every URL to the configured endpoint host (for the `sni` override).
#[derive(Debug)]
struct FixedResolver {
    host: String,
    port: u16,
}

impl Resolver for FixedResolver {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let bare = self
            .host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host);
        let addrs: Vec<SocketAddr> = (bare, self.port).to_socket_addrs()?.collect();
        let mut out = self.empty();
        for a in addrs.into_iter().take(16) {
            out.push(a);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

pub struct Client {
    agent: ureq::Agent,
    base_url: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl Client {
    pub fn new(t: &Transport) -> Result<Client, ClientError> {
        let mut tls = TlsConfig::builder();
        if t.insecure_skip_verify {
            tls = tls.disable_verification(true);
        } else if !t.plain_text {
            let mut roots = Vec::new();
            let system = system_roots();
            let have_system = system.is_some();
            if let Some((_, certs)) = system {
                roots.extend(certs);
            }
            for (origin, pem) in &t.extra_roots {
                roots.extend(parse_certs(origin, pem)?);
            }
            tls = if roots.is_empty() {
                // No system bundle and nothing extra: the roots compiled into the agent.
                tls.root_certs(RootCerts::WebPki)
            } else {
                if !have_system {
                    tracing::warn!(
                        "no system CA bundle found; trusting only the configured CA certificates"
                    );
                }
                tls.root_certs(RootCerts::new_with_certs(&roots))
            };
        }
        let config = HttpClient::new(REQUEST_TIMEOUT)
            // Proxies from the environment would bypass the sni resolver and the loopback
            // rule of tests; the endpoint is reached directly.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            // ureq's default, kept from before the shared builder.
            .max_redirects(10)
            .user_agent(format!("onboarding-agent/{}", super::VERSION))
            .max_idle_connections(1)
            .tls(tls.build())
            .config();
        let agent = match &t.connect_to {
            Some((host, port)) => ureq::Agent::with_parts(
                config,
                DefaultConnector::default(),
                FixedResolver {
                    host: host.clone(),
                    port: *port,
                },
            ),
            None => ureq::Agent::new_with_config(config),
        };
        Ok(Client {
            agent,
            base_url: t.base_url.clone(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn discovery(&self) -> Result<DiscoveryResponse, ClientError> {
        let url = format!("{}{PATH_DISCOVERY}", self.base_url);
        let resp = self.agent.get(&url).call();
        self.finish("discovery", &url, resp)
    }

    pub fn authorize(
        &self,
        workload_group: &NamespacedName,
        credential: Credential,
    ) -> Result<AuthorizeResponse, ClientError> {
        let body = AuthorizeRequest {
            workload_group: workload_group.clone(),
            credential,
        };
        self.post("authorization", PATH_AUTHORIZE, None, &body)
    }

    /// Authorize again while a session is live, presenting its token: the endpoint then
    /// continues this agent's session instead of refusing a second one for the same cloud
    /// host.
    pub fn renew(
        &self,
        workload_group: &NamespacedName,
        credential: Credential,
        current_token: &str,
    ) -> Result<AuthorizeResponse, ClientError> {
        let body = AuthorizeRequest {
            workload_group: workload_group.clone(),
            credential,
        };
        self.post("authorization", PATH_AUTHORIZE, Some(current_token), &body)
    }

    /// A single-use nonce for credentials that carry one (Azure attested data).
    pub fn nonce(&self) -> Result<NonceResponse, ClientError> {
        let url = format!("{}{PATH_NONCE}", self.base_url);
        let resp = self.agent.post(&url).send_empty();
        self.finish("nonce", &url, resp)
    }

    pub fn register(
        &self,
        token: &str,
        registration: &Registration,
    ) -> Result<RegisterResponse, ClientError> {
        let body = RegisterRequest {
            registration: registration.clone(),
        };
        self.post("registration", PATH_REGISTER, Some(token), &body)
    }

    pub fn keep_alive(&self, token: &str) -> Result<KeepAliveResponse, ClientError> {
        self.post_empty("keep-alive", PATH_KEEPALIVE, token)
    }

    pub fn bootstrap(&self, token: &str) -> Result<Bootstrap, ClientError> {
        let url = format!("{}{PATH_BOOTSTRAP}", self.base_url);
        let resp = self
            .agent
            .get(&url)
            .header("Authorization", format!("Bearer {token}"))
            .call();
        self.finish("bootstrap", &url, resp)
    }

    pub fn unregister(&self, token: &str) -> Result<UnregisterResponse, ClientError> {
        self.post_empty("unregistration", PATH_UNREGISTER, token)
    }

    fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        token: Option<&str>,
        body: &B,
    ) -> Result<R, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let mut req = self.agent.post(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = req.send_json(body);
        self.finish(what, &url, resp)
    }

    fn post_empty<R: DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        token: &str,
    ) -> Result<R, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let resp = self
            .agent
            .post(&url)
            .header("Authorization", format!("Bearer {token}"))
            .send_empty();
        self.finish(what, &url, resp)
    }

    fn finish<R: DeserializeOwned>(
        &self,
        what: &'static str,
        url: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<R, ClientError> {
        let mut resp = resp.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| ClientError::Unreachable {
                url: url.to_string(),
                detail: format!("reading the answer: {e}"),
            })?;
        decode(what, status, &text)
    }
}

/// Turns a status and body into the typed answer or a typed error (pure, for tests).
pub fn decode<R: DeserializeOwned>(
    what: &'static str,
    status: u16,
    text: &str,
) -> Result<R, ClientError> {
    if (200..300).contains(&status) {
        return serde_json::from_str(text).map_err(|e| ClientError::Unexpected {
            what,
            status,
            detail: format!("body does not match the protocol: {e}"),
        });
    }
    match serde_json::from_str::<ApiError>(text) {
        Ok(err) => Err(ClientError::Api {
            what,
            status,
            code: err.code,
            message: err.message,
        }),
        Err(_) => Err(ClientError::Unexpected {
            what,
            status,
            detail: text.chars().take(200).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::agent_config::{ClientTransportSecurity, PlainTextClient, TlsClient};

    fn ep(host: &str, ts: Option<ClientTransportSecurity>) -> OnboardingEndpoint {
        OnboardingEndpoint {
            host: host.into(),
            port: 15443,
            transport_security: ts,
        }
    }

    #[test]
    fn urls_sni_and_plain_text() {
        let t = transport(&ep("10.0.0.1", None), None).unwrap();
        assert_eq!(t.base_url, "https://10.0.0.1:15443");
        assert!(t.connect_to.is_none() && !t.plain_text && !t.insecure_skip_verify);

        let t = transport(&ep("::1", None), Some("PEM")).unwrap();
        assert_eq!(t.base_url, "https://[::1]:15443");
        assert_eq!(t.extra_roots[0].0, "$ONBOARDING_AGENT_ROOT_CERTS");

        let sni = ClientTransportSecurity {
            tls: Some(TlsClient {
                sni: "onboarding.example".into(),
                ..TlsClient::default()
            }),
            none: None,
        };
        let t = transport(&ep("127.0.0.1", Some(sni)), None).unwrap();
        assert_eq!(t.base_url, "https://onboarding.example:15443");
        assert_eq!(t.connect_to, Some(("127.0.0.1".to_string(), 15443)));

        let plain = ClientTransportSecurity {
            tls: None,
            none: Some(PlainTextClient {}),
        };
        let t = transport(&ep("127.0.0.1", Some(plain)), Some("PEM")).unwrap();
        assert_eq!(t.base_url, "http://127.0.0.1:15443");
        assert!(t.plain_text && t.extra_roots.is_empty());
    }

    #[test]
    fn ca_file_errors_name_the_field() {
        let ts = ClientTransportSecurity {
            tls: Some(TlsClient {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..TlsClient::default()
            }),
            none: None,
        };
        let e = transport(&ep("h.example", Some(ts)), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tls.caFile") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let e = parse_certs("$ONBOARDING_AGENT_ROOT_CERTS", "garbage")
            .unwrap_err()
            .to_string();
        assert!(e.contains("$ONBOARDING_AGENT_ROOT_CERTS"), "{e}");
    }

    #[test]
    fn decodes_answers_and_api_errors() {
        let ok: KeepAliveResponse = decode(
            "keep-alive",
            200,
            r#"{"registration":{"namespace":"ns","name":"war"},"connectedTo":"ep-1"}"#,
        )
        .unwrap();
        assert_eq!(ok.connected_to, "ep-1");
        let gone = decode::<KeepAliveResponse>(
            "keep-alive",
            410,
            r#"{"code":"registration_gone","message":"deleted"}"#,
        )
        .unwrap_err();
        assert_eq!(gone.code(), Some(ErrorCode::RegistrationGone));
        assert!(
            gone.to_string().contains("registration_gone: deleted"),
            "{gone}"
        );
        let html =
            decode::<KeepAliveResponse>("keep-alive", 502, "<html>bad gateway</html>").unwrap_err();
        assert!(matches!(html, ClientError::Unexpected { status: 502, .. }));
        let bad = decode::<KeepAliveResponse>("keep-alive", 200, "{}").unwrap_err();
        assert!(matches!(bad, ClientError::Unexpected { status: 200, .. }));
    }

    #[test]
    fn unreachable_endpoint_is_a_transport_error() {
        // A port nobody listens on (bound then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut e = ep("127.0.0.1", None);
        e.port = port;
        let client = Client::new(&transport(&e, None).unwrap()).unwrap();
        let err = client.discovery().unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    }
}
