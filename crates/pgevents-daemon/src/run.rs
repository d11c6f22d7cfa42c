//! `pgevents run`: install, then capture, deliver and keep the log tidy until shutdown.

use std::future::Future;
use std::time::Duration;

use pgevents_admin::{AdminState, Health};
use pgevents_config::{CaptureMode, Config};
use pgevents_dispatch::{Dispatcher, Options, Route};

use crate::commands::{install, installed_already, logical_error, schema, Installed};
use crate::DaemonError;

/// How often retention looks for old events at most; shorter retention periods are looked
/// at more often (every half period), so the log never holds much more than they allow.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest time between two retention passes.
const RETENTION_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The first wait before installing again when the database is out of reach at start.
const INSTALL_RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between two attempts to install at start.
const INSTALL_RETRY_MAX: Duration = Duration::from_secs(10);
/// Events removed per retention statement.
const RETENTION_BATCH: i64 = 1000;

/// Installs (idempotently) and runs delivery until `shutdown` completes, then drains
/// in-flight work. Transient faults (the database going away, a dead webhook) never end
/// it: they are logged and retried.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let schema = schema(&config)?;
    let token = match config.admin.token() {
        Some("") => {
            return Err(DaemonError::Setup(format!(
                "{}: admin.token_from_env: the variable is set but empty; set a token or remove token_from_env",
                config.source
            )))
        }
        other => other.map(str::to_string),
    };
    // Before anything is counted, so no early event is missing from /metrics.
    pgevents_admin::install_metrics_recorder();
    let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .map_err(|e| {
            DaemonError::Setup(format!(
                "{}: admin.listen: cannot listen on {}: {e}; choose another address or port",
                config.source, config.admin.listen
            ))
        })?;
    let mut shutdown = Box::pin(shutdown);
    let Some(Installed { ids, salt, capture }) = install_for_run(&config, &mut shutdown).await?
    else {
        tracing::info!("stopped before the database could be reached");
        return Ok(());
    };
    let mut routes = Vec::with_capacity(ids.len());
    for (trigger, id) in config.triggers.iter().zip(ids) {
        let sink = trigger
            .destination
            .build_sink(&trigger.path(), trigger.format)
            .map_err(|e| {
                DaemonError::Config(pgevents_config::ConfigErrors {
                    source: config.source.clone(),
                    errors: vec![e],
                })
            })?;
        routes.push(Route::new(id, trigger.with_destination(sink)));
    }
    let url = config.database_url().to_string();
    let health = Health::new();
    warn_unconfigured(&config, &schema).await;
    let dispatcher = Dispatcher::new(
        url.clone(),
        schema.clone(),
        salt,
        routes,
        Options {
            notify: config.capture.notify,
            ..Options::default()
        },
    )
    .with_health(health.clone())
    .with_wal_capture(config.capture.mode == CaptureMode::Logical);
    let admin_addr = admin_listener.local_addr().ok();
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(pgevents_admin::serve(
        admin_listener,
        AdminState::new(url.clone(), schema.clone(), salt, token, health)
            .with_allowed_hosts(config.admin.allowed_hosts.clone()),
        async move {
            let _ = admin_stopped.await;
        },
    ));
    tracing::info!(
        triggers = config.triggers.len(),
        schema = schema.name(),
        admin = ?admin_addr,
        "pgevents running"
    );
    let retention = tokio::spawn(retention_loop(
        url,
        schema,
        config.retention.delivered,
        config.retention.failed,
    ));
    let result = match capture {
        None => dispatcher.run(shutdown).await,
        Some(capture) => {
            let (captured, dispatched) =
                pgevents::compose::run_beside(capture, dispatcher, shutdown).await;
            if let Err(e) = captured {
                return Err(logical_error(&config, e));
            }
            dispatched
        }
    };
    retention.abort();
    let _ = retention.await;
    // The admin server keeps answering while delivery drains.
    let _ = stop_admin.send(());
    match admin.await {
        Ok(Err(error)) => tracing::warn!(%error, "the admin server failed"),
        Err(error) => tracing::warn!(%error, "the admin server task failed"),
        Ok(Ok(())) => {}
    }
    tracing::info!("pgevents stopped");
    result.map_err(DaemonError::from)
}

/// Installs what `run` needs, idempotently, and returns it — or `None` when `shutdown`
/// came first.
///
/// While the database is out of reach it keeps trying, backing off, so a daemon started
/// before its database (or during a restart) waits instead of exiting. When the role may
/// not install (the least-privilege mode: it holds only the grants `run` needs) but
/// everything is installed as configured already, it goes ahead without reinstalling.
async fn install_for_run(
    config: &Config,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<Installed>, DaemonError> {
    let mut wait = INSTALL_RETRY_FIRST;
    loop {
        let error = match install(config).await {
            Ok(installed) => return Ok(Some(installed)),
            Err(DaemonError::Privilege(message)) => {
                let already = installed_already(config).await.map_err(|e| match e {
                    DaemonError::Privilege(m) => DaemonError::Privilege(format!(
                        "{message}\n{m}\nthe role running pgevents needs USAGE on the log schema, SELECT, INSERT, UPDATE and DELETE on its tables, USAGE on its sequences and EXECUTE on its functions; `pgevents check` lists what is missing"
                    )),
                    other => other,
                })?;
                return match already {
                    Some(installed) => {
                        tracing::info!(
                            "this role may not install, but the event log and every trigger are installed as configured; running with them"
                        );
                        tracing::debug!(reason = %message, "install skipped");
                        Ok(Some(installed))
                    }
                    None => Err(DaemonError::Privilege(format!(
                        "{message}\nthis role may not install pgevents, and the installation is missing or differs from {}: run `pgevents install` as the database owner first (the role running pgevents then needs only the grants of the least-privilege mode)",
                        config.source
                    ))),
                };
            }
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        tracing::warn!(%error, retry_in = ?wait, "cannot install yet; retrying");
        tokio::select! {
            _ = &mut *shutdown => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(INSTALL_RETRY_MAX);
    }
}

/// Names, in a warning, the triggers the log still captures for that the config does not
/// name: their events pile up undelivered until `pgevents install` removes their capture.
async fn warn_unconfigured(config: &Config, schema: &pgevents_log::LogSchema) {
    let found = match crate::commands::connect(config).await {
        Ok(client) => crate::commands::unconfigured(config, &client, schema).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(stale) if !stale.is_empty() => {
            let names: Vec<&str> = stale.iter().map(|t| t.name.as_str()).collect();
            tracing::warn!(
                triggers = ?names,
                "the event log still captures for triggers that {} does not name; nothing delivers their events: run `pgevents install` to remove their capture (their events are kept), or add them back to the config",
                config.source
            );
        }
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "could not look for unconfigured triggers"),
    }
}

/// How often retention runs for these retention periods: every half of the shorter one,
/// at most [`RETENTION_INTERVAL`] and at least [`RETENTION_MIN_INTERVAL`] apart.
fn retention_interval(delivered: Duration, failed: Duration) -> Duration {
    (delivered.min(failed) / 2).clamp(RETENTION_MIN_INTERVAL, RETENTION_INTERVAL)
}

/// Removes old delivered and failed events in small batches, forever.
async fn retention_loop(
    url: String,
    schema: pgevents_log::LogSchema,
    delivered: Duration,
    failed: Duration,
) {
    let mut tick = tokio::time::interval(retention_interval(delivered, failed));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let client = match pgevents_postgres::connect(&url, None).await {
            Ok(c) => c,
            Err(error) => {
                tracing::debug!(%error, "retention: database unavailable; trying later");
                continue;
            }
        };
        let mut removed = 0u64;
        loop {
            match pgevents_log::store::purge(&client, &schema, delivered, failed, RETENTION_BATCH)
                .await
            {
                Ok(0) => break,
                Ok(n) => removed += n,
                Err(error) => {
                    tracing::warn!(%error, "retention: could not remove old events; trying later");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "retention removed old events");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_runs_every_half_period_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(
            retention_interval(s(7 * 86400), s(30 * 86400)),
            RETENTION_INTERVAL
        );
        assert_eq!(retention_interval(s(30 * 86400), s(10)), s(5));
        assert_eq!(retention_interval(s(1), s(30)), Duration::from_millis(500));
        assert_eq!(
            retention_interval(Duration::ZERO, s(30)),
            RETENTION_MIN_INTERVAL
        );
    }
}
