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

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Statement};

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
    write: Statement,
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
                "SELECT ARRAY(SELECT k FROM unnest($1::int8[]) AS k
                               WHERE EXISTS (SELECT 1 FROM {event} e
                                              WHERE e.row_key = k AND e.status = 'p')
                                  OR EXISTS (SELECT 1 FROM {event} e
                                              WHERE e.old_key = k AND e.status = 'p')),
                        ARRAY(SELECT t FROM unnest($2::int4[]) AS t
                               WHERE EXISTS (SELECT 1 FROM {event} e
                                              WHERE e.trigger_id = t AND e.status = 'p'
                                                AND e.op = 'T'))"
            ))
            .await
            .map_err(|e| {
                Error::query(
                    "preparing the look for pending events (is the log installed and current? run `pgevents install`)",
                    e,
                )
            })?;
        let write = client
            .prepare(&format!(
                "INSERT INTO {event}
                     (seq, trigger_id, op, row_key, old_key, old_row, new_row, created_at,
                      next_attempt_at, size, status, attempts, finished_at, last_status,
                      last_duration_ms, owner, lease_until)
                 SELECT r.seq, r.trigger_id, r.op, r.row_key, r.old_key, r.old_row::json,
                        r.new_row::json, r.created_at, r.created_at, r.size,
                        CASE WHEN r.outcome = 1 THEN 'd' ELSE 'p' END::\"char\",
                        CASE WHEN r.outcome = 0 THEN 0 ELSE 1 END,
                        CASE WHEN r.outcome = 1 THEN now() END,
                        r.status, r.duration_ms,
                        CASE WHEN r.outcome IN (2, 3) THEN $1::int8 END,
                        CASE r.outcome WHEN 2 THEN now()
                                       WHEN 3 THEN now() + $2::int8 * interval '1 millisecond' END
                   FROM unnest($3::int8[], $4::int4[], $5::\"char\"[], $6::int8[], $7::int8[],
                               $8::text[], $9::text[], $10::int4[], $11::timestamptz[],
                               $12::int2[], $13::int4[], $14::int4[])
                     AS r(seq, trigger_id, op, row_key, old_key, old_row, new_row, size,
                          created_at, outcome, status, duration_ms)"
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
            write,
        })
    }
}

/// Delivers with `delivery` (when given) those of `events` that nothing holds back, waiting
/// at most `wait`, and writes them all into the log inside the caller's transaction
/// `client`, with `statements` prepared on its connection. Returns how many were delivered and, when `delivery` was called, its
/// [`Delivered::finish`], for the caller to call once it knows whether the transaction
/// committed.
pub async fn deliver_and_write(
    client: &impl GenericClient,
    statements: &Statements,
    events: &[Unwritten],
    delivery: Option<&dyn DeliverFirst>,
    wait: Duration,
) -> Result<(i64, Option<Box<dyn FnOnce(bool) + Send>>), Error> {
    if events.is_empty() {
        return Ok((0, None));
    }
    let free = match delivery {
        Some(_) => free_to_deliver(client, statements, events).await?,
        None => Vec::new(),
    };
    let (Some(delivery), false) = (delivery, free.is_empty()) else {
        write(client, statements, events, &[], None).await?;
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
    )
    .await?;
    Ok((count, Some(delivered.finish)))
}

/// The positions in `events` of those that may be delivered before they are written: see
/// the module's documentation.
async fn free_to_deliver(
    client: &impl GenericClient,
    statements: &Statements,
    events: &[Unwritten],
) -> Result<Vec<usize>, Error> {
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
    Ok(events
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            !truncated.contains(&e.trigger_id)
                && !truncating.contains(&e.trigger_id)
                && keys_of(e).all(|k| seen.get(&k) == Some(&1) && !held.contains(&k))
        })
        .map(|(i, _)| i)
        .collect())
}

/// Writes `events` into the log: delivered, pending after a failed attempt (its outcome
/// recorded as a settle records it), leased to `delivery`'s owner while their attempt is
/// under way, or pending for the dispatchers, as `attempted` says. Returns how many were
/// delivered.
async fn write(
    client: &impl GenericClient,
    statements: &Statements,
    events: &[Unwritten],
    attempted: &[Attempted],
    delivery: Option<&dyn DeliverFirst>,
) -> Result<i64, Error> {
    let (owner, lease) = delivery.map_or((0, Duration::ZERO), |d| (d.owner(), d.lease()));
    let by_seq: HashMap<i64, &Attempted> = attempted
        .iter()
        .map(|a| match a {
            Attempted::Ended(s) => (s.claim.seq, a),
            Attempted::UnderWay(seq) => (*seq, a),
        })
        .collect();
    let ended = |e: &Unwritten| match by_seq.get(&e.seq) {
        Some(Attempted::Ended(s)) => Some(s),
        _ => None,
    };
    // 0: not attempted; 1: delivered; 2: failed, outcome recorded below; 3: under way.
    let outcome: Vec<i16> = events
        .iter()
        .map(|e| match by_seq.get(&e.seq) {
            None => 0,
            Some(Attempted::Ended(s)) if s.verdict == Verdict::Delivered => 1,
            Some(Attempted::Ended(_)) => 2,
            Some(Attempted::UnderWay(_)) => 3,
        })
        .collect();
    let status: Vec<Option<i32>> = events
        .iter()
        .map(|e| ended(e).and_then(|s| s.status))
        .collect();
    let duration: Vec<Option<i32>> = events
        .iter()
        .map(|e| ended(e).map(|s| i32::try_from(s.duration.as_millis()).unwrap_or(i32::MAX)))
        .collect();
    let seq: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let trigger: Vec<i32> = events.iter().map(|e| e.trigger_id).collect();
    let op: Vec<i8> = events.iter().map(|e| e.op).collect();
    let row_key: Vec<Option<i64>> = events.iter().map(|e| e.row_key).collect();
    let old_key: Vec<Option<i64>> = events.iter().map(|e| e.old_key).collect();
    let old: Vec<Option<&str>> = events.iter().map(|e| e.old.as_deref()).collect();
    let new: Vec<Option<&str>> = events.iter().map(|e| e.new.as_deref()).collect();
    let size: Vec<i32> = events
        .iter()
        .map(|e| i32::try_from(e.size()).unwrap_or(i32::MAX))
        .collect();
    let created_at: Vec<DateTime<Utc>> = events.iter().map(|e| e.created_at).collect();
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    client
        .execute(
            &statements.write,
            &[
                &owner,
                &lease_ms,
                &seq,
                &trigger,
                &op,
                &row_key,
                &old_key,
                &old,
                &new,
                &size,
                &created_at,
                &outcome,
                &status,
                &duration,
            ],
        )
        .await
        .map_err(|e| Error::query("writing events into the log", e))?;
    let failed: Vec<Settlement> = events
        .iter()
        .filter_map(ended)
        .filter(|s| s.verdict != Verdict::Delivered)
        .cloned()
        .collect();
    if !failed.is_empty() {
        settle_in(client, &statements.schema, &failed, owner).await?;
    }
    Ok(outcome.iter().filter(|o| **o == 1).count() as i64)
}
