//! The pgevents admin server: a JSON API over the event log, a web console, Prometheus
//! metrics and a health check, on one listening socket.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 when the database is reachable and capture runs, else 503 (no token) |
//! | `GET /metrics` | Prometheus text (see [`pgevents_dispatch::telemetry`] for the series) |
//! | `GET /api/v1/triggers` | triggers with their counts by status, and the capture lag |
//! | `GET /api/v1/events?trigger=&status=&limit=&before=&since=` | events, newest first, a page at a time |
//! | `GET /api/v1/events/{id}` | one event, its payload and every attempt |
//! | `GET /api/v1/events/{id}/payload` | the payload exactly as delivered (seed format) |
//! | `POST /api/v1/events/{id}/redeliver` | 202 (409 while the event is being delivered) |
//! | `POST /api/v1/triggers/{name}/invoke` (JSON body) | 201 with the new event's id |
//! | `GET /` | the console (plain HTML, CSS and JavaScript built into the binary) |
//!
//! With a token configured, every path but `/healthz` and the console's static files
//! answers 401 without `Authorization: Bearer <token>`. With or without a token, what a web
//! page on another site could make the operator's browser send is refused: a POST (any
//! state-changing method) from a foreign `Origin` or without `Content-Type:
//! application/json` answers 403, and a request whose `Host` does not name this server
//! (DNS rebinding) answers 421 — see [`AdminState::with_allowed_hosts`]. Every answer of the API, errors
//! included, is JSON: `{"error": "..."}` for errors.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use pgevents_admin::{AdminState, Health};
//!
//! let url = "postgres://app@localhost/shop";
//! let schema = pgevents_log::LogSchema::default();
//! let client = pgevents_postgres::connect(url, None).await?;
//! let salt = pgevents_log::salt(&client, &schema).await?;
//! let health = Health::new(); // give a clone to `Dispatcher::with_health`
//! let state = AdminState::new(url, schema, salt, std::env::var("PGEVENTS_ADMIN_TOKEN").ok(), health);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! pgevents_admin::serve(listener, state, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

mod api;
mod auth;
mod console;
mod cross_site;
mod error;
mod pool;
mod prometheus;
mod server;

pub use error::Error;
pub use pgevents_dispatch::Health;
pub use prometheus::install_metrics_recorder;
pub use server::{serve, AdminState};
