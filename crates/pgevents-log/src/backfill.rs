//! Backfills: a `READ` event for every existing row of a trigger's table, woven into the live
//! stream so that each row's last delivered event carries its current state.
//!
//! A backfill is a row of the log's `backfill` table. It advances chunk by chunk, each chunk
//! one short READ COMMITTED transaction ([`run_chunk`]) that:
//!
//! 1. reads the next rows after `last_key` in key order, `FOR SHARE`, with the same ordering
//!    key and row image SQL as live capture ([`pgevents_trigger::ordering`],
//!    [`pgevents_trigger::image`]), and takes each row's log position from the log's
//!    sequence. A writer that changed a row before the chunk either committed first (the
//!    chunk reads its image, and its event has a lower position) or still holds the row, and
//!    `FOR SHARE` waits for it and reads the newest version; a writer after the chunk waits
//!    for the share lock, and its event gets a higher position. So a `READ` sits in each
//!    row's order exactly where its image belongs;
//! 2. moves every captured row already committed into the log (trigger capture appends to
//!    the index-free `capture` table first): an earlier change of a chunk's row then reaches
//!    `event` in the same commit as the `READ`, and per-row ordering delivers it first. In
//!    logical capture the writer of decoded changes is kept out for the chunk's duration
//!    (its position rows are locked `FOR SHARE`): a decoded change lands wholly before the
//!    chunk's `READ`s in the log or wholly after them;
//! 3. when the caller delivers ([`ChunkDelivery`], a dispatcher's backfill worker), delivers
//!    the `READ`s that nothing holds back — no pending event of their ordering key (or a
//!    pending TRUNCATE of the trigger) in the log, no other row of the chunk with that key —
//!    while their rows are still locked: each is then the next event of its key, and no
//!    later change of its row exists until the chunk commits. Sequin delivers its backfills
//!    from memory the same way; here it saves the log's claim and settle of every such event
//!    (half the database's work per row, measured);
//! 4. writes the `READ` events into `event`: those delivered as delivered, those whose
//!    attempt failed with its outcome (retried by the dispatchers like any event, holding
//!    back later events of their row), those whose attempt is still under way (the delivery
//!    waits only a moment) leased to the delivering dispatcher, which settles them once the
//!    chunk committed ([`ChunkDelivery::finished`]), the rest pending;
//! 5. moves `last_key` with a compare-and-set: when another process wrote that chunk first
//!    (or the backfill was cancelled) nothing is written.
//!
//! The chunk's statement waits for a row lock at most [`CHUNK_LOCK_TIMEOUT_MS`]: on a
//! conflict the backfill backs off and tries again ([`Error::is_lock_conflict`]), never a
//! writer. A process that dies after delivering some of a chunk's events and before its
//! commit writes nothing of it: the chunk is read again, and those rows delivered again
//! (under new ids, with their images of then).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, Transaction};

use crate::store::{settle_in, Settlement, Verdict};
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
/// (`int8`); a row back for each row read, in key order, locked `FOR SHARE` until the chunk
/// commits: the event's position (taken from the log's sequence now, so it falls after every
/// earlier change of the row and before every later one), its ordering key, its image as
/// text, the row's key as text, and the time read.
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
    let key_text = (0..source.key.len())
        .map(|i| format!("c.pgevents_k{i}::text"))
        .collect::<Vec<_>>()
        .join(", ");
    let seed = source.trigger_id.to_string();
    let key_columns: Vec<String> = source.key.iter().map(|(name, _)| name.clone()).collect();
    format!(
        "{READ_FORM}{sequence}), c.pgevents_key, c.pgevents_image::text, ARRAY[{key_text}], now()
           FROM (SELECT {key_select}, {row_key} AS pgevents_key, {image} AS pgevents_image
                   FROM {table} AS {r}
                  WHERE ($1::text[] IS NULL OR ({columns}) > ({bounds})) AND ({condition})
                  ORDER BY {columns}
                  LIMIT $2::int8
                  FOR SHARE OF {r}) c",
        sequence = pgevents_postgres::quote_literal(&schema.object("event_seq")),
        row_key = key_sql(source.ordering, r, &key_columns, &seed),
        image = image_sql(r, source.payload_columns),
        table = source.table.quoted(),
        columns = columns.join(", "),
        bounds = bounds.join(", "),
        condition = source.condition.as_deref().unwrap_or("true"),
    )
}

/// How [`chunk_sql`]'s statements begin. Backfills started by log version 4 stored a
/// statement that wrote the events itself (`WITH chunk AS (...) INSERT ...`); a chunk still
/// runs those as they are.
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

/// A row a chunk read: its `READ` event, before the chunk writes it.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The event's log position.
    pub seq: i64,
    /// Its ordering key (see the log schema), `None` when unordered.
    pub row_key: Option<i64>,
    /// The row's image (`data.new`) as JSON text.
    pub image: String,
    /// When it was read.
    pub created_at: DateTime<Utc>,
}

/// What became of a `READ` a chunk gave its [`ChunkDelivery`].
#[derive(Debug, Clone)]
pub enum Attempted {
    /// The attempt ended (under the claim of the event's position, attempt 1).
    Ended(Settlement),
    /// The attempt at the event at this position is still under way: the chunk writes it
    /// leased to the delivery's owner for [`ChunkDelivery::lease`], and its outcome is
    /// settled like any claimed event's once the chunk committed.
    UnderWay(i64),
}

/// Delivers `READ` events while their chunk holds their rows (see [`run_chunk`]).
pub trait ChunkDelivery: Send + Sync {
    /// The lease owner the attempts are recorded under.
    fn owner(&self) -> i64;

    /// How long an event whose attempt is still under way stays leased (renewed by its
    /// owner while it lives).
    fn lease(&self) -> Duration;

    /// Attempts the events of `readings` (trigger `trigger_id`'s, each the first of its
    /// ordering key with nothing of that key pending before it) and returns what became of
    /// each one attempted; those left out are written to the log as pending, for the
    /// dispatchers. Should return soon: the chunk holds its rows until it commits.
    fn deliver(
        &self,
        trigger_id: i32,
        readings: Vec<Reading>,
    ) -> Pin<Box<dyn Future<Output = Vec<Attempted>> + Send + '_>>;

    /// Called once after each [`deliver`](Self::deliver): whether the chunk committed (the
    /// events under way are in the log) or not (they are not, and their outcomes are moot).
    fn finished(&self, committed: bool);
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
    delivery: Option<&dyn ChunkDelivery>,
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
    if !chunk_sql.starts_with(READ_FORM) {
        let written = tx
            .query_one(chunk_sql.as_str(), &[&last_key, &max_rows])
            .await
            .map_err(chunk_error)?;
        move_captured(&tx, schema).await?;
        let read = Read {
            rows: written.get(0),
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
    let next_key: Option<Vec<String>> = rows.last().map(|r| r.get(3));
    let readings: Vec<Reading> = rows
        .into_iter()
        .map(|r| Reading {
            seq: r.get(0),
            row_key: r.get(1),
            image: r.get(2),
            created_at: r.get(4),
        })
        .collect();
    move_captured(&tx, schema).await?;
    let bytes = readings.iter().map(|r| r.image.len() as i64).sum();
    let mut read = Read {
        rows: readings.len() as i64,
        bytes,
        next_key,
        delivered: 0,
    };
    let free = match delivery {
        Some(_) => free_to_deliver(&tx, schema, trigger_id, &readings).await?,
        None => Vec::new(),
    };
    let (Some(delivery), false) = (delivery, free.is_empty()) else {
        write_reads(&tx, schema, trigger_id, &readings, &[], None).await?;
        return conclude(tx, schema, id, &last_key, read, max_rows).await;
    };
    // From here the delivery is told whether the chunk committed: its attempts still under
    // way report their outcomes only for events the log holds.
    let attempted = delivery.deliver(trigger_id, free).await;
    let chunk = async {
        read.delivered = write_reads(
            &tx,
            schema,
            trigger_id,
            &readings,
            &attempted,
            Some(delivery),
        )
        .await?;
        conclude(tx, schema, id, &last_key, read, max_rows).await
    }
    .await;
    delivery.finished(matches!(chunk, Ok(Chunk::Written { .. })));
    chunk
}

/// The error of backfill `id`'s chunk statement `e`: naming the grant that fixes it when the
/// role may not read or lock the table's rows.
fn chunk_error(id: i64, e: tokio_postgres::Error) -> Error {
    match e.code() {
        Some(code) if *code == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
            Error::NotPermitted(format!(
                "the role writing backfill {id}'s chunks may not read and lock its table's rows ({}): GRANT SELECT, UPDATE ON the table TO this role (rows are locked FOR SHARE, never changed), or run `pgevents backfill` as the table's owner",
                e.as_db_error().map_or("", |db| db.message())
            ))
        }
        _ => Error::query(format!("writing backfill {id}'s next chunk"), e),
    }
}

/// What a chunk read and wrote.
struct Read {
    rows: i64,
    bytes: i64,
    next_key: Option<Vec<String>>,
    delivered: i64,
}

/// Moves backfill `id`'s last key from `last_key` past the chunk `read` (done when it held
/// fewer than `max_rows` rows) and commits the chunk; when another process moved it first,
/// rolls the chunk back.
async fn conclude(
    tx: Transaction<'_>,
    schema: &LogSchema,
    id: i64,
    last_key: &Option<Vec<String>>,
    read: Read,
    max_rows: i64,
) -> Result<Chunk, Error> {
    let done = read.rows < max_rows;
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
/// that trigger capture holds are committed by now (FOR SHARE waited for them): moved in
/// this transaction, none is claimed after the READ that follows it.
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

/// The readings whose events may be delivered before the chunk commits: those whose
/// ordering key no other reading of the chunk shares and no pending event of the log holds
/// (as key or old key), when no TRUNCATE of the trigger is pending. Each is then the first
/// undelivered event of its key, and no later change of its row exists before the chunk
/// commits (the row is locked).
async fn free_to_deliver(
    tx: &Transaction<'_>,
    schema: &LogSchema,
    trigger_id: i32,
    readings: &[Reading],
) -> Result<Vec<Reading>, Error> {
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for key in readings.iter().filter_map(|r| r.row_key) {
        *seen.entry(key).or_default() += 1;
    }
    let keys: Vec<i64> = seen.keys().copied().collect();
    let event = schema.object("event");
    let row = tx
        .query_one(
            &format!(
                "SELECT ARRAY(SELECT k FROM unnest($1::int8[]) AS k
                               WHERE EXISTS (SELECT 1 FROM {event} e
                                              WHERE e.row_key = k AND e.status = 'p')
                                  OR EXISTS (SELECT 1 FROM {event} e
                                              WHERE e.old_key = k AND e.status = 'p')),
                        EXISTS (SELECT 1 FROM {event} e
                                 WHERE e.trigger_id = $2 AND e.status = 'p' AND e.op = 'T')"
            ),
            &[&keys, &trigger_id],
        )
        .await
        .map_err(|e| Error::query("looking for pending events of a chunk's rows", e))?;
    let held: Vec<i64> = row.get(0);
    let truncating: bool = row.get(1);
    if truncating {
        return Ok(Vec::new());
    }
    let held: HashSet<i64> = held.into_iter().collect();
    Ok(readings
        .iter()
        .filter(|r| {
            r.row_key
                .is_none_or(|k| seen.get(&k) == Some(&1) && !held.contains(&k))
        })
        .cloned()
        .collect())
}

/// Writes the chunk's `READ` events: delivered, pending after a failed attempt (its outcome
/// recorded as a settle records it), leased to `delivery`'s owner while their attempt is
/// under way, or pending for the dispatchers, as `attempted` says. Returns how many were
/// delivered.
async fn write_reads(
    tx: &Transaction<'_>,
    schema: &LogSchema,
    trigger_id: i32,
    readings: &[Reading],
    attempted: &[Attempted],
    delivery: Option<&dyn ChunkDelivery>,
) -> Result<i64, Error> {
    let (owner, lease) = delivery.map_or((0, Duration::ZERO), |d| (d.owner(), d.lease()));
    let by_seq: HashMap<i64, &Attempted> = attempted
        .iter()
        .map(|a| match a {
            Attempted::Ended(s) => (s.claim.seq, a),
            Attempted::UnderWay(seq) => (*seq, a),
        })
        .collect();
    let ended = |r: &Reading| match by_seq.get(&r.seq) {
        Some(Attempted::Ended(s)) => Some(s),
        _ => None,
    };
    // 0: not attempted; 1: delivered; 2: failed, outcome recorded below; 3: under way.
    let outcome: Vec<i16> = readings
        .iter()
        .map(|r| match by_seq.get(&r.seq) {
            None => 0,
            Some(Attempted::Ended(s)) if s.verdict == Verdict::Delivered => 1,
            Some(Attempted::Ended(_)) => 2,
            Some(Attempted::UnderWay(_)) => 3,
        })
        .collect();
    let status: Vec<Option<i32>> = readings
        .iter()
        .map(|r| ended(r).and_then(|s| s.status))
        .collect();
    let duration: Vec<Option<i32>> = readings
        .iter()
        .map(|r| ended(r).map(|s| i32::try_from(s.duration.as_millis()).unwrap_or(i32::MAX)))
        .collect();
    let seq: Vec<i64> = readings.iter().map(|r| r.seq).collect();
    let row_key: Vec<Option<i64>> = readings.iter().map(|r| r.row_key).collect();
    let image: Vec<&str> = readings.iter().map(|r| r.image.as_str()).collect();
    let created_at: Vec<DateTime<Utc>> = readings.iter().map(|r| r.created_at).collect();
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    tx.execute(
        &format!(
            "INSERT INTO {event}
                 (seq, trigger_id, op, row_key, new_row, created_at, next_attempt_at, size,
                  status, attempts, finished_at, last_status, last_duration_ms, owner, lease_until)
             SELECT r.seq, $1, 'R', r.row_key, r.image::json, r.created_at, r.created_at,
                    octet_length(r.image),
                    CASE WHEN r.outcome = 1 THEN 'd' ELSE 'p' END::\"char\",
                    CASE WHEN r.outcome = 0 THEN 0 ELSE 1 END,
                    CASE WHEN r.outcome = 1 THEN now() END,
                    r.status, r.duration_ms,
                    CASE WHEN r.outcome IN (2, 3) THEN $2::int8 END,
                    CASE r.outcome WHEN 2 THEN now()
                                   WHEN 3 THEN now() + $10::int8 * interval '1 millisecond' END
               FROM unnest($3::int8[], $4::int8[], $5::text[], $6::timestamptz[], $7::int2[],
                           $8::int4[], $9::int4[])
                 AS r(seq, row_key, image, created_at, outcome, status, duration_ms)",
            event = schema.object("event"),
        ),
        &[
            &trigger_id,
            &owner,
            &seq,
            &row_key,
            &image,
            &created_at,
            &outcome,
            &status,
            &duration,
            &lease_ms,
        ],
    )
    .await
    .map_err(|e| Error::query("writing a backfill chunk's events", e))?;
    let failed: Vec<Settlement> = readings
        .iter()
        .filter_map(ended)
        .filter(|s| s.verdict != Verdict::Delivered)
        .cloned()
        .collect();
    if !failed.is_empty() {
        settle_in(tx, schema, &failed, owner).await?;
    }
    Ok(outcome.iter().filter(|o| **o == 1).count() as i64)
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
