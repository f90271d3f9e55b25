//! A child process that is killed when dropped, with its output in a log file: started with a
//! listening socket if it takes one, probed until ready, and started again on fresh ports when
//! another process took one of its ports first.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::poll::eventually;

/// The first file descriptor of sockets passed by socket activation (systemd's
/// `SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// How many times a start is tried when another process takes one of its ports first.
const PORT_ATTEMPTS: usize = 5;

/// A running child process owned by a stack.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    /// Where this start's output begins in the log (a restart appends to it).
    log_start: u64,
    child: Option<Child>,
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `<dir>/<name>.log`.
    ///
    /// The child gets SIGKILL if the thread that started it dies, so a harness
    /// that is itself killed leaves nothing behind.
    pub fn spawn(name: &str, command: Command, dir: &Path) -> io::Result<Process> {
        Process::start(name, command, dir, None)
    }

    /// [`Process::spawn`], with `listener` passed as a systemd socket-activated service gets its
    /// socket: as file descriptor 3, with `LISTEN_FDS=1`. `LISTEN_PID` is left unset (the
    /// child's pid is not known before it starts), which limitd and the backend accept. This
    /// process's copy of the socket is closed once the child has its own.
    pub fn spawn_listening(
        name: &str,
        command: Command,
        dir: &Path,
        listener: TcpListener,
    ) -> io::Result<Process> {
        Process::start(name, command, dir, Some(&listener))
    }

    fn start(
        name: &str,
        mut command: Command,
        dir: &Path,
        listener: Option<&TcpListener>,
    ) -> io::Result<Process> {
        let log = dir.join(format!("{name}.log"));
        let out = File::options().create(true).append(true).open(&log)?;
        let log_start = out.metadata()?.len();
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        #[allow(unsafe_code)]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if let Some(listener) = listener {
            let fd = listener.as_raw_fd();
            command
                .env("LISTEN_FDS", "1")
                .env_remove("LISTEN_PID")
                .env_remove("LISTEN_FDS_FIRST_FD");
            #[allow(unsafe_code)]
            // SAFETY: dup2 and fcntl are async-signal-safe; `fd` stays open in the parent until
            // the child has started.
            unsafe {
                command.pre_exec(move || {
                    // dup2 gives the copy no close-on-exec flag; a socket already at 3 keeps its.
                    let passed = if fd == LISTEN_FDS_START {
                        libc::fcntl(fd, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, LISTEN_FDS_START)
                    };
                    if passed == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {name} ({:?}): {e}", command.get_program()),
            )
        })?;
        Ok(Process {
            name: name.to_owned(),
            log,
            log_start,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited, and with what status.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends a signal (e.g. `libc::SIGKILL`, `libc::SIGTERM`) without waiting.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on our own child's pid; the child is not yet reaped.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Waits at most `within` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        eventually(within, || self.try_wait()).ok()
    }

    /// Polls `probe` until it holds, for at most `within`; fails with the end of the log if the
    /// process exits first or `probe` never holds, saying whether a port was taken.
    pub fn await_ready(
        &mut self,
        within: Duration,
        mut probe: impl FnMut() -> Result<(), String>,
    ) -> Result<(), StartError> {
        let result = eventually(within, || {
            if let Some(status) = self.try_wait() {
                return Ok(Err(format!("it exited ({status})")));
            }
            probe().map(Ok)
        });
        let Err(failure) = result.and_then(|ready| ready) else {
            return Ok(());
        };
        let message = format!(
            "{} did not become ready: {failure}\n--- {} log ---\n{}",
            self.name,
            self.name,
            self.log_tail(4000)
        );
        // What Redis, Sentinel, Envoy (and Prometheus, in lower case) say when they cannot bind a
        // port of their configuration.
        let taken = self
            .log_since_start()
            .to_ascii_lowercase()
            .contains("address already in use");
        if self.try_wait().is_some() && taken {
            Err(StartError::PortTaken(message))
        } else {
            Err(StartError::Failed(message))
        }
    }

    /// Kills the process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `max_bytes` of the log.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    /// What this start of the process wrote.
    fn log_since_start(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = bytes.len().min(self.log_start as usize);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a process did not start.
#[derive(Debug)]
pub enum StartError {
    /// It exited because one of its ports was taken: worth trying again on other ports.
    PortTaken(String),
    /// Anything else.
    Failed(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::PortTaken(message) | StartError::Failed(message) => f.write_str(message),
        }
    }
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        StartError::Failed(message)
    }
}

impl From<io::Error> for StartError {
    fn from(error: io::Error) -> Self {
        StartError::Failed(error.to_string())
    }
}

/// Runs `start` (which picks its ports afresh at each call) until it does not fail for a taken
/// port, at most a few times: a port chosen free and taken by another process before the child
/// bound it is a retry, not a failed test.
pub fn retry_on_taken_port<T>(
    mut start: impl FnMut() -> Result<T, StartError>,
) -> Result<T, String> {
    let mut attempt = 1;
    loop {
        match start() {
            Ok(started) => return Ok(started),
            Err(StartError::PortTaken(message)) if attempt < PORT_ATTEMPTS => {
                let first = message.lines().next().unwrap_or_default();
                eprintln!("a port was taken, starting again on other ports: {first}");
                attempt += 1;
            }
            Err(StartError::PortTaken(message)) => {
                return Err(format!(
                    "a port was taken at each of {PORT_ATTEMPTS} attempts; the last:\n{message}"
                ))
            }
            Err(StartError::Failed(message)) => return Err(message),
        }
    }
}
