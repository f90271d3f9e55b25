//! Integration tests of limitd against real `redis-server` and `redis-sentinel` processes, and a
//! real Redis Cluster.
//!
//! One test binary (modules below) so the suite links once. Each test starts its own Redis on
//! a free loopback port, so tests run in parallel without sharing counters.

mod algorithms;
mod auth;
mod batch;
mod cli;
mod cluster;
mod counting;
mod discovery;
mod exactness;
mod hostile;
mod leases;
mod metrics;
mod model;
mod sentinel;
mod serving;
mod shutdown;
mod support;
mod tls;
