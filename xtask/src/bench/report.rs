//! The benchmark's results: medians over rounds, ratios to the baseline, and
//! their Markdown rendering (the JSON one is in `json.rs`).

use std::fmt::Write as _;

use super::cpu::Shares;
use super::open_loop::OpenLoopResult;
use super::scenarios::Scenario;
use super::wrk::WrkResult;

/// One round of one Envoy scenario.
#[derive(Debug, Clone)]
pub struct EnvoyRound {
    pub wrk: WrkResult,
    pub open: OpenLoopResult,
    /// The scenario's Envoy's CPU time over the closed-loop run ÷ its
    /// requests, in microseconds (0 when it could not be read).
    pub cpu_us_per_request: f64,
    /// Callouts the scenario's Envoy made over the closed-loop run.
    pub callouts: u64,
}

/// One round of limitd alone against Redis alone.
#[derive(Debug, Clone)]
pub struct LimitdRound {
    pub limitd: WrkResult,
    pub redis_rps: f64,
}

/// One round of limitd on a Redis Cluster (see `cluster.rs`).
#[derive(Debug, Clone)]
pub struct ClusterRound {
    /// limitd, the keys spread evenly over the cluster's masters.
    pub spread: WrkResult,
    /// limitd, as many keys, all on one master.
    pub one_master: WrkResult,
    /// `redis-benchmark --cluster`: EVALSHA of the same script over every master.
    pub redis_rps: f64,
    /// The machine's CPU over the round.
    pub cpu: Shares,
}

/// The medians of limitd on a Redis Cluster and their ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterSummary {
    pub spread: f64,
    pub one_master: f64,
    pub redis: f64,
    /// `spread` ÷ `redis`: limitd against raw EVALSHA on the same cluster.
    pub ratio: f64,
    /// `spread` ÷ `one_master`: what spreading the keys over the masters gave.
    pub spread_vs_one_master: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Results {
    pub date: String,
    pub machine: String,
    pub settings: String,
    pub seconds: f64,
    pub scenarios: Vec<(Scenario, Vec<EnvoyRound>)>,
    pub limitd: Vec<LimitdRound>,
    /// Empty unless `limitd_cluster` was measured.
    pub cluster: Vec<ClusterRound>,
    pub wasm_bytes: u64,
    /// Peak RSS (VmHWM) of limitd-1 and limitd-2, in KiB.
    pub limitd_hwm_kib: Vec<u64>,
    /// (when, 1/5/15-minute load averages).
    pub load: Vec<(String, String)>,
    /// Per round: the machine's CPU used by the benchmark, by others, stolen.
    pub cpu: Vec<Shares>,
    /// Filter and Envoy counters read at the end, as (name, value).
    pub counters: Vec<(String, u64)>,
    pub warnings: Vec<String>,
}

/// The medians of one scenario and their ratios to the baseline's.
#[derive(Debug, Clone)]
pub struct Summary {
    pub id: &'static str,
    pub what: &'static str,
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rps_ratio: f64,
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    /// Envoy's CPU time per request (closed loop), in microseconds.
    pub cpu_us: f64,
    pub cpu_ratio: f64,
    pub added_cpu_us: f64,
    /// Answers that were not the expected status, or failed, over all rounds.
    pub unexpected: u64,
    /// Callouts ÷ requests over the closed-loop runs of every round.
    pub callouts_per_request: f64,
}

pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn ratio(value: f64, base: f64) -> f64 {
    if base > 0.0 {
        value / base
    } else {
        0.0
    }
}

impl Results {
    /// Medians and ratios per Envoy scenario; the first is the baseline.
    pub fn summaries(&self) -> Vec<Summary> {
        let mut summaries: Vec<Summary> = self
            .scenarios
            .iter()
            .map(|(scenario, rounds)| {
                let rps: Vec<f64> = rounds.iter().map(|r| r.wrk.requests_per_sec).collect();
                let unexpected = rounds
                    .iter()
                    .map(|r| {
                        let wrong = if scenario.mixed {
                            0
                        } else if scenario.status < 300 {
                            r.wrk.non_2xx
                        } else {
                            r.wrk.requests - r.wrk.non_2xx.min(r.wrk.requests)
                        };
                        wrong + r.wrk.socket_errors + r.open.errors
                    })
                    .sum();
                Summary {
                    id: scenario.id,
                    what: scenario.what,
                    rps: median(rps.iter().copied()),
                    rps_min: rps.iter().copied().fold(f64::INFINITY, f64::min),
                    rps_max: rps.iter().copied().fold(0.0, f64::max),
                    p50_ms: median(rounds.iter().map(|r| r.open.p50_ms)),
                    p99_ms: median(rounds.iter().map(|r| r.open.p99_ms)),
                    cpu_us: median(rounds.iter().map(|r| r.cpu_us_per_request)),
                    unexpected,
                    callouts_per_request: ratio(
                        rounds.iter().map(|r| r.callouts as f64).sum(),
                        rounds.iter().map(|r| r.wrk.requests as f64).sum(),
                    ),
                    // Set below, against the baseline.
                    rps_ratio: 0.0,
                    p50_ratio: 0.0,
                    p99_ratio: 0.0,
                    added_p50_ms: 0.0,
                    added_p99_ms: 0.0,
                    cpu_ratio: 0.0,
                    added_cpu_us: 0.0,
                }
            })
            .collect();
        let Some(base) = summaries.first().cloned() else {
            return summaries;
        };
        for s in &mut summaries {
            s.rps_ratio = ratio(s.rps, base.rps);
            s.p50_ratio = ratio(s.p50_ms, base.p50_ms);
            s.p99_ratio = ratio(s.p99_ms, base.p99_ms);
            s.added_p50_ms = s.p50_ms - base.p50_ms;
            s.added_p99_ms = s.p99_ms - base.p99_ms;
            s.cpu_ratio = ratio(s.cpu_us, base.cpu_us);
            s.added_cpu_us = s.cpu_us - base.cpu_us;
        }
        summaries
    }

    /// (limitd checks/s, Redis EVALSHA/s, ratio), medians over rounds.
    pub fn limitd_summary(&self) -> (f64, f64, f64) {
        let limitd = median(self.limitd.iter().map(|r| r.limitd.requests_per_sec));
        let redis = median(self.limitd.iter().map(|r| r.redis_rps));
        (limitd, redis, ratio(limitd, redis))
    }

    /// Medians over the rounds of limitd on a Redis Cluster.
    pub fn cluster_summary(&self) -> ClusterSummary {
        let spread = median(self.cluster.iter().map(|r| r.spread.requests_per_sec));
        let one_master = median(self.cluster.iter().map(|r| r.one_master.requests_per_sec));
        let redis = median(self.cluster.iter().map(|r| r.redis_rps));
        ClusterSummary {
            spread,
            one_master,
            redis,
            ratio: ratio(spread, redis),
            spread_vs_one_master: ratio(spread, one_master),
        }
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "`cargo xtask bench`, {} on {}; {}.\n",
            self.date, self.machine, self.settings
        );
        md.push_str(
            "| scenario | req/s (closed loop) | ÷ baseline | callouts ÷ requests | Envoy CPU µs/req | added µs | p50 ms (open loop) | ÷ baseline | p99 ms (open loop) | ÷ baseline | added p50 / p99 ms |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for s in self.summaries() {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.2} | {:.3} | {:.1} | {:+.1} | {:.3} | {:.2} | {:.3} | {:.2} | {:+.3} / {:+.3} |",
                s.id,
                s.rps,
                s.rps_ratio,
                s.callouts_per_request,
                s.cpu_us,
                s.added_cpu_us,
                s.p50_ms,
                s.p50_ratio,
                s.p99_ms,
                s.p99_ratio,
                s.added_p50_ms,
                s.added_p99_ms
            );
        }
        let (limitd, redis, r) = self.limitd_summary();
        if self.limitd.is_empty() {
            md.push('\n');
        } else {
            let _ = writeln!(
                md,
                "\n| limitd alone | checks/s | Redis EVALSHA of the same script, /s | ÷ |\n\
             | --- | ---: | ---: | ---: |\n\
             | one limitd, one hit per check | {limitd:.0} | {redis:.0} | {r:.2} |\n"
            );
        }
        if !self.cluster.is_empty() {
            let c = self.cluster_summary();
            let errors: u64 = self
                .cluster
                .iter()
                .map(|r| {
                    r.spread.non_2xx
                        + r.spread.socket_errors
                        + r.one_master.non_2xx
                        + r.one_master.socket_errors
                })
                .sum();
            let _ = writeln!(
                md,
                "| limitd on a Redis Cluster (3 masters + 3 replicas), one limitd, one hit per check | checks/s | ÷ raw EVALSHA | ÷ keys on one master |\n\
                 | --- | ---: | ---: | ---: |\n\
                 | keys spread over the 3 masters | {:.0} | {:.2} | {:.2} |\n\
                 | keys all on one master | {:.0} | {:.2} | 1.00 |\n\
                 | `redis-benchmark --cluster` EVALSHA of the same script, over the 3 masters | {:.0} | 1.00 | |\n",
                c.spread,
                c.ratio,
                c.spread_vs_one_master,
                c.one_master,
                ratio(c.one_master, c.redis),
                c.redis,
            );
            if errors > 0 {
                let _ = writeln!(
                    md,
                    "- limitd on a Redis Cluster: {errors} answers not 2xx or failed\n"
                );
            }
        }
        let _ = writeln!(
            md,
            "- `ratelimit.wasm`: {} bytes ({:.0} KiB)\n- limitd peak RSS (VmHWM): {}\n- load average (1/5/15 min): {}",
            self.wasm_bytes,
            self.wasm_bytes as f64 / 1024.0,
            self.limitd_hwm_kib
                .iter()
                .enumerate()
                .map(|(i, k)| format!("limitd-{} {:.1} MiB", i + 1, *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", "),
            self.load
                .iter()
                .map(|(when, load)| format!("{when} {load}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        cpu_line(&mut md, "per round", &self.cpu);
        if !self.cluster.is_empty() {
            let cpu: Vec<Shares> = self.cluster.iter().map(|r| r.cpu).collect();
            cpu_line(&mut md, "per cluster round", &cpu);
        }
        md.push_str("- req/s spread over rounds (min–max):");
        for s in self.summaries() {
            let _ = write!(md, " {} {:.0}–{:.0};", s.id, s.rps_min, s.rps_max);
        }
        md.push('\n');
        let unexpected: Vec<String> = self
            .summaries()
            .iter()
            .filter(|s| s.unexpected > 0)
            .map(|s| format!("{} {}", s.id, s.unexpected))
            .collect();
        if !unexpected.is_empty() {
            let _ = writeln!(
                md,
                "- unexpected answers or errors: {}",
                unexpected.join(", ")
            );
        }
        for w in &self.warnings {
            let _ = writeln!(md, "- **warning**: {w}");
        }
        md
    }
}

/// The list item of the machine's CPU shares in each round of `rounds`.
fn cpu_line(md: &mut String, rounds: &str, shares: &[Shares]) {
    let _ = write!(
        md,
        "- CPU of the machine {rounds}, the benchmark / other processes / steal:"
    );
    for (i, c) in shares.iter().enumerate() {
        let _ = write!(
            md,
            " {} {:.0}% / {:.0}% / {:.0}%;",
            i + 1,
            c.ours * 100.0,
            c.others * 100.0,
            c.steal * 100.0
        );
    }
    md.push('\n');
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::scenarios::SCENARIOS;
    use super::*;

    fn wrk(rps: f64) -> WrkResult {
        WrkResult {
            requests_per_sec: rps,
            requests: 1000,
            non_2xx: 0,
            socket_errors: 0,
            p50_ms: 0.123_456,
            p99_ms: 1.5,
        }
    }

    /// Results of every kind, for the tests of the report and of `results.json`.
    pub fn results() -> Results {
        let round = |rps| EnvoyRound {
            wrk: wrk(rps),
            open: OpenLoopResult {
                ok: 500,
                errors: 1,
                p50_ms: 0.2,
                p99_ms: 2.0,
                max_ms: 9.0,
            },
            cpu_us_per_request: 12.345_678,
            callouts: 10,
        };
        Results {
            date: "2026-01-02".into(),
            machine: "a \"quoted\" machine\n".into(),
            settings: "1 round".into(),
            seconds: 61.26,
            scenarios: vec![
                (SCENARIOS[0], vec![round(1000.0)]),
                (SCENARIOS[1], vec![round(800.0), round(900.0)]),
            ],
            limitd: vec![LimitdRound {
                limitd: wrk(5000.0),
                redis_rps: 20000.0,
            }],
            cluster: vec![ClusterRound {
                spread: wrk(6000.0),
                one_master: wrk(5000.0),
                redis_rps: 30000.0,
                cpu: Shares {
                    ours: 0.9,
                    others: 0.01,
                    steal: 0.0,
                },
            }],
            wasm_bytes: 123_456,
            limitd_hwm_kib: vec![10_240, 11_264],
            load: vec![("start".into(), "0.5 0.4 0.3".into())],
            cpu: vec![Shares {
                ours: 0.5,
                others: 0.25,
                steal: 0.0,
            }],
            counters: vec![("zeta".into(), 2), ("alpha".into(), 1)],
            warnings: vec!["one".into()],
        }
    }

    #[test]
    fn the_cluster_section_is_reported_only_when_measured() {
        let mut results = results();
        let md = results.to_markdown();
        assert!(
            md.contains("| keys spread over the 3 masters | 6000 | 0.20 | 1.20 |"),
            "{md}"
        );
        assert!(
            md.contains("| keys all on one master | 5000 | 0.17 | 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("EVALSHA of the same script, over the 3 masters | 30000 |"),
            "{md}"
        );
        assert!(md.contains("- CPU of the machine per cluster round, the benchmark / other processes / steal: 1 90% / 1% / 0%;"), "{md}");
        results.cluster.clear();
        let md = results.to_markdown();
        assert!(!md.contains("Redis Cluster"), "{md}");
        assert!(!md.contains("cluster round"), "{md}");
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median([]), 0.0);
    }
}
