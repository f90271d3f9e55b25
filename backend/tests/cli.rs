//! The `backend` binary's command line, as a shell or a container would run it: help, version,
//! and errors that name the flag (also when the bad value comes from the environment).

use std::process::{Command, Output};

/// Runs the built binary with `args`, the backend's variables removed and then `env` set.
fn backend(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(args)
        .env_remove("BACKEND_NAME")
        .env_remove("BACKEND_HOST")
        .env_remove("BACKEND_PORT")
        .envs(env.iter().copied())
        .output()
        .expect("the backend binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_every_flag_with_its_variable_and_exits_0() {
    let output = backend(&["--help"], &[]);
    assert!(output.status.success(), "{output:?}");
    let help = text(&output.stdout);
    for expected in [
        "--name <NAME>",
        "BACKEND_NAME",
        "--host <HOST>",
        "BACKEND_HOST",
        "--port <PORT>",
        "BACKEND_PORT",
        "8001",
    ] {
        assert!(help.contains(expected), "{expected} missing from\n{help}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let output = backend(&["--version"], &[]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        text(&output.stdout).trim(),
        format!("backend {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_value_exits_2_naming_the_flag() {
    let output = backend(&["--port", "80x"], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(text(&output.stderr).contains("--port <PORT>"), "{output:?}");
}

#[test]
fn a_bad_variable_exits_2_naming_the_flag() {
    let output = backend(&[], &[("BACKEND_NAME", "two words")]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("two words") && stderr.contains("--name <NAME>"),
        "{stderr}"
    );
}
