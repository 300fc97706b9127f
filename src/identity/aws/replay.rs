//! Replay defenses for EC2 identity documents, as pure functions and data.
//!
//! An identity document is static for the life of an instance (it changes only on
//! stop/start), never expires and carries no nonce; any process on the VM, and anyone who
//! ever read it, can present it again. Three defenses, each stopping something different
//! (docs/identity.md has the full table):
//!
//! - [`check_source_address`]: the request must come from the document's `privateIp`
//!   (when the endpoint says agents reach it over the VPC). Stops replay from any other
//!   host; does not stop replay from the same address (another process on the same VM) or
//!   from a host that can spoof or NAT to that address.
//! - [`SessionRegistry`]: one live session per instance. A second concurrent session for
//!   the same instance is refused, so a stolen document cannot run beside the real agent;
//!   it does not stop a thief who connects while the real agent is down.
//! - [`check_max_age`]: optional maximum age since `pendingTime` for a first onboarding.
//!   Limits how long after launch a document can enroll a new instance; useless for
//!   long-running instances re-onboarding (so it applies to first onboardings only).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::api::registration::AddressType;
use crate::clock::unix;

/// Teleport's allowance for clock skew between AWS and the endpoint.
pub const PENDING_TIME_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "the request comes from {peer}, but the identity document belongs to the instance with private IP {document}: a document replayed from another host, or a proxy not listed in trustedProxies"
    )]
    WrongSourceAddress { peer: IpAddr, document: String },
    #[error(
        "the request came through the trusted proxy {proxy} without a forwarded client address"
    )]
    ProxyWithoutClientAddress { proxy: IpAddr },
    #[error(
        "the identity document is {age_secs} s past pendingTime; this endpoint onboards new instances only within {max_secs} s of launch"
    )]
    TooOld { age_secs: u64, max_secs: u64 },
    #[error("the identity document's pendingTime is {0} s in the future")]
    FromTheFuture(u64),
    #[error(
        "instance {key} already has a live session (until {expires_at_unix}); a second concurrent session is refused"
    )]
    SessionConflict { key: String, expires_at_unix: i64 },
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpCidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Text that is not an address or a CIDR; the message quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

impl FromStr for IpCidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<IpCidr, CidrError> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|e| CidrError(format!("{s:?} is not an address or CIDR: {e}")))?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError(format!("{s:?}: prefix must be 0..={max}")))?,
            None => max,
        };
        Ok(IpCidr { addr, prefix })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for IpCidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IpCidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IpCidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`, what a dual-stack listener reports) compares as
/// IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Bind the document to the connection.
///
/// `connected_over` is the endpoint's setting for how EC2 agents reach it, never the
/// agent's own claim (an attacker would claim `INTERNET` to skip the check). Over
/// `INTERNET` the source is a NAT address and nothing can be bound: the check passes and
/// the other defenses carry the weight. `peer_ip` is the TCP peer; when it is one of
/// `trusted_proxies` the client address the proxy forwarded (`forwarded_for`, e.g. from
/// PROXY protocol or X-Forwarded-For set by that proxy) is checked instead.
pub fn check_source_address(
    doc_private_ip: Option<IpAddr>,
    peer_ip: IpAddr,
    forwarded_for: Option<IpAddr>,
    connected_over: AddressType,
    trusted_proxies: &[IpCidr],
) -> Result<(), ReplayError> {
    if connected_over == AddressType::Internet {
        return Ok(());
    }
    let peer = canonical(peer_ip);
    let source = if trusted_proxies.iter().any(|p| p.contains(peer)) {
        canonical(forwarded_for.ok_or(ReplayError::ProxyWithoutClientAddress { proxy: peer })?)
    } else {
        peer
    };
    match doc_private_ip.map(canonical) {
        Some(doc) if doc == source => Ok(()),
        doc => Err(ReplayError::WrongSourceAddress {
            peer: source,
            document: doc.map_or_else(|| "(none in the document)".to_string(), |d| d.to_string()),
        }),
    }
}

/// The optional maximum age since `pendingTime` (unix seconds) for a first onboarding, and
/// a refusal of documents launched in the future (beyond [`PENDING_TIME_SKEW`]).
pub fn check_max_age(
    pending_time: i64,
    now: SystemTime,
    max_age: Option<Duration>,
) -> Result<(), ReplayError> {
    let now = unix(now);
    if pending_time - now > PENDING_TIME_SKEW.as_secs() as i64 {
        return Err(ReplayError::FromTheFuture((pending_time - now) as u64));
    }
    if let Some(max) = max_age {
        let age = (now - pending_time).max(0) as u64;
        if age > max.as_secs() {
            return Err(ReplayError::TooOld {
                age_secs: age,
                max_secs: max.as_secs(),
            });
        }
    }
    Ok(())
}

/// The key an instance's sessions are tracked under: partition, account and instance ID
/// (instance IDs are unique per account and region, and accounts per partition).
pub fn instance_key(id: &crate::api::identity::AwsIdentity) -> String {
    let instance = id.ec2.as_ref().map_or("", |e| e.instance_id.as_str());
    format!("{}/{}/{}/{}", id.partition, id.account, id.region, instance)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    pub session_id: String,
    /// Unix seconds; the session is live until then unless refreshed.
    pub expires_at: i64,
}

/// One live session per instance. Pure data: the endpoint keeps one behind a lock, calls
/// [`SessionRegistry::begin`] on authorize, [`SessionRegistry::refresh`] on each
/// keep-alive, [`SessionRegistry::end`] on unregister and [`SessionRegistry::expire`]
/// periodically. The TTL should be the keep-alive timeout: a restarted agent whose old
/// session was not ended waits at most that long (its retry sees `SessionConflict`, a
/// transient error).
#[derive(Debug, Clone, Default)]
pub struct SessionRegistry {
    sessions: HashMap<String, LiveSession>,
}

impl SessionRegistry {
    pub fn new() -> SessionRegistry {
        SessionRegistry::default()
    }

    /// Start `session_id` for `key`, refusing if another session for the key is live.
    /// Re-beginning the same session ID extends it.
    pub fn begin(
        &mut self,
        key: &str,
        session_id: &str,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(), ReplayError> {
        let now = unix(now);
        if let Some(s) = self.sessions.get(key)
            && s.expires_at > now
            && s.session_id != session_id
        {
            return Err(ReplayError::SessionConflict {
                key: key.to_string(),
                expires_at_unix: s.expires_at,
            });
        }
        self.sessions.insert(
            key.to_string(),
            LiveSession {
                session_id: session_id.to_string(),
                expires_at: now + ttl.as_secs() as i64,
            },
        );
        Ok(())
    }

    /// Extend a live session; false if `session_id` is not the key's live session (it
    /// expired, or another one took over after it expired).
    pub fn refresh(&mut self, key: &str, session_id: &str, now: SystemTime, ttl: Duration) -> bool {
        let now = unix(now);
        match self.sessions.get_mut(key) {
            Some(s) if s.session_id == session_id && s.expires_at > now => {
                s.expires_at = now + ttl.as_secs() as i64;
                true
            }
            _ => false,
        }
    }

    /// End a session (unregister); another session's entry is left alone.
    pub fn end(&mut self, key: &str, session_id: &str) -> bool {
        if self
            .sessions
            .get(key)
            .is_some_and(|s| s.session_id == session_id)
        {
            self.sessions.remove(key);
            true
        } else {
            false
        }
    }

    /// Drop expired sessions; returns their keys.
    pub fn expire(&mut self, now: SystemTime) -> Vec<String> {
        let now = unix(now);
        let gone: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.sessions.remove(k);
        }
        gone
    }

    pub fn live(&self, key: &str, now: SystemTime) -> Option<&LiveSession> {
        let now = unix(now);
        self.sessions.get(key).filter(|s| s.expires_at > now)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn source_must_be_the_documents_private_ip_over_the_vpc() {
        let doc = Some(ip("172.31.5.10"));
        assert!(check_source_address(doc, ip("172.31.5.10"), None, AddressType::Vpc, &[]).is_ok());
        assert!(
            check_source_address(doc, ip("::ffff:172.31.5.10"), None, AddressType::Vpc, &[])
                .is_ok()
        );
        let err =
            check_source_address(doc, ip("10.9.9.9"), None, AddressType::Vpc, &[]).unwrap_err();
        assert!(matches!(err, ReplayError::WrongSourceAddress { .. }));
        // A document without privateIp cannot be bound over the VPC.
        assert!(check_source_address(None, ip("10.9.9.9"), None, AddressType::Vpc, &[]).is_err());
    }

    #[test]
    fn internet_setting_skips_binding() {
        assert!(
            check_source_address(
                Some(ip("172.31.5.10")),
                ip("203.0.113.7"),
                None,
                AddressType::Internet,
                &[]
            )
            .is_ok()
        );
    }

    #[test]
    fn trusted_proxy_forwards_the_client_address() {
        let proxies: Vec<IpCidr> = vec!["10.0.0.0/24".parse().unwrap()];
        let doc = Some(ip("172.31.5.10"));
        assert!(
            check_source_address(
                doc,
                ip("10.0.0.5"),
                Some(ip("172.31.5.10")),
                AddressType::Vpc,
                &proxies
            )
            .is_ok()
        );
        assert!(matches!(
            check_source_address(doc, ip("10.0.0.5"), None, AddressType::Vpc, &proxies),
            Err(ReplayError::ProxyWithoutClientAddress { .. })
        ));
        // A forwarded address from an untrusted peer is ignored: the peer itself is checked.
        assert!(
            check_source_address(
                doc,
                ip("10.0.1.5"),
                Some(ip("172.31.5.10")),
                AddressType::Vpc,
                &proxies
            )
            .is_err()
        );
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: IpCidr = "192.168.0.0/16".parse().unwrap();
        assert!(c.contains(ip("192.168.44.1")));
        assert!(!c.contains(ip("192.169.0.1")));
        let all: IpCidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let one: IpCidr = "fd00::1".parse().unwrap();
        assert_eq!(one.prefix, 128);
        assert!(one.contains(ip("fd00::1")));
        assert!(!one.contains(ip("fd00::2")));
        assert!("10.0.0.0/33".parse::<IpCidr>().is_err());
        assert!("nope".parse::<IpCidr>().is_err());
    }

    #[test]
    fn max_age_applies_only_when_set() {
        let pending = 1_000_000;
        assert!(check_max_age(pending, at(1_000_000 + 86_400 * 365), None).is_ok());
        assert!(check_max_age(pending, at(1_000_300), Some(Duration::from_secs(300))).is_ok());
        assert!(matches!(
            check_max_age(pending, at(1_000_301), Some(Duration::from_secs(300))),
            Err(ReplayError::TooOld { age_secs: 301, .. })
        ));
        assert!(matches!(
            check_max_age(pending, at(1_000_000 - 61), None),
            Err(ReplayError::FromTheFuture(61))
        ));
        assert!(check_max_age(pending, at(1_000_000 - 60), None).is_ok());
    }

    #[test]
    fn one_live_session_per_instance() {
        let ttl = Duration::from_secs(60);
        let mut r = SessionRegistry::new();
        r.begin("i-1", "s1", at(100), ttl).unwrap();
        let err = r.begin("i-1", "s2", at(120), ttl).unwrap_err();
        assert!(matches!(
            err,
            ReplayError::SessionConflict {
                expires_at_unix: 160,
                ..
            }
        ));
        // Other instances are independent; the same session may re-begin.
        r.begin("i-2", "s9", at(120), ttl).unwrap();
        r.begin("i-1", "s1", at(130), ttl).unwrap();
        assert_eq!(r.live("i-1", at(131)).unwrap().expires_at, 190);
        // Keep-alives extend; a stranger cannot refresh.
        assert!(r.refresh("i-1", "s1", at(180), ttl));
        assert!(!r.refresh("i-1", "s2", at(180), ttl));
        assert!(r.begin("i-1", "s2", at(239), ttl).is_err());
        // After expiry a new session may take over, and the old one can no longer refresh.
        r.begin("i-1", "s2", at(240), ttl).unwrap();
        assert!(!r.refresh("i-1", "s1", at(241), ttl));
        // Ending someone else's session does nothing; ending your own frees the instance.
        assert!(!r.end("i-1", "s1"));
        assert!(r.end("i-1", "s2"));
        r.begin("i-1", "s3", at(242), ttl).unwrap();
    }

    #[test]
    fn expire_drops_dead_sessions() {
        let mut r = SessionRegistry::new();
        r.begin("a", "1", at(0), Duration::from_secs(10)).unwrap();
        r.begin("b", "2", at(0), Duration::from_secs(100)).unwrap();
        assert_eq!(r.expire(at(50)), vec!["a".to_string()]);
        assert_eq!(r.len(), 1);
        assert!(r.live("a", at(50)).is_none());
    }
}
