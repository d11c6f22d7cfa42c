//! Prometheus metrics: the process-wide recorder, the gauges read from the event log, and
//! the `/metrics` text.
//!
//! The dispatcher counts what it does (captured, delivered, failed, retried, attempt
//! durations, capture-to-delivery latency; see [`pgevents_dispatch::telemetry`]). The
//! pending gauge and the capture lag describe the whole log, so they are read from it when
//! scraped (at most once per [`GAUGE_REFRESH`]); every daemon on one log reports the same
//! values for them.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pgevents_dispatch::telemetry::{
    CAPTURE_LAG, DELIVERY_DURATION, DELIVERY_LATENCY, EVENTS_CAPTURED, EVENTS_DELIVERED,
    EVENTS_FAILED, EVENTS_PENDING, EVENTS_RETRIED,
};
use pgevents_log::browse::TriggerCounts;

/// How old the pending gauge and capture lag may be when scraped.
pub(crate) const GAUGE_REFRESH: Duration = Duration::from_secs(1);
/// How often histogram samples are folded into their buckets (bounds memory between scrapes).
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Bucket bounds, in seconds, of the attempt-duration and delivery-latency histograms.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0, 3600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder, once; later calls
/// return the same handle. Call it before the dispatcher starts so no count is missed
/// ([`AdminState::new`](crate::AdminState::new) calls it too).
///
/// If another `metrics` recorder was installed first, that one keeps the process's metrics:
/// this logs a warning and returns a handle whose output holds only the log's gauges.
pub fn install_metrics_recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            {
                Ok(builder) => builder,
                // Unreachable: the bucket list is not empty.
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics shows only the event log's gauges");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(EVENTS_CAPTURED, "Captured rows moved into the event log.");
    describe_counter!(EVENTS_DELIVERED, "Events delivered.");
    describe_counter!(
        EVENTS_FAILED,
        "Events failed for good (retries exhausted, or rejected)."
    );
    describe_counter!(EVENTS_RETRIED, "Failed delivery attempts to be retried.");
    describe_histogram!(
        DELIVERY_DURATION,
        Unit::Seconds,
        "Duration of one delivery attempt."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Time from capture to delivery."
    );
    describe_gauge!(
        EVENTS_PENDING,
        "Events waiting, in flight or retrying, in the whole event log."
    );
    describe_gauge!(
        CAPTURE_LAG,
        Unit::Seconds,
        "Age of the oldest captured row not yet moved into the event log."
    );
}

/// Sets the log-wide gauges from a status reading.
pub(crate) fn set_gauges(counts: &[TriggerCounts], capture_lag: f64) {
    for c in counts {
        metrics::gauge!(EVENTS_PENDING, "trigger" => c.name.clone()).set(c.pending as f64);
    }
    metrics::gauge!(CAPTURE_LAG).set(capture_lag);
}

/// Remembers when the gauges were last read from the log.
#[derive(Debug, Default)]
pub(crate) struct GaugeClock {
    last: Mutex<Option<Instant>>,
}

impl GaugeClock {
    /// True (and the clock reset) when the gauges are older than [`GAUGE_REFRESH`].
    pub(crate) fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < GAUGE_REFRESH) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Forgets the last reading (it failed), so the next scrape tries again.
    pub(crate) fn reset(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
