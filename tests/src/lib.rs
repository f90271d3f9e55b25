//! Runs the whole topology as local processes: Redis master and two replicas,
//! three sentinels, two limitd, two backends and Envoy, on loopback.
//!
//! The end-to-end tests start a [`Stack`] on free ports; `cargo xtask demo`
//! starts the same one on the documented fixed ports. Every process is
//! probed for readiness (never a fixed sleep) and killed when the stack is
//! dropped, also when a test panics.

pub mod client;
pub mod envoy_config;
pub mod load;
pub mod paths;
pub mod process;
pub mod stack;

pub use client::{
    eventually, http_get, http_request, poll_every, redis_command, HttpConnection, HttpResponse,
    Resp,
};
pub use load::{Load, LoadOptions, LoadReport, Sample};
pub use paths::Binaries;
pub use stack::{EnvoyOptions, Ports, Stack, StackOptions};
