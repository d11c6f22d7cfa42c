//! Trigger-free capture (`capture.mode = "logical"`): committed changes read from the WAL
//! through a logical replication slot, written to the same event log, with the same
//! payloads, as trigger capture.
//!
//! ```no_run
//! # async fn run() -> Result<(), pgevents_logical::Error> {
//! use pgevents_trigger::Trigger;
//! use pgevents_log::LogSchema;
//! use pgevents_postgres::QualifiedName;
//! use pgevents_logical::{register_table, LogicalCapture};
//!
//! let url = "postgres://app@localhost/shop";
//! let schema = LogSchema::default();
//! let mut client = pgevents_postgres::connect(url, None).await?;
//! pgevents_log::install(&mut client, &schema).await?;
//! let table = QualifiedName::parse("orders").map_err(|e| pgevents_logical::Error::Invalid(e.to_string()))?;
//! let orders = Trigger::new("order_events", table, ());
//! let table = register_table(&client, &schema, &orders).await?;
//! let capture = LogicalCapture::new(url, schema, "pgevents", "pgevents", vec![table])?;
//! capture.install().await?;                       // publication, REPLICA IDENTITY FULL, slot
//! capture.run(tokio::signal::ctrl_c()).await?;    // until Ctrl-C
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! **Protocol crate: `pgwire-replication`, with our own pgoutput decoder.** It is a small,
//! pure-Rust tokio client for the replication protocol (rustls on `ring`, already in the
//! dependency tree; SCRAM; no C toolchain, no libpq). It does exactly the parts that are
//! easy to get subtly wrong — answering keepalives, and sending standby status updates
//! even while the consumer applies back-pressure, so a slow log write never gets the
//! walsender to time us out — and it reports only what we confirm (`update_applied_lsn`;
//! `with_ack_lsn` to re-confirm the saved position on reconnect). It hands Begin/Commit
//! over parsed and every other pgoutput message raw, through a bounded channel. The decoder
//! for the rest (Relation, Insert, Update, Delete, Truncate of protocol version 1) is 200
//! lines we own and test (`pgoutput`). `pg_walstream` was the alternative: it decodes
//! values into its own types (we need the raw text), its default TLS backend builds
//! `aws-lc-sys` from C (or it links libpq), and its API surface is far larger than what we
//! use.
//!
//! **Protocol version 1 on purpose.** The server sends a transaction only after it
//! committed, so a rolled-back transaction never reaches us, and a transaction larger than
//! `logical_decoding_work_mem` is spilled to disk by the server, not held by us. We hold at
//! most two batches (`Options::batch_rows` / `batch_bytes`: one being written on a task of
//! its own while the next is decoded) plus a 64-message channel: memory does not grow with
//! transaction size.
//!
//! **Exactly once into the log, across crashes.** Every change of a source transaction gets
//! a number (its position among the transaction's change messages, deterministic on
//! replay). The log schema holds one `logical_progress` row per slot: the cursor
//! `(txn_lsn, next_change)` — every change of transactions committed before `txn_lsn`, and
//! those numbered below `next_change` in it, are in the log — and `end_lsn`, the end of the
//! last source transaction written whole. A batch (rows of any number of source
//! transactions, possibly ending inside a large one) is written in one log transaction that
//! locks that row (`FOR UPDATE`), drops rows the cursor already covers, inserts the rest
//! into `event`, moves the cursor and notifies the dispatchers. Only after that commit is
//! the slot confirmed, and only up to the end of the last source transaction written whole.
//! So a crash anywhere loses nothing (the slot re-sends from its confirmed position, which
//! never passes unwritten rows) and duplicates nothing (the re-sent rows the cursor covers
//! are skipped, whether the crash came between batches of one transaction or between the
//! log commit and the confirmation). A transaction whose rows are all filtered out, and
//! keepalives between transactions, are confirmed at once (once the write under way, if
//! any, has committed), so a slot on quiet tables in a busy database does not hold WAL back.
//!
//! **Decoding overlaps writing.** A full batch (a backlog) is written on a task of its own
//! while the stream goes on into the next; the next write waits for it, so batches reach
//! the log one after the other, in stream order, each in its own transaction as above. A
//! batch cut by the linger (the stream caught up) is written before reading on: beside
//! busy writers, overlapping those small writes cost the writers more than it saved.
//!
//! **Delivered as written.** Run beside a dispatcher of the same process (the library's
//! `Listener`, the daemon), a write renders its rows' events and, before it commits,
//! delivers those that nothing holds back (no pending event of their row or old key, no
//! pending TRUNCATE, no other event of the batch on their keys) through the dispatcher's
//! destinations, waiting at most 5 ms, then writes each event once: delivered, failed with
//! its outcome (retried by the dispatchers, holding back its row), leased to the dispatcher
//! while its attempt is still under way, or pending. No claim and no settle for the events
//! delivered so, and the slot is confirmed, as always, only behind what the log holds. Rows
//! of 64 kB or more are written pending by the server without passing through the process.
//!
//! **Values rendered as PostgreSQL renders them.** pgoutput sends each value in its type's
//! text form (the walsender session is pinned to ISO dates, UTC, shortest-exact floats and
//! hex bytea so these read back exactly). Rows whose columns are all of common built-in
//! types (numbers, booleans, strings, `uuid`, `json`/`jsonb`, dates, timestamps, `bytea`)
//! are rendered by the process from those texts, exactly as `to_json` renders the values,
//! and their ordering keys are `hashtextextended` computed in the process
//! (`crate::render`): the server only stores the events. For any other row (arrays,
//! composites, enums, domains, intervals; a `where` condition; stored generated columns;
//! a log connection whose `TimeZone` is not UTC), the INSERT that writes a batch casts each
//! value back to its column's type — `format_type` of the OID and type modifier in the
//! Relation message, so domains, enums, composites and arrays are themselves — as a
//! subquery with the column names, and calls `to_json` on that row: the same
//! `composite_to_json` that trigger capture's `to_json(NEW)` runs. Either way exact numbers
//! (bigint, numeric, NaN), embedded json/jsonb, nested arrays with NULLs, bytea,
//! timestamps and composites come out byte for byte as in trigger mode, with the columns
//! the row had at the time of the change (ADD/DROP COLUMN between events follow the
//! Relation messages). `row_key` is `hashtextextended(<key>::text, trigger_id)` on the
//! same values, as the trigger computes it. Timestamps with time zone are rendered in the
//! log connection's `TimeZone` (the server default), where trigger mode uses the writer
//! session's.
//!
//! **Whole rows.** Install sets `REPLICA IDENTITY FULL` on each watched table, so UPDATE
//! and DELETE carry the whole old row (`data.old` complete) and an unchanged TOASTed value,
//! which pgoutput does not resend, is restored into `data.new` from the old row. The cost:
//! every UPDATE and DELETE of a watched table writes its whole old row to the WAL (roughly
//! doubling WAL volume for updates of wide rows). The previous identity is recorded and put
//! back when a table leaves the configuration or capture is uninstalled.
//!
//! **Publication and slot.** Install is idempotent and follows the configuration: it
//! creates the publication (partitions publish as their root) or sets its table list to
//! exactly the watched tables, and creates the `pgoutput` slot if missing (last, outside any
//! transaction). Only then does it remove capture triggers a trigger-mode install left on
//! those tables: switching modes loses no change (one made in between may be logged twice,
//! which at-least-once delivery allows). Uninstall drops the slot and the publication.
//!
//! **One consumer, hot standby.** A process streams only while it holds a session advisory
//! lock (`LogSchema::key("logical-slot:<slot>")`) on a dedicated connection; a second
//! process blocks on that lock and takes over as soon as the first dies (its connections
//! close, the lock is released; "slot is active" during the walsender's exit is retried).
//! The progress row lock keeps even an overlapping former leader from writing twice.
//!
//! **Safety.** Every 30 s the slot is checked: a warning when it holds more WAL than
//! `Options::lag_warning_bytes` with `max_slot_wal_keep_size` unlimited (the disk may
//! fill), when less than a fifth of `max_slot_wal_keep_size` is left, or when
//! `wal_status = unreserved`; [`Error::SlotLost`] (with the way to recover) once the server
//! invalidated it; [`Error::WalLevel`] explains how to enable `wal_level = logical`.
//!
//! **Generated columns.** PostgreSQL 15–17 do not publish stored generated columns; the
//! writer computes them from the row's published values with each column's expression, in
//! table order, so payloads (and `where`, `payload_columns`) see them as trigger capture
//! does. A change decoded after its table's columns changed (the catalog no longer matches
//! the change's Relation message) is rendered with the published columns only.
//!
//! **Limits.** The `columns` filter compares text forms, as the trigger's `::text`
//! comparison does, and only of published columns: a generated column named there does not
//! make an UPDATE fire in logical mode.

mod catalog;
mod error;
mod install;
mod pgoutput;
mod render;
mod slots;
mod stream;
mod writer;

use std::time::Duration;

use pgevents_log::inline::Offer;
use pgevents_log::LogSchema;
use pgevents_trigger::{Condition, Trigger};

pub use catalog::check_wal_level;
pub use error::Error;
pub use install::register_table;
pub use slots::{slot_health, SlotHealth};

/// Default rows per log write.
pub const DEFAULT_BATCH_ROWS: usize = 1000;
/// Default bytes of row text per log write (a bigger single row is written alone).
pub const DEFAULT_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Default time decoded rows wait for more before they are written.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(10);
/// Default interval of standby status updates (confirmations) to the server.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Default interval between slot health checks.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// Default WAL held back by the slot, with `max_slot_wal_keep_size` unlimited, that is
/// worth a warning.
pub const DEFAULT_LAG_WARNING_BYTES: u64 = 1024 * 1024 * 1024;

/// One trigger registered for capture through the slot: its log id, its description, and
/// its `where` condition as PostgreSQL qualified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalTable {
    /// The trigger's id in the log (from [`register_table`]).
    pub trigger_id: i32,
    /// What it captures (its destination is the dispatcher's business).
    pub trigger: Trigger,
    /// The trigger's `where`, qualified: INSERT fires when the new row matches, DELETE when
    /// the old row does, UPDATE when either does.
    pub condition: Option<Condition>,
}

/// Tuning of a [`LogicalCapture`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Rows per log write.
    pub batch_rows: usize,
    /// Bytes of row text per log write.
    pub batch_bytes: usize,
    /// How long decoded rows wait for more before they are written (latency vs. fewer,
    /// larger log transactions).
    pub linger: Duration,
    /// How often the confirmed position is sent to the server.
    pub status_interval: Duration,
    /// How often the slot's health is checked.
    pub health_interval: Duration,
    /// WAL held back by the slot (bytes) worth a warning when `max_slot_wal_keep_size` is
    /// unlimited.
    pub lag_warning_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_rows: DEFAULT_BATCH_ROWS,
            batch_bytes: DEFAULT_BATCH_BYTES,
            linger: DEFAULT_LINGER,
            status_interval: DEFAULT_STATUS_INTERVAL,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            lag_warning_bytes: DEFAULT_LAG_WARNING_BYTES,
        }
    }
}

/// Logical capture of a set of tables through one publication and one replication slot.
#[derive(Debug, Clone)]
pub struct LogicalCapture {
    url: String,
    schema: LogSchema,
    slot: String,
    publication: String,
    tables: Vec<LogicalTable>,
    options: Options,
    delivery: Offer,
}

impl LogicalCapture {
    /// Capture of `tables` into the log in `schema`, through replication slot `slot` and
    /// publication `publication` of the database at `url`.
    ///
    /// Fails when the slot name is not a valid replication slot name (lower-case letters,
    /// digits and underscores, at most 63 bytes) or the publication name is empty or too long.
    pub fn new(
        url: impl Into<String>,
        schema: LogSchema,
        slot: impl Into<String>,
        publication: impl Into<String>,
        tables: Vec<LogicalTable>,
    ) -> Result<LogicalCapture, Error> {
        let slot = slot.into();
        let publication = publication.into();
        if slot.is_empty()
            || slot.len() > 63
            || !slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::Invalid(format!(
                "capture.slot {slot:?} is not a valid replication slot name: use 1 to 63 lower-case letters, digits and underscores"
            )));
        }
        if publication.is_empty() || publication.len() > 63 {
            return Err(Error::Invalid(format!(
                "capture.publication {publication:?} must be 1 to 63 bytes long"
            )));
        }
        Ok(LogicalCapture {
            url: url.into(),
            schema,
            slot,
            publication,
            tables,
            options: Options::default(),
            delivery: Offer::default(),
        })
    }

    /// Replaces the tuning.
    pub fn with_options(mut self, options: Options) -> LogicalCapture {
        self.options = Options {
            batch_rows: options.batch_rows.max(1),
            batch_bytes: options.batch_bytes.max(1),
            ..options
        };
        self
    }

    /// Delivers, with the delivery `offer`ed by a dispatcher of the same process
    /// ([`pgevents_log::inline::Offer`]) while it is offered, the events that nothing holds
    /// back before the write that puts them into the log commits, and writes them once, as
    /// delivered: no claim, no settle. The slot is still confirmed only behind what the log
    /// holds.
    pub fn with_delivery(mut self, offer: Offer) -> LogicalCapture {
        self.delivery = offer;
        self
    }

    /// The replication slot's name.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// The publication's name.
    pub fn publication(&self) -> &str {
        &self.publication
    }

    /// The slot's health now (`None` when it does not exist), for status reports.
    pub async fn slot_health(&self) -> Result<Option<SlotHealth>, Error> {
        let client = pgevents_postgres::connect(&self.url, None).await?;
        slots::slot_health(&client, &self.slot).await
    }
}
