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
use crate::api::meta::{LabelSelector, Labels, SelectorOperator};
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
            let mut selector_misses = Vec::new();
            for (j, m) in rule.onboard_to.iter().enumerate() {
                match explain_selector(&m.workload_group_selector, group.labels) {
                    Ok(()) => {
                        selector_misses.clear();
                        break;
                    }
                    Err(why) => selector_misses.push(format!("onboardTo[{j}] {why}")),
                }
            }
            if !selector_misses.is_empty() {
                considered.push(format!(
                    "{pname} rule {i}: WorkloadGroup {} not selected: {}",
                    group.name,
                    selector_misses.join(" / ")
                ));
                continue;
            }
            let mut why_not = Vec::new();
            let mut matched = false;
            for (j, m) in rule.workloads.iter().enumerate() {
                match match_identity(m, identity) {
                    Ok(()) => {
                        matched = true;
                        break;
                    }
                    Err(why) => why_not.push(format!("workloads[{j}] {why}")),
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

/// Matches one `workloads[]` entry against the identity, or says why not: the field, the
/// value the identity has and what the matcher allows, so that an operator reading a denial
/// can fix the policy (or see that the host is not who it should be) without a debugger.
pub fn match_identity(m: &WorkloadIdentityMatcher, id: &WorkloadIdentity) -> Result<(), Mismatch> {
    identity_mismatch(m, id)
}

/// Why a matcher or a selector does not match: one line for the operator reading a denial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(pub String);

impl std::ops::Deref for Mismatch {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// `Err(Mismatch(reason))`: the reasons below are one line each.
fn miss(reason: String) -> Result<(), Mismatch> {
    Err(Mismatch(reason))
}

fn identity_mismatch(m: &WorkloadIdentityMatcher, id: &WorkloadIdentity) -> Result<(), Mismatch> {
    let platform_mismatch = || {
        let kind = matcher_kind(m);
        miss(format!(
            "{kind}: the identity is {}, not {kind}",
            id.platform()
        ))
    };
    match id {
        WorkloadIdentity::Jwt(jwt) => match &m.jwt {
            Some(jm) => match_jwt(jm, jwt),
            None => platform_mismatch(),
        },
        WorkloadIdentity::Aws(aws) => match &m.aws {
            Some(am) => {
                crate::identity::aws::matches(am, aws).map_err(|e| Mismatch(format!("aws: {e}")))
            }
            None => platform_mismatch(),
        },
        WorkloadIdentity::Gcp(gcp) => match &m.gcp {
            Some(gm) => {
                crate::identity::gcp::matches(gm, gcp).map_err(|e| Mismatch(format!("gcp: {e}")))
            }
            None => platform_mismatch(),
        },
        WorkloadIdentity::Azure(az) => match &m.azure {
            Some(zm) => {
                crate::identity::azure::matches(zm, az).map_err(|e| Mismatch(format!("azure: {e}")))
            }
            None => platform_mismatch(),
        },
    }
}

/// Which platform a matcher is for, as the policy spells it (`validate` has made sure that
/// exactly one is set before evaluation gets here).
fn matcher_kind(m: &WorkloadIdentityMatcher) -> &'static str {
    if m.jwt.is_some() {
        "jwt"
    } else if m.aws.is_some() {
        "aws"
    } else if m.gcp.is_some() {
        "gcp"
    } else if m.azure.is_some() {
        "azure"
    } else {
        "empty matcher"
    }
}

fn match_jwt(m: &JwtIdentityMatcher, id: &JwtIdentity) -> Result<(), Mismatch> {
    if m.issuer != id.issuer {
        return miss(format!(
            "jwt.issuer: got {}, want {}",
            quote(&id.issuer),
            quote(&m.issuer)
        ));
    }
    if !m.subjects.is_empty() && !m.subjects.contains(&id.subject) {
        return miss(format!(
            "jwt.subjects: {} not in {}",
            quote(&id.subject),
            quote_list(&m.subjects)
        ));
    }
    for a in &m.attributes {
        let want = if a.values.is_empty() {
            "any value".to_string()
        } else {
            format!("one of {}", quote_list(&a.values))
        };
        match id.attributes.get(&a.name) {
            None => {
                return miss(format!(
                    "jwt.attributes {}: missing from the token, want {want}",
                    key(&a.name)
                ));
            }
            Some(v) if !a.values.is_empty() && !a.values.contains(v) => {
                return miss(format!(
                    "jwt.attributes {}: {} not in {}",
                    key(&a.name),
                    quote(v),
                    quote_list(&a.values)
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Whether `selector` selects `labels`, with Kubernetes' semantics (the same as
/// [`LabelSelector::matches`]); `Err` names every requirement that failed, with the label's
/// actual value and the wanted one.
pub fn explain_selector(selector: &LabelSelector, labels: &Labels) -> Result<(), Mismatch> {
    selector_mismatch(selector, labels)
}

fn selector_mismatch(selector: &LabelSelector, labels: &Labels) -> Result<(), Mismatch> {
    let mut misses = Vec::new();
    for (k, want) in &selector.match_labels {
        match labels.get(k) {
            Some(got) if got == want => {}
            Some(got) => misses.push(format!(
                "matchLabels {}: got {}, want {}",
                key(k),
                quote(got),
                quote(want)
            )),
            None => misses.push(format!(
                "matchLabels {}: missing, want {}",
                key(k),
                quote(want)
            )),
        }
    }
    for r in &selector.match_expressions {
        if r.matches(labels) {
            continue;
        }
        let got = match labels.get(&r.key) {
            Some(v) => format!("got {}", quote(v)),
            None => "missing".to_string(),
        };
        let rule = match r.operator {
            SelectorOperator::In => format!("In {}", quote_list(&r.values)),
            SelectorOperator::NotIn => format!("NotIn {}", quote_list(&r.values)),
            SelectorOperator::Exists => "Exists".to_string(),
            SelectorOperator::DoesNotExist => "DoesNotExist".to_string(),
        };
        misses.push(format!("matchExpressions {} {rule}: {got}", key(&r.key)));
    }
    if misses.is_empty() {
        Ok(())
    } else {
        miss(misses.join(", "))
    }
}

/// A value as a JSON string: quoted, with control characters escaped, so that a value from
/// a token cannot forge a line in the endpoint's log.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// A label key or attribute name: bare when it is made of the characters Kubernetes allows
/// in label keys (the usual case), quoted otherwise.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        k.to_string()
    } else {
        quote(k)
    }
}

/// A list of values as a JSON array: `["vm-1","vm-2"]`.
fn quote_list(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| format!("{values:?}"))
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
        // Each denial names the field, the value compared and what was allowed.
        assert!(
            d.to_string()
                .contains(r#"workloads[0] jwt.subjects: "vm-3" not in ["vm-1","vm-2"]"#),
            "{d}"
        );
        let d = evaluate(&ps, g, &jwt("vm-1", &[("region", "eu"), ("team", "a")]));
        assert!(
            d.to_string()
                .contains(r#"jwt.attributes region: "eu" not in ["us-east","us-west"]"#),
            "{d}"
        );
        let d = evaluate(&ps, g, &jwt("vm-1", &[("region", "us-east")]));
        assert!(
            d.to_string()
                .contains("jwt.attributes team: missing from the token, want any value"),
            "{d}"
        );

        // Group labels must match the selector.
        let other = labels(&[("app", "reviews")]);
        let g2 = GroupRef {
            labels: &other,
            ..g
        };
        let d = evaluate(&ps, g2, &ok);
        assert!(
            d.to_string().contains(
                r#"WorkloadGroup ratings not selected: onboardTo[0] matchLabels app: got "reviews", want "ratings""#
            ),
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

    #[test]
    fn denials_name_the_issuer_compared() {
        let ps = policies(JWT_POLICY);
        let l = labels(&[("app", "ratings")]);
        let g = GroupRef {
            namespace: "bookinfo",
            name: "ratings",
            labels: &l,
        };
        let other = WorkloadIdentity::Jwt(JwtIdentity {
            issuer: "https://other.example".into(),
            subject: "vm-1".into(),
            attributes: Default::default(),
        });
        let d = evaluate(&ps, g, &other);
        assert!(
            d.to_string().contains(
                r#"jwt.issuer: got "https://other.example", want "https://issuer.example""#
            ),
            "{d}"
        );
        // A matcher for another platform says which platform the identity is.
        let d = evaluate(&ps, g, &ec2("123456789012", None));
        assert!(
            d.to_string()
                .contains("workloads[0] jwt: the identity is aws-ec2, not jwt"),
            "{d}"
        );
    }

    #[test]
    fn cloud_denials_name_the_value_and_the_allowed_ones() {
        let ps = policies(
            r#"
apiVersion: authorization.onboarding.tetrate.io/v1alpha1
kind: OnboardingPolicy
metadata: {name: aws, namespace: bookinfo}
spec:
  allow:
  - workloads:
    - aws: {accounts: ['123456789012'], ec2: {iamRoleNames: [web]}}
    onboardTo: [{workloadGroupSelector: {}}]
"#,
        );
        let l = Labels::new();
        let g = GroupRef {
            namespace: "bookinfo",
            name: "any",
            labels: &l,
        };
        let d = evaluate(&ps, g, &ec2("999999999999", Some("web")));
        assert!(
            d.to_string().contains("workloads[0] aws: account")
                && d.to_string().contains("999999999999")
                && d.to_string().contains("123456789012"),
            "{d}"
        );
    }

    #[test]
    fn selector_denials_name_labels_got_and_wanted() {
        use crate::api::meta::LabelSelectorRequirement;
        let sel = LabelSelector {
            match_labels: labels(&[("env", "prod"), ("app", "ratings")]),
            match_expressions: vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: SelectorOperator::In,
                    values: vec!["a".into(), "b".into()],
                },
                LabelSelectorRequirement {
                    key: "legacy".into(),
                    operator: SelectorOperator::DoesNotExist,
                    values: vec![],
                },
                LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: SelectorOperator::Exists,
                    values: vec![],
                },
                LabelSelectorRequirement {
                    key: "stage".into(),
                    operator: SelectorOperator::NotIn,
                    values: vec!["canary".into()],
                },
            ],
        };
        let good = labels(&[
            ("env", "prod"),
            ("app", "ratings"),
            ("tier", "a"),
            ("zone", "z1"),
        ]);
        assert_eq!(explain_selector(&sel, &good), Ok(()));
        assert!(sel.matches(&good));
        let bad = labels(&[
            ("env", "dev"),
            ("tier", "c"),
            ("legacy", "yes"),
            ("stage", "canary"),
        ]);
        assert!(!sel.matches(&bad));
        let why = explain_selector(&sel, &bad).unwrap_err();
        for part in [
            r#"matchLabels env: got "dev", want "prod""#,
            r#"matchLabels app: missing, want "ratings""#,
            r#"matchExpressions tier In ["a","b"]: got "c""#,
            r#"matchExpressions legacy DoesNotExist: got "yes""#,
            "matchExpressions zone Exists: missing",
            r#"matchExpressions stage NotIn ["canary"]: got "canary""#,
        ] {
            assert!(why.contains(part), "{part} not in {why}");
        }
    }

    #[test]
    fn denial_values_cannot_forge_log_lines() {
        let ps = policies(JWT_POLICY);
        let l = labels(&[("app", "ratings")]);
        let g = GroupRef {
            namespace: "bookinfo",
            name: "ratings",
            labels: &l,
        };
        let d = evaluate(&ps, g, &jwt("vm-9\nINFO forged line", &[]));
        let text = d.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains(r#""vm-9\nINFO forged line""#), "{text}");
    }
}
