//! `noop.wasm`: a proxy-wasm HTTP filter that lets every request through without a single host
//! call, built with the same SDK, profile and export stripping as `ratelimit.wasm`.
//!
//! `cargo xtask bench` runs it as the `wasm_noop` scenario: what Envoy's wasm runtime costs a
//! request before any filter logic runs (context creation, the request-headers callback, the
//! context's deletion). The gap between it and Envoy without a filter is the floor no
//! proxy-wasm filter can go below; the gap between it and `filter_idle` is ours.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // `proxy_wasm::main!` expands to an `unsafe` call of the module's constructors.
mod entry {
    use proxy_wasm::traits::{Context, HttpContext};

    struct Noop;

    impl Context for Noop {}

    // The trait's default `on_http_request_headers` continues the request.
    impl HttpContext for Noop {}

    proxy_wasm::main! {{
        proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Noop) });
    }}
}
