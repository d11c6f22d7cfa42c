//! Test support: a fresh database per test, a running dispatcher reporting to a health
//! handle, the admin server on a free port, a switchable sink, HTTP helpers and waits with
//! deadlines.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgevents_admin::{AdminState, Health};
use pgevents_delivery::{Delivery, Outcome, Report, RetryPolicy, Sink};
use pgevents_dispatch::{Dispatcher, Options, Route};
use pgevents_log::LogSchema;
use pgevents_postgres::QualifiedName;
use pgevents_testkit::background::Background;
pub use pgevents_testkit::db::Db;
pub use pgevents_testkit::wait::eventually;
use pgevents_testkit::wait::Deadline;
use pgevents_trigger::Trigger;
use serde_json::Value;
use tokio::sync::watch;

pub const WAIT: Duration = Duration::from_secs(60);

/// A fresh database and a connection to it.
pub async fn db() -> Db {
    pgevents_testkit::db::init_tracing();
    Db::fresh("pgevents_admin").await
}

/// What the test sink does with the next attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Accept.
    Deliver = 0,
    /// Answer like a webhook's 500 (retriable).
    Fail = 1,
    /// Wait until released, then accept (the event stays in flight, pending).
    Hold = 2,
}

/// Ids and payloads a sink accepted.
type Received = Mutex<Vec<(uuid::Uuid, Vec<u8>)>>;

/// A sink whose behaviour the test switches, recording the ids it accepted.
#[derive(Clone)]
pub struct Switch {
    mode: Arc<AtomicU8>,
    released: Arc<watch::Sender<bool>>,
    delivered: Arc<Received>,
}

impl Default for Switch {
    fn default() -> Self {
        Switch {
            mode: Arc::new(AtomicU8::new(Mode::Deliver as u8)),
            released: Arc::new(watch::channel(false).0),
            delivered: Arc::default(),
        }
    }
}

impl Switch {
    pub fn set(&self, mode: Mode) {
        if mode == Mode::Hold {
            self.released.send_replace(false);
        }
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Lets held attempts finish (delivered) and accepts from now on.
    pub fn release(&self) {
        self.mode.store(Mode::Deliver as u8, Ordering::SeqCst);
        self.released.send_replace(true);
    }

    pub fn delivered_ids(&self) -> Vec<uuid::Uuid> {
        self.delivered
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn payload_of(&self, id: uuid::Uuid) -> Option<Vec<u8>> {
        self.delivered
            .lock()
            .expect("lock")
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, p)| p.clone())
    }
}

impl Sink for Switch {
    async fn deliver(&self, delivery: Delivery) -> Outcome {
        let mode = self.mode.load(Ordering::SeqCst);
        if mode == Mode::Fail as u8 {
            return Outcome::Retry {
                report: Report {
                    status: Some(500),
                    error: Some("HTTP 500 from the test sink".into()),
                    response: Some(r#"{"ok":false,"reason":"test sink refused"}"#.into()),
                },
                after: None,
            };
        }
        if mode == Mode::Hold as u8 {
            let mut released = self.released.subscribe();
            let _ = released.wait_for(|r| *r).await;
        }
        let event = delivery.event;
        self.delivered
            .lock()
            .expect("lock")
            .push((event.id(), event.payload().to_vec()));
        Outcome::Delivered(Report {
            status: Some(200),
            ..Report::default()
        })
    }
}

/// One watched table: its trigger name, the table, the sink and the retry policy.
pub struct Table {
    pub trigger: &'static str,
    pub table: &'static str,
    pub sink: Switch,
    pub retry: RetryPolicy,
    /// Changes the trigger's capture (filter, ordering, payload columns) before install.
    pub capture: fn(&mut Trigger),
}

impl Table {
    pub fn new(trigger: &'static str, table: &'static str) -> Table {
        Table {
            trigger,
            table,
            sink: Switch::default(),
            retry: fast_retry(0),
            capture: |_| {},
        }
    }

    pub fn capture(mut self, change: fn(&mut Trigger)) -> Table {
        self.capture = change;
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Table {
        self.retry = policy;
        self
    }
}

pub fn fast_retry(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_interval: Duration::from_millis(100),
        max_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(30),
    }
}

/// A log with triggers, a running dispatcher and a running admin server.
pub struct Daemon {
    pub db: Db,
    pub schema: LogSchema,
    pub salt: u16,
    pub health: Health,
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
    pub sinks: Vec<Switch>,
    dispatcher: Option<Background<pgevents_log::Error>>,
    admin: Option<Background<pgevents_admin::Error>>,
    routes: Vec<Route>,
}

/// Creates `tables` (`id bigint primary key, note text`), installs the log and a trigger per
/// table, and starts the admin server (with `token`) and, when `dispatch`, the dispatcher.
pub async fn daemon(tables: Vec<Table>, token: Option<&str>, dispatch: bool) -> Daemon {
    daemon_listening(tables, token, dispatch, "127.0.0.1:0", &[]).await
}

/// [`daemon`] with the admin server listening on `listen`, accepting `allowed_hosts`; it is
/// called on 127.0.0.1 when it listens on every address.
pub async fn daemon_listening(
    tables: Vec<Table>,
    token: Option<&str>,
    dispatch: bool,
    listen: &str,
    allowed_hosts: &[&str],
) -> Daemon {
    let db = db().await;
    let schema = LogSchema::default();
    let mut client = pgevents_postgres::connect(&db.url, None)
        .await
        .expect("connect");
    let salt = pgevents_log::install(&mut client, &schema)
        .await
        .expect("install the log");
    let mut routes = Vec::new();
    let mut sinks = Vec::new();
    for t in tables {
        db.client
            .batch_execute(&format!(
                "CREATE TABLE {} (id bigint PRIMARY KEY, note text)",
                t.table
            ))
            .await
            .expect("create table");
        let table = QualifiedName::parse(t.table).expect("table name");
        let mut spec = Trigger::new(t.trigger, table.clone(), ());
        (t.capture)(&mut spec);
        let id = pgevents_capture::install_trigger(&mut client, &schema, &spec, true)
            .await
            .expect("install trigger");
        let sink: Arc<dyn pgevents_delivery::DynSink> = Arc::new(t.sink.clone());
        routes.push(Route::new(id, spec.with_destination(sink).retry(t.retry)));
        sinks.push(t.sink);
    }
    assert_eq!(
        pgevents_log::salt(&client, &schema).await.expect("salt"),
        salt
    );
    let health = Health::new();
    let state = AdminState::new(
        db.url.clone(),
        schema.clone(),
        salt,
        token.map(str::to_owned),
        health.clone(),
    )
    .with_allowed_hosts(allowed_hosts.iter().map(|h| h.to_string()));
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    let mut addr: SocketAddr = listener.local_addr().expect("address");
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let admin = Background::spawn(|stop| pgevents_admin::serve(listener, state, stop));
    let mut d = Daemon {
        db,
        schema,
        salt,
        health,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        token: token.map(str::to_owned),
        sinks,
        dispatcher: None,
        admin: Some(admin),
        routes,
    };
    if dispatch {
        d.start_dispatcher();
    }
    d
}

impl Daemon {
    pub fn start_dispatcher(&mut self) {
        assert!(self.dispatcher.is_none(), "the dispatcher already runs");
        let options = Options {
            idle_poll: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(5),
            ..Options::default()
        };
        let dispatcher = Dispatcher::new(
            self.db.url.clone(),
            self.schema.clone(),
            self.salt,
            self.routes.clone(),
            options,
        )
        .with_health(self.health.clone());
        self.dispatcher = Some(Background::spawn(|stop| dispatcher.run(stop)));
    }

    pub async fn stop_dispatcher(&mut self) {
        if let Some(dispatcher) = self.dispatcher.take() {
            dispatcher.stop(WAIT, "the dispatcher").await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(admin) = self.admin.take() {
            admin.stop(WAIT, "the admin server").await;
        }
        self.stop_dispatcher().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// GET with the token (if any); the status and the body parsed as JSON (Null if not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .authorized(self.http.get(self.url(path)))
            .send()
            .await
            .expect("GET");
        answer(response).await
    }

    /// POST `body` with the token (if any).
    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .authorized(self.http.post(self.url(path)))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST");
        answer(response).await
    }

    /// GET with the token, the body as text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self
            .authorized(self.http.get(self.url(path)))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// Writes `sql` on the test's own connection.
    pub async fn sql(&self, sql: &str) {
        self.db.client.batch_execute(sql).await.expect("sql");
    }

    /// Events of `trigger` with `status`, newest first.
    pub async fn events(&self, trigger: &str, status: &str) -> Vec<Value> {
        let (code, body) = self
            .get(&format!(
                "/api/v1/events?trigger={trigger}&status={status}&limit=1000"
            ))
            .await;
        assert_eq!(code, 200, "{body}");
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `trigger` has `n` events with `status`; returns them.
    pub async fn wait_for_events(&self, trigger: &str, status: &str, n: usize) -> Vec<Value> {
        let deadline = Deadline::after(WAIT);
        loop {
            let events = self.events(trigger, status).await;
            if events.len() >= n {
                return events;
            }
            deadline
                .next_poll(|| {
                    format!(
                        "timed out waiting for {n} {status} events of {trigger} (have {})",
                        events.len()
                    )
                })
                .await;
        }
    }

    /// Waits until event `id` has `status`; returns its detail.
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let deadline = Deadline::after(WAIT);
        loop {
            let (code, body) = self.get(&format!("/api/v1/events/{id}")).await;
            assert_eq!(code, 200, "{body}");
            if body["event"]["status"] == status {
                return body;
            }
            deadline
                .next_poll(|| format!("timed out waiting for event {id} to be {status}: {body}"))
                .await;
        }
    }
}

pub async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}
