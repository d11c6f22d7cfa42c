//! The `amqp` destination: each event is published to a RabbitMQ (AMQP 0-9-1) exchange.
//!
//! Messages are persistent (`delivery_mode` 2), typed `application/json`, with `message_id`
//! = the event's id (consumers dedupe on it) and `timestamp` = the capture time. The channel
//! is in publisher-confirm mode and every publish is `mandatory`: an event is delivered only
//! when the broker confirms it *and* routed it to at least one queue. A message no queue
//! takes (no binding matches the routing key) comes back from the broker; that attempt fails
//! with the exchange and routing key named, and is retried, so a missing binding loses
//! nothing.
//!
//! **The exchange is not declared by pgevents.** Its type and durability, and the queues
//! bound to it, are the application's topology; declaring it with guessed settings would
//! clash with the real declaration or route events nowhere. Publishing to an exchange that
//! does not exist fails the attempt (retried under the trigger's policy) with an error naming
//! it and saying how to declare it. `exchange = ""` is the default exchange, which routes to
//! the queue named by `routing_key`.
//!
//! One connection and one confirm-mode channel per sink, opened on first use and shared by
//! every delivery: publishes are pipelined, each awaiting its own confirm (the broker confirms
//! many at once). After a failure that closes the channel or the connection (the broker
//! restarting, an unknown exchange), both are dropped and the next attempt opens new ones.

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::AmqpConfig;
pub use sink::AmqpSink;
