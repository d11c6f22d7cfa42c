//! Order and once-only under ordinary operation: the real `pgevents run` against a real
//! PostgreSQL and a webhook receiver on loopback, through what happens every day — rolling
//! restarts with a slow receiver, several instances, primary-key changes, TRUNCATE, tables
//! without a primary key, odd response bodies, bursts, a trigger dropped from the config, a
//! long log schema name, an application transaction open across a restart. No fault is
//! injected, so each case asserts that nothing is lost, that each row's events arrive in
//! commit order, and that nothing arrives twice. RELIABILITY.md describes each case.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    assert_delivered_in_order, assert_duplicates_only_across, config, config_in_schema, connect,
    counts, events, hook, run, status, text, wait_until, within, write_config, Daemon, Db, Hit,
    Receiver, Reply, WAIT,
};

/// Retries for receivers that fail for a few seconds.
const QUICK: &str =
    "max_retries = 20, initial_interval = \"200ms\", max_interval = \"1s\", timeout = \"5s\"";

/// Retries with a timeout longer than the 12 s the slow receiver takes.
const OUTLAST_SLOW: &str =
    "max_retries = 5, initial_interval = \"200ms\", max_interval = \"1s\", timeout = \"30s\"";

/// Retries with a 3 s timeout, for a receiver that answers in 1 s.
const THREE_SECONDS: &str =
    "max_retries = 3, initial_interval = \"500ms\", max_interval = \"2s\", timeout = \"3s\"";

/// Each test's time limit: longer than [`WAIT`], so a wait that times out says what it waited for.
const LIMIT: Duration = Duration::from_secs(100);

/// A fresh database holding `tables` (versioned), a receiver, and a config file with the
/// text `config_text` makes of the database URL and the receiver's address; the directory
/// holds the file, to be kept while the test runs.
async fn setup(
    prefix: &str,
    tables: &[&str],
    config_text: impl FnOnce(&str, SocketAddr) -> String,
) -> (Db, Receiver, PathBuf, tempfile::TempDir) {
    let db = Db::fresh(prefix).await;
    db.versioned_tables(tables).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let cfg = write_config(&dir, &config_text(&db.url, receiver.addr));
    (db, receiver, cfg, dir)
}

/// The config text of one webhook trigger on `table` with `retry`, for [`setup`].
fn one_hook(table: &'static str, retry: &'static str) -> impl FnOnce(&str, SocketAddr) -> String {
    move |url, addr| config(url, &hook(table, addr, retry))
}

/// Every version of every row of `table` delivered to `/{table}` exactly once, in commit order.
async fn assert_delivered_once_in_order(db: &Db, receiver: &Receiver, table: &str) {
    assert_delivered_in_order(db, receiver, table, &[]).await;
    assert_eq!(assert_duplicates_only_across(receiver, table, &[]), 0);
}

/// A delivery as the assertions name it: `INSERT 1 v0`, `UPDATE 1→2 v1` (a key change),
/// `UPDATE 2 v2`, `TRUNCATE`.
fn describe(hit: &Hit) -> String {
    let data = &hit.body["data"];
    let id = |image: &str| data[image]["id"].as_i64();
    let action = hit.body["action"].as_str().unwrap_or("?");
    match (id("old"), id("new"), hit.version) {
        (Some(old), Some(new), Some(v)) if old != new => format!("{action} {old}→{new} v{v}"),
        (_, _, Some(v)) => format!("{action} {} v{v}", hit.row.unwrap_or_default()),
        _ => action.to_string(),
    }
}

/// Waits until `/{name}` got `total` deliveries, asserts there were no more and no event
/// came twice, and that the deliveries of each of `chains` (as [`describe`] names them)
/// arrived in the order given.
async fn assert_arrival_order(receiver: &Receiver, name: &str, total: usize, chains: &[&[&str]]) {
    wait_until(WAIT, format!("{total} deliveries to /{name}"), || {
        let n = receiver.deliveries(name).len();
        async move { n >= total }
    })
    .await;
    let delivered: Vec<String> = receiver.deliveries(name).iter().map(describe).collect();
    assert_eq!(
        delivered.len(),
        total,
        "/{name} got exactly the {total} events committed, each once: {delivered:?}"
    );
    assert_eq!(assert_duplicates_only_across(receiver, name, &[]), 0);
    for chain in chains {
        let mut before: Option<(usize, &str)> = None;
        for step in chain.iter() {
            let at = delivered
                .iter()
                .position(|d| d == step)
                .unwrap_or_else(|| panic!("{step} was not delivered to /{name}: {delivered:?}"));
            if let Some((earlier, earlier_step)) = before {
                assert!(
                    at > earlier,
                    "/{name}: {step} arrived before {earlier_step}, out of commit order: {delivered:?}"
                );
            }
            before = Some((at, step));
        }
    }
}

/// Makes the receiver answer 500 to the first four attempts of the INSERT of row 1 (version 0)
/// and 200 to everything else, inserts row 1 into `table`, and waits until that INSERT failed
/// once: the later writes of the test are committed while it is failing.
async fn insert_failing_row_one(db: &Db, receiver: &Receiver, table: &str) {
    receiver.answer(|_, body, seen| {
        let new = &body["data"]["new"];
        if body["action"] == "INSERT" && new["id"] == 1 && new["v"] == 0 && seen < 4 {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    });
    db.client
        .batch_execute(&format!("INSERT INTO {table} (id) VALUES (1)"))
        .await
        .expect("insert row 1");
    wait_until(WAIT, "the INSERT of row 1 to fail once", || {
        let failed = receiver.hits(table).iter().any(|h| h.answered == Some(500));
        async move { failed }
    })
    .await;
}

/// Runs each of `statements` in a transaction of its own.
async fn commit_each(db: &Db, statements: &[&str]) {
    for sql in statements {
        db.client.batch_execute(sql).await.expect(sql);
    }
}

/// Starts a daemon on `cfg` and waits until it runs.
async fn running(cfg: &Path) -> Daemon {
    let daemon = Daemon::start(cfg, &[]);
    daemon.wait_log("pgevents running").await;
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_a_receiver_slower_than_the_lease() {
    within(LIMIT, async {
        let (db, receiver, cfg, _dir) = setup(
            "ordinary_rolling",
            &["rolling"],
            one_hook("rolling", OUTLAST_SLOW),
        )
        .await;
        // Each request takes 12 s: longer than the 10 s lease.
        receiver.answer(|_, _, _| Reply::Slow(200, Duration::from_secs(12)));
        let a = running(&cfg).await;
        commit_each(
            &db,
            &[
                "INSERT INTO rolling SELECT generate_series(1, 10)",
                "UPDATE rolling SET v = v + 1 WHERE id <= 5",
            ],
        )
        .await;
        wait_until(WAIT, "the ten INSERTs in flight", || {
            let n = receiver.hits("rolling").len();
            async move { n >= 10 }
        })
        .await;
        // A rolling deploy: the old instance is told to stop, the new one starts at once.
        a.signal(libc::SIGTERM);
        let b = Daemon::start(&cfg, &[]);
        a.assert_clean_exit().await;
        assert_delivered_once_in_order(&db, &receiver, "rolling").await;
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_a_stream_of_updates() {
    within(LIMIT, async {
        // Each instance names itself in a header, from its environment.
        let (db, receiver, cfg, _dir) = setup("ordinary_shared", &["shared"], |url, addr| {
            let instance = "headers = { \"X-Instance\" = { from_env = \"INSTANCE\" } }";
            config(
                url,
                &format!(
                    "[[trigger]]\nname = \"shared\"\ntable = \"shared\"\nretry = {{ {QUICK} }}\nwebhook = {{ url = \"http://{addr}/shared\", {instance} }}\n"
                ),
            )
        })
        .await;
        // A few milliseconds per request, varying by row, so the instances interleave.
        receiver.answer(|_, body, _| {
            let row = body["data"]["new"]["id"].as_u64().unwrap_or(0);
            Reply::Slow(200, Duration::from_millis(2 + row % 5))
        });
        let instances = ["a", "b", "c"];
        let mut daemons = Vec::new();
        for instance in instances {
            let daemon = Daemon::start(&cfg, &[("INSTANCE", instance)]);
            daemon.wait_log("pgevents running").await;
            daemons.push(daemon);
        }
        db.client
            .batch_execute("INSERT INTO shared SELECT generate_series(1, 50)")
            .await
            .expect("rows");
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for round in 0..40 {
            tick.tick().await;
            db.client
                .batch_execute(&format!(
                    "UPDATE shared SET v = v + 1 WHERE (id + {round}) % 3 <> 0"
                ))
                .await
                .expect("updates");
        }
        assert_delivered_once_in_order(&db, &receiver, "shared").await;
        // The instances shared the work.
        let deliveries = receiver.deliveries("shared");
        for instance in instances {
            let by = deliveries
                .iter()
                .filter(|h| {
                    h.headers
                        .iter()
                        .any(|(k, v)| k == "x-instance" && v == instance)
                })
                .count();
            eprintln!("instance {instance}: {by} of {} deliveries", deliveries.len());
            assert!(by > 0, "instance {instance} delivered nothing");
        }
        for mut daemon in daemons {
            daemon.assert_running("after the stream");
            daemon.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_key_change_waits_for_the_old_key() {
    within(LIMIT, async {
        let (db, receiver, cfg, _dir) =
            setup("ordinary_key", &["keyed"], one_hook("keyed", QUICK)).await;
        let daemon = running(&cfg).await;
        insert_failing_row_one(&db, &receiver, "keyed").await;
        commit_each(
            &db,
            &[
                "UPDATE keyed SET id = 2, v = v + 1 WHERE id = 1",
                "UPDATE keyed SET v = v + 1 WHERE id = 2",
                // A new row under the old key.
                "INSERT INTO keyed (id, v) VALUES (1, 10)",
            ],
        )
        .await;
        assert_arrival_order(
            &receiver,
            "keyed",
            4,
            &[
                &["INSERT 1 v0", "UPDATE 1→2 v1", "UPDATE 2 v2"],
                &["UPDATE 1→2 v1", "INSERT 1 v10"],
            ],
        )
        .await;
        daemon.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_waits_for_earlier_events_and_later_ones_wait_for_it() {
    within(LIMIT, async {
        let (db, receiver, cfg, _dir) = setup("ordinary_truncate", &["truncated"], |url, addr| {
            let trigger = hook("truncated", addr, QUICK);
            let operations = "operations = [\"INSERT\", \"UPDATE\", \"DELETE\", \"TRUNCATE\"]";
            config(url, &format!("{trigger}{operations}\n"))
        })
        .await;
        let daemon = running(&cfg).await;
        insert_failing_row_one(&db, &receiver, "truncated").await;
        commit_each(
            &db,
            &[
                "INSERT INTO truncated (id) VALUES (2)",
                "UPDATE truncated SET v = v + 1 WHERE id = 2",
                "TRUNCATE truncated",
                "INSERT INTO truncated (id) VALUES (3)",
            ],
        )
        .await;
        assert_arrival_order(
            &receiver,
            "truncated",
            5,
            &[
                &["INSERT 1 v0", "TRUNCATE", "INSERT 3 v0"],
                &["INSERT 2 v0", "UPDATE 2 v1", "TRUNCATE"],
            ],
        )
        .await;
        daemon.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_without_primary_key_needs_table_ordering() {
    within(LIMIT, async {
        // Row ordering (the default) cannot work without a key: `check` says so.
        let (db, receiver, cfg, dir) = setup("ordinary_nokey", &[], one_hook("loose", QUICK)).await;
        db.client
            .batch_execute("CREATE TABLE loose (id int8, v int8 NOT NULL DEFAULT 0)")
            .await
            .expect("table");
        let out = run(&["check", "--config", &cfg.display().to_string()], &[]).await;
        let (stdout, stderr) = text(&out);
        let said = format!("{stdout}{stderr}");
        assert_eq!(out.status.code(), Some(2), "check refuses: {said}");
        for needle in ["loose", "ordering = \"table\"", "\"none\""] {
            assert!(said.contains(needle), "check names {needle}: {said}");
        }
        let trigger = format!(
            "{}ordering = \"table\"\n",
            hook("loose", receiver.addr, QUICK)
        );
        let cfg = write_config(&dir, &config(&db.url, &trigger));
        let out = run(&["check", "--config", &cfg.display().to_string()], &[]).await;
        assert!(
            out.status.success(),
            "check accepts ordering = \"table\": {:?}",
            text(&out)
        );
        let daemon = running(&cfg).await;
        insert_failing_row_one(&db, &receiver, "loose").await;
        commit_each(
            &db,
            &[
                "INSERT INTO loose (id) VALUES (2)",
                "UPDATE loose SET v = v + 1 WHERE id = 1",
                "UPDATE loose SET v = v + 1 WHERE id = 2",
                "INSERT INTO loose (id) VALUES (3)",
            ],
        )
        .await;
        // The whole table in commit order, behind its failing first INSERT.
        assert_arrival_order(
            &receiver,
            "loose",
            5,
            &[&[
                "INSERT 1 v0",
                "INSERT 2 v0",
                "UPDATE 1 v1",
                "UPDATE 2 v1",
                "INSERT 3 v0",
            ]],
        )
        .await;
        daemon.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_huge_response_bodies() {
    within(LIMIT, async {
        let tables = ["nul_body", "big_body", "plain_body"];
        let (db, receiver, cfg, _dir) = setup("ordinary_bodies", &tables, |url, addr| {
            let triggers: String = tables.iter().map(|t| hook(t, addr, QUICK)).collect();
            config(url, &triggers)
        })
        .await;
        let binary: Arc<[u8]> = Arc::from(&b"\x00ok\xff\xfe\x00 not utf-8 \xc3\x28\x00"[..]);
        let huge: Arc<[u8]> = vec![b'x'; 5 << 20].into();
        receiver.answer(move |name, _, _| match name {
            "nul_body" => Reply::Body(200, binary.clone()),
            "big_body" => Reply::Body(200, huge.clone()),
            _ => Reply::Status(200),
        });
        let daemon = running(&cfg).await;
        // Each transaction writes to all three tables, so their events settle together.
        for round in 1..=10 {
            let sql: String = tables
                .iter()
                .map(|t| {
                    format!(
                        "INSERT INTO {t} (id) VALUES ({round});
                         UPDATE {t} SET v = v + 1 WHERE id = {round};"
                    )
                })
                .collect();
            db.client.batch_execute(&sql).await.expect("writes");
        }
        for table in tables {
            assert_delivered_once_in_order(&db, &receiver, table).await;
        }
        wait_until(
            Duration::from_secs(30),
            "status to show every event delivered, none pending",
            || async {
                let status = status(&cfg).await;
                tables
                    .iter()
                    .all(|t| counts(&status, t) == Some((0, 20, 0)))
            },
        )
        .await;
        daemon.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_to_a_slow_webhook_waits_for_connections_without_timing_out() {
    within(LIMIT, async {
        let (db, receiver, cfg, _dir) = setup(
            "ordinary_burst",
            &["slow_burst"],
            one_hook("slow_burst", THREE_SECONDS),
        )
        .await;
        receiver.answer(|_, _, _| Reply::Slow(200, Duration::from_secs(1)));
        let daemon = running(&cfg).await;
        db.client
            .batch_execute("INSERT INTO slow_burst SELECT generate_series(1, 400)")
            .await
            .expect("burst");
        let versions = db.versions("slow_burst").await;
        receiver
            .wait_versions("slow_burst", &versions, Duration::from_secs(40))
            .await;
        assert_delivered_once_in_order(&db, &receiver, "slow_burst").await;
        assert_eq!(
            receiver.hits("slow_burst").len(),
            400,
            "each event was sent once"
        );
        wait_until(WAIT, "status to show 400 delivered", || async {
            counts(&status(&cfg).await, "slow_burst") == Some((0, 400, 0))
        })
        .await;
        let list = events(&cfg, &["--limit", "1000"]).await;
        let retried: Vec<&Value> = list.iter().filter(|e| e["attempts"] != 1).collect();
        assert!(
            retried.is_empty(),
            "no event took more than one attempt: {retried:?}"
        );
        daemon.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_dropped_from_the_config() {
    within(LIMIT, async {
        let (db, receiver, both, _both_dir) =
            setup("ordinary_dropped", &["kept", "dropped"], |url, addr| {
                let triggers = [hook("kept", addr, QUICK), hook("dropped", addr, QUICK)];
                config(url, &triggers.concat())
            })
            .await;
        // Both run for a while; the webhook of `dropped` fails, so its events wait, pending.
        receiver.answer(|name, _, _| match name {
            "dropped" => Reply::Status(503),
            _ => Reply::Status(200),
        });
        let daemon = running(&both).await;
        for table in ["kept", "dropped"] {
            commit_each(
                &db,
                &[
                    &format!("INSERT INTO {table} SELECT generate_series(1, 3)"),
                    &format!("UPDATE {table} SET v = v + 1 WHERE id = 2"),
                ],
            )
            .await;
        }
        assert_delivered_once_in_order(&db, &receiver, "kept").await;
        wait_until(
            WAIT,
            "the dropped trigger's four events in the log",
            || async { events(&both, &["--trigger", "dropped"]).await.len() == 4 },
        )
        .await;
        daemon.stop().await;
        // The config loses a trigger, and is installed.
        let kept_dir = tempfile::tempdir().expect("dir");
        let kept = write_config(&kept_dir, &one_hook("kept", QUICK)(&db.url, receiver.addr));
        let out = run(&["install", "--config", &kept.display().to_string()], &[]).await;
        assert!(out.status.success(), "install: {}", text(&out).1);
        let triggers = db
            .count(
                "SELECT count(*) FROM pg_trigger
                  WHERE tgrelid = 'dropped'::regclass AND NOT tgisinternal",
            )
            .await;
        assert_eq!(
            triggers, 0,
            "the dropped trigger's database trigger is gone"
        );
        db.client
            .batch_execute("INSERT INTO dropped (id) VALUES (4)")
            .await
            .expect("write");
        // Its undelivered events are kept and visible; the new write captured nothing.
        let list = events(&kept, &["--trigger", "dropped"]).await;
        assert_eq!(list.len(), 4, "the dropped trigger's events: {list:?}");
        assert!(
            list.iter().all(|e| e["status"] == "pending"),
            "kept pending: {list:?}"
        );
        let shown = status(&kept).await;
        // In its row or a line of its own: its name, and that the config lacks it.
        assert!(
            shown
                .lines()
                .any(|l| l.contains("dropped") && l.to_lowercase().contains("config")),
            "status names the dropped trigger as no longer configured: {shown}"
        );
        // The remaining trigger delivers; the dropped one's events are left alone.
        let attempted = receiver.hits("dropped").len();
        let daemon = running(&kept).await;
        db.client
            .batch_execute("INSERT INTO kept (id) VALUES (4)")
            .await
            .expect("write");
        assert_delivered_once_in_order(&db, &receiver, "kept").await;
        assert_eq!(
            receiver.hits("dropped").len(),
            attempted,
            "no attempt at the dropped trigger's events"
        );
        daemon.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_log_schema_while_the_dispatcher_sleeps() {
    within(LIMIT, async {
        let schema = format!("{:x<60}", "pgevents_log_");
        assert_eq!(schema.len(), 60);
        let (db, receiver, cfg, _dir) = setup("ordinary_schema", &["quiet"], |url, addr| {
            config_in_schema(url, &schema, &hook("quiet", addr, QUICK))
        })
        .await;
        let daemon = running(&cfg).await;
        for row in 1..=3i64 {
            // Asleep: the dispatcher holds its wake-up lock, and writers notify it.
            wait_until(WAIT, "the dispatcher to sleep", || async {
                db.count(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                      WHERE l.locktype = 'advisory' AND l.granted
                        AND d.datname = current_database()",
                )
                .await
                    > 0
            })
            .await;
            db.client
                .batch_execute(&format!(
                    "INSERT INTO quiet (id) VALUES ({row});
                     UPDATE quiet SET v = v + 1 WHERE id = {row}"
                ))
                .await
                .unwrap_or_else(|e| {
                    panic!("an application write failed while the dispatcher sleeps: {e:?}")
                });
            receiver
                .wait_versions("quiet", &[(row, 1)].into(), WAIT)
                .await;
        }
        assert_delivered_once_in_order(&db, &receiver, "quiet").await;
        daemon.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_beside_an_open_application_transaction() {
    within(LIMIT, async {
        let (db, receiver, cfg, _dir) =
            setup("ordinary_open", &["busy"], one_hook("busy", QUICK)).await;
        let a = running(&cfg).await;
        db.client
            .batch_execute("INSERT INTO busy SELECT generate_series(1, 5)")
            .await
            .expect("rows");
        receiver
            .wait_versions("busy", &db.versions("busy").await, WAIT)
            .await;
        // An application transaction writes to the table and stays open.
        let mut holder = connect(&db.url).await;
        let open = holder.transaction().await.expect("begin");
        open.batch_execute(
            "UPDATE busy SET v = v + 1 WHERE id = 1;
             INSERT INTO busy (id) VALUES (100)",
        )
        .await
        .expect("open writes");
        // The daemon restarts meanwhile.
        a.stop().await;
        let b = Daemon::start(&cfg, &[]);
        wait_until(
            WAIT,
            "the new daemon to run, or to wait for a lock on the table",
            || async {
                b.log().contains("pgevents running")
                    || db
                        .count(
                            "SELECT count(*) FROM pg_locks
                              WHERE NOT granted AND relation = 'busy'::regclass",
                        )
                        .await
                        > 0
            },
        )
        .await;
        // The application's other writes to the table go on: none waits behind the restart.
        let app = connect(&db.url).await;
        let limit = Duration::from_secs(3);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        for id in 200..210i64 {
            tick.tick().await;
            let started = Instant::now();
            tokio::time::timeout(
                limit,
                app.batch_execute(&format!("INSERT INTO busy (id) VALUES ({id})")),
            )
            .await
            .unwrap_or_else(|_| {
                panic!("an application INSERT waited more than {limit:?} behind the restart")
            })
            .expect("application insert");
            eprintln!("application insert {id}: {:?}", started.elapsed());
        }
        open.commit().await.expect("commit");
        b.wait_log("pgevents running").await;
        assert_delivered_once_in_order(&db, &receiver, "busy").await;
        b.stop().await;
    })
    .await;
}
