//! Handlers: the async code an event is delivered to, inside the program.

use std::future::Future;
use std::sync::Arc;

use pgevents_delivery::{Delivery, Outcome, Report, Sink};
use pgevents_event::Event;

/// Any error a handler returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Code that receives events: an `async` closure `|event| async move { ... }` returning
/// `Result<(), E>`, or a type implementing this trait.
///
/// Returning `Err` (or panicking) is a failed attempt: the event is retried under the retry
/// policy. Delivery is at least once, so a handler may see an event again (same
/// [`Event::id`]) after a crash or a retry, and should be idempotent.
pub trait Handler: Send + Sync + 'static {
    /// Handles one event.
    fn handle(&self, event: Event) -> impl Future<Output = Result<(), BoxError>> + Send;
}

impl<F, Fut, E> Handler for F
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn handle(&self, event: Event) -> impl Future<Output = Result<(), BoxError>> + Send {
        let call = self(event);
        async move { call.await.map_err(Into::into) }
    }
}

/// Adapts a [`Handler`] to the [`Sink`] contract.
pub(crate) struct HandlerSink<H>(pub(crate) Arc<H>);

impl<H: Handler> Sink for HandlerSink<H> {
    async fn deliver(&self, delivery: Delivery) -> Outcome {
        match self.0.handle(delivery.event).await {
            Ok(()) => Outcome::Delivered(Report::default()),
            Err(error) => Outcome::retry(error.to_string()),
        }
    }
}
