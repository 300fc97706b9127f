//! `onboarding-endpoint`: the server agents onboard through, and the operator's tools around
//! it (offline rendering, listing registrations).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use workload_onboarding::endpoint::cloud::CloudAuth;
use workload_onboarding::endpoint::config::{EndpointConfig, LogFormat};
use workload_onboarding::endpoint::render::Renderer;
use workload_onboarding::endpoint::server::{self, ServerOptions};
use workload_onboarding::endpoint::service::{Service, ServiceSettings};
use workload_onboarding::endpoint::{cli, dev_certs, plane, tls};
use workload_onboarding::identity::jwt::JwtVerifier;
use workload_onboarding::store::Store;
use workload_onboarding::store::file::{self, FileStore, FileStoreConfig};
use workload_onboarding::store::kube::{self as kube_store, KubeStore};
use workload_onboarding::token;

// The offline commands live beside this file (a directory of its own would be
// `onboarding-endpoint/main.rs`; the path keeps this file where it is).
#[path = "onboarding-endpoint/render.rs"]
mod render;
#[path = "onboarding-endpoint/verify.rs"]
mod verify;

const DEFAULT_CONFIG: &str = "/etc/onboarding-endpoint/endpoint.yaml";

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
    Describe {
        /// Resource type: `war` (or `workloadautoregistration`).
        resource: String,
        /// The registration's name (as `get war` lists it).
        name: String,
        /// Namespace of the registration.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the CustomResourceDefinitions (OnboardingPolicy, WorkloadAutoRegistration) as
    /// YAML, for `kubectl apply -f -`.
    Crds,
    /// Operator tools for host identities.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Delete a registration (and its WorkloadEntry); its agent onboards again.
    Delete {
        /// Resource type: `war` (or `workloadautoregistration`).
        resource: String,
        /// The registration's name (as `get war` lists it).
        name: String,
        /// Namespace of the registration.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the version of this binary.
    Version,
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

/// Marks an error as the user's to fix (the command line or the configuration): exit 2.
/// It shows as the error it wraps, with the same causes.
#[derive(Debug)]
struct UsageError(anyhow::Error);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for UsageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

fn usage(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(UsageError(e.into()))
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if e.chain().any(|c| c.is::<UsageError>()) {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
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
            emit(&format!(
                "onboarding-endpoint {}\n",
                env!("CARGO_PKG_VERSION")
            ));
            Ok(())
        }
        Command::Serve { config, dev } => serve(&config, dev),
        Command::Render(args) => render::run(&args),
        Command::Crds => {
            print!(
                "{}",
                kube_store::crds::crds_yaml().map_err(|e| anyhow::anyhow!("{e}"))?
            );
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
            check_resource(&resource)?;
            if name.is_some() && all_namespaces {
                return Err(usage(anyhow::anyhow!(
                    "a registration cannot be retrieved by name across all namespaces: give -n NAMESPACE instead of -A"
                )));
            }
            let store = open_store(&config)?;
            let ns = if all_namespaces {
                None
            } else {
                Some(namespace.unwrap_or_else(|| "default".into()))
            };
            let wars = match &name {
                Some(name) => {
                    let ns = ns.as_deref().unwrap_or("default");
                    match store.get_war(ns, name)? {
                        Some(w) => vec![w],
                        None => return Err(not_found(name, ns)),
                    }
                }
                None => store.list_wars(ns.as_deref())?,
            };
            let output = match output {
                None => cli::Output::Table,
                Some(OutputArg::Wide) => cli::Output::Wide,
                Some(OutputArg::Yaml) => cli::Output::Yaml,
                Some(OutputArg::Json) => cli::Output::Json,
                Some(OutputArg::Name) => cli::Output::Name,
            };
            let tabular = matches!(output, cli::Output::Table | cli::Output::Wide);
            if wars.is_empty() && tabular {
                match &ns {
                    Some(ns) => eprintln!("No resources found in {ns} namespace."),
                    None => eprintln!("No resources found"),
                }
                return Ok(());
            }
            let text = cli::get_output(
                &wars,
                name.is_some(),
                output,
                all_namespaces,
                std::time::SystemTime::now(),
            )
            .context("cannot print the registrations")?;
            emit(&text);
            Ok(())
        }
        Command::Describe {
            resource,
            name,
            namespace,
            config,
        } => {
            check_resource(&resource)?;
            let store = open_store(&config)?;
            match store.get_war(&namespace, &name)? {
                Some(w) => {
                    emit(&cli::describe(&w));
                    Ok(())
                }
                None => Err(not_found(&name, &namespace)),
            }
        }
        Command::Delete {
            resource,
            name,
            namespace,
            config,
        } => {
            check_resource(&resource)?;
            let store = open_store(&config)?;
            if store.delete_registration(&namespace, &name)? {
                emit(&format!("workloadautoregistration \"{name}\" deleted\n"));
                Ok(())
            } else {
                Err(not_found(&name, &namespace))
            }
        }
    }
}

fn not_found(name: &str, namespace: &str) -> anyhow::Error {
    anyhow::anyhow!("workloadautoregistration {name:?} not found in namespace {namespace}")
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

fn check_resource(r: &str) -> Result<()> {
    match r {
        "war" | "wars" | "workloadautoregistration" | "workloadautoregistrations" => Ok(()),
        other => Err(usage(anyhow::anyhow!(
            "unknown resource {other:?}: this tool manages `war` (WorkloadAutoRegistration)"
        ))),
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(f))
        .unwrap_or_else(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(EXIT_FAILURE)
        })
}

/// Loads the configuration named by `--config`, or the default one. Every failure here is
/// a configuration error (exit 2); a missing default file says how to name another.
fn load_config(arg: &ConfigArg) -> Result<(PathBuf, EndpointConfig)> {
    let path = arg
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    if arg.config.is_none() && !path.exists() {
        return Err(usage(anyhow::anyhow!(
            "no configuration file at {DEFAULT_CONFIG} (the default): pass --config FILE to name the endpoint's configuration"
        )));
    }
    let cfg = EndpointConfig::load(&path).map_err(usage)?;
    Ok((path, cfg))
}

/// The store the CLI's `get`/`describe`/`delete` read, as configured, with the one runtime
/// its calls run on (a kube client's connection tasks live on the runtime that made it).
struct CliStore {
    rt: tokio::runtime::Runtime,
    store: AnyStore,
}

enum AnyStore {
    File(FileStore),
    Kube(KubeStore),
}

impl CliStore {
    fn get_war(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<workload_onboarding::api::registration::WorkloadAutoRegistration>> {
        Ok(self.rt.block_on(async {
            match &self.store {
                AnyStore::File(s) => s.get_war(namespace, name).await,
                AnyStore::Kube(s) => s.get_war(namespace, name).await,
            }
        })?)
    }

    fn list_wars(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<workload_onboarding::api::registration::WorkloadAutoRegistration>> {
        Ok(self.rt.block_on(async {
            match &self.store {
                AnyStore::File(s) => s.list_wars(namespace).await,
                AnyStore::Kube(s) => s.list_wars(namespace).await,
            }
        })?)
    }

    fn delete_registration(&self, namespace: &str, name: &str) -> Result<bool> {
        Ok(self.rt.block_on(async {
            match &self.store {
                AnyStore::File(s) => s.delete_registration(namespace, name).await,
                AnyStore::Kube(s) => s.delete_registration(namespace, name).await,
            }
        })?)
    }
}

fn open_store(config: &ConfigArg) -> Result<CliStore> {
    let (path, cfg) = load_config(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let store = match (&cfg.store.file, &cfg.store.kube) {
        (Some(f), _) => {
            let (store, _problems) = FileStore::open(file_store_config(&cfg, f))?;
            AnyStore::File(store)
        }
        (None, Some(k)) => {
            let client = rt.block_on(kube_store::client(k))?;
            AnyStore::Kube(KubeStore::new(client, k, &cfg.mesh.istio_namespace))
        }
        (None, None) => {
            return Err(usage(anyhow::anyhow!(
                "{}: no store configured",
                path.display()
            )));
        }
    };
    Ok(CliStore { rt, store })
}

fn file_store_config(
    cfg: &EndpointConfig,
    f: &workload_onboarding::endpoint::config::FileStoreSettings,
) -> FileStoreConfig {
    FileStoreConfig {
        config_dir: f.config_dir.clone(),
        state_dir: f.state_dir.clone(),
        istio_namespace: cfg.mesh.istio_namespace.clone(),
        istio_token: cfg.istio_token.clone().unwrap_or(file::IstioTokenSource {
            file: None,
            command: None,
            expiration: None,
        }),
        manifest_limits: workload_onboarding::store::manifests::ManifestLimits {
            max_file_bytes: f.max_manifest_bytes,
            max_documents: f.max_manifest_documents,
        },
    }
}

fn init_logging(cfg: &EndpointConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: never in the journal, a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(config: &ConfigArg, dev: bool) -> Result<()> {
    let (config_path, cfg) = load_config(config)?;
    let config_path = config_path.as_path();
    init_logging(&cfg);
    // One crypto provider for the whole process (see docs/architecture.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match (&cfg.store.file, &cfg.store.kube) {
        (Some(f), _) => serve_file(&cfg, f, config_path, dev, &rt),
        (None, Some(k)) => serve_kube(&cfg, k, config_path, dev, &rt),
        (None, None) => Err(usage(anyhow::anyhow!(
            "{}: no store configured",
            config_path.display()
        ))),
    }
}

fn serve_file(
    cfg: &EndpointConfig,
    f: &workload_onboarding::endpoint::config::FileStoreSettings,
    config_path: &Path,
    dev: bool,
    rt: &tokio::runtime::Runtime,
) -> Result<()> {
    let state = &f.state_dir;
    std::fs::create_dir_all(state)
        .with_context(|| format!("cannot create state directory {}", state.display()))?;

    let plane_uid = plane::plane_uid(cfg.plane_uid.as_deref(), state)?;
    let key_path = plane::signing_key_path(cfg.token_issuer.signing_key_file.as_deref(), state);
    let key_pem = plane::signing_key(&key_path)?;
    let tokens = token::SessionTokens::from_pem(
        key_pem.pem(),
        &plane_uid,
        cfg.token_issuer.expiration.as_std(),
    )
    .with_context(|| format!("session signing key {}", key_path.display()))?;
    let tls_cfg = tls_config(cfg, config_path, dev, Some(state))?;
    if cfg.istio_token.is_none() {
        tracing::warn!("no istioToken source configured: sidecars get an empty istio-token");
    }

    let (store, problems) = FileStore::open(file_store_config(cfg, f))?;
    log_problems(&problems);
    recover_state(&store)?;
    let _watcher = file::watch(store.clone(), |p| {
        tracing::info!("config directory changed; reloaded");
        log_problems(&p);
    })
    .context("cannot watch the config directory")?;
    rt.block_on(run_endpoint(
        cfg,
        config_path,
        store,
        plane_uid,
        tokens,
        tls_cfg,
    ))
}

fn serve_kube(
    cfg: &EndpointConfig,
    k: &kube_store::KubeStoreSettings,
    config_path: &Path,
    dev: bool,
    rt: &tokio::runtime::Runtime,
) -> Result<()> {
    let tls_cfg = tls_config(cfg, config_path, dev, None)?;
    rt.block_on(async {
        let client = kube_store::client(k).await?;
        let namespace = client.default_namespace().to_string();
        // Every replica must sign and check session tokens with one key under one plane
        // UID: both live in a Secret of the endpoint's namespace (created once).
        let shared =
            kube_store::plane::load_or_create(&client, &namespace, &k.state_secret, || {
                Ok(kube_store::plane::PlaneState {
                    plane_uid: uuid::Uuid::new_v4().to_string(),
                    signing_key_pem: token::generate_signing_key_pem()
                        .map_err(|e| e.to_string())?,
                })
            })
            .await?;
        let plane_uid = cfg.plane_uid.clone().unwrap_or(shared.plane_uid);
        let key_pem = match &cfg.token_issuer.signing_key_file {
            Some(p) => std::fs::read_to_string(p).with_context(|| {
                format!("cannot read tokenIssuer.signingKeyFile {}", p.display())
            })?,
            None => shared.signing_key_pem,
        };
        let tokens = token::SessionTokens::from_pem(
            &key_pem,
            &plane_uid,
            cfg.token_issuer.expiration.as_std(),
        )
        .with_context(|| {
            format!(
                "session signing key in Secret {namespace}/{}",
                k.state_secret
            )
        })?;
        let store = KubeStore::new(client, k, &cfg.mesh.istio_namespace);
        store.start_watches(&cfg.mesh.istio_namespace);
        run_endpoint(cfg, config_path, store, plane_uid, tokens, tls_cfg).await
    })
}

fn tls_config(
    cfg: &EndpointConfig,
    config_path: &Path,
    dev: bool,
    state: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>> {
    let (cert_file, key_file) = match (&cfg.tls, dev, state) {
        (Some(t), _, _) => (t.cert_file.clone(), t.key_file.clone()),
        (None, true, Some(state)) => {
            let (ca, crt, key) = dev_certs::dev_certificate(
                &state.join("dev-tls"),
                &dev_certs::dev_names(&hostname()),
            )?;
            tracing::warn!(ca = %ca.display(), "--dev: serving a self-signed development certificate; agents must trust this CA");
            println!("dev CA: {}", ca.display());
            (crt, key)
        }
        (None, true, None) => {
            return Err(usage(anyhow::anyhow!(
                "{}: --dev keeps its certificate in the file store's state directory; with store.kube \
                 give the endpoint tls.certFile/tls.keyFile (a Secret mounted in the pod)",
                config_path.display()
            )));
        }
        (None, false, _) => {
            return Err(usage(anyhow::anyhow!(
                "{}: no tls.certFile/tls.keyFile configured. Give the endpoint a certificate \
                 (see docs/endpoint.md), or pass --dev for a local trial with a self-signed one",
                config_path.display()
            )));
        }
    };
    // The certificate and key are files the configuration names: a bad one is the
    // configuration's error.
    tls::server_config(
        tls::load_certs(&cert_file).map_err(usage)?,
        tls::load_key(&key_file).map_err(usage)?,
    )
    .map_err(usage)
}

/// Everything after the store: authentication, the service, the cleanup loop, the server.
async fn run_endpoint<S: Store>(
    cfg: &EndpointConfig,
    config_path: &Path,
    store: S,
    plane_uid: String,
    tokens: token::SessionTokens,
    tls_cfg: Arc<rustls::ServerConfig>,
) -> Result<()> {
    let jwt = if cfg.authentication.jwt.issuers.is_empty() {
        None
    } else {
        let v = JwtVerifier::new(&cfg.authentication.jwt.issuers).map_err(usage)?;
        let prefetch = tokio::task::block_in_place(|| v.prefetch());
        for (issuer, problem) in prefetch {
            tracing::warn!(%issuer, %problem, "cannot fetch the issuer's keys yet; will retry on first use");
        }
        Some(v)
    };
    let cloud = CloudAuth::from_config(&cfg.authentication, &|name| std::env::var(name).ok())
        .map_err(|e| usage(anyhow::anyhow!("{}: {e}", config_path.display())))?;
    let cloud_platforms = cloud.platforms();
    if jwt.is_none() && cloud_platforms.is_empty() {
        tracing::warn!(
            "no trusted JWT issuers and no cloud platform configured: no host can onboard"
        );
    }
    if !cloud_platforms.is_empty() {
        tracing::info!(platforms = ?cloud_platforms, one_session_per_host = cloud.one_session_per_host, "cloud platforms enabled");
    }
    if let Some(ec2) = &cloud.ec2
        && ec2.api.is_none()
    {
        tracing::info!(
            "authentication.aws.api is not set: EC2 IAM roles are unknown, so policies listing ec2.iamRoleNames will not match"
        );
    }

    let renderer = Renderer::new(cfg.templates.dir.as_deref(), cfg.mesh.clone()).map_err(usage)?;
    // In a pod, the downward API gives the pod name (packaging/kubernetes/deployment.yaml).
    let instance = cfg
        .instance_name
        .clone()
        .or_else(|| std::env::var("ONBOARDING_ENDPOINT_INSTANCE").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(hostname);
    let settings = ServiceSettings {
        plane_uid: plane_uid.clone(),
        instance: instance.clone(),
        grace_period: cfg.registration.grace_period.as_std(),
        propagation_delay: cfg.registration.propagation_delay.as_std(),
        keep_alive_interval: cfg.registration.keep_alive_interval.as_std(),
        keep_alive_timeout: cfg.registration.keep_alive_timeout(),
        allow_loopback_addresses: cfg.registration.allow_loopback_addresses,
    };
    let svc =
        Arc::new(Service::new(store, settings.clone(), tokens, jwt, renderer).with_cloud(cloud));
    let opts = ServerOptions {
        max_body_bytes: cfg.server.max_body_bytes,
        request_timeout: cfg.server.request_timeout.as_std(),
        handshake_timeout: cfg.server.handshake_timeout.as_std(),
        max_connections: cfg.server.max_connections,
        local_repository: cfg.local_repository.as_ref().map(|r| r.directory.clone()),
    };

    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when listening on :0.
    println!(
        "onboarding-endpoint listening on https://{addr} plane-uid={plane_uid} instance={instance}"
    );
    tracing::info!(%addr, %plane_uid, %instance, "serving");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let sweeper = {
        let svc = svc.clone();
        let every = workload_onboarding::registration::connection::sweep_interval(
            settings.keep_alive_timeout,
            settings.grace_period,
        );
        let mut rx = rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = rx.changed() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = svc.sweep().await {
                    tracing::error!(error = %e, "cleanup pass failed");
                }
            }
        })
    };
    let server = tokio::spawn(server::serve(listener, tls_cfg, svc, opts, rx));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = tx.send(true);
    let _ = sweeper.await;
    let _ = server.await;
    Ok(())
}

/// Repairs what a crash may have left in the state directory, before serving.
fn recover_state(store: &FileStore) -> Result<()> {
    let r = block_on(store.recover()).context("cannot repair the state directory")?;
    for p in &r.problems {
        tracing::warn!("{p}");
    }
    if r.stale_temps + r.entries_repaired + r.orphans_removed > 0 {
        tracing::info!(
            stale_temps = r.stale_temps,
            entries_repaired = r.entries_repaired,
            orphans_removed = r.orphans_removed,
            "repaired the state directory after an interrupted run"
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn log_problems(problems: &[workload_onboarding::store::manifests::Problem]) {
    for p in problems {
        if p.is_error {
            tracing::error!("{p}");
        } else {
            tracing::warn!("{p}");
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "onboarding-endpoint".into())
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
        let e = usage(anyhow::anyhow!("bad field"));
        assert_eq!(exit_code(&e), EXIT_USAGE);
        assert_eq!(exit_code(&e.context("while starting")), EXIT_USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("cannot bind")), EXIT_FAILURE);
        // The marker is invisible in the message.
        let e = usage(
            anyhow::Error::new(std::io::Error::other("no such file")).context("cannot read x"),
        );
        assert_eq!(cli::error_chain(e.as_ref()), "cannot read x: no such file");
    }
}
