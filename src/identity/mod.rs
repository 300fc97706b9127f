//! Host identity: one module per platform, each with the agent half (collect a credential)
//! and the endpoint half (verify a credential into a [`WorkloadIdentity`]), in the manner of
//! SPIRE's node attestors.
//!
//! Verification is a pure function of the credential, the trust roots and a
//! [`VerifyContext`] (audience, clock, peer address); fetching trust roots (JWKS, AWS API)
//! lives in the platform module's shell and is kept apart from the checks.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::api::protocol::ErrorCode;

pub mod jwt;
#[cfg(feature = "agent")]
pub mod plugin;

// Cloud platforms (issue 4): each module holds the agent half and the endpoint half.
pub mod aws;
pub mod azure;
pub mod cms;
#[cfg(feature = "agent")]
pub mod detect;
pub mod gcp;

/// Clock skew tolerated between the host's credential issuer and the endpoint, in seconds:
/// the same for every time check (JWT `exp`/`nbf`/`iat`, certificate validity in PKCS#7
/// chains), so that a clock a little off refuses no platform sooner than another.
pub const CLOCK_LEEWAY_SECS: i64 = 60;

/// What a verifier needs to know about the request, besides the credential.
#[derive(Debug, Clone)]
pub struct VerifyContext {
    /// The plane UID: credentials must be addressed to it.
    pub audience: String,
    pub now: SystemTime,
    /// The address the request came from (after trusted-proxy handling), for platforms
    /// that bind a credential to the connection.
    pub peer_ip: Option<IpAddr>,
}

/// Why a credential was refused. Each variant maps to its own stable API error code, so an
/// operator can tell a clock problem from a forged token without reading server logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed credential: {0}")]
    Malformed(String),
    #[error("issuer {0:?} is not trusted by this endpoint")]
    UnknownIssuer(String),
    #[error("credential audience {found:?} is not this onboarding plane ({expected:?})")]
    WrongAudience { expected: String, found: String },
    #[error("credential expired or not yet valid: {0}")]
    Expired(String),
    #[error("credential signature does not verify: {0}")]
    InvalidSignature(String),
    #[error("credential refused: {0}")]
    Invalid(String),
    /// The credential is bound to another address than the request's source.
    #[error("{0}")]
    SourceAddress(String),
    /// The nonce was not issued by this endpoint, was used already or expired.
    #[error("{0}")]
    Nonce(String),
    /// A single-use credential seen before.
    #[error("{0}")]
    Reused(String),
    #[error("platform {0:?} is not enabled on this endpoint")]
    Unsupported(String),
    /// The endpoint could not fetch what it needs to decide (JWKS, cloud API). Not the
    /// host's fault; the agent retries.
    #[error("cannot verify credential now: {0}")]
    Unavailable(String),
}

impl VerifyError {
    pub fn code(&self) -> ErrorCode {
        match self {
            VerifyError::Malformed(_) => ErrorCode::MalformedCredential,
            VerifyError::UnknownIssuer(_) => ErrorCode::UnknownIssuer,
            VerifyError::WrongAudience { .. } => ErrorCode::WrongAudience,
            VerifyError::Expired(_) => ErrorCode::CredentialExpired,
            VerifyError::InvalidSignature(_) => ErrorCode::InvalidSignature,
            VerifyError::Invalid(_) => ErrorCode::InvalidCredential,
            VerifyError::SourceAddress(_) => ErrorCode::WrongSourceAddress,
            VerifyError::Nonce(_) => ErrorCode::WrongNonce,
            VerifyError::Reused(_) => ErrorCode::CredentialReused,
            VerifyError::Unsupported(_) => ErrorCode::UnsupportedPlatform,
            VerifyError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}
