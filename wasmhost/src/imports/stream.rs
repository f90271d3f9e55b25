//! Host calls that act on a stream: resume, close, answer locally, and send
//! an HTTP callout.

use wasmi::{Caller, Error, Linker};

use super::status;
use crate::abi::{Status, StreamType};
use crate::guest::{read, read_text, write_u32};
use crate::headers::Headers;
use crate::state::{ContextKind, HostState, HttpCall, LocalReply};

const ENV: &str = "env";

/// `proxy_continue_stream`. On the root context (e.g. after a failed
/// `proxy_set_effective_context`) Envoy does nothing and answers `Ok`.
fn proxy_continue_stream(mut caller: Caller<'_, HostState>, stream: i32) -> Result<i32, Error> {
    let Some(stream) = StreamType::from_raw(stream) else {
        return status(Err(Status::BadArgument));
    };
    if let Some(context) = caller.data_mut().effective_mut() {
        match stream {
            StreamType::Request => context.request_resumes += 1,
            StreamType::Response => context.response_resumes += 1,
            StreamType::Downstream | StreamType::Upstream => {}
        }
    }
    status(Ok(()))
}

fn proxy_close_stream(mut caller: Caller<'_, HostState>, stream: i32) -> Result<i32, Error> {
    if StreamType::from_raw(stream).is_none() {
        return status(Err(Status::BadArgument));
    }
    if let Some(context) = caller.data_mut().effective_mut() {
        context.closed = true;
    }
    status(Ok(()))
}

#[allow(clippy::too_many_arguments)] // The ABI's signature.
fn proxy_send_local_response(
    mut caller: Caller<'_, HostState>,
    status_code: i32,
    details_ptr: i32,
    details_len: i32,
    body_ptr: i32,
    body_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    grpc_status: i32,
) -> Result<i32, Error> {
    let details = read_text(&caller, details_ptr, details_len)?;
    let body = read(&caller, body_ptr, body_len)?;
    let Some(headers) = Headers::decode(&read(&caller, headers_ptr, headers_len)?) else {
        return status(Err(Status::BadArgument));
    };
    match caller.data_mut().effective_mut() {
        Some(context) if matches!(context.kind, ContextKind::Http { .. }) => {
            context.local_replies.push(LocalReply {
                status: status_code as u32,
                headers,
                body,
                details,
                grpc_status,
                sent_headers: None,
            });
        }
        // The root context has no stream to answer: Envoy ignores it.
        _ => {}
    }
    status(Ok(()))
}

/// `proxy_http_call`. Like Envoy, an unknown cluster or a missing `:method`,
/// `:path` or `:authority` is refused at once with `BadArgument`.
#[allow(clippy::too_many_arguments)] // The ABI's signature.
fn proxy_http_call(
    mut caller: Caller<'_, HostState>,
    upstream_ptr: i32,
    upstream_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    body_ptr: i32,
    body_len: i32,
    trailers_ptr: i32,
    trailers_len: i32,
    timeout_ms: i32,
    token_out: i32,
) -> Result<i32, Error> {
    let cluster = read_text(&caller, upstream_ptr, upstream_len)?;
    let body = read(&caller, body_ptr, body_len)?;
    let (Some(headers), Some(trailers)) = (
        Headers::decode(&read(&caller, headers_ptr, headers_len)?),
        Headers::decode(&read(&caller, trailers_ptr, trailers_len)?),
    ) else {
        return status(Err(Status::BadArgument));
    };
    let state = caller.data_mut();
    let complete = [":method", ":path", ":authority"]
        .iter()
        .all(|name| headers.get_bytes(name).is_some());
    if !complete || !state.clusters.contains(&cluster) {
        return status(Err(Status::BadArgument));
    }
    let token = state.next_token;
    state.next_token += 1;
    state.calls.push(HttpCall {
        token,
        context_id: state.effective,
        cluster,
        headers,
        body,
        trailers,
        timeout_ms: timeout_ms as u32,
        answered: false,
    });
    write_u32(&mut caller, token_out, token)?;
    status(Ok(()))
}

pub(super) fn define(linker: &mut Linker<HostState>) -> Result<(), Error> {
    linker.func_wrap(ENV, "proxy_continue_stream", proxy_continue_stream)?;
    // ABI 0.1.0's names for resuming, for older modules.
    linker.func_wrap(
        ENV,
        "proxy_continue_request",
        |caller: Caller<'_, HostState>| proxy_continue_stream(caller, 0),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_continue_response",
        |caller: Caller<'_, HostState>| proxy_continue_stream(caller, 1),
    )?;
    linker.func_wrap(ENV, "proxy_close_stream", proxy_close_stream)?;
    linker.func_wrap(ENV, "proxy_send_local_response", proxy_send_local_response)?;
    linker.func_wrap(ENV, "proxy_http_call", proxy_http_call)?;
    Ok(())
}
