//! Installing, upgrading and removing the event log schema.

use tokio_postgres::Client;

use crate::Error;
use pgevents_postgres::{quote_ident, quote_literal};

/// The version of the log schema this build installs. Install upgrades older logs in place
/// and replaces every pgevents function, so old function bodies never linger.
///
/// Version 2: per-trigger due index and claims, key-change (`old_key`) and TRUNCATE ordering,
/// removed triggers, the installed script's hash.
///
/// Version 3: backfills (the `backfill` table).
///
/// Version 4: leases in a column of their own (`lease_until`, in no index), so claims,
/// renewals and releases are HOT updates; delivered events in no index but the primary key
/// (`event_trigger_status` replaced by partial indexes), so settling one writes one entry.
pub const SCHEMA_VERSION: i32 = 4;

const SCHEMA_SQL: &str = include_str!("../sql/schema.sql");

/// How long install's DDL waits for a lock before giving up (and being retried): see
/// [`install`]. Public so that capture installs use the same bound.
pub const LOCK_TIMEOUT_MS: u64 = 3000;

/// The schema holding the event log (default `pgevents`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSchema {
    name: String,
    quoted: String,
}

/// The default log schema name.
pub const DEFAULT_LOG_SCHEMA: &str = "pgevents";

impl Default for LogSchema {
    fn default() -> Self {
        LogSchema {
            name: DEFAULT_LOG_SCHEMA.into(),
            quoted: quote_ident(DEFAULT_LOG_SCHEMA),
        }
    }
}

impl LogSchema {
    /// A log schema named `name` (any PostgreSQL identifier up to 63 bytes).
    pub fn new(name: &str) -> Result<LogSchema, Error> {
        if name.is_empty() || name.len() > 63 {
            return Err(Error::Invalid(format!(
                "log schema name {name:?} must be 1 to 63 bytes long"
            )));
        }
        Ok(LogSchema {
            name: name.into(),
            quoted: quote_ident(name),
        })
    }

    /// The schema name as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema name quoted for SQL.
    pub fn quoted(&self) -> &str {
        &self.quoted
    }

    /// `schema.object`, quoted for SQL.
    pub fn object(&self, object: &str) -> String {
        format!("{}.{}", self.quoted, quote_ident(object))
    }

    /// A stable advisory-lock key for `purpose` within this log schema.
    pub fn key(&self, purpose: &str) -> i64 {
        fnv1a(purpose.bytes().chain([0]).chain(self.name.bytes()))
    }
}

/// The advisory lock a sleeping dispatcher holds; writers NOTIFY only while it is held.
///
/// Writers try to take it in shared mode: they fail exactly when some dispatcher holds it
/// exclusively, i.e. is about to wait for a notification, and only then send one. A
/// dispatcher cannot take it while a writer's transaction holds it, and checks the log once
/// more after taking it, so no event slips between its last look and its sleep — while busy
/// dispatchers cost writers no NOTIFY (and its commit-time global lock) at all.
pub fn wake_key(schema: &LogSchema) -> i64 {
    schema.key("wake")
}

/// The notification channel writers wake dispatchers on: short whatever the schema's name
/// (a channel name is an identifier, at most 63 bytes), and distinct per log schema.
pub fn wake_channel(schema: &LogSchema) -> String {
    format!("pgevents_wake_{:016x}", schema.key("wake-channel") as u64)
}

fn render(schema: &LogSchema) -> String {
    SCHEMA_SQL
        .replace("@schema@", schema.quoted())
        .replace("@ingest_key@", &schema.key("ingest").to_string())
}

/// FNV-1a of `bytes`: stable across builds and platforms, unlike std's hasher.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// A stable hash of the install script, recorded in `meta`: an install that finds the same
/// hash has nothing to do, and takes no lock on the log's tables.
fn script_hash(script: &str) -> i64 {
    fnv1a(script.bytes())
}

/// Installs or upgrades the event log in `schema`, idempotently and safely against
/// concurrent installers. Returns the installation's id salt.
pub async fn install(client: &mut Client, schema: &LogSchema) -> Result<u16, Error> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::query("starting the install transaction", e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&schema.key("install")],
    )
    .await
    .map_err(|e| Error::query("taking the install lock", e))?;
    let meta = schema.object("meta");
    let exists: bool = tx
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{}.meta", schema.quoted())],
        )
        .await
        .map_err(|e| Error::query("looking for an installed event log", e))?
        .get(0);
    let script = render(schema);
    let hash = script_hash(&script);
    if exists {
        let row = tx
            .query_opt(&format!("SELECT to_jsonb(m) FROM {meta} m"), &[])
            .await
            .map_err(|e| Error::query("reading the event log version", e))?;
        if let Some(meta) = row.map(|r| r.get::<_, serde_json::Value>(0)) {
            let found = meta["version"].as_i64().unwrap_or(0) as i32;
            if found > SCHEMA_VERSION {
                return Err(Error::TooNew {
                    schema: schema.name().into(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            if found == SCHEMA_VERSION && meta["script_hash"].as_i64() == Some(hash) {
                let salt = meta["salt"].as_i64().unwrap_or(0) as u16;
                tx.commit()
                    .await
                    .map_err(|e| Error::query("committing the install", e))?;
                return Ok(salt);
            }
        }
    }
    // Changing the log's tables waits for their locks no longer than this: writers append to
    // `capture` all the time, and a DDL statement queued behind one long transaction would
    // make every later writer queue behind it. The caller retries later.
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"))
        .await
        .map_err(|e| Error::query("setting the install's lock timeout", e))?;
    tx.batch_execute(&script).await.map_err(|e| {
        Error::query(
            format!(
                "installing the event log in schema {} (this needs CREATE on the database: run install as the database owner, or GRANT CREATE ON DATABASE to this role)",
                schema.name()
            ),
            e,
        )
    })?;
    let salt = rand::random::<u16>() & 0x0FFF;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO {meta} (version, salt, script_hash) VALUES ($1, $2, $3)
                 ON CONFLICT (singleton) DO UPDATE
                   SET version = excluded.version, script_hash = excluded.script_hash,
                       upgraded_at = now()
                 RETURNING salt"
            ),
            &[&SCHEMA_VERSION, &i32::from(salt), &hash],
        )
        .await
        .map_err(|e| Error::query("recording the event log version", e))?;
    tx.commit()
        .await
        .map_err(|e| Error::query("committing the install", e))?;
    Ok(row.get::<_, i32>(0) as u16)
}

/// Reads the installation's id salt, failing with [`Error::NotInstalled`] when there is no log.
pub async fn salt(client: &Client, schema: &LogSchema) -> Result<u16, Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{}.meta", schema.quoted())],
        )
        .await
        .map_err(|e| Error::query("looking for the event log", e))?
        .get(0);
    if !exists {
        return Err(Error::NotInstalled(schema.name().into()));
    }
    let row = client
        .query_one(&format!("SELECT salt FROM {}", schema.object("meta")), &[])
        .await
        .map_err(|e| Error::query("reading the event log salt", e))?;
    Ok(row.get::<_, i32>(0) as u16)
}

/// Removes the event log schema and everything in it (the capture functions with it, and so
/// every capture trigger on user tables). Events not yet delivered are lost: callers ask first.
pub async fn uninstall(client: &Client, schema: &LogSchema) -> Result<(), Error> {
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({key}); DROP SCHEMA IF EXISTS {s} CASCADE; SELECT pg_advisory_unlock({key});",
            key = schema.key("install"),
            s = schema.quoted()
        ))
        .await
        .map_err(|e| Error::query(format!("dropping schema {}", quote_literal(schema.name())), e))
}
