//! Shared data (key → value with CAS) and shared queues, process-wide per
//! `vm_id` as in Envoy: they live in the host's [`crate::shared::Shared`].

use wasmi::{Caller, Error, Linker};

use super::status;
use crate::guest::{give, read, read_text, write_u32};
use crate::state::{ContextKind, HostState};

const ENV: &str = "env";

fn proxy_get_shared_data(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    ptr_out: i32,
    len_out: i32,
    cas_out: i32,
) -> Result<i32, Error> {
    let key = read(&caller, key_ptr, key_len)?;
    let state = caller.data();
    let found = state.shared().get_data(&state.vm_id, &key);
    match found {
        Ok((value, cas)) => {
            give(&mut caller, &value, ptr_out, len_out)?;
            write_u32(&mut caller, cas_out, cas)?;
            status(Ok(()))
        }
        Err(e) => status(Err(e)),
    }
}

fn proxy_set_shared_data(
    caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    value_ptr: i32,
    value_len: i32,
    cas: i32,
) -> Result<i32, Error> {
    let key = read(&caller, key_ptr, key_len)?;
    let value = read(&caller, value_ptr, value_len)?;
    let state = caller.data();
    let result = state
        .shared()
        .set_data(&state.vm_id, &key, &value, cas as u32);
    status(result)
}

/// `proxy_register_shared_queue`: its events go to the registering context's root.
fn proxy_register_shared_queue(
    mut caller: Caller<'_, HostState>,
    name_ptr: i32,
    name_len: i32,
    id_out: i32,
) -> Result<i32, Error> {
    let name = read_text(&caller, name_ptr, name_len)?;
    let state = caller.data();
    let owner = match state.contexts.get(&state.effective).map(|c| c.kind) {
        Some(ContextKind::Http { root }) => root,
        _ => state.effective,
    };
    let id = state
        .shared()
        .register_queue(&state.vm_id, &name, state.vm, owner);
    write_u32(&mut caller, id_out, id)?;
    status(Ok(()))
}

fn proxy_resolve_shared_queue(
    mut caller: Caller<'_, HostState>,
    vm_id_ptr: i32,
    vm_id_len: i32,
    name_ptr: i32,
    name_len: i32,
    id_out: i32,
) -> Result<i32, Error> {
    let vm_id = read_text(&caller, vm_id_ptr, vm_id_len)?;
    let name = read_text(&caller, name_ptr, name_len)?;
    let id = caller.data().shared().resolve_queue(&vm_id, &name);
    match id {
        Some(id) => {
            write_u32(&mut caller, id_out, id)?;
            status(Ok(()))
        }
        None => status(Err(crate::abi::Status::NotFound)),
    }
}

fn proxy_enqueue_shared_queue(
    caller: Caller<'_, HostState>,
    id: i32,
    ptr: i32,
    len: i32,
) -> Result<i32, Error> {
    let item = read(&caller, ptr, len)?;
    let result = caller.data().shared().enqueue(id as u32, &item);
    status(result)
}

fn proxy_dequeue_shared_queue(
    mut caller: Caller<'_, HostState>,
    id: i32,
    ptr_out: i32,
    len_out: i32,
) -> Result<i32, Error> {
    let item = caller.data().shared().dequeue(id as u32);
    match item {
        Ok(item) => {
            give(&mut caller, &item, ptr_out, len_out)?;
            status(Ok(()))
        }
        Err(e) => status(Err(e)),
    }
}

pub(super) fn define(linker: &mut Linker<HostState>) -> Result<(), Error> {
    linker.func_wrap(ENV, "proxy_get_shared_data", proxy_get_shared_data)?;
    linker.func_wrap(ENV, "proxy_set_shared_data", proxy_set_shared_data)?;
    linker.func_wrap(
        ENV,
        "proxy_register_shared_queue",
        proxy_register_shared_queue,
    )?;
    linker.func_wrap(
        ENV,
        "proxy_resolve_shared_queue",
        proxy_resolve_shared_queue,
    )?;
    linker.func_wrap(
        ENV,
        "proxy_enqueue_shared_queue",
        proxy_enqueue_shared_queue,
    )?;
    linker.func_wrap(
        ENV,
        "proxy_dequeue_shared_queue",
        proxy_dequeue_shared_queue,
    )?;
    Ok(())
}
