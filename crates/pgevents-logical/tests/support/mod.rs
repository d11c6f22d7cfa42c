//! Test support: a fresh database per test on the shared wal_level=logical cluster, capture
//! in a task or in a child process, and waits with deadlines.

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgevents_event::Action;
use pgevents_log::LogSchema;
use pgevents_logical::{LogicalCapture, LogicalTable, Options};
use pgevents_postgres::QualifiedName;
use pgevents_trigger::Trigger;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// Environment of a child capture process (see `child_capture_process` in main.rs).
pub const CHILD_URL: &str = "PGEVENTS_LOGICAL_TEST_CHILD_URL";
pub const CHILD_SLOT: &str = "PGEVENTS_LOGICAL_TEST_CHILD_SLOT";

pub const ALL_OPS: [Action; 4] = [
    Action::Insert,
    Action::Update,
    Action::Delete,
    Action::Truncate,
];

/// A fresh database, with the event log installed, and a connection to it.
pub struct Db {
    pub url: String,
    pub client: Client,
    pub schema: LogSchema,
}

pub async fn db() -> Db {
    init_tracing();
    let url = pgevents_tempdb::testing::fresh_database("pgevents_logical").expect("test database");
    let mut client = connect(&url).await;
    let schema = LogSchema::default();
    pgevents_log::install(&mut client, &schema)
        .await
        .expect("install the log");
    Db {
        url,
        client,
        schema,
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

impl Db {
    /// Registers `table` for logical capture under trigger `name`.
    pub async fn register(&self, name: &str, table: &str, ops: &[Action]) -> LogicalTable {
        let mut spec = Trigger::new(name, QualifiedName::parse(table).expect("table name"), ());
        spec.operations = ops.to_vec();
        pgevents_logical::register_table(&self.client, &self.schema, &spec)
            .await
            .expect("register table")
    }

    /// Capture of `tables` through slot and publication `name`.
    pub fn capture(&self, name: &str, tables: Vec<LogicalTable>) -> LogicalCapture {
        LogicalCapture::new(&self.url, self.schema.clone(), name, name, tables)
            .expect("capture")
            .with_options(fast_options())
    }

    /// Events of `trigger_id` in the log.
    pub async fn count(&self, trigger_id: i32) -> i64 {
        self.client
            .query_one(
                "SELECT count(*) FROM pgevents.event WHERE trigger_id = $1",
                &[&trigger_id],
            )
            .await
            .expect("count")
            .get(0)
    }

    /// Waits until the slot has confirmed everything written so far: every committed
    /// change is in the log and no re-send can add more.
    pub async fn wait_caught_up(&self, slot: &str) {
        let target: String = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("lsn")
            .get(0);
        eventually(
            Duration::from_secs(45),
            "the slot to confirm the workload",
            || async {
                self.client
                    .query_one(
                        "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false)
                       FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot, &target],
                    )
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .unwrap_or(false)
            },
        )
        .await;
    }

    /// The application_name of the process streaming from `slot`, if any.
    pub async fn slot_holder(&self, slot: &str) -> Option<String> {
        self.client
            .query_opt(
                "SELECT a.application_name FROM pg_replication_slots s
                   JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = $1",
                &[&slot],
            )
            .await
            .expect("slot holder")
            .map(|r| r.get(0))
    }
}

pub fn fast_options() -> Options {
    Options {
        batch_rows: 500,
        status_interval: Duration::from_millis(200),
        health_interval: Duration::from_secs(5),
        ..Options::default()
    }
}

/// A capture running in a task of this process.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), pgevents_logical::Error>>,
}

impl Running {
    pub fn start(capture: LogicalCapture) -> Running {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(capture.run(async move {
            let _ = rx.await;
        }));
        Running {
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("capture stops within 30 s")
            .expect("capture task")
            .expect("capture run");
    }
}

/// A capture running in a child process (this test binary, re-run as
/// `child_capture_process`), so that it can be killed with SIGKILL.
pub struct ChildCapture {
    child: Child,
}

impl ChildCapture {
    pub fn start(url: &str, slot: &str) -> ChildCapture {
        let exe = std::env::current_exe().expect("test binary");
        let child = Command::new(exe)
            .args([
                "child_capture_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_URL, url)
            .env(CHILD_SLOT, slot)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the child capture process");
        ChildCapture { child }
    }

    /// SIGKILL: no chance to flush, confirm or say goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every registered trigger, captured with all operations (what a child process captures).
pub async fn registered_tables(client: &Client, schema: &LogSchema) -> Vec<LogicalTable> {
    pgevents_log::store::triggers(client, schema)
        .await
        .expect("triggers")
        .into_iter()
        .map(|t| LogicalTable {
            trigger_id: t.id,
            trigger: Trigger::new(
                t.name,
                QualifiedName {
                    schema: t.schema,
                    name: t.table,
                },
                (),
            )
            .operations(ALL_OPS),
            condition: None,
        })
        .collect()
}

/// Polls `check` until it returns true, or panics after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
