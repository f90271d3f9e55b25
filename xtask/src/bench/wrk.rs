//! Runs `wrk` (closed loop: each connection sends its next request as soon as
//! the previous answer arrives) and reads its summary.

use std::path::Path;
use std::process::Command;

/// What one wrk run reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub requests: u64,
    /// Responses with a status outside 2xx/3xx.
    pub non_2xx: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
    /// Closed-loop latency percentiles (ms), for information only: a closed
    /// loop hides queueing (coordinated omission), the open loop measures it.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `wrk -t<threads> -c<connections> -d<seconds>s --latency [-s script] url`.
pub fn run(
    url: &str,
    threads: u32,
    connections: u32,
    seconds: u64,
    script: Option<&Path>,
) -> Result<WrkResult, String> {
    let mut command = Command::new("wrk");
    command.args([
        &format!("-t{threads}"),
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--timeout",
        "5s",
        "--latency",
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let out = command
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk {url} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&text).map_err(|e| format!("wrk {url}: {e}\n{text}"))
}

/// Reads wrk 4's summary.
pub fn parse(text: &str) -> Result<WrkResult, String> {
    let mut result = WrkResult::default();
    let mut seen_rate = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate] => {
                result.requests_per_sec = number(rate)?;
                seen_rate = true;
            }
            [n, "requests", "in", ..] => result.requests = number(n)? as u64,
            ["Non-2xx", "or", "3xx", "responses:", n] => result.non_2xx = number(n)? as u64,
            ["Socket", "errors:", ..] => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                result.socket_errors = words[2..]
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["50%", latency] => result.p50_ms = millis(latency)?,
            ["99%", latency] => result.p99_ms = millis(latency)?,
            _ => {}
        }
    }
    if !seen_rate {
        return Err("no Requests/sec line".to_owned());
    }
    Ok(result)
}

fn number(text: &str) -> Result<f64, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// wrk's latencies: `412.00us`, `1.23ms`, `2.00s`, `1.00m`.
fn millis(text: &str) -> Result<f64, String> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| format!("{text:?} has no unit"))?;
    let (value, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        _ => return Err(format!("{text:?}: unknown unit")),
    };
    Ok(number(value)? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 5s test @ http://127.0.0.1:18000/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.51ms  612.40us  14.21ms   85.12%
    Req/Sec    12.80k   511.23    13.50k    72.00%
  Latency Distribution
     50%  412.00us
     75%    2.71ms
     90%    3.02ms
     99%    1.20s
  63712 requests in 5.00s, 15.01MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 63711
Requests/sec:  12738.52
Transfer/sec:      3.00MB
";

    #[test]
    fn the_summary_is_read() {
        let r = parse(OUTPUT).unwrap();
        assert_eq!(r.requests_per_sec, 12738.52);
        assert_eq!(r.requests, 63712);
        assert_eq!(r.non_2xx, 63711);
        assert_eq!(r.socket_errors, 3);
        assert!((r.p50_ms - 0.412).abs() < 1e-9);
        assert_eq!(r.p99_ms, 1200.0);
    }

    #[test]
    fn a_summary_without_a_rate_is_an_error() {
        assert!(parse("unable to connect to 127.0.0.1:1").is_err());
    }
}
