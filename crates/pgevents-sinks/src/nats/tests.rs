//! NATS sink tests: settings, and deliveries to the JetStream server on 127.0.0.1:4222.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use pgevents_delivery::{Outcome, Sink};
use pgevents_event::Format;

use super::config::check_subject;
use super::{NatsConfig, NatsSink};
use crate::{Env, ResolveSink};
use pgevents_testkit::brokers::{unique, NATS_URL, WAIT};
use pgevents_testkit::events::{delivery, event};
use pgevents_testkit::net::closed_port;

fn config(text: &str) -> NatsConfig {
    toml::from_str(text).expect("nats settings parse")
}

fn sink(url: &str, subject: &str, format: Format) -> NatsSink {
    config(&format!("url = {url:?}\nsubject = {subject:?}"))
        .resolve("nats", format, &Env::default())
        .expect("valid settings")
}

/// A JetStream context on the test server, and a fresh memory stream capturing `subject`.
struct TestStream {
    context: jetstream::Context,
    name: String,
}

impl TestStream {
    async fn create(subject: &str) -> TestStream {
        let client = tokio::time::timeout(WAIT, async_nats::connect(NATS_URL))
            .await
            .expect("NATS answers in time")
            .expect("NATS with JetStream runs on 127.0.0.1:4222 (see .ci/run)");
        let context = jetstream::new(client);
        let name = unique("PGEVENTS_TEST").to_uppercase();
        context
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.to_string()],
                storage: stream::StorageType::Memory,
                ..stream::Config::default()
            })
            .await
            .expect("create the test stream");
        TestStream { context, name }
    }

    async fn message(&self, sequence: u64) -> async_nats::jetstream::message::StreamMessage {
        let stream = self
            .context
            .get_stream(&self.name)
            .await
            .expect("the test stream");
        stream
            .get_raw_message(sequence)
            .await
            .expect("the stored message")
    }

    async fn count(&self) -> u64 {
        let mut stream = self
            .context
            .get_stream(&self.name)
            .await
            .expect("the test stream");
        stream.info().await.expect("stream info").state.messages
    }

    async fn delete(self) {
        let _ = self.context.delete_stream(&self.name).await;
    }
}

// ---- settings --------------------------------------------------------------------------

#[test]
fn subjects_must_be_publishable() {
    for good in ["pg", "pg.orders", "pg.public.orders-2", "a*b.c>d"] {
        assert_eq!(check_subject(good), Ok(()), "{good}");
    }
    for (bad, why) in [
        ("", "is empty"),
        ("pg orders", "whitespace"),
        ("pg.*", "wildcard \"*\""),
        ("pg.>", "wildcard \">\""),
        (".pg", "empty token"),
        ("pg..orders", "empty token"),
        ("pg.", "empty token"),
    ] {
        let reason = check_subject(bad).expect_err(bad);
        assert!(reason.contains(why), "{bad}: {reason}");
    }
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let problems: Vec<String> = config(r#"url_from_env = "NATS_URL_UNSET""#)
        .validate("trigger[0].nats", &Env::fixed::<_, &str, &str>([]))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        [
            "trigger[0].nats.url_from_env: environment variable NATS_URL_UNSET is not set; export it or use url = \"...\"",
            "trigger[0].nats.subject: missing; name the subject to publish to, e.g. subject = \"pg.orders\"",
        ]
    );
    let problems = config("url = \"nats://x\"\nsubject = \"pg.*\"").validate("n", &Env::default());
    assert_eq!(
        problems[0].to_string(),
        "n.subject: \"pg.*\" contains the wildcard \"*\", and messages cannot be published to a wildcard; use a NATS subject like pg.orders"
    );
    assert!(toml::from_str::<NatsConfig>("url = \"nats://x\"\nstream = \"S\"").is_err());
}

#[test]
fn debug_and_endpoint_never_show_credentials() {
    let config = config("url = \"nats://user:pa55@127.0.0.1:4222\"\nsubject = \"pg\"");
    let sink = config
        .resolve("nats", Format::Seed, &Env::default())
        .expect("valid settings");
    for shown in [format!("{config:?}"), format!("{sink:?}"), sink.endpoint()] {
        assert!(!shown.contains("pa55"), "{shown}");
    }
    assert_eq!(sink.endpoint(), "nats://user:***@127.0.0.1:4222");
    let token = sink_token();
    assert_eq!(token.endpoint(), "nats://***@127.0.0.1:4222");
}

fn sink_token() -> NatsSink {
    sink("nats://s3cret@127.0.0.1:4222", "pg", Format::Seed)
}

// ---- deliveries ------------------------------------------------------------------------

#[tokio::test]
async fn publishes_the_exact_payload_with_the_event_id_as_message_id() {
    let subject = unique("pgevents.test");
    let stream = TestStream::create(&subject).await;
    let sink = sink(NATS_URL, &subject, Format::Seed);
    let event = event(42, 7, 3);

    let outcome = sink.deliver(delivery(&event, WAIT)).await;
    let Outcome::Delivered(report) = outcome else {
        panic!("{outcome:?}");
    };
    let response = report.response.unwrap_or_default();
    assert!(
        response.starts_with(&format!("stream {} sequence 1", stream.name)),
        "{response}"
    );

    let message = stream.message(1).await;
    assert_eq!(message.payload.as_ref(), event.payload());
    let header = |name: &str| {
        message
            .headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    assert_eq!(header("Nats-Msg-Id"), event.id().to_string());
    assert_eq!(header("Content-Type"), "application/json");

    // A retry of the same event is dropped by the server as a duplicate.
    let again = sink.deliver(delivery(&event, WAIT)).await;
    match again {
        Outcome::Delivered(report) => assert!(
            report.response.unwrap_or_default().contains("duplicate"),
            "the server did not dedupe"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(stream.count().await, 1);
    stream.delete().await;
}

#[tokio::test]
async fn hasura_payloads_are_published_as_encoded() {
    let subject = unique("pgevents.test");
    let stream = TestStream::create(&subject).await;
    let sink = sink(NATS_URL, &subject, Format::Hasura);
    let event = event(43, 8, 1);
    let delivery = delivery(&event, WAIT);
    let expected = Format::Hasura.encode(&event, &delivery.attempt);
    assert!(matches!(
        sink.deliver(delivery).await,
        Outcome::Delivered(_)
    ));
    assert_eq!(stream.message(1).await.payload.as_ref(), &expected[..]);
    stream.delete().await;
}

#[tokio::test]
async fn a_subject_no_stream_captures_is_retried_with_advice() {
    let subject = unique("pgevents.nostream");
    let sink = sink(NATS_URL, &subject, Format::Seed);
    match sink.deliver(delivery(&event(1, 1, 1), WAIT)).await {
        Outcome::Retry { report, .. } => {
            let error = report.error.unwrap_or_default();
            assert!(
                error.starts_with(&format!("no JetStream stream captures subject {subject}")),
                "{error}"
            );
            assert!(error.contains("nats stream add"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_server_is_retried_without_leaking_the_token() {
    let addr = closed_port();
    let sink = sink(&format!("nats://t0ken-s3cret@{addr}"), "pg", Format::Seed);
    let started = std::time::Instant::now();
    for _ in 0..2 {
        match sink
            .deliver(delivery(&event(1, 1, 1), Duration::from_secs(5)))
            .await
        {
            Outcome::Retry { report, .. } => {
                let error = report.error.unwrap_or_default();
                assert!(error.starts_with("could not connect to NATS at"), "{error}");
                assert!(!error.contains("t0ken-s3cret"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(started.elapsed() < WAIT);
}

#[tokio::test]
async fn a_tls_url_fails_the_attempt_instead_of_panicking() {
    // The machine's server speaks no TLS; what matters is a clean, retriable failure (the
    // process may link several rustls crypto providers).
    let sink = sink(
        NATS_URL.replace("nats://", "tls://").as_str(),
        "pg",
        Format::Seed,
    );
    let outcome = sink
        .deliver(delivery(&event(1, 1, 1), Duration::from_secs(5)))
        .await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
}
