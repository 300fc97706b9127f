//! Onboarding session tokens: short-lived ES256 JWTs the endpoint issues after it has
//! verified a platform credential and a policy allowed the join. Every later call carries
//! one, so the (slower) platform verification and policy evaluation run once per session.
//!
//! Claims follow TSB's onboarding token: `sub` = `<namespace>/<war-name>`, `aud` and `azp` =
//! the plane UID, `workload` = the verified identity, `workload_group` = where it may join.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::api::identity::WorkloadIdentity;
use crate::api::meta::NamespacedName;
use crate::api::validation;

pub const ISSUER: &str = "onboarding-endpoint";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub azp: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    pub workload: WorkloadIdentity,
    pub workload_group: NamespacedName,
    /// The trusted issuer's short name for JWT identities (part of the WAR name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_short_name: Option<String>,
    /// The uid of the WAR when the token was issued; absent when it did not exist yet. A
    /// session continuing a registration ends when that WAR is deleted or replaced
    /// (`registration::session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_uid: Option<String>,
}

impl SessionClaims {
    /// The WAR this session belongs to, from `sub`; `None` unless `sub` is
    /// `<namespace>/<name>` with both valid Kubernetes names (they become file paths).
    pub fn registration(&self) -> Option<NamespacedName> {
        let (ns, name) = self.sub.split_once('/')?;
        validation::namespaced_name(ns, name).ok()?;
        Some(NamespacedName {
            namespace: ns.to_string(),
            name: name.to_string(),
        })
    }

    /// Names in the claims that would be used as paths or lookups, checked as Kubernetes
    /// does. The endpoint signed them, so a failure here means a bug or a stolen key; the
    /// check still runs before any use (defence in depth).
    fn check_names(&self) -> Result<(), TokenError> {
        let (ns, name) = self
            .sub
            .split_once('/')
            .ok_or_else(|| TokenError::Invalid("sub is not <namespace>/<name>".into()))?;
        validation::namespaced_name(ns, name)
            .map_err(|e| TokenError::Invalid(format!("sub: {e}")))?;
        let g = &self.workload_group;
        validation::namespaced_name(&g.namespace, &g.name)
            .map_err(|e| TokenError::Invalid(format!("workload_group: {e}")))?;
        if g.namespace != ns {
            return Err(TokenError::Invalid(
                "sub and workload_group name different namespaces".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("session token is not valid: {0}")]
    Invalid(String),
    #[error("session token expired; authorize again")]
    Expired,
    #[error("session signing key: {0}")]
    Key(String),
}

pub struct SessionTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    plane_uid: String,
    ttl: Duration,
}

impl std::fmt::Debug for SessionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SessionTokens")
            .field("plane_uid", &self.plane_uid)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A new P-256 private key as PKCS#8 PEM (persist it 0600; restarts must keep it so that
/// sessions survive them).
pub fn generate_signing_key_pem() -> Result<String, TokenError> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TokenError::Key(e.to_string()))?;
    Ok(kp.serialize_pem())
}

impl SessionTokens {
    pub fn from_pem(private_pem: &str, plane_uid: &str, ttl: Duration) -> Result<Self, TokenError> {
        let key = |e: &dyn std::fmt::Display| {
            TokenError::Key(format!("not a PKCS#8 P-256 private key PEM: {e}"))
        };
        let kp = rcgen::KeyPair::from_pem(private_pem).map_err(|e| key(&e))?;
        if !kp.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(TokenError::Key("the key is not a P-256 (ES256) key".into()));
        }
        let encoding = EncodingKey::from_ec_pem(private_pem.as_bytes()).map_err(|e| key(&e))?;
        let decoding =
            DecodingKey::from_ec_pem(kp.public_key_pem().as_bytes()).map_err(|e| key(&e))?;
        Ok(SessionTokens {
            encoding,
            decoding,
            plane_uid: plane_uid.to_string(),
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// `registration_uid`: the uid of the WAR when it exists already (see
    /// [`SessionClaims::registration_uid`]).
    pub fn issue(
        &self,
        registration: &NamespacedName,
        workload: WorkloadIdentity,
        workload_group: NamespacedName,
        jwt_short_name: Option<String>,
        registration_uid: Option<String>,
        now: SystemTime,
    ) -> Result<(String, SystemTime), TokenError> {
        let iat = unix_u64(now);
        let exp = iat + self.ttl.as_secs().max(1);
        let claims = SessionClaims {
            iss: ISSUER.to_string(),
            sub: registration.to_string(),
            aud: self.plane_uid.clone(),
            azp: self.plane_uid.clone(),
            iat,
            nbf: iat,
            exp,
            jti: random_id(),
            workload,
            workload_group,
            jwt_short_name,
            registration_uid,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(|e| TokenError::Key(e.to_string()))?;
        Ok((token, UNIX_EPOCH + Duration::from_secs(exp)))
    }

    /// Verifies signature, issuer, audience and (against `now`) expiry.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<SessionClaims, TokenError> {
        let mut v = Validation::new(Algorithm::ES256);
        // Time is checked below against the caller's clock, which keeps this testable.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        v.set_audience(&[&self.plane_uid]);
        v.set_issuer(&[ISSUER]);
        let data = jsonwebtoken::decode::<SessionClaims>(token, &self.decoding, &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let c = data.claims;
        if c.azp != self.plane_uid {
            return Err(TokenError::Invalid("azp is not this plane".into()));
        }
        let t = unix_u64(now);
        if t >= c.exp {
            return Err(TokenError::Expired);
        }
        if t + 60 < c.nbf {
            return Err(TokenError::Invalid("not valid yet".into()));
        }
        c.check_names()?;
        Ok(c)
    }
}

/// Session token claims are unsigned seconds (a clock before 1970 issues at the epoch).
fn unix_u64(t: SystemTime) -> u64 {
    crate::clock::unix(t).max(0).unsigned_abs()
}

fn random_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::JwtIdentity;

    fn nn(ns: &str, n: &str) -> NamespacedName {
        NamespacedName {
            namespace: ns.into(),
            name: n.into(),
        }
    }

    fn tokens(uid: &str) -> SessionTokens {
        let pem = generate_signing_key_pem().unwrap();
        SessionTokens::from_pem(&pem, uid, Duration::from_secs(3600)).unwrap()
    }

    fn issue(t: &SessionTokens, now: SystemTime) -> String {
        let id = WorkloadIdentity::Jwt(JwtIdentity {
            issuer: "https://idp".into(),
            subject: "vm-1".into(),
            attributes: Default::default(),
        });
        t.issue(
            &nn("bookinfo", "ratings-jwt-corp-vm-1"),
            id,
            nn("bookinfo", "ratings"),
            Some("corp".into()),
            None,
            now,
        )
        .unwrap()
        .0
    }

    #[test]
    fn round_trip_and_expiry() {
        let t = tokens("plane-1");
        let now = SystemTime::now();
        let tok = issue(&t, now);
        let c = t.verify(&tok, now).unwrap();
        assert_eq!(c.sub, "bookinfo/ratings-jwt-corp-vm-1");
        assert_eq!(c.registration().unwrap().name, "ratings-jwt-corp-vm-1");
        assert_eq!((c.aud.as_str(), c.azp.as_str()), ("plane-1", "plane-1"));
        assert_eq!(
            t.verify(&tok, now + Duration::from_secs(3601)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn other_plane_or_other_key_is_refused() {
        let a = tokens("plane-1");
        let now = SystemTime::now();
        let tok = issue(&a, now);
        // Another key, same plane UID: the signature must not verify.
        let pem = generate_signing_key_pem().unwrap();
        let b = SessionTokens::from_pem(&pem, "plane-1", Duration::from_secs(60)).unwrap();
        assert!(matches!(b.verify(&tok, now), Err(TokenError::Invalid(_))));
        let mut tampered = tok.clone();
        tampered.pop();
        tampered.push(if tok.ends_with('A') { 'B' } else { 'A' });
        assert!(matches!(
            a.verify(&tampered, now),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn names_that_would_leave_the_state_directory_are_refused() {
        let t = tokens("plane-1");
        let now = SystemTime::now();
        let id = WorkloadIdentity::Jwt(JwtIdentity {
            issuer: "https://idp".into(),
            subject: "vm-1".into(),
            attributes: Default::default(),
        });
        for (reg, group) in [
            (nn("../../x", "ratings-vm"), nn("../../x", "ratings")),
            (nn("bookinfo", "../war"), nn("bookinfo", "ratings")),
            (nn("bookinfo", "a/b"), nn("bookinfo", "ratings")),
            (nn("bookinfo", "ok"), nn("bookinfo", "..")),
            (nn("bookinfo", "ok"), nn("other", "ratings")),
        ] {
            let (tok, _) = t
                .issue(&reg, id.clone(), group.clone(), None, None, now)
                .unwrap();
            assert!(
                matches!(t.verify(&tok, now), Err(TokenError::Invalid(_))),
                "{reg} in {group}"
            );
        }
        let c = SessionClaims {
            sub: "../../x/y".into(),
            ..t.verify(&issue(&t, now), now).unwrap()
        };
        assert_eq!(c.registration(), None);
    }

    #[test]
    fn registration_uid_round_trips() {
        let t = tokens("plane-1");
        let now = SystemTime::now();
        let id = WorkloadIdentity::Jwt(JwtIdentity {
            issuer: "https://idp".into(),
            subject: "vm-1".into(),
            attributes: Default::default(),
        });
        let reg = nn("bookinfo", "ratings-jwt-corp-vm-1");
        let (tok, _) = t
            .issue(
                &reg,
                id,
                nn("bookinfo", "ratings"),
                None,
                Some("u-1".into()),
                now,
            )
            .unwrap();
        assert_eq!(
            t.verify(&tok, now).unwrap().registration_uid.as_deref(),
            Some("u-1")
        );
        // Tokens issued before the claim existed still verify, as "no WAR yet".
        assert_eq!(
            t.verify(&issue(&t, now), now).unwrap().registration_uid,
            None
        );
    }

    #[test]
    fn rejects_non_p256_keys() {
        let rsa_like = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";
        assert!(SessionTokens::from_pem(rsa_like, "p", Duration::from_secs(1)).is_err());
    }
}
