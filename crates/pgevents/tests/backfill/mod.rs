//! Backfills through the library: a table of 100,000 rows read while a writer updates,
//! deletes and inserts random rows at a steady rate, in trigger and in logical capture mode.
//! The handler keeps a copy of the table by applying events in delivery order (READ, INSERT
//! and UPDATE as an upsert, DELETE as a delete); at the end the copy equals the table, and
//! every row's events arrived in log order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgevents::{Action, BackfillState, Event, Listener, Trigger};

use crate::support::{connect, db, eventually, run, Db, Running};

const ROWS: i64 = 100_000;
const LIMIT: Duration = Duration::from_secs(240);

/// The consumer: a copy of the table built from events, and what it saw of their order.
#[derive(Default)]
struct Replica {
    rows: HashMap<i64, String>,
    /// Each row's last delivered event position.
    last_seq: HashMap<i64, i64>,
    /// Events delivered after a later event of their row (should stay empty).
    out_of_order: Vec<String>,
    reads: i64,
    changes: i64,
}

impl Replica {
    fn apply(&mut self, event: &Event) {
        let image = match event.action() {
            Action::Delete => event.old(),
            _ => event.new(),
        };
        let Some(id) = image.and_then(|row| row["id"].as_i64()) else {
            self.out_of_order
                .push(format!("event {} without a row id", event.id()));
            return;
        };
        let seq = event.seq();
        if let Some(last) = self.last_seq.insert(id, seq) {
            if last >= seq {
                self.out_of_order.push(format!(
                    "row {id}: {} at {seq} after an event at {last}",
                    event.action()
                ));
            }
        }
        match event.action() {
            Action::Delete => {
                self.rows.remove(&id);
            }
            _ => {
                self.rows
                    .insert(id, event.new_json().unwrap_or_default().to_string());
            }
        }
        match event.action() {
            Action::Read => self.reads += 1,
            _ => self.changes += 1,
        }
    }
}

/// A writer: every couple of milliseconds, one transaction updating, deleting or inserting
/// a row (half of them just ahead of the backfill); counts its commits.
struct Writer {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn start(url: &str) -> Writer {
        let client = connect(url).await;
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicI64::new(0));
        let (s, c) = (stop.clone(), commits.clone());
        let task = tokio::spawn(async move {
            let mut next_id = ROWS + 1;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            let mut n: u64 = 0;
            let mut cursor = 0i64;
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                if n.is_multiple_of(50) {
                    // Where a backfill stands: the rows it reads next are the likeliest to
                    // race a chunk.
                    cursor = client
                        .query_one(
                            "SELECT coalesce((SELECT max(rows_done) FROM pgevents.backfill), 0)",
                            &[],
                        )
                        .await
                        .map_or(0, |r| r.get(0));
                }
                // A cheap deterministic spread: odd writes over the whole table, even ones
                // over the next few thousand rows the backfill reads.
                let spread = (n.wrapping_mul(2_654_435_761) % ROWS as u64) as i64;
                let id = if n.is_multiple_of(2) {
                    (cursor + spread % 6000) % ROWS + 1
                } else {
                    spread + 1
                };
                let sql = match n % 10 {
                    0 => format!("DELETE FROM items WHERE id = {id}"),
                    1 => {
                        next_id += 1;
                        format!("INSERT INTO items (id, v, note) VALUES ({next_id}, 0, 'new')")
                    }
                    _ => format!("UPDATE items SET v = v + 1, note = 'w{n}' WHERE id = {id}"),
                };
                client.batch_execute(&sql).await.expect("writer statement");
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        Writer {
            stop,
            commits,
            task,
        }
    }

    async fn stop(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer task");
        self.commits.load(Ordering::Relaxed)
    }
}

async fn table(db: &Db) -> HashMap<i64, String> {
    db.client
        .query("SELECT id, to_json(t)::text FROM items t", &[])
        .await
        .expect("read the table")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Backfill `id`'s state.
async fn state(client: &tokio_postgres::Client, id: i64) -> String {
    client
        .query_one("SELECT state FROM pgevents.backfill WHERE id = $1", &[&id])
        .await
        .expect("backfill state")
        .get(0)
}

/// The rows backfill `id` has read.
async fn rows_done(client: &tokio_postgres::Client, id: i64) -> i64 {
    client
        .query_one(
            "SELECT rows_done FROM pgevents.backfill WHERE id = $1",
            &[&id],
        )
        .await
        .expect("rows done")
        .get(0)
}

/// Runs `listener` (whose table `table` has columns `id` and `v`), inserts row `new_id` and
/// waits for it to be delivered (`delivered` counts deliveries; a destination that has not
/// delivered yet is on trial, and backfill chunks leave its events to the dispatcher), then
/// starts a backfill of the table the way an application does beside its running listener.
/// Returns the running listener and the backfill's id.
async fn backfill_after_a_change(
    db: &Db,
    listener: Listener,
    table: &str,
    new_id: i32,
    delivered: impl Fn() -> usize,
) -> (Running, i64) {
    let running = run(listener);
    db.client
        .execute(&format!("INSERT INTO {table} VALUES ($1, 0)"), &[&new_id])
        .await
        .expect("insert a row");
    eventually(LIMIT, "the insert delivered", || {
        let n = delivered();
        async move { n >= 1 }
    })
    .await;
    let starter = Listener::builder(&db.url)
        .on(table, |_: Event| async {
            Ok::<_, std::convert::Infallible>(())
        })
        .build()
        .await
        .expect("a second listener");
    let id = starter.backfill(table, None).await.expect("backfill");
    (running, id)
}

/// One delivery to a handler of an `(id, v)` table: the event's action, row id, `v` and log
/// position.
type Delivery = (Action, i64, i64, i64);

/// What a handler of an `(id, v)` table was given, in delivery order.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<Vec<Delivery>>>);

impl Deliveries {
    /// The row id and `v` of `event`'s new image (-1 where it has none).
    fn row(event: &Event) -> (i64, i64) {
        let image = event.new();
        let field = |name: &str| image.and_then(|row| row[name].as_i64()).unwrap_or(-1);
        (field("id"), field("v"))
    }

    fn push(&self, event: &Event) {
        let (id, v) = Self::row(event);
        self.0
            .lock()
            .expect("deliveries")
            .push((event.action(), id, v, event.seq()));
    }

    fn len(&self) -> usize {
        self.0.lock().expect("deliveries").len()
    }

    fn all(&self) -> Vec<Delivery> {
        self.0.lock().expect("deliveries").clone()
    }

    /// Row `id`'s deliveries, `(action, v)`, in delivery order.
    fn of_row(&self, id: i64) -> Vec<(Action, i64)> {
        self.all()
            .into_iter()
            .filter(|e| e.1 == id)
            .map(|e| (e.0, e.2))
            .collect()
    }

    /// The row ids of the `READ` events delivered, sorted.
    fn read_rows(&self) -> Vec<i64> {
        let mut reads: Vec<i64> = self
            .all()
            .iter()
            .filter(|e| e.0 == Action::Read)
            .map(|e| e.1)
            .collect();
        reads.sort_unstable();
        reads
    }

    /// Asserts that no event arrived twice and that each row's events arrived in log order.
    fn assert_once_in_order(&self) {
        let mut last: HashMap<i64, i64> = HashMap::new();
        for (action, id, _, seq) in self.all() {
            if let Some(before) = last.insert(id, seq) {
                assert!(
                    before < seq,
                    "row {id}: {action} at {seq} delivered after the event at {before} (twice, or out of order)"
                );
            }
        }
    }
}

/// Creates `table (id int PRIMARY KEY, v int NOT NULL)` holding rows 1 to `rows`, `v` = 0.
async fn zeroed_table(db: &Db, table: &str, rows: i32) {
    db.client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO {table} SELECT g, 0 FROM generate_series(1, {rows}) g"
        ))
        .await
        .expect("table");
}

/// A listener of the `(id, v)` table `table` whose handler takes `delay(action, row id)`
/// over each event, then records it into `delivered`.
async fn recording_listener(
    db: &Db,
    table: &str,
    delivered: &Deliveries,
    delay: fn(Action, i64) -> Duration,
) -> Listener {
    let d = delivered.clone();
    Listener::builder(&db.url)
        .on(table, move |event: Event| {
            let d = d.clone();
            async move {
                let (id, _) = Deliveries::row(&event);
                tokio::time::sleep(delay(event.action(), id)).await;
                d.push(&event);
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .build()
        .await
        .expect("listener")
}

/// Changes row `id` of `table` (`v` = 1) while its READ waits in the log undelivered, waits
/// until `total` events were delivered, stops the listener and returns the row's deliveries
/// (`(action, v)`).
async fn change_behind_its_read(
    db: &Db,
    table: &str,
    id: i32,
    total: usize,
    deliveries: &Deliveries,
    running: Running,
) -> Vec<(Action, i64)> {
    db.client
        .execute(&format!("UPDATE {table} SET v = 1 WHERE id = $1"), &[&id])
        .await
        .expect("update the row");
    eventually(LIMIT, "every READ and the changes delivered", || {
        let n = deliveries.len();
        async move { n >= total }
    })
    .await;
    running.stop().await;
    deliveries.of_row(i64::from(id))
}

async fn consistent_while_writers_write(logical: Option<&str>) {
    let db = db().await;
    db.client
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, v bigint NOT NULL, note text);
             INSERT INTO items SELECT g, 0, 'seed ' || g FROM generate_series(1, {ROWS}) g;
             ANALYZE items"
        ))
        .await
        .expect("table");
    let copy = Arc::new(Mutex::new(Replica::default()));
    let c = copy.clone();
    let mut builder = Listener::builder(&db.url).on("items", move |event: Event| {
        c.lock().expect("copy").apply(&event);
        std::future::ready(Ok::<_, std::convert::Infallible>(()))
    });
    if let Some(name) = logical {
        builder = builder.capture_logical(name, name);
    }
    let listener = builder.build().await.expect("listener");
    let writer = Writer::start(&db.url).await;
    eventually(LIMIT, "the writer writing", || {
        let n = writer.commits.load(Ordering::Relaxed);
        async move { n >= 50 }
    })
    .await;
    let id = listener.backfill("items", None).await.expect("backfill");
    let running = run(listener);
    let started = Instant::now();
    let during = writer.commits.load(Ordering::Relaxed);
    eventually(LIMIT, "the backfill done", || {
        let client = &db.client;
        async move { state(client, id).await == "done" }
    })
    .await;
    let took = started.elapsed();
    let written = writer.stop().await;
    assert!(
        written - during >= 20,
        "the writer kept writing during the backfill ({} commits in {took:?})",
        written - during
    );
    let expected = table(&db).await;
    let deadline = Instant::now() + LIMIT;
    loop {
        let same = copy.lock().expect("copy").rows == expected;
        if same {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer's copy never equalled the table: {} rows in the copy, {} in the table",
            copy.lock().expect("copy").rows.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    running.stop().await;
    let rows_done = rows_done(&db.client, id).await;
    let copy = copy.lock().expect("copy");
    assert!(
        copy.out_of_order.is_empty(),
        "every row's events in log order: {:?}",
        &copy.out_of_order[..copy.out_of_order.len().min(10)]
    );
    assert_eq!(copy.reads, rows_done, "one READ per row read, none twice");
    assert!(
        copy.reads >= ROWS * 8 / 10,
        "most rows were read ({} READ events)",
        copy.reads
    );
    assert!(copy.changes > 0, "live changes were delivered too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_under_writes_leaves_the_consumer_equal_to_the_table_in_trigger_mode() {
    consistent_while_writers_write(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_under_writes_leaves_the_consumer_equal_to_the_table_in_logical_mode() {
    consistent_while_writers_write(Some("pgevents_backfill_test")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_refuses_bad_input_and_starts_nothing() {
    let db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE keyed (id int PRIMARY KEY, status text);
             CREATE TABLE loose (n int, status text);",
        )
        .await
        .expect("tables");
    let listener = Listener::builder(&db.url)
        .on("keyed", |_: Event| async {
            Ok::<_, std::convert::Infallible>(())
        })
        .trigger(
            Trigger::for_table("loose", |_: Event| async {
                Ok::<_, std::convert::Infallible>(())
            })
            .expect("a table name")
            .ordering(pgevents::Ordering::None),
        )
        .build()
        .await
        .expect("listener");
    for (table, condition, needle) in [
        ("elsewhere", None, "no handler"),
        ("loose", None, "no primary key"),
        ("keyed", Some("colour = 'red'"), "colour"),
        ("keyed", Some("status = "), "syntax error"),
        ("keyed", Some("true; DROP TABLE keyed"), "cannot select"),
    ] {
        let e = listener
            .backfill(table, condition)
            .await
            .expect_err("refused");
        assert!(e.is_usage(), "{table} {condition:?}: a usage error: {e}");
        assert!(
            e.to_string().contains(needle),
            "{table} {condition:?}: {e} names {needle:?}"
        );
    }
    assert!(
        listener.backfills().await.expect("list").is_empty(),
        "nothing started"
    );
    let id = listener
        .backfill("keyed", Some("status = 'paid'"))
        .await
        .expect("a good condition");
    let all = listener.backfills().await.expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, id);
    assert_eq!(all[0].state, BackfillState::Running);
    assert_eq!(all[0].condition.as_deref(), Some("status = 'paid'"));
}

/// The events of a backfill's chunk are delivered by the chunk itself, while it holds their
/// rows: the first `READ` reaches the handler before the chunk's progress is committed. A
/// `READ` whose attempt fails there is written with that attempt, retried by the dispatcher,
/// and holds back a later change of its row until it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_delivers_its_reads_and_a_failing_one_holds_back_its_row() {
    let db = db().await;
    zeroed_table(&db, "accounts", 50).await;
    let delivered = Deliveries::default();
    let failures = Arc::new(AtomicI64::new(0));
    let progress_at_first_read = Arc::new(Mutex::new(None::<i64>));
    let watcher = Arc::new(connect(&db.url).await);
    let (d, f, p, w) = (
        delivered.clone(),
        failures.clone(),
        progress_at_first_read.clone(),
        watcher.clone(),
    );
    let listener = Listener::builder(&db.url)
        .on("accounts", move |event: Event| {
            let (d, f, p, w) = (d.clone(), f.clone(), p.clone(), w.clone());
            async move {
                let (id, _) = Deliveries::row(&event);
                if event.action() == Action::Read && p.lock().expect("progress").is_none() {
                    let done: i64 = w
                        .query_one("SELECT rows_done FROM pgevents.backfill", &[])
                        .await
                        .map_err(|e| e.to_string())?
                        .get(0);
                    *p.lock().expect("progress") = Some(done);
                }
                if event.action() == Action::Read && id == 7 && f.fetch_add(1, Ordering::SeqCst) < 2
                {
                    return Err("row 7 is not welcome yet".to_string());
                }
                d.push(&event);
                Ok(())
            }
        })
        .retry(pgevents::RetryPolicy {
            max_retries: 5,
            initial_interval: Duration::from_millis(400),
            max_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        })
        .build()
        .await
        .expect("listener");
    let (running, id) =
        backfill_after_a_change(&db, listener, "accounts", 51, || delivered.len()).await;
    eventually(LIMIT, "row 7's READ failing once", || {
        let n = failures.load(Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;
    // Row 7's READ is now in the log, waiting for its retry: this change must wait for it.
    let row7 = change_behind_its_read(&db, "accounts", 7, 53, &delivered, running).await;

    assert_eq!(
        *progress_at_first_read.lock().expect("progress"),
        Some(0),
        "the first READ was delivered before its chunk committed"
    );
    delivered.assert_once_in_order();
    let reads = delivered.read_rows();
    assert_eq!(reads, (1..=51).collect::<Vec<i64>>(), "one READ per row");
    assert_eq!(
        row7,
        vec![(Action::Read, 0), (Action::Update, 1)],
        "row 7: its READ, retried, before its later change"
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        3,
        "two failed attempts, then one delivered"
    );
    let logged = db
        .client
        .query_one(
            "SELECT count(*) FILTER (WHERE op = 'R' AND status = 'd'),
                    (SELECT attempts FROM pgevents.event WHERE op = 'R' AND new_row->>'id' = '7'),
                    (SELECT count(*) FROM pgevents.attempt a JOIN pgevents.event e ON e.seq = a.event_seq
                      WHERE e.op = 'R')
               FROM pgevents.event",
            &[],
        )
        .await
        .expect("the log");
    assert_eq!(
        logged.get::<_, i64>(0),
        51,
        "every READ recorded as delivered"
    );
    assert_eq!(logged.get::<_, i32>(1), 3, "row 7's READ: three attempts");
    assert_eq!(logged.get::<_, i64>(2), 2, "its two failed attempts logged");
    assert_eq!(state(&db.client, id).await, "done");
}

/// The rows of one chunk of the `ledger` table, as earlier releases selected them (every
/// row locked `FOR SHARE`).
macro_rules! ledger_chunk {
    () => {
        "SELECT pgevents_read.\"id\" AS pgevents_k0,
                hashtextextended((pgevents_read.\"id\")::text, %1$s) AS pgevents_key,
                to_json(pgevents_read) AS pgevents_image
           FROM \"public\".\"ledger\" AS pgevents_read
          WHERE ($1::text[] IS NULL
                 OR (pgevents_read.\"id\") > (($1::text[])[1]::integer)) AND (true)
          ORDER BY pgevents_read.\"id\"
          LIMIT $2::int8
          FOR SHARE OF pgevents_read"
    };
}

/// The statement stored for the `ledger` table by backfills started before chunks delivered
/// their events: it writes them itself.
const LEDGER_WRITES: &str = concat!(
    "WITH chunk AS (",
    ledger_chunk!(),
    "),
     written AS (
         INSERT INTO \"pgevents\".\"event\" (trigger_id, op, row_key, new_row, size)
         SELECT %1$s, 'R', c.pgevents_key, c.pgevents_image,
                \"pgevents\".\"event_size\"(NULL, c.pgevents_image)
           FROM chunk c ORDER BY c.pgevents_k0
         RETURNING size)
     SELECT (SELECT count(*) FROM written),
            (SELECT coalesce(sum(size), 0)::int8 FROM written),
            (SELECT ARRAY[c.pgevents_k0::text] FROM chunk c
              ORDER BY c.pgevents_k0 DESC LIMIT 1)"
);

/// The statement stored for the `ledger` table by backfills started before chunks stopped
/// locking every row: it reads each row `FOR SHARE` and returns its event.
const LEDGER_LOCKS: &str = concat!(
    "SELECT nextval('\"pgevents\".\"event_seq\"'), c.pgevents_key, c.pgevents_image::text,
            ARRAY[c.pgevents_k0::text], now()
       FROM (",
    ledger_chunk!(),
    ") c"
);

/// A backfill started by an earlier release stored its chunk statement (`statement`, a
/// `format` string of the trigger's id); a chunk runs it as it is, and the events reach the
/// handler.
async fn a_backfill_started_earlier_runs_on(statement: &str) {
    let db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE ledger (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO ledger SELECT g, g * 10 FROM generate_series(1, 30) g",
        )
        .await
        .expect("table");
    let reads = Arc::new(Mutex::new(Vec::<i64>::new()));
    let r = reads.clone();
    let listener = Listener::builder(&db.url)
        .on("ledger", move |event: Event| {
            if event.action() == Action::Read {
                let id = event.new().and_then(|row| row["id"].as_i64());
                r.lock().expect("reads").push(id.unwrap_or(-1));
            }
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        })
        .build()
        .await
        .expect("listener");
    let id = listener.backfill("ledger", None).await.expect("backfill");
    db.client
        .execute(
            "UPDATE pgevents.backfill b SET chunk_sql = format($2, b.trigger_id) WHERE b.id = $1",
            &[&id, &statement],
        )
        .await
        .expect("the earlier release's statement");
    let running = run(listener);
    eventually(LIMIT, "the backfill done and its READs delivered", || {
        let client = &db.client;
        let n = reads.lock().expect("reads").len();
        async move { n >= 30 && state(client, id).await == "done" }
    })
    .await;
    running.stop().await;
    let mut got = reads.lock().expect("reads").clone();
    got.sort_unstable();
    assert_eq!(got, (1..=30).collect::<Vec<i64>>(), "one READ per row");
    assert_eq!(rows_done(&db.client, id).await, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_started_by_the_previous_release_runs_on() {
    a_backfill_started_earlier_runs_on(LEDGER_WRITES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_that_locked_every_row_runs_on() {
    a_backfill_started_earlier_runs_on(LEDGER_LOCKS).await;
}

/// A chunk does not wait for a slow destination: an attempt still under way after a moment
/// is written leased to the dispatcher, the chunk commits (its rows unlocked), and the
/// attempt's outcome is settled afterwards; a later change of that row waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_leaves_its_chunk_and_still_comes_first() {
    let db = db().await;
    zeroed_table(&db, "slow", 20).await;
    let delivered = Deliveries::default();
    let listener = recording_listener(&db, "slow", &delivered, |action, id| match action {
        Action::Read if id == 5 => Duration::from_secs(2),
        _ => Duration::ZERO,
    })
    .await;
    let (running, id) =
        backfill_after_a_change(&db, listener, "slow", 21, || delivered.len()).await;
    eventually(LIMIT, "the backfill done", || {
        let client = &db.client;
        async move { state(client, id).await == "done" }
    })
    .await;
    assert!(
        delivered.of_row(5).is_empty(),
        "the chunk committed while row 5's READ was still being delivered"
    );
    // Row 5's READ is in the log, leased while its attempt goes on: this change waits for it.
    let row5 = change_behind_its_read(&db, "slow", 5, 23, &delivered, running).await;
    delivered.assert_once_in_order();
    assert_eq!(
        row5,
        vec![(Action::Read, 0), (Action::Update, 1)],
        "row 5: its READ before its later change"
    );
    let logged = db
        .client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'd'),
                    count(*) FILTER (WHERE new_row->>'id' = '5' AND status = 'd' AND attempts = 1)
               FROM pgevents.event WHERE op = 'R'",
            &[],
        )
        .await
        .expect("the log");
    assert_eq!(
        logged.get::<_, i64>(0),
        21,
        "every READ recorded as delivered"
    );
    assert_eq!(
        logged.get::<_, i64>(1),
        1,
        "row 5's READ settled after its chunk, once"
    );
}

/// A backfill whose chunks hand their slow `READ`s to the settler, beside a stream of live
/// inserts whose moves hand their slow attempts over too: every event is delivered once, in
/// its row's log order, and recorded delivered at its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reads_beside_slow_live_changes_are_each_delivered_once() {
    let db = db().await;
    zeroed_table(&db, "busy", 2000).await;
    let delivered = Deliveries::default();
    // Longer than a chunk's and a move's wait: handed to the settler.
    let listener = recording_listener(&db, "busy", &delivered, |action, id| match action {
        Action::Read if id % 100 == 0 => Duration::from_millis(300),
        Action::Insert => Duration::from_millis(30),
        _ => Duration::ZERO,
    })
    .await;
    let (running, id) =
        backfill_after_a_change(&db, listener, "busy", 2001, || delivered.len()).await;
    // Live inserts all through the backfill, each moved (and delivered) on its own.
    let mut inserted = 0;
    while state(&db.client, id).await != "done" || inserted < 20 {
        db.client
            .execute("INSERT INTO busy VALUES ($1, 0)", &[&(10_000 + inserted)])
            .await
            .expect("insert");
        inserted += 1;
        assert!(inserted < 100_000, "the backfill never ended");
    }
    // READs of every row read (live rows too, when a chunk read them), the first insert, the
    // live inserts.
    let expected = rows_done(&db.client, id).await as usize + 1 + inserted as usize;
    eventually(LIMIT, "every event delivered", || {
        let n = delivered.len();
        async move { n >= expected }
    })
    .await;
    running.stop().await;
    delivered.assert_once_in_order();
    assert_eq!(delivered.len(), expected, "every event delivered once");
    let more_than_once: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pgevents.event WHERE status <> 'd' OR attempts <> 1",
            &[],
        )
        .await
        .expect("the log")
        .get(0);
    assert_eq!(
        more_than_once, 0,
        "every event recorded delivered at its first attempt"
    );
}

/// Backfills `table` (`id`, `v`; rows 1 to `rows`) beside a listener, after inserting one
/// more row: every row's `READ` delivered once, in order, and no row of the table locked
/// (no row's header written, and no WAL written for the rows read).
async fn backfilled_without_a_lock(db: &Db, table: &str, rows: i32) {
    let delivered = Deliveries::default();
    let listener = recording_listener(db, table, &delivered, |_, _| Duration::ZERO).await;
    let (running, id) =
        backfill_after_a_change(db, listener, table, rows + 1, || delivered.len()).await;
    // The insert and a READ of each row, the inserted one too.
    let events = rows as usize + 2;
    eventually(LIMIT, "the backfill done and its READs delivered", || {
        let client = &db.client;
        let n = delivered.len();
        async move { n >= events && state(client, id).await == "done" }
    })
    .await;
    running.stop().await;
    delivered.assert_once_in_order();
    let reads = delivered.read_rows();
    assert_eq!(
        reads,
        (1..=i64::from(rows) + 1).collect::<Vec<i64>>(),
        "one READ per row"
    );
    let marked: i64 = db
        .client
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE xmax <> '0'::xid"),
            &[],
        )
        .await
        .expect("the rows' headers")
        .get(0);
    assert_eq!(marked, 0, "no row was locked by the backfill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_locks_no_row_it_reads() {
    let db = db().await;
    zeroed_table(&db, "quiet", 3000).await;
    backfilled_without_a_lock(&db, "quiet", 3000).await;
}

/// A row that an open transaction changed when its chunk reads it: the chunk waits for that
/// transaction (giving way, and coming back) and reads the row as it left it, so its `READ`
/// follows the change and carries the change's image; the row's last event is its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_changing_as_its_chunk_reads_it_is_read_after_the_change() {
    let db = db().await;
    zeroed_table(&db, "moving", 20).await;
    let delivered = Deliveries::default();
    let listener = recording_listener(&db, "moving", &delivered, |_, _| Duration::ZERO).await;
    let running = run(listener);
    let mut writer = connect(&db.url).await;
    let open = writer.transaction().await.expect("begin");
    open.execute("UPDATE moving SET v = 1 WHERE id = 5", &[])
        .await
        .expect("update row 5, not committed");
    let writer_pid: i32 = open
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("the writer's pid")
        .get(0);
    let starter = Listener::builder(&db.url)
        .on("moving", |_: Event| async {
            Ok::<_, std::convert::Infallible>(())
        })
        .build()
        .await
        .expect("a second listener");
    let id = starter.backfill("moving", None).await.expect("backfill");
    // Until a chunk has met the open transaction (or, wrongly, the backfill ended without it).
    eventually(LIMIT, "a chunk waiting for the writer's row", || {
        let client = &db.client;
        async move {
            let waiting: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    &[&writer_pid],
                )
                .await
                .expect("blocked backends")
                .get(0);
            waiting > 0 || state(client, id).await == "done"
        }
    })
    .await;
    open.commit().await.expect("commit row 5's change");
    eventually(LIMIT, "the backfill done and every event delivered", || {
        let client = &db.client;
        let n = delivered.len();
        async move { n >= 21 && state(client, id).await == "done" }
    })
    .await;
    running.stop().await;
    delivered.assert_once_in_order();
    let row5 = delivered.of_row(5);
    assert_eq!(
        row5.last().map(|e| e.1),
        Some(1),
        "row 5's last event carries its change: {row5:?}"
    );
    assert!(
        row5.iter().all(|e| e.1 == 1),
        "no event of row 5 carries the image before its change: {row5:?}"
    );
}

/// A partitioned table is backfilled like any other (rows of different partitions share
/// `ctid`s: a chunk tells them apart), every row once, none locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_is_backfilled_row_by_row() {
    let db = db().await;
    db.client
        .batch_execute(
            "CREATE TABLE parted (id int PRIMARY KEY, v int NOT NULL) PARTITION BY RANGE (id);
             CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (1) TO (1001);
             CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (1001) TO (10001);
             INSERT INTO parted SELECT g, 0 FROM generate_series(1, 2000) g",
        )
        .await
        .expect("table");
    backfilled_without_a_lock(&db, "parted", 2000).await;
}
