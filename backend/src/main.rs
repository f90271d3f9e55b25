//! The `backend` binary: parses flags and environment, sets up tracing, binds, serves until SIGTERM or Ctrl-C.

use std::io;
use std::process::ExitCode;
use std::sync::Arc;

use backend::args::Config;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // `--help` and `--version` exit 0; a command line or environment that cannot be used exits 2
    // with the flag at fault named.
    let config = Config::parse();

    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> io::Result<()> {
    let address = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|error| bind_error(&address, error))?;
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
