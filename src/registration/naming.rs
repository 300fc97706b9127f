//! WAR names: `<workload-group>-<workload-identity>` (spec/004).
//!
//! The result is always a valid DNS-1123 subdomain of at most 253 characters. When the
//! identity had to be changed to get there (upper case, odd characters, too long), a stable
//! hash of the *original* identity is appended, so two different identities can never end up
//! with the same name (the collision TSB users hit when VMs share a JWT subject is a policy
//! matter; two *different* subjects colliding after sanitising would be our bug).

use sha2::{Digest, Sha256};

use crate::api::identity::WorkloadIdentity;

pub const MAX_NAME_LEN: usize = 253;
const HASH_LEN: usize = 10;

/// The identity part of the name, before sanitising. `jwt_short_name` is the trusted
/// issuer's `shortName` (JWT identities only).
pub fn raw_identity_part(identity: &WorkloadIdentity, jwt_short_name: Option<&str>) -> String {
    match identity {
        WorkloadIdentity::Jwt(j) => {
            format!("jwt-{}-{}", jwt_short_name.unwrap_or("jwt"), j.subject)
        }
        WorkloadIdentity::Aws(a) => crate::identity::aws::name_part(a),
        WorkloadIdentity::Gcp(g) => crate::identity::gcp::name_part(g),
        WorkloadIdentity::Azure(z) => crate::identity::azure::name_part(z),
    }
}

/// `<group>-<identity>`, made DNS-1123 safe without collisions.
pub fn war_name(group: &str, identity: &WorkloadIdentity, jwt_short_name: Option<&str>) -> String {
    let raw = format!("{group}-{}", raw_identity_part(identity, jwt_short_name));
    dns1123_name(&raw)
}

/// Maps any string to a DNS-1123 subdomain (lower-case alphanumerics, '-' and '.', starting
/// and ending alphanumeric, <= 253 chars). Unchanged when already valid; otherwise the
/// readable part is kept and a hash of the original appended.
pub fn dns1123_name(raw: &str) -> String {
    if is_dns1123_subdomain(raw) {
        return raw.to_string();
    }
    let mut s: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Collapse runs that would make labels invalid ("..", ".-", "-.").
    while s.contains("..") || s.contains(".-") || s.contains("-.") {
        s = s.replace("..", ".").replace(".-", "-").replace("-.", "-");
    }
    let hash = short_hash(raw);
    let keep = MAX_NAME_LEN - HASH_LEN - 1;
    if s.len() > keep {
        s.truncate(keep);
    }
    let s = s.trim_matches(|c| c == '-' || c == '.');
    if s.is_empty() {
        hash
    } else {
        format!("{s}-{hash}")
    }
}

fn short_hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(HASH_LEN);
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
        if out.len() >= HASH_LEN {
            break;
        }
    }
    out.truncate(HASH_LEN);
    out
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::{AwsIdentity, Ec2Identity, JwtIdentity};

    #[test]
    fn aws_name_matches_the_docs() {
        let id = WorkloadIdentity::Aws(AwsIdentity {
            partition: "aws".into(),
            account: "123456789012".into(),
            region: "us-east-2".into(),
            zone: "us-east-2b".into(),
            ec2: Some(Ec2Identity {
                instance_id: "i-1234567890abcdef0".into(),
                iam_role: None,
            }),
            ecs: None,
        });
        assert_eq!(
            war_name("ratings", &id, None),
            "ratings-aws-aws-123456789012-us-east-2b-ec2-i-1234567890abcdef0"
        );
    }

    fn jwt(sub: &str) -> WorkloadIdentity {
        WorkloadIdentity::Jwt(JwtIdentity {
            issuer: "https://idp.example".into(),
            subject: sub.into(),
            attributes: Default::default(),
        })
    }

    #[test]
    fn plain_jwt_subject_is_kept() {
        assert_eq!(
            war_name("ratings", &jwt("vm-0001"), Some("corp")),
            "ratings-jwt-corp-vm-0001"
        );
    }

    #[test]
    fn odd_subjects_get_a_stable_hash_and_never_collide() {
        let a = war_name("ratings", &jwt("VM_1@corp"), Some("corp"));
        let b = war_name("ratings", &jwt("vm-1-corp"), Some("corp"));
        let c = war_name("ratings", &jwt("vm_1@corp"), Some("corp"));
        assert!(is_dns1123_subdomain(&a), "{a}");
        assert!(a.starts_with("ratings-jwt-corp-vm-1-corp-"), "{a}");
        assert_ne!(a, b);
        assert_ne!(a, c, "case differences must not collide");
        assert_eq!(a, war_name("ratings", &jwt("VM_1@corp"), Some("corp")));
    }

    #[test]
    fn long_names_are_shortened_with_a_hash() {
        let long = "x".repeat(400);
        let a = war_name("ratings", &jwt(&long), Some("corp"));
        let b = war_name("ratings", &jwt(&format!("{long}y")), Some("corp"));
        assert!(a.len() <= MAX_NAME_LEN && is_dns1123_subdomain(&a), "{a}");
        assert_ne!(a, b, "names differing only past the cut must not collide");
    }

    #[test]
    fn sanitises_dots_and_edges() {
        for raw in ["-a", "a-", "a..b", "a.-b", ".", "日本", "UPPER"] {
            let n = dns1123_name(raw);
            assert!(is_dns1123_subdomain(&n), "{raw:?} -> {n:?}");
        }
    }
}
