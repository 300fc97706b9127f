//! The one way this crate builds a blocking HTTP client (a ureq agent): the agent's calls to
//! the endpoint and to cloud metadata services, the endpoint's calls to cloud APIs and to
//! key sources (JWT issuers, Google), the OIDC credential plugin's calls to its provider.
//!
//! Every site states its whole-request timeout; redirects are not followed unless the site
//! asks for a cap (a metadata service or a cloud API never redirects, and following one
//! would carry the request's headers to another address); HTTP error statuses come back as
//! responses, so the caller reads the body and words the error; a CA file, when given,
//! replaces the public roots and a bad one is refused with the file's name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// PEM text that yields no usable certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("not valid PEM: {0}")]
    Invalid(String),
    #[error("no CERTIFICATE block found")]
    NoCertificate,
}

/// The certificates in PEM text (other blocks, such as keys, are skipped).
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Certificate<'static>>, PemError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(PemError::Invalid(e.to_string())),
        }
    }
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// A CA file that cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: bad PEM: {detail}", path.display())]
    BadPem { path: PathBuf, detail: String },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
}

/// The CA certificates in the PEM file at `path`.
pub fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, CaFileError> {
    let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    pem_certificates(&pem).map_err(|e| match e {
        PemError::Invalid(detail) => CaFileError::BadPem {
            path: path.to_owned(),
            detail,
        },
        PemError::NoCertificate => CaFileError::NoCertificate {
            path: path.to_owned(),
        },
    })
}

/// Builds a ureq agent. Start with [`HttpClient::new`] (the whole-request timeout), add what
/// the site needs, finish with [`HttpClient::build`].
#[must_use]
#[derive(Clone)]
pub struct HttpClient {
    timeout: Duration,
    connect_timeout: Option<Duration>,
    max_redirects: u32,
    https_only: bool,
    tls: Option<TlsConfig>,
    user_agent: Option<String>,
    no_proxy: bool,
    max_idle: Option<usize>,
}

impl HttpClient {
    /// No redirects followed, any scheme, the platform's default roots, no proxy override.
    pub fn new(timeout: Duration) -> HttpClient {
        HttpClient {
            timeout,
            connect_timeout: None,
            max_redirects: 0,
            https_only: false,
            tls: None,
            user_agent: None,
            no_proxy: false,
            max_idle: None,
        }
    }

    /// A shorter limit on establishing the connection (probes that must give up quickly).
    pub fn connect_timeout(mut self, timeout: Duration) -> HttpClient {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Follow at most `n` redirects; one more is an error.
    pub fn max_redirects(mut self, n: u32) -> HttpClient {
        self.max_redirects = n;
        self
    }

    /// Refuse `http://` URLs, the first one and every redirect.
    pub fn https_only(mut self) -> HttpClient {
        self.https_only = true;
        self
    }

    /// Trust only the certificates in the PEM file at `path` (when given) instead of the
    /// public roots.
    pub fn ca_file(self, path: Option<&Path>) -> Result<HttpClient, CaFileError> {
        let Some(path) = path else {
            return Ok(self);
        };
        let roots = read_ca_file(path)?;
        Ok(self.tls(
            TlsConfig::builder()
                .root_certs(RootCerts::Specific(Arc::new(roots)))
                .build(),
        ))
    }

    /// A TLS configuration of the site's own (the agent's endpoint client combines the system
    /// bundle with configured roots).
    pub fn tls(mut self, tls: TlsConfig) -> HttpClient {
        self.tls = Some(tls);
        self
    }

    pub fn user_agent(mut self, user_agent: impl Into<String>) -> HttpClient {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// Ignore proxies from the environment: the peer is reached directly.
    pub fn no_proxy(mut self) -> HttpClient {
        self.no_proxy = true;
        self
    }

    /// Keep at most `n` idle connections (in total and per host).
    pub fn max_idle_connections(mut self, n: usize) -> HttpClient {
        self.max_idle = Some(n);
        self
    }

    /// The ureq configuration, for a site that supplies its own connector or resolver.
    pub fn config(self) -> ureq::config::Config {
        let mut b = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .max_redirects(self.max_redirects)
            .https_only(self.https_only);
        if let Some(t) = self.connect_timeout {
            b = b.timeout_connect(Some(t));
        }
        if let Some(tls) = self.tls {
            b = b.tls_config(tls);
        }
        if let Some(ua) = self.user_agent {
            b = b.user_agent(ua);
        }
        if self.no_proxy {
            b = b.proxy(None);
        }
        if let Some(n) = self.max_idle {
            b = b.max_idle_connections(n).max_idle_connections_per_host(n);
        }
        b.build()
    }

    pub fn build(self) -> ureq::Agent {
        ureq::Agent::new_with_config(self.config())
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{redirect, serve};
    use super::*;

    fn cert_pem() -> String {
        rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .expect("self-signed certificate")
            .cert
            .pem()
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        assert_eq!(
            pem_certificates(b"garbage").err(),
            Some(PemError::NoCertificate),
            "text with no PEM block"
        );
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            pem_certificates(key_only.as_bytes()).err(),
            Some(PemError::NoCertificate)
        );
        assert_eq!(
            pem_certificates(cert_pem().as_bytes())
                .map(|c| c.len())
                .ok(),
            Some(1)
        );
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let e = HttpClient::new(Duration::from_secs(1))
            .ca_file(Some(&missing))
            .err()
            .expect("missing file");
        assert!(matches!(e, CaFileError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here").expect("write");
        let e = read_ca_file(&empty).expect_err("no certificate");
        assert_eq!(
            e.to_string(),
            format!("{} holds no PEM certificate", empty.display())
        );
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, cert_pem()).expect("write");
        assert_eq!(read_ca_file(&good).expect("one certificate").len(), 1);
        assert!(
            HttpClient::new(Duration::from_secs(1))
                .ca_file(None)
                .is_ok()
        );
    }

    #[test]
    fn redirects_are_not_followed_unless_capped_and_the_cap_holds() {
        let server = serve(false, |_, own| redirect(own));
        let agent = HttpClient::new(Duration::from_secs(5)).build();
        let resp = agent.get(&server.url).call().expect("3xx is an answer");
        assert_eq!(resp.status(), 302);
        assert_eq!(server.requests().len(), 1);

        let agent = HttpClient::new(Duration::from_secs(5))
            .max_redirects(3)
            .build();
        let e = agent.get(&server.url).call().expect_err("a redirect loop");
        assert!(matches!(e, ureq::Error::TooManyRedirects), "{e}");
        assert_eq!(
            server.requests().len(),
            4,
            "the first request and 3 redirects"
        );
    }

    #[test]
    fn https_only_refuses_plain_http() {
        let server = serve(false, |_, own| redirect(own));
        let agent = HttpClient::new(Duration::from_secs(5)).https_only().build();
        let e = agent
            .get(&server.url)
            .call()
            .expect_err("http:// is refused");
        assert!(matches!(e, ureq::Error::RequireHttpsOnly(_)), "{e}");
        assert!(server.requests().is_empty(), "nothing was sent");

        // Over TLS with the server's certificate trusted, a redirect to http:// is refused.
        let tls = serve(true, |_, _| redirect("http://127.0.0.1:9/"));
        let agent = HttpClient::new(Duration::from_secs(5))
            .https_only()
            .max_redirects(3)
            .ca_file(tls.ca_file.as_deref())
            .expect("CA file")
            .build();
        let e = agent.get(&tls.url).call().expect_err("redirect to http://");
        assert!(matches!(e, ureq::Error::RequireHttpsOnly(_)), "{e}");
        assert_eq!(tls.requests().len(), 1);
    }
}

/// Local servers for the HTTP clients' tests: plain or TLS (a fresh CA-less self-signed
/// certificate for 127.0.0.1, written to a CA file the client can trust).
#[cfg(test)]
pub(crate) mod test_server {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::mpsc::{Receiver, channel};
    use std::time::Duration;

    pub(crate) struct Server {
        /// `http://127.0.0.1:<port>/` or `https://...`.
        pub(crate) url: String,
        /// The certificate to trust, for a TLS server.
        pub(crate) ca_file: Option<PathBuf>,
        requests: Receiver<String>,
        _dir: tempfile::TempDir,
    }

    impl Server {
        /// The request lines received so far.
        pub(crate) fn requests(&self) -> Vec<String> {
            std::thread::sleep(Duration::from_millis(100));
            self.requests.try_iter().collect()
        }
    }

    fn read_head(s: &mut (impl Read + ?Sized)) -> Option<String> {
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&seen);
        Some(head.lines().next().unwrap_or_default().to_owned())
    }

    /// Serves `answer(request_line, own_url)` (a whole HTTP/1.1 response) to every request.
    pub(crate) fn serve(
        tls: bool,
        answer: impl Fn(&str, &str) -> String + Send + 'static,
    ) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let url = format!("{}://{addr}/", if tls { "https" } else { "http" });
        let (tx, rx) = channel();
        let mut ca_file = None;
        let tls_config = if tls {
            let ck =
                rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("certificate");
            let path = dir.path().join("ca.pem");
            std::fs::write(&path, ck.cert.pem()).expect("write CA");
            ca_file = Some(path);
            let key =
                rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .expect("server config");
            Some(Arc::new(config))
        } else {
            None
        };
        let own = url.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(tcp) = stream else { return };
                let handle = |s: &mut dyn ReadWrite| {
                    if let Some(line) = read_head(s) {
                        let _ = tx.send(line.clone());
                        let _ = s.write_all(answer(&line, &own).as_bytes());
                        let _ = s.flush();
                    }
                };
                match &tls_config {
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                            continue;
                        };
                        let mut s = rustls::StreamOwned::new(conn, tcp);
                        handle(&mut s);
                        s.conn.send_close_notify();
                        let _ = s.flush();
                    }
                    None => {
                        let mut s: TcpStream = tcp;
                        handle(&mut s);
                    }
                }
            }
        });
        Server {
            url,
            ca_file,
            requests: rx,
            _dir: dir,
        }
    }

    trait ReadWrite: Read + Write {}
    impl<T: Read + Write> ReadWrite for T {}

    /// A response redirecting to `location`.
    pub(crate) fn redirect(location: &str) -> String {
        format!(
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    }

    /// A 200 response with a JSON body.
    #[cfg(feature = "endpoint")]
    pub(crate) fn json(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}
