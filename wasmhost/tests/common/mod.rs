//! What every test file needs: the built module, loaded into a fresh host.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use wasmhost::Host;

/// The module under test: `$RATELIMIT_WASM`, else the workspace's wasm profile output.
pub fn wasm_path() -> PathBuf {
    if let Some(path) = std::env::var_os("RATELIMIT_WASM") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), PathBuf::from);
    target.join("wasm32-wasip1/wasm/ratelimit.wasm")
}

/// A host for the module with the `limitd` cluster, as in `envoy.yaml`.
pub fn host() -> Host {
    let path = wasm_path();
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask build` (or `cargo xtask test`, which builds it first)",
        path.display()
    );
    warn_if_stale(&path);
    let mut host = Host::load(&path).unwrap();
    host.cluster("limitd");
    host
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                newest(&entry.path())
            } else {
                meta.modified().ok()
            }
        })
        .max()
}

/// A module older than the filter's sources tests old code: say so (shown
/// with a failure). `cargo xtask test` always rebuilds it first.
fn warn_if_stale(wasm: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::fs::metadata(wasm).and_then(|m| m.modified()).ok();
    let sources = ["filter/src", "protocol/src"]
        .iter()
        .filter_map(|dir| newest(&root.join(dir)))
        .max();
    if let (Some(built), Some(sources)) = (built, sources) {
        if sources > built {
            eprintln!(
                "warning: {} is older than the filter's sources; run `cargo xtask build` to test the current code",
                wasm.display()
            );
        }
    }
}

// Each test file uses some of these helpers.
#[allow(dead_code)]
pub mod filter;
