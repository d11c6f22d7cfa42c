//! The Kafka sink: one idempotent produce per attempt, delivered when all in-sync replicas
//! acknowledged it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pgevents_delivery::{Delivery, Outcome, Report, Sink};
use pgevents_event::{Event, Format};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::time::Instant;

use super::config::{KafkaKey, SaslMechanism};
use crate::connection::ConnectionSlot;

/// The client id brokers show in their logs and quotas.
const CLIENT_ID: &str = concat!("pgevents/", env!("CARGO_PKG_VERSION"));
/// How long the producer waits to fill a batch: a few milliseconds of latency buy batches of
/// hundreds of events when many are being delivered (see BENCHMARKS.md).
const LINGER_MS: &str = "5";
/// Batches are compressed with LZ4: cheap on CPU, and JSON payloads shrink several times.
const COMPRESSION: &str = "lz4";
/// The largest message the producer sends (100 MiB): above it, the brokers' and the topic's
/// own limits decide, and their refusal names them.
const MAX_MESSAGE_BYTES: &str = "104857600";
/// How long a topic missing from the brokers' metadata is waited for before messages to it
/// fail: short, so that a missing topic is reported instead of an attempt timing out.
const TOPIC_PROPAGATION_MS: &str = "1000";
/// How long a message may wait in the producer for an attempt allowed `timeout`: a tenth
/// less, so that the producer gives up on it (and says so) before the attempt ends, and a
/// retry does not race a late copy.
fn queue_timeout(timeout: Duration) -> Duration {
    timeout
        .saturating_sub(timeout / 10)
        .max(Duration::from_millis(1))
}

/// The headers every message carries.
const HEADER_ID: &str = "pgevents-id";
const HEADER_TRIGGER: &str = "pgevents-trigger";
const HEADER_ACTION: &str = "pgevents-action";

/// A resolved Kafka destination.
pub(super) struct Target {
    /// `host:port,host:port`.
    pub(super) brokers: String,
    pub(super) topic: String,
    pub(super) key: KafkaKey,
    pub(super) tls: bool,
    pub(super) sasl: Option<Sasl>,
}

/// SASL credentials read from the environment.
pub(super) struct Sasl {
    pub(super) mechanism: SaslMechanism,
    pub(super) username: String,
    pub(super) password: String,
}

/// Delivers events by producing them to a Kafka topic.
///
/// Each message's value is the payload (in the trigger's format), its key is chosen by
/// [`KafkaKey`](crate::KafkaKey), and it carries the headers `pgevents-id` (the event id),
/// `pgevents-trigger` and `pgevents-action`. The producer is idempotent (`acks=all`, ordered
/// retries without duplicates within one producer session), partitions keys as Java clients
/// do (murmur2), and batches and compresses (LZ4) whatever is in flight at once. An event is
/// delivered when the brokers acknowledge it; a missing topic, an unreachable broker or a
/// timeout is retried, and a message above the topic's size limit is rejected (retries cannot
/// make it fit).
///
/// Holds one producer, started on first use and shared by every delivery (and every clone)
/// of the sink; it reconnects by itself, and is replaced after a fatal error. Built by
/// [`ResolveSink::resolve`](crate::ResolveSink::resolve) on a
/// [`KafkaConfig`](crate::KafkaConfig). `Debug` and errors never show the SASL password.
#[derive(Clone)]
pub struct KafkaSink {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    format: Format,
    producer: ConnectionSlot<FutureProducer>,
}

impl KafkaSink {
    pub(super) fn new(target: Target, format: Format) -> KafkaSink {
        KafkaSink {
            inner: Arc::new(Inner {
                target,
                format,
                producer: ConnectionSlot::default(),
            }),
        }
    }

    /// The bootstrap brokers, `host:port,host:port`.
    pub fn brokers(&self) -> &str {
        &self.inner.target.brokers
    }

    /// The topic events are produced to.
    pub fn topic(&self) -> &str {
        &self.inner.target.topic
    }

    /// The payload format events are delivered in.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    /// Asks the brokers about the topic, waiting at most `timeout`: `Ok` when they answer
    /// and the topic exists, else what is wrong and what to do (brokers unreachable, topic
    /// missing or unusable). Used by `pgevents check`; connects with a producer of its own.
    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        let producer: FutureProducer = self
            .client_config(timeout)
            .create()
            .map_err(|e| self.cannot_start(&e))?;
        let topic = self.inner.target.topic.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), timeout)
        })
        .await
        .map_err(|e| format!("asking the Kafka brokers failed: {e}"))?;
        let metadata = metadata.map_err(|e| {
            format!(
                "no Kafka broker at {} answered within {timeout:?} ({e}): start the brokers, \
                 or fix brokers{}",
                self.brokers(),
                self.security_hint()
            )
        })?;
        let topic = &self.inner.target.topic;
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        match found.map(|t| (t.error(), t.partitions().len())) {
            None => Err(self.missing_topic()),
            Some((Some(error), _)) => match RDKafkaErrorCode::from(error) {
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                    Err(self.missing_topic())
                }
                RDKafkaErrorCode::TopicAuthorizationFailed => Err(self.not_authorized()),
                code => Err(format!(
                    "the Kafka brokers at {} report topic {topic} as unusable: {code}",
                    self.brokers()
                )),
            },
            Some((None, 0)) => Err(format!(
                "topic {topic} has no partitions on the Kafka brokers at {}",
                self.brokers()
            )),
            Some((None, _)) => Ok(()),
        }
    }

    /// The producer's settings; messages time out after `timeout` in its queue.
    fn client_config(&self, timeout: Duration) -> ClientConfig {
        let target = &self.inner.target;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &target.brokers)
            .set("client.id", CLIENT_ID)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("compression.type", COMPRESSION)
            .set("linger.ms", LINGER_MS)
            .set("message.max.bytes", MAX_MESSAGE_BYTES)
            .set("allow.auto.create.topics", "false")
            .set("topic.metadata.propagation.max.ms", TOPIC_PROPAGATION_MS)
            .set(
                "message.timeout.ms",
                queue_timeout(timeout).as_millis().to_string(),
            )
            .set(
                "security.protocol",
                match (target.tls, target.sasl.is_some()) {
                    (false, false) => "plaintext",
                    (true, false) => "ssl",
                    (false, true) => "sasl_plaintext",
                    (true, true) => "sasl_ssl",
                },
            );
        if let Some(sasl) = &target.sasl {
            config
                .set("sasl.mechanism", sasl.mechanism.name())
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
        config
    }

    fn cannot_start(&self, error: &KafkaError) -> String {
        format!(
            "could not start a Kafka producer for {}: {error}",
            self.brokers()
        )
    }

    fn missing_topic(&self) -> String {
        let (brokers, topic) = (self.brokers(), &self.inner.target.topic);
        let first = brokers.split(',').next().unwrap_or(brokers);
        format!(
            "topic {topic} does not exist on the Kafka brokers at {brokers}: create it (pgevents \
             never creates topics), e.g. `kafka-topics.sh --bootstrap-server {first} --create \
             --topic {topic} --partitions 6`"
        )
    }

    fn not_authorized(&self) -> String {
        format!(
            "the Kafka brokers at {} do not allow this user to write to topic {}: grant it WRITE \
             on the topic and IDEMPOTENT_WRITE on the cluster",
            self.brokers(),
            self.inner.target.topic
        )
    }

    /// A reminder of the security settings, for errors where they may be the cause.
    fn security_hint(&self) -> &'static str {
        match (self.inner.target.tls, self.inner.target.sasl.is_some()) {
            (false, false) => " (or set tls / sasl if the brokers require them)",
            _ => " (and check tls and sasl against the brokers' listener)",
        }
    }

    /// The message key `event` gets.
    fn key(&self, event: &Event) -> Option<String> {
        match self.inner.target.key {
            KafkaKey::Row => event.ordering_key().map(|key| key.to_string()),
            KafkaKey::Table => Some(format!("{}.{}", event.schema(), event.table())),
            KafkaKey::None => None,
        }
    }

    async fn produce(&self, delivery: Delivery) -> Outcome {
        let deadline = Instant::now() + delivery.timeout;
        let started = self
            .inner
            .producer
            .get(|| async {
                self.client_config(delivery.timeout)
                    .create::<FutureProducer>()
                    .map_err(|e| self.cannot_start(&e))
            })
            .await;
        let producer = match started {
            Ok(producer) => producer,
            Err(error) => return Outcome::retry(error),
        };

        let event = &delivery.event;
        let payload = self.inner.format.encode(event, &delivery.attempt);
        let key = self.key(event);
        let id = event.id().to_string();
        let action = event.action().to_string();
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: HEADER_ID,
                value: Some(&id),
            })
            .insert(Header {
                key: HEADER_TRIGGER,
                value: Some(event.trigger()),
            })
            .insert(Header {
                key: HEADER_ACTION,
                value: Some(&action),
            });
        let topic = &self.inner.target.topic;
        let mut record = FutureRecord::to(topic).payload(&payload).headers(headers);
        if let Some(key) = &key {
            record = record.key(key);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let sent =
            tokio::time::timeout_at(deadline, producer.send(record, Timeout::After(remaining)));
        let outcome = match sent.await {
            Ok(Ok(done)) => Outcome::Delivered(Report {
                response: Some(format!(
                    "topic {topic} partition {} offset {}",
                    done.partition, done.offset
                )),
                ..Report::default()
            }),
            Ok(Err((error, _))) => self.outcome_of_error(&error, delivery.timeout, &producer),
            Err(_) => {
                self.replace(&producer);
                Outcome::retry(self.no_acknowledgement(delivery.timeout))
            }
        };
        // Ending a producer waits for its threads: never on the async runtime's.
        if let Some(last) = Arc::into_inner(producer) {
            tokio::task::spawn_blocking(move || drop(last));
        }
        outcome
    }

    /// Starts a new producer for the next attempt in place of `stuck`: after a fatal error,
    /// or when messages time out in flight, an idempotent producer must bump its epoch, which
    /// brokers that lost its state (a restart without persistent storage) never grant; a new
    /// producer gets a new id and carries on.
    fn replace(&self, stuck: &Arc<FutureProducer>) {
        self.inner.producer.discard(stuck);
    }

    fn no_acknowledgement(&self, timeout: Duration) -> String {
        format!(
            "no acknowledgement from the Kafka brokers at {} for topic {} within {timeout:?}: \
             they may be down, unreachable or overloaded",
            self.brokers(),
            self.inner.target.topic
        )
    }

    fn outcome_of_error(
        &self,
        error: &KafkaError,
        timeout: Duration,
        producer: &Arc<FutureProducer>,
    ) -> Outcome {
        if let Some((code, reason)) = producer.client().fatal_error() {
            self.replace(producer);
            return Outcome::retry(format!(
                "the Kafka producer stopped after a fatal error ({code}: {reason}); a new one is \
                 started for the next attempt"
            ));
        }
        let topic = &self.inner.target.topic;
        match error.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge,
            ) => Outcome::Reject(Report::error(format!(
                "the event is too large for topic {topic} ({error}); raise max.message.bytes on \
                 the topic (and message.max.bytes on the brokers), then redeliver the event"
            ))),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Outcome::retry(self.missing_topic())
            }
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed,
            ) => Outcome::retry(self.not_authorized()),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                Outcome::retry(format!(
                    "the Kafka brokers at {} refused the SASL credentials ({error}): check the \
                     variables named by sasl.username_from_env and sasl.password_from_env, and \
                     sasl.mechanism",
                    self.brokers()
                ))
            }
            Some(RDKafkaErrorCode::MessageTimedOut) => {
                self.replace(producer);
                Outcome::retry(self.no_acknowledgement(timeout))
            }
            _ => Outcome::retry(format!("producing to topic {topic} failed: {error}")),
        }
    }
}

impl Sink for KafkaSink {
    fn deliver(&self, delivery: Delivery) -> impl std::future::Future<Output = Outcome> + Send {
        self.produce(delivery)
    }
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.inner.target;
        f.debug_struct("KafkaSink")
            .field("brokers", &target.brokers)
            .field("topic", &target.topic)
            .field("key", &target.key)
            .field("tls", &target.tls)
            .field(
                "sasl",
                &target
                    .sasl
                    .as_ref()
                    .map(|s| (s.mechanism.name(), s.username.as_str(), "***")),
            )
            .field("format", &self.inner.format)
            .field("started", &self.inner.producer.current().is_some())
            .finish()
    }
}
