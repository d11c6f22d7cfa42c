//! Test fixtures shared by the broker sinks' tests: events, deliveries, unique names, and the
//! addresses of the brokers running on this machine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pgevents_delivery::Delivery;
use pgevents_event::{Action, Attempt, Event, EventParts};

/// How long a test waits for a broker before it fails.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// The brokers the tests talk to (the machine's own services, see `.ci/run`).
#[cfg(feature = "nats")]
pub(crate) const NATS_URL: &str = "nats://127.0.0.1:4222";
#[cfg(feature = "redis")]
pub(crate) const REDIS_URL: &str = "redis://127.0.0.1:6379";
#[cfg(feature = "amqp")]
pub(crate) const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A name no other test (or test run) uses: `{prefix}_{pid}_{n}_{nanos}`.
pub(crate) fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// An UPDATE of row `row` whose new image carries `n`, with numbers JSON floats would spoil.
pub(crate) fn event(seq: i64, row: i64, n: i64) -> Event {
    Event::from_parts(EventParts {
        seq,
        salt: 7,
        created_at: chrono::Utc::now(),
        trigger: "order_events".into(),
        schema: "public".into(),
        table: "orders".into(),
        action: Action::Update,
        old: Some(format!(r#"{{"id":{row},"n":{},"note":null}}"#, n - 1)),
        new: Some(format!(
            r#"{{"id":{row},"n":{n},"total":12345678901234567890.50,"note":"caf\u00e9 \"q\""}}"#
        )),
        ordering_key: Some(row),
    })
}

/// A first attempt at `event`, allowed `timeout`.
pub(crate) fn delivery(event: &Event, timeout: Duration) -> Delivery {
    Delivery {
        event: event.clone(),
        attempt: Attempt {
            current_retry: 0,
            max_retries: 5,
        },
        timeout,
    }
}

/// A loopback address where nothing listens.
pub(crate) fn closed_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr
}
