//! Test support: a fresh database per test, collecting handlers, waits with deadlines.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgevents::{Event, Listener, ListenerBuilder};
use pgevents_testkit::background::Background;
pub use pgevents_testkit::db::{connect, insert_ids, Db};
pub use pgevents_testkit::wait::eventually;
use tokio::sync::Notify;

/// A fresh database and a connection to it.
pub async fn db() -> Db {
    pgevents_testkit::db::init_tracing();
    Db::fresh("pgevents_test").await
}

type Received = Mutex<Vec<(Instant, Event)>>;

/// Events received by a handler, with the time each arrived.
#[derive(Clone, Default)]
pub struct Collector {
    inner: Arc<(Received, Notify)>,
}

impl Collector {
    pub fn push(&self, event: Event) {
        self.inner
            .0
            .lock()
            .expect("lock")
            .push((Instant::now(), event));
        self.inner.1.notify_waiters();
    }

    pub fn events(&self) -> Vec<Event> {
        self.timed().into_iter().map(|(_, e)| e).collect()
    }

    pub fn timed(&self) -> Vec<(Instant, Event)> {
        self.inner.0.lock().expect("lock").clone()
    }

    pub fn len(&self) -> usize {
        self.inner.0.lock().expect("lock").len()
    }

    /// A handler that records every event and succeeds.
    pub fn handler(
        &self,
    ) -> impl Fn(Event) -> std::future::Ready<Result<(), std::convert::Infallible>> + Send + Sync + 'static
    {
        let c = self.clone();
        move |e| {
            c.push(e);
            std::future::ready(Ok(()))
        }
    }

    /// Waits until `done` holds for the received events, or panics after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&[Event]) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.1.notified();
            if done(&self.events()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let n = self.len();
                assert!(
                    done(&self.events()),
                    "timed out waiting for {what} ({n} events received)"
                );
                return;
            }
        }
    }
}

/// The `id` of each event's new row, in the order received (events without one left out).
pub fn ids(events: &[Event]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| e.new().and_then(|n| n.get("id")).and_then(|v| v.as_i64()))
        .collect()
}

/// A listener running in the background.
pub struct Running(Background<pgevents::Error>);

impl Running {
    pub async fn stop(self) {
        self.0.stop(Duration::from_secs(60), "the listener").await;
    }
}

/// Creates a table with `ddl` and starts a listener collecting the events of `table`.
pub async fn listening(db: &Db, ddl: &str, table: &str) -> (Collector, Running) {
    db.client.batch_execute(ddl).await.expect("schema");
    let events = Collector::default();
    let running = start(Listener::builder(&db.url).on(table, events.handler())).await;
    (events, running)
}

pub async fn start(builder: ListenerBuilder) -> Running {
    run(builder.build().await.expect("build listener"))
}

/// Runs `listener` in the background until [`Running::stop`].
pub fn run(listener: Listener) -> Running {
    Running(Background::spawn(|stop| listener.run(stop)))
}
