//! Support for the end-to-end broker tests: a fresh database, a listener routing its table to
//! a broker sink, the workload, the waits (deadlines, never bare sleeps) and the checks.
//!
//! The workload: 50 rows inserted, then 19 rounds of `UPDATE t SET n = n + 1`, 1,000 events
//! in all. Each row's events must arrive in commit order (n = 0, 1, ... 19), every one of
//! them, each with exactly the payload the seed format gives; duplicates (same id) are
//! allowed, as at-least-once delivery allows them.

pub mod brokers;
pub mod kafka;
pub mod kafka_topic;
pub mod process;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgevents::{Delivery, Listener, ListenerBuilder, Outcome, RetryPolicy, Sink, Trigger};
use pgevents_testkit::background::Background;
use pgevents_testkit::db::Db;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::Client;

/// Rows in the table.
pub const ROWS: i64 = 50;
/// Events per row: one INSERT and `STEPS - 1` UPDATEs.
pub const STEPS: i64 = 20;
/// Events in all.
pub const EVENTS: usize = (ROWS * STEPS) as usize;
/// The longest a whole flow may take.
pub const WAIT: Duration = Duration::from_secs(240);
/// How often a broker is asked how far delivery got.
const POLL: Duration = Duration::from_millis(100);

/// One message as the broker holds it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The id the broker carries besides the body (`Nats-Msg-Id`, the `id` field,
    /// `message_id`).
    pub id: String,
    /// The body.
    pub payload: Vec<u8>,
}

/// A broker destination under test: makes the sink, and reads back what it received.
pub trait Broker {
    /// The sink that publishes to it.
    type Sink: Sink;

    /// Whether messages survive [`Broker::stop`]. When they do not (a broker that keeps them
    /// in memory), the restart waits until everything written before it arrived, and the
    /// broker reads what it holds before it stops.
    const KEEPS_MESSAGES: bool = true;

    /// A sink for this destination (connecting lazily).
    fn sink(&self) -> Self::Sink;

    /// How many messages the destination holds or has handed over (duplicates included).
    fn count(&mut self) -> impl Future<Output = Result<usize, String>>;

    /// Every message so far, in the broker's order.
    fn received(&mut self) -> impl Future<Output = Result<Vec<Received>, String>>;

    /// Stops the broker; returns once it refuses connections.
    fn stop(&mut self) -> impl Future<Output = ()>;

    /// Starts the stopped broker again; returns once it accepts connections.
    fn start(&mut self) -> impl Future<Output = ()>;

    /// Removes what the test created on the broker.
    fn cleanup(&mut self) -> impl Future<Output = ()>;
}

/// Retries fast and (for the test's purposes) forever: a broker restart must delay events,
/// never fail them.
fn retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_retries: 100_000,
        initial_interval: Duration::from_millis(50),
        max_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    }
}

/// The workload's table.
const TABLE_T: &str =
    "CREATE TABLE t (id int PRIMARY KEY, n bigint NOT NULL, amount numeric NOT NULL, note text)";

/// A fresh database with the tables `ddl` creates, and a connection to it.
async fn database(ddl: &str) -> (String, Arc<Client>) {
    let Db { url, client } = Db::fresh("pgevents_sinks").await;
    client.batch_execute(ddl).await.expect("create the tables");
    (url, Arc::new(client))
}

/// A listener running in the background until [`Running::stop`].
struct Running(Background<pgevents::Error>);

impl Running {
    async fn start(builder: ListenerBuilder) -> Running {
        let listener: Listener = builder.build().await.expect("build the listener");
        Running(Background::spawn(|stop| listener.run(stop)))
    }

    async fn stop(self) {
        self.0.stop(Duration::from_secs(60), "the listener").await;
    }
}

/// Writes steps `steps` of the workload: step 0 inserts the rows, each later step updates
/// every row once (one transaction per step).
async fn write(client: &Client, steps: std::ops::Range<i64>) {
    for step in steps {
        let sql = if step == 0 {
            format!(
                "INSERT INTO t SELECT g, 0, 12345678901234567890.50, 'café \"q\" ' || g \
                 FROM generate_series(1, {ROWS}) g"
            )
        } else {
            "UPDATE t SET n = n + 1".to_string()
        };
        client.batch_execute(&sql).await.expect("write a step");
    }
}

/// Row `row` as PostgreSQL's `to_json` renders it at step `n`.
fn image(row: i64, n: i64) -> String {
    format!(r#"{{"id":{row},"n":{n},"amount":12345678901234567890.50,"note":"café \"q\" {row}"}}"#)
}

/// The seed payload of row `row`'s event at step `n`, with the event's `id` and
/// `created_at` (which the test cannot know in advance).
fn expected_payload(id: &str, created_at: &str, row: i64, n: i64) -> String {
    let (action, old) = if n == 0 {
        ("INSERT", "null".to_string())
    } else {
        ("UPDATE", image(row, n - 1))
    };
    format!(
        r#"{{"id":"{id}","schema":"public","table":"t","trigger":"public.t","action":"{action}","created_at":"{created_at}","data":{{"old":{old},"new":{}}}}}"#,
        image(row, n)
    )
}

/// How many distinct event ids `received` holds.
fn distinct(received: &[Received]) -> usize {
    received
        .iter()
        .map(|r| r.id.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Polls `broker` until `done` holds for its count, or panics at `deadline`.
async fn wait_for_count<B: Broker>(
    broker: &mut B,
    deadline: Instant,
    what: &str,
    done: impl Fn(usize) -> bool,
) {
    let mut last = Err("not asked yet".to_string());
    while Instant::now() < deadline {
        last = broker.count().await;
        if last.as_ref().is_ok_and(|&n| done(n)) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("timed out waiting for {what}; the broker's last count: {last:?}");
}

/// Polls `broker` until it holds every event, or panics at `deadline`.
async fn wait_for_all<B: Broker>(broker: &mut B, deadline: Instant) -> Vec<Received> {
    let mut last = Err("not asked yet".to_string());
    while Instant::now() < deadline {
        if broker.count().await.is_ok_and(|n| n >= EVENTS) {
            last = broker.received().await;
            if last.as_ref().is_ok_and(|r| distinct(r) >= EVENTS) {
                return last.unwrap_or_default();
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let summary = last.map(|r| format!("{} messages, {} distinct events", r.len(), distinct(&r)));
    panic!("timed out waiting for all {EVENTS} events: {summary:?}");
}

/// Checks that `received` holds every event of the workload exactly as the seed format gives
/// it, each row's events in commit order.
fn check(received: &[Received]) {
    let mut first_payload: HashMap<&str, &[u8]> = HashMap::new();
    let mut steps: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for message in received {
        let text = std::str::from_utf8(&message.payload).expect("a UTF-8 payload");
        let json: serde_json::Value = serde_json::from_str(text).expect("a JSON payload");
        let id = json["id"].as_str().expect("an id");
        assert_eq!(message.id, id, "the broker's id and the payload's differ");
        if let Some(first) = first_payload.get(id) {
            assert_eq!(*first, &message.payload[..], "a duplicate of {id} differs");
            continue;
        }
        first_payload.insert(&message.id, &message.payload);
        let row = json["data"]["new"]["id"].as_i64().expect("data.new.id");
        let n = json["data"]["new"]["n"].as_i64().expect("data.new.n");
        let created_at = json["created_at"].as_str().expect("created_at");
        assert_eq!(
            text,
            expected_payload(id, created_at, row, n),
            "the payload of row {row} step {n}"
        );
        steps.entry(row).or_default().push(n);
    }
    assert_eq!(first_payload.len(), EVENTS, "every event, once");
    let in_order: Vec<i64> = (0..STEPS).collect();
    assert_eq!(steps.len(), ROWS as usize);
    for (row, seen) in steps {
        assert_eq!(seen, in_order, "row {row}'s events out of order or missing");
    }
}

/// A sink that counts the attempts its inner sink fails, to tell when deliveries have
/// started failing (the broker is down) without looking into the event log.
struct Observed<S> {
    inner: S,
    failures: Arc<Failures>,
}

#[derive(Default)]
struct Failures {
    count: AtomicUsize,
    /// The distinct errors, for the test's output.
    errors: Mutex<Vec<String>>,
    changed: Notify,
}

impl Failures {
    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until more than `before` attempts failed, or panics at `deadline`.
    async fn wait_beyond(&self, before: usize, deadline: Instant) {
        loop {
            let changed = self.changed.notified();
            if self.count() > before {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, changed).await.is_ok(),
                "no delivery failed while the broker was down"
            );
        }
    }
}

impl<S: Sink> Sink for Observed<S> {
    async fn deliver(&self, delivery: Delivery) -> Outcome {
        let outcome = self.inner.deliver(delivery).await;
        if !matches!(outcome, Outcome::Delivered(_)) {
            let error = outcome.report().error.clone().unwrap_or_default();
            if let Ok(mut errors) = self.failures.errors.lock() {
                if !errors.contains(&error) && errors.len() < 20 {
                    errors.push(error);
                }
            }
            self.failures.count.fetch_add(1, Ordering::SeqCst);
            self.failures.changed.notify_waiters();
        }
        outcome
    }
}

/// Runs the workload through a listener routing table `t` to `broker`'s sink, then checks
/// what the broker received.
///
/// With `restart`: once at least 100 events arrived, the broker stops (deliveries in flight
/// are cut off), the second half of the workload is written while it is down, and it starts
/// again once deliveries have been seen failing — so every event of the second half, and
/// whatever was in flight, can only arrive through retries and a reconnection.
pub async fn deliver_all<B: Broker>(broker: &mut B, restart: bool) {
    let deadline = Instant::now() + WAIT;
    let (url, client) = database(TABLE_T).await;
    let failures = Arc::new(Failures::default());
    let sink = Observed {
        inner: broker.sink(),
        failures: Arc::clone(&failures),
    };
    let running = Running::start(
        Listener::builder(&url)
            .retry(retry_policy())
            .sink(Trigger::for_table("t", sink).expect("a table name")),
    )
    .await;

    write(&client, 0..STEPS / 2).await;
    if restart {
        let before = if B::KEEPS_MESSAGES { 100 } else { EVENTS / 2 };
        wait_for_count(broker, deadline, "the events before the restart", |n| {
            n >= before
        })
        .await;
        let failed_before = failures.count();
        broker.stop().await;
        write(&client, STEPS / 2..STEPS).await;
        failures.wait_beyond(failed_before, deadline).await;
        broker.start().await;
    } else {
        write(&client, STEPS / 2..STEPS).await;
    }

    let received = wait_for_all(broker, deadline).await;
    running.stop().await;
    if let Ok(errors) = failures.errors.lock() {
        eprintln!(
            "{} failed attempts, retried; their errors: {errors:#?}",
            failures.count()
        );
    }
    check(&received);
    if !restart {
        assert_eq!(failures.count(), 0, "an attempt failed with the broker up");
    }
    broker.cleanup().await;
}
