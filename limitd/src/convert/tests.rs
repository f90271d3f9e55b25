//! Tests of the converter, mostly on the examples of envoyproxy/ratelimit's README. Every
//! conversion's rules are also checked by the filter's own configuration parser.

use serde_json::json;

use super::{convert, Conversion};

/// Converts, and checks that the filter accepts the rules as they are printed.
fn converted(config: &str, actions: &str) -> Conversion {
    let conversion = convert(config, actions).unwrap();
    let plugin = format!(r#"{{"rules": {}}}"#, conversion.rules_json());
    if !conversion.rules.is_empty() {
        ratelimit::config::Policy::from_json(plugin.as_bytes())
            .unwrap_or_else(|e| panic!("the filter refuses {plugin}: {e:?}"));
    }
    conversion
}

/// The rules as JSON values, for comparison with `json!`.
fn rules(conversion: &Conversion) -> serde_json::Value {
    serde_json::from_str(&conversion.rules_json()).unwrap()
}

fn refusals(conversion: &Conversion) -> Vec<String> {
    conversion
        .refusals
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn remote_address_counts_per_client() {
    let conversion = converted(
        "
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10
",
        "[{actions: [{remote_address: {}}]}]",
    );
    assert!(conversion.refusals.is_empty(), "{:?}", conversion.refusals);
    assert_eq!(
        rules(&conversion),
        json!([{
            "name": "edge_proxy_per_ip.remote_address",
            "match": {},
            "key": ["client_ip"],
            "limit": {"requests": 10, "window": "1s"}
        }])
    );
}

#[test]
fn a_blocked_address_beside_a_per_client_limit_is_refused_both_ways() {
    // The README's black-list example: ratelimit gives 50.0.0.5 its own (zero) limit and every
    // other address the per-client one. A rule cannot match an address, nor exclude one.
    let conversion = converted(
        "
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
",
        "- actions: [{remote_address: {}}]",
    );
    assert!(conversion.rules.is_empty());
    let lines = refusals(&conversion);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines
        .iter()
        .any(|l| l.contains("remote_address=50.0.0.5")
            && l.contains("cannot match a client address")));
    assert!(lines
        .iter()
        .any(|l| l.contains("edge_proxy_per_ip: remote_address (through")
            && l.contains("except 50.0.0.5")));
}

#[test]
fn nested_descriptors_become_header_conditions_and_header_keys() {
    // The README's messaging example: marketing messages 5 a day per number, any message 100 a
    // day per number.
    let config = "
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
";
    let actions = "
rate_limits:
  - actions:
      - request_headers: {header_name: x-message-type, descriptor_key: message_type}
      - request_headers: {header_name: X-To-Number, descriptor_key: to_number}
  - actions:
      - request_headers: {header_name: x-to-number, descriptor_key: to_number}
";
    let conversion = converted(config, actions);
    assert!(conversion.refusals.is_empty(), "{:?}", conversion.refusals);
    assert_eq!(
        rules(&conversion),
        json!([
            {
                "name": "messaging.message_type_marketing.to_number",
                "match": {"headers": [{"name": "x-message-type", "equals": "marketing"}]},
                "key": [{"header": "x-to-number"}],
                "limit": {"requests": 5, "window": "1d"}
            },
            {
                "name": "messaging.to_number",
                "match": {},
                "key": [{"header": "x-to-number"}],
                "limit": {"requests": 100, "window": "1d"}
            }
        ])
    );
}

#[test]
fn generic_keys_are_constants_and_pick_their_value() {
    let config = "
domain: api
descriptors:
  - key: generic_key
    value: everyone
    rate_limit: {unit: minute, requests_per_unit: 1000}
  - key: generic_key
    rate_limit: {unit: hour, requests_per_unit: 7}
  - key: api_key
    descriptors:
      - key: plan
        value: free
        rate_limit: {unit: minute, requests_per_unit: 20}
";
    let actions = "
- match: {prefix: /api/}
  route:
    cluster: backend
    rate_limits:
      - actions: [{generic_key: {descriptor_value: everyone}}]
      - actions: [{generic_key: {descriptor_value: someone_else}}]
      - actions:
          - request_headers: {header_name: x-api-key, descriptor_key: api_key}
          - generic_key: {descriptor_key: plan, descriptor_value: free}
";
    let conversion = converted(config, actions);
    assert!(conversion.refusals.is_empty(), "{:?}", conversion.refusals);
    let path = json!({"prefix": "/api/"});
    assert_eq!(
        rules(&conversion),
        json!([
            {"name": "api.generic_key_everyone", "match": {"path": path},
             "key": [{"constant": "all"}], "limit": {"requests": 1000, "window": "1m"}},
            // No node has the value someone_else: the value-less node counts it.
            {"name": "api.generic_key", "match": {"path": path},
             "key": [{"constant": "all"}], "limit": {"requests": 7, "window": "1h"}},
            {"name": "api.api_key.plan_free", "match": {"path": path},
             "key": [{"header": "x-api-key"}], "limit": {"requests": 20, "window": "1m"}}
        ])
    );
}

#[test]
fn header_value_match_becomes_header_conditions() {
    let config = "
domain: d
descriptors:
  - key: header_match
    value: internal
    rate_limit: {unit: second, requests_per_unit: 50}
  - key: anonymous
    value: yes
    rate_limit: {unit: second, requests_per_unit: 5}
    shadow_mode: true
";
    let actions = r#"
- actions:
    - header_value_match:
        descriptor_value: internal
        headers:
          - {name: X-Internal, exact_match: "1"}
          - {name: x-zone, string_match: {exact: eu}}
- actions:
    - header_value_match:
        descriptor_key: anonymous
        descriptor_value: "yes"
        expect_match: false
        headers: [{name: authorization, present_match: true}]
"#;
    let conversion = converted(config, actions);
    assert!(conversion.refusals.is_empty(), "{:?}", conversion.refusals);
    assert_eq!(
        rules(&conversion),
        json!([
            {"name": "d.header_match_internal",
             "match": {"headers": [{"name": "x-internal", "equals": "1"},
                                   {"name": "x-zone", "equals": "eu"}]},
             "key": [{"constant": "all"}], "limit": {"requests": 50, "window": "1s"}},
            {"name": "d.anonymous_yes",
             "match": {"headers": [{"name": "authorization", "present": false}]},
             "key": [{"constant": "all"}], "limit": {"requests": 5, "window": "1s"},
             "shadow": true}
        ])
    );
}

#[test]
fn unlimited_entries_and_limits_above_the_last_entry_make_no_rule() {
    // ratelimit applies a limit only at the depth of the descriptor's last entry.
    let config = "
domain: internal
descriptors:
  - key: ldap
    rate_limit: {unlimited: true}
  - key: client
    rate_limit: {unit: second, requests_per_unit: 3}
    descriptors:
      - key: generic_key
        value: bulk
";
    let actions = "
- actions: [{request_headers: {header_name: x-ldap, descriptor_key: ldap}}]
- actions:
    - request_headers: {header_name: x-client, descriptor_key: client}
    - generic_key: {descriptor_value: bulk}
";
    let conversion = converted(config, actions);
    assert!(conversion.rules.is_empty(), "{:?}", conversion.rules);
    // client's own limit needs a descriptor of one entry, which no action list sends.
    assert_eq!(
        refusals(&conversion),
        ["refused internal: client: no given rate_limits action list produces this descriptor"]
    );
}

#[test]
fn what_a_rule_cannot_express_is_refused_with_its_entry() {
    let config = "
domain: d
descriptors:
  - key: a
    rate_limit: {unit: month, requests_per_unit: 3}
  - key: b
    rate_limit: {unit: second, requests_per_unit: 3, replaces: [{name: x}]}
  - key: c
    value: v
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 1000000000000001}
";
    let actions = "
- actions: [{request_headers: {header_name: x-a, descriptor_key: a}}]
- actions: [{request_headers: {header_name: x-b, descriptor_key: b}}]
- actions: [{request_headers: {header_name: x-c, descriptor_key: c, skip_if_absent: true}}]
- actions: [{destination_cluster: {}}]
- stage: 1
  actions: [{remote_address: {}}]
- actions:
    - header_value_match:
        descriptor_value: v
        expect_match: false
        headers: [{name: x-c, exact_match: v}]
- actions: [{remote_address: {}}]
";
    let conversion = converted(config, actions);
    assert!(conversion.rules.is_empty(), "{:?}", conversion.rules);
    let lines = refusals(&conversion);
    let expect = [
        "refused d: a: unit month",
        "refused d: b: replaces",
        "refused d: c=v: no given rate_limits action list",
        "refused d: remote_address: requests_per_unit 1000000000000001",
        "refused rate_limits[2]: request_headers with skip_if_absent: true",
        "refused rate_limits[3]: action destination_cluster",
        "refused rate_limits[4]: stage 1",
        "refused rate_limits[5]: header_value_match with expect_match: false",
    ];
    for start in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(start)),
            "{start} not in {lines:#?}"
        );
    }
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
}

#[test]
fn a_route_overlapping_an_earlier_one_is_refused() {
    let config = "
domain: d
descriptors:
  - key: generic_key
    value: all
    rate_limit: {unit: second, requests_per_unit: 3}
";
    // Envoy sends /api/x to the first route only; a rule for the second would count it too.
    let actions = "
routes:
  - match: {path: /health}
    route: {cluster: backend}
  - match: {prefix: /api}
    route:
      rate_limits: [{actions: [{generic_key: {descriptor_value: all}}]}]
  - match: {prefix: /api/v2}
    route:
      rate_limits: [{actions: [{generic_key: {descriptor_value: all}}]}]
  - match: {prefix: /, headers: [{name: x}]}
    route:
      rate_limits: [{actions: [{generic_key: {descriptor_value: all}}]}]
";
    let conversion = converted(config, actions);
    assert_eq!(
        rules(&conversion),
        json!([{"name": "d.generic_key_all", "match": {"path": {"prefix": "/api"}},
                "key": [{"constant": "all"}], "limit": {"requests": 3, "window": "1s"}}])
    );
    let lines = refusals(&conversion);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].starts_with("refused routes[2]: its match overlaps routes[1]'s"));
    assert!(lines[1].starts_with("refused routes[3]: route match field(s) headers"));
}

#[test]
fn rule_names_are_valid_and_unique() {
    let config = "
domain: my domain
descriptors:
  - key: generic_key
    value: a/b
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: k
    rate_limit: {unit: second, requests_per_unit: 1, name: shared}
";
    let actions = "
- actions: [{generic_key: {descriptor_value: a/b}}]
- match: {prefix: /one}
  rate_limits: [{actions: [{generic_key: {descriptor_value: a/b}}]}]
- match: {prefix: /two}
  rate_limits: [{actions: [{request_headers: {header_name: k, descriptor_key: k}}]}]
- match: {prefix: /three}
  rate_limits: [{actions: [{request_headers: {header_name: k, descriptor_key: k}}]}]
";
    let conversion = converted(config, actions);
    assert!(conversion.refusals.is_empty(), "{:?}", conversion.refusals);
    let names: Vec<&str> = conversion.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "my_domain.generic_key_a_b",
            "my_domain.generic_key_a_b-2",
            "shared",
            "shared-2"
        ]
    );
}

#[test]
fn a_file_that_is_not_yaml_of_the_right_shape_is_an_error() {
    let error = convert("descriptors: []", "[]").unwrap_err();
    assert!(error.to_string().contains("domain"), "{error}");
    assert!(convert("domain: d", "- 3").is_err());
}
