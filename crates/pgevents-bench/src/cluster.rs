//! The benchmark's own PostgreSQL: a throwaway cluster with fsync on, the `bench` database,
//! the benchmark table, and the SQL every scenario uses to reset and fill it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgevents_tempdb::{Options, TempCluster};
use tokio_postgres::{Client, NoTls};

use crate::listening::{Counter, RunningListener};

/// The table every scenario writes to (`public.bench_t`).
pub const TABLE: &str = "bench_t";
/// The publication and slot names of the logical-decoding baselines.
pub const PUBLICATION: &str = "bench_pub";
/// The slot and publication of pgevents' own logical capture.
pub const LOGICAL_SLOT: &str = "bench_pgevents";
/// The publication of pgevents' own logical capture.
pub const LOGICAL_PUBLICATION: &str = "bench_pgevents";
/// The text column of an ordinary benchmark row: rows are about 100 bytes, like a small
/// business row (an id, a number, a short text, a timestamp).
pub const NOTE: &str = "a short text column of an ordinary row";

/// How big and how long each scenario is.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// `--quick`: CI smoke sizes.
    pub quick: bool,
    /// Runs per measurement.
    pub runs: u32,
    /// Events in the handler backlog and the memory drain.
    pub backlog: u64,
    /// Events in the webhook and logical-mode backlogs.
    pub webhook_backlog: u64,
    /// Rows in the table the UPDATE workload updates.
    pub update_rows: u64,
    /// Seconds of each pgbench run.
    pub writer_secs: u64,
    /// Seconds of each steady-state write window.
    pub steady_secs: u64,
    /// Seconds of each latency run.
    pub latency_secs: u64,
    /// Bytes of the one big row of the memory scenario.
    pub big_row_bytes: u64,
}

impl Sizes {
    /// The sizes of a full run, or of a `--quick` one; `events` overrides the backlogs.
    pub fn new(quick: bool, runs: u32, events: Option<u64>) -> Sizes {
        let backlog = events
            .unwrap_or(if quick { 20_000 } else { 1_000_000 })
            .max(1);
        // At 5,000-15,000 events/s a drain of 1,000,000 takes minutes a run: by default the
        // webhook and logical-mode backlogs are a fifth of the handler's, so that `all`
        // stays near 15 minutes on a quiet 2-core machine; `--events` sets all three.
        let webhook_backlog = events
            .unwrap_or(if quick { 20_000 } else { 200_000 })
            .max(1);
        Sizes {
            quick,
            runs,
            backlog,
            webhook_backlog,
            update_rows: 100_000,
            writer_secs: if quick { 3 } else { 8 },
            steady_secs: if quick { 3 } else { 10 },
            latency_secs: if quick { 2 } else { 10 },
            big_row_bytes: if quick { 5 } else { 50 } * 1024 * 1024,
        }
    }
}

/// The machine the figures were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// CPU model name.
    pub cpu_model: String,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// `SELECT version()`.
    pub postgres: String,
}

/// A running cluster with the `bench` database.
pub struct Bench {
    cluster: TempCluster,
    /// URL of the `bench` database.
    pub url: String,
    /// URL the listeners connect with: `url`, plus the `--listener-pg-options` of an
    /// experiment (server settings for pgevents' own sessions only).
    pub listener_url: String,
    /// Directory of the PostgreSQL client binaries (pgbench, pg_recvlogical).
    pub bindir: PathBuf,
    /// How big each scenario is.
    pub sizes: Sizes,
    /// CPUs busy with other work during each measurement.
    background: std::sync::Mutex<Vec<f64>>,
}

/// A measurement during which other work took more CPU than this is made again.
const DISTURBED_CPUS: f64 = 0.3;
/// How many times a disturbed measurement is made, at most.
const ATTEMPTS: u32 = 3;

impl Bench {
    /// Starts a throwaway cluster (fsync on, `wal_level = logical`, and `settings`) and
    /// creates `bench`.
    pub async fn start(
        sizes: Sizes,
        listener_options: Option<&str>,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Bench> {
        let bindir = client_bindir()?;
        eprintln!("starting a throwaway PostgreSQL cluster (fsync on, wal_level = logical)");
        let mut options = Options {
            fsync: true,
            ..Options::default()
        };
        options
            .settings
            .extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let cluster = tokio::task::spawn_blocking(move || TempCluster::start(&options))
            .await
            .context("starting PostgreSQL")?
            .context("starting a throwaway PostgreSQL cluster")?;
        eprintln!(
            "PostgreSQL on 127.0.0.1:{} ({})",
            cluster.port(),
            cluster.dir().display()
        );
        let admin = connect(&cluster.url("postgres")).await?;
        admin
            .batch_execute("CREATE DATABASE bench")
            .await
            .context("creating the bench database")?;
        let url = cluster.url("bench");
        let listener_url = match listener_options {
            Some(options) => format!("{url}&options={}", percent_encode(options)),
            None => url.clone(),
        };
        Ok(Bench {
            url,
            listener_url,
            cluster,
            bindir,
            sizes,
            background: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.cluster.port()
    }

    /// Stops the server and removes its files.
    pub fn shutdown(self) -> anyhow::Result<()> {
        self.cluster
            .shutdown()
            .context("stopping the throwaway PostgreSQL cluster")
    }

    /// A new connection to the `bench` database.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        connect(&self.url).await
    }

    /// What the figures were measured on.
    pub async fn machine(&self) -> anyhow::Result<Machine> {
        let client = self.connect().await?;
        let postgres: String = client
            .query_one("SELECT version()", &[])
            .await
            .context("reading the server version")?
            .get(0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        Ok(Machine {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            memory_mib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            postgres,
        })
    }

    /// Drops everything a previous measurement left (the event log, triggers, slots,
    /// publication) and recreates the benchmark table with `rows` rows, vacuumed and
    /// checkpointed, so every measurement starts from the same state.
    pub async fn reset(&self, rows: u64) -> anyhow::Result<()> {
        let client = self.connect().await?;
        drop_slots(&client).await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS pgevents CASCADE;
                 DROP TABLE IF EXISTS {TABLE} CASCADE;
                 DROP TABLE IF EXISTS bench_big CASCADE;
                 DROP FUNCTION IF EXISTS bench_notify() CASCADE;
                 DROP PUBLICATION IF EXISTS {PUBLICATION};
                 DROP PUBLICATION IF EXISTS {LOGICAL_PUBLICATION};
                 CREATE TABLE {TABLE} (
                     id   bigserial PRIMARY KEY,
                     v    integer NOT NULL,
                     note text NOT NULL,
                     at   timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .context("resetting the benchmark database")?;
        if rows > 0 {
            client
                .execute(
                    &format!(
                        "INSERT INTO {TABLE} (v, note) SELECT g, $2 FROM generate_series(1, $1::int8) g"
                    ),
                    &[&(rows as i64), &NOTE],
                )
                .await
                .context("filling the benchmark table")?;
        }
        client
            .batch_execute(&format!("VACUUM (ANALYZE) {TABLE}"))
            .await
            .context("vacuuming the benchmark table")?;
        self.checkpoint().await?;
        // Start on a quiet machine when possible (other builds and tests share the CPUs).
        crate::load::settle(Duration::from_secs(20)).await;
        Ok(())
    }

    /// Runs `measurement` and meters the CPU other work on the machine took meanwhile; a
    /// measurement disturbed by more than 0.3 CPU of other work is made again (3 tries at
    /// most, the last one kept whatever it saw), so other builds and tests on a 2-core
    /// machine do not pass for pgevents' cost.
    pub async fn measured<T, F, Fut>(&self, mut measurement: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut attempt = 1;
        loop {
            let meter = crate::load::Meter::start(self.process_roots());
            let value = measurement().await?;
            let others = meter.others();
            if others < DISTURBED_CPUS || attempt >= ATTEMPTS {
                if let Ok(mut samples) = self.background.lock() {
                    samples.push(others);
                }
                return Ok(value);
            }
            eprintln!(
                "    other work on the machine took {others:.2} CPUs meanwhile: measuring again"
            );
            attempt += 1;
        }
    }

    /// This process and the cluster's postmaster: the roots of every process that is ours.
    fn process_roots(&self) -> Vec<u32> {
        let mut roots = vec![std::process::id()];
        roots.extend(self.postmaster());
        roots
    }

    /// The cluster's postmaster, the root of every PostgreSQL process (none if unknown).
    pub fn postmaster(&self) -> Vec<u32> {
        let pidfile = self.cluster.dir().join("data/postmaster.pid");
        std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            .into_iter()
            .collect()
    }

    /// CPUs busy with other work during each measurement so far.
    pub fn background(&self) -> Vec<f64> {
        self.background
            .lock()
            .map(|samples| samples.clone())
            .unwrap_or_default()
    }

    /// Forces a checkpoint, so the next measurement does not pay for the last one's writes.
    pub async fn checkpoint(&self) -> anyhow::Result<()> {
        self.connect()
            .await?
            .batch_execute("CHECKPOINT")
            .await
            .context("running CHECKPOINT")
    }

    /// Installs pgevents trigger capture on the benchmark table (filtered by the `where`
    /// `condition`, when given), the way a user does: by building a listener (which
    /// installs the log and the triggers) without running it.
    pub async fn install_capture(&self, condition: Option<&str>) -> anyhow::Result<()> {
        let counter = Counter::new();
        let mut trigger = pgevents::Trigger::for_table(TABLE, counter.handler())?;
        trigger.condition = condition.map(str::to_string);
        pgevents::Listener::builder(&self.listener_url)
            .trigger(trigger)
            .build()
            .await
            .context("installing pgevents capture")?;
        Ok(())
    }

    /// Builds (installing capture) and starts a listener delivering the benchmark table's
    /// events to `counter`, with the library's default settings.
    pub async fn listen(&self, counter: &Counter) -> anyhow::Result<RunningListener> {
        Ok(RunningListener::start(self.listener(counter).await?))
    }

    /// Builds (installing the log and the triggers) a listener delivering the benchmark
    /// table's events to `counter`, without starting it.
    pub async fn listener(&self, counter: &Counter) -> anyhow::Result<pgevents::Listener> {
        pgevents::Listener::builder(&self.listener_url)
            .on(TABLE, counter.handler())
            .drain_timeout(Duration::from_secs(5))
            .build()
            .await
            .context("building the pgevents listener")
    }

    /// Like [`listen`](Self::listen), in pgevents' logical capture mode (a replication slot
    /// streamed beside delivery instead of triggers).
    pub async fn listen_logical(&self, counter: &Counter) -> anyhow::Result<RunningListener> {
        Ok(RunningListener::start(
            self.logical_listener(counter).await?,
        ))
    }

    /// Builds (installing the slot, publication and log) a logical-mode listener delivering
    /// the benchmark table's events to `counter`, without starting it.
    pub async fn logical_listener(&self, counter: &Counter) -> anyhow::Result<pgevents::Listener> {
        pgevents::Listener::builder(&self.listener_url)
            .capture_logical(LOGICAL_SLOT, LOGICAL_PUBLICATION)
            .on(TABLE, counter.handler())
            .drain_timeout(Duration::from_secs(5))
            .build()
            .await
            .context("building the pgevents listener in logical capture mode")
    }

    /// Inserts `n` rows in transactions of at most `chunk` rows; returns the time it took.
    pub async fn insert_rows(&self, n: u64, chunk: u64) -> anyhow::Result<Duration> {
        let client = self.connect().await?;
        let statement = client
            .prepare(&format!(
                "INSERT INTO {TABLE} (v, note) SELECT g, $2 FROM generate_series(1, $1::int8) g"
            ))
            .await
            .context("preparing the backlog insert")?;
        let started = Instant::now();
        let mut left = n;
        while left > 0 {
            let rows = left.min(chunk);
            client
                .execute(&statement, &[&(rows as i64), &NOTE])
                .await
                .context("inserting backlog rows")?;
            left -= rows;
        }
        Ok(started.elapsed())
    }

    /// Creates the publication (benchmark table only) and a logical slot on `plugin`.
    pub async fn create_slot(&self, slot: &str, plugin: &str) -> anyhow::Result<()> {
        let client = self.connect().await?;
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {PUBLICATION};
                 CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE}"
            ))
            .await
            .context("creating the publication")?;
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, $2)",
                &[&slot, &plugin],
            )
            .await
            .with_context(|| format!("creating logical slot {slot} ({plugin})"))?;
        Ok(())
    }

    /// The current end of WAL.
    pub async fn wal_lsn(&self) -> anyhow::Result<String> {
        let row = self
            .connect()
            .await?
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .context("reading the WAL position")?;
        Ok(row.get(0))
    }
}

/// Drops every logical slot, waiting for its consumer to let go of it.
async fn drop_slots(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = client
            .query(
                "SELECT slot_name::text, active FROM pg_replication_slots",
                &[],
            )
            .await
            .context("listing replication slots")?;
        if rows.is_empty() {
            return Ok(());
        }
        for row in &rows {
            let (name, active): (String, bool) = (row.get(0), row.get(1));
            if !active {
                // A consumer may grab it between the look and the drop: just look again.
                let _ = client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                    .await;
            }
        }
        if Instant::now() > deadline {
            bail!("replication slots still in use after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `-c a=b` → `-c%20a%3Db`: a value for a URL's query.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Connects to `url` and drives the connection on a background task.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Where pgbench and pg_recvlogical live: `PGEVENTS_PG_BINDIR`, else `pg_config --bindir`,
/// else the newest `/usr/lib/postgresql/*/bin`.
fn client_bindir() -> anyhow::Result<PathBuf> {
    let usable = |dir: &Path| dir.join("pgbench").is_file() && dir.join("pg_recvlogical").is_file();
    if let Some(dir) = std::env::var_os("PGEVENTS_PG_BINDIR").map(PathBuf::from) {
        if usable(&dir) {
            return Ok(dir);
        }
        bail!(
            "PGEVENTS_PG_BINDIR={} has no pgbench and pg_recvlogical",
            dir.display()
        );
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&dir) {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .filter(|(_, dir)| usable(dir))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, dir)| dir).context(
        "pgbench and pg_recvlogical not found: install the PostgreSQL client and contrib \
         packages (e.g. `apt-get install postgresql`) or set PGEVENTS_PG_BINDIR",
    )
}
