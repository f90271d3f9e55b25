//! Rewrites the shipped `envoy.yaml` for a local run: socket addresses, the
//! wasm filename and, for tests that need it, exact snippets of the plugin
//! configuration. Everything else stays as shipped, so what ships is what is
//! tested. The benchmark also swaps or removes whole HTTP filters
//! ([`replace_http_filter`]) to compare against Envoy without our limiter.

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

/// Replaces the HTTP filter named `name` (its whole `- name: <name>` list item
/// in `http_filters`, which must occur once) by `replacement`: YAML list items
/// written from column 0, re-indented to where the filter was. An empty
/// `replacement` removes the filter.
pub fn replace_http_filter(text: &str, name: &str, replacement: &str) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().collect();
    let item = format!("- name: {name}");
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim() == item)
        .collect();
    let [start] = starts[..] else {
        return Err(format!(
            "envoy config: expected the http filter {name:?} exactly once, found it {} times",
            starts.len()
        ));
    };
    let indent = lines[start].len() - lines[start].trim_start().len();
    // The item ends before the next non-blank line indented no deeper than its dash.
    let end = (start + 1..lines.len())
        .find(|&i| {
            let line = lines[i];
            !line.trim().is_empty() && line.len() - line.trim_start().len() <= indent
        })
        .unwrap_or(lines.len());
    let pad = " ".repeat(indent);
    let mut out: Vec<String> = lines[..start].iter().map(|l| (*l).to_owned()).collect();
    out.extend(replacement.lines().map(|l| {
        if l.trim().is_empty() {
            String::new()
        } else {
            format!("{pad}{l}")
        }
    }));
    out.extend(lines[end..].iter().map(|l| (*l).to_owned()));
    let mut joined = out.join("\n");
    if text.ends_with('\n') {
        joined.push('\n');
    }
    Ok(joined)
}

/// The filter's `limitd_token` in a configuration, which limitd must be given
/// as `LIMITD_TOKEN`.
pub fn limitd_token(config: &str) -> Result<String, String> {
    let start = config
        .find(r#""limitd_token": ""#)
        .ok_or("envoy.yaml has no \"limitd_token\"")?
        + r#""limitd_token": ""#.len();
    let len = config[start..]
        .find('"')
        .ok_or("envoy.yaml's \"limitd_token\" is not closed")?;
    Ok(config[start..start + len].to_owned())
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

    fn http_filter_names(text: &str) -> Vec<String> {
        let yaml: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
        let manager = &yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
        manager["typed_config"]["http_filters"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn an_http_filter_can_be_removed_or_swapped() {
        let shipped = shipped();
        assert_eq!(
            http_filter_names(&shipped),
            ["envoy.filters.http.wasm", "envoy.filters.http.router"]
        );
        let removed = replace_http_filter(&shipped, "envoy.filters.http.wasm", "").unwrap();
        assert_eq!(http_filter_names(&removed), ["envoy.filters.http.router"]);
        assert!(!removed.contains(WASM_PATH) && !removed.contains("vm_config"));
        // Everything after the filter (router, clusters) is intact.
        assert!(removed.ends_with(
            shipped
                .split("- name: envoy.filters.http.router")
                .nth(1)
                .unwrap()
        ));

        let swapped = replace_http_filter(
            &shipped,
            "envoy.filters.http.wasm",
            "- name: envoy.filters.http.local_ratelimit\n  typed_config:\n    stat_prefix: x\n",
        )
        .unwrap();
        assert_eq!(
            http_filter_names(&swapped),
            [
                "envoy.filters.http.local_ratelimit",
                "envoy.filters.http.router"
            ]
        );
        let err = replace_http_filter(&shipped, "envoy.filters.http.nope", "").unwrap_err();
        assert!(err.contains("envoy.filters.http.nope"), "{err}");
    }
}
