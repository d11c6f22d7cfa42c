//! The `nats` destination: each event is published to a NATS JetStream subject.
//!
//! An event is delivered when JetStream acknowledges it, that is once the stream that
//! captures the subject has stored it. Every message carries the header `Nats-Msg-Id` = the
//! event's id, so a retry that reaches the stream within its duplicate window (2 minutes by
//! default) is dropped by the server; consumers dedupe on the id beyond that.
//!
//! **The stream is not created by pgevents.** Its retention, storage, limits and replicas are
//! decisions for whoever operates the server, and a stream made with guessed defaults can
//! drop or pile up events unnoticed. Publishing to a subject that no stream captures fails
//! the attempt (it is retried under the trigger's policy) with an error naming the subject
//! and the command that creates a stream for it:
//! `nats stream add PGEVENTS --subjects "pg.>" --storage file`.
//!
//! One client per sink, connected on first use. The client reconnects by itself when the
//! server goes away; attempts made meanwhile fail with a timeout and are retried, and the
//! server drops the copies of those that did arrive. Deliveries are pipelined over the one
//! connection: many publishes are in flight at once, each awaiting its own acknowledgement.

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::NatsConfig;
pub use sink::NatsSink;
