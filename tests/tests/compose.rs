//! Static checks of the container topology that `cargo xtask container-test` cannot make by
//! running it: docker-compose.yml against the local demo's ports, the sentinel template and
//! docker/Dockerfile's base images.
//!
//! They need no Docker engine, and cover what a running stack does not show: exactly the demo's
//! services (plus the opt-in `monitoring` and `cluster` profiles), every port the one the local
//! demo uses, only Envoy's listener published beyond loopback, limitd pointed at all three
//! sentinels and the master name they monitor with quorum 2, the `cluster` profile's limitd and
//! Envoy wired to the cluster and to each other without touching the Sentinel stack, start order
//! by health, and base images that default to the stock images (the container test replaces
//! them with stand-ins). Whether the images
//! build, Envoy reaches limitd and the backends, Redis persists and refuses writes without a
//! replica, and the rules are mounted live, the container test checks by running the stack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml::Value;

/// The services of the demo and the ports each listens on and publishes (the local demo's ports).
const DEMO_PORTS: &[(&str, &[u16])] = &[
    ("redis-master", &[6379]),
    ("redis-replica-1", &[6380]),
    ("redis-replica-2", &[6381]),
    ("sentinel-1", &[26379]),
    ("sentinel-2", &[26380]),
    ("sentinel-3", &[26381]),
    ("limitd-1", &[8081]),
    ("limitd-2", &[8082]),
    ("backend-1", &[8001]),
    ("backend-2", &[8002]),
    ("envoy", &[8000, 9901]),
];

const SENTINEL_TEMPLATE: &str = "deploy/redis/sentinel.conf";
const CLUSTER_NODE_CONFIG: &str = "deploy/redis/cluster-node.conf";
const CLUSTER_INIT: &str = "deploy/redis/cluster-init.sh";

/// The `cluster` profile's Redis nodes: `redis-cluster-1` to `redis-cluster-6`.
fn cluster_nodes() -> Vec<String> {
    (1..=6).map(|i| format!("redis-cluster-{i}")).collect()
}
/// The `cluster` profile's limitd, each with the name it answers to on the profile's network
/// (the name envoy.yaml gives a limitd endpoint).
const CLUSTER_LIMITD: &[(&str, &str)] = &[
    ("limitd-cluster-1", "limitd-1"),
    ("limitd-cluster-2", "limitd-2"),
];
/// Services that run once and exit: no healthcheck; what waits for them waits for
/// `service_completed_successfully`.
const ONE_SHOT: &[&str] = &["redis-cluster-init"];
const DOCKERFILE: &str = "docker/Dockerfile";

// ---------------------------------------------------------------------------------------------
// Loading

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The text with compose's variable syntax resolved as compose does when no variable is set:
/// `${NAME:-default}` and `${NAME-default}` to the default, `${NAME}` to nothing, `$$` to `$`.
fn with_defaults(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner
                .find('}')
                .unwrap_or_else(|| panic!("unclosed ${{ in {text:?}"));
            let expression = &inner[..end];
            if let Some((_, default)) = expression
                .split_once(":-")
                .or_else(|| expression.split_once('-'))
            {
                out.push_str(default);
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn load_yaml(relative: &str) -> Value {
    let mut value: Value = serde_yaml::from_str(&with_defaults(&read(relative)))
        .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"));
    // Compose honours `<<: *anchor` merge keys; serde_yaml only on request.
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{relative}: bad merge key: {e}"));
    value
}

/// The `services` of docker-compose.yml, by name.
fn services() -> BTreeMap<String, Value> {
    let compose = load_yaml("docker-compose.yml");
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has no `services` mapping");
    services
        .iter()
        .map(|(name, service)| {
            let name = name
                .as_str()
                .expect("docker-compose.yml: a service name is not a string");
            (name.to_owned(), service.clone())
        })
        .collect()
}

fn service<'a>(services: &'a BTreeMap<String, Value>, name: &str) -> &'a Value {
    services
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

// ---------------------------------------------------------------------------------------------
// Reading one compose service

/// Every word of the service's `command`, in either the list or the string form, with `sh -c`
/// scripts split too, so `--port 26380` is found wherever it is written.
fn command_words(service: &Value) -> Vec<String> {
    let parts: Vec<String> = match service.get("command") {
        None => Vec::new(),
        Some(Value::String(line)) => vec![line.clone()],
        Some(Value::Sequence(items)) => items.iter().map(scalar_text).collect(),
        Some(other) => panic!("unexpected command form {other:?}"),
    };
    parts
        .iter()
        .flat_map(|part| part.split([' ', ';', '\n', '\t']))
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The word after `flag` in the service's command.
fn flag_value(service: &Value, flag: &str) -> Option<String> {
    let words = command_words(service);
    let at = words.iter().position(|word| word == flag)?;
    words.get(at + 1).cloned()
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// The service's environment variable `key`, from either the mapping or the `KEY=value` list form.
fn env_var(service: &Value, key: &str) -> Option<String> {
    match service.get("environment")? {
        Value::Mapping(map) => map.get(key).map(scalar_text),
        Value::Sequence(items) => items.iter().find_map(|item| {
            let text = scalar_text(item);
            let (name, value) = text.split_once('=')?;
            (name == key).then(|| value.to_owned())
        }),
        other => panic!("unexpected environment form {other:?}"),
    }
}

/// The port the service's process listens on inside its container: `LIMITD_LISTEN` for limitd,
/// `--port` for Redis, Sentinel and the backends, `--web.listen-address` for Prometheus, or the
/// `port` of the Redis config file it mounts and starts with (the cluster nodes). Envoy's ports
/// come from envoy.yaml instead.
fn listen_port(name: &str, service: &Value) -> u16 {
    let text = env_var(service, "LIMITD_LISTEN")
        .or_else(|| flag_value(service, "--web.listen-address"))
        .and_then(|listen| listen.rsplit_once(':').map(|(_, port)| port.to_owned()))
        .or_else(|| flag_value(service, "--port"))
        .or_else(|| mounted_config_directive(name, service, "port"))
        .unwrap_or_else(|| {
            panic!(
                "docker-compose.yml: `{name}` sets none of LIMITD_LISTEN, `--port`, \
                 `--web.listen-address`, a config file's `port`"
            )
        });
    text.parse()
        .unwrap_or_else(|_| panic!("docker-compose.yml: `{name}` listens on bad port `{text}`"))
}

/// One published port: the host address it is bound to (`None`: every interface), the host
/// port and the container port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Published {
    host_ip: Option<String>,
    host: u16,
    container: u16,
}

/// The ports the service publishes, from the short (`"8000:8000"`, `"127.0.0.1:8000:8000/tcp"`)
/// or the long (`{ target, published, host_ip }`) syntax, with compose variables at their
/// defaults.
fn published_ports(name: &str, service: &Value) -> Vec<Published> {
    let Some(ports) = service.get("ports") else {
        return Vec::new();
    };
    let ports = ports
        .as_sequence()
        .unwrap_or_else(|| panic!("docker-compose.yml: `{name}`.ports is not a list"));
    let parse = |text: &str| -> u16 {
        text.parse()
            .unwrap_or_else(|_| panic!("docker-compose.yml: `{name}` publishes bad port `{text}`"))
    };
    ports
        .iter()
        .map(|entry| match entry {
            Value::Mapping(long) => {
                let target = parse(&scalar_text(&long["target"]));
                let published = long
                    .get("published")
                    .map_or(target, |published| parse(&scalar_text(published)));
                Published {
                    host_ip: long.get("host_ip").map(scalar_text),
                    host: published,
                    container: target,
                }
            }
            short => {
                let text = scalar_text(short);
                let text = text.split('/').next().unwrap_or_default();
                let fields: Vec<&str> = text.rsplitn(3, ':').collect();
                match fields.as_slice() {
                    [container] => Published {
                        host_ip: None,
                        host: parse(container),
                        container: parse(container),
                    },
                    [container, host] => Published {
                        host_ip: None,
                        host: parse(host),
                        container: parse(container),
                    },
                    [container, host, ip] => Published {
                        host_ip: Some((*ip).to_owned()),
                        host: parse(host),
                        container: parse(container),
                    },
                    _ => panic!("docker-compose.yml: `{name}` has an empty port entry"),
                }
            }
        })
        .collect()
}

/// One bind mount of a service.
struct Mount {
    source: String,
    target: String,
    read_only: bool,
}

fn mounts(name: &str, service: &Value) -> Vec<Mount> {
    let Some(volumes) = service.get("volumes").and_then(Value::as_sequence) else {
        return Vec::new();
    };
    volumes
        .iter()
        .map(|volume| match volume {
            Value::Mapping(long) => Mount {
                source: long.get("source").map(scalar_text).unwrap_or_default(),
                target: long.get("target").map(scalar_text).unwrap_or_default(),
                read_only: long.get("read_only").and_then(Value::as_bool) == Some(true),
            },
            short => {
                let text = scalar_text(short);
                let fields: Vec<&str> = text.split(':').collect();
                match fields.as_slice() {
                    [source, target] => Mount {
                        source: (*source).to_owned(),
                        target: (*target).to_owned(),
                        read_only: false,
                    },
                    [source, target, mode] => Mount {
                        source: (*source).to_owned(),
                        target: (*target).to_owned(),
                        read_only: mode.split(',').any(|option| option == "ro"),
                    },
                    _ => panic!("docker-compose.yml: `{name}` has volume `{text}` of unknown form"),
                }
            }
        })
        .collect()
}

/// The names in the service's `depends_on`, from either the list or the mapping form, with the
/// condition each waits for (`None` in the list form).
fn dependencies(service: &Value) -> Vec<(String, Option<String>)> {
    match service.get("depends_on") {
        None => Vec::new(),
        Some(Value::Sequence(names)) => names.iter().map(|n| (scalar_text(n), None)).collect(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(name, spec)| {
                let condition = spec.get("condition").map(scalar_text);
                (scalar_text(name), condition)
            })
            .collect(),
        Some(other) => panic!("unexpected depends_on form {other:?}"),
    }
}

/// The value of `directive` in the Redis config file the service starts with (a `.conf` word of
/// its command), read from the file of this repository mounted there.
fn mounted_config_directive(name: &str, service: &Value, directive: &str) -> Option<String> {
    let words = command_words(service);
    let config = words.iter().find(|word| word.ends_with(".conf"))?;
    let mount = mounts(name, service)
        .into_iter()
        .find(|mount| &mount.target == config)?;
    config_directives(&read(relative(&mount.source)))
        .into_iter()
        .find(|words| words.len() == 2 && words[0] == directive)
        .map(|words| words[1].clone())
}

/// The networks a service is on, with the extra names (aliases) it has on each.
fn networks(service: &Value) -> BTreeMap<String, Vec<String>> {
    match service.get("networks") {
        None => BTreeMap::new(),
        Some(Value::Sequence(names)) => names
            .iter()
            .map(|name| (scalar_text(name), Vec::new()))
            .collect(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(name, spec)| {
                let aliases = spec
                    .get("aliases")
                    .and_then(Value::as_sequence)
                    .map(|aliases| aliases.iter().map(scalar_text).collect())
                    .unwrap_or_default();
                (scalar_text(name), aliases)
            })
            .collect(),
        Some(other) => panic!("unexpected networks form {other:?}"),
    }
}

/// Normalises `./a/b` and `a/b` to the same relative path.
fn relative(path: &str) -> &str {
    path.trim_start_matches("./")
}

// ---------------------------------------------------------------------------------------------
// The sentinel template

/// `sentinel monitor <name> <host> <port> <quorum>` from the sentinel template.
struct Monitor {
    master_name: String,
    host: String,
    port: u16,
    quorum: u32,
}

/// The directives of a redis-style config file, one list of words per line, comments dropped.
fn config_directives(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split_whitespace().map(str::to_lowercase).collect())
        .collect()
}

fn sentinel_monitor() -> Monitor {
    let text = read(SENTINEL_TEMPLATE);
    let monitors: Vec<Vec<String>> = config_directives(&text)
        .into_iter()
        .filter(|words| words.len() >= 2 && words[0] == "sentinel" && words[1] == "monitor")
        .collect();
    assert_eq!(
        monitors.len(),
        1,
        "{SENTINEL_TEMPLATE} should monitor exactly one master, found {monitors:?}"
    );
    // Case matters for the master name, so read it from the original line.
    let line = text
        .lines()
        .map(str::trim)
        .find(|line| line.to_lowercase().starts_with("sentinel monitor"))
        .unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    let [_, _, master_name, host, port, quorum] = words.as_slice() else {
        panic!(
            "{SENTINEL_TEMPLATE}: `{line}` is not `sentinel monitor <name> <host> <port> <quorum>`"
        );
    };
    Monitor {
        master_name: (*master_name).to_owned(),
        host: (*host).to_owned(),
        port: port
            .parse()
            .unwrap_or_else(|_| panic!("{SENTINEL_TEMPLATE}: bad master port `{port}`")),
        quorum: quorum
            .parse()
            .unwrap_or_else(|_| panic!("{SENTINEL_TEMPLATE}: bad quorum `{quorum}`")),
    }
}

// ---------------------------------------------------------------------------------------------
// envoy.yaml

fn socket_address(socket: &Value) -> (String, u16) {
    let address = socket
        .get("address")
        .map(scalar_text)
        .unwrap_or_else(|| panic!("envoy.yaml: socket_address without address: {socket:?}"));
    let port = socket
        .get("port_value")
        .and_then(Value::as_u64)
        .and_then(|port| u16::try_from(port).ok())
        .unwrap_or_else(|| panic!("envoy.yaml: socket_address without a port_value: {socket:?}"));
    (address, port)
}

/// The `port_value`s of the listeners' own addresses and of the admin address.
fn envoy_listening_ports(envoy: &Value) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    let listeners = envoy
        .get("static_resources")
        .and_then(|resources| resources.get("listeners"))
        .and_then(Value::as_sequence)
        .expect("envoy.yaml has no static_resources.listeners list");
    for listener in listeners {
        let socket = listener
            .get("address")
            .and_then(|address| address.get("socket_address"))
            .expect("envoy.yaml: a listener has no address.socket_address");
        ports.insert(socket_address(socket).1);
    }
    let admin = envoy
        .get("admin")
        .and_then(|admin| admin.get("address"))
        .and_then(|address| address.get("socket_address"))
        .expect("envoy.yaml has no admin.address.socket_address");
    ports.insert(socket_address(admin).1);
    ports
}

// ---------------------------------------------------------------------------------------------
// Compose-only checks

/// The services of opt-in profiles: (service, profile).
const OPT_IN: &[(&str, &str)] = &[
    ("prometheus", "monitoring"),
    ("redis-cluster-1", "cluster"),
    ("redis-cluster-2", "cluster"),
    ("redis-cluster-3", "cluster"),
    ("redis-cluster-4", "cluster"),
    ("redis-cluster-5", "cluster"),
    ("redis-cluster-6", "cluster"),
    ("redis-cluster-init", "cluster"),
    ("limitd-cluster-1", "cluster"),
    ("limitd-cluster-2", "cluster"),
    ("envoy-cluster", "cluster"),
];

#[test]
fn compose_has_exactly_the_demo_services() {
    let services = services();
    let mut opt_in = BTreeMap::new();
    for (name, service) in &services {
        if let Some(profiles) = service.get("profiles") {
            let profiles: Vec<String> = profiles
                .as_sequence()
                .unwrap_or_else(|| panic!("docker-compose.yml: `{name}`.profiles is not a list"))
                .iter()
                .map(scalar_text)
                .collect();
            opt_in.insert(name.clone(), profiles);
        }
    }
    let expected_opt_in: BTreeMap<String, Vec<String>> = OPT_IN
        .iter()
        .map(|(name, profile)| ((*name).to_owned(), vec![(*profile).to_owned()]))
        .collect();
    assert_eq!(
        opt_in, expected_opt_in,
        "docker-compose.yml: the services of opt-in profiles"
    );
    let actual: BTreeSet<String> = services
        .into_keys()
        .filter(|name| !OPT_IN.iter().any(|(opt, _)| opt == name))
        .collect();
    let expected: BTreeSet<String> = DEMO_PORTS.iter().map(|(n, _)| (*n).to_owned()).collect();
    let missing: Vec<_> = expected.difference(&actual).collect();
    let extra: Vec<_> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docker-compose.yml services differ from the demo topology \
         (3 redis, 3 sentinels, 2 limitd, 2 backends, envoy): missing {missing:?}, unexpected {extra:?}"
    );
}

#[test]
fn every_service_listens_on_its_local_demo_port_and_only_envoy_is_published() {
    let services = services();
    for (name, expected) in DEMO_PORTS {
        let service = service(&services, name);
        if *name == "envoy" {
            continue;
        }
        let port = listen_port(name, service);
        assert_eq!(
            [port].as_slice(),
            *expected,
            "docker-compose.yml: `{name}` listens on {port} inside its container, the local demo uses {expected:?}"
        );
        // Redis, Sentinel, limitd and the backends have no authentication: nothing of them is
        // reachable from outside the host, and only through loopback at most.
        for published in published_ports(name, service) {
            assert_eq!(
                published.host_ip.as_deref(),
                Some("127.0.0.1"),
                "docker-compose.yml: `{name}` publishes {published:?} beyond loopback; only Envoy's listener may be"
            );
        }
    }
}

#[test]
fn sentinels_monitor_the_master_with_quorum_two_on_distinct_ports() {
    let services = services();
    let monitor = sentinel_monitor();
    assert_eq!(
        monitor.quorum, 2,
        "{SENTINEL_TEMPLATE}: quorum should be 2 of 3"
    );
    assert!(
        services.contains_key(&monitor.host),
        "{SENTINEL_TEMPLATE} monitors `{}`, which is not a docker-compose.yml service",
        monitor.host
    );
    assert_eq!(
        monitor.host, "redis-master",
        "{SENTINEL_TEMPLATE} should monitor redis-master"
    );
    let master_port = listen_port("redis-master", service(&services, "redis-master"));
    assert_eq!(
        monitor.port, master_port,
        "{SENTINEL_TEMPLATE} monitors port {}, but redis-master listens on {master_port}",
        monitor.port
    );

    // A host name in `sentinel monitor` needs resolve-hostnames before it, and clients in other
    // containers need host names rather than container IPs back.
    let directives = config_directives(&read(SENTINEL_TEMPLATE));
    let position = |wanted: &[&str]| directives.iter().position(|words| words == wanted);
    let monitor_at = directives
        .iter()
        .position(|words| words.len() >= 2 && words[0] == "sentinel" && words[1] == "monitor")
        .unwrap_or(usize::MAX);
    for directive in [
        ["sentinel", "resolve-hostnames", "yes"],
        ["sentinel", "announce-hostnames", "yes"],
    ] {
        let at = position(&directive)
            .unwrap_or_else(|| panic!("{SENTINEL_TEMPLATE} lacks `{}`", directive.join(" ")));
        assert!(
            at < monitor_at,
            "{SENTINEL_TEMPLATE}: `{}` must come before `sentinel monitor`",
            directive.join(" ")
        );
    }

    let mut ports = BTreeSet::new();
    for name in ["sentinel-1", "sentinel-2", "sentinel-3"] {
        let sentinel = service(&services, name);
        let words = command_words(sentinel);
        assert!(
            words
                .iter()
                .any(|w| w == "--sentinel" || w.ends_with("redis-sentinel")),
            "docker-compose.yml: `{name}` does not run Redis in sentinel mode: {words:?}"
        );
        assert!(
            ports.insert(listen_port(name, sentinel)),
            "docker-compose.yml: `{name}` listens on a port another sentinel uses"
        );

        // Sentinel rewrites its config: the template is mounted, and the file sentinel runs
        // from is a different, writable path.
        let mounts = mounts(name, sentinel);
        let template = mounts
            .iter()
            .find(|mount| relative(&mount.source) == SENTINEL_TEMPLATE)
            .unwrap_or_else(|| {
                panic!("docker-compose.yml: `{name}` does not mount {SENTINEL_TEMPLATE}")
            });
        let config = words
            .iter()
            .skip_while(|w| !(w.ends_with("redis-server") || w.ends_with("redis-sentinel")))
            .find(|w| w.ends_with(".conf"))
            .unwrap_or_else(|| {
                panic!(
                    "docker-compose.yml: `{name}` starts sentinel without a .conf file: {words:?}"
                )
            });
        assert_ne!(
            config, &template.target,
            "docker-compose.yml: `{name}` runs sentinel on the mounted template; sentinel rewrites \
             its config, so it must run on a writable copy"
        );
        assert!(
            words.iter().any(|w| w == &template.target),
            "docker-compose.yml: `{name}` never copies the template {} into place",
            template.target
        );
        assert!(
            !mounts
                .iter()
                .any(|mount| &mount.target == config && mount.read_only),
            "docker-compose.yml: `{name}` runs sentinel on read-only mount {config}"
        );
    }
}

#[test]
fn limitd_finds_the_master_through_all_three_sentinels() {
    let services = services();
    let monitor = sentinel_monitor();
    let sentinels: BTreeSet<(String, u16)> = services
        .iter()
        .filter(|(name, _)| name.starts_with("sentinel-"))
        .map(|(name, service)| (name.clone(), listen_port(name, service)))
        .collect();
    assert_eq!(
        sentinels.len(),
        3,
        "docker-compose.yml should have 3 sentinels"
    );

    for name in ["limitd-1", "limitd-2"] {
        let limitd = service(&services, name);
        let hosts = env_var(limitd, "SENTINEL_HOSTS")
            .unwrap_or_else(|| panic!("docker-compose.yml: `{name}` has no SENTINEL_HOSTS"));
        let named: BTreeSet<(String, u16)> = hosts
            .split(',')
            .map(|entry| {
                let (host, port) = entry.trim().rsplit_once(':').unwrap_or_else(|| {
                    panic!("docker-compose.yml: `{name}` SENTINEL_HOSTS entry `{entry}` is not host:port")
                });
                let port = port.parse().unwrap_or_else(|_| {
                    panic!("docker-compose.yml: `{name}` SENTINEL_HOSTS entry `{entry}` has a bad port")
                });
                (host.to_owned(), port)
            })
            .collect();
        assert_eq!(
            named, sentinels,
            "docker-compose.yml: `{name}` SENTINEL_HOSTS names {named:?}, the sentinel services listen at {sentinels:?}"
        );
        let master = env_var(limitd, "REDIS_MASTER");
        assert_eq!(
            master.as_deref(),
            Some(monitor.master_name.as_str()),
            "docker-compose.yml: `{name}` REDIS_MASTER is {master:?}, {SENTINEL_TEMPLATE} monitors `{}`",
            monitor.master_name
        );
    }
}

#[test]
fn start_order_is_by_health_and_every_service_has_a_healthcheck() {
    let services = services();
    for (name, service) in &services {
        for (dependency, condition) in dependencies(service) {
            assert!(
                services.contains_key(&dependency),
                "docker-compose.yml: `{name}` depends on `{dependency}`, which is not a service"
            );
            let (expected, what) = if ONE_SHOT.contains(&dependency.as_str()) {
                ("service_completed_successfully", "to have succeeded")
            } else {
                ("service_healthy", "to be healthy")
            };
            assert_eq!(
                condition.as_deref(),
                Some(expected),
                "docker-compose.yml: `{name}` should wait for `{dependency}` {what}"
            );
        }

        if ONE_SHOT.contains(&name.as_str()) {
            // A one-shot is restarted by nothing: a failure stays visible, and `up` reports it.
            assert!(
                service.get("healthcheck").is_none()
                    && service.get("restart").map(scalar_text).as_deref() == Some("no"),
                "docker-compose.yml: the one-shot `{name}` should have no healthcheck and `restart: \"no\"`"
            );
            continue;
        }
        let test = service
            .get("healthcheck")
            .and_then(|check| check.get("test"))
            .unwrap_or_else(|| panic!("docker-compose.yml: `{name}` has no healthcheck.test"));
        let test = match test {
            Value::Sequence(words) => words.iter().map(scalar_text).collect::<Vec<_>>().join(" "),
            other => scalar_text(other),
        };
        // The probe must ask this service's own port (a copied block easily keeps another's).
        let port = if name.starts_with("envoy") {
            9901
        } else {
            listen_port(name, service)
        };
        assert!(
            test.contains(&port.to_string()),
            "docker-compose.yml: `{name}` listens on {port}, but its healthcheck `{test}` does not probe it"
        );
        // Envoy's admin endpoint answers HTTP/1.0 with 426 Upgrade Required.
        assert!(
            !test.contains("HTTP/1.0"),
            "docker-compose.yml: `{name}` probes in HTTP/1.0, which Envoy's admin refuses: `{test}`"
        );
    }

    let order = [
        ("redis-replica-1", "redis-master"),
        ("sentinel-1", "redis-master"),
        ("limitd-1", "sentinel-1"),
        ("limitd-2", "sentinel-3"),
        ("envoy", "limitd-1"),
        ("envoy", "limitd-2"),
        ("envoy", "backend-1"),
        ("envoy", "backend-2"),
        ("redis-cluster-init", "redis-cluster-1"),
        ("redis-cluster-init", "redis-cluster-6"),
        ("limitd-cluster-1", "redis-cluster-init"),
        ("limitd-cluster-2", "redis-cluster-init"),
        ("envoy-cluster", "limitd-cluster-1"),
        ("envoy-cluster", "limitd-cluster-2"),
        ("envoy-cluster", "backend-1"),
        ("envoy-cluster", "backend-2"),
    ];
    for (later, earlier) in order {
        assert!(
            dependencies(service(&services, later))
                .iter()
                .any(|(dependency, _)| dependency == earlier),
            "docker-compose.yml: `{later}` should depend on `{earlier}`"
        );
    }
}

/// The `ARG` defaults of docker/Dockerfile before its first `FROM` (the base images).
fn dockerfile_args() -> BTreeMap<String, String> {
    read(DOCKERFILE)
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("FROM"))
        .filter_map(|line| line.strip_prefix("ARG "))
        .map(|arg| {
            let (name, default) = arg.split_once('=').unwrap_or((arg, ""));
            (name.trim().to_owned(), default.trim().to_owned())
        })
        .collect()
}

/// The examples `filter/Cargo.toml` declares (`[[example]]` tables).
fn filter_examples() -> Vec<String> {
    let manifest = read("filter/Cargo.toml");
    let mut lines = manifest.lines().map(str::trim);
    let mut names = Vec::new();
    while let Some(line) = lines.next() {
        if line != "[[example]]" {
            continue;
        }
        let name = lines
            .by_ref()
            .take_while(|line| !line.starts_with('['))
            .find_map(|line| line.strip_prefix("name = "))
            .unwrap_or_else(|| panic!("filter/Cargo.toml: an [[example]] without a name"));
        names.push(name.trim_matches('"').to_owned());
    }
    names
}

/// The image build caches dependencies by building the workspace with empty sources first, and
/// cargo refuses a manifest whose declared example has no file: each must be stubbed there.
#[test]
fn the_dependency_stage_stubs_every_example_the_filter_declares() {
    let dockerfile = read(DOCKERFILE);
    let examples = filter_examples();
    assert!(
        examples.iter().any(|name| name == "noop"),
        "filter/Cargo.toml should declare the bench's `noop` example: {examples:?}"
    );
    for name in examples {
        let stub = format!("filter/examples/{name}.rs");
        assert!(
            dockerfile.contains(&stub),
            "{DOCKERFILE}: the dependency stage should create `{stub}`, or the image build fails"
        );
    }
}

#[test]
fn every_base_image_is_a_variable_whose_default_is_the_stock_image() {
    let raw = read("docker-compose.yml");
    let args = dockerfile_args();
    let stock = [
        ("RUST_IMAGE", "rust:"),
        ("DEBIAN_IMAGE", "debian:bookworm-slim"),
        ("ENVOY_IMAGE", "envoyproxy/envoy:v1.40.0"),
    ];
    for (arg, expected) in stock {
        let default = args
            .get(arg)
            .unwrap_or_else(|| panic!("{DOCKERFILE} has no `ARG {arg}` before its first stage"));
        assert!(
            default.starts_with(expected),
            "{DOCKERFILE}: `ARG {arg}` defaults to `{default}`, not the stock `{expected}…`"
        );
        let in_compose = format!("{arg}: ${{{arg}:-{default}}}");
        assert!(
            raw.contains(&in_compose),
            "docker-compose.yml should pass the build argument as `{in_compose}`"
        );
    }
    let services = services();
    for (name, service) in &services {
        if service.get("build").is_some() {
            continue;
        }
        if name == "prometheus" {
            assert!(
                raw.contains("image: ${PROMETHEUS_IMAGE:-prom/prometheus:v2.")
                    && service
                        .get("image")
                        .map(scalar_text)
                        .is_some_and(|image| image.starts_with("prom/prometheus:v2.")),
                "docker-compose.yml: `prometheus` should be the stock image, in a variable: \
                 `image: ${{PROMETHEUS_IMAGE:-prom/prometheus:v2.…}}`"
            );
            continue;
        }
        assert!(
            name.starts_with("redis-") || name.starts_with("sentinel-"),
            "docker-compose.yml: `{name}` is neither built nor a Redis service"
        );
    }
    // Every Redis service takes REDIS_IMAGE, with one default for all.
    for line in raw.lines().map(str::trim) {
        assert!(
            !(line.starts_with("image:")
                && line.contains("redis")
                && !line.contains("${REDIS_IMAGE:-")),
            "docker-compose.yml: `{line}`: a Redis service should take `${{REDIS_IMAGE:-redis:…}}`"
        );
    }
    let redis_images: BTreeMap<&str, String> = services
        .iter()
        .filter(|(name, _)| name.starts_with("redis-") || name.starts_with("sentinel-"))
        .map(|(name, service)| {
            let image = service
                .get("image")
                .map(scalar_text)
                .unwrap_or_else(|| panic!("docker-compose.yml: `{name}` has no image"));
            (name.as_str(), image)
        })
        .collect();
    let defaults: BTreeSet<&String> = redis_images.values().collect();
    assert_eq!(
        defaults.len(),
        1,
        "docker-compose.yml: every Redis service should use `${{REDIS_IMAGE:-redis:…}}` with one default, found {redis_images:?}"
    );
    let default = defaults.into_iter().next().cloned().unwrap_or_default();
    assert!(
        default.starts_with("redis:")
            && !default.starts_with("redis:7.0")
            && !default.starts_with("redis:6"),
        "docker-compose.yml: REDIS_IMAGE defaults to `{default}`, not a maintained official Redis"
    );
    assert!(
        raw.contains(&format!("image: ${{REDIS_IMAGE:-{default}}}")),
        "docker-compose.yml: the Redis image should be `${{REDIS_IMAGE:-{default}}}`"
    );
}

// ---------------------------------------------------------------------------------------------
// Checks against envoy.yaml

#[test]
fn envoy_publishes_its_listener_and_its_admin_only_on_loopback() {
    let services = services();
    let envoy_yaml = load_yaml("envoy.yaml");
    let listening = envoy_listening_ports(&envoy_yaml);
    assert_eq!(
        listening,
        BTreeSet::from([8000, 9901]),
        "envoy.yaml listener and admin ports differ from the local demo's 8000 and 9901"
    );
    let published = published_ports("envoy", service(&services, "envoy"));
    let find = |port: u16| {
        published
            .iter()
            .find(|p| p.container == port)
            .unwrap_or_else(|| panic!("docker-compose.yml: `envoy` does not publish {port} (it publishes {published:?})"))
    };
    let listener = find(8000);
    assert_eq!(
        (listener.host_ip.as_deref(), listener.host),
        (None, 8000),
        "docker-compose.yml: `envoy` should publish its listener as 8000 on every interface by default"
    );
    let admin = find(9901);
    assert_eq!(
        (admin.host_ip.as_deref(), admin.host),
        (Some("127.0.0.1"), 9901),
        "docker-compose.yml: `envoy` should publish its admin endpoint (no authentication) on 127.0.0.1:9901 only"
    );
}

/// `(host, port)` of every endpoint of the envoy.yaml cluster `name`.
fn envoy_cluster_endpoints(envoy: &Value, name: &str) -> BTreeSet<(String, u16)> {
    let clusters = envoy
        .get("static_resources")
        .and_then(|resources| resources.get("clusters"))
        .and_then(Value::as_sequence)
        .expect("envoy.yaml has no static_resources.clusters list");
    let cluster = clusters
        .iter()
        .find(|cluster| cluster.get("name").map(scalar_text).as_deref() == Some(name))
        .unwrap_or_else(|| panic!("envoy.yaml has no cluster `{name}`"));
    cluster["load_assignment"]["endpoints"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|locality| locality["lb_endpoints"].as_sequence().into_iter().flatten())
        .map(|endpoint| socket_address(&endpoint["endpoint"]["address"]["socket_address"]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The `cluster` profile

#[test]
fn cluster_nodes_are_six_persistent_cluster_nodes_announcing_their_names() {
    let services = services();
    let directives = config_directives(&read(CLUSTER_NODE_CONFIG));
    for wanted in [
        ["cluster-enabled", "yes"],
        ["cluster-preferred-endpoint-type", "hostname"],
        ["appendonly", "yes"],
        ["protected-mode", "no"],
    ] {
        assert!(
            directives.iter().any(|words| words == &wanted),
            "{CLUSTER_NODE_CONFIG} lacks `{}`",
            wanted.join(" ")
        );
    }
    // Each master has one replica: with min-replicas-to-write, a promoted master would refuse
    // every write until the old one is back.
    assert!(
        !directives
            .iter()
            .any(|words| words[0] == "min-replicas-to-write"),
        "{CLUSTER_NODE_CONFIG}: no min-replicas-to-write on a cluster of one replica per master"
    );
    let nodes = cluster_nodes();
    let port = listen_port(&nodes[0], service(&services, &nodes[0]));
    for name in &nodes {
        let node = service(&services, name);
        assert_eq!(
            flag_value(node, "--cluster-announce-hostname").as_deref(),
            Some(name.as_str()),
            "docker-compose.yml: `{name}` should announce its own service name"
        );
        assert_eq!(
            listen_port(name, node),
            port,
            "docker-compose.yml: `{name}` listens on another port than the other nodes"
        );
        let data = mounts(name, node)
            .into_iter()
            .find(|mount| mount.target == "/data");
        assert!(
            data.is_some_and(|mount| mount.source == format!("{name}-data")),
            "docker-compose.yml: `{name}` should keep /data (AOF, nodes.conf) on its volume `{name}-data`"
        );
        assert_eq!(
            networks(node).into_keys().collect::<Vec<_>>(),
            ["redis-cluster"],
            "docker-compose.yml: `{name}` should be on the `redis-cluster` network only"
        );
    }

    // The one-shot forms them all, three masters each with a replica.
    let init = service(&services, "redis-cluster-init");
    let words = command_words(init);
    let named: Vec<&str> = words
        .iter()
        .filter_map(|word| word.strip_suffix(&format!(":{port}")))
        .collect();
    assert_eq!(
        named, nodes,
        "docker-compose.yml: `redis-cluster-init` should name the six nodes at port {port}"
    );
    let script = mounts("redis-cluster-init", init)
        .into_iter()
        .find(|mount| relative(&mount.source) == CLUSTER_INIT)
        .unwrap_or_else(|| {
            panic!("docker-compose.yml: `redis-cluster-init` does not mount {CLUSTER_INIT}")
        });
    assert!(
        words.contains(&script.target),
        "docker-compose.yml: `redis-cluster-init` does not run {CLUSTER_INIT}"
    );
    assert!(
        read(CLUSTER_INIT).contains("--cluster-replicas 1"),
        "{CLUSTER_INIT} should give each master one replica"
    );
}

#[test]
fn the_cluster_profile_has_its_own_envoy_and_limitd_on_envoy_yaml_names() {
    let services = services();
    let envoy_yaml = load_yaml("envoy.yaml");
    let names = cluster_nodes();
    let node_port = listen_port(&names[0], service(&services, &names[0]));
    let nodes: BTreeSet<String> = names
        .iter()
        .map(|name| format!("{name}:{node_port}"))
        .collect();

    // Its limitd answer, on its own network, to the names envoy.yaml gives limitd.
    let mut answering = BTreeSet::new();
    for (name, alias) in CLUSTER_LIMITD {
        let limitd = service(&services, name);
        let seeds: BTreeSet<String> = env_var(limitd, "REDIS_CLUSTER_NODES")
            .unwrap_or_else(|| panic!("docker-compose.yml: `{name}` has no REDIS_CLUSTER_NODES"))
            .split(',')
            .map(|seed| seed.trim().to_owned())
            .collect();
        assert_eq!(
            seeds, nodes,
            "docker-compose.yml: `{name}` should know every cluster node"
        );
        for other in ["SENTINEL_HOSTS", "REDIS_URL"] {
            assert!(
                env_var(limitd, other).is_none(),
                "docker-compose.yml: `{name}` sets {other} beside REDIS_CLUSTER_NODES"
            );
        }
        let on = networks(limitd);
        assert_eq!(
            on.keys().map(String::as_str).collect::<Vec<_>>(),
            ["app-cluster", "redis-cluster"],
            "docker-compose.yml: `{name}` should be on `app-cluster` and `redis-cluster` only"
        );
        assert_eq!(
            on["app-cluster"],
            [*alias],
            "docker-compose.yml: `{name}` should answer to `{alias}` on `app-cluster`"
        );
        answering.insert(((*alias).to_owned(), listen_port(name, limitd)));
    }
    assert_eq!(
        answering,
        envoy_cluster_endpoints(&envoy_yaml, "limitd"),
        "docker-compose.yml: the cluster profile's limitd do not answer where envoy.yaml sends checks"
    );

    // Its Envoy sees those limitd and the backends, and not the Sentinel stack's limitd, which
    // answer to the same names on `app`.
    let envoy = service(&services, "envoy-cluster");
    assert_eq!(
        networks(envoy).into_keys().collect::<Vec<_>>(),
        ["app-cluster", "edge"],
        "docker-compose.yml: `envoy-cluster` should be on `edge` and `app-cluster` only"
    );
    for (name, _) in envoy_cluster_endpoints(&envoy_yaml, "backends") {
        assert!(
            networks(service(&services, &name)).contains_key("app-cluster"),
            "docker-compose.yml: `{name}` is not on `app-cluster`, where `envoy-cluster` looks for it"
        );
    }
    for name in ["limitd-1", "limitd-2"] {
        assert!(
            !networks(service(&services, name)).contains_key("app-cluster"),
            "docker-compose.yml: the Sentinel stack's `{name}` is on `app-cluster`, where its name \
             belongs to the cluster profile's limitd"
        );
    }
    assert_eq!(
        command_words(envoy),
        command_words(service(&services, "envoy")),
        "docker-compose.yml: `envoy-cluster` should run Envoy as `envoy` does, on the same envoy.yaml"
    );
    // Only its listener is published, on every interface by default.
    let published = published_ports("envoy-cluster", envoy);
    assert_eq!(
        published,
        [Published {
            host_ip: None,
            host: 8010,
            container: 8000
        }],
        "docker-compose.yml: `envoy-cluster` should publish its listener (8000) as 8010, and nothing else"
    );
}
