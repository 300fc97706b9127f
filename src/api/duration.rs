//! Durations as Kubernetes and Istio users write them: `1h`, `5m`, `10s`, `1m30s`, `250ms`.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `std::time::Duration` that reads and writes Go's duration syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (examples: 10s, 5m, 1h30m, 250ms)")]
pub struct ParseDurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Duration(StdDuration::from_secs(s))
    }
    pub fn as_std(self) -> StdDuration {
        self.0
    }
    pub fn parse(input: &str) -> Result<Self, ParseDurationError> {
        let err = |reason| ParseDurationError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s == "0" {
            return Ok(Duration(StdDuration::ZERO));
        }
        let mut total: u128 = 0; // nanoseconds
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit"))?;
            if digits == 0 {
                return Err(err("expected a number"));
            }
            let (num, tail) = rest.split_at(digits);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let nanos_per: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(err("unknown unit (use ns, us, ms, s, m or h)")),
            };
            let value: f64 = num.parse().map_err(|_| err("bad number"))?;
            if !value.is_finite() || value < 0.0 {
                return Err(err("bad number"));
            }
            total = total.saturating_add((value * nanos_per as f64).round() as u128);
            rest = tail;
        }
        let secs = (total / 1_000_000_000) as u64;
        let nanos = (total % 1_000_000_000) as u32;
        Ok(Duration(StdDuration::new(secs, nanos)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        if d.subsec_nanos() != 0 {
            if d.as_secs() == 0 && d.subsec_nanos().is_multiple_of(1_000_000) {
                return write!(f, "{}ms", d.subsec_millis());
            }
            return write!(f, "{}s", d.as_secs_f64());
        }
        let mut s = d.as_secs();
        let h = s / 3600;
        s %= 3600;
        let m = s / 60;
        s %= 60;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Duration {
    type Err = ParseDurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(Duration::parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(Duration::parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            Duration::parse("250ms").unwrap().0,
            StdDuration::from_millis(250)
        );
        assert_eq!(
            Duration::parse("1.5s").unwrap().0,
            StdDuration::from_millis(1500)
        );
        assert!(Duration::parse("10").is_err());
        assert!(Duration::parse("10x").is_err());
        assert!(Duration::parse("").is_err());
        assert!(Duration::parse("-1s").is_err());
    }

    #[test]
    fn displays_round_trip() {
        for s in ["1h", "5m", "10s", "1h30m", "250ms", "0s"] {
            assert_eq!(Duration::parse(s).unwrap().to_string(), s);
        }
    }
}
