//! The dispatcher loop: ingest, claim, deliver, settle — until shutdown, then drain.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgevents_event::{Action, Event, EventParts};
use pgevents_log::store::{Claimed, Settlement, Store, Verdict};
use pgevents_log::{Error, LogSchema};
use pgevents_sink::{DynSink, RetryPolicy};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::deliver;
use crate::wake::Waker;
use crate::Health;

/// Where the events of one trigger go.
#[derive(Clone)]
pub struct Route {
    /// The trigger's id in the log.
    pub trigger_id: i32,
    /// The trigger's name.
    pub name: Arc<str>,
    /// The watched table's schema.
    pub schema: Arc<str>,
    /// The watched table.
    pub table: Arc<str>,
    /// The destination.
    pub sink: Arc<dyn DynSink>,
    /// Retries and timeout.
    pub retry: RetryPolicy,
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
/// How long the log must stay empty before a dispatcher sleeps. While it sleeps, every
/// writing transaction sends a NOTIFY, which serialises writers at commit (a NOTIFY per
/// row costs about 70% of INSERT TPS at 8 clients, see BENCHMARKS.md); a dispatcher that
/// slept in every short gap of a steady stream of writes would make writers pay that
/// often. So it sleeps only after a lull, and polls with a short backoff until then.
const SLEEP_AFTER: Duration = Duration::from_millis(250);
/// The pause after a look that moved nothing and claimed less than a batch. Each look
/// costs the database a claim and an ingest whatever they find; with writers running, the
/// dispatcher's claim, settle and ingest sessions took about 30%, 20% and 20% of a core
/// (sampled with top). The pause adds at most this much latency.
const TRICKLE_WAIT: Duration = Duration::from_millis(1);
/// The first wait between looks at the log once they stop finding work; it doubles.
const AWAKE_POLL_MIN: Duration = Duration::from_millis(2);
/// The longest wait between looks at the log while awake.
const AWAKE_POLL_MAX: Duration = Duration::from_millis(25);
/// The longest wait between looks while another dispatcher sleeps on the wake-up lock (it
/// is woken by writers and this one is only its backup) or a writer is mid-transaction.
const IDLE_POLL_MAX: Duration = Duration::from_millis(100);
/// How many outcomes one settle statement writes.
const SETTLE_BATCH: usize = 1000;

/// Tuning of a [`Dispatcher`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Events claimed at once.
    pub batch_size: usize,
    /// Events in flight at most; memory is bounded by this, whatever the backlog.
    pub max_in_flight: usize,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// Longest wait between looks at the log when idle.
    pub idle_poll: Duration,
    /// How long shutdown waits for in-flight deliveries.
    pub drain_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_size: DEFAULT_BATCH_SIZE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            lease: DEFAULT_LEASE,
            idle_poll: DEFAULT_IDLE_POLL,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
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

/// State shared by the claim loop, delivery tasks and the settler.
struct Shared {
    /// Claimed events not yet settled, with when they were last leased.
    in_flight: Mutex<HashMap<i64, Instant>>,
    /// Signalled after each settled batch: capacity is free, later events of a row may be due.
    settled: Notify,
    /// When the retries this dispatcher scheduled fall due (earliest first); at most one
    /// entry per in-flight event, so bounded like everything else.
    retries: Mutex<BinaryHeap<Reverse<Instant>>>,
}

struct Done {
    settlement: Settlement,
    _permit: OwnedSemaphorePermit,
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
        }
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
            in_flight: Mutex::new(HashMap::new()),
            settled: Notify::new(),
            retries: Mutex::new(BinaryHeap::new()),
        });
        let permits = Arc::new(Semaphore::new(self.options.max_in_flight));
        let (done_tx, done_rx) = mpsc::channel::<Done>(self.options.max_in_flight);
        let (stop_settler_tx, stop_settler_rx) = tokio::sync::watch::channel(false);
        let settler = tokio::spawn(settle_loop(
            self.url.clone(),
            self.schema.clone(),
            self.owner,
            done_rx,
            shared.clone(),
            stop_settler_rx,
        ));
        let mut deliveries = JoinSet::new();
        let mut claim = ClaimLoop {
            dispatcher: &self,
            shared: shared.clone(),
            permits: permits.clone(),
            done_tx,
            store: None,
            ingest_store: None,
            ingesting: None,
            waker: None,
            backoff: Backoff::default(),
            last_renew: Instant::now(),
            idle_since: None,
        };
        tokio::pin!(shutdown);
        claim.run(&mut deliveries, &mut shutdown).await;

        // Drain: let in-flight deliveries finish (bounded), then give back what is left.
        let deadline = tokio::time::Instant::now() + self.options.drain_timeout;
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
        let ClaimLoop { done_tx, store, .. } = claim;
        drop(done_tx);
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
        let unfinished: Vec<i64> = lock(&shared.in_flight).keys().copied().collect();
        if !unfinished.is_empty() {
            if let Some(store) = store.filter(|s| !s.is_closed()) {
                match store.release(&unfinished, self.owner).await {
                    Ok(n) => tracing::info!(released = n, "released unfinished events"),
                    Err(error) => {
                        tracing::warn!(%error, "could not release unfinished events; they return when their lease ends")
                    }
                }
            }
        }
        self.health.set_capture_running(false);
        Ok(())
    }

    fn event(&self, claimed: Claimed, route: &Route) -> Result<Event, String> {
        let action = Action::from_code(claimed.op).map_err(|e| e.to_string())?;
        Ok(Event::from_parts(EventParts {
            seq: claimed.seq,
            salt: self.salt,
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
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    /// The ingest under way, if any.
    ingesting: Option<tokio::task::JoinHandle<Result<i32, Error>>>,
    waker: Option<Waker>,
    backoff: Backoff,
    last_renew: Instant,
    /// Since when every look at the log found nothing (None: the last one found work).
    idle_since: Option<Instant>,
}

enum Idle {
    Shutdown,
    Woken,
}

impl ClaimLoop<'_> {
    async fn run(
        &mut self,
        deliveries: &mut JoinSet<()>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) {
        let (note_tx, mut note_rx) = mpsc::channel(16);
        let trigger_ids: Vec<i32> = self.dispatcher.routes.keys().copied().collect();
        let options = &self.dispatcher.options;
        let mut short_wait = AWAKE_POLL_MIN;
        loop {
            while deliveries.try_join_next().is_some() {}
            let step = self.step(&trigger_ids, deliveries, &note_tx).await;
            self.dispatcher.health.set_database_reachable(step.is_ok());
            let wait = match step {
                Err(error) => {
                    let wait = self.backoff.next();
                    tracing::warn!(%error, retry_in = ?wait, "event log unavailable; retrying");
                    if error.is_connection() {
                        self.store = None;
                        self.ingest_store = None;
                        self.waker = None;
                    }
                    self.stop_ingest();
                    wait
                }
                Ok(Step::Busy) => {
                    self.backoff.reset();
                    short_wait = AWAKE_POLL_MIN;
                    continue;
                }
                Ok(Step::Trickle) => {
                    // Let a few more events gather, so one claim takes many.
                    short_wait = AWAKE_POLL_MIN;
                    tokio::select! {
                        _ = &mut *shutdown => {
                            self.stop_ingest();
                            return;
                        }
                        _ = tokio::time::sleep(TRICKLE_WAIT) => {}
                    }
                    continue;
                }
                Ok(Step::Full) => options.idle_poll,
                Ok(Step::Idle { sleeping: true }) => options.idle_poll,
                Ok(Step::Lull) => {
                    // Not yet long enough to sleep: look again soon, backing off a little.
                    short_wait = (short_wait * 2).min(AWAKE_POLL_MAX);
                    short_wait
                }
                Ok(Step::Idle { sleeping: false }) => {
                    // A writer is mid-transaction or another dispatcher sleeps on the lock:
                    // look again soon, backing off while nothing turns up.
                    short_wait = (short_wait * 2).min(IDLE_POLL_MAX);
                    short_wait
                }
            };
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
                self.stop_ingest();
                return;
            }
        }
    }

    /// Cancels the ingest under way, if any (its transaction rolls back: nothing is lost).
    fn stop_ingest(&mut self) {
        if let Some(ingest) = self.ingesting.take() {
            ingest.abort();
        }
    }

    async fn step(
        &mut self,
        trigger_ids: &[i32],
        deliveries: &mut JoinSet<()>,
        note_tx: &mpsc::Sender<tokio_postgres::Notification>,
    ) -> Result<Step, Error> {
        let d = self.dispatcher;
        if self.waker.as_ref().is_none_or(Waker::is_closed) {
            self.waker = Some(Waker::connect(&d.url, &d.schema, note_tx.clone()).await?);
        }
        if self.store.as_ref().is_none_or(Store::is_closed) {
            let client = pgevents_log::connect(&d.url, None).await?;
            self.store = Some(Store::open(client, &d.schema).await?);
            tracing::debug!("connected to the event log");
        }
        if self.ingest_store.as_ref().is_none_or(|s| s.is_closed()) {
            let client = pgevents_log::connect(&d.url, None).await?;
            self.ingest_store = Some(Arc::new(Store::open(client, &d.schema).await?));
        }
        let renewals = self.due_renewals();
        let (Some(store), Some(waker)) = (self.store.as_ref(), self.waker.as_mut()) else {
            return Ok(Step::Idle { sleeping: false });
        };
        {
            // Retries due by now are looked for by this step's claim.
            let now = Instant::now();
            let mut retries = lock(&self.shared.retries);
            while retries.peek().is_some_and(|Reverse(at)| *at <= now) {
                retries.pop();
            }
        }
        if self.ingesting.is_none() {
            if let Some(ingest_store) = self.ingest_store.clone() {
                self.ingesting = Some(tokio::spawn(async move {
                    let moved = ingest_store.ingest(INGEST_BATCH).await?;
                    crate::telemetry::captured(moved);
                    Ok(moved)
                }));
            }
        }
        if !renewals.is_empty() {
            store.renew(&renewals, d.options.lease, d.owner).await?;
        }
        let free = self.permits.available_permits().min(d.options.batch_size);
        if free == 0 {
            return Ok(Step::Full);
        }
        let claimed = if trigger_ids.is_empty() {
            Vec::new()
        } else {
            store
                .claim(trigger_ids, free as i64, d.options.lease, d.owner)
                .await?
        };
        let got = claimed.len();
        let now = Instant::now();
        for c in claimed {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            let Some(route) = d.routes.get(&c.trigger_id) else {
                continue;
            };
            lock(&self.shared.in_flight).insert(c.seq, now);
            let seq = c.seq;
            let current_retry = u32::try_from(c.current_retry).unwrap_or(0);
            let done_tx = self.done_tx.clone();
            let settlement = match d.event(c, route) {
                Ok(event) => {
                    let sink = route.sink.clone();
                    let policy = route.retry;
                    deliveries.spawn(async move {
                        let settlement = deliver::attempt(sink, policy, event, current_retry).await;
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
                        seq,
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
            let _ = self.done_tx.send(settlement).await;
        }
        // While claims fill whole batches, the ingest runs on unawaited; otherwise this
        // step's ingest decides whether more is coming.
        let ingest = if got >= free {
            self.ingesting.take_if(|ingest| ingest.is_finished())
        } else {
            self.ingesting.take()
        };
        let moved = match ingest {
            Some(ingest) => joined(ingest).await?,
            None => 0,
        };
        self.backoff.reset();
        if moved > 0 || got > 0 {
            // Work turned up: stay awake (writers stop notifying) and look again: at once
            // when rows were just moved (they are due now) or a whole batch was claimed,
            // after a moment otherwise.
            self.idle_since = None;
            waker.awake().await?;
            let backlog = got >= free || moved > 0;
            return Ok(if backlog { Step::Busy } else { Step::Trickle });
        }
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

    /// The deliveries that have run for a third of the lease: their leases need extending.
    fn due_renewals(&mut self) -> Vec<i64> {
        let lease = self.dispatcher.options.lease;
        if self.last_renew.elapsed() < lease / 3 {
            return Vec::new();
        }
        let now = Instant::now();
        self.last_renew = now;
        let mut map = lock(&self.shared.in_flight);
        map.iter_mut()
            .filter(|(_, at)| now.duration_since(**at) >= lease / 3)
            .map(|(seq, at)| {
                *at = now;
                *seq
            })
            .collect()
    }
}

/// The result of a finished (or awaited) ingest task. A task that did not complete moved
/// nothing (its transaction rolled back): the next step ingests again.
async fn joined(ingest: tokio::task::JoinHandle<Result<i32, Error>>) -> Result<i32, Error> {
    ingest.await.unwrap_or_else(|error| {
        tracing::warn!(%error, "an ingest did not complete; it will be retried");
        Ok(0)
    })
}

enum Step {
    /// More work is likely waiting: loop at once.
    Busy,
    /// Less than a batch claimed and nothing moved: look again after [`TRICKLE_WAIT`].
    Trickle,
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
    give_up: tokio::sync::watch::Receiver<bool>,
) {
    let mut store: Option<Store> = None;
    let mut backoff = Backoff::default();
    let mut batch: Vec<Done> = Vec::with_capacity(SETTLE_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < SETTLE_BATCH {
            match rx.try_recv() {
                Ok(done) => batch.push(done),
                Err(_) => break,
            }
        }
        let settlements: Vec<Settlement> = batch.iter().map(|d| d.settlement.clone()).collect();
        loop {
            let result = async {
                if store.as_ref().is_none_or(Store::is_closed) {
                    let client = pgevents_log::connect(&url, None).await?;
                    store = Some(Store::open(client, &schema).await?);
                }
                match store.as_ref() {
                    Some(s) => s.settle(&settlements, owner).await,
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
                            "some events were taken over by another dispatcher after their lease ended; they will be delivered again"
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
        let now = Instant::now();
        {
            let mut in_flight = lock(&shared.in_flight);
            let mut retries = lock(&shared.retries);
            for s in &settlements {
                in_flight.remove(&s.seq);
                if let Verdict::Retry(after) = s.verdict {
                    retries.push(Reverse(now + after));
                }
            }
        }
        batch.clear();
        shared.settled.notify_one();
    }
}
