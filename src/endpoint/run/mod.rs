//! `onboarding-endpoint serve` and the operator's commands on the configured store, as library
//! code the binary only wires up: pick the store, build the session tokens, the TLS config,
//! the authentication and the service, then serve until a signal. The decisions (which
//! certificate, the instance name, the service's settings, which errors are the user's to
//! fix) are plain functions with unit tests below; `file` and `kube` hold what differs
//! between the two stores.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::endpoint::cloud::CloudAuth;
use crate::endpoint::config::{EndpointConfig, LogFormat, LoggingConfig, TlsFiles};
use crate::endpoint::dev_certs::{self, CertSource};
use crate::endpoint::render::Renderer;
use crate::endpoint::server::{self, ServerOptions};
use crate::endpoint::service::{Service, ServiceSettings};
use crate::endpoint::tls;
use crate::identity::jwt::JwtVerifier;
use crate::store::Store;
use crate::token;

pub mod admin;
mod file;
mod kube;

pub use file::file_store_config;

/// Any error, kept with its chain of causes for the one-line message the binary prints.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why `serve` (or an operator command) stopped. The binary prints the message with its
/// causes and exits 2 for [`RunError::Usage`], 1 otherwise.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The command line or the configuration (or a file it names) must be fixed.
    #[error(transparent)]
    Usage(BoxError),
    /// A failure at run time (retrying may help).
    #[error(transparent)]
    Failed(BoxError),
    /// A failure at run time, saying what was being done.
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: BoxError,
    },
}

impl RunError {
    /// Whether the user must fix the command line or a file (the systemd unit does not
    /// restart on that exit status).
    pub fn is_usage(&self) -> bool {
        matches!(self, RunError::Usage(_))
    }
}

pub(crate) fn usage(e: impl Into<BoxError>) -> RunError {
    RunError::Usage(e.into())
}

pub(crate) fn failed(e: impl Into<BoxError>) -> RunError {
    RunError::Failed(e.into())
}

/// `map_err(context("cannot ..."))`: the error under a line saying what was being done.
pub(crate) fn context<E: Into<BoxError>>(context: impl Into<String>) -> impl FnOnce(E) -> RunError {
    let context = context.into();
    move |e| RunError::Context {
        context,
        source: e.into(),
    }
}

/// Where `serve` and the operator's commands look without `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/onboarding-endpoint/endpoint.yaml";

/// Loads the configuration named by `--config`, or the default one. Every failure here is
/// a configuration error (exit 2); a missing default file says how to name another.
pub fn load_config(config: Option<&Path>) -> Result<(PathBuf, EndpointConfig), RunError> {
    let path = config.map_or_else(|| PathBuf::from(DEFAULT_CONFIG), Path::to_path_buf);
    if config.is_none() && !path.exists() {
        return Err(usage(format!(
            "no configuration file at {DEFAULT_CONFIG} (the default): pass --config FILE to name the endpoint's configuration"
        )));
    }
    let cfg = EndpointConfig::load(&path).map_err(usage)?;
    Ok((path, cfg))
}

/// The tracing subscriber the configuration asks for (`RUST_LOG` wins over its level).
pub fn init_logging(logging: &LoggingConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: never in the journal, a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// `serve`: the endpoint over the configured store until SIGTERM or SIGINT.
pub fn serve(config_path: &Path, cfg: &EndpointConfig, dev: bool) -> Result<(), RunError> {
    // One crypto provider for the whole process (see docs/architecture.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(context("cannot start the async runtime"))?;
    match (&cfg.store.file, &cfg.store.kube) {
        (Some(f), _) => file::serve(cfg, f, config_path, dev, &rt),
        (None, Some(k)) => kube::serve(cfg, k, config_path, dev, &rt),
        (None, None) => Err(no_store(config_path)),
    }
}

pub(crate) fn no_store(config_path: &Path) -> RunError {
    usage(format!("{}: no store configured", config_path.display()))
}

/// Which certificate and key files the server presents: the configured ones, else (with
/// `--dev`) the development certificate in the file store's state directory (`None` with a
/// store that has none). Anything else is the configuration's to fix.
pub fn tls_plan(
    tls: Option<&TlsFiles>,
    dev: bool,
    state_dir: Option<&Path>,
    hostname: &str,
    config_path: &Path,
) -> Result<CertSource, RunError> {
    if tls.is_none() && dev && state_dir.is_none() {
        return Err(usage(format!(
            "{}: --dev keeps its certificate in the file store's state directory; with store.kube \
             give the endpoint tls.certFile/tls.keyFile (a Secret mounted in the pod)",
            config_path.display()
        )));
    }
    // Without a state directory `--dev` was refused above, so the directory is never used.
    match dev_certs::cert_source(tls, dev, state_dir.unwrap_or(Path::new("")), hostname) {
        CertSource::Missing => Err(missing_tls(config_path)),
        source => Ok(source),
    }
}

fn missing_tls(config_path: &Path) -> RunError {
    usage(format!(
        "{}: no tls.certFile/tls.keyFile configured. Give the endpoint a certificate \
         (see docs/endpoint.md), or pass --dev for a local trial with a self-signed one",
        config_path.display()
    ))
}

fn tls_config(
    cfg: &EndpointConfig,
    config_path: &Path,
    dev: bool,
    state_dir: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, RunError> {
    let (cert_file, key_file): (PathBuf, PathBuf) = match tls_plan(
        cfg.tls.as_ref(),
        dev,
        state_dir,
        &hostname(),
        config_path,
    )? {
        CertSource::Configured(t) => (t.cert_file, t.key_file),
        CertSource::Dev { dir, names } => {
            let (ca, crt, key) = dev_certs::dev_certificate(&dir, &names).map_err(failed)?;
            tracing::warn!(ca = %ca.display(), "--dev: serving a self-signed development certificate; agents must trust this CA");
            println!("dev CA: {}", ca.display());
            (crt, key)
        }
        CertSource::Missing => return Err(missing_tls(config_path)),
    };
    // The certificate and key are files the configuration names: a bad one is the
    // configuration's error.
    tls::server_config(
        tls::load_certs(&cert_file).map_err(usage)?,
        tls::load_key(&key_file).map_err(usage)?,
    )
    .map_err(usage)
}

/// The name this instance gives itself in WARs (`connectedTo`): the configured one, else the
/// pod name the downward API puts in `ONBOARDING_ENDPOINT_INSTANCE`, else the host name.
pub fn instance_name(
    configured: Option<&str>,
    from_env: Option<String>,
    hostname: impl FnOnce() -> String,
) -> String {
    configured
        .map(str::to_string)
        .or(from_env)
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(hostname)
}

/// The service's settings from the configuration.
pub fn service_settings(cfg: &EndpointConfig, plane_uid: &str, instance: &str) -> ServiceSettings {
    let r = &cfg.registration;
    ServiceSettings {
        plane_uid: plane_uid.to_string(),
        instance: instance.to_string(),
        grace_period: r.grace_period.as_std(),
        propagation_delay: r.propagation_delay.as_std(),
        keep_alive_interval: r.keep_alive_interval.as_std(),
        keep_alive_timeout: r.keep_alive_timeout(),
        allow_loopback_addresses: r.allow_loopback_addresses,
    }
}

/// The HTTPS server's limits from the configuration.
pub fn server_options(cfg: &EndpointConfig) -> ServerOptions {
    ServerOptions {
        max_body_bytes: cfg.server.max_body_bytes,
        request_timeout: cfg.server.request_timeout.as_std(),
        handshake_timeout: cfg.server.handshake_timeout.as_std(),
        max_connections: cfg.server.max_connections,
        local_repository: cfg.local_repository.as_ref().map(|r| r.directory.clone()),
    }
}

/// Everything after the store: authentication, the service, the cleanup loop, the server.
async fn run_endpoint<S: Store>(
    cfg: &EndpointConfig,
    config_path: &Path,
    store: S,
    plane_uid: String,
    tokens: token::SessionTokens,
    tls_cfg: Arc<rustls::ServerConfig>,
) -> Result<(), RunError> {
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
        .map_err(|e| usage(format!("{}: {e}", config_path.display())))?;
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
    let instance = instance_name(
        cfg.instance_name.as_deref(),
        std::env::var("ONBOARDING_ENDPOINT_INSTANCE").ok(),
        hostname,
    );
    let settings = service_settings(cfg, &plane_uid, &instance);
    let svc =
        Arc::new(Service::new(store, settings.clone(), tokens, jwt, renderer).with_cloud(cloud));

    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(context(format!("cannot listen on {}", cfg.listen)))?;
    let addr = listener.local_addr().map_err(failed)?;
    // Tests and scripts read this line to learn the port when listening on :0.
    println!(
        "onboarding-endpoint listening on https://{addr} plane-uid={plane_uid} instance={instance}"
    );
    tracing::info!(%addr, %plane_uid, %instance, "serving");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let sweeper = {
        let svc = svc.clone();
        let every = crate::registration::connection::sweep_interval(
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
    let server = tokio::spawn(server::serve(
        listener,
        tls_cfg,
        svc,
        server_options(cfg),
        rx,
    ));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = tx.send(true);
    let _ = sweeper.await;
    let _ = server.await;
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "onboarding-endpoint".into())
}

#[cfg(test)]
mod tests;
