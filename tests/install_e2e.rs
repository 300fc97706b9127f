//! The local repository (`localRepository`, docs/install.md) end to end: the real endpoint
//! binary over real TLS on loopback, downloaded with the real `curl` and checked with the
//! real `sha256sum`, as spec/001's install commands do.

#[path = "support/endpoint.rs"]
mod endpoint;

use std::path::{Path, PathBuf};
use std::process::Command;

use endpoint::*;

/// Package contents that are not all alike (a wrong offset would show).
fn content(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u32::from(seed) | 0x1000;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

fn put(dir: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// An endpoint with `localRepository: {directory: repo}` (relative to its config file).
fn with_repository() -> (Endpoint, PathBuf) {
    let mut ep = Endpoint::start(Options::default());
    let repo = ep.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    ep.reconfigure(|t| format!("{t}localRepository: {{directory: repo}}\n"));
    (ep, repo)
}

struct Answer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The real curl, trusting only the endpoint's CA; `--path-as-is` so that `..` reaches the
/// endpoint as sent.
fn curl(ep: &Endpoint, path: &str, extra: &[&str]) -> Answer {
    let work = tempfile::tempdir().unwrap();
    let ca = ep.path("ca.pem");
    let (h, b) = (work.path().join("headers"), work.path().join("body"));
    let out = Command::new("curl")
        .args(["-sS", "--path-as-is", "--cacert"])
        .arg(&ca)
        .arg("-D")
        .arg(&h)
        .arg("-o")
        .arg(&b)
        .args(["-w", "%{http_code}"])
        .args(extra)
        .arg(format!("{}{path}", ep.url))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Answer {
        status: String::from_utf8_lossy(&out.stdout).trim().parse().unwrap(),
        headers: std::fs::read_to_string(&h).unwrap_or_default(),
        body: std::fs::read(&b).unwrap_or_default(),
    }
}

/// Runs a shell script in `dir` with curl trusting the endpoint's CA through
/// `CURL_CA_BUNDLE`, so that the spec's commands run exactly as written.
fn sh(ep: &Endpoint, dir: &Path, script: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-euc", script])
        .current_dir(dir)
        .env("CURL_CA_BUNDLE", ep.path("ca.pem"))
        .output()
        .unwrap()
}

fn host(ep: &Endpoint) -> String {
    ep.url.trim_start_matches("https://").to_string()
}

#[test]
fn spec_commands_download_and_check_every_package() {
    let (ep, repo) = with_repository();
    let agent_deb = put(
        &repo,
        "deb/amd64/onboarding-agent.deb",
        &content(1, 300_001),
    );
    let agent_rpm = put(&repo, "rpm/arm64/onboarding-agent.rpm", &content(2, 77_777));
    // The operator placed this .sha256 (as build-packages.sh writes it): served as placed.
    let placed = Command::new("sha256sum")
        .arg("onboarding-agent.rpm")
        .current_dir(agent_rpm.parent().unwrap())
        .output()
        .unwrap();
    assert!(placed.status.success());
    std::fs::write(
        repo.join("rpm/arm64/onboarding-agent.rpm.sha256"),
        &placed.stdout,
    )
    .unwrap();
    let sidecar = put(&repo, "deb/amd64/istio-sidecar.deb", &content(3, 123_456));
    let revisioned = put(
        &repo,
        "istio-sidecar/canary/rpm/amd64/istio-sidecar.rpm",
        &content(4, 4096),
    );

    let work = tempfile::tempdir().unwrap();
    let h = host(&ep);
    // spec/001, "Install the Workload Onboarding Agent DEB package", with the host filled in
    // (`sudo apt-get install` is tests/package_e2e.rs's part).
    let out = sh(
        &ep,
        work.path(),
        &format!(
            r#"
curl -fLO "https://{h}/install/deb/amd64/onboarding-agent.deb"

curl -fLO "https://{h}/install/deb/amd64/onboarding-agent.deb.sha256"

sha256sum --check onboarding-agent.deb.sha256
"#
        ),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "onboarding-agent.deb: OK\n"
    );
    assert_eq!(
        std::fs::read(work.path().join("onboarding-agent.deb")).unwrap(),
        std::fs::read(&agent_deb).unwrap(),
        "the body is the file"
    );
    assert!(
        !repo.join("deb/amd64/onboarding-agent.deb.sha256").exists(),
        "the .sha256 was computed, not placed"
    );

    // The same commands for the other packages (arm64 as the spec says to change it).
    for (path, file, original) in [
        (
            "install/rpm/arm64/onboarding-agent.rpm",
            "onboarding-agent.rpm",
            &agent_rpm,
        ),
        (
            "install/deb/amd64/istio-sidecar.deb",
            "istio-sidecar.deb",
            &sidecar,
        ),
        (
            "install/istio-sidecar/canary/rpm/amd64/istio-sidecar.rpm",
            "istio-sidecar.rpm",
            &revisioned,
        ),
    ] {
        let work = tempfile::tempdir().unwrap();
        let out = sh(
            &ep,
            work.path(),
            &format!(
                "curl -fLO \"https://{h}/{path}\"\n\ncurl -fLO \"https://{h}/{path}.sha256\"\n\nsha256sum --check {file}.sha256\n"
            ),
        );
        assert!(
            out.status.success(),
            "{path}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(work.path().join(file)).unwrap(),
            std::fs::read(original).unwrap()
        );
    }
    let served = curl(&ep, "/install/rpm/arm64/onboarding-agent.rpm.sha256", &[]);
    assert_eq!(
        served.body, placed.stdout,
        "a placed .sha256 is served as is"
    );

    // The check is real: a corrupted download fails it.
    let p = work.path().join("onboarding-agent.deb");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    let out = sh(
        &ep,
        work.path(),
        "sha256sum --check onboarding-agent.deb.sha256",
    );
    assert!(
        !out.status.success(),
        "a corrupted package passed the check"
    );

    // A replaced package gets a new checksum (the cache follows size and mtime).
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&agent_deb, content(9, 300_001)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = sh(
        &ep,
        work.path(),
        &format!(
            "curl -fLO \"https://{h}/install/deb/amd64/onboarding-agent.deb\"\ncurl -fLO \"https://{h}/install/deb/amd64/onboarding-agent.deb.sha256\"\nsha256sum --check onboarding-agent.deb.sha256\n"
        ),
    );
    assert!(
        out.status.success(),
        "after replacing the package: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(work.path().join("onboarding-agent.deb")).unwrap(),
        content(9, 300_001)
    );

    // Headers of a package.
    let a = curl(&ep, "/install/deb/amd64/istio-sidecar.deb", &[]);
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/vnd.debian.binary-package")
    );
    assert_eq!(a.header("content-length").as_deref(), Some("123456"));
    assert_eq!(a.header("accept-ranges").as_deref(), Some("bytes"));
    // HEAD: the same headers, no body, over HTTP/2 (curl's choice with ALPN) and HTTP/1.1.
    for version in ["--http2", "--http1.1"] {
        let head = curl(
            &ep,
            "/install/deb/amd64/istio-sidecar.deb",
            &["-I", version],
        );
        assert_eq!(head.status, 200, "{version}");
        assert_eq!(head.header("etag"), a.header("etag"), "{version}");
        assert_eq!(
            head.header("content-length").as_deref(),
            Some("123456"),
            "{version}"
        );
        // `curl -I` writes the headers where the body would go: nothing else came.
        assert_eq!(head.text(), head.headers, "{version}");
    }
    // A download over HTTP/1.1 as well.
    let a1 = curl(&ep, "/install/deb/amd64/istio-sidecar.deb", &["--http1.1"]);
    assert_eq!(a1.status, 200);
    assert_eq!(a1.body, std::fs::read(&sidecar).unwrap());
}

#[test]
fn conditional_and_range_requests() {
    let (ep, repo) = with_repository();
    let bytes = content(5, 100_000);
    put(&repo, "rpm/amd64/istio-sidecar.rpm", &bytes);
    let path = "/install/rpm/amd64/istio-sidecar.rpm";

    let full = curl(&ep, path, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.body, bytes);
    let etag = full.header("etag").expect("an ETag");
    let last_modified = full.header("last-modified").expect("a Last-Modified");

    // ETag / If-None-Match.
    let a = curl(&ep, path, &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!(a.status, 304);
    assert!(a.body.is_empty());
    assert_eq!(a.header("etag").as_deref(), Some(etag.as_str()));
    let a = curl(&ep, path, &["-H", "If-None-Match: \"something-else\""]);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, bytes);

    // Last-Modified / If-Modified-Since.
    let a = curl(
        &ep,
        path,
        &["-H", &format!("If-Modified-Since: {last_modified}")],
    );
    assert_eq!(a.status, 304);
    let a = curl(
        &ep,
        path,
        &["-H", "If-Modified-Since: Thu, 01 Jan 2004 00:00:00 GMT"],
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), bytes.len());

    // Ranges.
    let a = curl(&ep, path, &["-H", "Range: bytes=1000-1999"]);
    assert_eq!(a.status, 206);
    assert_eq!(a.body, &bytes[1000..2000]);
    assert_eq!(
        a.header("content-range").as_deref(),
        Some("bytes 1000-1999/100000")
    );
    assert_eq!(a.header("content-length").as_deref(), Some("1000"));
    let a = curl(&ep, path, &["-H", "Range: bytes=-10"]);
    assert_eq!((a.status, a.body.as_slice()), (206, &bytes[99_990..]));
    // curl's own resume (`-C -` sends `Range: bytes=<size of the partial file>-`).
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("istio-sidecar.rpm"), &bytes[..40_000]).unwrap();
    let out = sh(
        &ep,
        work.path(),
        &format!("curl -fsS -C - -O \"https://{}{path}\"", host(&ep)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(work.path().join("istio-sidecar.rpm")).unwrap(),
        bytes
    );
    let a = curl(&ep, path, &["-H", "Range: bytes=100000-"]);
    assert_eq!(a.status, 416);
    assert_eq!(a.header("content-range").as_deref(), Some("bytes */100000"));
    // A stale If-Range gets the whole file, never a splice of two versions.
    let a = curl(
        &ep,
        path,
        &["-H", "Range: bytes=0-9", "-H", "If-Range: \"old\""],
    );
    assert_eq!((a.status, a.body.len()), (200, bytes.len()));
    let a = curl(
        &ep,
        path,
        &["-H", "Range: bytes=0-9", "-H", &format!("If-Range: {etag}")],
    );
    assert_eq!((a.status, a.body.as_slice()), (206, &bytes[..10]));

    // The computed .sha256 has validators and ranges too.
    let sum = curl(&ep, &format!("{path}.sha256"), &[]);
    assert_eq!(sum.status, 200);
    let sum_tag = sum.header("etag").unwrap();
    assert_ne!(sum_tag, etag);
    assert_eq!(
        curl(
            &ep,
            &format!("{path}.sha256"),
            &["-H", &format!("If-None-Match: {sum_tag}")]
        )
        .status,
        304
    );
    let part = curl(&ep, &format!("{path}.sha256"), &["-H", "Range: bytes=64-"]);
    assert_eq!(part.status, 206);
    assert_eq!(part.text(), "  istio-sidecar.rpm\n");

    // A replaced file has new validators: the old ETag no longer gives 304.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(
        repo.join("rpm/amd64/istio-sidecar.rpm"),
        content(6, 100_000),
    )
    .unwrap();
    let a = curl(&ep, path, &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, content(6, 100_000));
}

#[test]
fn traversal_links_and_unknown_paths_are_404() {
    let (ep, repo) = with_repository();
    put(&repo, "deb/amd64/onboarding-agent.deb", b"the package");
    // Links planted in the repository, to the endpoint's TLS key outside it.
    let key = ep.path("tls.key");
    std::fs::create_dir_all(repo.join("deb/arm64")).unwrap();
    std::os::unix::fs::symlink(&key, repo.join("deb/arm64/onboarding-agent.deb")).unwrap();
    std::os::unix::fs::symlink(&key, repo.join("deb/arm64/istio-sidecar.deb.sha256")).unwrap();
    let outside = ep.path("outside");
    put(&outside, "deb/amd64/istio-sidecar.deb", b"outside");
    std::fs::create_dir_all(repo.join("istio-sidecar")).unwrap();
    std::os::unix::fs::symlink(&outside, repo.join("istio-sidecar/canary")).unwrap();

    for path in [
        "/install/../config.yaml",
        "/install/../endpoint.yaml",
        "/install/../tls.key",
        "/install/deb/amd64/..%2f..%2fx",
        "/install/deb/amd64/..%2F..%2F..%2Ftls.key",
        "/install/deb/amd64/%2e%2e/%2e%2e/%2e%2e/tls.key",
        "/install/deb/amd64/onboarding-agent.rpm",
        "/install/deb/amd64/onboarding-agent%2edeb",
        "/install//deb/amd64/onboarding-agent.deb",
        "/install/deb/amd64/onboarding-agent.deb/",
        "/install/deb/arm64/onboarding-agent.deb",
        "/install/deb/arm64/istio-sidecar.deb.sha256",
        "/install/istio-sidecar/canary/deb/amd64/istio-sidecar.deb",
        "/install/istio-sidecar/..%2f..%2f/deb/amd64/istio-sidecar.deb",
        "/install/",
        "/install",
        "/install/deb",
    ] {
        let a = curl(&ep, path, &[]);
        assert_eq!(a.status, 404, "{path}: {}", a.text());
        assert!(
            !a.text().contains("PRIVATE KEY") && !a.text().contains("outside"),
            "{path} leaked: {}",
            a.text()
        );
    }
    let a = curl(&ep, "/install/deb/amd64/onboarding-agent.rpm", &[]);
    assert!(a.text().contains("/install/{deb,rpm}"), "{}", a.text());
    let a = curl(&ep, "/install/deb/arm64/onboarding-agent.deb", &[]);
    assert!(a.text().contains("symbolic link"), "{}", a.text());
    // The query string is not part of the path; the real file is still served.
    assert_eq!(
        curl(
            &ep,
            "/install/deb/amd64/onboarding-agent.deb?x=../../tls.key",
            &[]
        )
        .body,
        b"the package"
    );
    // Only GET and HEAD; nothing of the onboarding API answers here.
    let a = curl(
        &ep,
        "/install/deb/amd64/onboarding-agent.deb",
        &["-X", "POST"],
    );
    assert_eq!(a.status, 405, "{}", a.text());
}

#[test]
fn a_missing_package_names_the_file_to_place_and_is_logged_once() {
    let (ep, _repo) = with_repository();
    for _ in 0..3 {
        let a = curl(&ep, "/install/deb/arm64/istio-sidecar.deb", &[]);
        assert_eq!(a.status, 404);
        assert!(
            a.text().contains("deb/arm64/istio-sidecar.deb") && a.text().contains("must place"),
            "{}",
            a.text()
        );
    }
    let a = curl(
        &ep,
        "/install/istio-sidecar/canary/deb/amd64/istio-sidecar.deb.sha256",
        &[],
    );
    assert_eq!(a.status, 404);
    assert!(
        a.text()
            .contains("must place istio-sidecar/canary/deb/amd64/istio-sidecar.deb"),
        "the package is what to place, its checksum is computed: {}",
        a.text()
    );
    // The log has one warning per missing file, naming its full path.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = ep.log.lock().unwrap().clone();
    let want = ep.path("repo/deb/arm64/istio-sidecar.deb");
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&*want.to_string_lossy()))
        .count();
    assert_eq!(warnings, 1, "{log}");
}

#[test]
fn without_local_repository_install_is_404_saying_so() {
    let ep = Endpoint::start(Options::default());
    let a = curl(&ep, "/install/deb/amd64/onboarding-agent.deb", &[]);
    assert_eq!(a.status, 404);
    assert!(a.text().contains("no local repository"), "{}", a.text());
    assert!(a.text().contains("localRepository"), "{}", a.text());
    // The API is unaffected.
    assert_eq!(ep.call("GET", "/v1/discovery", None, None).0, 200);
}

#[test]
fn a_missing_directory_stops_the_endpoint_at_start() {
    let ep = Endpoint::start(Options::default());
    let text = std::fs::read_to_string(&ep.config).unwrap();
    let config = ep.path("bad.yaml");
    std::fs::write(
        &config,
        format!("{text}localRepository: {{directory: no-such-dir}}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a configuration error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("localRepository.directory") && err.contains("no-such-dir"),
        "{err}"
    );
}

/// The endpoint streams: downloading a package much larger than any buffer does not grow
/// its memory by the package's size.
#[test]
fn packages_are_streamed_not_read_into_memory() {
    let (ep, repo) = with_repository();
    const SIZE: u64 = 256 * 1024 * 1024;
    let p = repo.join("deb/amd64/istio-sidecar.deb");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    // Sparse: no disk used, read as zeros.
    std::fs::File::create(&p).unwrap().set_len(SIZE).unwrap();
    let peak = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", ep.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let before = peak();
    let out = Command::new("curl")
        .args([
            "-fsS",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "--cacert",
        ])
        .arg(ep.path("ca.pem"))
        .arg(format!("{}/install/deb/amd64/istio-sidecar.deb", ep.url))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), SIZE.to_string());
    let sum = curl(&ep, "/install/deb/amd64/istio-sidecar.deb.sha256", &[]);
    assert_eq!(sum.status, 200);
    let grown_kib = peak().saturating_sub(before);
    assert!(
        grown_kib < 64 * 1024,
        "the endpoint's peak memory grew by {grown_kib} KiB for a {SIZE}-byte package"
    );
    // And the checksum is the package's: 256 MiB of zeros.
    let zeros = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c {SIZE} /dev/zero | sha256sum"))
        .output()
        .unwrap();
    let want = String::from_utf8_lossy(&zeros.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(sum.text(), format!("{want}  istio-sidecar.deb\n"));
}

/// A download that takes longer than the idle timeout (twice the request timeout) but keeps
/// going is not cut: every chunk sent counts as activity for the idle watchdog. The reader
/// is slow on purpose and the package larger than the loopback socket buffers, so the
/// endpoint is still sending long after the 1 s timeout.
#[test]
fn a_slow_download_outlasts_the_idle_timeout() {
    let (mut ep, repo) = with_repository();
    ep.reconfigure(|t| {
        t.replace(
            "server: {maxBodyBytes: 8192}",
            "server: {maxBodyBytes: 8192, requestTimeout: 1s}",
        )
    });
    let bytes = content(7, 32 * 1024 * 1024);
    put(&repo, "deb/amd64/istio-sidecar.deb", &bytes);
    // About 5 MiB/s (curl 7.88's --limit-rate does not limit here).
    const SLOW_READER: &str = "import sys, time\nwhile True:\n    b = sys.stdin.buffer.read(262144)\n    if not b:\n        break\n    sys.stdout.buffer.write(b)\n    time.sleep(0.05)\n";
    std::fs::write(ep.path("slow.py"), SLOW_READER).unwrap();
    for version in ["--http1.1", "--http2"] {
        let work = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let out = sh(
            &ep,
            work.path(),
            &format!(
                "curl -fsS {version} \"{}/install/deb/amd64/istio-sidecar.deb\" | python3 {} > istio-sidecar.deb",
                ep.url,
                ep.path("slow.py").display()
            ),
        );
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "{version} after {took:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            took > std::time::Duration::from_secs(3),
            "{version}: {took:?}"
        );
        let got = std::fs::read(work.path().join("istio-sidecar.deb")).unwrap();
        assert_eq!(got.len(), bytes.len(), "{version}: cut after {took:?}");
        assert!(got == bytes, "{version}: the body differs");
    }
}

/// packaging/kubernetes: the configuration's `localRepository.directory` is where the
/// deployment mounts the `emptyDir` (read-only for the endpoint), and the init container of
/// the optional component `components/local-repository` fills that same volume. The
/// configuration parses as the endpoint's.
#[test]
fn the_kubernetes_install_serves_the_volume_its_init_container_fills() {
    let dir = repo().join("packaging/kubernetes");
    let cm: serde_json::Value = serde_saphyr::from_str(&read(&dir.join("config.yaml"))).unwrap();
    let text = cm["data"]["endpoint.yaml"].as_str().unwrap();
    let cfg: workload_onboarding::endpoint::config::EndpointConfig =
        serde_saphyr::from_str(text).unwrap();
    let served = cfg.local_repository.expect("localRepository").directory;

    let d: serde_json::Value = serde_saphyr::from_str(&read(&dir.join("deployment.yaml"))).unwrap();
    let pod = &d["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["emptyDir"].is_object())
        .expect("an emptyDir volume");
    let mount = |c: &serde_json::Value| {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume["name"])
            .cloned()
            .unwrap_or_else(|| panic!("{} does not mount {}", c["name"], volume["name"]))
    };
    let endpoint = mount(&pod["containers"][0]);
    assert_eq!(endpoint["mountPath"].as_str(), served.to_str());
    assert_eq!(endpoint["readOnly"], true);
    assert!(
        pod["initContainers"].is_null(),
        "the base needs no repository image: the init container is the component's"
    );
    let patch: serde_json::Value = serde_saphyr::from_str(&read(
        &dir.join("components/local-repository/init-container.yaml"),
    ))
    .unwrap();
    let init = &patch["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(mount(init)["mountPath"].as_str(), served.to_str());
    let command: Vec<&str> = init["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        command.last().map(|c| c.trim_end_matches('/')),
        served.to_str(),
        "the init container copies into the served directory"
    );
}
