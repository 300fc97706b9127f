//! The `AgentConnected` condition of a WAR: connected, disconnected, and when a
//! disconnected registration has outlived its grace period.

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
