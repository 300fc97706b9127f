//! Seconds since the Unix epoch: the one conversion every timestamp check and every issued
//! timestamp uses, so that no two modules round or clamp a clock differently.

use std::time::SystemTime;

/// `t` in whole seconds since the Unix epoch: negative before it (a clock set to 1969 is
/// then refused by the time checks instead of passing as the epoch), saturating at the ends
/// of `i64`.
pub fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn seconds_since_the_epoch_either_side_of_it() {
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(unix(epoch), 0);
        assert_eq!(
            unix(epoch + Duration::from_millis(1_700_000_000_999)),
            1_700_000_000
        );
        assert_eq!(unix(epoch - Duration::from_secs(90)), -90);
        assert_eq!(unix(epoch + Duration::from_secs(u64::MAX / 2)), i64::MAX);
    }
}
