//! The Redis sink: one `XADD` per attempt, delivered on the server's answer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pgevents_delivery::{Delivery, Outcome, Report, Sink};
use pgevents_event::Format;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::time::Instant;

use crate::connection::ConnectionSlot;
use crate::endpoint::{error_text, redact, Secrets};

/// The longest a connection attempt may take (the attempt's own timeout may be shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A resolved Redis destination.
pub(super) struct Target {
    pub(super) client: redis::Client,
    pub(super) url: url::Url,
    pub(super) secrets: Secrets,
    pub(super) stream: String,
    pub(super) maxlen: Option<u64>,
}

/// Delivers events by appending them to a Redis stream:
/// `XADD <stream> [MAXLEN ~ <maxlen>] * id <event id> payload <JSON>`.
///
/// The event is delivered when Redis answers with the new entry's id; an error, a lost
/// connection or no answer within the attempt's timeout is retried.
///
/// Holds one multiplexed connection, opened on first use and shared by every delivery (and
/// every clone) of the sink, which pipelines concurrent `XADD`s; after a failure it is
/// dropped and the next attempt connects again. Built by
/// [`ResolveSink::resolve`](crate::ResolveSink::resolve) on a
/// [`RedisConfig`](crate::RedisConfig). `Debug` and errors show the URL with its password
/// and query replaced by `***`.
#[derive(Clone)]
pub struct RedisSink {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    format: Format,
    connection: ConnectionSlot<MultiplexedConnection>,
}

impl RedisSink {
    pub(super) fn new(target: Target, format: Format) -> RedisSink {
        RedisSink {
            inner: Arc::new(Inner {
                target,
                format,
                connection: ConnectionSlot::default(),
            }),
        }
    }

    /// The server URL, with its password and query replaced by `***` (safe to log).
    pub fn endpoint(&self) -> String {
        redact(&self.inner.target.url)
    }

    /// The key of the stream events are appended to.
    pub fn stream(&self) -> &str {
        &self.inner.target.stream
    }

    /// The approximate length the stream is trimmed to, if any.
    pub fn maxlen(&self) -> Option<u64> {
        self.inner.target.maxlen
    }

    /// The payload format events are delivered in.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    fn scrubbed(&self, error: &redis::RedisError) -> String {
        self.inner.target.secrets.scrub(&error_text(error))
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        if matches!(self.inner.target.url.scheme(), "rediss" | "valkeys") {
            crate::tls::ensure_crypto_provider();
        }
        // No response timeout of the client's own: each attempt has its deadline.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        self.inner
            .target
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| {
                format!(
                    "could not connect to Redis at {}: {}",
                    self.endpoint(),
                    self.scrubbed(&e)
                )
            })
    }

    async fn append(&self, delivery: Delivery) -> Outcome {
        let deadline = Instant::now() + delivery.timeout;
        let connected =
            tokio::time::timeout_at(deadline, self.inner.connection.get(|| self.connect()));
        let shared = match connected.await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return Outcome::retry(error),
            Err(_) => {
                return Outcome::retry(format!(
                    "could not connect to Redis at {} within {:?}",
                    self.endpoint(),
                    delivery.timeout
                ))
            }
        };
        // A clone is a handle on the same connection.
        let mut connection = MultiplexedConnection::clone(&shared);
        let target = &self.inner.target;
        let event = &delivery.event;
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&target.stream);
        if let Some(maxlen) = target.maxlen {
            xadd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        xadd.arg("*")
            .arg("id")
            .arg(event.id().to_string())
            .arg("payload")
            .arg(self.inner.format.encode(event, &delivery.attempt));
        let answer = tokio::time::timeout_at(deadline, xadd.query_async::<String>(&mut connection));
        match answer.await {
            Ok(Ok(entry)) => Outcome::Delivered(Report {
                response: Some(format!("entry {entry}")),
                ..Report::default()
            }),
            Ok(Err(error)) if error.code() == Some("WRONGTYPE") => Outcome::retry(format!(
                "key {} holds a value that is not a stream; delete the key or set another stream",
                target.stream
            )),
            Ok(Err(error)) => {
                self.inner.connection.discard(&shared);
                Outcome::retry(format!(
                    "XADD to {} failed: {}",
                    target.stream,
                    self.scrubbed(&error)
                ))
            }
            Err(_) => {
                // The connection may be dead without knowing it: start afresh.
                self.inner.connection.discard(&shared);
                Outcome::retry(format!(
                    "no answer from Redis to XADD {} within {:?}",
                    target.stream, delivery.timeout
                ))
            }
        }
    }
}

impl Sink for RedisSink {
    fn deliver(&self, delivery: Delivery) -> impl std::future::Future<Output = Outcome> + Send {
        self.append(delivery)
    }
}

impl fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSink")
            .field("url", &self.endpoint())
            .field("stream", &self.inner.target.stream)
            .field("maxlen", &self.inner.target.maxlen)
            .field("format", &self.inner.format)
            .field("connected", &self.inner.connection.current().is_some())
            .finish()
    }
}
