//! workload-onboarding: brings workloads on VMs and bare-metal hosts into an Istio mesh.
//!
//! The crate is one pure core with thin shells (see `docs/architecture.md`):
//! `api`, `policy`, `registration`, `bootstrap` and the verifying halves of `identity` decide;
//! `store`, `endpoint` and `agent` move data in and out.

#[cfg(feature = "agent")]
pub mod agent;
pub mod api;
pub mod atomic;
pub mod bootstrap;
pub mod clock;
#[cfg(feature = "endpoint")]
pub mod endpoint;
#[cfg(any(feature = "endpoint", feature = "agent"))]
pub mod http_client;
pub mod identity;
pub mod lock;
pub mod policy;
pub mod registration;
pub mod secret;
#[cfg(feature = "endpoint")]
pub mod store;
pub mod timestamp;
pub mod token;
pub mod yaml;
