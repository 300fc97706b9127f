//! May a verified credential onboard (`/v1/authorize`), and what must the endpoint do for it?
//!
//! Two pure steps, so the endpoint asks the store only once the policy has let the identity
//! in (a denied request costs no store read):
//!
//! 1. [`target`]: the OnboardingPolicies of the group's namespace must allow the identity
//!    into the (existing) WorkloadGroup; the answer names the registration (WAR) it gets.
//! 2. [`admit`]: with what the store and the agent's current session token say about that
//!    registration, the [`Plan`] the endpoint carries out: which replay defences to apply
//!    (the first-onboarding age limit of EC2, GCP single use, one live session per host)
//!    and which WAR uid the new session token continues.
//!
//! The session token issued from a plan carries [`Plan::registration_uid`]; every later call
//! (register, keep-alive, bootstrap) asks [`super::session::check`], which ends the session
//! when that WAR is deleted or replaced. Together they are the whole life of a session.
//!
//! The replay defences that need memory between requests (GCP tokens seen, live sessions per
//! host) are carried out by the endpoint's replay state; this module decides only whether
//! and how they apply.

use std::time::{Duration, SystemTime};

use crate::api::identity::WorkloadIdentity;
use crate::api::istio::WorkloadGroup;
use crate::api::meta::NamespacedName;
use crate::api::policy::OnboardingPolicy;
use crate::api::registration::WorkloadAutoRegistration;
use crate::identity::aws::replay::{self, ReplayError};
use crate::policy::{self, Decision, GroupRef};

use super::naming;

/// A verified credential asking to join a WorkloadGroup, with the current inputs.
#[derive(Debug, Clone, Copy)]
pub struct Onboarding<'a> {
    /// The group the agent asked for.
    pub workload_group: &'a NamespacedName,
    pub identity: &'a WorkloadIdentity,
    /// The trusted issuer's short name (JWT identities), part of the WAR name.
    pub jwt_short_name: Option<&'a str>,
    /// The group as the store has it now (`None`: it does not exist).
    pub group: Option<&'a WorkloadGroup>,
    /// The OnboardingPolicies of the group's namespace.
    pub policies: &'a [OnboardingPolicy],
}

/// The identity may join: the registration it gets and the policy's reasons (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub registration: NamespacedName,
    pub decision: Decision,
}

/// Why `/v1/authorize` is refused by a decision of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No policy allows the identity in, or the group does not exist (`policy_denied`).
    PolicyDenied {
        /// For the agent: stays inside the namespace it asked for.
        message: String,
        /// For the endpoint's log: the rules considered.
        reason: String,
        /// The group's namespace when the group exists (the denial metric's label: a
        /// namespace nobody created must not grow the metric's label set).
        namespace: Option<String>,
    },
    /// A first onboarding outside the EC2 age limit (`authentication.aws.ec2.maxAgeSincePending`).
    TooOld(ReplayError),
}

/// Step 1: the policy decision and the registration name.
pub fn target(o: Onboarding<'_>) -> Result<Target, Refusal> {
    let group_ref = o.workload_group;
    let decision = match o.group {
        Some(g) => policy::evaluate(
            o.policies,
            GroupRef {
                namespace: &g.metadata.namespace,
                name: &g.metadata.name,
                labels: &g.metadata.labels,
            },
            o.identity,
        ),
        None => Decision::Deny {
            considered: vec![format!("WorkloadGroup {group_ref} does not exist")],
        },
    };
    if let Decision::Deny { .. } = &decision {
        let platform = o.identity.platform();
        return Err(Refusal::PolicyDenied {
            message: format!(
                "not authorized to join WorkloadGroup {group_ref}: it does not exist, or no \
                 OnboardingPolicy in namespace {} allows this {platform} identity; the \
                 endpoint's log lists the rules it considered",
                group_ref.namespace
            ),
            reason: decision.to_string(),
            namespace: o.group.map(|g| g.metadata.namespace.clone()),
        });
    }
    Ok(Target {
        registration: NamespacedName {
            namespace: group_ref.namespace.clone(),
            name: naming::war_name(&group_ref.name, o.identity, o.jwt_short_name),
        },
        decision,
    })
}

/// The agent's current session token, when it sent one that verifies.
#[derive(Debug, Clone, Copy)]
pub struct Bearer<'a> {
    /// The registration the token belongs to (`None`: the token names none).
    pub registration: Option<&'a NamespacedName>,
    pub jti: &'a str,
}

/// What the endpoint knows about the target registration and the credential.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub bearer: Option<Bearer<'a>>,
    /// The WAR under the target's name, as the store has it now.
    pub existing: Option<&'a WorkloadAutoRegistration>,
    /// EC2: the identity document's pendingTime (unix seconds).
    pub ec2_pending_time: Option<i64>,
    /// EC2: `maxAgeSincePending`, when configured.
    pub ec2_max_age: Option<Duration>,
    /// GCP: (iat, exp) of the identity token.
    pub gcp_token: Option<(i64, i64)>,
    /// The cloud host the identity belongs to (`None` for JWT identities).
    pub host_key: Option<&'a str>,
    /// `authentication.oneSessionPerHost`.
    pub one_session_per_host: bool,
    pub now: SystemTime,
}

/// Accept a GCP token once per host (the endpoint's replay state remembers it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpSingleUse {
    pub host: String,
    pub iat: i64,
    pub exp: i64,
    /// A renewal of the host's own session may present the same token again (the metadata
    /// server hands out the same token within its hour).
    pub renewal: bool,
}

/// Begin the host's one live session, handing it over from the session being renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSession {
    pub host: String,
    pub previous: Option<String>,
}

/// What the endpoint does, in this order: apply `gcp_single_use`, issue a session token for
/// `registration` carrying `registration_uid`, then begin `host_session` with that token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub registration: NamespacedName,
    /// The jti of the session this call renews: the agent sent its current token, and it
    /// names the same registration.
    pub renewing: Option<String>,
    /// The uid of the existing WAR: the session continues it, and ends if it is deleted or
    /// replaced (`session::check`). `None` for a registration still to be made.
    pub registration_uid: Option<String>,
    pub gcp_single_use: Option<GcpSingleUse>,
    pub host_session: Option<HostSession>,
}

/// Step 2: the plan for an identity `target` let in, given the `facts`.
pub fn admit(target: &Target, facts: Facts<'_>) -> Result<Plan, Refusal> {
    let renewing = facts
        .bearer
        .filter(|b| b.registration == Some(&target.registration))
        .map(|b| b.jti.to_string());
    // The age limit is for a host joining for the first time (a replayed document of a
    // long-running instance). A host that already has its registration, or renews its own
    // session, is past that point.
    if let (Some(pending), Some(max)) = (facts.ec2_pending_time, facts.ec2_max_age)
        && renewing.is_none()
        && facts.existing.is_none()
    {
        replay::check_max_age(pending, facts.now, Some(max)).map_err(Refusal::TooOld)?;
    }
    let gcp_single_use = match (facts.gcp_token, facts.host_key) {
        (Some((iat, exp)), Some(host)) => Some(GcpSingleUse {
            host: host.to_string(),
            iat,
            exp,
            renewal: renewing.is_some(),
        }),
        _ => None,
    };
    let host_session = match facts.host_key {
        Some(host) if facts.one_session_per_host => Some(HostSession {
            host: host.to_string(),
            previous: renewing.clone(),
        }),
        _ => None,
    };
    Ok(Plan {
        registration: target.registration.clone(),
        renewing,
        registration_uid: facts.existing.and_then(|w| w.metadata.uid.clone()),
        gcp_single_use,
        host_session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::{GceIdentity, GcpIdentity, JwtIdentity};
    use std::path::Path;

    const ISSUER: &str = "https://idp";
    const NOW: u64 = 1_800_000_000;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn group() -> WorkloadGroup {
        crate::yaml::from_str(
            Path::new("wg.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: ratings, namespace: bookinfo, labels: {app: ratings}}\nspec: {template: {}}\n",
        )
        .unwrap()
    }

    fn policy() -> OnboardingPolicy {
        crate::yaml::from_str(
            Path::new("p.yaml"),
            &format!(
                "apiVersion: authorization.onboarding.tetrate.io/v1alpha1\nkind: OnboardingPolicy\nmetadata: {{name: p, namespace: bookinfo}}\nspec:\n  allow:\n  - workloads: [{{jwt: {{issuer: \"{ISSUER}\", subjects: [vm-1]}}}}]\n    onboardTo: [{{workloadGroupSelector: {{matchLabels: {{app: ratings}}}}}}]\n"
            ),
        )
        .unwrap()
    }

    fn jwt(sub: &str) -> WorkloadIdentity {
        WorkloadIdentity::Jwt(JwtIdentity {
            issuer: ISSUER.into(),
            subject: sub.into(),
            attributes: Default::default(),
        })
    }

    fn gcp() -> WorkloadIdentity {
        WorkloadIdentity::Gcp(GcpIdentity {
            project_number: "1234".into(),
            project_id: "p".into(),
            gce: Some(GceIdentity {
                instance_id: "99".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn group_ref() -> NamespacedName {
        NamespacedName {
            namespace: "bookinfo".into(),
            name: "ratings".into(),
        }
    }

    fn target_for(id: &WorkloadIdentity) -> Target {
        if !matches!(id, WorkloadIdentity::Jwt(_)) {
            // The replay rules do not depend on how the policy let the identity in.
            return Target {
                registration: NamespacedName {
                    namespace: "bookinfo".into(),
                    name: naming::war_name("ratings", id, None),
                },
                decision: Decision::Allow {
                    policy: "bookinfo/p".into(),
                    rule: 0,
                },
            };
        }
        let (g, p, r) = (group(), [policy()], group_ref());
        target(Onboarding {
            workload_group: &r,
            identity: id,
            jwt_short_name: Some("corp"),
            group: Some(&g),
            policies: &p,
        })
        .unwrap()
    }

    fn facts<'a>() -> Facts<'a> {
        Facts {
            bearer: None,
            existing: None,
            ec2_pending_time: None,
            ec2_max_age: None,
            gcp_token: None,
            host_key: None,
            one_session_per_host: true,
            now: at(NOW),
        }
    }

    #[test]
    fn an_allowed_identity_gets_its_registration_name() {
        let t = target_for(&jwt("vm-1"));
        assert_eq!(t.registration.namespace, "bookinfo");
        assert_eq!(
            t.registration.name,
            naming::war_name("ratings", &jwt("vm-1"), Some("corp"))
        );
        assert!(matches!(t.decision, Decision::Allow { .. }));
    }

    #[test]
    fn no_matching_policy_is_denied_with_the_groups_namespace_for_the_metric() {
        let (g, p, r) = (group(), [policy()], group_ref());
        let id = jwt("vm-2");
        let Err(Refusal::PolicyDenied {
            message,
            reason,
            namespace,
        }) = target(Onboarding {
            workload_group: &r,
            identity: &id,
            jwt_short_name: None,
            group: Some(&g),
            policies: &p,
        })
        else {
            panic!("expected a denial");
        };
        assert!(message.contains("not authorized to join WorkloadGroup bookinfo/ratings"));
        assert!(message.contains("allows this jwt identity"), "{message}");
        assert!(!reason.is_empty());
        assert_eq!(namespace.as_deref(), Some("bookinfo"));
    }

    #[test]
    fn a_missing_group_is_denied_without_a_namespace_label() {
        let (p, r) = ([policy()], group_ref());
        let id = jwt("vm-1");
        let Err(Refusal::PolicyDenied {
            reason, namespace, ..
        }) = target(Onboarding {
            workload_group: &r,
            identity: &id,
            jwt_short_name: None,
            group: None,
            policies: &p,
        })
        else {
            panic!("expected a denial");
        };
        assert!(reason.contains("does not exist"), "{reason}");
        assert_eq!(namespace, None);
    }

    #[test]
    fn renewal_needs_a_bearer_for_the_same_registration() {
        let t = target_for(&jwt("vm-1"));
        let other = NamespacedName {
            namespace: "bookinfo".into(),
            name: "someone-else".into(),
        };
        let renewing = |registration| {
            admit(
                &t,
                Facts {
                    bearer: Some(Bearer {
                        registration,
                        jti: "j1",
                    }),
                    ..facts()
                },
            )
            .unwrap()
            .renewing
        };
        assert_eq!(renewing(Some(&t.registration)).as_deref(), Some("j1"));
        assert_eq!(renewing(Some(&other)), None);
        assert_eq!(renewing(None), None);
        assert_eq!(admit(&t, facts()).unwrap().renewing, None);
    }

    #[test]
    fn the_session_continues_the_existing_wars_uid() {
        let id = jwt("vm-1");
        let t = target_for(&id);
        let mut war = crate::registration::new_war(
            &t.registration.name,
            &group(),
            id,
            Default::default(),
            "uid-1",
            "2026-01-01T00:00:00Z",
        );
        let plan = admit(
            &t,
            Facts {
                existing: Some(&war),
                ..facts()
            },
        )
        .unwrap();
        assert_eq!(plan.registration_uid.as_deref(), Some("uid-1"));
        assert_eq!(plan.registration, t.registration);
        // No registration yet, or one without a uid (hand-made): nothing to continue.
        assert_eq!(admit(&t, facts()).unwrap().registration_uid, None);
        war.metadata.uid = None;
        let plan = admit(
            &t,
            Facts {
                existing: Some(&war),
                ..facts()
            },
        )
        .unwrap();
        assert_eq!(plan.registration_uid, None);
    }

    #[test]
    fn the_ec2_age_limit_applies_to_first_onboarding_only() {
        let id = jwt("vm-1");
        let t = target_for(&id);
        let old = Facts {
            ec2_pending_time: Some(NOW as i64 - 3600),
            ec2_max_age: Some(Duration::from_secs(600)),
            ..facts()
        };
        // First onboarding: too old.
        assert!(matches!(
            admit(&t, old),
            Err(Refusal::TooOld(ReplayError::TooOld {
                age_secs: 3600,
                max_secs: 600
            }))
        ));
        // Within the limit.
        let fresh = Facts {
            ec2_pending_time: Some(NOW as i64 - 60),
            ..old
        };
        assert!(admit(&t, fresh).is_ok());
        // No limit configured.
        assert!(
            admit(
                &t,
                Facts {
                    ec2_max_age: None,
                    ..old
                }
            )
            .is_ok()
        );
        // The registration exists already.
        let war = crate::registration::new_war(
            &t.registration.name,
            &group(),
            id,
            Default::default(),
            "uid-1",
            "2026-01-01T00:00:00Z",
        );
        assert!(
            admit(
                &t,
                Facts {
                    existing: Some(&war),
                    ..old
                }
            )
            .is_ok()
        );
        // The host renews its own session.
        assert!(
            admit(
                &t,
                Facts {
                    bearer: Some(Bearer {
                        registration: Some(&t.registration),
                        jti: "j1",
                    }),
                    ..old
                }
            )
            .is_ok()
        );
        // A document from the future is refused on first onboarding.
        let future = Facts {
            ec2_pending_time: Some(NOW as i64 + 3600),
            ..old
        };
        assert!(matches!(
            admit(&t, future),
            Err(Refusal::TooOld(ReplayError::FromTheFuture(3600)))
        ));
    }

    #[test]
    fn gcp_tokens_are_single_use_per_host_and_a_renewal_may_reuse_one() {
        let t = target_for(&gcp());
        let first = Facts {
            gcp_token: Some((NOW as i64 - 10, NOW as i64 + 3590)),
            host_key: Some("gcp/1234/99"),
            ..facts()
        };
        assert_eq!(
            admit(&t, first).unwrap().gcp_single_use,
            Some(GcpSingleUse {
                host: "gcp/1234/99".into(),
                iat: NOW as i64 - 10,
                exp: NOW as i64 + 3590,
                renewal: false,
            })
        );
        let renewal = Facts {
            bearer: Some(Bearer {
                registration: Some(&t.registration),
                jti: "j1",
            }),
            ..first
        };
        assert!(admit(&t, renewal).unwrap().gcp_single_use.unwrap().renewal);
        // Without a host key there is nothing to remember the token by.
        let no_host = Facts {
            host_key: None,
            ..first
        };
        assert_eq!(admit(&t, no_host).unwrap().gcp_single_use, None);
    }

    #[test]
    fn one_session_per_host_hands_over_from_the_renewed_session() {
        let t = target_for(&gcp());
        let f = Facts {
            host_key: Some("gcp/1234/99"),
            ..facts()
        };
        assert_eq!(
            admit(&t, f).unwrap().host_session,
            Some(HostSession {
                host: "gcp/1234/99".into(),
                previous: None,
            })
        );
        let renewal = Facts {
            bearer: Some(Bearer {
                registration: Some(&t.registration),
                jti: "j1",
            }),
            ..f
        };
        assert_eq!(
            admit(&t, renewal).unwrap().host_session.unwrap().previous,
            Some("j1".into())
        );
        // Switched off, or a JWT identity (no host): no session registry.
        let off = Facts {
            one_session_per_host: false,
            ..f
        };
        assert_eq!(admit(&t, off).unwrap().host_session, None);
        assert_eq!(admit(&t, facts()).unwrap().host_session, None);
    }
}
