//! Installing and removing logical capture: the publication, `REPLICA IDENTITY FULL` on the
//! watched tables, the replication slot, and the two small bookkeeping tables in the log
//! schema. Every step is idempotent, so install runs on every start and follows the
//! configuration: tables added are published, tables removed are unpublished and get their
//! replica identity back.

use pgevents_log::LogSchema;
use pgevents_postgres::{quote_ident, QualifiedName};
use tokio_postgres::{Client, GenericClient};

use crate::catalog::check_wal_level;
use crate::{Error, LogicalCapture, LogicalTable};
use pgevents_postgres::catalog::{describe_table, TableInfo};
use pgevents_trigger::condition::qualify;
use pgevents_trigger::Trigger;

/// Everything pgoutput can publish; each table's own operations are filtered while decoding.
/// Partitions publish as their root, the table the configuration names.
const PUBLISH: &str =
    "publish = 'insert, update, delete, truncate', publish_via_partition_root = true";

/// The bookkeeping tables, created in the log schema.
///
/// `logical_progress` is the exactly-once cursor of each slot: every change of source
/// transaction `txn_lsn` (its commit LSN) numbered below `next_change`, and every change of
/// every transaction committed before it, is in the event log. `end_lsn` is the end of the
/// last source transaction written whole: the position the slot may be confirmed at.
///
/// `logical_table` remembers each watched table's replica identity from before pgevents set
/// it to FULL, so that unwatching the table (or uninstalling) puts it back.
fn bookkeeping_sql(schema: &LogSchema) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {progress} (
             slot        text PRIMARY KEY,
             txn_lsn     pg_lsn NOT NULL,
             next_change bigint NOT NULL,
             end_lsn     pg_lsn NOT NULL,
             updated_at  timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE IF NOT EXISTS {tables} (
             publication    text NOT NULL,
             table_oid      oid NOT NULL,
             identity       \"char\" NOT NULL,
             identity_index text,
             PRIMARY KEY (publication, table_oid)
         )",
        progress = schema.object("logical_progress"),
        tables = schema.object("logical_table"),
    )
}

/// Registers (or updates) trigger `spec.name` for logical capture and returns the table to
/// pass to [`LogicalCapture::new`].
///
/// Fails with `NoSuchTable` / `NoSuchColumn` before changing anything. Capture triggers that
/// an earlier trigger-mode install left for this name stay until [`LogicalCapture::install`]
/// has created the slot, so switching a table to logical mode loses no change (one made
/// while both capture it may be logged twice; delivery is at least once anyway).
pub async fn register_table<D>(
    client: &Client,
    schema: &LogSchema,
    spec: &Trigger<D>,
) -> Result<LogicalTable, Error> {
    let info = describe_table(client, &spec.table)
        .await?
        .ok_or_else(|| pgevents_log::Error::NoSuchTable(spec.table.to_string()))?;
    if let Some(missing) = pgevents_capture::missing_columns(spec, &info.columns)
        .into_iter()
        .next()
    {
        return Err(missing.into());
    }
    if let Some(bad) = spec.operations.iter().find(|a| !a.is_captured()) {
        return Err(Error::Invalid(format!(
            "trigger {:?}: {bad} is not a capturable operation; use INSERT, UPDATE, DELETE or TRUNCATE",
            spec.name
        )));
    }
    let condition = match &spec.condition {
        Some(text) => Some(
            qualify(client, &spec.table, text)
                .await
                .map_err(pgevents_log::Error::from)?,
        ),
        None => None,
    };
    let definition = spec.definition(&info.key_columns, "logical");
    let trigger_id =
        pgevents_log::store::register_trigger(client, schema, &spec.name, &spec.table, &definition)
            .await?;
    Ok(LogicalTable {
        trigger_id,
        trigger: spec.description(),
        condition,
    })
}

fn identity_clause(identity: u8, index: Option<&str>) -> String {
    match (identity, index) {
        (b'n', _) => "NOTHING".into(),
        (b'f', _) => "FULL".into(),
        (b'i', Some(index)) => format!("USING INDEX {index}"),
        _ => "DEFAULT".into(),
    }
}

/// Puts back the replica identity recorded for every table of `publication` not in `keep`
/// (all of them when `keep` is empty), and forgets them.
async fn restore_identities(
    client: &impl GenericClient,
    schema: &LogSchema,
    publication: &str,
    keep: &[u32],
) -> Result<(), Error> {
    let rows = client
        .query(
            &format!(
                "DELETE FROM {} l WHERE publication = $1 AND NOT (table_oid = ANY ($2::oid[]))
                 RETURNING table_oid, identity, identity_index,
                   (SELECT c.oid::regclass::text FROM pg_class c WHERE c.oid = l.table_oid),
                   (SELECT c.relreplident FROM pg_class c WHERE c.oid = l.table_oid),
                   EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                            WHERE i.indrelid = l.table_oid AND quote_ident(ic.relname) = l.identity_index)",
                schema.object("logical_table")
            ),
            &[&publication, &keep],
        )
        .await
        .map_err(|e| Error::query("reading the recorded replica identities", e))?;
    for row in rows {
        let (Some(table), Some(current)) =
            (row.get::<_, Option<String>>(3), row.get::<_, Option<i8>>(4))
        else {
            continue; // the table is gone
        };
        let previous = row.get::<_, i8>(1) as u8;
        if current as u8 != b'f' || previous == b'f' {
            continue; // someone changed it since, or it was FULL before pgevents
        }
        let index: Option<String> = row.get(2);
        let index = index.filter(|_| row.get::<_, bool>(5));
        let clause = identity_clause(previous, index.as_deref());
        client
            .batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY {clause}"))
            .await
            .map_err(|e| Error::query(format!("restoring the replica identity of {table}"), e))?;
        tracing::info!(%table, identity = %clause, "replica identity restored");
    }
    Ok(())
}

async fn reconcile_publication(
    client: &impl GenericClient,
    publication: &str,
    tables: &[(&QualifiedName, TableInfo)],
) -> Result<(), Error> {
    let quoted = quote_ident(publication);
    let existing = client
        .query_opt(
            "SELECT oid, puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| Error::query("looking up the publication", e))?;
    let Some(existing) = existing else {
        let list = tables
            .iter()
            .map(|(t, _)| t.quoted())
            .collect::<Vec<_>>()
            .join(", ");
        let for_tables = if list.is_empty() {
            String::new()
        } else {
            format!(" FOR TABLE {list}")
        };
        return client
            .batch_execute(&format!(
                "CREATE PUBLICATION {quoted}{for_tables} WITH ({PUBLISH})"
            ))
            .await
            .map_err(|e| {
                Error::query(
                    format!("creating publication {publication:?} (needs CREATE on the database and ownership of the tables)"),
                    e,
                )
            });
    };
    if existing.get::<_, bool>(1) {
        return Err(Error::Conflict {
            object: "publication",
            name: publication.into(),
            problem: "publishes all tables (FOR ALL TABLES), so pgevents cannot manage it".into(),
        });
    }
    let pub_oid: u32 = existing.get(0);
    let current: Vec<u32> = client
        .query(
            "SELECT prrelid FROM pg_publication_rel WHERE prpubid = $1",
            &[&pub_oid],
        )
        .await
        .map_err(|e| Error::query("reading the publication's tables", e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut ddl = format!("ALTER PUBLICATION {quoted} SET ({PUBLISH})");
    for (name, info) in tables {
        if !current.contains(&info.oid) {
            ddl.push_str(&format!(
                ";\nALTER PUBLICATION {quoted} ADD TABLE {}",
                name.quoted()
            ));
        }
    }
    let wanted: Vec<u32> = tables.iter().map(|(_, i)| i.oid).collect();
    for oid in current.iter().filter(|o| !wanted.contains(o)) {
        let name: Option<String> = client
            .query_one("SELECT $1::oid::regclass::text", &[oid])
            .await
            .map_err(|e| Error::query("naming an unwatched table", e))?
            .get(0);
        if let Some(name) = name {
            ddl.push_str(&format!(";\nALTER PUBLICATION {quoted} DROP TABLE {name}"));
        }
    }
    client.batch_execute(&ddl).await.map_err(|e| {
        Error::query(
            format!("updating publication {publication:?} (needs ownership of the publication and the tables)"),
            e,
        )
    })
}

impl LogicalCapture {
    /// Installs logical capture, idempotently: checks `wal_level`, creates the bookkeeping
    /// tables, creates or updates the publication to hold exactly the watched tables, sets
    /// `REPLICA IDENTITY FULL` on them (so `data.old` is whole and unchanged TOAST values can
    /// be restored), and creates the replication slot.
    ///
    /// The event log itself must be installed first (`pgevents_log::install`).
    ///
    /// `REPLICA IDENTITY FULL` makes each UPDATE and DELETE of a watched table write the
    /// whole old row to the WAL (more WAL, roughly the row size per change) and takes a brief
    /// ACCESS EXCLUSIVE lock on the table the first time it is set.
    pub async fn install(&self) -> Result<(), Error> {
        let mut client = pgevents_postgres::connect(&self.url, None).await?;
        check_wal_level(&client).await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| Error::query("starting the logical capture install", e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&self.schema.key("install")],
        )
        .await
        .map_err(|e| Error::query("taking the install lock", e))?;
        tx.batch_execute(&bookkeeping_sql(&self.schema))
            .await
            .map_err(|e| Error::query("creating the logical capture tables", e))?;
        let mut infos = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            let info = describe_table(&tx, &t.trigger.table)
                .await?
                .ok_or_else(|| pgevents_log::Error::NoSuchTable(t.trigger.table.to_string()))?;
            if !infos
                .iter()
                .any(|(_, i): &(_, TableInfo)| i.oid == info.oid)
            {
                infos.push((&t.trigger.table, info));
            }
        }
        reconcile_publication(&tx, &self.publication, &infos).await?;
        let keep: Vec<u32> = infos.iter().map(|(_, i)| i.oid).collect();
        restore_identities(&tx, &self.schema, &self.publication, &keep).await?;
        for (name, info) in &infos {
            tx.execute(
                &format!(
                    "INSERT INTO {} (publication, table_oid, identity, identity_index)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    self.schema.object("logical_table")
                ),
                &[
                    &self.publication,
                    &info.oid,
                    &(info.replica_identity as i8),
                    &info.identity_index,
                ],
            )
            .await
            .map_err(|e| Error::query("recording a replica identity", e))?;
            if info.replica_identity != b'f' {
                tx.batch_execute(&format!(
                    "ALTER TABLE {} REPLICA IDENTITY FULL",
                    name.quoted()
                ))
                .await
                .map_err(|e| {
                    Error::query(
                        format!("setting REPLICA IDENTITY FULL on {name} (needs ownership of the table)"),
                        e,
                    )
                })?;
                tracing::info!(table = %name, "replica identity set to FULL");
            }
        }
        tx.commit()
            .await
            .map_err(|e| Error::query("committing the logical capture install", e))?;
        // The slot comes last, outside any transaction (creating one must wait for running
        // transactions, and may not follow writes in its own).
        self.ensure_slot(&client).await?;
        self.remove_triggers(&client).await?;
        tracing::info!(
            slot = %self.slot,
            publication = %self.publication,
            tables = infos.len(),
            "logical capture installed"
        );
        Ok(())
    }

    /// Removes the capture triggers an earlier trigger-mode install left on the watched
    /// tables (now that the slot captures their changes).
    async fn remove_triggers(&self, client: &Client) -> Result<(), Error> {
        for t in &self.tables {
            let row = client
                .query_opt(
                    &format!(
                        "SELECT name, to_regprocedure($2) IS NOT NULL FROM {} WHERE id = $1",
                        self.schema.object("trigger")
                    ),
                    &[
                        &t.trigger_id,
                        &format!(
                            "{}()",
                            self.schema.object(&format!("capture_{}", t.trigger_id))
                        ),
                    ],
                )
                .await
                .map_err(|e| Error::query("looking up trigger-mode capture", e))?;
            if let Some(row) = row.filter(|r| r.get::<_, bool>(1)) {
                let name: String = row.get(0);
                pgevents_capture::uninstall_trigger(client, &self.schema, &name).await?;
                tracing::info!(trigger = %name, table = %t.trigger.table, "trigger capture replaced by logical capture");
            }
        }
        Ok(())
    }

    async fn ensure_slot(&self, client: &Client) -> Result<(), Error> {
        let progress = self.schema.object("logical_progress");
        let existing = client
            .query_opt(
                "SELECT plugin, slot_type, database = current_database(), wal_status
                   FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(|e| Error::query("looking up the replication slot", e))?;
        if let Some(row) = existing {
            let plugin: Option<String> = row.get(0);
            let kind: String = row.get(1);
            let same_db: Option<bool> = row.get(2);
            let problem = if kind != "logical" {
                Some(format!("is a {kind} slot, not a logical one"))
            } else if plugin.as_deref() != Some("pgoutput") {
                Some(format!(
                    "uses the {} plugin, not pgoutput",
                    plugin.unwrap_or_default()
                ))
            } else if same_db != Some(true) {
                Some("belongs to another database".into())
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(Error::Conflict {
                    object: "replication slot",
                    name: self.slot.clone(),
                    problem,
                });
            }
            if row.get::<_, Option<String>>(3).as_deref() == Some("lost") {
                return Err(Error::SlotLost {
                    slot: self.slot.clone(),
                });
            }
            client
                .execute(
                    &format!(
                        "INSERT INTO {progress} (slot, txn_lsn, next_change, end_lsn)
                         VALUES ($1, '0/0', 0, '0/0') ON CONFLICT DO NOTHING"
                    ),
                    &[&self.slot],
                )
                .await
                .map_err(|e| Error::query("recording the capture position", e))?;
            return Ok(());
        }
        match client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&self.slot],
            )
            .await
        {
            Ok(_) => {
                // A new slot starts now: forget any position recorded for an older one.
                client
                    .execute(
                        &format!(
                            "INSERT INTO {progress} (slot, txn_lsn, next_change, end_lsn)
                             VALUES ($1, '0/0', 0, '0/0')
                             ON CONFLICT (slot) DO UPDATE SET txn_lsn = '0/0', next_change = 0,
                               end_lsn = '0/0', updated_at = now()"
                        ),
                        &[&self.slot],
                    )
                    .await
                    .map_err(|e| Error::query("recording the capture position", e))?;
                tracing::info!(slot = %self.slot, "replication slot created");
                Ok(())
            }
            // Another installer created it meanwhile.
            Err(e) if e.code().map(|c| c.code()) == Some("42710") => Ok(()),
            Err(e) => Err(Error::query(
                format!(
                    "creating replication slot {:?} (needs the REPLICATION attribute and a free slot: max_replication_slots)",
                    self.slot
                ),
                e,
            )),
        }
    }

    /// Removes logical capture: drops the replication slot (failing with
    /// [`Error::SlotActive`] while a process consumes it), drops the publication, puts back the
    /// replica identity of the tables pgevents changed, and forgets the capture position.
    /// Events already in the log stay.
    pub async fn uninstall(&self) -> Result<(), Error> {
        let client = pgevents_postgres::connect(&self.url, None).await?;
        let active: Option<Option<i32>> = client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(|e| Error::query("looking up the replication slot", e))?
            .map(|r| r.get(0));
        match active {
            Some(Some(pid)) => {
                return Err(Error::SlotActive {
                    slot: self.slot.clone(),
                    pid,
                })
            }
            Some(None) => {
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&self.slot])
                    .await
                    .map_err(|e| {
                        Error::query(format!("dropping replication slot {:?}", self.slot), e)
                    })?;
            }
            None => {}
        }
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(&self.publication)
            ))
            .await
            .map_err(|e| Error::query(format!("dropping publication {:?}", self.publication), e))?;
        let installed: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{}.logical_table", self.schema.quoted())],
            )
            .await
            .map_err(|e| Error::query("looking for the logical capture tables", e))?
            .get(0);
        if installed {
            restore_identities(&client, &self.schema, &self.publication, &[]).await?;
            client
                .execute(
                    &format!(
                        "DELETE FROM {} WHERE slot = $1",
                        self.schema.object("logical_progress")
                    ),
                    &[&self.slot],
                )
                .await
                .map_err(|e| Error::query("forgetting the capture position", e))?;
        }
        tracing::info!(slot = %self.slot, publication = %self.publication, "logical capture removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_clauses() {
        assert_eq!(identity_clause(b'd', None), "DEFAULT");
        assert_eq!(identity_clause(b'n', None), "NOTHING");
        assert_eq!(
            identity_clause(b'i', Some("\"t_key\"")),
            "USING INDEX \"t_key\""
        );
        assert_eq!(identity_clause(b'i', None), "DEFAULT");
    }
}
