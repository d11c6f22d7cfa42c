//! Integration tests of the pgevents library against a real PostgreSQL.

mod backfill;
mod filters;
mod ordering;
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgevents::{Action, Event, Listener, RetryPolicy};
use support::{db, eventually, listening, start, Collector};

const WAIT: Duration = Duration::from_secs(60);

fn fast_retry(max_retries: u32, initial_ms: u64) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_interval: Duration::from_millis(initial_ms),
        max_interval: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_equal_postgres_to_json_for_every_type() {
    let db = db().await;
    db.client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
             CREATE TABLE typed (
                 id bigint PRIMARY KEY, amount numeric(40,20), doc jsonb, tags text[],
                 grid int[][], at timestamptz, raw bytea, uid uuid, feeling mood, note text)",
        )
        .await
        .expect("schema");
    let events = Collector::default();
    let running = start(Listener::builder(&db.url).on("typed", events.handler())).await;
    let row = |id: i64| format!("SELECT to_json(t)::text FROM typed t WHERE id = {id}");
    let json_of = |sql: String| {
        let c = &db.client;
        async move {
            c.query_one(&sql, &[])
                .await
                .expect("to_json")
                .get::<_, String>(0)
        }
    };
    db.client
        .batch_execute(
            r#"INSERT INTO typed VALUES
               (9007199254740993, 12345678901234567890.12345678901234567890,
                '{"b": [1, 2.50, {"c": null}], "a": "x"}', ARRAY['a', NULL, 'c "q"'],
                '{{1,2},{3,4}}', '2026-11-24 10:15:00.123456+00', '\xdeadbeef',
                'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', 'héllo'),
               (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"#,
        )
        .await
        .expect("insert");
    let inserted_big = json_of(row(9007199254740993)).await;
    let inserted_null = json_of(row(2)).await;
    events
        .wait_until(WAIT, "two inserts", |e| e.len() == 2)
        .await;
    db.client
        .batch_execute("UPDATE typed SET amount = -0.00000000000000000001, feeling = 'sad' WHERE id = 9007199254740993")
        .await
        .expect("update");
    let updated_big = json_of(row(9007199254740993)).await;
    db.client
        .batch_execute("DELETE FROM typed WHERE id = 2")
        .await
        .expect("delete");
    events
        .wait_until(WAIT, "update and delete", |e| e.len() == 4)
        .await;
    running.stop().await;

    let got = events.events();
    let by_action = |a: Action| got.iter().filter(move |e| e.action() == a);
    let inserts: Vec<&Event> = by_action(Action::Insert).collect();
    assert_eq!(inserts.len(), 2);
    let big = inserts
        .iter()
        .find(|e| e.new_json() == Some(inserted_big.as_str()))
        .expect("the big row's INSERT carries to_json(row) verbatim");
    assert!(big.old().is_none());
    assert!(big.payload_str().contains("9007199254740993"));
    assert!(big
        .payload_str()
        .contains("12345678901234567890.12345678901234567890"));
    assert!(inserts
        .iter()
        .any(|e| e.new_json() == Some(inserted_null.as_str())));
    let update = by_action(Action::Update).next().expect("an UPDATE");
    assert_eq!(update.old_json(), Some(inserted_big.as_str()));
    assert_eq!(update.new_json(), Some(updated_big.as_str()));
    let delete = by_action(Action::Delete).next().expect("a DELETE");
    assert_eq!(delete.old_json(), Some(inserted_null.as_str()));
    assert!(delete.new().is_none());
    // The seed shape, with data.old / data.new as PostgreSQL's JSON text.
    let expected = format!(
        r#""action":"UPDATE","created_at":"{}","data":{{"old":{},"new":{}}}}}"#,
        update.created_at_rfc3339(),
        inserted_big,
        updated_big
    );
    assert!(
        update.payload_str().ends_with(&expected),
        "{}",
        update.payload_str()
    );
    assert_eq!(update.table(), "typed");
    assert_eq!(update.schema(), "public");
    let ids: HashSet<_> = got.iter().map(Event::id).collect();
    assert_eq!(ids.len(), 4, "every event has its own id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_writes_yield_no_event_and_big_rows_arrive_whole() {
    let db = db().await;
    let (events, running) = listening(
        &db,
        "CREATE TABLE docs (id int PRIMARY KEY, body text)",
        "docs",
    )
    .await;
    db.client
        .batch_execute("BEGIN; INSERT INTO docs VALUES (1, 'never'); ROLLBACK;")
        .await
        .expect("rollback");
    let big: String = "x".repeat(10 * 1024 * 1024);
    db.client
        .execute("INSERT INTO docs VALUES (2, $1)", &[&big])
        .await
        .expect("10 MB insert commits");
    events
        .wait_until(WAIT, "the 10 MB row", |e| !e.is_empty())
        .await;
    running.stop().await;
    let got = events.events();
    assert_eq!(got.len(), 1, "the rolled-back insert produced no event");
    let body = got[0]
        .new()
        .and_then(|v| v.get("body"))
        .and_then(|v| v.as_str())
        .map(str::len);
    assert_eq!(body, Some(10 * 1024 * 1024));
    assert!(got[0].payload().len() > 10 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_identifiers_work() {
    let db = db().await;
    db.client
        .batch_execute(
            r#"CREATE SCHEMA "my schema";
               CREATE TABLE "my schema"."Weird ""Name""" ("Id" int PRIMARY KEY, "the value" text, "x'; DROP TABLE y; --" int)"#,
        )
        .await
        .expect("schema");
    let events = Collector::default();
    let running =
        start(Listener::builder(&db.url).on(r#""my schema"."Weird ""Name""""#, events.handler()))
            .await;
    db.client
        .batch_execute(
            r#"INSERT INTO "my schema"."Weird ""Name""" VALUES (1, 'a', 2);
               UPDATE "my schema"."Weird ""Name""" SET "the value" = 'b';
               DELETE FROM "my schema"."Weird ""Name""";"#,
        )
        .await
        .expect("writes");
    events
        .wait_until(WAIT, "three events", |e| e.len() == 3)
        .await;
    running.stop().await;
    let got = events.events();
    assert!(got
        .iter()
        .all(|e| e.schema() == "my schema" && e.table() == r#"Weird "Name""#));
    let actions: Vec<Action> = got.iter().map(Event::action).collect();
    assert_eq!(actions, [Action::Insert, Action::Update, Action::Delete]);
    assert_eq!(
        got[1]
            .new()
            .and_then(|n| n.get("the value"))
            .and_then(|v| v.as_str()),
        Some("b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_no_listener_runs_are_delivered_on_start() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE offline (id int PRIMARY KEY)")
        .await
        .expect("schema");
    // Install, then stop: nothing listens while the rows are written.
    let first = Collector::default();
    start(Listener::builder(&db.url).on("offline", first.handler()))
        .await
        .stop()
        .await;
    db.client
        .batch_execute("INSERT INTO offline SELECT generate_series(1, 1000)")
        .await
        .expect("insert");
    let events = Collector::default();
    let running = start(Listener::builder(&db.url).on("offline", events.handler())).await;
    events
        .wait_until(WAIT, "1000 events", |e| e.len() >= 1000)
        .await;
    running.stop().await;
    let ids: HashSet<i64> = support::ids(&events.events()).into_iter().collect();
    assert_eq!(ids.len(), 1000);
    assert_eq!(first.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_makes_the_space_of_moved_rows_reusable() {
    // Writers that never leave the capture table empty would grow its file without end
    // (each move reads all of it); the dispatcher vacuums it behind its moves.
    let db = db().await;
    let (events, running) = listening(&db, "CREATE TABLE busy (id int PRIMARY KEY)", "busy").await;
    db.client
        .batch_execute("INSERT INTO busy SELECT generate_series(1, 6000)")
        .await
        .expect("insert");
    events
        .wait_until(WAIT, "6000 events", |e| e.len() >= 6000)
        .await;
    let vacuums = || async {
        db.client
            .query_one(
                "SELECT vacuum_count FROM pg_stat_user_tables
                  WHERE schemaname = 'pgevents' AND relname = 'capture'",
                &[],
            )
            .await
            .expect("statistics")
            .get::<_, i64>(0)
    };
    eventually(
        WAIT,
        "a vacuum of the capture table after 6,000 rows moved through it",
        || async { vacuums().await > 0 },
    )
    .await;
    running.stop().await;
    let ids = support::ids(&events.events());
    assert_eq!(ids.len(), 6000, "each row's event once");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        6000,
        "no duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pending_from_elsewhere_are_claimed_while_a_trickle_is_delivered_as_it_moves() {
    // While every move delivers all it moves, the dispatcher skips claims that would find
    // nothing; an event written pending by someone else (here a manual one) must still be
    // claimed soon (25 ms after the last claim), however long the trickle goes on.
    const WRITERS: i32 = 4;
    let db = db().await;
    let (events, running) = listening(&db, "CREATE TABLE busy (id int PRIMARY KEY)", "busy").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let writer = support::connect(&db.url).await;
        let stop = stop.clone();
        // Writers that never pause: every move finds rows to move and deliver.
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            let mut id = w;
            while !stop.load(Ordering::Relaxed) {
                id += WRITERS;
                writer
                    .execute("INSERT INTO busy VALUES ($1)", &[&id])
                    .await
                    .expect("insert");
                written.push(i64::from(id));
            }
            written
        }));
    }
    events
        .wait_until(WAIT, "the trickle under way", |e| e.len() >= 500)
        .await;
    let trigger: i32 = db
        .client
        .query_one("SELECT id FROM pgevents.trigger", &[])
        .await
        .expect("trigger")
        .get(0);
    let schema = pgevents_log::LogSchema::default();
    pgevents_log::store::invoke(&db.client, &schema, trigger, &serde_json::json!({"n": 1}))
        .await
        .expect("invoke");
    let invoked = std::time::Instant::now();
    let manual = |e: &[Event]| e.iter().any(|e| e.action() == Action::Manual);
    events.wait_until(WAIT, "the manual event", manual).await;
    let waited = invoked.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut written = HashSet::new();
    for writer in writers {
        written.extend(writer.await.expect("writer"));
    }
    events
        .wait_until(WAIT, "every row's event", |e| {
            e.iter().filter(|e| e.action() == Action::Insert).count() >= written.len()
        })
        .await;
    running.stop().await;
    // The claim is skipped for at most 25 ms after one that found nothing; two seconds are
    // room for a loaded machine, not for a claim that never comes while rows keep moving.
    assert!(
        waited < Duration::from_secs(2),
        "the manual event waited {waited:?} while the trickle went on"
    );
    let ids = support::ids(&events.events());
    // One event per row (rows of different keys may be delivered side by side).
    assert_eq!(ids.len(), written.len(), "each row's event once");
    assert_eq!(
        ids.into_iter().collect::<HashSet<_>>(),
        written,
        "every row's event, none twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_no_events() {
    let db = db().await;
    let (events, running) = listening(&db, "CREATE TABLE busy (id int PRIMARY KEY)", "busy").await;
    for batch in 0..10 {
        let from = batch * 1000 + 1;
        support::insert_ids(&db.client, "busy", from..=from + 999).await;
        if batch == 4 {
            let killed = db
                .client
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                      WHERE datname = current_database() AND application_name = 'pgevents'",
                    &[],
                )
                .await
                .expect("terminate")
                .get::<_, i64>(0);
            assert!(
                killed >= 2,
                "the listener's connections were terminated ({killed})"
            );
        }
    }
    events
        .wait_until(WAIT, "10,000 distinct rows", |e| {
            support::ids(e).into_iter().collect::<HashSet<_>>().len() == 10_000
        })
        .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handlers_are_retried_with_growing_gaps_and_panics_are_contained() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE flaky (id int PRIMARY KEY); CREATE TABLE steady (id int PRIMARY KEY); CREATE TABLE broken (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let flaky = Collector::default();
    let steady = Collector::default();
    let broken_calls = Arc::new(AtomicUsize::new(0));
    let flaky_handler = {
        let flaky = flaky.clone();
        move |e: Event| {
            flaky.push(e);
            let n = flaky.len();
            async move {
                if n <= 2 {
                    Err(format!("attempt {n} fails"))
                } else {
                    Ok(())
                }
            }
        }
    };
    let broken_handler = {
        let calls = broken_calls.clone();
        move |_e: Event| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if true {
                    panic!("handler bug");
                }
                Ok::<_, std::convert::Infallible>(())
            }
        }
    };
    let running = start(
        Listener::builder(&db.url)
            .retry(fast_retry(5, 300))
            .on("flaky", flaky_handler)
            .on("broken", broken_handler)
            .on("steady", steady.handler()),
    )
    .await;
    db.client
        .batch_execute("INSERT INTO flaky VALUES (1); INSERT INTO broken VALUES (1); INSERT INTO steady SELECT generate_series(1, 100)")
        .await
        .expect("insert");
    steady
        .wait_until(WAIT, "100 steady events", |e| e.len() == 100)
        .await;
    flaky
        .wait_until(WAIT, "three attempts", |e| e.len() == 3)
        .await;
    let broken = broken_calls.clone();
    support::eventually(WAIT, "the panicking handler to be retried", || {
        let broken = broken.clone();
        async move { broken.load(Ordering::SeqCst) >= 2 }
    })
    .await;
    running.stop().await;
    let attempts = flaky.timed();
    let ids: HashSet<_> = attempts.iter().map(|(_, e)| e.id()).collect();
    assert_eq!(ids.len(), 1, "the same event id on every attempt");
    let gap1 = attempts[1].0 - attempts[0].0;
    let gap2 = attempts[2].0 - attempts[1].0;
    assert!(
        gap1 >= Duration::from_millis(200),
        "first retry waited {gap1:?}"
    );
    assert!(gap2 > gap1, "gaps grow: {gap1:?} then {gap2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listeners_deliver_each_event_exactly_once() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE shared (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let a = Collector::default();
    let b = Collector::default();
    let first = start(Listener::builder(&db.url).on("shared", a.handler())).await;
    let second = start(Listener::builder(&db.url).on("shared", b.handler())).await;
    db.client
        .batch_execute("INSERT INTO shared SELECT generate_series(1, 10000)")
        .await
        .expect("insert");
    let total = || a.len() + b.len();
    support::eventually(WAIT, "10,000 deliveries", || {
        let n = total();
        async move { n >= 10_000 }
    })
    .await;
    first.stop().await;
    second.stop().await;
    let mut seen: HashMap<uuid::Uuid, usize> = HashMap::new();
    for e in a.events().iter().chain(b.events().iter()) {
        *seen.entry(e.id()).or_default() += 1;
    }
    assert_eq!(seen.len(), 10_000);
    assert!(seen.values().all(|&n| n == 1), "no event delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_row_order_holds_while_an_earlier_event_is_retried() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE rows (id int PRIMARY KEY, v int)")
        .await
        .expect("schema");
    let delivered = Collector::default();
    let failures = Arc::new(Mutex::new(0usize));
    let handler = {
        let delivered = delivered.clone();
        let failures = failures.clone();
        move |e: Event| {
            let id = e
                .new()
                .or(e.old())
                .and_then(|r| r.get("id"))
                .and_then(|v| v.as_i64());
            let v = e.new().and_then(|r| r.get("v")).and_then(|v| v.as_i64());
            // Row 1's first version fails three times before it goes through.
            let fail = id == Some(1) && v == Some(0) && {
                let mut f = failures.lock().expect("lock");
                *f += 1;
                *f <= 3
            };
            if !fail {
                delivered.push(e);
            }
            async move {
                if fail {
                    Err("not yet")
                } else {
                    Ok(())
                }
            }
        }
    };
    let running = start(
        Listener::builder(&db.url)
            .retry(fast_retry(10, 200))
            .on("rows", handler),
    )
    .await;
    db.client
        .batch_execute("INSERT INTO rows VALUES (1, 0), (2, 0)")
        .await
        .expect("insert");
    for v in 1..=5 {
        db.client
            .batch_execute(&format!("UPDATE rows SET v = {v}"))
            .await
            .expect("update");
    }
    delivered
        .wait_until(WAIT, "12 events", |e| e.len() == 12)
        .await;
    running.stop().await;
    let version = |e: &Event| e.new().and_then(|r| r.get("v")).and_then(|v| v.as_i64());
    let row = |id: i64| -> Vec<Option<i64>> {
        delivered
            .events()
            .iter()
            .filter(|e| e.new().and_then(|r| r.get("id")).and_then(|v| v.as_i64()) == Some(id))
            .map(version)
            .collect()
    };
    let expected: Vec<Option<i64>> = (0..=5).map(Some).collect();
    assert_eq!(row(1), expected, "row 1 in commit order despite retries");
    assert_eq!(row(2), expected, "row 2 in commit order");
    // Row 2 was not held back by row 1's retries: it finished before row 1's first success.
    let events = delivered.events();
    let first_row1 = events
        .iter()
        .position(|e| e.new().and_then(|r| r.get("id")).and_then(|v| v.as_i64()) == Some(1));
    let last_row2 = events
        .iter()
        .rposition(|e| e.new().and_then(|r| r.get("id")).and_then(|v| v.as_i64()) == Some(2));
    assert!(last_row2 < first_row1, "other rows are not held back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let db = db().await;
    let err = Listener::builder(&db.url)
        .on("missing_table", Collector::default().handler())
        .build()
        .await
        .expect_err("a missing table is an error");
    assert!(err.is_usage());
    assert!(
        err.to_string()
            .contains("public.missing_table does not exist"),
        "{err}"
    );
    let err = Listener::builder("postgres://nobody@127.0.0.1:1/none")
        .on("t", Collector::default().handler())
        .build()
        .await
        .expect_err("an unreachable database is an error");
    assert!(err.is_connection(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_is_idempotent_upgrades_functions_and_uninstalls() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE inst (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let events = Collector::default();
    for _ in 0..2 {
        start(Listener::builder(&db.url).on("inst", events.handler()))
            .await
            .stop()
            .await;
    }
    let count = |sql: &'static str| {
        let c = &db.client;
        async move { c.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) }
    };
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'inst'::regclass AND NOT tgisinternal"
        )
        .await,
        1,
        "installing twice leaves one trigger"
    );
    // An old function body (as from an earlier version) is replaced by the next install.
    let func: String = db
        .client
        .query_one(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'pgevents' AND p.proname LIKE 'capture_%'",
            &[],
        )
        .await
        .expect("capture function")
        .get(0);
    db.client
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION {func} RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$"
        ))
        .await
        .expect("simulate an old body");
    let running = start(Listener::builder(&db.url).on("inst", events.handler())).await;
    db.client
        .batch_execute("INSERT INTO inst VALUES (1)")
        .await
        .expect("insert");
    events
        .wait_until(WAIT, "the event after reinstall", |e| e.len() == 1)
        .await;
    running.stop().await;
    // Uninstalling a trigger stops capture; uninstalling the log removes everything.
    let schema = pgevents_log::LogSchema::default();
    assert!(
        pgevents_capture::uninstall_trigger(&db.client, &schema, "public.inst")
            .await
            .expect("uninstall trigger")
    );
    db.client
        .batch_execute("INSERT INTO inst VALUES (2)")
        .await
        .expect("insert");
    assert_eq!(count("SELECT count(*) FROM pgevents.capture").await, 0);
    pgevents_log::uninstall(&db.client, &schema)
        .await
        .expect("uninstall log");
    assert_eq!(
        count("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgevents'").await,
        0
    );
    db.client
        .batch_execute("INSERT INTO inst VALUES (3)")
        .await
        .expect("writes work without pgevents");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_deliveries() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE slow (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let started = Collector::default();
    let finished = Collector::default();
    let handler = {
        let (started, finished) = (started.clone(), finished.clone());
        move |e: Event| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.push(e.clone());
                tokio::time::sleep(Duration::from_millis(500)).await;
                finished.push(e);
                Ok::<_, std::convert::Infallible>(())
            }
        }
    };
    let running = start(Listener::builder(&db.url).on("slow", handler)).await;
    db.client
        .batch_execute("INSERT INTO slow SELECT generate_series(1, 5)")
        .await
        .expect("insert");
    started
        .wait_until(WAIT, "deliveries in flight", |e| e.len() == 5)
        .await;
    assert!(
        finished.len() < 5,
        "stopping while deliveries are in flight"
    );
    running.stop().await;
    assert_eq!(
        finished.len(),
        5,
        "run() returned only after in-flight deliveries finished"
    );
    let pending: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pgevents.event WHERE status <> 'd'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        pending, 0,
        "their outcomes were recorded before run() returned"
    );
}

/// A trickle of changes is delivered while it moves into the log: the handler sees each
/// event before the log holds it, and then the log holds it as delivered, with its attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_is_delivered_as_it_moves_into_the_log() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await
        .expect("table");
    let watcher = Arc::new(support::connect(&db.url).await);
    let seen_in_log = Arc::new(Mutex::new(Vec::<(i64, bool)>::new()));
    let events = Collector::default();
    let (w, s, e) = (watcher.clone(), seen_in_log.clone(), events.clone());
    let running = start(Listener::builder(&db.url).on("notes", move |event: Event| {
        let (w, s, e) = (w.clone(), s.clone(), e.clone());
        async move {
            let logged = pgevents_testkit::db::in_log(&w, event.seq()).await?;
            s.lock().expect("seen").push((event.seq(), logged));
            e.push(event);
            Ok::<_, String>(())
        }
    }))
    .await;
    // The first delivery closes the destination's breaker (a new one is on trial).
    for id in 1..=20 {
        db.client
            .execute("INSERT INTO notes VALUES ($1, 'hello')", &[&id])
            .await
            .expect("insert");
        let n = id as usize;
        events
            .wait_until(WAIT, "the insert delivered", |e| e.len() >= n)
            .await;
    }
    running.stop().await;
    let seen = seen_in_log.lock().expect("seen").clone();
    let early = seen.iter().filter(|(_, logged)| !*logged).count();
    assert!(
        early >= 15,
        "most of a trickle is delivered before the log holds it: {seen:?}"
    );
    let recorded: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pgevents.event WHERE status = 'd' AND attempts = 1
                AND finished_at IS NOT NULL AND last_duration_ms IS NOT NULL",
            &[],
        )
        .await
        .expect("the log")
        .get(0);
    assert_eq!(
        recorded, 20,
        "every event recorded as delivered, with its attempt"
    );
}
