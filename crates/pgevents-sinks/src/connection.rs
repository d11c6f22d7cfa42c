//! One broker connection per sink, opened on first use and reopened after a failure.
//!
//! Deliveries take the current connection without waiting: a short, synchronous lock
//! clones an `Arc`, and the publish itself runs with no lock held, so any number of
//! deliveries share (and pipeline over) one connection. Only opening a connection waits, on
//! an async lock, and it is single-flight: deliveries that queued behind a failed attempt
//! fail with its error at once instead of each trying again, so a broker that is down
//! costs one connection attempt per wave of deliveries, not one per event.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A lazily (re)opened connection of type `C`.
pub(crate) struct ConnectionSlot<C> {
    current: Mutex<State<C>>,
    /// Held while a connection is being opened.
    opening: tokio::sync::Mutex<()>,
    /// How many connection attempts have finished.
    attempts: AtomicU64,
}

struct State<C> {
    connection: Option<Arc<C>>,
    last_error: Option<String>,
}

impl<C> Default for ConnectionSlot<C> {
    fn default() -> Self {
        ConnectionSlot {
            current: Mutex::new(State {
                connection: None,
                last_error: None,
            }),
            opening: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
        }
    }
}

impl<C> ConnectionSlot<C> {
    fn state(&self) -> std::sync::MutexGuard<'_, State<C>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open connection, if any.
    pub(crate) fn current(&self) -> Option<Arc<C>> {
        self.state().connection.clone()
    }

    /// The open connection, or a new one from `open`. The error of a failed attempt is
    /// returned to every delivery that waited for that attempt.
    pub(crate) async fn get<F, Fut>(&self, open: F) -> Result<Arc<C>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, String>>,
    {
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let attempts_before = self.attempts.load(Ordering::Acquire);
        let _opening = self.opening.lock().await;
        {
            let state = self.state();
            if let Some(connection) = &state.connection {
                return Ok(Arc::clone(connection));
            }
            if self.attempts.load(Ordering::Acquire) != attempts_before {
                if let Some(error) = &state.last_error {
                    return Err(error.clone());
                }
            }
        }
        let opened = open().await;
        let mut state = self.state();
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match opened {
            Ok(connection) => {
                let connection = Arc::new(connection);
                state.connection = Some(Arc::clone(&connection));
                state.last_error = None;
                Ok(connection)
            }
            Err(error) => {
                state.last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Drops `failed` if it is still the current connection, so that the next delivery
    /// opens a new one (deliveries still using it finish, or fail, on their own).
    #[cfg(any(feature = "redis", feature = "amqp", feature = "kafka", test))]
    pub(crate) fn discard(&self, failed: &Arc<C>) {
        let mut state = self.state();
        if state
            .connection
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, failed))
        {
            state.connection = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn opens_once_shares_and_reopens_after_discard() {
        let slot = ConnectionSlot::<usize>::default();
        let opened = AtomicUsize::new(0);
        let open = || async { Ok::<_, String>(opened.fetch_add(1, Ordering::SeqCst)) };
        let first = slot.get(open).await.expect("opens");
        let again = slot.get(open).await.expect("shared");
        assert!(Arc::ptr_eq(&first, &again));
        slot.discard(&first);
        let second = slot.get(open).await.expect("reopens");
        assert_eq!((*first, *second), (0, 1));
        slot.discard(&first); // stale: keeps the new connection
        assert!(slot.current().is_some_and(|c| Arc::ptr_eq(&c, &second)));
    }

    #[tokio::test]
    async fn waiters_share_a_failed_attempt() {
        let slot = Arc::new(ConnectionSlot::<()>::default());
        let tries = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (slot, tries) = (Arc::clone(&slot), Arc::clone(&tries));
            tokio::spawn(async move {
                slot.get(|| async {
                    tries.fetch_add(1, Ordering::SeqCst);
                    let _ = released.await;
                    Err::<(), _>("refused".to_string())
                })
                .await
            })
        };
        // Wait (bounded) until the first attempt is under way.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tries.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        let second = {
            let (slot, tries) = (Arc::clone(&slot), Arc::clone(&tries));
            tokio::spawn(async move {
                slot.get(|| async {
                    tries.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        let _ = release.send(());
        assert_eq!(first.await.expect("task"), Err("refused".into()));
        assert_eq!(second.await.expect("task"), Err("refused".into()));
        assert_eq!(tries.load(Ordering::SeqCst), 1, "one attempt for both");
        // A later delivery tries again.
        assert!(slot.get(|| async { Ok(()) }).await.is_ok());
    }
}
