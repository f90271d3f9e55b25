//! Reading and writing the guest's memory from a host function, and handing
//! data to the guest in memory it allocated (`proxy_on_memory_allocate`).

use wasmi::{Caller, Error, Memory};

use crate::state::HostState;

/// A guest pointer or length (`usize` on wasm32) as a host index.
pub(crate) fn addr(raw: i32) -> usize {
    raw as u32 as usize
}

fn memory(caller: &Caller<'_, HostState>) -> Result<Memory, Error> {
    caller
        .data()
        .memory
        .ok_or_else(|| Error::new("wasmhost: the module exports no memory"))
}

/// Copies `len` bytes at `ptr` out of the guest.
pub(crate) fn read(caller: &Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>, Error> {
    let mut out = vec![0; addr(len)];
    memory(caller)?
        .read(caller, addr(ptr), &mut out)
        .map_err(|_| {
            Error::new(format!(
                "wasmhost: guest range {ptr:#x}+{len} is out of bounds"
            ))
        })?;
    Ok(out)
}

/// Reads text at `ptr`; invalid UTF-8 is replaced.
pub(crate) fn read_text(
    caller: &Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<String, Error> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

pub(crate) fn write(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    bytes: &[u8],
) -> Result<(), Error> {
    memory(caller)?
        .write(&mut *caller, addr(ptr), bytes)
        .map_err(|_| Error::new(format!("wasmhost: guest pointer {ptr:#x} is out of bounds")))
}

pub(crate) fn write_u32(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    value: u32,
) -> Result<(), Error> {
    write(caller, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    value: u64,
) -> Result<(), Error> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the guest: allocates with its `proxy_on_memory_allocate`,
/// copies them in, and writes the pointer and length into the out-parameters.
///
/// Even an empty value is allocated: the SDK rebuilds a `Vec` from the pointer
/// and would take a null one for "no value".
pub(crate) fn give(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ptr_out: i32,
    len_out: i32,
) -> Result<(), Error> {
    let allocate = caller
        .data()
        .allocate
        .ok_or_else(|| Error::new("wasmhost: the module exports no proxy_on_memory_allocate"))?;
    let len = i32::try_from(bytes.len())
        .map_err(|_| Error::new("wasmhost: value too large for a 32-bit guest"))?;
    let ptr = allocate.call(&mut *caller, len)?;
    if ptr == 0 && len > 0 {
        return Err(Error::new(format!(
            "wasmhost: proxy_on_memory_allocate({len}) returned null"
        )));
    }
    write(caller, ptr, bytes)?;
    write_u32(caller, ptr_out, ptr as u32)?;
    write_u32(caller, len_out, len as u32)
}
