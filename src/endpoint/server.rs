//! HTTPS: warp routes served through our own tokio-rustls accept loop (warp 0.4 has no TLS),
//! with handshake, header, request and idle timeouts, body limits and JSON errors.
//!
//! Every connection holds one of `maxConnections` slots until it closes, so no connection
//! may stay open doing nothing: HTTP/1.1 keep-alive connections are closed by hyper's header
//! read timeout, and every connection (HTTP/2 included, which hyper never closes on its own)
//! by the idle watchdog in [`serve`] once no request has been in flight for the request
//! timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower_service::Service as _;
use warp::{Filter, Rejection, Reply};

use super::cloud::{RequestSource, last_forwarded};
use super::install::{self, Repository};
use super::metrics::RouteLabels;
use super::service::Service;
use crate::api::protocol::{self, ApiError, ErrorCode};
use crate::lock;
use crate::store::Store;

/// The client's address, attached to each request by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub max_body_bytes: u64,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    /// `localRepository.directory`: served under `/install/` (src/endpoint/install.rs).
    pub local_repository: Option<std::path::PathBuf>,
}

/// Concurrent streams one HTTP/2 connection may carry. An agent makes one call at a time; the
/// cap keeps one client from tying up the endpoint's workers with hundreds of slow streams
/// over a single connection slot (hyper's default is 200). Streams beyond it are refused
/// with `REFUSED_STREAM`, which clients retry.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 32;
/// While a request is in flight on an HTTP/2 connection, a PING this often finds a peer that
/// vanished without closing; no answer within the timeout closes the connection.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest header block accepted on HTTP/2 (hyper's default is 16 MiB); our requests carry a
/// bearer token and a few standard headers.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// What the idle watchdog knows about one connection: requests in flight, and since when
/// none has been.
#[derive(Debug)]
struct Activity {
    state: Mutex<(usize, Instant)>,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new((0, Instant::now())),
        })
    }

    /// Marks a request in flight until the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> InFlight {
        // Poisoned (see `crate::lock`): nothing counted, and `idle_deadline` closes the
        // connection.
        if let Ok(mut s) = lock::lock(&self.state, ACTIVITY) {
            s.0 += 1;
        }
        InFlight(self.clone())
    }

    /// When the connection becomes idle for `timeout` if nothing happens meanwhile; `None`
    /// while a request is in flight (the request timeout bounds that).
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        match lock::lock(&self.state, ACTIVITY) {
            Ok(s) if s.0 == 0 => Some(s.1 + timeout),
            Ok(_) => None,
            // A poisoned lock cannot tell: treat the connection as idle so it is not kept.
            Err(_) => Some(Instant::now()),
        }
    }
}

struct InFlight(Arc<Activity>);

/// Attached to each request by the accept loop: a response body that streams for long
/// (a package from the local repository) calls [`Progress::touch`] for every chunk it
/// sends, so the idle watchdog counts a download that makes progress as activity. A
/// client that stops reading stops the chunks, and its connection is closed like any
/// idle one.
#[derive(Clone)]
pub struct Progress(Arc<Activity>);

impl Progress {
    pub fn touch(&self) {
        if let Ok(mut s) = lock::lock(&self.0.state, ACTIVITY) {
            s.1 = Instant::now();
        }
    }
}

const ACTIVITY: &str = "connection activity";

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut s) = lock::lock(&self.0.state, ACTIVITY) {
            s.0 = s.0.saturating_sub(1);
            s.1 = Instant::now();
        }
    }
}

#[derive(Debug)]
struct Failure(ApiError);
impl warp::reject::Reject for Failure {}

fn json_reply<T: serde::Serialize>(value: &T, status: StatusCode) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// Seconds a client is asked to wait (`Retry-After`) when the endpoint is unavailable.
pub const RETRY_AFTER_SECONDS: u32 = 5;

fn error_reply(e: &ApiError) -> warp::reply::Response {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_reply(e, status);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(RETRY_AFTER_SECONDS),
        );
    }
    resp
}

fn bearer() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").map(|h: Option<String>| {
        h.and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .map(|t| t.trim().to_string())
        })
    })
}

/// Whether a request's `Content-Type` announces JSON: `application/json`, in any case, with
/// or without parameters; a `charset` other than UTF-8 is refused because JSON is UTF-8
/// (RFC 8259). Anything else (no header, `text/plain`, a form) gets a message saying what
/// to send.
pub fn check_json_content_type(value: Option<&str>) -> Result<(), ApiError> {
    let refuse = |what: String| ApiError {
        code: ErrorCode::UnsupportedMediaType,
        message: format!("{what}; send the body as JSON with Content-Type: application/json"),
    };
    let Some(value) = value else {
        return Err(refuse("the request has no Content-Type".into()));
    };
    let mut parts = value.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(refuse(format!("Content-Type {value:?} is not JSON")));
    }
    for param in parts {
        let (name, val) = param.split_once('=').unwrap_or((param, ""));
        if name.trim().eq_ignore_ascii_case("charset") {
            let val = val.trim().trim_matches('"');
            if !val.eq_ignore_ascii_case("utf-8") && !val.eq_ignore_ascii_case("utf8") {
                return Err(refuse(format!(
                    "Content-Type {value:?} has charset {val:?}, but JSON is UTF-8"
                )));
            }
        }
    }
    Ok(())
}

fn json_body<T: serde::de::DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|ct: Option<String>| async move {
            check_json_content_type(ct.as_deref()).map_err(|e| warp::reject::custom(Failure(e)))
        })
        .untuple_one()
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
        .and_then(|b: Bytes| async move {
            serde_json::from_slice::<T>(&b).map_err(|e| {
                warp::reject::custom(Failure(ApiError {
                    code: ErrorCode::BadRequest,
                    message: format!("request body is not valid: {e}"),
                }))
            })
        })
}

async fn timed<T: serde::Serialize>(
    metrics: &super::metrics::Metrics,
    route: &str,
    started: Instant,
    result: Result<T, ApiError>,
) -> Result<warp::reply::Response, Infallible> {
    metrics
        .latency
        .get_or_create(&RouteLabels {
            route: route.to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    Ok(match result {
        Ok(v) => json_reply(&v, StatusCode::OK),
        Err(e) => error_reply(&e),
    })
}

/// All routes of the API.
pub fn routes<S: Store>(
    svc: Arc<Service<S>>,
    max_body: u64,
    repository: Option<Arc<Repository>>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let with = {
        let svc = svc.clone();
        warp::any().map(move || svc.clone())
    };
    let peer = warp::ext::optional::<PeerAddr>();

    let discovery = warp::path!("v1" / "discovery")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Arc<Service<S>>| json_reply(&s.discovery(), StatusCode::OK));

    let authorize = warp::path!("v1" / "authorize")
        .and(warp::post())
        .and(with.clone())
        .and(peer)
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(bearer())
        .and(json_body::<protocol::AuthorizeRequest>(max_body))
        .and_then(
            |s: Arc<Service<S>>,
             peer: Option<PeerAddr>,
             xff: Option<String>,
             b: Option<String>,
             req| async move {
                let t = Instant::now();
                // The header is only believed from a trusted proxy (checked by the EC2
                // verifier); anyone else's is ignored there.
                let source = RequestSource {
                    peer: peer.map(|p| p.0.ip()),
                    forwarded_for: xff.as_deref().and_then(last_forwarded),
                };
                let r = s.authorize(req, source, b.as_deref()).await;
                timed(&s.metrics, "authorize", t, r).await
            },
        );

    let nonce = warp::path!("v1" / "nonce")
        .and(warp::post().or(warp::get()).unify())
        .and(with.clone())
        .and_then(|s: Arc<Service<S>>| async move {
            let t = Instant::now();
            let r = s.nonce();
            timed(&s.metrics, "nonce", t, r).await
        });

    let register = warp::path!("v1" / "register")
        .and(warp::post())
        .and(with.clone())
        .and(bearer())
        .and(json_body::<protocol::RegisterRequest>(max_body))
        .and_then(|s: Arc<Service<S>>, b: Option<String>, req| async move {
            let t = Instant::now();
            let r = s.register(b.as_deref(), req).await;
            timed(&s.metrics, "register", t, r).await
        });

    let keepalive = warp::path!("v1" / "keepalive")
        .and(warp::post())
        .and(with.clone())
        .and(bearer())
        .and_then(|s: Arc<Service<S>>, b: Option<String>| async move {
            let t = Instant::now();
            let r = s.keepalive(b.as_deref()).await;
            timed(&s.metrics, "keepalive", t, r).await
        });

    let bootstrap = warp::path!("v1" / "bootstrap")
        .and(warp::get())
        .and(with.clone())
        .and(bearer())
        .and_then(|s: Arc<Service<S>>, b: Option<String>| async move {
            let t = Instant::now();
            let r = s.bootstrap(b.as_deref()).await;
            timed(&s.metrics, "bootstrap", t, r).await
        });

    let unregister = warp::path!("v1" / "unregister")
        .and(warp::post())
        .and(with.clone())
        .and(bearer())
        .and_then(|s: Arc<Service<S>>, b: Option<String>| async move {
            let t = Instant::now();
            let r = s.unregister(b.as_deref()).await;
            timed(&s.metrics, "unregister", t, r).await
        });

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok\n", StatusCode::OK).into_response());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Arc<Service<S>>| {
            if s.store.is_ready() {
                warp::reply::with_status("ready\n", StatusCode::OK).into_response()
            } else {
                warp::reply::with_status("store not loaded\n", StatusCode::SERVICE_UNAVAILABLE)
                    .into_response()
            }
        });
    // The local repository: unauthenticated (a VM downloads the agent before it has an
    // identity), no bearer read, nothing of the onboarding path involved.
    let install = warp::path("install")
        .and(warp::get().or(warp::head()).unify())
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<Progress>())
        .and(with.clone())
        .then(
            move |method: http::Method,
                  full: warp::path::FullPath,
                  headers: http::HeaderMap,
                  progress: Option<Progress>,
                  s: Arc<Service<S>>| {
                let repository = repository.clone();
                async move {
                    let t = Instant::now();
                    // The raw path: `install::parse` sees every escape and refuses it.
                    let tail = full.as_str().strip_prefix("/install/").unwrap_or("");
                    let cond = install::Conditions::from_headers(&headers);
                    let head = method == http::Method::HEAD;
                    let r =
                        install::respond(repository.as_deref(), tail, &cond, progress, head).await;
                    s.metrics
                        .latency
                        .get_or_create(&RouteLabels {
                            route: "install".into(),
                        })
                        .observe(t.elapsed().as_secs_f64());
                    r
                }
            },
        );

    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with)
        .map(|s: Arc<Service<S>>| {
            warp::reply::with_header(
                s.metrics.encode(),
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .into_response()
        });

    discovery
        .or(authorize)
        .unify()
        .or(nonce)
        .unify()
        .or(register)
        .unify()
        .or(keepalive)
        .unify()
        .or(bootstrap)
        .unify()
        .or(unregister)
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(install)
        .unify()
        .recover(recover)
        .unify()
}

async fn recover(r: Rejection) -> Result<warp::reply::Response, Infallible> {
    let e = if let Some(Failure(e)) = r.find() {
        e.clone()
    } else if r.is_not_found() {
        ApiError {
            code: ErrorCode::BadRequest,
            message: "no such API path".into(),
        }
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError {
            code: ErrorCode::PayloadTooLarge,
            message: "request body too large".into(),
        }
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        ApiError {
            code: ErrorCode::BadRequest,
            message: "send the body with a Content-Length".into(),
        }
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError {
            code: ErrorCode::BadRequest,
            message: "method not allowed on this path".into(),
        }
    } else {
        ApiError {
            code: ErrorCode::BadRequest,
            message: format!("bad request: {r:?}"),
        }
    };
    let status = if r.is_not_found() {
        StatusCode::NOT_FOUND
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
    };
    Ok(json_reply(&e, status))
}

/// Serves `routes` over TLS on `listener` until `shutdown` flips to true.
pub async fn serve<S: Store>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    svc: Arc<Service<S>>,
    opts: ServerOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let repository = opts
        .local_repository
        .clone()
        .map(|d| Arc::new(Repository::new(d)));
    let filter = routes(svc, opts.max_body_bytes, repository);
    let warp_svc = warp::service(filter);
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let warp_svc = warp_svc.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let request_timeout = opts.request_timeout;
            let activity = Activity::new();
            let svc = {
                let activity = activity.clone();
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    req.extensions_mut().insert(Progress(activity.clone()));
                    let mut inner = warp_svc.clone();
                    let in_flight = activity.begin();
                    async move {
                        let _in_flight = in_flight;
                        match tokio::time::timeout(request_timeout, inner.call(req)).await {
                            Ok(r) => r,
                            Err(_) => Ok(error_reply(&ApiError {
                                code: ErrorCode::BadRequest,
                                message: "request took too long".into(),
                            })),
                        }
                    }
                })
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(opts.request_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(H2_KEEP_ALIVE_INTERVAL))
                .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
                .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
                .max_header_list_size(H2_MAX_HEADER_LIST_BYTES);
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            // The idle watchdog. "Idle" starts when the connection opens, so a client that
            // never completes a request (no HTTP/2 preface, a header block trickled in
            // CONTINUATION frames) is closed after the same timeout as an HTTP/1.1 client
            // that never completes its headers. A graceful shutdown lets streams in flight
            // finish (GOAWAY on HTTP/2); a peer that does not close gets one more request
            // timeout before the connection is dropped.
            let idle_timeout = opts.request_timeout;
            let mut closing_since: Option<Instant> = None;
            loop {
                let wake = match closing_since {
                    Some(t) => t + request_timeout,
                    None => activity
                        .idle_deadline(idle_timeout)
                        .unwrap_or_else(|| Instant::now() + idle_timeout),
                };
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = tokio::time::sleep_until(wake.into()) => {
                        if closing_since.is_some() {
                            tracing::debug!(%peer, "connection did not close after shutdown; dropped");
                            break;
                        }
                        if activity
                            .idle_deadline(idle_timeout)
                            .is_some_and(|d| d <= Instant::now())
                        {
                            tracing::debug!(%peer, "closing idle connection");
                            conn.as_mut().graceful_shutdown();
                            closing_since = Some(Instant::now());
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_content_types_are_accepted() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert_eq!(check_json_content_type(Some(ok)), Ok(()), "{ok}");
        }
        for bad in [
            None,
            Some(""),
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("application/jsonx"),
            Some("multipart/form-data; boundary=x"),
            Some("application/json; charset=latin1"),
        ] {
            let e = check_json_content_type(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::UnsupportedMediaType, "{bad:?}");
            assert_eq!(e.code.http_status(), 415);
            assert!(
                e.message.contains("Content-Type: application/json"),
                "{bad:?}: {}",
                e.message
            );
        }
    }

    #[test]
    fn a_connection_is_idle_only_without_requests_in_flight() {
        let a = Activity::new();
        let timeout = Duration::from_secs(30);
        let opened = a.idle_deadline(timeout).expect("idle from the start");
        let first = a.begin();
        let second = a.begin();
        assert_eq!(a.idle_deadline(timeout), None);
        drop(first);
        assert_eq!(a.idle_deadline(timeout), None, "one still in flight");
        drop(second);
        let after = a.idle_deadline(timeout).expect("idle again");
        assert!(
            after >= opened,
            "the idle clock restarts when the last request ends"
        );
    }
}
