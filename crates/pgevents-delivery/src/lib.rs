//! The delivery contract shared by the dispatcher and every destination.
//!
//! A destination implements [`Sink`]; the dispatcher waits for room at it ([`Sink::ready`]),
//! then calls it once per attempt, bounded by the trigger's [`RetryPolicy`], and turns its [`Outcome`] into the event's next state:
//! delivered, retried after a backoff, or failed.

mod retry;
mod sink;

pub use retry::{
    RetryPolicy, DEFAULT_INITIAL_INTERVAL, DEFAULT_MAX_INTERVAL, DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
};
pub use sink::{BoxFuture, Delivery, DynSink, Outcome, Report, Sink, Slot, RESPONSE_EXCERPT_BYTES};
