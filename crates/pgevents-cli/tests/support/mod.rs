//! Test support for driving the real `pgevents` binary: a database per test (on the shared
//! cluster or a dedicated one the test may stop), a webhook receiver on loopback that records
//! every request and answers as scripted, a TCP proxy the test can cut and restore, a steady
//! writer, a raw HTTP client for the admin API, waits with deadlines, and the checks every
//! delivery test makes: nothing lost, duplicates only at a fault, each row's events in commit
//! order.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
pub use pgevents_testkit::db::{connect, insert_ids};
use pgevents_testkit::process::OwnedChild;
pub use pgevents_testkit::wait::eventually as wait_until;
use pgevents_testkit::wait::Deadline;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a test waits for any one condition.
pub const WAIT: Duration = Duration::from_secs(90);

/// Runs `test` under a time limit, so a hang fails the suite instead of stalling CI.
pub async fn within<F: std::future::Future<Output = ()>>(limit: Duration, test: F) {
    let started = Instant::now();
    tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("the test took longer than its limit of {limit:?}"));
    eprintln!("took {:.1}s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// Databases

/// A database and a superuser connection to it.
pub struct Db {
    /// The superuser URL.
    pub url: String,
    /// A superuser connection.
    pub client: tokio_postgres::Client,
    /// The dedicated cluster, when the test owns one.
    pub cluster: Option<pgevents_tempdb::TempCluster>,
}

impl Db {
    /// A fresh database on the test process's shared cluster.
    pub async fn fresh(prefix: &str) -> Db {
        let pgevents_testkit::db::Db { url, client } =
            pgevents_testkit::db::Db::fresh(prefix).await;
        Db {
            url,
            client,
            cluster: None,
        }
    }

    /// A cluster of the test's own (which it may stop and restart), and its `postgres`
    /// database.
    pub async fn dedicated() -> Db {
        let cluster = tokio::task::spawn_blocking(|| {
            pgevents_tempdb::TempCluster::start(&pgevents_tempdb::Options::default())
        })
        .await
        .expect("spawn")
        .expect("dedicated cluster");
        let url = cluster.url("postgres");
        let client = connect(&url).await;
        Db {
            url,
            client,
            cluster: Some(cluster),
        }
    }

    /// The database's name.
    pub fn name(&self) -> String {
        self.url
            .rsplit('/')
            .next()
            .and_then(|s| s.split('?').next())
            .unwrap_or_default()
            .to_string()
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        let after = self.url.split('@').nth(1).unwrap_or_default();
        after
            .split(['/', '?'])
            .next()
            .and_then(|hp| hp.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("port in URL")
    }

    /// This database's URL as `user` (with `password`, if any) through `127.0.0.1:port`.
    pub fn url_as(&self, user: &str, password: Option<&str>, port: u16) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user.to_string(),
        };
        format!(
            "postgres://{auth}@127.0.0.1:{port}/{}?sslmode=disable",
            self.name()
        )
    }

    /// Reconnects the superuser client (after a server restart).
    pub async fn reconnect(&mut self) {
        self.client = connect(&self.url).await;
    }

    /// The ids of the rows in `table` (an `id` column).
    pub async fn ids(&self, table: &str) -> HashSet<i64> {
        self.client
            .query(&format!("SELECT id::int8 FROM {table}"), &[])
            .await
            .expect("read ids")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// One number from `sql`.
    pub async fn count(&self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// Creates each of `tables` as `(id int8 PRIMARY KEY, v int8 NOT NULL DEFAULT 0)`: `v` is
    /// the row's version, which writers raise by one at every UPDATE so that the receiver can
    /// tell the order of a row's events.
    pub async fn versioned_tables(&self, tables: &[&str]) {
        for table in tables {
            self.client
                .batch_execute(&format!(
                    "CREATE TABLE {table} (id int8 PRIMARY KEY, v int8 NOT NULL DEFAULT 0)"
                ))
                .await
                .expect("create table");
        }
    }

    /// Each row's id and version (`v`) in `table`: the row's events are its INSERT (version 0)
    /// and one UPDATE per later version, all committed.
    pub async fn versions(&self, table: &str) -> HashMap<i64, i64> {
        self.client
            .query(&format!("SELECT id::int8, v::int8 FROM {table}"), &[])
            .await
            .expect("read versions")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Creates a role that holds only the grants `pgevents run` needs on the installed log
    /// in `schema` (the least-privilege mode), with `password`.
    pub async fn runner_role(&self, role: &str, password: &str, schema: &str) {
        self.client
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {role};
                 CREATE ROLE {role} LOGIN PASSWORD '{password}';
                 GRANT CONNECT ON DATABASE \"{db}\" TO {role};
                 GRANT USAGE ON SCHEMA \"{schema}\" TO {role};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" TO {role};
                 GRANT USAGE ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO {role};
                 GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA \"{schema}\" TO {role};",
                db = self.name()
            ))
            .await
            .expect("runner role");
    }
}

// ---------------------------------------------------------------------------------------
// The binary

/// Writes `body` as `pgevents.toml` in `dir`.
pub fn write_config(dir: &tempfile::TempDir, body: &str) -> PathBuf {
    let path = dir.path().join("pgevents.toml");
    let mut f = std::fs::File::create(&path).expect("config file");
    f.write_all(body.as_bytes()).expect("write config");
    path
}

/// A `pgevents` command with `args` and `env`.
pub fn pgevents(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgevents"));
    c.args(args)
        .env_remove("PGEVENTS_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs `pgevents` to completion.
pub fn output(args: &[&str], env: &[(&str, &str)]) -> Output {
    pgevents(args, env).output().expect("run pgevents")
}

/// Runs `pgevents` to completion, off the async runtime's threads.
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        output(&args, &env)
    })
    .await
    .expect("spawn")
}

/// `stdout` and `stderr` of `out` as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `pgevents run`; its stderr goes to a file the test can read.
pub struct Daemon {
    child: OwnedChild,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

static DAEMONS: AtomicU64 = AtomicU64::new(0);

impl Daemon {
    /// Starts `pgevents run --config config` with `env` (logging at `PGEVENTS_LOG`, or
    /// `info` unless `env` sets it).
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("log dir");
        let log = dir.path().join(format!(
            "daemon-{}.log",
            DAEMONS.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let config = config.display().to_string();
        let mut command = pgevents(&["run", "--config", &config], env);
        if !env.iter().any(|(k, _)| *k == "PGEVENTS_LOG") {
            command.env("PGEVENTS_LOG", "info");
        }
        let child = OwnedChild::spawn(command.stdout(Stdio::null()).stderr(file), "pgevents run");
        Daemon {
            child,
            log,
            _dir: dir,
        }
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        self.child.signal(sig);
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Panics (with the log's tail) unless the daemon still runs.
    pub fn assert_running(&mut self, when: &str) {
        if !self.is_running() {
            panic!(
                "the daemon exited {when}: {:?}\n{}",
                self.child.try_wait(),
                self.tail(40)
            );
        }
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Deadline::after(WAIT);
        loop {
            if let Some(status) = self.child.try_wait() {
                return status;
            }
            deadline.next_poll(|| "pgevents exits".into()).await;
        }
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit().await;
    }

    /// SIGTERM; asserts a clean exit (0) after the drain.
    pub async fn stop(self) {
        self.signal(libc::SIGTERM);
        self.assert_clean_exit().await;
    }

    /// Waits for the process to exit (after a SIGTERM the test sent) and asserts it exited 0.
    pub async fn assert_clean_exit(mut self) {
        let status = self.wait_exit().await;
        assert!(
            status.success(),
            "pgevents run exits 0 on SIGTERM: {status}\n{}",
            self.tail(40)
        );
    }

    /// Everything the daemon logged so far, without terminal colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = Deadline::after(WAIT);
        while !self.log().contains(needle) {
            deadline
                .next_poll(|| {
                    format!(
                        "timed out waiting for {needle:?} in the daemon's log:\n{}",
                        self.tail(40)
                    )
                })
                .await;
        }
    }

    /// The admin server's address, read from the log once it listens.
    pub async fn admin_addr(&self) -> SocketAddr {
        self.wait_log("admin server listening").await;
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("admin server listening"))
            .unwrap_or_default();
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child.kill();
        if std::thread::panicking() || std::env::var_os("PGEVENTS_TEST_DAEMON_LOG").is_some() {
            eprintln!(
                "--- daemon log ({}) ---\n{}",
                self.log.display(),
                self.tail(60)
            );
        }
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A config with `[database] url`, an admin server on a free port, and `rest`.
pub fn config(url: &str, rest: &str) -> String {
    format!("[database]\nurl = \"{url}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{rest}")
}

/// Like [`config`], with the event log in `log_schema`.
pub fn config_in_schema(url: &str, log_schema: &str, rest: &str) -> String {
    config(url, rest).replacen(
        "\n\n[admin]",
        &format!("\nlog_schema = \"{log_schema}\"\n\n[admin]"),
        1,
    )
}

/// A webhook trigger named after `table`, delivering to `/{table}` at `addr`, with `retry`.
/// Further keys of the trigger may follow it, one per line.
pub fn hook(table: &str, addr: SocketAddr, retry: &str) -> String {
    format!(
        "[[trigger]]\nname = \"{table}\"\ntable = \"{table}\"\nretry = {{ {retry} }}\nwebhook = {{ url = \"http://{addr}/{table}\" }}\n"
    )
}

/// Retries that outlast any fault of the fault suite.
pub const PATIENT: &str =
    "max_retries = 40, initial_interval = \"200ms\", max_interval = \"3s\", timeout = \"5s\"";

/// The `pgevents status` table for `config`, as text.
pub async fn status(config: &Path) -> String {
    let out = run(&["status", "--config", &config.display().to_string()], &[]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "pgevents status: {stderr}");
    stdout
}

/// (pending, delivered, failed) of `trigger` in a `pgevents status` table.
pub fn counts(status: &str, trigger: &str) -> Option<(i64, i64, i64)> {
    let line = status
        .lines()
        .find(|l| l.split_whitespace().next() == Some(trigger))?;
    let cells: Vec<i64> = line
        .split_whitespace()
        .skip(2)
        .take(3)
        .filter_map(|c| c.parse().ok())
        .collect();
    match cells[..] {
        [pending, delivered, failed] => Some((pending, delivered, failed)),
        _ => None,
    }
}

/// `pgevents events list --json` for `config` with `args` (a filter, a limit).
pub async fn events(config: &Path, args: &[&str]) -> Vec<Value> {
    let config = config.display().to_string();
    let mut all = vec!["events", "list", "--config", &config, "--json"];
    all.extend_from_slice(args);
    let out = run(&all, &[]).await;
    assert!(out.status.success(), "events list: {}", text(&out).1);
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(list)) => list,
        other => panic!("events list --json is not an array: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The webhook receiver

/// How the receiver answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// This status, at once.
    Status(u16),
    /// This status with this body, at once.
    Body(u16, Arc<[u8]>),
    /// This status after a delay.
    Slow(u16, Duration),
    /// Never: the request hangs until the client gives up.
    Hang,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Hit {
    /// When it arrived.
    pub at: Instant,
    /// The event id from the body.
    pub id: String,
    /// `data.new.id` (or `data.old.id`) from the body.
    pub row: Option<i64>,
    /// `data.new.v` (or `data.old.v`) from the body: the row's version.
    pub version: Option<i64>,
    /// The body (shared: the waits copy the list of hits often, and must not hold up the
    /// receiver while they do).
    pub body: Arc<Value>,
    /// The request headers, as text.
    pub headers: Arc<Vec<(String, String)>>,
    /// The status answered, once answered (`None`: hung, or still in progress).
    pub answered: Option<u16>,
}

impl Hit {
    /// True when the request was answered with 2xx: a delivery.
    pub fn delivered(&self) -> bool {
        self.answered.is_some_and(|s| (200..300).contains(&s))
    }
}

type Policy = dyn Fn(&str, &Value, usize) -> Reply + Send + Sync;

/// What a receiver recorded, by the name in the request's path (`/{name}`), in the order the
/// requests arrived.
pub struct Recorded<T>(Arc<Mutex<HashMap<String, Vec<T>>>>);

impl<T> Clone for Recorded<T> {
    fn clone(&self) -> Self {
        Recorded(Arc::clone(&self.0))
    }
}

impl<T> Default for Recorded<T> {
    fn default() -> Self {
        Recorded(Arc::default())
    }
}

impl<T: Clone> Recorded<T> {
    /// Everything recorded for `/{name}` so far.
    pub fn of(&self, name: &str) -> Vec<T> {
        self.0
            .lock()
            .expect("lock")
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Records what `make` returns first for `/{name}` (`make` runs under the lock, so the
    /// records are in the order it ran); returns the record's index and the rest.
    pub fn record<R>(&self, name: &str, make: impl FnOnce() -> (T, R)) -> (usize, R) {
        let mut all = self.0.lock().expect("lock");
        let list = all.entry(name.to_string()).or_default();
        let (item, rest) = make();
        list.push(item);
        (list.len() - 1, rest)
    }

    /// Changes record `index` of `/{name}`.
    pub fn update(&self, name: &str, index: usize, change: impl FnOnce(&mut T)) {
        if let Some(item) = self
            .0
            .lock()
            .expect("lock")
            .get_mut(name)
            .and_then(|l| l.get_mut(index))
        {
            change(item);
        }
    }
}

/// A webhook receiver on loopback: `POST /{name}` is recorded and answered by the policy,
/// given the name, the body and how many times this event id was seen before.
#[derive(Clone)]
pub struct Receiver {
    hits: Recorded<Hit>,
    /// How many requests each (name, event id) had so far.
    seen: Arc<Mutex<HashMap<(String, String), usize>>>,
    policy: Arc<Mutex<Arc<Policy>>>,
    /// The receiver's own address.
    pub addr: SocketAddr,
}

impl Receiver {
    /// Starts a receiver answering 200 to everything.
    pub async fn start() -> Receiver {
        let mut receiver = None;
        pgevents_testkit::net::serve(|addr| {
            let state = Receiver {
                hits: Recorded::default(),
                seen: Arc::default(),
                policy: Arc::new(Mutex::new(Arc::new(|_: &str, _: &Value, _: usize| {
                    Reply::Status(200)
                }))),
                addr,
            };
            receiver = Some(state.clone());
            axum::Router::new()
                .route("/{name}", axum::routing::post(receive))
                .with_state(state)
        })
        .await;
        receiver.expect("the receiver started")
    }

    /// Answers from now on as `policy` says.
    pub fn answer(&self, policy: impl Fn(&str, &Value, usize) -> Reply + Send + Sync + 'static) {
        *self.policy.lock().expect("lock") = Arc::new(policy);
    }

    /// Every request to `/{name}` so far.
    pub fn hits(&self, name: &str) -> Vec<Hit> {
        self.hits.of(name)
    }

    /// The rows whose events were delivered (answered 2xx) to `/{name}`.
    pub fn delivered_rows(&self, name: &str) -> HashSet<i64> {
        self.hits(name)
            .iter()
            .filter(|h| h.delivered())
            .filter_map(|h| h.row)
            .collect()
    }

    /// Every request to `/{name}` answered 2xx, in the order they arrived.
    pub fn deliveries(&self, name: &str) -> Vec<Hit> {
        self.hits(name).into_iter().filter(Hit::delivered).collect()
    }

    /// Waits until every version of every row in `versions` (row id → its last version, as
    /// [`Db::versions`] reads them) was delivered to `/{name}`: nothing lost, UPDATEs included.
    pub async fn wait_versions(&self, name: &str, versions: &HashMap<i64, i64>, limit: Duration) {
        let events: usize = versions.values().map(|v| *v as usize + 1).sum();
        let deadline = Deadline::after(limit);
        loop {
            let delivered: HashSet<(i64, i64)> = self
                .deliveries(name)
                .iter()
                .filter_map(|h| Some((h.row?, h.version?)))
                .collect();
            let missing: Vec<(i64, i64)> = versions
                .iter()
                .flat_map(|(row, last)| (0..=*last).map(move |v| (*row, v)))
                .filter(|rv| !delivered.contains(rv))
                .collect();
            if missing.is_empty() {
                return;
            }
            deadline.next_poll(|| format!(
                "timed out: {} of {events} committed events not delivered to /{name}, e.g. (row, version) {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            )).await;
        }
    }

    /// Waits until every row in `rows` was delivered to `/{name}`.
    pub async fn wait_rows(&self, name: &str, rows: &HashSet<i64>, limit: Duration) {
        let deadline = Deadline::after(limit);
        loop {
            let delivered = self.delivered_rows(name);
            let missing = rows.difference(&delivered).count();
            if missing == 0 {
                return;
            }
            deadline
                .next_poll(|| {
                    format!(
                        "timed out: {missing} of {} committed rows not delivered to /{name}",
                        rows.len()
                    )
                })
                .await;
        }
    }
}

async fn receive(
    State(r): State<Receiver>,
    UrlPath(name): UrlPath<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = body["id"].as_str().unwrap_or_default().to_string();
    let field = |f: &str| {
        body["data"]["new"][f]
            .as_i64()
            .or_else(|| body["data"]["old"][f].as_i64())
    };
    let (row, version) = (field("id"), field("v"));
    let policy = r.policy.lock().expect("lock").clone();
    let (index, reply) = r.hits.record(&name, || {
        let seen = {
            let mut seen = r.seen.lock().expect("lock");
            let count = seen.entry((name.clone(), id.clone())).or_default();
            *count += 1;
            *count - 1
        };
        let reply = policy(&name, &body, seen);
        let hit = Hit {
            at: Instant::now(),
            id,
            row,
            version,
            body: Arc::new(body),
            headers: Arc::new(
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                    .collect(),
            ),
            answered: None,
        };
        (hit, reply)
    });
    let (status, answer): (u16, Arc<[u8]>) = match reply {
        Reply::Status(s) => (s, Arc::from(&b"answer"[..])),
        Reply::Body(s, body) => (s, body),
        Reply::Slow(s, delay) => {
            tokio::time::sleep(delay).await;
            (s, Arc::from(&b"answer"[..]))
        }
        Reply::Hang => {
            std::future::pending::<()>().await;
            (500, Arc::from(&b""[..]))
        }
    };
    r.hits
        .update(&name, index, |hit| hit.answered = Some(status));
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        answer.to_vec(),
    )
        .into_response()
}

/// Asserts that every event delivered more than once to `/{name}` was in flight at a
/// fault: between any two of its deliveries lies one of the fault `windows` (its first
/// delivery before the window ended, its next one after the window began). Returns how
/// many events were delivered more than once.
pub fn assert_duplicates_only_across(
    receiver: &Receiver,
    name: &str,
    windows: &[(Instant, Instant)],
) -> usize {
    let mut by_id: HashMap<String, Vec<Instant>> = HashMap::new();
    for h in receiver.hits(name).iter().filter(|h| h.delivered()) {
        by_id.entry(h.id.clone()).or_default().push(h.at);
    }
    let mut duplicated = 0;
    for (id, mut times) in by_id {
        if times.len() < 2 {
            continue;
        }
        duplicated += 1;
        times.sort();
        for pair in times.windows(2) {
            assert!(
                windows
                    .iter()
                    .any(|(start, end)| pair[0] <= *end && pair[1] >= *start),
                "event {id} was delivered twice with no fault in between ({:?} apart)",
                pair[1] - pair[0]
            );
        }
    }
    duplicated
}

/// Asserts that every row's events reached `/{name}` in commit order.
///
/// A row's deliveries are its requests answered 2xx, in the order they arrived, each with the
/// row's version (`v`, raised by one at every UPDATE, so commit order is version order). They
/// are in order when each one brings a higher version than the one before, with one exception,
/// a re-delivery at a fault: an event delivered before one of the fault `windows` ended may be
/// delivered again after that window began, and then every version the row had delivered
/// after it must come again too, in order, before any new one. Everything else — a version
/// arriving after the first delivery of a later one, a re-delivery with no fault in between,
/// a replay that skips or reorders — fails, naming the row and the versions.
pub fn assert_row_order(receiver: &Receiver, name: &str, windows: &[(Instant, Instant)]) {
    let mut rows: BTreeMap<i64, Vec<(i64, Instant)>> = BTreeMap::new();
    for h in receiver.deliveries(name) {
        if let (Some(row), Some(version)) = (h.row, h.version) {
            rows.entry(row).or_default().push((version, h.at));
        }
    }
    for (row, deliveries) in rows {
        let sequence: Vec<i64> = deliveries.iter().map(|(v, _)| *v).collect();
        // Version → when it was last delivered.
        let mut seen: BTreeMap<i64, Instant> = BTreeMap::new();
        let mut replay: VecDeque<i64> = VecDeque::new();
        let mut last: Option<i64> = None;
        for (v, at) in deliveries {
            if let Some(expected) = replay.pop_front() {
                assert_eq!(
                    v, expected,
                    "/{name} row {row}: after a re-delivery at a fault, version {expected} must come again before version {v}; versions as delivered: {sequence:?}"
                );
            } else if let Some(last) = last.filter(|last| v <= *last) {
                let Some(before) = seen.get(&v) else {
                    panic!(
                        "/{name} row {row}: version {v} delivered after version {last}: out of commit order; versions as delivered: {sequence:?}"
                    );
                };
                assert!(
                    windows.iter().any(|(s, e)| *before <= *e && at >= *s),
                    "/{name} row {row}: version {v} delivered again after version {last} with no fault in between; versions as delivered: {sequence:?}"
                );
                replay = seen.range(v + 1..).map(|(k, _)| *k).collect();
            }
            seen.insert(v, at);
            last = Some(v);
        }
    }
}

/// Every committed event of `table` delivered to `/{table}` (each version of each row), and
/// each row's events in commit order, re-delivered only across one of the fault `windows`.
pub async fn assert_delivered_in_order(
    db: &Db,
    receiver: &Receiver,
    table: &str,
    windows: &[(Instant, Instant)],
) {
    let versions = db.versions(table).await;
    receiver.wait_versions(table, &versions, WAIT).await;
    assert_row_order(receiver, table, windows);
}

// ---------------------------------------------------------------------------------------
// A TCP proxy the test controls

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forwards.
    Up,
    /// Accepts connections and holds them without forwarding a byte (a network that
    /// swallows packets).
    Blackhole,
    /// Refuses connections (nothing listens: a host or service that is down).
    Refuse,
}

/// A TCP proxy on `127.0.0.1` to `target`. [`Proxy::cut`] and [`Proxy::refuse`] drop every
/// connection through it; [`Proxy::restore`] forwards again.
#[derive(Clone)]
pub struct Proxy {
    /// The proxy's own address.
    pub addr: SocketAddr,
    /// (mode, generation): every change of generation drops the connections of the last.
    state: watch::Sender<(Mode, u64)>,
}

impl Proxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (state, _) = watch::channel((Mode::Up, 0));
        let proxy = Proxy { addr, state };
        tokio::spawn(accept_loop(listener, target, proxy.state.clone()));
        proxy
    }

    /// Drops every connection and swallows new ones (they connect, then hear nothing).
    pub fn cut(&self) {
        self.state.send_modify(|(m, g)| {
            *m = Mode::Blackhole;
            *g += 1;
        });
    }

    /// Drops every connection and refuses new ones.
    pub fn refuse(&self) {
        self.state.send_modify(|(m, g)| {
            *m = Mode::Refuse;
            *g += 1;
        });
    }

    /// Forwards again (connections swallowed meanwhile are dropped).
    pub fn restore(&self) {
        self.state.send_modify(|(m, g)| {
            *m = Mode::Up;
            *g += 1;
        });
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, state: watch::Sender<(Mode, u64)>) {
    let addr = listener.local_addr().expect("addr");
    let mut listener = Some(listener);
    let mut changes = state.subscribe();
    loop {
        let (mode, generation) = *changes.borrow_and_update();
        match (mode, listener.as_ref()) {
            (Mode::Refuse, Some(_)) => {
                listener = None;
                continue;
            }
            (Mode::Refuse, None) => {
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            }
            (_, None) => {
                // Back up: listen on the same port again.
                let deadline = Deadline::after(Duration::from_secs(10));
                loop {
                    match TcpListener::bind(addr).await {
                        Ok(l) => {
                            listener = Some(l);
                            break;
                        }
                        Err(e) => deadline.next_poll(|| format!("rebind {addr}: {e}")).await,
                    }
                }
                continue;
            }
            (_, Some(l)) => {
                tokio::select! {
                    accepted = l.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        tokio::spawn(serve(client, target, mode, generation, state.subscribe()));
                    }
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    mode: Mode,
    generation: u64,
    mut changes: watch::Receiver<(Mode, u64)>,
) {
    let ended = async move {
        let _ = changes.wait_for(|(_, g)| *g != generation).await;
    };
    if mode != Mode::Up {
        // Swallowed: held open, silent, until the next change drops it.
        ended.await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = ended => {}
    }
}

// ---------------------------------------------------------------------------------------
// A steady writer

/// Inserts rows with increasing ids into a table (`id` column), a few per transaction, on a
/// timer, reconnecting after errors; a versioned writer also updates recent rows. Which rows
/// (and versions) committed is read back from the table.
pub struct Writer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    next: Arc<AtomicI64>,
}

impl Writer {
    /// Starts writing `per_txn` rows every `every` into `table` of the database at `url`,
    /// from id `first` on.
    pub fn start(url: &str, table: &str, first: i64, per_txn: i64, every: Duration) -> Writer {
        let insert = format!("INSERT INTO {table} (id) SELECT generate_series({{from}}, {{to}})");
        Writer::spawn(url, insert, first, per_txn, every)
    }

    /// Like [`Writer::start`] on a table of [`Db::versioned_tables`], and in the same
    /// transaction raises the version of the rows the transaction before inserted, the even
    /// ones twice: each row's INSERT and UPDATEs come in two transactions, and two UPDATEs of
    /// a row in one, while newer rows arrive.
    pub fn versioned(url: &str, table: &str, first: i64, per_txn: i64, every: Duration) -> Writer {
        let sql = format!(
            "INSERT INTO {table} (id) SELECT generate_series({{from}}, {{to}});
             UPDATE {table} SET v = v + 1 WHERE id BETWEEN {{recent}} AND {{from}} - 1;
             UPDATE {table} SET v = v + 1 WHERE id BETWEEN {{recent}} AND {{from}} - 1 AND id % 2 = 0;"
        );
        Writer::spawn(url, sql, first, per_txn, every)
    }

    /// Runs `sql` (one transaction; `{from}`, `{to}`: the new ids, `{recent}`: the first id
    /// of the transaction before) every `every`.
    fn spawn(url: &str, sql: String, first: i64, per_txn: i64, every: Duration) -> Writer {
        let (stop, mut stopped) = watch::channel(false);
        let next = Arc::new(AtomicI64::new(first));
        let url = url.to_string();
        let ids = next.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            Some(c)
                        }
                        Err(_) => None,
                    };
                }
                let Some(c) = client.as_ref() else { continue };
                let from = ids.fetch_add(per_txn, Ordering::Relaxed);
                let sql = sql
                    .replace("{from}", &from.to_string())
                    .replace("{to}", &(from + per_txn - 1).to_string())
                    .replace("{recent}", &(from - per_txn).max(first).to_string());
                // A failed (or unknown) commit is fine: the table says what committed.
                let _ = c.batch_execute(&sql).await;
            }
        });
        Writer { stop, task, next }
    }

    /// The next id it will write.
    pub fn next_id(&self) -> i64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Stops writing.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

// ---------------------------------------------------------------------------------------
// A raw HTTP client for the admin API

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The headers, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

/// Sends one HTTP/1.1 request to `addr` and reads the whole answer.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> HttpAnswer {
    let mut stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    HttpAnswer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}
