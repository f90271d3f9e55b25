//! `results.json`: the benchmark's results as serde types, one struct per JSON object, so the
//! file's shape is written down in one place.
//!
//! Numbers are rounded as the report prints them (1 decimal for rates, 4 for latencies and
//! ratios), which keeps the file readable and its diffs small.

use serde::{Serialize, Serializer};

use super::cpu::Shares;
use super::report::Results;

#[derive(Serialize)]
struct ResultsJson<'a> {
    date: &'a str,
    machine: &'a str,
    settings: &'a str,
    duration_s: f64,
    scenarios: Vec<ScenarioJson<'a>>,
    limitd_alone: LimitdAloneJson,
    limitd_cluster: LimitdClusterJson,
    wasm_bytes: u64,
    limitd_peak_rss_kib: &'a [u64],
    load: Vec<LoadJson<'a>>,
    cpu_per_round: Vec<CpuJson>,
    /// An object whose keys keep the order the counters were read in.
    #[serde(serialize_with = "in_order")]
    counters: &'a [(String, u64)],
    warnings: &'a [String],
}

/// One Envoy scenario: its medians, their ratios to the baseline, and every round.
#[derive(Serialize)]
struct ScenarioJson<'a> {
    id: &'a str,
    what: &'a str,
    rps: f64,
    rps_ratio: f64,
    p50_ms: f64,
    p50_ratio: f64,
    p99_ms: f64,
    p99_ratio: f64,
    added_p50_ms: f64,
    added_p99_ms: f64,
    envoy_cpu_us_per_request: f64,
    envoy_cpu_ratio: f64,
    callouts_per_request: f64,
    unexpected: u64,
    rounds: Vec<EnvoyRoundJson>,
}

#[derive(Serialize)]
struct EnvoyRoundJson {
    rps: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
    closed_p50_ms: f64,
    closed_p99_ms: f64,
    open_ok: u64,
    open_errors: u64,
    open_p50_ms: f64,
    open_p99_ms: f64,
    open_max_ms: f64,
    envoy_cpu_us_per_request: f64,
}

#[derive(Serialize)]
struct LimitdAloneJson {
    limitd_rps: f64,
    redis_evalsha_rps: f64,
    ratio: f64,
    rounds: Vec<LimitdRoundJson>,
}

#[derive(Serialize)]
struct LimitdRoundJson {
    limitd_rps: f64,
    limitd_non_2xx: u64,
    limitd_socket_errors: u64,
    redis_rps: f64,
}

/// limitd on a Redis Cluster (all zero, no rounds, unless `limitd_cluster` was measured).
#[derive(Serialize)]
struct LimitdClusterJson {
    /// Keys spread evenly over the masters.
    limitd_spread_rps: f64,
    /// As many keys, all on one master.
    limitd_one_master_rps: f64,
    /// `redis-benchmark --cluster`: EVALSHA of the same script over every master.
    redis_evalsha_rps: f64,
    /// `limitd_spread_rps` ÷ `redis_evalsha_rps`.
    ratio: f64,
    /// `limitd_spread_rps` ÷ `limitd_one_master_rps`.
    spread_vs_one_master: f64,
    rounds: Vec<LimitdClusterRoundJson>,
}

#[derive(Serialize)]
struct LimitdClusterRoundJson {
    limitd_spread_rps: f64,
    limitd_one_master_rps: f64,
    /// Answers not 2xx, and socket errors, over both limitd runs.
    limitd_errors: u64,
    redis_rps: f64,
    cpu: CpuJson,
}

#[derive(Serialize)]
struct LoadJson<'a> {
    when: &'a str,
    loadavg: &'a str,
}

#[derive(Serialize)]
struct CpuJson {
    ours: f64,
    others: f64,
    steal: f64,
}

impl From<&Shares> for CpuJson {
    fn from(c: &Shares) -> Self {
        CpuJson {
            ours: round(c.ours, 3),
            others: round(c.others, 3),
            steal: round(c.steal, 3),
        }
    }
}

/// `value` rounded to `digits` decimals.
fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn in_order<S: Serializer>(pairs: &&[(String, u64)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(name, value)| (name, value)))
}

impl Results {
    /// The results as pretty-printed JSON, with a final newline.
    pub fn to_json(&self) -> String {
        let scenarios = self
            .summaries()
            .iter()
            .zip(&self.scenarios)
            .map(|(s, (_, rounds))| ScenarioJson {
                id: s.id,
                what: s.what,
                rps: round(s.rps, 1),
                rps_ratio: round(s.rps_ratio, 4),
                p50_ms: round(s.p50_ms, 4),
                p50_ratio: round(s.p50_ratio, 4),
                p99_ms: round(s.p99_ms, 4),
                p99_ratio: round(s.p99_ratio, 4),
                added_p50_ms: round(s.added_p50_ms, 4),
                added_p99_ms: round(s.added_p99_ms, 4),
                envoy_cpu_us_per_request: round(s.cpu_us, 2),
                envoy_cpu_ratio: round(s.cpu_ratio, 4),
                callouts_per_request: round(s.callouts_per_request, 4),
                unexpected: s.unexpected,
                rounds: rounds
                    .iter()
                    .map(|r| EnvoyRoundJson {
                        rps: round(r.wrk.requests_per_sec, 1),
                        requests: r.wrk.requests,
                        non_2xx: r.wrk.non_2xx,
                        socket_errors: r.wrk.socket_errors,
                        closed_p50_ms: round(r.wrk.p50_ms, 4),
                        closed_p99_ms: round(r.wrk.p99_ms, 4),
                        open_ok: r.open.ok,
                        open_errors: r.open.errors,
                        open_p50_ms: round(r.open.p50_ms, 4),
                        open_p99_ms: round(r.open.p99_ms, 4),
                        open_max_ms: round(r.open.max_ms, 4),
                        envoy_cpu_us_per_request: round(r.cpu_us_per_request, 2),
                    })
                    .collect(),
            })
            .collect();
        let (limitd, redis, ratio) = self.limitd_summary();
        let json = ResultsJson {
            date: &self.date,
            machine: &self.machine,
            settings: &self.settings,
            duration_s: round(self.seconds, 1),
            scenarios,
            limitd_alone: LimitdAloneJson {
                limitd_rps: round(limitd, 1),
                redis_evalsha_rps: round(redis, 1),
                ratio: round(ratio, 4),
                rounds: self
                    .limitd
                    .iter()
                    .map(|r| LimitdRoundJson {
                        limitd_rps: round(r.limitd.requests_per_sec, 1),
                        limitd_non_2xx: r.limitd.non_2xx,
                        limitd_socket_errors: r.limitd.socket_errors,
                        redis_rps: round(r.redis_rps, 1),
                    })
                    .collect(),
            },
            limitd_cluster: self.cluster_json(),
            wasm_bytes: self.wasm_bytes,
            limitd_peak_rss_kib: &self.limitd_hwm_kib,
            load: self
                .load
                .iter()
                .map(|(when, loadavg)| LoadJson { when, loadavg })
                .collect(),
            cpu_per_round: self.cpu.iter().map(CpuJson::from).collect(),
            counters: &self.counters,
            warnings: &self.warnings,
        };
        // Plain structs, string keys and finite or null numbers: serialising cannot fail.
        let mut text = serde_json::to_string_pretty(&json).unwrap_or_default();
        text.push('\n');
        text
    }

    fn cluster_json(&self) -> LimitdClusterJson {
        let c = self.cluster_summary();
        LimitdClusterJson {
            limitd_spread_rps: round(c.spread, 1),
            limitd_one_master_rps: round(c.one_master, 1),
            redis_evalsha_rps: round(c.redis, 1),
            ratio: round(c.ratio, 4),
            spread_vs_one_master: round(c.spread_vs_one_master, 4),
            rounds: self
                .cluster
                .iter()
                .map(|r| LimitdClusterRoundJson {
                    limitd_spread_rps: round(r.spread.requests_per_sec, 1),
                    limitd_one_master_rps: round(r.one_master.requests_per_sec, 1),
                    limitd_errors: r.spread.non_2xx
                        + r.spread.socket_errors
                        + r.one_master.non_2xx
                        + r.one_master.socket_errors,
                    redis_rps: round(r.redis_rps, 1),
                    cpu: CpuJson::from(&r.cpu),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::tests::results;
    use super::super::scenarios::SCENARIOS;
    use serde_json::Value;

    /// The keys of `value`'s object (sorted: serde_json's map is ordered by key).
    fn keys(value: &Value) -> Vec<&str> {
        value
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    #[test]
    fn results_keep_their_json_shape() {
        let text = results().to_json();
        assert!(text.ends_with("}\n"));
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            keys(&json),
            [
                "counters",
                "cpu_per_round",
                "date",
                "duration_s",
                "limitd_alone",
                "limitd_cluster",
                "limitd_peak_rss_kib",
                "load",
                "machine",
                "scenarios",
                "settings",
                "warnings",
                "wasm_bytes"
            ]
        );
        assert_eq!(json["machine"], "a \"quoted\" machine\n");
        assert_eq!(json["duration_s"], 61.3);
        let scenario = &json["scenarios"][1];
        assert_eq!(scenario["id"], SCENARIOS[1].id);
        assert_eq!(scenario["rps"], 850.0);
        assert_eq!(scenario["rps_ratio"], 0.85);
        assert_eq!(scenario["envoy_cpu_us_per_request"], 12.35);
        assert_eq!(scenario["rounds"].as_array().map(Vec::len), Some(2));
        assert_eq!(scenario["rounds"][0]["closed_p50_ms"], 0.1235);
        assert_eq!(scenario["rounds"][0]["open_errors"], 1);
        assert_eq!(json["limitd_alone"]["ratio"], 0.25);
        assert_eq!(json["limitd_alone"]["rounds"][0]["redis_rps"], 20000.0);
        let cluster = &json["limitd_cluster"];
        assert_eq!(cluster["limitd_spread_rps"], 6000.0);
        assert_eq!(cluster["limitd_one_master_rps"], 5000.0);
        assert_eq!(cluster["redis_evalsha_rps"], 30000.0);
        assert_eq!(cluster["ratio"], 0.2);
        assert_eq!(cluster["spread_vs_one_master"], 1.2);
        assert_eq!(cluster["rounds"][0]["limitd_errors"], 0);
        assert_eq!(cluster["rounds"][0]["cpu"]["ours"], 0.9);
        assert_eq!(json["limitd_peak_rss_kib"][1], 11_264);
        assert_eq!(json["load"][0]["loadavg"], "0.5 0.4 0.3");
        assert_eq!(json["cpu_per_round"][0]["others"], 0.25);
        assert_eq!(json["warnings"][0], "one");
        // Counters keep the order they were read in.
        assert!(text.find("\"zeta\"") < text.find("\"alpha\""), "{text}");
        assert_eq!(json["counters"]["alpha"], 1);
    }

    #[test]
    fn without_the_cluster_section_its_figures_are_zero_and_it_has_no_rounds() {
        let mut results = results();
        results.cluster.clear();
        let json: Value = serde_json::from_str(&results.to_json()).unwrap();
        let cluster = &json["limitd_cluster"];
        assert_eq!(cluster["limitd_spread_rps"], 0.0);
        assert_eq!(cluster["ratio"], 0.0);
        assert_eq!(cluster["rounds"].as_array().map(Vec::len), Some(0));
    }
}
