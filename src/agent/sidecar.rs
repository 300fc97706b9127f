//! Restarting the sidecar: by default `systemctl restart istio-sidecar.service`, or any
//! command the config or the command line names (tests point it at a script).

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a restart may take before the agent gives up on it (and retries later).
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("the sidecar restart command is empty")]
    Empty,
    #[error("cannot run {command:?}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command:?} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{command:?} did not finish within {timeout:?}; killed it")]
    Timeout { command: String, timeout: Duration },
}

/// Runs the restart command and waits for it.
pub fn restart(command: &[String], timeout: Duration) -> Result<(), RestartError> {
    let (program, args) = command.split_first().ok_or(RestartError::Empty)?;
    let shown = command.join(" ");
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RestartError::Spawn {
            command: shown.clone(),
            source,
        })?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(RestartError::Failed {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
        Ok(Err(source)) => Err(RestartError::Spawn {
            command: shown,
            source,
        }),
        Err(_) => {
            // SAFETY: plain kill(2) of the child we spawned (its pid is not reaped yet,
            // because the waiting thread has not returned).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            Err(RestartError::Timeout {
                command: shown,
                timeout,
            })
        }
    }
}

/// The installed istio-sidecar package's version, from the package database (dpkg or rpm),
/// or `unknown` when neither knows it (the endpoint requires a non-empty value).
pub fn installed_version() -> String {
    let queries: [&[&str]; 2] = [
        &["dpkg-query", "-W", "-f=${Version}", "istio-sidecar"],
        &["rpm", "-q", "--qf", "%{VERSION}", "istio-sidecar"],
    ];
    for q in queries {
        let out = Command::new(q[0])
            .args(&q[1..])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = out
            && out.status.success()
        {
            let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !v.is_empty() && !v.contains(char::is_whitespace) {
                return v;
            }
        }
    }
    "unknown".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn success_failure_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        restart(
            &sh(&format!("echo restarted >> {}", log.display())),
            RESTART_TIMEOUT,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "restarted\n");

        let e = restart(&sh("echo unit not found >&2; exit 5"), RESTART_TIMEOUT).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("unit not found") && shown.contains("5"),
            "{shown}"
        );

        let e = restart(&sh("sleep 5"), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, RestartError::Timeout { .. }), "{e}");

        let e = restart(&["/nonexistent/systemctl".into()], RESTART_TIMEOUT).unwrap_err();
        assert!(matches!(e, RestartError::Spawn { .. }), "{e}");
        assert!(matches!(
            restart(&[], RESTART_TIMEOUT),
            Err(RestartError::Empty)
        ));
    }
}
