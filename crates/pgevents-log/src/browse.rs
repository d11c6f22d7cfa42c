//! Reading the log for people: per-trigger counts, event lists, one event with its attempts.
//! Shared by the CLI (`status`, `events ...`) and the admin API.

use chrono::{DateTime, Utc};
use pgevents_event::{Action, Event, EventParts};
use serde::Serialize;
use tokio_postgres::{Client, Row};

use crate::{Error, LogSchema};

/// An event's delivery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting, in flight, or waiting for a retry.
    Pending,
    /// Delivered.
    Delivered,
    /// Failed after its retries (or rejected); redeliverable.
    Failed,
}

impl Status {
    fn code(self) -> i8 {
        (match self {
            Status::Pending => b'p',
            Status::Delivered => b'd',
            Status::Failed => b'f',
        }) as i8
    }

    fn from_code(code: i8) -> Status {
        match code as u8 {
            b'd' => Status::Delivered,
            b'f' => Status::Failed,
            _ => Status::Pending,
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Status, String> {
        match s {
            "pending" => Ok(Status::Pending),
            "delivered" => Ok(Status::Delivered),
            "failed" => Ok(Status::Failed),
            other => Err(format!(
                "unknown status {other:?}: use pending, delivered or failed"
            )),
        }
    }
}

/// Counts of one trigger's events.
#[derive(Debug, Clone, Serialize)]
pub struct TriggerCounts {
    /// The trigger's name.
    pub name: String,
    /// The watched table's schema.
    pub schema: String,
    /// The watched table.
    pub table: String,
    /// Events waiting, in flight or retrying (including captured rows not yet moved into the log).
    pub pending: i64,
    /// Events delivered (and not yet removed by retention).
    pub delivered: i64,
    /// Events failed.
    pub failed: i64,
    /// Age in seconds of the oldest pending event.
    pub oldest_pending_seconds: Option<f64>,
    /// True when install removed the trigger's capture because the config no longer names
    /// it: its events are kept (pending ones wait for a configuration that delivers them).
    pub removed: bool,
    /// How its events are ordered, as installed: `"row"`, `"table"`, `"none"` or
    /// `{"columns": [...]}`.
    pub ordering: serde_json::Value,
    /// Its row filter (the config's `where`), when it has one.
    #[serde(rename = "where")]
    pub condition: Option<String>,
    /// The only columns its events carry, when limited.
    pub payload_columns: Option<Vec<String>>,
}

/// Per-trigger counts, and the capture lag (age in seconds of the oldest captured row not
/// yet in the log).
pub async fn status(
    client: &Client,
    schema: &LogSchema,
) -> Result<(Vec<TriggerCounts>, f64), Error> {
    let rows = client
        .query(
            &format!(
                "WITH c AS (SELECT trigger_id, count(*) AS n, min(created_at) AS oldest
                              FROM {s}.capture GROUP BY trigger_id),
                      e AS (SELECT trigger_id,
                                   count(*) FILTER (WHERE status = 'p') AS pending,
                                   count(*) FILTER (WHERE status = 'd') AS delivered,
                                   count(*) FILTER (WHERE status = 'f') AS failed,
                                   min(created_at) FILTER (WHERE status = 'p') AS oldest
                              FROM {s}.event GROUP BY trigger_id)
                 SELECT t.name, t.schema_name, t.table_name,
                        coalesce(e.pending, 0) + coalesce(c.n, 0),
                        coalesce(e.delivered, 0), coalesce(e.failed, 0),
                        extract(epoch FROM now() - least(e.oldest, c.oldest))::float8,
                        t.removed_at IS NOT NULL,
                        coalesce(t.definition->'ordering', '\"row\"'),
                        t.definition->>'where',
                        t.definition->'payload_columns'
                   FROM {s}.trigger t
                   LEFT JOIN e ON e.trigger_id = t.id
                   LEFT JOIN c ON c.trigger_id = t.id
                  ORDER BY t.name",
                s = schema.quoted()
            ),
            &[],
        )
        .await
        .map_err(|e| Error::query("counting events", e))?;
    let counts = rows
        .into_iter()
        .map(|r| TriggerCounts {
            name: r.get(0),
            schema: r.get(1),
            table: r.get(2),
            pending: r.get(3),
            delivered: r.get(4),
            failed: r.get(5),
            oldest_pending_seconds: r.get(6),
            removed: r.get(7),
            ordering: r.get(8),
            condition: r.get(9),
            payload_columns: r
                .get::<_, Option<serde_json::Value>>(10)
                .and_then(|v| serde_json::from_value(v).ok()),
        })
        .collect();
    let lag: Option<f64> = client
        .query_one(
            &format!(
                "SELECT extract(epoch FROM now() - min(created_at))::float8 FROM {}",
                schema.object("capture")
            ),
            &[],
        )
        .await
        .map_err(|e| Error::query("measuring capture lag", e))?
        .get(0);
    Ok((counts, lag.unwrap_or(0.0).max(0.0)))
}

/// One event as stored, with its delivery state.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// The event id.
    pub id: uuid::Uuid,
    /// The log position (also the list cursor).
    pub seq: i64,
    /// The trigger's name.
    pub trigger: String,
    /// The table's schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// INSERT, UPDATE, DELETE, TRUNCATE or MANUAL.
    pub action: String,
    /// pending, delivered or failed.
    pub status: Status,
    /// Attempts made.
    pub attempts: i32,
    /// Capture time.
    pub created_at: DateTime<Utc>,
    /// When a pending event is next due (or its lease ends, while in flight).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was delivered or failed.
    pub finished_at: Option<DateTime<Utc>>,
    /// The last attempt's status code.
    pub last_status: Option<i32>,
    /// The last attempt's duration in milliseconds.
    pub last_duration_ms: Option<i32>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    #[serde(skip)]
    old: Option<String>,
    #[serde(skip)]
    new: Option<String>,
}

impl EventRecord {
    /// The event itself (payloads, row images).
    pub fn event(&self) -> Event {
        Event::from_parts(EventParts {
            seq: self.seq,
            salt: salt_of(self.id),
            created_at: self.created_at,
            trigger: self.trigger.as_str().into(),
            schema: self.schema.as_str().into(),
            table: self.table.as_str().into(),
            action: self.action.parse().unwrap_or(Action::Manual),
            old: self.old.clone(),
            new: self.new.clone(),
            ordering_key: None,
        })
    }
}

fn salt_of(id: uuid::Uuid) -> u16 {
    (id.as_u64_pair().0 & 0x0FFF) as u16
}

/// One attempt of an event.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub attempt: i32,
    /// When it started (or, for the successful last attempt, when it finished).
    pub at: Option<DateTime<Utc>>,
    /// How long it took.
    pub duration_ms: Option<i32>,
    /// The destination's status code.
    pub status: Option<i32>,
    /// What went wrong.
    pub error: Option<String>,
    /// The start of the destination's answer.
    pub response: Option<String>,
    /// Whether this attempt delivered the event.
    pub delivered: bool,
}

const EVENT_COLUMNS: &str = "e.seq, t.name, t.schema_name, t.table_name, e.op, e.status, e.attempts,
    e.created_at, greatest(e.next_attempt_at, e.lease_until), e.finished_at, e.last_status, e.last_duration_ms, e.last_error";

fn record(r: &Row, salt: u16, with_data: Option<(Option<String>, Option<String>)>) -> EventRecord {
    let seq: i64 = r.get(0);
    let created_at: DateTime<Utc> = r.get(7);
    let status = Status::from_code(r.get(5));
    let (old, new) = with_data.unwrap_or((None, None));
    EventRecord {
        id: pgevents_event::event_id(created_at, salt, seq),
        seq,
        trigger: r.get(1),
        schema: r.get(2),
        table: r.get(3),
        action: Action::from_code(r.get(4))
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|e| e.0),
        status,
        attempts: r.get(6),
        created_at,
        next_attempt_at: (status == Status::Pending).then(|| r.get(8)),
        finished_at: r.get(9),
        last_status: r.get(10),
        last_duration_ms: r.get(11),
        last_error: r.get(12),
        old,
        new,
    }
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this trigger.
    pub trigger: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only events older than this log position (the cursor of the previous page).
    pub before: Option<i64>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<i64>,
}

/// Events matching `filter`, newest first.
pub async fn list(
    client: &Client,
    schema: &LogSchema,
    salt: u16,
    filter: &Filter,
) -> Result<Vec<EventRecord>, Error> {
    let limit = filter.limit.unwrap_or(50).clamp(1, 1000);
    let status = filter.status.map(Status::code);
    let rows = client
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.event e JOIN {s}.trigger t ON t.id = e.trigger_id
                  WHERE ($1::text IS NULL OR t.name = $1)
                    AND ($2::\"char\" IS NULL OR e.status = $2)
                    AND ($3::int8 IS NULL OR e.seq < $3)
                  ORDER BY e.seq DESC LIMIT $4",
                s = schema.quoted()
            ),
            &[&filter.trigger, &status, &filter.before, &limit],
        )
        .await
        .map_err(|e| Error::query("listing events", e))?;
    Ok(rows.iter().map(|r| record(r, salt, None)).collect())
}

/// One event (with its row images) and every attempt, oldest first; `None` if unknown.
pub async fn show(
    client: &Client,
    schema: &LogSchema,
    salt: u16,
    id: uuid::Uuid,
) -> Result<Option<(EventRecord, Vec<AttemptRecord>)>, Error> {
    let Some(seq) = pgevents_event::seq_from_id(id) else {
        return Ok(None);
    };
    let row = client
        .query_opt(
            &format!(
                "SELECT {EVENT_COLUMNS}, e.old_row::text, e.new_row::text
                   FROM {s}.event e JOIN {s}.trigger t ON t.id = e.trigger_id WHERE e.seq = $1",
                s = schema.quoted()
            ),
            &[&seq],
        )
        .await
        .map_err(|e| Error::query("reading an event", e))?;
    let Some(row) = row else { return Ok(None) };
    let event = record(&row, salt, Some((row.get(13), row.get(14))));
    if event.id != id {
        return Ok(None);
    }
    let rows = client
        .query(
            &format!(
                "SELECT attempt, started_at, duration_ms, status, error, response
                   FROM {} WHERE event_seq = $1 ORDER BY attempt",
                schema.object("attempt")
            ),
            &[&seq],
        )
        .await
        .map_err(|e| Error::query("reading an event's attempts", e))?;
    let mut attempts: Vec<AttemptRecord> = rows
        .iter()
        .map(|r| AttemptRecord {
            attempt: r.get(0),
            at: Some(r.get(1)),
            duration_ms: Some(r.get(2)),
            status: r.get(3),
            error: r.get(4),
            response: r.get(5),
            delivered: false,
        })
        .collect();
    if event.status == Status::Delivered {
        attempts.push(AttemptRecord {
            attempt: event.attempts,
            at: event.finished_at,
            duration_ms: event.last_duration_ms,
            status: event.last_status,
            error: None,
            response: None,
            delivered: true,
        });
    }
    Ok(Some((event, attempts)))
}

/// The log positions of a trigger's failed events.
pub async fn failed_seqs(
    client: &Client,
    schema: &LogSchema,
    trigger: &str,
) -> Result<Vec<i64>, Error> {
    let rows = client
        .query(
            &format!(
                "SELECT e.seq FROM {s}.event e JOIN {s}.trigger t ON t.id = e.trigger_id
                  WHERE t.name = $1 AND e.status = 'f' ORDER BY e.seq",
                s = schema.quoted()
            ),
            &[&trigger],
        )
        .await
        .map_err(|e| Error::query("finding failed events", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
