//! A minimal `wasi_snapshot_preview1`: what Rust's std on wasm32-wasip1 calls
//! at start-up and when printing, with no environment, no arguments and no files.

use wasmi::{Caller, Error, Linker};

use crate::guest::{read, write, write_u32, write_u64};
use crate::state::HostState;

const MODULE: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_NOSYS: i32 = 52;

/// `fd_write`: stdout and stderr are captured; other descriptors do not exist.
fn fd_write(
    mut caller: Caller<'_, HostState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> Result<i32, Error> {
    if fd != 1 && fd != 2 {
        return Ok(ERRNO_BADF);
    }
    let vectors = read(&caller, iovs, iovs_len.saturating_mul(8))?;
    let mut written = Vec::new();
    for iov in vectors.chunks_exact(8) {
        let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        written.extend(read(&caller, ptr, len)?);
    }
    let count = written.len() as u32;
    let state = caller.data_mut();
    if fd == 1 {
        state.stdout.extend(written);
    } else {
        state.stderr.extend(written);
    }
    write_u32(&mut caller, nwritten, count)?;
    Ok(ERRNO_SUCCESS)
}

/// `environ_sizes_get` and `args_sizes_get`: none.
fn sizes_get(mut caller: Caller<'_, HostState>, count: i32, size: i32) -> Result<i32, Error> {
    write_u32(&mut caller, count, 0)?;
    write_u32(&mut caller, size, 0)?;
    Ok(ERRNO_SUCCESS)
}

/// `environ_get` and `args_get`: nothing to write.
fn list_get(_caller: Caller<'_, HostState>, _ptrs: i32, _buf: i32) -> Result<i32, Error> {
    Ok(ERRNO_SUCCESS)
}

/// `random_get`: a fixed-seed xorshift, so runs are reproducible.
fn random_get(mut caller: Caller<'_, HostState>, buf: i32, len: i32) -> Result<i32, Error> {
    let mut bytes = vec![0u8; len as u32 as usize];
    let state = caller.data_mut();
    for byte in &mut bytes {
        state.random_state ^= state.random_state << 13;
        state.random_state ^= state.random_state >> 7;
        state.random_state ^= state.random_state << 17;
        *byte = state.random_state as u8;
    }
    write(&mut caller, buf, &bytes)?;
    Ok(ERRNO_SUCCESS)
}

/// `clock_time_get`: every clock reads the host's (test-controlled) time.
fn clock_time_get(
    mut caller: Caller<'_, HostState>,
    _clock: i32,
    _precision: i64,
    time: i32,
) -> Result<i32, Error> {
    let now = caller.data().shared().now_ns;
    write_u64(&mut caller, time, now)?;
    Ok(ERRNO_SUCCESS)
}

fn clock_res_get(mut caller: Caller<'_, HostState>, _clock: i32, res: i32) -> Result<i32, Error> {
    write_u64(&mut caller, res, 1)?;
    Ok(ERRNO_SUCCESS)
}

/// `proc_exit`: ends the call as a trap carrying the exit code.
fn proc_exit(_caller: Caller<'_, HostState>, code: i32) -> Result<(), Error> {
    Err(Error::i32_exit(code))
}

pub(super) fn define(linker: &mut Linker<HostState>) -> Result<(), Error> {
    linker.func_wrap(MODULE, "fd_write", fd_write)?;
    linker.func_wrap(MODULE, "environ_sizes_get", sizes_get)?;
    linker.func_wrap(MODULE, "args_sizes_get", sizes_get)?;
    linker.func_wrap(MODULE, "environ_get", list_get)?;
    linker.func_wrap(MODULE, "args_get", list_get)?;
    linker.func_wrap(MODULE, "random_get", random_get)?;
    linker.func_wrap(MODULE, "clock_time_get", clock_time_get)?;
    linker.func_wrap(MODULE, "clock_res_get", clock_res_get)?;
    linker.func_wrap(MODULE, "proc_exit", proc_exit)?;
    linker.func_wrap(MODULE, "sched_yield", |_: Caller<'_, HostState>| -> i32 {
        ERRNO_SUCCESS
    })?;
    // No files: std asks about preopened directories and descriptors at most.
    linker.func_wrap(
        MODULE,
        "fd_prestat_get",
        |_: Caller<'_, HostState>, _: i32, _: i32| -> i32 { ERRNO_BADF },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_fdstat_get",
        |_: Caller<'_, HostState>, _: i32, _: i32| -> i32 { ERRNO_BADF },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_close",
        |_: Caller<'_, HostState>, _: i32| -> i32 { ERRNO_BADF },
    )?;
    linker.func_wrap(
        MODULE,
        "poll_oneoff",
        |_: Caller<'_, HostState>, _: i32, _: i32, _: i32, _: i32| -> i32 { ERRNO_NOSYS },
    )?;
    Ok(())
}
