//! pgevents destinations: where a trigger's events go once they are committed and logged.
//!
//! Every destination is a folder of the same shape behind a cargo feature (all on by default):
//! `config.rs` holds the plain-data, `serde` settings of one `[[trigger]]` destination key,
//! `sink.rs` the runtime [`pgevents_delivery::Sink`] those settings resolve into, and `tests.rs`
//! its tests. Settings become a sink in one step, [`ResolveSink::resolve`], which reads the
//! `*_from_env` variables from an [`Env`] and reports problems as a [`SinkConfigError`] that
//! names the field path; [`ResolveSink::validate`] runs the same checks and returns all of them.
//!
//! | key | feature | sink |
//! |---|---|---|
//! | `webhook` | `webhook` | [`WebhookSink`]: HTTP `POST`, optionally signed (Standard Webhooks) |
//! | `nats` | `nats` | [`NatsSink`]: JetStream publish, `Nats-Msg-Id` = event id, delivered on the stream's ack |
//! | `redis` | `redis` | [`RedisSink`]: `XADD` to a stream (fields `id`, `payload`), optionally `MAXLEN ~` |
//! | `amqp` | `amqp` | [`AmqpSink`]: persistent, mandatory publish to an exchange, delivered on the broker's confirm |
//! | `kafka` | `kafka` | [`KafkaSink`]: idempotent produce to a topic, keyed by row, delivered on `acks=all` |
//! | `stdout` | `stdout` | [`StdoutSink`]: one JSON line per event on standard output |
//!
//! Broker sinks keep one connection each, opened on the first delivery (building a sink never
//! connects) and shared by all deliveries, which pipeline over it; after a failure the next
//! attempt reconnects. An event counts as delivered only on the broker's acknowledgement;
//! every failure is an [`Outcome::Retry`](pgevents_delivery::Outcome::Retry) under the trigger's
//! retry policy, so a broker that goes away delays events but loses none. Streams, topics and
//! exchanges are never created by pgevents: see each sink for why, and for the error that
//! says how to create them.
//!
//! The library routes a table to any of these sinks as it does to a handler:
//!
//! ```no_run
//! # #[cfg(feature = "nats")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use pgevents::{Format, Listener, Trigger};
//! use pgevents_sinks::{Env, NatsConfig, ResolveSink};
//!
//! let nats = NatsConfig {
//!     url: Some("nats://127.0.0.1:4222".into()),
//!     subject: Some("pg.orders".into()),
//!     ..NatsConfig::default()
//! }
//! .resolve("nats", Format::Seed, &Env::default())?; // checks the settings; connects later
//! let listener = Listener::builder("postgres://app@localhost/shop")
//!     .sink(Trigger::for_table("orders", nats)?)
//!     .build()
//!     .await?;
//! listener.run(tokio::signal::ctrl_c()).await?;
//! # Ok(()) }
//! ```
//!
//! ```
//! # #[cfg(feature = "webhook")] {
//! use pgevents_sinks::{Env, ResolveSink, WebhookConfig};
//!
//! let config: WebhookConfig = toml::from_str(r#"url_from_env = "ORDERS_HOOK""#).unwrap();
//! let env = Env::fixed([("ORDERS_HOOK", "https://example.com/hooks/orders")]);
//! assert!(config.validate("trigger[0].webhook", &env).is_empty());
//!
//! let problems = config.validate("trigger[0].webhook", &Env::fixed::<_, &str, &str>([]));
//! assert_eq!(
//!     problems[0].to_string(),
//!     "trigger[0].webhook.url_from_env: environment variable ORDERS_HOOK is not set; \
//!      export it or use url = \"...\""
//! );
//! # }
//! ```

#[cfg(feature = "amqp")]
mod amqp;
#[cfg(any(
    feature = "nats",
    feature = "redis",
    feature = "amqp",
    feature = "kafka"
))]
mod connection;
#[cfg(any(
    feature = "webhook",
    feature = "nats",
    feature = "redis",
    feature = "amqp"
))]
mod endpoint;
mod env;
mod error;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "stdout")]
mod stdout;
#[cfg(any(feature = "nats", feature = "redis"))]
mod tls;
#[cfg(feature = "webhook")]
mod webhook;

#[cfg(feature = "amqp")]
pub use amqp::{AmqpConfig, AmqpSink};
pub use env::Env;
pub use error::{SinkConfigError, SinkConfigErrorKind};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaConfig, KafkaKey, KafkaSink, SaslConfig, SaslMechanism};
#[cfg(feature = "nats")]
pub use nats::{NatsConfig, NatsSink};
#[cfg(feature = "redis")]
pub use redis::{RedisConfig, RedisSink};
#[cfg(feature = "stdout")]
pub use stdout::{StdoutConfig, StdoutSink};
#[cfg(feature = "webhook")]
pub use webhook::{HeaderValueConfig, WebhookConfig, WebhookSink};

use pgevents_delivery::Sink;
use pgevents_event::Format;

/// Destination settings that turn into a runtime sink: implemented by every `*Config` here.
///
/// `path` is the settings' place in the config file (e.g. `trigger["order_events"].webhook`);
/// every error names a field below it, so the user knows exactly what to fix.
pub trait ResolveSink {
    /// The sink these settings build.
    type Sink: Sink;

    /// Every problem with the settings: missing environment variables, malformed URLs, bad
    /// header names... Empty when [`ResolveSink::resolve`] would succeed (bar starting an
    /// HTTP client).
    fn validate(&self, path: &str, env: &Env) -> Vec<SinkConfigError>;

    /// Builds the sink, delivering payloads in `format`, reading secrets from `env`; fails
    /// with the first problem [`ResolveSink::validate`] would report.
    fn resolve(&self, path: &str, format: Format, env: &Env)
        -> Result<Self::Sink, SinkConfigError>;
}

/// The path of `field` below `prefix`: `prefix.field`, or `field` alone when `prefix` is empty.
pub fn join_path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}
