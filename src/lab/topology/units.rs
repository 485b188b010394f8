//! Units of the lab file: rates ("20mbit"), durations ("10ms"), percentages ("1%").

use std::time::Duration;

/// The highest rate a link takes: 1 Tbit/s (tbf counts bytes per second in 64 bits, but no
/// veth comes near this, and a number past it is a typo or an overflow attempt).
pub const MAX_RATE_BYTES: u64 = 125_000_000_000;

/// Parses "20mbit", "512kbit", "1gbit", "800bit", "100kbps" into bytes per second; the reason
/// when it is not a rate netbox takes.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, unit) = split_number(&s).ok_or("no number followed by a unit")?;
    let bits = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return Err(format!("unknown unit {unit:?}")),
    };
    // Checked as a float before any conversion: "99999999999999999999999gbit" must not
    // saturate into u64::MAX.
    let bytes = num * bits / 8.0;
    if !bytes.is_finite() || bytes > MAX_RATE_BYTES as f64 {
        return Err("above the 1000gbit maximum".into());
    }
    if bytes < 1.0 {
        return Err("below one byte per second".into());
    }
    Ok(bytes as u64)
}

/// Parses "10ms", "1s", "500us", "2m" into a duration (at most a day).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = split_number(s)?;
    let mul = match unit {
        "ns" => 1e-9,
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => return None,
    };
    let secs = num * mul;
    (secs.is_finite() && (0.0..=86_400.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// Parses "1%", "0.5%" or "1" into a percentage between 0 and 100.
pub fn parse_percent(s: &str) -> Option<f64> {
    s.trim()
        .trim_end_matches('%')
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| (0.0..=100.0).contains(v))
}

/// "12.5mbit" into (12.5, "mbit").
fn split_number(s: &str) -> Option<(f64, &str)> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_overflows_are_refused() {
        assert_eq!(parse_rate("20mbit"), Ok(2_500_000));
        assert_eq!(parse_rate("1gbit"), Ok(125_000_000));
        assert_eq!(parse_rate("100kbps"), Ok(100_000));
        assert_eq!(parse_rate("1000gbit"), Ok(MAX_RATE_BYTES));
        for bad in [
            "20",
            "100tbit",
            "99999999999999999999999gbit",
            "18446744073709551615bit",
            "1001gbit",
            "0bit",
            "-1mbit",
            "1e3mbit",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_percentages_parse() {
        assert_eq!(parse_duration("10ms"), Some(Duration::from_millis(10)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
        assert_eq!(parse_percent("1%"), Some(1.0));
        assert_eq!(parse_percent("101%"), None);
    }
}
