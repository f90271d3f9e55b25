//! The per-VM host state (the wasmi store's data) and the records of what the
//! module did: log lines, callouts, local replies, per-context streams.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use wasmi::{Memory, TypedFunc};

use crate::abi::LogLevel;
use crate::headers::Headers;
use crate::shared::Shared;

/// A context id, as the host hands them out (the root is the first).
pub type ContextId = u32;

/// One `proxy_log` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub level: LogLevel,
    pub message: String,
    /// The effective context when it was logged.
    pub context_id: ContextId,
}

/// One `proxy_http_call` the module made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    /// The effective context that dispatched it; the answer goes there.
    pub context_id: ContextId,
    pub cluster: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout_ms: u32,
    /// Whether the test has answered (or reset) it.
    pub answered: bool,
}

/// One `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// The headers the module gave (without `:status`).
    pub headers: Headers,
    pub body: Vec<u8>,
    pub details: String,
    pub grpc_status: i32,
    /// The headers the client gets: `:status` and `headers` after the same
    /// filter's `proxy_on_response_headers` ran on them, as in Envoy. `None`
    /// until that pass ran.
    pub sent_headers: Option<Headers>,
}

/// Who a context is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextKind {
    Root,
    Http { root: ContextId },
}

/// What the host knows of one context, live or finished.
#[derive(Debug, Clone)]
pub struct ContextState {
    pub kind: ContextKind,
    pub request_headers: Headers,
    pub request_trailers: Headers,
    pub response_headers: Headers,
    pub response_trailers: Headers,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    /// Properties of this stream (path segments joined by `\0`), over the VM's.
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    /// How many times `proxy_continue_stream(request)` was called for it.
    pub request_resumes: u32,
    pub response_resumes: u32,
    pub local_replies: Vec<LocalReply>,
    /// `proxy_close_stream` was called for it.
    pub closed: bool,
    /// `proxy_on_done` was delivered.
    pub done: bool,
    /// `proxy_on_delete` was delivered: the context no longer exists.
    pub deleted: bool,
}

impl ContextState {
    pub(crate) fn new(kind: ContextKind) -> Self {
        ContextState {
            kind,
            request_headers: Headers::new(),
            request_trailers: Headers::new(),
            response_headers: Headers::new(),
            response_trailers: Headers::new(),
            request_body: Vec::new(),
            response_body: Vec::new(),
            properties: HashMap::new(),
            request_resumes: 0,
            response_resumes: 0,
            local_replies: Vec::new(),
            closed: false,
            done: false,
            deleted: false,
        }
    }
}

/// The answer being delivered by `proxy_on_http_call_response`.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallAnswer {
    pub(crate) headers: Headers,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Headers,
    /// What `proxy_get_status` reports: (code, message).
    pub(crate) status: (u32, Vec<u8>),
}

/// Which lifecycle call is running, for buffers only readable during it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Other,
    VmStart,
    Configure,
}

/// The store's data: everything host functions read and write.
pub struct HostState {
    pub(crate) memory: Option<Memory>,
    pub(crate) allocate: Option<TypedFunc<i32, i32>>,
    pub(crate) shared: Arc<Mutex<Shared>>,
    /// This VM's number among the host's VMs (owner of its queues).
    pub(crate) vm: u64,
    pub(crate) vm_id: String,
    pub(crate) phase: Phase,
    pub(crate) effective: ContextId,
    pub(crate) contexts: BTreeMap<ContextId, ContextState>,
    /// Properties of every stream of this VM (path segments joined by `\0`).
    pub(crate) properties: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) clusters: BTreeSet<String>,
    pub(crate) vm_configuration: Vec<u8>,
    pub(crate) plugin_configuration: Vec<u8>,
    pub(crate) logs: Vec<LogEntry>,
    /// Whether to echo log lines to stderr (`WASMHOST_LOG` set).
    pub(crate) echo_logs: bool,
    pub(crate) calls: Vec<HttpCall>,
    pub(crate) next_token: u32,
    pub(crate) answer: Option<CallAnswer>,
    pub(crate) tick_period_ms: u32,
    /// When the tick period was last set: ticks fall due from there.
    pub(crate) tick_anchor_ns: u64,
    /// What the module wrote to fd 1 and 2 through WASI.
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) random_state: u64,
}

impl HostState {
    pub(crate) fn shared(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The effective context, if it is live.
    pub(crate) fn effective_mut(&mut self) -> Option<&mut ContextState> {
        self.contexts
            .get_mut(&self.effective)
            .filter(|c| !c.deleted)
    }

    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        if self.echo_logs {
            eprintln!("[wasm {:?} ctx {}] {message}", level, self.effective);
        }
        self.logs.push(LogEntry {
            level,
            message,
            context_id: self.effective,
        });
    }
}
