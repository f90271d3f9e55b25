//! What can go wrong when loading or driving a module: the [`HostError`] type.

use std::fmt;

use crate::state::LogEntry;

/// A failure of the module under test (a trap, a refused configuration) or of
/// the host itself (a missing file, a bad call from the test).
#[derive(Clone)]
pub enum HostError {
    /// The module could not be read, compiled or instantiated.
    Load(String),
    /// A call into the module trapped; the VM is unusable afterwards, as in Envoy.
    Trap {
        /// The export and its arguments, e.g. `proxy_on_request_headers(2, 3, 1)`.
        call: String,
        message: String,
        /// The module's last log lines (a Rust panic logs its message before trapping).
        logs: Vec<LogEntry>,
    },
    /// A call into a VM that trapped earlier.
    Poisoned { first_trap: String },
    /// `proxy_on_vm_start` returned false.
    VmStartRefused { logs: Vec<LogEntry> },
    /// `proxy_on_configure` returned false: Envoy would refuse the plugin.
    ConfigureRefused { logs: Vec<LogEntry> },
    /// The test asked for something that does not exist (an unknown token or context).
    Usage(String),
}

impl HostError {
    /// The log lines carried by the error (empty for kinds that carry none).
    pub fn logs(&self) -> &[LogEntry] {
        match self {
            HostError::Trap { logs, .. }
            | HostError::VmStartRefused { logs }
            | HostError::ConfigureRefused { logs } => logs,
            _ => &[],
        }
    }
}

fn write_logs(f: &mut fmt::Formatter<'_>, logs: &[LogEntry]) -> fmt::Result {
    for entry in logs {
        write!(f, "\n  [{:?}] {}", entry.level, entry.message)?;
    }
    Ok(())
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Load(e) => write!(f, "cannot load the module: {e}"),
            HostError::Trap {
                call,
                message,
                logs,
            } => {
                write!(f, "the VM trapped in {call}: {message}")?;
                write_logs(f, logs)
            }
            HostError::Poisoned { first_trap } => {
                write!(f, "the VM trapped earlier and cannot be used: {first_trap}")
            }
            HostError::VmStartRefused { logs } => {
                write!(f, "proxy_on_vm_start returned false")?;
                write_logs(f, logs)
            }
            HostError::ConfigureRefused { logs } => {
                write!(f, "proxy_on_configure returned false")?;
                write_logs(f, logs)
            }
            HostError::Usage(e) => write!(f, "{e}"),
        }
    }
}

// Debug prints the readable form: it is what `unwrap` and a test's `Err` show.
impl fmt::Debug for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for HostError {}
