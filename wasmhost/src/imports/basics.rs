//! Host calls about the VM and its contexts: logging, time, ticks, buffers,
//! properties, status, effective context; and the gRPC and foreign-function
//! calls this host does not implement.

use wasmi::{Caller, Error, Linker};

use super::status;
use crate::abi::{BufferType, LogLevel, Status};
use crate::guest::{addr, give, read, read_text, write_u32, write_u64};
use crate::state::{HostState, Phase};

const ENV: &str = "env";

fn proxy_log(
    mut caller: Caller<'_, HostState>,
    level: i32,
    ptr: i32,
    len: i32,
) -> Result<i32, Error> {
    let Some(level) = LogLevel::from_raw(level) else {
        return status(Err(Status::BadArgument));
    };
    let message = read_text(&caller, ptr, len)?;
    caller.data_mut().log(level, message);
    status(Ok(()))
}

fn proxy_get_log_level(mut caller: Caller<'_, HostState>, out: i32) -> Result<i32, Error> {
    // Trace: the module logs everything, so tests can see everything.
    write_u32(&mut caller, out, 0)?;
    status(Ok(()))
}

fn proxy_get_current_time_nanoseconds(
    mut caller: Caller<'_, HostState>,
    out: i32,
) -> Result<i32, Error> {
    let now = caller.data().shared().now_ns;
    write_u64(&mut caller, out, now)?;
    status(Ok(()))
}

fn proxy_set_tick_period_milliseconds(
    mut caller: Caller<'_, HostState>,
    period: i32,
) -> Result<i32, Error> {
    let now = caller.data().shared().now_ns;
    let state = caller.data_mut();
    state.tick_period_ms = period as u32;
    state.tick_anchor_ns = now;
    status(Ok(()))
}

/// The bytes of a buffer as the effective context sees it now.
fn buffer(state: &HostState, kind: BufferType) -> Result<Vec<u8>, Status> {
    let context = state.contexts.get(&state.effective);
    match kind {
        // As in Envoy, the configurations are readable only during their callback.
        BufferType::VmConfiguration if state.phase == Phase::VmStart => {
            Ok(state.vm_configuration.clone())
        }
        BufferType::PluginConfiguration if state.phase == Phase::Configure => {
            Ok(state.plugin_configuration.clone())
        }
        BufferType::CallResponseBody => state
            .answer
            .as_ref()
            .map(|a| a.body.clone())
            .ok_or(Status::NotFound),
        BufferType::RequestBody => context
            .map(|c| c.request_body.clone())
            .ok_or(Status::NotFound),
        BufferType::ResponseBody => context
            .map(|c| c.response_body.clone())
            .ok_or(Status::NotFound),
        _ => Err(Status::NotFound),
    }
}

fn proxy_get_buffer_bytes(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    start: i32,
    max_size: i32,
    ptr_out: i32,
    len_out: i32,
) -> Result<i32, Error> {
    let Some(kind) = BufferType::from_raw(kind) else {
        return status(Err(Status::BadArgument));
    };
    let bytes = match buffer(caller.data(), kind) {
        Ok(bytes) => bytes,
        Err(e) => return status(Err(e)),
    };
    let start = addr(start);
    if start > bytes.len() {
        return status(Err(Status::BadArgument));
    }
    let end = start.saturating_add(addr(max_size)).min(bytes.len());
    give(&mut caller, &bytes[start..end], ptr_out, len_out)?;
    status(Ok(()))
}

fn proxy_set_buffer_bytes(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> Result<i32, Error> {
    let data = read(&caller, ptr, len)?;
    let state = caller.data_mut();
    let Some(context) = state.effective_mut() else {
        return status(Err(Status::NotFound));
    };
    let body = match BufferType::from_raw(kind) {
        Some(BufferType::RequestBody) => &mut context.request_body,
        Some(BufferType::ResponseBody) => &mut context.response_body,
        _ => return status(Err(Status::BadArgument)),
    };
    let start = addr(start).min(body.len());
    let end = start.saturating_add(addr(size)).min(body.len());
    body.splice(start..end, data);
    status(Ok(()))
}

fn proxy_get_property(
    mut caller: Caller<'_, HostState>,
    path_ptr: i32,
    path_len: i32,
    ptr_out: i32,
    len_out: i32,
) -> Result<i32, Error> {
    let path = read(&caller, path_ptr, path_len)?;
    let state = caller.data();
    let value = state
        .contexts
        .get(&state.effective)
        .and_then(|c| c.properties.get(&path))
        .or_else(|| state.properties.get(&path))
        .cloned();
    match value {
        Some(value) => {
            give(&mut caller, &value, ptr_out, len_out)?;
            status(Ok(()))
        }
        None => status(Err(Status::NotFound)),
    }
}

fn proxy_set_property(
    mut caller: Caller<'_, HostState>,
    path_ptr: i32,
    path_len: i32,
    ptr: i32,
    len: i32,
) -> Result<i32, Error> {
    let path = read(&caller, path_ptr, path_len)?;
    let value = read(&caller, ptr, len)?;
    match caller.data_mut().effective_mut() {
        Some(context) => {
            context.properties.insert(path, value);
            status(Ok(()))
        }
        None => status(Err(Status::NotFound)),
    }
}

/// `proxy_get_status`: why the callout being answered has no response (a reset).
fn proxy_get_status(
    mut caller: Caller<'_, HostState>,
    code_out: i32,
    ptr_out: i32,
    len_out: i32,
) -> Result<i32, Error> {
    let (code, message) = caller
        .data()
        .answer
        .as_ref()
        .map(|a| a.status.clone())
        .unwrap_or_default();
    write_u32(&mut caller, code_out, code)?;
    give(&mut caller, &message, ptr_out, len_out)?;
    status(Ok(()))
}

/// `proxy_set_effective_context`: only a live context can be made effective;
/// Envoy answers `BadArgument` for one that was destroyed.
fn proxy_set_effective_context(mut caller: Caller<'_, HostState>, id: i32) -> Result<i32, Error> {
    let state = caller.data_mut();
    let id = id as u32;
    if state.contexts.get(&id).is_some_and(|c| !c.deleted) {
        state.effective = id;
        status(Ok(()))
    } else {
        status(Err(Status::BadArgument))
    }
}

fn proxy_call_foreign_function(
    _caller: Caller<'_, HostState>,
    _name_ptr: i32,
    _name_len: i32,
    _args_ptr: i32,
    _args_len: i32,
    _ptr_out: i32,
    _len_out: i32,
) -> Result<i32, Error> {
    // No foreign functions are registered: Envoy's answer for an unknown name.
    status(Err(Status::NotFound))
}

fn unimplemented(name: &str) -> Error {
    Error::new(format!(
        "wasmhost: the module called {name}, which this test host does not implement"
    ))
}

pub(super) fn define(linker: &mut Linker<HostState>) -> Result<(), Error> {
    linker.func_wrap(ENV, "proxy_log", proxy_log)?;
    linker.func_wrap(ENV, "proxy_get_log_level", proxy_get_log_level)?;
    linker.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        proxy_get_current_time_nanoseconds,
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        proxy_set_tick_period_milliseconds,
    )?;
    linker.func_wrap(ENV, "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    linker.func_wrap(ENV, "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    linker.func_wrap(ENV, "proxy_get_property", proxy_get_property)?;
    linker.func_wrap(ENV, "proxy_set_property", proxy_set_property)?;
    linker.func_wrap(ENV, "proxy_get_status", proxy_get_status)?;
    linker.func_wrap(
        ENV,
        "proxy_set_effective_context",
        proxy_set_effective_context,
    )?;
    linker.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        proxy_call_foreign_function,
    )?;
    linker.func_wrap(ENV, "proxy_done", |_: Caller<'_, HostState>| -> i32 {
        Status::Ok.code()
    })?;
    // gRPC is not modelled: a call traps with a message naming it.
    linker.func_wrap(
        ENV,
        "proxy_grpc_call",
        |_: Caller<'_, HostState>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32|
         -> Result<i32, Error> { Err(unimplemented("proxy_grpc_call")) },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_stream",
        |_: Caller<'_, HostState>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32|
         -> Result<i32, Error> { Err(unimplemented("proxy_grpc_stream")) },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_send",
        |_: Caller<'_, HostState>, _: i32, _: i32, _: i32, _: i32| -> Result<i32, Error> {
            Err(unimplemented("proxy_grpc_send"))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_cancel",
        |_: Caller<'_, HostState>, _: i32| -> Result<i32, Error> {
            Err(unimplemented("proxy_grpc_cancel"))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_close",
        |_: Caller<'_, HostState>, _: i32| -> Result<i32, Error> {
            Err(unimplemented("proxy_grpc_close"))
        },
    )?;
    Ok(())
}
