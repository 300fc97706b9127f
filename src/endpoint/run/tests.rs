use std::path::Path;
use std::time::Duration;

use super::*;
use crate::endpoint::cli::error_chain;

fn config(extra: &str) -> EndpointConfig {
    let text = format!("store:\n  file: {{configDir: /c, stateDir: /s}}\n{extra}");
    crate::yaml::from_str(Path::new("endpoint.yaml"), &text).unwrap()
}

fn files() -> TlsFiles {
    TlsFiles {
        cert_file: "/tls/crt".into(),
        key_file: "/tls/key".into(),
    }
}

#[test]
fn configured_tls_files_win_over_dev() {
    let cfg = Path::new("/etc/e.yaml");
    for (dev, state) in [(false, None), (true, None), (true, Some(Path::new("/s")))] {
        assert_eq!(
            tls_plan(Some(&files()), dev, state, "h", cfg).unwrap(),
            CertSource::Configured(files())
        );
    }
}

#[test]
fn dev_certificates_live_in_the_file_stores_state_directory() {
    let cfg = Path::new("/etc/e.yaml");
    match tls_plan(None, true, Some(Path::new("/s")), "vm-1", cfg).unwrap() {
        CertSource::Dev { dir, names } => {
            assert_eq!(dir, Path::new("/s").join(dev_certs::DEV_TLS_DIR));
            assert!(names.contains(&"vm-1".to_string()), "{names:?}");
        }
        other => panic!("{other:?}"),
    }
    // The Kubernetes store has no state directory: --dev is a configuration error there.
    let e = tls_plan(None, true, None, "h", cfg).unwrap_err();
    assert!(e.is_usage());
    assert!(e.to_string().starts_with("/etc/e.yaml: --dev keeps"), "{e}");
}

#[test]
fn no_certificate_and_no_dev_is_the_configurations_error() {
    let e = tls_plan(
        None,
        false,
        Some(Path::new("/s")),
        "h",
        Path::new("/e.yaml"),
    )
    .unwrap_err();
    assert!(e.is_usage());
    assert!(e.to_string().contains("no tls.certFile/tls.keyFile"), "{e}");
}

#[test]
fn instance_name_is_configured_then_pod_then_host() {
    let host = || "host".to_string();
    assert_eq!(instance_name(Some("cfg"), Some("pod".into()), host), "cfg");
    assert_eq!(instance_name(None, Some("pod".into()), host), "pod");
    assert_eq!(instance_name(None, None, host), "host");
    // A blank name is no name.
    assert_eq!(instance_name(None, Some("  ".into()), host), "host");
    assert_eq!(instance_name(Some(" "), None, host), "host");
}

#[test]
fn service_settings_and_server_limits_come_from_the_configuration() {
    let cfg = config(
        "registration: {gracePeriod: 1m, keepAliveInterval: 5s, allowLoopbackAddresses: true}\n\
         server: {maxBodyBytes: 1024, maxConnections: 7}\n",
    );
    let s = service_settings(&cfg, "uid", "inst");
    assert_eq!((s.plane_uid.as_str(), s.instance.as_str()), ("uid", "inst"));
    assert_eq!(s.grace_period, Duration::from_secs(60));
    assert_eq!(s.keep_alive_interval, Duration::from_secs(5));
    // No keepAliveTimeout: three intervals.
    assert_eq!(s.keep_alive_timeout, Duration::from_secs(15));
    assert!(s.allow_loopback_addresses);
    let o = server_options(&cfg);
    assert_eq!((o.max_body_bytes, o.max_connections), (1024, 7));
    assert_eq!(o.request_timeout, Duration::from_secs(30));
    assert_eq!(o.local_repository, None);
}

#[test]
fn file_store_settings_without_an_istio_token_source_get_an_empty_one() {
    let cfg = config("");
    let f = file_store_config(&cfg, cfg.store.file.as_ref().unwrap());
    assert_eq!(f.config_dir, Path::new("/c"));
    assert_eq!(f.state_dir, Path::new("/s"));
    assert_eq!(f.istio_namespace, "istio-system");
    assert!(f.istio_token.file.is_none() && f.istio_token.command.is_none());
}

#[test]
fn usage_errors_are_told_apart_and_print_with_their_causes_once() {
    assert!(usage("bad field").is_usage());
    assert!(!failed("cannot bind").is_usage());
    let e = context("cannot read x")(std::io::Error::other("no such file"));
    assert!(!e.is_usage());
    assert_eq!(error_chain(&e), "cannot read x: no such file");
    // A usage error shows as the error it wraps, with the same causes.
    let e = usage(RunError::Context {
        context: "cannot read x".into(),
        source: "no such file".into(),
    });
    assert_eq!(error_chain(&e), "cannot read x: no such file");
    assert!(no_store(Path::new("/e.yaml")).is_usage());
}

#[test]
fn a_configuration_that_cannot_be_loaded_is_the_users_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let e = load_config(Some(&missing)).unwrap_err();
    assert!(e.is_usage());
    assert!(error_chain(&e).contains("nope.yaml"), "{e}");
    let p = dir.path().join("e.yaml");
    std::fs::write(&p, "store:\n  file: {configDir: c, stateDir: s}\n").unwrap();
    let (path, cfg) = load_config(Some(&p)).unwrap();
    assert_eq!(path, p);
    assert_eq!(cfg.store.file.unwrap().config_dir, dir.path().join("c"));
}
