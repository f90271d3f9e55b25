//! The `backend` binary: parses flags and environment, sets up tracing, binds (or takes the
//! socket a service manager passed, `LISTEN_FDS`), serves until SIGTERM or Ctrl-C.

use std::io;
use std::process::ExitCode;
use std::sync::Arc;

use backend::args::Config;
use clap::Parser;
use listenfd::ListenFd;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // `--help` and `--version` exit 0; a command line or environment that cannot be used exits 2
    // with the flag at fault named.
    let config = Config::parse();
    // Before the runtime starts its threads: taking the socket removes LISTEN_FDS from the
    // environment, which is only sound while no other thread may read it.
    let passed = ListenFd::from_env().take_tcp_listener(0);

    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .and_then(|runtime| runtime.block_on(run(config, passed)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Serves on the socket passed in `LISTEN_FDS` (then `--host` and `--port` are not used), else
/// on one bound to them.
async fn run(config: Config, passed: io::Result<Option<std::net::TcpListener>>) -> io::Result<()> {
    let listener = match passed.map_err(passed_error)? {
        Some(passed) => {
            passed.set_nonblocking(true).map_err(passed_error)?;
            TcpListener::from_std(passed).map_err(passed_error)?
        }
        None => {
            let address = format!("{}:{}", config.host, config.port);
            TcpListener::bind((config.host.as_str(), config.port))
                .await
                .map_err(|error| bind_error(&address, error))?
        }
    };
    let name: Arc<str> = Arc::from(config.name);
    tracing::info!(
        instance = %name,
        address = %listener.local_addr()?,
        "backend listening"
    );
    backend::serve(listener, name, shutdown_signal()).await?;
    tracing::info!("backend stopped");
    Ok(())
}

fn passed_error(error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("the socket passed in LISTEN_FDS cannot be used: {error}"),
    )
}

/// Names the address in the error, so a port clash is obvious from the one log line.
fn bind_error(address: &str, error: io::Error) -> io::Error {
    let reason = match error.kind() {
        io::ErrorKind::AddrInUse => "the address is already in use".to_owned(),
        _ => error.to_string(),
    };
    io::Error::new(
        error.kind(),
        format!("cannot listen on {address}: {reason}"),
    )
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (what `docker stop` and the test harness send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
