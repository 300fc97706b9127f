//! The `onboarding-endpoint` command line as an operator meets it: kubectl's habits (`get war
//! NAME`, `-o yaml|json|wide`, `version`), exit codes (0 success, 1 runtime failure, 2 usage
//! and configuration errors), error messages that print each cause once, no colours where
//! there is no terminal, readable denials in the log. Always the real binary; registrations
//! come from a real endpoint over TLS.

#[path = "support/endpoint.rs"]
mod endpoint;

use std::path::Path;
use std::process::{Command, Output};

use endpoint::*;

const WAR: &str = "ratings-jwt-corp-vm-0001";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onboarding-endpoint"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs with `--config` of a running endpoint; returns (exit code, stdout, stderr).
fn cli(ep: &Endpoint, args: &[&str]) -> (i32, String, String) {
    let out = bin()
        .args(args)
        .arg("--config")
        .arg(&ep.config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn version_subcommand_and_flag_print_the_crate_version() {
    let want = format!("onboarding-endpoint {}\n", env!("CARGO_PKG_VERSION"));
    for args in [&["version"][..], &["--version"][..]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(text(&out.stdout), want, "{args:?}");
    }
}

#[test]
fn help_is_plain_text_without_a_terminal() {
    for args in [
        &["--help"][..],
        &["get", "--help"][..],
        &["serve", "--help"][..],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = text(&out.stdout);
        assert!(
            !help.contains('\u{1b}'),
            "colour codes in {args:?}:\n{help}"
        );
        assert!(help.contains("--config") || args == ["--help"], "{help}");
    }
    let out = run(&["get", "--help"]);
    let help = text(&out.stdout);
    for flag in ["--output", "--namespace", "--all-namespaces", "--config"] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
    }
    // A usage error from clap: exit 2, and no colour on a pipe either.
    let out = run(&["get", "war", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !text(&out.stderr).contains('\u{1b}'),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_missing_default_config_says_to_pass_config() {
    if Path::new("/etc/onboarding-endpoint/endpoint.yaml").exists() {
        eprintln!("skipped: this machine has /etc/onboarding-endpoint/endpoint.yaml");
        return;
    }
    for args in [
        &["get", "war"][..],
        &["describe", "war", "x"][..],
        &["delete", "war", "x"][..],
        &["serve"][..],
    ] {
        let out = run(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("/etc/onboarding-endpoint/endpoint.yaml") && err.contains("--config"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn config_errors_exit_2_and_print_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let out = bin()
        .args(["get", "war", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&*missing.to_string_lossy()), "{err}");
    // The OS's reason appears once, not once per layer of the error.
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Malformed: file and line, exit 2, for the tools and for serve.
    let cfg = dir.path().join("endpoint.yaml");
    std::fs::write(
        &cfg,
        "store:\n  file: {configDir: c, stateDir: s}\nregistration: {gracePeriod: 5 minutes}\n",
    )
    .unwrap();
    for sub in ["get", "serve"] {
        let mut cmd = bin();
        cmd.arg(sub);
        if sub == "get" {
            cmd.arg("war");
        }
        let out = cmd.arg("--config").arg(&cfg).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub}: {err}");
        assert!(err.contains("endpoint.yaml:3"), "{sub}: {err}");
    }

    // Valid YAML, but no certificate and no --dev: the configuration's fault, exit 2.
    std::fs::create_dir_all(dir.path().join("c")).unwrap();
    std::fs::write(
        &cfg,
        "listen: 127.0.0.1:0\nstore:\n  file: {configDir: c, stateDir: s}\n",
    )
    .unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // A TLS file the configuration names that does not exist: exit 2 as well.
    std::fs::write(
        &cfg,
        "listen: 127.0.0.1:0\ntls: {certFile: missing.crt, keyFile: missing.key}\n\
         store:\n  file: {configDir: c, stateDir: s}\n",
    )
    .unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("missing.crt"), "{err}");
}

#[test]
fn get_war_by_name_and_output_formats() {
    let ep = Endpoint::start(Options::default());
    onboard(&ep, "vm-0001");
    onboard(&ep, "vm-0002");

    // One WAR by name, as a table.
    let (code, out, err) = cli(&ep, &["get", "war", WAR, "-n", NS]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("NAME "), "{out}");
    assert!(lines[1].starts_with(WAR), "{out}");

    // -o yaml of one WAR is the WAR itself.
    let (code, out, err) = cli(&ep, &["get", "war", WAR, "-n", NS, "-o", "yaml"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_saphyr::from_str(&out).unwrap();
    assert_eq!(v["kind"], "WorkloadAutoRegistration", "{out}");
    assert_eq!(v["metadata"]["name"], WAR);
    assert_eq!(v["spec"]["identity"]["jwt"]["subject"], "vm-0001");
    // ... and so is -o json.
    let (code, out, err) = cli(&ep, &["get", "war", WAR, "-n", NS, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["metadata"]["name"], WAR);

    // Without a name: a `kind: List`, what `kubectl get -o yaml` prints.
    let (code, out, err) = cli(&ep, &["get", "war", "-A", "-o", "yaml"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_saphyr::from_str(&out).unwrap();
    assert_eq!(v["kind"], "List", "{out}");
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [WAR, "ratings-jwt-corp-vm-0002"]);
    let (code, out, _) = cli(&ep, &["get", "war", "-n", NS, "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2), "{out}");

    // -o wide: the columns an operator wants.
    let (code, out, err) = cli(&ep, &["get", "war", "-n", NS, "-o", "wide"]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    for col in [
        "NAME",
        "AGENT CONNECTED",
        "AGE",
        "WORKLOAD GROUP",
        "ADDRESS",
        "IDENTITY",
        "CONNECTED TO",
        "AGENT VERSION",
    ] {
        assert!(header.contains(col), "{col} missing: {out}");
    }
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[..2]
            .iter()
            .chain(&row[3..])
            .copied()
            .collect::<Vec<_>>(),
        [
            WAR,
            "True",
            "ratings",
            "10.0.0.7",
            "jwt:vm-0001",
            "endpoint-test",
            "0.1.0"
        ],
        "{out}"
    );

    // -o name.
    let (code, out, _) = cli(&ep, &["get", "war", "-n", NS, "-o", "name"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().next(),
        Some(format!("workloadautoregistration.runtime.onboarding.tetrate.io/{WAR}").as_str())
    );

    // Not found is a runtime failure (1), naming what was looked for.
    let (code, _, err) = cli(&ep, &["get", "war", "nope", "-n", NS]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("\"nope\" not found in namespace bookinfo"),
        "{err}"
    );
    let (code, _, err) = cli(&ep, &["describe", "war", "nope", "-n", NS]);
    assert_eq!(code, 1, "{err}");
    // Usage errors: a name across all namespaces, an unknown resource, a bad -o.
    let (code, _, err) = cli(&ep, &["get", "war", WAR, "-A"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("-n NAMESPACE"), "{err}");
    let (code, _, err) = cli(&ep, &["get", "pods"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&ep, &["get", "war", "-o", "xml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("yaml") && err.contains("wide"), "{err}");
}

#[test]
fn the_log_has_no_colours_and_denials_are_readable() {
    let ep = Endpoint::start(Options::default());
    onboard(&ep, "vm-0001");
    let (s, e) = authorize(&ep, &vm_jwt("vm-0099", &ep.plane_uid));
    assert_eq!((s, e["code"].as_str()), (403, Some("policy_denied")), "{e}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = ep.log.lock().unwrap().clone();
        if log.contains("onboarding denied") || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // stderr is a pipe here, as under systemd: no escape sequences.
    assert!(!log.contains('\u{1b}'), "colour codes in the log:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("onboarding denied"))
        .unwrap_or_else(|| panic!("no denial logged:\n{log}"));
    // The identity in readable form, not Rust's debug syntax.
    assert!(
        line.contains(
            "identity=jwt issuer=https://idp.test.example subject=vm-0099 attributes.region=us-east"
        ),
        "{line}"
    );
    assert!(!line.contains("Jwt(JwtIdentity"), "{line}");
    // Who was let in is logged the same way.
    let allowed = log
        .lines()
        .find(|l| l.contains("authorized: allowed by"))
        .unwrap_or_else(|| panic!("no authorization logged:\n{log}"));
    assert!(
        allowed.contains("identity=jwt issuer=https://idp.test.example subject=vm-0001"),
        "{allowed}"
    );
    // The value compared and what was allowed.
    let unescaped = line.replace("\\\"", "\"");
    assert!(
        unescaped.contains(
            r#"rule 0: workloads[0] jwt.subjects: "vm-0099" not in ["vm-0001","vm-0002","vm-0003""#
        ),
        "{line}"
    );
}

#[test]
fn the_endpoint_unit_passes_systemd_analyze_verify() {
    let unit = repo().join("packaging/systemd/onboarding-endpoint.service");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    let exec = unit_text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(
        exec.starts_with(
            "/usr/bin/onboarding-endpoint serve --config /etc/onboarding-endpoint/endpoint.yaml"
        ),
        "{exec}"
    );
    for needed in [
        "User=onboarding-endpoint",
        "StateDirectory=onboarding-endpoint",
        "RestartPreventExitStatus=2",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit_text.contains(needed), "{needed} missing from the unit");
    }
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("onboarding-endpoint.service");
    std::fs::write(
        &copy,
        unit_text.replace(
            "/usr/bin/onboarding-endpoint",
            env!("CARGO_BIN_EXE_onboarding-endpoint"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {}\n{}{err}",
        out.status,
        text(&out.stdout)
    );
}
