//! Delivering events before they are written to the log: a backfill chunk's `READ` events
//! while it holds their rows, and captured rows while they are moved into the log (see
//! [`pgevents_log::inline`]).
//!
//! An attempt that ends as soon as it starts (an in-process handler that never waits) ends
//! in place; the others run as tasks of their own, side by side. The writing transaction
//! waits only a moment for those (no other move, and no other chunk, runs until it
//! commits). An attempt still under way then is written
//! leased to this dispatcher and becomes one of its claims: its lease is renewed, and once
//! the transaction has committed its outcome goes to the settler like any other.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use pgevents_log::inline::{Attempted, DeliverFirst, Delivered};
use pgevents_log::store::Claimed;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinSet;

use crate::breaker::Allowance;
use crate::deliver;
use crate::dispatcher::{drain, event_of, lock, Done, Options, Route, Shared};

/// A dispatcher's delivery of events before they are written, to triggers it routes whose
/// breaker is closed.
pub(crate) struct Inline {
    routes: HashMap<i32, Route>,
    salt: u16,
    owner: i64,
    lease: Duration,
    shared: Arc<Shared>,
    /// Bounds the attempts under way (`max_in_flight`). Not the claim loop's permits: it
    /// claims as many events as it finds permits free, and each claimed event must get one.
    permits: Arc<Semaphore>,
    /// Where attempts that outlived their chunk's wait send their outcome.
    done_tx: mpsc::Sender<Done>,
    /// The attempts (reaped at each chunk, drained at shutdown); `None` once drained: a
    /// writer still holding this delivery then writes its events pending.
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Inline {
    pub(crate) fn new(
        routes: HashMap<i32, Route>,
        salt: u16,
        owner: i64,
        options: Options,
        shared: Arc<Shared>,
        done_tx: mpsc::Sender<Done>,
    ) -> Inline {
        Inline {
            routes,
            salt,
            owner,
            lease: options.lease,
            shared,
            permits: Arc::new(Semaphore::new(options.max_in_flight)),
            done_tx,
            tasks: Mutex::new(Some(JoinSet::new())),
        }
    }

    /// Waits for the attempts still under way until `deadline`, then aborts the rest (their
    /// events are released with the dispatcher's other claims, or come back when their
    /// lease ends).
    pub(crate) async fn drain(&self, deadline: tokio::time::Instant) {
        let Some(mut tasks) = lock(&self.tasks).take() else {
            return;
        };
        drain(&mut tasks, deadline).await;
    }
}

impl DeliverFirst for Inline {
    fn owner(&self) -> i64 {
        self.owner
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    fn deliver(
        &self,
        events: Vec<Claimed>,
        wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Delivered> + Send + '_>> {
        Box::pin(async move {
            let now = Instant::now();
            let open: HashMap<i32, &Route> = {
                let breakers = lock(&self.shared.breakers);
                self.routes
                    .iter()
                    .filter(|(t, _)| breakers.allowance(**t, now) == Allowance::Closed)
                    .map(|(t, r)| (*t, r))
                    .collect()
            };
            // This transaction's own signal, whatever else delivers meanwhile (today the
            // ingest lock keeps a chunk and a move apart; nothing here relies on it).
            let (commit_tx, commit_rx) = watch::channel(None);
            if let Some(tasks) = lock(&self.tasks).as_mut() {
                while tasks.try_join_next().is_some() {}
            }
            let deadline = tokio::time::Instant::now() + wait;
            let mut waiting = Vec::new();
            let mut ended = Vec::with_capacity(events.len());
            for claimed in events {
                let (trigger_id, claim, size) =
                    (claimed.trigger_id, claimed.token(), claimed.size());
                let Some(route) = open.get(&trigger_id) else {
                    continue;
                };
                let permit = self.permits.clone().acquire_owned();
                let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, permit).await else {
                    break;
                };
                // Drained (shutdown): this and the rest are written pending.
                if lock(&self.tasks).is_none() {
                    break;
                }
                let Ok(event) = event_of(claimed, route, self.salt) else {
                    continue;
                };
                let mut attempt = Box::pin(deliver::attempt(
                    route.sink.clone(),
                    route.retry,
                    route.name.clone(),
                    event,
                    0,
                    claim,
                ));
                // Most in-process handlers finish without waiting: such an attempt ends here,
                // without a task of its own (a handler that works long without waiting holds
                // the write that long, as it would hold a runtime thread anyway).
                if let Poll::Ready(settlement) = futures::poll!(attempt.as_mut()) {
                    self.shared.record_outcome(trigger_id, &settlement.verdict);
                    self.shared
                        .schedule_retry(settlement.retry_left(chrono::Utc::now()));
                    ended.push(Attempted::Ended(settlement));
                    continue;
                }
                let (shared, done_tx) = (self.shared.clone(), self.done_tx.clone());
                let mut committed = commit_rx.clone();
                let (ended_tx, ended_rx) = oneshot::channel();
                let attempt = async move {
                    let settlement = attempt.await;
                    shared.record_outcome(trigger_id, &settlement.verdict);
                    let left = settlement.retry_left(chrono::Utc::now());
                    // Taken by the writing transaction, which records the outcome itself.
                    let Err(settlement) = ended_tx.send(settlement) else {
                        shared.schedule_retry(left);
                        return;
                    };
                    // Left under way: settled like any claim once the transaction committed.
                    let outcome = committed.wait_for(Option::is_some).await.map(|c| *c);
                    if matches!(outcome, Ok(Some(true))) {
                        let _ = done_tx
                            .send(Done {
                                settlement,
                                _permit: permit,
                            })
                            .await;
                    } else {
                        lock(&shared.in_flight).remove(&settlement.claim);
                    }
                };
                match lock(&self.tasks).as_mut() {
                    Some(tasks) => {
                        tasks.spawn(attempt);
                    }
                    // Drained (shutdown): this and the rest are written pending.
                    None => break,
                }
                waiting.push((trigger_id, claim, size, ended_rx));
            }
            let mut attempted = ended;
            for (trigger_id, claim, size, mut ended) in waiting {
                match tokio::time::timeout_at(deadline, &mut ended).await {
                    Ok(Ok(settlement)) => attempted.push(Attempted::Ended(settlement)),
                    // The attempt's task is gone: the event is written pending.
                    Ok(Err(_)) => {}
                    Err(_) => {
                        ended.close();
                        match ended.try_recv() {
                            Ok(settlement) => attempted.push(Attempted::Ended(settlement)),
                            Err(_) => {
                                lock(&self.shared.in_flight).insert(
                                    claim,
                                    trigger_id,
                                    size,
                                    Instant::now(),
                                );
                                attempted.push(Attempted::UnderWay(claim.seq));
                            }
                        }
                    }
                }
            }
            Delivered {
                attempted,
                finish: Box::new(move |committed| {
                    let _ = commit_tx.send(Some(committed));
                }),
            }
        })
    }
}
