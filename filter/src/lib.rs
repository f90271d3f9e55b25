//! `ratelimit.wasm`: a proxy-wasm HTTP filter that has every request that
//! meets a rate-limit rule checked by limitd before Envoy forwards it.
//!
//! The decisions live in host-free modules ([`config`], [`verdict`],
//! [`batch`], [`settle`], [`lease`], [`fallback`], [`deny_cache`] and the rest) with
//! native unit tests; the proxy-wasm glue in `glue/` only reads headers and
//! properties, calls them, and acts on the result. It is compiled for `wasm32`
//! alone, so `cargo test` links natively.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod batch;
pub mod config;
#[cfg(test)]
mod config_fuzz;
pub mod deny_cache;
pub mod duration;
pub mod fallback;
mod json_path;
pub mod key;
pub mod lease;
pub mod log_limit;
pub mod reply;
pub mod request;
pub mod settle;
pub mod verdict;

#[cfg(target_arch = "wasm32")]
mod glue;
