//! The loopback webhook receiver, and listeners that deliver to it through pgevents-sinks'
//! `WebhookSink`.
//!
//! The receiver is a minimal axum server on 127.0.0.1 in the benchmark process: it reads each
//! body whole, counts it and answers 200, so that it is never the bottleneck of the figures.
//! Built without the `webhook` feature, the webhook rows report "not measured".

use crate::cluster::Bench;
use crate::listening::Counter;

/// Why the webhook rows are not measured, when they are not.
#[cfg(not(feature = "webhook"))]
pub const UNAVAILABLE: Option<&str> =
    Some("not measured: built without the `webhook` feature (pgevents-sinks)");
/// Why the webhook rows are not measured, when they are not.
#[cfg(feature = "webhook")]
pub const UNAVAILABLE: Option<&str> = None;

/// A running loopback receiver.
pub struct Receiver {
    #[cfg(feature = "webhook")]
    url: String,
    #[cfg(feature = "webhook")]
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "webhook")]
impl Receiver {
    /// Starts a receiver counting every request on `counter`.
    pub async fn start(counter: Counter) -> anyhow::Result<Receiver> {
        use anyhow::Context;
        use axum::body::Bytes;
        use axum::extract::State;
        use axum::http::StatusCode;

        async fn hook(State(counter): State<Counter>, body: Bytes) -> StatusCode {
            if body.is_empty() {
                return StatusCode::BAD_REQUEST;
            }
            counter.hit();
            StatusCode::OK
        }

        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(counter);
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the loopback webhook receiver")?;
        let addr = socket
            .local_addr()
            .context("reading the receiver's address")?;
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(socket, app).await {
                eprintln!("webhook receiver stopped: {error}");
            }
        });
        Ok(Receiver {
            url: format!("http://{addr}/hook"),
            task,
        })
    }

    /// Builds (installing capture) a listener delivering the benchmark table's events to
    /// this receiver through a `WebhookSink` with default settings.
    pub async fn listener(&self, bench: &Bench) -> anyhow::Result<pgevents::Listener> {
        use anyhow::Context;
        use pgevents_sinks::{Env, ResolveSink, WebhookConfig};

        let config = WebhookConfig {
            url: Some(self.url.clone()),
            ..WebhookConfig::default()
        };
        let sink = config
            .resolve("bench.webhook", pgevents::Format::Seed, &Env::default())
            .context("building the webhook sink")?;
        pgevents::Listener::builder(&bench.listener_url)
            .sink(pgevents::Trigger::for_table(crate::cluster::TABLE, sink)?)
            .drain_timeout(std::time::Duration::from_secs(5))
            .build()
            .await
            .context("building the webhook listener")
    }
}

#[cfg(not(feature = "webhook"))]
impl Receiver {
    /// Unavailable without the `webhook` feature.
    pub async fn start(_counter: Counter) -> anyhow::Result<Receiver> {
        anyhow::bail!("built without the `webhook` feature")
    }

    /// Unavailable without the `webhook` feature.
    pub async fn listener(&self, _bench: &Bench) -> anyhow::Result<pgevents::Listener> {
        anyhow::bail!("built without the `webhook` feature")
    }
}

#[cfg(feature = "webhook")]
impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
