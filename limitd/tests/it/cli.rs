//! The `limitd` binary's command line, as a shell or a container runs it: help, version, and
//! errors that name the flag, whether the value came from a flag or a variable.

use std::process::{Command, Output};

/// Every variable limitd reads, removed from the child's environment before `env` is set.
const VARIABLES: [&str; 14] = [
    "LIMITD_LISTEN",
    "LIMITD_TOKEN",
    "SENTINEL_HOSTS",
    "REDIS_MASTER",
    "REDIS_URL",
    "REDIS_PASSWORD",
    "SENTINEL_PASSWORD",
    "REDIS_CONNECT_TIMEOUT_MS",
    "REDIS_RESPONSE_TIMEOUT_MS",
    "LIMITD_MASTER_POLL_MS",
    "LIMITD_MAX_BODY_BYTES",
    "LIMITD_SHUTDOWN_GRACE_MS",
    "LIMITD_HEADER_READ_TIMEOUT_MS",
    "LIMITD_MAX_CONNECTIONS",
];

fn limitd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_limitd"));
    for var in VARIABLES {
        command.env_remove(var);
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the limitd binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_every_variable_and_exits_0() {
    let output = limitd(&["--help"], &[]);
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    for var in VARIABLES {
        assert!(help.contains(var), "{var} missing from\n{help}");
    }
}

#[test]
fn help_does_not_show_a_secret_from_the_environment() {
    let token = "0123456789abcdef-secret";
    let output = limitd(&["--help"], &[("LIMITD_TOKEN", token)]);
    assert!(output.status.success(), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains(token));
}

#[test]
fn version_exits_0() {
    let output = limitd(&["--version"], &[]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("limitd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn without_a_redis_target_it_exits_2_naming_every_target_flag() {
    // A blank variable counts as unset, as it did before the command line existed.
    let output = limitd(&[], &[("SENTINEL_HOSTS", " ")]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = stderr(&output);
    assert!(
        text.contains("--sentinel-hosts/--redis-url/--redis-cluster-nodes")
            && text.contains("none is set"),
        "{text}"
    );
}

#[test]
fn a_bad_variable_exits_2_naming_its_flag() {
    let output = limitd(
        &[],
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("LIMITD_MAX_BODY_BYTES", "1.5"),
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        stderr(&output).contains("--max-body-bytes <BYTES>"),
        "{output:?}"
    );
}

#[test]
fn a_flag_wins_over_its_variable() {
    // The variable alone would be refused; the flag's value is the one checked, and it is
    // refused for a reason of its own.
    let output = limitd(
        &["--redis-connect-timeout-ms", "0"],
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("REDIS_CONNECT_TIMEOUT_MS", "fast"),
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = stderr(&output);
    assert!(
        text.contains("invalid value '0'") && !text.contains("fast"),
        "{text}"
    );
}
