//! AMQP sink tests: settings, and deliveries to the RabbitMQ broker on 127.0.0.1:5672.

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use pgevents_delivery::{Outcome, Sink};
use pgevents_event::Format;
use pgevents_testkit::brokers::{unique, AMQP_URL, WAIT};
use pgevents_testkit::events::{delivery, event, failed_attempt, retry_error};
use pgevents_testkit::net::closed_port;

use super::{AmqpConfig, AmqpSink};
use crate::{Env, ResolveSink};

fn config(text: &str) -> AmqpConfig {
    toml::from_str(text).expect("amqp settings parse")
}

fn sink(url: &str, exchange: &str, routing_key: &str) -> AmqpSink {
    config(&format!(
        "url = {url:?}\nexchange = {exchange:?}\nrouting_key = {routing_key:?}"
    ))
    .resolve("amqp", Format::Seed, &Env::default())
    .expect("valid settings")
}

/// A connection of the test's own, to set up and inspect the broker.
struct Broker {
    _connection: Connection,
    channel: Channel,
}

impl Broker {
    async fn connect() -> Broker {
        let connection = tokio::time::timeout(
            WAIT,
            Connection::connect(AMQP_URL, ConnectionProperties::default()),
        )
        .await
        .expect("RabbitMQ answers in time")
        .expect("RabbitMQ runs on 127.0.0.1:5672 (see .ci/run)");
        let channel = connection.create_channel().await.expect("channel");
        Broker {
            _connection: connection,
            channel,
        }
    }

    async fn exchange(&self, name: &str) {
        self.channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare the exchange");
    }

    /// A queue of this connection's own, bound to `exchange` with `routing_key`.
    async fn queue(&self, exchange: &str, routing_key: &str) -> String {
        let queue = unique("pgevents_test_queue");
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the queue");
        self.channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the queue");
        queue
    }

    async fn get(&self, queue: &str) -> lapin::message::BasicGetMessage {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .expect("a message in the queue")
    }

    /// Binds a queue of its own to `exchange` with `routing_key`, checks that `sink` delivers a
    /// new event to it, and deletes the exchange.
    async fn delivers_once_bound(&self, sink: &AmqpSink, exchange: &str, routing_key: &str) {
        let queue = self.queue(exchange, routing_key).await;
        let event = event(2, 1, 2);
        let outcome = sink.deliver(delivery(&event, WAIT)).await;
        assert!(matches!(outcome, Outcome::Delivered(_)), "{outcome:?}");
        assert_eq!(self.get(&queue).await.delivery.data, event.payload());
        self.delete_exchange(exchange).await;
    }

    async fn delete_exchange(&self, name: &str) {
        let _ = self
            .channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await;
    }
}

// ---- settings --------------------------------------------------------------------------

#[test]
fn every_problem_is_reported_with_its_path() {
    let long = "x".repeat(256);
    let problems: Vec<String> = config(&format!(
        "url = \"amqp://h/?heartbeat=soon\"\nexchange = {long:?}\nrouting_key = \"a\\nb\""
    ))
    .validate("trigger[3].amqp", &Env::default())
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].starts_with("trigger[3].amqp.url: not a valid URL"),
        "{problems:?}"
    );
    assert_eq!(
        problems[1],
        "trigger[3].amqp.exchange: is 256 bytes long, over AMQP's 255; use an AMQP exchange name like pg"
    );
    assert!(problems[2].starts_with("trigger[3].amqp.routing_key: \"a\\nb\" contains control"));
    // The default exchange needs a queue name as routing key; other exchanges may omit it.
    assert!(!config("url = \"amqp://h\"\nexchange = \"\"")
        .validate("a", &Env::default())
        .is_empty());
    let fanout = config("url = \"amqp://h\"\nexchange = \"pg\"")
        .resolve("a", Format::Seed, &Env::default())
        .expect("valid settings");
    assert_eq!(fanout.routing_key(), "");
}

#[test]
fn debug_and_endpoint_never_show_the_password() {
    let config = config("url = \"amqp://app:pa55@127.0.0.1:5672/%2f\"\nexchange = \"pg\"");
    let sink = config
        .resolve("amqp", Format::Seed, &Env::default())
        .expect("valid settings");
    for shown in [format!("{config:?}"), format!("{sink:?}"), sink.endpoint()] {
        assert!(!shown.contains("pa55"), "{shown}");
    }
    assert_eq!(sink.endpoint(), "amqp://app:***@127.0.0.1:5672/%2f");
}

// ---- deliveries ------------------------------------------------------------------------

#[tokio::test]
async fn publishes_a_persistent_json_message_with_the_event_id() {
    let broker = Broker::connect().await;
    let exchange = unique("pgevents_test");
    broker.exchange(&exchange).await;
    let queue = broker.queue(&exchange, "orders").await;
    let sink = sink(AMQP_URL, &exchange, "orders");
    let event = event(42, 7, 3);

    let outcome = sink.deliver(delivery(&event, WAIT)).await;
    assert!(matches!(outcome, Outcome::Delivered(_)), "{outcome:?}");

    let message = broker.get(&queue).await;
    let delivered = &message.delivery;
    assert_eq!(delivered.data, event.payload());
    assert_eq!(delivered.routing_key.as_str(), "orders");
    let properties = &delivered.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        Some(event.id().to_string().as_str())
    );
    assert_eq!(*properties.delivery_mode(), Some(2));
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        *properties.timestamp(),
        Some(u64::try_from(event.created_at().timestamp()).expect("after 1970"))
    );
    broker.delete_exchange(&exchange).await;
}

#[tokio::test]
async fn an_unroutable_message_is_retried_not_lost() {
    let broker = Broker::connect().await;
    let exchange = unique("pgevents_test");
    broker.exchange(&exchange).await;
    let sink = sink(AMQP_URL, &exchange, "nobody");
    let error = retry_error(sink.deliver(delivery(&event(1, 1, 1), WAIT)).await);
    assert!(
        error.contains("routed the message to no queue (312 NO_ROUTE)"),
        "{error}"
    );
    assert!(error.contains("routing key \"nobody\""), "{error}");
    // Once a queue is bound, the same sink delivers.
    broker.delivers_once_bound(&sink, &exchange, "nobody").await;
}

#[tokio::test]
async fn a_missing_exchange_is_retried_with_advice_and_the_sink_recovers() {
    let broker = Broker::connect().await;
    let exchange = unique("pgevents_missing");
    let sink = sink(AMQP_URL, &exchange, "orders");
    for _ in 0..2 {
        let error = retry_error(sink.deliver(delivery(&event(1, 1, 1), WAIT)).await);
        assert!(
            error.starts_with(&format!("exchange {exchange:?} does not exist")),
            "{error}"
        );
        assert!(error.contains("rabbitmqadmin declare exchange"), "{error}");
    }
    // The broker closed the sink's channel; once the exchange exists, the sink reopens it.
    broker.exchange(&exchange).await;
    broker.delivers_once_bound(&sink, &exchange, "orders").await;
}

#[tokio::test]
async fn an_unreachable_broker_is_retried_without_leaking_the_password() {
    let addr = closed_port();
    let sink = sink(&format!("amqp://app:pa55word@{addr}/%2f"), "pg", "orders");
    let error = failed_attempt(&sink).await;
    assert!(
        error.starts_with("could not connect to the AMQP broker at amqp://app:***@"),
        "{error}"
    );
    assert!(!error.contains("pa55word"), "{error}");
}

#[tokio::test]
async fn a_tls_url_fails_the_attempt_instead_of_panicking() {
    let sink = sink("amqps://guest:guest@127.0.0.1:5672/%2f", "pg", "orders");
    failed_attempt(&sink).await;
}
