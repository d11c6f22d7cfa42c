//! Integration tests of logical capture against a real PostgreSQL with wal_level = logical.

mod filters;
mod support;

use std::collections::HashSet;
use std::time::Duration;

use pgevents_event::Action;
use pgevents_log::LogSchema;
use pgevents_logical::{Error, LogicalCapture};
use pgevents_postgres::QualifiedName;
use pgevents_testkit::background::Background;
use pgevents_trigger::Trigger;
use support::{db, eventually, ChildCapture, Running, ALL_OPS};

const WAIT: Duration = Duration::from_secs(45);

/// Not a test of its own: the capture process that other tests start and kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the crash and failover tests"]
async fn child_capture_process() {
    let (Ok(url), Ok(slot)) = (
        std::env::var(support::CHILD_URL),
        std::env::var(support::CHILD_SLOT),
    ) else {
        return;
    };
    support::init_tracing();
    let client = support::connect(&url).await;
    let schema = LogSchema::default();
    let tables = support::registered_tables(&client, &schema).await;
    let capture = LogicalCapture::new(url, schema, slot.clone(), slot, tables)
        .expect("capture")
        .with_options(support::fast_options());
    capture
        .run(std::future::pending::<()>())
        .await
        .expect("capture runs until killed");
}

struct Logged {
    op: i8,
    old: Option<String>,
    new: Option<String>,
}

async fn logged(db: &support::Db, trigger_id: i32) -> Vec<Logged> {
    db.client
        .query(
            "SELECT op, old_row::text, new_row::text FROM pgevents.event
              WHERE trigger_id = $1 ORDER BY seq",
            &[&trigger_id],
        )
        .await
        .expect("events")
        .into_iter()
        .map(|r| Logged {
            op: r.get(0),
            old: r.get(1),
            new: r.get(2),
        })
        .collect()
}

/// Captures `table` at once by a trigger and through slot `slot`; returns the two triggers'
/// ids (trigger mode's, logical mode's) and the running logical capture.
async fn in_both_modes(db: &mut support::Db, table: &str, slot: &str) -> (i32, i32, Running) {
    let mut spec = Trigger::new(
        "trigger_mode",
        QualifiedName::parse(table).expect("name"),
        (),
    );
    spec.operations = ALL_OPS.to_vec();
    let trigger_id = pgevents_capture::install_trigger(&mut db.client, &db.schema, &spec, true)
        .await
        .expect("trigger capture");
    let logical = db.register("logical_mode", table, &ALL_OPS).await;
    let logical_id = logical.trigger_id;
    let capture = db.capture(slot, vec![logical]);
    capture.install().await.expect("install");
    (trigger_id, logical_id, Running::start(capture))
}

/// Once a workload ran: moves the trigger's rows into the log (`expected` of them), waits
/// for as many from the slot, stops the capture, and asserts both modes logged the same
/// actions with the same data bytes. Returns the slot's events.
async fn same_events(
    db: &support::Db,
    (trigger_id, logical_id): (i32, i32),
    slot: &str,
    running: Running,
    expected: i64,
) -> Vec<Logged> {
    let moved: i32 = db
        .client
        .query_one("SELECT pgevents.ingest(100000)", &[])
        .await
        .expect("ingest")
        .get(0);
    assert_eq!(
        i64::from(moved),
        expected,
        "the trigger saw the whole workload"
    );
    assert_eq!(db.count(trigger_id).await, expected);
    eventually(WAIT, "the logical events", || async {
        db.count(logical_id).await >= expected
    })
    .await;
    db.wait_caught_up(slot).await;
    running.stop().await;

    let by_trigger = logged(db, trigger_id).await;
    let by_slot = logged(db, logical_id).await;
    assert_eq!(by_slot.len(), by_trigger.len(), "as many events");
    for (i, (t, l)) in by_trigger.iter().zip(&by_slot).enumerate() {
        assert_eq!(l.op, t.op, "event {i}: action");
        assert_eq!(l.old, t.old, "event {i} ({}): data.old", t.op as u8 as char);
        assert_eq!(l.new, t.new, "event {i} ({}): data.new", t.op as u8 as char);
    }
    by_slot
}

/// One workload, captured at once by a trigger and through the slot: every event's data is
/// the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_payloads_equal_trigger_payloads_byte_for_byte() {
    let mut db = db().await;
    db.client
        .batch_execute(
            r#"CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
               CREATE TYPE address AS (street text, number int, tags text[]);
               CREATE DOMAIN positive AS numeric CHECK (VALUE > 0);
               CREATE TABLE typed (
                   id bigint PRIMARY KEY, amount numeric(40,20), doc jsonb, raw_json json,
                   tags text[], grid int[][], at timestamptz, day date, naive timestamp,
                   span interval, bytes bytea, uid uuid, feeling mood, feelings mood[],
                   home address, homes address[], price positive, ratio float8, small real,
                   flag boolean, code char(3), label varchar(10), "Weird ""Name""" text,
                   nan numeric, big text);
               ALTER TABLE typed ALTER COLUMN big SET STORAGE EXTERNAL;"#,
        )
        .await
        .expect("schema");
    let (trigger_id, logical_id, running) = in_both_modes(&mut db, "typed", "matrix").await;

    // One statement per round trip: in one multi-statement query, a ROLLBACK would take the
    // statements before its BEGIN with it.
    let workload = r#"INSERT INTO typed VALUES
                 (9007199254740993, 12345678901234567890.12345678901234567890,
                  '{"b": [1, 2.50, {"c": null}], "a": "x", "e": 1.0e2}',
                  '{"b":1,  "a" : [1, 2.50], "b": 2}',
                  ARRAY['a', NULL, 'c "q"', 'd,e', '{}', ''], '{{1,2},{3,NULL}}',
                  '2026-11-24 10:15:00.123456+02', '2024-02-29', '2026-11-24 10:15:00',
                  '1 year 2 mons 3 days 04:05:06.7', '\xdeadbeef00',
                  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '{sad,happy}',
                  ROW('Main "St", \1', 7, ARRAY['x', NULL])::address,
                  ARRAY[ROW('a', 1, NULL)::address, NULL], 3.14, 0.1, 1.5e-7, true, 'ab',
                  'héllo', 'w', 'NaN',
                  (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 32768) i)),
                 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                 (3, -0.00000000000000000001, '[]', '"s"', '{}', '{}', 'infinity', '-infinity',
                  'infinity', '-00:00:01', '', '00000000-0000-0000-0000-000000000000', 'sad',
                  '{}', ROW(NULL, NULL, NULL)::address, '{}', 1e-30, 'Infinity', '-Infinity',
                  false, '', '', '', 'Infinity', '');
               UPDATE typed SET flag = false WHERE id = 9007199254740993;
               UPDATE typed SET big = big || 'x', amount = 1 WHERE id = 9007199254740993;
               BEGIN; INSERT INTO typed (id, label) VALUES (666, 'rolledback'); ROLLBACK;
               DELETE FROM typed WHERE id = 2;
               ALTER TABLE typed ADD COLUMN extra int DEFAULT 7;
               UPDATE typed SET label = 'after' WHERE id = 3;
               INSERT INTO typed (id, extra) VALUES (4, 8);
               ALTER TABLE typed DROP COLUMN raw_json;
               UPDATE typed SET label = 'dropped' WHERE id = 4;
               INSERT INTO typed (id) VALUES (5);
               BEGIN;
               INSERT INTO typed (id, label) VALUES (6, 'short');
               UPDATE typed SET label = 'lived' WHERE id = 6;
               DELETE FROM typed WHERE id = 6;
               COMMIT;
               TRUNCATE typed;
               INSERT INTO typed (id, label) VALUES (7, 'post');
               UPDATE typed SET id = 8 WHERE id = 7;"#;
    for statement in workload.split(";\n") {
        db.client.batch_execute(statement).await.expect("workload");
    }
    let by_slot = same_events(&db, (trigger_id, logical_id), "matrix", running, 16).await;
    // What the equality covers.
    let ops: String = by_slot.iter().map(|e| e.op as u8 as char).collect();
    assert_eq!(ops, "IIIUUDUIUIIUDTIU");
    let unchanged_toast = &by_slot[3];
    assert!(unchanged_toast
        .new
        .as_deref()
        .is_some_and(|n| n.len() > 1_000_000));
    assert!(by_slot[0].new.as_deref().is_some_and(|n| n
        .contains(r#""id":9007199254740993,"amount":12345678901234567890.12345678901234567890"#)));
    assert!(by_slot[0]
        .new
        .as_deref()
        .is_some_and(|n| n.contains(r#""nan":"NaN""#)));
    assert!(by_slot[7]
        .new
        .as_deref()
        .is_some_and(|n| n.ends_with(r#""extra":8}"#)));
    assert!(by_slot[8]
        .new
        .as_deref()
        .is_some_and(|n| !n.contains("raw_json")));
    let truncate = &by_slot[13];
    assert!(truncate.old.is_none() && truncate.new.is_none());
    assert!(by_slot
        .iter()
        .all(|e| !e.new.as_deref().unwrap_or("").contains("rolledback")));
    // Row keys: hashtextextended(key text, trigger id), as the trigger computes them.
    let bad: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pgevents.event
              WHERE trigger_id = ANY($1) AND row_key IS DISTINCT FROM
                    CASE op WHEN 'T' THEN NULL
                            WHEN 'D' THEN hashtextextended(old_row->>'id', trigger_id)
                            ELSE hashtextextended(new_row->>'id', trigger_id) END",
            &[&vec![trigger_id, logical_id]],
        )
        .await
        .expect("row keys")
        .get(0);
    assert_eq!(bad, 0, "row keys are computed as the trigger computes them");
    // Old keys: only the key-changing UPDATE (7 -> 8) carries one, the old key's, in both modes.
    let old_keys: Vec<(i32, Option<i64>, i64)> = db
        .client
        .query(
            "SELECT trigger_id, old_key, hashtextextended('7', trigger_id) FROM pgevents.event
              WHERE trigger_id = ANY($1) AND old_key IS NOT NULL ORDER BY trigger_id",
            &[&vec![trigger_id, logical_id]],
        )
        .await
        .expect("old keys")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(old_keys.len(), 2, "one key change per mode: {old_keys:?}");
    assert!(
        old_keys.iter().all(|(_, old, seven)| *old == Some(*seven)),
        "the old key is the key before the change: {old_keys:?}"
    );
    // Sizes: recorded as each event enters the log, in both modes, so claims never measure.
    let unmeasured: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pgevents.event WHERE trigger_id = ANY($1)
                AND size IS DISTINCT FROM coalesce(octet_length(old_row::text), 0)
                                          + coalesce(octet_length(new_row::text), 0)",
            &[&vec![trigger_id, logical_id]],
        )
        .await
        .expect("sizes")
        .get(0);
    assert_eq!(
        unmeasured, 0,
        "every event's size is recorded as it enters the log"
    );
}

/// The common types, whose events the capture process renders itself (no statement of the
/// server's): every event's data and keys are the bytes trigger capture produces, with
/// strings that need escaping and quoting, numbers that are not JSON numbers, and dates
/// outside the ordinary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_rendered_by_the_process_equal_trigger_payloads_byte_for_byte() {
    let mut db = db().await;
    db.client
        .batch_execute(
            r#"CREATE TABLE plain (
                   k text, id bigint, n int2, i int4, o oid, amount numeric(30,10),
                   loose numeric, ratio float8, small real, flag boolean, doc jsonb,
                   raw_json json, label varchar(12), code char(3), nm name, uid uuid,
                   day date, at timestamptz, naive timestamp, bytes bytea,
                   "Odd ""Name"", \too" text, PRIMARY KEY (k, id));
               SET TimeZone = 'UTC';
               DO $$ BEGIN
                   EXECUTE format('ALTER DATABASE %I SET TimeZone = ''UTC''', current_database());
               END $$;"#,
        )
        .await
        .expect("schema, and UTC for the writer and the capture's sessions");
    let (trigger_id, logical_id, running) = in_both_modes(&mut db, "plain", "common").await;

    let workload = [
        r#"INSERT INTO plain VALUES
             ('a "b", (c)\ d', -9223372036854775808, -32768, 2147483647, 4294967295,
              -12345678901234567890.0123456789, 'NaN', 'Infinity', '-0', true,
              '{"b": [1, 2.50, {"c": null}], "a": "x\u0001", "e": 1.0e2}',
              '{"b":1,  "a" : [1, 2.50], "b": 2}', E'tab\there', 'ab', 'n a m e',
              'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '0044-03-15 BC',
              '0044-03-15 12:00:00.5+00 BC', '10000-01-01 00:00:00', '\xdeadbeef00',
              E'ctl \x01\x1f \b\f\r\n "q" \\ é ✓ \x7f'),
             ('', 0, NULL, NULL, NULL, 0.5, '1e-30', 1e-300, '-Infinity', false, '[]', '"s"',
              '', '', '', NULL, 'infinity', '-infinity', 'infinity', '', ''),
             ('plain', 2, 1, 2, 3, 4, 5, 6.02e23, 'NaN', NULL, 'null', 'null', 'x', 'x',
              'x', '00000000-0000-0000-0000-000000000000', '2024-02-29',
              '2026-11-24 10:15:00.123456+02', '2026-11-24 10:15:00', NULL, NULL)"#,
        "UPDATE plain SET flag = NOT coalesce(flag, false), ratio = 0.1 WHERE id = 2",
        "UPDATE plain SET k = 'moved (1)', id = 3 WHERE k = 'plain'",
        "UPDATE plain SET label = 'same key' WHERE k = ''",
        r#"DELETE FROM plain WHERE k = 'a "b", (c)\ d'"#,
        // One transaction whose middle row is too big to pass through the process: the
        // server writes it between two rows the process rendered.
        "BEGIN;
         INSERT INTO plain (k, id) VALUES ('before', 1);
         INSERT INTO plain (k, id, label) VALUES ('big', 1, 'x');
         UPDATE plain SET label = 'y', nm = 'é' WHERE k = 'big';
         UPDATE plain SET \"Odd \"\"Name\"\", \\too\" = repeat('é', 40000) WHERE k = 'big';
         INSERT INTO plain (k, id) VALUES ('after', 1);
         COMMIT",
    ];
    for statement in workload {
        db.client.batch_execute(statement).await.expect("workload");
    }
    let by_slot = same_events(&db, (trigger_id, logical_id), "common", running, 12).await;
    let ops: String = by_slot.iter().map(|e| e.op as u8 as char).collect();
    assert_eq!(ops, "IIIUUUDIIUUI");
    // The process rendered all but the big row's last change: its events are written due
    // at their commit time, the server's at the time of the write.
    let by_server: Vec<bool> = db
        .client
        .query(
            "SELECT next_attempt_at <> created_at FROM pgevents.event
              WHERE trigger_id = $1 ORDER BY seq",
            &[&logical_id],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected_by_server = vec![false; 12];
    expected_by_server[10] = true;
    assert_eq!(
        by_server, expected_by_server,
        "which events the server rendered"
    );
    let first = by_slot[0].new.as_deref().unwrap_or_default();
    for rendered in [
        r#""loose":"NaN","ratio":"Infinity","small":-0"#,
        r#""day":"0044-03-15 BC","at":"0044-03-15T12:00:00.5+00:00 BC","naive":"10000-01-01T00:00:00""#,
        // 0x7f is not escaped.
        concat!(
            r#""Odd \"Name\", \\too":"ctl \u0001\u001f \b\f\r\n \"q\" \\ é ✓ "#,
            "\u{7f}\""
        ),
    ] {
        assert!(first.contains(rendered), "{rendered} in {first}");
    }
    // Keys: hashtextextended(ROW(k, id)::text, trigger id) of the typed values, as the
    // trigger computes them; an old key only on the UPDATE that changed the key.
    let keys: Vec<[Option<i64>; 4]> = db
        .client
        .query(
            "SELECT e.row_key, hashtextextended(ROW(r.k, r.id)::text, e.trigger_id),
                    e.old_key,
                    CASE WHEN e.op = 'U' AND (o.k, o.id) IS DISTINCT FROM (n.k, n.id)
                         THEN hashtextextended(ROW(o.k, o.id)::text, e.trigger_id) END
               FROM pgevents.event e
               LEFT JOIN LATERAL json_populate_record(NULL::plain, e.old_row) o ON true
               LEFT JOIN LATERAL json_populate_record(NULL::plain, e.new_row) n ON true
               CROSS JOIN LATERAL (SELECT CASE e.op WHEN 'D' THEN o.k ELSE n.k END AS k,
                                          CASE e.op WHEN 'D' THEN o.id ELSE n.id END AS id) r
              WHERE e.trigger_id = ANY($1) ORDER BY e.seq",
            &[&vec![trigger_id, logical_id]],
        )
        .await
        .expect("keys")
        .iter()
        .map(|r| [r.get(0), r.get(1), r.get(2), r.get(3)])
        .collect();
    assert_eq!(keys.len(), 24);
    for [row_key, computed, old_key, computed_old] in &keys {
        assert!(row_key.is_some(), "every event has a row key");
        assert_eq!(
            (row_key, old_key),
            (computed, computed_old),
            "keys as PostgreSQL computes them"
        );
    }
    assert_eq!(
        keys.iter().filter(|k| k[2].is_some()).count(),
        2,
        "one key change per mode"
    );
}

/// A capture process killed with SIGKILL in the middle of a 100,000-row transaction, then
/// started again: every row is in the log exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_killed_mid_transaction_loses_and_duplicates_nothing() {
    let db = db().await;
    let id = db
        .captured(
            "CREATE TABLE bulk (id int PRIMARY KEY, payload text)",
            "bulk",
            "crash",
        )
        .await;
    let child = ChildCapture::start(&db.url, "crash");
    db.client
        .batch_execute("INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
        .await
        .expect("one 100,000-row transaction");
    eventually(WAIT, "part of the transaction in the log", || async {
        db.count(id).await >= 3000
    })
    .await;
    child.kill();
    let at_kill = db.count(id).await;
    assert!(
        at_kill < 100_000,
        "killed in the middle ({at_kill} rows written)"
    );
    let (txn_lsn, next_change): (String, i64) = db
        .client
        .query_one(
            "SELECT txn_lsn::text, next_change FROM pgevents.logical_progress WHERE slot = 'crash'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("progress");
    assert!(
        next_change > 0 && next_change < 100_000,
        "the cursor stands inside the transaction ({txn_lsn}, {next_change})"
    );

    let child = ChildCapture::start(&db.url, "crash");
    eventually(WAIT, "the whole transaction", || async {
        db.count(id).await >= 100_000
    })
    .await;
    db.wait_caught_up("crash").await;
    child.kill();
    let (total, distinct) = db.total_and_distinct(id).await;
    assert_eq!(distinct, 100_000, "every row delivered");
    assert_eq!(total, 100_000, "no row twice");
}

/// Two processes on one slot: the second waits, and takes over when the holder is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_slot_holder_moves_capture_to_the_standby() {
    let db = db().await;
    let id = db
        .captured(
            "CREATE TABLE ticks (id int PRIMARY KEY)",
            "ticks",
            "failover",
        )
        .await;
    let url_a = format!("{}&application_name=capture_a", db.url);
    let url_b = format!("{}&application_name=capture_b", db.url);
    let a = ChildCapture::start(&url_a, "failover");
    eventually(WAIT, "process A to hold the slot", || async {
        db.slot_holder("failover").await.as_deref() == Some("capture_a")
    })
    .await;
    let b = ChildCapture::start(&url_b, "failover");
    let insert = |from: i32, to: i32| {
        let client = &db.client;
        async move {
            for i in from..=to {
                client
                    .execute("INSERT INTO ticks VALUES ($1)", &[&i])
                    .await
                    .expect("insert");
            }
        }
    };
    insert(1, 200).await;
    eventually(WAIT, "A to capture", || async { db.count(id).await >= 100 }).await;
    assert_eq!(
        db.slot_holder("failover").await.as_deref(),
        Some("capture_a"),
        "B waits while A holds the slot"
    );
    a.kill();
    insert(201, 400).await;
    eventually(WAIT, "B to take over", || async {
        db.slot_holder("failover").await.as_deref() == Some("capture_b")
    })
    .await;
    eventually(WAIT, "all 400 rows", || async { db.count(id).await >= 400 }).await;
    db.wait_caught_up("failover").await;
    b.kill();
    let (total, distinct) = db.total_and_distinct(id).await;
    assert_eq!((total, distinct), (400, 400), "nothing lost, nothing twice");
}

/// Install follows the configuration; uninstall removes the slot and publication and puts
/// the replica identities back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_follows_the_configuration_and_uninstall_cleans_up() {
    let db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY, u int NOT NULL UNIQUE);
             ALTER TABLE b REPLICA IDENTITY USING INDEX b_u_key;",
        )
        .await
        .expect("schema");
    let ta = db.register("a", "a", &ALL_OPS).await;
    let tb = db.register("b", "b", &ALL_OPS).await;
    let state = || async {
        let published: Vec<String> = db
            .client
            .query(
                "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'cfg' ORDER BY 1",
                &[],
            )
            .await
            .expect("publication")
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let identities: String = db
            .client
            .query_one(
                "SELECT string_agg(relreplident::text, '' ORDER BY relname) FROM pg_class WHERE relname IN ('a', 'b')",
                &[],
            )
            .await
            .expect("identities")
            .get(0);
        let slots: i64 = db
            .client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'cfg'",
                &[],
            )
            .await
            .expect("slots")
            .get(0);
        (published, identities, slots)
    };
    let both = db.capture("cfg", vec![ta.clone(), tb]);
    both.install().await.expect("install");
    both.install().await.expect("install again");
    let health = both
        .slot_health()
        .await
        .expect("health")
        .expect("the slot exists");
    assert_eq!(health.max_slot_wal_keep_size_mb, -1);
    assert!(health.active_pid.is_none() && !health.is_lost());
    let warning = health
        .warning(0)
        .expect("any retained WAL is worth a warning at 0 bytes");
    assert!(
        warning.contains("max_slot_wal_keep_size is unlimited"),
        "{warning}"
    );
    assert_eq!(
        state().await,
        (vec!["a".into(), "b".into()], "ff".into(), 1)
    );
    let only_a = db.capture("cfg", vec![ta]);
    only_a.install().await.expect("install without b");
    assert_eq!(state().await, (vec!["a".into()], "fi".into(), 1));
    only_a.uninstall().await.expect("uninstall");
    assert_eq!(state().await, (vec![], "di".into(), 0));
    let publications: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname = 'cfg'",
            &[],
        )
        .await
        .expect("publications")
        .get(0);
    assert_eq!(publications, 0);
}

/// The listener's logical mode: triggers of an earlier trigger-mode build are removed and
/// handlers receive the changes from the WAL, and the change that build's trigger captured
/// and no dispatcher moved into the log (a logical-mode dispatcher still sweeps the capture
/// table, once a second instead of at every look).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_captures_through_the_slot() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        .await
        .expect("schema");
    let noop = |_e: pgevents::Event| async { Ok::<_, std::convert::Infallible>(()) };
    pgevents::Listener::builder(&db.url)
        .on("orders", noop)
        .build()
        .await
        .expect("trigger-mode build");
    let triggers = || async {
        db.client
            .query_one(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal",
                &[],
            )
            .await
            .expect("triggers")
            .get::<_, i64>(0)
    };
    assert!(triggers().await > 0);
    db.client
        .batch_execute("INSERT INTO orders VALUES (6, 'captured by the trigger')")
        .await
        .expect("a write captured in trigger mode");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<pgevents::Event>(16);
    let listener = pgevents::Listener::builder(&db.url)
        .on("orders", move |e: pgevents::Event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e).await;
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .capture_logical("listener", "listener")
        .build()
        .await
        .expect("logical-mode build");
    assert_eq!(triggers().await, 0, "capture triggers are removed");
    let running = Background::spawn(|stop| listener.run(stop));
    db.client
        .batch_execute(
            "INSERT INTO orders VALUES (7, 'new'); UPDATE orders SET status = 'paid' WHERE id = 7",
        )
        .await
        .expect("writes");
    let mut got = Vec::new();
    while got.len() < 3 {
        let event = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("events arrive")
            .expect("channel open");
        got.push(event);
    }
    let (swept, got) = {
        let at = got
            .iter()
            .position(|e| e.payload_str().contains("captured by the trigger"))
            .expect("the row captured in trigger mode is delivered");
        let swept = got[at].clone();
        let rest: Vec<_> = got
            .iter()
            .filter(|e| e.id() != swept.id())
            .cloned()
            .collect();
        (swept, rest)
    };
    assert_eq!(swept.action(), Action::Insert);
    assert_eq!(got[0].action(), Action::Insert);
    assert_eq!(got[1].action(), Action::Update);
    assert!(got[1]
        .payload_str()
        .ends_with(r#""data":{"old":{"id":7,"status":"new"},"new":{"id":7,"status":"paid"}}}"#));
    running.stop(WAIT, "the listener").await;
    let ids: HashSet<_> = got.iter().map(|e| e.id()).collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&swept.id()));
}

/// A trickle read from the slot is delivered before the write that puts it into the log
/// commits, and recorded once, as delivered, with its attempt; an attempt that fails is
/// recorded with its outcome and retried, and holds back the later changes of its row only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_delivers_from_the_stream_before_the_log_holds_it() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await
        .expect("schema");
    let watcher = std::sync::Arc::new(pgevents_testkit::db::connect(&db.url).await);
    // (row id, action, body, whether the log held the event as it arrived)
    type Seen = Vec<(i64, Action, String, bool)>;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::new()));
    let failed_once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (w, s, f) = (watcher.clone(), seen.clone(), failed_once.clone());
    let listener = pgevents::Listener::builder(&db.url)
        .on("notes", move |event: pgevents::Event| {
            let (w, s, f) = (w.clone(), s.clone(), f.clone());
            async move {
                let logged = pgevents_testkit::db::in_log(&w, event.seq()).await?;
                let image = event.new().or(event.old()).expect("an image");
                let id = image["id"].as_i64().expect("id");
                let body = image["body"].as_str().unwrap_or_default().to_string();
                s.lock()
                    .expect("seen")
                    .push((id, event.action(), body, logged));
                if id == 5
                    && event.action() == Action::Insert
                    && !f.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    return Err("the first attempt at row 5 fails".to_string());
                }
                Ok::<_, String>(())
            }
        })
        .retry(pgevents::RetryPolicy {
            max_retries: 5,
            initial_interval: Duration::from_millis(300),
            max_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        })
        .capture_logical("inline", "inline")
        .build()
        .await
        .expect("logical-mode build");
    let running = Background::spawn(|stop| listener.run(stop));
    let delivered = |n: usize| {
        let seen = seen.clone();
        async move {
            eventually(WAIT, "the changes delivered", || {
                let seen = seen.clone();
                async move { seen.lock().expect("seen").len() >= n }
            })
            .await
        }
    };
    // Row 1 first: the first delivery closes the destination's breaker (a new one is on trial).
    for id in 1..=20 {
        db.client
            .execute("INSERT INTO notes VALUES ($1, 'first')", &[&id])
            .await
            .expect("insert");
        // Row 5's failed attempt is one more delivery.
        delivered(id as usize + usize::from(id >= 5)).await;
    }
    db.client
        .batch_execute("UPDATE notes SET body = 'second' WHERE id IN (5, 6)")
        .await
        .expect("update");
    delivered(23).await;
    running.stop(WAIT, "the listener").await;
    let seen = seen.lock().expect("seen").clone();
    let of_row = |id: i64| -> Vec<(Action, String)> {
        seen.iter()
            .filter(|(i, ..)| *i == id)
            .map(|(_, a, b, _)| (*a, b.clone()))
            .collect()
    };
    let insert = (Action::Insert, "first".to_string());
    let update = (Action::Update, "second".to_string());
    assert_eq!(
        of_row(5),
        [insert.clone(), insert.clone(), update.clone()],
        "the failed insert is retried before the update of its row"
    );
    assert_eq!(of_row(6), [insert.clone(), update.clone()]);
    for id in (1..=20).filter(|i| ![5, 6].contains(i)) {
        assert_eq!(
            of_row(id),
            std::slice::from_ref(&insert),
            "row {id}: once, nothing lost"
        );
    }
    let early = seen.iter().filter(|(.., logged)| !logged).count();
    assert!(
        early >= 15,
        "most of a trickle is delivered before the log holds it: {seen:?}"
    );
    let recorded: Vec<(i64, i32)> = db
        .client
        .query(
            "SELECT count(*), attempts FROM pgevents.event
              WHERE status = 'd' AND finished_at IS NOT NULL AND last_duration_ms IS NOT NULL
              GROUP BY attempts ORDER BY attempts",
            &[],
        )
        .await
        .expect("the log")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        recorded,
        [(21, 1), (1, 2)],
        "every event recorded once as delivered, with its attempts"
    );
}

/// A server without wal_level = logical gets an explanation, not a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_wal_level_is_explained() {
    support::init_tracing();
    let mut options = pgevents_tempdb::Options::default();
    options.settings.retain(|(name, _)| name != "wal_level");
    options
        .settings
        .push(("wal_level".into(), "replica".into()));
    let cluster = pgevents_tempdb::TempCluster::start(&options).expect("a replica-level cluster");
    let url = cluster.url("postgres");
    let mut client = support::connect(&url).await;
    pgevents_log::install(&mut client, &LogSchema::default())
        .await
        .expect("log");
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let capture =
        LogicalCapture::new(&url, LogSchema::default(), "s", "p", vec![]).expect("capture");
    let error = capture.install().await.expect_err("install refuses");
    assert!(
        matches!(&error, Error::WalLevel { found } if found == "replica"),
        "{error}"
    );
    assert!(error
        .to_string()
        .contains("ALTER SYSTEM SET wal_level = logical"));
}

/// A slot the server invalidated is reported with the way to recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_a_clear_error() {
    support::init_tracing();
    let mut options = pgevents_tempdb::Options::default();
    options
        .settings
        .push(("max_slot_wal_keep_size".into(), "1MB".into()));
    options
        .settings
        .push(("max_wal_size".into(), "32MB".into()));
    options
        .settings
        .push(("min_wal_size".into(), "32MB".into()));
    let cluster = pgevents_tempdb::TempCluster::start(&options).expect("a small-WAL cluster");
    let url = cluster.url("postgres");
    let mut client = support::connect(&url).await;
    let schema = LogSchema::default();
    pgevents_log::install(&mut client, &schema)
        .await
        .expect("log");
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
        .await
        .expect("schema");
    let mut spec = Trigger::new("t", QualifiedName::parse("t").expect("name"), ());
    spec.operations = ALL_OPS.to_vec();
    let table = pgevents_logical::register_table(&client, &schema, &spec)
        .await
        .expect("register");
    let capture = LogicalCapture::new(&url, schema, "lost", "lost", vec![table]).expect("capture");
    capture.install().await.expect("install");
    eventually(WAIT, "the slot to be invalidated", || async {
        client
            .batch_execute(
                "INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 5000) g
                   ON CONFLICT (id) DO UPDATE SET pad = excluded.pad;
                 SELECT pg_switch_wal(); CHECKPOINT;",
            )
            .await
            .expect("write WAL");
        capture
            .slot_health()
            .await
            .expect("health")
            .is_some_and(|h| h.is_lost())
    })
    .await;
    let error = tokio::time::timeout(WAIT, capture.clone().run(std::future::pending::<()>()))
        .await
        .expect("run ends")
        .expect_err("a lost slot ends the run");
    assert!(matches!(error, Error::SlotLost { .. }), "{error}");
    assert!(error.to_string().contains("pgevents uninstall"));
    let error = capture.install().await.expect_err("install reports it too");
    assert!(matches!(error, Error::SlotLost { .. }), "{error}");
}
