//! A listener under measurement: a handler that counts what it receives and when, and the
//! running listener task, stopped gracefully (or aborted when dropped).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgevents::{Event, Listener};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Counts deliveries and remembers when the latest one arrived.
#[derive(Clone)]
pub struct Counter(Arc<CounterInner>);

struct CounterInner {
    base: Instant,
    hits: AtomicU64,
    last_ns: AtomicU64,
}

impl Counter {
    /// A counter at zero.
    pub fn new() -> Counter {
        Counter(Arc::new(CounterInner {
            base: Instant::now(),
            hits: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        }))
    }

    /// Records one delivery.
    pub fn hit(&self) {
        let ns = u64::try_from(self.0.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.last_ns.fetch_max(ns, Ordering::Relaxed);
        self.0.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Deliveries so far.
    pub fn count(&self) -> u64 {
        self.0.hits.load(Ordering::Relaxed)
    }

    /// When the latest delivery arrived.
    pub fn last(&self) -> Instant {
        self.0.base + Duration::from_nanos(self.0.last_ns.load(Ordering::Relaxed))
    }

    /// An in-process handler that only counts: the cheapest possible handler, so the
    /// figures measure pgevents, not the handler.
    pub fn handler(&self) -> impl pgevents::Handler {
        let counter = self.clone();
        move |_event: Event| {
            let counter = counter.clone();
            async move {
                counter.hit();
                Ok::<_, Infallible>(())
            }
        }
    }

    /// Waits until `n` deliveries arrived (polling every 2 ms); returns when the n-th did.
    pub async fn wait_for(&self, n: u64, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} events delivered after {timeout:?}",
                    self.count()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(self.last())
    }
}

/// A listener running on a task of its own.
pub struct RunningListener {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), pgevents::Error>>>,
}

impl RunningListener {
    /// Runs `listener` until [`stop`](Self::stop) (or until dropped, which aborts it).
    pub fn start(listener: Listener) -> RunningListener {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(listener.run(async move {
            let _ = stopped.await;
        }));
        RunningListener {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Asks the listener to stop and waits for its graceful drain.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .context("the listener did not stop within 60 s")?
                .context("the listener task failed")?
                .context("the listener failed")?;
        }
        Ok(())
    }
}

/// Runs `listener` until `counter` saw `n` events, stops it, and returns events/s from its
/// start to the `n`-th arrival.
pub async fn drain_rate(listener: Listener, counter: &Counter, n: u64) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let running = RunningListener::start(listener);
    let last = counter
        .wait_for(n, Duration::from_secs(120.max(n / 500)))
        .await?;
    running.stop().await?;
    Ok(n as f64 / last.saturating_duration_since(started).as_secs_f64())
}

impl Drop for RunningListener {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
