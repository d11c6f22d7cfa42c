//! Memory: the peak resident set of a listener process, measured in a process of its own.
//!
//! The benchmark re-executes itself as a hidden `__drain-child` that builds a listener on a
//! prepared backlog, delivers it to an in-process handler, and prints, as one JSON line, its
//! peak RSS (`VmHWM` of `/proc/self/status`) before the listener started and at the end,
//! and how long the delivery took. So the figure is the whole listener process — runtime,
//! connections, in-flight events — and nothing of the benchmark's own bookkeeping. The same
//! child drains the handler backlog of the throughput scenario, so one run gives both figures.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgevents::Event;

use crate::cluster::{Bench, TABLE};
use crate::listening::{Counter, RunningListener};
use crate::process;
use crate::report::{Goal, Report, Unit};
use crate::stats::median;

const SECTION: &str = "Memory — peak RSS (VmHWM) of a listener process";
/// The table of the big-row measurement.
const BIG_TABLE: &str = "bench_big";

/// Arguments of the hidden child.
#[derive(Debug, Clone, clap::Args)]
pub struct ChildArgs {
    /// The database.
    #[arg(long)]
    url: String,
    /// The table to listen on.
    #[arg(long)]
    table: String,
    /// Events to wait for.
    #[arg(long)]
    expect: u64,
    /// The handler encodes each event's payload (as a forwarding handler would), instead
    /// of only counting.
    #[arg(long)]
    payload: bool,
}

/// What one child reported.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// Peak RSS before the listener was built, bytes.
    pub baseline: f64,
    /// Peak RSS at the end, bytes.
    pub peak: f64,
    /// From the listener's start to the last delivery.
    pub elapsed: Duration,
    /// Events delivered.
    pub delivered: u64,
}

impl Drain {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }
}

fn vm_hwm() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .context("no VmHWM in /proc/self/status")
}

/// The hidden child: deliver `expect` events of `table`, then report.
pub async fn child(args: ChildArgs) -> anyhow::Result<()> {
    // As the daemon does at start.
    pgevents::release_large_allocations();
    let baseline = vm_hwm()?;
    let counter = Counter::new();
    let builder = pgevents::Listener::builder(&args.url).drain_timeout(Duration::from_secs(5));
    let builder = if args.payload {
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = counter.clone();
        builder.on(&args.table, move |event: Event| {
            let counter = counter.clone();
            let bytes = bytes.clone();
            async move {
                bytes.fetch_add(event.payload().len() as u64, Ordering::Relaxed);
                counter.hit();
                Ok::<_, std::convert::Infallible>(())
            }
        })
    } else {
        builder.on(&args.table, counter.handler())
    };
    let listener = builder.build().await.context("building the listener")?;
    let started = Instant::now();
    let running = RunningListener::start(listener);
    // A deadline for a drain that is stuck, not a target: 2,000 rows of 10 MB take minutes.
    let timeout = Duration::from_secs(600.max(args.expect / 1000));
    let last = counter.wait_for(args.expect, timeout).await?;
    running.stop().await?;
    let peak = vm_hwm()?;
    println!(
        "{}",
        serde_json::json!({
            "baseline": baseline,
            "peak": peak,
            "elapsed_ns": last.saturating_duration_since(started).as_nanos() as u64,
            "delivered": counter.count(),
        })
    );
    Ok(())
}

/// Runs the child on `table`'s pending events and returns what it reported.
pub async fn drain_in_child(
    bench: &Bench,
    table: &str,
    expect: u64,
    payload: bool,
) -> anyhow::Result<Drain> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let mut cmd = process::command(&exe);
    cmd.args([
        "__drain-child",
        "--url",
        &bench.listener_url,
        "--table",
        table,
    ])
    .args(["--expect", &expect.to_string()])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if payload {
        cmd.arg("--payload");
    }
    let child = cmd.spawn().context("starting the listener child")?;
    let timeout = Duration::from_secs(900.max(expect / 500));
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .context("the listener child did not finish in time")?
        .context("waiting for the listener child")?;
    if !out.status.success() {
        bail!("the listener child failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .context("the listener child printed nothing")?;
    let v: serde_json::Value =
        serde_json::from_str(line).context("reading the listener child's report")?;
    let field = |name: &str| {
        v.get(name)
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("no {name} in the listener child's report"))
    };
    Ok(Drain {
        baseline: field("baseline")? as f64,
        peak: field("peak")? as f64,
        elapsed: Duration::from_nanos(field("elapsed_ns")?),
        delivered: field("delivered")?,
    })
}

/// One backlog drain in a child: a fresh table, `n` rows inserted with capture installed
/// and no listener running, then the child delivers them all. Returns the drain and how
/// long the backlog insert took.
pub async fn backlog_drain(bench: &Bench, n: u64) -> anyhow::Result<Drain> {
    let drain = drain_in_child(bench, TABLE, n, false).await?;
    if drain.delivered < n {
        bail!("the child delivered {} of {n} events", drain.delivered);
    }
    Ok(drain)
}

/// Runs the memory scenario. `drains` are backlog drains the throughput scenario already
/// made in a child (reused, not repeated); without them, this makes its own.
pub async fn run(bench: &Bench, report: &mut Report, drains: Vec<Drain>) -> anyhow::Result<()> {
    let n = bench.sizes.backlog;
    let drains = if drains.is_empty() {
        let mut made = Vec::new();
        for run in 0..bench.sizes.runs {
            eprintln!(
                "memory: run {}/{}: draining {n} pending events in a child process",
                run + 1,
                bench.sizes.runs
            );
            bench.reset(0).await?;
            bench.install_capture(None).await?;
            bench.insert_rows(n, 10_000).await?;
            let drain = backlog_drain(bench, n).await?;
            eprintln!("    peak RSS {:.1} MB", drain.peak / 1e6);
            made.push(drain);
        }
        made
    } else {
        drains
    };
    report.row(
        SECTION,
        "process before the listener starts (runtime, allocator)",
        Unit::MB,
        drains.iter().map(|d| d.baseline / 1e6).collect(),
        "baseline",
    );
    let peak = report.row(
        SECTION,
        format!("draining {n} pending events (counting handler)"),
        Unit::MB,
        drains.iter().map(|d| d.peak / 1e6).collect(),
        "",
    );
    report.check(
        format!("peak RSS draining {n} events ≤ 100 MB"),
        peak,
        Unit::MB,
        Goal::AtMost(100.0),
    );

    // One big row, delivered to a handler that encodes its payload.
    let size = bench.sizes.big_row_bytes;
    let mut peaks = Vec::new();
    let mut multiples = Vec::new();
    for run in 0..bench.sizes.runs {
        eprintln!(
            "memory: run {}/{}: one {:.1} MB row",
            run + 1,
            bench.sizes.runs,
            size as f64 / 1e6
        );
        let client = big_table(bench).await?;
        // md5 hex: incompressible enough that TOAST does not shrink it to nothing.
        let row: i64 = client
            .query_one(
                &format!(
                    "WITH i AS (INSERT INTO {BIG_TABLE}
                       SELECT 1, left(string_agg(md5(g::text), ''), $1::int8::int)
                         FROM generate_series(1, $1::int8 / 32 + 1) g
                       RETURNING octet_length(body)::int8 AS n)
                     SELECT n FROM i"
                ),
                &[&(size as i64)],
            )
            .await
            .context("inserting the big row")?
            .get(0);
        let drain = drain_in_child(bench, BIG_TABLE, 1, true).await?;
        eprintln!(
            "    peak RSS {:.1} MB = {:.2}× the row",
            drain.peak / 1e6,
            drain.peak / row as f64
        );
        peaks.push(drain.peak / 1e6);
        multiples.push(drain.peak / row as f64);
    }
    report.row(
        SECTION,
        format!(
            "delivering one {:.1} MB row (handler encodes the payload)",
            size as f64 / 1e6
        ),
        Unit::MB,
        peaks,
        format!("{:.2}× the row size", median(&multiples)),
    );
    report.check(
        format!(
            "peak RSS delivering one {:.1} MB row ≤ 4× the row size",
            size as f64 / 1e6
        ),
        median(&multiples),
        Unit::Ratio,
        Goal::AtMost(4.0),
    );
    many_big_rows(bench, report).await
}

/// A fresh big-row table with capture installed; returns a connection to the database.
async fn big_table(bench: &Bench) -> anyhow::Result<tokio_postgres::Client> {
    bench.reset(0).await?;
    let client = bench.connect().await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE {BIG_TABLE} (id integer PRIMARY KEY, body text NOT NULL)"
        ))
        .await
        .context("creating the big-row table")?;
    pgevents::Listener::builder(&bench.listener_url)
        .on(BIG_TABLE, Counter::new().handler())
        .build()
        .await
        .context("installing capture on the big-row table")?;
    Ok(client)
}

/// A backlog of many big rows (2,000 of 10 MB): peak RSS against 4× one row plus the
/// process's own baseline — memory bounded by bytes, not only by count.
async fn many_big_rows(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let (rows, size): (i64, i64) = if bench.sizes.quick {
        (50, 1 << 20)
    } else {
        (2_000, 10 << 20)
    };
    let mut multiples = Vec::new();
    let mut peaks = Vec::new();
    for run in 0..bench.sizes.runs {
        eprintln!(
            "memory: run {}/{}: {rows} pending rows of {:.1} MB",
            run + 1,
            bench.sizes.runs,
            size as f64 / 1e6
        );
        let client = big_table(bench).await?;
        // A repeated md5 block: 10 MB in memory, little on disk (TOAST compresses it), so
        // the backlog costs seconds to write, not minutes.
        for id in 0..rows {
            client
                .execute(
                    &format!(
                        "INSERT INTO {BIG_TABLE} SELECT $1::int, repeat(md5($1::text), ($2::int8 / 32)::int)"
                    ),
                    &[&(id as i32), &size],
                )
                .await
                .context("inserting a big row")?;
        }
        let drain = drain_in_child(bench, BIG_TABLE, rows as u64, true).await?;
        let multiple = (drain.peak - drain.baseline) / size as f64;
        eprintln!(
            "    peak RSS {:.1} MB ({:.2}× one row above the process baseline of {:.1} MB), {:.0} rows/s",
            drain.peak / 1e6,
            multiple,
            drain.baseline / 1e6,
            drain.rate()
        );
        peaks.push(drain.peak / 1e6);
        multiples.push(multiple);
    }
    report.row(
        SECTION,
        format!(
            "draining {rows} pending rows of {:.1} MB (handler encodes the payload)",
            size as f64 / 1e6
        ),
        Unit::MB,
        peaks,
        format!("{:.2}× one row above the baseline", median(&multiples)),
    );
    report.check(
        format!(
            "peak RSS draining {rows} rows of {:.1} MB ≤ 4× one row + the process baseline",
            size as f64 / 1e6
        ),
        median(&multiples),
        Unit::Ratio,
        Goal::AtMost(4.0),
    );
    Ok(())
}
