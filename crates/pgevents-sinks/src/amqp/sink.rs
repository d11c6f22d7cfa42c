//! The AMQP sink: one confirmed, mandatory, persistent publish per attempt.

use std::fmt;
use std::sync::Arc;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use pgevents_delivery::{Delivery, Outcome, Report, Sink};
use pgevents_event::Format;
use tokio::time::Instant;

use crate::connection::ConnectionSlot;
use crate::endpoint::{error_text, redact, Secrets};

/// `delivery_mode` of persistent messages: written to disk by durable queues.
const PERSISTENT: u8 = 2;
/// The client name the broker shows in its connection list.
const CONNECTION_NAME: &str = concat!("pgevents/", env!("CARGO_PKG_VERSION"));

/// A resolved AMQP destination.
pub(super) struct Target {
    pub(super) url: url::Url,
    pub(super) secrets: Secrets,
    pub(super) exchange: String,
    pub(super) routing_key: String,
}

/// One connection and its confirm-mode channel.
struct Link {
    connection: Connection,
    channel: Channel,
}

impl Link {
    fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

/// Delivers events by publishing them to an AMQP 0-9-1 exchange (RabbitMQ), with publisher
/// confirms.
///
/// Each message is persistent, `mandatory`, typed `application/json`, with `message_id` =
/// the event id, `timestamp` = the capture time and `app_id` = `pgevents`. The event is
/// delivered when the broker confirms the message after routing it to at least one queue; a
/// returned (unroutable) or refused (nack) message, a missing exchange, a lost connection or
/// no confirm within the attempt's timeout is retried.
///
/// Holds one connection and channel, opened on first use and shared by every delivery (and
/// every clone) of the sink; once the broker closes either, they are dropped and the next
/// attempt opens new ones. Built by [`ResolveSink::resolve`](crate::ResolveSink::resolve) on
/// an [`AmqpConfig`](crate::AmqpConfig). `Debug` and errors show the URL with its password
/// and query replaced by `***`.
#[derive(Clone)]
pub struct AmqpSink {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    format: Format,
    link: ConnectionSlot<Link>,
}

impl AmqpSink {
    pub(super) fn new(target: Target, format: Format) -> AmqpSink {
        AmqpSink {
            inner: Arc::new(Inner {
                target,
                format,
                link: ConnectionSlot::default(),
            }),
        }
    }

    /// The broker URL, with its password and query replaced by `***` (safe to log).
    pub fn endpoint(&self) -> String {
        redact(&self.inner.target.url)
    }

    /// The exchange events are published to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        &self.inner.target.exchange
    }

    /// The routing key of every message.
    pub fn routing_key(&self) -> &str {
        &self.inner.target.routing_key
    }

    /// The payload format events are delivered in.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    fn scrubbed(&self, error: &lapin::Error) -> String {
        self.inner.target.secrets.scrub(&error_text(error))
    }

    async fn connect(&self) -> Result<Link, String> {
        let failed = |error: lapin::Error| {
            format!(
                "could not connect to the AMQP broker at {}: {}",
                self.endpoint(),
                self.scrubbed(&error)
            )
        };
        let properties =
            ConnectionProperties::default().with_connection_name(CONNECTION_NAME.into());
        let connection = Connection::connect(self.inner.target.url.as_str(), properties)
            .await
            .map_err(failed)?;
        let channel = connection.create_channel().await.map_err(failed)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(failed)?;
        Ok(Link {
            connection,
            channel,
        })
    }

    async fn publish(&self, delivery: Delivery) -> Outcome {
        let deadline = Instant::now() + delivery.timeout;
        let connected = tokio::time::timeout_at(deadline, self.inner.link.get(|| self.connect()));
        let link = match connected.await {
            Ok(Ok(link)) => link,
            Ok(Err(error)) => return Outcome::retry(error),
            Err(_) => {
                return Outcome::retry(format!(
                    "could not connect to the AMQP broker at {} within {:?}",
                    self.endpoint(),
                    delivery.timeout
                ))
            }
        };
        let target = &self.inner.target;
        let event = &delivery.event;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(event.id().to_string().into())
            .with_timestamp(u64::try_from(event.created_at().timestamp()).unwrap_or(0))
            .with_app_id("pgevents".into());
        let payload = self.inner.format.encode(event, &delivery.attempt);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmed = async {
            link.channel
                .basic_publish(
                    target.exchange.as_str().into(),
                    target.routing_key.as_str().into(),
                    options,
                    &payload,
                    properties,
                )
                .await?
                .await
        };
        // `reopen`: whether this failure calls for a new channel even if the old one still
        // looks open (a closed channel or connection is always replaced).
        let (outcome, reopen) = match tokio::time::timeout_at(deadline, confirmed).await {
            Ok(Ok(Confirmation::Ack(None))) => return Outcome::Delivered(Report::default()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => (
                Outcome::retry(format!(
                    "the broker routed the message to no queue ({} {}): bind a queue to \
                     exchange {:?} with routing key {:?}",
                    returned.reply_code, returned.reply_text, target.exchange, target.routing_key
                )),
                false,
            ),
            Ok(Ok(Confirmation::Nack(_))) => (
                Outcome::retry(format!(
                    "the broker refused the message (nack) on exchange {:?}; see the broker's log",
                    target.exchange
                )),
                false,
            ),
            Ok(Ok(Confirmation::NotRequested)) => (
                Outcome::retry("the channel was not in confirm mode; it is reopened"),
                true,
            ),
            Ok(Err(error)) => (Outcome::retry(self.describe(&error)), false),
            Err(_) => (
                Outcome::retry(format!(
                    "no confirm from the AMQP broker within {:?}",
                    delivery.timeout
                )),
                false,
            ),
        };
        if reopen || !link.is_open() {
            self.inner.link.discard(&link);
        }
        outcome
    }

    fn describe(&self, error: &lapin::Error) -> String {
        let target = &self.inner.target;
        match error.kind() {
            ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidConnectionState(..) => {
                return format!(
                    "the connection to the AMQP broker at {} was closed ({}); the next attempt \
                     reconnects",
                    self.endpoint(),
                    self.scrubbed(error)
                );
            }
            ErrorKind::ProtocolError(amqp)
                if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) =>
            {
                return format!(
                    "exchange {:?} does not exist on the broker ({}): declare it, e.g. \
                     `rabbitmqadmin declare exchange name={} type=topic durable=true`, or fix \
                     exchange in the settings",
                    target.exchange,
                    self.scrubbed(error),
                    target.exchange
                );
            }
            _ => {}
        }
        format!(
            "publishing to exchange {:?} failed: {}",
            target.exchange,
            self.scrubbed(error)
        )
    }
}

impl Sink for AmqpSink {
    fn deliver(&self, delivery: Delivery) -> impl std::future::Future<Output = Outcome> + Send {
        self.publish(delivery)
    }
}

impl fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSink")
            .field("url", &self.endpoint())
            .field("exchange", &self.inner.target.exchange)
            .field("routing_key", &self.inner.target.routing_key)
            .field("format", &self.inner.format)
            .field("connected", &self.inner.link.current().is_some())
            .finish()
    }
}
