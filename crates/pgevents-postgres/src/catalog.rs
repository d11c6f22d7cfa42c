//! What capture reads from the system catalogs about a watched table: its columns, the
//! columns that identify a row, and its replica identity. Trigger and logical capture
//! both use it, so "the same row" means the same thing in both modes.

use crate::{Error, QualifiedName};
use tokio_postgres::GenericClient;

/// A table as the catalog describes it now.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The table's OID.
    pub oid: u32,
    /// `relreplident`: `d`efault, `n`othing, `f`ull or `i`ndex.
    pub replica_identity: u8,
    /// The replica identity index's name (quoted; it lives in the table's schema), for identity `i`.
    pub identity_index: Option<String>,
    /// Its columns, in table order.
    pub columns: Vec<String>,
    /// For each of `columns`, the expression of a stored generated column
    /// (`pg_get_expr`, naming other columns unqualified), `None` for other columns.
    pub generated: Vec<Option<String>>,
    /// The primary key, else the replica identity index: what identifies "the same row" for
    /// per-row ordering.
    pub key_columns: Vec<String>,
    /// The SQL types of `key_columns` (`format_type`), in the same order.
    pub key_types: Vec<String>,
}

/// Reads `table` from the catalog; `None` when it does not exist (or is not a table).
pub async fn describe_table(
    client: &impl GenericClient,
    table: &QualifiedName,
) -> Result<Option<TableInfo>, Error> {
    let row = client
        .query_opt(
            "SELECT c.oid, c.relreplident,
                    (SELECT quote_ident(ic.relname) FROM pg_index i
                       JOIN pg_class ic ON ic.oid = i.indexrelid
                      WHERE i.indrelid = c.oid AND i.indisreplident)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| Error::query(format!("looking up table {table}"), e))?;
    let Some(row) = row else { return Ok(None) };
    let oid: u32 = row.get(0);
    let replica_identity: i8 = row.get(1);
    let (columns, generated) = client
        .query(
            "SELECT a.attname::text,
                    CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) END
               FROM pg_attribute a
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| Error::query(format!("reading the columns of {table}"), e))?
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1)))
        .unzip();
    let (key_columns, key_types) = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = $1
                AND i.indexrelid = (SELECT x.indexrelid FROM pg_index x WHERE x.indrelid = $1
                                      AND (x.indisprimary OR x.indisreplident)
                                    ORDER BY x.indisprimary DESC LIMIT 1)
              ORDER BY k.ord",
            &[&oid],
        )
        .await
        .map_err(|e| Error::query(format!("reading the primary key of {table}"), e))?
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .unzip();
    Ok(Some(TableInfo {
        oid,
        replica_identity: replica_identity as u8,
        identity_index: row.get(2),
        columns,
        generated,
        key_columns,
        key_types,
    }))
}
