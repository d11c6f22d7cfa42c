//! Kafka throughput: a backlog of events drained into a topic on a Kafka-protocol broker on
//! loopback (tansu, started by `scripts/start-kafka.sh`), through `KafkaSink` with its
//! default settings (idempotent, `acks=all`, keyed by row, LZ4 batches).
//!
//! Each run empties the table, creates a fresh 6-partition topic, inserts `N` rows (in
//! 10,000-row transactions) while no listener runs, then starts a listener and runs the
//! clock until the broker acknowledged the N-th event. Every row is its own key, so the
//! events spread over all partitions. Not part of `all`: it needs the broker.

use std::time::Duration;

use anyhow::Context;
use pgevents::{Delivery, Outcome, Sink};
use pgevents_sinks::{Env, KafkaConfig, KafkaSink, ResolveSink};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::cluster::{Bench, TABLE};
use crate::listening::{drain_rate, Counter};
use crate::report::{Goal, Report, Unit};

const SECTION: &str = "Kafka — commit to broker acknowledgement";
/// The target of the Kafka sink issue, events/s.
const TARGET: f64 = 20_000.0;
/// Partitions of each run's topic.
const PARTITIONS: i32 = 6;
/// Rows per transaction of the backlog insert.
const BACKLOG_CHUNK: u64 = 10_000;
/// How long creating a topic may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The Kafka sink, counting what the broker acknowledged.
struct Counted {
    sink: KafkaSink,
    counter: Counter,
}

impl Sink for Counted {
    async fn deliver(&self, delivery: Delivery) -> Outcome {
        let outcome = self.sink.deliver(delivery).await;
        if matches!(outcome, Outcome::Delivered(_)) {
            self.counter.hit();
        }
        outcome
    }
}

/// Creates a topic of `PARTITIONS` partitions named after the run and the attempt (a
/// disturbed measurement is made again, on a topic of its own).
async fn create_topic(brokers: &str, run: u32) -> anyhow::Result<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("pgevents.bench.{}.{run}.{nanos}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("starting a Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let topic = NewTopic::new(&name, PARTITIONS, TopicReplication::Fixed(1));
    let created = tokio::time::timeout(ADMIN_TIMEOUT, admin.create_topics(&[topic], &options))
        .await
        .with_context(|| {
            format!("no Kafka broker at {brokers} answered; run scripts/start-kafka.sh")
        })?
        .with_context(|| format!("creating topic {name} on {brokers}"))?;
    for result in created {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating topic {topic}: {code}"))?;
    }
    Ok(name)
}

/// One backlog drain of `n` events to a fresh topic: returns events/s.
async fn backlog(bench: &Bench, brokers: &str, n: u64, run: u32) -> anyhow::Result<f64> {
    bench.reset(0).await?;
    let topic = create_topic(brokers, run).await?;
    let sink = KafkaConfig {
        brokers: Some(brokers.to_string()),
        topic: Some(topic),
        ..KafkaConfig::default()
    }
    .resolve("bench.kafka", pgevents::Format::Seed, &Env::default())
    .context("building the Kafka sink")?;
    let counter = Counter::new();
    let listener = pgevents::Listener::builder(&bench.listener_url)
        .sink(pgevents::Trigger::for_table(
            TABLE,
            Counted {
                sink,
                counter: counter.clone(),
            },
        )?)
        .drain_timeout(Duration::from_secs(5))
        .build()
        .await
        .context("building the Kafka listener")?;
    bench.insert_rows(n, BACKLOG_CHUNK).await?;
    drain_rate(listener, &counter, n).await
}

/// Measures the backlog drain to the broker at `brokers` `runs` times; adds the figures.
pub async fn run(bench: &Bench, report: &mut Report, brokers: &str) -> anyhow::Result<()> {
    let n = bench.sizes.webhook_backlog;
    let mut rates = Vec::new();
    for run in 1..=bench.sizes.runs {
        eprintln!("kafka: backlog of {n} events → {brokers}, run {run}");
        let rate = bench.measured(|| backlog(bench, brokers, n, run)).await?;
        eprintln!("    {rate:.0} events/s");
        rates.push(rate);
    }
    let worst = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let median = report.row(
        SECTION,
        format!("backlog of {n} events → Kafka topic ({PARTITIONS} partitions, tansu on loopback), KafkaSink defaults"),
        Unit::PerSec,
        rates,
        format!("worst run {worst:.0} /s"),
    );
    report.check(
        format!("throughput to Kafka ≥ 20,000 events/s (backlog of {n})"),
        median,
        Unit::PerSec,
        Goal::AtLeast(TARGET),
    );
    Ok(())
}
