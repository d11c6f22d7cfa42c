//! Dispatch: from the event log to the sinks.
//!
//! A [`Dispatcher`] moves captured rows into the log, claims due events under a lease,
//! delivers each to its trigger's sink (concurrently, bounded), and settles outcomes in
//! batches: delivered, retried after an exponential backoff, or failed after `max_retries`.
//! Progress is only recorded after a sink has accepted an event, so a crash at any point
//! loses nothing: unsettled events come back when their lease ends.
//!
//! It learns of new events within milliseconds through a notification, but never depends on
//! one: it looks at the log after start, after every reconnect and on a timer.
//!
//! Beside delivery, it writes the chunks of running backfills ([`backfill`]).
//!
//! It reports how it fares through a [`Health`] handle and the metrics of [`telemetry`].

pub mod backfill;
mod breaker;
mod deliver;
mod dispatcher;
mod health;
mod inline;
pub mod telemetry;
mod wake;

pub use dispatcher::{Dispatcher, Options, Route};
pub use health::Health;
pub use pgevents_delivery::{Delivery, DynSink, Outcome, Report, RetryPolicy, Sink};
