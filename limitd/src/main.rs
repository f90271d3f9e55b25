//! The limitd binary: reads the configuration from its flags and the environment, sets up
//! logging, binds (or takes the socket a service manager passed, `LISTEN_FDS`), and serves
//! until SIGTERM or SIGINT, then drains and exits 0. With the
//! `convert-ratelimit` subcommand it converts a configuration instead and exits.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::CommandFactory;
use limitd::args::{Args, Command, ConvertArgs};
use limitd::{AppState, Config};
use listenfd::ListenFd;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // `--help` and `--version` exit 0 here; a bad value exits 2 naming its flag.
    let args = Args::from_process();
    if let Some(Command::ConvertRatelimit(convert)) = &args.command {
        return convert_ratelimit(convert);
    }
    let config = match Config::try_from(args) {
        Ok(config) => config,
        Err(err) => Args::command()
            .error(ErrorKind::ValueValidation, err)
            .exit(),
    };
    // Before the runtime starts its threads: taking the socket removes LISTEN_FDS from the
    // environment, which is only sound while no other thread may read it.
    let passed = match ListenFd::from_env().take_tcp_listener(0) {
        Ok(passed) => passed,
        Err(err) => {
            eprintln!("limitd: the socket passed in LISTEN_FDS cannot be used: {err}");
            return ExitCode::FAILURE;
        }
    };

    tracing_subscriber::fmt()
        // Colours only on a terminal, not in container logs.
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(config, passed)),
        Err(err) => {
            eprintln!("limitd: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Serves on the socket a service manager passed (systemd socket activation, see
/// docs/operations.md), else on one bound to `--listen`, until SIGTERM or SIGINT.
async fn run(config: Config, passed: Option<std::net::TcpListener>) -> ExitCode {
    let shutdown = shutdown_signal();
    let listener = match passed {
        Some(passed) => match adopt(&config, passed) {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("limitd: the socket passed in LISTEN_FDS cannot be used: {err}");
                return ExitCode::FAILURE;
            }
        },
        None => match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!(
                    "limitd: cannot listen on {} (--listen, LIMITD_LISTEN): {err}",
                    config.listen
                );
                return ExitCode::FAILURE;
            }
        },
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

    match limitd::serve(listener, state, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// A passed listening socket, held to the rule `--listen` is held to (beyond loopback only
/// with a token); `--listen` itself is then not used.
fn adopt(
    config: &Config,
    passed: std::net::TcpListener,
) -> Result<tokio::net::TcpListener, String> {
    let addr = passed.local_addr().map_err(|e| e.to_string())?;
    config
        .check_passed_socket(addr)
        .map_err(|e| e.to_string())?;
    passed.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpListener::from_std(passed).map_err(|e| e.to_string())
}

/// `limitd convert-ratelimit`: the rules on stdout, one line per refused entry on stderr; exit 1
/// if any was refused (the rules are then printed only with `--allow-partial`, which also makes
/// the status 0), 2 if an input cannot be read.
fn convert_ratelimit(args: &ConvertArgs) -> ExitCode {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))
    };
    let conversion = read(&args.config)
        .and_then(|config| Ok((config, read(&args.actions)?)))
        .and_then(|(config, actions)| {
            limitd::convert::convert(&config, &actions).map_err(|err| err.to_string())
        });
    let conversion = match conversion {
        Ok(conversion) => conversion,
        Err(err) => {
            eprintln!("limitd convert-ratelimit: {err}");
            return ExitCode::from(2);
        }
    };
    for refusal in &conversion.refusals {
        eprintln!("{refusal}");
    }
    if conversion.refusals.is_empty() || args.allow_partial {
        println!("{}", conversion.rules_json());
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "limitd convert-ratelimit: {} entr{} refused; --allow-partial prints the other rules",
            conversion.refusals.len(),
            if conversion.refusals.len() == 1 {
                "y"
            } else {
                "ies"
            }
        );
        ExitCode::FAILURE
    }
}

/// A future that resolves on the first SIGTERM or SIGINT (Ctrl-C) received from now on.
///
/// The handlers are installed here, before the future is first polled: a signal that arrives
/// once limitd answers (its `/healthz`) is never lost in the moment before the serve loop first
/// polls its shutdown future. A signal that cannot be listened for is logged; the other still
/// stops limitd.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for {name}");
            None
        }
    };
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    async move {
        let received = |signal: Option<tokio::signal::unix::Signal>| async move {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = received(terminate) => tracing::info!("SIGTERM received"),
            () = received(interrupt) => tracing::info!("SIGINT received"),
        }
    }
}
