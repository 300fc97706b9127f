//! The main loop: discover -> authorize -> register -> write -> restart -> stay connected.
//!
//! One thread does all the work and sleeps on a channel until the next deadline (keep-alive,
//! session token renewal, istio-token refresh) or an event (signal, config change), so an
//! idle agent wakes up only for its keep-alives.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::client::{self, Client, ClientError};
use super::config::{self, Loaded};
use super::credential::{self, CredentialError, CredentialProvider};
use super::files::{self, FilesError};
use super::hostinfo::{self, Filters, HostInfoError};
use super::hosts::{self, HostsError};
use super::sidecar;
use super::state::{Phase, State};
use crate::api::meta::NamespacedName;
use crate::api::protocol::{Bootstrap, ErrorCode};
use crate::api::registration::{
    AgentInfo, HostInfo, IstioSidecarInfo, Registration, Settings, SidecarInfo, WorkloadInfo,
};

/// What wakes the main loop besides its own deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Signal(libc::c_int),
    ConfigChanged,
}

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub request: config::Request,
    /// Prefix for every host path the agent writes (`/` on a real host).
    pub root: PathBuf,
    pub state_file: PathBuf,
    /// Overrides `sidecar.restartCommand` of the agent config.
    pub restart_command: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    HostInfo(#[from] HostInfoError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Hosts(#[from] HostsError),
}

impl AgentError {
    fn code(&self) -> Option<ErrorCode> {
        match self {
            AgentError::Client(c) => c.code(),
            _ => None,
        }
    }
}

/// When to renew something that expires at `expires`: once four fifths of the remaining
/// lifetime have passed (a 1h token at 48m), but never leaving less than half of it or 30s,
/// whichever is smaller (a 60s token at 30s, a 4s test token at 2s): a busy host or a slow
/// endpoint must still have time to fetch, and to retry, before the old one runs out.
pub fn renewal_delay(now: SystemTime, expires: SystemTime) -> Duration {
    let remaining = expires.duration_since(now).unwrap_or_default();
    let lead = (remaining / 5).max((remaining / 2).min(Duration::from_secs(30)));
    remaining.saturating_sub(lead)
}

struct Session {
    token: String,
    registration: NamespacedName,
    interval: Duration,
    renew_token_at: Instant,
    next_keep_alive: Instant,
    refresh_bootstrap_at: Option<Instant>,
}

impl Session {
    fn next_deadline(&self) -> Instant {
        let mut d = self.next_keep_alive.min(self.renew_token_at);
        if let Some(r) = self.refresh_bootstrap_at {
            d = d.min(r);
        }
        d
    }
}

enum Wake {
    Deadline,
    Stop(libc::c_int),
    Reload,
}

pub struct Daemon {
    opts: Options,
    cfg: Loaded,
    client: Client,
    providers: Vec<Box<dyn CredentialProvider>>,
    filters: Filters,
    restart_command: Vec<String>,
    sidecar_version: String,
    state: State,
    events: Receiver<Event>,
    backoff: Backoff,
    session: Option<Session>,
}

/// Errors that stop the agent before it starts (bad configuration).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{origin}: {detail}")]
    Config { origin: String, detail: String },
}

impl Daemon {
    pub fn new(opts: Options, cfg: Loaded, events: Receiver<Event>) -> Result<Daemon, StartError> {
        let agent_origin = cfg
            .agent_origin
            .as_ref()
            .map(|o| o.to_string())
            .unwrap_or_else(|| format!("{} (not present)", config::DEFAULT_AGENT_CONFIG));
        let endpoints = credential::CloudEndpoints::from_env(&|name| std::env::var(name).ok());
        let providers =
            credential::for_host(cfg.agent.host.as_ref(), cfg.plugin_timeout(), &endpoints)
                .map_err(|e| StartError::Config {
                    origin: agent_origin.clone(),
                    detail: format!("host.custom.credential: {e}"),
                })?;
        let (include, exclude) = cfg.interface_filters();
        let filters = Filters::new(&include, &exclude).map_err(|e| StartError::Config {
            origin: agent_origin.clone(),
            detail: e.to_string(),
        })?;
        let client = build_client(&cfg).map_err(|e| StartError::Config {
            origin: cfg.onboarding_origin.to_string(),
            detail: e.to_string(),
        })?;
        let restart_command = opts
            .restart_command
            .clone()
            .unwrap_or_else(|| cfg.restart_command());
        let (initial, max) = cfg.retry_bounds();
        let previous = State::load_previous(&opts.state_file);
        let state = State {
            pid: std::process::id(),
            phase: Phase::Starting,
            // A previous run may have died between writing files and restarting.
            restart_pending: previous.as_ref().is_some_and(|p| p.restart_pending),
            last_sidecar_restart: previous.and_then(|p| p.last_sidecar_restart),
            ..State::default()
        };
        Ok(Daemon {
            opts,
            cfg,
            client,
            providers,
            filters,
            restart_command,
            sidecar_version: sidecar::installed_version(),
            state,
            events,
            backoff: Backoff::new(initial, max),
            session: None,
        })
    }

    /// Runs until SIGTERM/SIGINT; returns after unregistering.
    pub fn run(mut self) {
        self.state.endpoint = Some(endpoint_name(&self.cfg));
        self.state.workload_group = Some(self.cfg.onboarding.workload_group.to_string());
        self.save_state();
        loop {
            let deadline = match &self.session {
                None => match self.onboard() {
                    Ok(session) => {
                        self.backoff.reset();
                        self.session = Some(session);
                        continue;
                    }
                    Err(e) => {
                        let delay = self.backoff.next_delay();
                        self.failed("onboarding", &e, delay);
                        Instant::now() + delay
                    }
                },
                Some(s) => s.next_deadline(),
            };
            match self.wait_until(deadline) {
                Wake::Deadline => {
                    if self.session.is_some() {
                        self.tick();
                    }
                }
                Wake::Reload => self.reload(),
                Wake::Stop(sig) => {
                    self.shutdown(sig);
                    return;
                }
            }
        }
    }

    fn failed(&mut self, what: &str, e: &AgentError, retry_in: Duration) {
        warn!(
            "{what} failed: {e}; retrying in {:.1}s",
            retry_in.as_secs_f64()
        );
        self.state.set_error(format!("{what}: {e}"));
        if self.session.is_some() {
            self.state.phase = Phase::Reconnecting;
        }
        self.save_state();
    }

    fn save_state(&mut self) {
        if let Err(e) = self.state.save(&self.opts.state_file) {
            warn!("{e}");
        }
    }

    fn wait_until(&mut self, deadline: Instant) -> Wake {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(timeout) {
            Ok(Event::Signal(libc::SIGHUP)) => Wake::Reload,
            Ok(Event::Signal(sig)) => Wake::Stop(sig),
            Ok(Event::ConfigChanged) => {
                // Editors write in several steps; let them finish before reading the file.
                loop {
                    match self.events.recv_timeout(Duration::from_millis(200)) {
                        Ok(Event::Signal(libc::SIGHUP)) | Ok(Event::ConfigChanged) => {}
                        Ok(Event::Signal(sig)) => return Wake::Stop(sig),
                        Err(_) => return Wake::Reload,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => Wake::Deadline,
            // Every sender is gone (cannot happen while the signal thread lives): stop cleanly.
            Err(RecvTimeoutError::Disconnected) => Wake::Stop(libc::SIGTERM),
        }
    }

    fn registration(&self) -> Result<Registration, AgentError> {
        let found = hostinfo::select(&hostinfo::interface_addrs()?, &self.filters);
        let addresses = hostinfo::for_registration(found, self.cfg.connected_over())?;
        let labels = self
            .cfg
            .onboarding
            .workload
            .as_ref()
            .map(|w| w.labels.clone())
            .unwrap_or_default();
        Ok(Registration {
            agent: AgentInfo {
                version: super::VERSION.to_string(),
            },
            sidecar: SidecarInfo {
                istio: IstioSidecarInfo {
                    version: self.sidecar_version.clone(),
                    revision: self.cfg.revision(),
                },
            },
            host: HostInfo { addresses },
            workload: (!labels.is_empty()).then_some(WorkloadInfo { labels }),
            settings: Some(Settings {
                connected_over: Some(self.cfg.connected_over()),
            }),
        })
    }

    fn onboard(&mut self) -> Result<Session, AgentError> {
        self.state.phase = Phase::Onboarding;
        info!(
            "obtaining discovery information from the onboarding endpoint {}",
            self.client.base_url()
        );
        let discovery = self.client.discovery()?;
        self.state.plane_uid = Some(discovery.plane_uid.clone());
        self.state.connected_to = Some(discovery.instance.clone());

        let (credential, source) =
            credential::obtain_with_nonce(&self.providers, &discovery.plane_uid, &|| self.nonce())?;
        info!(
            "requesting authorization to join {} with the credential from {source}",
            self.cfg.onboarding.workload_group
        );
        let auth = self
            .client
            .authorize(&self.cfg.onboarding.workload_group, credential)?;
        let registration = self.registration()?;
        let reg = self.client.register(&auth.token, &registration)?;
        info!(
            "registered as {} ({}); keep-alive every {}s",
            reg.registration,
            if reg.reused {
                "existing registration reused"
            } else {
                "new registration"
            },
            reg.keep_alive.interval_seconds
        );
        let refresh_bootstrap_at = self.apply_bootstrap(&reg.bootstrap)?;
        let now = Instant::now();
        let interval = Duration::from_secs(reg.keep_alive.interval_seconds.max(1));
        self.state.registration = Some(reg.registration.to_string());
        self.state.token_expires_at = Some(auth.expires_at.clone());
        self.state.phase = Phase::Connected;
        self.state.connected_since = Some(crate::timestamp::now());
        self.state.last_error = None;
        self.state.last_error_at = None;
        self.save_state();
        Ok(Session {
            token: auth.token,
            registration: reg.registration,
            interval,
            renew_token_at: now + self.renewal_in(&auth.expires_at),
            next_keep_alive: now + interval,
            refresh_bootstrap_at,
        })
    }

    /// How long until a token that expires at `expires_at` (RFC 3339) should be renewed.
    fn renewal_in(&self, expires_at: &str) -> Duration {
        match crate::timestamp::parse(expires_at) {
            Some(t) => renewal_delay(SystemTime::now(), t),
            None => {
                warn!(
                    "the endpoint sent an unreadable expiry {expires_at:?}; renewing in a minute"
                );
                Duration::from_secs(60)
            }
        }
    }

    /// Writes files and the hosts block, restarts the sidecar when needed, and says when to
    /// fetch a fresh bootstrap (before the istio-token expires).
    fn apply_bootstrap(&mut self, b: &Bootstrap) -> Result<Option<Instant>, AgentError> {
        let root = self.opts.root.clone();
        files::remove_stale_temps(&root, &b.files);
        let preview = files::preview(&root, &b.files)?;
        if preview.restart_needed && !self.state.restart_pending {
            // Recorded before the first byte changes: if we die half way, the next run
            // restarts the sidecar even though the files then look unchanged.
            self.state.restart_pending = true;
            self.save_state();
        }
        let applied = files::apply(&root, &b.files)?;
        if !applied.written.is_empty() {
            info!("wrote {}", applied.written.join(", "));
        }
        let hosts_path = root.join("etc/hosts");
        match hosts::resolve_entries(&b.hosts, hosts::system_lookup) {
            Ok(entries) => {
                let (hosts_changed, rejected) = hosts::update_file(&hosts_path, &entries)?;
                for r in rejected {
                    warn!("not writing {:?} to /etc/hosts: {}", r.entry, r.reason);
                }
                if hosts_changed {
                    info!("updated the onboarding-agent block of /etc/hosts");
                }
            }
            Err(e) => {
                warn!("keeping the previous /etc/hosts block: {e}");
                self.state.set_error(format!("/etc/hosts: {e}"));
            }
        }
        self.state.istio_token_expires_at = b.istio_token_expires_at.clone();
        if self.state.restart_pending {
            self.restart_sidecar();
        }
        self.save_state();
        Ok(b.istio_token_expires_at
            .as_deref()
            .map(|t| Instant::now() + self.renewal_in(t)))
    }

    fn restart_sidecar(&mut self) {
        info!("restarting the sidecar: {}", self.restart_command.join(" "));
        match sidecar::restart(&self.restart_command, sidecar::RESTART_TIMEOUT) {
            Ok(()) => {
                self.state.restart_pending = false;
                self.state.last_sidecar_restart = Some(crate::timestamp::now());
            }
            Err(e) => {
                error!("sidecar restart failed: {e}; retrying at the next keep-alive");
                self.state.set_error(format!("sidecar restart: {e}"));
            }
        }
        self.save_state();
    }

    /// Does whatever is due.
    fn tick(&mut self) {
        let now = Instant::now();
        let (renew_due, refresh_due, keep_alive_due) = match &self.session {
            Some(s) => (
                s.renew_token_at <= now,
                s.refresh_bootstrap_at.is_some_and(|r| r <= now),
                s.next_keep_alive <= now,
            ),
            None => return,
        };
        if renew_due && let Err(e) = self.renew_token() {
            self.handle_failure("session token renewal", e, |s, at| s.renew_token_at = at);
        }
        if refresh_due
            && self.session.is_some()
            && let Err(e) = self.refresh_bootstrap()
        {
            self.handle_failure("istio-token refresh", e, |s, at| {
                s.refresh_bootstrap_at = Some(at)
            });
        }
        if keep_alive_due
            && self.session.is_some()
            && let Err(e) = self.keep_alive()
        {
            self.handle_failure("keep-alive", e, |s, at| s.next_keep_alive = at);
        }
        if self.session.is_some() && self.state.restart_pending {
            self.restart_sidecar();
        }
    }

    fn handle_failure(
        &mut self,
        what: &str,
        e: AgentError,
        reschedule: impl FnOnce(&mut Session, Instant),
    ) {
        match e.code() {
            Some(ErrorCode::RegistrationGone) => {
                warn!("{what}: the registration was deleted on the endpoint; onboarding again");
                self.state.set_error(format!("{what}: {e}"));
                self.session = None;
                self.backoff.reset();
            }
            Some(ErrorCode::SessionRevoked) => {
                // The policy no longer admits this host (or its group is gone). Retrying
                // the call cannot help; onboarding from scratch either succeeds (the policy
                // changed back) or is denied and backs off like any first onboarding.
                warn!("{what}: the endpoint revoked this session ({e}); onboarding again");
                self.state.set_error(format!("{what}: {e}"));
                self.session = None;
            }
            Some(ErrorCode::SessionExpired) | Some(ErrorCode::SessionInvalid) => {
                warn!("{what}: the session is no longer valid ({e}); authorizing again");
                let delay = self.backoff.next_delay();
                if let Some(s) = self.session.as_mut() {
                    // Renew first thing; retry the failed call right after.
                    s.renew_token_at = Instant::now();
                    reschedule(s, Instant::now() + delay.min(Duration::from_millis(100)));
                }
            }
            _ => {
                let delay = self.backoff.next_delay();
                self.failed(what, &e, delay);
                if let Some(s) = self.session.as_mut() {
                    reschedule(s, Instant::now() + delay);
                }
            }
        }
    }

    fn renew_token(&mut self) -> Result<(), AgentError> {
        let plane_uid = match &self.state.plane_uid {
            Some(p) => p.clone(),
            None => self.client.discovery()?.plane_uid,
        };
        let (credential, _) =
            credential::obtain_with_nonce(&self.providers, &plane_uid, &|| self.nonce())?;
        let auth = match &self.session {
            // Presenting the current token lets the endpoint continue this session rather
            // than refuse a second one for the same cloud host.
            Some(s) => {
                self.client
                    .renew(&self.cfg.onboarding.workload_group, credential, &s.token)?
            }
            None => self
                .client
                .authorize(&self.cfg.onboarding.workload_group, credential)?,
        };
        let renew_in = self.renewal_in(&auth.expires_at);
        info!("renewed the session token (expires {})", auth.expires_at);
        if let Some(s) = self.session.as_mut() {
            if auth.registration != s.registration {
                // The identity now maps elsewhere (the WAR was replaced): start over.
                info!(
                    "the endpoint now names registration {} (was {}); onboarding again",
                    auth.registration, s.registration
                );
                self.session = None;
                return Ok(());
            }
            s.token = auth.token;
            s.renew_token_at = Instant::now() + renew_in;
        }
        self.state.token_expires_at = Some(auth.expires_at);
        self.save_state();
        Ok(())
    }

    /// A nonce from the endpoint, for credentials that carry one (Azure).
    fn nonce(&self) -> Result<String, String> {
        self.client
            .nonce()
            .map(|n| n.nonce)
            .map_err(|e| e.to_string())
    }

    fn refresh_bootstrap(&mut self) -> Result<(), AgentError> {
        let token = match &self.session {
            Some(s) => s.token.clone(),
            None => return Ok(()),
        };
        let b = self.client.bootstrap(&token)?;
        let next = self.apply_bootstrap(&b)?;
        info!(
            "fetched a fresh bootstrap (istio-token expires {})",
            b.istio_token_expires_at.as_deref().unwrap_or("-")
        );
        if let Some(s) = self.session.as_mut() {
            s.refresh_bootstrap_at = next;
        }
        Ok(())
    }

    fn keep_alive(&mut self) -> Result<(), AgentError> {
        let token = match &self.session {
            Some(s) => s.token.clone(),
            None => return Ok(()),
        };
        let resp = self.client.keep_alive(&token)?;
        debug!("keep-alive acknowledged by {}", resp.connected_to);
        self.backoff.reset();
        let mut changed = false;
        if self.state.phase != Phase::Connected {
            info!(
                "connected to the onboarding endpoint again ({})",
                resp.connected_to
            );
            self.state.phase = Phase::Connected;
            self.state.connected_since = Some(crate::timestamp::now());
            changed = true;
        }
        if self.state.connected_to.as_deref() != Some(resp.connected_to.as_str()) {
            self.state.connected_to = Some(resp.connected_to.clone());
            changed = true;
        }
        if changed {
            self.save_state();
        }
        if let Some(s) = self.session.as_mut() {
            s.next_keep_alive = Instant::now() + s.interval;
        }
        Ok(())
    }

    fn reload(&mut self) {
        let Some(path) = self.cfg.watched_file().map(Path::to_path_buf) else {
            info!("reload requested, but the onboarding config comes from the environment");
            return;
        };
        let new = match config::load_onboarding_file(&path) {
            Ok(n) => n,
            Err(e) => {
                warn!(
                    "the onboarding config changed but is not valid; keeping the previous one: {e}"
                );
                self.state.set_error(format!("config change ignored: {e}"));
                self.save_state();
                return;
            }
        };
        if new == self.cfg.onboarding {
            debug!("onboarding config rewritten without changes");
            return;
        }
        let mut next_cfg = self.cfg.clone();
        next_cfg.onboarding = new;
        let client = match build_client(&next_cfg) {
            Ok(c) => c,
            Err(e) => {
                warn!(
                    "the onboarding config changed but its TLS settings are not usable; keeping the previous one: {e}"
                );
                self.state.set_error(format!("config change ignored: {e}"));
                self.save_state();
                return;
            }
        };
        info!(
            "the onboarding config changed: onboarding again to join {} at {}",
            next_cfg.onboarding.workload_group,
            endpoint_name(&next_cfg)
        );
        if let Some(s) = self.session.take() {
            match self.client.unregister(&s.token) {
                Ok(_) => info!("unregistered {} from the previous endpoint", s.registration),
                Err(e) => warn!("could not unregister {}: {e}", s.registration),
            }
        }
        self.cfg = next_cfg;
        self.client = client;
        self.backoff.reset();
        self.state = State {
            pid: self.state.pid,
            phase: Phase::Onboarding,
            endpoint: Some(endpoint_name(&self.cfg)),
            workload_group: Some(self.cfg.onboarding.workload_group.to_string()),
            restart_pending: self.state.restart_pending,
            last_sidecar_restart: self.state.last_sidecar_restart.take(),
            ..State::default()
        };
        self.save_state();
    }

    fn shutdown(&mut self, sig: libc::c_int) {
        info!("{}: unregistering", super::signals::name(sig));
        self.state.phase = Phase::Stopping;
        self.save_state();
        if let Some(s) = self.session.take() {
            match self.client.unregister(&s.token) {
                Ok(r) => {
                    let delay =
                        Duration::from_secs_f64(r.propagation_delay_seconds.clamp(0.0, 600.0));
                    info!(
                        "unregistered {}; waiting {:.1}s for the mesh to stop sending traffic",
                        s.registration,
                        delay.as_secs_f64()
                    );
                    // A second SIGTERM/SIGINT cuts the wait short.
                    if let Ok(Event::Signal(_)) = self.events.recv_timeout(delay) {
                        info!("second signal: exiting without waiting");
                    }
                }
                Err(e) => warn!(
                    "could not unregister {}: {e}; the endpoint removes it after its grace period",
                    s.registration
                ),
            }
        }
        self.state.phase = Phase::Stopped;
        self.state.connected_since = None;
        self.save_state();
        info!("stopped");
    }
}

fn build_client(cfg: &Loaded) -> Result<Client, ClientError> {
    let t = client::transport(
        &cfg.onboarding.onboarding_endpoint,
        cfg.env_root_certs.as_deref(),
    )?;
    if t.insecure_skip_verify {
        warn!(
            "!!! onboardingEndpoint.transportSecurity.tls.insecureSkipVerify is set: the endpoint's certificate is NOT verified, anyone on the network path can impersonate it. Never use this in production. !!!"
        );
    }
    if t.plain_text {
        warn!(
            "onboardingEndpoint.transportSecurity.none is set: talking to the endpoint in plain text"
        );
    }
    Client::new(&t)
}

fn endpoint_name(cfg: &Loaded) -> String {
    let ep = &cfg.onboarding.onboarding_endpoint;
    format!("{}:{}", ep.host, ep.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_four_fifths_keeping_a_margin() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            renewal_delay(now, now + Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
        assert_eq!(
            renewal_delay(now, now + Duration::from_secs(120)),
            Duration::from_secs(90),
            "30s margin once four fifths would leave less"
        );
        assert_eq!(
            renewal_delay(now, now + Duration::from_secs(10)),
            Duration::from_secs(5),
            "half of a short lifetime"
        );
        // Already expired: renew now.
        assert_eq!(
            renewal_delay(now, now - Duration::from_secs(5)),
            Duration::ZERO
        );
    }
}
