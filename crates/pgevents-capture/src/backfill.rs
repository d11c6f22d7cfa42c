//! Starting a backfill: checking what it asks for and rendering the statement its chunks run.
//!
//! Everything comes from the log's record of the trigger (its table, ordering, `where` and
//! `payload_columns` as installed) and the catalog, so the CLI, the admin API and the library
//! start backfills the same way, and a backfill's `READ` events carry the same ordering keys
//! and row images as the trigger's live events. The chunks themselves run in
//! `pgevents_log::backfill`.

use pgevents_log::backfill::{self as store, Source, ROW_ALIAS};
use pgevents_log::{Error, LogSchema};
use pgevents_postgres::QualifiedName;
use pgevents_trigger::condition::qualify;
use pgevents_trigger::image::in_table_order;
use pgevents_trigger::{ConditionError, Ordering};
use tokio_postgres::GenericClient;

use pgevents_postgres::catalog::describe_table;

/// Starts a backfill of trigger `trigger` (its registered name): a `READ` event for every row
/// of its table that matches its `where`, and `condition` when given. Returns the backfill's
/// id; the chunks are written by whoever runs backfills (`pgevents run`, a `Listener`, or
/// `pgevents backfill` itself).
///
/// Fails, creating nothing, with [`Error::NoSuchTrigger`] for a trigger the log does not
/// capture for, [`Error::NoSuchTable`] when its table is gone, [`Error::NoPrimaryKey`] for a
/// table whose rows have no key to read them in order by, and
/// [`Error::BadBackfillCondition`] for a condition PostgreSQL rejects.
pub async fn start(
    client: &impl GenericClient,
    schema: &LogSchema,
    trigger: &str,
    condition: Option<&str>,
) -> Result<i64, Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT id, schema_name, table_name, definition FROM {}
                  WHERE name = $1 AND removed_at IS NULL",
                schema.object("trigger")
            ),
            &[&trigger],
        )
        .await
        .map_err(|e| Error::query(format!("looking up trigger {trigger:?}"), e))?
        .ok_or_else(|| Error::NoSuchTrigger(trigger.to_string()))?;
    let trigger_id: i32 = row.get(0);
    let table = QualifiedName {
        schema: row.get(1),
        name: row.get(2),
    };
    let definition: serde_json::Value = row.get(3);
    let info = describe_table(client, &table)
        .await?
        .ok_or_else(|| Error::NoSuchTable(table.to_string()))?;
    if info.key_columns.is_empty() {
        return Err(Error::NoPrimaryKey(table.to_string()));
    }
    let ordering = Ordering::from_json(&definition["ordering"]).unwrap_or_default();
    let payload_columns: Option<Vec<String>> =
        serde_json::from_value(definition["payload_columns"].clone()).unwrap_or(None);
    let payload = in_table_order(payload_columns.as_deref(), &info.columns);
    let installed = match definition["where"].as_str() {
        Some(text) => Some(qualify(client, &table, text).await?.on(ROW_ALIAS)),
        None => None,
    };
    let asked = match condition.map(str::trim).filter(|c| !c.is_empty()) {
        Some(text) => Some(
            qualify(client, &table, text)
                .await
                .map_err(|e| match e {
                    ConditionError::Bad {
                        table,
                        condition,
                        detail,
                    } => Error::BadBackfillCondition {
                        table,
                        condition,
                        detail,
                    },
                    ConditionError::Postgres(e) => Error::Postgres(e),
                })?
                .on(ROW_ALIAS),
        ),
        None => None,
    };
    let rows = store::both(installed, asked);
    let key: Vec<(String, String)> = info
        .key_columns
        .iter()
        .cloned()
        .zip(info.key_types.iter().cloned())
        .collect();
    let sql = store::chunk_sql(
        schema,
        &Source {
            trigger_id,
            table: &table,
            key: &key,
            ordering: &ordering,
            payload_columns: payload.as_deref(),
            condition: rows.clone(),
        },
    );
    // Proves the statement before anything is recorded: a type without a btree order, a
    // column dropped since install.
    client
        .prepare(&sql)
        .await
        .map_err(|e| Error::query(format!("preparing the backfill of {table}"), e))?;
    let estimate = store::estimate(client, &table, rows.as_deref()).await?;
    store::create(
        client,
        schema,
        trigger_id,
        condition.map(str::trim).filter(|c| !c.is_empty()),
        &sql,
        estimate,
    )
    .await
}
