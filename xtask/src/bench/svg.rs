//! A hand-written SVG bar chart of the ratios to the baseline.

use std::fmt::Write as _;

use super::report::Results;

const WIDTH: f64 = 760.0;
const LEFT: f64 = 250.0; // labels on the left
const RIGHT: f64 = 70.0; // room for values past the longest bar
const TOP: f64 = 64.0;
const BAR: f64 = 16.0;
const GAP: f64 = 4.0;
const GROUP_GAP: f64 = 14.0;

const THROUGHPUT: &str = "#4c78a8";
const P50: &str = "#f58518";
const P99: &str = "#e45756";
const LIMITD: &str = "#54a24b";
const CPU: &str = "#b279a2";

/// Bars grouped per scenario: (group label, [(bar label, ratio, colour)]).
type Groups = Vec<(String, Vec<(&'static str, f64, &'static str)>)>;

pub fn chart(results: &Results) -> String {
    let mut groups: Groups = results
        .summaries()
        .iter()
        .skip(1)
        .map(|s| {
            (
                s.id.to_owned(),
                vec![
                    ("req/s", s.rps_ratio, THROUGHPUT),
                    ("p50 latency", s.p50_ratio, P50),
                    ("p99 latency", s.p99_ratio, P99),
                    ("Envoy CPU per request", s.cpu_ratio, CPU),
                ],
            )
        })
        .collect();
    if !results.limitd.is_empty() {
        let (_, _, limitd) = results.limitd_summary();
        groups.push((
            "limitd alone".to_owned(),
            vec![("checks/s ÷ Redis EVALSHA/s", limitd, LIMITD)],
        ));
    }

    let largest = groups
        .iter()
        .flat_map(|(_, bars)| bars.iter().map(|b| b.1))
        .fold(1.0, f64::max);
    // Up to 3×: a bar beyond that is cut at the edge, its value still printed.
    let scale_max = ((largest * 2.0).ceil() / 2.0).clamp(1.5, 3.0);
    let plot = WIDTH - LEFT - RIGHT;
    let x = |ratio: f64| LEFT + plot * ratio.min(scale_max) / scale_max;
    let bars: usize = groups.iter().map(|(_, b)| b.len()).sum();
    let plot_height = bars as f64 * (BAR + GAP) + groups.len() as f64 * (GROUP_GAP + BAR);
    let height = TOP + plot_height + 56.0;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="8" y="22" font-size="15" font-weight="bold">Rate limiter cost, as a ratio to Envoy without a limiter</text>
<text x="8" y="40" fill="#555">{}; req/s: higher is better, latency and CPU: lower is better</text>"##,
        escape(&results.date)
    );
    // Grid every 0.5, the baseline (1.0) darker.
    let mut tick = 0.0;
    while tick <= scale_max + 1e-9 {
        let gx = x(tick);
        let (stroke, width) = if (tick - 1.0).abs() < 1e-9 {
            ("#333", 1.5)
        } else {
            ("#ddd", 1.0)
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="{stroke}" stroke-width="{width}"/>
        <text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{tick:.1}</text>"##,
            TOP + plot_height,
            TOP + plot_height + 16.0
        );
        tick += 0.5;
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#333">baseline = 1.0</text>"##,
        x(1.0),
        TOP - 6.0
    );

    let mut y = TOP + GROUP_GAP / 2.0;
    for (group, bars) in &groups {
        let _ = writeln!(
            svg,
            r#"<text x="8" y="{:.1}" font-weight="bold">{}</text>"#,
            y + BAR - 3.0,
            escape(group)
        );
        y += BAR;
        for (label, ratio, colour) in bars {
            let end = x(*ratio);
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>
<rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{BAR}" fill="{colour}"/>
<text x="{:.1}" y="{:.1}">{ratio:.2}{}</text>"#,
                LEFT - 8.0,
                y + BAR - 3.0,
                escape(label),
                (end - LEFT).max(0.5),
                end + 4.0,
                y + BAR - 3.0,
                if *ratio > scale_max { " ›" } else { "" }
            );
            y += BAR + GAP;
        }
        y += GROUP_GAP;
    }
    let _ = writeln!(
        svg,
        r##"<text x="8" y="{:.1}" fill="#555">req/s, Envoy CPU per request: wrk, closed loop · latency: open loop at a fixed rate, from the scheduled send · medians</text>
</svg>"##,
        height - 14.0
    );
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
