//! The agent's command line. Parsed by hand rather than with clap: the grammar is five flags
//! and one subcommand, and clap's parser and help renderer are about a tenth of the agent's
//! binary and resident memory.

use std::ffi::OsString;
use std::path::PathBuf;

use super::config::{DEFAULT_AGENT_CONFIG, DEFAULT_ONBOARDING_CONFIG};
use super::state::DEFAULT_STATE_FILE;

pub const USAGE: &str = "\
Onboards this host into an Istio mesh through the onboarding endpoint, writes the sidecar's
files, restarts it and stays connected. See docs/agent.md.

Usage:
  onboarding-agent [OPTIONS]           run the agent (what the systemd unit does)
  onboarding-agent status [OPTIONS]    print the running agent's state
  onboarding-agent help [COMMAND]      print this help, or a command's
  onboarding-agent version             print the version

Options:
  --onboarding-config PATH   the OnboardingConfiguration (where the endpoint is, which
                             WorkloadGroup to join)
                             [default: /etc/onboarding-agent/onboarding.config.yaml]
                             (or set ONBOARDING_CONFIG to its content)
  --agent-config PATH        the AgentConfiguration (credential source, sidecar, retries);
                             optional [default: /etc/onboarding-agent/agent.config.yaml]
                             (or set AGENT_CONFIG to its content)
  --root DIR                 prefix for every host path the agent writes [default: /]
  --state-file PATH          where the agent keeps its state
                             [default: /var/lib/onboarding-agent/state.json]
  --restart-command CMD...   how to restart the sidecar; takes the rest of the line
                             [default: sidecar.restartCommand, else
                             systemctl restart istio-sidecar.service]
  -h, --help                 print this help
  -V, --version              print the version

Environment: ONBOARDING_AGENT_ROOT_CERTS (extra CA certificates, PEM),
ONBOARDING_AGENT_LOG (error|warn|info|debug|trace).

Exit status: 0 stopped cleanly, 1 a runtime failure, 2 a usage or configuration error.
";

pub const STATUS_USAGE: &str = "\
Prints the state the running agent keeps: its phase, the endpoint and registration, when
its tokens expire, the last sidecar restart and the last error.

Usage:
  onboarding-agent status [OPTIONS]

Options:
  --state-file PATH   the agent's state file (the agent's own --state-file)
                      [default: /var/lib/onboarding-agent/state.json]
  --json              print the state file's JSON instead of a table
  -h, --help          print this help

Exit status: 0 printed, 1 the state file cannot be read, 2 a usage error.
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Agent,
    Status,
}

impl Topic {
    pub fn text(self) -> &'static str {
        match self {
            Topic::Agent => USAGE,
            Topic::Status => STATUS_USAGE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(RunArgs),
    Status { state_file: PathBuf, json: bool },
    Help(Topic),
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub onboarding_config: Option<PathBuf>,
    pub agent_config: Option<PathBuf>,
    pub root: PathBuf,
    pub state_file: PathBuf,
    pub restart_command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}\n\nRun `onboarding-agent {help}` for usage.")]
pub struct UsageError {
    message: String,
    help: &'static str,
}

impl UsageError {
    fn new(message: impl Into<String>, status: bool) -> UsageError {
        UsageError {
            message: message.into(),
            help: if status { "status --help" } else { "--help" },
        }
    }
}

fn utf8(arg: OsString) -> Result<String, UsageError> {
    arg.into_string()
        .map_err(|a| UsageError::new(format!("argument {a:?} is not UTF-8"), false))
}

/// Parses the arguments after the program name. Accepts `--flag value` and `--flag=value`.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut run = RunArgs {
        onboarding_config: None,
        agent_config: None,
        root: PathBuf::from("/"),
        state_file: PathBuf::from(DEFAULT_STATE_FILE),
        restart_command: None,
    };
    let mut status = false;
    let mut json = false;
    let mut args = args.into_iter();
    let mut first = true;
    while let Some(arg) = args.next() {
        let arg = utf8(arg)?;
        let at_start = std::mem::replace(&mut first, false);
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let usage = |message: String| UsageError::new(message, status);
        let mut value = |name: &str| -> Result<String, UsageError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args
                    .next()
                    .map(utf8)
                    .transpose()?
                    .ok_or_else(|| UsageError::new(format!("{name} needs a value"), status)),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => {
                return Ok(Command::Help(if status {
                    Topic::Status
                } else {
                    Topic::Agent
                }));
            }
            "-V" | "--version" => return Ok(Command::Version),
            // `help` and `version` come first, as in kubectl.
            "help" if at_start => {
                return match args.next().map(utf8).transpose()?.as_deref() {
                    None => Ok(Command::Help(Topic::Agent)),
                    Some("status") => Ok(Command::Help(Topic::Status)),
                    Some(other) => Err(usage(format!(
                        "no help for {other:?}: the commands are status, help and version"
                    ))),
                };
            }
            "version" if at_start => {
                return match args.next() {
                    None => Ok(Command::Version),
                    Some(a) => Err(usage(format!(
                        "unexpected argument {:?} for `version`",
                        a.to_string_lossy()
                    ))),
                };
            }
            "status" if !status => status = true,
            "--json" if status => json = true,
            "--state-file" => run.state_file = PathBuf::from(value("--state-file")?),
            "--onboarding-config" if !status => {
                run.onboarding_config = Some(PathBuf::from(value("--onboarding-config")?))
            }
            "--agent-config" if !status => {
                run.agent_config = Some(PathBuf::from(value("--agent-config")?))
            }
            "--root" if !status => run.root = PathBuf::from(value("--root")?),
            "--restart-command" if !status => {
                let mut cmd: Vec<String> = inline.clone().into_iter().collect();
                for rest in args.by_ref() {
                    cmd.push(utf8(rest)?);
                }
                if cmd.first().is_none_or(|c| c.is_empty()) {
                    return Err(usage("--restart-command needs a command".into()));
                }
                run.restart_command = Some(cmd);
            }
            other => {
                return Err(usage(if status {
                    format!("unexpected argument {other:?} for `status`")
                } else if !other.starts_with('-') {
                    format!(
                        "unknown command {other:?}: the commands are status, help and version (the agent itself runs without one)"
                    )
                } else {
                    format!("unexpected argument {other:?}")
                }));
            }
        }
    }
    if status {
        return Ok(Command::Status {
            state_file: run.state_file,
            json,
        });
    }
    Ok(Command::Run(run))
}

/// The defaults shown in the help text, checked against the constants they repeat.
pub fn usage_mentions_defaults() -> bool {
    [
        DEFAULT_ONBOARDING_CONFIG,
        DEFAULT_AGENT_CONFIG,
        DEFAULT_STATE_FILE,
    ]
    .iter()
    .all(|d| USAGE.contains(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn defaults() {
        assert_eq!(
            p(&[]).unwrap(),
            Command::Run(RunArgs {
                onboarding_config: None,
                agent_config: None,
                root: PathBuf::from("/"),
                state_file: PathBuf::from("/var/lib/onboarding-agent/state.json"),
                restart_command: None,
            })
        );
        assert!(usage_mentions_defaults());
    }

    #[test]
    fn all_flags_both_spellings() {
        let Command::Run(r) = p(&[
            "--onboarding-config",
            "/o.yaml",
            "--agent-config=/a.yaml",
            "--root",
            "/tmp/root",
            "--state-file=/s.json",
            "--restart-command",
            "/bin/sh",
            "-c",
            "echo --root",
        ])
        .unwrap() else {
            panic!("not run")
        };
        assert_eq!(r.onboarding_config, Some(PathBuf::from("/o.yaml")));
        assert_eq!(r.agent_config, Some(PathBuf::from("/a.yaml")));
        assert_eq!(r.root, PathBuf::from("/tmp/root"));
        assert_eq!(r.state_file, PathBuf::from("/s.json"));
        assert_eq!(
            r.restart_command,
            Some(vec!["/bin/sh".into(), "-c".into(), "echo --root".into()])
        );
    }

    #[test]
    fn status_and_errors() {
        assert_eq!(
            p(&["status", "--json", "--state-file", "/x"]).unwrap(),
            Command::Status {
                state_file: PathBuf::from("/x"),
                json: true
            }
        );
        assert_eq!(
            p(&["--state-file", "/x", "status"]).unwrap(),
            Command::Status {
                state_file: PathBuf::from("/x"),
                json: false
            }
        );
        assert_eq!(p(&["--help"]).unwrap(), Command::Help(Topic::Agent));
        assert_eq!(p(&["--root", "/r", "-V"]).unwrap(), Command::Version);
        let e = p(&["--root"]).unwrap_err().to_string();
        assert!(e.starts_with("--root needs a value"), "{e}");
        let e = p(&["--onboarding"]).unwrap_err().to_string();
        assert!(e.contains("unexpected argument \"--onboarding\""), "{e}");
        assert!(p(&["status", "--root", "/r"]).is_err());
        assert!(p(&["--json"]).is_err());
        assert!(p(&["--restart-command"]).is_err());
    }

    #[test]
    fn help_and_version_as_kubectl_spells_them() {
        assert_eq!(p(&["help"]).unwrap(), Command::Help(Topic::Agent));
        assert_eq!(p(&["-h"]).unwrap(), Command::Help(Topic::Agent));
        assert_eq!(
            p(&["help", "status"]).unwrap(),
            Command::Help(Topic::Status)
        );
        assert_eq!(
            p(&["status", "--help"]).unwrap(),
            Command::Help(Topic::Status)
        );
        assert_eq!(p(&["status", "-h"]).unwrap(), Command::Help(Topic::Status));
        assert_eq!(p(&["version"]).unwrap(), Command::Version);
        assert_eq!(p(&["--version"]).unwrap(), Command::Version);
        let e = p(&["help", "nope"]).unwrap_err().to_string();
        assert!(e.contains("no help for \"nope\""), "{e}");
        let e = p(&["statu"]).unwrap_err().to_string();
        assert!(e.starts_with("unknown command \"statu\""), "{e}");
        assert!(
            e.ends_with("Run `onboarding-agent --help` for usage."),
            "{e}"
        );
        let e = p(&["status", "--root", "/r"]).unwrap_err().to_string();
        assert!(
            e.ends_with("Run `onboarding-agent status --help` for usage."),
            "{e}"
        );
        // A value that happens to be spelled like a command is a value.
        let Command::Run(r) = p(&["--root", "status"]).unwrap() else {
            panic!("not run")
        };
        assert_eq!(r.root, PathBuf::from("status"));
    }

    #[test]
    fn every_flag_has_help() {
        for flag in [
            "--onboarding-config",
            "--agent-config",
            "--root",
            "--state-file",
            "--restart-command",
            "--help",
            "--version",
        ] {
            let line = USAGE
                .lines()
                .find(|l| l.trim_start().starts_with(flag) || l.contains(&format!(", {flag}")));
            assert!(
                line.is_some_and(|l| l.split_whitespace().count() > 2),
                "{flag}"
            );
        }
        for flag in ["--state-file", "--json", "--help"] {
            assert!(STATUS_USAGE.contains(flag), "{flag}");
        }
    }
}
