//! GCP Compute Engine: instance identity tokens.
//!
//! Agent: `GET <metadata>/computeMetadata/v1/instance/service-accounts/default/identity
//! ?audience=<plane UID>&format=full` with `Metadata-Flavor: Google`.
//! Endpoint: RS256 signature against Google's JWKS (inline, file or URI; cached, refetched
//! on an unknown `kid` at most once per minimum interval), `iss`, `aud` = plane UID, `exp`
//! and `iat` against the context's clock, and the `google.compute_engine` claims.

use serde::Deserialize;

use crate::api::identity::GcpIdentity;
use crate::api::policy::GcpIdentityMatcher;
use crate::identity::aws::listed;

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
pub fn matches(m: &GcpIdentityMatcher, id: &GcpIdentity) -> Result<(), String> {
    if m.projects.is_empty() {
        return Err("the gcp matcher lists no projects".into());
    }
    if !m
        .projects
        .iter()
        .any(|p| p == "*" || *p == id.project_id || *p == id.project_number)
    {
        return Err(format!(
            "project {:?} ({}) is not one of {:?}",
            id.project_id, id.project_number, m.projects
        ));
    }
    listed("region", &m.regions, &id.region)?;
    listed("zone", &m.zones, &id.zone)?;
    if let Some(g) = &m.gce {
        let Some(gce) = &id.gce else {
            return Err("the matcher is for GCE instances, this is not one".into());
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

    use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    use super::*;
    use crate::api::identity::GceIdentity;
    use crate::clock::unix;
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

    /// RS256 verification keys by `kid`.
    #[derive(Clone, Default)]
    pub struct GoogleKeys {
        keys: Vec<(String, DecodingKey)>,
    }

    impl std::fmt::Debug for GoogleKeys {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_list()
                .entries(self.keys.iter().map(|(k, _)| k))
                .finish()
        }
    }

    impl GoogleKeys {
        pub fn from_jwks_json(json: &str) -> Result<GoogleKeys, String> {
            let set: JwkSet = serde_json::from_str(json).map_err(|e| format!("not a JWKS: {e}"))?;
            let mut keys = Vec::new();
            for jwk in &set.keys {
                let (Some(kid), AlgorithmParameters::RSA(_)) = (&jwk.common.key_id, &jwk.algorithm)
                else {
                    continue;
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("kid {kid}: {e}"))?;
                keys.push((kid.clone(), key));
            }
            if keys.is_empty() {
                return Err("the JWKS has no RSA key with a kid".into());
            }
            Ok(GoogleKeys { keys })
        }

        pub fn has_kid(&self, kid: &str) -> bool {
            self.keys.iter().any(|(k, _)| k == kid)
        }
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
        keys: &GoogleKeys,
        ctx: &VerifyContext,
    ) -> Result<VerifiedGcp, VerifyError> {
        let kid = token_kid(token)?;
        let key = keys
            .keys
            .iter()
            .find(|(k, _)| *k == kid)
            .map(|(_, key)| key)
            .ok_or_else(|| {
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

    /// The shell: where Google's keys come from and their cache.
    #[cfg(feature = "endpoint")]
    mod fetch {
        use std::path::PathBuf;
        use std::sync::{Arc, Mutex};
        use std::time::{Duration, Instant};

        use super::*;

        enum Source {
            Inline,
            File(PathBuf),
            Uri(String, ureq::Agent),
        }

        struct State {
            keys: Option<GoogleKeys>,
            last_fetch: Option<Instant>,
        }

        /// The endpoint's GCP verifier: keys cached, refreshed when a token names an unknown
        /// `kid` (at most once per `min_refresh`, so a stream of junk tokens cannot make the
        /// endpoint hammer Google). Cheap to clone.
        #[derive(Clone)]
        pub struct GcpVerifier {
            source: Arc<Source>,
            state: Arc<Mutex<State>>,
            min_refresh: Duration,
        }

        impl GcpVerifier {
            pub fn new(cfg: &GcpConfig) -> Result<GcpVerifier, String> {
                let (source, keys) = match (&cfg.jwks, &cfg.jwks_file, &cfg.jwks_uri) {
                    (Some(inline), None, None) => {
                        (Source::Inline, Some(GoogleKeys::from_jwks_json(inline)?))
                    }
                    (None, Some(path), None) => {
                        let text = std::fs::read_to_string(path)
                            .map_err(|e| format!("gcp jwksFile {}: {e}", path.display()))?;
                        (
                            Source::File(path.clone()),
                            Some(
                                GoogleKeys::from_jwks_json(&text)
                                    .map_err(|e| format!("gcp jwksFile {}: {e}", path.display()))?,
                            ),
                        )
                    }
                    (None, None, uri) => {
                        let uri = uri.clone().unwrap_or_else(|| GOOGLE_JWKS_URI.to_string());
                        let agent: ureq::Agent = ureq::Agent::config_builder()
                            .timeout_global(Some(Duration::from_secs(10)))
                            .http_status_as_error(false)
                            .build()
                            .into();
                        (Source::Uri(uri, agent), None)
                    }
                    _ => return Err("gcp: set only one of jwks, jwksFile, jwksUri".into()),
                };
                Ok(GcpVerifier {
                    source: Arc::new(source),
                    state: Arc::new(Mutex::new(State {
                        keys,
                        last_fetch: None,
                    })),
                    min_refresh: Duration::from_secs(60),
                })
            }

            pub fn with_min_refresh(mut self, d: Duration) -> GcpVerifier {
                self.min_refresh = d;
                self
            }

            fn load(&self) -> Result<GoogleKeys, VerifyError> {
                match &*self.source {
                    Source::Inline => Err(VerifyError::InvalidSignature(
                        "inline JWKS has no such kid".into(),
                    )),
                    Source::File(p) => std::fs::read_to_string(p)
                        .map_err(|e| VerifyError::Unavailable(format!("{}: {e}", p.display())))
                        .and_then(|t| {
                            GoogleKeys::from_jwks_json(&t).map_err(VerifyError::Unavailable)
                        }),
                    Source::Uri(uri, agent) => {
                        let mut resp = agent
                            .get(uri)
                            .call()
                            .map_err(|e| VerifyError::Unavailable(format!("GET {uri}: {e}")))?;
                        if resp.status() != 200 {
                            return Err(VerifyError::Unavailable(format!(
                                "GET {uri}: HTTP {}",
                                resp.status()
                            )));
                        }
                        let text = resp
                            .body_mut()
                            .with_config()
                            .limit(1 << 20)
                            .read_to_string()
                            .map_err(|e| VerifyError::Unavailable(format!("GET {uri}: {e}")))?;
                        GoogleKeys::from_jwks_json(&text).map_err(VerifyError::Unavailable)
                    }
                }
            }

            /// Verify a token (blocking: may fetch keys; call from a blocking task).
            pub fn verify(
                &self,
                token: &str,
                ctx: &VerifyContext,
            ) -> Result<VerifiedGcp, VerifyError> {
                let kid = token_kid(token)?;
                let mut st = self
                    .state
                    .lock()
                    .map_err(|_| VerifyError::Unavailable("key cache poisoned".into()))?;
                let known = st.keys.as_ref().is_some_and(|k| k.has_kid(&kid));
                let may_fetch = st
                    .last_fetch
                    .is_none_or(|t| t.elapsed() >= self.min_refresh);
                if !known && may_fetch && !matches!(*self.source, Source::Inline) {
                    st.last_fetch = Some(Instant::now());
                    match self.load() {
                        Ok(keys) => st.keys = Some(keys),
                        Err(e) if st.keys.is_none() => return Err(e),
                        Err(e) => {
                            tracing::warn!(error = %e, "refreshing Google's keys failed; keeping the cached ones")
                        }
                    }
                }
                let keys = st.keys.clone().ok_or_else(|| {
                    VerifyError::Unavailable("Google's keys are not loaded yet".into())
                })?;
                drop(st);
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
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
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
}
