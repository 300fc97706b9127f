//! OnboardingPolicy evaluation: may this verified identity join this WorkloadGroup?
//!
//! Deny unless a policy allows. Only policies in the WorkloadGroup's namespace count. A
//! policy that is invalid as written (an AWS matcher without accounts, say) allows nothing
//! and is reported, so a typo never widens access.
//!
//! Pure: the caller hands in the policies, the group's metadata and the identity, and gets a
//! [`Decision`] that carries, rule by rule, why nothing matched (for the endpoint's log).

use std::fmt;

use crate::api::identity::{JwtIdentity, WorkloadIdentity};
use crate::api::meta::Labels;
use crate::api::policy::{JwtIdentityMatcher, OnboardingPolicy, WorkloadIdentityMatcher};

/// The WorkloadGroup as policy sees it: where it lives and its metadata labels.
#[derive(Debug, Clone, Copy)]
pub struct GroupRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a Labels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        /// `<namespace>/<policy>`, rule index: which rule let the workload in.
        policy: String,
        rule: usize,
    },
    Deny {
        /// One line per rule considered, saying why it did not match. Empty when the
        /// namespace has no policies at all.
        considered: Vec<String>,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow { policy, rule } => write!(f, "allowed by {policy} rule {rule}"),
            Decision::Deny { considered } if considered.is_empty() => {
                f.write_str("denied: no OnboardingPolicy in the WorkloadGroup's namespace")
            }
            Decision::Deny { considered } => {
                write!(f, "denied: no rule matched ({})", considered.join("; "))
            }
        }
    }
}

/// Evaluates `policies` (any namespace; others are ignored) for `identity` joining `group`.
pub fn evaluate(
    policies: &[OnboardingPolicy],
    group: GroupRef<'_>,
    identity: &WorkloadIdentity,
) -> Decision {
    let mut considered = Vec::new();
    for policy in policies
        .iter()
        .filter(|p| p.metadata.namespace == group.namespace)
    {
        let pname = format!("{}/{}", policy.metadata.namespace, policy.metadata.name);
        if let Err(problems) = validate(policy) {
            considered.push(format!(
                "{pname}: invalid policy, ignored ({})",
                problems.join(", ")
            ));
            continue;
        }
        for (i, rule) in policy.spec.allow.iter().enumerate() {
            let group_ok = rule
                .onboard_to
                .iter()
                .any(|m| m.workload_group_selector.matches(group.labels));
            if !group_ok {
                considered.push(format!(
                    "{pname} rule {i}: WorkloadGroup {} labels match no workloadGroupSelector",
                    group.name
                ));
                continue;
            }
            let mut why_not = Vec::new();
            let mut matched = false;
            for m in &rule.workloads {
                match match_identity(m, identity) {
                    Ok(()) => {
                        matched = true;
                        break;
                    }
                    Err(why) => why_not.push(why),
                }
            }
            if matched {
                return Decision::Allow {
                    policy: pname,
                    rule: i,
                };
            }
            considered.push(format!("{pname} rule {i}: {}", why_not.join(" / ")));
        }
    }
    Decision::Deny { considered }
}

/// Matches one `workloads[]` entry against the identity, or says why not.
pub fn match_identity(m: &WorkloadIdentityMatcher, id: &WorkloadIdentity) -> Result<(), String> {
    match id {
        WorkloadIdentity::Jwt(jwt) => match &m.jwt {
            Some(jm) => match_jwt(jm, jwt),
            None => Err("not a jwt matcher".into()),
        },
        WorkloadIdentity::Aws(aws) => match &m.aws {
            Some(am) => crate::identity::aws::matches(am, aws),
            None => Err("not an aws matcher".into()),
        },
        WorkloadIdentity::Gcp(gcp) => match &m.gcp {
            Some(gm) => crate::identity::gcp::matches(gm, gcp),
            None => Err("not a gcp matcher".into()),
        },
        WorkloadIdentity::Azure(az) => match &m.azure {
            Some(zm) => crate::identity::azure::matches(zm, az),
            None => Err("not an azure matcher".into()),
        },
    }
}

fn match_jwt(m: &JwtIdentityMatcher, id: &JwtIdentity) -> Result<(), String> {
    if m.issuer != id.issuer {
        return Err(format!("issuer {:?} is not {:?}", id.issuer, m.issuer));
    }
    if !m.subjects.is_empty() && !m.subjects.contains(&id.subject) {
        return Err(format!("subject {:?} not in subjects", id.subject));
    }
    for a in &m.attributes {
        match id.attributes.get(&a.name) {
            None => return Err(format!("attribute {:?} missing", a.name)),
            Some(v) if !a.values.is_empty() && !a.values.contains(v) => {
                return Err(format!("attribute {}={v:?} not in values", a.name));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Problems that make a policy allow nothing. Reported at load time and on every denial.
pub fn validate(policy: &OnboardingPolicy) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if policy.spec.allow.is_empty() {
        problems.push("spec.allow is empty".to_string());
    }
    for (i, rule) in policy.spec.allow.iter().enumerate() {
        if rule.workloads.is_empty() {
            problems.push(format!("allow[{i}].workloads is empty"));
        }
        if rule.onboard_to.is_empty() {
            problems.push(format!("allow[{i}].onboardTo is empty"));
        }
        for (j, sel) in rule.onboard_to.iter().enumerate() {
            if let Err(e) = sel.workload_group_selector.validate() {
                problems.push(format!("allow[{i}].onboardTo[{j}]: {e}"));
            }
        }
        for (j, m) in rule.workloads.iter().enumerate() {
            let at = format!("allow[{i}].workloads[{j}]");
            let set = [
                m.aws.is_some(),
                m.jwt.is_some(),
                m.gcp.is_some(),
                m.azure.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set != 1 {
                problems.push(format!(
                    "{at}: set exactly one of aws, jwt, gcp, azure (found {set})"
                ));
            }
            if let Some(aws) = &m.aws {
                if aws.accounts.is_empty() {
                    problems.push(format!(
                        "{at}.aws.accounts: list the AWS accounts explicitly (at least one)"
                    ));
                }
                for a in &aws.accounts {
                    if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
                        problems.push(format!(
                            "{at}.aws.accounts: {a:?} is not a 12-digit account"
                        ));
                    }
                }
                if aws.ec2.is_some() == aws.ecs.is_some() {
                    problems.push(format!("{at}.aws: set exactly one of ec2, ecs"));
                }
            }
            if let Some(jwt) = &m.jwt {
                if !jwt.issuer.starts_with("https://") {
                    problems.push(format!(
                        "{at}.jwt.issuer: {:?} must be an https URL",
                        jwt.issuer
                    ));
                }
                if jwt.attributes.iter().any(|a| a.name.is_empty()) {
                    problems.push(format!("{at}.jwt.attributes: name is required"));
                }
            }
            if let Some(gcp) = &m.gcp
                && gcp.projects.is_empty()
            {
                problems.push(format!("{at}.gcp.projects: list the projects explicitly"));
            }
            if let Some(az) = &m.azure
                && az.subscriptions.is_empty()
            {
                problems.push(format!(
                    "{at}.azure.subscriptions: list the subscriptions explicitly"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::{AwsIdentity, Ec2Identity, EcsIdentity, IamRole};
    use std::path::Path;

    fn policies(yaml: &str) -> Vec<OnboardingPolicy> {
        crate::yaml::documents(yaml)
            .iter()
            .map(|d| d.parse(Path::new("test.yaml")).unwrap())
            .collect()
    }

    fn jwt(sub: &str, attrs: &[(&str, &str)]) -> WorkloadIdentity {
        WorkloadIdentity::Jwt(JwtIdentity {
            issuer: "https://issuer.example".into(),
            subject: sub.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const JWT_POLICY: &str = r#"
apiVersion: authorization.onboarding.tetrate.io/v1alpha1
kind: OnboardingPolicy
metadata: {name: allow-vms, namespace: bookinfo}
spec:
  allow:
  - workloads:
    - jwt:
        issuer: https://issuer.example
        subjects: [vm-1, vm-2]
        attributes: [{name: region, values: [us-east, us-west]}, {name: team}]
    onboardTo:
    - workloadGroupSelector: {matchLabels: {app: ratings}}
"#;

    #[test]
    fn no_policy_denies() {
        let l = labels(&[("app", "ratings")]);
        let g = GroupRef {
            namespace: "bookinfo",
            name: "ratings",
            labels: &l,
        };
        let d = evaluate(&[], g, &jwt("vm-1", &[]));
        assert_eq!(d, Decision::Deny { considered: vec![] });
    }

    #[test]
    fn jwt_rule_allows_and_denies_with_reasons() {
        let ps = policies(JWT_POLICY);
        let l = labels(&[("app", "ratings")]);
        let g = GroupRef {
            namespace: "bookinfo",
            name: "ratings",
            labels: &l,
        };
        let ok = jwt("vm-1", &[("region", "us-east"), ("team", "a")]);
        assert!(evaluate(&ps, g, &ok).is_allowed());

        let d = evaluate(
            &ps,
            g,
            &jwt("vm-3", &[("region", "us-east"), ("team", "a")]),
        );
        assert!(d.to_string().contains("subject \"vm-3\""), "{d}");
        let d = evaluate(&ps, g, &jwt("vm-1", &[("region", "eu"), ("team", "a")]));
        assert!(d.to_string().contains("region=\"eu\""), "{d}");
        let d = evaluate(&ps, g, &jwt("vm-1", &[("region", "us-east")]));
        assert!(d.to_string().contains("\"team\" missing"), "{d}");

        // Group labels must match the selector.
        let other = labels(&[("app", "reviews")]);
        let g2 = GroupRef {
            labels: &other,
            ..g
        };
        let d = evaluate(&ps, g2, &ok);
        assert!(
            d.to_string().contains("match no workloadGroupSelector"),
            "{d}"
        );
    }

    #[test]
    fn policies_in_other_namespaces_do_not_count() {
        let ps = policies(JWT_POLICY);
        let l = labels(&[("app", "ratings")]);
        let g = GroupRef {
            namespace: "other",
            name: "ratings",
            labels: &l,
        };
        let d = evaluate(
            &ps,
            g,
            &jwt("vm-1", &[("region", "us-east"), ("team", "a")]),
        );
        assert_eq!(d, Decision::Deny { considered: vec![] });
    }

    fn ec2(account: &str, role: Option<&str>) -> WorkloadIdentity {
        WorkloadIdentity::Aws(AwsIdentity {
            partition: "aws".into(),
            account: account.into(),
            region: "us-east-2".into(),
            zone: "us-east-2b".into(),
            ec2: Some(Ec2Identity {
                instance_id: "i-1234567890abcdef0".into(),
                iam_role: role.map(|r| IamRole { name: r.into() }),
            }),
            ecs: None,
        })
    }

    #[test]
    fn aws_matchers() {
        let ps = policies(
            r#"
apiVersion: authorization.onboarding.tetrate.io/v1alpha1
kind: OnboardingPolicy
metadata: {name: narrow, namespace: bookinfo}
spec:
  allow:
  - workloads:
    - aws:
        partitions: [aws]
        accounts: ['123456789012']
        regions: [us-east-2]
        zones: [us-east-2b]
        ec2: {iamRoleNames: [ratings-role]}
    - aws:
        accounts: ['123456789012']
        ecs: {clusters: [prod], iamRoleNames: [task-role]}
    onboardTo:
    - workloadGroupSelector: {}
"#,
        );
        let l = Labels::new();
        let g = GroupRef {
            namespace: "bookinfo",
            name: "any",
            labels: &l,
        };
        assert!(evaluate(&ps, g, &ec2("123456789012", Some("ratings-role"))).is_allowed());
        assert!(!evaluate(&ps, g, &ec2("123456789012", Some("other"))).is_allowed());
        assert!(!evaluate(&ps, g, &ec2("123456789012", None)).is_allowed());
        assert!(!evaluate(&ps, g, &ec2("999999999999", Some("ratings-role"))).is_allowed());
        let ecs = |cluster: &str, role: &str| {
            WorkloadIdentity::Aws(AwsIdentity {
                partition: "aws".into(),
                account: "123456789012".into(),
                region: "eu-west-1".into(),
                zone: String::new(),
                ec2: None,
                ecs: Some(EcsIdentity {
                    task_id: "t1".into(),
                    cluster: cluster.into(),
                    iam_role: Some(IamRole { name: role.into() }),
                }),
            })
        };
        assert!(evaluate(&ps, g, &ecs("prod", "task-role")).is_allowed());
        assert!(!evaluate(&ps, g, &ecs("dev", "task-role")).is_allowed());
        assert!(!evaluate(&ps, g, &ecs("prod", "other")).is_allowed());
    }

    #[test]
    fn aws_without_accounts_is_invalid_and_allows_nothing() {
        let ps = policies(
            r#"
apiVersion: authorization.onboarding.tetrate.io/v1alpha1
kind: OnboardingPolicy
metadata: {name: open, namespace: bookinfo}
spec:
  allow:
  - workloads: [{aws: {ec2: {}}}]
    onboardTo: [{workloadGroupSelector: {}}]
"#,
        );
        let l = Labels::new();
        let g = GroupRef {
            namespace: "bookinfo",
            name: "any",
            labels: &l,
        };
        let d = evaluate(&ps, g, &ec2("123456789012", None));
        assert!(!d.is_allowed());
        assert!(
            d.to_string().contains("list the AWS accounts explicitly"),
            "{d}"
        );
    }
}
