//! Unit tests of the JWT verifier: pure checks through the verifier with fixed keys, and
//! the fetcher with scripted key sources.

use std::sync::atomic::{AtomicU64, Ordering};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::Value;

use super::fetch::*;
use super::*;
use crate::identity::{VerifyContext, VerifyError};

const ISS: &str = "https://idp.example.corp";
const PLANE: &str = "plane-uid-123";
const NOW: u64 = 1_800_000_000;
const JWKS: &str = include_str!("../../../testdata/jwt/jwks.json");

fn pem(name: &str) -> &'static str {
    match name {
        "trusted-rs256" => include_str!("../../../testdata/jwt/trusted-rs256.key.pem"),
        "trusted-es256" => include_str!("../../../testdata/jwt/trusted-es256.key.pem"),
        "attacker-rs256" => include_str!("../../../testdata/jwt/attacker-rs256.key.pem"),
        "attacker-es256" => include_str!("../../../testdata/jwt/attacker-es256.key.pem"),
        other => panic!("no test key {other}"),
    }
}

fn sign(key: &str, kid: Option<&str>, claims: &Value) -> String {
    let (alg, encoding) = if key.ends_with("rs256") {
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(pem(key).as_bytes()).expect("test RSA key"),
        )
    } else {
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(pem(key).as_bytes()).expect("test EC key"),
        )
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding).expect("signing")
}

fn claims() -> Value {
    json!({
        "iss": ISS, "sub": "vm-0001", "aud": PLANE,
        "iat": NOW, "exp": NOW + 600,
        "custom_attributes": {"region": "us-east", "rack": 7, "prod": true, "none": null,
                              "nested": {"a": "b"}, "list": ["x"]},
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn config() -> IssuerConfig {
    IssuerConfig {
        issuer: ISS.into(),
        short_name: "corp".into(),
        jwks: Some(JWKS.into()),
        jwks_file: None,
        jwks_uri: None,
        ca_file: None,
        token_fields: Some(TokenFields {
            attributes: Some(JsonPathField {
                json_path: ".custom_attributes".into(),
            }),
        }),
    }
}

fn ctx_at(now: u64) -> VerifyContext {
    VerifyContext {
        audience: PLANE.into(),
        now: UNIX_EPOCH + Duration::from_secs(now),
        peer_ip: None,
    }
}

fn verifier() -> JwtVerifier {
    JwtVerifier::new(&[config()]).expect("test issuer config")
}

fn check(token: &str) -> Result<VerifiedJwt, VerifyError> {
    verifier().verify_blocking(token, &ctx_at(NOW))
}

#[test]
fn valid_rs256_and_es256_tokens_verify() {
    for key in ["trusted-rs256", "trusted-es256"] {
        let verified = check(&sign(key, Some(key), &claims())).expect(key);
        assert_eq!(verified.identity.issuer, ISS);
        assert_eq!(verified.identity.subject, "vm-0001");
        assert_eq!(verified.short_name, "corp");
        assert_eq!(
            verified.expires_at,
            UNIX_EPOCH + Duration::from_secs(NOW + 600)
        );
    }
}

#[test]
fn token_without_kid_is_checked_against_keys_of_its_algorithm() {
    check(&sign("trusted-es256", None, &claims())).expect("es256 without kid");
    let forged = check(&sign("attacker-rs256", None, &claims()));
    assert!(
        matches!(forged, Err(VerifyError::InvalidSignature(_))),
        "{forged:?}"
    );
}

#[test]
fn audience_array_containing_the_plane_is_accepted() {
    let token = sign(
        "trusted-rs256",
        Some("trusted-rs256"),
        &with(claims(), "aud", json!(["other", PLANE])),
    );
    check(&token).expect("aud array");
}

#[test]
fn each_failure_has_its_own_error() {
    let wrong_issuer = sign(
        "trusted-rs256",
        Some("trusted-rs256"),
        &with(claims(), "iss", json!("https://evil.example")),
    );
    let wrong_audience = sign(
        "trusted-rs256",
        Some("trusted-rs256"),
        &with(claims(), "aud", json!("another-plane")),
    );
    let expired = sign(
        "trusted-es256",
        Some("trusted-es256"),
        &with(claims(), "exp", json!(NOW - 61)),
    );
    let forged = sign("attacker-rs256", Some("trusted-rs256"), &claims());
    let forged_ec = sign("attacker-es256", Some("trusted-es256"), &claims());

    assert_eq!(
        check(&wrong_issuer),
        Err(VerifyError::UnknownIssuer("https://evil.example".into()))
    );
    assert_eq!(
        check(&wrong_audience),
        Err(VerifyError::WrongAudience {
            expected: PLANE.into(),
            found: "another-plane".into()
        })
    );
    assert!(matches!(check(&expired), Err(VerifyError::Expired(m)) if m.contains("expired")));
    assert!(matches!(
        check(&forged),
        Err(VerifyError::InvalidSignature(_))
    ));
    assert!(matches!(
        check(&forged_ec),
        Err(VerifyError::InvalidSignature(_))
    ));
    let codes: HashSet<_> = [&wrong_issuer, &wrong_audience, &expired, &forged]
        .iter()
        .map(|t| check(t).expect_err("refused").code())
        .collect();
    assert_eq!(codes.len(), 4, "four distinct error codes");
}

#[test]
fn forged_signature_is_reported_whatever_the_claims_say() {
    let forged = sign(
        "attacker-es256",
        Some("trusted-es256"),
        &with(claims(), "exp", json!(NOW - 3600)),
    );
    assert!(matches!(
        check(&forged),
        Err(VerifyError::InvalidSignature(_))
    ));
}

#[test]
fn expiry_and_not_before_allow_a_minute_of_skew() {
    let key = Some("trusted-rs256");
    let just_expired = sign(
        "trusted-rs256",
        key,
        &with(claims(), "exp", json!(NOW - 30)),
    );
    check(&just_expired).expect("within leeway");
    let future = sign(
        "trusted-rs256",
        key,
        &with(claims(), "nbf", json!(NOW + 120)),
    );
    assert!(
        matches!(check(&future), Err(VerifyError::Expired(m)) if m.contains("not valid before"))
    );
    let soon = sign(
        "trusted-rs256",
        key,
        &with(claims(), "nbf", json!(NOW + 30)),
    );
    check(&soon).expect("nbf within leeway");
    let no_exp = {
        let mut c = claims();
        c.as_object_mut().expect("object").remove("exp");
        sign("trusted-rs256", key, &c)
    };
    assert!(matches!(check(&no_exp), Err(VerifyError::Invalid(_))));
}

#[test]
fn the_context_clock_is_used_not_the_system_clock() {
    // Expired long ago by the system clock, valid at the context's time.
    let old = json!({"iss": ISS, "sub": "vm", "aud": PLANE, "exp": 1_000_000_600});
    let token = sign("trusted-rs256", Some("trusted-rs256"), &old);
    verifier()
        .verify_blocking(&token, &ctx_at(1_000_000_000))
        .expect("valid at ctx.now");
}

#[test]
fn unsigned_and_shared_secret_tokens_are_refused() {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims()));
    assert!(matches!(check(&none), Err(VerifyError::InvalidSignature(m)) if m.contains("none")));
    // HS256 with the issuer's public key as the "secret": the classic algorithm confusion.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(JWKS.as_bytes()),
    )
    .expect("hs256");
    assert!(matches!(check(&hs), Err(VerifyError::InvalidSignature(m)) if m.contains("HS256")));
    // An RS256 kid presented with an ES256 header.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("trusted-rs256".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_ec_pem(pem("trusted-es256").as_bytes()).expect("ec"),
    )
    .expect("sign");
    assert!(matches!(
        check(&confused),
        Err(VerifyError::InvalidSignature(_))
    ));
}

#[test]
fn malformed_tokens() {
    for token in ["", "abc", "a.b", "a.b.c.d.e", "!!.??.xx", "e30.e30.e30"] {
        assert!(
            matches!(check(token), Err(VerifyError::Malformed(_))),
            "{token:?}: {:?}",
            check(token)
        );
    }
    let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert!(matches!(check(&huge), Err(VerifyError::Malformed(_))));
}

#[test]
fn trailing_slash_mismatch_is_explained_in_the_log_not_the_answer() {
    let token = sign(
        "trusted-rs256",
        Some("trusted-rs256"),
        &with(claims(), "iss", json!(format!("{ISS}/"))),
    );
    // The caller learns that its own iss is not trusted, and nothing about the trusted one.
    match check(&token) {
        Err(e @ VerifyError::UnknownIssuer(_)) => {
            let shown = e.to_string();
            assert!(shown.contains(&format!("{ISS}/")), "{shown}");
            assert!(
                !shown.replace(&format!("{ISS}/"), "").contains(ISS),
                "the trusted issuer leaks: {shown}"
            );
            assert!(!shown.contains("trailing slash"), "{shown}");
        }
        other => panic!("{other:?}"),
    }
    // The operator's hint is there, for the log.
    let v = verifier();
    let issuers = v.issuers();
    let refused = select_issuer(issuers, &format!("{ISS}/")).unwrap_err();
    let hint = refused.log_hint.clone().expect("a hint for the log");
    assert!(
        hint.contains("trailing slash") && hint.contains(ISS),
        "{hint}"
    );
    assert_eq!(
        VerifyError::from(refused),
        VerifyError::UnknownIssuer(format!("{ISS}/"))
    );
    let far = select_issuer(issuers, "https://elsewhere.example").unwrap_err();
    assert_eq!(far.log_hint, None);
}

#[test]
fn attributes_are_flattened_from_the_configured_path() {
    let verified =
        check(&sign("trusted-es256", Some("trusted-es256"), &claims())).expect("valid token");
    let expected: BTreeMap<String, String> =
        [("prod", "true"), ("rack", "7"), ("region", "us-east")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    assert_eq!(verified.identity.attributes, expected);

    let path = |p: &str| ClaimPath::parse(p).expect(p);
    let claims = json!({"a": {"b": {"k": "v"}}, "https://x.io/attrs": {"z": "1"}, "s": "str"});
    assert_eq!(
        extract_attributes(&claims, &path("$.a.b")).expect("ok")["k"],
        "v"
    );
    assert_eq!(
        extract_attributes(&claims, &path("$['https://x.io/attrs']")).expect("ok")["z"],
        "1"
    );
    assert!(
        extract_attributes(&claims, &path(".missing"))
            .expect("ok")
            .is_empty()
    );
    assert!(matches!(
        extract_attributes(&claims, &path(".s")),
        Err(VerifyError::Invalid(m)) if m.contains("a string")
    ));
}

#[test]
fn claim_path_subset() {
    for ok in [".a", "$.a", "$.a.b_c-d", "$['x.y/z']", ".a[\"b c\"].d"] {
        ClaimPath::parse(ok).expect(ok);
    }
    for bad in [
        "", "a", "$", ".", "$..a", "$.a[0]", "$.*", "$['a'", "$.a b", "$['']",
    ] {
        assert!(ClaimPath::parse(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn config_validation() {
    let err = |c: IssuerConfig| JwtVerifier::new(&[c]).expect_err("invalid").to_string();
    assert!(
        err(IssuerConfig {
            issuer: "http://idp".into(),
            ..config()
        })
        .contains("https://")
    );
    assert!(
        err(IssuerConfig {
            short_name: "Corp_1".into(),
            ..config()
        })
        .contains("shortName")
    );
    assert!(
        err(IssuerConfig {
            jwks_uri: Some("https://idp/jwks".into()),
            ..config()
        })
        .contains("at most one")
    );
    assert!(
        err(IssuerConfig {
            ca_file: Some("ca.pem".into()),
            ..config()
        })
        .contains("caFile")
    );
    assert!(
        err(IssuerConfig {
            jwks: Some("{\"keys\": []}".into()),
            ..config()
        })
        .contains("no usable")
    );
    assert!(
        err(IssuerConfig {
            jwks: None,
            jwks_file: Some("/nonexistent/jwks.json".into()),
            ..config()
        })
        .contains("jwksFile /nonexistent/jwks.json")
    );
    let twice = JwtVerifier::new(&[
        config(),
        IssuerConfig {
            issuer: "https://other".into(),
            ..config()
        },
    ])
    .expect_err("duplicate short name")
    .to_string();
    assert!(twice.contains("already used"), "{twice}");
    // No source at all is valid: OIDC discovery, fetched lazily.
    JwtVerifier::new(&[IssuerConfig {
        jwks: None,
        ..config()
    }])
    .expect("discovery");
}

#[test]
fn jwks_file_is_loaded_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, JWKS).expect("write jwks");
    let verifier = JwtVerifier::new(&[IssuerConfig {
        jwks: None,
        jwks_file: Some(path.clone()),
        ..config()
    }])
    .expect("jwksFile config");
    // Read once at start: removing the file changes nothing.
    std::fs::remove_file(&path).expect("remove");
    let token = sign("trusted-es256", Some("trusted-es256"), &claims());
    verifier
        .verify_blocking(&token, &ctx_at(NOW))
        .expect("verifies with keys from the file");
    assert_eq!(verifier.key_fetches(ISS), Some(0));
}

#[test]
fn config_deserializes_camel_case_and_refuses_unknown_fields() {
    let parsed: Vec<IssuerConfig> = serde_json::from_value(json!([{
        "issuer": ISS, "shortName": "corp", "jwksUri": "https://idp.example.corp/jwks",
        "caFile": "/etc/ca.pem", "tokenFields": {"attributes": {"jsonPath": ".custom_attributes"}}
    }]))
    .expect("camelCase config");
    assert_eq!(
        parsed[0].jwks_uri.as_deref(),
        Some("https://idp.example.corp/jwks")
    );
    let unknown = serde_json::from_value::<IssuerConfig>(json!({
        "issuer": ISS, "shortName": "corp", "jwks_uri": "x"
    }))
    .expect_err("snake_case is unknown")
    .to_string();
    assert!(unknown.contains("jwks_uri"), "{unknown}");
}

#[test]
fn jwks_parsing_keeps_only_usable_signing_keys() {
    let mut doc: Value = serde_json::from_str(JWKS).expect("jwks");
    let keys = doc["keys"].as_array_mut().expect("keys");
    let mut enc = keys[0].clone();
    enc["kid"] = json!("enc");
    enc["use"] = json!("enc");
    keys.push(enc);
    keys.push(json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"}));
    keys.push(json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}));
    keys.push(json!({"kty": "RSA", "kid": "short", "n": "uUSWDg10RgXUZ2CUEh_nGXzDM8CGV1DGBkT1dIPCPtowCOB1Iw3wBsVffA2Wmm_dnD4fj6CaS_d7R_MMTXTF38flIiwHHZpls8r55aVPmpf1X2VWdwzZEzLaA_X3X5rmbD_HIAarRyXll_TZI8OwtNAjSc8ATiikNO2zAvBl1vU", "e": "AQAB"}));
    let set = KeySet::from_jwks_json(&doc.to_string()).expect("usable keys remain");
    assert_eq!(set.len(), 2);
    assert!(set.has_kid("trusted-rs256") && set.has_kid("trusted-es256"));
    assert!(!set.has_kid("enc") && !set.has_kid("hmac") && !set.has_kid("ed"));
    assert_eq!(set.skipped().len(), 4, "{:?}", set.skipped());
    assert!(KeySet::from_jwks_json("[]").is_err());
    assert!(KeySet::from_jwks_json("not json").is_err());
}

/// Hands out scripted JWKS documents and counts fetches: stands in for the network in
/// the rate-limit tests (tests/jwt_oidc_provider.rs fetches from a real provider).
struct ScriptedKeys {
    documents: Mutex<Vec<Result<String, String>>>,
    calls: Arc<AtomicU64>,
}

impl FetchKeys for ScriptedKeys {
    fn fetch(&self) -> Result<KeySet, FetchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut docs = self.documents.lock().expect("test lock");
        let doc = if docs.len() > 1 {
            docs.remove(0)
        } else {
            docs[0].clone()
        };
        let doc = doc.map_err(|detail| FetchError::Get {
            url: "scripted".into(),
            detail,
        })?;
        KeySet::from_jwks_json(&doc).map_err(|error| FetchError::Keys {
            origin: "scripted".into(),
            error,
        })
    }
}

fn remote_verifier(
    documents: Vec<Result<String, String>>,
    policy: RefreshPolicy,
) -> (JwtVerifier, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let (issuer, _) = config().validate().expect("valid");
    let entry = IssuerEntry {
        cache: KeyCache::remote(
            format!("issuer {}", issuer.issuer),
            Box::new(ScriptedKeys {
                documents: Mutex::new(documents),
                calls: calls.clone(),
            }),
        ),
        issuer,
    };
    (JwtVerifier::from_entries(vec![entry], policy), calls)
}

fn only_es256_jwks() -> String {
    let mut doc: Value = serde_json::from_str(JWKS).expect("jwks");
    doc["keys"].as_array_mut().expect("keys").remove(0);
    doc.to_string()
}

#[test]
fn unknown_kid_triggers_one_rate_limited_refresh() {
    // Signed up front: RSA signing in a debug build is slow enough to blur the timing.
    let es = sign("trusted-es256", Some("trusted-es256"), &claims());
    let rs = sign("trusted-rs256", Some("trusted-rs256"), &claims());
    let bogus = sign("attacker-rs256", Some("made-up"), &claims());
    let interval = Duration::from_secs(1);
    let (verifier, calls) = remote_verifier(
        vec![Ok(only_es256_jwks()), Ok(JWKS.to_owned())],
        RefreshPolicy {
            min_interval: interval,
            ..RefreshPolicy::default()
        },
    );
    let ctx = ctx_at(NOW);
    verifier
        .verify_blocking(&es, &ctx)
        .expect("first fetch has the EC key");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    std::thread::sleep(interval);
    // The issuer rotated in an RSA key: the unknown kid refetches once, then verifies.
    verifier
        .verify_blocking(&rs, &ctx)
        .expect("refreshed keys have the RSA key");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(verifier.key_fetches(ISS), Some(2));
    // Made-up kids within the rate limit do not fetch again.
    for _ in 0..5 {
        assert!(matches!(
            verifier.verify_blocking(&bogus, &ctx),
            Err(VerifyError::InvalidSignature(m)) if m.contains("made-up")
        ));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Known kids keep working from the cache.
    verifier.verify_blocking(&rs, &ctx).expect("cached");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn unknown_kid_refetches_again_after_the_interval() {
    let policy = RefreshPolicy {
        min_interval: Duration::ZERO,
        ..RefreshPolicy::default()
    };
    let (verifier, calls) = remote_verifier(vec![Ok(JWKS.to_owned())], policy);
    let bogus = sign("attacker-rs256", Some("made-up"), &claims());
    for n in 1..=3 {
        let _ = verifier.verify_blocking(&bogus, &ctx_at(NOW));
        assert_eq!(calls.load(Ordering::SeqCst), n);
    }
}

#[test]
fn unreachable_issuer_is_unavailable_and_retried_later() {
    let policy = RefreshPolicy {
        retry_after_failure: Duration::from_secs(3600),
        ..RefreshPolicy::default()
    };
    let (verifier, calls) = remote_verifier(vec![Err("connection refused".into())], policy);
    let token = sign("trusted-rs256", Some("trusted-rs256"), &claims());
    for _ in 0..3 {
        assert!(matches!(
            verifier.verify_blocking(&token, &ctx_at(NOW)),
            Err(VerifyError::Unavailable(m)) if m.contains("connection refused")
        ));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "failures are rate-limited too"
    );
    assert_eq!(verifier.prefetch().len(), 1);
}

#[test]
fn stale_keys_are_kept_when_the_refresh_fails() {
    let policy = RefreshPolicy {
        max_age: Duration::ZERO,
        min_interval: Duration::ZERO,
        ..RefreshPolicy::default()
    };
    let (verifier, calls) =
        remote_verifier(vec![Ok(JWKS.to_owned()), Err("issuer down".into())], policy);
    let token = sign("trusted-rs256", Some("trusted-rs256"), &claims());
    verifier
        .verify_blocking(&token, &ctx_at(NOW))
        .expect("fresh");
    verifier
        .verify_blocking(&token, &ctx_at(NOW))
        .expect("stale but kept");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn async_wrapper_runs_on_the_blocking_pool() {
    let token = sign("trusted-es256", Some("trusted-es256"), &claims());
    let verified = verifier()
        .verify(&token, &ctx_at(NOW))
        .await
        .expect("valid");
    assert_eq!(verified.identity.subject, "vm-0001");
}
