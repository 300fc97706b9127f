//! What the endpoint does for each API call, without HTTP: verify, decide (through the pure
//! core), persist (through the store), answer. The HTTP layer (`server`) only maps requests
//! and errors in and out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::api::identity::WorkloadIdentity;
use crate::api::meta::NamespacedName;
use crate::api::protocol::{
    ApiError, AuthorizeRequest, AuthorizeResponse, Bootstrap, Credential, DiscoveryResponse,
    ErrorCode, KeepAliveResponse, KeepAliveSettings, RegisterRequest, RegisterResponse,
    UnregisterResponse,
};
use crate::api::registration::WorkloadAutoRegistration;
use crate::endpoint::metrics::Metrics;
use crate::identity::jwt::JwtVerifier;
use crate::identity::{VerifyContext, VerifyError};
use crate::policy::{self, Decision, GroupRef};
use crate::registration::{self, connection, naming};
use crate::store::{Store, StoreError};
use crate::timestamp;
use crate::token::{SessionClaims, SessionTokens, TokenError};

use super::render::Renderer;

/// Settings the service needs at run time (from the config file).
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub plane_uid: String,
    pub instance: String,
    pub grace_period: Duration,
    pub propagation_delay: Duration,
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
}

pub struct Service<S: Store> {
    pub store: S,
    pub settings: ServiceSettings,
    pub tokens: SessionTokens,
    pub jwt: Option<JwtVerifier>,
    pub renderer: Renderer,
    pub metrics: Metrics,
    /// Live keep-alive sessions on this instance, by WAR.
    sessions: Mutex<HashMap<NamespacedName, Instant>>,
    started: Instant,
}

pub type ApiResult<T> = Result<T, ApiError>;

fn api(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        message: message.into(),
    }
}

fn store_err(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure");
    api(
        ErrorCode::Unavailable,
        "the endpoint cannot reach its registration store; retry later",
    )
}

impl<S: Store> Service<S> {
    pub fn new(
        store: S,
        settings: ServiceSettings,
        tokens: SessionTokens,
        jwt: Option<JwtVerifier>,
        renderer: Renderer,
    ) -> Self {
        Service {
            store,
            settings,
            tokens,
            jwt,
            renderer,
            metrics: Metrics::new(),
            sessions: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    pub fn discovery(&self) -> DiscoveryResponse {
        let mut platforms = Vec::new();
        if self.jwt.is_some() {
            platforms.push("jwt".to_string());
        }
        DiscoveryResponse {
            plane_uid: self.settings.plane_uid.clone(),
            instance: self.settings.instance.clone(),
            platforms,
        }
    }

    /// Verifies a platform credential into an identity (and, for JWTs, the issuer's short
    /// name used in WAR names).
    async fn verify(
        &self,
        cred: &Credential,
        ctx: &VerifyContext,
    ) -> Result<(WorkloadIdentity, Option<String>), VerifyError> {
        match cred {
            Credential::Jwt { token } => {
                let v = self
                    .jwt
                    .as_ref()
                    .ok_or_else(|| VerifyError::Unsupported("jwt".into()))?;
                let verified = v.verify(token, ctx).await?;
                Ok((
                    WorkloadIdentity::Jwt(verified.identity),
                    Some(verified.short_name),
                ))
            }
            other => Err(VerifyError::Unsupported(other.kind().into())),
        }
    }

    pub async fn authorize(
        &self,
        req: AuthorizeRequest,
        peer: Option<IpAddr>,
    ) -> ApiResult<AuthorizeResponse> {
        let platform = req.credential.kind();
        let now = SystemTime::now();
        let ctx = VerifyContext {
            audience: self.settings.plane_uid.clone(),
            now,
            peer_ip: peer,
        };
        let group_ref = &req.workload_group;
        let (identity, short_name) = match self.verify(&req.credential, &ctx).await {
            Ok(v) => v,
            Err(e) => {
                let outcome = if e.code() == ErrorCode::Unavailable {
                    "error"
                } else {
                    "invalid_credential"
                };
                self.metrics.onboarding(outcome, platform);
                tracing::warn!(%platform, peer = ?peer, group = %group_ref, error = %e, "credential refused");
                return Err(api(e.code(), e.to_string()));
            }
        };
        let platform = identity.platform();
        let group = self
            .store
            .workload_group(&group_ref.namespace, &group_ref.name);
        let decision = match &group {
            Some(g) => {
                let policies = self.store.policies(&group_ref.namespace);
                policy::evaluate(
                    &policies,
                    GroupRef {
                        namespace: &g.metadata.namespace,
                        name: &g.metadata.name,
                        labels: &g.metadata.labels,
                    },
                    &identity,
                )
            }
            None => Decision::Deny {
                considered: vec![format!("WorkloadGroup {group_ref} does not exist")],
            },
        };
        if let Decision::Deny { considered } = &decision {
            self.metrics.onboarding("denied", platform);
            self.metrics
                .denials
                .get_or_create(&super::metrics::DenialLabels {
                    namespace: group_ref.namespace.clone(),
                })
                .inc();
            tracing::warn!(
                group = %group_ref,
                identity = ?identity,
                rules = ?considered,
                "onboarding denied: {decision}"
            );
            // What the agent learns stays inside the namespace it asked for.
            return Err(api(
                ErrorCode::PolicyDenied,
                format!(
                    "not authorized to join WorkloadGroup {group_ref}: it does not exist, or no \
                     OnboardingPolicy in namespace {} allows this {platform} identity; the \
                     endpoint's log lists the rules it considered",
                    group_ref.namespace
                ),
            ));
        }
        let war_name = naming::war_name(&group_ref.name, &identity, short_name.as_deref());
        let registration = NamespacedName {
            namespace: group_ref.namespace.clone(),
            name: war_name,
        };
        let (token, exp) = self
            .tokens
            .issue(
                &registration,
                identity.clone(),
                group_ref.clone(),
                short_name,
                now,
            )
            .map_err(|e| {
                tracing::error!(error = %e, "cannot sign session token");
                api(ErrorCode::Internal, "cannot issue a session token")
            })?;
        self.metrics.onboarding("allowed", platform);
        tracing::info!(group = %group_ref, registration = %registration, %platform, "authorized: {decision}");
        Ok(AuthorizeResponse {
            token,
            expires_at: timestamp::format(exp),
            registration,
        })
    }

    fn session(&self, bearer: Option<&str>) -> ApiResult<(SessionClaims, NamespacedName)> {
        let token = bearer.ok_or_else(|| {
            api(
                ErrorCode::SessionInvalid,
                "missing session token: send Authorization: Bearer <token> from /v1/authorize",
            )
        })?;
        let claims = self
            .tokens
            .verify(token, SystemTime::now())
            .map_err(|e| match e {
                TokenError::Expired => api(ErrorCode::SessionExpired, e.to_string()),
                other => api(ErrorCode::SessionInvalid, other.to_string()),
            })?;
        let reg = claims.registration().ok_or_else(|| {
            api(
                ErrorCode::SessionInvalid,
                "session token has no registration",
            )
        })?;
        Ok((claims, reg))
    }

    pub async fn register(
        &self,
        bearer: Option<&str>,
        req: RegisterRequest,
    ) -> ApiResult<RegisterResponse> {
        let (claims, reg_name) = self.session(bearer)?;
        registration::validate_registration(&req.registration)
            .map_err(|e| api(ErrorCode::BadRequest, e.to_string()))?;
        let now = timestamp::now();
        let existing = self
            .store
            .get_war(&reg_name.namespace, &reg_name.name)
            .await
            .map_err(store_err)?;
        let (mut war, reused) = match existing {
            Some(mut war) if war.spec.identity == claims.workload => {
                registration::refresh_registration(&mut war, req.registration);
                (war, true)
            }
            Some(_) => {
                // Names derive from identities, so this means a hand-made or corrupted WAR.
                return Err(api(
                    ErrorCode::SessionConflict,
                    format!("registration {reg_name} belongs to another identity"),
                ));
            }
            None => {
                let group = self
                    .store
                    .workload_group(
                        &claims.workload_group.namespace,
                        &claims.workload_group.name,
                    )
                    .ok_or_else(|| {
                        api(
                            ErrorCode::PolicyDenied,
                            format!(
                                "WorkloadGroup {} no longer exists; authorize again",
                                claims.workload_group
                            ),
                        )
                    })?;
                let uid = uuid::Uuid::new_v4().to_string();
                let war = registration::new_war(
                    &reg_name.name,
                    &group,
                    claims.workload.clone(),
                    req.registration,
                    &uid,
                    &now,
                );
                (war, false)
            }
        };
        let entry = registration::workload_entry(&war)
            .map_err(|e| api(ErrorCode::BadRequest, e.to_string()))?;
        connection::mark_connected(&mut war, &self.settings.instance, &now);
        // The bootstrap is rendered before anything is stored: a template error must not
        // leave a registration behind that the agent can never use.
        let bootstrap = self.render(&war).await?;
        self.store.put_war(&war).await.map_err(store_err)?;
        self.store
            .put_workload_entry(&entry)
            .await
            .map_err(store_err)?;
        self.touch(&reg_name);
        self.metrics.registrations.inc();
        tracing::info!(registration = %reg_name, reused, "workload registered");
        Ok(RegisterResponse {
            registration: reg_name,
            reused,
            bootstrap,
            keep_alive: KeepAliveSettings {
                interval_seconds: self.settings.keep_alive_interval.as_secs().max(1),
                timeout_seconds: self.settings.keep_alive_timeout.as_secs().max(1),
            },
        })
    }

    async fn render(&self, war: &WorkloadAutoRegistration) -> ApiResult<Bootstrap> {
        let ns = &war.metadata.namespace;
        let sa = war
            .spec
            .workload_group
            .spec
            .template
            .service_account
            .clone()
            .unwrap_or_else(|| "default".into());
        let token = self.store.istio_token(ns, &sa).await.map_err(|e| {
            tracing::error!(error = %e, namespace = %ns, service_account = %sa, "istio-token");
            api(
                ErrorCode::Unavailable,
                "the endpoint cannot obtain an istio-token for this workload; retry later",
            )
        })?;
        self.renderer
            .render(&self.store, war, &token)
            .map_err(|e| {
                tracing::error!(error = %e, registration = %war.metadata.name, "bootstrap rendering failed");
                api(
                    ErrorCode::Internal,
                    format!("cannot render the sidecar's bootstrap: {e}"),
                )
            })
    }

    /// The WAR behind a session, or `registration_gone` when it was deleted.
    async fn live_war(&self, reg: &NamespacedName) -> ApiResult<WorkloadAutoRegistration> {
        self.store
            .get_war(&reg.namespace, &reg.name)
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                self.forget(reg);
                api(
                    ErrorCode::RegistrationGone,
                    format!("registration {reg} no longer exists; onboard again"),
                )
            })
    }

    pub async fn keepalive(&self, bearer: Option<&str>) -> ApiResult<KeepAliveResponse> {
        let (claims, reg) = self.session(bearer)?;
        let mut war = self.live_war(&reg).await?;
        if war.spec.identity != claims.workload {
            return Err(api(
                ErrorCode::RegistrationGone,
                format!("registration {reg} was replaced; onboard again"),
            ));
        }
        if connection::mark_connected(&mut war, &self.settings.instance, &timestamp::now()) {
            self.store.put_war(&war).await.map_err(store_err)?;
        }
        self.touch(&reg);
        Ok(KeepAliveResponse {
            registration: reg,
            connected_to: self.settings.instance.clone(),
        })
    }

    /// The current bootstrap (with a fresh istio-token), rendered from the WAR's snapshot.
    pub async fn bootstrap(&self, bearer: Option<&str>) -> ApiResult<Bootstrap> {
        let (_, reg) = self.session(bearer)?;
        let war = self.live_war(&reg).await?;
        self.touch(&reg);
        self.render(&war).await
    }

    pub async fn unregister(&self, bearer: Option<&str>) -> ApiResult<UnregisterResponse> {
        let (_, reg) = self.session(bearer)?;
        let existed = self
            .store
            .delete_registration(&reg.namespace, &reg.name)
            .await
            .map_err(store_err)?;
        self.forget(&reg);
        if existed {
            self.metrics.registrations_deleted.inc();
        }
        tracing::info!(registration = %reg, existed, "workload unregistered");
        Ok(UnregisterResponse {
            propagation_delay_seconds: self.settings.propagation_delay.as_secs_f64(),
        })
    }

    fn touch(&self, reg: &NamespacedName) {
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(reg.clone(), Instant::now());
            self.metrics.connected_agents.set(s.len() as i64);
        }
    }

    fn forget(&self, reg: &NamespacedName) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(reg);
            self.metrics.connected_agents.set(s.len() as i64);
        }
    }

    /// One pass of the cleanup loop: agents silent for longer than the keep-alive timeout
    /// are marked disconnected; WARs disconnected for longer than the grace period are
    /// deleted with their WorkloadEntry. Returns (disconnected, deleted).
    pub async fn sweep(&self) -> Result<(usize, usize), StoreError> {
        let timeout = self.settings.keep_alive_timeout;
        let stale: Vec<NamespacedName> = match self.sessions.lock() {
            Ok(s) => s
                .iter()
                .filter(|(_, seen)| seen.elapsed() >= timeout)
                .map(|(k, _)| k.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        for reg in &stale {
            self.forget(reg);
        }
        let live: std::collections::HashSet<NamespacedName> = self
            .sessions
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        // After a restart nothing is in `sessions`: give agents one timeout to come back
        // before calling them disconnected.
        let restart_settled = self.started.elapsed() >= timeout;
        let now_str = timestamp::now();
        let now = SystemTime::now();
        let (mut disconnected, mut deleted) = (0, 0);
        for mut war in self.store.list_wars(None).await? {
            let key = NamespacedName {
                namespace: war.metadata.namespace.clone(),
                name: war.metadata.name.clone(),
            };
            let mine = war
                .status
                .active_agent_connection
                .as_ref()
                .is_some_and(|c| c.connected_to == self.settings.instance);
            if mine
                && !live.contains(&key)
                && (stale.contains(&key) || restart_settled)
                && connection::mark_disconnected(
                    &mut war,
                    connection::REASON_KEEPALIVE_TIMEOUT,
                    &format!("no keep-alive for {}s", timeout.as_secs()),
                    &now_str,
                )
            {
                self.store.put_war(&war).await?;
                disconnected += 1;
                tracing::info!(registration = %key, "agent disconnected");
            }
            if connection::is_expired(&war, now, self.settings.grace_period)
                && !live.contains(&key)
                && self
                    .store
                    .delete_registration(&key.namespace, &key.name)
                    .await?
            {
                deleted += 1;
                self.metrics.registrations_deleted.inc();
                tracing::info!(registration = %key, "registration deleted after grace period");
            }
        }
        self.store.collect_orphans().await?;
        Ok((disconnected, deleted))
    }
}
