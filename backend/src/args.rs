//! Command-line and environment configuration of the backend, parsed by hand to keep the build light.
//!
//! Each setting comes from its flag (`--name`, `--port`, `--host`, also as `--flag=value`), else
//! from its environment variable (`BACKEND_NAME`, `BACKEND_PORT`, `BACKEND_HOST`), else from the
//! default: flags win so one container image can be started with different names.

use thiserror::Error;

/// One line that says how to start the backend, printed with every argument error.
pub const USAGE: &str = "usage: backend [--name NAME] [--port PORT] [--host HOST]  \
(env: BACKEND_NAME, BACKEND_PORT, BACKEND_HOST; defaults: backend, 8001, 0.0.0.0)";

/// Instance name used when neither `--name` nor `BACKEND_NAME` is given.
pub const DEFAULT_NAME: &str = "backend";
/// Port used when neither `--port` nor `BACKEND_PORT` is given.
pub const DEFAULT_PORT: u16 = 8001;
/// Bind address used when neither `--host` nor `BACKEND_HOST` is given.
pub const DEFAULT_HOST: &str = "0.0.0.0";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve with this configuration.
    Run(Config),
    /// Print [`USAGE`] and exit successfully (`-h`, `--help`).
    Help,
}

/// A validated backend configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The instance name, echoed in every body and in `x-backend-instance`.
    pub name: String,
    /// The address or host name to bind.
    pub host: String,
    /// The TCP port to bind; `0` asks the OS for a free one.
    pub port: u16,
}

/// Why the arguments or the environment were rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unknown argument `{0}`")]
    UnknownArgument(String),
    #[error("`{0}` needs a value")]
    MissingValue(&'static str),
    #[error("bad port `{value}` from {source_name}: expected a number from 0 to 65535")]
    BadPort { value: String, source_name: String },
    #[error("bad instance name `{value}` from {source_name}: it must be non-empty visible ASCII")]
    BadName { value: String, source_name: String },
    #[error("empty host from {0}")]
    EmptyHost(String),
}

/// Parses `args` (without the program name), falling back to `env` for settings not given as flags.
///
/// `env` is a lookup function rather than `std::env::var` so tests need not touch the process
/// environment.
pub fn parse<I, E>(args: I, env: E) -> Result<Command, ArgsError>
where
    I: IntoIterator<Item = String>,
    E: Fn(&str) -> Option<String>,
{
    let mut name = None;
    let mut port = None;
    let mut host = None;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        let (slot, flag_name) = match flag.as_str() {
            "-h" | "--help" if inline_value.is_none() => return Ok(Command::Help),
            "--name" => (&mut name, "--name"),
            "--port" => (&mut port, "--port"),
            "--host" => (&mut host, "--host"),
            _ => return Err(ArgsError::UnknownArgument(flag)),
        };
        let value = match inline_value {
            Some(value) => value,
            None => args.next().ok_or(ArgsError::MissingValue(flag_name))?,
        };
        *slot = Some((value, flag_name.to_owned()));
    }

    let from_env = |var: &str| env(var).map(|value| (value, format!("${var}")));
    let name = name.or_else(|| from_env("BACKEND_NAME"));
    let port = port.or_else(|| from_env("BACKEND_PORT"));
    let host = host.or_else(|| from_env("BACKEND_HOST"));

    Ok(Command::Run(Config {
        name: match name {
            Some((value, source_name)) => check_name(value, source_name)?,
            None => DEFAULT_NAME.to_owned(),
        },
        port: match port {
            Some((value, source_name)) => parse_port(value, source_name)?,
            None => DEFAULT_PORT,
        },
        host: match host {
            Some((value, source_name)) if value.is_empty() => {
                return Err(ArgsError::EmptyHost(source_name))
            }
            Some((value, _)) => value,
            None => DEFAULT_HOST.to_owned(),
        },
    }))
}

/// The name goes into a response header, so it must be a valid header value; requiring visible
/// ASCII (no spaces) also keeps it readable in logs.
fn check_name(value: String, source_name: String) -> Result<String, ArgsError> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(value)
    } else {
        Err(ArgsError::BadName { value, source_name })
    }
}

fn parse_port(value: String, source_name: String) -> Result<u16, ArgsError> {
    value
        .parse()
        .map_err(|_| ArgsError::BadPort { value, source_name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn run(list: &[&str], env: impl Fn(&str) -> Option<String>) -> Config {
        match parse(args(list), env) {
            Ok(Command::Run(config)) => config,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_without_flags_or_env() {
        assert_eq!(
            run(&[], no_env),
            Config {
                name: "backend".into(),
                host: "0.0.0.0".into(),
                port: 8001
            }
        );
    }

    #[test]
    fn flags_set_every_field() {
        assert_eq!(
            run(
                &[
                    "--name",
                    "backend-2",
                    "--port",
                    "8002",
                    "--host",
                    "127.0.0.1"
                ],
                no_env
            ),
            Config {
                name: "backend-2".into(),
                host: "127.0.0.1".into(),
                port: 8002
            }
        );
    }

    #[test]
    fn flags_accept_the_equals_form() {
        let config = run(&["--name=backend-1", "--port=0"], no_env);
        assert_eq!(config.name, "backend-1");
        assert_eq!(config.port, 0);
    }

    #[test]
    fn env_fills_what_flags_leave_out() {
        let env = |var: &str| match var {
            "BACKEND_NAME" => Some("from-env".to_owned()),
            "BACKEND_PORT" => Some("9000".to_owned()),
            "BACKEND_HOST" => Some("::1".to_owned()),
            _ => None,
        };
        assert_eq!(
            run(&[], env),
            Config {
                name: "from-env".into(),
                host: "::1".into(),
                port: 9000
            }
        );
    }

    #[test]
    fn flags_win_over_env() {
        let env = |var: &str| match var {
            "BACKEND_NAME" => Some("from-env".to_owned()),
            "BACKEND_PORT" => Some("not-a-port".to_owned()),
            _ => None,
        };
        let config = run(&["--name", "from-flag", "--port", "8003"], env);
        assert_eq!(config.name, "from-flag");
        assert_eq!(config.port, 8003);
    }

    #[test]
    fn help_is_its_own_command() {
        assert_eq!(parse(args(&["--help"]), no_env), Ok(Command::Help));
        assert_eq!(parse(args(&["-h"]), no_env), Ok(Command::Help));
    }

    #[test]
    fn unknown_flag_is_rejected() {
        assert_eq!(
            parse(args(&["--nmae", "x"]), no_env),
            Err(ArgsError::UnknownArgument("--nmae".into()))
        );
        assert_eq!(
            parse(args(&["backend-1"]), no_env),
            Err(ArgsError::UnknownArgument("backend-1".into()))
        );
    }

    #[test]
    fn flag_without_value_is_rejected() {
        assert_eq!(
            parse(args(&["--port"]), no_env),
            Err(ArgsError::MissingValue("--port"))
        );
    }

    #[test]
    fn bad_ports_are_rejected_naming_their_source() {
        for bad in ["abc", "65536", "-1", ""] {
            assert_eq!(
                parse(args(&["--port", bad]), no_env),
                Err(ArgsError::BadPort {
                    value: bad.into(),
                    source_name: "--port".into()
                }),
                "port {bad:?}"
            );
        }
        let env = |var: &str| (var == "BACKEND_PORT").then(|| "80x".to_owned());
        assert_eq!(
            parse(args(&[]), env),
            Err(ArgsError::BadPort {
                value: "80x".into(),
                source_name: "$BACKEND_PORT".into()
            })
        );
    }

    #[test]
    fn names_that_cannot_be_a_header_value_are_rejected() {
        for bad in ["", "two words", "tab\there", "caf\u{e9}"] {
            assert!(
                matches!(
                    parse(args(&["--name", bad]), no_env),
                    Err(ArgsError::BadName { .. })
                ),
                "name {bad:?} was accepted"
            );
        }
    }

    #[test]
    fn empty_host_is_rejected() {
        assert_eq!(
            parse(args(&["--host", ""]), no_env),
            Err(ArgsError::EmptyHost("--host".into()))
        );
    }

    #[test]
    fn errors_read_well() {
        let error = parse(args(&["--port", "x"]), no_env).unwrap_err();
        assert_eq!(
            error.to_string(),
            "bad port `x` from --port: expected a number from 0 to 65535"
        );
    }
}
