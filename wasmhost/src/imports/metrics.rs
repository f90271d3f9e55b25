//! Metric host calls. Metrics are process-wide: same-named metrics of every
//! VM add up, as in Envoy's `/stats`.

use wasmi::{Caller, Error, Linker};

use super::status;
use crate::abi::{MetricType, Status};
use crate::guest::{read_text, write_u32, write_u64};
use crate::state::HostState;

const ENV: &str = "env";

fn proxy_define_metric(
    mut caller: Caller<'_, HostState>,
    kind: i32,
    name_ptr: i32,
    name_len: i32,
    id_out: i32,
) -> Result<i32, Error> {
    let Some(kind) = MetricType::from_raw(kind) else {
        return status(Err(Status::BadArgument));
    };
    let name = read_text(&caller, name_ptr, name_len)?;
    let id = caller.data().shared().define_metric(kind, &name);
    write_u32(&mut caller, id_out, id)?;
    status(Ok(()))
}

/// `proxy_increment_metric`: counters only go up (Envoy: `BadArgument`).
fn proxy_increment_metric(
    caller: Caller<'_, HostState>,
    id: i32,
    offset: i64,
) -> Result<i32, Error> {
    let mut shared = caller.data().shared();
    let result = shared
        .metric_mut(id as u32)
        .and_then(|metric| match metric.kind {
            MetricType::Counter if offset < 0 => Err(Status::BadArgument),
            MetricType::Counter | MetricType::Gauge => {
                metric.value = metric.value.saturating_add(offset);
                Ok(())
            }
            MetricType::Histogram => Err(Status::BadArgument),
        });
    status(result)
}

fn proxy_record_metric(caller: Caller<'_, HostState>, id: i32, value: i64) -> Result<i32, Error> {
    let mut shared = caller.data().shared();
    let value = value as u64;
    let result = shared
        .metric_mut(id as u32)
        .map(|metric| match metric.kind {
            MetricType::Counter | MetricType::Gauge => {
                metric.value = i64::try_from(value).unwrap_or(i64::MAX);
            }
            MetricType::Histogram => metric.samples.push(value),
        });
    status(result)
}

fn proxy_get_metric(mut caller: Caller<'_, HostState>, id: i32, out: i32) -> Result<i32, Error> {
    let value = caller
        .data()
        .shared()
        .metric_mut(id as u32)
        .and_then(|metric| match metric.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(metric.value as u64),
        });
    match value {
        Ok(value) => {
            write_u64(&mut caller, out, value)?;
            status(Ok(()))
        }
        Err(e) => status(Err(e)),
    }
}

pub(super) fn define(linker: &mut Linker<HostState>) -> Result<(), Error> {
    linker.func_wrap(ENV, "proxy_define_metric", proxy_define_metric)?;
    linker.func_wrap(ENV, "proxy_increment_metric", proxy_increment_metric)?;
    linker.func_wrap(ENV, "proxy_record_metric", proxy_record_metric)?;
    linker.func_wrap(ENV, "proxy_get_metric", proxy_get_metric)?;
    Ok(())
}
