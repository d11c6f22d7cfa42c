//! Security through the real binary: the admin token guards every admin path but the health
//! check; secrets (webhook header values, the signing secret, the database password, the
//! admin token) never show in logs, command output, errors or API answers; hostile table,
//! column and schema names are always quoted; and the least-privilege mode works — installed
//! by the owner, run by a role holding only the documented grants.

use std::time::Duration;

use crate::support::{config, http, run, text, write_config, Daemon, Db, Receiver, Reply, WAIT};

const DB_PASSWORD: &str = "db-Pw-7c1e9a5b3f";
const HOOK_KEY: &str = "hook-key-5e8d2c41a9";
const SIGNING_SECRET: &str = "whsec_c2lnbmluZy1zZWNyZXQtZm9yLXRlc3Rz";
const ADMIN_TOKEN: &str = "admin-token-b6f3e07d12";

/// Asserts that none of the secrets appears in `text` (`what` says where it came from).
fn assert_no_secret(what: &str, text: &str) {
    for secret in [
        DB_PASSWORD,
        HOOK_KEY,
        SIGNING_SECRET,
        SIGNING_SECRET.trim_start_matches("whsec_"),
        ADMIN_TOKEN,
    ] {
        assert!(
            !text.contains(secret),
            "{what} shows a secret ({secret:?}):\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_every_path_and_no_secret_ever_shows() {
    // A cluster of our own whose pg_hba.conf makes the daemon's role authenticate with a
    // password (SCRAM), so the password really is in use.
    let db = Db::dedicated().await;
    let cluster = db.cluster.as_ref().expect("cluster");
    db.client
        .batch_execute(&format!(
            "CREATE ROLE app LOGIN SUPERUSER PASSWORD '{DB_PASSWORD}';
             CREATE TABLE orders (id int8 PRIMARY KEY, status text);"
        ))
        .await
        .expect("role and table");
    let hba = cluster.dir().join("data/pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(
        &hba,
        format!("host all app 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .expect("write pg_hba.conf");
    db.client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    let url = db.url_as("app", Some(DB_PASSWORD), db.port());
    let wrong = db.url_as("app", Some("not-the-password"), db.port());
    // The password is required.
    crate::support::wait_until(WAIT, "password authentication in force", || async {
        tokio_postgres::connect(&db.url_as("app", None, db.port()), tokio_postgres::NoTls)
            .await
            .is_err()
    })
    .await;

    let receiver = Receiver::start().await;
    // The first attempt of every event fails: errors are logged and kept.
    receiver.answer(|_, _, seen| {
        if seen == 0 {
            Reply::Status(503)
        } else {
            Reply::Status(200)
        }
    });
    let dir = tempfile::tempdir().expect("dir");
    let cfg = write_config(
        &dir,
        &format!(
            r#"[database]
url_from_env = "DATABASE_URL"

[admin]
listen = "127.0.0.1:0"
token_from_env = "ADMIN_TOKEN"

[[trigger]]
name = "orders"
table = "orders"
retry = {{ max_retries = 5, initial_interval = "100ms", max_interval = "1s", timeout = "5s" }}
webhook = {{ url = "http://{addr}/orders", headers = {{ "X-Api-Key" = {{ from_env = "HOOK_KEY" }} }}, signing_secret_from_env = "HOOK_SECRET" }}
"#,
            addr = receiver.addr
        ),
    );
    let cfg_s = cfg.display().to_string();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("HOOK_KEY", HOOK_KEY),
        ("HOOK_SECRET", SIGNING_SECRET),
        ("PGEVENTS_LOG", "debug"),
    ];
    let mut daemon = Daemon::start(&cfg, &env);
    let admin = daemon.admin_addr().await;
    daemon.wait_log("pgevents running").await;
    db.client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'new'), (2, 'new'); UPDATE orders SET status = 'paid'",
        )
        .await
        .expect("writes");
    let rows = (1..=2).collect();
    receiver.wait_rows("orders", &rows, WAIT).await;
    crate::support::wait_until(WAIT, "four deliveries", || {
        let n = receiver
            .hits("orders")
            .iter()
            .filter(|h| h.delivered())
            .count();
        async move { n == 4 }
    })
    .await;
    // The secrets are in use: the header and a signature arrive.
    let hit = &receiver.hits("orders")[0];
    let header = |name: &str| {
        hit.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-api-key").as_deref(), Some(HOOK_KEY));
    assert!(header("webhook-signature").is_some_and(|s| s.starts_with("v1,")));

    // Every admin path but /healthz (and the console's static files) needs the token.
    let list = http(
        admin,
        "GET",
        "/api/v1/events?limit=10",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.body);
    let events: serde_json::Value = serde_json::from_str(&list.body).expect("events json");
    let id = events
        .as_array()
        .and_then(|a| a.first())
        .or_else(|| events["events"].as_array().and_then(|a| a.first()))
        .and_then(|e| e["id"].as_str())
        .unwrap_or_else(|| panic!("an event id in {}", list.body))
        .to_string();
    let guarded: Vec<(&str, String, Option<&str>)> = vec![
        ("GET", "/metrics".into(), None),
        ("GET", "/api/v1/triggers".into(), None),
        ("GET", "/api/v1/events".into(), None),
        (
            "GET",
            "/api/v1/events?status=delivered&limit=5".into(),
            None,
        ),
        ("GET", format!("/api/v1/events/{id}"), None),
        ("GET", format!("/api/v1/events/{id}/payload"), None),
        ("POST", format!("/api/v1/events/{id}/redeliver"), Some("")),
        (
            "POST",
            "/api/v1/triggers/orders/invoke".into(),
            Some(r#"{"manual":true}"#),
        ),
    ];
    let mut answers = String::new();
    for (method, path, body) in &guarded {
        for token in [None, Some("wrong-token"), Some("")] {
            let a = http(admin, method, path, token, *body).await;
            assert_eq!(
                a.status, 401,
                "{method} {path} with token {token:?}: {}",
                a.body
            );
            answers.push_str(&a.body);
        }
        let a = http(admin, method, path, Some(ADMIN_TOKEN), *body).await;
        assert!(
            (200..300).contains(&a.status),
            "{method} {path} with the token: {} {}",
            a.status,
            a.body
        );
        answers.push_str(&a.body);
        answers.push_str(&format!("{:?}", a.headers));
    }
    for path in ["/healthz", "/"] {
        let a = http(admin, "GET", path, None, None).await;
        assert_eq!(a.status, 200, "{path} needs no token");
    }
    assert_no_secret("the admin API's answers", &answers);

    // The commands' output, successful or not.
    let mut outputs = String::new();
    for args in [
        vec!["status"],
        vec!["check"],
        vec!["events", "list", "--json"],
        vec!["events", "show", id.as_str()],
    ] {
        let mut full = args.clone();
        full.extend(["--config", cfg_s.as_str()]);
        let out = run(&full, &env).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        outputs.push_str(&stdout);
        outputs.push_str(&stderr);
    }
    // A wrong password, a missing table, an admin port in use: errors without secrets.
    let wrong_env = [
        ("DATABASE_URL", wrong.as_str()),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("HOOK_KEY", HOOK_KEY),
        ("HOOK_SECRET", SIGNING_SECRET),
    ];
    for command in ["check", "status", "install"] {
        let out = run(&[command, "--config", &cfg_s], &wrong_env).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command} with a wrong password: {stderr}"
        );
        assert!(
            stderr.contains("password authentication failed"),
            "{stderr}"
        );
        assert!(!stderr.contains("not-the-password"), "{stderr}");
        outputs.push_str(&stdout);
        outputs.push_str(&stderr);
    }
    let broken = write_config(
        &dir,
        &std::fs::read_to_string(&cfg)
            .expect("config")
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\""))
            .replace("table = \"orders\"", "table = \"missing\""),
    );
    let broken_s = broken.display().to_string();
    for command in ["check", "run"] {
        let out = run(&[command, "--config", &broken_s], &env).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        outputs.push_str(&stdout);
        outputs.push_str(&stderr);
    }
    assert_no_secret("the commands' output", &outputs);

    // The daemon's own log, at debug level, after deliveries, failures and retries.
    daemon.assert_running("after the checks");
    let log = daemon.log();
    assert!(
        log.contains("DEBUG") && log.lines().count() > 20,
        "a debug log was written"
    );
    assert_no_secret("the daemon's debug log", &log);
    daemon.stop().await;
    // The attempt log keeps error excerpts: no secret there either.
    let kept = db
        .client
        .query_one(
            "SELECT coalesce(string_agg(coalesce(error, '') || coalesce(response, ''), ' '), '') FROM pgevents.attempt",
            &[],
        )
        .await
        .expect("attempts")
        .get::<_, String>(0);
    assert_no_secret("the attempt log", &kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_always_quoted() {
    let db = Db::fresh("sec_names").await;
    db.client
        .batch_execute(
            r#"CREATE TABLE sentinel (id int);
               CREATE SCHEMA "we""ird sch.ema";
               CREATE TABLE "we""ird sch.ema"."Or""ders; DROP TABLE sentinel;--" (
                   "i""d" int8 PRIMARY KEY,
                   "st""at us; DROP TABLE sentinel" text,
                   "Note" text);"#,
        )
        .await
        .expect("hostile table");
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let cfg = write_config(
        &dir,
        &format!(
            r#"[database]
url = "{url}"
log_schema = 'pg"events; DROP TABLE sentinel;--'

[admin]
listen = "127.0.0.1:0"

[[trigger]]
name = "weird.name-1"
table = '"we""ird sch.ema"."Or""ders; DROP TABLE sentinel;--"'
columns = ['st"at us; DROP TABLE sentinel']
webhook = {{ url = "http://{addr}/weird" }}
"#,
            url = db.url,
            addr = receiver.addr
        ),
    );
    let cfg_s = cfg.display().to_string();
    let out = run(&["check", "--config", &cfg_s], &[]).await;
    assert!(out.status.success(), "check: {}", text(&out).1);
    let daemon = Daemon::start(&cfg, &[]);
    daemon.wait_log("pgevents running").await;
    db.client
        .batch_execute(
            r#"INSERT INTO "we""ird sch.ema"."Or""ders; DROP TABLE sentinel;--" VALUES (1, 'new', 'a');
               UPDATE "we""ird sch.ema"."Or""ders; DROP TABLE sentinel;--" SET "Note" = 'b';
               UPDATE "we""ird sch.ema"."Or""ders; DROP TABLE sentinel;--" SET "st""at us; DROP TABLE sentinel" = 'paid';
               DELETE FROM "we""ird sch.ema"."Or""ders; DROP TABLE sentinel;--";"#,
        )
        .await
        .expect("writes");
    crate::support::wait_until(
        WAIT,
        "three events (the Note update is filtered out)",
        || {
            let n = receiver.hits("weird").len();
            async move { n >= 3 }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = receiver.hits("weird");
    assert_eq!(
        hits.len(),
        3,
        "only INSERT, the filtered column's UPDATE, DELETE"
    );
    let actions: Vec<&str> = hits
        .iter()
        .map(|h| h.body["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(actions, ["INSERT", "UPDATE", "DELETE"]);
    for h in &hits {
        assert_eq!(h.body["schema"], "we\"ird sch.ema");
        assert_eq!(h.body["table"], "Or\"ders; DROP TABLE sentinel;--");
        assert_eq!(h.body["trigger"], "weird.name-1");
    }
    assert_eq!(
        hits[1].body["data"]["new"]["st\"at us; DROP TABLE sentinel"],
        "paid"
    );
    assert_eq!(hits[0].body["data"]["new"]["i\"d"], 1);
    let out = run(&["status", "--config", &cfg_s], &[]).await;
    let (status, err) = text(&out);
    assert!(out.status.success(), "status: {err}");
    assert!(status.contains("weird.name-1"), "{status}");
    daemon.stop().await;
    let out = run(&["uninstall", "--drop-log", "--config", &cfg_s], &[]).await;
    assert!(out.status.success(), "uninstall: {}", text(&out).1);
    assert_eq!(
        db.count("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal")
            .await,
        0,
        "uninstall removes the triggers"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pg\"events%'")
            .await,
        0,
        "uninstall --drop-log removes the hostile log schema"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pg_class WHERE relname = 'sentinel'")
            .await,
        1,
        "no name was ever executed as SQL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_install_as_owner_run_as_a_role_with_only_the_grants() {
    let db = Db::fresh("sec_least").await;
    let suffix = std::process::id();
    let (runner, writer) = (
        format!("pgevents_run_{suffix}"),
        format!("app_writer_{suffix}"),
    );
    db.client
        .batch_execute(&format!(
            "CREATE TABLE orders (id int8 PRIMARY KEY, status text);
             DROP ROLE IF EXISTS {writer}; CREATE ROLE {writer} LOGIN;
             GRANT INSERT, UPDATE ON orders TO {writer};"
        ))
        .await
        .expect("table and writer");
    let receiver = Receiver::start().await;
    let triggers = format!(
        "[[trigger]]\nname = \"orders\"\ntable = \"orders\"\nwebhook = {{ url = \"http://{}/orders\" }}\n",
        receiver.addr
    );
    let owner_dir = tempfile::tempdir().expect("dir");
    let owner_cfg = write_config(&owner_dir, &config(&db.url, &triggers));
    let out = run(
        &["install", "--config", &owner_cfg.display().to_string()],
        &[],
    )
    .await;
    assert!(out.status.success(), "install as owner: {}", text(&out).1);
    db.runner_role(&runner, "runner-pw", "pgevents").await;
    let dir = tempfile::tempdir().expect("dir");
    let cfg = write_config(
        &dir,
        &config(&db.url_as(&runner, Some("runner-pw"), db.port()), &triggers),
    );
    let cfg_s = cfg.display().to_string();
    // The role holds nothing on the watched table, and needs nothing.
    let as_runner = crate::support::connect(&db.url_as(&runner, None, db.port())).await;
    assert!(
        as_runner.query("SELECT * FROM orders", &[]).await.is_err(),
        "the runner cannot read the watched table"
    );
    let out = run(&["check", "--config", &cfg_s], &[]).await;
    assert!(
        out.status.success(),
        "check as the runner: {}",
        text(&out).1
    );
    let mut daemon = Daemon::start(&cfg, &[]);
    daemon.wait_log("pgevents running").await;
    assert!(
        daemon.log().contains("this role may not install"),
        "{}",
        daemon.tail(10)
    );
    // An application role that may only write the table: its changes are captured.
    let app = crate::support::connect(&db.url_as(&writer, None, db.port())).await;
    app.batch_execute("INSERT INTO orders VALUES (1, 'new'); UPDATE orders SET status = 'paid'")
        .await
        .expect("the writer writes");
    crate::support::wait_until(WAIT, "both events delivered", || {
        let n = receiver.hits("orders").len();
        async move { n == 2 }
    })
    .await;
    // The operator commands work for the runner too.
    let out = run(&["status", "--config", &cfg_s], &[]).await;
    assert!(
        out.status.success(),
        "status as the runner: {}",
        text(&out).1
    );
    let out = run(
        &[
            "invoke",
            "--config",
            &cfg_s,
            "orders",
            "--data",
            r#"{"by":"runner"}"#,
        ],
        &[],
    )
    .await;
    let (id, err) = text(&out);
    assert!(out.status.success(), "invoke as the runner: {err}");
    crate::support::wait_until(WAIT, "the manual event", || {
        let n = receiver.hits("orders").len();
        async move { n == 3 }
    })
    .await;
    let out = run(&["events", "redeliver", id.trim(), "--config", &cfg_s], &[]).await;
    assert!(
        out.status.success(),
        "redeliver as the runner: {}",
        text(&out).1
    );
    crate::support::wait_until(WAIT, "the redelivery", || {
        let n = receiver.hits("orders").len();
        async move { n == 4 }
    })
    .await;
    daemon.assert_running("as the runner");
    daemon.stop().await;
    // A config change needs the owner: the runner says so instead of half-applying it.
    let changed = write_config(
        &dir,
        &std::fs::read_to_string(&cfg).expect("config").replace(
            "table = \"orders\"",
            "table = \"orders\"\noperations = [\"INSERT\"]",
        ),
    );
    let out = run(&["run", "--config", &changed.display().to_string()], &[]).await;
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("run `pgevents install` as the database owner first"),
        "{err}"
    );
    drop(as_runner);
    drop(app);
    db.client
        .batch_execute(&format!(
            "DROP OWNED BY {runner}; DROP ROLE {runner}; DROP OWNED BY {writer}; DROP ROLE {writer};"
        ))
        .await
        .expect("drop roles");
}
