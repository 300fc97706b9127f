//! The state file the daemon keeps (JSON, written atomically on every change, no secrets),
//! which `onboarding-agent status` prints. It also carries `restartPending`, so that an agent
//! killed between writing the files and restarting the sidecar restarts it on its next run.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::atomic;

pub const DEFAULT_STATE_FILE: &str = "/var/lib/onboarding-agent/state.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    #[default]
    Starting,
    Onboarding,
    Connected,
    /// The endpoint is unreachable; the sidecar keeps running on its files.
    Reconnecting,
    Stopping,
    Stopped,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::Onboarding => "onboarding",
            Phase::Connected => "connected",
            Phase::Reconnecting => "reconnecting",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub pid: u32,
    pub phase: Phase,
    /// `host:port` of the onboarding endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Which endpoint instance answered last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plane_uid: Option<String>,
    /// `namespace/name` of the WorkloadGroup joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_group: Option<String>,
    /// `namespace/name` of the WorkloadAutoRegistration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio_token_expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sidecar_restart: Option<String>,
    #[serde(default)]
    pub restart_pending: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot read the state file {path}: {source} (is the agent running with this --state-file?)"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the state file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
}

impl State {
    pub fn load(path: &Path) -> Result<State, StateError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| StateError::Read {
            path: shown.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| StateError::Parse {
            path: shown,
            message: e.to_string(),
        })
    }

    /// The previous run's state, if it left one that parses.
    pub fn load_previous(path: &Path) -> Option<State> {
        State::load(path).ok()
    }

    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let mut text = serde_json::to_string_pretty(self).map_err(|e| StateError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        text.push('\n');
        atomic::write_file(path, text.as_bytes(), 0o644)?;
        Ok(())
    }

    pub fn set_error(&mut self, message: impl Into<String>) {
        self.last_error = Some(message.into());
        self.last_error_at = Some(crate::timestamp::now());
    }

    /// The human view printed by `onboarding-agent status`.
    pub fn render(&self) -> String {
        let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        let rows = [
            ("phase", self.phase.to_string()),
            ("pid", self.pid.to_string()),
            ("endpoint", dash(&self.endpoint)),
            ("connected to", dash(&self.connected_to)),
            ("plane uid", dash(&self.plane_uid)),
            ("workload group", dash(&self.workload_group)),
            ("registration (war)", dash(&self.registration)),
            ("connected since", dash(&self.connected_since)),
            ("session token expires", dash(&self.token_expires_at)),
            ("istio-token expires", dash(&self.istio_token_expires_at)),
            ("last sidecar restart", dash(&self.last_sidecar_restart)),
            (
                "sidecar restart pending",
                if self.restart_pending { "yes" } else { "no" }.into(),
            ),
            (
                "last error",
                match (&self.last_error, &self.last_error_at) {
                    (Some(e), Some(at)) => format!("{e} (at {at})"),
                    (Some(e), None) => e.clone(),
                    _ => "-".into(),
                },
            ),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        // Values come from the endpoint (names, error messages): one line each, no escapes
        // reaching the terminal.
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {}\n", super::log::escape_control(v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_renders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib/state.json");
        let mut s = State {
            pid: 42,
            phase: Phase::Connected,
            endpoint: Some("127.0.0.1:15443".into()),
            registration: Some("bookinfo/ratings-abc".into()),
            connected_since: Some("2026-11-21T10:00:00Z".into()),
            restart_pending: true,
            ..State::default()
        };
        s.set_error("endpoint unreachable");
        s.save(&path).unwrap();
        let back = State::load(&path).unwrap();
        assert_eq!(back, s);
        let shown = back.render();
        assert!(
            shown.contains("registration (war)       bookinfo/ratings-abc\n"),
            "{shown}"
        );
        assert!(
            shown.contains("phase                    connected\n"),
            "{shown}"
        );
        assert!(shown.contains("session token expires    -\n"), "{shown}");
        assert!(
            shown.contains("last error               endpoint unreachable (at "),
            "{shown}"
        );
        // The JSON uses camelCase keys (for scripts reading it).
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(raw.contains("\"restartPending\": true"), "{raw}");
    }

    #[test]
    fn endpoint_text_cannot_forge_status_lines() {
        let mut s = State::default();
        s.set_error("registration: refused\nphase                    connected\x1b[2K");
        s.connected_to = Some("ep\x1b]0;title\x07".into());
        let shown = s.render();
        assert_eq!(shown.lines().count(), 13, "{shown}");
        assert!(!shown.contains('\x1b'), "{shown}");
        assert!(
            shown.contains("refused\\nphase                    connected\\u{1b}[2K (at "),
            "{shown}"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.json");
        let e = State::load(&missing).unwrap_err().to_string();
        assert!(e.contains("none.json"), "{e}");
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        let e = State::load(&dir.path().join("bad.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.json") && e.contains("not valid"), "{e}");
        assert!(State::load_previous(&missing).is_none());
    }
}
