//! Per-trigger circuit breakers: a destination that fails every attempt is probed, not
//! hammered.
//!
//! Without them, a trigger whose webhook is down has every due event claimed, failed and
//! settled again and again: thousands of writes a second to the log that every other
//! trigger shares. After [`TRIP_AFTER`] attempts in a row that failed and are to be retried
//! (refused, timed out, a 5xx, a handler's error), with no delivery between them, a
//! trigger's breaker opens:
//! its events stay pending, untouched (no attempt is spent on them), while the claim step
//! gives it no slot. When the cool-down ends one event is let through as a probe; a
//! delivery closes the breaker, a failure opens it again for twice as long. Until a
//! trigger's first delivery, and while failures run on with no delivery between them, it
//! has at most [`TRIP_AFTER`] events in flight ([`Allowance::Trial`]): a dead destination
//! costs that many failed attempts before its breaker opens, not a whole claim's worth. Cool-downs
//! follow the trigger's own retry policy, from `initial_interval` up to `max_interval`, so
//! a destination that comes back is used again no later than its events' own retries would
//! have found it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgevents_delivery::RetryPolicy;

/// Failed attempts in a row, with no delivery between them, after which a trigger's
/// breaker opens: enough that a flaky destination (the demo's fails two attempts of three)
/// keeps its pace, few enough that a dead one is found within a claim or two.
pub(crate) const TRIP_AFTER: u32 = 20;

/// What the claim step may take of a trigger's events now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allowance {
    /// Its share, as usual.
    Closed,
    /// Up to [`TRIP_AFTER`] events in flight: it has not delivered yet, or its last
    /// attempts failed.
    Trial,
    /// One event, and only while none of its events is in flight.
    Probe,
    /// Nothing until the cool-down ends.
    Shut,
}

#[derive(Debug)]
struct Breaker {
    name: String,
    first: Duration,
    longest: Duration,
    failures: u32,
    /// Whether it delivered anything yet.
    proven: bool,
    open: Option<Open>,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    until: Instant,
    cooldown: Duration,
}

/// The breakers of every trigger a dispatcher serves.
#[derive(Debug)]
pub(crate) struct Breakers {
    by_trigger: HashMap<i32, Breaker>,
}

impl Breakers {
    /// Closed breakers for `triggers` (id, name, retry policy).
    pub(crate) fn new<'a>(
        triggers: impl IntoIterator<Item = (i32, &'a str, &'a RetryPolicy)>,
    ) -> Breakers {
        let by_trigger = triggers
            .into_iter()
            .map(|(id, name, policy)| {
                let first = policy.initial_interval.max(Duration::from_millis(1));
                (
                    id,
                    Breaker {
                        name: name.to_string(),
                        first,
                        longest: policy.max_interval.max(first),
                        failures: 0,
                        proven: false,
                        open: None,
                    },
                )
            })
            .collect();
        Breakers { by_trigger }
    }

    /// What `trigger` may claim at `now`.
    pub(crate) fn allowance(&self, trigger: i32, now: Instant) -> Allowance {
        let Some(breaker) = self.by_trigger.get(&trigger) else {
            return Allowance::Closed;
        };
        match breaker.open {
            Some(open) if now < open.until => Allowance::Shut,
            Some(_) => Allowance::Probe,
            None if !breaker.proven || breaker.failures > 0 => Allowance::Trial,
            None => Allowance::Closed,
        }
    }

    /// Records the outcome of one attempt of `trigger`'s at `now` (`delivered`, or failed
    /// and to be retried; an event refused for good, such as by a 4xx, says the destination
    /// is up and is not recorded); returns when the breaker lets a probe through if this
    /// outcome opened it (the claim loop wakes then).
    pub(crate) fn record(
        &mut self,
        trigger: i32,
        delivered: bool,
        now: Instant,
    ) -> Option<Instant> {
        let breaker = self.by_trigger.get_mut(&trigger)?;
        if delivered {
            if breaker.open.take().is_some() {
                tracing::info!(trigger = %breaker.name, "destination delivers again; its events flow at their usual pace");
            }
            breaker.failures = 0;
            breaker.proven = true;
            return None;
        }
        breaker.failures = breaker.failures.saturating_add(1);
        let cooldown = match breaker.open {
            // A failure while shut is an attempt claimed before the breaker opened.
            Some(open) if now < open.until => return None,
            Some(open) => (open.cooldown * 2).min(breaker.longest),
            None if breaker.failures >= TRIP_AFTER => {
                tracing::warn!(
                    trigger = %breaker.name,
                    failures = breaker.failures,
                    "destination fails every attempt; its events wait (no attempts spent) and one is tried as a probe now and then"
                );
                breaker.first
            }
            None => return None,
        };
        let until = now + cooldown;
        breaker.open = Some(Open { until, cooldown });
        Some(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_millis(initial_ms),
            max_interval: Duration::from_millis(max_ms),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn opens_after_failures_in_a_row_and_a_delivery_resets_the_count() {
        let p = policy(100, 1_000);
        let mut b = Breakers::new([(1, "t", &p)]);
        let now = Instant::now();
        // On trial until its first delivery.
        assert_eq!(b.allowance(1, now), Allowance::Trial);
        for _ in 0..TRIP_AFTER - 1 {
            assert_eq!(b.record(1, false, now), None);
        }
        // A delivery between failures: the count starts again.
        assert_eq!(b.record(1, true, now), None);
        assert_eq!(b.allowance(1, now), Allowance::Closed);
        for _ in 0..TRIP_AFTER - 1 {
            assert_eq!(b.record(1, false, now), None);
        }
        assert_eq!(b.allowance(1, now), Allowance::Trial);
        assert_eq!(
            b.record(1, false, now),
            Some(now + Duration::from_millis(100))
        );
        assert_eq!(b.allowance(1, now), Allowance::Shut);
        // Attempts claimed before it opened fail meanwhile: the cool-down stays.
        assert_eq!(b.record(1, false, now + Duration::from_millis(10)), None);
        assert_eq!(
            b.allowance(1, now + Duration::from_millis(99)),
            Allowance::Shut
        );
        assert_eq!(
            b.allowance(1, now + Duration::from_millis(100)),
            Allowance::Probe
        );
    }

    #[test]
    fn a_failed_probe_doubles_the_cooldown_up_to_the_retry_policys_longest_wait() {
        let p = policy(100, 300);
        let mut b = Breakers::new([(1, "t", &p)]);
        let mut now = Instant::now();
        for _ in 0..TRIP_AFTER {
            b.record(1, false, now);
        }
        let mut cooldowns = Vec::new();
        for _ in 0..3 {
            now += Duration::from_secs(1);
            assert_eq!(b.allowance(1, now), Allowance::Probe);
            let until = b.record(1, false, now).expect("a failed probe reopens");
            cooldowns.push(until - now);
        }
        assert_eq!(
            cooldowns,
            [200, 300, 300].map(Duration::from_millis).to_vec()
        );
        // A delivered probe closes it.
        now += Duration::from_secs(1);
        assert_eq!(b.record(1, true, now), None);
        assert_eq!(b.allowance(1, now), Allowance::Closed);
    }

    #[test]
    fn triggers_have_breakers_of_their_own() {
        let p = policy(100, 1_000);
        let mut b = Breakers::new([(1, "a", &p), (2, "b", &p)]);
        let now = Instant::now();
        for _ in 0..TRIP_AFTER {
            b.record(1, false, now);
        }
        assert_eq!(b.allowance(1, now), Allowance::Shut);
        assert_eq!(b.allowance(2, now), Allowance::Trial);
        // Unknown triggers are never held back.
        assert_eq!(b.record(3, false, now), None);
        assert_eq!(b.allowance(3, now), Allowance::Closed);
    }
}
