//! The operator commands: install, uninstall, check, status, events, invoke.

use pgevents_config::{CaptureMode, Config, TriggerConfig};
use pgevents_log::browse::{self, AttemptRecord, EventRecord, Filter, TriggerCounts};
use pgevents_log::LogSchema;
use tokio_postgres::Client;

use crate::DaemonError;

pub(crate) fn schema(config: &Config) -> Result<LogSchema, DaemonError> {
    LogSchema::new(&config.database.log_schema)
        .map_err(|e| DaemonError::Usage(format!("{}: database.log_schema: {e}", config.source)))
}

/// Connects to the configured database; errors name the config file and its `database`.
pub(crate) async fn connect(config: &Config) -> Result<Client, DaemonError> {
    pgevents_postgres::connect(config.database_url(), None)
        .await
        .map_err(|e| DaemonError::from(e).prefixed(&format!("{}: database", config.source)))
}

/// What `install` set up.
pub struct Installed {
    /// Each trigger's log id, in config order.
    pub ids: Vec<i32>,
    /// The installation's id salt.
    pub salt: u16,
    /// The WAL reader, when `capture.mode = "logical"`.
    pub capture: Option<pgevents_logical::LogicalCapture>,
}

pub(crate) fn logical_error(config: &Config, e: pgevents_logical::Error) -> DaemonError {
    let message = format!("{}: capture: {e}", config.source);
    if e.is_transient() {
        DaemonError::Unavailable(message)
    } else {
        DaemonError::Setup(message)
    }
}

/// The config field a capture problem is about: `trigger["x"].table`, `.columns`, ...
fn problem_path(trigger: &TriggerConfig, problem: &pgevents_log::Error) -> String {
    let field = match problem {
        pgevents_log::Error::NoSuchColumn { field, .. } => field,
        pgevents_log::Error::Unorderable(_) => "ordering",
        pgevents_log::Error::BadCondition { .. } => "where",
        _ => "table",
    };
    format!("{}.{field}", trigger.path())
}

/// Checks every trigger before anything is installed, so that a mistake in one leaves no
/// other half-installed: every table and `columns` entry must exist, and in trigger mode
/// the role must be allowed to create triggers. Reports all problems at once.
async fn validate(config: &Config, client: &Client) -> Result<(), DaemonError> {
    let need_trigger_privilege = config.capture.mode == CaptureMode::Trigger;
    let mut lines = Vec::new();
    let mut only_privileges = true;
    for trigger in &config.triggers {
        for problem in
            pgevents_capture::trigger_problems(client, trigger, need_trigger_privilege).await?
        {
            only_privileges &= matches!(problem, pgevents_log::Error::NotPermitted(_));
            lines.push(format!(
                "{}: {}: {problem}",
                config.source,
                problem_path(trigger, &problem)
            ));
        }
    }
    if lines.is_empty() {
        return Ok(());
    }
    let message = format!(
        "{}
nothing was installed: fix the problems above and run the command again",
        lines.join("\n")
    );
    Err(if only_privileges {
        DaemonError::Privilege(message)
    } else {
        DaemonError::Setup(message)
    })
}

/// Installs the event log and every trigger's capture (triggers, or the publication, slot
/// and replica identities in logical mode), idempotently. Every trigger is checked first:
/// when one names a table or column that does not exist, or the role may not create its
/// triggers, nothing at all is installed.
pub async fn install(config: &Config) -> Result<Installed, DaemonError> {
    let schema = schema(config)?;
    let mut client = connect(config).await?;
    validate(config, &client).await?;
    if config.capture.mode == CaptureMode::Logical {
        // Before anything changes: a server without wal_level = logical keeps its triggers.
        pgevents_logical::check_wal_level(&client)
            .await
            .map_err(|e| logical_error(config, e))?;
    }
    let salt = pgevents_log::install(&mut client, &schema)
        .await
        .map_err(|e| DaemonError::from(e).prefixed(&format!("{}: database", config.source)))?;
    let mut ids = Vec::with_capacity(config.triggers.len());
    let mut tables = Vec::new();
    for trigger in &config.triggers {
        let id = match config.capture.mode {
            CaptureMode::Trigger => pgevents_capture::install_trigger(
                &mut client,
                &schema,
                trigger,
                config.capture.notify,
            )
            .await
            .map_err(|e| in_trigger(trigger, e))?,
            CaptureMode::Logical => {
                let table = pgevents_logical::register_table(&client, &schema, trigger)
                    .await
                    .map_err(|e| logical_error(config, e))?;
                let id = table.trigger_id;
                tables.push(table);
                id
            }
        };
        ids.push(id);
    }
    let capture = match config.capture.mode {
        CaptureMode::Trigger => None,
        CaptureMode::Logical => {
            let capture = logical(config, &schema, tables)?;
            capture
                .install()
                .await
                .map_err(|e| logical_error(config, e))?;
            Some(capture)
        }
    };
    Ok(Installed { ids, salt, capture })
}

fn logical(
    config: &Config,
    schema: &LogSchema,
    tables: Vec<pgevents_logical::LogicalTable>,
) -> Result<pgevents_logical::LogicalCapture, DaemonError> {
    pgevents_logical::LogicalCapture::new(
        config.database_url(),
        schema.clone(),
        config.capture.slot.clone(),
        config.capture.publication.clone(),
        tables,
    )
    .map_err(|e| logical_error(config, e))
}

fn in_trigger(trigger: &TriggerConfig, e: pgevents_log::Error) -> DaemonError {
    DaemonError::from(e).prefixed(&trigger.path())
}

/// What `install` would set up, when it is all in place already: the log at this version
/// and every trigger installed exactly as configured (trigger capture only). Reads only —
/// so that `run` works for a role holding just the grants of the least-privilege mode,
/// which may not (re)install anything. `None` when anything is missing or out of date.
pub(crate) async fn installed_already(config: &Config) -> Result<Option<Installed>, DaemonError> {
    if config.capture.mode != CaptureMode::Trigger {
        return Ok(None);
    }
    let schema = schema(config)?;
    let client = connect(config).await?;
    let salt = match pgevents_log::salt(&client, &schema).await {
        Ok(salt) => salt,
        Err(pgevents_log::Error::NotInstalled(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let version: i32 = client
        .query_one(
            &format!("SELECT version FROM {}", schema.object("meta")),
            &[],
        )
        .await
        .map_err(|e| pgevents_log::Error::query("reading the event log version", e))?
        .get(0);
    if version != pgevents_log::SCHEMA_VERSION {
        return Ok(None);
    }
    let mut ids = Vec::with_capacity(config.triggers.len());
    for trigger in &config.triggers {
        match pgevents_capture::installed_trigger(&client, &schema, trigger, config.capture.notify)
            .await?
        {
            Some(id) => ids.push(id),
            None => return Ok(None),
        }
    }
    Ok(Some(Installed {
        ids,
        salt,
        capture: None,
    }))
}

/// Removes the capture of every trigger registered in the log that the config no longer
/// names (its triggers and function, or its place in the publication), keeping its events —
/// pending ones stay visible and redeliverable — and marking it removed; returns their names.
/// Only `pgevents install` does this: `run` names them in a warning (several programs may
/// share one log, and a library's tables are not in any config).
pub async fn remove_unconfigured(config: &Config) -> Result<Vec<String>, DaemonError> {
    let schema = schema(config)?;
    let client = connect(config).await?;
    let mut removed = Vec::new();
    for registered in unconfigured(config, &client, &schema).await? {
        pgevents_capture::uninstall_trigger(&client, &schema, &registered.name).await?;
        pgevents_log::store::mark_removed(&client, &schema, registered.id).await?;
        removed.push(registered.name);
    }
    Ok(removed)
}

/// The triggers registered in the log, still capturing, that the config does not name.
pub(crate) async fn unconfigured(
    config: &Config,
    client: &Client,
    schema: &LogSchema,
) -> Result<Vec<pgevents_log::store::TriggerRow>, DaemonError> {
    Ok(pgevents_log::store::triggers(client, schema)
        .await?
        .into_iter()
        .filter(|t| t.removed_at.is_none() && config.trigger(&t.name).is_none())
        .collect())
}

/// Removes every configured trigger's capture; with `drop_log`, the whole event log too.
pub async fn uninstall(config: &Config, drop_log: bool) -> Result<Vec<String>, DaemonError> {
    let schema = schema(config)?;
    let client = connect(config).await?;
    let mut removed = Vec::new();
    let installed: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{}.trigger", schema.quoted())],
        )
        .await
        .map_err(|e| DaemonError::from(pgevents_log::Error::query("looking for the event log", e)))?
        .get(0);
    if installed {
        for trigger in &config.triggers {
            if pgevents_capture::uninstall_trigger(&client, &schema, &trigger.name).await? {
                removed.push(trigger.name.clone());
            }
        }
    }
    if installed && config.capture.mode == CaptureMode::Logical {
        // The slot holds WAL until it is dropped: remove it (and the publication) first.
        logical(config, &schema, Vec::new())?
            .uninstall()
            .await
            .map_err(|e| logical_error(config, e))?;
    }
    if drop_log {
        pgevents_log::uninstall(&client, &schema).await?;
    }
    Ok(removed)
}

/// How long `check` waits for a destination (a Kafka broker) to answer.
const DESTINATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks the database and the destinations that can be asked (Kafka: brokers reachable,
/// topic present) against the config without changing anything; returns every problem.
pub async fn check(config: &Config) -> Result<Vec<String>, DaemonError> {
    let schema = schema(config)?;
    let client = match pgevents_postgres::connect(config.database_url(), None).await {
        Ok(c) => c,
        Err(e) => return Ok(vec![format!("database: {e}")]),
    };
    let mut problems = Vec::new();
    let q = |e| DaemonError::from(pgevents_log::Error::query("checking the database", e));
    let row = client
        .query_one(
            // From the catalog, not to_regclass: a role without USAGE on the log schema
            // must get its problems listed, not a permission error.
            "SELECT current_setting('wal_level'),
                    EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = $1 AND c.relname = 'event'),
                    has_database_privilege(current_database(), 'CREATE')",
            &[&schema.name()],
        )
        .await
        .map_err(q)?;
    let (wal_level, installed, may_create): (String, bool, bool) =
        (row.get(0), row.get(1), row.get(2));
    if !installed && !may_create {
        problems.push(format!(
            "database: the event log is not installed in schema {:?} and the current role may not create it: run `pgevents install` as a role with CREATE on the database, or GRANT CREATE ON DATABASE to this role",
            schema.name()
        ));
    }
    if config.capture.mode == CaptureMode::Logical && wal_level != "logical" {
        problems.push(format!(
            "capture.mode: logical capture needs wal_level = logical, but the server has wal_level = {wal_level}: run `ALTER SYSTEM SET wal_level = logical` and restart PostgreSQL, or use mode = \"trigger\""
        ));
    }
    let missing = if installed {
        missing_grants(&client, &schema).await?
    } else {
        Vec::new()
    };
    // Without its grants the role cannot read the log to tell whether the triggers are
    // installed: the missing grants are the problem to fix first.
    let can_read_log = installed && missing.is_empty();
    problems.extend(missing);
    let need_trigger_privilege = config.capture.mode == CaptureMode::Trigger;
    for trigger in &config.triggers {
        // Installed as configured: running needs no privilege on the table itself.
        if can_read_log
            && need_trigger_privilege
            && pgevents_capture::installed_trigger(&client, &schema, trigger, config.capture.notify)
                .await?
                .is_some()
        {
            continue;
        }
        let need_trigger_privilege = need_trigger_privilege && (can_read_log || !installed);
        for p in
            pgevents_capture::trigger_problems(&client, trigger, need_trigger_privilege).await?
        {
            problems.push(format!("{}: {p}", problem_path(trigger, &p)));
        }
    }
    for trigger in &config.triggers {
        let reached = trigger
            .destination
            .reach(&trigger.path(), trigger.format, DESTINATION_TIMEOUT)
            .await;
        problems.extend(reached.iter().map(ToString::to_string));
    }
    Ok(problems)
}

/// The grants `pgevents run` needs on an installed log that the current role lacks, as one
/// problem naming them and the statements that give them.
async fn missing_grants(client: &Client, schema: &LogSchema) -> Result<Vec<String>, DaemonError> {
    let rows = client
        .query(
            "WITH s AS (SELECT oid FROM pg_namespace WHERE nspname = $1),
             missing (kind, object, priv, ord) AS (
               SELECT 'schema', quote_ident($1), 'USAGE', 0
                 FROM s WHERE NOT has_schema_privilege(s.oid, 'USAGE')
               UNION ALL
               SELECT 'tables', c.oid::regclass::text, p.priv, p.ord
                 FROM pg_class c JOIN s ON c.relnamespace = s.oid
                CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'])
                           WITH ORDINALITY AS p(priv, ord)
                WHERE c.relkind IN ('r', 'p') AND NOT has_table_privilege(c.oid, p.priv)
               UNION ALL
               SELECT 'sequences', c.oid::regclass::text, 'USAGE', 0
                 FROM pg_class c JOIN s ON c.relnamespace = s.oid
                -- CASE: the planner may look at rows of other schemas before the join.
                WHERE CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege(c.oid, 'USAGE')
                           ELSE false END
               UNION ALL
               SELECT 'functions', f.oid::regprocedure::text, 'EXECUTE', 0
                 FROM pg_proc f JOIN s ON f.pronamespace = s.oid
                WHERE NOT has_function_privilege(f.oid, 'EXECUTE')),
             per_object AS (
               SELECT kind, object, string_agg(priv, ', ' ORDER BY ord) AS privs
                 FROM missing GROUP BY kind, object)
             SELECT privs || ' on ' || kind || ' ' || string_agg(object, ', ' ORDER BY object),
                    quote_ident(current_user)
               FROM per_object GROUP BY kind, privs ORDER BY kind",
            &[&schema.name()],
        )
        .await
        .map_err(|e| pgevents_log::Error::query("checking the current role's privileges", e))?;
    let Some(role) = rows.first().map(|r| r.get::<_, String>(1)) else {
        return Ok(Vec::new());
    };
    let missing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let s = schema.quoted();
    Ok(vec![format!(
        "database: role {role} lacks what `pgevents run` needs in the event log: {}; as the log's owner run: GRANT USAGE ON SCHEMA {s} TO {role}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {role}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {role}; GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO {role}",
        missing.join("; ")
    )])
}

/// Per-trigger counts and the capture lag.
#[derive(Debug, Clone)]
pub struct Status {
    /// One row per registered trigger.
    pub triggers: Vec<TriggerCounts>,
    /// Seconds between the oldest captured change not yet in the log and now.
    pub capture_lag_seconds: f64,
    /// In logical mode: bytes of WAL the slot holds back, and a warning when that
    /// threatens the disk.
    pub slot: Option<(i64, Option<String>)>,
}

/// The log's per-trigger counts and capture lag.
pub async fn status(config: &Config) -> Result<Status, DaemonError> {
    let schema = schema(config)?;
    let client = connect(config).await?;
    pgevents_log::salt(&client, &schema).await?;
    let (triggers, capture_lag_seconds) = browse::status(&client, &schema).await?;
    let slot = match config.capture.mode {
        CaptureMode::Trigger => None,
        CaptureMode::Logical => logical(config, &schema, Vec::new())?
            .slot_health()
            .await
            .map_err(|e| logical_error(config, e))?
            .map(|h| {
                (
                    h.lag_bytes.unwrap_or(0),
                    h.warning(pgevents_logical::DEFAULT_LAG_WARNING_BYTES),
                )
            }),
    };
    Ok(Status {
        triggers,
        capture_lag_seconds,
        slot,
    })
}

/// Fails with a usage error naming the config's triggers when it has none named `trigger`.
pub(crate) fn known_trigger(config: &Config, trigger: &str) -> Result<(), DaemonError> {
    if config.trigger(trigger).is_some() {
        return Ok(());
    }
    Err(DaemonError::Usage(format!(
        "no trigger named {trigger:?} in {}: use one of {:?}",
        config.source,
        config
            .triggers
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
    )))
}

pub(crate) async fn open(config: &Config) -> Result<(Client, LogSchema, u16), DaemonError> {
    let schema = schema(config)?;
    let client = connect(config).await?;
    let salt = pgevents_log::salt(&client, &schema).await?;
    Ok((client, schema, salt))
}

/// Events matching `filter`, newest first.
pub async fn list_events(
    config: &Config,
    filter: &Filter,
) -> Result<Vec<EventRecord>, DaemonError> {
    let (client, schema, salt) = open(config).await?;
    Ok(browse::list(&client, &schema, salt, filter).await?)
}

/// One event, its seed payload, and its attempts.
pub async fn show_event(
    config: &Config,
    id: &str,
) -> Result<(EventRecord, Vec<AttemptRecord>), DaemonError> {
    let uuid = parse_id(id)?;
    let (client, schema, salt) = open(config).await?;
    browse::show(&client, &schema, salt, uuid)
        .await?
        .ok_or_else(|| DaemonError::Runtime(format!("no event with id {id}")))
}

fn parse_id(id: &str) -> Result<uuid::Uuid, DaemonError> {
    uuid::Uuid::parse_str(id).map_err(|_| {
        DaemonError::Usage(format!(
            "{id:?} is not an event id (a UUID such as 01a20d6c-c7f0-7588-8000-000000000001)"
        ))
    })
}

/// Makes the given events pending again with a fresh retry budget; returns how many.
pub async fn redeliver(config: &Config, ids: &[String]) -> Result<i64, DaemonError> {
    let mut seqs = Vec::with_capacity(ids.len());
    for id in ids {
        let uuid = parse_id(id)?;
        let seq = pgevents_event::seq_from_id(uuid)
            .ok_or_else(|| DaemonError::Runtime(format!("no event with id {id}")))?;
        seqs.push(seq);
    }
    let (client, schema, _) = open(config).await?;
    Ok(pgevents_log::store::redeliver(&client, &schema, &seqs).await?)
}

/// Redelivers every failed event of `trigger`; returns how many.
pub async fn redeliver_failed(config: &Config, trigger: &str) -> Result<i64, DaemonError> {
    let (client, schema, _) = open(config).await?;
    let seqs = browse::failed_seqs(&client, &schema, trigger).await?;
    Ok(pgevents_log::store::redeliver(&client, &schema, &seqs).await?)
}

/// Writes a manual event for `trigger` (action MANUAL, `data.new` = `data`); returns its id.
pub async fn invoke(
    config: &Config,
    trigger: &str,
    data: &serde_json::Value,
) -> Result<uuid::Uuid, DaemonError> {
    known_trigger(config, trigger)?;
    let (client, schema, salt) = open(config).await?;
    let id = pgevents_log::store::triggers(&client, &schema)
        .await?
        .into_iter()
        .find(|t| t.name == trigger)
        .map(|t| t.id)
        .ok_or_else(|| {
            DaemonError::Setup(format!(
                "trigger {trigger:?} is not installed: run `pgevents install`"
            ))
        })?;
    let (seq, created_at) = pgevents_log::store::invoke(&client, &schema, id, data).await?;
    Ok(pgevents_event::event_id(created_at, salt, seq))
}
