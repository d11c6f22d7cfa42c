//! Kafka sink tests: settings, and deliveries to the Kafka-protocol broker on 127.0.0.1:9092
//! (tansu, started by `scripts/start-kafka.sh`), read back with the Python confluent-kafka
//! client.

use std::time::Duration;

use pgevents_delivery::{Outcome, Sink};
use pgevents_event::Format;

use super::config::{check_brokers, check_topic};
use super::{KafkaConfig, KafkaSink};
use crate::{Env, ResolveSink};
use pgevents_testkit::brokers::WAIT;
use pgevents_testkit::events::{delivery, event};
use pgevents_testkit::net::closed_port;

#[path = "../../tests/support/kafka_topic.rs"]
mod kafka_topic;

use kafka_topic::{partition_of, Topic, KAFKA_BROKERS};

/// Partitions of the test topics: enough that keys must be placed, not just stacked.
const PARTITIONS: u32 = 4;

fn config(text: &str) -> KafkaConfig {
    toml::from_str(text).expect("kafka settings parse")
}

fn sink(brokers: &str, topic: &str, extra: &str, format: Format) -> KafkaSink {
    config(&format!(
        "brokers = {brokers:?}\ntopic = {topic:?}\n{extra}"
    ))
    .resolve("kafka", format, &Env::default())
    .expect("valid settings")
}

// ---- settings --------------------------------------------------------------------------

#[test]
fn topics_and_broker_lists_must_be_usable() {
    for good in ["pg", "pg.orders", "PG_orders-2", &"t".repeat(249)] {
        assert_eq!(check_topic(good), Ok(()), "{good}");
    }
    for (bad, why) in [
        ("", "is empty"),
        ("..", "reserved"),
        ("pg orders", "contains ' '"),
        ("pg/orders", "contains '/'"),
        (&"t".repeat(250), "longer than 249"),
    ] {
        let reason = check_topic(bad).expect_err(bad);
        assert!(reason.contains(why), "{bad}: {reason}");
    }
    for good in [
        "127.0.0.1:9092",
        "a:1, b:2",
        "kafka-0.internal:9093,[::1]:9092",
    ] {
        assert_eq!(check_brokers(good), Ok(()), "{good}");
    }
    for (bad, why) in [
        (" ", "is empty"),
        ("kafka://h:9092", "scheme"),
        ("host", "no port"),
        ("h:0", "no valid port"),
        ("h:x", "no valid port"),
        (":9092", "no valid host"),
        ("a:1,,b:2", "no port"),
    ] {
        let reason = check_brokers(bad).expect_err(bad);
        assert!(reason.contains(why), "{bad}: {reason}");
    }
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let problems: Vec<String> = config(
        r#"brokers_from_env = "KAFKA_UNSET"
           sasl = { mechanism = "SCRAM-SHA-512", username_from_env = "U_UNSET", password_from_env = "P" }"#,
    )
    .validate("trigger[0].kafka", &Env::fixed([("P", "pw")]))
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        problems,
        [
            "trigger[0].kafka.brokers_from_env: environment variable KAFKA_UNSET is not set; export it or use brokers = \"host:port\"",
            "trigger[0].kafka.topic: missing; name the topic to produce to, e.g. topic = \"pg.orders\"",
            "trigger[0].kafka.sasl.username_from_env: environment variable U_UNSET is not set; export it or remove sasl if the brokers need no authentication",
        ]
    );
    let both = config("brokers = \"a:1\"\nbrokers_from_env = \"B\"\ntopic = \"t\"");
    assert_eq!(
        both.validate("k", &Env::default())[0].to_string(),
        "k.brokers_from_env: brokers and brokers_from_env are both set; keep only one of them"
    );
    let bad = config("brokers = \"a:1\"\ntopic = \"pg/orders\"");
    assert_eq!(
        bad.validate("k", &Env::default())[0].to_string(),
        "k.topic: \"pg/orders\" contains '/'; topics are letters, digits, '.', '_' and '-'; use a Kafka topic like pg.orders"
    );
    for refused in [
        "brokers = \"a:1\"\ntopic = \"t\"\npartition = 1",
        "brokers = \"a:1\"\ntopic = \"t\"\nkey = \"column\"",
        "brokers = \"a:1\"\ntopic = \"t\"\nsasl = { mechanism = \"GSSAPI\", username_from_env = \"U\", password_from_env = \"P\" }",
    ] {
        assert!(toml::from_str::<KafkaConfig>(refused).is_err(), "{refused}");
    }
}

#[test]
fn sasl_credentials_come_from_the_environment_and_never_show() {
    let env = Env::fixed([
        ("KAFKA_BROKERS", "b1:9092, b2:9092"),
        ("KAFKA_USER", "pgevents"),
        ("KAFKA_PASSWORD", "s3cret-pw"),
    ]);
    let sink = config(
        r#"brokers_from_env = "KAFKA_BROKERS"
           topic = "pg.orders"
           tls = true
           sasl = { mechanism = "SCRAM-SHA-256", username_from_env = "KAFKA_USER", password_from_env = "KAFKA_PASSWORD" }"#,
    )
    .resolve("kafka", Format::Seed, &env)
    .expect("valid settings");
    assert_eq!(sink.brokers(), "b1:9092,b2:9092");
    assert_eq!(sink.topic(), "pg.orders");
    let shown = format!("{sink:?}");
    assert!(
        shown.contains("SCRAM-SHA-256") && shown.contains("pgevents"),
        "{shown}"
    );
    assert!(!shown.contains("s3cret-pw"), "{shown}");
}

// ---- deliveries ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_the_payload_keyed_by_row_with_the_headers() {
    let topic = Topic::create(KAFKA_BROKERS, PARTITIONS).await;
    let sink = sink(KAFKA_BROKERS, &topic.name, "", Format::Seed);
    let events: Vec<_> = (1..=12).map(|row| event(row, row, 1)).collect();
    let mut reports = Vec::new();
    for e in &events {
        match sink.deliver(delivery(e, WAIT)).await {
            Outcome::Delivered(report) => reports.push(report.response.unwrap_or_default()),
            other => panic!("{other:?}"),
        }
    }
    let messages = topic.messages().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(messages.len(), events.len());
    for e in &events {
        let id = e.id().to_string();
        let m = messages
            .iter()
            .find(|m| m.header("pgevents-id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("event {id} not read back: {messages:?}"));
        let key = e.ordering_key().expect("an ordering key").to_string();
        assert_eq!(m.key.as_deref(), Some(key.as_str()));
        assert_eq!(
            m.partition,
            partition_of(key.as_bytes(), PARTITIONS),
            "{m:?}"
        );
        assert_eq!(m.value, e.payload());
        assert_eq!(m.header("pgevents-trigger"), Some("order_events"));
        assert_eq!(m.header("pgevents-action"), Some("UPDATE"));
        let response = format!(
            "topic {} partition {} offset {}",
            topic.name, m.partition, m.offset
        );
        assert!(reports.contains(&response), "{response} not in {reports:?}");
    }
    let used: std::collections::BTreeSet<i32> = messages.iter().map(|m| m.partition).collect();
    assert!(used.len() > 1, "12 rows all went to partitions {used:?}");
    topic.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_and_none_keys_and_hasura_payloads() {
    let topic = Topic::create(KAFKA_BROKERS, PARTITIONS).await;
    let by_table = sink(
        KAFKA_BROKERS,
        &topic.name,
        "key = \"table\"",
        Format::Hasura,
    );
    let unkeyed = sink(KAFKA_BROKERS, &topic.name, "key = \"none\"", Format::Seed);
    let (first, second) = (event(1, 5, 1), event(2, 6, 1));
    let hasura = delivery(&first, WAIT);
    let expected = Format::Hasura.encode(&first, &hasura.attempt);
    for (sink, d) in [(&by_table, hasura), (&unkeyed, delivery(&second, WAIT))] {
        let outcome = sink.deliver(d).await;
        assert!(matches!(outcome, Outcome::Delivered(_)), "{outcome:?}");
    }
    let messages = topic.messages().await.unwrap_or_else(|e| panic!("{e}"));
    let of = |id: String| {
        messages
            .iter()
            .find(|m| m.header("pgevents-id") == Some(id.as_str()))
            .cloned()
            .unwrap_or_else(|| panic!("event {id} not read back"))
    };
    let keyed = of(first.id().to_string());
    assert_eq!(keyed.key.as_deref(), Some("public.orders"));
    assert_eq!(keyed.partition, partition_of(b"public.orders", PARTITIONS));
    assert_eq!(keyed.value, expected);
    assert_eq!(of(second.id().to_string()).key, None);
    topic.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_retried_with_advice_and_flagged_by_check() {
    let topic = Topic::missing(KAFKA_BROKERS);
    let sink = sink(KAFKA_BROKERS, &topic.name, "", Format::Seed);
    let expected = format!("topic {} does not exist on the Kafka brokers", topic.name);
    match sink.deliver(delivery(&event(1, 1, 1), WAIT)).await {
        Outcome::Retry { report, .. } => {
            let error = report.error.unwrap_or_default();
            assert!(error.starts_with(&expected), "{error}");
            assert!(error.contains("--create --topic"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    let checked = sink.check(Duration::from_secs(10)).await;
    assert!(
        checked.as_ref().is_err_and(|e| e.starts_with(&expected)),
        "{checked:?}"
    );
    let existing = Topic::create(KAFKA_BROKERS, 1).await;
    let fine = self::sink(KAFKA_BROKERS, &existing.name, "", Format::Seed);
    assert_eq!(fine.check(Duration::from_secs(10)).await, Ok(()));
    existing.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_retried_and_flagged_by_check() {
    let brokers = closed_port().to_string();
    let sink = sink(&brokers, "pg.orders", "", Format::Seed);
    let started = std::time::Instant::now();
    match sink
        .deliver(delivery(&event(1, 1, 1), Duration::from_secs(3)))
        .await
    {
        Outcome::Retry { report, .. } => {
            let error = report.error.unwrap_or_default();
            assert!(
                error.starts_with(&format!(
                    "no acknowledgement from the Kafka brokers at {brokers} for topic pg.orders"
                )),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    let checked = sink.check(Duration::from_secs(3)).await;
    assert!(
        checked
            .as_ref()
            .is_err_and(|e| e.starts_with(&format!("no Kafka broker at {brokers} answered"))),
        "{checked:?}"
    );
    assert!(started.elapsed() < WAIT);
}
