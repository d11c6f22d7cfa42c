//! Test support: a fresh database per test, collecting handlers, waits with deadlines.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgevents::{Event, Listener, ListenerBuilder};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// A fresh database and a connection to it.
pub struct Db {
    pub url: String,
    pub client: Client,
}

pub async fn db() -> Db {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let url = pgevents_tempdb::testing::fresh_database("pgevents_test").expect("test database");
    let client = connect(&url).await;
    Db { url, client }
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
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

/// A listener running in the background.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), pgevents::Error>>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("listener stops within a minute")
            .expect("listener task")
            .expect("listener run");
    }
}

pub async fn start(builder: ListenerBuilder) -> Running {
    let listener: Listener = builder.build().await.expect("build listener");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(listener.run(async move {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        task,
    }
}

/// Polls `check` until it returns true, or panics after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
