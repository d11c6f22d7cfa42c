//! The `webhook` destination: each event is `POST`ed as JSON to a URL.
//!
//! A 2xx answer delivers the event. Connection errors, timeouts, 408, 429 and 5xx are
//! retried (honouring `Retry-After`); any other answer, including a redirect (they are not
//! followed), rejects it. With a signing secret, requests carry the Standard Webhooks headers
//! `webhook-id`, `webhook-timestamp` and `webhook-signature`, so receivers can verify them
//! with any Standard Webhooks library.

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{HeaderValueConfig, WebhookConfig};
pub use sink::WebhookSink;
