//! The `kafka` destination: each event is produced to a Kafka topic (Apache Kafka, Redpanda,
//! MSK, Confluent, or any broker speaking the Kafka protocol).
//!
//! The producer is idempotent with `acks=all`: an event is delivered once every in-sync
//! replica has it, and the producer's own retries neither duplicate nor reorder messages.
//! Each message carries the payload (in the trigger's format) as its value and the headers
//! `pgevents-id` (the event id: consumers dedupe on it, as a retry after a lost
//! acknowledgement produces the event again), `pgevents-trigger` and `pgevents-action`
//! (`INSERT`, `UPDATE`...).
//!
//! The key decides the partition (murmur2, as Java clients compute it). By default
//! (`key = "row"`) it is the event's ordering key as decimal text — a stable hash of the
//! trigger and the row's primary key — so a row's events stay in one partition, in commit
//! order, whatever the number of rows; `key = "table"` uses `schema.table`, `key = "none"`
//! leaves it empty.
//!
//! **The topic is not created by pgevents.** Partitions, replication and retention are the
//! operator's decisions (and the partition count fixes which keys share a partition). A
//! topic that does not exist fails the attempt (retried under the trigger's policy) with an
//! error naming it and the command that creates it; `pgevents check` reports it as well, and
//! brokers that do not answer.
//!
//! Built on librdkafka (the `rdkafka` crate, from its bundled sources): one producer per
//! sink, started on first use, batching (a 5 ms linger) and LZ4-compressing whatever is in
//! flight, reconnecting by itself. `tls = true` speaks TLS verified against the system's CA
//! certificates; `sasl` authenticates with PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, the
//! credentials read from environment variables.

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{KafkaConfig, KafkaKey, SaslConfig, SaslMechanism};
pub use sink::KafkaSink;
