//! `pgevents backfill`: start a backfill, write its chunks while reporting progress, list
//! and cancel backfills.

use std::time::Duration;

use pgevents_config::Config;
use pgevents_log::backfill::{self, Backfill, State};
use tokio::sync::watch;

use crate::commands::{known_trigger, open};
use crate::DaemonError;

/// How often progress is read back while another process writes the chunks.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Where a backfill stands, as reported to a progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The backfill's id.
    pub id: i64,
    /// Rows read so far.
    pub rows_done: i64,
    /// The planner's estimate of the rows to read.
    pub rows_estimated: i64,
}

/// Starts a backfill of `trigger` (rows matching `condition`, when given) and writes its
/// chunks until it ends, calling `progress` after each chunk; returns it as it ended. When
/// a daemon took the backfill over first, follows its progress instead. If this process is
/// killed, a running `pgevents run` continues the backfill where it was.
///
/// An unknown trigger, a table without a primary key or a condition that is not valid SQL
/// for the table fail with exit code 2, starting nothing.
pub async fn backfill(
    config: &Config,
    trigger: &str,
    condition: Option<&str>,
    mut progress: impl FnMut(&Progress),
) -> Result<Backfill, DaemonError> {
    known_trigger(config, trigger)?;
    let (mut client, schema, _) = open(config).await?;
    let id = pgevents_capture::backfill::start(&client, &schema, trigger, condition).await?;
    let started = find(&client, &schema, id).await?;
    let mut now = Progress {
        id,
        rows_done: started.rows_done,
        rows_estimated: started.rows_estimated,
    };
    progress(&now);
    // Never asked to stop: the process ends it (Ctrl-C), and the daemon continues.
    let (_keep, stop) = watch::channel(false);
    loop {
        let driven =
            pgevents_dispatch::backfill::drive(&mut client, &schema, id, &stop, None, |rows| {
                now.rows_done += rows;
                now.rows_estimated = now.rows_estimated.max(now.rows_done);
                progress(&now);
            })
            .await?;
        if driven != pgevents_dispatch::backfill::Driven::Busy {
            break;
        }
        tokio::time::sleep(WATCH_EVERY).await;
        let seen = find(&client, &schema, id).await?;
        now.rows_done = seen.rows_done;
        now.rows_estimated = seen.rows_estimated;
        progress(&now);
        if seen.state != State::Running {
            break;
        }
    }
    find(&client, &schema, id).await
}

async fn find(
    client: &tokio_postgres::Client,
    schema: &pgevents_log::LogSchema,
    id: i64,
) -> Result<Backfill, DaemonError> {
    backfill::get(client, schema, id)
        .await?
        .ok_or_else(|| DaemonError::Runtime(format!("backfill {id} disappeared from the log")))
}

/// Every backfill, newest first.
pub async fn backfills(config: &Config) -> Result<Vec<Backfill>, DaemonError> {
    let (client, schema, _) = open(config).await?;
    Ok(backfill::list(&client, &schema, 1000).await?)
}

/// Cancels backfill `target` (an id, or a trigger's name: all its running backfills);
/// returns the ids cancelled.
pub async fn cancel_backfill(config: &Config, target: &str) -> Result<Vec<i64>, DaemonError> {
    let (client, schema, _) = open(config).await?;
    let cancelled = match target.parse::<i64>() {
        Ok(id) => backfill::cancel(&client, &schema, Some(id), None).await?,
        Err(_) => {
            known_trigger(config, target)?;
            backfill::cancel(&client, &schema, None, Some(target)).await?
        }
    };
    if cancelled.is_empty() {
        return Err(DaemonError::Usage(format!(
            "no running backfill {target}: `pgevents backfill --status` lists them"
        )));
    }
    Ok(cancelled)
}
