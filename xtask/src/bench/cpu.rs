//! Who used the CPU during a measurement: the machine as a whole
//! (`/proc/stat`) against the benchmark's own processes (the stack's
//! processes, this process and its reaped children: wrk, redis-benchmark).
//! The difference is other work on a shared machine, which makes a run's
//! figures suspect; `steal` is time the hypervisor gave to other guests.
//!
//! And what one process used ([`process_cpu_us`]): the Envoy of a scenario
//! over its measurement, which divided by its requests is the CPU each
//! request cost it.

/// Cumulative CPU times in clock ticks (`USER_HZ`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Busy time of the whole machine, steal excluded.
    machine_busy: u64,
    /// Everything, idle and steal included.
    machine_total: u64,
    steal: u64,
    ours: u64,
}

/// Shares of the machine's CPU time between two snapshots (0.0–1.0).
#[derive(Debug, Clone, Copy, Default)]
pub struct Shares {
    pub ours: f64,
    pub others: f64,
    pub steal: f64,
}

/// Takes a snapshot; `pids` are the benchmark's live processes.
pub fn snapshot(pids: &[u32]) -> Snapshot {
    let (machine_busy, machine_total, steal) = machine().unwrap_or_default();
    let own = process_times("self", true).unwrap_or(0);
    let stack: u64 = pids
        .iter()
        .filter_map(|pid| process_times(&pid.to_string(), false))
        .sum();
    Snapshot {
        machine_busy,
        machine_total,
        steal,
        ours: own + stack,
    }
}

impl Snapshot {
    /// The shares used from `self` to `later`.
    pub fn shares_until(&self, later: &Snapshot) -> Shares {
        let total = later
            .machine_total
            .saturating_sub(self.machine_total)
            .max(1) as f64;
        let busy = later.machine_busy.saturating_sub(self.machine_busy);
        let ours = later.ours.saturating_sub(self.ours);
        Shares {
            ours: ours as f64 / total,
            others: busy.saturating_sub(ours) as f64 / total,
            steal: later.steal.saturating_sub(self.steal) as f64 / total,
        }
    }
}

/// `/proc/stat`'s first line: (busy without steal, total, steal).
fn machine() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let values: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let field = |i: usize| values.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    let total = busy + field(3) + field(4) + field(7);
    Some((busy, total, field(7)))
}

/// `USER_HZ`: the unit of `/proc/<pid>/stat`'s times, 100 on every Linux
/// architecture Envoy runs on (the kernel's internal `HZ` is not exposed there).
const TICKS_PER_SECOND: f64 = 100.0;

/// The CPU time a process has used so far, all its threads together, in
/// microseconds. From `/proc/<pid>/task/*/schedstat` (nanoseconds on a CPU),
/// which is precise enough for a few seconds of measurement; where the kernel
/// keeps no schedstat, from `/proc/<pid>/stat` (10 ms ticks). Threads that
/// ended are not counted by the first: it suits long-lived threads like
/// Envoy's, not a process that spawns threads per task.
pub fn process_cpu_us(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns: u64 = 0;
    for task in tasks.flatten() {
        let Some(on_cpu) = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        else {
            let ticks = process_times(&pid.to_string(), false)?;
            return Some(ticks as f64 * 1e6 / TICKS_PER_SECOND);
        };
        ns += on_cpu;
    }
    Some(ns as f64 / 1e3)
}

/// utime + stime of `/proc/<pid>/stat`, plus its reaped children's with `children`.
fn process_times(pid: &str, children: bool) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "pid (comm) ": state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let fields: Vec<u64> = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let field = |n: usize| fields.get(n - 4).copied().unwrap_or(0);
    let own = field(14) + field(15);
    Some(if children {
        own + field(16) + field(17)
    } else {
        own
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_times_and_the_machine_is_counted() {
        let (busy, total, _) = machine().unwrap();
        assert!(total >= busy && busy > 0);
        assert!(process_times("self", true).is_some());
        let a = snapshot(&[]);
        let shares = a.shares_until(&snapshot(&[]));
        assert!(shares.ours >= 0.0 && shares.others >= 0.0);
    }

    #[test]
    fn a_process_cpu_time_grows_with_work() {
        // Work until the process's CPU time shows 10 ms more: how much wall time that takes
        // depends on what else the machine runs, so only a generous bound is set on it.
        let pid = std::process::id();
        let before = process_cpu_us(pid).unwrap();
        let mut x: u64 = 1;
        let start = std::time::Instant::now();
        let mut after = before;
        while after - before < 10_000.0 && start.elapsed() < std::time::Duration::from_secs(30) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            after = process_cpu_us(pid).unwrap();
        }
        assert!(after - before >= 10_000.0, "{before} → {after}");
    }
}
