//! Backfills: a `READ` event for every existing row of a trigger's table, woven into the live
//! stream so that each row's last delivered event carries its current state.
//!
//! A backfill is a row of the log's `backfill` table. It advances chunk by chunk, each chunk
//! one short READ COMMITTED transaction ([`run_chunk`]) that:
//!
//! 1. reads the next rows after `last_key` in key order, with the same ordering key and row
//!    image SQL as live capture ([`pgevents_trigger::ordering`], [`pgevents_trigger::image`]),
//!    each taking its log position from the log's sequence just after it is read
//!    ([`chunk_sql`]). A change the read sees committed took its position earlier, inside its
//!    transaction; a row no transaction has touched since it was read (its `xmax` zero when
//!    read and when looked at again after its position was taken) can only change later, at
//!    a higher position. A row some writer is at (or has locked) is read again `FOR SHARE`,
//!    which waits for that writer and reads the row as it left it, with a new position taken
//!    after the lock; a writer after the lock waits for the chunk. So a `READ` sits in each
//!    row's order exactly where its image belongs, and only rows with a writer at them are
//!    ever locked: a backfill writes nothing into the table's rows;
//! 2. moves every captured row already committed into the log (trigger capture appends to
//!    the index-free `capture` table first): an earlier change of a chunk's row then reaches
//!    `event` in the same commit as the `READ`, and per-row ordering delivers it first. In
//!    logical capture the writer of decoded changes is kept out for the chunk's duration
//!    (its position rows are locked `FOR SHARE`): a decoded change lands wholly before the
//!    chunk's `READ`s in the log or wholly after them;
//! 3. when the caller delivers ([`DeliverFirst`], a dispatcher's backfill worker), delivers
//!    the `READ`s that nothing holds back — no pending event of their ordering key (or a
//!    pending TRUNCATE of the trigger) in the log, no other row of the chunk with that key —
//!    while the chunk holds the log's ingest lock and logical capture's positions: each is
//!    then the next event of its key, and no later change of its row reaches the log until
//!    the chunk commits. Sequin delivers its backfills from memory the same way; here it
//!    saves the log's claim and settle of every such event (measured beside 8 writers:
//!    31,000 READ/s before, 69,000–73,000 after; BENCHMARKS.md);
//! 4. writes the `READ` events into `event`: those delivered as delivered, those whose
//!    attempt failed with its outcome (retried by the dispatchers like any event, holding
//!    back later events of their row), those whose attempt is still under way (the delivery
//!    waits only a moment) leased to the delivering dispatcher, which settles them once the
//!    chunk committed ([`Delivered::finish`](crate::inline::Delivered::finish)), the rest
//!    pending;
//! 5. moves `last_key` with a compare-and-set: when another process wrote that chunk first
//!    (or the backfill was cancelled) nothing is written.
//!
//! The chunk's statement waits for a writer's row lock at most [`CHUNK_LOCK_TIMEOUT_MS`]:
//! on a conflict the backfill backs off and tries again ([`Error::is_lock_conflict`]), never a
//! writer. A process that dies after delivering some of a chunk's events and before its
//! commit writes nothing of it: the chunk is read again, and those rows delivered again
//! (under new ids, with their images of then).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, Transaction};

use crate::inline::{self, DeliverFirst, Unwritten};
use crate::{wake_channel, Error, LogSchema};
use pgevents_postgres::{quote_ident, QualifiedName};
use pgevents_trigger::image::image_sql;
use pgevents_trigger::ordering::key_sql;
use pgevents_trigger::Ordering;

/// How long a chunk waits for a row lock before it gives way.
pub const CHUNK_LOCK_TIMEOUT_MS: u64 = 100;

/// How long a chunk waits for the log's ingest lock and logical capture's positions (held
/// by a dispatcher moving a batch of captured rows, or the logical writer writing a batch),
/// before the chunk locks any row.
const INGEST_LOCK_TIMEOUT_MS: u64 = 5_000;

/// How long a chunk waits for the attempts at its events (the log's ingest waits meanwhile);
/// those still under way are then settled after it commits.
const CHUNK_WAIT: Duration = Duration::from_millis(100);

/// Captured rows moved into the log per ingest call while a chunk catches up.
const INGEST_BATCH: i32 = 10_000;

/// Where a backfill stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Writing chunks (or waiting for a process to write them).
    Running,
    /// Every row was read.
    Done,
    /// Stopped by `cancel`; the events written so far stay.
    Cancelled,
    /// Stopped by an error (see `error`), e.g. the table was dropped.
    Failed,
}

impl State {
    fn parse(text: &str) -> State {
        match text {
            "done" => State::Done,
            "cancelled" => State::Cancelled,
            "failed" => State::Failed,
            _ => State::Running,
        }
    }
}

/// One backfill and its progress.
#[derive(Debug, Clone, Serialize)]
pub struct Backfill {
    /// Its id.
    pub id: i64,
    /// The trigger whose destination receives its events.
    pub trigger: String,
    /// The watched table's schema.
    pub schema: String,
    /// The watched table.
    pub table: String,
    /// The `--where` condition it was started with, if any.
    #[serde(rename = "where")]
    pub condition: Option<String>,
    /// Where it stands.
    pub state: State,
    /// Rows read so far.
    pub rows_done: i64,
    /// The planner's estimate of the rows to read (at least `rows_done`; once done, the rows
    /// read).
    pub rows_estimated: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When a chunk (or a state change) last moved it.
    pub updated_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What a backfill reads: everything [`chunk_sql`] needs.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// The trigger's log id.
    pub trigger_id: i32,
    /// The watched table.
    pub table: &'a QualifiedName,
    /// The columns identifying a row (primary key), with their SQL types.
    pub key: &'a [(String, String)],
    /// The trigger's ordering.
    pub ordering: &'a Ordering,
    /// The trigger's `payload_columns`, in table order.
    pub payload_columns: Option<&'a [String]>,
    /// The rows to read: the trigger's `where` and the backfill's, on the row alias
    /// [`ROW_ALIAS`], or `None` for every row.
    pub condition: Option<String>,
}

/// The alias a chunk's statement gives the table's rows: conditions are rendered on it.
pub const ROW_ALIAS: &str = "pgevents_read";

/// The statement that reads one chunk of `source`'s rows for their `READ` events: parameters
/// `$1` the last key read (`text[]`, NULL at the start) and `$2` the most rows to read
/// (`int8`). A row back for each row scanned, in key order: the event's position (NULL when
/// the row is gone: deleted, or its key changed, by a transaction the chunk waited for), its
/// ordering key, its image as text, the row's key as text, and the time read.
///
/// Rows are read without a lock, and each takes its position from the log's sequence just
/// after it is read. Every change the read sees committed took its position before (a
/// change's position is taken inside its transaction), so the `READ` follows it. A row's
/// header is then looked at again (by its table and `ctid`: partitions share `ctid`s): when
/// no transaction has touched the row since it was read (its `xmax` still zero), any later
/// change takes a position after the `READ`'s. A row that some transaction was changing or
/// had locked (a non-zero `xmax`, then or now) is read again `FOR SHARE`, which waits for
/// that transaction and reads the row as it left it, and takes a new position after the
/// lock: earlier changes all have lower positions, later ones wait for the chunk to commit.
/// Rows are therefore locked only where a writer is at them; a backfill writes nothing into
/// the table's rows.
pub fn chunk_sql(schema: &LogSchema, source: &Source<'_>) -> String {
    let r = ROW_ALIAS;
    let columns: Vec<String> = source
        .key
        .iter()
        .map(|(name, _)| format!("{r}.{}", quote_ident(name)))
        .collect();
    let bounds: Vec<String> = source
        .key
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("($1::text[])[{}]::{ty}", i + 1))
        .collect();
    let key_select = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} AS pgevents_k{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let key_names: Vec<String> = (0..source.key.len())
        .map(|i| format!("pgevents_k{i}"))
        .collect();
    let key_text = key_names
        .iter()
        .map(|k| format!("c.{k}::text"))
        .collect::<Vec<_>>()
        .join(", ");
    let same_key = key_names
        .iter()
        .map(|k| format!("l.{k} = c.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let seed = source.trigger_id.to_string();
    let key_columns: Vec<String> = source.key.iter().map(|(name, _)| name.clone()).collect();
    let row = format!(
        "{key_select}, {row_key} AS pgevents_key, {image} AS pgevents_image",
        row_key = key_sql(source.ordering, r, &key_columns, &seed),
        image = image_sql(r, source.payload_columns),
    );
    format!(
        "{SCAN_FORM} AS MATERIALIZED (
             SELECT nextval({sequence}) AS pgevents_seq, c.*
               FROM (SELECT {row}, {r}.tableoid AS pgevents_table, {r}.ctid AS pgevents_ctid,
                            {r}.xmax AS pgevents_xmax
                       FROM {table} AS {r}
                      WHERE ($1::text[] IS NULL OR ({columns}) > ({bounds})) AND ({condition})
                      ORDER BY {columns}
                      LIMIT $2::int8) c),
         pgevents_checked AS MATERIALIZED (
             SELECT s.*, s.pgevents_xmax = '0'::xid
                         AND EXISTS (SELECT 1 FROM {table} AS pgevents_again
                                      WHERE pgevents_again.ctid = s.pgevents_ctid
                                        AND pgevents_again.tableoid = s.pgevents_table
                                        AND pgevents_again.xmax = '0'::xid) AS pgevents_settled
               FROM pgevents_scan s),
         pgevents_locked AS MATERIALIZED (
             SELECT {row}
               FROM {table} AS {r}
              WHERE ({columns}) IN (SELECT {keys} FROM pgevents_checked WHERE NOT pgevents_settled)
                AND ({condition})
                FOR SHARE OF {r})
         SELECT CASE WHEN c.pgevents_settled THEN c.pgevents_seq
                     WHEN l.pgevents_k0 IS NOT NULL THEN nextval({sequence}) END,
                CASE WHEN c.pgevents_settled THEN c.pgevents_key ELSE l.pgevents_key END,
                (CASE WHEN c.pgevents_settled THEN c.pgevents_image
                      ELSE l.pgevents_image END)::text,
                ARRAY[{key_text}], now()
           FROM pgevents_checked c LEFT JOIN pgevents_locked l ON {same_key}
          ORDER BY {ordered}",
        sequence = pgevents_postgres::quote_literal(&schema.object("event_seq")),
        table = source.table.quoted(),
        columns = columns.join(", "),
        bounds = bounds.join(", "),
        condition = source.condition.as_deref().unwrap_or("true"),
        keys = key_names.join(", "),
        ordered = key_names
            .iter()
            .map(|k| format!("c.{k}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// How [`chunk_sql`]'s statements begin.
const SCAN_FORM: &str = "WITH pgevents_scan";

/// How the statements of backfills started by the previous release begin: they read every
/// row `FOR SHARE` and return one row per event, in the same columns. A chunk still runs
/// them as they are; backfills started by log version 4 stored a statement that wrote the
/// events itself (`WITH chunk AS (...) INSERT ...`), run as it is too.
const READ_FORM: &str = "SELECT nextval(";

/// Records a new running backfill of trigger `trigger_id` writing chunks with `chunk_sql`;
/// returns its id.
pub async fn create(
    client: &impl tokio_postgres::GenericClient,
    schema: &LogSchema,
    trigger_id: i32,
    condition: Option<&str>,
    chunk_sql: &str,
    rows_estimated: i64,
) -> Result<i64, Error> {
    let row = client
        .query_one(
            &format!(
                "WITH b AS (INSERT INTO {} (trigger_id, where_sql, chunk_sql, rows_estimated)
                            VALUES ($1, $2, $3, $4) RETURNING id)
                 SELECT b.id FROM b CROSS JOIN pg_notify($5, '')",
                schema.object("backfill")
            ),
            &[
                &trigger_id,
                &condition,
                &chunk_sql,
                &rows_estimated.max(0),
                &wake_channel(schema),
            ],
        )
        .await
        .map_err(|e| Error::query("recording the backfill", e))?;
    Ok(row.get(0))
}

/// Every backfill, newest first (at most `limit`).
pub async fn list(client: &Client, schema: &LogSchema, limit: i64) -> Result<Vec<Backfill>, Error> {
    let rows = client
        .query(
            &format!(
                "SELECT b.id, t.name, t.schema_name, t.table_name, b.where_sql, b.state,
                        b.rows_done,
                        CASE WHEN b.state = 'done' THEN b.rows_done
                             ELSE greatest(b.rows_estimated, b.rows_done) END,
                        b.started_at,
                        b.updated_at, b.finished_at, b.error
                   FROM {} b JOIN {} t ON t.id = b.trigger_id
                  ORDER BY b.id DESC LIMIT $1",
                schema.object("backfill"),
                schema.object("trigger")
            ),
            &[&limit],
        )
        .await
        .map_err(|e| Error::query("reading the backfills", e))?;
    Ok(rows
        .into_iter()
        .map(|r| Backfill {
            id: r.get(0),
            trigger: r.get(1),
            schema: r.get(2),
            table: r.get(3),
            condition: r.get(4),
            state: State::parse(r.get(5)),
            rows_done: r.get(6),
            rows_estimated: r.get(7),
            started_at: r.get(8),
            updated_at: r.get(9),
            finished_at: r.get(10),
            error: r.get(11),
        })
        .collect())
}

/// One backfill, if it exists.
pub async fn get(client: &Client, schema: &LogSchema, id: i64) -> Result<Option<Backfill>, Error> {
    // Few backfills ever exist: reading them all is cheap and keeps one query.
    Ok(list(client, schema, i64::MAX)
        .await?
        .into_iter()
        .find(|b| b.id == id))
}

/// Stops running backfills: the one with id `id`, or every one of trigger `trigger`.
/// Returns the ids stopped. The events already written stay.
pub async fn cancel(
    client: &Client,
    schema: &LogSchema,
    id: Option<i64>,
    trigger: Option<&str>,
) -> Result<Vec<i64>, Error> {
    let rows = client
        .query(
            &format!(
                "UPDATE {b} b SET state = 'cancelled', finished_at = now(), updated_at = now()
                   FROM {t} t
                  WHERE t.id = b.trigger_id AND b.state = 'running'
                    AND ($1::int8 IS NULL OR b.id = $1) AND ($2::text IS NULL OR t.name = $2)
                 RETURNING b.id",
                b = schema.object("backfill"),
                t = schema.object("trigger")
            ),
            &[&id, &trigger],
        )
        .await
        .map_err(|e| Error::query("cancelling backfills", e))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// The ids of running backfills, oldest first.
pub async fn running(client: &Client, schema: &LogSchema) -> Result<Vec<i64>, Error> {
    let rows = client
        .query(
            &format!(
                "SELECT id FROM {} WHERE state = 'running' ORDER BY id",
                schema.object("backfill")
            ),
            &[],
        )
        .await
        .map_err(|e| Error::query("looking for running backfills", e))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Takes the session lock that lets this connection alone write backfill `id`'s chunks
/// (released by [`unlock`] or when the connection ends, e.g. the process dies); returns
/// whether it got it.
pub async fn try_lock(client: &Client, schema: &LogSchema, id: i64) -> Result<bool, Error> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1::int4, $2::int4)",
            &[&lock_class(schema), &lock_object(id)],
        )
        .await
        .map_err(|e| Error::query("taking a backfill's lock", e))?;
    Ok(row.get(0))
}

/// Releases the lock [`try_lock`] took.
pub async fn unlock(client: &Client, schema: &LogSchema, id: i64) -> Result<(), Error> {
    client
        .execute(
            "SELECT pg_advisory_unlock($1::int4, $2::int4)",
            &[&lock_class(schema), &lock_object(id)],
        )
        .await
        .map_err(|e| Error::query("releasing a backfill's lock", e))?;
    Ok(())
}

fn lock_class(schema: &LogSchema) -> i32 {
    schema.key("backfill") as i32
}

fn lock_object(id: i64) -> i32 {
    id as i32
}

/// Marks backfill `id` failed with `error` (if it is still running).
pub async fn fail(client: &Client, schema: &LogSchema, id: i64, error: &str) -> Result<(), Error> {
    client
        .execute(
            &format!(
                "UPDATE {} SET state = 'failed', error = $2, finished_at = now(), updated_at = now()
                  WHERE id = $1 AND state = 'running'",
                schema.object("backfill")
            ),
            &[&id, &error],
        )
        .await
        .map_err(|e| Error::query("recording a backfill's failure", e))?;
    Ok(())
}

/// What one call of [`run_chunk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Wrote `rows` events holding `bytes` of row text; `done` when no row is left.
    Written {
        /// Events written.
        rows: i64,
        /// Their bytes of row text.
        bytes: i64,
        /// Of those, the events delivered during the chunk (written as delivered).
        delivered: i64,
        /// True when the backfill has read every row.
        done: bool,
    },
    /// Wrote nothing: the backfill is no longer running (done, cancelled, failed), or
    /// another process wrote this chunk first.
    Stopped,
}

/// Writes the next chunk of backfill `id`, at most `max_rows` rows, in one transaction (see
/// the module's documentation). With `delivery`, the chunk's events that nothing pending
/// holds back are delivered before it commits and written as delivered (or with the failed
/// attempt's outcome, or leased to `delivery` while the attempt goes on). A lock conflict
/// fails with an error for which
/// [`Error::is_lock_conflict`] holds: try again after a pause, maybe with fewer rows.
pub async fn run_chunk(
    client: &mut Client,
    schema: &LogSchema,
    id: i64,
    max_rows: i64,
    delivery: Option<&dyn DeliverFirst>,
) -> Result<Chunk, Error> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::query("starting a backfill chunk", e))?;
    // The locks of everything else that writes events, before any row is locked (they may
    // be held a while; writers must not wait meanwhile). The ingest lock: no one else moves
    // captured rows until this chunk commits, and this chunk moves them itself (step 2).
    // Logical capture's positions: its writer inserts decoded changes under them, so none
    // gets a position between this chunk's first and last READ and commits before it (a
    // change of a chunk's row then goes to the log before the chunk or after it, never
    // delivered ahead of a READ that precedes it in the log).
    let progress = schema.object("logical_progress");
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{INGEST_LOCK_TIMEOUT_MS}ms';
         SELECT pg_advisory_xact_lock({ingest_key});
         DO $lock$ BEGIN
             IF to_regclass({progress_name}) IS NOT NULL THEN
                 PERFORM 1 FROM {progress} FOR SHARE;
             END IF;
         END $lock$;
         SET LOCAL lock_timeout = '{CHUNK_LOCK_TIMEOUT_MS}ms'",
        ingest_key = schema.key("ingest"),
        progress_name = pgevents_postgres::quote_literal(&progress),
    ))
    .await
    .map_err(|e| Error::query("locking for a backfill chunk", e))?;
    let backfill = schema.object("backfill");
    // Locked until the chunk commits: a cancel waits for the chunk it would cut short.
    let Some(row) = tx
        .query_opt(
            &format!(
                "SELECT trigger_id, chunk_sql, last_key FROM {backfill}
                  WHERE id = $1 AND state = 'running' FOR NO KEY UPDATE"
            ),
            &[&id],
        )
        .await
        .map_err(|e| Error::query("reading a backfill's position", e))?
    else {
        return Ok(Chunk::Stopped);
    };
    let trigger_id: i32 = row.get(0);
    let chunk_sql: String = row.get(1);
    let last_key: Option<Vec<String>> = row.get(2);
    let chunk_error = |e| chunk_error(id, e);
    if !(chunk_sql.starts_with(SCAN_FORM) || chunk_sql.starts_with(READ_FORM)) {
        let written = tx
            .query_one(chunk_sql.as_str(), &[&last_key, &max_rows])
            .await
            .map_err(chunk_error)?;
        move_captured(&tx, schema).await?;
        let read = Read {
            rows: written.get(0),
            scanned: written.get(0),
            bytes: written.get(1),
            next_key: written.get(2),
            delivered: 0,
        };
        return conclude(tx, schema, id, &last_key, read, max_rows).await;
    }
    let rows = tx
        .query(chunk_sql.as_str(), &[&last_key, &max_rows])
        .await
        .map_err(chunk_error)?;
    let scanned = rows.len() as i64;
    let next_key: Option<Vec<String>> = rows.last().map(|r| r.get(3));
    let mut events: Vec<Unwritten> = rows
        .into_iter()
        .filter_map(|r| Some((r.get::<_, Option<i64>>(0)?, r)))
        .map(|(seq, r)| Unwritten {
            seq,
            trigger_id,
            op: b'R' as i8,
            row_key: r.get(1),
            old_key: None,
            old: None,
            new: r.get(2),
            created_at: r.get(4),
        })
        .collect();
    // Rows read again after a writer's lock took their positions last.
    events.sort_unstable_by_key(|e| e.seq);
    move_captured(&tx, schema).await?;
    let bytes = events
        .iter()
        .map(|e| e.new.as_ref().map_or(0, |n| n.len() as i64))
        .sum();
    let statements = inline::Statements::prepare(&tx, schema).await?;
    let (delivered, finish) =
        inline::deliver_and_write(tx.client(), &statements, &events, delivery, CHUNK_WAIT).await?;
    let read = Read {
        rows: events.len() as i64,
        scanned,
        bytes,
        next_key,
        delivered,
    };
    let chunk = conclude(tx, schema, id, &last_key, read, max_rows).await;
    if let Some(finish) = finish {
        finish(matches!(chunk, Ok(Chunk::Written { .. })));
    }
    chunk
}

/// The error of backfill `id`'s chunk statement `e`: naming the grant that fixes it when the
/// role may not read or lock the table's rows.
fn chunk_error(id: i64, e: tokio_postgres::Error) -> Error {
    match e.code() {
        Some(code) if *code == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
            Error::NotPermitted(format!(
                "the role writing backfill {id}'s chunks may not read and lock its table's rows ({}): GRANT SELECT, UPDATE ON the table TO this role (a row a writer is changing is locked FOR SHARE while it is read, never changed), or run `pgevents backfill` as the table's owner",
                e.as_db_error().map_or("", |db| db.message())
            ))
        }
        _ => Error::query(format!("writing backfill {id}'s next chunk"), e),
    }
}

/// What a chunk read and wrote.
struct Read {
    /// Events written.
    rows: i64,
    /// Rows the chunk's scan went through (events, and rows gone before they were read).
    scanned: i64,
    bytes: i64,
    next_key: Option<Vec<String>>,
    delivered: i64,
}

/// Moves backfill `id`'s last key from `last_key` past the chunk `read` (done when its scan
/// found fewer than `max_rows` rows) and commits the chunk; when another process moved it first,
/// rolls the chunk back.
async fn conclude(
    tx: Transaction<'_>,
    schema: &LogSchema,
    id: i64,
    last_key: &Option<Vec<String>>,
    read: Read,
    max_rows: i64,
) -> Result<Chunk, Error> {
    let done = read.scanned < max_rows;
    let advanced = tx
        .execute(
            &format!(
                "UPDATE {}
                    SET last_key = coalesce($3, last_key), rows_done = rows_done + $4,
                        updated_at = now(),
                        state = CASE WHEN $5 THEN 'done' ELSE state END,
                        finished_at = CASE WHEN $5 THEN now() END
                  WHERE id = $1 AND state = 'running' AND last_key IS NOT DISTINCT FROM $2",
                schema.object("backfill")
            ),
            &[&id, last_key, &read.next_key, &read.rows, &done],
        )
        .await
        .map_err(|e| Error::query("recording a backfill's progress", e))?;
    if advanced == 0 {
        tx.rollback()
            .await
            .map_err(|e| Error::query("abandoning a backfill chunk", e))?;
        return Ok(Chunk::Stopped);
    }
    if read.rows > read.delivered {
        tx.execute("SELECT pg_notify($1, '')", &[&wake_channel(schema)])
            .await
            .map_err(|e| Error::query("waking dispatchers", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| Error::query("committing a backfill chunk", e))?;
    Ok(Chunk::Written {
        rows: read.rows,
        bytes: read.bytes,
        delivered: read.delivered,
        done,
    })
}

/// Moves every committed captured row into the log. Earlier changes of the chunk's rows
/// that trigger capture holds are committed by now (the chunk read them, or waited for their
/// writer): moved in this transaction, none is claimed after the READ that follows it.
async fn move_captured(tx: &Transaction<'_>, schema: &LogSchema) -> Result<(), Error> {
    let ingest = format!("SELECT {}($1)", schema.object("ingest"));
    loop {
        let moved: i32 = tx
            .query_one(ingest.as_str(), &[&INGEST_BATCH])
            .await
            .map_err(|e| Error::query("moving captured rows into the log", e))?
            .get(0);
        if moved < INGEST_BATCH {
            return Ok(());
        }
    }
}

/// The rows a backfill reads: those matching both the trigger's condition and the
/// backfill's, when set (each already on [`ROW_ALIAS`]).
pub fn both(trigger: Option<String>, backfill: Option<String>) -> Option<String> {
    match (trigger, backfill) {
        (Some(a), Some(b)) => Some(format!("({a}) AND ({b})")),
        (a, b) => a.or(b),
    }
}

/// The planner's estimate of the rows of `table` matching `condition` (on [`ROW_ALIAS`]).
pub async fn estimate(
    client: &impl tokio_postgres::GenericClient,
    table: &QualifiedName,
    condition: Option<&str>,
) -> Result<i64, Error> {
    let row = client
        .query_one(
            &format!(
                "EXPLAIN (FORMAT JSON) SELECT 1 FROM {} AS {ROW_ALIAS} WHERE {}",
                table.quoted(),
                condition.unwrap_or("true")
            ),
            &[],
        )
        .await
        .map_err(|e| Error::query(format!("estimating the rows of {table}"), e))?;
    let plan: serde_json::Value = row.get(0);
    Ok(plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0) as i64)
}
