//! Header-map host calls: the effective context's request and response
//! headers and trailers, and the headers of the callout being answered.

use wasmi::{Caller, Error, Linker};

use super::status;
use crate::abi::{MapType, Status};
use crate::guest::{give, read};
use crate::headers::Headers;
use crate::state::HostState;

const ENV: &str = "env";

/// The map a call means, for reading.
fn map(state: &HostState, kind: i32) -> Result<&Headers, Status> {
    let kind = MapType::from_raw(kind).ok_or(Status::BadArgument)?;
    let answer = state.answer.as_ref();
    let context = state.contexts.get(&state.effective).filter(|c| !c.deleted);
    match kind {
        MapType::CallResponseHeaders => answer.map(|a| &a.headers).ok_or(Status::NotFound),
        MapType::CallResponseTrailers => answer.map(|a| &a.trailers).ok_or(Status::NotFound),
        MapType::RequestHeaders => context.map(|c| &c.request_headers).ok_or(Status::NotFound),
        MapType::RequestTrailers => context.map(|c| &c.request_trailers).ok_or(Status::NotFound),
        MapType::ResponseHeaders => context.map(|c| &c.response_headers).ok_or(Status::NotFound),
        MapType::ResponseTrailers => context
            .map(|c| &c.response_trailers)
            .ok_or(Status::NotFound),
        MapType::GrpcInitialMetadata | MapType::GrpcTrailingMetadata => Err(Status::NotFound),
    }
}

/// The map a call means, for writing: only the stream's own maps are writable.
fn map_mut(state: &mut HostState, kind: i32) -> Result<&mut Headers, Status> {
    let kind = MapType::from_raw(kind).ok_or(Status::BadArgument)?;
    let context = state.effective_mut().ok_or(Status::NotFound)?;
    match kind {
        MapType::RequestHeaders => Ok(&mut context.request_headers),
        MapType::RequestTrailers => Ok(&mut context.request_trailers),
        MapType::ResponseHeaders => Ok(&mut context.response_headers),
        MapType::ResponseTrailers => Ok(&mut context.response_trailers),
        _ => Err(Status::BadArgument),
    }
}

fn proxy_get_header_map_pairs(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    ptr_out: i32,
    len_out: i32,
) -> Result<i32, Error> {
    let encoded = match map(caller.data(), kind) {
        Ok(headers) => headers.encode(),
        Err(e) => return status(Err(e)),
    };
    give(&mut caller, &encoded, ptr_out, len_out)?;
    status(Ok(()))
}

fn proxy_set_header_map_pairs(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    ptr: i32,
    len: i32,
) -> Result<i32, Error> {
    let Some(pairs) = Headers::decode(&read(&caller, ptr, len)?) else {
        return status(Err(Status::BadArgument));
    };
    status(map_mut(caller.data_mut(), kind).map(|headers| *headers = pairs))
}

fn proxy_get_header_map_value(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    key_ptr: i32,
    key_len: i32,
    ptr_out: i32,
    len_out: i32,
) -> Result<i32, Error> {
    let key = read(&caller, key_ptr, key_len)?;
    let value = match map(caller.data(), kind) {
        Ok(headers) => headers.get_bytes(&key).map(<[u8]>::to_vec),
        Err(e) => return status(Err(e)),
    };
    match value {
        Some(value) => {
            give(&mut caller, &value, ptr_out, len_out)?;
            status(Ok(()))
        }
        None => status(Err(Status::NotFound)),
    }
}

fn proxy_add_header_map_value(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    key_ptr: i32,
    key_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> Result<i32, Error> {
    let key = read(&caller, key_ptr, key_len)?;
    let value = read(&caller, value_ptr, value_len)?;
    status(map_mut(caller.data_mut(), kind).map(|headers| headers.add(key, value)))
}

fn proxy_replace_header_map_value(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    key_ptr: i32,
    key_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> Result<i32, Error> {
    let key = read(&caller, key_ptr, key_len)?;
    let value = read(&caller, value_ptr, value_len)?;
    status(map_mut(caller.data_mut(), kind).map(|headers| headers.replace(key, value)))
}

fn proxy_remove_header_map_value(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    key_ptr: i32,
    key_len: i32,
) -> Result<i32, Error> {
    let key = read(&caller, key_ptr, key_len)?;
    status(map_mut(caller.data_mut(), kind).map(|headers| headers.remove(key)))
}

pub(super) fn define(linker: &mut Linker<HostState>) -> Result<(), Error> {
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_pairs",
        proxy_get_header_map_pairs,
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_header_map_pairs",
        proxy_set_header_map_pairs,
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_value",
        proxy_get_header_map_value,
    )?;
    linker.func_wrap(
        ENV,
        "proxy_add_header_map_value",
        proxy_add_header_map_value,
    )?;
    linker.func_wrap(
        ENV,
        "proxy_replace_header_map_value",
        proxy_replace_header_map_value,
    )?;
    linker.func_wrap(
        ENV,
        "proxy_remove_header_map_value",
        proxy_remove_header_map_value,
    )?;
    Ok(())
}
