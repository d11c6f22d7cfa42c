//! The brokers the tests talk to (the machine's own services, see `.ci/run`), and names of a
//! test's own on them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a test waits for a broker before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// NATS with JetStream.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
/// Redis.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// RabbitMQ, as its default user on the default virtual host.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A name no other test (or test run) uses: `{prefix}_{pid}_{n}_{nanos}`.
pub fn unique(prefix: &str) -> String {
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
