//! Order and once-only through what a row and a listener go through in ordinary operation:
//! key changes, TRUNCATE, tables without a key, a graceful stop with slow deliveries, a slow
//! table beside a fast one, a failing destination beside a working one, late outcomes of
//! expired claims, odd outcome texts, long log schema names, writers that never NOTIFY, and
//! a log installed by the previous release.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgevents::{Action, Event, Listener, Ordering, RetryPolicy, Trigger};
use pgevents_log::store::{ClaimToken, Claimed, Settlement, Store, Verdict};
use pgevents_log::LogSchema;
use tokio::sync::Notify;

use crate::support::{db, eventually, start, Collector};
use crate::{fast_retry, WAIT};

fn id_of(e: &Event) -> Option<i64> {
    e.new()
        .or(e.old())
        .and_then(|r| r.get("id"))
        .and_then(|v| v.as_i64())
}

fn v_of(e: &Event) -> Option<i64> {
    e.new().and_then(|r| r.get("v")).and_then(|v| v.as_i64())
}

/// Starts a listener delivering `table`'s events to `handler` in `ordering`, retrying failed
/// attempts after 300 ms (10 times).
pub(crate) async fn start_ordered<H: pgevents::Handler>(
    url: &str,
    table: &str,
    handler: H,
    ordering: Ordering,
) -> crate::support::Running {
    start(
        Listener::builder(url).retry(fast_retry(10, 300)).trigger(
            Trigger::for_table(table, handler)
                .expect("a table name")
                .ordering(ordering),
        ),
    )
    .await
}

/// A handler that fails the first `n` attempts of the events `fails` picks, and records the
/// others in `delivered`.
pub(crate) fn failing_first(
    delivered: &Collector,
    n: usize,
    fails: impl Fn(&Event) -> bool + Send + Sync + 'static,
) -> impl Fn(Event) -> std::future::Ready<Result<(), &'static str>> + Send + Sync + 'static {
    let delivered = delivered.clone();
    let failures = Arc::new(Mutex::new(0usize));
    move |e: Event| {
        let fail = fails(&e) && {
            let mut f = failures.lock().expect("lock");
            *f += 1;
            *f <= n
        };
        if !fail {
            delivered.push(e);
        }
        std::future::ready(if fail { Err("not yet") } else { Ok(()) })
    }
}

/// Runs `sql` (one transaction), waits until `delivered` holds `n` events, stops the
/// listener and returns the events in the order they arrived.
async fn write_and_deliver(
    db: &crate::support::Db,
    sql: &str,
    delivered: &Collector,
    n: usize,
    running: crate::support::Running,
) -> Vec<Event> {
    db.client.batch_execute(sql).await.expect("writes");
    delivered
        .wait_until(WAIT, &format!("{n} events"), |e| e.len() == n)
        .await;
    running.stop().await;
    delivered.events()
}

/// The position of the first delivered event `which` picks.
pub(crate) fn position(events: &[Event], which: impl Fn(&Event) -> bool) -> usize {
    events
        .iter()
        .position(which)
        .expect("the event was delivered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_waits_for_both_keys_and_later_events_wait_for_it() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE keyed (id int PRIMARY KEY, v int)")
        .await
        .expect("schema");
    let delivered = Collector::default();
    // The INSERT of row 1 fails three times: everything that touches key 1 or key 2 waits.
    let handler = failing_first(&delivered, 3, |e| {
        e.action() == Action::Insert && id_of(e) == Some(1) && v_of(e) == Some(0)
    });
    let running = start(
        Listener::builder(&db.url)
            .retry(fast_retry(10, 300))
            .on("keyed", handler),
    )
    .await;
    let events = write_and_deliver(
        &db,
        "INSERT INTO keyed VALUES (1, 0);
             INSERT INTO keyed VALUES (2, 0);
             DELETE FROM keyed WHERE id = 2;
             UPDATE keyed SET id = 2, v = 1 WHERE id = 1;
             UPDATE keyed SET v = 2 WHERE id = 2;
             INSERT INTO keyed VALUES (1, 3);
             INSERT INTO keyed VALUES (9, 0);",
        &delivered,
        7,
        running,
    )
    .await;
    let at = |action: Action, id: i64, v: i64| {
        position(&events, |e| {
            e.action() == action && id_of(e) == Some(id) && v_of(e) == Some(v)
        })
    };
    let insert_1 = at(Action::Insert, 1, 0);
    let delete_2 = position(&events, |e| e.action() == Action::Delete);
    let change = at(Action::Update, 2, 1);
    let after = at(Action::Update, 2, 2);
    let reinsert_1 = at(Action::Insert, 1, 3);
    let other = at(Action::Insert, 9, 0);
    assert!(
        insert_1 < change,
        "the key change waited for the old key's INSERT"
    );
    assert!(
        delete_2 < change,
        "the key change waited for the new key's DELETE"
    );
    assert!(
        change < after,
        "the new key's later UPDATE waited for the key change"
    );
    assert!(
        change < reinsert_1,
        "the old key's later INSERT waited for the key change"
    );
    assert!(other < insert_1, "an unrelated row was not held back");
    assert_eq!(events.len(), 7, "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_waits_for_earlier_events_and_later_events_wait_for_it() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE emptied (id int PRIMARY KEY, v int)")
        .await
        .expect("schema");
    let delivered = Collector::default();
    let handler = failing_first(&delivered, 3, |e| {
        e.action() == Action::Insert && id_of(e) == Some(1)
    });
    let emptied = Trigger::for_table("emptied", handler)
        .expect("a table name")
        .operations([
            Action::Insert,
            Action::Update,
            Action::Delete,
            Action::Truncate,
        ]);
    let running = start(
        Listener::builder(&db.url)
            .retry(fast_retry(10, 300))
            .trigger(emptied),
    )
    .await;
    let events = write_and_deliver(
        &db,
        "INSERT INTO emptied VALUES (1, 0);
             INSERT INTO emptied VALUES (2, 0);
             TRUNCATE emptied;
             INSERT INTO emptied VALUES (3, 0);",
        &delivered,
        4,
        running,
    )
    .await;
    let truncate = position(&events, |e| e.action() == Action::Truncate);
    let insert = |id: i64| position(&events, |e| id_of(e) == Some(id));
    assert!(
        insert(1) < truncate,
        "TRUNCATE waited for the failing INSERT"
    );
    assert!(
        insert(2) < truncate,
        "TRUNCATE waited for every earlier event"
    );
    assert!(
        truncate < insert(3),
        "the later INSERT waited for the TRUNCATE"
    );
    assert_eq!(events.len(), 4, "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_key_is_refused_per_row_and_ordered_per_table() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE loose (id int, v int)")
        .await
        .expect("schema");
    let error = Listener::builder(&db.url)
        .on("loose", Collector::default().handler())
        .build()
        .await
        .expect_err("per-row order needs a key");
    let message = error.to_string();
    assert!(error.is_usage(), "{message}");
    assert!(
        message.contains("public.loose") && message.contains("ordering = \"table\""),
        "{message}"
    );

    let delivered = Collector::default();
    let handler = failing_first(&delivered, 3, |e| v_of(e) == Some(0) && id_of(e) == Some(1));
    let running = start_ordered(&db.url, "loose", handler, Ordering::Table).await;
    let events = write_and_deliver(
        &db,
        "INSERT INTO loose VALUES (1, 0);
             INSERT INTO loose VALUES (2, 1);
             UPDATE loose SET v = 2 WHERE id = 1;
             INSERT INTO loose VALUES (3, 3);",
        &delivered,
        4,
        running,
    )
    .await;
    let versions: Vec<Option<i64>> = events.iter().map(v_of).collect();
    assert_eq!(
        versions,
        vec![Some(0), Some(1), Some(2), Some(3)],
        "every event of the table in commit order, the failing first one holding back all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_keeps_slow_deliveries_leased() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE slow (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let delivered = Collector::default();
    let started = Arc::new(Notify::new());
    let slow = {
        let delivered = delivered.clone();
        let started = started.clone();
        move |e: Event| {
            let delivered = delivered.clone();
            let started = started.clone();
            async move {
                started.notify_one();
                // Four leases long: the drain must keep renewing it.
                tokio::time::sleep(Duration::from_millis(4000)).await;
                delivered.push(e);
                Ok::<_, std::convert::Infallible>(())
            }
        }
    };
    let lease = Duration::from_secs(1);
    let first = start(Listener::builder(&db.url).lease(lease).on("slow", slow)).await;
    db.client
        .batch_execute("INSERT INTO slow VALUES (1)")
        .await
        .expect("insert");
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the delivery started");
    // A rolling restart: the next instance starts while the first drains.
    let second = start(
        Listener::builder(&db.url)
            .lease(lease)
            .on("slow", delivered.handler()),
    )
    .await;
    first.stop().await;
    delivered
        .wait_until(WAIT, "the event", |e| !e.is_empty())
        .await;
    // Longer than a lease: a takeover would have delivered it again by now.
    let settled = Instant::now();
    eventually(WAIT, "the event settled", || async {
        db.client
            .query_one(
                "SELECT count(*) FROM pgevents.event WHERE status = 'd'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await;
    eventually(WAIT, "more than two leases", || async {
        settled.elapsed() > lease * 2
    })
    .await;
    second.stop().await;
    assert_eq!(delivered.len(), 1, "delivered once, not taken over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_table_cannot_take_every_slot() {
    let db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE stuck (id int PRIMARY KEY);
             CREATE TABLE flowing (id int PRIMARY KEY);",
        )
        .await
        .expect("schema");
    // Deliveries of the slow table hang until the test lets them all go at once — all but
    // the first, so the table has delivered once (a table that never did is held to a few
    // events in flight by its circuit breaker, which would hide the share rule tested here).
    let (release, released) = tokio::sync::watch::channel(false);
    let stuck = Collector::default();
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hang = {
        let stuck = stuck.clone();
        move |e: Event| {
            let stuck = stuck.clone();
            let mut released = released.clone();
            let first = first.swap(false, std::sync::atomic::Ordering::SeqCst);
            async move {
                stuck.push(e);
                if !first {
                    let _ = released.wait_for(|go| *go).await;
                }
                Ok::<_, std::convert::Infallible>(())
            }
        }
    };
    let flowing = Collector::default();
    let slow_policy = RetryPolicy {
        timeout: Duration::from_secs(300),
        ..fast_retry(1, 100)
    };
    let running = start(
        Listener::builder(&db.url)
            .max_in_flight(40)
            .trigger(
                Trigger::for_table("stuck", hang)
                    .expect("a table name")
                    .retry(slow_policy),
            )
            .on("flowing", flowing.handler()),
    )
    .await;
    db.client
        .batch_execute("INSERT INTO stuck SELECT generate_series(1, 200)")
        .await
        .expect("stuck rows");
    stuck
        .wait_until(WAIT, "the slow table's deliveries", |e| e.len() >= 31)
        .await;
    db.client
        .batch_execute("INSERT INTO flowing SELECT generate_series(1, 50)")
        .await
        .expect("flowing rows");
    flowing
        .wait_until(WAIT, "the other table's 50 events", |e| e.len() == 50)
        .await;
    assert!(
        stuck.len() < 41,
        "the slow table (one delivered) holds fewer than every slot ({})",
        stuck.len()
    );
    // Every hung delivery (and any later one) goes through: the drain ends.
    let _ = release.send(true);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_destination_is_probed_not_hammered() {
    let db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE down (id int PRIMARY KEY);
             CREATE TABLE up (id int PRIMARY KEY, v int NOT NULL);",
        )
        .await
        .expect("schema");
    // The destination of `down` refuses every event until the test mends it.
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let recovered = Collector::default();
    let refuse = {
        let (broken, attempts, recovered) = (broken.clone(), attempts.clone(), recovered.clone());
        move |e: Event| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let fail = broken.load(std::sync::atomic::Ordering::SeqCst);
            if !fail {
                recovered.push(e);
            }
            std::future::ready(if fail {
                Err("connection refused")
            } else {
                Ok(())
            })
        }
    };
    let flowing = Collector::default();
    let quick_retries = RetryPolicy {
        max_interval: Duration::from_millis(100),
        ..fast_retry(1_000, 20)
    };
    let running = start(
        Listener::builder(&db.url)
            .max_in_flight(8)
            .trigger(
                Trigger::for_table("down", refuse)
                    .expect("a table name")
                    .retry(quick_retries),
            )
            .on("up", flowing.handler()),
    )
    .await;
    let started = Instant::now();
    db.client
        .batch_execute("INSERT INTO down SELECT generate_series(1, 500)")
        .await
        .expect("rows of the failing table");
    let attempted = || attempts.load(std::sync::atomic::Ordering::SeqCst);
    eventually(WAIT, "60 attempts at the failing destination", || async {
        attempted() >= 60
    })
    .await;
    // Retried one by one under their own backoff, 500 due events would be attempted
    // hundreds of times a second; behind an open breaker only a probe goes out now and then.
    let rate = attempted() as f64 / started.elapsed().as_secs_f64();
    assert!(
        rate < 40.0,
        "the failing destination was attempted {rate:.0} times a second"
    );
    // Meanwhile the other table flows, in order.
    db.client
        .batch_execute(
            "INSERT INTO up SELECT g, 0 FROM generate_series(1, 500) g;
             UPDATE up SET v = 1;",
        )
        .await
        .expect("rows of the other table");
    flowing
        .wait_until(WAIT, "the other table's 1,000 events", |e| e.len() == 1_000)
        .await;
    let mut seen = std::collections::HashMap::new();
    for e in flowing.events() {
        let id = id_of(&e).expect("an id");
        let before = seen.insert(id, e.action());
        assert_eq!(
            (before, e.action()),
            match before {
                None => (None, Action::Insert),
                Some(_) => (Some(Action::Insert), Action::Update),
            },
            "row {id}: its INSERT, then its UPDATE"
        );
    }
    // Mended, the destination gets every waiting event, each once.
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    recovered
        .wait_until(WAIT, "the 500 waiting events", |e| e.len() >= 500)
        .await;
    running.stop().await;
    let mut ids: Vec<i64> = recovered.events().iter().filter_map(id_of).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=500).collect::<Vec<i64>>(), "each event once");
}

/// A Store on the log of `db`, installed, and the id of a trigger for manual events.
async fn store(url: &str) -> (Store, LogSchema, i32) {
    let schema = LogSchema::default();
    let mut client = pgevents_postgres::connect(url, None)
        .await
        .expect("connect");
    pgevents_log::install(&mut client, &schema)
        .await
        .expect("install");
    let table = pgevents_postgres::QualifiedName::parse("manual").expect("name");
    let trigger = pgevents_log::store::register_trigger(
        &client,
        &schema,
        "manual",
        &table,
        &serde_json::json!({}),
    )
    .await
    .expect("trigger");
    (
        Store::open(client, &schema).await.expect("store"),
        schema,
        trigger,
    )
}

/// Writes `n` rows of `trigger` into the capture table, as writers' triggers do.
async fn capture_rows(store: &Store, trigger: i32, n: i32) {
    store
        .client()
        .execute(
            "INSERT INTO pgevents.capture (trigger_id, op, row_key, new_row)
             SELECT $1, 'I', g, '{}' FROM generate_series(1, $2) g",
            &[&trigger, &n],
        )
        .await
        .expect("captured rows");
}

/// The capture table's size in pages.
async fn capture_pages(store: &Store) -> i64 {
    store
        .client()
        .query_one(
            "SELECT pg_relation_size('pgevents.capture') / current_setting('block_size')::int",
            &[],
        )
        .await
        .expect("size")
        .get(0)
}

/// Events in the log.
async fn logged(store: &Store) -> i64 {
    store
        .client()
        .query_one("SELECT count(*) FROM pgevents.event", &[])
        .await
        .expect("events")
        .get(0)
}

/// The data of the `n`th of a run of manual events: `{"n": n}`.
fn numbered(n: usize) -> serde_json::Value {
    serde_json::json!({ "n": n })
}

/// Writes `count` manual events with the data `data(i)` for trigger `trigger`.
async fn invoke(
    store: &Store,
    schema: &LogSchema,
    trigger: i32,
    count: usize,
    data: impl Fn(usize) -> serde_json::Value,
) {
    for i in 0..count {
        pgevents_log::store::invoke(store.client(), schema, trigger, &data(i))
            .await
            .expect("invoke");
    }
}

fn outcome(claim: ClaimToken, verdict: Verdict, response: Option<&str>) -> Settlement {
    Settlement {
        claim,
        verdict,
        started_at: chrono::Utc::now(),
        duration: Duration::from_millis(1),
        status: Some(200),
        error: None,
        response: response.map(str::to_string),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_outcome_of_an_expired_claim_changes_nothing() {
    let db = db().await;
    let (store, schema, trigger) = store(&db.url).await;
    invoke(&store, &schema, trigger, 1, |_| serde_json::json!({"n": 1})).await;
    let owner = 42;
    let lease = Duration::from_millis(100);
    let first = store
        .claim(&[trigger], &[10], 10, 1 << 20, lease, owner)
        .await
        .expect("claim");
    assert_eq!(first.len(), 1);
    // The lease runs out; the same dispatcher claims the event again.
    let deadline = Instant::now() + WAIT;
    let second = loop {
        let again = store
            .claim(&[trigger], &[10], 10, 1 << 20, lease * 100, owner)
            .await
            .expect("claim");
        if !again.is_empty() {
            break again;
        }
        assert!(Instant::now() < deadline, "the expired claim came due");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(second[0].seq, first[0].seq);
    assert_ne!(second[0].token(), first[0].token());
    // The first attempt's outcome arrives late: it must not settle the second claim.
    let late = outcome(first[0].token(), Verdict::Delivered, None);
    assert_eq!(store.settle(&[late], owner).await.expect("settle"), 0);
    assert_eq!(
        store
            .renew(&[first[0].token()], lease, owner)
            .await
            .expect("renew"),
        0
    );
    let status: i8 = store
        .client()
        .query_one("SELECT status FROM pgevents.event", &[])
        .await
        .expect("status")
        .get(0);
    assert_eq!(status as u8, b'p', "still pending under the newer claim");
    // Outcome texts PostgreSQL's text type refuses (NUL) are stored all the same.
    let current = outcome(
        second[0].token(),
        Verdict::Delivered,
        Some("binary\0body\u{1}"),
    );
    assert_eq!(store.settle(&[current], owner).await.expect("settle"), 1);
    let row = store
        .client()
        .query_one("SELECT status, last_status FROM pgevents.event", &[])
        .await
        .expect("status");
    assert_eq!(row.get::<_, i8>(0) as u8, b'd');
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_with_binary_responses_are_logged() {
    let db = db().await;
    let (store, schema, trigger) = store(&db.url).await;
    invoke(&store, &schema, trigger, 3, numbered).await;
    let claimed = store
        .claim(&[trigger], &[10], 10, 1 << 20, Duration::from_secs(10), 7)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    let outcomes: Vec<Settlement> = claimed
        .iter()
        .map(|c| Settlement {
            error: Some("HTTP 500\0".into()),
            ..outcome(
                c.token(),
                Verdict::Retry(Duration::ZERO),
                Some("\0\0\u{fffd}"),
            )
        })
        .collect();
    assert_eq!(store.settle(&outcomes, 7).await.expect("settle"), 3);
    let logged: i64 = store
        .client()
        .query_one(
            "SELECT count(*) FROM pgevents.attempt WHERE response LIKE '%\u{fffd}%'",
            &[],
        )
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(logged, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_log_schema_name_and_no_notify_writers_work_while_idle() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE quiet (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let long = "l".repeat(60);
    for (schema, notify) in [(long.as_str(), true), ("pgevents_polled", false)] {
        let delivered = Collector::default();
        let running = start(
            Listener::builder(&db.url)
                .log_schema(schema)
                .notify(notify)
                .on("quiet", delivered.handler()),
        )
        .await;
        if notify {
            // Wait until the listener sleeps: writers then send a NOTIFY on its channel.
            eventually(WAIT, "the listener asleep", || async {
                db.client
                    .query_one(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock' AND granted",
                        &[],
                    )
                    .await
                    .map(|r| r.get::<_, i64>(0) > 0)
                    .unwrap_or(false)
            })
            .await;
        } else {
            let source: String = db
                .client
                .query_one(
                    "SELECT string_agg(prosrc, '') FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                      WHERE n.nspname = 'pgevents_polled' AND proname LIKE 'capture_%'",
                    &[],
                )
                .await
                .expect("capture functions")
                .get(0);
            assert!(!source.contains("pg_notify"), "writers never NOTIFY");
        }
        db.client
            .batch_execute("INSERT INTO quiet VALUES (1); DELETE FROM quiet")
            .await
            .expect("the application's writes succeed");
        delivered
            .wait_until(WAIT, "both events", |e| e.len() == 2)
            .await;
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_the_previous_release_upgrades_in_place_and_drains_in_order() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE legacy (id int PRIMARY KEY, v int)")
        .await
        .expect("schema");
    // The previous release's log, filled: per-row histories pending (one row's first event
    // retrying), a failed event, and captured rows not yet moved.
    let v1 = include_str!("fixtures/log_schema_v1.sql")
        .replace("@schema@", "\"pgevents\"")
        .replace("@ingest_key@", "4242");
    db.client.batch_execute(&v1).await.expect("version 1 log");
    db.client
        .batch_execute(
            "INSERT INTO pgevents.meta (version, salt) VALUES (1, 7);
             INSERT INTO pgevents.trigger (id, name, schema_name, table_name)
                  VALUES (1, 'public.legacy', 'public', 'legacy');
             INSERT INTO pgevents.event (trigger_id, op, row_key, new_row, status, attempts, next_attempt_at)
             SELECT 1, 'I', hashtextextended(r::text, 1), json_build_object('id', r, 'v', 0), 'p',
                    CASE WHEN r = 1 THEN 2 ELSE 0 END, now()
               FROM generate_series(1, 20) r;
             INSERT INTO pgevents.event (trigger_id, op, row_key, old_row, new_row)
             SELECT 1, 'U', hashtextextended(r::text, 1), json_build_object('id', r, 'v', v - 1),
                    json_build_object('id', r, 'v', v)
               FROM generate_series(1, 20) r, generate_series(1, 5) v ORDER BY v, r;
             INSERT INTO pgevents.event (trigger_id, op, row_key, new_row, status, attempts, finished_at)
                  VALUES (1, 'I', hashtextextended('99', 1), '{\"id\": 99, \"v\": 0}', 'f', 6, now());
             -- In flight under a dispatcher of that release that died: its lease (then kept
             -- in next_attempt_at) ends in a moment, and the event is delivered after it.
             INSERT INTO pgevents.event (trigger_id, op, row_key, new_row, status, attempts, owner,
                                         next_attempt_at)
                  VALUES (1, 'I', hashtextextended('21', 1), '{\"id\": 21, \"v\": 0}', 'p', 1,
                          424242, now() + interval '2 seconds');
             INSERT INTO pgevents.capture (trigger_id, op, row_key, old_row, new_row)
             SELECT 1, 'U', hashtextextended(r::text, 1), json_build_object('id', r, 'v', 5),
                    json_build_object('id', r, 'v', 6)
               FROM generate_series(1, 20) r;",
        )
        .await
        .expect("version 1 events");
    let delivered = Collector::default();
    let running = start(
        Listener::builder(&db.url)
            .retry(fast_retry(3, 100))
            .on("legacy", delivered.handler()),
    )
    .await;
    delivered
        .wait_until(WAIT, "141 events", |e| e.len() >= 141)
        .await;
    running.stop().await;
    let events = delivered.events();
    assert_eq!(events.len(), 141, "nothing lost, nothing twice");
    let taken_over: Vec<&Event> = events.iter().filter(|e| id_of(e) == Some(21)).collect();
    assert_eq!(
        taken_over.len(),
        1,
        "the event in flight is delivered once its lease ends"
    );
    for id in 1..=20 {
        let versions: Vec<Option<i64>> = events
            .iter()
            .filter(|e| id_of(e) == Some(id))
            .map(v_of)
            .collect();
        assert_eq!(
            versions,
            (0..=6).map(Some).collect::<Vec<_>>(),
            "row {id} in commit order"
        );
    }
    let row = db
        .client
        .query_one(
            "SELECT (SELECT version FROM pgevents.meta),
                    (SELECT count(*) FROM pgevents.event WHERE status = 'f'),
                    (SELECT salt FROM pgevents.meta)",
            &[],
        )
        .await
        .expect("upgraded");
    assert_eq!(row.get::<_, i32>(0), pgevents_log::SCHEMA_VERSION);
    assert_eq!(row.get::<_, i64>(1), 1, "the failed event is kept");
    assert_eq!(row.get::<_, i32>(2), 7, "ids stay stable: the salt is kept");
}

/// Makes `store`'s session report its statistics: it flushes them as it goes idle after
/// this statement (PostgreSQL 15 and later), so a reader sees them next.
async fn flush_statistics(store: &Store) {
    store
        .client()
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .expect("flush statistics");
}

/// Rows of `pgevents.event` updated so far, and how many of those updates were HOT (wrote
/// no index entry), once `store`'s session has flushed its statistics.
async fn event_updates(store: &Store, reader: &tokio_postgres::Client) -> (i64, i64) {
    flush_statistics(store).await;
    let row = reader
        .query_one(
            "SELECT pg_stat_get_tuples_updated('pgevents.event'::regclass),
                    pg_stat_get_tuples_hot_updated('pgevents.event'::regclass)",
            &[],
        )
        .await
        .expect("update counters");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_write_no_index_entry_and_releases_give_events_back() {
    let db = db().await;
    let (store, schema, trigger) = store(&db.url).await;
    invoke(&store, &schema, trigger, 50, numbered).await;
    let lease = Duration::from_secs(60);
    let before = event_updates(&store, &db.client).await;
    let claimed = store
        .claim(&[trigger], &[50], 50, 1 << 30, lease, 7)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 50);
    let after = event_updates(&store, &db.client).await;
    let (updated, hot) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(updated, 50, "one update per claimed event");
    // Version 3's claims were never HOT: they moved an indexed column. Now nearly all are:
    // one finds no room left on its page now and then.
    assert!(hot >= 45, "{hot} of {updated} claims were HOT updates");
    let tokens: Vec<ClaimToken> = claimed.iter().map(Claimed::token).collect();
    assert_eq!(store.renew(&tokens, lease, 7).await.expect("renew"), 50);
    assert_eq!(store.release(&tokens, 7).await.expect("release"), 50);
    // Released events are due again at once, with their attempt given back; leased ones are
    // not claimed twice.
    let again = store
        .claim(&[trigger], &[100], 100, 1 << 30, lease, 8)
        .await
        .expect("claim");
    assert_eq!(again.len(), 50, "released events are due again");
    assert!(
        again.iter().all(|c| c.attempts == 1),
        "a release gives the attempt back"
    );
    let none = store
        .claim(&[trigger], &[100], 100, 1 << 30, lease, 9)
        .await
        .expect("claim");
    assert!(none.is_empty(), "leased events are not claimed twice");
}

/// Entries of the pending events' index (`event_pending_due`) read so far, once `store`'s
/// session has flushed its statistics.
async fn pending_index_reads(store: &Store, reader: &tokio_postgres::Client) -> i64 {
    flush_statistics(store).await;
    reader
        .query_one(
            "SELECT pg_stat_get_tuples_returned('pgevents.event_pending_due'::regclass)",
            &[],
        )
        .await
        .expect("index counters")
        .get(0)
}

/// Settling, renewing and releasing claimed events finds each by its key, whatever the
/// statistics say: with statistics taken while no event was leased (every `owner` NULL) and
/// the backlog grown since, the planner took the pending events' index, filtered on the
/// owner, for the cheaper way to a handful of events, and each settle walked every pending
/// event (measured in the isolation benchmark: a drain at 15% of its rate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_find_their_events_whatever_the_statistics() {
    let db = db().await;
    let (store, _schema, trigger) = store(&db.url).await;
    let backlog = |n: i64| {
        format!(
            "INSERT INTO pgevents.event (trigger_id, op, row_key, new_row, next_attempt_at, size)
             SELECT {trigger}, 'I', g, json_build_object('n', g), now() - interval '1 hour', 8
               FROM generate_series(1, {n}) g"
        )
    };
    db.client
        .batch_execute(&backlog(2_000))
        .await
        .expect("backlog");
    db.client
        .batch_execute("VACUUM ANALYZE pgevents.event")
        .await
        .expect("statistics");
    db.client
        .batch_execute(&backlog(40_000))
        .await
        .expect("the backlog grows");
    let lease = Duration::from_secs(60);
    let (triggers, limits) = ([trigger], [100]);
    let claim = |owner: i64| store.claim(&triggers, &limits, 100, 1 << 30, lease, owner);
    let settled = claim(7).await.expect("claim");
    let released = claim(8).await.expect("claim");
    assert_eq!((settled.len(), released.len()), (100, 100));
    let tokens = |c: &[Claimed]| c.iter().map(Claimed::token).collect::<Vec<_>>();
    let delivered = |c: &[Claimed]| {
        c.iter()
            .map(|c| outcome(c.token(), Verdict::Delivered, None))
            .collect::<Vec<_>>()
    };
    let before = pending_index_reads(&store, &db.client).await;
    assert_eq!(
        store
            .renew(&tokens(&settled), lease, 7)
            .await
            .expect("renew"),
        100
    );
    assert_eq!(
        store.settle(&delivered(&settled), 7).await.expect("settle"),
        100
    );
    let mut mixed = delivered(&released[..50]);
    mixed.push(outcome(released[50].token(), Verdict::Failed, Some("no")));
    assert_eq!(store.settle(&mixed, 8).await.expect("settle"), 51);
    assert_eq!(
        store
            .release(&tokens(&released[51..]), 8)
            .await
            .expect("release"),
        49
    );
    let reads = pending_index_reads(&store, &db.client).await - before;
    assert_eq!(
        reads, 0,
        "renewing, settling and releasing 300 events read {reads} entries of the pending walk"
    );
}

/// A batch of delivered outcomes is settled by a statement of its own: it records what the
/// general one records for a delivered event, and also leaves alone an event whose claim
/// was taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_batches_record_what_mixed_batches_record() {
    let db = db().await;
    let (store, schema, trigger) = store(&db.url).await;
    invoke(&store, &schema, trigger, 4, numbered).await;
    let lease = Duration::from_secs(60);
    let claimed = store
        .claim(&[trigger], &[4], 4, 1 << 20, lease, 7)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4);
    let token = |i: usize| claimed[i].token();
    // Event 0 alone (all delivered), event 1 beside a failure (the general statement),
    // event 3 delivered under a claim of another owner's (taken over): not settled.
    let alone = store
        .settle(&[outcome(token(0), Verdict::Delivered, None)], 7)
        .await
        .expect("settle");
    assert_eq!(alone, 1);
    let mixed = store
        .settle(
            &[
                outcome(token(1), Verdict::Delivered, None),
                outcome(token(2), Verdict::Failed, Some("nope")),
            ],
            7,
        )
        .await
        .expect("settle");
    assert_eq!(mixed, 2);
    let foreign = store
        .settle(&[outcome(token(3), Verdict::Delivered, None)], 8)
        .await
        .expect("settle");
    assert_eq!(foreign, 0, "another owner's outcome changes nothing");
    let rows = store
        .client()
        .query(
            "SELECT status, last_status, last_duration_ms, owner IS NULL, lease_until IS NULL,
                    finished_at IS NOT NULL, last_error IS NULL,
                    (SELECT count(*) FROM pgevents.attempt a WHERE a.event_seq = e.seq)
               FROM pgevents.event e ORDER BY seq",
            &[],
        )
        .await
        .expect("events");
    type Recorded = (i8, Option<i32>, Option<i32>, bool, bool, bool, bool, i64);
    let recorded: Vec<Recorded> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        })
        .collect();
    let delivered: Recorded = (b'd' as i8, Some(200), Some(1), true, true, true, true, 0);
    assert_eq!(recorded[0], delivered, "settled alone");
    assert_eq!(recorded[1], delivered, "settled beside a failure");
    assert_eq!(recorded[2].0, b'f' as i8);
    assert_eq!(recorded[2].7, 1, "the failed attempt is logged");
    assert_eq!(recorded[3].0, b'p' as i8, "still in flight under its claim");
    assert!(!recorded[3].3, "still owned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_stop_at_their_byte_budget() {
    let db = db().await;
    let (store, schema, trigger) = store(&db.url).await;
    let big = "x".repeat(10_000);
    invoke(
        &store,
        &schema,
        trigger,
        5,
        |_| serde_json::json!({ "big": big }),
    )
    .await;
    let lease = Duration::from_secs(60);
    // A budget smaller than one row still claims one; each claim stops once it is reached.
    let one = store
        .claim(&[trigger], &[10], 10, 100, lease, 1)
        .await
        .expect("claim");
    assert_eq!(one.len(), 1);
    assert!(one[0].size() > 10_000);
    let two = store
        .claim(&[trigger], &[10], 10, 15_000, lease, 1)
        .await
        .expect("claim");
    assert_eq!(two.len(), 2, "the second row starts below the budget");
    let rest = store
        .claim(&[trigger], &[10], 10, 1 << 30, lease, 1)
        .await
        .expect("claim");
    assert_eq!(rest.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_rows_enter_the_log_with_their_size() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE wide (id int PRIMARY KEY, body text NOT NULL)")
        .await
        .expect("schema");
    // Capture installed, nobody delivering: the rows wait in the capture table.
    Listener::builder(&db.url)
        .on("wide", Collector::default().handler())
        .build()
        .await
        .expect("install");
    // Compressible rows: stored in a few kilobytes, a megabyte each as text.
    db.client
        .batch_execute(
            "INSERT INTO wide SELECT g, repeat('abcdefgh', 131072) FROM generate_series(1, 3) g;
             UPDATE wide SET body = 'short' WHERE id = 3;",
        )
        .await
        .expect("rows");
    let moved: i32 = db
        .client
        .query_one("SELECT pgevents.ingest(100)", &[])
        .await
        .expect("ingest")
        .get(0);
    assert_eq!(moved, 4);
    let rows = db
        .client
        .query(
            "SELECT size, coalesce(octet_length(old_row::text), 0)
                          + coalesce(octet_length(new_row::text), 0)
               FROM pgevents.event ORDER BY seq",
            &[],
        )
        .await
        .expect("sizes");
    assert_eq!(rows.len(), 4);
    for row in rows {
        let (recorded, measured): (Option<i32>, i32) = (row.get(0), row.get(1));
        assert_eq!(recorded, Some(measured), "the size of the row as text");
        assert!(measured > 1_000_000, "old or new image of a megabyte row");
    }
    // Claims go by the recorded size: a budget of one row claims one...
    let (store, _, _) = store(&db.url).await;
    let wide: i32 = db
        .client
        .query_one(
            "SELECT id FROM pgevents.trigger WHERE table_name = 'wide'",
            &[],
        )
        .await
        .expect("trigger id")
        .get(0);
    let lease = Duration::from_secs(60);
    let claimed = store
        .claim(&[wide], &[10], 10, 1_000_000, lease, 1)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert!(claimed[0].size() > 1_000_000);
    // ...and they do not read the rows to measure them: told the rows are tiny, a small
    // budget claims every due one (row 3's UPDATE waits for its INSERT).
    db.client
        .batch_execute("UPDATE pgevents.event SET size = 1")
        .await
        .expect("sizes");
    let claimed = store
        .claim(&[wide], &[10], 10, 1_000, lease, 1)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_table_stays_small_while_writers_never_let_it_empty() {
    // Writers at a steady rate never leave the capture table empty, so it is never
    // truncated; every move reads the whole file. Its pages must be reused, not appended to.
    let db = db().await;
    let (store, schema, trigger) = store(&db.url).await;
    let mut after_first = 0;
    for round in 0..6 {
        capture_rows(&store, trigger, 10_000).await;
        // One row stays behind each time: the table is never empty.
        let moved = store.ingest(if round == 0 { 9_999 } else { 10_000 }).await;
        assert_eq!(
            moved.expect("ingest"),
            if round == 0 { 9_999 } else { 10_000 }
        );
        assert!(
            store.vacuum_capture(&schema).await.expect("vacuum"),
            "the owner vacuums"
        );
        if round == 0 {
            after_first = capture_pages(&store).await;
        }
    }
    let last = capture_pages(&store).await;
    assert!(
        last <= after_first * 2,
        "the capture table grew from {after_first} to {last} pages over six rounds of 10,000 rows"
    );
    assert_eq!(logged(&store).await, 59_999, "nothing lost");
    // A runner with only the grants of the least-privilege mode may not vacuum the table:
    // it leaves it to autovacuum, without an error.
    let runner = format!("pgevents_vac_{}", std::process::id());
    let database: String = store
        .client()
        .query_one("SELECT current_database()", &[])
        .await
        .expect("database")
        .get(0);
    store
        .client()
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {runner};
             CREATE ROLE {runner} LOGIN PASSWORD 'runner-pw';
             GRANT CONNECT ON DATABASE \"{database}\" TO {runner};
             GRANT USAGE ON SCHEMA pgevents TO {runner};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgevents TO {runner};"
        ))
        .await
        .expect("runner role");
    let (_, server) = db.url.split_once('@').expect("URL with a user");
    let client =
        pgevents_postgres::connect(&format!("postgres://{runner}:runner-pw@{server}"), None)
            .await
            .expect("connect as the runner");
    let as_runner = Store::open(client, &schema).await.expect("store");
    assert!(!as_runner.vacuum_capture(&schema).await.expect("no error"));
    drop(as_runner);
    store
        .client()
        .batch_execute(&format!(
            "REVOKE ALL ON ALL TABLES IN SCHEMA pgevents FROM {runner};
             REVOKE ALL ON SCHEMA pgevents FROM {runner};
             REVOKE ALL ON DATABASE \"{database}\" FROM {runner};
             DROP ROLE {runner};"
        ))
        .await
        .expect("revoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_table_gives_its_pages_back_once_empty() {
    let db = db().await;
    let (store, schema, trigger) = store(&db.url).await;
    capture_rows(&store, trigger, 30_000).await;
    assert!(
        !store.compact_capture(&schema).await.expect("compact"),
        "a table holding rows is left alone"
    );
    assert_eq!(store.ingest(100_000).await.expect("ingest"), 30_000);
    assert!(
        capture_pages(&store).await > 0,
        "the moved rows' pages stay behind"
    );
    assert!(store.compact_capture(&schema).await.expect("compact"));
    assert_eq!(
        capture_pages(&store).await,
        0,
        "the empty file is given back"
    );
    assert_eq!(logged(&store).await, 30_000, "nothing lost");
}
