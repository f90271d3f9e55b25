//! `floor.wasm`: a proxy-wasm HTTP filter that makes exactly the host calls a decision inside
//! Envoy cannot do without, and nothing else, built with the same SDK, profile and export
//! stripping as `ratelimit.wasm`.
//!
//! Any filter that decides a request keyed by client IP from quota held in the proxy (a lease
//! block, a deny cache) must read the path (to match the rule), the client address (the key) and
//! the clock (the quota's expiry), and then either let the request through and add the
//! `RateLimit` headers to the upstream's response, or answer 429 itself. This module does those
//! calls with fixed answers:
//!
//! - `GET /limited_endpoint` is answered 429 with the headers and body of our denial;
//! - any other request goes through, and its response gets the two `RateLimit` headers.
//!
//! `cargo xtask bench` runs it as the `wasm_floor_admit` and `wasm_floor_deny` scenarios: the
//! least that Envoy's wasm runtime lets an admission from a lease block, or a denial from the
//! deny cache, cost. Our `leased` and `denied` are compared with them in the same run; the gap is
//! ours to cut, the rest is the runtime's.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // `proxy_wasm::main!` expands to an `unsafe` call of the module's constructors.
mod entry {
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::{Action, MapType};

    /// The bench's denied path (as `xtask/src/bench/scenarios.rs`, `DENIED_PATH`).
    const DENIED_PATH: &[u8] = b"/limited_endpoint";
    /// A denial's body, as long as ours.
    const BODY: &str = r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"Rate limit exceeded for policy \"limited_endpoint\"","violated_policies":["limited_endpoint"],"retry_after":3599}"#;

    #[derive(Default)]
    struct Floor {
        /// The request went through: its response gets the `RateLimit` headers.
        admitted: bool,
    }

    impl Context for Floor {}

    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            let path = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path")
                .ok()
                .flatten()
                .unwrap_or_default();
            let address = hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten();
            let now = hostcalls::get_current_time().ok();
            // Used, so that neither read can be optimized away.
            if address.is_none() || now.is_none() {
                return Action::Continue;
            }
            if path != DENIED_PATH {
                self.admitted = true;
                return Action::Continue;
            }
            let _ = hostcalls::send_http_response(
                429,
                vec![
                    ("retry-after", "3599"),
                    ("content-type", "application/problem+json"),
                    ("ratelimit-policy", "\"limited_endpoint\";q=1;w=3600"),
                    ("ratelimit", "\"limited_endpoint\";r=0;t=3599"),
                ],
                Some(BODY.as_bytes()),
            );
            Action::Pause
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            if self.admitted {
                let _ = hostcalls::set_map_value(
                    MapType::HttpResponseHeaders,
                    "ratelimit-policy",
                    Some("\"bench_leased\";q=1000000000000;w=3600"),
                );
                let _ = hostcalls::set_map_value(
                    MapType::HttpResponseHeaders,
                    "ratelimit",
                    Some("\"bench_leased\";r=999999999000;t=3599"),
                );
            }
            Action::Continue
        }
    }

    proxy_wasm::main! {{
        proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::<Floor>::default() });
    }}
}
