//! Durations written as text in the plugin configuration: `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"`.

/// Milliseconds per unit suffix, longest suffix first so `ms` wins over `m`.
const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses a duration such as `"90s"` into milliseconds.
///
/// The number is a whole, non-negative decimal; the unit is one of `ms`, `s`,
/// `m`, `h`, `d`. Any length is accepted (`"90s"`, `"36h"`), not just one unit.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let hint = || {
        format!("{text:?} is not a duration; use e.g. \"500ms\", \"30s\", \"5m\", \"1h\" or \"1d\"")
    };
    let (digits, unit_ms) = UNITS
        .iter()
        .find_map(|(suffix, ms)| text.strip_suffix(suffix).map(|digits| (digits, *ms)))
        .ok_or_else(hint)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(hint());
    }
    let value: u64 = digits.parse().map_err(|_| hint())?;
    value
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "",
            "5",
            "s",
            "5 minutes",
            "-1s",
            "1.5s",
            "5M",
            " 5s",
            "5sec",
            "ms",
        ] {
            let err = parse_duration_ms(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn rejects_overflow() {
        let err = parse_duration_ms("99999999999999999d").unwrap_err();
        assert!(err.contains("too long"), "{err}");
    }
}
