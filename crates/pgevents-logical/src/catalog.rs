//! What logical capture reads from the system catalogs beyond the tables
//! (`pgevents_postgres::catalog`): the server's `wal_level`.

use tokio_postgres::GenericClient;

use crate::Error;

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
