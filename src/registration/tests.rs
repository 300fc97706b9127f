use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::connection::*;
use super::*;
use crate::api::identity::JwtIdentity;
use crate::api::registration::*;

fn group() -> WorkloadGroup {
    crate::yaml::from_str(
        Path::new("wg.yaml"),
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: ratings
  namespace: bookinfo
  uid: 0b4a1f2e-0000-4000-8000-000000000001
  labels: {app: ratings}
spec:
  metadata:
    labels: {team: data}
    annotations: {note: hello}
  template:
    labels: {app: ratings, class: vm}
    serviceAccount: ratings-vm
    network: vm-net
    ports: {http: 8080}
  probe:
    httpGet: {port: 8080, path: /ready}
"#,
    )
    .unwrap()
}

fn registration() -> Registration {
    Registration {
        agent: AgentInfo {
            version: "0.1.0".into(),
        },
        sidecar: SidecarInfo {
            istio: IstioSidecarInfo {
                version: "1.24.0".into(),
                revision: None,
            },
        },
        host: HostInfo {
            addresses: vec![
                Address {
                    ip: "203.0.113.7".into(),
                    kind: AddressType::Internet,
                },
                Address {
                    ip: "10.0.0.7".into(),
                    kind: AddressType::Vpc,
                },
            ],
        },
        workload: Some(WorkloadInfo {
            labels: [("version", "v5"), ("app", "hijack")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
        settings: None,
    }
}

fn identity() -> WorkloadIdentity {
    WorkloadIdentity::Jwt(JwtIdentity {
        issuer: "https://idp.example".into(),
        subject: "vm-1".into(),
        attributes: Default::default(),
    })
}

fn war() -> WorkloadAutoRegistration {
    new_war(
        "ratings-jwt-corp-vm-1",
        &group(),
        identity(),
        registration(),
        "war-uid-1",
        "2026-11-21T10:00:00Z",
    )
}

#[test]
fn war_keeps_a_snapshot_and_an_owner_reference() {
    let w = war();
    assert_eq!(w.metadata.namespace, "bookinfo");
    assert_eq!(w.spec.workload_group.spec, group().spec);
    assert_eq!(w.spec.workload_group.labels, group().metadata.labels);
    let owner = &w.metadata.owner_references[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("WorkloadGroup", "ratings")
    );
    assert_eq!(owner.controller, Some(true));
}

#[test]
fn workload_entry_derives_from_snapshot_not_live_group() {
    let w = war();
    let we = workload_entry(&w).unwrap();
    assert_eq!(
        we.spec.address.as_deref(),
        Some("10.0.0.7"),
        "VPC by default"
    );
    assert_eq!(we.spec.service_account.as_deref(), Some("ratings-vm"));
    assert_eq!(we.spec.network.as_deref(), Some("vm-net"));
    assert_eq!(
        we.spec.labels.get("app").map(String::as_str),
        Some("ratings")
    );
    assert_eq!(
        we.spec.labels.get("version").map(String::as_str),
        Some("v5")
    );
    assert_eq!(we.metadata.owner_references[0].kind, KIND);
    assert_eq!(we.metadata.owner_references[0].uid, "war-uid-1");
    assert_eq!(
        we.metadata
            .annotations
            .get("proxy.istio.io/health-checks-enabled")
            .map(String::as_str),
        Some("true")
    );
}

#[test]
fn connected_over_internet_picks_the_public_address() {
    let mut w = war();
    w.spec.registration.settings = Some(Settings {
        connected_over: Some(AddressType::Internet),
    });
    assert_eq!(
        workload_entry(&w).unwrap().spec.address.as_deref(),
        Some("203.0.113.7")
    );
    w.spec.registration.host.addresses.remove(0);
    assert!(matches!(
        workload_entry(&w),
        Err(RegistrationError::NoAddress(AddressType::Internet, _))
    ));
}

#[test]
fn service_account_defaults_like_istioctl() {
    let mut g = group();
    g.spec.template.service_account = None;
    let s = snapshot(&g, "t");
    assert_eq!(s.spec.template.service_account.as_deref(), Some("default"));
}

#[test]
fn registration_validation() {
    assert!(validate_registration(&registration(), RegistrationRules::default()).is_ok());
    let mut r = registration();
    r.host.addresses.clear();
    assert!(validate_registration(&r, RegistrationRules::default()).is_err());
    let mut r = registration();
    r.host.addresses[0].ip = "not-an-ip".into();
    assert!(validate_registration(&r, RegistrationRules::default()).is_err());
    let mut r = registration();
    r.sidecar.istio.revision = Some("Canary".into());
    assert!(validate_registration(&r, RegistrationRules::default()).is_err());
}

fn with_address(ip: &str) -> Registration {
    let mut r = registration();
    r.host.addresses = vec![Address {
        ip: ip.into(),
        kind: AddressType::Vpc,
    }];
    r
}

#[test]
fn unusable_addresses_are_refused_loopback_only_when_allowed() {
    let strict = RegistrationRules::default();
    let trial = RegistrationRules {
        allow_loopback_addresses: true,
    };
    for ip in [
        "10.0.0.7",
        "203.0.113.7",
        "fd00::7",
        "2001:db8::7",
        "100.64.0.1",
    ] {
        assert_eq!(
            validate_registration(&with_address(ip), strict),
            Ok(()),
            "{ip}"
        );
    }
    // Never usable, whatever the setting.
    for (ip, why) in [
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("::ffff:224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
    ] {
        for rules in [strict, trial] {
            match validate_registration(&with_address(ip), rules) {
                Err(RegistrationError::UnusableAddress { ip: got, why: w }) => {
                    assert_eq!(got, ip);
                    assert!(w.contains(why), "{ip}: {w}");
                }
                other => panic!("{ip} with {rules:?}: {other:?}"),
            }
        }
    }
    // Loopback: refused by default, with the setting named; accepted when allowed.
    for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
        let e = validate_registration(&with_address(ip), strict).unwrap_err();
        assert!(
            e.to_string()
                .contains("registration.allowLoopbackAddresses"),
            "{ip}: {e}"
        );
        assert_eq!(
            validate_registration(&with_address(ip), trial),
            Ok(()),
            "{ip}"
        );
    }
    // Any listed address counts, not only the one the WorkloadEntry would get.
    let mut r = registration();
    r.host.addresses.push(Address {
        ip: "0.0.0.0".into(),
        kind: AddressType::Internet,
    });
    assert!(validate_registration(&r, trial).is_err());
}

#[test]
fn agent_labels_are_checked_as_kubernetes_does() {
    let rules = RegistrationRules::default();
    for (k, v) in [
        ("version", "v5"),
        ("app.kubernetes.io/version", "1.2_3-rc.1"),
        ("empty-value", ""),
    ] {
        let mut r = registration();
        r.workload = Some(WorkloadInfo {
            labels: [(k.to_string(), v.to_string())].into(),
        });
        assert_eq!(validate_registration(&r, rules), Ok(()), "{k}={v}");
    }
    for (k, v) in [
        ("my label", "x"),
        ("-lead", "x"),
        ("trail-", "x"),
        ("new\nline", "x"),
        ("$(touch /tmp/p)", "x"),
        ("version", "$(reboot)"),
        ("version", "has space"),
        ("version", "-v5"),
        ("version", "line\nbreak"),
        ("Bad_Prefix.io/x", "y"),
    ] {
        let mut r = registration();
        r.workload = Some(WorkloadInfo {
            labels: [(k.to_string(), v.to_string())].into(),
        });
        match validate_registration(&r, rules) {
            Err(RegistrationError::InvalidLabel(e)) => {
                assert_eq!(e.key, k);
                let msg = RegistrationError::InvalidLabel(e).to_string();
                assert!(
                    msg.starts_with("invalid registration: workload.labels: label "),
                    "{msg}"
                );
                assert!(!msg.contains('\n'), "{msg}");
            }
            other => panic!("{k:?}={v:?}: {other:?}"),
        }
    }
}

#[test]
fn refresh_keeps_snapshot() {
    let mut w = war();
    let snap = w.spec.workload_group.clone();
    assert!(!refresh_registration(&mut w, registration()));
    let mut r = registration();
    r.agent.version = "0.2.0".into();
    assert!(refresh_registration(&mut w, r));
    assert_eq!(w.spec.workload_group, snap);
    assert_eq!(w.metadata.generation, Some(2));
}

#[test]
fn connection_transitions_and_grace() {
    let mut w = war();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let grace = Duration::from_secs(300);
    // Never connected: counts from creation (long ago here).
    assert!(is_expired(&w, t0, grace));
    assert!(mark_connected(
        &mut w,
        "ep-1",
        &crate::timestamp::format(t0)
    ));
    assert!(!mark_connected(
        &mut w,
        "ep-1",
        &crate::timestamp::format(t0)
    ));
    assert_eq!(w.agent_connected(), ConditionStatus::True);
    assert!(!is_expired(&w, t0 + Duration::from_secs(10_000), grace));
    assert!(mark_connected(
        &mut w,
        "ep-2",
        &crate::timestamp::format(t0)
    ));
    let t1 = t0 + Duration::from_secs(60);
    assert!(mark_disconnected(
        &mut w,
        REASON_KEEPALIVE_TIMEOUT,
        "no keep-alive",
        &crate::timestamp::format(t1)
    ));
    assert!(w.status.active_agent_connection.is_none());
    assert!(!is_expired(&w, t1 + Duration::from_secs(299), grace));
    assert!(is_expired(&w, t1 + Duration::from_secs(300), grace));
    assert_eq!(w.status.conditions.len(), 1);
}

#[test]
fn sweep_decisions() {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let grace = Duration::from_secs(300);
    let mut w = war();
    mark_connected(&mut w, "ep-1", &crate::timestamp::format(t0));
    let view = SweepView {
        instance: "ep-1",
        has_live_session: false,
        session_timed_out: false,
        restart_settled: false,
        now: t0 + Duration::from_secs(10),
        grace,
        live_instances: None,
    };
    // Just restarted, agent not back yet: wait.
    assert_eq!(sweep_action(&w, view), SweepAction::Keep);
    let live = SweepView {
        has_live_session: true,
        restart_settled: true,
        ..view
    };
    assert_eq!(sweep_action(&w, live), SweepAction::Keep);
    let timed_out = SweepView {
        session_timed_out: true,
        ..view
    };
    assert_eq!(sweep_action(&w, timed_out), SweepAction::MarkDisconnected);
    let settled = SweepView {
        restart_settled: true,
        ..view
    };
    assert_eq!(sweep_action(&w, settled), SweepAction::MarkDisconnected);
    // Another instance's agent is not ours to judge.
    let other = SweepView {
        instance: "ep-2",
        restart_settled: true,
        ..view
    };
    assert_eq!(sweep_action(&w, other), SweepAction::Keep);
    // ...while it lives; once its Lease is gone, any replica marks the agent disconnected
    // (a replica that died with its agents leaves no one else to do it).
    let alive: std::collections::HashSet<String> = ["ep-1".into(), "ep-2".into()].into();
    let only_me: std::collections::HashSet<String> = ["ep-2".into()].into();
    assert_eq!(
        sweep_action(
            &w,
            SweepView {
                live_instances: Some(&alive),
                ..other
            }
        ),
        SweepAction::Keep
    );
    assert_eq!(
        sweep_action(
            &w,
            SweepView {
                live_instances: Some(&only_me),
                ..other
            }
        ),
        SweepAction::MarkDisconnected
    );
    // Not before this replica has itself run a keep-alive timeout (just started, its view
    // of the others' Leases is as fresh as theirs).
    assert_eq!(
        sweep_action(
            &w,
            SweepView {
                live_instances: Some(&only_me),
                restart_settled: false,
                ..other
            }
        ),
        SweepAction::Keep
    );
    // Disconnected: deleted only once the grace period is over.
    let t1 = t0 + Duration::from_secs(60);
    mark_disconnected(
        &mut w,
        REASON_KEEPALIVE_TIMEOUT,
        "",
        &crate::timestamp::format(t1),
    );
    let early = SweepView {
        now: t1 + Duration::from_secs(299),
        ..settled
    };
    assert_eq!(sweep_action(&w, early), SweepAction::Keep);
    let late = SweepView {
        now: t1 + grace,
        ..settled
    };
    assert_eq!(sweep_action(&w, late), SweepAction::Delete);
    // A live session (the agent came back) saves it.
    assert_eq!(
        sweep_action(
            &w,
            SweepView {
                has_live_session: true,
                ..late
            }
        ),
        SweepAction::Keep
    );
}

#[test]
fn sweep_interval_follows_the_shorter_deadline_within_bounds() {
    let s = Duration::from_secs;
    // The defaults: keep-alive timeout 45 s, grace 5 min: the 10 s ceiling.
    assert_eq!(sweep_interval(s(45), s(300)), s(10));
    // A third of the keep-alive timeout when that is the shorter.
    assert_eq!(sweep_interval(s(15), s(300)), s(5));
    // A quarter of the grace period when that is the shorter.
    assert_eq!(sweep_interval(s(90), s(8)), s(2));
    // Never busier than every 200 ms, whatever the settings.
    assert_eq!(
        sweep_interval(Duration::from_millis(300), s(0)),
        Duration::from_millis(200)
    );
    assert_eq!(sweep_interval(s(0), s(0)), SWEEP_INTERVAL_MIN);
    // Very long settings still sweep every 10 s.
    assert_eq!(sweep_interval(s(3600), s(86_400)), SWEEP_INTERVAL_MAX);
}

#[test]
fn lease_liveness() {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let d = Some(Duration::from_secs(10));
    assert!(lease_alive(Some(t0), d, t0 + Duration::from_secs(19)));
    assert!(!lease_alive(Some(t0), d, t0 + Duration::from_secs(20)));
    // A renewal "in the future" (the holder's clock ahead of ours) is alive.
    assert!(lease_alive(Some(t0 + Duration::from_secs(5)), d, t0));
    assert!(!lease_alive(None, d, t0));
    assert!(!lease_alive(Some(t0), None, t0));
}
