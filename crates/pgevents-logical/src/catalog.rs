//! What logical capture reads from the system catalogs: watched tables, their keys and
//! replica identity, and the server's `wal_level`.

use pgevents_log::QualifiedName;
use tokio_postgres::GenericClient;

use crate::Error;

pub(crate) use pgevents_capture::catalog::TableInfo;

/// Reads `table` from the catalog; `None` when it does not exist (or is not a table).
pub(crate) async fn table_info(
    client: &impl GenericClient,
    table: &QualifiedName,
) -> Result<Option<TableInfo>, Error> {
    Ok(pgevents_capture::catalog::describe_table(client, table).await?)
}

/// Fails with [`Error::WalLevel`] unless the server runs with `wal_level = logical`.
pub async fn check_wal_level(client: &impl GenericClient) -> Result<(), Error> {
    let found: String = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(|e| Error::query("reading wal_level", e))?
        .get(0);
    if found == "logical" {
        Ok(())
    } else {
        Err(Error::WalLevel { found })
    }
}
