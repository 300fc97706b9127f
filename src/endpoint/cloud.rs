//! Cloud credentials on the endpoint: the verifiers built from `authentication.aws`, `.gcp`
//! and `.azure`, and the replay state they need (one live session per host, GCP tokens
//! already used, Azure nonces issued). The checks themselves are the platform modules'
//! pure functions (`identity::aws::{ec2, replay}`, `identity::gcp`, `identity::azure`);
//! this module only holds their inputs and the in-memory state between requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::api::identity::{AwsIdentity, IamRole, WorkloadIdentity};
use crate::api::registration::AddressType;
use crate::clock::unix;
use crate::identity::VerifyError;
use crate::identity::aws::api::{AwsApi, AwsApiError};
use crate::identity::aws::ec2::{self, Ec2Trust, SignatureForm};
use crate::identity::aws::ecs::EcsConfig;
use crate::identity::aws::replay::{self, IpCidr, ReplayError, SessionRegistry};
use crate::identity::azure::{self, AzureTrust};
use crate::identity::cms;
use crate::identity::gcp::GcpVerifier;
use crate::lock::{self, Poisoned};

use super::config::{AuthenticationConfig, Ec2SignatureForm};

/// How long an issued Azure nonce stays usable.
pub const NONCE_TTL: Duration = Duration::from_secs(300);
/// Nonces are handed out without authentication; this bounds the memory a flood can take.
pub const MAX_OUTSTANDING_NONCES: usize = 10_000;

/// EC2 settings, ready to use.
pub struct Ec2Auth {
    pub trust: Ec2Trust,
    pub connected_over: AddressType,
    pub trusted_proxies: Vec<IpCidr>,
    pub max_age: Option<Duration>,
    pub api: Option<Arc<AwsApi>>,
}

/// The cloud platforms this endpoint accepts (None = off).
pub struct CloudAuth {
    pub ec2: Option<Ec2Auth>,
    pub ecs: Option<EcsConfig>,
    pub gcp: Option<GcpVerifier>,
    pub azure: Option<AzureTrust>,
    pub one_session_per_host: bool,
}

impl Default for CloudAuth {
    fn default() -> Self {
        CloudAuth {
            ec2: None,
            ecs: None,
            gcp: None,
            azure: None,
            one_session_per_host: true,
        }
    }
}

/// `authentication` names something that cannot be used; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum CloudConfigError {
    #[error("authentication.aws.ec2.certificates[{index}]: {}: {detail}", path.display())]
    Ec2Certificate {
        index: usize,
        path: std::path::PathBuf,
        detail: String,
    },
    /// The AWS API's settings (their resolution words the message).
    #[error("{0}")]
    AwsApi(String),
    #[error("authentication.gcp: {0}")]
    Gcp(#[from] crate::identity::gcp::GcpConfigError),
    #[error("authentication.azure: {0}")]
    Azure(#[from] crate::identity::azure::AzureTrustError),
}

impl CloudAuth {
    /// Build from the configuration; reads certificate files and, for the AWS API, the
    /// credentials (from `env` or the configured file).
    pub fn from_config(
        cfg: &AuthenticationConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CloudAuth, CloudConfigError> {
        let mut out = CloudAuth {
            one_session_per_host: cfg.one_session_per_host,
            ..CloudAuth::default()
        };
        if let Some(aws) = &cfg.aws {
            if let Some(e) = &aws.ec2 {
                let mut trust = Ec2Trust::builtin();
                trust.allow_signature = e.allow_signature;
                trust.allow_pkcs7_dsa = e.allow_pkcs7_dsa;
                for (i, c) in e.certificates.iter().enumerate() {
                    let cert_error = |detail: String| CloudConfigError::Ec2Certificate {
                        index: i,
                        path: c.file.clone(),
                        detail,
                    };
                    let pem = std::fs::read(&c.file).map_err(|e| cert_error(e.to_string()))?;
                    let certs =
                        cms::certificates_from_pem(&pem).map_err(|e| cert_error(e.to_string()))?;
                    let form = match c.form {
                        Ec2SignatureForm::Rsa2048 => SignatureForm::Rsa2048,
                        Ec2SignatureForm::Pkcs7 => SignatureForm::Pkcs7Dsa,
                        Ec2SignatureForm::Signature => SignatureForm::Signature,
                    };
                    trust.add(form, c.region.trim(), certs);
                }
                let api = match &aws.api {
                    Some(a) => Some(Arc::new(AwsApi::new(
                        a.resolve(env).map_err(CloudConfigError::AwsApi)?,
                    ))),
                    None => None,
                };
                out.ec2 = Some(Ec2Auth {
                    trust,
                    connected_over: e.connected_over,
                    trusted_proxies: e.trusted_proxies.clone(),
                    max_age: e.max_age_since_pending.map(|d| d.as_std()),
                    api,
                });
            }
            out.ecs = aws.ecs.clone();
        }
        if let Some(g) = &cfg.gcp {
            out.gcp = Some(GcpVerifier::new(g)?);
        }
        if let Some(a) = &cfg.azure {
            out.azure = Some(AzureTrust::from_config(a)?);
        }
        Ok(out)
    }

    /// Credential kinds enabled, as `/v1/discovery` lists them.
    pub fn platforms(&self) -> Vec<&'static str> {
        let mut p = Vec::new();
        if self.ec2.is_some() {
            p.push("aws-ec2");
        }
        if self.ecs.is_some() {
            p.push("aws-ecs");
        }
        if self.gcp.is_some() {
            p.push("gcp");
        }
        if self.azure.is_some() {
            p.push("azure");
        }
        p
    }
}

/// Where a request came from, as the HTTP layer saw it.
#[derive(Debug, Clone, Default)]
pub struct RequestSource {
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// The last address of `X-Forwarded-For`, believed only from a trusted proxy.
    pub forwarded_for: Option<IpAddr>,
}

/// The last (closest to us) address in an `X-Forwarded-For` value: the one our trusted
/// proxy appended. Earlier entries were written by the client and prove nothing.
pub fn last_forwarded(header: &str) -> Option<IpAddr> {
    let last = header.rsplit(',').next()?.trim();
    last.parse().ok().or_else(|| {
        // `[v6]:port` or `v4:port`, as some proxies write it.
        let host = last
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(h, _)| h)
            .or_else(|| last.rsplit_once(':').map(|(h, _)| h))?;
        host.parse().ok()
    })
}

/// What each replay defence refuses, as the API reports it.
pub fn replay_error(e: ReplayError) -> VerifyError {
    let msg = e.to_string();
    match e {
        ReplayError::WrongSourceAddress { .. } | ReplayError::ProxyWithoutClientAddress { .. } => {
            VerifyError::SourceAddress(msg)
        }
        ReplayError::TooOld { .. } | ReplayError::FromTheFuture(_) => VerifyError::Expired(msg),
        ReplayError::SessionConflict { .. } => VerifyError::Invalid(msg),
    }
}

/// Verify an EC2 credential and bind it to the request's source (pure: no AWS API call).
/// Returns the identity and the document's `pendingTime` (unix seconds).
#[allow(clippy::too_many_arguments)]
pub fn verify_ec2(
    auth: &Ec2Auth,
    document: &str,
    rsa2048: Option<&str>,
    pkcs7: Option<&str>,
    signature: Option<&str>,
    source: &RequestSource,
    now: SystemTime,
) -> Result<(AwsIdentity, i64), VerifyError> {
    let v = ec2::verify(document, rsa2048, pkcs7, signature, &auth.trust, now)?;
    replay::check_max_age(v.pending_time, now, None).map_err(replay_error)?;
    if auth.connected_over != AddressType::Internet {
        let peer = source.peer.ok_or_else(|| {
            VerifyError::SourceAddress("the request's source address is unknown".into())
        })?;
        replay::check_source_address(
            v.private_ip,
            peer,
            source.forwarded_for,
            auth.connected_over,
            &auth.trusted_proxies,
        )
        .map_err(replay_error)?;
    }
    Ok((v.identity, v.pending_time))
}

/// The instance's IAM role and state through the AWS API (blocking), into the identity.
pub fn add_instance_role(api: &AwsApi, id: &mut AwsIdentity) -> Result<(), VerifyError> {
    let instance = id
        .ec2
        .as_ref()
        .map(|e| e.instance_id.clone())
        .unwrap_or_default();
    let role = api
        .instance_role(&id.partition, &id.region, &instance)
        .map_err(|e| match e {
            AwsApiError::NoSuchInstance(_) | AwsApiError::NotRunning { .. } => {
                VerifyError::Invalid(e.to_string())
            }
            other => VerifyError::Unavailable(other.to_string()),
        })?;
    if let Some(ec2) = id.ec2.as_mut() {
        ec2.iam_role = role.map(|name| IamRole { name });
    }
    Ok(())
}

/// The key one live session is kept under: the cloud host (None for JWT identities, which
/// name a subject, not a machine).
pub fn host_key(id: &WorkloadIdentity) -> Option<String> {
    match id {
        WorkloadIdentity::Aws(a) => match &a.ecs {
            Some(ecs) => Some(format!(
                "aws-ecs/{}/{}/{}/{}/{}",
                a.partition, a.account, a.region, ecs.cluster, ecs.task_id
            )),
            None => Some(format!("aws-ec2/{}", replay::instance_key(a))),
        },
        WorkloadIdentity::Gcp(g) => Some(format!(
            "gcp/{}/{}",
            g.project_number,
            g.gce.as_ref().map_or("", |c| c.instance_id.as_str())
        )),
        WorkloadIdentity::Azure(a) => Some(format!(
            "azure/{}/{}",
            a.subscription.to_ascii_lowercase(),
            a.compute
                .as_ref()
                .map_or(String::new(), |c| c.instance_id.to_ascii_lowercase())
        )),
        WorkloadIdentity::Jwt(_) => None,
    }
}

/// What the endpoint remembers between requests to refuse replays. In memory: it is per
/// endpoint instance and starts empty after a restart (docs/identity.md says what that
/// leaves open).
#[derive(Default)]
pub struct ReplayState {
    sessions: Mutex<SessionRegistry>,
    /// (host key, iat) of GCP tokens already accepted -> their exp.
    gcp_seen: Mutex<HashMap<(String, i64), i64>>,
    /// Issued Azure nonces -> when they expire.
    nonces: Mutex<HashMap<String, i64>>,
}

/// Why a host's session cannot begin or go on.
#[derive(Debug, thiserror::Error)]
pub enum HostSessionError {
    /// Another session of the host is live (`session_conflict`).
    #[error(transparent)]
    Conflict(#[from] ReplayError),
    /// The registry cannot be trusted (see `crate::lock`): refused, never waved through.
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
}

const SESSIONS: &str = "host session registry";
const GCP_SEEN: &str = "GCP tokens seen";
const NONCES: &str = "Azure nonces";

/// A replay check that cannot consult its memory refuses for now (the agent retries).
fn unavailable(p: Poisoned) -> VerifyError {
    VerifyError::Unavailable(p.to_string())
}

impl ReplayState {
    pub fn new() -> ReplayState {
        ReplayState::default()
    }

    /// A fresh single-use nonce and when it expires (unix seconds).
    pub fn issue_nonce(&self, now: SystemTime) -> Result<(String, i64), VerifyError> {
        let mut n = lock::lock(&self.nonces, NONCES).map_err(unavailable)?;
        let t = unix(now);
        if n.len() >= MAX_OUTSTANDING_NONCES {
            n.retain(|_, exp| *exp > t);
        }
        if n.len() >= MAX_OUTSTANDING_NONCES {
            return Err(VerifyError::Unavailable(
                "too many outstanding nonces; retry later".into(),
            ));
        }
        let nonce = azure::new_nonce();
        let exp = t + NONCE_TTL.as_secs() as i64;
        n.insert(nonce.clone(), exp);
        Ok((nonce, exp))
    }

    /// Consume a nonce: it must have been issued here, not used, and not expired.
    pub fn take_nonce(&self, nonce: &str, now: SystemTime) -> Result<(), VerifyError> {
        let mut n = lock::lock(&self.nonces, NONCES).map_err(unavailable)?;
        match n.remove(nonce) {
            Some(exp) if exp > unix(now) => Ok(()),
            Some(_) => Err(VerifyError::Nonce(
                "the nonce expired; get a fresh one from /v1/nonce".into(),
            )),
            None => Err(VerifyError::Nonce(format!(
                "nonce {nonce:?} was not issued by this endpoint or was already used; get a fresh one from /v1/nonce"
            ))),
        }
    }

    /// Accept a GCP token once: (host, iat) is remembered until `exp`. A renewal of the
    /// host's live session (the agent presents its session token) may reuse it, since the
    /// metadata server may hand out the same token again within its hour.
    pub fn use_gcp_token(
        &self,
        key: &str,
        iat: i64,
        exp: i64,
        renewal: bool,
    ) -> Result<(), VerifyError> {
        let mut seen = lock::lock(&self.gcp_seen, GCP_SEEN).map_err(unavailable)?;
        let k = (key.to_string(), iat);
        if seen.contains_key(&k) && !renewal {
            return Err(VerifyError::Reused(format!(
                "this GCP identity token (instance {key}, issued at {iat}) was already used; a token is accepted once"
            )));
        }
        seen.insert(k, exp + crate::identity::gcp::LEEWAY_SECS);
        Ok(())
    }

    /// Start a session `jti` for `key`, or hand the live session over from `previous` (the
    /// session token the agent renews). Refuses a second concurrent session.
    pub fn begin_session(
        &self,
        key: &str,
        previous: Option<&str>,
        jti: &str,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(), HostSessionError> {
        let mut s = lock::lock(&self.sessions, SESSIONS)?;
        if let Some(prev) = previous
            && s.live(key, now).is_some_and(|l| l.session_id == prev)
        {
            s.end(key, prev);
        }
        Ok(s.begin(key, jti, now, ttl)?)
    }

    /// A keep-alive: extend the session, or take the host over when no session is live (the
    /// endpoint restarted, or the session lapsed). Refused when another session is live.
    pub fn keep_session(
        &self,
        key: &str,
        jti: &str,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(), HostSessionError> {
        let mut s = lock::lock(&self.sessions, SESSIONS)?;
        if s.refresh(key, jti, now, ttl) {
            return Ok(());
        }
        Ok(s.begin(key, jti, now, ttl)?)
    }

    pub fn end_session(&self, key: &str, jti: &str) {
        match lock::lock(&self.sessions, SESSIONS) {
            Ok(mut s) => {
                s.end(key, jti);
            }
            // The host's next session is refused as well (`begin_session`).
            Err(e) => tracing::error!("{e}"),
        }
    }

    /// Forget what has expired.
    pub fn sweep(&self, now: SystemTime) {
        let t = unix(now);
        // Each part is swept on its own: a poisoned one is logged, and the checks that use
        // it refuse until the endpoint restarts.
        match lock::lock(&self.sessions, SESSIONS) {
            Ok(mut s) => {
                s.expire(now);
            }
            Err(e) => tracing::error!("{e}"),
        }
        match lock::lock(&self.gcp_seen, GCP_SEEN) {
            Ok(mut g) => g.retain(|_, exp| *exp > t),
            Err(e) => tracing::error!("{e}"),
        }
        match lock::lock(&self.nonces, NONCES) {
            Ok(mut n) => n.retain(|_, exp| *exp > t),
            Err(e) => tracing::error!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::{Ec2Identity, GceIdentity, GcpIdentity};

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn forwarded_for_takes_the_proxys_entry() {
        assert_eq!(
            last_forwarded("203.0.113.9, 10.0.0.5"),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            last_forwarded("10.0.0.5:4711"),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            last_forwarded("[fd00::5]:80"),
            Some("fd00::5".parse().unwrap())
        );
        assert_eq!(last_forwarded("unknown"), None);
    }

    #[test]
    fn a_poisoned_replay_state_refuses_instead_of_waving_through() {
        let r = ReplayState::new();
        let ttl = Duration::from_secs(45);
        std::thread::scope(|t| {
            let _ = t
                .spawn(|| {
                    let _s = r.sessions.lock().unwrap();
                    let _g = r.gcp_seen.lock().unwrap();
                    let _n = r.nonces.lock().unwrap();
                    panic!("poisoning the replay state on purpose");
                })
                .join();
        });
        assert!(matches!(
            r.begin_session("h", None, "t1", at(0), ttl),
            Err(HostSessionError::Poisoned(_))
        ));
        assert!(matches!(
            r.keep_session("h", "t1", at(0), ttl),
            Err(HostSessionError::Poisoned(_))
        ));
        assert!(matches!(
            r.use_gcp_token("h", 1, 2, false),
            Err(VerifyError::Unavailable(_))
        ));
        assert!(matches!(
            r.issue_nonce(at(0)),
            Err(VerifyError::Unavailable(_))
        ));
        // Ending and sweeping do not panic.
        r.end_session("h", "t1");
        r.sweep(at(1));
    }

    #[test]
    fn nonces_are_single_use_and_expire() {
        let r = ReplayState::new();
        let (n, exp) = r.issue_nonce(at(1000)).unwrap();
        assert_eq!(exp, 1300);
        assert_eq!(n.len(), 32);
        r.take_nonce(&n, at(1001)).unwrap();
        assert!(matches!(
            r.take_nonce(&n, at(1002)),
            Err(VerifyError::Nonce(_))
        ));
        let (late, _) = r.issue_nonce(at(1000)).unwrap();
        assert!(matches!(
            r.take_nonce(&late, at(1300)),
            Err(VerifyError::Nonce(m)) if m.contains("expired")
        ));
        assert!(r.take_nonce("made-up", at(1000)).is_err());
    }

    #[test]
    fn gcp_tokens_once_unless_renewing() {
        let r = ReplayState::new();
        r.use_gcp_token("gcp/1/2", 100, 3700, false).unwrap();
        assert!(matches!(
            r.use_gcp_token("gcp/1/2", 100, 3700, false),
            Err(VerifyError::Reused(_))
        ));
        r.use_gcp_token("gcp/1/2", 100, 3700, true).unwrap();
        r.use_gcp_token("gcp/1/2", 101, 3701, false).unwrap();
        r.sweep(at(3761));
        r.use_gcp_token("gcp/1/2", 100, 3700, false).unwrap();
    }

    #[test]
    fn sessions_hand_over_on_renewal_and_conflict_otherwise() {
        let r = ReplayState::new();
        let ttl = Duration::from_secs(45);
        r.begin_session("h", None, "t1", at(0), ttl).unwrap();
        assert!(matches!(
            r.begin_session("h", None, "t2", at(1), ttl),
            Err(HostSessionError::Conflict(
                ReplayError::SessionConflict { .. }
            ))
        ));
        // A stale token does not hand the session over.
        assert!(r.begin_session("h", Some("t0"), "t2", at(1), ttl).is_err());
        r.begin_session("h", Some("t1"), "t3", at(2), ttl).unwrap();
        r.keep_session("h", "t3", at(40), ttl).unwrap();
        assert!(r.keep_session("h", "t1", at(41), ttl).is_err());
        // After the endpoint forgot everything, a keep-alive takes the host back.
        let fresh = ReplayState::new();
        fresh.keep_session("h", "t3", at(50), ttl).unwrap();
        fresh.end_session("h", "t3");
        fresh.begin_session("h", None, "t4", at(51), ttl).unwrap();
    }

    #[test]
    fn host_keys_name_machines_not_subjects() {
        let ec2 = WorkloadIdentity::Aws(AwsIdentity {
            partition: "aws".into(),
            account: "1".into(),
            region: "us-east-2".into(),
            zone: "us-east-2b".into(),
            ec2: Some(Ec2Identity {
                instance_id: "i-1".into(),
                iam_role: None,
            }),
            ecs: None,
        });
        assert_eq!(host_key(&ec2).unwrap(), "aws-ec2/aws/1/us-east-2/i-1");
        let gcp = WorkloadIdentity::Gcp(GcpIdentity {
            project_number: "9".into(),
            project_id: "p".into(),
            region: "r".into(),
            zone: "r-a".into(),
            gce: Some(GceIdentity {
                instance_id: "77".into(),
                instance_name: "vm".into(),
                service_account: "sa".into(),
            }),
        });
        assert_eq!(host_key(&gcp).unwrap(), "gcp/9/77");
    }
}
