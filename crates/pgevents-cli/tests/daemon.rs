//! The real `pgevents` binary against a real PostgreSQL and a real HTTP receiver on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use pgevents_testkit::db::{insert_ids, Db};
use pgevents_testkit::process::OwnedChild;
use pgevents_testkit::wait::Deadline;
use serde_json::Value;

use crate::support::{output, pgevents, write_config, Recorded};

const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
struct Hit {
    at: Instant,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// A scripted answer: status, `Retry-After`, delay in milliseconds.
type Answer = (u16, Option<&'static str>, u64);

/// A webhook receiver: `/{name}` answers from a per-name script of statuses (then 200).
#[derive(Clone, Default)]
struct Receiver {
    hits: Recorded<Hit>,
    scripts: Arc<Mutex<HashMap<String, Vec<Answer>>>>,
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        let app = axum::Router::new()
            .route("/{name}", axum::routing::post(hook))
            .with_state(receiver.clone());
        let addr = pgevents_testkit::net::serve(|_| app).await;
        (receiver, addr)
    }

    /// Answers the next requests to `/{name}` with (status, Retry-After, delay ms), then 200.
    fn script(&self, name: &str, answers: Vec<Answer>) {
        self.scripts
            .lock()
            .expect("lock")
            .insert(name.into(), answers);
    }

    fn hits(&self, name: &str) -> Vec<Hit> {
        self.hits.of(name)
    }

    async fn wait(&self, name: &str, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Deadline::after(WAIT);
        loop {
            let hits = self.hits(name);
            if done(&hits) {
                return hits;
            }
            deadline
                .next_poll(|| format!("timed out waiting for {what}: {} hits", hits.len()))
                .await;
        }
    }
}

async fn hook(
    State(r): State<Receiver>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let answer = {
        let mut scripts = r.scripts.lock().expect("lock");
        scripts
            .get_mut(&name)
            .filter(|s| !s.is_empty())
            .map(|s| s.remove(0))
    };
    let (status, retry_after, delay) = answer.unwrap_or((200, None, 0));
    let hit = Hit {
        at: Instant::now(),
        headers,
        body: body.to_vec(),
    };
    r.hits.record(&name, || (hit, ()));
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        "answer",
    )
        .into_response();
    if let Some(v) = retry_after {
        if let Ok(v) = v.parse() {
            response.headers_mut().insert("retry-after", v);
        }
    }
    response
}

async fn db() -> Db {
    Db::fresh("pgevents_cli").await
}

/// A fresh database with the tables `ddl` creates, a receiver on loopback, and a directory
/// for the config.
async fn setup(ddl: &str) -> (Db, Receiver, SocketAddr, tempfile::TempDir) {
    let db = db().await;
    db.client.batch_execute(ddl).await.expect("schema");
    let (receiver, addr) = Receiver::start().await;
    (db, receiver, addr, tempfile::tempdir().expect("tempdir"))
}

/// Writes `body` as the config in `dir`, starts `pgevents run` on it with `env`, and waits
/// until its admin server on `port` says it is healthy.
async fn start_healthy(
    dir: &tempfile::TempDir,
    body: &str,
    port: u16,
    env: &[(&str, &str)],
) -> (PathBuf, Daemon) {
    let cfg = write_config(dir, body);
    let daemon = Daemon::start(&cfg, env);
    wait_healthy(port).await;
    (cfg, daemon)
}

struct Daemon(OwnedChild);

impl Daemon {
    fn start(config: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let config = config.display().to_string();
        Daemon(OwnedChild::spawn(
            pgevents(&["run", "--config", &config], env)
                .stdout(Stdio::null())
                .stderr(if std::env::var_os("PGEVENTS_TEST_DAEMON_LOG").is_some() {
                    Stdio::inherit()
                } else {
                    Stdio::null()
                }),
            "pgevents run",
        ))
    }

    fn signal(&self, sig: i32) {
        self.0.signal(sig);
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "pgevents exits");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit();
        assert!(
            status.success(),
            "pgevents run exits 0 on SIGTERM: {status}"
        );
    }
}

/// A config for `db` with its admin server on a free loopback port (returned).
fn config(db: &Db, triggers: &str) -> (String, u16) {
    let port = pgevents_testkit::net::free_port();
    (
        format!(
            "[database]\nurl = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:{port}\"\n\n{triggers}",
            db.url
        ),
        port,
    )
}

/// Waits until the daemon's `/healthz` answers 200: installed, capturing, delivering.
async fn wait_healthy(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Deadline::after(WAIT);
    loop {
        let status = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await
                .ok()?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head).await.ok()?;
            Some(head[9..12].to_vec())
        }
        .await;
        if status.as_deref() == Some(b"200") {
            return;
        }
        deadline
            .next_poll(|| "the daemon becomes healthy".into())
            .await;
    }
}

async fn to_json(db: &Db, sql: &str) -> Value {
    let text: String = db.client.query_one(sql, &[]).await.expect(sql).get(0);
    serde_json::from_str(&text).expect("to_json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_bodies_in_both_formats_and_column_filters() {
    let (db, receiver, addr, dir) = setup("CREATE TABLE orders (id bigint PRIMARY KEY, status text, note text, amount numeric(20,10))").await;
    let (body, port) = config(
        &db,
        &format!(
            r#"[[trigger]]
name = "seed_events"
table = "orders"
webhook = {{ url = "http://{addr}/seed" }}

[[trigger]]
name = "hasura_events"
table = "public.orders"
format = "hasura"
webhook = {{ url_from_env = "HASURA_HOOK" }}

[[trigger]]
name = "status_changes"
table = "orders"
operations = ["UPDATE"]
columns = ["status"]
webhook = {{ url = "http://{addr}/status" }}
"#
        ),
    );
    let hasura_hook = format!("http://{addr}/hasura");
    let env = [("HASURA_HOOK", hasura_hook.as_str())];
    let (cfg, daemon) = start_healthy(&dir, &body, port, &env).await;
    db.client
        .batch_execute("INSERT INTO orders VALUES (9007199254740993, 'new', 'a', 1.1000000000)")
        .await
        .expect("insert");
    let inserted = to_json(&db, "SELECT to_json(o)::text FROM orders o").await;
    db.client
        .batch_execute("UPDATE orders SET note = 'b'")
        .await
        .expect("note update");
    let noted = to_json(&db, "SELECT to_json(o)::text FROM orders o").await;
    db.client
        .batch_execute("UPDATE orders SET status = 'paid'")
        .await
        .expect("status update");
    let paid = to_json(&db, "SELECT to_json(o)::text FROM orders o").await;
    db.client
        .batch_execute("DELETE FROM orders")
        .await
        .expect("delete");
    let cfg_s = cfg.display().to_string();
    let out = output(
        &[
            "invoke",
            "--config",
            &cfg_s,
            "seed_events",
            "--data",
            r#"{"hello":[1,2.50]}"#,
        ],
        &env,
    );
    assert!(
        out.status.success(),
        "invoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manual_id = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let seed = receiver
        .wait("seed", "5 seed events", |h| h.len() == 5)
        .await;
    // Events of one row arrive in commit order; the manual event belongs to no row.
    let (manual, bodies): (Vec<Value>, Vec<Value>) = seed
        .iter()
        .map(Hit::json)
        .partition(|b| b["action"] == "MANUAL");
    let seed: Vec<&Hit> = seed
        .iter()
        .filter(|h| h.json()["action"] != "MANUAL")
        .collect();
    let expect = [
        ("INSERT", Value::Null, inserted.clone()),
        ("UPDATE", inserted.clone(), noted.clone()),
        ("UPDATE", noted.clone(), paid.clone()),
        ("DELETE", paid.clone(), Value::Null),
    ];
    for (body, (action, old, new)) in bodies.iter().zip(expect.iter()) {
        let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            [
                "id",
                "schema",
                "table",
                "trigger",
                "action",
                "created_at",
                "data"
            ]
        );
        assert_eq!(body["schema"], "public");
        assert_eq!(body["table"], "orders");
        assert_eq!(body["trigger"], "seed_events");
        assert_eq!(body["action"], *action);
        assert_eq!(body["data"]["old"], *old);
        assert_eq!(body["data"]["new"], *new);
    }
    // Exact numbers in the raw body, not only after parsing.
    let raw = String::from_utf8_lossy(&seed[0].body).into_owned();
    assert!(
        raw.contains(r#""id":9007199254740993"#) && raw.contains("1.1000000000"),
        "{raw}"
    );
    assert_eq!(
        seed[0].headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    let manual = &manual[0];
    assert_eq!(manual["action"], "MANUAL");
    assert_eq!(manual["id"], manual_id.as_str());
    assert_eq!(manual["data"]["old"], Value::Null);
    let raw_manual = String::from_utf8_lossy(&seed_manual_raw(&receiver)).into_owned();
    assert!(
        raw_manual.contains(r#""new":{"hello":[1,2.50]}"#),
        "{raw_manual}"
    );

    let out = output(
        &[
            "invoke",
            "--config",
            &cfg_s,
            "hasura_events",
            "--data",
            r#"{"by":"hand"}"#,
        ],
        &env,
    );
    assert!(out.status.success());
    let hasura_manual_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let hasura = receiver
        .wait("hasura", "5 hasura events", |h| h.len() == 5)
        .await;
    let (hasura_manual, hasura): (Vec<&Hit>, Vec<&Hit>) = hasura
        .iter()
        .partition(|h| h.json()["event"]["op"] == "MANUAL");
    let manual_body = hasura_manual[0].json();
    assert_eq!(manual_body["id"], hasura_manual_id.as_str());
    assert_eq!(manual_body["trigger"]["name"], "hasura_events");
    assert_eq!(manual_body["event"]["data"]["old"], Value::Null);
    assert_eq!(
        manual_body["event"]["data"]["new"],
        serde_json::json!({"by": "hand"})
    );
    for (hit, (action, old, new)) in hasura.iter().zip(expect.iter()) {
        let body = hit.json();
        assert_eq!(body["trigger"]["name"], "hasura_events");
        assert_eq!(
            body["table"],
            serde_json::json!({"schema": "public", "name": "orders"})
        );
        assert_eq!(body["event"]["op"], *action);
        assert_eq!(body["event"]["data"]["old"], *old);
        assert_eq!(body["event"]["data"]["new"], *new);
        assert_eq!(body["delivery_info"]["current_retry"], 0);
        assert_eq!(body["delivery_info"]["max_retries"], 5);
        assert!(body["id"].is_string() && body["created_at"].is_string());
    }
    // The column filter: only the status change fired.
    let status = receiver
        .wait("status", "the status change", |h| !h.is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status_all = receiver.hits("status");
    assert_eq!(status_all.len(), 1, "only the UPDATE of `status` fires");
    assert_eq!(status[0].json()["data"]["new"]["status"], "paid");
    assert_eq!(status[0].json()["data"]["old"]["status"], "new");
    daemon.stop();
}

fn seed_manual_raw(receiver: &Receiver) -> Vec<u8> {
    receiver
        .hits("seed")
        .into_iter()
        .find(|h| h.json()["action"] == "MANUAL")
        .map(|h| h.body)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_backoff_retry_after_timeouts_rejects_signing_and_redeliver() {
    let (db, receiver, addr, dir) = setup(
        "CREATE TABLE flaky (id int PRIMARY KEY); CREATE TABLE bad (id int PRIMARY KEY);
         CREATE TABLE later (id int PRIMARY KEY); CREATE TABLE slow (id int PRIMARY KEY);",
    )
    .await;
    receiver.script("flaky", vec![(500, None, 0), (500, None, 0)]);
    receiver.script("bad", vec![(400, None, 0)]);
    receiver.script("later", vec![(503, Some("2"), 0)]);
    receiver.script("slow", vec![(200, None, 3000)]);
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (body, port) = config(
        &db,
        &format!(
            r#"[[trigger]]
name = "flaky"
table = "flaky"
retry = {{ max_retries = 5, initial_interval = "300ms", max_interval = "10s", timeout = "5s" }}
webhook = {{ url = "http://{addr}/flaky", headers = {{ "X-Api-Key" = {{ from_env = "HOOK_KEY" }}, "X-Static" = "yes" }}, signing_secret_from_env = "HOOK_SECRET" }}

[[trigger]]
name = "bad"
table = "bad"
webhook = {{ url = "http://{addr}/bad" }}

[[trigger]]
name = "later"
table = "later"
retry = {{ max_retries = 3, initial_interval = "100ms", max_interval = "10s", timeout = "5s" }}
webhook = {{ url = "http://{addr}/later" }}

[[trigger]]
name = "slow"
table = "slow"
retry = {{ max_retries = 3, initial_interval = "100ms", max_interval = "10s", timeout = "1s" }}
webhook = {{ url = "http://{addr}/slow" }}
"#
        ),
    );
    let env = [("HOOK_KEY", "k-123"), ("HOOK_SECRET", secret)];
    let (cfg, daemon) = start_healthy(&dir, &body, port, &env).await;
    db.client
        .batch_execute("INSERT INTO flaky VALUES (1); INSERT INTO bad VALUES (1); INSERT INTO later VALUES (1); INSERT INTO slow VALUES (1);")
        .await
        .expect("insert");

    // 500, 500, 200: delivered on the third attempt, same id, growing gaps.
    let flaky = receiver
        .wait("flaky", "three attempts", |h| h.len() == 3)
        .await;
    let ids: Vec<Value> = flaky.iter().map(|h| h.json()["id"].clone()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]));
    let (g1, g2) = (flaky[1].at - flaky[0].at, flaky[2].at - flaky[1].at);
    assert!(
        g1 >= Duration::from_millis(200) && g2 > g1,
        "gaps grow: {g1:?} {g2:?}"
    );
    // Headers and the Standard Webhooks signature.
    let h = &flaky[2].headers;
    assert_eq!(
        h.get("x-api-key").map(|v| v.as_bytes()),
        Some(&b"k-123"[..])
    );
    assert_eq!(h.get("x-static").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    let header = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("webhook-id"), ids[0].as_str().unwrap_or_default());
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("hmac");
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(&flaky[2].body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert!(
        header("webhook-signature")
            .split(' ')
            .any(|s| s == expected),
        "signature verifies"
    );

    // Retry-After: 2 is respected.
    let later = receiver
        .wait("later", "the retry after Retry-After", |h| h.len() == 2)
        .await;
    let gap = later[1].at - later[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After honoured: {gap:?}"
    );

    // A timeout is a failed attempt: the slow answer is retried.
    receiver
        .wait("slow", "a retry after the timeout", |h| h.len() >= 2)
        .await;

    // 400: failed after one attempt, then redelivered by hand with the same id.
    let bad = receiver
        .wait("bad", "the 400 attempt", |h| h.len() == 1)
        .await;
    let cfg_s = cfg.display().to_string();
    let deadline = Instant::now() + WAIT;
    let failed_id = loop {
        let out = output(
            &[
                "events",
                "list",
                "--config",
                &cfg_s,
                "--trigger",
                "bad",
                "--status",
                "failed",
                "--json",
            ],
            &env,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Value = serde_json::from_slice(&out.stdout).expect("json list");
        if let Some(first) = list.as_array().and_then(|a| a.first()) {
            assert_eq!(first["attempts"], 1, "a 400 is not retried");
            break first["id"].as_str().unwrap_or_default().to_string();
        }
        assert!(Instant::now() < deadline, "the 400 event is marked failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed_id, bad[0].json()["id"].as_str().unwrap_or_default());
    let out = output(&["events", "show", &failed_id, "--config", &cfg_s], &env);
    assert!(out.status.success());
    let shown: Value = serde_json::from_slice(&out.stdout).expect("json show");
    assert_eq!(shown["attempts_log"][0]["status"], 400);
    assert_eq!(shown["payload"]["table"], "bad");
    let out = output(
        &["events", "redeliver", &failed_id, "--config", &cfg_s],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = receiver
        .wait("bad", "the redelivery", |h| h.len() == 2)
        .await;
    assert_eq!(bad[1].json()["id"], failed_id.as_str());
    let out = output(&["status", "--config", &cfg_s], &env);
    assert!(out.status.success());
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("TRIGGER") && status.contains("flaky") && status.contains("capture lag"),
        "{status}"
    );
    let flaky = status
        .lines()
        .find(|l| l.starts_with("flaky "))
        .unwrap_or_default();
    assert!(
        status.contains("ORDERING") && status.contains("PAYLOAD COLUMNS"),
        "{status}"
    );
    assert!(
        flaky.contains(" row ") && flaky.trim_end().ends_with("all"),
        "each trigger's ordering, filter and payload columns: {status}"
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_mistake_and_creates_nothing() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        .await
        .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let (body, _) = config(
        &db,
        r#"[retention]
delivered = "7 days"

[[trigger]]
name = "a"
table = "orders"
retry = { max_retries = 5, initial_interval = "1s", max_interval = "5m", timeout = "30x" }
webhook = { url_from_env = "MISSING_HOOK_VAR" }

[[trigger]]
name = "a"
table = "orders"
webhook = { url = "localhost/hook" }
"#,
    );
    let cfg = write_config(&dir, &body);
    let cfg_s = cfg.display().to_string();
    let out = output(&["check", "--config", &cfg_s], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "retention.delivered",
        "retry.timeout",
        "MISSING_HOOK_VAR",
        "\"a\"",
        "trigger[1].webhook.url",
    ] {
        assert!(err.contains(needle), "check names {needle}:\n{err}");
    }
    assert!(
        err.lines().filter(|l| l.contains(&cfg_s)).count() >= 5,
        "{err}"
    );
    // Database-level mistakes: a missing table and a missing column, also all reported.
    let cfg2 = dir.path().join("db.toml");
    std::fs::write(
        &cfg2,
        config(
            &db,
            r#"[[trigger]]
name = "x"
table = "nope"
stdout = {}

[[trigger]]
name = "y"
table = "orders"
columns = ["colour"]
stdout = {}
"#,
        )
        .0,
    )
    .expect("write");
    let cfg2_s = cfg2.display().to_string();
    let out = output(&["check", "--config", &cfg2_s], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("public.nope does not exist") && err.contains("\"colour\""),
        "{err}"
    );
    let schemas: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgevents'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(schemas, 0, "check created nothing");
    // Missing --config and PGEVENTS_CONFIG: a usage error.
    let out = output(&["status"], &[]);
    assert_eq!(out.status.code(), Some(2));
    // PGEVENTS_CONFIG is read when --config is absent.
    let out = output(&["check"], &[("PGEVENTS_CONFIG", cfg2_s.as_str())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_burst_loses_nothing() {
    let (db, receiver, addr, dir) = setup("CREATE TABLE burst (id int PRIMARY KEY)").await;
    let (body, port) = config(
            &db,
            &format!(
                "[[trigger]]\nname = \"burst\"\ntable = \"burst\"\nwebhook = {{ url = \"http://{addr}/burst\" }}\n"
            ),
    );
    let (cfg, mut daemon) = start_healthy(&dir, &body, port, &[]).await;
    let writer = {
        let url = db.url.clone();
        tokio::spawn(async move {
            let client = pgevents_testkit::db::connect(&url).await;
            for chunk in 0..50 {
                let from = chunk * 100 + 1;
                insert_ids(&client, "burst", from..=from + 99).await;
            }
        })
    };
    receiver
        .wait("burst", "deliveries under way", |h| h.len() >= 500)
        .await;
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit();
    let at_kill = receiver.hits("burst").len();
    writer.await.expect("writer");
    let _daemon = Daemon::start(&cfg, &[]);
    let hits = receiver
        .wait("burst", "all 5000 rows", |h| {
            h.iter()
                .map(|h| h.json()["data"]["new"]["id"].as_i64())
                .collect::<std::collections::HashSet<_>>()
                .len()
                == 5000
        })
        .await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for h in &hits {
        *per_id
            .entry(h.json()["id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let duplicates = per_id.values().filter(|&&n| n > 1).count();
    assert_eq!(per_id.len(), 5000);
    // Only events in flight at the kill can come twice: at most one claim batch.
    assert!(
        duplicates <= 1000,
        "{duplicates} duplicates (received {at_kill} before the kill)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_mode_delivers_without_triggers_and_uninstalls_its_slot() {
    let (db, receiver, addr, dir) =
        setup("CREATE TABLE wal_orders (id int PRIMARY KEY, status text)").await;
    let slot = format!("pgevents_cli_{}", std::process::id());
    let (body, port) = config(
        &db,
        &format!(
            "[[trigger]]\nname = \"wal\"\ntable = \"wal_orders\"\nwebhook = {{ url = \"http://{addr}/wal\" }}\n"
        ),
    );
    let body = body.replace(
        "[admin]",
        &format!(
            "[capture]\nmode = \"logical\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n[admin]"
        ),
    );
    let cfg = write_config(&dir, &body);
    let cfg_s = cfg.display().to_string();
    let out = output(&["check", "--config", &cfg_s], &[]);
    assert!(
        out.status.success(),
        "check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = Daemon::start(&cfg, &[]);
    wait_healthy(port).await;
    db.client
        .batch_execute(
            "INSERT INTO wal_orders VALUES (1, 'new'); UPDATE wal_orders SET status = 'paid'",
        )
        .await
        .expect("writes");
    let hits = receiver
        .wait("wal", "two events from the WAL", |h| h.len() == 2)
        .await;
    assert_eq!(hits[0].json()["action"], "INSERT");
    assert_eq!(
        hits[1].json()["data"]["old"],
        serde_json::json!({"id": 1, "status": "new"})
    );
    assert_eq!(
        hits[1].json()["data"]["new"],
        serde_json::json!({"id": 1, "status": "paid"})
    );
    let triggers: i64 = db
        .client
        .query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'wal_orders'::regclass AND NOT tgisinternal", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(triggers, 0, "no trigger on the user table in logical mode");
    let out = output(&["status", "--config", &cfg_s], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("replication slot lag"));
    daemon.stop();
    let out = output(&["uninstall", "--drop-log", "--config", &cfg_s], &[]);
    assert!(
        out.status.success(),
        "uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slots: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(slots, 0, "uninstall drops the slot");
}
