//! What a rule can see of a request, and how a rule's match is tested against it.

use regex_lite::Regex;

/// Read access to the request being filtered. The glue implements it over
/// host calls, fetching each value only when a rule needs it; tests use a map.
pub trait RequestView {
    /// A request header by lower-case name, pseudo-headers included
    /// (`:path`, `:method`, `:authority`). Values are bytes: they need not be UTF-8.
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// Envoy's `source.address` property: the downstream address as `ip:port`.
    fn source_address(&self) -> Option<Vec<u8>>;
}

/// How a rule matches the request path (the `:path` before any `?`).
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

/// What a rule requires of one request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderCondition {
    /// The header is present (`true`) or absent (`false`).
    Present(bool),
    /// The header is present with exactly this value.
    Equals(Vec<u8>),
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lower-case, as Envoy presents header names.
    pub name: String,
    pub condition: HeaderCondition,
}

/// Which requests a rule applies to: all of its conditions must hold. A
/// matcher with no conditions matches every request.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub path: Option<PathMatch>,
    /// Upper-case methods; empty: any method.
    pub methods: Vec<String>,
    /// Lower-case host, or `*.suffix`; compared without the port.
    pub host: Option<String>,
    pub headers: Vec<HeaderMatch>,
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathMatch::Exact(a), PathMatch::Exact(b))
            | (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for PathMatch {}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.methods == other.methods
            && self.host == other.host
            && self.headers == other.headers
    }
}

impl Eq for Matcher {}

/// The path without its query string.
pub fn path_only(path: &[u8]) -> &[u8] {
    let end = path.iter().position(|&b| b == b'?').unwrap_or(path.len());
    &path[..end]
}

/// The host of an `:authority` without its port or a trailing dot (the
/// fully-qualified `example.com.` names the same host), lower-cased.
fn host_only(authority: &[u8]) -> Vec<u8> {
    let end = if authority.starts_with(b"[") {
        authority
            .iter()
            .position(|&b| b == b']')
            .map_or(authority.len(), |i| i + 1)
    } else {
        authority
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(authority.len())
    };
    let host = &authority[..end];
    host.strip_suffix(b".").unwrap_or(host).to_ascii_lowercase()
}

impl Matcher {
    /// Whether the request meets every condition. `path` is the request's
    /// path without query, read once by the caller for all rules.
    pub fn matches(&self, path: &[u8], request: &impl RequestView) -> bool {
        if let Some(path_match) = &self.path {
            let ok = match path_match {
                PathMatch::Exact(p) => path == p.as_bytes(),
                PathMatch::Prefix(p) => path.starts_with(p.as_bytes()),
                // A path that is not UTF-8 cannot match a regex written as text.
                PathMatch::Regex(re) => std::str::from_utf8(path).is_ok_and(|p| re.is_match(p)),
            };
            if !ok {
                return false;
            }
        }
        if !self.methods.is_empty() {
            let method = request.header(":method").unwrap_or_default();
            if !self
                .methods
                .iter()
                .any(|m| m.as_bytes() == method.as_slice())
            {
                return false;
            }
        }
        if let Some(host) = &self.host {
            let actual = host_only(&request.header(":authority").unwrap_or_default());
            let ok = match host.strip_prefix('*') {
                Some(suffix) => actual.ends_with(suffix.as_bytes()) && actual.len() > suffix.len(),
                None => actual == host.as_bytes(),
            };
            if !ok {
                return false;
            }
        }
        self.headers.iter().all(|h| {
            let value = request.header(&h.name);
            match &h.condition {
                HeaderCondition::Present(present) => value.is_some() == *present,
                HeaderCondition::Equals(expected) => value.as_deref() == Some(expected.as_slice()),
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A request made of a header map and a source address.
    #[derive(Debug, Default, Clone)]
    pub struct FakeRequest {
        pub headers: HashMap<String, Vec<u8>>,
        pub source: Option<Vec<u8>>,
    }

    impl FakeRequest {
        pub fn new(method: &str, path: &str) -> Self {
            FakeRequest::default()
                .with(":method", method)
                .with(":path", path)
                .from("127.0.0.1:4000")
        }
        pub fn with(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
            self.headers
                .insert(name.to_owned(), value.as_ref().to_vec());
            self
        }
        pub fn from(mut self, source: &str) -> Self {
            self.source = Some(source.as_bytes().to_vec());
            self
        }
    }

    impl RequestView for FakeRequest {
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            self.headers.get(name).cloned()
        }
        fn source_address(&self) -> Option<Vec<u8>> {
            self.source.clone()
        }
    }

    fn check(matcher: &Matcher, request: &FakeRequest) -> bool {
        let path = request.header(":path").unwrap_or_default();
        matcher.matches(path_only(&path), request)
    }

    #[test]
    fn an_empty_matcher_matches_everything() {
        assert!(check(
            &Matcher::default(),
            &FakeRequest::new("GET", "/anything")
        ));
    }

    #[test]
    fn paths_match_exactly_by_prefix_or_by_regex_without_the_query() {
        let exact = Matcher {
            path: Some(PathMatch::Exact("/a".into())),
            ..Matcher::default()
        };
        assert!(check(&exact, &FakeRequest::new("GET", "/a?x=1")));
        assert!(!check(&exact, &FakeRequest::new("GET", "/ab")));
        let prefix = Matcher {
            path: Some(PathMatch::Prefix("/api/".into())),
            ..Matcher::default()
        };
        assert!(check(&prefix, &FakeRequest::new("GET", "/api/v1")));
        assert!(!check(&prefix, &FakeRequest::new("GET", "/x?/api/")));
        let regex = Matcher {
            path: Some(PathMatch::Regex(Regex::new("^/v[0-9]+/items$").unwrap())),
            ..Matcher::default()
        };
        assert!(check(&regex, &FakeRequest::new("GET", "/v2/items?page=3")));
        assert!(!check(&regex, &FakeRequest::new("GET", "/v2/items/1")));
        assert!(!check(
            &regex,
            &FakeRequest::new("GET", "/v2/items").with(":path", b"/v2/\xff")
        ));
    }

    #[test]
    fn methods_host_and_headers_must_all_hold() {
        let matcher = Matcher {
            methods: vec!["POST".into(), "PUT".into()],
            host: Some("api.example.com".into()),
            headers: vec![
                HeaderMatch {
                    name: "x-tier".into(),
                    condition: HeaderCondition::Equals(b"free".to_vec()),
                },
                HeaderMatch {
                    name: "x-internal".into(),
                    condition: HeaderCondition::Present(false),
                },
            ],
            ..Matcher::default()
        };
        let ok = FakeRequest::new("POST", "/")
            .with(":authority", "API.example.com:8443")
            .with("x-tier", "free");
        assert!(check(&matcher, &ok));
        assert!(!check(&matcher, &ok.clone().with(":method", "GET")));
        assert!(!check(
            &matcher,
            &ok.clone().with(":authority", "example.com")
        ));
        assert!(!check(&matcher, &ok.clone().with("x-tier", "gold")));
        assert!(!check(&matcher, &ok.clone().with("x-internal", "1")));
    }

    #[test]
    fn a_wildcard_host_matches_subdomains_only() {
        let matcher = Matcher {
            host: Some("*.example.com".into()),
            ..Matcher::default()
        };
        assert!(check(
            &matcher,
            &FakeRequest::new("GET", "/").with(":authority", "a.example.com")
        ));
        assert!(!check(
            &matcher,
            &FakeRequest::new("GET", "/").with(":authority", "example.com")
        ));
        assert!(!check(
            &matcher,
            &FakeRequest::new("GET", "/").with(":authority", ".example.com")
        ));
    }

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(host_only(b"Example.COM:80"), b"example.com");
        assert_eq!(host_only(b"[::1]:80"), b"[::1]");
        assert_eq!(host_only(b"example.com"), b"example.com");
        // A trailing dot cannot take a request out of its rule.
        assert_eq!(host_only(b"Example.com.:8000"), b"example.com");
        assert_eq!(host_only(b"example.com."), b"example.com");
    }
}
