//! The Envoy side of a conversion: route matches and `rate_limits` actions read as the
//! descriptor entries they produce, and header matchers as `match.headers` conditions.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};
use serde_yaml_ng::Value;

use super::input::{
    unknown, ActionsFile, GenericKey, HeaderMatcher, HeaderValueMatch, Item, RateLimitEntry,
    RequestHeaders,
};
use super::Refusal;

/// A path condition from a route's match.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PathMatch {
    Prefix(String),
    Exact(String),
}

impl PathMatch {
    /// Whether some path matches both.
    fn overlaps(&self, other: &PathMatch) -> bool {
        use PathMatch::{Exact, Prefix};
        match (self, other) {
            (Prefix(a), Prefix(b)) => a.starts_with(b.as_str()) || b.starts_with(a.as_str()),
            (Exact(a), Prefix(p)) | (Prefix(p), Exact(a)) => a.starts_with(p.as_str()),
            (Exact(a), Exact(b)) => a == b,
        }
    }

    pub(super) fn to_json(&self) -> Json {
        match self {
            PathMatch::Prefix(p) => json!({ "prefix": p }),
            PathMatch::Exact(p) => json!({ "exact": p }),
        }
    }
}

/// Every action list with its label and its route's path, refusing the routes it cannot
/// express.
pub(super) fn action_lists(
    file: ActionsFile,
    refusals: &mut Vec<Refusal>,
) -> Vec<(String, Option<PathMatch>, RateLimitEntry)> {
    let (loose, routes) = match file {
        ActionsFile::Host {
            rate_limits,
            routes,
        } => (rate_limits, routes),
        ActionsFile::List(items) => {
            let (mut loose, mut routes) = (Vec::new(), Vec::new());
            for item in items {
                match item {
                    Item::Route(route) => routes.push(route),
                    Item::Entry(entry) => loose.push(entry),
                }
            }
            (loose, routes)
        }
    };
    let mut lists = Vec::new();
    for (i, entry) in loose.into_iter().enumerate() {
        lists.push((format!("rate_limits[{i}]"), None, entry));
    }
    let mut earlier: Vec<Option<PathMatch>> = Vec::new();
    for (r, route) in routes.into_iter().enumerate() {
        let path = route_path(&route.matcher);
        let entries = route
            .rate_limits
            .into_iter()
            .chain(route.route.unwrap_or_default().rate_limits);
        let refuse = |reason: String, refusals: &mut Vec<Refusal>| {
            refusals.push(Refusal {
                entry: format!("routes[{r}]"),
                reason,
            })
        };
        match &path {
            Err(reason) => refuse(reason.clone(), refusals),
            Ok(this) => {
                let overlap = earlier.iter().position(|before| match (before, this) {
                    (Some(a), Some(b)) => a.overlaps(b),
                    _ => true,
                });
                let entries: Vec<RateLimitEntry> = entries.collect();
                match overlap {
                    Some(before) if !entries.is_empty() => refuse(
                        format!(
                            "its match overlaps routes[{before}]'s; Envoy sends a request to \
                             the first matching route only, but rules would apply to both"
                        ),
                        refusals,
                    ),
                    _ => {
                        for (i, entry) in entries.into_iter().enumerate() {
                            lists.push((
                                format!("routes[{r}].rate_limits[{i}]"),
                                this.clone(),
                                entry,
                            ));
                        }
                    }
                }
            }
        }
        // A route we refused still takes its requests from the routes after it.
        earlier.push(path.ok().flatten());
    }
    lists
}

/// A route's path condition: `Ok(None)` for `prefix: "/"` (every path).
fn route_path(matcher: &BTreeMap<String, Value>) -> Result<Option<PathMatch>, String> {
    let text = |name: &str| {
        matcher
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let extra: Vec<&str> = matcher
        .keys()
        .map(String::as_str)
        .filter(|k| !["prefix", "path"].contains(k))
        .collect();
    if !extra.is_empty() {
        return Err(format!(
            "route match field(s) {} (only prefix and path convert)",
            extra.join(", ")
        ));
    }
    match (text("prefix"), text("path")) {
        (Some(prefix), None) if prefix == "/" => Ok(None),
        (Some(prefix), None) => Ok(Some(PathMatch::Prefix(prefix))),
        (None, Some(path)) => Ok(Some(PathMatch::Exact(path))),
        _ => Err("a route match needs one of prefix and path".to_owned()),
    }
}

/// Where the value of one descriptor entry comes from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    ClientIp,
    Header(String),
    /// A fixed value, sent only when the header conditions hold.
    Fixed {
        value: String,
        conditions: Vec<Json>,
    },
}

/// One descriptor entry an action produces.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) source: Source,
}

/// Reads one action (`{remote_address: {}}` etc.) as the entry it produces.
pub(super) fn action_entry(action: &BTreeMap<String, Value>) -> Result<Entry, String> {
    let mut items = action.iter();
    let (Some((kind, body)), None) = (items.next(), items.next()) else {
        return Err("an action must have exactly one type".to_owned());
    };
    let body = body.clone();
    let parse_error = |e: serde_yaml_ng::Error| format!("{kind}: {e}");
    match kind.as_str() {
        "remote_address" => Ok(Entry {
            key: "remote_address".to_owned(),
            source: Source::ClientIp,
        }),
        "request_headers" => {
            let action: RequestHeaders = serde_yaml_ng::from_value(body).map_err(parse_error)?;
            if let Some(reason) = unknown(&action.other) {
                return Err(format!("request_headers: {reason}"));
            }
            if action.skip_if_absent {
                return Err(
                    "request_headers with skip_if_absent: true (the descriptor then \
                            changes shape with the header)"
                        .to_owned(),
                );
            }
            Ok(Entry {
                key: action.descriptor_key,
                source: Source::Header(action.header_name.to_ascii_lowercase()),
            })
        }
        "generic_key" => {
            let action: GenericKey = serde_yaml_ng::from_value(body).map_err(parse_error)?;
            if let Some(reason) = unknown(&action.other) {
                return Err(format!("generic_key: {reason}"));
            }
            Ok(Entry {
                key: action
                    .descriptor_key
                    .unwrap_or_else(|| "generic_key".to_owned()),
                source: Source::Fixed {
                    value: action.descriptor_value,
                    conditions: Vec::new(),
                },
            })
        }
        "header_value_match" => {
            let action: HeaderValueMatch = serde_yaml_ng::from_value(body).map_err(parse_error)?;
            if let Some(reason) = unknown(&action.other) {
                return Err(format!("header_value_match: {reason}"));
            }
            let mut conditions = action
                .headers
                .iter()
                .map(header_condition)
                .collect::<Result<Vec<_>, _>>()?;
            if !action.expect_match {
                // Sent when not every matcher matches: one presence test inverts.
                match conditions.as_mut_slice() {
                    [only] if only.get("present").is_some() => {
                        let present = only["present"].as_bool().unwrap_or(true);
                        only["present"] = Json::Bool(!present);
                    }
                    _ => {
                        return Err("header_value_match with expect_match: false on other \
                                    than one presence test (a rule cannot match a header \
                                    that is not equal to a value, nor either of two \
                                    conditions)"
                            .to_owned())
                    }
                }
            }
            Ok(Entry {
                key: action
                    .descriptor_key
                    .unwrap_or_else(|| "header_match".to_owned()),
                source: Source::Fixed {
                    value: action.descriptor_value,
                    conditions,
                },
            })
        }
        other => Err(format!(
            "action {other} (only remote_address, request_headers, generic_key and \
             header_value_match convert)"
        )),
    }
}

/// An Envoy header matcher as a `match.headers` condition (always with `present` or
/// `equals`, so an inverted presence test can flip it).
fn header_condition(matcher: &HeaderMatcher) -> Result<Json, String> {
    let name = matcher.name.to_ascii_lowercase();
    if let Some(reason) = unknown(&matcher.other) {
        return Err(format!("header matcher {name}: {reason}"));
    }
    let exact = match (&matcher.exact_match, &matcher.string_match) {
        (Some(value), None) => Some(value.clone()),
        (None, Some(string_match)) => {
            match (
                string_match.len(),
                string_match.get("exact").and_then(|v| v.as_str()),
            ) {
                (1, Some(value)) => Some(value.to_owned()),
                _ => {
                    return Err(format!(
                        "header matcher {name}: string_match other than exact"
                    ))
                }
            }
        }
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(format!(
                "header matcher {name}: both exact_match and string_match"
            ))
        }
    };
    match (exact, matcher.present_match) {
        (Some(_), _) if matcher.invert_match => Err(format!(
            "header matcher {name}: invert_match on a value (a rule cannot match a header \
             that is not equal to a value)"
        )),
        (Some(value), None) => Ok(json!({ "name": name, "equals": value })),
        (None, present) => {
            // Envoy: a matcher with no specifier tests presence.
            let present = present.unwrap_or(true) != matcher.invert_match;
            Ok(json!({ "name": name, "present": present }))
        }
        (Some(_), Some(_)) => Err(format!(
            "header matcher {name}: both a value and present_match"
        )),
    }
}
