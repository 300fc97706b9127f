//! `onboarding-endpoint`: the server agents onboard through, and the operator's tools around
//! it (offline rendering, listing registrations).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use workload_onboarding::endpoint::cli;
use workload_onboarding::endpoint::run::admin::{self, AdminStore, GetOutput, GetRequest};
use workload_onboarding::endpoint::run::{self, RunError};
use workload_onboarding::store::kube as kube_store;

// The offline commands live beside this file (a directory of its own would be
// `onboarding-endpoint/main.rs`; the path keeps this file where it is).
#[path = "onboarding-endpoint/render.rs"]
mod render;
#[path = "onboarding-endpoint/verify.rs"]
mod verify;

/// Exit codes, the same in both binaries: 0 success, 1 a runtime failure (retrying may
/// help), 2 a usage or configuration error (the command line or a file must be fixed;
/// clap exits 2 for its own usage errors, and the systemd unit does not restart on 2).
const EXIT_FAILURE: i32 = 1;
const EXIT_USAGE: i32 = 2;

#[derive(Parser)]
#[command(
    name = "onboarding-endpoint",
    version,
    about = "Workload onboarding endpoint: onboards VMs into an Istio mesh, and the operator's tools around it",
    after_help = "Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.\n\
                  Documentation: README.md and docs/ in the source repository."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the onboarding API over HTTPS.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Generate (once) a self-signed development CA and certificate in the state
        /// directory when the config names no TLS files. Never for production.
        #[arg(long)]
        dev: bool,
    },
    /// Render a sidecar's boot files offline, like `istioctl x workload entry configure`.
    Render(Box<render::RenderArgs>),
    /// List registrations, or show one, as `kubectl get war [NAME]` does.
    Get {
        /// Resource type: `war` (or `wars`, `workloadautoregistration`).
        resource: String,
        /// Show only this registration.
        name: Option<String>,
        /// Namespace to look in (default `default`).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// List registrations in every namespace.
        #[arg(short = 'A', long = "all-namespaces", conflicts_with = "namespace")]
        all_namespaces: bool,
        /// Output format: the table (default), `wide` (more columns), `yaml`, `json` or
        /// `name`.
        #[arg(short = 'o', long, value_enum)]
        output: Option<OutputArg>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show one registration, as `kubectl describe war NAME` does.
    Describe(WarRef),
    /// Print the CustomResourceDefinitions (OnboardingPolicy, WorkloadAutoRegistration) as
    /// YAML, for `kubectl apply -f -`.
    Crds,
    /// Operator tools for host identities.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Delete a registration (and its WorkloadEntry); its agent onboards again.
    Delete(WarRef),
    /// Print the version of this binary.
    Version,
}

/// One registration, for `describe` and `delete`.
#[derive(clap::Args)]
struct WarRef {
    /// Resource type: `war` (or `workloadautoregistration`).
    resource: String,
    /// The registration's name (as `get war` lists it).
    name: String,
    /// Namespace of the registration.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Verify one platform credential offline and print the identity it yields, or exactly
    /// why it is refused ("why won't my VM join?").
    Verify(Box<verify::VerifyArgs>),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputArg {
    /// The table with more columns: workload group, address, identity, connected to, agent version.
    Wide,
    /// The registration (or a `kind: List` of them) as YAML.
    Yaml,
    /// The registration (or a `kind: List` of them) as JSON.
    Json,
    /// `workloadautoregistration.<group>/<name>` per registration.
    Name,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The endpoint's configuration file [default: /etc/onboarding-endpoint/endpoint.yaml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Exit 2 when the chain holds an error the user must fix, 1 otherwise.
fn exit_code(e: &anyhow::Error) -> i32 {
    let usage = e
        .chain()
        .any(|c| c.downcast_ref::<RunError>().is_some_and(RunError::is_usage));
    if usage { EXIT_USAGE } else { EXIT_FAILURE }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {}", cli::error_chain(e.as_ref()));
        std::process::exit(exit_code(&e));
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            emit(concat!(
                "onboarding-endpoint ",
                env!("CARGO_PKG_VERSION"),
                "\n"
            ));
            Ok(())
        }
        Command::Serve { config, dev } => {
            let (path, cfg) = run::load_config(config.config.as_deref())?;
            run::init_logging(&cfg.logging);
            Ok(run::serve(&path, &cfg, dev)?)
        }
        Command::Render(args) => render::run(&args),
        Command::Crds => {
            print!("{}", kube_store::crds::crds_yaml()?);
            Ok(())
        }
        Command::Identity {
            command: IdentityCommand::Verify(args),
        } => verify::run(&args),
        Command::Get {
            resource,
            name,
            namespace,
            all_namespaces,
            output,
            config,
        } => {
            admin::check_resource(&resource)?;
            let req = GetRequest {
                name,
                namespace,
                all_namespaces,
                output: match output {
                    None => cli::Output::Table,
                    Some(OutputArg::Wide) => cli::Output::Wide,
                    Some(OutputArg::Yaml) => cli::Output::Yaml,
                    Some(OutputArg::Json) => cli::Output::Json,
                    Some(OutputArg::Name) => cli::Output::Name,
                },
            };
            // Refused before the store is opened: a wrong command line is told first.
            admin::get_namespace(&req)?;
            match admin::get(&open_store(&config)?, &req)? {
                GetOutput::Stdout(text) => emit(&text),
                GetOutput::Stderr(text) => eprintln!("{text}"),
            }
            Ok(())
        }
        Command::Describe(w) => {
            admin::check_resource(&w.resource)?;
            emit(&admin::describe(
                &open_store(&w.config)?,
                &w.namespace,
                &w.name,
            )?);
            Ok(())
        }
        Command::Delete(w) => {
            admin::check_resource(&w.resource)?;
            emit(&admin::delete(
                &open_store(&w.config)?,
                &w.namespace,
                &w.name,
            )?);
            Ok(())
        }
    }
}

/// Writes a command's output to stdout. A closed pipe (`| head`) ends the output quietly
/// instead of panicking.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(EXIT_FAILURE);
    }
}

fn open_store(config: &ConfigArg) -> Result<AdminStore, RunError> {
    let (path, cfg) = run::load_config(config.config.as_deref())?;
    AdminStore::open(&path, &cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand says what it does and every flag and argument what it means, as
    /// `--help` shows them (clap's own `--help`/`--version` excepted).
    #[test]
    fn every_subcommand_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("subcommand `{p}`"));
                }
                walk(sub, &p, missing);
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("`{path}` argument `{id}`"));
                }
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "onboarding-endpoint", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_exit_2_wherever_they_are_wrapped() {
        let e = anyhow::Error::new(RunError::Usage("bad field".into()));
        assert_eq!(exit_code(&e), EXIT_USAGE);
        assert_eq!(exit_code(&e.context("while starting")), EXIT_USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("cannot bind")), EXIT_FAILURE);
        let failed = RunError::Failed("cannot bind".into());
        assert_eq!(exit_code(&anyhow::Error::new(failed)), EXIT_FAILURE);
        // The marker is invisible in the message.
        let e = anyhow::Error::new(RunError::Usage(
            anyhow::Error::new(std::io::Error::other("no such file"))
                .context("cannot read x")
                .into(),
        ));
        assert_eq!(cli::error_chain(e.as_ref()), "cannot read x: no such file");
    }
}
