//! The onboarding endpoint: the HTTPS API agents talk to, backed by a store.

pub mod cli;
pub mod cloud;
pub mod config;
pub mod dev_certs;
pub mod install;
pub mod metrics;
pub mod plane;
pub mod render;
pub mod run;
pub mod server;
pub mod service;
pub mod tls;
