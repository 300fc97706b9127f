//! GCP Compute Engine: instance identity tokens.
//!
//! Agent: `GET <metadata>/computeMetadata/v1/instance/service-accounts/default/identity
//! ?audience=<plane UID>&format=full` with `Metadata-Flavor: Google`.
//! Endpoint: RS256 signature against Google's JWKS (inline, file or `https://` URI), `iss`,
//! `aud` = plane UID, `exp` and `iat` against the context's clock, and the
//! `google.compute_engine` claims. Google's keys go through the JWT issuers' key fetcher and
//! cache (`identity::jwt`): the same key-source rules (https only, a redirect cap, an RSA
//! size floor) and the same refresh (on an unknown `kid`, rate-limited, and by age).

use serde::Deserialize;

use crate::api::identity::GcpIdentity;
use crate::api::policy::GcpIdentityMatcher;
use crate::identity::aws::listed;
use crate::policy::Mismatch;

/// The issuers Google uses for identity tokens.
pub const ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// Google's JWKS (the `jwks_uri` of its OIDC discovery document).
pub const GOOGLE_JWKS_URI: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// Clock skew allowed on `exp` and `iat`.
pub const LEEWAY_SECS: i64 = super::CLOCK_LEEWAY_SECS;
/// Google issues tokens valid for one hour; a longer lifetime is not a GCE token.
pub const MAX_LIFETIME_SECS: i64 = 3600;

/// The identity part of a WAR name: `gcp-<project>-<zone>-gce-<instance-id>`.
pub fn name_part(id: &GcpIdentity) -> String {
    let instance = id.gce.as_ref().map_or("", |g| g.instance_id.as_str());
    format!("gcp-{}-{}-gce-{}", id.project_id, id.zone, instance)
}

/// The region of a zone (`us-central1-a` -> `us-central1`).
pub fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map_or(zone, |(r, _)| r)
}

/// Whether a GCP identity satisfies a policy's `gcp` matcher; `Err` says why not.
///
/// In the style of the aws matcher: `projects` is required (project IDs or numbers; an
/// empty list matches nothing), `regions` and `zones` narrow, and `gce` narrows to GCE
/// instances by service account e-mail and instance name.
pub fn matches(m: &GcpIdentityMatcher, id: &GcpIdentity) -> Result<(), Mismatch> {
    if m.projects.is_empty() {
        return Err(Mismatch("the gcp matcher lists no projects".into()));
    }
    if !m
        .projects
        .iter()
        .any(|p| p == "*" || *p == id.project_id || *p == id.project_number)
    {
        return Err(Mismatch(format!(
            "project {:?} ({}) is not one of {:?}",
            id.project_id, id.project_number, m.projects
        )));
    }
    listed("region", &m.regions, &id.region)?;
    listed("zone", &m.zones, &id.zone)?;
    if let Some(g) = &m.gce {
        let Some(gce) = &id.gce else {
            return Err(Mismatch(
                "the matcher is for GCE instances, this is not one".into(),
            ));
        };
        listed("service account", &g.service_accounts, &gce.service_account)?;
        listed("instance name", &g.instance_names, &gce.instance_name)?;
    }
    Ok(())
}

/// The `google.compute_engine` claim of a `format=full` token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ComputeEngineClaims {
    pub project_id: String,
    pub project_number: serde_json::Value,
    pub zone: String,
    pub instance_id: String,
    #[serde(default)]
    pub instance_name: String,
    #[serde(default)]
    pub instance_creation_timestamp: Option<i64>,
}

pub use verify::*;

mod verify {
    use std::path::PathBuf;

    use jsonwebtoken::{Algorithm, Validation};
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    use super::*;
    use crate::api::identity::GceIdentity;
    use crate::clock::unix;
    use crate::identity::jwt::{JwksError, KeySet, UrlError};
    use crate::identity::{VerifyContext, VerifyError};

    /// Where the endpoint gets Google's keys (`authentication.gcp` in its config).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct GcpConfig {
        /// Inline JWKS JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub jwks: Option<String>,
        /// A file with the JWKS, re-read when a token names an unknown `kid`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub jwks_file: Option<PathBuf>,
        /// Where to fetch the JWKS; default Google's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub jwks_uri: Option<String>,
    }

    /// Google's signing keys: a JWKS parsed as any issuer's (RSA keys under 2048 bits and
    /// keys for other uses are left out).
    pub type GoogleKeys = KeySet;

    /// `authentication.gcp` cannot be used; the message names the field.
    #[derive(Debug, thiserror::Error)]
    pub enum GcpConfigError {
        #[error("gcp: set only one of jwks, jwksFile, jwksUri")]
        MoreThanOneSource,
        #[error("gcp jwks: {0}")]
        Jwks(JwksError),
        #[error("gcp jwksFile {}: {detail}", path.display())]
        JwksFile { path: PathBuf, detail: String },
        #[error("gcp jwksUri: {0}")]
        JwksUri(UrlError),
        #[error("gcp: CA file {0}")]
        CaFile(String),
    }

    /// A verified token: the identity and what a single-use check needs.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VerifiedGcp {
        pub identity: GcpIdentity,
        pub issued_at: i64,
        pub expires_at: i64,
    }

    /// The token's `kid` (unverified), to pick or refresh keys.
    pub fn token_kid(token: &str) -> Result<String, VerifyError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| VerifyError::Malformed(format!("not a JWT: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(VerifyError::InvalidSignature(format!(
                "GCE identity tokens are RS256, this one is {:?}",
                header.alg
            )));
        }
        header
            .kid
            .ok_or_else(|| VerifyError::Malformed("the token header has no kid".into()))
    }

    /// Verify a GCE identity token with `keys` for `ctx` (pure).
    pub fn verify_token(
        token: &str,
        keys: &KeySet,
        ctx: &VerifyContext,
    ) -> Result<VerifiedGcp, VerifyError> {
        let kid = token_kid(token)?;
        let key = keys.key(&kid, Algorithm::RS256).ok_or_else(|| {
            VerifyError::InvalidSignature(format!("Google has no signing key with kid {kid:?}"))
        })?;
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let claims: Value = jsonwebtoken::decode::<Value>(token, key, &v)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    VerifyError::InvalidSignature("RS256 signature does not verify".into())
                }
                _ => VerifyError::Malformed(e.to_string()),
            })?
            .claims;
        check_claims(&claims, ctx)
    }

    fn check_claims(claims: &Value, ctx: &VerifyContext) -> Result<VerifiedGcp, VerifyError> {
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        if !ISSUERS.contains(&iss) {
            return Err(VerifyError::UnknownIssuer(format!(
                "{iss:?} is not Google ({ISSUERS:?})"
            )));
        }
        let aud = claims.get("aud").and_then(Value::as_str).unwrap_or("");
        if ctx.audience.is_empty() || aud != ctx.audience {
            return Err(VerifyError::WrongAudience {
                expected: ctx.audience.clone(),
                found: aud.to_string(),
            });
        }
        let now = unix(ctx.now);
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| VerifyError::Malformed("no exp".into()))?;
        let iat = claims
            .get("iat")
            .and_then(Value::as_i64)
            .ok_or_else(|| VerifyError::Malformed("no iat".into()))?;
        if exp + LEEWAY_SECS < now {
            return Err(VerifyError::Expired(format!(
                "the token expired {} s ago",
                now - exp
            )));
        }
        if iat - LEEWAY_SECS > now {
            return Err(VerifyError::Expired(format!(
                "the token is issued {} s in the future",
                iat - now
            )));
        }
        if exp - iat > MAX_LIFETIME_SECS + LEEWAY_SECS {
            return Err(VerifyError::Invalid(format!(
                "lifetime {} s is longer than a GCE identity token's",
                exp - iat
            )));
        }
        let ce: ComputeEngineClaims = claims
            .get("google")
            .and_then(|g| g.get("compute_engine"))
            .cloned()
            .ok_or_else(|| {
                VerifyError::Invalid(
                    "no google.compute_engine claim: the agent must request format=full".into(),
                )
            })
            .and_then(|v| {
                serde_json::from_value(v)
                    .map_err(|e| VerifyError::Malformed(format!("google.compute_engine: {e}")))
            })?;
        let project_number = match &ce.project_number {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            other => {
                return Err(VerifyError::Malformed(format!(
                    "project_number {other} is not a number"
                )));
            }
        };
        if ce.project_id.is_empty() || ce.instance_id.is_empty() || ce.zone.is_empty() {
            return Err(VerifyError::Malformed(
                "google.compute_engine lacks project_id, zone or instance_id".into(),
            ));
        }
        let email = claims
            .get("email")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Ok(VerifiedGcp {
            identity: GcpIdentity {
                project_number,
                project_id: ce.project_id.clone(),
                region: region_of(&ce.zone).to_string(),
                zone: ce.zone.clone(),
                gce: Some(GceIdentity {
                    instance_id: ce.instance_id.clone(),
                    instance_name: ce.instance_name.clone(),
                    service_account: email,
                }),
            },
            issued_at: iat,
            expires_at: exp,
        })
    }

    #[cfg(feature = "endpoint")]
    pub use fetch::*;

    /// The shell: where Google's keys come from; the JWT issuers' fetcher and cache.
    #[cfg(feature = "endpoint")]
    mod fetch {
        use std::path::Path;
        use std::sync::Arc;
        use std::time::Duration;

        use super::*;
        use crate::identity::jwt::{
            FileKeys, HttpKeys, KeyCache, RefreshPolicy, check_https_url, key_source_agent,
        };

        /// Google's keys are refetched for an unknown `kid` at most once a minute (a stream
        /// of junk tokens cannot make the endpoint hammer Google), after a failure with no
        /// keys at most once a minute, and when they are an hour old.
        pub fn google_refresh_policy() -> RefreshPolicy {
            RefreshPolicy {
                min_interval: Duration::from_secs(60),
                retry_after_failure: Duration::from_secs(60),
                ..RefreshPolicy::default()
            }
        }

        /// The endpoint's GCP verifier: Google's keys cached, refreshed when a token names
        /// an unknown `kid` and when they are old ([`google_refresh_policy`]). Cheap to clone.
        #[derive(Clone)]
        pub struct GcpVerifier {
            keys: Arc<KeyCache>,
            policy: RefreshPolicy,
        }

        impl std::fmt::Debug for GcpVerifier {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("GcpVerifier")
                    .field("policy", &self.policy)
                    .finish_non_exhaustive()
            }
        }

        impl GcpVerifier {
            /// Loads inline and file keys now (a bad source fails at start); a URI is
            /// fetched on first use.
            pub fn new(cfg: &GcpConfig) -> Result<GcpVerifier, GcpConfigError> {
                GcpVerifier::build(cfg, None, google_refresh_policy())
            }

            /// `ca_file` replaces the public roots for the URI (tests: a local HTTPS server).
            pub(crate) fn build(
                cfg: &GcpConfig,
                ca_file: Option<&Path>,
                policy: RefreshPolicy,
            ) -> Result<GcpVerifier, GcpConfigError> {
                const LABEL: &str = "Google";
                let keys = match (&cfg.jwks, &cfg.jwks_file, &cfg.jwks_uri) {
                    (Some(inline), None, None) => KeyCache::fixed(
                        LABEL.into(),
                        KeySet::from_jwks_json(inline).map_err(GcpConfigError::Jwks)?,
                    ),
                    (None, Some(path), None) => {
                        let file_error = |detail: String| GcpConfigError::JwksFile {
                            path: path.clone(),
                            detail,
                        };
                        let text =
                            std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
                        let keys =
                            KeySet::from_jwks_json(&text).map_err(|e| file_error(e.to_string()))?;
                        // Re-read when a token names an unknown kid (Google rotated).
                        KeyCache::preloaded(LABEL.into(), Box::new(FileKeys(path.clone())), keys)
                    }
                    (None, None, uri) => {
                        let uri = uri.clone().unwrap_or_else(|| GOOGLE_JWKS_URI.to_string());
                        check_https_url(&uri).map_err(GcpConfigError::JwksUri)?;
                        let agent = key_source_agent(ca_file, policy.http_timeout)
                            .map_err(|e| GcpConfigError::CaFile(e.to_string()))?;
                        KeyCache::remote(LABEL.into(), Box::new(HttpKeys::jwks_uri(agent, uri)))
                    }
                    _ => return Err(GcpConfigError::MoreThanOneSource),
                };
                Ok(GcpVerifier {
                    keys: Arc::new(keys),
                    policy,
                })
            }

            /// Refetch for an unknown `kid`, and retry after a failure, at most this often.
            pub fn with_min_refresh(mut self, d: Duration) -> GcpVerifier {
                self.policy.min_interval = d;
                self.policy.retry_after_failure = d;
                self
            }

            /// How many times the keys were fetched (or the file re-read).
            pub fn key_fetches(&self) -> u64 {
                self.keys.attempts().unwrap_or(0)
            }

            /// Verify a token (blocking: may fetch keys; call from a blocking task).
            pub fn verify(
                &self,
                token: &str,
                ctx: &VerifyContext,
            ) -> Result<VerifiedGcp, VerifyError> {
                // A malformed token or one not RS256 never causes a fetch.
                let kid = token_kid(token)?;
                let keys = self.keys.keys_for(Some(&kid), &self.policy)?;
                verify_token(token, &keys, ctx)
            }
        }
    }
}

#[cfg(feature = "agent")]
pub use collect::*;

#[cfg(feature = "agent")]
mod collect {
    use std::time::Duration;

    /// The GCE metadata server (`metadata.google.internal`).
    pub const DEFAULT_METADATA: &str = "http://169.254.169.254";

    #[derive(Debug, thiserror::Error)]
    pub enum GcpCollectError {
        #[error("GCE metadata server at {base}: {detail}")]
        Metadata { base: String, detail: String },
    }

    /// Fetch an identity token for `audience` from the metadata server at `base`.
    pub fn fetch_identity_token(
        base: &str,
        audience: &str,
        timeout: Duration,
    ) -> Result<String, GcpCollectError> {
        let err = |detail: String| GcpCollectError::Metadata {
            base: base.to_string(),
            detail,
        };
        let agent = crate::http_client::HttpClient::new(timeout).build();
        let url = format!(
            "{}/computeMetadata/v1/instance/service-accounts/default/identity",
            base.trim_end_matches('/')
        );
        let mut resp = agent
            .get(&url)
            .query("audience", audience)
            .query("format", "full")
            .header("Metadata-Flavor", "Google")
            .call()
            .map_err(|e| err(e.to_string()))?;
        if resp.status() != 200 {
            return Err(err(format!(
                "HTTP {} (is a service account attached to the VM?)",
                resp.status()
            )));
        }
        let token = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .map_err(|e| err(e.to_string()))?;
        Ok(token.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::GceIdentity;
    use crate::api::policy::GceMatcher;

    fn id() -> GcpIdentity {
        GcpIdentity {
            project_number: "234567890121".into(),
            project_id: "gcp-example".into(),
            region: "us-central1".into(),
            zone: "us-central1-a".into(),
            gce: Some(GceIdentity {
                instance_id: "693197132356332126".into(),
                instance_name: "vm-1".into(),
                service_account: "sa@gcp-example.iam.gserviceaccount.com".into(),
            }),
        }
    }

    #[test]
    fn name_and_region() {
        assert_eq!(
            name_part(&id()),
            "gcp-gcp-example-us-central1-a-gce-693197132356332126"
        );
        assert_eq!(region_of("europe-west4-b"), "europe-west4");
    }

    #[test]
    fn matcher_fields() {
        let base = GcpIdentityMatcher {
            projects: vec!["gcp-example".into()],
            ..Default::default()
        };
        assert!(matches(&base, &id()).is_ok());
        assert!(matches(&GcpIdentityMatcher::default(), &id()).is_err());
        let by_number = GcpIdentityMatcher {
            projects: vec!["234567890121".into()],
            ..Default::default()
        };
        assert!(matches(&by_number, &id()).is_ok());
        let other = GcpIdentityMatcher {
            projects: vec!["other".into()],
            ..Default::default()
        };
        assert!(matches(&other, &id()).unwrap_err().contains("project"));
        for (field, m) in [
            (
                "region",
                GcpIdentityMatcher {
                    regions: vec!["europe-west4".into()],
                    ..base.clone()
                },
            ),
            (
                "zone",
                GcpIdentityMatcher {
                    zones: vec!["us-central1-b".into()],
                    ..base.clone()
                },
            ),
            (
                "service account",
                GcpIdentityMatcher {
                    gce: Some(GceMatcher {
                        service_accounts: vec!["x@y".into()],
                        instance_names: vec![],
                    }),
                    ..base.clone()
                },
            ),
            (
                "instance name",
                GcpIdentityMatcher {
                    gce: Some(GceMatcher {
                        service_accounts: vec![],
                        instance_names: vec!["vm-2".into()],
                    }),
                    ..base.clone()
                },
            ),
        ] {
            let err = matches(&m, &id()).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
        let all = GcpIdentityMatcher {
            projects: vec!["gcp-example".into()],
            regions: vec!["us-central1".into()],
            zones: vec!["us-central1-a".into()],
            gce: Some(GceMatcher {
                service_accounts: vec!["sa@gcp-example.iam.gserviceaccount.com".into()],
                instance_names: vec!["vm-1".into()],
            }),
        };
        assert!(matches(&all, &id()).is_ok());
        let mut no_gce = id();
        no_gce.gce = None;
        assert!(matches(&all, &no_gce).unwrap_err().contains("GCE"));
    }

    /// Google's key source: the JWT issuers' rules and cache, over real files and a local
    /// HTTPS server.
    #[cfg(feature = "endpoint")]
    mod key_source {
        use std::time::{Duration, SystemTime};

        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        use serde_json::{Value, json};

        use super::*;
        use crate::http_client::test_server::{json as json_answer, redirect, serve};
        use crate::identity::jwt::RefreshPolicy;
        use crate::identity::{VerifyContext, VerifyError};

        const JWKS: &str = include_str!("../../testdata/jwt/jwks.json");
        const RSA_KEY: &str = include_str!("../../testdata/jwt/trusted-rs256.key.pem");
        const PLANE: &str = "plane-uid-1";

        fn now() -> i64 {
            crate::clock::unix(SystemTime::now())
        }

        fn token(kid: &str) -> String {
            let iat = now();
            let claims = json!({
                "iss": "https://accounts.google.com", "aud": PLANE, "iat": iat, "exp": iat + 3600,
                "email": "sa@gcp-example.iam.gserviceaccount.com",
                "google": {"compute_engine": {
                    "project_id": "gcp-example", "project_number": 234567890121u64,
                    "zone": "us-central1-a", "instance_id": "693197132356332126",
                    "instance_name": "vm-1"}},
            });
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(kid.to_owned());
            let key = EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).expect("test RSA key");
            jsonwebtoken::encode(&header, &claims, &key).expect("signing")
        }

        fn ctx() -> VerifyContext {
            VerifyContext {
                audience: PLANE.into(),
                now: SystemTime::now(),
                peer_ip: None,
            }
        }

        /// The test JWKS without its RSA key (only the ES256 one is left).
        fn without_rsa() -> String {
            let mut doc: Value = serde_json::from_str(JWKS).expect("jwks");
            doc["keys"].as_array_mut().expect("keys").remove(0);
            doc.to_string()
        }

        fn uri_config(uri: String) -> GcpConfig {
            GcpConfig {
                jwks_uri: Some(uri),
                ..Default::default()
            }
        }

        #[test]
        fn key_source_must_be_https() {
            let e = GcpVerifier::new(&uri_config("http://127.0.0.1:1/certs".into()))
                .expect_err("http:// key source");
            assert!(matches!(e, GcpConfigError::JwksUri(_)), "{e}");
            assert!(e.to_string().contains("https://"), "{e}");
        }

        #[test]
        fn keys_come_over_https_through_at_most_three_redirects() {
            // One redirect (the certs moved) is followed.
            let moved = serve(true, |line, own| {
                if line.contains("/certs") {
                    json_answer(JWKS)
                } else {
                    redirect(&format!("{own}certs"))
                }
            });
            let v = GcpVerifier::build(
                &uri_config(format!("{}oauth2/v3", moved.url)),
                moved.ca_file.as_deref(),
                google_refresh_policy(),
            )
            .expect("config");
            let verified = v.verify(&token("trusted-rs256"), &ctx()).expect("verifies");
            assert_eq!(verified.identity.project_id, "gcp-example");
            assert_eq!(moved.requests().len(), 2);

            // A redirect loop stops after the cap.
            let looping = serve(true, |_, own| redirect(own));
            let v = GcpVerifier::build(
                &uri_config(looping.url.clone()),
                looping.ca_file.as_deref(),
                google_refresh_policy(),
            )
            .expect("config");
            let e = v.verify(&token("trusted-rs256"), &ctx()).unwrap_err();
            assert!(
                matches!(&e, VerifyError::Unavailable(m) if m.contains("too many redirects")),
                "{e}"
            );
            assert_eq!(
                looping.requests().len(),
                4,
                "the first request and 3 redirects"
            );

            // A redirect to http:// is not followed.
            let downgrade = serve(true, |_, _| redirect("http://127.0.0.1:9/certs"));
            let v = GcpVerifier::build(
                &uri_config(downgrade.url.clone()),
                downgrade.ca_file.as_deref(),
                google_refresh_policy(),
            )
            .expect("config");
            let e = v.verify(&token("trusted-rs256"), &ctx()).unwrap_err();
            assert!(
                matches!(&e, VerifyError::Unavailable(m) if m.contains("https only")),
                "{e}"
            );
        }

        #[test]
        fn rsa_keys_under_2048_bits_are_not_trusted() {
            let mut doc: Value = serde_json::from_str(JWKS).expect("jwks");
            let short = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                [0xc5u8; 128],
            );
            doc["keys"][0]["n"] = json!(short);
            doc["keys"][0]["kid"] = json!("short");
            let only_short = json!({"keys": [doc["keys"][0].clone()]}).to_string();
            let e = GcpVerifier::new(&GcpConfig {
                jwks: Some(only_short),
                ..Default::default()
            })
            .expect_err("no usable key");
            assert!(e.to_string().contains("1024 bits is too short"), "{e}");
            // Beside a usable key, the short one is left out: a token naming it fails.
            let v = GcpVerifier::new(&GcpConfig {
                jwks: Some(doc.to_string()),
                ..Default::default()
            })
            .expect("the ES256 key is usable");
            let e = v.verify(&token("short"), &ctx()).unwrap_err();
            assert!(matches!(e, VerifyError::InvalidSignature(_)), "{e}");
        }

        #[test]
        fn keys_are_refetched_when_old_so_withdrawn_keys_stop_working() {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("google-jwks.json");
            std::fs::write(&path, JWKS).expect("write");
            let cfg = GcpConfig {
                jwks_file: Some(path.clone()),
                ..Default::default()
            };
            // Fresh keys that know the kid are not refetched.
            let fresh = GcpVerifier::new(&cfg).expect("config");
            fresh
                .verify(&token("trusted-rs256"), &ctx())
                .expect("verifies");
            assert_eq!(fresh.key_fetches(), 0);

            let aging = GcpVerifier::build(
                &cfg,
                None,
                RefreshPolicy {
                    max_age: Duration::ZERO,
                    min_interval: Duration::ZERO,
                    ..google_refresh_policy()
                },
            )
            .expect("config");
            aging
                .verify(&token("trusted-rs256"), &ctx())
                .expect("verifies");
            assert_eq!(aging.key_fetches(), 1, "old keys are refetched");
            // Google withdrew the RSA key: once the cached set is old, it is no longer trusted.
            std::fs::write(&path, without_rsa()).expect("write");
            let e = aging.verify(&token("trusted-rs256"), &ctx()).unwrap_err();
            assert!(matches!(e, VerifyError::InvalidSignature(_)), "{e}");
            assert_eq!(aging.key_fetches(), 2);
            // The fresh verifier still has the key cached (it refreshes by age, an hour).
            fresh
                .verify(&token("trusted-rs256"), &ctx())
                .expect("cached");
        }
    }
}
