//! Where the time goes, per event: a backlog drained to an in-process handler in each
//! capture mode, with the CPU of pgevents' process and of PostgreSQL's, the WAL written,
//! and every statement's share from `pg_stat_statements` (nested statements included, so
//! the work inside the log's functions shows).
//!
//! Trigger mode: `N` rows inserted with capture installed and no listener running, then the
//! drain (ingest, claim, settle). Logical mode: the slot and log installed, `N` rows
//! inserted (their changes wait in the WAL), then the drain (decode, log write, claim,
//! settle). Only the drain is profiled; the statistics are reset when it starts.
//!
//! Then, in each mode, pgbench's single-row INSERTs at 8 clients for 8 s with the listener
//! delivering beside them (as in the writer-overhead scenario): each look at the log finds
//! few events there, so what a statement costs per call (planning, a round trip) shows.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cluster::Bench;
use crate::listening::{Counter, RunningListener};
use crate::load::{own_ticks, tree_ticks};
use crate::writer::Workload;

/// Rows per transaction of the backlog insert.
const BACKLOG_CHUNK: u64 = 10_000;
/// Statements listed per mode.
const TOP: i64 = 10;

/// The server settings the profile needs.
pub const SETTINGS: [(&str, &str); 3] = [
    ("shared_preload_libraries", "pg_stat_statements"),
    ("pg_stat_statements.track", "all"),
    ("pg_stat_statements.track_planning", "on"),
];

/// Profiles a drain of `n` events in each capture mode; returns the Markdown to print.
pub async fn run(bench: &Bench, n: u64) -> anyhow::Result<String> {
    let mut out = format!(
        "## Profile — a backlog of {n} events drained to an in-process handler\n\n\
         CPU in µs per event (clock ticks of the processes, so ±{:.2} µs/event); WAL in bytes \
         per event; statements from pg_stat_statements (track = all: a function's inner \
         statements are listed beside the call, so their times overlap).\n",
        1e6 / ticks_per_second() / n as f64
    );
    let dir = tempfile::tempdir().context("creating a directory for the pgbench script")?;
    let script = dir.path().join("insert.sql");
    std::fs::write(&script, Workload::Insert.script()).context("writing a pgbench script")?;
    for logical in [false, true] {
        out.push_str(&mode(bench, n, logical).await?);
        out.push_str(&beside(bench, &script, logical).await?);
    }
    Ok(out)
}

/// pgbench INSERTs (8 clients, one row per transaction) for this long while the listener
/// captures and delivers beside them.
const BESIDE_SECS: u64 = 8;
/// pgbench clients of that phase (as in the writer-overhead scenario).
const BESIDE_CLIENTS: u32 = 8;

/// The statements' cost per event while writers run: the listener delivers pgbench's
/// INSERTs as they commit, so each look at the log finds few events and a statement's fixed
/// cost (planning, a round trip) counts more than in a drain.
async fn beside(bench: &Bench, script: &std::path::Path, logical: bool) -> anyhow::Result<String> {
    let name = if logical { "logical" } else { "trigger" };
    eprintln!("profile: {name} mode, writers beside for {BESIDE_SECS} s");
    bench.reset(0).await?;
    let client = bench.connect().await?;
    let counter = Counter::new();
    let listener = listener(bench, &counter, logical).await?;
    let running = RunningListener::start(listener);
    reset_statistics(&client).await?;
    let (ours, postgres) = (std::process::id(), bench.postmaster());
    // pgbench is this process's child: only this process's own ticks are pgevents'.
    let mut sessions = Sessions::default();
    sessions.look(&client).await?;
    let before = (own_ticks(ours), tree_ticks(&postgres));
    let started = Instant::now();
    let pgbench = crate::process::pgbench(bench, script, BESIDE_CLIENTS, BESIDE_SECS, &[]).await?;
    let n = pgbench.transactions;
    counter
        .wait_for(n, Duration::from_secs(120.max(n / 500)))
        .await?;
    let took = started.elapsed();
    sessions.look(&client).await?;
    let after = (own_ticks(ours), tree_ticks(&postgres));
    running.stop().await?;
    let per_event = |ticks: u64| micros_per_event(ticks, n);
    let (postgres_ticks, listener_ticks) = (after.1.saturating_sub(before.1), sessions.ticks());
    let mut out = format!(
        "\n### {name} mode, pgbench INSERT beside (8 clients, {BESIDE_SECS} s)\n\n\
         - writers: {:.0} TPS, {n} events, all delivered {:.1} s after pgbench started\n\
         - CPU per event: pgevents {:.1} µs (pgbench not included); PostgreSQL {:.1} µs, of \
           which the listener's sessions {:.1} µs and the writers' and the rest {:.1} µs\n\n",
        pgbench.tps,
        took.as_secs_f64(),
        per_event(after.0.saturating_sub(before.0)),
        per_event(postgres_ticks),
        per_event(listener_ticks),
        per_event(postgres_ticks.saturating_sub(listener_ticks)),
    );
    out.push_str(&statements(&client, n).await?);
    Ok(out)
}

/// The listener's server processes (`application_name` pgevents, the replication stream's
/// included) and their CPU ticks: at the first look and at the last, so a session opened
/// between the two counts from its start.
#[derive(Default)]
struct Sessions {
    first: Option<std::collections::HashMap<u32, u64>>,
    last: std::collections::HashMap<u32, u64>,
}

impl Sessions {
    async fn look(&mut self, client: &tokio_postgres::Client) -> anyhow::Result<()> {
        let rows = client
            .query(
                "SELECT pid FROM pg_stat_activity
                  WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&pgevents_postgres::APPLICATION_NAME],
            )
            .await
            .context("listing the listener's sessions")?;
        let ticks = rows
            .iter()
            .filter_map(|r| u32::try_from(r.get::<_, i32>(0)).ok())
            .map(|pid| (pid, own_ticks(pid)));
        match self.first {
            None => self.first = Some(ticks.collect()),
            Some(_) => self.last = ticks.collect(),
        }
        Ok(())
    }

    /// Ticks between the two looks, of the sessions alive at the last.
    fn ticks(&self) -> u64 {
        self.last
            .iter()
            .map(|(pid, t)| {
                let first = self.first.as_ref().and_then(|f| f.get(pid)).copied();
                t.saturating_sub(first.unwrap_or(0))
            })
            .sum()
    }
}

/// The listener of `bench`'s table in either capture mode, counting into `counter`.
async fn listener(
    bench: &Bench,
    counter: &Counter,
    logical: bool,
) -> anyhow::Result<pgevents::Listener> {
    if logical {
        bench.logical_listener(counter).await
    } else {
        bench.listener(counter).await
    }
}

/// CPU clock `ticks` in µs per event of `n`.
fn micros_per_event(ticks: u64, n: u64) -> f64 {
    ticks as f64 / ticks_per_second() * 1e6 / n.max(1) as f64
}

/// Empties pg_stat_statements and the table statistics.
async fn reset_statistics(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client
        .batch_execute("SELECT pg_stat_statements_reset(); SELECT pg_stat_reset();")
        .await
        .context("resetting pg_stat_statements and the table statistics")
}

/// The top statements since the statistics were reset, per event of `n`, as a Markdown table.
async fn statements(client: &tokio_postgres::Client, n: u64) -> anyhow::Result<String> {
    let mut out = String::from(
        "| statement | calls | total ms | µs/event | planning µs/event | rows | WAL bytes/event |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    let rows = client
        .query(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90), calls,
                    total_exec_time, rows, wal_bytes::float8, total_plan_time
               FROM pg_stat_statements
              WHERE query NOT LIKE '%pg_stat_statements%'
              ORDER BY total_exec_time + total_plan_time DESC LIMIT $1",
            &[&TOP],
        )
        .await
        .context("reading pg_stat_statements")?;
    let n = n.max(1) as f64;
    for row in rows {
        let total: f64 = row.get(2);
        let wal: f64 = row.get(4);
        let planning: f64 = row.get(5);
        out.push_str(&format!(
            "| `{}` | {} | {:.0} | {:.1} | {:.1} | {} | {:.0} |\n",
            row.get::<_, String>(0).replace('|', "\\|"),
            row.get::<_, i64>(1),
            total,
            total * 1000.0 / n,
            planning * 1000.0 / n,
            row.get::<_, i64>(3),
            wal / n,
        ));
    }
    Ok(out)
}

async fn mode(bench: &Bench, n: u64, logical: bool) -> anyhow::Result<String> {
    let name = if logical { "logical" } else { "trigger" };
    eprintln!("profile: {name} mode, {n} events");
    bench.reset(0).await?;
    let client = bench.connect().await?;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .context("creating pg_stat_statements (the cluster preloads it)")?;
    let counter = Counter::new();
    let listener = listener(bench, &counter, logical).await?;
    let wal_start = wal(&client).await?;
    let took = bench.insert_rows(n, BACKLOG_CHUNK).await?;
    let wal_inserted = wal(&client).await?;
    bench.checkpoint().await?;
    reset_statistics(&client).await?;
    let (ours, postgres) = (std::process::id(), bench.postmaster());
    let before = (tree_ticks(&[ours]), tree_ticks(&postgres));
    let wal_before = wal(&client).await?;
    let started = Instant::now();
    let running = RunningListener::start(listener);
    let last = counter
        .wait_for(n, Duration::from_secs(120.max(n / 500)))
        .await?;
    let drained = last.saturating_duration_since(started);
    running.stop().await?;
    let after = (tree_ticks(&[ours]), tree_ticks(&postgres));
    let wal_after = wal(&client).await?;
    let (updated, hot) = event_updates(&client, n).await?;
    let per_event = |ticks: u64| micros_per_event(ticks, n);
    let mut out = format!(
        "\n### {name} mode\n\n\
         - insert with capture: {:.0} rows/s, WAL {:.0} bytes/row\n\
         - drain: {:.0} events/s; CPU per event: pgevents {:.1} µs, PostgreSQL {:.1} µs; \
           WAL {:.0} bytes/event\n\
         - updates of the log's event rows: {:.2} per event, {:.0}% of them HOT (no index entry written)\n\n",
        n as f64 / took.as_secs_f64(),
        (wal_inserted - wal_start) as f64 / n as f64,
        n as f64 / drained.as_secs_f64(),
        per_event(after.0.saturating_sub(before.0)),
        per_event(after.1.saturating_sub(before.1)),
        (wal_after - wal_before) as f64 / n as f64,
        updated as f64 / n as f64,
        if updated > 0 { hot as f64 * 100.0 / updated as f64 } else { 0.0 },
    );
    out.push_str(&statements(&client, n).await?);
    Ok(out)
}

/// Updates of `pgevents.event` rows since the statistics were reset, and how many were HOT:
/// read once the sessions that made them have reported (a session reports when it ends,
/// or within a second of going idle), so when the count stops growing.
async fn event_updates(client: &tokio_postgres::Client, n: u64) -> anyhow::Result<(i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = (-1, -1);
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(sum(n_tup_upd), 0)::int8, coalesce(sum(n_tup_hot_upd), 0)::int8
                   FROM pg_stat_user_tables WHERE schemaname = 'pgevents' AND relname = 'event'",
                &[],
            )
            .await
            .context("reading the event table's statistics")?;
        let now: (i64, i64) = (row.get(0), row.get(1));
        // Every event is claimed and settled at least once.
        if (now == last && now.0 >= 2 * n as i64) || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The server's current WAL position, in bytes.
async fn wal(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
        .await
        .context("reading the WAL position")?
        .get(0))
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}
