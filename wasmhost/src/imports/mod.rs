//! The imports a proxy-wasm module needs, defined on one [`Linker`]: the
//! `env.proxy_*` host functions of ABI 0.2.1 and a minimal WASI.
//!
//! The SDK imports every host function whether the filter uses it or not, so
//! all are defined. Any import this host does not know (a newer ABI, more of
//! WASI) is still linked, to a stub that traps naming it when called: a module
//! loads, and fails clearly only if it really uses the missing function.

mod basics;
mod headers;
mod metrics;
mod queues;
mod stream;
mod wasi;

use wasmi::{Engine, Error, ExternType, Linker, Module};

use crate::abi::Status;
use crate::state::HostState;

/// The guest's view of a host call's result.
pub(crate) fn status(result: Result<(), Status>) -> Result<i32, Error> {
    Ok(match result {
        Ok(()) => Status::Ok.code(),
        Err(status) => status.code(),
    })
}

/// A linker with every import of `module` defined.
pub(crate) fn linker(engine: &Engine, module: &Module) -> Result<Linker<HostState>, Error> {
    let mut linker = Linker::new(engine);
    wasi::define(&mut linker)?;
    basics::define(&mut linker)?;
    headers::define(&mut linker)?;
    stream::define(&mut linker)?;
    queues::define(&mut linker)?;
    metrics::define(&mut linker)?;
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let name = format!("{}.{}", import.module(), import.name());
        // Fails only for names already defined above, which is what we want.
        let _ = linker.func_new(
            import.module(),
            import.name(),
            ty.clone(),
            move |_caller, _params, _results| {
                Err(Error::new(format!(
                    "wasmhost: the module called {name}, which this test host does not implement"
                )))
            },
        );
    }
    Ok(linker)
}
