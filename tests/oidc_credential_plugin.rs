//! The shipped OIDC credential plugin against a real OpenID provider (oidc-provider 9.13.3,
//! HTTPS with a test CA): the token it returns verifies through the endpoint's JwtVerifier,
//! and failures come back as google.rpc.Status JSON. Run both as a bare process (the wire
//! protocol) and through `identity::plugin::get_credential` (what the agent calls).
//! Needs node and `npm ci --prefix testdata/oidc-provider`.

#[path = "support/oidc.rs"]
mod oidc;

use std::io::Write;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use oidc::OidcProvider;
use workload_onboarding::api::agent_config::{EnvVar, Plugin};
use workload_onboarding::api::protocol::Credential;
use workload_onboarding::identity::VerifyContext;
use workload_onboarding::identity::jwt::{IssuerConfig, JsonPathField, JwtVerifier, TokenFields};
use workload_onboarding::identity::plugin::{
    CREDENTIAL_SERVICE, GET_CREDENTIAL_METHOD, GetCredentialResponse, PluginCall, PluginError,
    Status, code, get_credential,
};

const PLUGIN: &str = env!("CARGO_BIN_EXE_onboarding-agent-oidc-credential-plugin");
const PLANE: &str = "0d5e7a52-plane-uid";

fn base_env(provider: &OidcProvider) -> Vec<(String, String)> {
    vec![
        ("OIDC_ISSUER".into(), provider.issuer.clone()),
        ("OIDC_CLIENT_ID".into(), provider.client_id.clone()),
        ("OIDC_CLIENT_SECRET".into(), provider.client_secret.clone()),
        (
            "OIDC_CA_FILE".into(),
            provider.ca_file.display().to_string(),
        ),
    ]
}

/// Runs the plugin binary as the agent would, with a clean environment.
fn run_plugin(env: &[(String, String)], stdin: &str) -> Output {
    let mut child = Command::new(PLUGIN)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PLUGIN_NAME", "oidc-credential")
        .env("RPC_SERVICE_NAME", CREDENTIAL_SERVICE)
        .env("RPC_METHOD_NAME", GET_CREDENTIAL_METHOD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write request");
    child.wait_with_output().expect("plugin output")
}

fn request(audience: &str) -> String {
    serde_json::json!({ "audience": audience }).to_string()
}

fn token_of(output: &Output) -> (String, GetCredentialResponse) {
    assert!(
        output.status.success(),
        "plugin failed: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let response: GetCredentialResponse =
        serde_json::from_slice(&output.stdout).expect("GetCredential response JSON");
    assert_eq!(
        response.credential.type_url,
        workload_onboarding::identity::plugin::JWT_CREDENTIAL_TYPE
    );
    let Credential::Jwt { token } = response
        .credential
        .clone()
        .into_credential()
        .expect("JWT credential")
    else {
        panic!("not a JWT credential");
    };
    (token, response)
}

fn verifier(provider: &OidcProvider) -> JwtVerifier {
    JwtVerifier::new(&[IssuerConfig {
        issuer: provider.issuer.clone(),
        short_name: "testidp".into(),
        jwks: None,
        jwks_file: None,
        jwks_uri: None,
        ca_file: Some(provider.ca_file.clone()),
        token_fields: Some(TokenFields {
            attributes: Some(JsonPathField {
                json_path: ".attributes".into(),
            }),
        }),
    }])
    .expect("verifier config")
}

fn ctx() -> VerifyContext {
    VerifyContext {
        audience: PLANE.into(),
        now: SystemTime::now(),
        peer_ip: None,
    }
}

fn status_of(output: &Output) -> Status {
    assert!(!output.status.success(), "the plugin should have failed");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not a google.rpc.Status ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[test]
fn token_from_the_provider_verifies_at_the_endpoint() {
    let provider = OidcProvider::start();
    let output = run_plugin(&base_env(&provider), &request(PLANE));
    let (token, response) = token_of(&output);
    let verified = verifier(&provider)
        .verify_blocking(&token, &ctx())
        .expect("the plugin's token verifies");
    assert_eq!(verified.identity.subject, oidc::CLIENT_ID);
    assert_eq!(verified.identity.attributes["region"], "us-east");
    // expiresAt is the token's exp (600 s after issue in issuer.mjs).
    let expires_at =
        workload_onboarding::timestamp::parse(response.expires_at.as_deref().expect("expiresAt"))
            .expect("RFC 3339");
    let left = expires_at
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(
        left > Duration::from_secs(500) && left <= Duration::from_secs(600),
        "{left:?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains(&token) && !stderr.contains(&provider.client_secret));
}

#[test]
fn agent_side_runner_gets_the_credential() {
    let provider = OidcProvider::start();
    let plugin = Plugin {
        name: "oidc-credential".into(),
        path: Some(PLUGIN.into()),
        env: base_env(&provider)
            .into_iter()
            .map(|(name, value)| EnvVar { name, value })
            .collect(),
        args: Vec::new(),
    };
    let call = PluginCall::get_credential(&plugin, Duration::from_secs(30));
    let got = get_credential(&call, PLANE).expect("credential");
    let Credential::Jwt { token } = got.credential else {
        panic!("not a JWT credential")
    };
    verifier(&provider)
        .verify_blocking(&token, &ctx())
        .expect("verifies");
    assert!(got.expires_at.is_some());

    // A wrong secret comes back as a Status through the runner too.
    let mut wrong = plugin.clone();
    for var in &mut wrong.env {
        if var.name == "OIDC_CLIENT_SECRET" {
            var.value = "not-the-secret".into();
        }
    }
    match get_credential(
        &PluginCall::get_credential(&wrong, Duration::from_secs(30)),
        PLANE,
    ) {
        Err(PluginError::Status { status, .. }) => assert_eq!(status.code, code::UNAUTHENTICATED),
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
}

#[test]
fn wrong_secret_fails_with_unauthenticated_status() {
    let provider = OidcProvider::start();
    let mut env = base_env(&provider);
    env[2].1 = "not-the-secret".into();
    let output = run_plugin(&env, &request(PLANE));
    let status = status_of(&output);
    assert_eq!(status.code, code::UNAUTHENTICATED, "{status:?}");
    assert!(
        status.message.contains("invalid_client"),
        "{}",
        status.message
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("not-the-secret"),
        "secret leaked to stderr: {stderr}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("not-the-secret"));
}

#[test]
fn secret_file_with_a_trailing_newline_works() {
    let provider = OidcProvider::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, format!("{}\n", provider.client_secret)).expect("write secret");
    let mut env = base_env(&provider);
    env.retain(|(k, _)| k != "OIDC_CLIENT_SECRET");
    env.push((
        "OIDC_CLIENT_SECRET_FILE".into(),
        secret_file.display().to_string(),
    ));
    let (token, _) = token_of(&run_plugin(&env, &request(PLANE)));
    verifier(&provider)
        .verify_blocking(&token, &ctx())
        .expect("verifies");
}

#[test]
fn direct_token_endpoint_and_audience_mismatch_is_caught_early() {
    let provider = OidcProvider::start();
    let mut env = base_env(&provider);
    env.retain(|(k, _)| k != "OIDC_ISSUER");
    env.push(("OIDC_TOKEN_ENDPOINT".into(), provider.token_endpoint()));
    let (token, _) = token_of(&run_plugin(&env, &request(PLANE)));
    verifier(&provider)
        .verify_blocking(&token, &ctx())
        .expect("verifies");

    // oidc-provider has no `audience` parameter: it ignores it and uses its default
    // resource, so the token is for another audience. The plugin says so instead of handing
    // the agent a token the endpoint would refuse.
    env.push(("OIDC_AUDIENCE_PARAM".into(), "audience".into()));
    let status = status_of(&run_plugin(&env, &request(PLANE)));
    assert_eq!(status.code, code::FAILED_PRECONDITION);
    assert!(
        status.message.contains("onboarding-plane-uid-123"),
        "{}",
        status.message
    );
}

#[test]
fn bad_requests_and_config_are_reported_as_status() {
    let provider = OidcProvider::start();
    let status = status_of(&run_plugin(&base_env(&provider), "not json"));
    assert_eq!(status.code, code::INVALID_ARGUMENT);
    let status = status_of(&run_plugin(&base_env(&provider), &request("")));
    assert_eq!(status.code, code::INVALID_ARGUMENT);
    let status = status_of(&run_plugin(&[], &request(PLANE)));
    assert_eq!(status.code, code::FAILED_PRECONDITION);
    assert!(status.message.contains("OIDC_ISSUER"), "{}", status.message);
    // Without the test CA the provider's certificate is not trusted.
    let mut env = base_env(&provider);
    env.retain(|(k, _)| k != "OIDC_CA_FILE");
    let status = status_of(&run_plugin(&env, &request(PLANE)));
    assert_eq!(status.code, code::UNAVAILABLE);
    assert!(
        status.message.to_lowercase().contains("certificate"),
        "{}",
        status.message
    );
}

#[test]
fn token_cache_is_private_and_reused_until_near_expiry() {
    let provider = OidcProvider::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("oidc-token.cache");
    let mut env = base_env(&provider);
    env.push(("OIDC_TOKEN_CACHE".into(), cache.display().to_string()));

    let (first, _) = token_of(&run_plugin(&env, &request(PLANE)));
    let mode = std::fs::metadata(&cache)
        .expect("cache written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "cache mode {mode:o}");
    // oidc-provider gives every token its own jti: the same token means the cache answered.
    let (second, _) = token_of(&run_plugin(&env, &request(PLANE)));
    assert_eq!(first, second);
    // Another plane is another audience: a new token.
    let (other, _) = token_of(&run_plugin(&env, &request("another-plane")));
    assert_ne!(other, first);

    // Served from the cache even with the provider gone.
    let (again, _) = token_of(&run_plugin(&env, &request("another-plane")));
    drop(provider);
    let (cached, _) = token_of(&run_plugin(&env, &request("another-plane")));
    assert_eq!(again, cached);
    assert_cache_not_world_readable(&cache);
}

fn assert_cache_not_world_readable(path: &Path) {
    let mode = std::fs::metadata(path).expect("cache").permissions().mode();
    assert_eq!(mode & 0o077, 0, "cache mode {mode:o}");
}

#[test]
fn secrets_with_special_characters_are_form_encoded() {
    // RFC 6749 §2.3.1: Basic credentials are form-urlencoded first; oidc-provider decodes
    // them strictly, so a wrongly encoded secret fails here.
    let secret = "p@ss w:rd/+%&=~";
    let provider = OidcProvider::start_with(oidc::Options {
        clients: Some(serde_json::json!([{
            "client_id": "vm 0002:x",
            "client_secret": secret,
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "token_endpoint_auth_method": "client_secret_basic",
            "attributes": {"region": "eu-west"},
        }])),
        ..oidc::Options::default()
    });
    let mut env = base_env(&provider);
    env[1].1 = "vm 0002:x".into();
    env[2].1 = secret.into();
    let (token, _) = token_of(&run_plugin(&env, &request(PLANE)));
    let verified = verifier(&provider)
        .verify_blocking(&token, &ctx())
        .expect("verifies");
    assert_eq!(verified.identity.subject, "vm 0002:x");
    assert_eq!(verified.identity.attributes["region"], "eu-west");
}

/// `--help` and `version` for people; for the agent, exit 2 when the plugin is called or
/// configured wrongly (a retry cannot help) and 1 when the token could not be had, each
/// with a google.rpc.Status on stdout.
#[test]
fn help_version_and_exit_codes() {
    for arg in ["--help", "-h", "help"] {
        let out = Command::new(PLUGIN).arg(arg).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{arg}");
        assert!(
            text.contains("Usage:") && text.contains("OIDC_CLIENT_SECRET_FILE"),
            "{text}"
        );
    }
    for arg in ["version", "--version", "-V"] {
        let out = Command::new(PLUGIN).arg(arg).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{arg}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!(
                "onboarding-agent-oidc-credential-plugin {}\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
    let out = Command::new(PLUGIN).arg("--issuer").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let status = status_of(&out);
    assert_eq!(status.code, code::INVALID_ARGUMENT);
    assert!(
        status.message.contains("unexpected argument \"--issuer\""),
        "{}",
        status.message
    );

    // No settings: a configuration error.
    let out = run_plugin(&[], &request(PLANE));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(status_of(&out).code, code::FAILED_PRECONDITION);
    // Not a request on stdin: a usage error.
    let out = run_plugin(&[], "audience please");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(status_of(&out).code, code::INVALID_ARGUMENT);

    // Configured, but the provider cannot be reached: a runtime failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let env = vec![
        (
            "OIDC_TOKEN_ENDPOINT".to_string(),
            format!("https://127.0.0.1:{port}/token"),
        ),
        ("OIDC_CLIENT_ID".into(), "vm".into()),
        ("OIDC_CLIENT_SECRET".into(), "s3cret".into()),
    ];
    let out = run_plugin(&env, &request(PLANE));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(status_of(&out).code, code::UNAVAILABLE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("s3cret"), "{stderr}");
}
