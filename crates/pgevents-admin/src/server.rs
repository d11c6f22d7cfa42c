//! The server: shared state, the routes, the health check, `/metrics`, and serving until
//! shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use pgevents_dispatch::Health;
use pgevents_log::LogSchema;

use crate::cross_site::{self, Hosts};
use crate::error::{ApiError, Error};
use crate::pool::Pool;
use crate::prometheus::{self, GaugeClock, UPKEEP_INTERVAL};
use crate::{api, auth, console};

/// The largest request body accepted (an invoked event's JSON).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How long the health check waits for the database to answer.
const HEALTH_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// What the admin server needs: where the log is, its id salt, the token, the health handle.
/// Cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
    allowed_hosts: Arc<[String]>,
}

struct Inner {
    pool: Pool,
    schema: LogSchema,
    salt: u16,
    token: Option<String>,
    health: Health,
    metrics: PrometheusHandle,
    gauges: GaugeClock,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("schema", &self.inner.schema)
            .field("token", &self.inner.token.as_ref().map(|_| "<set>"))
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// The state of a server over the log in `schema` of the database at `url`.
    ///
    /// `salt` is the installation's id salt ([`pgevents_log::salt`]). With `token` set (and
    /// not empty), the API and `/metrics` need `Authorization: Bearer <token>`. `health` is
    /// the handle the dispatcher reports to ([`pgevents_dispatch::Dispatcher::with_health`]).
    /// Installs the Prometheus recorder ([`install_metrics_recorder`](crate::install_metrics_recorder))
    /// if it is not yet. Connects to the database lazily, a few connections at most.
    pub fn new(
        url: impl Into<String>,
        schema: LogSchema,
        salt: u16,
        token: Option<String>,
        health: Health,
    ) -> AdminState {
        AdminState {
            inner: Arc::new(Inner {
                pool: Pool::new(url.into()),
                schema,
                salt,
                token: token.filter(|t| !t.is_empty()),
                health,
                metrics: prometheus::install_metrics_recorder(),
                gauges: GaugeClock::default(),
            }),
            allowed_hosts: Arc::new([]),
        }
    }

    /// Also accepts requests whose `Host` is one of `names` (`[admin] allowed_hosts`):
    /// the names the server is reached by beside its own address and loopback. Without
    /// them, a server listening on loopback answers only `localhost` and loopback
    /// addresses, and one listening elsewhere also its address (any address when it
    /// listens on all of them); other `Host`s are refused with 421, so that no web page can
    /// read the API by pointing a name of its own at it (DNS rebinding).
    pub fn with_allowed_hosts(mut self, names: impl IntoIterator<Item = String>) -> AdminState {
        self.allowed_hosts = names.into_iter().collect();
        self
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(crate) fn schema(&self) -> &LogSchema {
        &self.inner.schema
    }

    pub(crate) fn salt(&self) -> u16 {
        self.inner.salt
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.inner.token.as_deref()
    }
}

/// Serves the admin API, the console and `/metrics` on `listener` until `shutdown`
/// completes, then finishes the requests in progress and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener.local_addr().ok();
    if let Some(addr) = addr {
        tracing::info!(%addr, token = state.token().is_some(), "admin server listening");
    }
    let hosts = Arc::new(Hosts::new(addr, &state.allowed_hosts));
    let metrics = state.inner.metrics.clone();
    // Folds histogram samples into buckets between scrapes; stopped when serving ends (or
    // when this future is dropped).
    let _upkeep = AbortOnDrop(tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            every.tick().await;
            metrics.run_upkeep();
        }
    }));
    axum::serve(listener, router(state, hosts))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The routes, behind (outermost first) the `Host` check, the token check and the refusal of
/// cross-site state changes: a request without the token answers 401 whatever else it is.
fn router(state: AdminState, hosts: Arc<Hosts>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/triggers", get(api::triggers))
        .route("/api/v1/triggers/{name}/invoke", post(api::invoke))
        .route(
            "/api/v1/triggers/{name}/backfill",
            post(api::start_backfill),
        )
        .route("/api/v1/backfills", get(api::backfills))
        .route("/api/v1/events", get(api::list))
        .route("/api/v1/events/{id}", get(api::show))
        .route("/api/v1/events/{id}/payload", get(api::payload))
        .route("/api/v1/events/{id}/redeliver", post(api::redeliver))
        .route("/", get(console_file))
        .route("/console.css", get(console_file))
        .route("/console.js", get(console_file))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(cross_site::refuse_cross_site))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn_with_state(
            hosts,
            cross_site::check_host,
        ))
        .with_state(state)
}

async fn console_file(uri: Uri) -> Response {
    console::file(uri.path())
        .unwrap_or_else(|| ApiError::NotFound("no such file".into()).into_response())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no such path: {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// `GET /healthz`: 200 when the dispatcher runs and reaches the database, and the database
/// answers this server too; 503 otherwise. The body says which part is down.
async fn healthz(State(state): State<AdminState>) -> Response {
    let health = &state.inner.health;
    let capture = health.capture_running();
    let database = health.database_reachable() && ping(&state).await;
    let ok = capture && database;
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "database": database,
        "capture": capture,
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn ping(state: &AdminState) -> bool {
    let check = async {
        let conn = state.pool().get().await.ok()?;
        conn.simple_query("SELECT 1").await.ok()
    };
    matches!(
        tokio::time::timeout(HEALTH_PING_TIMEOUT, check).await,
        Ok(Some(_))
    )
}

/// `GET /metrics`: the Prometheus text, with the log's gauges read fresh.
async fn metrics(State(state): State<AdminState>) -> Response {
    if state.inner.gauges.due() {
        if let Err(error) = api::read_status(&state).await {
            state.inner.gauges.reset();
            tracing::warn!(
                ?error,
                "could not read the event log for the metrics' gauges"
            );
        }
    }
    let mut response = state.inner.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
