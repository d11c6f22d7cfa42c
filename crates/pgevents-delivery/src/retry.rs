//! The retry policy: how many retries, how far apart, and how long one attempt may take.

use std::time::Duration;

use rand::Rng;

/// Default number of retries after the first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// Default wait before the first retry.
pub const DEFAULT_INITIAL_INTERVAL: Duration = Duration::from_secs(1);
/// Default cap on the wait between retries.
pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(300);
/// Default time one attempt may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// When to retry a failed delivery, and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; then the event is `failed`.
    pub max_retries: u32,
    /// The wait before the first retry; each later wait doubles, with jitter.
    pub initial_interval: Duration,
    /// The longest wait between two attempts (also caps `Retry-After`).
    pub max_interval: Duration,
    /// How long one attempt may take before it counts as failed.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: DEFAULT_MAX_RETRIES,
            initial_interval: DEFAULT_INITIAL_INTERVAL,
            max_interval: DEFAULT_MAX_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry), honouring a destination's
    /// `Retry-After` hint up to `max_interval`.
    ///
    /// Exponential: `initial_interval * 2^(retry-1)`, capped at `max_interval`, less up to a
    /// quarter of random jitter, so waits grow from one retry to the next while retries of
    /// many events spread out instead of arriving together.
    pub fn backoff(&self, retry: u32, hint: Option<Duration>) -> Duration {
        if let Some(hint) = hint {
            return hint.min(self.max_interval);
        }
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
        let base = self
            .initial_interval
            .saturating_mul(factor)
            .min(self.max_interval);
        let jitter = rand::rng().random_range(0.0..0.25);
        base.mul_f64(1.0 - jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_and_are_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
            timeout: DEFAULT_TIMEOUT,
        };
        for _ in 0..100 {
            let a = p.backoff(1, None);
            let b = p.backoff(2, None);
            let c = p.backoff(3, None);
            assert!(a <= Duration::from_millis(100) && a > Duration::from_millis(74));
            assert!(b > a && c > b, "{a:?} {b:?} {c:?}");
            assert!(p.backoff(30, None) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_max_interval() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(3600))),
            p.max_interval
        );
    }
}
