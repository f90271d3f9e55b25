//! A fake proxy-wasm host (ABI 0.2.1) on the `wasmi` interpreter, for testing
//! the built `ratelimit.wasm` across the ABI without Envoy.
//!
//! [`Host::load`] compiles a module once; [`Host::start`] instantiates a
//! [`Vm`] and runs the lifecycle up to `proxy_on_configure`. The test then
//! drives streams ([`Vm::request`], [`Vm::response_headers`], [`Vm::finish`]),
//! answers callouts ([`Vm::respond_to_call`], [`Vm::reset_call`]), fires
//! ticks and queue events, and reads back what the module did: log lines,
//! callouts, local replies, resumptions, header changes, metrics, shared data.
//!
//! Every `env.proxy_*` import of ABI 0.2.1 and the WASI calls Rust's std needs
//! are defined; gRPC calls trap with a message naming them, and any other
//! unknown import links to a stub that traps naming itself when called. A trap
//! poisons the VM, as in Envoy. Where Envoy's behaviour is subtle (an unknown
//! cluster, a reset callout, a local reply passing through the same filter's
//! response callbacks, a destroyed context), the host follows Envoy 1.40 as
//! observed, and says so where it does.
//!
//! ```no_run
//! # fn main() -> Result<(), wasmhost::HostError> {
//! let mut host = wasmhost::Host::load("target/wasm32-wasip1/wasm/ratelimit.wasm")?;
//! host.cluster("limitd");
//! let mut vm = host.start(r#"{"rules": []}"#)?;
//! let req = vm.request().header(":path", "/").send_headers()?;
//! assert!(vm.request_forwarded(req));
//! # Ok(())
//! # }
//! ```

mod abi;
mod callout;
mod error;
mod events;
mod guest;
mod headers;
mod host;
mod imports;
mod request;
mod shared;
mod state;
mod vm;

pub use abi::{Action, LogLevel, MetricType};
pub use error::HostError;
pub use headers::Headers;
pub use host::Host;
pub use request::{Request, RequestBuilder, Response};
pub use state::{ContextId, ContextKind, ContextState, HttpCall, LocalReply, LogEntry};
pub use vm::Vm;
