//! Delivering events before they are written to the log, in the transaction that writes them.
//!
//! A backfill chunk (which holds the log's ingest lock and logical capture's positions) and a
//! move of captured rows (which holds the ingest lock) know each event before it is in the
//! log, and nothing can come after it in its row's order until they commit. Those that
//! nothing holds back — no pending event of their ordering key or old key in the log, no
//! pending TRUNCATE of their trigger, no other event of the batch on their keys or
//! trigger-wide before or after them — are delivered there ([`DeliverFirst`]) and written
//! once, as delivered: no claim, no settle. An attempt that failed is written with its
//! outcome and retried by the dispatchers like any event (holding back later events of its
//! row); an attempt still under way after the caller's short wait is written leased to the
//! delivering dispatcher, which settles it once the transaction committed; the rest are
//! written pending.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, GenericClient, Statement};

use crate::store::{settle_in, Claimed, Settlement, Verdict};
use crate::{Error, LogSchema};

/// Events whose row images (as the capture holds them) reach this many bytes are written
/// pending without passing through a [`DeliverFirst`]: the writer never holds a big row's
/// payload in memory a second time.
pub const INLINE_BYTES: usize = 64 << 10;

/// A [`DeliverFirst`] offered by a dispatcher to a writer of the log in the same process
/// (logical capture), for as long as the dispatcher delivers: set when it starts, taken
/// back before it drains. Without one, the writer writes every event pending.
#[derive(Clone, Default)]
pub struct Offer(Arc<Mutex<Option<Arc<dyn DeliverFirst>>>>);

impl Offer {
    /// Offers `delivery`, or withdraws the offer (`None`).
    pub fn set(&self, delivery: Option<Arc<dyn DeliverFirst>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = delivery;
    }

    /// The delivery offered now, if any.
    pub fn current(&self) -> Option<Arc<dyn DeliverFirst>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offer")
            .field("offered", &self.current().is_some())
            .finish()
    }
}

/// An event about to be written to the log.
#[derive(Debug, Clone)]
pub struct Unwritten {
    /// Its log position.
    pub seq: i64,
    /// The trigger that captured it.
    pub trigger_id: i32,
    /// The action code.
    pub op: i8,
    /// Its ordering key (see the log schema), `None` when unordered.
    pub row_key: Option<i64>,
    /// The old key of a key-changing UPDATE.
    pub old_key: Option<i64>,
    /// `data.old` as JSON text.
    pub old: Option<String>,
    /// `data.new` as JSON text.
    pub new: Option<String>,
    /// Capture time.
    pub created_at: DateTime<Utc>,
}

impl Unwritten {
    /// The event a statement returned as (position, trigger, op, row key, old key, old image,
    /// new image, capture time): the columns of `take_captured` and of logical capture's
    /// rendering.
    pub fn from_row(row: &tokio_postgres::Row) -> Unwritten {
        Unwritten {
            seq: row.get(0),
            trigger_id: row.get(1),
            op: row.get(2),
            row_key: row.get(3),
            old_key: row.get(4),
            old: row.get(5),
            new: row.get(6),
            created_at: row.get(7),
        }
    }

    /// The event as a claim of its first attempt.
    fn claimed(&self) -> Claimed {
        Claimed {
            seq: self.seq,
            trigger_id: self.trigger_id,
            op: self.op,
            old: self.old.clone(),
            new: self.new.clone(),
            created_at: self.created_at,
            attempts: 1,
            current_retry: 0,
            row_key: self.row_key,
        }
    }

    fn size(&self) -> usize {
        self.old.as_ref().map_or(0, String::len) + self.new.as_ref().map_or(0, String::len)
    }
}

/// What became of an event given to a [`DeliverFirst`].
#[derive(Debug, Clone)]
pub enum Attempted {
    /// The attempt ended (under the claim of the event's position, attempt 1).
    Ended(Settlement),
    /// The attempt at the event at this position is still under way: it is written leased
    /// to the delivery's owner for [`DeliverFirst::lease`], and its outcome is settled like
    /// any claimed event's once the transaction committed.
    UnderWay(i64),
}

/// What a [`DeliverFirst`] did with the events it was given.
pub struct Delivered {
    /// What became of each event attempted.
    pub attempted: Vec<Attempted>,
    /// Tells the attempts still under way whether the writing transaction committed (the
    /// events are in the log) or not (they are not; their outcomes are moot). Dropped
    /// uncalled, it means "not committed".
    pub finish: Box<dyn FnOnce(bool) + Send>,
}

/// Delivers events before the transaction that writes them commits.
pub trait DeliverFirst: Send + Sync {
    /// The lease owner the attempts are recorded under.
    fn owner(&self) -> i64;

    /// How long an event whose attempt is still under way stays leased (renewed by its
    /// owner while it lives).
    fn lease(&self) -> Duration;

    /// Attempts `events` (each the next of its ordering key), waiting at most `wait` for
    /// the attempts; those it leaves out are written pending, for the dispatchers.
    fn deliver(
        &self,
        events: Vec<Claimed>,
        wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Delivered> + Send + '_>>;
}

/// The statements of [`deliver_and_write`], prepared once on a connection: a trickle of
/// small writes would otherwise have the server parse and plan them for every write.
pub struct Statements {
    schema: LogSchema,
    free: Statement,
    copy: Statement,
}

impl std::fmt::Debug for Statements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statements")
            .field("schema", &self.schema.name())
            .finish_non_exhaustive()
    }
}

impl Statements {
    /// Prepares the statements on `client`'s connection, for the log in `schema`.
    pub async fn prepare(
        client: &impl GenericClient,
        schema: &LogSchema,
    ) -> Result<Statements, Error> {
        let event = schema.object("event");
        let free = client
            .prepare(&format!(
                // Keys are hashed with their trigger: only the events' own triggers'
                // pending events can hold them back. When those have none (the common
                // case: everything delivered), one probe answers for the whole batch.
                "SELECT CASE WHEN g.pending THEN
                          ARRAY(SELECT k FROM unnest($1::int8[]) AS k
                                 WHERE EXISTS (SELECT 1 FROM {event} e
                                                WHERE e.row_key = k AND e.status = 'p')
                                    OR EXISTS (SELECT 1 FROM {event} e
                                                WHERE e.old_key = k AND e.status = 'p'))
                        ELSE '{{}}' END,
                        CASE WHEN g.pending THEN
                          ARRAY(SELECT t FROM unnest($2::int4[]) AS t
                                 WHERE EXISTS (SELECT 1 FROM {event} e
                                                WHERE e.trigger_id = t AND e.status = 'p'
                                                  AND e.op = 'T'))
                        ELSE '{{}}' END,
                        now()
                   FROM (SELECT EXISTS (SELECT 1 FROM {event} e
                                         WHERE e.status = 'p'
                                           AND e.trigger_id = ANY($2::int4[]))) AS g(pending)"
            ))
            .await
            .map_err(|e| {
                Error::query(
                    "preparing the look for pending events (is the log installed and current? run `pgevents install`)",
                    e,
                )
            })?;
        let copy = client
            .prepare(&format!(
                "COPY {event} (seq, trigger_id, op, row_key, old_key, old_row, new_row, created_at,
                               next_attempt_at, size, status, attempts, finished_at, last_status,
                               last_duration_ms, owner, lease_until)
                 FROM STDIN (FORMAT binary)"
            ))
            .await
            .map_err(|e| {
                Error::query(
                    "preparing the write of events (is the log installed and current? run `pgevents install`)",
                    e,
                )
            })?;
        Ok(Statements {
            schema: schema.clone(),
            free,
            copy,
        })
    }
}

/// Delivers with `delivery` (when given) those of `events` that nothing holds back, waiting
/// at most `wait`, and writes them all into the log inside the caller's transaction on `client`,
/// with `statements` prepared on its connection. Returns how many were delivered and, when
/// `delivery` was called, its [`Delivered::finish`], for the caller to call once it knows
/// whether the transaction committed.
pub async fn deliver_and_write(
    client: &Client,
    statements: &Statements,
    events: &[Unwritten],
    delivery: Option<&dyn DeliverFirst>,
    wait: Duration,
) -> Result<(i64, Option<Box<dyn FnOnce(bool) + Send>>), Error> {
    if events.is_empty() {
        return Ok((0, None));
    }
    let (free, now) = match delivery {
        Some(_) => free_to_deliver(client, statements, events).await?,
        // Nothing is attempted, so nothing is stamped with the time.
        None => (Vec::new(), Utc::now()),
    };
    let (Some(delivery), false) = (delivery, free.is_empty()) else {
        write(client, statements, events, &[], None, now).await?;
        return Ok((0, None));
    };
    let delivered = delivery
        .deliver(free.iter().map(|&i| events[i].claimed()).collect(), wait)
        .await;
    // On an error the finish is dropped uncalled: not committed.
    let count = write(
        client,
        statements,
        events,
        &delivered.attempted,
        Some(delivery),
        now,
    )
    .await?;
    Ok((count, Some(delivered.finish)))
}

/// The positions in `events` of those that may be delivered before they are written (see
/// the module's documentation), and the transaction's `now()`.
async fn free_to_deliver(
    client: &Client,
    statements: &Statements,
    events: &[Unwritten],
) -> Result<(Vec<usize>, DateTime<Utc>), Error> {
    let keys_of = |e: &Unwritten| e.row_key.into_iter().chain(e.old_key);
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for key in events.iter().flat_map(keys_of) {
        *seen.entry(key).or_default() += 1;
    }
    let truncated: HashSet<i32> = events
        .iter()
        .filter(|e| e.op == b'T' as i8)
        .map(|e| e.trigger_id)
        .collect();
    let keys: Vec<i64> = seen.keys().copied().collect();
    let triggers: Vec<i32> = events
        .iter()
        .map(|e| e.trigger_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let row = client
        .query_one(&statements.free, &[&keys, &triggers])
        .await
        .map_err(|e| Error::query("looking for pending events of the events to deliver", e))?;
    let held: HashSet<i64> = row.get::<_, Vec<i64>>(0).into_iter().collect();
    let truncating: HashSet<i32> = row.get::<_, Vec<i32>>(1).into_iter().collect();
    let free = events
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            !truncated.contains(&e.trigger_id)
                && !truncating.contains(&e.trigger_id)
                && keys_of(e).all(|k| seen.get(&k) == Some(&1) && !held.contains(&k))
        })
        .map(|(i, _)| i)
        .collect();
    Ok((free, row.get(2)))
}

/// A `json` value already rendered: written as it is (the binary form of `json` is its
/// text; the server checks it as it checks any `json` input).
#[derive(Debug)]
struct Json<'a>(&'a str);

impl ToSql for Json<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON
    }

    to_sql_checked!();
}

/// The column types of [`Statements::copy`], in its order.
const COPY_TYPES: [Type; 17] = [
    Type::INT8,
    Type::INT4,
    Type::CHAR,
    Type::INT8,
    Type::INT8,
    Type::JSON,
    Type::JSON,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::CHAR,
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::INT4,
    Type::INT8,
    Type::TIMESTAMPTZ,
];

/// Writes `events` into the log (`COPY`, which stores a batch's rows a page at a time):
/// delivered, pending after a failed attempt (its outcome recorded as a settle records it),
/// leased to `delivery`'s owner while their attempt is under way, or pending for the
/// dispatchers, as `attempted` says; `now` is the transaction's `now()`, which stamps the
/// attempts (unused when there are none). Returns how many were delivered.
async fn write(
    client: &Client,
    statements: &Statements,
    events: &[Unwritten],
    attempted: &[Attempted],
    delivery: Option<&dyn DeliverFirst>,
    now: DateTime<Utc>,
) -> Result<i64, Error> {
    let (owner, lease) = delivery.map_or((0, Duration::ZERO), |d| (d.owner(), d.lease()));
    let leased_until = chrono::Duration::from_std(lease)
        .ok()
        .and_then(|lease| now.checked_add_signed(lease))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let by_seq: HashMap<i64, &Attempted> = attempted
        .iter()
        .map(|a| match a {
            Attempted::Ended(s) => (s.claim.seq, a),
            Attempted::UnderWay(seq) => (*seq, a),
        })
        .collect();
    let sink = client
        .copy_in(&statements.copy)
        .await
        .map_err(|e| Error::query("writing events into the log", e))?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    let mut writer = std::pin::pin!(writer);
    let (delivered, pending) = (b'd' as i8, b'p' as i8);
    let mut count = 0;
    let mut failures = Vec::new();
    for e in events {
        let size = i32::try_from(e.size()).unwrap_or(i32::MAX);
        let (old, new) = (e.old.as_deref().map(Json), e.new.as_deref().map(Json));
        // Status, attempts, finished_at, last status and duration, owner, lease.
        let (status, attempts, finished_at, last_status, duration, owned, lease_until) =
            match by_seq.get(&e.seq) {
                None => (pending, 0, None, None, None, None, None),
                Some(Attempted::Ended(s)) => {
                    let ms = i32::try_from(s.duration.as_millis()).unwrap_or(i32::MAX);
                    if s.verdict == Verdict::Delivered {
                        count += 1;
                        (delivered, 1, Some(now), s.status, Some(ms), None, None)
                    } else {
                        failures.push(s.clone());
                        (pending, 1, None, s.status, Some(ms), Some(owner), Some(now))
                    }
                }
                Some(Attempted::UnderWay(_)) => (
                    pending,
                    1,
                    None,
                    None,
                    None,
                    Some(owner),
                    Some(leased_until),
                ),
            };
        writer
            .as_mut()
            .write(&[
                &e.seq,
                &e.trigger_id,
                &e.op,
                &e.row_key,
                &e.old_key,
                &old,
                &new,
                &e.created_at,
                &e.created_at,
                &size,
                &status,
                &attempts,
                &finished_at,
                &last_status,
                &duration,
                &owned,
                &lease_until,
            ])
            .await
            .map_err(|e| Error::query("writing events into the log", e))?;
    }
    writer
        .as_mut()
        .finish()
        .await
        .map_err(|e| Error::query("writing events into the log", e))?;
    if !failures.is_empty() {
        settle_in(client, &statements.schema, &failures, owner).await?;
    }
    Ok(count)
}
