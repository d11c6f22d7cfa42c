//! The NATS sink: one JetStream publish per attempt, delivered on the stream's acknowledgement.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::{jetstream, ConnectOptions};
use bytes::Bytes;
use pgevents_delivery::{Delivery, Outcome, Report, Sink};
use pgevents_event::Format;
use tokio::time::Instant;

use crate::connection::ConnectionSlot;
use crate::endpoint::{error_text, redact, Secrets};

/// The longest a connection attempt may take (the attempt's own timeout may be shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The client name the server shows in its connection list.
const CLIENT_NAME: &str = concat!("pgevents/", env!("CARGO_PKG_VERSION"));

/// A resolved NATS destination.
pub(super) struct Target {
    pub(super) url: url::Url,
    pub(super) subject: String,
    pub(super) secrets: Secrets,
}

/// Delivers events by publishing their payload to a NATS JetStream subject.
///
/// Each message has the payload (in the trigger's format) as its body and the headers
/// `Nats-Msg-Id` (the event id, for the stream's deduplication) and
/// `Content-Type: application/json`. The event is delivered once JetStream acknowledges it;
/// a missing stream, a timeout or a lost connection is retried, and a payload above the
/// server's `max_payload` is rejected (retries cannot make it fit).
///
/// Holds one client, connected on first use, shared by every delivery (and every clone) of
/// the sink; the client reconnects by itself after the server goes away. Built by
/// [`ResolveSink::resolve`](crate::ResolveSink::resolve) on a
/// [`NatsConfig`](crate::NatsConfig). `Debug` and errors show the URL with its password,
/// token and query replaced by `***`.
#[derive(Clone)]
pub struct NatsSink {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    format: Format,
    context: ConnectionSlot<Context>,
}

impl NatsSink {
    pub(super) fn new(target: Target, format: Format) -> NatsSink {
        NatsSink {
            inner: Arc::new(Inner {
                target,
                format,
                context: ConnectionSlot::default(),
            }),
        }
    }

    /// The server URL, with its password, token and query replaced by `***` (safe to log).
    pub fn endpoint(&self) -> String {
        redact(&self.inner.target.url)
    }

    /// The subject events are published to.
    pub fn subject(&self) -> &str {
        &self.inner.target.subject
    }

    /// The payload format events are delivered in.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    async fn connect(&self) -> Result<Context, String> {
        if self.inner.target.url.scheme() == "tls" {
            crate::tls::ensure_crypto_provider();
        }
        let client = ConnectOptions::new()
            .name(CLIENT_NAME)
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(self.inner.target.url.as_str())
            .await
            .map_err(|e| {
                format!(
                    "could not connect to NATS at {}: {}",
                    self.endpoint(),
                    self.inner.target.secrets.scrub(&error_text(&e))
                )
            })?;
        Ok(jetstream::new(client))
    }

    async fn publish(&self, delivery: Delivery) -> Outcome {
        let deadline = Instant::now() + delivery.timeout;
        let connected =
            tokio::time::timeout_at(deadline, self.inner.context.get(|| self.connect()));
        let shared = match connected.await {
            Ok(Ok(context)) => context,
            Ok(Err(error)) => return Outcome::retry(error),
            Err(_) => {
                return Outcome::retry(format!(
                    "could not connect to NATS at {} within {:?}",
                    self.endpoint(),
                    delivery.timeout
                ))
            }
        };
        // A clone shares the connection; it only carries this attempt's timeout.
        let mut context = Context::clone(&shared);
        let remaining = deadline.saturating_duration_since(Instant::now());
        context.set_timeout(remaining.max(Duration::from_millis(1)));

        let event = &delivery.event;
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, event.id().to_string());
        headers.insert("Content-Type", "application/json");
        let payload = Bytes::from(self.inner.format.encode(event, &delivery.attempt));
        let subject = self.inner.target.subject.clone();
        let acknowledged = async {
            context
                .publish_with_headers(subject, headers, payload)
                .await?
                .await
        };
        match acknowledged.await {
            Ok(ack) => Outcome::Delivered(Report {
                response: Some(format!(
                    "stream {} sequence {}{}",
                    ack.stream,
                    ack.sequence,
                    if ack.duplicate {
                        " (a duplicate: the stream already had this event)"
                    } else {
                        ""
                    }
                )),
                ..Report::default()
            }),
            Err(error) => self.outcome_of_error(&error, delivery.timeout, &context),
        }
    }

    fn outcome_of_error(
        &self,
        error: &jetstream::context::PublishError,
        timeout: Duration,
        context: &Context,
    ) -> Outcome {
        let subject = &self.inner.target.subject;
        let text = self.inner.target.secrets.scrub(&error_text(error));
        match error.kind() {
            PublishErrorKind::StreamNotFound => Outcome::retry(format!(
                "no JetStream stream captures subject {subject}: create one, e.g. \
                 `nats stream add PGEVENTS --subjects \"{subject}\" --storage file`, \
                 or publish to a subject that a stream captures"
            )),
            PublishErrorKind::MaxPayloadExceeded => Outcome::Reject(Report::error(format!(
                "the event is too large for the NATS server ({text}); raise max_payload in \
                 the server's configuration, then redeliver the event"
            ))),
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                let state = match context.client().connection_state() {
                    State::Connected => "",
                    State::Pending | State::Disconnected => {
                        " (the connection to the server is down; the client is reconnecting)"
                    }
                };
                Outcome::retry(format!(
                    "no acknowledgement from JetStream for subject {subject} within {timeout:?}{state}"
                ))
            }
            _ => Outcome::retry(format!("publishing to {subject} failed: {text}")),
        }
    }
}

impl Sink for NatsSink {
    fn deliver(&self, delivery: Delivery) -> impl std::future::Future<Output = Outcome> + Send {
        self.publish(delivery)
    }
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("url", &self.endpoint())
            .field("subject", &self.inner.target.subject)
            .field("format", &self.inner.format)
            .field("connected", &self.inner.context.current().is_some())
            .finish()
    }
}
