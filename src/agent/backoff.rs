//! Exponential backoff with jitter, for retrying the endpoint forever without a thundering
//! herd when it comes back (many agents restarted by the same outage).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ ((std::process::id() as u64) << 32);
        Self::with_seed(initial, max, seed)
    }

    pub fn with_seed(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            // xorshift must not start at 0.
            rng: seed | 1,
        }
    }

    /// The ceiling for the current attempt: `initial * 2^attempt`, capped at `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay: uniformly in `[ceiling/2, ceiling]` ("equal jitter"), so retries
    /// spread out but never come faster than half the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let span = (ceiling - half).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_rand() % (span + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubling_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(15), 42);
        let ceilings = [1, 2, 4, 8, 15, 15, 15];
        for c in ceilings {
            let ceiling = Duration::from_secs(c);
            assert_eq!(b.ceiling(), ceiling);
            let d = b.next_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} vs {ceiling:?}");
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_varies_and_never_overflows() {
        let mut b = Backoff::with_seed(Duration::from_millis(100), Duration::from_secs(60), 7);
        for _ in 0..200 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
        let delays: std::collections::BTreeSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 10, "jitter should spread delays: {delays:?}");
    }

    #[test]
    fn max_below_initial_is_raised() {
        let mut b = Backoff::with_seed(Duration::from_secs(2), Duration::from_secs(1), 1);
        let d = b.next_delay();
        assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2));
    }
}
