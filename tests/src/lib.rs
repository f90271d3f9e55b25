//! Runs the whole topology as local processes: Redis master and two replicas,
//! three sentinels, two limitd, two backends and Envoy, on loopback.
//!
//! The end-to-end tests start a [`Stack`] on free ports; `cargo xtask demo`
//! starts the same one on the documented fixed ports. Every process is
//! probed for readiness (never a fixed sleep) and killed when the stack is
//! dropped, also when a test panics.
//!
//! limitd's own tests use the same parts: [`redis`] for real Redis, Sentinel and Redis
//! Cluster processes, [`ports`], [`poll`], [`client`] and [`scratch_dir`].

pub mod client;
pub mod envoy_config;
pub mod load;
pub mod paths;
pub mod poll;
pub mod ports;
pub mod process;
pub mod redis;
pub mod stack;

pub use client::{
    http_get, http_request, redis_command, redis_command_as, HttpConnection, HttpResponse, Resp,
};
pub use load::{Load, LoadOptions, LoadReport, Sample};
pub use paths::Binaries;
pub use poll::{eventually, eventually_async, poll_every};
pub use ports::{free_listener, free_port};
pub use redis::{scratch_dir, ClusterOptions, RedisCluster, RedisOptions, RedisProcess};
pub use stack::{
    await_window_left, EnvoyOptions, Ports, Stack, StackOptions, COUNTED_SPAN, SHIPPED_WINDOW,
};
pub use tempfile::TempDir;
