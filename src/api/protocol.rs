//! The HTTP API between agent and endpoint (JSON over HTTPS). Documented for people in
//! `docs/protocol.md`; keep the two in step.

use serde::{Deserialize, Serialize};

use super::meta::NamespacedName;
use super::registration::Registration;

pub const PATH_DISCOVERY: &str = "/v1/discovery";
pub const PATH_AUTHORIZE: &str = "/v1/authorize";
pub const PATH_REGISTER: &str = "/v1/register";
pub const PATH_KEEPALIVE: &str = "/v1/keepalive";
pub const PATH_BOOTSTRAP: &str = "/v1/bootstrap";
pub const PATH_UNREGISTER: &str = "/v1/unregister";
/// `POST /v1/nonce`, unauthenticated: a single-use challenge for credentials that can carry
/// one (Azure attested data). Body: none. Answer: [`NonceResponse`].
pub const PATH_NONCE: &str = "/v1/nonce";

/// `GET /v1/discovery`, unauthenticated: what an agent needs before it can ask for a credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryResponse {
    /// The onboarding plane's UID: the audience of platform credentials and session tokens.
    pub plane_uid: String,
    /// Which endpoint instance answered (shows up as `connectedTo` in the WAR).
    pub instance: String,
    /// Credential kinds this endpoint accepts (`jwt`, `aws-ec2`, ...).
    pub platforms: Vec<String>,
}

/// `POST /v1/nonce`: the endpoint remembers the nonce until `expiresAt` and accepts it in
/// one `/v1/authorize` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NonceResponse {
    /// 32 random alphanumeric characters (what Azure IMDS accepts).
    pub nonce: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// A platform credential. `type` selects the platform. Unknown fields are refused, as
/// everywhere else in the API: a misspelt optional field must not pass silently.
///
/// `Debug` shows only the platform: every variant can be presented again by whoever reads
/// it (a JWT, a signed STS request, an identity document that never expires).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Credential {
    /// An OIDC JWT from a trusted issuer, audience = plane UID.
    Jwt { token: String },
    /// AWS EC2 instance identity document with its PKCS#7 signature.
    #[serde(rename_all = "camelCase")]
    AwsEc2 {
        document: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rsa2048: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pkcs7: Option<String>,
    },
    /// A pre-signed STS GetCallerIdentity request made with an ECS task role.
    #[serde(rename_all = "camelCase")]
    AwsEcs {
        signed_request: crate::identity::aws::ecs::SignedStsRequest,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_metadata: Option<serde_json::Value>,
    },
    /// A GCE instance identity token (`format=full`).
    Gcp { token: String },
    /// Azure IMDS attested document; `nonce` is the one the endpoint handed out
    /// (`POST /v1/nonce`). `instanceMetadata` is the VM's unsigned
    /// `/metadata/instance/compute` (resource group, name, location), accepted only when
    /// its vmId and subscriptionId equal the signed ones.
    #[serde(rename_all = "camelCase")]
    Azure {
        signature: String,
        nonce: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance_metadata: Option<serde_json::Value>,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credential::{}({})",
            self.kind(),
            crate::secret::REDACTED
        )
    }
}

impl Credential {
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Jwt { .. } => "jwt",
            Credential::AwsEc2 { .. } => "aws-ec2",
            Credential::AwsEcs { .. } => "aws-ecs",
            Credential::Gcp { .. } => "gcp",
            Credential::Azure { .. } => "azure",
        }
    }
}

/// `POST /v1/authorize`: prove the host's identity and ask to join a WorkloadGroup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizeRequest {
    pub workload_group: NamespacedName,
    pub credential: Credential,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeResponse {
    /// The session token: `Authorization: Bearer <token>` on every later call.
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Where this identity is (or will be) registered.
    pub registration: NamespacedName,
}

/// `POST /v1/register` (session token): create or reuse the WAR and get the sidecar's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    pub registration: Registration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub registration: NamespacedName,
    /// True when an existing WAR was reused (same identity onboarding again).
    pub reused: bool,
    pub bootstrap: Bootstrap,
    pub keep_alive: KeepAliveSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeepAliveSettings {
    /// How often the agent calls `/v1/keepalive`, in seconds.
    pub interval_seconds: u64,
    /// After this long without a keep-alive the endpoint marks the agent disconnected.
    pub timeout_seconds: u64,
}

/// The sidecar's boot files, rendered from the WAR's WorkloadGroup snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    pub files: Vec<BootstrapFile>,
    /// Lines for the agent-owned block of `/etc/hosts` (istiod address, egress hostnames).
    #[serde(default)]
    pub hosts: Vec<HostsEntry>,
    /// When the istio-token in `files` expires (RFC 3339), if known: the agent fetches a
    /// fresh bootstrap before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio_token_expires_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapFile {
    /// Absolute path on the host (the agent prefixes its root directory).
    pub path: String,
    /// Unix permission bits, e.g. 0o644 (a JSON number); never more than 0o755.
    pub mode: FileMode,
    pub content: String,
    /// A change to this file needs a sidecar restart (false for files pilot-agent re-reads,
    /// such as the istio-token).
    #[serde(default = "default_true")]
    pub restart_on_change: bool,
    /// User that should own the file (e.g. `istio-proxy`, which pilot-agent runs as).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

fn default_true() -> bool {
    true
}

/// The permission bits of a file the agent writes for the sidecar: at most `rwxr-xr-x`.
///
/// The agent runs as root and writes what the endpoint sends, so the type cannot hold a mode
/// that would turn a sidecar file into a privilege: no setuid, setgid or sticky bit, and no
/// write for group or others. On the wire it is a plain number (`420` for 0644); a number
/// with other bits fails to deserialise, so a register response carrying one is refused as a
/// whole and the agent keeps the files it has.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct FileMode(u32);

/// A mode [`FileMode`] cannot hold, with the first reason it is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "file mode {bits:04o} (octal) is not allowed: it {reason}; a sidecar file may have at most the bits of 0755"
)]
pub struct BadFileMode {
    pub bits: u32,
    pub reason: &'static str,
}

impl FileMode {
    /// Every bit a sidecar file may have.
    pub const ALLOWED: u32 = 0o755 & !0o022;

    pub fn new(bits: u32) -> Result<FileMode, BadFileMode> {
        let reason = if bits & !0o7777 != 0 {
            "has bits beyond the permission bits"
        } else if bits & 0o4000 != 0 {
            "sets the setuid bit"
        } else if bits & 0o2000 != 0 {
            "sets the setgid bit"
        } else if bits & 0o1000 != 0 {
            "sets the sticky bit"
        } else if bits & 0o020 != 0 {
            "lets the group write"
        } else if bits & 0o002 != 0 {
            "lets everyone write"
        } else {
            return Ok(FileMode(bits));
        };
        Err(BadFileMode { bits, reason })
    }

    /// The allowed bits of a mode found on disk (the others dropped), for copies of files
    /// the agent did not write itself.
    pub const fn masked(bits: u32) -> FileMode {
        FileMode(bits & Self::ALLOWED)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for FileMode {
    type Error = BadFileMode;

    fn try_from(bits: u32) -> Result<FileMode, BadFileMode> {
        FileMode::new(bits)
    }
}

impl From<FileMode> for u32 {
    fn from(m: FileMode) -> u32 {
        m.0
    }
}

impl PartialEq<u32> for FileMode {
    fn eq(&self, other: &u32) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Debug for FileMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileMode({:04o})", self.0)
    }
}

/// `0644`, as `ls` and chmod write it.
impl std::fmt::Display for FileMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl std::fmt::Octal for FileMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Octal::fmt(&self.0, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostsEntry {
    /// Empty when `resolve` is set.
    pub ip: String,
    pub hostnames: Vec<String>,
    /// A DNS name the agent resolves on the host to get the address(es) for `hostnames`:
    /// used when the east-west gateway in front of istiod is known only by a hostname (a
    /// cloud load balancer whose addresses change), so the endpoint cannot put an IP here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve: Option<String>,
}

/// `POST /v1/keepalive` (session token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeepAliveResponse {
    pub registration: NamespacedName,
    pub connected_to: String,
}

/// `POST /v1/unregister` (session token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnregisterResponse {
    /// Wait this long before stopping the sidecar, so the mesh stops sending traffic first.
    pub propagation_delay_seconds: f64,
}

/// Every error the API returns. `code` is stable; `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body is not what the API expects.
    BadRequest,
    /// The registration cannot be used as sent: a label Kubernetes would refuse, an
    /// address the mesh cannot dial, a missing field. The message names it.
    InvalidRegistration,
    /// The body is larger than the endpoint accepts.
    PayloadTooLarge,
    /// A JSON body sent without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// The credential is not well-formed (not a JWT, bad base64, ...).
    MalformedCredential,
    /// The credential's issuer is not trusted by this endpoint.
    UnknownIssuer,
    /// The credential is for another audience (not this plane's UID).
    WrongAudience,
    /// The credential has expired or is not valid yet.
    CredentialExpired,
    /// The credential's signature does not verify.
    InvalidSignature,
    /// The credential was refused for another reason the message explains.
    InvalidCredential,
    /// The request does not come from the address the credential is bound to (an EC2
    /// identity document presented from another host).
    WrongSourceAddress,
    /// The nonce in the credential is not one this endpoint issued, was already used, or
    /// expired (Azure attested data): get a fresh one from `/v1/nonce`.
    WrongNonce,
    /// A single-use credential presented a second time (a GCP identity token).
    CredentialReused,
    /// This platform's credentials are not accepted by this endpoint.
    UnsupportedPlatform,
    /// No OnboardingPolicy allows this identity into this WorkloadGroup.
    PolicyDenied,
    /// Another live session already exists for this host identity.
    SessionConflict,
    /// No session token, or one that does not verify.
    SessionInvalid,
    /// The session token has expired: authorize again.
    SessionExpired,
    /// The WAR behind this session was deleted: onboard again.
    RegistrationGone,
    /// The OnboardingPolicies no longer allow this session's identity into its
    /// WorkloadGroup (or the group is gone): the session is over.
    SessionRevoked,
    /// The endpoint could not do its part (store, token source); try again later.
    Unavailable,
    /// A bug or an unexpected state; the endpoint's log has details.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidRegistration => "invalid_registration",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MalformedCredential => "malformed_credential",
            ErrorCode::UnknownIssuer => "unknown_issuer",
            ErrorCode::WrongAudience => "wrong_audience",
            ErrorCode::CredentialExpired => "credential_expired",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::InvalidCredential => "invalid_credential",
            ErrorCode::WrongSourceAddress => "wrong_source_address",
            ErrorCode::WrongNonce => "wrong_nonce",
            ErrorCode::CredentialReused => "credential_reused",
            ErrorCode::UnsupportedPlatform => "unsupported_platform",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::SessionConflict => "session_conflict",
            ErrorCode::SessionInvalid => "session_invalid",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::RegistrationGone => "registration_gone",
            ErrorCode::SessionRevoked => "session_revoked",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::InvalidRegistration
            | ErrorCode::MalformedCredential => 400,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::UnknownIssuer
            | ErrorCode::WrongAudience
            | ErrorCode::CredentialExpired
            | ErrorCode::InvalidSignature
            | ErrorCode::InvalidCredential
            | ErrorCode::WrongSourceAddress
            | ErrorCode::WrongNonce
            | ErrorCode::CredentialReused
            | ErrorCode::SessionInvalid
            | ErrorCode::SessionExpired => 401,
            ErrorCode::UnsupportedPlatform
            | ErrorCode::PolicyDenied
            | ErrorCode::SessionRevoked => 403,
            ErrorCode::SessionConflict => 409,
            ErrorCode::RegistrationGone => 410,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether retrying the same request later can succeed without a change on the host.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::SessionConflict
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_modes_up_to_0755_only() {
        for ok in [0o755, 0o644, 0o600, 0o400, 0o700, 0o555, 0o000] {
            assert_eq!(FileMode::new(ok).map(FileMode::bits), Ok(ok), "{ok:o}");
        }
        for (bad, why) in [
            (0o4755, "setuid"),
            (0o2755, "setgid"),
            (0o1755, "sticky"),
            (0o664, "group write"),
            (0o646, "everyone write"),
            (0o777, "group write"),
            (0o10644, "beyond the permission bits"),
        ] {
            let e = FileMode::new(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:o}: {e}");
            assert!(e.contains(&format!("{bad:04o}")), "{e}");
        }
        assert_eq!(FileMode::masked(0o104666).bits(), 0o644);
    }

    #[test]
    fn file_mode_is_a_number_on_the_wire_and_refused_when_too_wide() {
        let f: BootstrapFile =
            serde_json::from_str(r#"{"path":"/etc/certs/root-cert.pem","mode":420,"content":"x"}"#)
                .unwrap();
        assert_eq!(f.mode, 0o644);
        assert!(serde_json::to_string(&f).unwrap().contains(r#""mode":420"#));
        // 0o4755 = 2541: setuid.
        let e = serde_json::from_str::<BootstrapFile>(
            r#"{"path":"/etc/certs/root-cert.pem","mode":2541,"content":"x"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("file mode 4755 (octal) is not allowed: it sets the setuid bit"),
            "{e}"
        );
        // 0o666 = 438: world-writable, anywhere in a bootstrap.
        let e = serde_json::from_str::<Bootstrap>(
            r#"{"files":[{"path":"/etc/certs/root-cert.pem","mode":438,"content":"x"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("0666") && e.contains("group write"), "{e}");
        assert!(serde_json::from_str::<FileMode>("-1").is_err());
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_of_a_credential_shows_the_platform_not_the_secret() {
        let jwt = Credential::Jwt {
            token: "eyJ.secret-token.sig".into(),
        };
        let ecs = Credential::AwsEcs {
            signed_request: crate::identity::aws::ecs::SignedStsRequest {
                method: "POST".into(),
                url: "https://sts.us-east-1.amazonaws.com/".into(),
                headers: vec![("authorization".into(), "AWS4 sig=abc123".into())],
                body: String::new(),
            },
            task_metadata: None,
        };
        for (c, secret) in [(jwt, "secret-token"), (ecs, "abc123")] {
            let shown = format!("{c:?} {c:#?}");
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains(c.kind()), "{shown}");
        }
    }
}
