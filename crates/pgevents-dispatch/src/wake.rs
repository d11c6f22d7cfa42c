//! The wake-up connection: LISTEN for writers' notifications, and the advisory lock that
//! tells writers a dispatcher is asleep (see `pgevents_log::wake_key`).

use pgevents_log::{wake_channel, wake_key, Error, LogSchema};
use pgevents_postgres::quote_ident;
use tokio::sync::mpsc;
use tokio_postgres::{Client, Notification};

/// A connection listening on the log's wake channel.
pub(crate) struct Waker {
    client: Client,
    key: i64,
    holding: bool,
}

impl Waker {
    /// Connects and starts listening; notifications arrive on `tx`.
    pub(crate) async fn connect(
        url: &str,
        schema: &LogSchema,
        tx: mpsc::Sender<Notification>,
    ) -> Result<Waker, Error> {
        let client = pgevents_postgres::connect(url, Some(tx)).await?;
        client
            .batch_execute(&format!("LISTEN {}", quote_ident(&wake_channel(schema))))
            .await
            .map_err(|e| Error::query("listening for new events", e))?;
        Ok(Waker {
            client,
            key: wake_key(schema),
            holding: false,
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub(crate) fn holding(&self) -> bool {
        self.holding
    }

    /// Tries to announce "asleep": true when the lock was taken (writers will now notify).
    pub(crate) async fn try_sleep(&mut self) -> Result<bool, Error> {
        if !self.holding {
            let row = self
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&self.key])
                .await
                .map_err(|e| Error::query("taking the wake-up lock", e))?;
            self.holding = row.get(0);
        }
        Ok(self.holding)
    }

    /// Announces "awake": writers stop notifying.
    pub(crate) async fn awake(&mut self) -> Result<(), Error> {
        if self.holding {
            self.holding = false;
            self.client
                .query_one("SELECT pg_advisory_unlock($1)", &[&self.key])
                .await
                .map_err(|e| Error::query("releasing the wake-up lock", e))?;
        }
        Ok(())
    }
}
