//! AWS: EC2 instance identity documents and ECS task roles.
//!
//! - [`ec2`]: verify the IMDS identity document and its PKCS#7 (endpoint).
//! - [`certs`]: AWS's per-region certificates, pinned in the binary (endpoint).
//! - [`replay`]: the defenses an identity document needs because it never expires and
//!   carries no nonce (pure; the endpoint wires them).
//! - [`api`]: DescribeInstances / GetInstanceProfile for the IAM role and instance state
//!   (endpoint).
//! - [`ecs`]: the agent signs STS GetCallerIdentity with the task role; the endpoint forwards
//!   it to STS (both halves).
//! - [`imds`]: the agent's IMDSv2 client (agent).
//! - [`sigv4`]: AWS Signature Version 4 (both halves).

use crate::api::identity::{AwsIdentity, WorkloadIdentity};
use crate::api::policy::AwsIdentityMatcher;
use crate::policy::Mismatch;

#[cfg(feature = "endpoint")]
pub mod api;

pub mod certs;
pub mod ec2;
pub mod ecs;
#[cfg(feature = "agent")]
pub mod imds;
pub mod replay;
pub mod sigv4;

/// The AWS partition a region belongs to (used in ARNs and to pick API endpoints).
pub fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("eusc-") {
        "aws-eusc"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else {
        "aws"
    }
}

/// The identity part of a WAR name (TSB's format for EC2):
/// `aws-<partition>-<account>-<zone>-ec2-<instance-id>`; for ECS
/// `aws-<partition>-<account>-<region>-ecs-<cluster>-<task-id>`. The registration module
/// lower-cases and DNS-1123-sanitises the whole name.
pub fn name_part(id: &AwsIdentity) -> String {
    if let Some(ecs) = &id.ecs {
        return format!(
            "aws-{}-{}-{}-ecs-{}-{}",
            id.partition, id.account, id.region, ecs.cluster, ecs.task_id
        );
    }
    let instance = id.ec2.as_ref().map_or("", |e| e.instance_id.as_str());
    let place = if id.zone.is_empty() {
        &id.region
    } else {
        &id.zone
    };
    format!(
        "aws-{}-{}-{}-ec2-{}",
        id.partition, id.account, place, instance
    )
}

/// The name part for any cloud identity this module family knows (None for JWT: the
/// registration module names those).
pub fn cloud_name_part(id: &WorkloadIdentity) -> Option<String> {
    match id {
        WorkloadIdentity::Aws(a) => Some(name_part(a)),
        WorkloadIdentity::Gcp(g) => Some(crate::identity::gcp::name_part(g)),
        WorkloadIdentity::Azure(a) => Some(crate::identity::azure::name_part(a)),
        WorkloadIdentity::Jwt(_) => None,
    }
}

/// A list matcher: empty allows anything, otherwise the value must be listed (`*` is a
/// wildcard for any value).
pub(crate) fn listed(field: &str, allowed: &[String], value: &str) -> Result<(), Mismatch> {
    if allowed.is_empty() || allowed.iter().any(|a| a == "*" || a == value) {
        Ok(())
    } else {
        Err(Mismatch(format!(
            "{field} {value:?} is not one of {allowed:?}"
        )))
    }
}

/// Whether an AWS identity satisfies a policy's `aws` matcher; `Err` says why not.
///
/// `accounts` must list at least one account (an empty list matches nothing: a policy
/// never admits every AWS account by omission). The other lists narrow when non-empty.
/// `ec2` matches only EC2 identities and `ecs` only ECS ones; with neither set both kinds
/// match. `iamRoleNames` needs the role the endpoint looked up through the AWS API: an
/// identity without a known role never matches a non-empty list.
pub fn matches(m: &AwsIdentityMatcher, id: &AwsIdentity) -> Result<(), Mismatch> {
    if m.accounts.is_empty() {
        return Err(Mismatch("the aws matcher lists no accounts".into()));
    }
    listed("partition", &m.partitions, &id.partition)?;
    listed("account", &m.accounts, &id.account)?;
    listed("region", &m.regions, &id.region)?;
    listed("zone", &m.zones, &id.zone)?;
    match (&m.ec2, &m.ecs, &id.ec2, &id.ecs) {
        (Some(_), _, None, _) => Err(Mismatch(
            "the matcher is for EC2 instances, this is not one".into(),
        )),
        (_, Some(_), _, None) => Err(Mismatch(
            "the matcher is for ECS tasks, this is not one".into(),
        )),
        (Some(em), _, Some(e), _) => role_listed(&em.iam_role_names, e.iam_role.as_ref()),
        (_, Some(cm), _, Some(c)) => {
            listed("ECS cluster", &cm.clusters, &c.cluster)?;
            role_listed(&cm.iam_role_names, c.iam_role.as_ref())
        }
        (None, None, _, _) => Ok(()),
    }
}

fn role_listed(
    allowed: &[String],
    role: Option<&crate::api::identity::IamRole>,
) -> Result<(), Mismatch> {
    if allowed.is_empty() {
        return Ok(());
    }
    match role {
        Some(r) => listed("IAM role", allowed, &r.name),
        None => Err(Mismatch(format!(
            "the IAM role is unknown (no AWS API lookup, or no instance profile) and the matcher requires one of {allowed:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::{Ec2Identity, EcsIdentity, IamRole};
    use crate::api::policy::{Ec2Matcher, EcsMatcher};

    fn ec2(role: Option<&str>) -> AwsIdentity {
        AwsIdentity {
            partition: "aws".into(),
            account: "123456789012".into(),
            region: "us-east-2".into(),
            zone: "us-east-2b".into(),
            ec2: Some(Ec2Identity {
                instance_id: "i-1234567890abcdef0".into(),
                iam_role: role.map(|r| IamRole { name: r.into() }),
            }),
            ecs: None,
        }
    }

    fn ecs() -> AwsIdentity {
        AwsIdentity {
            partition: "aws".into(),
            account: "123456789012".into(),
            region: "us-east-2".into(),
            zone: String::new(),
            ec2: None,
            ecs: Some(EcsIdentity {
                task_id: "0f1e2d".into(),
                cluster: "prod".into(),
                iam_role: Some(IamRole {
                    name: "task-role".into(),
                }),
            }),
        }
    }

    fn base() -> AwsIdentityMatcher {
        AwsIdentityMatcher {
            accounts: vec!["123456789012".into()],
            ..Default::default()
        }
    }

    #[test]
    fn partitions_follow_region_prefixes() {
        assert_eq!(partition_of("us-east-1"), "aws");
        assert_eq!(partition_of("cn-northwest-1"), "aws-cn");
        assert_eq!(partition_of("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition_of("eusc-de-east-1"), "aws-eusc");
    }

    #[test]
    fn name_part_is_tsb_format() {
        assert_eq!(
            name_part(&ec2(None)),
            "aws-aws-123456789012-us-east-2b-ec2-i-1234567890abcdef0"
        );
        assert_eq!(
            name_part(&ecs()),
            "aws-aws-123456789012-us-east-2-ecs-prod-0f1e2d"
        );
    }

    #[test]
    fn accounts_are_required_and_matched() {
        assert!(matches(&AwsIdentityMatcher::default(), &ec2(None)).is_err());
        assert!(matches(&base(), &ec2(None)).is_ok());
        let m = AwsIdentityMatcher {
            accounts: vec!["999".into()],
            ..Default::default()
        };
        assert!(matches(&m, &ec2(None)).unwrap_err().contains("account"));
        let m = AwsIdentityMatcher {
            accounts: vec!["*".into()],
            ..Default::default()
        };
        assert!(matches(&m, &ec2(None)).is_ok());
    }

    #[test]
    fn partition_region_zone_narrow() {
        for (field, m) in [
            (
                "partition",
                AwsIdentityMatcher {
                    partitions: vec!["aws-cn".into()],
                    ..base()
                },
            ),
            (
                "region",
                AwsIdentityMatcher {
                    regions: vec!["eu-west-1".into()],
                    ..base()
                },
            ),
            (
                "zone",
                AwsIdentityMatcher {
                    zones: vec!["us-east-2a".into()],
                    ..base()
                },
            ),
        ] {
            let err = matches(&m, &ec2(None)).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
        let m = AwsIdentityMatcher {
            partitions: vec!["aws".into()],
            regions: vec!["us-east-2".into()],
            zones: vec!["us-east-2b".into()],
            ..base()
        };
        assert!(matches(&m, &ec2(None)).is_ok());
    }

    #[test]
    fn ec2_iam_role_names() {
        let m = AwsIdentityMatcher {
            ec2: Some(Ec2Matcher {
                iam_role_names: vec!["web".into()],
            }),
            ..base()
        };
        assert!(matches(&m, &ec2(Some("web"))).is_ok());
        assert!(
            matches(&m, &ec2(Some("db")))
                .unwrap_err()
                .contains("IAM role")
        );
        assert!(matches(&m, &ec2(None)).unwrap_err().contains("unknown"));
        assert!(matches(&m, &ecs()).unwrap_err().contains("EC2"));
        let any_role = AwsIdentityMatcher {
            ec2: Some(Ec2Matcher::default()),
            ..base()
        };
        assert!(matches(&any_role, &ec2(None)).is_ok());
    }

    #[test]
    fn ecs_clusters_and_roles() {
        let m = AwsIdentityMatcher {
            ecs: Some(EcsMatcher {
                clusters: vec!["prod".into()],
                iam_role_names: vec!["task-role".into()],
            }),
            ..base()
        };
        assert!(matches(&m, &ecs()).is_ok());
        assert!(
            matches(&m, &ec2(Some("task-role")))
                .unwrap_err()
                .contains("ECS")
        );
        let wrong_cluster = AwsIdentityMatcher {
            ecs: Some(EcsMatcher {
                clusters: vec!["staging".into()],
                iam_role_names: vec![],
            }),
            ..base()
        };
        assert!(
            matches(&wrong_cluster, &ecs())
                .unwrap_err()
                .contains("cluster")
        );
        let wrong_role = AwsIdentityMatcher {
            ecs: Some(EcsMatcher {
                clusters: vec![],
                iam_role_names: vec!["other".into()],
            }),
            ..base()
        };
        assert!(
            matches(&wrong_role, &ecs())
                .unwrap_err()
                .contains("IAM role")
        );
    }
}
