//! Choosing what fires, what it carries and how it is ordered, in logical capture, against
//! trigger capture of the same rows: `where`, `payload_columns` and
//! `ordering = { columns = [...] }`.

use pgevents_postgres::QualifiedName;
use pgevents_trigger::Ordering;
use pgevents_trigger::Trigger;

use crate::support::{db, eventually, Db, Running, ALL_OPS};
use crate::{logged, Logged, WAIT};

/// Captures `workload` (statements separated by `;\n`) on table `t` at once by a trigger
/// and through slot `slot`, both set up by `configure`; returns (trigger's events, slot's
/// events).
async fn both_modes(
    db: &mut Db,
    slot: &str,
    configure: impl Fn(&mut Trigger),
    workload: &str,
) -> (Vec<Logged>, Vec<Logged>) {
    let table = QualifiedName::parse("t").expect("name");
    let mut by_trigger = Trigger::new("trigger_mode", table.clone(), ());
    let mut by_slot = Trigger::new("logical_mode", table, ());
    for spec in [&mut by_trigger, &mut by_slot] {
        spec.operations = ALL_OPS.to_vec();
        configure(spec);
    }
    let trigger_id =
        pgevents_capture::install_trigger(&mut db.client, &db.schema, &by_trigger, true)
            .await
            .expect("trigger capture");
    let logical = pgevents_logical::register_table(&db.client, &db.schema, &by_slot)
        .await
        .expect("register");
    let logical_id = logical.trigger_id;
    let capture = db.capture(slot, vec![logical]);
    capture.install().await.expect("install");
    let running = Running::start(capture);
    for statement in workload.split(";\n") {
        db.client.batch_execute(statement).await.expect("workload");
    }
    db.client
        .batch_execute("SELECT pgevents.ingest(100000)")
        .await
        .expect("ingest");
    let expected = db.count(trigger_id).await;
    eventually(WAIT, "the logical events", || async {
        db.count(logical_id).await >= expected
    })
    .await;
    db.wait_caught_up(slot).await;
    running.stop().await;
    (logged(db, trigger_id).await, logged(db, logical_id).await)
}

/// The ids of the triggers registered on table `t`.
async fn trigger_ids(db: &Db) -> Vec<i32> {
    db.client
        .query(
            "SELECT id FROM pgevents.trigger WHERE table_name = 't'",
            &[],
        )
        .await
        .expect("triggers")
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

fn assert_same(by_trigger: &[Logged], by_slot: &[Logged]) {
    assert_eq!(by_slot.len(), by_trigger.len(), "as many events");
    for (i, (t, l)) in by_trigger.iter().zip(by_slot).enumerate() {
        assert_eq!(l.op, t.op, "event {i}: action");
        assert_eq!(l.old, t.old, "event {i}: data.old");
        assert_eq!(l.new, t.new, "event {i}: data.new");
    }
}

/// `payload_columns` cut the row the same way in both modes, in table order, and the
/// left-out columns reach neither mode's log rows — across a column added and one dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_columns_are_the_same_bytes_in_both_modes() {
    let mut db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, secret text, amount numeric(30,10),
                             doc jsonb, tags text[], gone int)",
        )
        .await
        .expect("schema");
    let workload = r#"INSERT INTO t VALUES
                 (9007199254740993, 'hunter2', 1.5, '{"b": [1, 2.50], "a": null}', ARRAY['x', NULL], 1),
                 (2, 'pw', NULL, NULL, NULL, NULL);
               UPDATE t SET secret = 'swordfish', amount = 2 WHERE id = 2;
               UPDATE t SET secret = 'changed only the secret';
               DELETE FROM t WHERE id = 2;
               ALTER TABLE t ADD COLUMN later text DEFAULT 'new';
               INSERT INTO t (id, secret) VALUES (3, 'after add');
               TRUNCATE t"#;
    let (by_trigger, by_slot) = both_modes(
        &mut db,
        "payload_columns",
        |spec| {
            spec.payload_columns = Some(["tags", "id", "amount", "doc"].map(String::from).to_vec())
        },
        workload,
    )
    .await;
    assert_same(&by_trigger, &by_slot);
    let ops: String = by_slot.iter().map(|e| e.op as u8 as char).collect();
    assert_eq!(ops, "IIUUUDIT");
    assert_eq!(
        by_slot[0].new.as_deref(),
        Some(
            r#"{"id":9007199254740993,"amount":1.5000000000,"doc":{"a": null, "b": [1, 2.50]},"tags":["x",null]}"#
        )
    );
    for e in by_trigger.iter().chain(&by_slot) {
        for image in [&e.old, &e.new].into_iter().flatten() {
            for left_out in ["secret", "hunter2", "swordfish", "gone", "later"] {
                assert!(!image.contains(left_out), "{left_out} leaked into {image}");
            }
        }
    }
}

/// Group keys are the same in both modes: the hash of the group's values and the trigger;
/// an UPDATE that moves a row to another group carries the old group's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_keys_are_the_same_in_both_modes() {
    let mut db = db().await;
    db.client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, account int, v text)")
        .await
        .expect("schema");
    let workload = "INSERT INTO t VALUES (1, 10, 'a'), (2, 20, 'b'), (3, NULL, 'c');
               UPDATE t SET v = 'stays' WHERE id = 1;
               UPDATE t SET account = 20 WHERE id = 1;
               UPDATE t SET account = 30 WHERE id = 3;
               DELETE FROM t WHERE id = 2";
    let (by_trigger, by_slot) = both_modes(
        &mut db,
        "group_keys",
        |spec| spec.ordering = Ordering::Columns(vec!["account".into()]),
        workload,
    )
    .await;
    assert_same(&by_trigger, &by_slot);
    let ids = trigger_ids(&db).await;
    assert_eq!(ids.len(), 2);
    let row = db
        .client
        .query_one(
            "SELECT count(*) FILTER (WHERE row_key IS DISTINCT FROM hashtextextended(
                        ROW((CASE op WHEN 'D' THEN old_row ELSE new_row END->>'account')::int)::text,
                        trigger_id)
                     OR old_key IS DISTINCT FROM CASE
                        WHEN op = 'U' AND old_row->>'account' IS DISTINCT FROM new_row->>'account'
                        THEN hashtextextended(ROW((old_row->>'account')::int)::text, trigger_id) END),
                    count(*) FILTER (WHERE old_key IS NOT NULL),
                    count(*)
               FROM pgevents.event WHERE trigger_id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("keys");
    let (wrong, moved, all): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(all, 14, "7 events in each mode");
    assert_eq!(moved, 4, "two moves in each mode carry the old group's key");
    assert_eq!(wrong, 0, "every key is the group's, in both modes");
}

/// A row filter and cut columns give the same events, byte for byte, in both modes: an
/// UPDATE moving a row out of the condition fires, one staying outside does not, and rows
/// the condition never matched are not in the log at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_and_payload_columns_give_the_same_events_in_both_modes() {
    let mut db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, status text, amount numeric, secret text)",
        )
        .await
        .expect("schema");
    let workload =
        "INSERT INTO t VALUES (1, 'draft', 1, 's1'), (2, 'paid', 2.50, 's2'), (3, NULL, 3, 's3');
               UPDATE t SET amount = 10 WHERE id = 1;
               UPDATE t SET status = 'draft' WHERE id = 2;
               UPDATE t SET amount = 20 WHERE id = 2;
               UPDATE t SET status = 'paid', amount = 11 WHERE id = 1;
               UPDATE t SET amount = 99 WHERE id = 1;
               DELETE FROM t WHERE id = 2;
               DELETE FROM t WHERE id = 1;
               TRUNCATE t";
    let (by_trigger, by_slot) = both_modes(
        &mut db,
        "where_filter",
        |spec| {
            spec.condition = Some("status <> 'draft' AND amount < 50".into());
            spec.payload_columns = Some(vec!["id".into(), "amount".into(), "status".into()]);
        },
        workload,
    )
    .await;
    assert_same(&by_trigger, &by_slot);
    let ops: String = by_slot.iter().map(|e| e.op as u8 as char).collect();
    // INSERT 2, UPDATE 2 out of the condition, UPDATE 1 into it, UPDATE 1 out of it (amount
    // 99), DELETE of 1 is outside (amount 99): not fired; TRUNCATE.
    assert_eq!(ops, "IUUUT");
    assert_eq!(
        by_slot[1].old.as_deref(),
        Some(r#"{"id":2,"status":"paid","amount":2.50}"#)
    );
    assert_eq!(
        by_slot[1].new.as_deref(),
        Some(r#"{"id":2,"status":"draft","amount":2.50}"#)
    );
    assert!(by_slot.iter().chain(&by_trigger).all(|e| [&e.old, &e.new]
        .into_iter()
        .flatten()
        .all(|i| !i.contains("secret"))));
}

/// Stored generated columns, which pgoutput does not send, are in logical payloads as in
/// trigger payloads: in table order, computed from the row's own values (old images from
/// the old values).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_are_in_logical_payloads_as_in_trigger_payloads() {
    let mut db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, price numeric(10,2), qty int,
                             total numeric GENERATED ALWAYS AS (price * qty) STORED,
                             \"Label\" text,
                             shout text GENERATED ALWAYS AS (upper(\"Label\") || '!') STORED)",
        )
        .await
        .expect("schema");
    let workload =
        "INSERT INTO t (id, price, qty, \"Label\") VALUES (1, 2.50, 4, 'a'), (2, NULL, 1, NULL);
               UPDATE t SET qty = qty + 1, \"Label\" = 'b' WHERE id = 1;
               UPDATE t SET price = 1 WHERE id = 2;
               DELETE FROM t WHERE id = 2";
    let (by_trigger, by_slot) = both_modes(&mut db, "generated", |_| {}, workload).await;
    assert_same(&by_trigger, &by_slot);
    assert_eq!(by_slot.len(), 5);
    assert_eq!(
        by_slot[2].new.as_deref(),
        Some(r#"{"id":1,"price":2.50,"qty":5,"total":12.50,"Label":"b","shout":"B!"}"#)
    );
    assert_eq!(
        by_slot[2].old.as_deref(),
        Some(r#"{"id":1,"price":2.50,"qty":4,"total":10.00,"Label":"a","shout":"A!"}"#)
    );
}

/// A `where` and a payload cut naming a generated column give the same events in both
/// modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_and_payload_columns_see_generated_columns_in_both_modes() {
    let mut db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, price numeric(10,2), qty int,
                             total numeric GENERATED ALWAYS AS (price * qty) STORED)",
        )
        .await
        .expect("schema");
    let workload = "INSERT INTO t (id, price, qty) VALUES (1, 1, 1), (2, 10, 10);
               UPDATE t SET qty = 200 WHERE id = 1";
    let (by_trigger, by_slot) = both_modes(
        &mut db,
        "generated_filter",
        |spec| {
            spec.condition = Some("total > 50".into());
            spec.payload_columns = Some(vec!["id".into(), "total".into()]);
        },
        workload,
    )
    .await;
    assert_same(&by_trigger, &by_slot);
    let news: Vec<&str> = by_slot.iter().filter_map(|e| e.new.as_deref()).collect();
    assert_eq!(
        news,
        [r#"{"id":2,"total":100.00}"#, r#"{"id":1,"total":200.00}"#]
    );
}
