//! The webhook sink: one signed `POST` per attempt, and what its answer means for the event.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use pgevents_delivery::{Delivery, Outcome, Report, Sink, Slot, RESPONSE_EXCERPT_BYTES};
use pgevents_event::Format;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use sha2::Sha256;

use crate::endpoint::{error_text, redact_url};
use crate::SinkConfigErrorKind;

/// Requests in flight at once per webhook, and so connections open to it: each is kept
/// alive for the next request. Without the bound, every burst beyond the idle pool opened
/// connections that were closed right after (measured on loopback: 8,400 events/s with
/// that churn; see BENCHMARKS.md).
pub(super) const MAX_CONNECTIONS: usize = 128;
/// How long an idle keep-alive connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes on open connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// The longest a connection attempt may take (the attempt's own timeout may be shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `User-Agent` of every request.
const USER_AGENT: &str = concat!("pgevents/", env!("CARGO_PKG_VERSION"));

/// A resolved webhook: where to send, with which headers, signed with which key.
pub(super) struct Target {
    pub(super) url: url::Url,
    pub(super) headers: HeaderMap,
    pub(super) signing_key: Option<SigningKey>,
}

/// Delivers events by `POST`ing their payload to a webhook.
///
/// Holds one HTTP client (rustls, HTTP/1.1 and HTTP/2, keep-alive, redirects not followed)
/// shared by every delivery of the sink; cloning the sink shares it too. At most 128
/// requests (and connections) are in flight at once: each attempt takes a slot from
/// [`Sink::ready`] first, so waiting for one never counts against the attempt's timeout. Built by [`ResolveSink::resolve`](crate::ResolveSink::resolve) on a
/// [`WebhookConfig`](crate::WebhookConfig). `Debug` shows the URL with its password and query
/// replaced by `***`, and neither header values nor the signing key.
#[derive(Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    connections: std::sync::Arc<tokio::sync::Semaphore>,
    target: std::sync::Arc<Target>,
    format: Format,
}

impl WebhookSink {
    pub(super) fn new(target: Target, format: Format) -> Result<WebhookSink, SinkConfigErrorKind> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(MAX_CONNECTIONS)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_keepalive(TCP_KEEPALIVE)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| SinkConfigErrorKind::HttpClient {
                reason: error_text(&e.without_url()),
            })?;
        Ok(WebhookSink {
            client,
            connections: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            target: std::sync::Arc::new(target),
            format,
        })
    }

    /// The endpoint, with its password and query replaced by `***` (safe to log).
    pub fn endpoint(&self) -> String {
        redact_url(self.target.url.as_str())
    }

    /// The payload format events are delivered in.
    pub fn format(&self) -> Format {
        self.format
    }

    async fn send(&self, delivery: Delivery) -> Outcome {
        let body = self.format.encode(&delivery.event, &delivery.attempt);
        let mut request = self
            .client
            .post(self.target.url.clone())
            .timeout(delivery.timeout)
            .headers(self.target.headers.clone())
            .header(CONTENT_TYPE, "application/json");
        if let Some(key) = &self.target.signing_key {
            let id = delivery.event.id().to_string();
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            let signature = key.sign(&id, timestamp, &body);
            request = request
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature);
        }
        match request.body(body).send().await {
            Ok(response) => outcome_of_response(response).await,
            Err(error) => outcome_of_error(&error.without_url(), delivery.timeout),
        }
    }
}

impl Sink for WebhookSink {
    /// Waits for one of the webhook's 128 request slots, so that a burst queues here,
    /// before the attempt's timeout starts, rather than inside it.
    async fn ready(&self) -> Slot {
        match self.connections.clone().acquire_owned().await {
            Ok(permit) => Slot::holding(permit),
            // Never happens: the semaphore is never closed. Without it there is no bound.
            Err(_) => Slot::unlimited(),
        }
    }

    fn deliver(&self, delivery: Delivery) -> impl std::future::Future<Output = Outcome> + Send {
        self.send(delivery)
    }
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.endpoint())
            .field("headers", &self.target.headers.keys().collect::<Vec<_>>())
            .field("signing_key", &self.target.signing_key)
            .field("format", &self.format)
            .finish()
    }
}

/// Whether an HTTP status is worth another attempt: 408 (request timeout), 429 (too many
/// requests) and every 5xx are; other non-2xx statuses mean the receiver refuses the event.
pub(super) fn is_retriable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// Whether a request that got no answer is worth another attempt: connection failures,
/// timeouts and broken bodies are; a request that could not even be built is not.
pub(super) fn is_retriable_error(error: &reqwest::Error) -> bool {
    !error.is_builder()
}

async fn outcome_of_response(mut response: Response) -> Outcome {
    let status = response.status();
    let after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    let excerpt = read_excerpt(&mut response).await;
    let report = Report {
        status: Some(status.as_u16()),
        error: (!status.is_success()).then(|| format!("HTTP {status}")),
        response: (!excerpt.is_empty()).then_some(excerpt),
    };
    if status.is_success() {
        Outcome::Delivered(report)
    } else if is_retriable_status(status) {
        Outcome::Retry { report, after }
    } else {
        Outcome::Reject(report)
    }
}

fn outcome_of_error(error: &reqwest::Error, timeout: Duration) -> Outcome {
    let text = if error.is_timeout() {
        format!("timed out after {timeout:?}")
    } else if error.is_connect() {
        format!("could not connect: {}", error_text(error))
    } else {
        error_text(error)
    };
    if is_retriable_error(error) {
        Outcome::retry(text)
    } else {
        Outcome::Reject(Report::error(text))
    }
}

/// Reads the start of the answer for the attempt log, stopping after
/// [`RESPONSE_EXCERPT_BYTES`] so a huge error page costs nothing; a body that breaks off
/// leaves what was read.
async fn read_excerpt(response: &mut Response) -> String {
    let mut body = Vec::new();
    while body.len() < RESPONSE_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    Report::excerpt(&body)
}

/// The wait a `Retry-After` value asks for, at `now`: delta-seconds (`"120"`) or an HTTP
/// date (`"Wed, 21 Oct 2015 07:28:00 GMT"`; a date in the past means no wait). `None` for
/// anything else.
pub(super) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A Standard Webhooks signing key.
#[derive(Clone)]
pub(super) struct SigningKey(Hmac<Sha256>);

impl SigningKey {
    /// The key of `secret`: the base64-decoded part of a `whsec_<base64>` secret, or the raw
    /// bytes of any other secret. `None` when a `whsec_` secret is not base64.
    pub(super) fn from_secret(secret: &str) -> Option<SigningKey> {
        let key = match secret.strip_prefix("whsec_") {
            Some(encoded) => BASE64.decode(encoded).ok().filter(|k| !k.is_empty())?,
            None => secret.as_bytes().to_vec(),
        };
        Hmac::<Sha256>::new_from_slice(&key).ok().map(SigningKey)
    }

    /// The `webhook-signature` value: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
    pub(super) fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}
