//! Backfill: `READ` events per second from a big table to an in-process handler, and what a
//! backfill costs the application's writers.
//!
//! Each run resets the benchmark table with `N` rows (1,000,000; `--events` sets it) and
//! starts a listener (trigger capture) delivering its events to a handler that counts the
//! `READ` ones. pgbench then runs the single-row UPDATE workload of the writer scenario at 8
//! clients, first alone (the baseline, the listener delivering its UPDATEs), then again with
//! a backfill of the whole table started at the same moment. The figures: the writers' TPS
//! in each window, their ratio, and the backfill's rate from its start to the `N`-th `READ`
//! delivered (writers running for the first part of it), beside the rate at which its chunks
//! read the rows and wrote their events into the log (from its start to its last chunk's
//! commit; a chunk delivers the events nothing holds back before it commits, so the two
//! rates are close).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgevents::{Action, Event};

use crate::cluster::{Bench, TABLE};
use crate::listening::{Counter, RunningListener};
use crate::process;
use crate::report::{ratio_text, Goal, Report, Unit};
use crate::stats::median;
use crate::writer::Workload;

const SECTION: &str = "Backfill — READ events of a whole table to a handler, writers beside it";
/// pgbench clients, as in the writer scenario.
const CLIENTS: u32 = 8;
/// Target of the issue: READ events delivered per second.
const RATE_TARGET: f64 = 50_000.0;
/// Target of the issue: the writers' TPS during a backfill, as a share of it without one.
const WRITERS_TARGET: f64 = 0.90;

/// What one run measured.
struct Run {
    tps_alone: f64,
    tps_during: f64,
    /// READ events delivered per second, from the start to the last one delivered.
    rows_per_sec: f64,
    /// Rows read (events written to the log) per second, from the start to the last chunk's
    /// commit.
    written_per_sec: f64,
}

/// A handler counting only `READ` events into `reads`.
fn read_counter(reads: &Counter, all: &Arc<AtomicU64>) -> impl pgevents::Handler {
    let reads = reads.clone();
    let all = all.clone();
    move |event: Event| {
        all.fetch_add(1, Ordering::Relaxed);
        if event.action() == Action::Read {
            reads.hit();
        }
        std::future::ready(Ok::<_, std::convert::Infallible>(()))
    }
}

async fn measure(bench: &Bench, script: &std::path::Path, rows: u64) -> anyhow::Result<Run> {
    bench.reset(rows).await?;
    let reads = Counter::new();
    let all = Arc::new(AtomicU64::new(0));
    let listener = pgevents::Listener::builder(&bench.listener_url)
        .on(TABLE, read_counter(&reads, &all))
        .drain_timeout(Duration::from_secs(5))
        .build()
        .await
        .context("building the listener")?;
    let running = RunningListener::start(listener);
    bench.checkpoint().await?;
    let defines = [("rows", rows.to_string())];
    let alone = process::pgbench(bench, script, CLIENTS, bench.sizes.writer_secs, &defines)
        .await
        .context("pgbench without a backfill")?;
    eprintln!("    writers alone: {:.0} TPS", alone.tps);
    // A second listener of the same table, never run: the way an application starts a
    // backfill beside the listener that delivers it.
    let starter = pgevents::Listener::builder(&bench.listener_url)
        .on(TABLE, Counter::new().handler())
        .build()
        .await
        .context("building the listener that starts the backfill")?;
    let started = Instant::now();
    starter
        .backfill(TABLE, None)
        .await
        .context("starting the backfill")?;
    let during = process::pgbench(bench, script, CLIENTS, bench.sizes.writer_secs, &defines)
        .await
        .context("pgbench during the backfill")?;
    let last = reads
        .wait_for(rows, Duration::from_secs(600))
        .await
        .context("waiting for every READ event")?;
    let secs = last.saturating_duration_since(started).as_secs_f64();
    eprintln!(
        "    writers during the backfill: {:.0} TPS; {rows} rows read and delivered in {secs:.1} s ({} events in all)",
        during.tps,
        all.load(Ordering::Relaxed)
    );
    // Its chunks deliver their READ events before they commit: the last one (which finds
    // no row left and marks the backfill done) may still be to come.
    let deadline = Instant::now() + Duration::from_secs(60);
    let written = loop {
        let record = starter
            .backfills()
            .await
            .context("reading the backfill's record")?
            .into_iter()
            .next()
            .context("the backfill has no record")?;
        if let Some(finished_at) = record.finished_at {
            break (finished_at - record.started_at).num_milliseconds();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the backfill was not done a minute after its last READ"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    running.stop().await?;
    let written_per_sec = rows as f64 / (written.max(1) as f64 / 1000.0);
    eprintln!("    chunks committed at {written_per_sec:.0} rows/s");
    Ok(Run {
        tps_alone: alone.tps,
        tps_during: during.tps,
        rows_per_sec: rows as f64 / secs,
        written_per_sec,
    })
}

/// Runs the backfill scenario and adds its rows and targets to `report`.
pub async fn run(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a directory for the pgbench script")?;
    let script = dir.path().join("update.sql");
    std::fs::write(&script, Workload::Update.script()).context("writing the pgbench script")?;
    let rows = bench.sizes.backlog;
    let runs = bench.sizes.runs;
    let mut alone = Vec::new();
    let mut during = Vec::new();
    let mut rates = Vec::new();
    let mut written = Vec::new();
    let mut ratios = Vec::new();
    for run in 1..=runs {
        eprintln!("backfill: run {run}/{runs}: {rows} rows, pgbench UPDATE at {CLIENTS} clients");
        let r = bench.measured(|| measure(bench, &script, rows)).await?;
        alone.push(r.tps_alone);
        during.push(r.tps_during);
        rates.push(r.rows_per_sec);
        written.push(r.written_per_sec);
        ratios.push(r.tps_during / r.tps_alone);
    }
    let ratio = median(&ratios);
    report.row(
        SECTION,
        format!("READ events delivered per second, {rows} rows, writers running"),
        Unit::PerSec,
        rates.clone(),
        "",
    );
    report.row(
        SECTION,
        "rows read per second, to the last chunk's commit, writers running",
        Unit::PerSec,
        written,
        "chunks deliver before they commit",
    );
    report.row(
        SECTION,
        "writers' TPS without a backfill (UPDATE, 8 clients, listener delivering)",
        Unit::Tps,
        alone,
        "baseline",
    );
    report.row(
        SECTION,
        "writers' TPS during the backfill",
        Unit::Tps,
        during,
        ratio_text(ratio),
    );
    report.check(
        format!("backfill ≥ {RATE_TARGET:.0} rows/s to an in-process handler"),
        median(&rates),
        Unit::PerSec,
        Goal::AtLeast(RATE_TARGET),
    );
    report.check(
        "writers' TPS during a backfill within 10% of their TPS without one",
        ratio * 100.0,
        Unit::Percent,
        Goal::AtLeast(WRITERS_TARGET * 100.0),
    );
    Ok(())
}
