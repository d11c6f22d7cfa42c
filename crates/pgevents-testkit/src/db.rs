//! Throwaway databases: a fresh database per test on the test process's shared cluster
//! (`pgevents_tempdb::testing`), connections to it, and the test's log output.

use std::ops::RangeInclusive;

use tokio_postgres::Client;

/// Sends `tracing` output to the test's captured output, at `RUST_LOG` or `warn`; the first
/// call wins, later ones do nothing.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Connects to `url` without TLS (the test clusters do not offer it); the connection runs in
/// a task of its own.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// Whether the event log (schema `pgevents`) holds the event at position `seq` yet: a
/// handler asks it to tell an event delivered before its write committed from one claimed
/// from the log.
pub async fn in_log(client: &Client, seq: i64) -> Result<bool, String> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pgevents.event WHERE seq = $1",
            &[&seq],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// Inserts the rows `ids` into `table` (whose first column is the id; the others take their
/// defaults) in one transaction.
pub async fn insert_ids(client: &Client, table: &str, ids: RangeInclusive<i64>) {
    client
        .batch_execute(&format!(
            "INSERT INTO {table} SELECT generate_series({}, {})",
            ids.start(),
            ids.end()
        ))
        .await
        .unwrap_or_else(|e| panic!("insert into {table}: {e}"));
}

/// A fresh database and a superuser connection to it.
pub struct Db {
    /// The superuser URL.
    pub url: String,
    /// A superuser connection.
    pub client: Client,
}

impl Db {
    /// A fresh database, named after `prefix`, on the test process's shared cluster.
    pub async fn fresh(prefix: &str) -> Db {
        let url = pgevents_tempdb::testing::fresh_database(prefix).expect("test database");
        let client = connect(&url).await;
        Db { url, client }
    }
}
