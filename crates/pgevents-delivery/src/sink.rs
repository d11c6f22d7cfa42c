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
///
/// A sink with limited capacity (a connection pool, a window of unacknowledged messages)
/// says so through [`Sink::ready`]: the dispatcher awaits it before each attempt and only
/// then starts the attempt's timeout, so the timeout bounds the attempt itself, never the
/// wait for room at the destination.
pub trait Sink: Send + Sync + 'static {
    /// Waits until the sink has room for one more attempt and returns that room.
    ///
    /// The caller awaits this *before* it starts an attempt's timeout and holds the
    /// returned [`Slot`] until [`deliver`](Sink::deliver) has returned (or was cancelled);
    /// dropping the slot gives the room back. A sink that bounds its concurrent attempts
    /// does it here rather than inside `deliver`, so waiting in line for a connection never
    /// counts against the trigger's timeout. It must not fail: a sink that cannot tell
    /// whether it has room returns a slot and lets `deliver` report the failure.
    ///
    /// The default has no limit and returns [`Slot::unlimited`] at once.
    fn ready(&self) -> impl Future<Output = Slot> + Send {
        std::future::ready(Slot::unlimited())
    }

    /// Delivers one event and reports what happened.
    fn deliver(&self, delivery: Delivery) -> impl Future<Output = Outcome> + Send;
}

/// Room for one attempt at a sink, from [`Sink::ready`]; given back when dropped.
#[must_use = "the room is given back as soon as the slot is dropped: hold it for the attempt"]
pub struct Slot(Option<Box<dyn Send>>);

impl Slot {
    /// A slot of a sink without a limit: holds nothing.
    pub fn unlimited() -> Slot {
        Slot(None)
    }

    /// A slot that holds `guard` (e.g. a semaphore permit) until it is dropped.
    pub fn holding(guard: impl Send + 'static) -> Slot {
        Slot(Some(Box::new(guard)))
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Slot(held)"
        } else {
            "Slot(unlimited)"
        })
    }
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
    /// Waits for room for one attempt ([`Sink::ready`]).
    fn ready_boxed(self: Arc<Self>) -> BoxFuture<Slot>;

    /// Delivers one event.
    fn deliver_boxed(self: Arc<Self>, delivery: Delivery) -> BoxFuture<Outcome>;
}

impl<S: Sink> DynSink for S {
    fn ready_boxed(self: Arc<Self>) -> BoxFuture<Slot> {
        Box::pin(async move { self.ready().await })
    }

    fn deliver_boxed(self: Arc<Self>, delivery: Delivery) -> BoxFuture<Outcome> {
        Box::pin(async move { self.deliver(delivery).await })
    }
}
