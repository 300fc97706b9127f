//! Resource and wire types shared by the agent and the endpoint. Plain serde data: no I/O,
//! no decisions (those live in `policy`, `registration`, `bootstrap`).

pub mod agent_config;
pub mod duration;
pub mod identity;
pub mod istio;
pub mod meta;
pub mod policy;
pub mod protocol;
pub mod registration;
pub mod validation;
