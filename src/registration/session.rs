//! May a session go on? Every call that creates or extends something (register, keep-alive,
//! a bootstrap with a fresh istio-token) asks here first, against the *current* inputs: a
//! session token proves who the agent was when it authorized, not that it is still allowed.
//!
//! - The OnboardingPolicies of the group's namespace must still allow the identity into the
//!   (still existing) WorkloadGroup; otherwise the session is revoked, whatever else holds.
//! - The WAR must still be the one the session belongs to. A token issued while the WAR
//!   existed carries its uid: if that WAR is gone or was replaced, the session ended with it
//!   (deleting a WAR makes its agent onboard again, with a fresh credential).
//! - Only `register` creates a WAR, and only with a token issued for a registration that did
//!   not exist yet, right after `/v1/authorize` (within [`CREATE_WINDOW`]), and once per
//!   token on this instance: an old token cannot bring a deleted registration back.

use std::time::{Duration, SystemTime};

use crate::api::identity::WorkloadIdentity;
use crate::api::istio::WorkloadGroup;
use crate::api::meta::NamespacedName;
use crate::api::policy::OnboardingPolicy;
use crate::api::registration::WorkloadAutoRegistration;
use crate::policy::{self, Decision, GroupRef};

/// How long after `/v1/authorize` a token for a new registration may create it. The agent
/// registers at once after authorizing (and authorizes again when registering fails), so
/// this only has to cover one round trip and a slow store.
pub const CREATE_WINDOW: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Register,
    KeepAlive,
    Bootstrap,
}

/// What a verified session token says, as far as this decision needs it.
#[derive(Debug, Clone, Copy)]
pub struct Session<'a> {
    pub identity: &'a WorkloadIdentity,
    pub workload_group: &'a NamespacedName,
    pub registration: &'a NamespacedName,
    /// The uid of the WAR when the token was issued; `None` when it did not exist yet.
    pub registration_uid: Option<&'a str>,
    pub issued_at: SystemTime,
    /// This token already created its WAR once (on this instance).
    pub created_before: bool,
}

/// The current state of the inputs.
#[derive(Debug, Clone, Copy)]
pub struct Current<'a> {
    pub group: Option<&'a WorkloadGroup>,
    pub policies: &'a [OnboardingPolicy],
    pub war: Option<&'a WorkloadAutoRegistration>,
    pub now: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the existing WAR.
    Existing,
    /// `register` creates the WAR.
    Create,
    /// The policy no longer allows this identity in this group, or the group is gone
    /// (`session_revoked`). `reason` is for the endpoint's log (rules considered).
    Revoked { message: String, reason: String },
    /// The WAR the session belongs to is gone or was replaced (`registration_gone`).
    Gone(String),
    /// The WAR under this name belongs to another identity (`session_conflict`).
    Conflict(String),
}

/// Decides whether `call` may proceed for `session` given the `current` state.
pub fn check(call: Call, session: Session<'_>, current: Current<'_>) -> Verdict {
    let group_ref = session.workload_group;
    let decision = match current.group {
        Some(g)
            if g.metadata.namespace == group_ref.namespace && g.metadata.name == group_ref.name =>
        {
            policy::evaluate(
                current.policies,
                GroupRef {
                    namespace: &g.metadata.namespace,
                    name: &g.metadata.name,
                    labels: &g.metadata.labels,
                },
                session.identity,
            )
        }
        _ => {
            return Verdict::Revoked {
                message: format!(
                    "WorkloadGroup {group_ref} no longer exists; this session is over"
                ),
                reason: format!("WorkloadGroup {group_ref} does not exist"),
            };
        }
    };
    if let Decision::Deny { .. } = &decision {
        return Verdict::Revoked {
            message: format!(
                "no OnboardingPolicy in namespace {} allows this identity into WorkloadGroup \
                 {group_ref} any more; this session is over (the endpoint's log lists the \
                 rules it considered)",
                group_ref.namespace
            ),
            reason: decision.to_string(),
        };
    }
    let reg = session.registration;
    match current.war {
        Some(war) if &war.spec.identity != session.identity => {
            if call == Call::Register {
                // Names derive from identities, so this means a hand-made or corrupted WAR.
                Verdict::Conflict(format!("registration {reg} belongs to another identity"))
            } else {
                Verdict::Gone(format!("registration {reg} was replaced; onboard again"))
            }
        }
        Some(war) => match session.registration_uid {
            Some(uid) if war.metadata.uid.as_deref() != Some(uid) => Verdict::Gone(format!(
                "registration {reg} was deleted and made again since this session began; \
                 onboard again"
            )),
            _ => Verdict::Existing,
        },
        None if call != Call::Register => Verdict::Gone(format!(
            "registration {reg} no longer exists; onboard again"
        )),
        None if session.registration_uid.is_some() || session.created_before => {
            Verdict::Gone(format!(
                "registration {reg} was deleted since this session began; onboard again \
                 (authorize with a fresh credential, then register)"
            ))
        }
        None if current
            .now
            .duration_since(session.issued_at)
            .is_ok_and(|age| age > CREATE_WINDOW) =>
        {
            Verdict::Gone(format!(
                "registration {reg} does not exist and this session token was issued more than \
                 {}s ago; a new registration is made only right after /v1/authorize: authorize \
                 again",
                CREATE_WINDOW.as_secs()
            ))
        }
        None => Verdict::Create,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::JwtIdentity;
    use std::path::Path;

    const ISSUER: &str = "https://idp";

    fn group(labels: &str) -> WorkloadGroup {
        crate::yaml::from_str(
            Path::new("wg.yaml"),
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {{name: ratings, namespace: bookinfo, labels: {labels}}}\nspec: {{template: {{}}}}\n"
            ),
        )
        .unwrap()
    }

    fn policy(subjects: &str) -> OnboardingPolicy {
        crate::yaml::from_str(
            Path::new("p.yaml"),
            &format!(
                "apiVersion: authorization.onboarding.tetrate.io/v1alpha1\nkind: OnboardingPolicy\nmetadata: {{name: p, namespace: bookinfo}}\nspec:\n  allow:\n  - workloads: [{{jwt: {{issuer: \"{ISSUER}\", subjects: {subjects}}}}}]\n    onboardTo: [{{workloadGroupSelector: {{matchLabels: {{app: ratings}}}}}}]\n"
            ),
        )
        .unwrap()
    }

    fn id(sub: &str) -> WorkloadIdentity {
        WorkloadIdentity::Jwt(JwtIdentity {
            issuer: ISSUER.into(),
            subject: sub.into(),
            attributes: Default::default(),
        })
    }

    fn war(identity: WorkloadIdentity, uid: &str) -> WorkloadAutoRegistration {
        let reg = crate::api::registration::Registration::default();
        let mut w = crate::registration::new_war(
            "ratings-jwt-corp-vm-1",
            &group("{app: ratings}"),
            identity,
            reg,
            uid,
            "2026-01-01T00:00:00Z",
        );
        w.metadata.uid = Some(uid.into());
        w
    }

    struct Case {
        group: Option<WorkloadGroup>,
        policies: Vec<OnboardingPolicy>,
        war: Option<WorkloadAutoRegistration>,
        token_uid: Option<&'static str>,
        age: Duration,
        created_before: bool,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                group: Some(group("{app: ratings}")),
                policies: vec![policy("[vm-1]")],
                war: None,
                token_uid: None,
                age: Duration::from_secs(1),
                created_before: false,
            }
        }
    }

    fn run(call: Call, c: &Case) -> Verdict {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let identity = id("vm-1");
        let wg = NamespacedName {
            namespace: "bookinfo".into(),
            name: "ratings".into(),
        };
        let reg = NamespacedName {
            namespace: "bookinfo".into(),
            name: "ratings-jwt-corp-vm-1".into(),
        };
        check(
            call,
            Session {
                identity: &identity,
                workload_group: &wg,
                registration: &reg,
                registration_uid: c.token_uid,
                issued_at: t0,
                created_before: c.created_before,
            },
            Current {
                group: c.group.as_ref(),
                policies: &c.policies,
                war: c.war.as_ref(),
                now: t0 + c.age,
            },
        )
    }

    const ALL: [Call; 3] = [Call::Register, Call::KeepAlive, Call::Bootstrap];

    #[test]
    fn allowed_session_with_its_war_goes_on() {
        for token_uid in [None, Some("u1")] {
            let c = Case {
                war: Some(war(id("vm-1"), "u1")),
                token_uid,
                ..Case::default()
            };
            for call in ALL {
                assert_eq!(run(call, &c), Verdict::Existing, "{call:?} {token_uid:?}");
            }
        }
    }

    #[test]
    fn policy_change_or_missing_group_revokes_every_call() {
        let cases = [
            Case {
                policies: vec![policy("[vm-2]")],
                ..Case::default()
            },
            Case {
                policies: vec![],
                ..Case::default()
            },
            Case {
                group: Some(group("{app: other}")),
                ..Case::default()
            },
            Case {
                group: None,
                ..Case::default()
            },
        ];
        for c in cases {
            for with_war in [false, true] {
                let c = Case {
                    war: with_war.then(|| war(id("vm-1"), "u1")),
                    group: c.group.clone(),
                    policies: c.policies.clone(),
                    ..Case::default()
                };
                for call in ALL {
                    assert!(
                        matches!(run(call, &c), Verdict::Revoked { .. }),
                        "{call:?}: {:?}",
                        run(call, &c)
                    );
                }
            }
        }
        let c = Case {
            policies: vec![policy("[vm-2]")],
            ..Case::default()
        };
        let Verdict::Revoked { message, reason } = run(Call::Register, &c) else {
            panic!()
        };
        assert!(message.contains("any more"), "{message}");
        assert!(
            !message.contains("vm-2"),
            "no policy details to the agent: {message}"
        );
        assert!(reason.contains("vm-1"), "the log gets the rules: {reason}");
    }

    #[test]
    fn register_creates_only_right_after_authorize_and_once() {
        assert_eq!(run(Call::Register, &Case::default()), Verdict::Create);
        let just_inside = Case {
            age: CREATE_WINDOW,
            ..Case::default()
        };
        assert_eq!(run(Call::Register, &just_inside), Verdict::Create);
        for c in [
            // Issued while the WAR existed: it was deleted since.
            Case {
                token_uid: Some("u1"),
                ..Case::default()
            },
            // This token made the WAR once already.
            Case {
                created_before: true,
                ..Case::default()
            },
            // An old token.
            Case {
                age: CREATE_WINDOW + Duration::from_secs(1),
                ..Case::default()
            },
        ] {
            assert!(
                matches!(run(Call::Register, &c), Verdict::Gone(_)),
                "{:?}",
                run(Call::Register, &c)
            );
        }
    }

    #[test]
    fn missing_or_replaced_war_ends_the_session() {
        for call in [Call::KeepAlive, Call::Bootstrap] {
            assert!(matches!(run(call, &Case::default()), Verdict::Gone(_)));
        }
        let replaced = Case {
            war: Some(war(id("vm-1"), "u2")),
            token_uid: Some("u1"),
            ..Case::default()
        };
        for call in ALL {
            assert!(matches!(run(call, &replaced), Verdict::Gone(_)), "{call:?}");
        }
        let other = Case {
            war: Some(war(id("vm-9"), "u1")),
            ..Case::default()
        };
        assert!(matches!(run(Call::Register, &other), Verdict::Conflict(_)));
        assert!(matches!(run(Call::KeepAlive, &other), Verdict::Gone(_)));
    }
}
