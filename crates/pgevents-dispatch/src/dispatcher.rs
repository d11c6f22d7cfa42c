//! The dispatcher loop: ingest, claim, deliver, settle — until shutdown, then drain.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgevents_delivery::{DynSink, RetryPolicy};
use pgevents_event::{Action, Event, EventParts};
use pgevents_log::inline::Offer;
use pgevents_log::store::{ClaimToken, Claimed, Settlement, Store, Verdict};
use pgevents_log::{Error, LogSchema};
use pgevents_trigger::Trigger;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::breaker::{Allowance, Breakers, TRIP_AFTER};
use crate::deliver;
use crate::inline::Inline;
use crate::wake::Waker;
use crate::Health;

/// A [`Trigger`] as the dispatcher runs it: its id in the log, the names its events carry,
/// its ready sink and its retry policy.
#[derive(Clone)]
pub struct Route {
    pub(crate) trigger_id: i32,
    pub(crate) name: Arc<str>,
    schema: Arc<str>,
    table: Arc<str>,
    pub(crate) sink: Arc<dyn DynSink>,
    pub(crate) retry: RetryPolicy,
}

impl Route {
    /// Routes the events of `trigger`, registered in the log as `trigger_id`, to its
    /// destination, retried under its policy (without one, [`RetryPolicy::default`]).
    pub fn new(trigger_id: i32, trigger: Trigger<Arc<dyn DynSink>>) -> Route {
        Route {
            trigger_id,
            name: trigger.name.into(),
            schema: trigger.table.schema.into(),
            table: trigger.table.name.into(),
            sink: trigger.destination,
            retry: trigger.retry.unwrap_or_default(),
        }
    }

    /// The trigger's id in the log.
    pub fn trigger_id(&self) -> i32 {
        self.trigger_id
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("trigger_id", &self.trigger_id)
            .field("name", &self.name)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Default number of events claimed at once.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Default bound on events in flight (claimed, not yet settled).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1000;
/// Default bound on the row text of events in flight. A claim stops once it reaches what
/// is left of it (taking at least one event): memory stays bounded by bytes as well as by
/// count, and a backlog of big rows is delivered a few at a time. Typical rows (a few kB)
/// never reach it before [`DEFAULT_MAX_IN_FLIGHT`].
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 4 << 20;
/// Default lease: how soon another dispatcher takes over the events of one that died.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Default time between looks at the log when no notification arrives.
pub const DEFAULT_IDLE_POLL: Duration = Duration::from_secs(1);
/// Default time shutdown waits for in-flight deliveries before releasing them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How many captured rows one ingest moves. Each ingest reads the whole capture table (it
/// has no index, to keep writers fast), so big batches keep a large backlog's cost linear;
/// ingests run beside claims, on their own connection, so a long one stalls nothing.
const INGEST_BATCH: i32 = 50_000;
/// How many captured rows a move that delivers them takes at most ([`Store::move_delivering`]):
/// after a move of fewer, the next one delivers; after a full one, moves run in bulk
/// ([`INGEST_BATCH`]) until a backlog is gone.
const INLINE_BATCH: i32 = 1000;
/// Captured rows whose images hold this many bytes or more are moved into the log pending,
/// inside the database, never through the dispatcher's memory.
const INLINE_BYTES: i32 = pgevents_log::inline::INLINE_BYTES as i32;
/// How long a move waits for the attempts at the events it delivers: no other move runs
/// meanwhile, so a slow destination's attempts are handed to the settler after this.
const MOVE_WAIT: Duration = Duration::from_millis(5);
/// How long the log must stay empty before a dispatcher sleeps. While it sleeps, every
/// writing transaction sends a NOTIFY, which serialises writers at commit (a NOTIFY per
/// row costs about 70% of INSERT TPS at 8 clients, see BENCHMARKS.md); a dispatcher that
/// slept in every short gap of a steady stream of writes would make writers pay that
/// often. So it sleeps only after a lull, and polls with a short backoff until then.
const SLEEP_AFTER: Duration = Duration::from_millis(250);
/// The pause after a look that claimed less than a batch and moved nothing, or moved and
/// claimed a trickle of at least [`GATHER_FROM`] rows (longer after a bigger one: see
/// [`gather_wait`]). Each look costs the database a claim and an ingest whatever they find;
/// with writers running, the dispatcher's claim, settle and ingest sessions took about 30%,
/// 20% and 20% of a core (sampled with top). The pause adds at most this much latency.
const TRICKLE_WAIT: Duration = Duration::from_millis(1);
/// A look that moved and claimed at least this many captured rows is followed by a pause of
/// [`TRICKLE_WAIT`] or more (fewer: by the next look at once). At 1,000 changes/s a look
/// moves one or two, and a pause would add to every event's latency (measured: p50 2.7 →
/// 4.3 ms); with writers saturating the machine it moves dozens, and the pause cuts the
/// statements per event by a third or more.
const GATHER_FROM: usize = 8;
/// Rows moved per millisecond of pause after a move: the pause grows with the move that
/// came before it, from [`TRICKLE_WAIT`] up to [`GATHER_MAX`].
const GATHER_ROWS_PER_MS: usize = 16;
/// The longest pause after a move. Beside 8 writers a move of 70 rows every 4.5 ms became
/// one of 150 every 9 ms with a 5 ms pause: the listener's CPU per event (its own and its
/// sessions' in PostgreSQL) fell by 5–26% in two pairs of runs, and by a median of 25%
/// with this bound in three (BENCHMARKS.md); each move has a fixed cost (its transaction,
/// five round trips, a read of the capture table's file), and the rest grows with its rows.
const GATHER_MAX: Duration = Duration::from_millis(4);
/// How long a look in a trickle waits for the move under way before claiming beside it.
const TRICKLE_INGEST_WAIT: Duration = Duration::from_millis(5);
/// How long after a claim that found nothing a look in a trickle may skip its claim: when
/// the move it waited for delivered every row it moved (it wrote nothing pending), every
/// move since that claim did too, no retry fell due and nothing settled, then nothing this
/// dispatcher moved or held can have come due, and a claim could find only events pending
/// from elsewhere (another dispatcher's released or expired claims, manual events, a
/// backfill's held-back rows). Those wait at most this long after the last claim, plus one
/// look. Beside 8 writers the claims that found nothing cost 2.2–2.4 µs per event
/// (BENCHMARKS.md).
const CLAIM_AT_LEAST_EVERY: Duration = Duration::from_millis(25);
/// The first wait between looks at the log once they stop finding work; it doubles.
const AWAKE_POLL_MIN: Duration = Duration::from_millis(2);
/// The longest wait between looks at the log while awake.
const AWAKE_POLL_MAX: Duration = Duration::from_millis(25);
/// The longest wait between looks while another dispatcher sleeps on the wake-up lock (it
/// is woken by writers and this one is only its backup) or a writer is mid-transaction.
const IDLE_POLL_MAX: Duration = Duration::from_millis(100);
/// Rows moved through the capture table after which, once it is empty, its file is
/// truncated (see `pgevents_log::store::Store::compact_capture`).
const COMPACT_AFTER: u64 = 20_000;
/// The least time between two attempts to compact the capture table.
const COMPACT_EVERY: Duration = Duration::from_secs(1);
/// Rows moved through the capture table after which, if it is not empty, the space they
/// took is made reusable (see `pgevents_log::store::Store::vacuum_capture`): writers that
/// never leave it empty would otherwise grow its file until autovacuum comes by, and each
/// move reads the whole file (measured beside 8 writers: the move's DELETE 10.3 µs per event
/// over an 8 s run, 5.1 with the vacuum; a move of 60 rows 0.28 ms from an empty file,
/// 0.6 ms beside 19,000 moved rows' dead space).
const VACUUM_AFTER: u64 = 5_000;
/// The least time between two vacuums of the capture table.
const VACUUM_EVERY: Duration = Duration::from_secs(1);
/// How many outcomes one settle statement writes.
const SETTLE_BATCH: usize = 1000;
/// A settle waits for more outcomes while it has fewer than this...
const SETTLE_ENOUGH: usize = 100;
/// ...for at most this long after its first. Settling later holds back only the next event
/// of each settled row and the in-flight slots, never a delivery in progress.
const SETTLE_GATHER: Duration = Duration::from_millis(2);
/// How often a dispatcher whose triggers are captured from the WAL looks at the capture
/// table (see [`Dispatcher::with_wal_capture`]).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Tuning of a [`Dispatcher`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Events claimed at once.
    pub batch_size: usize,
    /// Events in flight at most; memory is bounded by this, whatever the backlog.
    pub max_in_flight: usize,
    /// Row text in flight at most, in bytes (one event bigger than this goes alone).
    pub max_in_flight_bytes: usize,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// Longest wait between looks at the log when idle.
    pub idle_poll: Duration,
    /// How long shutdown waits for in-flight deliveries; their leases are renewed meanwhile.
    pub drain_timeout: Duration,
    /// Whether writers wake a sleeping dispatcher with a `NOTIFY` (the capture functions
    /// send one only while a dispatcher sleeps). When false, the dispatcher never sleeps on
    /// the wake-up lock: it looks at the log every `idle_poll` while idle instead.
    pub notify: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_size: DEFAULT_BATCH_SIZE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            lease: DEFAULT_LEASE,
            idle_poll: DEFAULT_IDLE_POLL,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            notify: true,
        }
    }
}

/// Delivers the events of a set of triggers from one event log.
pub struct Dispatcher {
    url: String,
    schema: LogSchema,
    salt: u16,
    routes: HashMap<i32, Route>,
    options: Options,
    owner: i64,
    health: Health,
    /// Whether its triggers' events reach the log from the WAL, not the capture table.
    wal_capture: bool,
    /// Where its delivery is offered to a writer of the same process while it runs.
    offer: Offer,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("schema", &self.schema)
            .field("routes", &self.routes.len())
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// State shared by the claim loop, delivery tasks, the settler and the lease keeper.
pub(crate) struct Shared {
    /// Claims not yet settled.
    pub(crate) in_flight: Mutex<InFlight>,
    /// Signalled after each settled batch: capacity is free, later events of a row may be due.
    settled: Notify,
    /// Settled batches so far.
    settles: AtomicU64,
    /// When the retries this dispatcher scheduled, and its breakers' probes, fall due
    /// (earliest first), so an idle loop wakes for them. One entry per retry verdict or
    /// opened breaker, dropped once due: at most the retries of the longest retry interval,
    /// and a failing destination's breaker keeps those to a trickle.
    pub(crate) retries: Mutex<BinaryHeap<Reverse<Instant>>>,
    /// Each trigger's circuit breaker.
    pub(crate) breakers: Mutex<Breakers>,
}

impl Shared {
    /// Tells `trigger_id`'s breaker how an attempt went, as soon as it ended (not when the
    /// outcome is written: a dead destination is found within a claim); when that opens the
    /// breaker, the claim loop wakes for the probe.
    pub(crate) fn record_outcome(&self, trigger_id: i32, verdict: &Verdict) {
        let delivered = match verdict {
            Verdict::Delivered => true,
            Verdict::Retry(_) => false,
            Verdict::Failed => return,
        };
        let probe_at = lock(&self.breakers).record(trigger_id, delivered, Instant::now());
        if let Some(at) = probe_at {
            lock(&self.retries).push(Reverse(at));
        }
    }

    /// Schedules the claim loop's look for a retry due in `left` (an outcome's
    /// [`Settlement::retry_left`]), if any.
    pub(crate) fn schedule_retry(&self, left: Option<Duration>) {
        if let Some(left) = left {
            lock(&self.retries).push(Reverse(Instant::now() + left));
        }
    }
}

pub(crate) struct Done {
    pub(crate) settlement: Settlement,
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// The claims a dispatcher holds and has not settled yet.
#[derive(Default)]
pub(crate) struct InFlight {
    /// Each claim, with its trigger, its size and when its lease was last taken or renewed.
    leases: HashMap<ClaimToken, Lease>,
    /// How many claims each trigger holds.
    per_trigger: HashMap<i32, usize>,
    /// The row text the claims hold, in bytes.
    bytes: usize,
}

struct Lease {
    trigger_id: i32,
    size: usize,
    renewed: Instant,
}

impl InFlight {
    pub(crate) fn insert(&mut self, claim: ClaimToken, trigger_id: i32, size: usize, at: Instant) {
        let lease = Lease {
            trigger_id,
            size,
            renewed: at,
        };
        if let Some(old) = self.leases.insert(claim, lease) {
            self.release(&old);
        }
        *self.per_trigger.entry(trigger_id).or_default() += 1;
        self.bytes += size;
    }

    pub(crate) fn remove(&mut self, claim: &ClaimToken) {
        if let Some(lease) = self.leases.remove(claim) {
            self.release(&lease);
        }
    }

    fn release(&mut self, lease: &Lease) {
        if let Some(n) = self.per_trigger.get_mut(&lease.trigger_id) {
            *n = n.saturating_sub(1);
        }
        self.bytes = self.bytes.saturating_sub(lease.size);
    }

    fn held(&self, trigger_id: i32) -> usize {
        self.per_trigger.get(&trigger_id).copied().unwrap_or(0)
    }

    /// The claims whose lease was last renewed at least `age` before `now`.
    fn older_than(&self, now: Instant, age: Duration) -> Vec<ClaimToken> {
        self.leases
            .iter()
            .filter(|(_, lease)| now.duration_since(lease.renewed) >= age)
            .map(|(claim, _)| *claim)
            .collect()
    }

    fn renewed(&mut self, claims: &[ClaimToken], at: Instant) {
        for claim in claims {
            if let Some(lease) = self.leases.get_mut(claim) {
                lease.renewed = at;
            }
        }
    }
}

/// How many events each trigger may claim now, given `free` slots: every trigger may hold
/// up to `max_in_flight` less what the others still need to reach their reserved share
/// (`max_in_flight / (4 × triggers)` each), so a slow or failing destination can never
/// take every slot, while a trigger that is alone busy may use nearly all of them. A
/// trigger whose breaker is open takes nothing and reserves nothing; one being probed takes
/// one event when none of its events is in flight; one on trial holds at most
/// [`TRIP_AFTER`].
fn claim_limits(
    triggers: &[i32],
    in_flight: &InFlight,
    allowance: impl Fn(i32) -> Allowance,
    free: usize,
    batch: usize,
    max_in_flight: usize,
) -> Vec<i32> {
    let share = max_in_flight / (4 * triggers.len().max(1));
    // Each trigger's allowance, asked once: it is read under the breakers' lock.
    let allowances: Vec<Allowance> = triggers.iter().map(|t| allowance(*t)).collect();
    let shortfall = |t: i32, allowance: Allowance| match allowance {
        Allowance::Closed | Allowance::Trial => share.saturating_sub(in_flight.held(t)),
        Allowance::Probe | Allowance::Shut => 0,
    };
    let total_shortfall: usize = triggers
        .iter()
        .zip(&allowances)
        .map(|(t, a)| shortfall(*t, *a))
        .sum();
    triggers
        .iter()
        .zip(&allowances)
        .map(|(t, a)| {
            let held = in_flight.held(*t);
            let cap = max_in_flight.saturating_sub(total_shortfall - shortfall(*t, *a));
            let limit = cap.saturating_sub(held).min(batch).min(free);
            let limit = match a {
                Allowance::Closed => limit,
                Allowance::Trial => limit.min((TRIP_AFTER as usize).saturating_sub(held)),
                Allowance::Probe if held == 0 => limit.min(1),
                Allowance::Probe | Allowance::Shut => 0,
            };
            i32::try_from(limit).unwrap_or(i32::MAX)
        })
        .collect()
}

impl Dispatcher {
    /// A dispatcher for `routes` (keyed by trigger id) on the log in `schema`.
    pub fn new(
        url: impl Into<String>,
        schema: LogSchema,
        salt: u16,
        routes: Vec<Route>,
        options: Options,
    ) -> Dispatcher {
        Dispatcher {
            url: url.into(),
            schema,
            salt,
            routes: routes.into_iter().map(|r| (r.trigger_id, r)).collect(),
            options,
            owner: rand::random::<i64>().wrapping_abs().max(1),
            health: Health::new(),
            wal_capture: false,
            offer: Offer::default(),
        }
    }

    /// Tells the dispatcher whether its triggers' events are written into the log from the
    /// WAL (logical capture), not moved there from the capture table. If so, it moves captured
    /// rows once a second instead of at every look at the log: rows a trigger-mode install
    /// left there still arrive, and each look saves a statement that would find nothing
    /// (measured beside writers in logical mode: 1,762 such calls in 8 s, 3 to 7 µs of
    /// database time per event delivered).
    pub fn with_wal_capture(mut self, wal_capture: bool) -> Dispatcher {
        self.wal_capture = wal_capture;
        self
    }

    /// Offers this dispatcher's delivery through `offer` while it runs, to a writer of the
    /// log in the same process (logical capture), which then delivers the events that
    /// nothing holds back before it writes them, as a move of captured rows does
    /// ([`pgevents_log::inline`]). The offer is withdrawn before the drain.
    pub fn with_offer(mut self, offer: Offer) -> Dispatcher {
        self.offer = offer;
        self
    }

    /// Reports to `health`: capture running from start to the end of the drain, the
    /// database reachable after each successful look at the log (down after a failed one).
    pub fn with_health(mut self, health: Health) -> Dispatcher {
        self.health = health;
        self
    }

    /// Runs until `shutdown` completes, then stops claiming, waits up to the drain timeout
    /// for in-flight deliveries, settles them, and releases whatever is still unfinished.
    ///
    /// Database faults never end the loop: they are logged and retried with backoff.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        self.health.set_capture_running(true);
        let shared = Arc::new(Shared {
            in_flight: Mutex::new(InFlight::default()),
            settled: Notify::new(),
            settles: AtomicU64::new(0),
            retries: Mutex::new(BinaryHeap::new()),
            breakers: Mutex::new(Breakers::new(
                self.routes
                    .values()
                    .map(|r| (r.trigger_id, &*r.name, &r.retry)),
            )),
        });
        let permits = Arc::new(Semaphore::new(self.options.max_in_flight));
        let (done_tx, done_rx) = mpsc::channel::<Done>(self.options.max_in_flight);
        let (stop_settler_tx, stop_settler_rx) = watch::channel(false);
        // Leases are kept by a task of their own, on a connection of its own, from the first
        // claim to the end of the drain: no ingest, slow claim or shutdown can starve it.
        let (stop_keeper, keeper_stopped) = watch::channel(false);
        let keeper = tokio::spawn(keep_leases(
            self.url.clone(),
            self.schema.clone(),
            self.owner,
            self.options.lease,
            shared.clone(),
            keeper_stopped,
        ));
        let settler = tokio::spawn(settle_loop(
            self.url.clone(),
            self.schema.clone(),
            self.owner,
            done_rx,
            shared.clone(),
            stop_settler_rx,
        ));
        // Backfills are written beside delivery, on a connection of their own; a chunk is short,
        // so the worker stops between two of them at shutdown.
        let (stop_backfills, backfills_stopped) = watch::channel(false);
        let inline = Arc::new(Inline::new(
            self.routes.clone(),
            self.salt,
            self.owner,
            self.options.clone(),
            shared.clone(),
            done_tx.clone(),
        ));
        self.offer.set(Some(inline.clone()));
        let backfills = tokio::spawn(crate::backfill::run(
            self.url.clone(),
            self.schema.clone(),
            inline.clone(),
            backfills_stopped,
        ));
        let mut deliveries = JoinSet::new();
        let mut claim = ClaimLoop {
            dispatcher: &self,
            shared: shared.clone(),
            permits: permits.clone(),
            done_tx,
            store: None,
            ingest_store: None,
            inline: inline.clone(),
            ingesting: None,
            moved_since_compact: 0,
            compact_tried: Instant::now(),
            moved_since_vacuum: 0,
            vacuumed: Instant::now(),
            swept: None,
            last_moved: 0,
            found_nothing: None,
            waker: None,
            backoff: Backoff::default(),
            idle_since: None,
            rotation: 0,
        };
        tokio::pin!(shutdown);
        claim.run(&mut deliveries, &mut shutdown).await;
        self.offer.set(None);
        let _ = stop_backfills.send(true);
        if let Err(error) = backfills.await {
            tracing::error!(%error, "the backfill task failed");
        }

        // Drain: let in-flight deliveries finish (bounded), then give back what is left.
        let deadline = tokio::time::Instant::now() + self.options.drain_timeout;
        drain(&mut deliveries, deadline).await;
        inline.drain(deadline).await;
        // Every sender of outcomes goes (the inline delivery holds one), so the settler ends.
        let ClaimLoop {
            done_tx,
            store,
            inline: claim_inline,
            ..
        } = claim;
        drop((done_tx, claim_inline, inline));
        // The settler writes everything that finished, then exits when the channel closes;
        // past the drain deadline it stops retrying a database that is gone.
        let _ = stop_settler_tx.send(false);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep_until(deadline + Duration::from_secs(5)).await;
            let _ = stop_settler_tx.send(true);
        });
        if let Err(error) = settler.await {
            tracing::error!(%error, "the settling task failed");
        }
        stopper.abort();
        let _ = stop_keeper.send(true);
        if let Err(error) = keeper.await {
            tracing::error!(%error, "the lease-keeping task failed");
        }
        release_unfinished(&shared, store, self.owner).await;
        self.health.set_capture_running(false);
        Ok(())
    }
}

/// The event `claimed` holds, as `route` delivers it.
pub(crate) fn event_of(claimed: Claimed, route: &Route, salt: u16) -> Result<Event, String> {
    let action = Action::from_code(claimed.op).map_err(|e| e.to_string())?;
    Ok(Event::from_parts(EventParts {
        seq: claimed.seq,
        salt,
        created_at: claimed.created_at,
        trigger: route.name.clone(),
        schema: route.schema.clone(),
        table: route.table.clone(),
        action,
        old: claimed.old,
        new: claimed.new,
        ordering_key: claimed.row_key,
    }))
}

/// Waits for `deliveries` to finish until `deadline`, then aborts the rest (their events
/// are released, or come back when their lease ends).
pub(crate) async fn drain(deliveries: &mut JoinSet<()>, deadline: tokio::time::Instant) {
    while !deliveries.is_empty() {
        match tokio::time::timeout_at(deadline, deliveries.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    in_flight = deliveries.len(),
                    "drain timeout reached; releasing unfinished deliveries"
                );
                deliveries.abort_all();
                while deliveries.join_next().await.is_some() {}
                break;
            }
        }
    }
}

/// Gives back the claims still held after the drain, so other dispatchers take them at once
/// rather than when their lease ends.
async fn release_unfinished(shared: &Shared, store: Option<Store>, owner: i64) {
    let unfinished: Vec<ClaimToken> = lock(&shared.in_flight).leases.keys().copied().collect();
    if unfinished.is_empty() {
        return;
    }
    if let Some(store) = store.filter(|s| !s.is_closed()) {
        match store.release(&unfinished, owner).await {
            Ok(n) => tracing::info!(released = n, "released unfinished events"),
            Err(error) => {
                tracing::warn!(%error, "could not release unfinished events; they return when their lease ends")
            }
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short locks cannot leave the data inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Exponential backoff for reconnecting after database faults.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ms = 100u64.saturating_mul(1 << self.failures.min(6)).min(5000);
        Duration::from_millis(ms)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

struct ClaimLoop<'a> {
    dispatcher: &'a Dispatcher,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    done_tx: mpsc::Sender<Done>,
    store: Option<Store>,
    /// The connection ingests run on, beside claims.
    ingest_store: Option<Arc<Store>>,
    /// Delivers captured rows as they are moved, in a trickle.
    inline: Arc<Inline>,
    /// The ingest under way, if any.
    ingesting: Option<tokio::task::JoinHandle<Result<Ingested, Error>>>,
    /// Rows moved through the capture table since it was last compacted.
    moved_since_compact: u64,
    /// When compacting the capture table was last tried.
    compact_tried: Instant,
    /// Rows moved through the capture table since it was last vacuumed or compacted.
    moved_since_vacuum: u64,
    /// When the capture table was last vacuumed.
    vacuumed: Instant,
    /// When the last ingest started, for a dispatcher that only sweeps the capture table.
    swept: Option<Instant>,
    /// Rows the last finished ingest moved.
    last_moved: usize,
    /// When the last claim found nothing, and the settled batches counted before it ran;
    /// `None` until a claim finds nothing, after one that found something, after an error,
    /// and after a move that wrote rows pending (see [`CLAIM_AT_LEAST_EVERY`]).
    found_nothing: Option<(Instant, u64)>,
    waker: Option<Waker>,
    backoff: Backoff,
    /// Since when every look at the log found nothing (None: the last one found work).
    idle_since: Option<Instant>,
    /// Which trigger is offered free slots first in the next claim (round robin).
    rotation: usize,
}

enum Idle {
    Shutdown,
    Woken,
}

/// What the claim loop does after a look at the log.
enum Pause {
    /// Look again at once.
    Again,
    /// Wait this moment for more events to gather (unless shut down meanwhile).
    Gather(Duration),
    /// Wait this long, or until woken.
    Wait(Duration),
}

impl ClaimLoop<'_> {
    async fn run(
        &mut self,
        deliveries: &mut JoinSet<()>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) {
        let (note_tx, mut note_rx) = mpsc::channel(16);
        let trigger_ids: Vec<i32> = self.dispatcher.routes.keys().copied().collect();
        let mut short_wait = AWAKE_POLL_MIN;
        loop {
            while deliveries.try_join_next().is_some() {}
            let step = self.step(&trigger_ids, deliveries, &note_tx).await;
            self.dispatcher.health.set_database_reachable(step.is_ok());
            if step.is_err() {
                self.stop_ingest().await;
            }
            let wait = match self.pause_after(step, &mut short_wait) {
                Pause::Again => continue,
                Pause::Gather(gather) => {
                    tokio::select! {
                        _ = &mut *shutdown => {
                            self.stop_ingest().await;
                            return;
                        }
                        _ = tokio::time::sleep(gather) => {}
                    }
                    continue;
                }
                Pause::Wait(wait) => wait,
            };
            // A retry due earlier than that is looked for when it is due.
            let wait = match lock(&self.shared.retries).peek() {
                Some(Reverse(at)) => wait.min(at.saturating_duration_since(Instant::now())),
                None => wait,
            };
            let idle = tokio::select! {
                _ = &mut *shutdown => Idle::Shutdown,
                _ = note_rx.recv() => Idle::Woken,
                _ = self.shared.settled.notified() => Idle::Woken,
                _ = tokio::time::sleep(wait) => Idle::Woken,
                Some(_) = deliveries.join_next(), if !deliveries.is_empty() => Idle::Woken,
            };
            while note_rx.try_recv().is_ok() {}
            if let Some(waker) = self.waker.as_mut() {
                if let Err(error) = waker.awake().await {
                    tracing::debug!(%error, "wake-up connection lost");
                    self.waker = None;
                }
            }
            if matches!(idle, Idle::Shutdown) {
                self.stop_ingest().await;
                return;
            }
        }
    }

    /// How long to pause after a look at the log that went as `step`: not at all while
    /// claims fill whole batches, a moment for a trickle to gather, a backoff after an error,
    /// else a wait that grows (`short_wait`) while nothing turns up, up to the idle poll.
    fn pause_after(&mut self, step: Result<Step, Error>, short_wait: &mut Duration) -> Pause {
        let idle_poll = self.dispatcher.options.idle_poll;
        match step {
            Err(error) => {
                let wait = self.backoff.next();
                tracing::warn!(%error, retry_in = ?wait, "event log unavailable; retrying");
                self.found_nothing = None;
                if error.is_connection() {
                    self.store = None;
                    self.ingest_store = None;
                    self.waker = None;
                }
                Pause::Wait(wait)
            }
            Ok(Step::Busy) => {
                self.backoff.reset();
                *short_wait = AWAKE_POLL_MIN;
                Pause::Again
            }
            Ok(Step::Trickle { moved }) => {
                // Let a few more events gather, so one claim takes many.
                *short_wait = AWAKE_POLL_MIN;
                Pause::Gather(gather_wait(moved))
            }
            Ok(Step::Full | Step::Idle { sleeping: true }) => Pause::Wait(idle_poll),
            Ok(Step::Lull) => {
                // Not yet long enough to sleep: look again soon, backing off a little.
                *short_wait = (*short_wait * 2).min(AWAKE_POLL_MAX);
                Pause::Wait(*short_wait)
            }
            Ok(Step::Idle { sleeping: false }) => {
                // A writer is mid-transaction or another dispatcher sleeps on the lock:
                // look again soon, backing off while nothing turns up.
                *short_wait = (*short_wait * 2).min(IDLE_POLL_MAX);
                Pause::Wait(*short_wait)
            }
        }
    }

    /// Cancels the ingest task under way, if any. Its statement may still finish on the
    /// server (the rows it moved are found by the next claims) or roll back (the next ingest
    /// moves them): either way nothing is lost or moved twice.
    /// Waits for the ingest under way, if any, and drops its outcome. Never aborted: a move
    /// that delivers runs a transaction on the ingest connection, and cut short after a
    /// delivery it would leave that event to be delivered again (and the connection inside
    /// its transaction).
    async fn stop_ingest(&mut self) {
        if let Some(ingest) = self.ingesting.take() {
            let _ = ingest.await;
        }
    }

    /// One look at the log: connect what is missing, start an ingest, claim and spawn
    /// deliveries, then decide (from what turned up) whether to look again, wait or sleep.
    async fn step(
        &mut self,
        trigger_ids: &[i32],
        deliveries: &mut JoinSet<()>,
        note_tx: &mpsc::Sender<tokio_postgres::Notification>,
    ) -> Result<Step, Error> {
        self.connect(note_tx).await?;
        let retry_due = {
            // Retries due by now are looked for by this step's claim.
            let now = Instant::now();
            let mut retries = lock(&self.shared.retries);
            let mut due = false;
            while retries.peek().is_some_and(|Reverse(at)| *at <= now) {
                retries.pop();
                due = true;
            }
            due
        };
        self.start_ingest();
        // A trickle (the last move was smaller than a claim): the claim waits for the move
        // under way and takes the rows it moved, so each look costs one move and one claim.
        // Run side by side, as for a backlog, the claim could only take the rows of the
        // previous move, and the loop looked again at once for those just moved: twice the
        // statements per event while writers run.
        // The wait is bounded: a slow move (a loaded server) must not hold back the claim of
        // events already due, such as retries; past it the two run side by side.
        let trickle = self.last_moved < self.dispatcher.options.batch_size;
        let mut moved = 0;
        if trickle {
            if let Some(mut ingest) = self.ingesting.take() {
                match tokio::time::timeout(TRICKLE_INGEST_WAIT, &mut ingest).await {
                    Ok(done) => moved = self.finished(done)?,
                    Err(_) => self.ingesting = Some(ingest),
                }
            }
        }
        let free = self
            .permits
            .available_permits()
            .min(self.dispatcher.options.batch_size);
        let free_bytes = self
            .dispatcher
            .options
            .max_in_flight_bytes
            .saturating_sub(lock(&self.shared.in_flight).bytes);
        if free == 0 || free_bytes == 0 {
            return Ok(Step::Full);
        }
        // Read before the claim: a batch settled while it runs may free what it did not see.
        let settles = self.shared.settles.load(AtomicOrdering::Acquire);
        let skip = may_skip_claim(
            moved > 0,
            retry_due,
            self.found_nothing,
            settles,
            Instant::now(),
        );
        let claimed = if skip {
            Vec::new()
        } else {
            let claimed = self.claim(trigger_ids, free, free_bytes).await?;
            self.found_nothing = claimed.is_empty().then(|| (Instant::now(), settles));
            claimed
        };
        let got = claimed.len();
        self.spawn(claimed, deliveries);
        // While claims fill whole batches, the ingest runs on unawaited; otherwise this
        // step's ingest decides whether more is coming.
        let ingest = if got >= free {
            self.ingesting.take_if(|ingest| ingest.is_finished())
        } else {
            self.ingesting.take()
        };
        let unclaimed = match ingest {
            Some(ingest) => self.finished(ingest.await)?,
            None => 0,
        };
        self.backoff.reset();
        // Rows moved and claimed in a trickle are delivered already: at a high rate, a moment's
        // pause lets the next look take many more; at a low one it would only add latency.
        let busy = unclaimed > 0 || (moved > 0 && moved < GATHER_FROM);
        self.after_look(got >= free, moved + unclaimed > 0 || got > 0, busy, moved)
            .await
    }

    /// Notes what an ingest task that ended did; returns the rows it moved.
    fn finished(&mut self, ended: Joined) -> Result<usize, Error> {
        if ended.is_err() {
            // A task that died mid-move may have left its connection inside a transaction:
            // the next look opens a new one (closing this one rolls that back).
            self.ingest_store = None;
        }
        let ingested = joined(ended)?;
        if ingested.compacted {
            self.moved_since_compact = 0;
        }
        let moved = usize::try_from(ingested.moved).unwrap_or(0);
        self.moved_since_compact += moved as u64;
        // The rows this ingest moved were gone before its vacuum ran.
        if ingested.compacted || ingested.vacuum_tried {
            self.moved_since_vacuum = 0;
        } else {
            self.moved_since_vacuum += moved as u64;
        }
        self.last_moved = moved;
        if moved > 0 && ingested.delivered != moved as i64 {
            // It wrote rows pending (or ran beside a claim that could not see them): the
            // next look claims, whatever the move it waits for does.
            self.found_nothing = None;
        }
        Ok(moved)
    }

    /// Opens whichever of the claim, ingest and wake-up connections is missing.
    async fn connect(
        &mut self,
        note_tx: &mpsc::Sender<tokio_postgres::Notification>,
    ) -> Result<(), Error> {
        let d = self.dispatcher;
        if d.options.notify && self.waker.as_ref().is_none_or(Waker::is_closed) {
            self.waker = Some(Waker::connect(&d.url, &d.schema, note_tx.clone()).await?);
        }
        if self.store.as_ref().is_none_or(Store::is_closed) {
            let client = pgevents_postgres::connect(&d.url, None).await?;
            self.store = Some(Store::open(client, &d.schema).await?);
            tracing::debug!("connected to the event log");
        }
        if self.ingest_store.as_ref().is_none_or(|s| s.is_closed()) {
            let client = pgevents_postgres::connect(&d.url, None).await?;
            self.ingest_store = Some(Arc::new(Store::open(client, &d.schema).await?));
        }
        Ok(())
    }

    /// Starts moving captured rows into the log, on the ingest connection, unless a move is
    /// under way already.
    fn start_ingest(&mut self) {
        if self.ingesting.is_some() {
            return;
        }
        if self.dispatcher.wal_capture {
            if self.swept.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
                return;
            }
            self.swept = Some(Instant::now());
        }
        let compact = self.moved_since_compact >= COMPACT_AFTER
            && self.compact_tried.elapsed() >= COMPACT_EVERY;
        if compact {
            self.compact_tried = Instant::now();
        }
        let vacuum =
            self.moved_since_vacuum >= VACUUM_AFTER && self.vacuumed.elapsed() >= VACUUM_EVERY;
        if vacuum {
            self.vacuumed = Instant::now();
        }
        if let Some(ingest_store) = self.ingest_store.clone() {
            let schema = self.dispatcher.schema.clone();
            // A trickle is delivered as it moves; a backlog moves in bulk, inside the database.
            let inline = (self.last_moved < INLINE_BATCH as usize).then(|| self.inline.clone());
            self.ingesting = Some(tokio::spawn(async move {
                let (moved, delivered) = match inline {
                    Some(inline) => {
                        ingest_store
                            .move_delivering(INLINE_BATCH, INLINE_BYTES, &*inline, MOVE_WAIT)
                            .await?
                    }
                    None => (ingest_store.ingest(INGEST_BATCH).await?, 0),
                };
                crate::telemetry::captured(moved);
                let compacted =
                    moved == 0 && compact && ingest_store.compact_capture(&schema).await?;
                if compacted {
                    tracing::debug!("capture table compacted after a backlog");
                }
                // Not empty (or not to be had): its dead space is made reusable instead. The
                // rows are moved whatever becomes of that: a failure is reported, and tried
                // again after as many rows more.
                let vacuum_tried = !compacted && vacuum;
                if vacuum_tried {
                    match ingest_store.vacuum_capture(&schema).await {
                        Ok(true) => {}
                        Ok(false) => tracing::debug!(
                            "the capture table is not vacuumed: this role does not own it"
                        ),
                        Err(error) => {
                            tracing::warn!(%error, "could not vacuum the capture table")
                        }
                    }
                }
                Ok(Ingested {
                    moved,
                    delivered,
                    compacted,
                    vacuum_tried,
                })
            }));
        }
    }

    /// Claims up to `free` due events and about `free_bytes` of row text, each trigger
    /// limited by [`claim_limits`], the triggers offered the slots in turn.
    async fn claim(
        &mut self,
        trigger_ids: &[i32],
        free: usize,
        free_bytes: usize,
    ) -> Result<Vec<Claimed>, Error> {
        let d = self.dispatcher;
        let Some(store) = self.store.as_ref() else {
            return Ok(Vec::new());
        };
        if trigger_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.rotation = (self.rotation + 1) % trigger_ids.len();
        let mut order = trigger_ids.to_vec();
        order.rotate_left(self.rotation);
        let limits = {
            let now = Instant::now();
            let breakers = lock(&self.shared.breakers);
            claim_limits(
                &order,
                &lock(&self.shared.in_flight),
                |t| breakers.allowance(t, now),
                free,
                d.options.batch_size,
                d.options.max_in_flight,
            )
        };
        store
            .claim(
                &order,
                &limits,
                free as i64,
                i64::try_from(free_bytes).unwrap_or(i64::MAX),
                d.options.lease,
                d.owner,
            )
            .await
    }

    /// Starts a delivery for each claimed event, each holding one in-flight permit.
    fn spawn(&mut self, claimed: Vec<Claimed>, deliveries: &mut JoinSet<()>) {
        let d = self.dispatcher;
        let now = Instant::now();
        for c in claimed {
            // Claims never exceed the free permits, and permits only come back meanwhile.
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            let Some(route) = d.routes.get(&c.trigger_id) else {
                continue;
            };
            let claim = c.token();
            lock(&self.shared.in_flight).insert(claim, c.trigger_id, c.size(), now);
            let current_retry = u32::try_from(c.current_retry).unwrap_or(0);
            let settlement = match event_of(c, route, d.salt) {
                Ok(event) => {
                    let (sink, policy, name) =
                        (route.sink.clone(), route.retry, route.name.clone());
                    let trigger_id = route.trigger_id;
                    let (shared, done_tx) = (self.shared.clone(), self.done_tx.clone());
                    deliveries.spawn(async move {
                        let settlement =
                            deliver::attempt(sink, policy, name, event, current_retry, claim).await;
                        shared.record_outcome(trigger_id, &settlement.verdict);
                        let _ = done_tx
                            .send(Done {
                                settlement,
                                _permit: permit,
                            })
                            .await;
                    });
                    continue;
                }
                Err(error) => Done {
                    settlement: Settlement {
                        claim,
                        verdict: Verdict::Failed,
                        started_at: chrono::Utc::now(),
                        duration: Duration::ZERO,
                        status: None,
                        error: Some(error),
                        response: None,
                    },
                    _permit: permit,
                },
            };
            // Never waits for the settler (it may be retrying a database that is gone).
            if let Err(TrySendError::Full(done)) = self.done_tx.try_send(settlement) {
                let done_tx = self.done_tx.clone();
                deliveries.spawn(async move {
                    let _ = done_tx.send(done).await;
                });
            }
        }
    }

    /// What to do after a look that filled the batch (`full`), found any work (`found`) or
    /// calls for the next at once (`busy`), having waited for a move of `moved` rows: look
    /// again at once, after a moment, or sleep.
    async fn after_look(
        &mut self,
        full: bool,
        found: bool,
        busy: bool,
        moved: usize,
    ) -> Result<Step, Error> {
        if found {
            // Work turned up: stay awake (writers stop notifying) and look again: at once
            // when `busy` (rows just moved are due, or a trickle is taken as it commits) or
            // a whole batch was claimed, after a moment otherwise.
            self.idle_since = None;
            if let Some(waker) = self.waker.as_mut() {
                waker.awake().await?;
            }
            return Ok(if full || busy {
                Step::Busy
            } else {
                Step::Trickle { moved }
            });
        }
        let Some(waker) = self.waker.as_mut() else {
            // Writers never notify: poll.
            return Ok(Step::Idle { sleeping: true });
        };
        if waker.holding() {
            return Ok(Step::Idle { sleeping: true });
        }
        if self.idle_since.get_or_insert_with(Instant::now).elapsed() < SLEEP_AFTER {
            return Ok(Step::Lull);
        }
        if waker.try_sleep().await? {
            // Took the lock: look once more, so nothing committed before it is missed.
            return Ok(Step::Busy);
        }
        Ok(Step::Idle { sleeping: false })
    }
}

/// Keeps the leases of this dispatcher's claims: every sixth of the lease, renews those not
/// renewed for a third of it, on a connection of its own, until `stop`. Runs beside the
/// claim loop, so neither a long ingest nor a slow claim can let a lease run out under a
/// delivery still in progress; and through the drain, so a graceful stop keeps every
/// in-flight event leased until its delivery ends.
async fn keep_leases(
    url: String,
    schema: LogSchema,
    owner: i64,
    lease: Duration,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut store: Option<Store> = None;
    let mut tick = tokio::time::interval(lease / 6);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        let due = lock(&shared.in_flight).older_than(now, lease / 3);
        let result = async {
            // Connected ahead of need: the first renewal must not wait for a connection.
            if store.as_ref().is_none_or(Store::is_closed) {
                let client = pgevents_postgres::connect(&url, None).await?;
                store = Some(Store::open(client, &schema).await?);
            }
            match store.as_ref() {
                Some(s) if !due.is_empty() => s.renew(&due, lease, owner).await,
                _ => Ok(0),
            }
        }
        .await;
        match result {
            Ok(_) => lock(&shared.in_flight).renewed(&due, now),
            Err(error) => {
                if error.is_connection() {
                    store = None;
                }
                tracing::warn!(%error, claims = due.len(), "could not renew leases; retrying");
            }
        }
    }
}

/// What one ingest task did.
#[derive(Debug, Clone, Copy, Default)]
struct Ingested {
    /// Captured rows moved into the log.
    moved: i32,
    /// How many of them were delivered as they moved.
    delivered: i64,
    /// Whether it found the capture table empty and gave its pages back.
    compacted: bool,
    /// Whether it tried to make the space of moved rows reusable.
    vacuum_tried: bool,
}

/// Whether a look in a trickle may skip its claim (see [`CLAIM_AT_LEAST_EVERY`]): the move
/// it waited for `moved` rows (one that wrote any pending has cleared `found_nothing`), no
/// retry fell due, and the last claim found nothing (`found_nothing`: when, and the settled
/// batches counted before it), less than that long before `now`, with no batch settled
/// since (`settles` now).
fn may_skip_claim(
    moved: bool,
    retry_due: bool,
    found_nothing: Option<(Instant, u64)>,
    settles: u64,
    now: Instant,
) -> bool {
    moved
        && !retry_due
        && found_nothing.is_some_and(|(at, before)| {
            before == settles && now.duration_since(at) < CLAIM_AT_LEAST_EVERY
        })
}

/// How an ingest task ended, as its handle reports it.
type Joined = Result<Result<Ingested, Error>, tokio::task::JoinError>;

/// The pause after a look that waited for a move of `moved` rows (0: it claimed without
/// one): [`TRICKLE_WAIT`], longer by a millisecond per [`GATHER_ROWS_PER_MS`] rows moved,
/// up to [`GATHER_MAX`].
fn gather_wait(moved: usize) -> Duration {
    let ms = u32::try_from(moved / GATHER_ROWS_PER_MS).unwrap_or(u32::MAX);
    TRICKLE_WAIT
        .max(Duration::from_millis(1) * ms)
        .min(GATHER_MAX)
}

/// The result of an ingest task that ended. A task that did not complete (aborted, or
/// panicked) reports nothing moved: whatever its statement did on the server is found by
/// the next claims, and the next step ingests again.
fn joined(ended: Joined) -> Result<Ingested, Error> {
    ended.unwrap_or_else(|error| {
        tracing::warn!(%error, "an ingest did not complete; it will be retried");
        Ok(Ingested::default())
    })
}

enum Step {
    /// More work is likely waiting: loop at once.
    Busy,
    /// Less than a batch claimed, and nothing or a trickle of `moved` rows moved: look
    /// again after [`gather_wait`] of them.
    Trickle { moved: usize },
    /// Every in-flight slot is taken: wait for a settlement.
    Full,
    /// Nothing to do for less than [`SLEEP_AFTER`]: stay awake and look again soon.
    Lull,
    /// Nothing to do; `sleeping` when this dispatcher holds the wake-up lock.
    Idle { sleeping: bool },
}

async fn settle_loop(
    url: String,
    schema: LogSchema,
    owner: i64,
    mut rx: mpsc::Receiver<Done>,
    shared: Arc<Shared>,
    give_up: watch::Receiver<bool>,
) {
    let mut store: Option<Store> = None;
    let mut backoff = Backoff::default();
    let mut batch: Vec<Done> = Vec::with_capacity(SETTLE_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        gather(&mut rx, &mut batch).await;
        let settlements: Vec<Settlement> = batch.iter().map(|d| d.settlement.clone()).collect();
        loop {
            let result = async {
                if store.as_ref().is_none_or(Store::is_closed) {
                    let client = pgevents_postgres::connect(&url, None).await?;
                    store = Some(Store::open(client, &schema).await?);
                }
                match store.as_ref() {
                    Some(s) => settle_isolated(s, &settlements, owner).await,
                    None => Ok(0),
                }
            }
            .await;
            match result {
                Ok(kept) => {
                    backoff.reset();
                    let lost = settlements.len() as i64 - kept;
                    if lost > 0 {
                        tracing::warn!(
                            lost,
                            "some events were taken over by another claim after their lease ended; their outcomes were not recorded and they will be delivered again"
                        );
                    }
                    break;
                }
                Err(error) => {
                    if *give_up.borrow() {
                        tracing::warn!(%error, events = settlements.len(), "could not record outcomes before shutdown; the events will be delivered again");
                        break;
                    }
                    if error.is_connection() {
                        store = None;
                    }
                    let wait = backoff.next();
                    tracing::warn!(%error, retry_in = ?wait, "could not record delivery outcomes; retrying");
                    let mut give_up = give_up.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = give_up.wait_for(|g| *g) => {}
                    }
                }
            }
        }
        {
            let mut in_flight = lock(&shared.in_flight);
            for s in &settlements {
                in_flight.remove(&s.claim);
            }
        }
        let now = chrono::Utc::now();
        for s in &settlements {
            shared.schedule_retry(s.retry_left(now));
        }
        batch.clear();
        shared.settles.fetch_add(1, AtomicOrdering::Release);
        shared.settled.notify_one();
    }
}

/// Adds to `batch` the outcomes that arrive within [`SETTLE_GATHER`] of its first, until it
/// holds [`SETTLE_BATCH`] or the channel closes: while writers run, outcomes arrive a few at
/// a time, and each settle statement costs its planning (about 200 µs) whatever its size.
async fn gather(rx: &mut mpsc::Receiver<Done>, batch: &mut Vec<Done>) {
    let until = tokio::time::Instant::now() + SETTLE_GATHER;
    while batch.len() < SETTLE_BATCH {
        let done = match rx.try_recv() {
            Ok(done) => done,
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                if batch.len() >= SETTLE_ENOUGH {
                    return;
                }
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(done)) => done,
                    Ok(None) | Err(_) => return,
                }
            }
        };
        batch.push(done);
    }
}

/// Settles `settlements` in one statement; when the database refuses the batch for
/// anything but a lost connection, settles them one by one, so a bad outcome never holds
/// back the others. An outcome refused even alone is recorded without its error text and
/// response excerpt; if even that is refused, it is left out (the event's lease runs out
/// and it is delivered again) and logged. Connection errors are returned: the caller
/// retries the whole batch, and outcomes already written are not written twice (each is
/// fenced by its claim).
async fn settle_isolated(
    store: &Store,
    settlements: &[Settlement],
    owner: i64,
) -> Result<i64, Error> {
    let error = match store.settle(settlements, owner).await {
        Err(error) if !error.is_connection() => error,
        other => return other,
    };
    if settlements.len() > 1 {
        tracing::warn!(%error, events = settlements.len(), "a batch of outcomes was refused; recording them one by one");
    }
    let mut kept = 0;
    for one in settlements {
        let single = std::slice::from_ref(one);
        let error = match store.settle(single, owner).await {
            Ok(n) => {
                kept += n;
                continue;
            }
            Err(error) if !error.is_connection() => error,
            Err(error) => return Err(error),
        };
        let bare = Settlement {
            error: Some(format!(
                "the outcome could not be recorded in full: {error}"
            )),
            response: None,
            ..one.clone()
        };
        match store.settle(std::slice::from_ref(&bare), owner).await {
            Ok(n) => kept += n,
            Err(error) if !error.is_connection() => tracing::error!(
                %error,
                seq = one.claim.seq,
                "an outcome could not be recorded; the event will be delivered again when its lease ends"
            ),
            Err(error) => return Err(error),
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(counts: &[(i32, usize)]) -> InFlight {
        let mut in_flight = InFlight::default();
        let mut seq = 0;
        for (trigger, n) in counts {
            for _ in 0..*n {
                seq += 1;
                in_flight.insert(ClaimToken { seq, attempt: 1 }, *trigger, 10, Instant::now());
            }
        }
        in_flight
    }

    #[test]
    fn a_claim_is_skipped_only_briefly_and_only_when_nothing_can_have_come_due() {
        let at = Instant::now();
        let soon = at + CLAIM_AT_LEAST_EVERY / 2;
        let nothing = Some((at, 3));
        assert!(may_skip_claim(true, false, nothing, 3, soon));
        // The move moved nothing, a retry fell due, the last claim found events (or a move
        // wrote rows pending since), a batch settled since: claim.
        assert!(!may_skip_claim(false, false, nothing, 3, soon));
        assert!(!may_skip_claim(true, true, nothing, 3, soon));
        assert!(!may_skip_claim(true, false, None, 3, soon));
        assert!(!may_skip_claim(true, false, nothing, 4, soon));
        // Events pending from elsewhere wait no longer than this.
        assert!(!may_skip_claim(
            true,
            false,
            nothing,
            3,
            at + CLAIM_AT_LEAST_EVERY
        ));
    }

    #[test]
    fn the_pause_after_a_move_grows_with_it_up_to_a_bound() {
        assert_eq!(gather_wait(0), TRICKLE_WAIT);
        assert_eq!(gather_wait(GATHER_FROM), TRICKLE_WAIT);
        assert_eq!(gather_wait(32), Duration::from_millis(2));
        assert_eq!(gather_wait(48), Duration::from_millis(3));
        assert_eq!(gather_wait(1000), GATHER_MAX);
        assert_eq!(gather_wait(usize::MAX), GATHER_MAX);
    }

    #[test]
    fn a_lone_trigger_may_use_every_slot() {
        assert_eq!(
            claim_limits(&[1], &held(&[]), closed, 1000, 500, 1000),
            vec![500]
        );
        assert_eq!(
            claim_limits(&[1], &held(&[(1, 900)]), closed, 100, 500, 1000),
            vec![100]
        );
    }

    #[test]
    fn a_slow_trigger_leaves_the_others_their_share() {
        // Two triggers, 1000 slots: each keeps a share of 125 the other cannot take.
        let in_flight = held(&[(1, 875)]);
        assert_eq!(
            claim_limits(&[1, 2], &in_flight, closed, 125, 500, 1000),
            vec![0, 125]
        );
        // Once the other holds its share, the slow one may grow into what is free.
        let in_flight = held(&[(1, 700), (2, 125)]);
        assert_eq!(
            claim_limits(&[1, 2], &in_flight, closed, 175, 500, 1000),
            vec![175, 175]
        );
        // Small bounds reserve nothing rather than deadlock.
        assert_eq!(
            claim_limits(&[1, 2, 3], &held(&[]), closed, 4, 4, 4),
            vec![4, 4, 4]
        );
    }

    fn closed(_: i32) -> Allowance {
        Allowance::Closed
    }

    /// Trigger 1's breaker in `allowance`, every other trigger's closed.
    fn first_is(allowance: Allowance) -> impl Fn(i32) -> Allowance + Copy {
        move |t| if t == 1 { allowance } else { Allowance::Closed }
    }

    #[test]
    fn an_open_breaker_takes_no_slot_and_reserves_none() {
        let shut_1 = first_is(Allowance::Shut);
        // Trigger 2 may take everything: trigger 1 keeps no share while its breaker is open.
        assert_eq!(
            claim_limits(&[1, 2], &held(&[]), shut_1, 1000, 1000, 1000),
            vec![0, 1000]
        );
        // Probing: one event, only while none of its events is in flight.
        let probe_1 = first_is(Allowance::Probe);
        assert_eq!(
            claim_limits(&[1, 2], &held(&[]), probe_1, 1000, 500, 1000),
            vec![1, 500]
        );
        assert_eq!(
            claim_limits(&[1, 2], &held(&[(1, 1)]), probe_1, 999, 500, 1000),
            vec![0, 500]
        );
        // On trial (no delivery yet, or failing): no more than TRIP_AFTER in flight.
        let trial_1 = first_is(Allowance::Trial);
        let trip = TRIP_AFTER as i32;
        assert_eq!(
            claim_limits(&[1, 2], &held(&[(1, 5)]), trial_1, 995, 500, 1000),
            vec![trip - 5, 500]
        );
    }

    #[test]
    fn in_flight_counts_follow_claims() {
        let mut in_flight = held(&[(1, 2), (2, 1)]);
        assert_eq!((in_flight.held(1), in_flight.held(2)), (2, 1));
        in_flight.remove(&ClaimToken { seq: 1, attempt: 1 });
        in_flight.remove(&ClaimToken { seq: 1, attempt: 1 });
        // A claim of the same event under another attempt is another claim.
        in_flight.remove(&ClaimToken { seq: 3, attempt: 2 });
        assert_eq!((in_flight.held(1), in_flight.held(2)), (1, 1));
        assert_eq!(in_flight.bytes, 20);
        let now = Instant::now();
        assert!(in_flight
            .older_than(now, Duration::from_secs(60))
            .is_empty());
        assert_eq!(in_flight.older_than(now, Duration::ZERO).len(), 2);
    }
}
