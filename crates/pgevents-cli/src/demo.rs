//! `pgevents demo`: a throwaway PostgreSQL, a demo table written on a timer, every event printed.

use std::time::Duration;

use anyhow::Context;
use pgevents::{Event, Listener};
use pgevents_tempdb::{Options, TempCluster};

/// Arguments of `pgevents demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Use this database instead of starting a throwaway one (the demo table is dropped on exit).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Time between two writes.
    #[arg(long, default_value = "1000", value_name = "MS")]
    interval_ms: u64,
}

const TABLE: &str = "pgevents_demo_orders";

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cluster = match &args.database_url {
        Some(_) => None,
        None => {
            eprintln!("starting a throwaway PostgreSQL ...");
            let cluster = tokio::task::spawn_blocking(|| TempCluster::start(&Options::default()))
                .await
                .context("starting the throwaway PostgreSQL")??;
            eprintln!(
                "PostgreSQL running at {} (data in {})",
                cluster.url("postgres"),
                cluster.dir().display()
            );
            Some(cluster)
        }
    };
    let url = match (&args.database_url, &cluster) {
        (Some(url), _) => url.clone(),
        (None, Some(c)) => c.url("postgres"),
        (None, None) => anyhow::bail!("no database"),
    };
    let result = demo(&url, Duration::from_millis(args.interval_ms.max(10))).await;
    if args.database_url.is_some() {
        if let Ok(client) = connect(&url).await {
            let _ = client
                .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
                .await;
        }
    }
    if let Some(cluster) = cluster {
        eprintln!(
            "stopping PostgreSQL and removing {}",
            cluster.dir().display()
        );
        tokio::task::spawn_blocking(move || cluster.shutdown())
            .await
            .context("stopping the throwaway PostgreSQL")??;
    }
    result
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    // The same connector as the daemon's: `sslmode` in a --database-url is honoured.
    pgevents_log::connect(url, None)
        .await
        .with_context(|| "connecting to the demo database")
}

async fn demo(url: &str, interval: Duration) -> anyhow::Result<()> {
    let client = connect(url).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (
                 id bigserial PRIMARY KEY, customer text NOT NULL,
                 total numeric(12,2) NOT NULL, status text NOT NULL DEFAULT 'new',
                 created_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .context("creating the demo table")?;
    let listener = Listener::builder(url)
        .on(TABLE, |event: Event| async move {
            println!("{} {}", event.action(), event.payload_str());
            Ok::<_, std::convert::Infallible>(())
        })
        .build()
        .await?;
    eprintln!("watching {TABLE}; writing a change every {interval:?}; Ctrl-C to stop");
    let writer = tokio::spawn(write_forever(client, interval));
    let result = listener.run(crate::signals::shutdown()).await;
    writer.abort();
    result.map_err(Into::into)
}

async fn write_forever(client: tokio_postgres::Client, interval: Duration) {
    let customers = ["ada", "grace", "edsger", "barbara", "ken"];
    let mut tick = tokio::time::interval(interval);
    for n in 0u64.. {
        tick.tick().await;
        let sql = match n % 4 {
            0 | 1 => format!(
                "INSERT INTO {TABLE} (customer, total) VALUES ('{}', {}.{:02})",
                customers[(n as usize) % customers.len()],
                10 + n % 90,
                n % 100
            ),
            2 => format!(
                "UPDATE {TABLE} SET status = 'paid' WHERE id = (SELECT max(id) FROM {TABLE})"
            ),
            _ => format!("DELETE FROM {TABLE} WHERE id = (SELECT min(id) FROM {TABLE})"),
        };
        if let Err(error) = client.batch_execute(&sql).await {
            eprintln!("demo writer: {error}");
        }
    }
}
