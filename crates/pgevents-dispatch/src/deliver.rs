//! One delivery attempt: run the sink under the timeout, catch panics, decide the verdict.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use pgevents_event::{Attempt, Event};
use pgevents_log::store::{Settlement, Verdict};
use pgevents_sink::{Delivery, DynSink, Outcome, RetryPolicy};
use tracing::Instrument;

/// Runs one attempt of `event` and returns what to record.
pub(crate) async fn attempt(
    sink: Arc<dyn DynSink>,
    policy: RetryPolicy,
    event: Event,
    current_retry: u32,
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
        let seq = event.seq();
        let (trigger, created_at) = (event.trigger().to_owned(), event.created_at());
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
            seq,
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
    use pgevents_sink::Report;
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

    #[tokio::test]
    async fn panics_and_timeouts_are_failed_attempts() {
        struct Panics;
        impl pgevents_sink::Sink for Panics {
            async fn deliver(&self, _: Delivery) -> Outcome {
                panic!("boom")
            }
        }
        struct Hangs;
        impl pgevents_sink::Sink for Hangs {
            async fn deliver(&self, _: Delivery) -> Outcome {
                std::future::pending().await
            }
        }
        let event = Event::from_parts(pgevents_event::EventParts {
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
        });
        let policy = RetryPolicy {
            timeout: Duration::from_millis(50),
            ..RetryPolicy::default()
        };
        let s = attempt(Arc::new(Panics), policy, event.clone(), 0).await;
        assert!(matches!(s.verdict, Verdict::Retry(_)));
        assert_eq!(s.error.as_deref(), Some("panicked: boom"));
        let s = attempt(Arc::new(Hangs), policy, event, 0).await;
        assert!(s.error.unwrap_or_default().starts_with("timed out"));
    }
}
