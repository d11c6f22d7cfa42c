//! One delivery attempt: wait for room at the sink, run the sink under the timeout, catch
//! panics, decide the verdict.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use pgevents_delivery::{Delivery, DynSink, Outcome, RetryPolicy};
use pgevents_event::{Attempt, Event};
use pgevents_log::store::{ClaimToken, Settlement, Verdict};
use tracing::Instrument;

/// Runs one attempt of `event` of `trigger`, claimed as `claim`, and returns what to record.
pub(crate) async fn attempt(
    sink: Arc<dyn DynSink>,
    policy: RetryPolicy,
    trigger: Arc<str>,
    event: Event,
    current_retry: u32,
    claim: ClaimToken,
) -> Settlement {
    let span = tracing::info_span!(
        "pgevents.deliver",
        event_id = %event.id(),
        schema = event.schema(),
        table = event.table(),
        action = %event.action(),
        trigger = event.trigger(),
        attempt = current_retry + 1,
    );
    async move {
        let created_at = event.created_at();
        // Waiting for the sink's capacity is not part of the attempt: the timeout and the
        // recorded duration start once there is room, held until the attempt ends. (A sink
        // whose `ready` panics gets the attempt anyway, and its panic-proof `deliver` call.)
        let _slot = AssertUnwindSafe(sink.clone().ready_boxed())
            .catch_unwind()
            .await
            .ok();
        let started_at = chrono::Utc::now();
        let started = Instant::now();
        let delivery = Delivery {
            event,
            attempt: Attempt {
                current_retry,
                max_retries: policy.max_retries,
            },
            timeout: policy.timeout,
        };
        let call = AssertUnwindSafe(sink.deliver_boxed(delivery)).catch_unwind();
        let outcome = match tokio::time::timeout(policy.timeout, call).await {
            Err(_) => Outcome::retry(format!("timed out after {:?}", policy.timeout)),
            Ok(Err(panic)) => Outcome::retry(format!("panicked: {}", panic_message(&*panic))),
            Ok(Ok(outcome)) => outcome,
        };
        let duration = started.elapsed();
        let verdict = verdict(&outcome, current_retry, &policy);
        let report = outcome.report();
        crate::telemetry::attempted(&trigger, verdict, duration, created_at);
        match verdict {
            Verdict::Delivered => tracing::debug!(?duration, "delivered"),
            Verdict::Retry(after) => tracing::warn!(
                ?duration,
                retry_in = ?after,
                status = report.status,
                error = report.error.as_deref().unwrap_or(""),
                "delivery failed; will retry"
            ),
            Verdict::Failed => tracing::warn!(
                ?duration,
                status = report.status,
                error = report.error.as_deref().unwrap_or(""),
                "delivery failed for good; event marked failed"
            ),
        }
        Settlement {
            claim,
            verdict,
            started_at,
            duration,
            status: report.status.map(i32::from),
            error: report.error.clone(),
            response: report.response.clone(),
        }
    }
    .instrument(span)
    .await
}

/// What an outcome means for the event under `policy`, this being retry `current_retry`.
pub(crate) fn verdict(outcome: &Outcome, current_retry: u32, policy: &RetryPolicy) -> Verdict {
    match outcome {
        Outcome::Delivered(_) => Verdict::Delivered,
        Outcome::Reject(_) => Verdict::Failed,
        Outcome::Retry { .. } if current_retry >= policy.max_retries => Verdict::Failed,
        Outcome::Retry { after, .. } => Verdict::Retry(policy.backoff(current_retry + 1, *after)),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgevents_delivery::Report;
    use std::time::Duration;

    #[test]
    fn verdicts_follow_the_policy() {
        let p = RetryPolicy {
            max_retries: 2,
            ..RetryPolicy::default()
        };
        let ok = Outcome::Delivered(Report::default());
        let bad = Outcome::Reject(Report::error("400"));
        let again = Outcome::retry("500");
        assert_eq!(verdict(&ok, 0, &p), Verdict::Delivered);
        assert_eq!(verdict(&bad, 0, &p), Verdict::Failed);
        assert!(matches!(verdict(&again, 0, &p), Verdict::Retry(_)));
        assert!(matches!(verdict(&again, 1, &p), Verdict::Retry(_)));
        assert_eq!(verdict(&again, 2, &p), Verdict::Failed);
        let hinted = Outcome::Retry {
            report: Report::default(),
            after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            verdict(&hinted, 0, &p),
            Verdict::Retry(Duration::from_secs(2))
        );
    }

    fn event() -> Event {
        Event::from_parts(pgevents_event::EventParts {
            seq: 1,
            salt: 0,
            created_at: chrono::Utc::now(),
            trigger: "t".into(),
            schema: "public".into(),
            table: "x".into(),
            action: pgevents_event::Action::Insert,
            old: None,
            new: None,
            ordering_key: None,
        })
    }

    #[tokio::test]
    async fn panics_and_timeouts_are_failed_attempts() {
        struct Panics;
        impl pgevents_delivery::Sink for Panics {
            async fn deliver(&self, _: Delivery) -> Outcome {
                panic!("boom")
            }
        }
        struct Hangs;
        impl pgevents_delivery::Sink for Hangs {
            async fn deliver(&self, _: Delivery) -> Outcome {
                std::future::pending().await
            }
        }
        let event = event();
        let policy = RetryPolicy {
            timeout: Duration::from_millis(50),
            ..RetryPolicy::default()
        };
        let claim = ClaimToken { seq: 1, attempt: 1 };
        let s = attempt(
            Arc::new(Panics),
            policy,
            "t".into(),
            event.clone(),
            0,
            claim,
        )
        .await;
        assert_eq!(s.claim, claim);
        assert!(matches!(s.verdict, Verdict::Retry(_)));
        assert_eq!(s.error.as_deref(), Some("panicked: boom"));
        let s = attempt(Arc::new(Hangs), policy, "t".into(), event, 0, claim).await;
        assert!(s.error.unwrap_or_default().starts_with("timed out"));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_room_at_the_sink_is_not_part_of_the_attempt() {
        use std::sync::atomic::{AtomicBool, Ordering};
        /// Has room only after a minute; delivers only once it was asked for room.
        #[derive(Default)]
        struct Busy(AtomicBool);
        impl pgevents_delivery::Sink for Busy {
            async fn ready(&self) -> pgevents_delivery::Slot {
                tokio::time::sleep(Duration::from_secs(60)).await;
                self.0.store(true, Ordering::SeqCst);
                pgevents_delivery::Slot::unlimited()
            }
            async fn deliver(&self, _: Delivery) -> Outcome {
                if self.0.load(Ordering::SeqCst) {
                    Outcome::Delivered(Report::default())
                } else {
                    Outcome::Reject(Report::error("delivered before the sink had room"))
                }
            }
        }
        let policy = RetryPolicy {
            timeout: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let s = attempt(
            Arc::new(Busy::default()),
            policy,
            "t".into(),
            event(),
            0,
            ClaimToken { seq: 1, attempt: 1 },
        )
        .await;
        assert_eq!(s.verdict, Verdict::Delivered, "{:?}", s.error);
    }
}
