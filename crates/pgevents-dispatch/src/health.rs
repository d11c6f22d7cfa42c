//! A health handle the dispatcher keeps up to date, for health checks (the admin API's
//! `/healthz`) to read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether capture runs and the database answers, as last seen by a [`Dispatcher`].
///
/// Cheap to clone: clones share the same flags. Give one to
/// [`Dispatcher::with_health`] and read it from anywhere; both flags start `false`.
///
/// [`Dispatcher`]: crate::Dispatcher
/// [`Dispatcher::with_health`]: crate::Dispatcher::with_health
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    database_reachable: AtomicBool,
    capture_running: AtomicBool,
}

impl Health {
    /// A handle with both flags down.
    pub fn new() -> Health {
        Health::default()
    }

    /// True when the last look at the event log succeeded.
    pub fn database_reachable(&self) -> bool {
        self.inner.database_reachable.load(Ordering::Relaxed)
    }

    /// True while capture and delivery run (between start and the end of the drain).
    pub fn capture_running(&self) -> bool {
        self.inner.capture_running.load(Ordering::Relaxed)
    }

    /// True when both flags are up.
    pub fn is_healthy(&self) -> bool {
        self.database_reachable() && self.capture_running()
    }

    /// Records whether the database answered.
    pub fn set_database_reachable(&self, reachable: bool) {
        self.inner
            .database_reachable
            .store(reachable, Ordering::Relaxed);
    }

    /// Records whether capture runs.
    pub fn set_capture_running(&self, running: bool) {
        self.inner.capture_running.store(running, Ordering::Relaxed);
    }
}
