//! Opening connections to PostgreSQL.

use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::Error;

/// The `application_name` of pgevents' connections, unless the URL sets one.
pub const APPLICATION_NAME: &str = "pgevents";

/// Connects to `url` and drives the connection on a background task.
///
/// Server notices are logged; notifications (LISTEN) are sent to `notifications` when given.
/// The returned client reports `is_closed()` once the connection is gone.
pub async fn connect(
    url: &str,
    notifications: Option<tokio::sync::mpsc::Sender<tokio_postgres::Notification>>,
) -> Result<Client, Error> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|source| Error::Connect {
        context: "parsing the database URL".into(),
        source,
    })?;
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    let (client, mut connection) =
        config
            .connect(NoTls)
            .await
            .map_err(|source| Error::Connect {
                context: "connecting".into(),
                source,
            })?;
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some(tx) = &notifications {
                        // A full channel already holds a wake-up; dropping this one is fine.
                        let _ = tx.try_send(n);
                    }
                }
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    tracing::debug!(message = notice.message(), "server notice");
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::debug!(%error, "database connection ended");
                    break;
                }
                None => break,
            }
        }
    });
    Ok(client)
}
