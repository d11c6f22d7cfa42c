//! `pgevents run`: install, then capture, deliver and keep the log tidy until shutdown.

use std::future::Future;
use std::time::Duration;

use pgevents_admin::{AdminState, Health};
use pgevents_config::Config;
use pgevents_dispatch::{Dispatcher, Options, Route};

use crate::commands::{install, schema, Installed};
use crate::DaemonError;

/// How often retention looks for old events.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
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
    let Installed { ids, salt, capture } = install(&config).await?;
    let mut routes = Vec::with_capacity(ids.len());
    for (trigger, id) in config.triggers.iter().zip(ids) {
        let sink = trigger.build_sink(&trigger.path()).map_err(|e| {
            DaemonError::Config(pgevents_config::ConfigErrors {
                source: config.source.clone(),
                errors: vec![e],
            })
        })?;
        routes.push(Route {
            trigger_id: id,
            name: trigger.name.as_str().into(),
            schema: trigger.table.schema.as_str().into(),
            table: trigger.table.name.as_str().into(),
            sink,
            retry: trigger.retry,
        });
    }
    let url = config.database_url().to_string();
    let health = Health::new();
    let dispatcher = Dispatcher::new(
        url.clone(),
        schema.clone(),
        salt,
        routes,
        Options::default(),
    )
    .with_health(health.clone());
    let admin_addr = admin_listener.local_addr().ok();
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(pgevents_admin::serve(
        admin_listener,
        AdminState::new(url.clone(), schema.clone(), salt, token, health),
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
            let (captured, dispatched) = capture.run_beside(dispatcher, shutdown).await;
            if let Err(e) = captured {
                let message = format!("{}: capture: {e}", config.source);
                return Err(if e.is_transient() {
                    DaemonError::Runtime(message)
                } else {
                    DaemonError::Setup(message)
                });
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

/// Removes old delivered and failed events in small batches, forever.
async fn retention_loop(
    url: String,
    schema: pgevents_log::LogSchema,
    delivered: Duration,
    failed: Duration,
) {
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    loop {
        tick.tick().await;
        let client = match pgevents_log::connect(&url, None).await {
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
