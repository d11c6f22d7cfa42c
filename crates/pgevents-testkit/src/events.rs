//! Sample events and deliveries for the sinks' tests, and the error a failed attempt reports.

use std::time::Duration;

use pgevents_delivery::{Delivery, Outcome, Sink};
use pgevents_event::{Action, Attempt, Event, EventParts};

/// An UPDATE of row `row` whose new image carries `n`, with numbers JSON floats would spoil.
pub fn event(seq: i64, row: i64, n: i64) -> Event {
    order_update(
        seq,
        format!(r#"{{"id":{row},"n":{},"note":null}}"#, n - 1),
        format!(
            r#"{{"id":{row},"n":{n},"total":12345678901234567890.50,"note":"caf\u00e9 \"q\""}}"#
        ),
        Some(row),
    )
}

/// Event `seq` of trigger `order_events`: an UPDATE of `public.orders` from `old` to `new`
/// (row images as JSON text), ordered by `ordering_key`, created now.
pub fn order_update(seq: i64, old: String, new: String, ordering_key: Option<i64>) -> Event {
    Event::from_parts(EventParts {
        seq,
        salt: 7,
        created_at: chrono::Utc::now(),
        trigger: "order_events".into(),
        schema: "public".into(),
        table: "orders".into(),
        action: Action::Update,
        old: Some(old),
        new: Some(new),
        ordering_key,
    })
}

/// A first attempt at `event`, allowed `timeout`.
pub fn delivery(event: &Event, timeout: Duration) -> Delivery {
    Delivery {
        event: event.clone(),
        attempt: Attempt {
            current_retry: 0,
            max_retries: 5,
        },
        timeout,
    }
}

/// Offers `sink` a first attempt at `event(1, 1, 1)`, allowed 5 s, which must fail and be
/// retried (a broker out of reach, a setting it refuses); returns the error it reports.
pub async fn failed_attempt(sink: &impl Sink) -> String {
    retry_error(
        sink.deliver(delivery(&event(1, 1, 1), Duration::from_secs(5)))
            .await,
    )
}

/// The error `outcome` reports, which must be a retry; panics with the outcome otherwise.
pub fn retry_error(outcome: Outcome) -> String {
    match outcome {
        Outcome::Retry { report, .. } => report.error.unwrap_or_default(),
        other => panic!("{other:?}"),
    }
}
