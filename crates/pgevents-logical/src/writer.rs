//! Writing decoded changes into the event log, exactly once, with the JSON rendered as
//! PostgreSQL renders it.
//!
//! A [`Batch`] holds decoded rows (column values as text) and the stream position they bring
//! the capture to. [`Writer::write`] commits it in one log transaction: it locks the slot's
//! row in `logical_progress`, drops the rows that row says are already written (a replay
//! after a crash, or an overlapping former leader), inserts the rest into `event`, moves the
//! cursor, and wakes the dispatchers — all or nothing. Given a delivery
//! ([`pgevents_log::inline`]), it delivers the events that nothing holds back before the
//! commit, and writes them once, with their outcome.
//!
//! Rows whose columns are all of common types are rendered by the process
//! ([`crate::render`]): the write takes their log positions in one statement and stores
//! them. For the rest, the `data` JSON is built by the server from the text values (and
//! rendered back to the process when it delivers them): each row image becomes a subquery
//! whose columns are the decoded text cast to the column's type (named by `format_type`
//! from the type OID and modifier of the Relation message) under the column's name, and
//! `to_json` of that subquery row is the same `composite_to_json` call trigger capture
//! makes on `NEW`/`OLD` — so numbers, arrays, json, enums, domains and composites come out
//! byte for byte as there, with the columns the row had when it was written (not the
//! table's current ones: ADD/DROP COLUMN between change and capture change nothing).
//!
//! Stored generated columns, which pgoutput does not send, are computed in that subquery
//! from the row's own values with the column's expression (`pg_get_expr`), in table order —
//! immutable expressions of the same values give the values the table stored, so payloads
//! keep parity with trigger capture ([`Shape::layout`]).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgevents_log::inline::{self, DeliverFirst, Unwritten, INLINE_BYTES};
use pgevents_log::{wake_channel, LogSchema};
use pgevents_postgres::{quote_ident, quote_literal};
use pgevents_trigger::image::{image_sql, in_table_order};
use pgevents_trigger::ordering::{key_sql, old_key_sql};
use pgevents_trigger::Ordering;
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{Client, GenericClient, Statement};

use crate::pgoutput::Column;
use crate::render::{Plan, Session};
use crate::Error;

/// `next_change` of a transaction written whole.
pub(crate) const WHOLE: i64 = i64::MAX;

/// How far the event log holds the stream: every change numbered below `next_change` in
/// the source transaction committed at `txn_lsn`, and everything committed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Cursor {
    /// The source transaction's commit LSN.
    pub txn_lsn: u64,
    /// Its changes written (or [`WHOLE`]).
    pub next_change: i64,
}

impl Cursor {
    /// Whether change `index` of transaction `txn_lsn` is already in the log.
    pub fn covers(&self, txn_lsn: u64, index: i64) -> bool {
        (txn_lsn, index) < (self.txn_lsn, self.next_change)
    }
}

/// A relation's row shape at one point of the stream, and what identifies a row in it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    /// The published columns.
    pub columns: Vec<Column>,
    /// Positions (in `columns`) of the key columns; empty when the table has no key.
    pub key: Vec<usize>,
    /// The row images' columns in table order, when the table has stored generated columns
    /// (see [`layout`]); `None`: the published columns are the whole row.
    pub layout: Option<Vec<Source>>,
}

/// Where a column of the row images comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// The published column at this position of [`Shape::columns`].
    Published(usize),
    /// A stored generated column: its name and its expression on the other columns.
    Generated {
        /// The column's name.
        name: String,
        /// Its generation expression (`pg_get_expr`: other columns named unqualified).
        expression: String,
    },
}

/// The row images' columns of a table whose catalog lists `columns` (in table order) with
/// their `generated` expressions, for a change whose Relation message published
/// `published`.
///
/// `None` when the table has no stored generated column, and when the published columns
/// are not the catalog's other columns in order (the table changed since the change was
/// made: rather than guess, the images hold what was published).
pub(crate) fn layout(
    published: &[Column],
    columns: &[String],
    generated: &[Option<String>],
) -> Option<Vec<Source>> {
    if generated.iter().all(Option::is_none) {
        return None;
    }
    let mut next = 0;
    let mut layout = Vec::with_capacity(columns.len());
    for (name, expression) in columns.iter().zip(generated) {
        match expression {
            Some(expression) => layout.push(Source::Generated {
                name: name.clone(),
                expression: expression.clone(),
            }),
            None => {
                if published.get(next).map(|c| &c.name) != Some(name) {
                    return None;
                }
                layout.push(Source::Published(next));
                next += 1;
            }
        }
    }
    (next == published.len()).then_some(layout)
}

impl Shape {
    /// The row images' column names, in table order.
    fn image_columns(&self) -> Vec<String> {
        match &self.layout {
            None => self.columns.iter().map(|c| c.name.clone()).collect(),
            Some(layout) => layout
                .iter()
                .map(|source| match source {
                    Source::Published(i) => self.columns[*i].name.clone(),
                    Source::Generated { name, .. } => name.clone(),
                })
                .collect(),
        }
    }
}

/// What one trigger's events take from a row, when that is not everything the shared
/// statement of a row shape writes: such triggers get a statement of their own.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Projection {
    /// Only these columns in the row images.
    pub payload_columns: Option<Vec<String>>,
    /// The columns of `Columns` ordering (the statement computes their group keys).
    pub group_columns: Option<Vec<String>>,
    /// Only rows matching this condition (`where`) become events.
    pub condition: Option<pgevents_trigger::Condition>,
}

impl Projection {
    /// What `table`'s events take from a row; `None` when they take it whole.
    pub fn of(table: &crate::LogicalTable) -> Option<Arc<Projection>> {
        let projection = Projection {
            payload_columns: table.trigger.payload_columns.clone(),
            group_columns: table
                .trigger
                .ordering
                .group_columns()
                .map(<[String]>::to_vec),
            condition: table.condition.clone(),
        };
        (projection != Projection::whole()).then(|| Arc::new(projection))
    }

    fn whole() -> Projection {
        Projection {
            payload_columns: None,
            group_columns: None,
            condition: None,
        }
    }
}

/// One event to write.
#[derive(Debug)]
pub(crate) struct Row {
    /// The change's place in the stream: (commit LSN, change number).
    pub at: (u64, i64),
    /// The trigger capturing it.
    pub trigger_id: i32,
    /// `I`, `U`, `D` or `T`.
    pub op: i8,
    /// How the trigger orders its events (which keys to compute): [`ordering_code`].
    pub ordering: i8,
    /// The row shape; `None` for TRUNCATE.
    pub shape: Option<Arc<Shape>>,
    /// What the trigger takes from the row; `None` for all of it.
    pub projection: Option<Arc<Projection>>,
    /// The old image's values as text.
    pub old: Option<Vec<Option<String>>>,
    /// The new image's values as text.
    pub new: Option<Vec<Option<String>>>,
    /// The source transaction's commit time.
    pub created_at: DateTime<Utc>,
}

impl Row {
    fn size(&self) -> usize {
        let image = |v: &Option<Vec<Option<String>>>| {
            v.iter()
                .flatten()
                .map(|s| s.as_ref().map_or(1, |s| s.len() + 8))
                .sum::<usize>()
        };
        64 + image(&self.old) + image(&self.new)
    }
}

/// Rows waiting to be written, and the position writing them brings the capture to.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    rows: Vec<Row>,
    bytes: usize,
    /// The cursor once these rows are written.
    pub cursor: Cursor,
    /// The end LSN of the last source transaction the batch completes.
    pub end_lsn: Option<u64>,
}

impl Batch {
    /// An empty batch starting from `cursor`.
    pub fn at(cursor: Cursor) -> Batch {
        Batch {
            cursor,
            ..Batch::default()
        }
    }

    /// Adds a row.
    pub fn push(&mut self, row: Row) {
        self.bytes += row.size();
        self.rows.push(row);
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Approximate memory held by the rows.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// At most this many row shapes keep a prepared statement.
const MAX_STATEMENTS: usize = 256;

/// A row shape, what a trigger takes from it, and what the statement does with the events.
type StatementKey = (Arc<Shape>, Option<Arc<Projection>>, Form);

/// A row shape and what a trigger takes from it.
type PlanKey = (Arc<Shape>, Option<Arc<Projection>>);

/// Who renders a run of rows' events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The server, by a statement of this form.
    Server(Form),
    /// The process ([`Plan`]); the server only stores them.
    Process,
}

/// How long a write waits for the attempts at the events it delivers before it commits:
/// the stream waits meanwhile, so a slow destination's attempts are handed to the
/// dispatcher's settler after this.
const DELIVERY_WAIT: Duration = Duration::from_millis(5);

/// The log connection of a capture session.
pub(crate) struct Writer {
    client: Client,
    schema: LogSchema,
    slot: String,
    channel: String,
    statements: HashMap<StatementKey, Statement>,
    /// The process's plans for row shapes (`None`: the server renders them).
    plans: HashMap<PlanKey, Option<Arc<Plan>>>,
    /// How the log connection prints values.
    session: Session,
    truncate: Statement,
    take_positions: Statement,
    inline: inline::Statements,
    lock_progress: Statement,
    save_progress: Statement,
}

/// The saved position of a slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    /// The exactly-once cursor.
    pub cursor: Cursor,
    /// The end LSN of the last source transaction written whole (0 if none).
    pub end_lsn: u64,
}

impl Writer {
    /// Connects and prepares the fixed statements.
    pub async fn open(url: &str, schema: &LogSchema, slot: &str) -> Result<Writer, Error> {
        let client = pgevents_postgres::connect(url, None).await?;
        let event = schema.object("event");
        let progress = schema.object("logical_progress");
        let prepare = |sql: String, what: &'static str| {
            let client = &client;
            let context = format!("preparing the {what} statement (is logical capture installed? run `pgevents install`)");
            async move { pgevents_postgres::prepare(client, &sql, &context).await }
        };
        let truncate = prepare(
            format!(
                "INSERT INTO {event} (trigger_id, op, created_at, next_attempt_at, size)
                 SELECT u.trigger_id, 'T', u.created_at, now(), 0
                   FROM unnest($1::int4[], $2::timestamptz[]) WITH ORDINALITY
                        AS u(trigger_id, created_at, ord)
                  ORDER BY u.ord"
            ),
            "truncate event",
        )
        .await?;
        let take_positions = prepare(
            format!(
                "SELECT array_agg(nextval({}) ORDER BY g) FROM generate_series(1, $1) g",
                quote_literal(&schema.object("event_seq"))
            ),
            "log position",
        )
        .await?;
        let lock_progress = prepare(
            format!(
                "SELECT txn_lsn, next_change, end_lsn FROM {progress} WHERE slot = $1 FOR UPDATE"
            ),
            "capture position",
        )
        .await?;
        let save_progress = prepare(
            format!(
                "UPDATE {progress} SET txn_lsn = $2, next_change = $3, end_lsn = $4, updated_at = now()
                  WHERE slot = $1"
            ),
            "capture position update",
        )
        .await?;
        let session = Session::of(&client).await?;
        let inline = inline::Statements::prepare(&client, schema).await?;
        Ok(Writer {
            client,
            plans: HashMap::new(),
            session,
            take_positions,
            inline,
            schema: schema.clone(),
            slot: slot.into(),
            channel: wake_channel(schema),
            statements: HashMap::new(),
            truncate,
            lock_progress,
            save_progress,
        })
    }

    /// Reads the slot's saved position.
    pub async fn progress(&self) -> Result<Progress, Error> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT txn_lsn, next_change, end_lsn FROM {} WHERE slot = $1",
                    self.schema.object("logical_progress")
                ),
                &[&self.slot],
            )
            .await
            .map_err(|e| Error::query("reading the capture position", e))?
            .ok_or_else(|| self.not_installed())?;
        Ok(progress_of(&row))
    }

    fn not_installed(&self) -> Error {
        Error::Invalid(format!(
            "no capture position is recorded for replication slot {:?} in log schema {:?}: run `pgevents install` (capture.mode = \"logical\")",
            self.slot,
            self.schema.name()
        ))
    }

    /// Writes `batch` and the position it reaches in one log transaction; rows the log
    /// already holds are skipped. Returns the position now saved.
    ///
    /// With a `delivery`, the events of rows under [`INLINE_BYTES`] that nothing holds back
    /// are delivered before the transaction commits and written once, as delivered
    /// ([`inline`]); the others are written pending.
    pub async fn write(
        &mut self,
        batch: &Batch,
        delivery: Option<Arc<dyn DeliverFirst>>,
    ) -> Result<Progress, Error> {
        for row in &batch.rows {
            if let Some(shape) = &row.shape {
                let key = (shape.clone(), row.projection.clone());
                if !self.plans.contains_key(&key) {
                    if self.plans.len() >= MAX_STATEMENTS {
                        self.plans.clear();
                    }
                    let plan = Plan::new(shape, row.projection.as_deref(), &self.session);
                    self.plans.insert(key, plan);
                }
            }
        }
        let plans = &self.plans;
        let plan_of = |row: &Row| {
            row.shape.as_ref().and_then(|shape| {
                plans
                    .get(&(shape.clone(), row.projection.clone()))
                    .cloned()
                    .flatten()
            })
        };
        // Big rows are written by the server alone (the process never holds their payload
        // twice); the others are rendered by the process when it can, else by the server,
        // back to the process when it delivers them.
        let path = |row: &Row| match (row.size() < INLINE_BYTES, delivery.is_some()) {
            (true, _) if plan_of(row).is_some() => Path::Process,
            (true, true) => Path::Server(Form::Render),
            _ => Path::Server(Form::Insert),
        };
        let tx = self
            .client
            .transaction()
            .await
            .map_err(|e| Error::query("starting a log write", e))?;
        let saved = tx
            .query_opt(&self.lock_progress, &[&self.slot])
            .await
            .map_err(|e| Error::query("locking the capture position", e))?
            .map(|r| progress_of(&r))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the capture position of replication slot {:?} is gone (was logical capture uninstalled?): run `pgevents install`",
                    self.slot
                ))
            })?;
        let fresh: Vec<&Row> = batch
            .rows
            .iter()
            .filter(|r| !saved.cursor.covers(r.at.0, r.at.1))
            .collect();
        let mut unwritten = Vec::new();
        // Whether events were written pending by the server (dispatchers must look).
        let mut inserted = false;
        let mut start = 0;
        while start < fresh.len() {
            let (shape, projection) = (&fresh[start].shape, &fresh[start].projection);
            let run_path = path(fresh[start]);
            let end = fresh[start..]
                .iter()
                .position(|r| {
                    r.shape != *shape || r.projection != *projection || path(r) != run_path
                })
                .map_or(fresh.len(), |n| start + n);
            let run = &fresh[start..end];
            match shape {
                None => {
                    inserted = true;
                    let triggers: Vec<i32> = run.iter().map(|r| r.trigger_id).collect();
                    let times: Vec<DateTime<Utc>> = run.iter().map(|r| r.created_at).collect();
                    tx.execute(&self.truncate, &[&triggers, &times])
                        .await
                        .map_err(|e| Error::query("writing TRUNCATE events", e))?;
                }
                Some(shape) => {
                    let in_process = match (run_path, plan_of(run[0])) {
                        (Path::Process, Some(plan)) => run
                            .iter()
                            .map(|r| plan.render(r, 0))
                            .collect::<Option<Vec<Unwritten>>>(),
                        _ => None,
                    };
                    if let Some(mut events) = in_process {
                        let count = i32::try_from(events.len()).unwrap_or(i32::MAX);
                        let positions: Vec<i64> = tx
                            .query_one(&self.take_positions, &[&count])
                            .await
                            .map_err(|e| Error::query("taking log positions", e))?
                            .get(0);
                        if positions.len() != events.len() {
                            return Err(Error::Decode(format!(
                                "{} log positions taken for {} events",
                                positions.len(),
                                events.len()
                            )));
                        }
                        for (event, seq) in events.iter_mut().zip(positions) {
                            event.seq = seq;
                        }
                        unwritten.extend(events);
                    } else {
                        // The server renders the run (also when a value turned out not to
                        // be of the form the stream sends for its type). Its statement is
                        // prepared on first use.
                        let form = match run_path {
                            Path::Server(form) => form,
                            Path::Process => Form::Render,
                        };
                        let key = (shape.clone(), projection.clone(), form);
                        if !self.statements.contains_key(&key)
                            && self.statements.len() >= MAX_STATEMENTS
                        {
                            self.statements.clear();
                        }
                        let statement = match self.statements.entry(key) {
                            Entry::Occupied(known) => known.into_mut(),
                            Entry::Vacant(new) => new.insert(
                                prepare_shape(
                                    &tx,
                                    &self.schema,
                                    shape,
                                    projection.as_deref(),
                                    form,
                                )
                                .await?,
                            ),
                        };
                        inserted |= form == Form::Insert;
                        let rendered = run_rows(&tx, statement, shape, run).await?;
                        unwritten.extend(rendered.iter().map(Unwritten::from_row));
                    }
                }
            }
            start = end;
        }
        let (delivered, finish) = inline::deliver_and_write(
            tx.client(),
            &self.inline,
            &unwritten,
            delivery.as_deref(),
            DELIVERY_WAIT,
        )
        .await?;
        let cursor = saved.cursor.max(batch.cursor);
        let end_lsn = saved.end_lsn.max(batch.end_lsn.unwrap_or(0));
        tx.execute(
            &self.save_progress,
            &[
                &self.slot,
                &PgLsn::from(cursor.txn_lsn),
                &cursor.next_change,
                &PgLsn::from(end_lsn),
            ],
        )
        .await
        .map_err(|e| Error::query("saving the capture position", e))?;
        // Events all delivered leave the dispatchers nothing to claim: no wake-up.
        if inserted || delivered < unwritten.len() as i64 {
            tx.execute("SELECT pg_notify($1, '')", &[&self.channel])
                .await
                .map_err(|e| Error::query("waking the dispatchers", e))?;
        }
        let committed = tx.commit().await;
        if let Some(finish) = finish {
            finish(committed.is_ok());
        }
        committed.map_err(|e| Error::query("committing a log write", e))?;
        if fresh.len() < batch.rows.len() {
            tracing::debug!(
                skipped = batch.rows.len() - fresh.len(),
                "rows already in the log were skipped"
            );
        }
        Ok(Progress { cursor, end_lsn })
    }
}

/// Prepares the statement of [`insert_sql`] for rows of `shape`.
async fn prepare_shape(
    client: &impl GenericClient,
    schema: &LogSchema,
    shape: &Shape,
    projection: Option<&Projection>,
    form: Form,
) -> Result<Statement, Error> {
    let oids: Vec<u32> = shape.columns.iter().map(|c| c.type_oid).collect();
    let mods: Vec<i32> = shape.columns.iter().map(|c| c.type_modifier).collect();
    let types: Vec<Option<String>> = client
        .query(
            "SELECT format_type(t.oid, t.modifier)
               FROM unnest($1::oid[], $2::int4[]) WITH ORDINALITY AS t(oid, modifier, ord)
              ORDER BY t.ord",
            &[&oids, &mods],
        )
        .await
        .map_err(|e| Error::query("naming column types", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut names = Vec::with_capacity(types.len());
    for (column, ty) in shape.columns.iter().zip(types) {
        match ty {
            Some(ty) if ty != "???" && !ty.starts_with('-') => names.push(ty),
            _ => {
                return Err(Error::Invalid(format!(
                    "column {:?} has type OID {}, which no longer exists: its changes cannot be rendered",
                    column.name, column.type_oid
                )))
            }
        }
    }
    let sql = insert_sql(
        schema,
        shape,
        &names,
        projection.unwrap_or(&Projection::whole()),
        form,
    );
    client
        .prepare(&sql)
        .await
        .map_err(|e| Error::query("preparing an event insert", e))
}

fn progress_of(row: &tokio_postgres::Row) -> Progress {
    let txn: PgLsn = row.get(0);
    let end: PgLsn = row.get(2);
    Progress {
        cursor: Cursor {
            txn_lsn: txn.into(),
            next_change: row.get(1),
        },
        end_lsn: end.into(),
    }
}

/// What a statement of [`insert_sql`] does with the events it renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Form {
    /// Writes them into the log, pending.
    Insert,
    /// Returns them, each with its log position taken, for [`inline::deliver_and_write`]:
    /// position, trigger, op, row key, old key, old and new image as JSON text, commit time.
    Render,
}

/// The statement that renders rows of `shape`, whose column types are named `types`, taking
/// from each row what `projection` says, as events, and writes or returns them (`form`).
///
/// Parameters: trigger ids, ops, orderings (`r`ow, `t`able, `n`one, `c`olumns), commit times, has-old and has-new flags, then
/// one text array per column for the old images and one per column for the new.
fn insert_sql(
    schema: &LogSchema,
    shape: &Shape,
    types: &[String],
    projection: &Projection,
    form: Form,
) -> String {
    // The row images' aliases: names no column of a watched table is expected to have (a
    // column named like an alias would make a bare reference to the image ambiguous).
    const OLD: &str = "pgevents_o";
    const NEW: &str = "pgevents_n";
    let n = shape.columns.len();
    let names = shape.image_columns();
    let payload = in_table_order(projection.payload_columns.as_deref(), &names);
    let image = |prefix: &str, alias: &str, flag: &str| {
        let columns = shape
            .columns
            .iter()
            .zip(types)
            .enumerate()
            .map(|(i, (c, ty))| format!("u.{prefix}{i}::{ty} AS {}", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ");
        // OFFSET 0 keeps the subquery whole, so its casts run only when the image exists
        // (a NULL cast to a NOT NULL domain would fail).
        let published = format!("SELECT {columns} WHERE u.{flag} OFFSET 0");
        let row = match &shape.layout {
            None => published,
            // Generated columns computed from the published ones, whose names resolve in
            // the inner subquery first.
            Some(layout) => {
                let columns = layout
                    .iter()
                    .map(|source| match source {
                        Source::Published(i) => quote_ident(&shape.columns[*i].name),
                        Source::Generated { name, expression } => {
                            format!("({expression}) AS {}", quote_ident(name))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("SELECT {columns} FROM ({published}) {prefix}_published OFFSET 0")
            }
        };
        format!("LEFT JOIN LATERAL ({row}) {alias} ON true")
    };
    let key_columns: Vec<String> = shape
        .key
        .iter()
        .map(|i| shape.columns[*i].name.clone())
        .collect();
    let seed = "u.trigger_id";
    let row_key = |alias: &str| key_sql(&Ordering::Row, alias, &key_columns, seed);
    // Group columns the row no longer has (dropped since) are left out of the key.
    let group = Ordering::Columns(
        projection
            .group_columns
            .iter()
            .flatten()
            .filter(|c| names.contains(c))
            .cloned()
            .collect(),
    );
    let group_key = |alias: &str| key_sql(&group, alias, &[], seed);
    let mut params = vec![
        "$1::int4[]".to_string(),
        "$2::\"char\"[]".into(),
        "$3::\"char\"[]".into(),
        "$4::timestamptz[]".into(),
        "$5::bool[]".into(),
        "$6::bool[]".into(),
    ];
    let mut aliases = vec![
        "trigger_id".to_string(),
        "op".into(),
        "ordering".into(),
        "created_at".into(),
        "has_old".into(),
        "has_new".into(),
    ];
    for (prefix, offset) in [("o", 7), ("n", 7 + n)] {
        for i in 0..n {
            params.push(format!("${}::text[]", offset + i));
            aliases.push(format!("{prefix}{i}"));
        }
    }
    let rows = format!(
        "SELECT u.trigger_id, u.op,
                CASE u.ordering
                  WHEN 'r' THEN CASE WHEN u.op = 'D' THEN {old_key} ELSE {new_key} END
                  WHEN 't' THEN {table_key}
                  WHEN 'c' THEN CASE WHEN u.op = 'D' THEN {old_group} ELSE {new_group} END END AS row_key,
                CASE WHEN u.op = 'U' THEN CASE u.ordering
                  WHEN 'r' THEN {changed_key} WHEN 'c' THEN {changed_group} END END AS old_key,
                CASE WHEN u.has_old THEN {old_row} END AS old_row,
                CASE WHEN u.has_new THEN {new_row} END AS new_row,
                u.created_at, u.ord
           FROM unnest({params}) WITH ORDINALITY AS u({aliases}, ord)
           {old_image}
           {new_image}
          {filter}
          OFFSET 0",
        old_key = row_key(OLD),
        new_key = row_key(NEW),
        table_key = key_sql(&Ordering::Table, NEW, &key_columns, seed),
        changed_key = old_key_sql(&Ordering::Row, OLD, NEW, &key_columns, seed),
        old_group = group_key(OLD),
        new_group = group_key(NEW),
        changed_group = old_key_sql(&group, OLD, NEW, &[], seed),
        filter = projection.condition.as_ref().map_or(String::new(), |c| format!(
            "WHERE CASE u.op WHEN 'I' THEN {new} WHEN 'D' THEN {old} ELSE ({old}) OR ({new}) END",
            old = c.on(OLD),
            new = c.on(NEW),
        )),
        old_row = image_sql(OLD, payload.as_deref()),
        new_row = image_sql(NEW, payload.as_deref()),
        params = params.join(", "),
        aliases = aliases.join(", "),
        old_image = image("o", OLD, "has_old"),
        new_image = image("n", NEW, "has_new"),
    );
    match form {
        Form::Insert => format!(
            "INSERT INTO {event} (trigger_id, op, row_key, old_key, old_row, new_row, created_at, next_attempt_at, size)
             SELECT r.trigger_id, r.op, r.row_key, r.old_key, r.old_row, r.new_row, r.created_at, now(),
                    {size}(r.old_row, r.new_row)
               FROM ({rows}) r
              ORDER BY r.ord",
            event = schema.object("event"),
            size = schema.object("event_size"),
        ),
        // Positions taken in the stream's order: the sorted subquery comes out in order.
        Form::Render => format!(
            "SELECT nextval({sequence}), r.trigger_id, r.op, r.row_key, r.old_key,
                    r.old_row::text, r.new_row::text, r.created_at
               FROM (SELECT * FROM ({rows}) r ORDER BY r.ord OFFSET 0) r",
            sequence = quote_literal(&schema.object("event_seq")),
        ),
    }
}

/// Runs a statement of [`insert_sql`] on `rows`; returns what it returns.
async fn run_rows(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &Statement,
    shape: &Shape,
    rows: &[&Row],
) -> Result<Vec<tokio_postgres::Row>, Error> {
    let n = shape.columns.len();
    let triggers: Vec<i32> = rows.iter().map(|r| r.trigger_id).collect();
    let ops: Vec<i8> = rows.iter().map(|r| r.op).collect();
    let orderings: Vec<i8> = rows.iter().map(|r| r.ordering).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.created_at).collect();
    let has_old: Vec<bool> = rows.iter().map(|r| r.old.is_some()).collect();
    let has_new: Vec<bool> = rows.iter().map(|r| r.new.is_some()).collect();
    let column = |image: fn(&Row) -> &Option<Vec<Option<String>>>, i: usize| -> Vec<Option<&str>> {
        rows.iter()
            .map(|r| {
                image(r)
                    .as_ref()
                    .and_then(|values| values.get(i))
                    .and_then(|v| v.as_deref())
            })
            .collect()
    };
    let mut columns: Vec<Vec<Option<&str>>> = Vec::with_capacity(2 * n);
    for i in 0..n {
        columns.push(column(|r| &r.old, i));
    }
    for i in 0..n {
        columns.push(column(|r| &r.new, i));
    }
    let mut params: Vec<&(dyn ToSql + Sync)> =
        vec![&triggers, &ops, &orderings, &times, &has_old, &has_new];
    for c in &columns {
        params.push(c);
    }
    tx.query(statement, &params)
        .await
        .map_err(|e| Error::query("writing captured rows to the event log", e))
}

/// The `"char"` code of `ordering` in the event insert's parameters.
pub(crate) fn ordering_code(ordering: &Ordering) -> i8 {
    match ordering {
        Ordering::Row => b'r' as i8,
        Ordering::Table => b't' as i8,
        Ordering::None => b'n' as i8,
        Ordering::Columns(_) => b'c' as i8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_cover_what_was_written() {
        let c = Cursor {
            txn_lsn: 100,
            next_change: 3,
        };
        assert!(c.covers(99, 1_000_000));
        assert!(c.covers(100, 2));
        assert!(!c.covers(100, 3));
        assert!(!c.covers(101, 0));
        let whole = Cursor {
            txn_lsn: 100,
            next_change: WHOLE,
        };
        assert!(whole.covers(100, 1_000_000));
        assert!(whole > c);
    }

    #[test]
    fn insert_sql_quotes_names_and_keys() {
        let shape = Shape {
            columns: vec![
                Column {
                    name: "Id \"x\"".into(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                Column {
                    name: "b".into(),
                    type_oid: 25,
                    type_modifier: -1,
                },
            ],
            key: vec![0, 1],
            layout: None,
        };
        let sql = insert_sql(
            &LogSchema::default(),
            &shape,
            &["bigint".into(), "text".into()],
            &Projection::whole(),
            Form::Insert,
        );
        assert!(sql.contains("u.o0::bigint AS \"Id \"\"x\"\"\""));
        assert!(
            sql.contains("hashtextextended(ROW(pgevents_n.\"Id \"\"x\"\"\", pgevents_n.\"b\")::text, u.trigger_id)")
        );
        assert!(sql.contains("$10::text[]"));
        assert!(!sql.contains("$11"));
    }

    #[test]
    fn generated_columns_are_computed_in_table_order_when_the_catalog_fits() {
        let column = |name: &str| Column {
            name: name.into(),
            type_oid: 23,
            type_modifier: -1,
        };
        let published = [column("id"), column("qty")];
        let names: Vec<String> = ["id", "double", "qty"].map(String::from).to_vec();
        let generated = [None, Some("(qty * 2)".to_string()), None];
        let fitting = layout(&published, &names, &generated).expect("a layout");
        assert_eq!(
            fitting,
            [
                Source::Published(0),
                Source::Generated {
                    name: "double".into(),
                    expression: "(qty * 2)".into()
                },
                Source::Published(1),
            ]
        );
        assert_eq!(
            layout(&published, &names, &[None, None, None]),
            None,
            "no generated column"
        );
        assert_eq!(
            layout(&[column("id")], &names, &generated),
            None,
            "a column added since the change"
        );
        assert_eq!(
            layout(&[column("qty"), column("id")], &names, &generated),
            None,
            "another order"
        );
        let shape = Shape {
            columns: published.to_vec(),
            key: vec![0],
            layout: Some(fitting),
        };
        assert_eq!(shape.image_columns(), names);
        let sql = insert_sql(
            &LogSchema::default(),
            &shape,
            &["integer".into(), "integer".into()],
            &Projection::whole(),
            Form::Render,
        );
        assert!(sql.contains(
            "(SELECT \"id\", ((qty * 2)) AS \"double\", \"qty\" FROM (SELECT u.n0::integer AS \"id\", u.n1::integer AS \"qty\" WHERE u.has_new OFFSET 0) n_published OFFSET 0) pgevents_n ON true"
        ), "{sql}");
    }

    #[test]
    fn projections_cut_filter_and_group() {
        let column = |name: &str| Column {
            name: name.into(),
            type_oid: 25,
            type_modifier: -1,
        };
        let shape = Shape {
            columns: vec![column("id"), column("account"), column("secret")],
            key: vec![0],
            layout: None,
        };
        let projection = Projection {
            payload_columns: Some(vec!["account".into(), "id".into(), "gone".into()]),
            group_columns: Some(vec!["account".into()]),
            condition: None,
        };
        let sql = insert_sql(
            &LogSchema::default(),
            &shape,
            &["text".into(), "text".into(), "text".into()],
            &projection,
            Form::Insert,
        );
        assert!(sql.contains("(SELECT pgevents_n.\"id\", pgevents_n.\"account\") pgevents_image"));
        assert!(sql.contains("WHEN 'c' THEN CASE WHEN u.op = 'D' THEN hashtextextended(ROW(pgevents_o.\"account\")::text, u.trigger_id)"));
        assert!(!sql.contains("WHERE CASE"), "no condition, no filter");
    }
}
