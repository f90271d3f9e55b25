//! Rewrites the shipped `envoy.yaml` for a local run: socket addresses, the
//! wasm filename and, for tests that need it, exact snippets of the plugin
//! configuration. Everything else stays as shipped, so what ships is what is
//! tested.

use std::net::SocketAddr;
use std::path::Path;

/// The listener and admin addresses as shipped.
pub const LISTENER: &str = "{ address: 0.0.0.0, port_value: 8000 }";
pub const ADMIN: &str = "{ address: 0.0.0.0, port_value: 9901 }";
/// The wasm filename as shipped (where the container mounts it).
pub const WASM_PATH: &str = "/etc/envoy/ratelimit.wasm";
/// The upstream endpoints as shipped: (host, port) of backend-1, backend-2.
pub const BACKENDS: [(&str, u16); 2] = [("backend-1", 8001), ("backend-2", 8002)];
/// The upstream endpoints as shipped: (host, port) of limitd-1, limitd-2.
pub const LIMITDS: [(&str, u16); 2] = [("limitd-1", 8081), ("limitd-2", 8082)];

fn socket(host: &str, port: u16) -> String {
    format!("{{ address: {host}, port_value: {port} }}")
}

/// Replaces `from` by `to`, insisting that `from` occurs exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> Result<String, String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => Err(format!(
            "envoy.yaml: expected {from:?} exactly once, found it {n} times"
        )),
    }
}

/// Where each part of a local stack listens.
#[derive(Debug, Clone)]
pub struct LocalAddresses<'a> {
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    pub backends: [SocketAddr; 2],
    pub limitds: [SocketAddr; 2],
    pub wasm: &'a Path,
}

/// Rewrites `shipped` (the text of `envoy.yaml`) for `local`, then applies
/// `extra` snippet replacements, each of which must match exactly once.
pub fn rewrite(
    shipped: &str,
    local: &LocalAddresses<'_>,
    extra: &[(String, String)],
) -> Result<String, String> {
    let mut text = replace_once(
        shipped,
        LISTENER,
        &socket(&local.listener.ip().to_string(), local.listener.port()),
    )?;
    text = replace_once(
        &text,
        ADMIN,
        &socket(&local.admin.ip().to_string(), local.admin.port()),
    )?;
    for ((host, port), addr) in BACKENDS
        .iter()
        .zip(local.backends)
        .chain(LIMITDS.iter().zip(local.limitds))
    {
        text = replace_once(
            &text,
            &socket(host, *port),
            &socket(&addr.ip().to_string(), addr.port()),
        )?;
    }
    text = replace_once(&text, WASM_PATH, &local.wasm.display().to_string())?;
    for (from, to) in extra {
        text = replace_once(&text, from, to)?;
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(wasm: &Path) -> LocalAddresses<'_> {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        LocalAddresses {
            listener: at(18000),
            admin: at(19901),
            backends: [at(18001), at(18002)],
            limitds: [at(18081), at(18082)],
            wasm,
        }
    }

    fn shipped() -> String {
        std::fs::read_to_string(crate::paths::workspace_root().join("envoy.yaml")).unwrap()
    }

    #[test]
    fn the_shipped_file_rewrites_to_local_addresses_only() {
        let wasm = Path::new("/tmp/x/ratelimit.wasm");
        let shipped = shipped();
        let text = rewrite(&shipped, &local(wasm), &[]).unwrap();
        for expected in [
            "{ address: 127.0.0.1, port_value: 18000 }",
            "{ address: 127.0.0.1, port_value: 19901 }",
            "{ address: 127.0.0.1, port_value: 18001 }",
            "{ address: 127.0.0.1, port_value: 18082 }",
            "filename: /tmp/x/ratelimit.wasm",
        ] {
            assert!(text.contains(expected), "missing {expected}");
        }
        for gone in ["backend-1", "limitd-2", WASM_PATH, "0.0.0.0"] {
            assert!(!text.contains(gone), "{gone} still there");
        }
        // Nothing but those lines changed.
        let changed = shipped
            .lines()
            .zip(text.lines())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, 7);
    }

    #[test]
    fn a_snippet_that_is_not_there_is_an_error() {
        let wasm = Path::new("/w.wasm");
        let err = rewrite(
            &shipped(),
            &local(wasm),
            &[("no such text".into(), "x".into())],
        )
        .unwrap_err();
        assert!(err.contains("no such text"), "{err}");
    }
}
