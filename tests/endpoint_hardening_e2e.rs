//! Defences of the endpoint against hostile or careless clients, end to end: the real binary
//! over real TLS on loopback. HTTP/2 is spoken as raw frames over rustls (ALPN `h2`), so
//! the test controls exactly what the server sees: a preface and nothing more, streams that
//! never send their body.

#[path = "support/endpoint.rs"]
mod endpoint;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use endpoint::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `ep` offering `alpn`.
fn tls_connect(ep: &Endpoint, alpn: &[u8]) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ep.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", ep.port())).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The next frame, or the error that ended the read (timeout, EOF).
fn read_frame(s: &mut Tls) -> std::io::Result<Frame> {
    let mut h = [0u8; 9];
    s.read_exact(&mut h)?;
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok(Frame {
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Opens an HTTP/2 connection: preface, empty SETTINGS, the server's SETTINGS read and
/// acknowledged. Returns the connection and the server's settings.
fn h2_open(ep: &Endpoint) -> (Tls, Vec<(u16, u32)>) {
    let mut s = tls_connect(ep, b"h2");
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    s.flush().unwrap();
    assert_eq!(
        s.conn.alpn_protocol(),
        Some(&b"h2"[..]),
        "the endpoint speaks HTTP/2"
    );
    let settings = loop {
        let f = read_frame(&mut s).expect("server SETTINGS");
        if f.kind == SETTINGS && f.flags & 0x1 == 0 {
            break f
                .payload
                .chunks(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect::<Vec<_>>();
        }
    };
    s.write_all(&frame(SETTINGS, 0x1, 0, &[])).unwrap();
    s.flush().unwrap();
    (s, settings)
}

/// Reads frames until the connection ends; returns whether a GOAWAY came first. Panics if
/// the connection is still open after `within`.
fn wait_closed(s: &mut Tls, within: Duration) -> bool {
    s.get_ref().set_read_timeout(Some(within)).unwrap();
    let start = Instant::now();
    let mut goaway = false;
    loop {
        match read_frame(s) {
            Ok(f) => goaway |= f.kind == GOAWAY,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("connection still open after {:?}", start.elapsed())
            }
            Err(_) => return goaway,
        }
    }
}

/// Whether a new connection gets `/healthz` answered within `within` (HTTP/1.1, raw).
fn healthz_answers(ep: &Endpoint, within: Duration) -> bool {
    let mut s = tls_connect(ep, b"http/1.1");
    s.get_ref().set_read_timeout(Some(within)).unwrap();
    s.get_ref().set_write_timeout(Some(within)).unwrap();
    if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200")
}

/// Restarts `ep` with `server:` settings of the test's own.
fn with_server_settings(mut ep: Endpoint, server: &str) -> Endpoint {
    let text = std::fs::read_to_string(&ep.config).unwrap();
    let replaced = text.replace("server: {maxBodyBytes: 8192}", server);
    assert_ne!(
        text, replaced,
        "the support config changed; update this test"
    );
    std::fs::write(&ep.config, replaced).unwrap();
    ep.restart();
    ep
}

#[test]
fn idle_http2_connections_are_closed_and_free_their_slots() {
    let ep = with_server_settings(
        Endpoint::start(Options::default()),
        "server: {maxBodyBytes: 8192, maxConnections: 3, requestTimeout: 2s}",
    );
    // As many idle HTTP/2 connections as there are slots: a preface, then nothing.
    let opened = Instant::now();
    let mut idle: Vec<Tls> = (0..3).map(|_| h2_open(&ep).0).collect();
    // Every slot is taken: a fourth client gets no answer while they last.
    assert!(
        !healthz_answers(&ep, Duration::from_millis(800)),
        "expected the slots to be full"
    );
    assert!(
        opened.elapsed() < Duration::from_secs(2),
        "the setup took too long to show the slots full ({:?})",
        opened.elapsed()
    );
    // The idle timeout (the request timeout, 2s) closes them, each with a GOAWAY first.
    for s in &mut idle {
        assert!(
            wait_closed(s, Duration::from_secs(6)),
            "no GOAWAY before close"
        );
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(1900),
        "closed too early"
    );
    // And the endpoint answers again.
    assert!(healthz_answers(&ep, Duration::from_secs(5)));
    let (s, body) = ep.call("GET", "/healthz", None, None);
    assert_eq!((s, body), (200, json!("ok\n")));
}

/// HPACK for a POST to `path` announcing a JSON body of 10 bytes (literal fields without
/// indexing, no Huffman).
fn post_headers(path: &str) -> Vec<u8> {
    let mut h = vec![0x83, 0x87]; // :method POST, :scheme https
    let mut literal = |index_prefix: &[u8], value: &str| {
        h.extend_from_slice(index_prefix);
        h.push(value.len() as u8);
        h.extend_from_slice(value.as_bytes());
    };
    literal(&[0x04], path); // :path
    literal(&[0x01], "localhost"); // :authority
    literal(&[0x0f, 0x10], "application/json"); // content-type (static 31)
    literal(&[0x0f, 0x0d], "10"); // content-length (static 28)
    h
}

#[test]
fn http2_streams_beyond_the_cap_are_refused() {
    let ep = Endpoint::start(Options::default());
    let (mut s, settings) = h2_open(&ep);
    let cap = settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|(_, v)| *v)
        .expect("the server announces a stream cap");
    assert_eq!(cap, 32, "{settings:?}");
    // `cap` requests that wait for a body that never comes, and one more.
    let headers = post_headers("/v1/register");
    for i in 0..=cap {
        s.write_all(&frame(HEADERS, 0x4, 1 + 2 * i, &headers))
            .unwrap();
    }
    s.flush().unwrap();
    let last = 1 + 2 * cap;
    s.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let refused = loop {
        let f = read_frame(&mut s).expect("a reset of the stream over the cap");
        if f.kind == RST_STREAM {
            break (
                f.stream,
                u32::from_be_bytes(f.payload[..4].try_into().unwrap()),
            );
        }
        assert!(
            f.kind != HEADERS && f.kind != DATA,
            "no stream is answered before its body: stream {}",
            f.stream
        );
    };
    assert_eq!(refused, (last, REFUSED_STREAM));
}

/// A raw HTTP/1.1 POST over TLS with exactly the headers given; returns (status, JSON).
fn post_raw(
    ep: &Endpoint,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = tls_connect(ep, b"http/1.1");
    let ct = content_type
        .map(|c| format!("content-type: {c}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{ct}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // The body may be chunked; the JSON object is between the first `{` and the last `}`.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&body[a..=b]).unwrap_or(json!(body)),
        _ => json!(body),
    };
    (status, json)
}

#[test]
fn json_bodies_need_a_json_content_type() {
    let ep = Endpoint::start(Options::default());
    let body = json!({"workloadGroup": {"namespace": NS, "name": "ratings"},
                      "credential": {"type": "jwt", "token": vm_jwt("vm-0001", &ep.plane_uid)}})
    .to_string();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=iso-8859-1"),
    ] {
        let (s, e) = post_raw(&ep, "/v1/authorize", ct, &body);
        assert_eq!(s, 415, "{ct:?}: {e}");
        assert_eq!(e["code"], "unsupported_media_type", "{ct:?}: {e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("Content-Type: application/json"),
            "{e}"
        );
    }
    let (s, e) = post_raw(&ep, "/v1/register", Some("text/plain"), "{}");
    assert_eq!(
        (s, &e["code"]),
        (415, &json!("unsupported_media_type")),
        "{e}"
    );
    // JSON, with or without parameters, goes through.
    for ct in ["application/json", "application/json; charset=utf-8"] {
        let (s, a) = post_raw(&ep, "/v1/authorize", Some(ct), &body);
        assert_eq!(s, 200, "{ct}: {a}");
        assert!(a["token"].is_string(), "{a}");
    }
}

#[test]
fn unknown_fields_in_a_credential_are_refused() {
    let ep = Endpoint::start(Options::default());
    let jwt = vm_jwt("vm-0001", &ep.plane_uid);
    let (s, e) = ep.call(
        "POST",
        "/v1/authorize",
        None,
        Some(
            json!({"workloadGroup": {"namespace": NS, "name": "ratings"},
                    "credential": {"type": "jwt", "token": jwt, "tokenn": "x"}}),
        ),
    );
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["code"], "bad_request");
    assert!(e["message"].as_str().unwrap().contains("tokenn"), "{e}");
    // The same credential without the stray field is fine.
    let (s, a) = authorize(&ep, &jwt);
    assert_eq!(s, 200, "{a}");
}

#[test]
fn a_near_miss_issuer_is_not_told_the_trusted_one() {
    let ep = Endpoint::start(Options::default());
    let near = format!("{ISSUER}/");
    let jwt = sign_jwt(
        "trusted-rs256",
        None,
        json!({"iss": near, "sub": "vm-0001", "aud": ep.plane_uid, "iat": now(), "exp": now() + 600}),
    );
    let (s, e) = authorize(&ep, &jwt);
    assert_eq!(s, 401, "{e}");
    assert_eq!(e["code"], "unknown_issuer");
    let msg = e["message"].as_str().unwrap();
    // The answer repeats the caller's own `iss` and nothing else about issuers.
    assert!(
        !msg.replace(&near, "").contains(ISSUER) && !msg.contains("trailing slash"),
        "{msg}"
    );
    // The operator's hint is in the log.
    let start = Instant::now();
    while !ep.log.lock().unwrap().contains("trailing slash") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            ep.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn denial_metrics_do_not_take_namespaces_from_requests() {
    let ep = Endpoint::start(Options::default());
    let jwt = vm_jwt("vm-0001", &ep.plane_uid);
    for i in 0..5 {
        let (s, e) = ep.call(
            "POST",
            "/v1/authorize",
            None,
            Some(
                json!({"workloadGroup": {"namespace": format!("made-up-{i}"), "name": "x"},
                        "credential": {"type": "jwt", "token": jwt}}),
            ),
        );
        assert_eq!((s, &e["code"]), (403, &json!("policy_denied")), "{e}");
    }
    let agent = ep.client();
    let mut m = agent.get(format!("{}/metrics", ep.url)).call().unwrap();
    let metrics = m.body_mut().read_to_string().unwrap();
    assert!(!metrics.contains("made-up-"), "{metrics}");
    assert!(
        metrics.contains("onboarding_policy_denials_total{namespace=\"unknown\"} 5"),
        "{metrics}"
    );
}

fn count(log: &std::sync::Mutex<String>, needle: &str) -> usize {
    log.lock().unwrap().matches(needle).count()
}

#[test]
fn reading_the_manifest_directory_does_not_reload_it() {
    const RELOADED: &str = "config directory changed; reloaded";
    let ep = Endpoint::start(Options::default());
    // What an operator does: list registrations, look at the manifests.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        let (ok, _, err) = ep.cli(&["get", "war", "-A"]);
        assert!(ok, "{err}");
        for f in ["workloadgroup.yaml", "policy.yaml", "mesh.yaml"] {
            read(&ep.path(&format!("config/{f}")));
        }
    }
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(count(&ep.log, RELOADED), 0, "{}", ep.log.lock().unwrap());

    // A broken edit: one reload, its error logged once, however often the files are read.
    std::fs::write(
        ep.path("config/policy.yaml"),
        POLICY.replace("onboardTo:", "onbordTo:"),
    )
    .unwrap();
    let start = Instant::now();
    while count(&ep.log, RELOADED) == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "no reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        read(&ep.path("config/policy.yaml"));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(count(&ep.log, RELOADED), 1, "{}", ep.log.lock().unwrap());
    assert_eq!(count(&ep.log, "onbordTo"), 1, "{}", ep.log.lock().unwrap());
    // The last good policy stays in force.
    onboard(&ep, "vm-0001");
}
