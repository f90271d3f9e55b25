//! The limitd binary: reads the configuration from its flags and the environment, sets up
//! logging, binds, and serves until SIGTERM or SIGINT, then drains and exits 0.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::CommandFactory;
use limitd::args::Args;
use limitd::{AppState, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // `--help` and `--version` exit 0 here; a bad value exits 2 naming its flag.
    let config = match Config::try_from(Args::from_process()) {
        Ok(config) => config,
        Err(err) => Args::command()
            .error(ErrorKind::ValueValidation, err)
            .exit(),
    };

    tracing_subscriber::fmt()
        // Colours only on a terminal, not in container logs.
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "limitd: cannot listen on {} (--listen, LIMITD_LISTEN): {err}",
                config.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let state = match AppState::connect(&config).await {
        Ok(state) => state,
        Err(err) => {
            eprintln!("limitd: {err}");
            return ExitCode::from(2);
        }
    };
    let listen = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(%listen, redis = %config.redis.target, "limitd started");
    if config.http.token.is_none() {
        tracing::warn!(
            %listen,
            "no LIMITD_TOKEN: any process that reaches this address may run checks and spend quota"
        );
    }

    match limitd::serve(listener, state, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                // Without a SIGTERM handler only Ctrl-C stops us; say so, do not exit.
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM received"),
        () = interrupt => tracing::info!("SIGINT received"),
    }
}
