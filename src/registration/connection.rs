//! The `AgentConnected` condition of a WAR: connected, disconnected, and when a
//! disconnected registration has outlived its grace period.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use crate::api::registration::{
    ActiveAgentConnection, CONDITION_AGENT_CONNECTED, Condition, ConditionStatus,
    WorkloadAutoRegistration,
};

pub const REASON_CONNECTED: &str = "AgentEstablishedConnection";
pub const REASON_DISCONNECTED: &str = "AgentDisconnected";
pub const REASON_KEEPALIVE_TIMEOUT: &str = "AgentKeepAliveTimeout";

/// Sets `AgentConnected=True` via `instance`. Returns whether the WAR changed (and so needs
/// writing): a keep-alive from an agent already shown connected costs no write.
pub fn mark_connected(war: &mut WorkloadAutoRegistration, instance: &str, now: &str) -> bool {
    let already = war.agent_connected() == ConditionStatus::True
        && war
            .status
            .active_agent_connection
            .as_ref()
            .is_some_and(|c| c.connected_to == instance);
    if already {
        return false;
    }
    set_condition(
        war,
        ConditionStatus::True,
        REASON_CONNECTED,
        &format!("agent connected to {instance}"),
        now,
    );
    war.status.active_agent_connection = Some(ActiveAgentConnection {
        connected_to: instance.to_string(),
    });
    true
}

/// Sets `AgentConnected=False`. Returns whether the WAR changed.
pub fn mark_disconnected(
    war: &mut WorkloadAutoRegistration,
    reason: &str,
    message: &str,
    now: &str,
) -> bool {
    if war.agent_connected() == ConditionStatus::False {
        return false;
    }
    set_condition(war, ConditionStatus::False, reason, message, now);
    war.status.active_agent_connection = None;
    true
}

fn set_condition(
    war: &mut WorkloadAutoRegistration,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    now: &str,
) {
    let generation = war.metadata.generation;
    war.status.observed_generation = generation;
    let cond = Condition {
        kind: CONDITION_AGENT_CONNECTED.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: now.to_string(),
        observed_generation: generation,
    };
    match war
        .status
        .conditions
        .iter_mut()
        .find(|c| c.kind == CONDITION_AGENT_CONNECTED)
    {
        Some(c) => *c = cond,
        None => war.status.conditions.push(cond),
    }
}

/// A WAR whose agent has been disconnected for at least `grace` is due for deletion.
/// A WAR never shown connected counts from its creation.
pub fn is_expired(war: &WorkloadAutoRegistration, now: SystemTime, grace: Duration) -> bool {
    let since = match war.condition(CONDITION_AGENT_CONNECTED) {
        Some(c) if c.status == ConditionStatus::True => return false,
        Some(c) => Some(c.last_transition_time.as_str()),
        None => war.metadata.creation_timestamp.as_deref(),
    };
    let Some(since) = since.and_then(crate::timestamp::parse) else {
        // An unreadable timestamp (a hand-edited file) must not keep a dead registration
        // forever, nor delete a live one early: count from now, i.e. wait a full grace.
        return false;
    };
    now.duration_since(since).is_ok_and(|d| d >= grace)
}

/// What one pass of the endpoint's cleanup loop knows about a WAR besides the WAR itself.
#[derive(Debug, Clone, Copy)]
pub struct SweepView<'a> {
    /// This endpoint instance (`connectedTo` of the WARs it is responsible for).
    pub instance: &'a str,
    /// A keep-alive arrived within the timeout.
    pub has_live_session: bool,
    /// This instance had a session for it, and it just timed out.
    pub session_timed_out: bool,
    /// The instance has run for at least one keep-alive timeout, so agents that were
    /// connected before a restart have had their chance to come back.
    pub restart_settled: bool,
    pub now: SystemTime,
    pub grace: Duration,
    /// The endpoint instances known to be alive (a store shared by several replicas keeps
    /// one Lease per instance), this one included; `None` when the store cannot tell (one
    /// host, the file store): then WARs connected through another instance are left to it.
    pub live_instances: Option<&'a HashSet<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepAction {
    Keep,
    /// Set `AgentConnected=False`; deletion follows after the grace period.
    MarkDisconnected,
    /// Disconnected for the whole grace period: delete with its WorkloadEntry.
    Delete,
}

/// How often the cleanup loop runs: often enough that a silent agent is marked
/// disconnected within about a third of the keep-alive timeout past it, and a registration
/// is deleted within a quarter of the grace period past it; never more often than every
/// 200 ms (tests run with timeouts of a second) nor less often than every 10 s.
pub fn sweep_interval(keep_alive_timeout: Duration, grace: Duration) -> Duration {
    (keep_alive_timeout / 3)
        .min(grace / 4)
        .clamp(SWEEP_INTERVAL_MIN, SWEEP_INTERVAL_MAX)
}

pub const SWEEP_INTERVAL_MIN: Duration = Duration::from_millis(200);
pub const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(10);

/// Decides one WAR's fate in a cleanup pass. WARs connected through another live instance
/// are left to it (only the instance an agent talks to knows whether it is still there);
/// those connected through an instance that is gone (killed with its agents, or its agents
/// not yet moved) are judged by whichever replica sweeps first. Every replica may run this:
/// marking disconnected is a server-side apply of the same fields, and a delete of a WAR
/// that another replica deleted first is a no-op.
pub fn sweep_action(war: &WorkloadAutoRegistration, v: SweepView<'_>) -> SweepAction {
    if v.has_live_session {
        return SweepAction::Keep;
    }
    let connected_to = war
        .status
        .active_agent_connection
        .as_ref()
        .map(|c| c.connected_to.as_str());
    let mine = connected_to == Some(v.instance);
    let peer_gone = !mine
        && connected_to
            .zip(v.live_instances)
            .is_some_and(|(peer, live)| !live.contains(peer));
    if war.agent_connected() == ConditionStatus::True
        && ((mine && (v.session_timed_out || v.restart_settled))
            || (peer_gone && v.restart_settled))
    {
        return SweepAction::MarkDisconnected;
    }
    if is_expired(war, v.now, v.grace) {
        SweepAction::Delete
    } else {
        SweepAction::Keep
    }
}

/// Whether an instance's Lease still vouches for it at `now`: renewed within its duration,
/// plus one more duration for a missed renewal and clock skew between replicas (the
/// renewal time is the holder's clock, `now` the reader's). A Lease without a renewal
/// time or duration vouches for nothing.
pub fn lease_alive(
    renewed: Option<SystemTime>,
    duration: Option<Duration>,
    now: SystemTime,
) -> bool {
    match (renewed, duration) {
        (Some(r), Some(d)) => now.duration_since(r).map_or(true, |age| age < d * 2),
        _ => false,
    }
}
