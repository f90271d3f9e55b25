//! Command-line and environment configuration of the backend, parsed by clap.
//!
//! Each setting comes from its flag (`--name`, `--port`, `--host`, also as `--flag=value`), else
//! from its environment variable (`BACKEND_NAME`, `BACKEND_PORT`, `BACKEND_HOST`), else from the
//! default: flags win so one container image can be started with different names. An empty
//! variable is a value like any other, and is refused like an empty flag.

use clap::builder::NonEmptyStringValueParser;
use clap::Parser;

/// Instance name used when neither `--name` nor `BACKEND_NAME` is given.
pub const DEFAULT_NAME: &str = "backend";
/// Port used when neither `--port` nor `BACKEND_PORT` is given.
pub const DEFAULT_PORT: u16 = 8001;
/// Bind address used when neither `--host` nor `BACKEND_HOST` is given.
pub const DEFAULT_HOST: &str = "0.0.0.0";

/// A validated backend configuration: the command line.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "backend",
    version,
    about = "Demo upstream behind Envoy: answers with its instance name so load balancing is visible."
)]
pub struct Config {
    /// The instance name, echoed in every body and in the x-backend-instance header
    #[arg(long, env = "BACKEND_NAME", default_value = DEFAULT_NAME, value_parser = instance_name)]
    pub name: String,
    /// The address or host name to bind
    #[arg(long, env = "BACKEND_HOST", default_value = DEFAULT_HOST, value_parser = NonEmptyStringValueParser::new())]
    pub host: String,
    /// The TCP port to bind; 0 asks the OS for a free one
    #[arg(long, env = "BACKEND_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
}

/// The name goes into a response header, so it must be a valid header value; requiring visible
/// ASCII (no spaces) also keeps it readable in logs.
fn instance_name(value: &str) -> Result<String, String> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(value.to_owned())
    } else {
        Err("it must be non-empty visible ASCII (it is sent as a header value)".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::{CommandFactory, FromArgMatches};

    /// Parses `list` as the command line, with the process environment ignored (the variables
    /// are checked by [`every_setting_has_its_variable_and_default`]).
    fn parse(list: &[&str]) -> Result<Config, clap::Error> {
        let matches = Config::command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(std::iter::once("backend").chain(list.iter().copied()))?;
        Config::from_arg_matches(&matches)
    }

    fn run(list: &[&str]) -> Config {
        parse(list).unwrap_or_else(|error| panic!("expected a config, got {error}"))
    }

    #[test]
    fn the_command_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn every_setting_has_its_variable_and_default() {
        let command = Config::command();
        let settings: Vec<(String, String, String)> = command
            .get_arguments()
            .filter_map(|arg| {
                let env = arg.get_env()?.to_string_lossy().into_owned();
                let default = arg.get_default_values().first()?;
                Some((
                    format!("--{}", arg.get_long()?),
                    env,
                    default.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        let expected = [
            ("--name", "BACKEND_NAME", "backend"),
            ("--host", "BACKEND_HOST", "0.0.0.0"),
            ("--port", "BACKEND_PORT", "8001"),
        ];
        assert_eq!(
            settings,
            expected.map(|(f, e, d)| (f.to_owned(), e.to_owned(), d.to_owned()))
        );
    }

    #[test]
    fn defaults_apply_without_flags_or_env() {
        assert_eq!(
            run(&[]),
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
            run(&[
                "--name",
                "backend-2",
                "--port",
                "8002",
                "--host",
                "127.0.0.1"
            ]),
            Config {
                name: "backend-2".into(),
                host: "127.0.0.1".into(),
                port: 8002
            }
        );
    }

    #[test]
    fn flags_accept_the_equals_form() {
        let config = run(&["--name=backend-1", "--port=0"]);
        assert_eq!(config.name, "backend-1");
        assert_eq!(config.port, 0);
    }

    #[test]
    fn help_and_version_are_their_own_answers() {
        for flag in ["--help", "-h"] {
            assert_eq!(
                parse(&[flag]).map_err(|e| e.kind()),
                Err(ErrorKind::DisplayHelp)
            );
        }
        assert_eq!(
            parse(&["--version"]).map_err(|e| e.kind()),
            Err(ErrorKind::DisplayVersion)
        );
    }

    #[test]
    fn unknown_arguments_are_rejected() {
        assert_eq!(
            parse(&["--nmae", "x"]).map_err(|e| e.kind()),
            Err(ErrorKind::UnknownArgument)
        );
        assert_eq!(
            parse(&["backend-1"]).map_err(|e| e.kind()),
            Err(ErrorKind::UnknownArgument)
        );
    }

    #[test]
    fn flag_without_value_is_rejected() {
        let error = parse(&["--port"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidValue);
        assert!(error.to_string().contains("--port"), "{error}");
    }

    #[test]
    fn bad_ports_are_rejected_naming_their_flag() {
        for bad in ["abc", "65536", "-1", ""] {
            let error = parse(&[&format!("--port={bad}")]).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "port {bad:?}");
            assert!(error.to_string().contains("--port <PORT>"), "{error}");
        }
    }

    #[test]
    fn names_that_cannot_be_a_header_value_are_rejected() {
        for bad in ["", "two words", "tab\there", "caf\u{e9}"] {
            let error = parse(&["--name", bad]).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "name {bad:?}");
            assert!(error.to_string().contains("--name <NAME>"), "{error}");
        }
    }

    #[test]
    fn empty_host_is_rejected() {
        let error = parse(&["--host", ""]).unwrap_err();
        assert!(error.to_string().contains("--host <HOST>"), "{error}");
    }
}
