//! End to end through the pgevents library: a table routed with
//! `Listener::builder(url).sink(Trigger::for_table("t", <broker sink>)?)`, 1,000 inserts
//! and updates over 50 rows, and every event read back from the broker — all of them, each
//! row's in commit order, each with the exact seed payload — also when the broker restarts
//! in the middle of the flow.
//!
//! Needs PostgreSQL's server binaries (or `PGEVENTS_TEST_DATABASE_URL`) and the machine's
//! brokers: NATS with JetStream on 127.0.0.1:4222, Redis on 6379, RabbitMQ on 5672 (`.ci/run`
//! starts any that is not running), and a Kafka-protocol broker (tansu) on 9092 with the
//! Python confluent-kafka client (`scripts/start-kafka.sh`). The NATS, Redis and Kafka restart
//! tests run a server of their own from the same binaries; the RabbitMQ one restarts the
//! machine's broker application (`rabbitmqctl stop_app` / `start_app`) and always leaves it
//! running.
#![cfg(all(
    feature = "nats",
    feature = "redis",
    feature = "amqp",
    feature = "kafka"
))]

mod support;

use support::brokers::{Amqp, Nats, Redis};
use support::deliver_all;
use support::kafka::{self, Kafka};

/// The RabbitMQ restart stops the broker every AMQP test uses: it runs alone.
static RABBITMQ: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_gets_every_event_in_row_order() {
    deliver_all(&mut Nats::shared().await, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_loses_nothing_when_the_server_restarts() {
    deliver_all(&mut Nats::owned().await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gets_every_event_in_row_order() {
    deliver_all(&mut Redis::shared(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_loses_nothing_when_the_server_crashes() {
    deliver_all(&mut Redis::owned().await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_gets_every_event_in_row_order() {
    let _shared = RABBITMQ.read().await;
    deliver_all(&mut Amqp::new().await, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_loses_nothing_when_the_broker_restarts() {
    let _alone = RABBITMQ.write().await;
    deliver_all(&mut Amqp::new().await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_gets_every_event_in_row_order() {
    deliver_all(&mut Kafka::shared().await, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_loses_nothing_when_the_broker_restarts() {
    deliver_all(&mut Kafka::owned().await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_keys_partitions_headers_and_payloads_of_three_tables() {
    kafka::three_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_keeps_a_rows_1000_updates_in_one_partition_in_order() {
    kafka::one_row_in_order().await;
}
