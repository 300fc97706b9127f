//! What the endpoint does for each API call, without HTTP: verify, decide (through the pure
//! core), persist (through the store), answer. The HTTP layer (`server`) only maps requests
//! and errors in and out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::api::identity::WorkloadIdentity;
use crate::api::meta::NamespacedName;
use crate::api::protocol::{
    ApiError, AuthorizeRequest, AuthorizeResponse, Bootstrap, Credential, DiscoveryResponse,
    ErrorCode, KeepAliveResponse, KeepAliveSettings, NonceResponse, RegisterRequest,
    RegisterResponse, UnregisterResponse,
};
use crate::api::registration::WorkloadAutoRegistration;
use crate::api::validation;
use crate::endpoint::metrics::Metrics;
use crate::identity::jwt::JwtVerifier;
use crate::identity::{VerifyContext, VerifyError};
use crate::lock::{self, Poisoned};
use crate::registration::{self, RegistrationRules, admission, connection, session};
use crate::store::{Store, StoreError};
use crate::timestamp;
use crate::token::{SessionClaims, SessionTokens, TokenError};

use super::cloud::{self, CloudAuth, HostSessionError, ReplayState, RequestSource};
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
    /// `registration.allowLoopbackAddresses`.
    pub allow_loopback_addresses: bool,
}

pub struct Service<S: Store> {
    pub store: S,
    pub settings: ServiceSettings,
    pub tokens: SessionTokens,
    pub jwt: Option<JwtVerifier>,
    pub renderer: Renderer,
    pub metrics: Metrics,
    /// Cloud platforms (EC2, ECS, GCP, Azure) enabled on this endpoint.
    pub cloud: std::sync::Arc<CloudAuth>,
    /// Live cloud sessions, used GCP tokens, issued nonces.
    pub replay: ReplayState,
    /// Live keep-alive sessions on this instance, by WAR.
    sessions: Mutex<HashMap<NamespacedName, Instant>>,
    /// Session tokens (by `jti`) that created their WAR, and when: a token creates at most
    /// once, so an old one cannot bring back a WAR deleted since. Entries older than
    /// `session::CREATE_WINDOW` are dropped (such tokens can no longer create anyway).
    created: Mutex<HashMap<String, SystemTime>>,
    started: Instant,
}

/// A verified credential and what the replay defences need from it.
struct Verified {
    identity: WorkloadIdentity,
    short_name: Option<String>,
    /// EC2: the document's pendingTime (unix seconds), for the first-onboarding age limit.
    ec2_pending_time: Option<i64>,
    /// GCP: (iat, exp) of the token, for single use.
    gcp_token: Option<(i64, i64)>,
}

impl Verified {
    fn plain(identity: WorkloadIdentity) -> Verified {
        Verified {
            identity,
            short_name: None,
            ec2_pending_time: None,
            gcp_token: None,
        }
    }
}

/// Runs a blocking verification step (cloud API calls, key fetches) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VerifyError> + Send + 'static,
) -> Result<T, VerifyError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(VerifyError::Unavailable(format!(
            "verification task failed: {e}"
        )))
    })
}

pub type ApiResult<T> = Result<T, ApiError>;

fn api(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        message: message.into(),
    }
}

fn store_err(e: StoreError) -> ApiError {
    if let StoreError::InvalidName { .. } = e {
        // Names are validated before they reach the store; the store refusing one too is
        // its own last line of defence, and the request's fault, not the store's.
        tracing::warn!(error = %e, "store refused a name");
        return api(ErrorCode::BadRequest, e.to_string());
    }
    tracing::error!(error = %e, "store failure");
    api(
        ErrorCode::Unavailable,
        "the endpoint cannot reach its registration store; retry later",
    )
}

/// Why a cleanup pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
}

const SESSIONS: &str = "live session table";
const CREATED: &str = "created-by-token table";

/// A request that finds a lock poisoned (see `crate::lock`) is refused as an internal error.
fn internal(e: Poisoned) -> ApiError {
    tracing::error!("{e}");
    api(
        ErrorCode::Internal,
        "internal error; the endpoint needs a restart",
    )
}

/// What a session call may do after [`Service::admit`].
enum Admitted {
    Existing(Box<WorkloadAutoRegistration>),
    Create,
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
            cloud: std::sync::Arc::new(CloudAuth::default()),
            replay: ReplayState::new(),
            sessions: Mutex::new(HashMap::new()),
            created: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    /// Enables the cloud platforms in `cloud`.
    pub fn with_cloud(mut self, cloud: CloudAuth) -> Self {
        self.cloud = std::sync::Arc::new(cloud);
        self
    }

    pub fn discovery(&self) -> DiscoveryResponse {
        let mut platforms = Vec::new();
        if self.jwt.is_some() {
            platforms.push("jwt".to_string());
        }
        platforms.extend(self.cloud.platforms().into_iter().map(String::from));
        DiscoveryResponse {
            plane_uid: self.settings.plane_uid.clone(),
            instance: self.settings.instance.clone(),
            platforms,
        }
    }

    /// `POST /v1/nonce`: a single-use nonce for Azure attested data.
    pub fn nonce(&self) -> ApiResult<NonceResponse> {
        if self.cloud.azure.is_none() {
            return Err(api(
                ErrorCode::UnsupportedPlatform,
                "azure is not enabled on this endpoint (nonces are for Azure attested data)",
            ));
        }
        let (nonce, exp) = self
            .replay
            .issue_nonce(SystemTime::now())
            .map_err(|e| api(e.code(), e.to_string()))?;
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(exp.max(0) as u64);
        Ok(NonceResponse {
            nonce,
            expires_at: timestamp::format(expires),
        })
    }

    /// Verifies a platform credential into an identity (and, for JWTs, the issuer's short
    /// name used in WAR names).
    async fn verify(
        &self,
        cred: &Credential,
        ctx: &VerifyContext,
        source: &RequestSource,
    ) -> Result<Verified, VerifyError> {
        let unsupported = |kind: &str| VerifyError::Unsupported(kind.into());
        match cred {
            Credential::Jwt { token } => {
                let v = self.jwt.as_ref().ok_or_else(|| unsupported("jwt"))?;
                let verified = v.verify(token, ctx).await?;
                Ok(Verified {
                    short_name: Some(verified.short_name),
                    ..Verified::plain(WorkloadIdentity::Jwt(verified.identity))
                })
            }
            Credential::AwsEc2 {
                document,
                rsa2048,
                signature,
                pkcs7,
            } => {
                let ec2 = self
                    .cloud
                    .ec2
                    .as_ref()
                    .ok_or_else(|| unsupported("aws-ec2"))?;
                let (mut identity, pending) = cloud::verify_ec2(
                    ec2,
                    document,
                    rsa2048.as_deref(),
                    pkcs7.as_deref(),
                    signature.as_deref(),
                    source,
                    ctx.now,
                )?;
                if let Some(api) = ec2.api.clone() {
                    identity = blocking(move || {
                        cloud::add_instance_role(&api, &mut identity).map(|()| identity)
                    })
                    .await?;
                }
                Ok(Verified {
                    ec2_pending_time: Some(pending),
                    ..Verified::plain(WorkloadIdentity::Aws(identity))
                })
            }
            Credential::AwsEcs {
                signed_request,
                task_metadata,
            } => {
                let cfg = self
                    .cloud
                    .ecs
                    .clone()
                    .ok_or_else(|| unsupported("aws-ecs"))?;
                let req = signed_request.clone();
                let meta = task_metadata.clone();
                let audience = ctx.audience.clone();
                let identity = blocking(move || {
                    crate::identity::aws::ecs::verify(&req, meta.as_ref(), &cfg, &audience)
                })
                .await?;
                Ok(Verified::plain(WorkloadIdentity::Aws(identity)))
            }
            Credential::Gcp { token } => {
                let v = self.cloud.gcp.clone().ok_or_else(|| unsupported("gcp"))?;
                let token = token.clone();
                let c = ctx.clone();
                let verified = blocking(move || v.verify(token.trim(), &c)).await?;
                Ok(Verified {
                    gcp_token: Some((verified.issued_at, verified.expires_at)),
                    ..Verified::plain(WorkloadIdentity::Gcp(verified.identity))
                })
            }
            Credential::Azure {
                signature,
                nonce,
                instance_metadata,
            } => {
                let trust = self
                    .cloud
                    .azure
                    .as_ref()
                    .ok_or_else(|| unsupported("azure"))?;
                let metadata: Option<crate::identity::azure::ComputeMetadata> = instance_metadata
                    .clone()
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(|e| VerifyError::Malformed(format!("instanceMetadata: {e}")))?;
                // Single use, whatever the outcome: a refused attempt burns its nonce too.
                self.replay.take_nonce(nonce, ctx.now)?;
                let v = crate::identity::azure::verify(
                    signature,
                    nonce,
                    metadata.as_ref(),
                    trust,
                    ctx.now,
                )?;
                Ok(Verified::plain(WorkloadIdentity::Azure(v.identity)))
            }
        }
    }

    /// Logs, counts and answers a refused credential.
    fn refuse(
        &self,
        platform: &str,
        group: &NamespacedName,
        source: &RequestSource,
        e: VerifyError,
    ) -> ApiError {
        let outcome = if e.code() == ErrorCode::Unavailable {
            "error"
        } else {
            "invalid_credential"
        };
        self.metrics.onboarding(outcome, platform);
        tracing::warn!(%platform, peer = ?source.peer, forwarded_for = ?source.forwarded_for, group = %group, code = %e.code(), error = %e, "credential refused");
        api(e.code(), e.to_string())
    }

    /// `POST /v1/authorize`. `bearer` is the agent's current session token when it renews:
    /// it lets the same agent continue its session (one live session per cloud host) and
    /// re-present a GCP token.
    pub async fn authorize(
        &self,
        req: AuthorizeRequest,
        source: RequestSource,
        bearer: Option<&str>,
    ) -> ApiResult<AuthorizeResponse> {
        let platform = req.credential.kind();
        // Before any use: the names reach lookups, logs, metrics and (through the WAR
        // name) file paths.
        let wg = &req.workload_group;
        validation::namespaced_name(&wg.namespace, &wg.name).map_err(|e| {
            api(
                ErrorCode::BadRequest,
                format!("workloadGroup: {e} (Kubernetes naming rules)"),
            )
        })?;
        let now = SystemTime::now();
        let ctx = VerifyContext {
            audience: self.settings.plane_uid.clone(),
            now,
            peer_ip: source.peer,
        };
        let group_ref = &req.workload_group;
        let verified = match self.verify(&req.credential, &ctx, &source).await {
            Ok(v) => v,
            Err(e) => return Err(self.refuse(platform, group_ref, &source, e)),
        };
        let identity = &verified.identity;
        let platform = identity.platform();
        let group = self
            .store
            .workload_group(&group_ref.namespace, &group_ref.name);
        let policies = self.store.policies(&group_ref.namespace);
        let target = admission::target(admission::Onboarding {
            workload_group: group_ref,
            identity,
            jwt_short_name: verified.short_name.as_deref(),
            group: group.as_ref(),
            policies: &policies,
        })
        .map_err(|r| self.refused(r, platform, group_ref, identity, &source))?;
        let existing = self
            .store
            .get_war(&target.registration.namespace, &target.registration.name)
            .await
            .map_err(store_err)?;
        let current = bearer.and_then(|b| self.tokens.verify(b, now).ok());
        let current_registration = current.as_ref().and_then(SessionClaims::registration);
        let host_key = cloud::host_key(identity);
        let plan = admission::admit(
            &target,
            admission::Facts {
                bearer: current.as_ref().map(|c| admission::Bearer {
                    registration: current_registration.as_ref(),
                    jti: &c.jti,
                }),
                existing: existing.as_ref(),
                ec2_pending_time: verified.ec2_pending_time,
                ec2_max_age: self.cloud.ec2.as_ref().and_then(|e| e.max_age),
                gcp_token: verified.gcp_token,
                host_key: host_key.as_deref(),
                one_session_per_host: self.cloud.one_session_per_host,
                now,
            },
        )
        .map_err(|r| self.refused(r, platform, group_ref, identity, &source))?;
        let (token, exp) = self.execute(&plan, &verified, group_ref, &source, now)?;
        let registration = plan.registration;
        self.metrics.onboarding("allowed", platform);
        tracing::info!(group = %group_ref, registration = %registration, identity = %identity, "authorized: {}", target.decision);
        Ok(AuthorizeResponse {
            token,
            expires_at: timestamp::format(exp),
            registration,
        })
    }

    /// Logs, counts and answers a refusal decided by `registration::admission`.
    fn refused(
        &self,
        refusal: admission::Refusal,
        platform: &str,
        group_ref: &NamespacedName,
        identity: &WorkloadIdentity,
        source: &RequestSource,
    ) -> ApiError {
        match refusal {
            admission::Refusal::PolicyDenied {
                message,
                reason,
                namespace,
            } => {
                self.metrics.onboarding("denied", platform);
                self.metrics.policy_denial(namespace.as_deref());
                tracing::warn!(
                    group = %group_ref,
                    identity = %identity,
                    "onboarding denied: {reason}"
                );
                api(ErrorCode::PolicyDenied, message)
            }
            admission::Refusal::TooOld(e) => {
                self.refuse(platform, group_ref, source, cloud::replay_error(e))
            }
        }
    }

    /// Carries out an admission plan: GCP single use, the session token, the host's one
    /// live session. Returns the token and when it expires.
    fn execute(
        &self,
        plan: &admission::Plan,
        verified: &Verified,
        group_ref: &NamespacedName,
        source: &RequestSource,
        now: SystemTime,
    ) -> ApiResult<(String, SystemTime)> {
        let platform = verified.identity.platform();
        if let Some(u) = &plan.gcp_single_use
            && let Err(e) = self.replay.use_gcp_token(&u.host, u.iat, u.exp, u.renewal)
        {
            return Err(self.refuse(platform, group_ref, source, e));
        }
        let (token, exp) = self
            .tokens
            .issue(
                &plan.registration,
                verified.identity.clone(),
                group_ref.clone(),
                verified.short_name.clone(),
                plan.registration_uid.clone(),
                now,
            )
            .map_err(|e| {
                tracing::error!(error = %e, "cannot sign session token");
                api(ErrorCode::Internal, "cannot issue a session token")
            })?;
        if let Some(hs) = &plan.host_session {
            let jti = self
                .tokens
                .verify(&token, now)
                .map(|c| c.jti)
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot read back a session token just issued");
                    api(ErrorCode::Internal, "cannot issue a session token")
                })?;
            let begun = self.replay.begin_session(
                &hs.host,
                hs.previous.as_deref(),
                &jti,
                now,
                self.settings.keep_alive_timeout,
            );
            if let Err(HostSessionError::Poisoned(e)) = begun {
                return Err(internal(e));
            }
            if let Err(e) = begun {
                self.metrics.onboarding("session_conflict", platform);
                tracing::warn!(
                    host = %hs.host,
                    peer = ?source.peer,
                    group = %group_ref,
                    registration = %plan.registration,
                    "second concurrent session refused: {e}"
                );
                return Err(api(
                    ErrorCode::SessionConflict,
                    format!(
                        "{e}; if this host's agent restarted, it can onboard once its previous session times out (registration.keepAliveTimeout)"
                    ),
                ));
            }
        }
        Ok((token, exp))
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

    /// Re-checks a session against the current policies, group and WAR before a call that
    /// creates or extends something (the decision is `registration::session::check`).
    async fn admit(
        &self,
        call: session::Call,
        claims: &SessionClaims,
        reg: &NamespacedName,
    ) -> ApiResult<Admitted> {
        let war = self
            .store
            .get_war(&reg.namespace, &reg.name)
            .await
            .map_err(store_err)?;
        let wg = &claims.workload_group;
        let group = self.store.workload_group(&wg.namespace, &wg.name);
        let policies = self.store.policies(&wg.namespace);
        let created_before = lock::lock(&self.created, CREATED)
            .map_err(internal)?
            .contains_key(&claims.jti);
        let verdict = session::check(
            call,
            session::Session {
                identity: &claims.workload,
                workload_group: wg,
                registration: reg,
                registration_uid: claims.registration_uid.as_deref(),
                issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(claims.iat),
                created_before,
            },
            session::Current {
                group: group.as_ref(),
                policies: &policies,
                war: war.as_ref(),
                now: SystemTime::now(),
            },
        );
        match verdict {
            session::Verdict::Existing => {
                war.map(|w| Admitted::Existing(Box::new(w))).ok_or_else(|| {
                    api(
                        ErrorCode::Internal,
                        "registration vanished while checking it",
                    )
                })
            }
            session::Verdict::Create => Ok(Admitted::Create),
            session::Verdict::Revoked { message, reason } => {
                self.end_host_session(claims);
                self.forget(reg);
                tracing::warn!(
                    registration = %reg,
                    group = %wg,
                    identity = ?claims.workload,
                    call = ?call,
                    "session revoked: {reason}"
                );
                Err(api(ErrorCode::SessionRevoked, message))
            }
            session::Verdict::Gone(message) => {
                self.end_host_session(claims);
                self.forget(reg);
                tracing::info!(registration = %reg, call = ?call, "{message}");
                Err(api(ErrorCode::RegistrationGone, message))
            }
            session::Verdict::Conflict(message) => Err(api(ErrorCode::SessionConflict, message)),
        }
    }

    fn registration_rules(&self) -> RegistrationRules {
        RegistrationRules {
            allow_loopback_addresses: self.settings.allow_loopback_addresses,
        }
    }

    pub async fn register(
        &self,
        bearer: Option<&str>,
        req: RegisterRequest,
    ) -> ApiResult<RegisterResponse> {
        let (claims, reg_name) = self.session(bearer)?;
        let admitted = self
            .admit(session::Call::Register, &claims, &reg_name)
            .await?;
        registration::validate_registration(&req.registration, self.registration_rules())
            .map_err(|e| api(ErrorCode::InvalidRegistration, e.to_string()))?;
        let now = timestamp::now();
        let (mut war, reused) = match admitted {
            Admitted::Existing(mut war) => {
                registration::refresh_registration(&mut war, req.registration);
                (*war, true)
            }
            Admitted::Create => {
                // `admit` found the group a moment ago; it can have gone since.
                let group = self
                    .store
                    .workload_group(
                        &claims.workload_group.namespace,
                        &claims.workload_group.name,
                    )
                    .ok_or_else(|| {
                        api(
                            ErrorCode::SessionRevoked,
                            format!(
                                "WorkloadGroup {} no longer exists; this session is over",
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
            .map_err(|e| api(ErrorCode::InvalidRegistration, e.to_string()))?;
        connection::mark_connected(&mut war, &self.settings.instance, &now);
        // The bootstrap is rendered before anything is stored: a template error must not
        // leave a registration behind that the agent can never use.
        let bootstrap = self.render(&war).await?;
        // Whole or not at all: the store writes the WorkloadEntry and the WAR together.
        self.store
            .put_registration(&war, &entry)
            .await
            .map_err(store_err)?;
        if !reused {
            match lock::lock(&self.created, CREATED) {
                Ok(mut c) => {
                    c.insert(claims.jti.clone(), SystemTime::now());
                }
                // Every later session check refuses (`admit`), so the token cannot create again.
                Err(e) => tracing::error!("{e}"),
            }
        }
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

    pub async fn keepalive(&self, bearer: Option<&str>) -> ApiResult<KeepAliveResponse> {
        let (claims, reg) = self.session(bearer)?;
        // A keep-alive keeps the WAR from being swept: it re-checks the policy too.
        let Admitted::Existing(mut war) =
            self.admit(session::Call::KeepAlive, &claims, &reg).await?
        else {
            return Err(api(ErrorCode::Internal, "keep-alive cannot create"));
        };
        if self.cloud.one_session_per_host
            && let Some(key) = cloud::host_key(&claims.workload)
            && let Err(e) = self.replay.keep_session(
                &key,
                &claims.jti,
                SystemTime::now(),
                self.settings.keep_alive_timeout,
            )
        {
            if let HostSessionError::Poisoned(p) = e {
                return Err(internal(p));
            }
            tracing::warn!(host = %key, registration = %reg, "keep-alive of a session that is no longer this host's live one: {e}");
            return Err(api(ErrorCode::SessionConflict, e.to_string()));
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
        let (claims, reg) = self.session(bearer)?;
        let Admitted::Existing(war) = self.admit(session::Call::Bootstrap, &claims, &reg).await?
        else {
            return Err(api(ErrorCode::Internal, "bootstrap cannot create"));
        };
        self.touch(&reg);
        self.render(&war).await
    }

    pub async fn unregister(&self, bearer: Option<&str>) -> ApiResult<UnregisterResponse> {
        let (claims, reg) = self.session(bearer)?;
        self.end_host_session(&claims);
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

    /// Ends the claims' session in the one-session-per-host registry (unregister, or a
    /// registration that is gone), so the host can onboard again at once.
    fn end_host_session(&self, claims: &SessionClaims) {
        if let Some(key) = cloud::host_key(&claims.workload) {
            self.replay.end_session(&key, &claims.jti);
        }
    }

    fn touch(&self, reg: &NamespacedName) {
        match lock::lock(&self.sessions, SESSIONS) {
            Ok(mut s) => {
                s.insert(reg.clone(), Instant::now());
                self.metrics.connected_agents.set(s.len() as i64);
            }
            // The cleanup loop refuses to run on it (`sweep`), so no WAR is swept for it.
            Err(e) => tracing::error!("{e}"),
        }
    }

    fn forget(&self, reg: &NamespacedName) {
        match lock::lock(&self.sessions, SESSIONS) {
            Ok(mut s) => {
                s.remove(reg);
                self.metrics.connected_agents.set(s.len() as i64);
            }
            Err(e) => tracing::error!("{e}"),
        }
    }

    /// One pass of the cleanup loop: agents silent for longer than the keep-alive timeout
    /// are marked disconnected; WARs disconnected for longer than the grace period are
    /// deleted with their WorkloadEntry. Returns (disconnected, deleted).
    /// Without a trustworthy session table (a poisoned lock) the pass does nothing: it
    /// could not tell live agents from silent ones.
    pub async fn sweep(&self) -> Result<(usize, usize), SweepError> {
        let timeout = self.settings.keep_alive_timeout;
        self.replay.sweep(SystemTime::now());
        lock::lock(&self.created, CREATED)?
            .retain(|_, at| at.elapsed().is_ok_and(|age| age <= session::CREATE_WINDOW));
        let (stale, live) = {
            let mut s = lock::lock(&self.sessions, SESSIONS)?;
            let stale: Vec<NamespacedName> = s
                .iter()
                .filter(|(_, seen)| seen.elapsed() >= timeout)
                .map(|(k, _)| k.clone())
                .collect();
            for reg in &stale {
                s.remove(reg);
            }
            self.metrics.connected_agents.set(s.len() as i64);
            let live: std::collections::HashSet<NamespacedName> = s.keys().cloned().collect();
            (stale, live)
        };
        // After a restart nothing is in `sessions`: give agents one timeout to come back
        // before calling them disconnected.
        let restart_settled = self.started.elapsed() >= timeout;
        let now_str = timestamp::now();
        let now = SystemTime::now();
        // Several replicas: which are alive (each renews a Lease here). Unknown on error: then
        // WARs of other instances are left alone this pass, as with one host.
        let live_instances = self
            .store
            .live_instances(&self.settings.instance, timeout)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot tell which endpoint instances are alive");
                None
            });
        let (mut disconnected, mut deleted) = (0, 0);
        for mut war in self.store.list_wars(None).await? {
            let key = NamespacedName {
                namespace: war.metadata.namespace.clone(),
                name: war.metadata.name.clone(),
            };
            let view = connection::SweepView {
                instance: &self.settings.instance,
                has_live_session: live.contains(&key),
                session_timed_out: stale.contains(&key),
                restart_settled,
                now,
                grace: self.settings.grace_period,
                live_instances: live_instances.as_ref(),
            };
            match connection::sweep_action(&war, view) {
                connection::SweepAction::Keep => {}
                connection::SweepAction::MarkDisconnected => {
                    connection::mark_disconnected(
                        &mut war,
                        connection::REASON_KEEPALIVE_TIMEOUT,
                        &format!("no keep-alive for {}s", timeout.as_secs()),
                        &now_str,
                    );
                    self.store.put_war(&war).await?;
                    disconnected += 1;
                    tracing::info!(registration = %key, "agent disconnected");
                }
                connection::SweepAction::Delete => {
                    if self
                        .store
                        .delete_registration(&key.namespace, &key.name)
                        .await?
                    {
                        deleted += 1;
                        self.metrics.registrations_deleted.inc();
                        tracing::info!(registration = %key, "registration deleted after grace period");
                    }
                }
            }
        }
        self.store.collect_orphans().await?;
        Ok((disconnected, deleted))
    }
}
