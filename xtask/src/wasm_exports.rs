//! Keeps only the proxy-wasm callbacks the filter implements among
//! `ratelimit.wasm`'s exports.
//!
//! Envoy enters the VM for every callback a module exports, and skips one it
//! does not export, taking its default (continue; "done"). The proxy-wasm Rust
//! SDK exports all of them (request and response bodies and trailers, the
//! access-log `proxy_on_log`, `proxy_on_done`, the network-filter and gRPC
//! callbacks), so each request entered the VM for several callbacks that only
//! ran the SDK's defaults. Removing those exports before `wasm-opt` (which then
//! drops the code only they reached) saves those VM entries on every request.
//!
//! [`KEPT_CALLBACKS`] must name every callback `filter/src/glue/` overrides:
//! one missing here would silently never run. A callback the SDK does not
//! export is left alone; exports other than `proxy_on_*` (memory, the ABI
//! version marker, `_initialize`, `proxy_on_memory_allocate`) are kept.

/// The callbacks the filter implements (see `filter/src/glue/`), and those the
/// SDK needs to keep its contexts (`proxy_on_context_create`, `proxy_on_delete`).
pub const KEPT_CALLBACKS: [&str; 10] = [
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_queue_ready",
    "proxy_on_tick",
    "proxy_on_request_headers",
    "proxy_on_response_headers",
    "proxy_on_http_call_response",
    "proxy_on_delete",
];

/// The callbacks of the bench's `noop.wasm` (`filter/examples/noop.rs`): the SDK's context
/// bookkeeping and the request-headers callback every filter that decides on requests needs.
pub const NOOP_CALLBACKS: [&str; 4] = [
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_delete",
];

/// The callbacks of the bench's `floor.wasm` (`filter/examples/floor.rs`): the no-op's, and the
/// response-headers callback that adds the `RateLimit` headers.
pub const FLOOR_CALLBACKS: [&str; 5] = [
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_response_headers",
    "proxy_on_delete",
];

const MAGIC: &[u8; 8] = b"\0asm\x01\0\0\0";
const EXPORT_SECTION: u8 = 7;

/// Rewrites `module`'s export section without the `proxy_on_*` callbacks that
/// are not in `kept`. Returns the new module and the names removed.
pub fn keep_callbacks(module: &[u8], kept: &[&str]) -> Result<(Vec<u8>, Vec<String>), String> {
    if module.get(..8) != Some(MAGIC.as_slice()) {
        return Err("not a WebAssembly 1.0 module".to_owned());
    }
    let mut out = MAGIC.to_vec();
    let mut removed = Vec::new();
    let mut at = 8;
    while at < module.len() {
        let id = module[at];
        let (size, body_at) = read_u32(module, at + 1)?;
        let end = body_at
            .checked_add(size as usize)
            .filter(|&end| end <= module.len())
            .ok_or("a section runs past the end of the module")?;
        let body = &module[body_at..end];
        let body = if id == EXPORT_SECTION {
            filter_exports(body, kept, &mut removed)?
        } else {
            body.to_vec()
        };
        out.push(id);
        write_u32(
            &mut out,
            u32::try_from(body.len()).map_err(|e| e.to_string())?,
        );
        out.extend_from_slice(&body);
        at = end;
    }
    Ok((out, removed))
}

/// The export section's body without the callbacks to remove.
fn filter_exports(
    body: &[u8],
    kept: &[&str],
    removed: &mut Vec<String>,
) -> Result<Vec<u8>, String> {
    let (count, mut at) = read_u32(body, 0)?;
    let mut entries = Vec::new();
    let mut left = 0u32;
    for _ in 0..count {
        let start = at;
        let (len, name_at) = read_u32(body, at)?;
        let name_end = name_at + len as usize;
        let name = body
            .get(name_at..name_end)
            .and_then(|n| std::str::from_utf8(n).ok())
            .ok_or("an export name is cut short or not UTF-8")?;
        // The kind (one byte), then the index.
        let (_, next) = read_u32(body, name_end + 1)?;
        if name.starts_with("proxy_on_") && !kept.contains(&name) {
            removed.push(name.to_owned());
        } else {
            entries.extend_from_slice(&body[start..next]);
            left += 1;
        }
        at = next;
    }
    let mut out = Vec::new();
    write_u32(&mut out, left);
    out.extend_from_slice(&entries);
    Ok(out)
}

/// An unsigned LEB128 `u32` at `at`; returns it and the offset after it.
fn read_u32(bytes: &[u8], mut at: usize) -> Result<(u32, usize), String> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(at).ok_or("a number runs past the end")?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value)
                .map(|v| (v, at))
                .map_err(|_| "a number over u32".to_owned());
        }
    }
    Err("a number longer than 5 bytes".to_owned())
}

fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with a memory export and three function exports, each a
    /// function of type `() -> ()`: `proxy_on_log`, `proxy_on_delete`, `_initialize`.
    fn module() -> Vec<u8> {
        let mut m = MAGIC.to_vec();
        // Type section: one type, () -> ().
        m.extend([1, 4, 1, 0x60, 0, 0]);
        // Function section: three functions of type 0.
        m.extend([3, 4, 3, 0, 0, 0]);
        // Memory section: one memory, min 1 page.
        m.extend([5, 3, 1, 0, 1]);
        let mut exports = vec![4];
        for (name, kind, index) in [
            ("memory", 2u8, 0u8),
            ("proxy_on_log", 0, 0),
            ("proxy_on_delete", 0, 1),
            ("_initialize", 0, 2),
        ] {
            exports.push(name.len() as u8);
            exports.extend(name.as_bytes());
            exports.extend([kind, index]);
        }
        m.push(EXPORT_SECTION);
        write_u32(&mut m, exports.len() as u32);
        m.extend(exports);
        // Code section: three empty bodies (no locals, `end`).
        m.extend([10, 10, 3, 2, 0, 0x0b, 2, 0, 0x0b, 2, 0, 0x0b]);
        m
    }

    fn export_names(module: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut at = 8;
        while at < module.len() {
            let (size, body) = read_u32(module, at + 1).unwrap();
            if module[at] == EXPORT_SECTION {
                let (count, mut i) = read_u32(module, body).unwrap();
                for _ in 0..count {
                    let (len, name) = read_u32(module, i).unwrap();
                    names.push(
                        String::from_utf8(module[name..name + len as usize].to_vec()).unwrap(),
                    );
                    i = read_u32(module, name + len as usize + 1).unwrap().1;
                }
            }
            at = body + size as usize;
        }
        names
    }

    #[test]
    fn only_the_callbacks_not_kept_are_removed() {
        let (out, removed) = keep_callbacks(&module(), &["proxy_on_delete"]).unwrap();
        assert_eq!(removed, vec!["proxy_on_log"]);
        assert_eq!(
            export_names(&out),
            vec!["memory", "proxy_on_delete", "_initialize"]
        );
        // Every other section is as it was.
        assert_eq!(out.len(), module().len() - 1 - "proxy_on_log".len() - 2);
    }

    #[test]
    fn keeping_everything_changes_nothing() {
        let (out, removed) =
            keep_callbacks(&module(), &["proxy_on_log", "proxy_on_delete"]).unwrap();
        assert!(removed.is_empty());
        assert_eq!(out, module());
    }

    #[test]
    fn numbers_round_trip_and_bad_input_is_refused() {
        for n in [0, 1, 127, 128, 300, 16_384, u32::MAX] {
            let mut buf = Vec::new();
            write_u32(&mut buf, n);
            assert_eq!(read_u32(&buf, 0).unwrap(), (n, buf.len()));
        }
        assert!(keep_callbacks(b"not wasm", &[]).is_err());
        let mut cut = module();
        cut.truncate(cut.len() - 3);
        assert!(keep_callbacks(&cut, &[]).is_err());
    }
}
