//! Converts an envoyproxy/ratelimit configuration, with the Envoy route `rate_limits` actions
//! that feed it, into this filter's rules (`limitd convert-ratelimit`).
//!
//! # How ratelimit decides, and what that becomes
//!
//! For each entry of a route's `rate_limits`, Envoy builds one *descriptor* per request: one
//! `(key, value)` per action, in order. If an action cannot produce its entry (a header absent,
//! a `header_value_match` that does not match), the whole descriptor is not sent. ratelimit then
//! walks its descriptor tree with the entries: at each level a node whose `value` equals the
//! entry's wins over a node of the same key without a `value`. A limit applies only if the node
//! reached by the *last* entry has one (a limit on a shallower node does not apply to a longer
//! descriptor). Its counter is per domain and per the descriptor's values, so a node without a
//! `value` counts each value separately. So one rule is made per (entry of `rate_limits`, leaf
//! of the tree it can reach), as follows:
//!
//! | ratelimit / Envoy | rule |
//! | --- | --- |
//! | route `match.prefix` / `match.path` | `match.path` `{"prefix"}` / `{"exact"}`; none: any path |
//! | `remote_address` → node without value | key part `"client_ip"` |
//! | `request_headers` → node without value | key part `{"header": header_name}`, `missing: "skip"` (no header, no descriptor) |
//! | `request_headers` → node with value V | `match.headers` `{"name", "equals": V}` |
//! | `generic_key` (value V) → node V, else the node without value | nothing (a constant) |
//! | `header_value_match` → node V, else the node without value | its header matchers as `match.headers` (`exact_match`, `string_match.exact` → `equals`; `present_match` → `present`) |
//! | `requests_per_unit` / `unit` | `limit.requests` / `limit.window` `1s`, `1m`, `1h`, `1d`, `fixed_window` (ratelimit's windows are aligned to the epoch, as ours) |
//! | `shadow_mode: true` | `shadow: true` |
//! | `unlimited: true`, or a leaf without `rate_limit` | no rule |
//! | no varying part | key `[{"constant": "all"}]`: one counter |
//!
//! A rule is named after its limit's `name`, else `<domain>.<key>[_<value>]...` (invalid
//! characters as `_`, at most 64 characters, `-2`, `-3`... when two would clash).
//!
//! # What is refused
//!
//! Each refusal names the entry and why; the rest still converts.
//!
//! - A node with a `value` reached through `remote_address` (a rule cannot match a client
//!   address), or a value-less node reached through `remote_address` or `request_headers` that
//!   has siblings with values (ratelimit gives those values their own limit instead; a rule
//!   cannot exclude values). A wildcard value (`foo*`) on a header.
//! - `requests_per_unit: 0` (a rule admits at least one request; deny with an Envoy route),
//!   units other than second/minute/hour/day, `replaces`, unknown fields.
//! - Actions other than the four above, `skip_if_absent: true` (the descriptor then changes
//!   shape with the header), `stage` other than 0, `limit` overrides; `header_value_match` with
//!   `expect_match: false` unless it is one presence test; header matchers other than exact and
//!   presence.
//! - A route that overlaps an earlier route (Envoy gives a request to the first matching route
//!   only; rules would apply to both), or whose match is not a plain `prefix` or `path`.
//! - A limit no given action list reaches (its rule would need actions not given).
//!
//! # Known differences
//!
//! - A request denied here consumes none of its rules' counters; ratelimit counts it anyway.
//! - Two action lists that produce the same descriptor share one counter in ratelimit; here each
//!   becomes its own rule with its own counter.
//! - `client_ip` keys an IPv6 client by its /64 (the filter's default: one subscriber), where
//!   ratelimit counts each address.

mod actions;
mod input;

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use serde::Serialize;
use serde_json::{json, Value as Json};

use actions::{action_entry, action_lists, Entry, PathMatch, Source};
use input::{unknown, ActionsFile, Descriptor, RateLimitEntry, RatelimitConfig};

/// The most rules the filter accepts.
const MAX_RULES: usize = 64;
/// The largest `limit.requests` the filter accepts.
const MAX_REQUESTS: u64 = 1_000_000_000_000_000;
/// The longest rule name the filter accepts.
const MAX_NAME_LEN: usize = 64;

/// An input that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("the ratelimit configuration: {0}")]
    Config(serde_yaml_ng::Error),
    #[error("the rate_limits actions: {0}")]
    Actions(serde_yaml_ng::Error),
}

/// One entry that has no rule, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    /// Which entry: a descriptor path (`domain: key=value/key`), an action list
    /// (`rate_limits[0]`, `routes[1].rate_limits[0]`), or both.
    pub entry: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused {}: {}", self.entry, self.reason)
    }
}

/// The converter's result: the rules it could express and the refusals.
#[derive(Debug, Default)]
pub struct Conversion {
    pub rules: Vec<Rule>,
    pub refusals: Vec<Refusal>,
}

impl Conversion {
    /// The rules as the JSON array for the plugin configuration's `"rules"`.
    pub fn rules_json(&self) -> String {
        serde_json::to_string_pretty(&self.rules).unwrap_or_else(|_| "[]".to_owned())
    }
}

/// One rule of the filter, in its JSON field order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Json,
    pub key: Vec<Json>,
    pub limit: Json,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// Converts a ratelimit configuration (`config_yaml`) fed by the `rate_limits` in
/// `actions_yaml` (one route's list, a list of routes with their `match`, or a virtual host's
/// `rate_limits`/`routes`).
pub fn convert(config_yaml: &str, actions_yaml: &str) -> Result<Conversion, ConvertError> {
    let config: RatelimitConfig =
        serde_yaml_ng::from_str(config_yaml).map_err(ConvertError::Config)?;
    let actions: ActionsFile =
        serde_yaml_ng::from_str(actions_yaml).map_err(ConvertError::Actions)?;
    let mut out = Converter {
        domain: &config.domain,
        conversion: Conversion::default(),
        reached: HashSet::new(),
        names: HashSet::new(),
    };
    for (label, path, entry) in action_lists(actions, &mut out.conversion.refusals) {
        out.action_list(&config.descriptors, &label, path, &entry);
    }
    out.unreached(&config.descriptors, "");
    let mut conversion = out.conversion;
    if conversion.rules.len() > MAX_RULES {
        for rule in conversion.rules.drain(MAX_RULES..) {
            conversion.refusals.push(Refusal {
                entry: rule.name,
                reason: format!("the filter takes at most {MAX_RULES} rules"),
            });
        }
    }
    // A node reached by several action lists is refused once.
    let unique: BTreeSet<Refusal> = conversion.refusals.drain(..).collect();
    conversion.refusals = unique.into_iter().collect();
    Ok(conversion)
}

/// The walk's state.
struct Converter<'a> {
    domain: &'a str,
    conversion: Conversion,
    /// The descriptor paths some action list reached.
    reached: HashSet<String>,
    names: HashSet<String>,
}

/// What a path through the tree has gathered so far.
#[derive(Debug, Clone, Default)]
struct Partial {
    /// `key=value/key` of the nodes taken.
    path: String,
    /// `key_value.key`, each part in the characters of a rule name.
    name: String,
    headers: Vec<Json>,
    key: Vec<Json>,
}

impl Partial {
    fn down(&self, node: &Descriptor) -> Partial {
        let mut next = self.clone();
        if !next.path.is_empty() {
            next.path.push('/');
        }
        next.path.push_str(&node.key);
        if !next.name.is_empty() {
            next.name.push('.');
        }
        next.name.push_str(&name_characters(&node.key));
        if let Some(value) = &node.value {
            next.path.push('=');
            next.path.push_str(value);
            next.name.push('_');
            next.name.push_str(&name_characters(value));
        }
        next
    }
}

impl Converter<'_> {
    fn refuse(&mut self, entry: String, reason: impl Into<String>) {
        self.conversion.refusals.push(Refusal {
            entry,
            reason: reason.into(),
        });
    }

    /// Refuses a node reached through `label`; neither it nor the nodes under it count as
    /// unreached then.
    fn refuse_subtree(
        &mut self,
        node: &Descriptor,
        path: &str,
        label: &str,
        reason: impl Into<String>,
    ) {
        let entry = format!("{} (through {label})", self.entry_label(path));
        self.refuse(entry, reason);
        self.mark_reached(node, path);
    }

    fn mark_reached(&mut self, node: &Descriptor, path: &str) {
        self.reached.insert(path.to_owned());
        for child in &node.descriptors {
            let below = Partial {
                path: path.to_owned(),
                ..Partial::default()
            }
            .down(child);
            self.mark_reached(child, &below.path);
        }
    }

    fn entry_label(&self, path: &str) -> String {
        format!("{}: {path}", self.domain)
    }

    /// Makes the rules of one `rate_limits` entry.
    fn action_list(
        &mut self,
        tree: &[Descriptor],
        label: &str,
        path: Option<PathMatch>,
        list: &RateLimitEntry,
    ) {
        let mut problems = Vec::new();
        if let Some(reason) = unknown(&list.other) {
            problems.push(reason);
        }
        if list.stage != 0 {
            problems.push(format!("stage {} (only stage 0 converts)", list.stage));
        }
        let mut entries = Vec::new();
        for action in &list.actions {
            match action_entry(action) {
                Ok(entry) => entries.push(entry),
                Err(reason) => problems.push(reason),
            }
        }
        if entries.is_empty() && problems.is_empty() {
            problems.push("no actions".to_owned());
        }
        if !problems.is_empty() {
            for reason in problems {
                self.refuse(label.to_owned(), reason);
            }
            return;
        }
        self.walk(tree, &entries, label, path.as_ref(), Partial::default());
    }

    /// Follows `entries` down `nodes` the way ratelimit does, making a rule at each leaf with a
    /// limit that a request can reach.
    fn walk(
        &mut self,
        nodes: &[Descriptor],
        entries: &[Entry],
        label: &str,
        route: Option<&PathMatch>,
        partial: Partial,
    ) {
        let Some((entry, rest)) = entries.split_first() else {
            return;
        };
        let same_key: Vec<&Descriptor> = nodes.iter().filter(|n| n.key == entry.key).collect();
        let valueless = same_key.iter().find(|n| n.value.is_none()).copied();
        let valued: Vec<&Descriptor> = same_key
            .iter()
            .filter(|n| n.value.is_some())
            .copied()
            .collect();
        let mut taken: Vec<(&Descriptor, Partial)> = Vec::new();
        match &entry.source {
            Source::Fixed { value, conditions } => {
                let node = valued
                    .iter()
                    .find(|n| n.value.as_deref() == Some(value))
                    .or_else(|| {
                        valued.iter().find(|n| {
                            n.value
                                .as_deref()
                                .and_then(|v| v.strip_suffix('*'))
                                .is_some_and(|prefix| value.starts_with(prefix))
                        })
                    })
                    .copied()
                    .or(valueless);
                if let Some(node) = node {
                    let mut next = partial.down(node);
                    next.headers.extend(conditions.iter().cloned());
                    taken.push((node, next));
                }
            }
            Source::ClientIp | Source::Header(_) => {
                for node in &valued {
                    let next = partial.down(node);
                    let value = node.value.as_deref().unwrap_or_default();
                    match &entry.source {
                        Source::Header(name) if !value.ends_with('*') => {
                            let mut next = next;
                            next.headers.push(json!({ "name": name, "equals": value }));
                            taken.push((node, next));
                        }
                        Source::Header(name) => self.refuse_subtree(
                            node,
                            &next.path,
                            label,
                            format!("a wildcard value on header {name} (a rule matches whole values only)"),
                        ),
                        _ => self.refuse_subtree(
                            node,
                            &next.path,
                            label,
                            "a value for remote_address (a rule cannot match a client address)",
                        ),
                    }
                }
                if let Some(node) = valueless {
                    let mut next = partial.down(node);
                    if valued.is_empty() {
                        next.key.push(match &entry.source {
                            Source::Header(name) => json!({ "header": name }),
                            _ => json!("client_ip"),
                        });
                        taken.push((node, next));
                    } else {
                        let values: Vec<&str> =
                            valued.iter().filter_map(|n| n.value.as_deref()).collect();
                        self.refuse_subtree(
                            node,
                            &next.path,
                            label,
                            format!(
                                "it counts each value except {}, which have entries of their \
                                 own; a rule cannot exclude values",
                                values.join(", ")
                            ),
                        );
                    }
                }
            }
        }
        for (node, next) in taken {
            if rest.is_empty() {
                self.leaf(node, route, next);
            } else {
                self.walk(&node.descriptors, rest, label, route, next);
            }
        }
    }

    /// The rule of a node reached by a descriptor's last entry, if it has a limit.
    fn leaf(&mut self, node: &Descriptor, route: Option<&PathMatch>, partial: Partial) {
        self.reached.insert(partial.path.clone());
        let Some(limit) = &node.rate_limit else {
            return;
        };
        let entry = self.entry_label(&partial.path);
        let mut problems: Vec<String> = [unknown(&node.other), unknown(&limit.other)]
            .into_iter()
            .flatten()
            .collect();
        if limit.unlimited {
            return;
        }
        if limit.replaces.is_some() {
            problems.push("replaces (a rule cannot switch another rule off)".to_owned());
        }
        let window = match limit
            .unit
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("second") => Some("1s"),
            Some("minute") => Some("1m"),
            Some("hour") => Some("1h"),
            Some("day") => Some("1d"),
            other => {
                problems.push(format!(
                    "unit {} (second, minute, hour and day convert)",
                    other.unwrap_or("missing")
                ));
                None
            }
        };
        match limit.requests_per_unit {
            Some(0) => problems.push(
                "requests_per_unit: 0 (a rule admits at least one request; deny these \
                 requests with an Envoy route instead)"
                    .to_owned(),
            ),
            Some(n) if n > MAX_REQUESTS => problems.push(format!(
                "requests_per_unit {n} (a rule admits at most {MAX_REQUESTS} per window)"
            )),
            None => problems.push("no requests_per_unit".to_owned()),
            Some(_) => {}
        }
        let (Some(window), Some(requests), true) =
            (window, limit.requests_per_unit, problems.is_empty())
        else {
            for reason in problems {
                self.refuse(entry.clone(), reason);
            }
            return;
        };
        let mut matcher = serde_json::Map::new();
        if let Some(route) = route {
            matcher.insert("path".to_owned(), route.to_json());
        }
        if !partial.headers.is_empty() {
            matcher.insert("headers".to_owned(), Json::Array(partial.headers));
        }
        let key = if partial.key.is_empty() {
            vec![json!({ "constant": "all" })]
        } else {
            partial.key
        };
        let name = match &limit.name {
            Some(name) => self.rule_name(name),
            None => self.rule_name(&format!("{}.{}", self.domain, partial.name)),
        };
        self.conversion.rules.push(Rule {
            name,
            matcher: Json::Object(matcher),
            key,
            limit: json!({ "requests": requests, "window": window }),
            shadow: node.shadow_mode,
        });
    }

    /// A limit's `name`, or else `<domain>.<path>`, as a valid, unique rule name.
    fn rule_name(&mut self, wanted: &str) -> String {
        let clean: String = name_characters(wanted).chars().take(MAX_NAME_LEN).collect();
        let mut name = clean.clone();
        let mut n = 2;
        while !self.names.insert(name.clone()) {
            let suffix = format!("-{n}");
            let stem: String = clean.chars().take(MAX_NAME_LEN - suffix.len()).collect();
            name = format!("{stem}{suffix}");
            n += 1;
        }
        name
    }

    /// Refuses every limit no action list reached.
    fn unreached(&mut self, nodes: &[Descriptor], parent: &str) {
        for node in nodes {
            let partial = Partial {
                path: parent.to_owned(),
                ..Partial::default()
            }
            .down(node);
            let limited = node.rate_limit.as_ref().is_some_and(|l| !l.unlimited);
            if limited && !self.reached.contains(&partial.path) {
                let entry = self.entry_label(&partial.path);
                self.refuse(
                    entry,
                    "no given rate_limits action list produces this descriptor",
                );
            }
            self.unreached(&node.descriptors, &partial.path);
        }
    }
}

/// `text` with each character a rule name cannot hold as `_`.
fn name_characters(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
