//! The daemon's commands: `run`, `check`, `install`, `uninstall`, `status`, `events`, `invoke`,
//! `backfill`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use pgevents_config::Config;
use pgevents_daemon::DaemonError;
use pgevents_log::browse::{Filter, Status};

/// `--config FILE`, or `PGEVENTS_CONFIG`.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The config file (TOML).
    #[arg(long, env = "PGEVENTS_CONFIG", value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install (idempotently) and run capture, delivery and the admin server until
    /// SIGINT/SIGTERM, then drain in-flight work.
    Run(ConfigArg),
    /// Validate the config and the database; print every problem; exit 0 or 2.
    Check(ConfigArg),
    /// Create the event log schema and the capture triggers.
    Install(ConfigArg),
    /// Remove the capture triggers (and, with --drop-log, the event log).
    Uninstall {
        /// Also drop the event log schema with every event in it.
        #[arg(long)]
        drop_log: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Per trigger: pending, delivered, failed, oldest pending age; capture lag.
    Status(ConfigArg),
    /// Browse, inspect and replay events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Create a manual event (action MANUAL, data.new = the JSON).
    Invoke {
        #[command(flatten)]
        config: ConfigArg,
        /// The trigger's name.
        trigger: String,
        /// The event's data, as JSON.
        #[arg(long, value_name = "JSON")]
        data: String,
    },
    /// An event (action READ) for every existing row of the trigger's table, or those matching
    /// --where, woven into the live stream; prints progress. If stopped, `pgevents run`
    /// continues it.
    Backfill {
        #[command(flatten)]
        config: ConfigArg,
        /// The trigger's name.
        #[arg(required_unless_present_any = ["status", "cancel"])]
        trigger: Option<String>,
        /// Only rows matching this SQL condition on the table's columns.
        #[arg(long = "where", value_name = "SQL", conflicts_with_all = ["status", "cancel"])]
        condition: Option<String>,
        /// List backfills and their progress.
        #[arg(long, conflicts_with_all = ["trigger", "cancel"])]
        status: bool,
        /// Stop a running backfill (its id), or every running backfill of a trigger (its name).
        #[arg(long, value_name = "ID|TRIGGER", conflicts_with = "trigger")]
        cancel: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this trigger's events.
        #[arg(long)]
        trigger: Option<String>,
        /// Only events with this status.
        #[arg(long, value_parser = ["pending", "delivered", "failed"])]
        status: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one event, its payload and every attempt.
    Show {
        /// The event id.
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Deliver events again (same ids, fresh retry budget).
    Redeliver {
        /// Event ids.
        #[arg(required_unless_present = "failed")]
        ids: Vec<String>,
        /// Every failed event of --trigger.
        #[arg(long, requires = "trigger", conflicts_with = "ids")]
        failed: bool,
        /// The trigger whose failed events to redeliver.
        #[arg(long)]
        trigger: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn load(arg: &ConfigArg) -> Result<Config, DaemonError> {
    let config = Config::load(&arg.config)?;
    for warning in config.warnings() {
        eprintln!("warning: {}: {warning}", config.source);
    }
    Ok(config)
}

pub async fn run(command: Command) -> ExitCode {
    match execute(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                DaemonError::Config(errors) => eprintln!("{errors}"),
                other => eprintln!("error: {other}"),
            }
            ExitCode::from(e.exit_code())
        }
    }
}

async fn execute(command: Command) -> Result<(), DaemonError> {
    match command {
        Command::Run(arg) => {
            let config = load(&arg)?;
            pgevents_daemon::run(config, crate::signals::shutdown()).await
        }
        Command::Check(arg) => {
            let config = load(&arg)?;
            let problems = pgevents_daemon::check(&config).await?;
            if problems.is_empty() {
                println!(
                    "ok: {} is valid and the database is ready ({} triggers)",
                    config.source,
                    config.triggers.len()
                );
                return Ok(());
            }
            Err(DaemonError::Setup(
                problems
                    .iter()
                    .map(|p| format!("{}: {p}", config.source))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ))
        }
        Command::Install(arg) => {
            let config = load(&arg)?;
            pgevents_daemon::install(&config).await?;
            println!(
                "installed the event log in schema {:?} and {} triggers: {}",
                config.database.log_schema,
                config.triggers.len(),
                names(&config)
            );
            let removed = pgevents_daemon::remove_unconfigured(&config).await?;
            if !removed.is_empty() {
                println!(
                    "removed the capture of {} triggers the config no longer names (their events are kept; see `pgevents status`): {}",
                    removed.len(),
                    removed.join(", ")
                );
            }
            Ok(())
        }
        Command::Uninstall { drop_log, config } => {
            let config = load(&config)?;
            let removed = pgevents_daemon::uninstall(&config, drop_log).await?;
            println!(
                "removed capture of {} triggers: {}",
                removed.len(),
                removed.join(", ")
            );
            if drop_log {
                println!(
                    "dropped the event log schema {:?}",
                    config.database.log_schema
                );
            }
            Ok(())
        }
        Command::Status(arg) => {
            let config = load(&arg)?;
            let status = pgevents_daemon::status(&config).await?;
            let mut rows = vec![[
                "TRIGGER".to_string(),
                "TABLE".into(),
                "PENDING".into(),
                "DELIVERED".into(),
                "FAILED".into(),
                "OLDEST PENDING".into(),
                "ORDERING".into(),
                "WHERE".into(),
                "PAYLOAD COLUMNS".into(),
            ]];
            for t in &status.triggers {
                let configured = config.trigger(&t.name).is_some();
                rows.push([
                    match (configured, t.removed) {
                        (true, _) => t.name.clone(),
                        (false, true) => format!("{} (removed: not in the config)", t.name),
                        (false, false) => format!(
                            "{} (not in the config: `pgevents install` removes its capture)",
                            t.name
                        ),
                    },
                    format!("{}.{}", t.schema, t.table),
                    t.pending.to_string(),
                    t.delivered.to_string(),
                    t.failed.to_string(),
                    t.oldest_pending_seconds
                        .map_or("-".into(), |s| format!("{s:.1}s")),
                    ordering_text(&t.ordering),
                    t.condition.clone().unwrap_or_else(|| "-".into()),
                    t.payload_columns
                        .as_ref()
                        .map_or("all".into(), |c| c.join(", ")),
                ]);
            }
            print_table(&rows);
            println!("capture lag: {:.1}s", status.capture_lag_seconds);
            if let Some((bytes, warning)) = &status.slot {
                println!("replication slot lag: {bytes} bytes of WAL held");
                if let Some(warning) = warning {
                    println!("warning: {warning}");
                }
            }
            Ok(())
        }
        Command::Events { command } => events(command).await,
        Command::Backfill {
            config,
            trigger,
            condition,
            status,
            cancel,
        } => {
            let config = load(&config)?;
            match (trigger, cancel) {
                (_, Some(target)) => {
                    let ids = pgevents_daemon::cancel_backfill(&config, &target).await?;
                    println!(
                        "cancelled backfill {}",
                        ids.iter()
                            .map(i64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    Ok(())
                }
                (Some(trigger), None) if !status => {
                    crate::progress::backfill(&config, &trigger, condition.as_deref()).await
                }
                _ => {
                    let mut rows = vec![[
                        "ID".to_string(),
                        "TRIGGER".into(),
                        "STATE".into(),
                        "ROWS".into(),
                        "ESTIMATED".into(),
                        "STARTED".into(),
                        "WHERE".into(),
                        "ERROR".into(),
                    ]];
                    for b in pgevents_daemon::backfills(&config).await? {
                        rows.push([
                            b.id.to_string(),
                            b.trigger.clone(),
                            word(b.state),
                            b.rows_done.to_string(),
                            b.rows_estimated.to_string(),
                            b.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            b.condition.clone().unwrap_or_else(|| "-".into()),
                            b.error.clone().unwrap_or_default(),
                        ]);
                    }
                    print_table(&rows);
                    Ok(())
                }
            }
        }
        Command::Invoke {
            config,
            trigger,
            data,
        } => {
            let config = load(&config)?;
            let data: serde_json::Value = serde_json::from_str(&data)
                .map_err(|e| DaemonError::Usage(format!("--data is not valid JSON: {e}")))?;
            let id = pgevents_daemon::invoke(&config, &trigger, &data).await?;
            println!("{id}");
            Ok(())
        }
    }
}

async fn events(command: EventsCommand) -> Result<(), DaemonError> {
    match command {
        EventsCommand::List {
            config,
            trigger,
            status,
            limit,
            json,
        } => {
            let config = load(&config)?;
            let filter = Filter {
                trigger,
                status: status
                    .map(|s| s.parse::<Status>())
                    .transpose()
                    .map_err(DaemonError::Usage)?,
                before: None,
                limit: Some(limit),
            };
            let events = pgevents_daemon::list_events(&config, &filter).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&events).unwrap_or_default()
                );
                return Ok(());
            }
            let mut rows = vec![[
                "ID".to_string(),
                "TRIGGER".into(),
                "ACTION".into(),
                "STATUS".into(),
                "ATTEMPTS".into(),
                "CREATED".into(),
                "LAST ERROR".into(),
            ]];
            for e in &events {
                rows.push([
                    e.id.to_string(),
                    e.trigger.clone(),
                    e.action.clone(),
                    word(e.status),
                    e.attempts.to_string(),
                    e.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    e.last_error
                        .clone()
                        .unwrap_or_default()
                        .chars()
                        .take(60)
                        .collect(),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        EventsCommand::Show { id, config } => {
            let config = load(&config)?;
            let (event, attempts) = pgevents_daemon::show_event(&config, &id).await?;
            let payload: serde_json::Value =
                serde_json::from_slice(event.event().payload()).unwrap_or_default();
            let mut out = serde_json::to_value(&event).unwrap_or_default();
            if let Some(map) = out.as_object_mut() {
                map.insert("payload".into(), payload);
                map.insert(
                    "attempts_log".into(),
                    serde_json::to_value(&attempts).unwrap_or_default(),
                );
            }
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            Ok(())
        }
        EventsCommand::Redeliver {
            ids,
            failed,
            trigger,
            config,
        } => {
            let config = load(&config)?;
            let n = match (failed, trigger) {
                (true, Some(trigger)) => {
                    pgevents_daemon::redeliver_failed(&config, &trigger).await?
                }
                _ => pgevents_daemon::redeliver(&config, &ids).await?,
            };
            println!("redelivering {n} events");
            Ok(())
        }
    }
}

/// A state or status as its JSON spelling (`pending`, `done`, ...).
fn word(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn names(config: &Config) -> String {
    config
        .triggers
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A trigger's ordering as the config writes it: `row`, `table`, `none`, or
/// `columns = ["a", "b"]`.
fn ordering_text(ordering: &serde_json::Value) -> String {
    match ordering {
        serde_json::Value::String(name) => name.clone(),
        other => match other.get("columns") {
            Some(columns) => format!("columns = {columns}"),
            None => other.to_string(),
        },
    }
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
