//! `onboarding-agent`: onboards this host into the mesh and keeps it there.
//! See docs/agent.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;

use clap::{Parser, Subcommand};
use workload_onboarding::agent::config;
use workload_onboarding::agent::run::{Daemon, Event, Options};
use workload_onboarding::agent::state::{DEFAULT_STATE_FILE, State};
use workload_onboarding::agent::{log, signals, watcher};

#[derive(Parser, Debug)]
#[command(
    name = "onboarding-agent",
    version,
    about = "Onboards this host into an Istio mesh through the onboarding endpoint, writes the sidecar's files, restarts it and stays connected"
)]
struct Cli {
    /// The OnboardingConfiguration file [default: /etc/onboarding-agent/onboarding.config.yaml]
    /// (or set ONBOARDING_CONFIG to its content).
    #[arg(long, value_name = "PATH")]
    onboarding_config: Option<PathBuf>,
    /// The AgentConfiguration file, optional [default: /etc/onboarding-agent/agent.config.yaml]
    /// (or set AGENT_CONFIG to its content).
    #[arg(long, value_name = "PATH")]
    agent_config: Option<PathBuf>,
    /// Prefix for every host path the agent writes (sidecar files, /etc/hosts).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Where the agent keeps its state (read by `onboarding-agent status`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_STATE_FILE, global = true)]
    state_file: PathBuf,
    /// The command that restarts the sidecar, overriding sidecar.restartCommand
    /// [default: systemctl restart istio-sidecar.service]. Takes the rest of the line.
    #[arg(long, value_name = "CMD", num_args = 1.., allow_hyphen_values = true)]
    restart_command: Option<Vec<String>>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the running agent's state (endpoint, registration, expiries, last error).
    Status {
        /// Print the raw JSON state instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Before any thread exists, so that every thread inherits the blocked signals and only
    // the signal thread receives them.
    if let Err(e) = signals::block() {
        eprintln!("error: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    if let Some(Command::Status { json }) = cli.command {
        return status(&cli.state_file, json);
    }
    log::init();

    let request = config::Request {
        onboarding_config: cli.onboarding_config.clone(),
        agent_config: cli.agent_config.clone(),
    };
    let loaded = match config::load(&request, &|name| std::env::var(name).ok()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (tx, rx) = mpsc::channel();
    let opts = Options {
        request,
        root: cli.root,
        state_file: cli.state_file,
        restart_command: cli.restart_command,
    };
    let watched = loaded.watched_file().map(PathBuf::from);
    let daemon = match Daemon::new(opts, loaded, rx) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };

    let sig_tx = tx.clone();
    if let Err(e) = signals::spawn_waiter(move |sig| {
        let _ = sig_tx.send(Event::Signal(sig));
    }) {
        eprintln!("error: cannot start the signal thread: {e}");
        return ExitCode::FAILURE;
    }
    // Kept alive for the life of the process.
    let _watcher = match watched {
        Some(path) => {
            let watch_tx = tx.clone();
            match watcher::watch(&path, move || {
                let _ = watch_tx.send(Event::ConfigChanged);
            }) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("{e}; changes to {} need a restart", path.display());
                    None
                }
            }
        }
        None => None,
    };
    drop(tx);
    daemon.run();
    ExitCode::SUCCESS
}

fn status(state_file: &std::path::Path, json: bool) -> ExitCode {
    match State::load(state_file) {
        Ok(state) => {
            if json {
                match serde_json::to_string_pretty(&state) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", state.render());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
