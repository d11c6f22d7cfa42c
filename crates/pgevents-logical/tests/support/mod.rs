//! Test support: a fresh database per test on the shared wal_level=logical cluster, capture
//! in a task or in a child process, and waits with deadlines.

use std::process::{Command, Stdio};
use std::time::Duration;

use pgevents_event::Action;
use pgevents_log::LogSchema;
use pgevents_logical::{LogicalCapture, LogicalTable, Options};
use pgevents_postgres::QualifiedName;
use pgevents_testkit::background::Background;
pub use pgevents_testkit::db::{connect, init_tracing};
use pgevents_testkit::process::OwnedChild;
pub use pgevents_testkit::wait::eventually;
use pgevents_trigger::Trigger;
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
    let pgevents_testkit::db::Db { url, mut client } =
        pgevents_testkit::db::Db::fresh("pgevents_logical").await;
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

impl Db {
    /// Registers `table` for logical capture under trigger `name`.
    pub async fn register(&self, name: &str, table: &str, ops: &[Action]) -> LogicalTable {
        let mut spec = Trigger::new(name, QualifiedName::parse(table).expect("table name"), ());
        spec.operations = ops.to_vec();
        pgevents_logical::register_table(&self.client, &self.schema, &spec)
            .await
            .expect("register table")
    }

    /// Creates a table with `ddl`, registers it as `table` (every operation, trigger named
    /// after it) and installs its capture through slot and publication `slot`; returns the
    /// trigger's id.
    pub async fn captured(&self, ddl: &str, table: &str, slot: &str) -> i32 {
        self.client.batch_execute(ddl).await.expect("schema");
        let table = self.register(table, table, &ALL_OPS).await;
        let id = table.trigger_id;
        self.capture(slot, vec![table])
            .install()
            .await
            .expect("install");
        id
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

    /// Events of `trigger_id` in the log, and how many distinct rows (`id`) they are of.
    pub async fn total_and_distinct(&self, trigger_id: i32) -> (i64, i64) {
        self.client
            .query_one(
                "SELECT count(*), count(DISTINCT new_row->>'id') FROM pgevents.event WHERE trigger_id = $1",
                &[&trigger_id],
            )
            .await
            .map(|r| (r.get(0), r.get(1)))
            .expect("counts")
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
pub struct Running(Background<pgevents_logical::Error>);

impl Running {
    pub fn start(capture: LogicalCapture) -> Running {
        Running(Background::spawn(|stop| capture.run(stop)))
    }

    pub async fn stop(self) {
        self.0.stop(Duration::from_secs(30), "the capture").await;
    }
}

/// A capture running in a child process (this test binary, re-run as
/// `child_capture_process`), so that it can be killed with SIGKILL.
pub struct ChildCapture {
    child: OwnedChild,
}

impl ChildCapture {
    pub fn start(url: &str, slot: &str) -> ChildCapture {
        let exe = std::env::current_exe().expect("test binary");
        let child = OwnedChild::spawn(
            Command::new(exe)
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
                .stdout(Stdio::null()),
            "the child capture process",
        );
        ChildCapture { child }
    }

    /// SIGKILL: no chance to flush, confirm or say goodbye.
    pub fn kill(mut self) {
        self.child.kill();
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
