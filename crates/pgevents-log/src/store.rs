//! The queries that move events through the log: ingest, claim, settle, renew, release,
//! plus the trigger registry, manual events and redelivery.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient, Statement, ToStatement};

use crate::inline::{self, DeliverFirst, Unwritten};
use crate::{Error, LogSchema};

/// One event claimed for delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The event's log position.
    pub seq: i64,
    /// The trigger that captured it.
    pub trigger_id: i32,
    /// The action code (`I`, `U`, `D`, `T`, `M`).
    pub op: i8,
    /// `to_json(OLD)` text.
    pub old: Option<String>,
    /// `to_json(NEW)` text.
    pub new: Option<String>,
    /// Capture time.
    pub created_at: DateTime<Utc>,
    /// Attempts so far, including this one.
    pub attempts: i32,
    /// Retries this attempt follows, within the current retry budget.
    pub current_retry: i32,
    /// The event's ordering key (see the log schema), `None` when unordered.
    pub row_key: Option<i64>,
}

/// A claim: the event and the attempt it was claimed for. Renewals, releases and outcomes
/// name both, so an outcome of a claim that expired and was taken over (even by this same
/// dispatcher) changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimToken {
    /// The event's log position.
    pub seq: i64,
    /// The attempt number the claim made (the event's `attempts` after the claim).
    pub attempt: i32,
}

impl Claimed {
    /// Bytes of row text this event holds (what the claim's byte budget counts).
    pub fn size(&self) -> usize {
        self.old.as_ref().map_or(0, String::len) + self.new.as_ref().map_or(0, String::len)
    }

    /// The token of this claim.
    pub fn token(&self) -> ClaimToken {
        ClaimToken {
            seq: self.seq,
            attempt: self.attempts,
        }
    }
}

/// What became of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered: the event is done.
    Delivered,
    /// Failed, to be tried again after the delay.
    Retry(Duration),
    /// Failed for good: kept, visible, redeliverable.
    Failed,
}

/// The outcome of one attempt, to be written to the log.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// The claim the attempt was made under.
    pub claim: ClaimToken,
    /// What to do with it.
    pub verdict: Verdict,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration: Duration,
    /// The destination's status code (HTTP).
    pub status: Option<i32>,
    /// The error, for failed attempts.
    pub error: Option<String>,
    /// The start of the destination's answer.
    pub response: Option<String>,
}

impl Settlement {
    /// How long the retry this outcome calls for has still to wait at `now`: a retry
    /// interval runs from the attempt's end, not from when its outcome is written (which a
    /// busy settler or a lost connection may delay). `None` for an outcome that is no retry.
    pub fn retry_left(&self, now: DateTime<Utc>) -> Option<Duration> {
        let Verdict::Retry(after) = self.verdict else {
            return None;
        };
        let since = (now - self.started_at).to_std().unwrap_or(Duration::ZERO);
        Some(after.saturating_sub(since.saturating_sub(self.duration)))
    }
}

/// "Still pending", in the statements that find claimed events by their key (settle, renew,
/// release), written so that it implies no partial index's predicate (`status = 'p'`
/// would): otherwise, with statistics taken while no event was leased, the planner walks
/// the pending events' index filtering on the owner instead of probing the primary key,
/// every pending event per statement (measured: a drain at 15% of its rate beside another
/// trigger's retries). Status is `p`, `d` or `f`.
const PENDING: &str = "e.status NOT IN ('d', 'f')";

/// A connection with the hot-path statements prepared.
pub struct Store {
    client: Client,
    ingest: Statement,
    take: Statement,
    claim: Statement,
    settle: Statement,
    settle_delivered: Statement,
    renew: Statement,
    release: Statement,
    inline: inline::Statements,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Prepares the log's statements on `client`.
    ///
    /// The session plans every execution afresh (`plan_cache_mode = force_custom_plan`):
    /// the log grows from empty to millions of rows between two ANALYZEs, and a generic
    /// plan fixed while it was small stays in use (measured: the settle session took more
    /// than half a core while writers ran; with fresh plans, writer TPS beside a delivering
    /// dispatcher rose from 5,300 to 7,200; see BENCHMARKS.md). Planning costs well under a
    /// millisecond per batch.
    pub async fn open(client: Client, schema: &LogSchema) -> Result<Store, Error> {
        client
            .batch_execute("SET plan_cache_mode = force_custom_plan")
            .await
            .map_err(|e| Error::query("configuring the event log session", e))?;
        let s = schema.quoted();
        let prepare = |sql: String, what: &'static str| {
            let client = &client;
            let context = format!("preparing the {what} statement");
            async move { pgevents_postgres::prepare(client, &sql, &context).await }
        };
        let ingest = prepare(format!("SELECT {s}.ingest($1)"), "ingest").await?;
        let take = prepare(format!("SELECT * FROM {s}.take_captured($1, $2)"), "move").await?;
        let claim = prepare(
            format!("SELECT * FROM {s}.claim($1, $2, $3, $4, $5, $6)"),
            "claim",
        )
        .await?;
        let settle = prepare(settle_sql(s), "settle").await?;
        // The common batch, every attempt delivered: one plain UPDATE, which PostgreSQL
        // plans in half the time of the statement above (0.11 ms against 0.22 ms), and
        // plans at every execution while writers run a dozen outcomes at a time.
        let settle_delivered = prepare(
            format!(
                "UPDATE {s}.event e
                    SET status = 'd', finished_at = now(), owner = NULL, lease_until = NULL,
                        last_status = o.status, last_duration_ms = o.duration_ms,
                        last_error = o.error
                   FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::int4[], $5::text[])
                          AS o(seq, attempt, status, duration_ms, error)
                  WHERE e.seq = o.seq AND e.owner = $6 AND e.attempts = o.attempt
                    AND {PENDING}"
            ),
            "settle (all delivered)",
        )
        .await?;
        let renew = prepare(
            format!(
                "UPDATE {s}.event e SET lease_until = now() + $2::int8 * interval '1 millisecond'
                   FROM unnest($1::int8[], $4::int4[]) AS c(seq, attempt)
                  WHERE e.seq = c.seq AND e.attempts = c.attempt AND e.owner = $3 AND {PENDING}"
            ),
            "renew",
        )
        .await?;
        let release = prepare(
            format!(
                "UPDATE {s}.event e
                    SET owner = NULL, lease_until = NULL,
                        next_attempt_at = least(e.next_attempt_at, now()),
                        attempts = greatest(e.attempts - 1, e.budget_from)
                   FROM unnest($1::int8[], $3::int4[]) AS c(seq, attempt)
                  WHERE e.seq = c.seq AND e.attempts = c.attempt AND e.owner = $2 AND {PENDING}"
            ),
            "release",
        )
        .await?;
        let inline = inline::Statements::prepare(&client, schema).await?;
        Ok(Store {
            inline,
            client,
            ingest,
            take,
            claim,
            settle,
            settle_delivered,
            renew,
            release,
        })
    }

    /// The underlying connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Makes the space of the rows moved out of the capture table reusable, for writers that
    /// never leave it empty long enough to be truncated ([`compact_capture`](Self::compact_capture)):
    /// without it the file grows by every row written until autovacuum next comes by (a
    /// minute by default), and every move reads all of it. `VACUUM` takes no lock writers
    /// wait for; `TRUNCATE false` keeps it from trying to shorten the file, which would;
    /// `SKIP_LOCKED` gives up rather than wait behind autovacuum or another dispatcher's
    /// vacuum. Returns false, doing nothing, when the role may not vacuum the table (it
    /// neither owns it nor has the owner's privileges): PostgreSQL would only warn in its
    /// log. Outside a transaction only.
    pub async fn vacuum_capture(&self, schema: &LogSchema) -> Result<bool, Error> {
        let capture = schema.object("capture");
        let may = self
            .client
            .query_one(
                "SELECT coalesce(pg_has_role(c.relowner, 'USAGE'), false)
                   FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass",
                &[&capture],
            )
            .await
            .map_err(|e| Error::query("looking up the capture table's owner", e))?
            .get::<_, bool>(0);
        if may {
            self.client
                .batch_execute(&format!(
                    "VACUUM (TRUNCATE false, SKIP_LOCKED true) {capture}"
                ))
                .await
                .map_err(|e| Error::query("vacuuming the capture table", e))?;
        }
        Ok(may)
    }

    /// Gives the capture table's empty pages back once a big backlog has passed through it
    /// (every ingest reads the whole file): truncates it if it is empty and its lock can be
    /// had within 20 ms; returns whether it did.
    pub async fn compact_capture(&self, schema: &LogSchema) -> Result<bool, Error> {
        let row = self
            .client
            .query_one(
                &format!("SELECT {}()", schema.object("compact_capture")),
                &[],
            )
            .await
            .map_err(|e| Error::query("compacting the capture table", e))?;
        Ok(row.get(0))
    }

    /// Moves up to `max_rows` captured rows into the event log; returns how many moved.
    pub async fn ingest(&self, max_rows: i32) -> Result<i32, Error> {
        let row = self
            .client
            .query_one(&self.ingest, &[&max_rows])
            .await
            .map_err(|e| Error::query("moving captured rows into the event log", e))?;
        Ok(row.get(0))
    }

    /// Moves up to `max_rows` captured rows into the event log in one transaction, as
    /// [`ingest`](Self::ingest) does, but delivers first, with `delivery`, those that nothing
    /// holds back among the rows whose images are under `inline_bytes` (waiting at most
    /// `wait` for the attempts) and writes them as delivered ([`crate::inline`]); bigger
    /// rows are written pending by the database itself. Returns how many moved, and how many
    /// of those were delivered (the rest were written pending, failed, or leased to
    /// `delivery` while their attempts go on).
    pub async fn move_delivering(
        &self,
        max_rows: i32,
        inline_bytes: i32,
        delivery: &dyn DeliverFirst,
        wait: Duration,
    ) -> Result<(i32, i64), Error> {
        // The look for pending events plans the same way whatever the log's size: a
        // generic plan spares planning it at every move of a trickle. Set with the BEGIN,
        // whether rows turn up or not: a round trip of its own cost more than the setting.
        if let Err(e) = self
            .client
            .batch_execute("BEGIN; SET LOCAL plan_cache_mode = auto")
            .await
        {
            // The BEGIN may have opened the transaction the setting then failed in.
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(Error::query("starting a move of captured rows", e));
        }
        let moved = async {
            let rows = self
                .client
                .query(&self.take, &[&max_rows, &inline_bytes])
                .await
                .map_err(|e| Error::query("moving captured rows into the event log", e))?;
            let events: Vec<Unwritten> = rows
                .iter()
                .filter(|r| r.get::<_, bool>(8))
                .map(Unwritten::from_row)
                .collect();
            let (delivered, finish) = inline::deliver_and_write(
                &self.client,
                &self.inline,
                &events,
                Some(delivery),
                wait,
            )
            .await?;
            let moved = i32::try_from(rows.len()).unwrap_or(i32::MAX);
            Ok::<_, Error>((moved, delivered, finish))
        }
        .await;
        match moved {
            Ok((moved, delivered, finish)) => {
                let committed = self.client.batch_execute("COMMIT").await;
                if let Some(finish) = finish {
                    finish(committed.is_ok());
                }
                committed.map_err(|e| Error::query("committing a move of captured rows", e))?;
                Ok((moved, delivered))
            }
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    /// Claims up to `limits[i]` due events of trigger `triggers[i]`, `max_events` in all
    /// (earlier triggers first), and no more once `max_bytes` of row text are claimed (the
    /// first event always is), for `owner`, leased for `lease`; each trigger's due events
    /// are walked apart from the others'.
    ///
    /// An event is due when pending, its time has come, and no earlier pending event holds
    /// it back: one of the same row (or either key of a key-changing UPDATE), or a TRUNCATE
    /// of its table; a TRUNCATE waits for every earlier event of its table.
    pub async fn claim(
        &self,
        triggers: &[i32],
        limits: &[i32],
        max_events: i64,
        max_bytes: i64,
        lease: Duration,
        owner: i64,
    ) -> Result<Vec<Claimed>, Error> {
        let rows = self
            .client
            .query(
                &self.claim,
                &[
                    &triggers,
                    &limits,
                    &max_events,
                    &max_bytes,
                    &millis(lease),
                    &owner,
                ],
            )
            .await
            .map_err(|e| Error::query("claiming due events", e))?;
        let mut claimed: Vec<Claimed> = rows
            .into_iter()
            .map(|r| Claimed {
                seq: r.get(0),
                trigger_id: r.get(1),
                op: r.get(2),
                old: r.get(3),
                new: r.get(4),
                created_at: r.get(5),
                attempts: r.get(6),
                current_retry: r.get(7),
                row_key: r.get(8),
            })
            .collect();
        claimed.sort_by_key(|c| c.seq);
        Ok(claimed)
    }

    /// Writes the outcomes of attempts made under `owner`'s lease; returns how many events
    /// were still under the claims the attempts were made for (the others were taken over
    /// and are left alone). Errors and response excerpts are stored as text PostgreSQL
    /// accepts whatever the destination answered (NUL characters replaced).
    pub async fn settle(&self, outcomes: &[Settlement], owner: i64) -> Result<i64, Error> {
        if outcomes.iter().all(|o| o.verdict == Verdict::Delivered) {
            // What every outcome records; a batch of deliveries needs no more.
            let c = Common::of(outcomes);
            let settled = self
                .client
                .execute(
                    &self.settle_delivered,
                    &[&c.seq, &c.attempt, &c.status, &c.duration, &c.error, &owner],
                )
                .await
                .map_err(|e| Error::query("recording delivery outcomes", e))?;
            return Ok(i64::try_from(settled).unwrap_or(i64::MAX));
        }
        settle_with(&self.client, &self.settle, outcomes, owner).await
    }

    /// Extends the leases of `claims` still held by `owner`.
    pub async fn renew(
        &self,
        claims: &[ClaimToken],
        lease: Duration,
        owner: i64,
    ) -> Result<u64, Error> {
        let (seqs, attempts) = split(claims);
        self.client
            .execute(&self.renew, &[&seqs, &millis(lease), &owner, &attempts])
            .await
            .map_err(|e| Error::query("renewing leases", e))
    }

    /// Gives claimed events back (undelivered, due now), e.g. at shutdown.
    pub async fn release(&self, claims: &[ClaimToken], owner: i64) -> Result<u64, Error> {
        let (seqs, attempts) = split(claims);
        self.client
            .execute(&self.release, &[&seqs, &owner, &attempts])
            .await
            .map_err(|e| Error::query("releasing claimed events", e))
    }
}

/// The parameter arrays every settle statement takes.
struct Common<'a> {
    seq: Vec<i64>,
    attempt: Vec<i32>,
    status: Vec<Option<i32>>,
    duration: Vec<i32>,
    error: Vec<Option<std::borrow::Cow<'a, str>>>,
}

impl<'a> Common<'a> {
    fn of(outcomes: &'a [Settlement]) -> Common<'a> {
        Common {
            seq: column(outcomes, |o| o.claim.seq),
            attempt: column(outcomes, |o| o.claim.attempt),
            status: column(outcomes, |o| o.status),
            duration: column(outcomes, |o| {
                i32::try_from(o.duration.as_millis()).unwrap_or(i32::MAX)
            }),
            error: column(outcomes, |o| o.error.as_deref().map(storable)),
        }
    }
}

/// Writes `outcomes` of attempts made under `owner`'s lease on `client` with `statement`
/// ([`settle_sql`], prepared or not); returns how many events were still under the claims
/// the attempts were made for.
async fn settle_with<S>(
    client: &impl GenericClient,
    statement: &S,
    outcomes: &[Settlement],
    owner: i64,
) -> Result<i64, Error>
where
    S: ?Sized + ToStatement + Sync + Send,
{
    let c = Common::of(outcomes);
    let now = Utc::now();
    let (verdict, delay): (Vec<i16>, Vec<i64>) = outcomes
        .iter()
        .map(|o| match o.verdict {
            Verdict::Delivered => (0, 0),
            Verdict::Retry(_) => (1, millis(o.retry_left(now).unwrap_or_default())),
            Verdict::Failed => (2, 0),
        })
        .unzip();
    let response = column(outcomes, |o| o.response.as_deref().map(storable));
    let started = column(outcomes, |o| o.started_at);
    let row = client
        .query_one(
            statement,
            &[
                &c.seq,
                &verdict,
                &delay,
                &c.status,
                &c.duration,
                &c.error,
                &response,
                &started,
                &owner,
                &c.attempt,
            ],
        )
        .await
        .map_err(|e| Error::query("recording delivery outcomes", e))?;
    Ok(row.get(0))
}

/// Writes `outcomes` of attempts made under `owner`'s lease, inside the caller's transaction
/// `client` (see [`Store::settle`]).
pub(crate) async fn settle_in(
    client: &impl GenericClient,
    schema: &LogSchema,
    outcomes: &[Settlement],
    owner: i64,
) -> Result<i64, Error> {
    settle_with(
        client,
        settle_sql(schema.quoted()).as_str(),
        outcomes,
        owner,
    )
    .await
}

/// The statement recording any outcomes ([`settle_with`]'s parameters), on log schema `s`
/// (quoted).
fn settle_sql(s: &str) -> String {
    format!(
            "WITH o AS (
               SELECT * FROM unnest($1::int8[], $2::int2[], $3::int8[], $4::int4[],
                                    $5::int4[], $6::text[], $7::text[], $8::timestamptz[],
                                    $10::int4[])
                 AS o(seq, verdict, delay_ms, status, duration_ms, error, response, started_at,
                      attempt)),
             upd AS (
               UPDATE {s}.event e
                  SET status = CASE o.verdict WHEN 0 THEN 'd' WHEN 2 THEN 'f' ELSE 'p' END::\"char\",
                      next_attempt_at = CASE WHEN o.verdict = 1
                          THEN now() + o.delay_ms * interval '1 millisecond'
                          ELSE e.next_attempt_at END,
                      finished_at = CASE WHEN o.verdict = 1 THEN NULL ELSE now() END,
                      owner = NULL, lease_until = NULL, last_status = o.status,
                      last_duration_ms = o.duration_ms, last_error = o.error
                 FROM o WHERE e.seq = o.seq AND e.owner = $9 AND e.attempts = o.attempt
                   AND {PENDING}
               RETURNING e.seq, e.attempts),
             log AS (
               INSERT INTO {s}.attempt (event_seq, attempt, started_at, duration_ms, status, error, response)
               SELECT o.seq, upd.attempts, o.started_at, o.duration_ms, o.status, o.error, o.response
                 FROM o JOIN upd ON upd.seq = o.seq
                WHERE o.verdict <> 0
               ON CONFLICT DO NOTHING)
             SELECT count(*) FROM upd"
    )
}

fn split(claims: &[ClaimToken]) -> (Vec<i64>, Vec<i32>) {
    claims.iter().map(|c| (c.seq, c.attempt)).unzip()
}

/// One parameter array of a settle: `f` of each outcome.
fn column<'a, T>(outcomes: &'a [Settlement], f: impl Fn(&'a Settlement) -> T) -> Vec<T> {
    outcomes.iter().map(f).collect()
}

/// `text` as PostgreSQL's `text` accepts it: NUL characters (which a binary response body
/// or a handler's error may hold) become U+FFFD. Borrowed when there is none.
fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// A registered trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerRow {
    /// Its id in the log.
    pub id: i32,
    /// Its configured name.
    pub name: String,
    /// The watched table's schema.
    pub schema: String,
    /// The watched table.
    pub table: String,
    /// Since when install has removed its capture because the config no longer names it.
    pub removed_at: Option<DateTime<Utc>>,
}

/// Registers (or updates) a trigger by name and returns its id.
pub async fn register_trigger(
    client: &impl tokio_postgres::GenericClient,
    schema: &LogSchema,
    name: &str,
    table: &pgevents_postgres::QualifiedName,
    definition: &serde_json::Value,
) -> Result<i32, Error> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO {} (name, schema_name, table_name, definition) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET schema_name = excluded.schema_name,
                   table_name = excluded.table_name, definition = excluded.definition,
                   removed_at = NULL, updated_at = now()
                 RETURNING id",
                schema.object("trigger")
            ),
            &[&name, &table.schema, &table.name, &definition],
        )
        .await
        .map_err(|e| Error::query(format!("registering trigger {name:?}"), e))?;
    Ok(row.get(0))
}

/// Every registered trigger.
pub async fn triggers(client: &Client, schema: &LogSchema) -> Result<Vec<TriggerRow>, Error> {
    let rows = client
        .query(
            &format!(
                "SELECT id, name, schema_name, table_name, removed_at FROM {} ORDER BY name",
                schema.object("trigger")
            ),
            &[],
        )
        .await
        .map_err(|e| Error::query("reading the registered triggers", e))?;
    Ok(rows
        .into_iter()
        .map(|r| TriggerRow {
            id: r.get(0),
            name: r.get(1),
            schema: r.get(2),
            table: r.get(3),
            removed_at: r.get(4),
        })
        .collect())
}

/// Records that trigger `id` is no longer configured (its capture was removed; its events
/// stay). Registering it again clears the mark.
pub async fn mark_removed(
    client: &impl tokio_postgres::GenericClient,
    schema: &LogSchema,
    id: i32,
) -> Result<(), Error> {
    client
        .execute(
            &format!(
                "UPDATE {} SET removed_at = coalesce(removed_at, now()) WHERE id = $1",
                schema.object("trigger")
            ),
            &[&id],
        )
        .await
        .map_err(|e| Error::query("marking a trigger as removed", e))?;
    Ok(())
}

/// Writes a manual event (action `MANUAL`, `new` = `data`) for trigger `trigger_id` and wakes
/// dispatchers; returns the event's log position and capture time.
pub async fn invoke(
    client: &Client,
    schema: &LogSchema,
    trigger_id: i32,
    data: &serde_json::Value,
) -> Result<(i64, DateTime<Utc>), Error> {
    let text = data.to_string();
    let row = client
        .query_one(
            &format!(
                "WITH e AS (INSERT INTO {} (trigger_id, op, new_row) VALUES ($1, 'M', $2::text::json)
                            RETURNING seq, created_at)
                 SELECT e.seq, e.created_at FROM e CROSS JOIN pg_notify($3, '')",
                schema.object("event")
            ),
            &[&trigger_id, &text, &crate::wake_channel(schema)],
        )
        .await
        .map_err(|e| Error::query("writing a manual event", e))?;
    Ok((row.get(0), row.get(1)))
}

/// Makes events pending and due now again, with a fresh retry budget; returns how many.
/// Events in flight are left alone.
pub async fn redeliver(client: &Client, schema: &LogSchema, seqs: &[i64]) -> Result<i64, Error> {
    let row = client
        .query_one(
            &format!(
                "WITH r AS (UPDATE {} SET status = 'p', next_attempt_at = now(), owner = NULL, lease_until = NULL,
                        finished_at = NULL, budget_from = attempts
                  WHERE seq = ANY($1::int8[]) AND (status <> 'p' OR owner IS NULL)
                  RETURNING 1)
                 SELECT count(*) FROM r CROSS JOIN pg_notify($2, '')",
                schema.object("event")
            ),
            &[&seqs, &crate::wake_channel(schema)],
        )
        .await
        .map_err(|e| Error::query("redelivering events", e))?;
    Ok(row.get(0))
}

/// Removes delivered events older than `delivered` and failed events older than `failed`
/// (by when they finished), with their attempts, at most `batch` at a time; returns how
/// many were removed. Call it repeatedly: each call is one short transaction, so the log
/// never sees one huge DELETE. It scans only the log's old region (events captured before
/// the younger cutoff), so it costs little when there is nothing to remove.
pub async fn purge(
    client: &Client,
    schema: &LogSchema,
    delivered: Duration,
    failed: Duration,
    batch: i64,
) -> Result<u64, Error> {
    let row = client
        .query_one(
            &format!(
                "WITH bound AS (
                   SELECT coalesce((SELECT seq FROM {s}.event
                                     WHERE created_at >= now() - least($1::int8, $2::int8) * interval '1 millisecond'
                                     ORDER BY seq LIMIT 1), 9223372036854775807) AS upper),
                 doomed AS (
                   SELECT e.seq FROM {s}.event e, bound
                    WHERE e.seq < bound.upper
                      AND ((e.status = 'd' AND e.finished_at < now() - $1::int8 * interval '1 millisecond')
                        OR (e.status = 'f' AND e.finished_at < now() - $2::int8 * interval '1 millisecond'))
                    ORDER BY e.seq LIMIT $3::int8
                    FOR UPDATE SKIP LOCKED),
                 attempts AS (
                   DELETE FROM {s}.attempt a USING doomed WHERE a.event_seq = doomed.seq),
                 gone AS (
                   DELETE FROM {s}.event e USING doomed WHERE e.seq = doomed.seq RETURNING 1)
                 SELECT count(*) FROM gone",
                s = schema.quoted()
            ),
            &[&millis(delivered), &millis(failed), &batch],
        )
        .await
        .map_err(|e| Error::query("removing old events (retention)", e))?;
    Ok(row.get::<_, i64>(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settlement(verdict: Verdict, started_at: DateTime<Utc>, duration: Duration) -> Settlement {
        Settlement {
            claim: ClaimToken { seq: 1, attempt: 1 },
            verdict,
            started_at,
            duration,
            status: None,
            error: None,
            response: None,
        }
    }

    #[test]
    fn a_retry_waits_from_the_attempts_end_whenever_its_outcome_is_written() {
        let start = Utc::now();
        let ms = Duration::from_millis;
        let failed = settlement(Verdict::Retry(ms(300)), start, ms(50));
        // Written as the attempt ends: the whole interval is left.
        assert_eq!(failed.retry_left(start + ms(50)), Some(ms(300)));
        // Written 200 ms later (a busy settler): only what is left of it.
        assert_eq!(failed.retry_left(start + ms(250)), Some(ms(100)));
        // Written after the interval ran out: due at once.
        assert_eq!(failed.retry_left(start + ms(2_000)), Some(Duration::ZERO));
        // A clock that went back counts as no time passed.
        assert_eq!(failed.retry_left(start - ms(1_000)), Some(ms(300)));
        let delivered = settlement(Verdict::Delivered, start, ms(50));
        assert_eq!(delivered.retry_left(start), None);
    }
}
