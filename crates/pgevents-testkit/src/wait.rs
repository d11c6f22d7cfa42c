//! Waits with deadlines: a test polls for what it waits for and fails, saying what it waited
//! for, once the deadline passes; it never sleeps for a fixed time and hopes.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long a poll waits before it looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns true; panics with "timed out waiting for {what}" after
/// `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: impl Display, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Deadline::after(limit);
    while !check().await {
        deadline
            .next_poll(|| format!("timed out waiting for {what}"))
            .await;
    }
}

/// The moment a polling loop gives up.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(Instant);

impl Deadline {
    /// `limit` from now.
    pub fn after(limit: Duration) -> Deadline {
        Deadline(Instant::now() + limit)
    }

    /// True once the deadline has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.0
    }

    /// Panics with `failure()` if the deadline has passed; otherwise waits [`POLL`] before
    /// the loop looks again.
    pub async fn next_poll(&self, failure: impl FnOnce() -> String) {
        assert!(!self.passed(), "{}", failure());
        tokio::time::sleep(POLL).await;
    }
}
