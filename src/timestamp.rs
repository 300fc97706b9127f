//! RFC 3339 timestamps, as Kubernetes writes them (`2021-10-09T10:56:41Z`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Seconds precision, UTC, `Z` suffix: the form `kubectl` shows.
pub fn format(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|dt| dt.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

pub fn parse(s: &str) -> Option<SystemTime> {
    let dt = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let nanos = dt.unix_timestamp_nanos();
    if nanos < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).ok()?))
}

pub fn now() -> String {
    format(SystemTime::now())
}

/// `kubectl`'s AGE column: `45s`, `12m`, `3h`, `2d`.
pub fn age(since: SystemTime, now: SystemTime) -> String {
    let s = now.duration_since(since).map(|d| d.as_secs()).unwrap_or(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_633_776_999);
        let s = format(t);
        assert_eq!(s, "2021-10-09T10:56:39Z");
        assert_eq!(parse(&s), Some(t));
        assert!(parse("2021-10-09T10:56:41.380102645Z").is_some());
        assert_eq!(parse("yesterday"), None);
    }

    #[test]
    fn ages() {
        let t = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(age(t, t + Duration::from_secs(59)), "59s");
        assert_eq!(age(t, t + Duration::from_secs(600)), "10m");
        assert_eq!(age(t, t + Duration::from_secs(3 * 86400)), "3d");
    }
}
