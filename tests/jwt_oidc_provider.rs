//! The endpoint's JWT verification against a real OpenID provider (oidc-provider 9.13.3 over
//! HTTPS with a test CA): keys found through OIDC discovery and through `jwksUri`.
//! Needs node and `npm ci --prefix testdata/oidc-provider`.

#[path = "support/oidc.rs"]
mod oidc;

use std::time::{Duration, Instant, SystemTime};

use oidc::{OidcProvider, Options};
use workload_onboarding::identity::jwt::{
    IssuerConfig, JsonPathField, JwtVerifier, RefreshPolicy, TokenFields,
};
use workload_onboarding::identity::{VerifyContext, VerifyError};

const PLANE: &str = "3f9c2d1e-plane-uid";

fn issuer_config(provider: &OidcProvider, jwks_uri: Option<String>) -> IssuerConfig {
    IssuerConfig {
        issuer: provider.issuer.clone(),
        short_name: "testidp".into(),
        jwks: None,
        jwks_file: None,
        jwks_uri,
        ca_file: Some(provider.ca_file.clone()),
        token_fields: Some(TokenFields {
            attributes: Some(JsonPathField {
                json_path: ".attributes".into(),
            }),
        }),
    }
}

fn ctx(audience: &str) -> VerifyContext {
    VerifyContext {
        audience: audience.into(),
        now: SystemTime::now(),
        peer_ip: None,
    }
}

fn assert_verified(verifier: &JwtVerifier, provider: &OidcProvider, token: &str) {
    let verified = verifier
        .verify_blocking(token, &ctx(PLANE))
        .expect("a token from the trusted provider verifies");
    assert_eq!(verified.identity.issuer, provider.issuer);
    assert_eq!(verified.identity.subject, oidc::CLIENT_ID);
    assert_eq!(
        verified
            .identity
            .attributes
            .get("region")
            .map(String::as_str),
        Some("us-east"),
        "attributes from the `attributes` claim"
    );
    assert_eq!(verified.short_name, "testidp");
}

#[test]
fn rs256_token_verifies_through_oidc_discovery() {
    let provider = OidcProvider::start();
    let verifier = JwtVerifier::new(&[issuer_config(&provider, None)]).expect("config");
    let started = Instant::now();
    let token = provider.token_for(PLANE);
    assert_verified(&verifier, &provider, &token);
    eprintln!(
        "provider ready after {:?}; token + discovery + JWKS + verify took {:?}",
        provider.startup,
        started.elapsed()
    );
    assert_eq!(verifier.key_fetches(&provider.issuer), Some(1));
    // Cached keys: no second fetch.
    assert_verified(&verifier, &provider, &provider.token_for(PLANE));
    assert_eq!(verifier.key_fetches(&provider.issuer), Some(1));
}

#[test]
fn es256_token_verifies_through_jwks_uri() {
    let provider = OidcProvider::start_with(Options {
        alg: "ES256",
        ..Options::default()
    });
    let token = provider.token_for(PLANE);
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let verifier =
        JwtVerifier::new(&[issuer_config(&provider, Some(provider.jwks_uri()))]).expect("config");
    assert_verified(&verifier, &provider, &token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_verify_from_tokio() {
    let provider = OidcProvider::start();
    let verifier = JwtVerifier::new(&[issuer_config(&provider, None)]).expect("config");
    let token = provider.token_for(PLANE);
    let verified = verifier
        .verify(&token, &ctx(PLANE))
        .await
        .expect("verifies");
    assert_eq!(verified.identity.subject, oidc::CLIENT_ID);
}

#[test]
fn token_for_another_plane_is_refused_with_wrong_audience() {
    let provider = OidcProvider::start();
    let verifier = JwtVerifier::new(&[issuer_config(&provider, None)]).expect("config");
    let token = provider.token_for("another-plane-uid");
    assert_eq!(
        verifier.verify_blocking(&token, &ctx(PLANE)),
        Err(VerifyError::WrongAudience {
            expected: PLANE.into(),
            found: "another-plane-uid".into()
        })
    );
}

#[test]
fn provider_is_not_trusted_without_its_ca() {
    let provider = OidcProvider::start();
    let mut config = issuer_config(&provider, None);
    config.ca_file = None; // public roots only: the test CA is unknown
    let verifier = JwtVerifier::new(&[config]).expect("config");
    match verifier.verify_blocking(&provider.token_for(PLANE), &ctx(PLANE)) {
        Err(VerifyError::Unavailable(message)) => {
            assert!(message.to_lowercase().contains("certificate"), "{message}")
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

#[test]
fn untrusted_issuer_is_refused_without_contacting_anyone() {
    let trusted = OidcProvider::start();
    let other = OidcProvider::start();
    let verifier = JwtVerifier::new(&[issuer_config(&trusted, None)]).expect("config");
    let token = other.token_for(PLANE);
    assert_eq!(
        verifier.verify_blocking(&token, &ctx(PLANE)),
        Err(VerifyError::UnknownIssuer(other.issuer.clone()))
    );
    assert_eq!(verifier.key_fetches(&trusted.issuer), Some(0));
}

#[test]
fn unknown_kid_refetches_the_providers_keys_once() {
    let provider = OidcProvider::start();
    let interval = Duration::from_secs(1);
    let verifier = JwtVerifier::with_policy(
        &[issuer_config(&provider, None)],
        RefreshPolicy {
            min_interval: interval,
            ..RefreshPolicy::default()
        },
    )
    .expect("config");
    assert_verified(&verifier, &provider, &provider.token_for(PLANE));
    assert_eq!(verifier.key_fetches(&provider.issuer), Some(1));

    // Right issuer and audience, signed by a key the provider never published.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "iss": provider.issuer, "sub": "intruder", "aud": PLANE, "exp": now + 300,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("rotated-in-later".into());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!(
        "../testdata/jwt/attacker-es256.key.pem"
    ))
    .expect("test key");
    let forged = jsonwebtoken::encode(&header, &claims, &key).expect("sign");

    std::thread::sleep(interval);
    for _ in 0..3 {
        assert!(matches!(
            verifier.verify_blocking(&forged, &ctx(PLANE)),
            Err(VerifyError::InvalidSignature(_))
        ));
    }
    assert_eq!(
        verifier.key_fetches(&provider.issuer),
        Some(2),
        "one refetch for the unknown kid, then rate-limited"
    );
}
