//! Loopback ports for the processes a test starts, from one range and one counter.
//!
//! Ports come from 10000-32767, below Linux's ephemeral range (32768-60999): a port the OS
//! picks for port 0 is soon picked again as the source port of some outgoing connection, and a
//! process restarted on its port (a Redis node brought back, a limitd restarted) would then
//! find it taken. No port is handed out twice in a process, so two stacks of one test binary
//! never meet; runs in parallel start at different places in the range.
//!
//! A process that can take a listening socket (limitd, the backend: `LISTEN_FDS`) gets one
//! already bound ([`free_listener`]), so no other process can take its port between the choice
//! and the start. Redis and Envoy bind their own ports from their configuration: they get a
//! [`free_port`], free when chosen, and their start is retried on fresh ports if another
//! process took one meanwhile (see [`crate::process::retry_on_taken_port`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::stack::Ports;

/// The ports handed out so far by this process, as an offset into the range.
static NEXT_PORT: AtomicUsize = AtomicUsize::new(0);

/// A listener on 127.0.0.1, bound to a port of the range that this process has not handed out
/// before.
pub fn free_listener() -> TcpListener {
    const FIRST: usize = 10_000;
    const COUNT: usize = 32_768 - FIRST;
    let demo = Ports::demo().all();
    // Start somewhere that depends on the process, so concurrent runs rarely meet.
    let start = (std::process::id() as usize * 7919) % COUNT;
    loop {
        let port = (FIRST + (start + NEXT_PORT.fetch_add(1, Ordering::Relaxed)) % COUNT) as u16;
        if demo.iter().any(|(_, p)| *p == port) {
            continue;
        }
        if let Ok(listener) = listener_on(port) {
            return listener;
        }
    }
}

/// A port that is free now and that this process has not handed out before (nothing listens
/// on it: it also serves as a closed port).
pub fn free_port() -> u16 {
    port_of(&free_listener())
}

/// A listener on 127.0.0.1:`port` (a port chosen before, e.g. to restart a process where its
/// clients expect it).
pub fn listener_on(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
}

/// The port a listener is bound to.
pub fn port_of(listener: &TcpListener) -> u16 {
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}

/// 127.0.0.1:`port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
