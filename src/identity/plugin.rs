//! The agent's plugin protocol (TSB's, reference/tsb.md §1.3), documented for plugin authors
//! in `docs/credential-plugins.md`.
//!
//! A plugin is an executable modelled as one unary gRPC method but run as a process: the
//! agent sets `PLUGIN_NAME`, `RPC_SERVICE_NAME` and `RPC_METHOD_NAME`, writes the JSON
//! request to its stdin and waits. Exit 0: stdout holds the JSON response. Any other exit:
//! stdout holds a JSON `google.rpc.Status`. stderr is free-form diagnostics, which the agent
//! logs (so a plugin must never print secrets there).
//!
//! This module holds the wire types (shared by the agent and the plugins shipped here) and
//! [`run_plugin`] / [`get_credential`], which the agent calls.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::agent_config::Plugin;
use crate::api::protocol::Credential;

/// `RPC_SERVICE_NAME` of credential plugins (TSB's name, so TSB plugins run unchanged).
pub const CREDENTIAL_SERVICE: &str =
    "tetrateio.api.onboarding.private.component.agent.plugin.credential.v1alpha1.CredentialPlugin";
/// `RPC_METHOD_NAME` of credential plugins.
pub const GET_CREDENTIAL_METHOD: &str = "GetCredential";
/// `@type` of a JWT credential in a `GetCredential` response.
pub const JWT_CREDENTIAL_TYPE: &str =
    "type.googleapis.com/workload_onboarding.credential.v1.JwtCredential";

/// A plugin's reply larger than this is refused (a credential is a few KiB).
const MAX_STDOUT_BYTES: u64 = 1024 * 1024;
/// How much of a plugin's stderr is kept for error messages (the tail).
const STDERR_TAIL_BYTES: usize = 4096;

/// stdin of `GetCredential`: `{"audience": "<plane uid>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetCredentialRequest {
    /// The onboarding plane's UID: the credential must be addressed to it, so that it cannot
    /// be replayed against another plane.
    pub audience: String,
}

/// stdout of a successful `GetCredential` (exit 0):
/// `{"credential": {"@type": "<type URL>", ...}, "expiresAt": "<RFC 3339>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetCredentialResponse {
    pub credential: AnyCredential,
    /// When the credential stops being accepted; the agent asks again before then. Optional
    /// when reading (a plugin may not know), always written by the plugins shipped here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A plugin's credential that the agent cannot send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnusableCredential {
    #[error("{} without a non-empty \"token\" string", JWT_CREDENTIAL_TYPE)]
    JwtWithoutToken,
    #[error(
        "credential type {found:?} is not supported (supported: {})",
        JWT_CREDENTIAL_TYPE
    )]
    Type { found: String },
}

/// A `google.protobuf.Any` in its JSON form: `@type` plus the message's fields inline.
/// `Debug` names the fields but never shows their values (a token is a credential).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct AnyCredential {
    #[serde(rename = "@type")]
    pub type_url: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl std::fmt::Debug for AnyCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("AnyCredential");
        d.field("type_url", &self.type_url);
        for name in self.fields.keys() {
            d.field(name, &crate::secret::Secret::new(()));
        }
        d.finish()
    }
}

impl AnyCredential {
    /// `{"@type": JWT_CREDENTIAL_TYPE, "token": "<jwt>"}`.
    pub fn jwt(token: impl Into<String>) -> AnyCredential {
        let mut fields = Map::new();
        fields.insert("token".into(), Value::String(token.into()));
        AnyCredential {
            type_url: JWT_CREDENTIAL_TYPE.into(),
            fields,
        }
    }

    /// The credential the agent sends to the endpoint.
    pub fn into_credential(self) -> Result<Credential, UnusableCredential> {
        match self.type_url.as_str() {
            JWT_CREDENTIAL_TYPE => match self.fields.get("token") {
                Some(Value::String(token)) if !token.trim().is_empty() => Ok(Credential::Jwt {
                    token: token.trim().to_owned(),
                }),
                _ => Err(UnusableCredential::JwtWithoutToken),
            },
            other => Err(UnusableCredential::Type {
                found: other.to_owned(),
            }),
        }
    }
}

/// `google.rpc.Status` in its JSON form: stdout of a failed plugin (non-zero exit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// A `google.rpc.Code` ([`code`]).
    pub code: i32,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Value>,
}

/// `google.rpc.Code` values.
pub mod code {
    pub const OK: i32 = 0;
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

impl Status {
    pub fn new(code: i32, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The canonical upper-case name of the code, for logs.
    pub fn code_name(&self) -> &'static str {
        match self.code {
            0 => "OK",
            1 => "CANCELLED",
            2 => "UNKNOWN",
            3 => "INVALID_ARGUMENT",
            4 => "DEADLINE_EXCEEDED",
            5 => "NOT_FOUND",
            6 => "ALREADY_EXISTS",
            7 => "PERMISSION_DENIED",
            8 => "RESOURCE_EXHAUSTED",
            9 => "FAILED_PRECONDITION",
            10 => "ABORTED",
            11 => "OUT_OF_RANGE",
            12 => "UNIMPLEMENTED",
            13 => "INTERNAL",
            14 => "UNAVAILABLE",
            15 => "DATA_LOSS",
            16 => "UNAUTHENTICATED",
            _ => "UNKNOWN_CODE",
        }
    }
}

/// Why a plugin call failed. Messages name the plugin and end with the tail of its stderr.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {name:?}: cannot start {path}: {source}")]
    Spawn {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "plugin {name:?}: no answer within {timeout:?}; it was killed{}",
        stderr_suffix(stderr)
    )]
    Timeout {
        name: String,
        timeout: Duration,
        stderr: String,
    },
    #[error("plugin {name:?} failed: {} ({}): {}{}", status.code_name(), status.code, status.message, stderr_suffix(stderr))]
    Status {
        name: String,
        status: Status,
        stderr: String,
    },
    #[error(
        "plugin {name:?} {exit} without a google.rpc.Status on stdout{}",
        stderr_suffix(stderr)
    )]
    Failed {
        name: String,
        exit: String,
        stderr: String,
    },
    #[error(
        "plugin {name:?} answered, but not as the protocol says: {problem}{}",
        stderr_suffix(stderr)
    )]
    BadResponse {
        name: String,
        problem: String,
        stderr: String,
    },
    #[error("plugin {name:?}: {problem}")]
    Io { name: String, problem: String },
}

fn stderr_suffix(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("; its stderr ends with: {trimmed}")
    }
}

/// What to run for one plugin call. `Debug` shows the environment's names, not its values
/// (a plugin's configuration may hold a client secret).
#[derive(Clone, PartialEq, Eq)]
pub struct PluginCall {
    pub name: String,
    /// An absolute path, or a bare name looked up on `PATH`.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the agent's own environment. The protocol variables are set after these,
    /// so a plugin's config cannot override them.
    pub env: Vec<(String, String)>,
    pub service: String,
    pub method: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for PluginCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, _)| (k.as_str(), crate::secret::REDACTED))
            .collect();
        f.debug_struct("PluginCall")
            .field("name", &self.name)
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &env)
            .field("service", &self.service)
            .field("method", &self.method)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PluginCall {
    /// A `GetCredential` call of a configured plugin. `path` defaults to
    /// `onboarding-agent-<name>-plugin` on `PATH`, as in TSB.
    pub fn get_credential(plugin: &Plugin, timeout: Duration) -> PluginCall {
        PluginCall {
            name: plugin.name.clone(),
            program: plugin
                .path
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| format!("onboarding-agent-{}-plugin", plugin.name).into()),
            args: plugin.args.clone(),
            env: plugin
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            service: CREDENTIAL_SERVICE.into(),
            method: GET_CREDENTIAL_METHOD.into(),
            timeout,
        }
    }
}

/// A credential obtained from a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginCredential {
    pub credential: Credential,
    pub expires_at: Option<SystemTime>,
}

/// Runs a credential plugin for `audience` and returns the credential it produced.
pub fn get_credential(call: &PluginCall, audience: &str) -> Result<PluginCredential, PluginError> {
    let request = serde_json::to_vec(&GetCredentialRequest {
        audience: audience.to_owned(),
    })
    .map_err(|e| PluginError::Io {
        name: call.name.clone(),
        problem: format!("encoding the request: {e}"),
    })?;
    let reply = run_plugin(call, &request)?;
    parse_credential_reply(&call.name, &reply.stdout, &reply.stderr)
}

/// Interprets the stdout of a successful `GetCredential`.
pub fn parse_credential_reply(
    name: &str,
    stdout: &[u8],
    stderr: &str,
) -> Result<PluginCredential, PluginError> {
    let bad = |problem: String| PluginError::BadResponse {
        name: name.to_owned(),
        problem,
        stderr: stderr.to_owned(),
    };
    let response: GetCredentialResponse = serde_json::from_slice(stdout)
        .map_err(|e| bad(format!("stdout is not a GetCredential response: {e}")))?;
    let expires_at = match &response.expires_at {
        None => None,
        Some(text) => Some(
            crate::timestamp::parse(text)
                .ok_or_else(|| bad(format!("expiresAt {text:?} is not an RFC 3339 time")))?,
        ),
    };
    let credential = response
        .credential
        .into_credential()
        .map_err(|e| bad(e.to_string()))?;
    Ok(PluginCredential {
        credential,
        expires_at,
    })
}

/// What a plugin printed when it exited 0. `Debug` shows the size of stdout, not its bytes
/// (they are the credential).
#[derive(Clone, PartialEq, Eq)]
pub struct PluginReply {
    pub stdout: Vec<u8>,
    /// The tail of its stderr (diagnostics).
    pub stderr: String,
}

impl std::fmt::Debug for PluginReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginReply")
            .field(
                "stdout",
                &format_args!("<{} bytes redacted>", self.stdout.len()),
            )
            .field("stderr", &self.stderr)
            .finish()
    }
}

/// Runs one plugin call: request on stdin, reply on stdout, killed (with its process group)
/// after `call.timeout`. A non-zero exit becomes [`PluginError::Status`] when stdout holds a
/// `google.rpc.Status`, [`PluginError::Failed`] otherwise.
pub fn run_plugin(call: &PluginCall, request: &[u8]) -> Result<PluginReply, PluginError> {
    use std::os::unix::process::CommandExt as _;

    let mut command = Command::new(&call.program);
    command
        .args(&call.args)
        .envs(call.env.iter().map(|(k, v)| (k, v)))
        .env("PLUGIN_NAME", &call.name)
        .env("RPC_SERVICE_NAME", &call.service)
        .env("RPC_METHOD_NAME", &call.method)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout also stops whatever it started.
        .process_group(0);
    let mut child = command.spawn().map_err(|source| PluginError::Spawn {
        name: call.name.clone(),
        path: call.program.display().to_string(),
        source,
    })?;
    let io_error = |what: &str| PluginError::Io {
        name: call.name.clone(),
        problem: format!("{what} pipe missing"),
    };
    let mut stdin = child.stdin.take().ok_or_else(|| io_error("stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| io_error("stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| io_error("stderr"))?;
    let request = request.to_vec();
    // Threads, so that a plugin that writes before reading all its input cannot deadlock us.
    let writer = std::thread::spawn(move || {
        // A plugin that exits without reading its input is its own business.
        let _ = stdin.write_all(&request);
    });
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let read = stdout.take(MAX_STDOUT_BYTES + 1).read_to_end(&mut buf);
        read.map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || tail(stderr, STDERR_TAIL_BYTES));

    let status = wait_with_timeout(&mut child, call.timeout);
    let Some(status) = status else {
        kill_group(&mut child);
        let _ = writer.join();
        let stderr = err_reader.join().unwrap_or_default();
        let _ = out_reader.join();
        return Err(PluginError::Timeout {
            name: call.name.clone(),
            timeout: call.timeout,
            stderr,
        });
    };
    let _ = writer.join();
    let stderr = err_reader.join().unwrap_or_default();
    let stdout = match out_reader.join() {
        Ok(Ok(buf)) => buf,
        Ok(Err(e)) => {
            return Err(PluginError::Io {
                name: call.name.clone(),
                problem: format!("reading its stdout: {e}"),
            });
        }
        Err(_) => {
            return Err(PluginError::Io {
                name: call.name.clone(),
                problem: "stdout reader panicked".into(),
            });
        }
    };
    if stdout.len() as u64 > MAX_STDOUT_BYTES {
        return Err(PluginError::BadResponse {
            name: call.name.clone(),
            problem: format!("stdout is larger than {MAX_STDOUT_BYTES} bytes"),
            stderr,
        });
    }
    if status.success() {
        return Ok(PluginReply { stdout, stderr });
    }
    match serde_json::from_slice::<Status>(&stdout) {
        Ok(status) => Err(PluginError::Status {
            name: call.name.clone(),
            status,
            stderr,
        }),
        Err(_) => Err(PluginError::Failed {
            name: call.name.clone(),
            exit: describe_exit(status),
            stderr,
        }),
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended".to_owned(),
    }
}

/// Polls with growing sleeps: a plugin call is short, and the agent is idle otherwise.
fn wait_with_timeout(child: &mut std::process::Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            // The child is ours; failing to query it means it is gone or unwaitable: stop.
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group that `process_group(0)`
        // created for this child; no memory is involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(mut reader: impl Read, keep: usize) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * keep {
                    kept.drain(..kept.len() - keep);
                }
            }
        }
    }
    if kept.len() > keep {
        kept.drain(..kept.len() - keep);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_hides_plugin_env_values_and_the_reply() {
        let call = super::PluginCall {
            name: "oidc".into(),
            program: "/usr/bin/plugin".into(),
            args: vec![],
            env: vec![("OIDC_CLIENT_SECRET".into(), "s3cr3t-value".into())],
            service: super::CREDENTIAL_SERVICE.into(),
            method: super::GET_CREDENTIAL_METHOD.into(),
            timeout: std::time::Duration::from_secs(5),
        };
        let shown = format!("{call:?} {call:#?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("OIDC_CLIENT_SECRET"), "{shown}");
        let reply = super::PluginReply {
            stdout: br#"{"credential":{"token":"eyJ.secret-token.sig"}}"#.to_vec(),
            stderr: "ok".into(),
        };
        let shown = format!("{reply:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
    }

    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;

    #[test]
    fn debug_of_a_plugin_credential_hides_the_token() {
        let c = super::AnyCredential::jwt("eyJ.secret-token.sig");
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
        assert!(
            shown.contains("token") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    use super::*;
    use crate::api::agent_config::EnvVar;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn call(path: &Path, timeout: Duration) -> PluginCall {
        PluginCall::get_credential(
            &Plugin {
                name: "test".into(),
                path: Some(path.display().to_string()),
                env: vec![EnvVar {
                    name: "EXTRA".into(),
                    value: "x y".into(),
                }],
                args: vec!["--flag".into()],
            },
            timeout,
        )
    }

    #[test]
    fn credential_reply_round_trip() {
        let response = GetCredentialResponse {
            credential: AnyCredential::jwt("a.b.c"),
            expires_at: Some("2030-01-01T00:00:00Z".into()),
        };
        let json = serde_json::to_string(&response).expect("json");
        assert_eq!(
            json,
            format!(
                r#"{{"credential":{{"@type":"{JWT_CREDENTIAL_TYPE}","token":"a.b.c"}},"expiresAt":"2030-01-01T00:00:00Z"}}"#
            )
        );
        let parsed = parse_credential_reply("p", json.as_bytes(), "").expect("parses");
        assert_eq!(
            parsed.credential,
            Credential::Jwt {
                token: "a.b.c".into()
            }
        );
        assert!(parsed.expires_at.is_some());
        let other = r#"{"credential":{"@type":"type.googleapis.com/x.Aws","doc":"d"}}"#;
        assert!(matches!(
            parse_credential_reply("p", other.as_bytes(), ""),
            Err(PluginError::BadResponse { problem, .. }) if problem.contains("not supported")
        ));
    }

    #[test]
    fn protocol_variables_request_and_reply() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Echoes what it was given back inside the token, so the test sees env, args, stdin.
        let path = script(
            dir.path(),
            "plugin",
            r#"read -r req
echo "diagnostics for $PLUGIN_NAME" >&2
printf '{"credential":{"@type":"%s","token":"%s|%s|%s|%s|%s|%s"},"expiresAt":"2030-01-01T00:00:00Z"}' \
  "type.googleapis.com/workload_onboarding.credential.v1.JwtCredential" \
  "$PLUGIN_NAME" "$RPC_SERVICE_NAME" "$RPC_METHOD_NAME" "$EXTRA" "$1" "$(echo "$req" | tr '"' "'")""#,
        );
        let got = get_credential(&call(&path, Duration::from_secs(10)), "plane-1").expect("ok");
        let Credential::Jwt { token } = got.credential else {
            panic!("not a JWT credential")
        };
        assert_eq!(
            token,
            format!("test|{CREDENTIAL_SERVICE}|GetCredential|x y|--flag|{{'audience':'plane-1'}}")
        );
    }

    #[test]
    fn failure_with_status_and_without() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = script(
            dir.path(),
            "status",
            r#"echo "client secret refused" >&2
echo '{"code": 16, "message": "invalid_client"}'
exit 1"#,
        );
        match get_credential(&call(&status, Duration::from_secs(10)), "p") {
            Err(PluginError::Status { status, stderr, .. }) => {
                assert_eq!(status.code, code::UNAUTHENTICATED);
                assert_eq!(status.message, "invalid_client");
                assert!(stderr.contains("client secret refused"));
            }
            other => panic!("{other:?}"),
        }
        let garbage = script(dir.path(), "garbage", "echo oops; exit 3");
        let err = get_credential(&call(&garbage, Duration::from_secs(10)), "p").expect_err("fails");
        assert!(
            matches!(&err, PluginError::Failed { exit, .. } if exit == "exited with status 3"),
            "{err}"
        );
        let not_json = script(dir.path(), "notjson", "echo not json");
        assert!(matches!(
            get_credential(&call(&not_json, Duration::from_secs(10)), "p"),
            Err(PluginError::BadResponse { .. })
        ));
        let missing = call(&dir.path().join("does-not-exist"), Duration::from_secs(1));
        assert!(matches!(
            get_credential(&missing, "p"),
            Err(PluginError::Spawn { .. })
        ));
    }

    #[test]
    fn a_hanging_plugin_and_its_children_are_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The background sleep holds stdout open: only killing the group ends the call.
        let path = script(dir.path(), "hang", "echo started >&2; sleep 30 & sleep 30");
        let started = Instant::now();
        let err =
            get_credential(&call(&path, Duration::from_millis(300)), "p").expect_err("timeout");
        assert!(
            matches!(&err, PluginError::Timeout { stderr, .. } if stderr.contains("started")),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn default_path_follows_the_plugin_name() {
        let call = PluginCall::get_credential(
            &Plugin {
                name: "oidc-credential".into(),
                ..Plugin::default()
            },
            Duration::from_secs(1),
        );
        assert_eq!(
            call.program,
            PathBuf::from("onboarding-agent-oidc-credential-plugin")
        );
    }

    #[test]
    fn stderr_tail_keeps_the_end() {
        let text = "x".repeat(10_000) + "END";
        let kept = tail(text.as_bytes(), 100);
        assert_eq!(kept.len(), 100);
        assert!(kept.ends_with("END"));
    }
}
