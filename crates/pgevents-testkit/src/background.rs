//! Tasks a test runs in the background until it stops them: a listener, a capture, a
//! dispatcher, a server, anything whose `run` takes a shutdown future.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The shutdown future handed to a background task: ready once the test stops the task (or
/// drops its handle).
pub struct Stop(oneshot::Receiver<()>);

impl Future for Stop {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A task running until [`Background::stop`].
pub struct Background<E> {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), E>>,
}

impl<E: Debug + Send + 'static> Background<E> {
    /// Spawns `run(stop)`, where `stop` is ready once [`Background::stop`] is called.
    pub fn spawn<Fut>(run: impl FnOnce(Stop) -> Fut) -> Background<E>
    where
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        Background {
            stop: Some(stop),
            task: tokio::spawn(run(Stop(stopped))),
        }
    }

    /// Signals the task to stop and waits for it; panics, naming `what`, unless it ends
    /// within `limit` without an error.
    pub async fn stop(mut self, limit: Duration, what: &str) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(limit, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("{what} stops within {limit:?}"))
            .unwrap_or_else(|e| panic!("{what} task: {e}"))
            .unwrap_or_else(|e| panic!("{what} run: {e:?}"));
    }
}
