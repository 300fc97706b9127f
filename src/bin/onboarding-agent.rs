//! `onboarding-agent`: onboards this host into the mesh and keeps it there.
//! See docs/agent.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;

use workload_onboarding::agent::cli::{self, Command};
use workload_onboarding::agent::config;
use workload_onboarding::agent::run::{Daemon, Event, Options};
use workload_onboarding::agent::state::State;
use workload_onboarding::agent::{VERSION, log, signals, watcher};

/// Exit statuses (the endpoint's too): 0 success, 1 a runtime failure, 2 a usage or
/// configuration error (the unit's `RestartPreventExitStatus=2`: a restart cannot fix it).
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // Before any thread exists, so that every thread inherits the blocked signals and only
    // the signal thread receives them.
    if let Err(e) = signals::block() {
        eprintln!("error: cannot block signals: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Status { state_file, json }) => return status(&state_file, json),
        Ok(Command::Help(topic)) => {
            print!("{}", topic.text());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("onboarding-agent {VERSION}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    log::init();

    let request = config::Request {
        onboarding_config: args.onboarding_config.clone(),
        agent_config: args.agent_config.clone(),
    };
    let loaded = match config::load(&request, &|name| std::env::var(name).ok()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (tx, rx) = mpsc::channel();
    let opts = Options {
        request,
        root: args.root,
        state_file: args.state_file,
        restart_command: args.restart_command,
    };
    let watched = loaded.watched_file().map(PathBuf::from);
    let daemon = match Daemon::new(opts, loaded, rx) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };

    let sig_tx = tx.clone();
    if let Err(e) = signals::spawn_waiter(move |sig| {
        let _ = sig_tx.send(Event::Signal(sig));
    }) {
        eprintln!("error: cannot start the signal thread: {e}");
        return ExitCode::from(EXIT_RUNTIME);
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
                        return ExitCode::from(EXIT_RUNTIME);
                    }
                }
            } else {
                print!("{}", state.render());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
