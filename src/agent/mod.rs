//! The host agent: onboards this host through the onboarding endpoint, writes the sidecar's
//! boot files, restarts the sidecar and stays connected.
//!
//! Synchronous on purpose (std threads and channels, ureq, notify): it runs on small VMs next
//! to the workload, so it carries no async runtime. Decisions (config validation, address
//! classification, `/etc/hosts` block editing, what changed, when to renew) are plain
//! functions; the shells (`client`, `files`, `sidecar`, `watcher`, `signals`) do the I/O and
//! `run` ties them together.

pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod credential;
pub mod files;
pub mod hostinfo;
pub mod hosts;
pub mod log;
pub mod run;
pub mod safefs;
pub mod sidecar;
pub mod signals;
pub mod state;
pub mod watcher;

/// The agent's version, sent in every registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
