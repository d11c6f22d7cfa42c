//! Choosing what fires, what it carries and how it is ordered, in trigger capture: `where`,
//! `payload_columns` and `ordering = { columns = [...] }`.

use pgevents::{Action, Event, Listener, Ordering, Trigger};

use crate::ordering::{failing_first, position, start_ordered};
use crate::support::{db, start, Collector, Db};
use crate::WAIT;

fn field(e: &Event, name: &str) -> Option<i64> {
    e.new()
        .or(e.old())
        .and_then(|r| r.get(name))
        .and_then(|v| v.as_i64())
}

/// Every change captured so far, in the log or still in the capture table.
async fn captured(db: &Db) -> i64 {
    db.client
        .query_one(
            "SELECT (SELECT count(*) FROM pgevents.event) + (SELECT count(*) FROM pgevents.capture)",
            &[],
        )
        .await
        .expect("count")
        .get(0)
}

/// The payload holds only the chosen columns, in table order, exactly as PostgreSQL renders
/// a row of them; the left-out column reaches neither the handler nor the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_columns_keep_only_the_chosen_columns_byte_for_byte() {
    let db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, secret text, balance numeric(20,4),
                                    tags text[], \"Odd \"\"Name\"\"\" jsonb)",
        )
        .await
        .expect("schema");
    let events = Collector::default();
    // Listed out of table order, with the oddly named column: the payload follows the table.
    let running = start(
        Listener::builder(&db.url).trigger(
            Trigger::for_table("accounts", events.handler())
                .expect("a table name")
                .payload_columns(["Odd \"Name\"", "balance", "id", "tags"]),
        ),
    )
    .await;
    db.client
        .batch_execute(
            r#"INSERT INTO accounts VALUES
                 (9007199254740993, 'hunter2', 12.5000, ARRAY['a', NULL], '{"b": 1, "a": [2.50]}');
               UPDATE accounts SET secret = 'swordfish', balance = 0 WHERE id = 9007199254740993;
               DELETE FROM accounts;"#,
        )
        .await
        .expect("writes");
    events.wait_until(WAIT, "3 events", |e| e.len() == 3).await;
    running.stop().await;
    let rendered = |sql: &str| {
        let c = &db.client;
        let sql = sql.to_string();
        async move {
            c.query_one(&sql, &[])
                .await
                .expect("to_json")
                .get::<_, String>(0)
        }
    };
    let expected = rendered(
        r#"SELECT to_json(r)::text FROM (SELECT 9007199254740993::bigint AS id,
                  12.5000::numeric(20,4) AS balance, ARRAY['a', NULL]::text[] AS tags,
                  '{"b": 1, "a": [2.50]}'::jsonb AS "Odd ""Name""") r"#,
    )
    .await;
    let events = events.events();
    assert_eq!(events[0].action(), Action::Insert);
    let insert = events[0].payload_str();
    assert!(
        insert.contains(&format!(r#""new":{expected}"#)),
        "{insert} carries {expected}"
    );
    let update = events[1].payload_str();
    assert!(update.contains(&format!(r#""old":{expected}"#)), "{update}");
    assert!(update.contains(r#""balance":0.0000"#), "{update}");
    for event in &events {
        assert!(
            !event.payload_str().contains("secret"),
            "{}",
            event.payload_str()
        );
    }
    let leaked: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pgevents.event
              WHERE old_row::text LIKE '%secret%' OR new_row::text LIKE '%secret%'
                 OR old_row::text LIKE '%hunter2%' OR new_row::text LIKE '%swordfish%'",
            &[],
        )
        .await
        .expect("log rows")
        .get(0);
    assert_eq!(leaked, 0, "a left-out column never reaches the log");
}

/// A column that the table does not have is refused before anything is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_payload_column_is_refused_naming_it() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE small (id int PRIMARY KEY)")
        .await
        .expect("schema");
    let events = Collector::default();
    let error = Listener::builder(&db.url)
        .trigger(
            Trigger::for_table("small", events.handler())
                .expect("a table name")
                .payload_columns(["id", "nope"]),
        )
        .build()
        .await
        .expect_err("an unknown column is refused");
    let message = error.to_string();
    assert!(
        message.contains("\"nope\"") && message.contains("payload_columns"),
        "{message}"
    );
}

/// Events of one account are delivered in commit order while one of them is retrying; other
/// accounts flow meanwhile; a row moved to another account waits for both accounts' earlier
/// events, and both accounts' later events wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_order_holds_while_a_group_retries_and_other_groups_flow() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE ledger (id int PRIMARY KEY, account int, v int)")
        .await
        .expect("schema");
    let delivered = Collector::default();
    // The first event of account 1 fails three times.
    let handler = failing_first(&delivered, 3, |e| field(e, "v") == Some(0));
    let running = start_ordered(
        &db.url,
        "ledger",
        handler,
        Ordering::Columns(vec!["account".into()]),
    )
    .await;
    db.client
        .batch_execute(
            "INSERT INTO ledger VALUES (1, 1, 0);
             INSERT INTO ledger VALUES (2, 1, 1);
             INSERT INTO ledger VALUES (3, 2, 2);
             UPDATE ledger SET account = 1, v = 3 WHERE id = 3;
             INSERT INTO ledger VALUES (4, 2, 4);
             INSERT INTO ledger VALUES (5, 3, 5);
             INSERT INTO ledger VALUES (6, NULL, 6);
             INSERT INTO ledger VALUES (7, NULL, 7);",
        )
        .await
        .expect("writes");
    delivered
        .wait_until(WAIT, "8 events", |e| e.len() == 8)
        .await;
    running.stop().await;
    let events = delivered.events();
    let at = |v: i64| position(&events, |e| field(e, "v") == Some(v));
    assert!(at(0) < at(1), "account 1 in commit order");
    assert!(at(2) < at(0), "account 2 flowed while account 1 retried");
    assert!(at(5) < at(0), "account 3 flowed while account 1 retried");
    assert!(
        at(0) < at(3),
        "the move waited for the new account's earlier event"
    );
    assert!(
        at(2) < at(3),
        "the move waited for the old account's earlier event"
    );
    assert!(
        at(3) < at(4),
        "the old account's later event waited for the move"
    );
    assert!(
        at(6) < at(7),
        "rows without an account are a group of their own"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.action() == Action::Update)
            .count(),
        1
    );
}

/// The statements of the row filter tests: every way a row can meet `status <> 'draft'`.
/// The events that fire are marked; the rest must not.
const FILTERED_WRITES: &str = "INSERT INTO orders VALUES (1, 'draft', 'a');
     INSERT INTO orders VALUES (2, 'paid', 'b');
     INSERT INTO orders VALUES (3, NULL, 'c');
     UPDATE orders SET note = 'still draft' WHERE id = 1;
     UPDATE orders SET status = 'draft' WHERE id = 2;
     UPDATE orders SET note = 'stays out' WHERE id = 2;
     UPDATE orders SET status = 'paid', note = 'in' WHERE id = 1;
     DELETE FROM orders WHERE id = 2;
     DELETE FROM orders WHERE id = 1;
     INSERT INTO orders VALUES (9, 'paid', 'last')";

/// A row filter fires an INSERT on the new row, a DELETE on the old row and an UPDATE when
/// either matches: an UPDATE that moves a row out of the condition is delivered, one that
/// stays outside is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_fires_on_the_rows_that_match_before_or_after() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text, note text)")
        .await
        .expect("schema");
    let events = Collector::default();
    let running = start(
        Listener::builder(&db.url).trigger(
            Trigger::for_table("orders", events.handler())
                .expect("a table name")
                .operations(vec![Action::Insert, Action::Update, Action::Delete])
                .condition("status <> 'draft'"),
        ),
    )
    .await;
    db.client
        .batch_execute(FILTERED_WRITES)
        .await
        .expect("writes");
    events.wait_until(WAIT, "5 events", |e| e.len() == 5).await;
    running.stop().await;
    let logged = captured(&db).await;
    assert_eq!(logged, 5, "only matching changes are captured");
    let mut seen: Vec<(Action, Option<i64>, Option<String>)> = events
        .events()
        .iter()
        .map(|e| {
            let note = e
                .new()
                .or(e.old())
                .and_then(|r| r.get("note"))
                .and_then(|v| v.as_str())
                .map(String::from);
            (e.action(), field(e, "id"), note)
        })
        .collect();
    seen.sort_by_key(|(action, id, _)| (*id, action.to_string()));
    let expected = [
        (Action::Delete, Some(1), Some("in".to_string())),
        (Action::Update, Some(1), Some("in".to_string())),
        (Action::Insert, Some(2), Some("b".to_string())),
        (Action::Update, Some(2), Some("b".to_string())),
        (Action::Insert, Some(9), Some("last".to_string())),
    ];
    assert_eq!(seen, expected);
}

/// A condition PostgreSQL rejects is refused before anything is installed, with its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_condition_is_refused_with_postgres_message() {
    let db = db().await;
    db.client
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        .await
        .expect("schema");
    for (condition, says) in [
        ("colour = 'red'", "column \"colour\" does not exist"),
        ("status <>", "syntax error"),
        ("id", "must be type boolean"),
        ("id IN (SELECT 1)", "subquery"),
        ("true); DROP TABLE orders; SELECT (true", "orders"),
    ] {
        let events = Collector::default();
        let error = Listener::builder(&db.url)
            .trigger(
                Trigger::for_table("orders", events.handler())
                    .expect("a table name")
                    .condition(condition),
            )
            .build()
            .await
            .expect_err("a bad condition is refused");
        let message = error.to_string();
        assert!(
            message.contains("`where`") && message.contains(says),
            "{condition}: {message}"
        );
    }
    let table: Option<String> = db
        .client
        .query_one("SELECT to_regclass('orders')::text", &[])
        .await
        .expect("lookup")
        .get(0);
    assert_eq!(
        table.as_deref(),
        Some("orders"),
        "nothing ran but the check"
    );
}

/// With both `columns` and `where`, an UPDATE fires only when one of the columns changed and
/// the old or the new row matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_and_columns_must_both_hold_for_an_update() {
    let db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, status text, amount int, note text);
             INSERT INTO items VALUES (1, 'new', 5, ''), (2, 'new', 0, '')",
        )
        .await
        .expect("schema");
    let events = Collector::default();
    let running = start(
        Listener::builder(&db.url).trigger(
            Trigger::for_table("items", events.handler())
                .expect("a table name")
                .operations(vec![Action::Update])
                .columns(["status"])
                .condition("amount > 0"),
        ),
    )
    .await;
    db.client
        .batch_execute(
            "UPDATE items SET note = 'only the note' WHERE id = 1;
             UPDATE items SET status = 'outside' WHERE id = 2;
             UPDATE items SET status = 'paid', note = 'fires' WHERE id = 1;
             UPDATE items SET status = 'paid', amount = 3, note = 'moves in' WHERE id = 2;",
        )
        .await
        .expect("writes");
    events.wait_until(WAIT, "2 events", |e| e.len() == 2).await;
    running.stop().await;
    let logged = captured(&db).await;
    assert_eq!(logged, 2, "only the two UPDATEs that pass both filters");
    let mut notes: Vec<String> = events
        .events()
        .iter()
        .filter_map(|e| e.new()?.get("note")?.as_str().map(String::from))
        .collect();
    notes.sort();
    assert_eq!(notes, ["fires", "moves in"]);
}
