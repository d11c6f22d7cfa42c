//! The backfill worker: writes the chunks of running backfills, beside the dispatcher.
//!
//! A backfill's chunks are written by one connection at a time, the one holding its session
//! lock ([`pgevents_log::backfill::try_lock`]): `pgevents backfill` while it runs, else any
//! dispatcher's worker. A process that dies drops its connection and so its lock, and the
//! next worker to look continues after the last chunk committed. Each chunk is one short
//! transaction; its size adapts to the rows' size, to its duration and to lock conflicts with
//! writers. A dispatcher's worker delivers the chunk's events itself, before the chunk
//! commits, where nothing pending holds them back; `pgevents backfill` leaves them all to
//! the dispatchers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgevents_log::backfill::{self, Chunk};
use pgevents_log::inline::DeliverFirst;
use pgevents_log::{Error, LogSchema};
use tokio::sync::watch;
use tokio_postgres::Client;

/// Rows per chunk at most (and at the start).
pub const MAX_CHUNK_ROWS: i64 = 5_000;
/// Row text per chunk aimed at: chunks of big rows hold fewer rows.
const CHUNK_BYTES: i64 = 8 << 20;
/// The pause after a chunk gave way to a writer's lock; it doubles, up to a second.
const CONFLICT_PAUSE: Duration = Duration::from_millis(20);
/// How long a chunk should take at most: moving captured rows (and logical capture's
/// writer) waits for it, and rows a writer was at stay locked until it commits. A chunk that took longer is followed by one half its size.
const CHUNK_TIME: Duration = Duration::from_millis(250);
/// How often the worker looks for running backfills.
const POLL: Duration = Duration::from_secs(1);

/// How [`drive`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driven {
    /// The backfill is no longer running: done, cancelled, or failed.
    Ended,
    /// Another connection writes its chunks.
    Busy,
    /// `stop` was asked for between two chunks; the backfill goes on later.
    Stopped,
}

/// Writes backfill `id`'s chunks on `client` until it is no longer running, or `stop` turns
/// true, delivering their events with `delivery` when given; `on_chunk` is told the rows of
/// each chunk written. An error that is not about the
/// connection (the table was dropped, say) marks the backfill failed. Lock conflicts with
/// writers never end it: the chunk is tried again after a pause, smaller.
pub async fn drive(
    client: &mut Client,
    schema: &LogSchema,
    id: i64,
    stop: &watch::Receiver<bool>,
    delivery: Option<&dyn DeliverFirst>,
    mut on_chunk: impl FnMut(i64),
) -> Result<Driven, Error> {
    if !backfill::try_lock(client, schema, id).await? {
        return Ok(Driven::Busy);
    }
    let driven = write_chunks(client, schema, id, stop, delivery, &mut on_chunk).await;
    if let Err(e) = &driven {
        if !e.is_connection() {
            backfill::fail(client, schema, id, &e.to_string()).await?;
        }
    }
    if !client.is_closed() {
        backfill::unlock(client, schema, id).await?;
    }
    driven
}

async fn write_chunks(
    client: &mut Client,
    schema: &LogSchema,
    id: i64,
    stop: &watch::Receiver<bool>,
    delivery: Option<&dyn DeliverFirst>,
    on_chunk: &mut impl FnMut(i64),
) -> Result<Driven, Error> {
    let mut rows_per_chunk = MAX_CHUNK_ROWS;
    let mut pause = CONFLICT_PAUSE;
    loop {
        if *stop.borrow() {
            return Ok(Driven::Stopped);
        }
        let started = Instant::now();
        match backfill::run_chunk(client, schema, id, rows_per_chunk, delivery).await {
            Ok(Chunk::Written {
                rows,
                bytes,
                delivered,
                done,
            }) => {
                on_chunk(rows);
                tracing::debug!(backfill = id, rows, delivered, took = ?started.elapsed(), "backfill chunk written");
                if done {
                    tracing::info!(backfill = id, "backfill done");
                    return Ok(Driven::Ended);
                }
                rows_per_chunk = chunk_rows(rows, bytes);
                if started.elapsed() > CHUNK_TIME {
                    rows_per_chunk = rows_per_chunk.min((rows / 2).max(1));
                }
                pause = CONFLICT_PAUSE;
            }
            Ok(Chunk::Stopped) => return Ok(Driven::Ended),
            Err(e) if e.is_lock_conflict() => {
                tracing::debug!(
                    backfill = id,
                    rows = rows_per_chunk,
                    ?pause,
                    "backfill chunk gave way to a writer"
                );
                rows_per_chunk = (rows_per_chunk / 2).max(1);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Rows for the next chunk after one of `rows` rows holding `bytes` of row text: as many as
/// fit [`CHUNK_BYTES`], at most [`MAX_CHUNK_ROWS`].
fn chunk_rows(rows: i64, bytes: i64) -> i64 {
    if rows == 0 || bytes == 0 {
        return MAX_CHUNK_ROWS;
    }
    (CHUNK_BYTES / (bytes / rows).max(1)).clamp(1, MAX_CHUNK_ROWS)
}

/// Writes the chunks of every running backfill, one after the other, until `stop` turns
/// true, delivering their events with `delivery`; looks for new ones every second.
/// Database faults are logged and retried.
pub async fn run(
    url: String,
    schema: LogSchema,
    delivery: Arc<dyn DeliverFirst>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let connected = tokio::select! {
            _ = stop.changed() => break,
            connected = pgevents_postgres::connect(&url, None) => connected,
        };
        match connected {
            Ok(mut client) => {
                if let Err(error) = serve(&mut client, &schema, &*delivery, &mut stop).await {
                    tracing::warn!(%error, "backfills: database unavailable; trying again");
                }
            }
            Err(error) => tracing::debug!(%error, "backfills: database unavailable; trying later"),
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn serve(
    client: &mut Client,
    schema: &LogSchema,
    delivery: &dyn DeliverFirst,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Error> {
    while !*stop.borrow() {
        for id in backfill::running(client, schema).await? {
            match drive(client, schema, id, stop, Some(delivery), |_| {}).await {
                Ok(_) => {}
                Err(e) if e.is_connection() => return Err(e),
                Err(error) => tracing::warn!(backfill = id, %error, "backfill failed"),
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_shrink_for_big_rows() {
        assert_eq!(chunk_rows(0, 0), MAX_CHUNK_ROWS);
        assert_eq!(chunk_rows(5000, 500_000), MAX_CHUNK_ROWS);
        assert_eq!(chunk_rows(10, 10 << 20), 8);
        assert_eq!(chunk_rows(1, 100 << 20), 1);
    }
}
