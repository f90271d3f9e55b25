//! Rewrites the shipped Envoy configuration for a local run: `envoy.yaml` (the bootstrap) and
//! `rules/ratelimit.yaml` (the rate-limit filter's configuration, which Envoy reads through
//! extension config discovery and reloads when a new version is moved into place). What changes:
//! socket addresses, the wasm filename, the rules directory and, for tests that need it, exact
//! snippets of the plugin configuration. Everything else stays as shipped, so what ships is what
//! is tested. The benchmark also swaps or removes whole HTTP filters ([`replace_http_filter`]) to
//! compare against Envoy without our limiter.

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
/// The name of the rate-limit filter in `envoy.yaml`'s `http_filters` (and of its discovered
/// configuration in the rules file).
pub const FILTER_NAME: &str = "ratelimit";
/// The rules file's name in its directory.
pub const RULES_FILE: &str = "ratelimit.yaml";
/// Where `envoy.yaml` reads the rules from, as shipped: the file, and the directory Envoy
/// watches for a new version being moved in.
const RULES_PATH: &str = "path: /etc/envoy/rules/ratelimit.yaml";
const RULES_WATCHED: &str = "watched_directory: { path: /etc/envoy/rules }";

fn socket(host: &str, port: u16) -> String {
    format!("{{ address: {host}, port_value: {port} }}")
}

/// Replaces `from` by `to`, insisting that `from` occurs exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> Result<String, String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => Err(format!(
            "envoy config: expected {from:?} exactly once, found it {n} times"
        )),
    }
}

/// An Envoy's configuration: the bootstrap and the rate-limit filter's configuration (the
/// rules file), as texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyConfig {
    /// `envoy.yaml`.
    pub bootstrap: String,
    /// `rules/ratelimit.yaml`: a discovery response holding the filter's whole configuration.
    pub rules: String,
}

impl EnvoyConfig {
    /// The two files as shipped in the repository.
    pub fn shipped() -> Result<EnvoyConfig, String> {
        let root = crate::paths::workspace_root();
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        Ok(EnvoyConfig {
            bootstrap: read(&root.join("envoy.yaml"))?,
            rules: read(&root.join("rules").join(RULES_FILE))?,
        })
    }

    /// Replaces `from` by `to` in whichever file holds it: it must occur exactly once in the two.
    pub fn replace(&self, from: &str, to: &str) -> Result<EnvoyConfig, String> {
        match (
            self.bootstrap.matches(from).count(),
            self.rules.matches(from).count(),
        ) {
            (1, 0) => Ok(EnvoyConfig {
                bootstrap: self.bootstrap.replacen(from, to, 1),
                rules: self.rules.clone(),
            }),
            (0, 1) => Ok(EnvoyConfig {
                bootstrap: self.bootstrap.clone(),
                rules: self.rules.replacen(from, to, 1),
            }),
            (b, r) => Err(format!(
                "envoy config: expected {from:?} exactly once, found it {b} times in envoy.yaml \
                 and {r} times in the rules file"
            )),
        }
    }

    /// The bootstrap, reading its rules from `dir` (which holds [`RULES_FILE`]) instead of
    /// `/etc/envoy/rules`. With the filter removed, there is nothing to point.
    pub fn bootstrap_with_rules_in(&self, dir: &Path) -> Result<String, String> {
        if !self.bootstrap.contains(RULES_PATH) && !self.bootstrap.contains(RULES_WATCHED) {
            return Ok(self.bootstrap.clone());
        }
        let text = replace_once(
            &self.bootstrap,
            RULES_PATH,
            &format!("path: {}", dir.join(RULES_FILE).display()),
        )?;
        replace_once(
            &text,
            RULES_WATCHED,
            &format!("watched_directory: {{ path: {} }}", dir.display()),
        )
    }

    /// The `limitd_token` the filter sends, which limitd must be given as `LIMITD_TOKEN`.
    pub fn limitd_token(&self) -> Result<String, String> {
        limitd_token(&self.rules)
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

/// Rewrites `shipped` for `local`, then applies `extra` snippet replacements, each of which must
/// match exactly once in the two files.
pub fn rewrite(
    shipped: &EnvoyConfig,
    local: &LocalAddresses<'_>,
    extra: &[(String, String)],
) -> Result<EnvoyConfig, String> {
    let mut text = replace_once(
        &shipped.bootstrap,
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
    let mut config = EnvoyConfig {
        bootstrap: text,
        rules: replace_once(&shipped.rules, WASM_PATH, &local.wasm.display().to_string())?,
    };
    for (from, to) in extra {
        config = config.replace(from, to)?;
    }
    Ok(config)
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

/// The filter's `limitd_token` in a rules file, which limitd must be given
/// as `LIMITD_TOKEN`.
pub fn limitd_token(config: &str) -> Result<String, String> {
    let start = config
        .find(r#""limitd_token": ""#)
        .ok_or("the rules file has no \"limitd_token\"")?
        + r#""limitd_token": ""#.len();
    let len = config[start..]
        .find('"')
        .ok_or("the rules file's \"limitd_token\" is not closed")?;
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

    fn changed_lines(a: &str, b: &str) -> usize {
        a.lines().zip(b.lines()).filter(|(a, b)| a != b).count()
    }

    #[test]
    fn the_shipped_files_rewrite_to_local_addresses_only() {
        let wasm = Path::new("/tmp/x/ratelimit.wasm");
        let shipped = EnvoyConfig::shipped().unwrap();
        let config = rewrite(&shipped, &local(wasm), &[]).unwrap();
        for expected in [
            "{ address: 127.0.0.1, port_value: 18000 }",
            "{ address: 127.0.0.1, port_value: 19901 }",
            "{ address: 127.0.0.1, port_value: 18001 }",
            "{ address: 127.0.0.1, port_value: 18082 }",
        ] {
            assert!(config.bootstrap.contains(expected), "missing {expected}");
        }
        assert!(config.rules.contains("filename: /tmp/x/ratelimit.wasm"));
        for gone in ["backend-1", "limitd-2", "0.0.0.0"] {
            assert!(!config.bootstrap.contains(gone), "{gone} still there");
        }
        assert!(!config.rules.contains(WASM_PATH));
        // Nothing but those lines changed.
        assert_eq!(changed_lines(&shipped.bootstrap, &config.bootstrap), 6);
        assert_eq!(changed_lines(&shipped.rules, &config.rules), 1);

        let dir = Path::new("/tmp/x/envoy-1-rules");
        let bootstrap = config.bootstrap_with_rules_in(dir).unwrap();
        assert!(bootstrap.contains("path: /tmp/x/envoy-1-rules/ratelimit.yaml"));
        assert!(bootstrap.contains("watched_directory: { path: /tmp/x/envoy-1-rules }"));
        assert!(!bootstrap.contains("/etc/envoy"));
        assert_eq!(changed_lines(&config.bootstrap, &bootstrap), 2);
    }

    #[test]
    fn the_rules_file_is_the_filter_configuration_the_bootstrap_discovers() {
        let shipped = EnvoyConfig::shipped().unwrap();
        let bootstrap: serde_yaml::Value = serde_yaml::from_str(&shipped.bootstrap).unwrap();
        let manager =
            &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
        let filter = &manager["typed_config"]["http_filters"][0];
        assert_eq!(filter["name"].as_str(), Some(FILTER_NAME));
        let source = &filter["config_discovery"]["config_source"]["path_config_source"];
        assert_eq!(
            source["path"].as_str(),
            Some(format!("/etc/envoy/rules/{RULES_FILE}").as_str())
        );
        let rules: serde_yaml::Value = serde_yaml::from_str(&shipped.rules).unwrap();
        let resource = &rules["resources"][0];
        assert_eq!(resource["name"].as_str(), Some(FILTER_NAME));
        assert_eq!(
            resource["typed_config"]["@type"].as_str(),
            filter["config_discovery"]["type_urls"][0].as_str()
        );
        assert_eq!(shipped.limitd_token().unwrap(), "demo-only-token-change-me");
    }

    #[test]
    fn a_snippet_is_replaced_in_whichever_file_holds_it_and_one_that_is_not_there_is_an_error() {
        let wasm = Path::new("/w.wasm");
        let shipped = EnvoyConfig::shipped().unwrap();
        let config = rewrite(
            &shipped,
            &local(wasm),
            &[
                (
                    r#""failure_mode": "allow""#.into(),
                    r#""failure_mode": "deny""#.into(),
                ),
                ("connect_timeout: 1s".into(), "connect_timeout: 2s".into()),
            ],
        )
        .unwrap();
        assert!(config.rules.contains(r#""failure_mode": "deny""#));
        assert!(config.bootstrap.contains("connect_timeout: 2s"));
        let err = rewrite(
            &shipped,
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
        let shipped = EnvoyConfig::shipped().unwrap().bootstrap;
        assert_eq!(
            http_filter_names(&shipped),
            [FILTER_NAME, "envoy.filters.http.router"]
        );
        let removed = replace_http_filter(&shipped, FILTER_NAME, "").unwrap();
        assert_eq!(http_filter_names(&removed), ["envoy.filters.http.router"]);
        assert!(!removed.contains(RULES_PATH) && !removed.contains("config_discovery"));
        // Everything after the filter (router, clusters) is intact.
        assert!(removed.ends_with(
            shipped
                .split("- name: envoy.filters.http.router")
                .nth(1)
                .unwrap()
        ));

        let swapped = replace_http_filter(
            &shipped,
            FILTER_NAME,
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
