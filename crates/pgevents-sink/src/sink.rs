//! The sink contract: where a claimed event goes, and what its delivery attempt decided.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pgevents_event::{Attempt, Event};

/// A destination for events: an in-process handler, a webhook, a broker.
///
/// Delivery is **at least once**: the same event (same [`Event::id`]) can be handed to
/// `deliver` more than once — after a crash, an expired lease, a lost acknowledgement or a
/// manual redelivery — so a destination must tolerate duplicate writes (dedupe on the id).
/// An event counts as delivered only when `deliver` returns [`Outcome::Delivered`], which a
/// sink must only do once the destination has durably accepted it (a 2xx answer, a broker
/// acknowledgement). The dispatcher bounds every call with the trigger's timeout and treats a
/// panic as a retriable failure, so a sink need not guard against either.
pub trait Sink: Send + Sync + 'static {
    /// Delivers one event and reports what happened.
    fn deliver(&self, delivery: Delivery) -> impl Future<Output = Outcome> + Send;
}

/// One delivery attempt of one event.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// Where this attempt stands in the retry policy.
    pub attempt: Attempt,
    /// How long the attempt may take before it counts as failed.
    pub timeout: Duration,
}

/// What an attempt found out, for the attempt log (never row values or secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The destination's status code, where it has one (HTTP).
    pub status: Option<u16>,
    /// What went wrong, for failed attempts.
    pub error: Option<String>,
    /// The start of the destination's answer, at most [`RESPONSE_EXCERPT_BYTES`].
    pub response: Option<String>,
}

/// How many bytes of a destination's answer the attempt log keeps.
pub const RESPONSE_EXCERPT_BYTES: usize = 1024;

impl Report {
    /// A report of a failure described by `error`.
    pub fn error(error: impl Into<String>) -> Report {
        Report {
            error: Some(error.into()),
            ..Report::default()
        }
    }

    /// Keeps at most [`RESPONSE_EXCERPT_BYTES`] of `body`, cut on a character boundary.
    pub fn excerpt(body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let mut end = text.len().min(RESPONSE_EXCERPT_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_string()
    }
}

/// The decision of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination accepted the event; it is done.
    Delivered(Report),
    /// A transient failure: try again under the retry policy, not before `after` if given
    /// (a `Retry-After` hint, capped by the policy's `max_interval`).
    Retry {
        /// What happened.
        report: Report,
        /// The destination's own wait hint.
        after: Option<Duration>,
    },
    /// A permanent failure (e.g. HTTP 400): the event is failed now, without retries.
    Reject(Report),
}

impl Outcome {
    /// A retriable failure with no wait hint.
    pub fn retry(error: impl Into<String>) -> Outcome {
        Outcome::Retry {
            report: Report::error(error),
            after: None,
        }
    }

    /// The attempt's report.
    pub fn report(&self) -> &Report {
        match self {
            Outcome::Delivered(r) | Outcome::Reject(r) => r,
            Outcome::Retry { report, .. } => report,
        }
    }
}

/// A boxed future, for sinks held behind `dyn`.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An object-safe [`Sink`], so one dispatcher can hold sinks of different types.
pub trait DynSink: Send + Sync + 'static {
    /// Delivers one event.
    fn deliver_boxed(self: Arc<Self>, delivery: Delivery) -> BoxFuture<Outcome>;
}

impl<S: Sink> DynSink for S {
    fn deliver_boxed(self: Arc<Self>, delivery: Delivery) -> BoxFuture<Outcome> {
        Box::pin(async move { self.deliver(delivery).await })
    }
}
