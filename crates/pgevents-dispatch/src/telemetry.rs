//! Metrics the dispatcher records through the `metrics` facade: no-ops unless the program
//! installs a recorder (the admin server installs a Prometheus one).
//!
//! Series are labelled with the trigger's name only — never ids or row values — so their
//! number stays that of the configured triggers.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgevents_log::store::Verdict;

/// Counter: captured rows moved into the event log (all triggers).
pub const EVENTS_CAPTURED: &str = "pgevents_events_captured_total";
/// Counter, by `trigger`: events delivered.
pub const EVENTS_DELIVERED: &str = "pgevents_events_delivered_total";
/// Counter, by `trigger`: events failed for good (after their retries, or rejected).
pub const EVENTS_FAILED: &str = "pgevents_events_failed_total";
/// Counter, by `trigger`: failed attempts that will be retried.
pub const EVENTS_RETRIED: &str = "pgevents_events_retried_total";
/// Histogram, by `trigger`: how long one delivery attempt took, in seconds.
pub const DELIVERY_DURATION: &str = "pgevents_delivery_duration_seconds";
/// Histogram, by `trigger`: from capture to delivery, in seconds.
pub const DELIVERY_LATENCY: &str = "pgevents_delivery_latency_seconds";
/// Gauge, by `trigger`: events waiting, in flight or retrying (set by whoever reads the log).
pub const EVENTS_PENDING: &str = "pgevents_events_pending";
/// Gauge: age in seconds of the oldest captured row not yet in the log (set by whoever
/// reads the log).
pub const CAPTURE_LAG: &str = "pgevents_capture_lag_seconds";

/// Counts rows moved from capture into the log.
pub(crate) fn captured(rows: i32) {
    if rows > 0 {
        metrics::counter!(EVENTS_CAPTURED).increment(rows as u64);
    }
}

/// Records one finished attempt of an event of `trigger` captured at `created_at`.
pub(crate) fn attempted(
    trigger: &Arc<str>,
    verdict: Verdict,
    duration: Duration,
    created_at: DateTime<Utc>,
) {
    metrics::histogram!(DELIVERY_DURATION, "trigger" => trigger.clone())
        .record(duration.as_secs_f64());
    match verdict {
        Verdict::Delivered => {
            let latency = (Utc::now() - created_at).to_std().unwrap_or_default();
            metrics::histogram!(DELIVERY_LATENCY, "trigger" => trigger.clone())
                .record(latency.as_secs_f64());
            metrics::counter!(EVENTS_DELIVERED, "trigger" => trigger.clone()).increment(1);
        }
        Verdict::Retry(_) => {
            metrics::counter!(EVENTS_RETRIED, "trigger" => trigger.clone()).increment(1)
        }
        Verdict::Failed => {
            metrics::counter!(EVENTS_FAILED, "trigger" => trigger.clone()).increment(1)
        }
    }
}
