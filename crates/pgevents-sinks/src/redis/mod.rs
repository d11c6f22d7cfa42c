//! The `redis` destination: each event is appended to a Redis stream with `XADD`.
//!
//! An entry has two fields: `id`, the event's id (consumers dedupe on it: Redis streams do
//! not), and `payload`, the JSON body in the trigger's format. The event is delivered when
//! Redis answers the `XADD` with the new entry's id. With `maxlen`, each `XADD` trims the
//! stream to about that many entries (`MAXLEN ~`, which Redis does cheaply, a whole node at
//! a time).
//!
//! The stream needs no setup: `XADD` creates it. Durability is the server's: an acknowledged
//! entry survives a Redis restart only with persistence on (`appendonly yes`).
//!
//! One connection per sink, opened on first use; concurrent deliveries are pipelined over it
//! (Redis answers in order, so many `XADD`s travel in one round trip). After any failure the
//! connection is dropped and the next attempt opens a new one.

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::RedisConfig;
pub use sink::RedisSink;
