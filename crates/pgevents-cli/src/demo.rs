//! `pgevents demo`: a throwaway PostgreSQL, demo tables written on a timer, every event
//! printed, and the console on a free local port to watch retries, attempts and redelivery.
//!
//! Two tables are watched: orders, whose handler prints each event, and payments, whose
//! handler stands for a flaky payment provider: it fails the first
//! [`PAYMENT_FAILED_ATTEMPTS`] attempts of every event, so each payment shows retries with
//! backoff in the attempt log before it is delivered.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use pgevents::{Delivery, Event, Listener, Outcome, Report, RetryPolicy, Sink, Trigger};
use pgevents_admin::{AdminState, Health};
use pgevents_log::LogSchema;
use pgevents_tempdb::{Options, TempCluster};

/// Arguments of `pgevents demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Use this database instead of starting a throwaway one (the demo tables are dropped on exit).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Time between two writes.
    #[arg(long, default_value = "1000", value_name = "MS")]
    interval_ms: u64,
    /// Do not serve the admin API and console.
    #[arg(long)]
    no_console: bool,
}

const ORDERS: &str = "pgevents_demo_orders";
const PAYMENTS: &str = "pgevents_demo_payments";
/// How many attempts of each payment event the demo's payment handler fails on purpose.
const PAYMENT_FAILED_ATTEMPTS: u32 = 2;
/// The payments' retry policy: short waits, so the retries show within seconds.
const PAYMENT_RETRY: RetryPolicy = RetryPolicy {
    max_retries: 4,
    initial_interval: Duration::from_secs(1),
    max_interval: Duration::from_secs(4),
    timeout: Duration::from_secs(10),
};

pub async fn run(args: Args) -> anyhow::Result<()> {
    // From the start: a Ctrl-C while PostgreSQL starts still stops and removes it.
    let shutdown = crate::signals::shutdown();
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
    let result = demo(
        &url,
        Duration::from_millis(args.interval_ms.max(10)),
        !args.no_console,
        shutdown,
    )
    .await;
    if args.database_url.is_some() {
        if let Ok(client) = connect(&url).await {
            let _ = client
                .batch_execute(&format!("DROP TABLE IF EXISTS {ORDERS}, {PAYMENTS}"))
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
    pgevents_postgres::connect(url, None)
        .await
        .with_context(|| "connecting to the demo database")
}

async fn demo(
    url: &str,
    interval: Duration,
    console: bool,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let client = connect(url).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {ORDERS} (
                 id bigserial PRIMARY KEY, customer text NOT NULL,
                 total numeric(12,2) NOT NULL, status text NOT NULL DEFAULT 'new',
                 created_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {PAYMENTS} (
                 id bigserial PRIMARY KEY, order_id bigint NOT NULL,
                 amount numeric(12,2) NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .context("creating the demo tables")?;
    let listener = Listener::builder(url)
        .on(ORDERS, |event: Event| async move {
            println!("{} {}", event.action(), event.payload_str());
            Ok::<_, std::convert::Infallible>(())
        })
        .sink(Trigger::for_table(PAYMENTS, FlakyPayments)?.retry(PAYMENT_RETRY))
        .build()
        .await?;
    let admin = if console {
        Some(serve_console(url, &client).await?)
    } else {
        None
    };
    eprintln!(
        "watching {ORDERS} and {PAYMENTS}; writing a change every {interval:?}; \
         each payment fails its first {PAYMENT_FAILED_ATTEMPTS} attempts and is retried; Ctrl-C to stop"
    );
    let writer = tokio::spawn(write_forever(client, interval));
    let result = listener.run(shutdown).await;
    writer.abort();
    if let Some((stop, server)) = admin {
        let _ = stop.send(());
        match server.await {
            Ok(Err(error)) => eprintln!("the console's server failed: {error}"),
            Err(error) => eprintln!("the console's server task failed: {error}"),
            Ok(Ok(())) => {}
        }
    }
    result.map_err(Into::into)
}

/// The admin server's stop signal and task.
type Console = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), pgevents_admin::Error>>,
);

/// Serves the admin API and console on a free port of 127.0.0.1 and prints its URL.
async fn serve_console(url: &str, client: &tokio_postgres::Client) -> anyhow::Result<Console> {
    let schema = LogSchema::default();
    let salt = pgevents_log::salt(client, &schema)
        .await
        .context("reading the event log's id salt")?;
    let socket = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .context("listening on a free port of 127.0.0.1 for the console")?;
    let addr = socket
        .local_addr()
        .context("reading the console's address")?;
    // The listener runs capture and delivery in this process from here on; /healthz also
    // asks the database itself on every call.
    let health = Health::new();
    health.set_database_reachable(true);
    health.set_capture_running(true);
    let state = AdminState::new(url, schema, salt, None, health);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(pgevents_admin::serve(socket, state, async move {
        let _ = stopped.await;
    }));
    eprintln!(
        "console: http://{addr}/ (triggers, events, attempts, redelivery; API under /api/v1)"
    );
    Ok((stop, server))
}

/// The payments' destination: a payment provider that fails the first
/// [`PAYMENT_FAILED_ATTEMPTS`] attempts of every event (redeliveries too) and then
/// accepts it, printing it like the orders' handler.
struct FlakyPayments;

impl Sink for FlakyPayments {
    async fn deliver(&self, delivery: Delivery) -> Outcome {
        let event = delivery.event;
        let attempt = delivery.attempt.current_retry + 1;
        if attempt <= PAYMENT_FAILED_ATTEMPTS {
            eprintln!(
                "payment {}: attempt {attempt} failed on purpose; retried with backoff",
                event.id()
            );
            return Outcome::retry(format!(
                "the demo's payment provider is unavailable (it fails the first {PAYMENT_FAILED_ATTEMPTS} attempts of every event)"
            ));
        }
        println!("{} {}", event.action(), event.payload_str());
        Outcome::Delivered(Report::default())
    }
}

async fn write_forever(client: tokio_postgres::Client, interval: Duration) {
    let customers = ["ada", "grace", "edsger", "barbara", "ken"];
    let mut tick = tokio::time::interval(interval);
    for n in 0u64.. {
        tick.tick().await;
        let sql = match n % 4 {
            0 | 1 => format!(
                "INSERT INTO {ORDERS} (customer, total) VALUES ('{}', {}.{:02})",
                customers[(n as usize) % customers.len()],
                10 + n % 90,
                n % 100
            ),
            2 => format!(
                "WITH paid AS (
                     UPDATE {ORDERS} SET status = 'paid'
                      WHERE id = (SELECT max(id) FROM {ORDERS}) RETURNING id, total)
                 INSERT INTO {PAYMENTS} (order_id, amount) SELECT id, total FROM paid"
            ),
            _ => format!("DELETE FROM {ORDERS} WHERE id = (SELECT min(id) FROM {ORDERS})"),
        };
        if let Err(error) = client.batch_execute(&sql).await {
            eprintln!("demo writer: {error}");
        }
    }
}
