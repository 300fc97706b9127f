//! OIDC JWTs from trusted issuers (hosts on premises): the endpoint half.
//!
//! The pure core is [`UnverifiedJwt::parse`] (read the header and `iss` without trusting
//! them, only to pick an issuer), [`select_issuer`] and [`verify_token`] (signature and
//! claims against one issuer's [`KeySet`] and a [`VerifyContext`]); it never reads the clock
//! or the network. The shell is [`JwtVerifier`]: it holds each issuer's keys, loaded at start
//! (inline `jwks`, `jwksFile`) or fetched over verified TLS (`jwksUri`, or OIDC discovery when
//! no source is given), refreshed when a token names an unknown `kid` (rate-limited) or when
//! the cached set is old.
//!
//! Accepted tokens: RS256 or ES256 only (never `none` or a shared-secret `HS*`); `iss` equal
//! to a configured issuer byte for byte; `aud` (a string or an array) containing the plane
//! UID; `exp` required and `nbf` honoured, both with [`LEEWAY_SECONDS`] of clock skew; a
//! non-empty `sub`. The header's `typ` is not checked (RFC 9068 access tokens say `at+jwt`,
//! ID tokens `JWT`); a `crit` header is refused because no extension is understood.

mod claim_path;
mod config;
#[cfg(feature = "endpoint")]
mod fetch;
mod keys;
#[cfg(all(test, feature = "endpoint"))]
mod tests;
mod verify;

pub use claim_path::*;
pub use config::*;
#[cfg(feature = "endpoint")]
pub use fetch::*;
pub use keys::*;
pub use verify::*;

/// Clock skew tolerated on `exp` and `nbf`, in seconds (shared by every platform).
pub const LEEWAY_SECONDS: i64 = super::CLOCK_LEEWAY_SECS;

/// Longer tokens are refused before any parsing; real OIDC tokens are a few KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// RSA keys shorter than this are not trusted, whatever the issuer publishes.
pub const MIN_RSA_BITS: usize = 2048;
