//! A small pool of database connections for the API: at most [`POOL_SIZE`] in use at once,
//! opened on demand, reused while alive. No lock is held across an `.await`: a semaphore
//! bounds use, and a short-lived mutex guards only the list of idle connections.

use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;

use crate::error::ApiError;

/// Connections the admin server opens at most.
pub(crate) const POOL_SIZE: usize = 4;
/// How long a request waits for a connection (a free one, or a new one) before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pool; cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

/// A connection taken from the pool; goes back when dropped, unless it is closed.
pub(crate) struct Conn {
    client: Option<Client>,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A pool connecting to `url` on demand.
    pub(crate) fn new(url: String) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                url,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(POOL_SIZE)),
            }),
        }
    }

    /// A live connection, waiting up to [`ACQUIRE_TIMEOUT`].
    pub(crate) async fn get(&self) -> Result<Conn, ApiError> {
        tokio::time::timeout(ACQUIRE_TIMEOUT, self.acquire())
            .await
            .map_err(|_| {
                ApiError::Unavailable(format!(
                    "no database connection within {ACQUIRE_TIMEOUT:?}: the database is slow or unreachable"
                ))
            })?
    }

    async fn acquire(&self) -> Result<Conn, ApiError> {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable("the admin server is shutting down".into()))?;
        let reused = {
            let mut idle = lock(&self.inner.idle);
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match reused {
            Some(client) => client,
            None => pgevents_postgres::connect(&self.inner.url, None)
                .await
                .map_err(pgevents_log::Error::from)?,
        };
        Ok(Conn {
            client: Some(client),
            pool: self.inner.clone(),
            _permit: permit,
        })
    }
}

impl Deref for Conn {
    type Target = Client;

    fn deref(&self) -> &Client {
        // Always Some until drop.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take().filter(|c| !c.is_closed()) {
            lock(&self.pool.idle).push(client);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only pushes and pops happen under this lock: a panic cannot leave the list inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
