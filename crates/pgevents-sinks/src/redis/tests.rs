//! Redis sink tests: settings, and deliveries to the Redis server on 127.0.0.1:6379.

use pgevents_delivery::{Outcome, Sink};
use pgevents_event::Format;
use pgevents_testkit::brokers::{unique, REDIS_URL, WAIT};
use pgevents_testkit::events::{delivery, event, failed_attempt};
use pgevents_testkit::net::closed_port;
use redis::AsyncCommands;

use super::{RedisConfig, RedisSink};
use crate::{Env, ResolveSink};

fn config(text: &str) -> RedisConfig {
    toml::from_str(text).expect("redis settings parse")
}

fn sink(url: &str, stream: &str, maxlen: Option<u64>, format: Format) -> RedisSink {
    let maxlen = maxlen
        .map(|n| format!("\nmaxlen = {n}"))
        .unwrap_or_default();
    config(&format!("url = {url:?}\nstream = {stream:?}{maxlen}"))
        .resolve("redis", format, &Env::default())
        .expect("valid settings")
}

async fn client() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(REDIS_URL).expect("URL");
    tokio::time::timeout(WAIT, client.get_multiplexed_async_connection())
        .await
        .expect("Redis answers in time")
        .expect("Redis runs on 127.0.0.1:6379 (see .ci/run)")
}

/// A stream's entries: (entry id, [(field, value)]).
type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// Every entry of `stream`.
async fn entries(stream: &str) -> Entries {
    let mut connection = client().await;
    let reply: Entries = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .expect("XRANGE");
    reply
}

async fn delete(key: &str) {
    let mut connection = client().await;
    let _: Result<(), _> = connection.del(key).await;
}

// ---- settings --------------------------------------------------------------------------

#[test]
fn every_problem_is_reported_with_its_path() {
    let problems: Vec<String> = config("url = \"redis://127.0.0.1\"\nstream = \"\"\nmaxlen = 0")
        .validate("trigger[1].redis", &Env::default())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        [
            "trigger[1].redis.stream: is empty; use a Redis stream key like pg:orders",
            "trigger[1].redis.maxlen: 0 is out of range; give at least 1, or remove maxlen to keep every entry",
        ]
    );
    let problems =
        config("url = \"unix:///tmp/redis.sock\"\nstream = \"s\"").validate("r", &Env::default());
    assert!(
        problems[0]
            .to_string()
            .starts_with("r.url: URL scheme \"unix\" is not supported"),
        "{problems:?}"
    );
    assert!(
        toml::from_str::<RedisConfig>("url = \"redis://x\"\nstream = \"s\"\nmaxlen = -1").is_err()
    );
}

#[test]
fn debug_and_endpoint_never_show_the_password() {
    let config = config("url = \"redis://:pa55word@127.0.0.1:6379/2\"\nstream = \"s\"");
    let sink = config
        .resolve("redis", Format::Seed, &Env::default())
        .expect("valid settings");
    for shown in [format!("{config:?}"), format!("{sink:?}"), sink.endpoint()] {
        assert!(!shown.contains("pa55word"), "{shown}");
    }
    assert_eq!(sink.endpoint(), "redis://:***@127.0.0.1:6379/2");
}

// ---- deliveries ------------------------------------------------------------------------

#[tokio::test]
async fn appends_the_event_id_and_the_exact_payload() {
    let stream = unique("pgevents:test");
    let sink = sink(REDIS_URL, &stream, None, Format::Seed);
    let first = event(1, 7, 1);
    let second = event(2, 7, 2);
    for event in [&first, &second] {
        match sink.deliver(delivery(event, WAIT)).await {
            Outcome::Delivered(report) => {
                assert!(report.response.unwrap_or_default().starts_with("entry "));
            }
            other => panic!("{other:?}"),
        }
    }
    let got = entries(&stream).await;
    assert_eq!(got.len(), 2);
    for ((_, fields), event) in got.iter().zip([&first, &second]) {
        assert_eq!(
            fields,
            &vec![
                ("id".to_string(), event.id().to_string().into_bytes()),
                ("payload".to_string(), event.payload().to_vec()),
            ]
        );
    }
    delete(&stream).await;
}

#[tokio::test]
async fn maxlen_trims_the_stream_approximately() {
    let stream = unique("pgevents:trim");
    let sink = sink(REDIS_URL, &stream, Some(10), Format::Hasura);
    let deliveries = (0..500).map(|i| {
        let sink = sink.clone();
        async move { sink.deliver(delivery(&event(i, i, i), WAIT)).await }
    });
    for outcome in futures::future::join_all(deliveries).await {
        assert!(matches!(outcome, Outcome::Delivered(_)), "{outcome:?}");
    }
    let mut connection = client().await;
    let length: u64 = connection.xlen(&stream).await.expect("XLEN");
    // `MAXLEN ~` trims whole nodes (100 entries by default), never below the limit.
    assert!((10..=110).contains(&length), "{length} entries left");
    delete(&stream).await;
}

#[tokio::test]
async fn a_key_of_another_type_is_retried_with_advice() {
    let key = unique("pgevents:string");
    let mut connection = client().await;
    let () = connection.set(&key, "not a stream").await.expect("SET");
    let sink = sink(REDIS_URL, &key, None, Format::Seed);
    match sink.deliver(delivery(&event(1, 1, 1), WAIT)).await {
        Outcome::Retry { report, .. } => {
            let error = report.error.unwrap_or_default();
            assert!(
                error.contains("holds a value that is not a stream"),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    delete(&key).await;
}

#[tokio::test]
async fn an_unreachable_server_is_retried_without_leaking_the_password() {
    let addr = closed_port();
    let sink = sink(
        &format!("redis://:pa55word@{addr}"),
        "s",
        None,
        Format::Seed,
    );
    let error = failed_attempt(&sink).await;
    assert!(
        error.starts_with("could not connect to Redis at"),
        "{error}"
    );
    assert!(!error.contains("pa55word"), "{error}");
}

#[tokio::test]
async fn a_tls_url_fails_the_attempt_instead_of_panicking() {
    let sink = sink(
        REDIS_URL.replace("redis://", "rediss://").as_str(),
        "s",
        None,
        Format::Seed,
    );
    failed_attempt(&sink).await;
}
