//! End-to-end throughput: events per second from commit to an in-process handler and to a
//! loopback webhook, draining a backlog and at steady state, beside the rate at which
//! PostgreSQL's own logical decoding (pg_recvlogical, pgoutput) reads the same WAL.
//!
//! - Backlog: `N` rows are inserted (in 10,000-row transactions) with capture installed and
//!   no listener running; then a listener starts and the clock runs until the N-th event
//!   reached its destination. The handler backlog is drained by a child process (see
//!   `memory`), so the same runs give the memory figure.
//! - Steady state: a paced writer offers 125% of the target rate for a fixed window while
//!   the listener runs; the figure is events delivered per second during the window.
//! - Reference: a logical slot created before the backlog insert is decoded up to the
//!   insert's end by pg_recvlogical: the cost of only reading that WAL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;

use crate::cluster::{Bench, NOTE, TABLE};
use crate::listening::{drain_rate, Counter, RunningListener};
use crate::memory::{self, Drain};
use crate::process;
use crate::receiver::{self, Receiver};
use crate::report::{Goal, Report, Unit};
use crate::stats::median;

const SECTION: &str = "Throughput — commit to destination";
/// Rows per transaction of the backlog insert.
const BACKLOG_CHUNK: u64 = 10_000;
/// The slot decoding the backlog's WAL.
const REF_SLOT: &str = "bench_reference";
/// Targets of the issue, events/s.
const HANDLER_TARGET: f64 = 20_000.0;
/// Logical mode's backlog drain as a share of `pg_recvlogical`'s decode rate (issue #19).
const LOGICAL_SHARE: f64 = 0.5;
const WEBHOOK_TARGET: f64 = 10_000.0;
/// The steady-state writer offers this much more than the target.
const STEADY_OFFER: f64 = 1.25;
/// Rows per transaction of the steady-state writer.
const STEADY_BATCH: u64 = 50;
/// Connections of the steady-state writer.
const STEADY_WRITERS: u64 = 4;
/// The steady-state window ignores its first second (listener waking up).
const WARM_UP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Handler,
    Webhook,
}

/// A listener delivering the benchmark table somewhere, counting arrivals.
struct Delivering {
    listener: pgevents::Listener,
    counter: Counter,
    receiver: Option<Receiver>,
}

async fn delivering(bench: &Bench, to: Destination) -> anyhow::Result<Delivering> {
    let counter = Counter::new();
    Ok(match to {
        Destination::Handler => Delivering {
            listener: pgevents::Listener::builder(&bench.listener_url)
                .on(TABLE, counter.handler())
                .drain_timeout(Duration::from_secs(5))
                .build()
                .await
                .context("building the listener")?,
            counter,
            receiver: None,
        },
        Destination::Webhook => {
            let receiver = Receiver::start(counter.clone()).await?;
            Delivering {
                listener: receiver.listener(bench).await?,
                counter,
                receiver: Some(receiver),
            }
        }
    })
}

/// One backlog drain in pgevents' logical capture mode, in process: the slot is installed,
/// `n` rows are inserted while no listener runs (the changes wait in the WAL), then the
/// listener decodes, logs and delivers them. Returns events/s.
async fn logical_backlog(bench: &Bench, n: u64) -> anyhow::Result<f64> {
    bench.reset(0).await?;
    let counter = Counter::new();
    let listener = bench.logical_listener(&counter).await?;
    bench.insert_rows(n, BACKLOG_CHUNK).await?;
    drain_rate(listener, &counter, n).await
}

/// One webhook backlog drain, in process: returns events/s.
async fn webhook_backlog(bench: &Bench, n: u64) -> anyhow::Result<f64> {
    bench.reset(0).await?;
    let d = delivering(bench, Destination::Webhook).await?;
    bench.insert_rows(n, BACKLOG_CHUNK).await?;
    let rate = drain_rate(d.listener, &d.counter, n).await?;
    drop(d.receiver);
    Ok(rate)
}

/// What one steady-state window measured.
struct Steady {
    written_per_sec: f64,
    delivered_per_sec: f64,
    catch_up: Duration,
}

impl Steady {
    /// The progress line of one steady-state run.
    fn print(&self) {
        eprintln!(
            "    written {:.0}/s, delivered {:.0}/s, caught up {:.2} s after",
            self.written_per_sec,
            self.delivered_per_sec,
            self.catch_up.as_secs_f64()
        );
    }
}

/// Inserts `total` rows at `rate` rows/s in `STEADY_BATCH`-row transactions over
/// `STEADY_WRITERS` connections; returns when the last one committed.
async fn paced_writer(bench: &Bench, rate: f64, total: u64) -> anyhow::Result<Instant> {
    let batches = total.div_ceil(STEADY_BATCH);
    let start = tokio::time::Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = JoinSet::new();
    for _ in 0..STEADY_WRITERS {
        let client = bench.connect().await?;
        let next = next.clone();
        writers.spawn(async move {
            let insert = client
                .prepare(&format!(
                    "INSERT INTO {TABLE} (v, note) SELECT g, $2 FROM generate_series(1, $1::int8) g"
                ))
                .await
                .context("preparing the steady-state insert")?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= batches {
                    return anyhow::Ok(());
                }
                let rows = STEADY_BATCH.min(total - i * STEADY_BATCH);
                let due = start + Duration::from_secs_f64((i * STEADY_BATCH) as f64 / rate);
                tokio::time::sleep_until(due).await;
                client
                    .execute(&insert, &[&(rows as i64), &NOTE])
                    .await
                    .context("steady-state insert")?;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.context("a steady-state writer panicked")??;
    }
    Ok(Instant::now())
}

async fn steady(bench: &Bench, to: Destination, rate: f64) -> anyhow::Result<Steady> {
    bench.reset(0).await?;
    let d = delivering(bench, to).await?;
    let running = RunningListener::start(d.listener);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = (rate * bench.sizes.steady_secs as f64) as u64;
    let started = Instant::now();
    let counter = d.counter.clone();
    let sample = tokio::spawn(async move {
        tokio::time::sleep(WARM_UP).await;
        (Instant::now(), counter.count())
    });
    let ended = paced_writer(bench, rate, total).await?;
    let at_end = d.counter.count();
    let (warm, at_warm) = sample.await.context("the sampling task failed")?;
    let last = d
        .counter
        .wait_for(total, Duration::from_secs(120.max(total / 500)))
        .await?;
    running.stop().await?;
    drop(d.receiver);
    Ok(Steady {
        written_per_sec: total as f64 / ended.saturating_duration_since(started).as_secs_f64(),
        delivered_per_sec: (at_end - at_warm) as f64
            / ended.saturating_duration_since(warm).as_secs_f64(),
        catch_up: last.saturating_duration_since(ended),
    })
}

/// One handler backlog: a fresh table with a logical slot (the reference) and capture
/// installed, `n` rows inserted while no listener runs, then drained by a child process;
/// then pg_recvlogical decodes the WAL of that insert. Returns the drain, the insert's
/// rows/s and the decoding's rows/s.
async fn handler_backlog(bench: &Bench, n: u64) -> anyhow::Result<(Drain, f64, f64)> {
    bench.reset(0).await?;
    bench.create_slot(REF_SLOT, "pgoutput").await?;
    bench.install_capture(None).await?;
    let took = bench.insert_rows(n, BACKLOG_CHUNK).await?;
    let endpos = bench.wal_lsn().await?;
    let drain = memory::backlog_drain(bench, n).await?;
    let decoded = decode(bench, &endpos).await?;
    Ok((
        drain,
        n as f64 / took.as_secs_f64(),
        n as f64 / decoded.as_secs_f64(),
    ))
}

/// pg_recvlogical decoding `n` rows inserted without capture: the WAL a logical capture
/// reads. Returns rows/s.
async fn plain_decode(bench: &Bench, n: u64) -> anyhow::Result<f64> {
    bench.reset(0).await?;
    bench.create_slot(REF_SLOT, "pgoutput").await?;
    bench.insert_rows(n, BACKLOG_CHUNK).await?;
    let endpos = bench.wal_lsn().await?;
    let took = decode(bench, &endpos).await?;
    Ok(n as f64 / took.as_secs_f64())
}

/// Decodes `slot` up to `endpos` with pg_recvlogical; returns how long it took.
async fn decode(bench: &Bench, endpos: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let child = process::recvlogical(bench, REF_SLOT, Some(endpos))?;
    process::finish(child, "pg_recvlogical", Duration::from_secs(600)).await?;
    Ok(started.elapsed())
}

/// Runs the throughput scenario; returns the handler backlog drains (made in a child
/// process, with their peak RSS) for the memory scenario.
pub async fn run(bench: &Bench, report: &mut Report) -> anyhow::Result<Vec<Drain>> {
    let n = bench.sizes.backlog;
    let nw = bench.sizes.webhook_backlog;
    let runs = bench.sizes.runs;
    let mut drains = Vec::new();
    let mut inserts = Vec::new();
    let mut same_wal = Vec::new();
    let mut plain_wal = Vec::new();
    let mut webhook = Vec::new();
    let mut logical = Vec::new();
    let mut steady_handler = Vec::new();
    let mut steady_webhook = Vec::new();
    for run in 0..runs {
        let tag = format!("throughput: run {}/{runs}", run + 1);
        eprintln!("{tag}: a backlog of {n} events → in-process handler (child process)");
        let (drain, insert, decoded) = bench.measured(|| handler_backlog(bench, n)).await?;
        eprintln!(
            "    {:.0} events/s, peak RSS {:.1} MB; pg_recvlogical decoded the same WAL at {decoded:.0} rows/s",
            drain.rate(),
            drain.peak / 1e6
        );
        drains.push(drain);
        inserts.push(insert);
        same_wal.push(decoded);
        let decoded = bench.measured(|| plain_decode(bench, n)).await?;
        eprintln!("    {decoded:.0} rows/s without capture triggers");
        plain_wal.push(decoded);

        eprintln!("{tag}: logical-mode backlog of {nw} events → in-process handler");
        let rate = bench.measured(|| logical_backlog(bench, nw)).await?;
        eprintln!("    {rate:.0} events/s");
        logical.push(rate);

        if receiver::UNAVAILABLE.is_none() {
            eprintln!("{tag}: webhook backlog of {nw} events");
            let rate = bench.measured(|| webhook_backlog(bench, nw)).await?;
            eprintln!("    {rate:.0} events/s");
            webhook.push(rate);
        }

        let rate = HANDLER_TARGET * STEADY_OFFER;
        eprintln!("{tag}: steady state to a handler, offering {rate:.0} events/s");
        let s = bench
            .measured(|| steady(bench, Destination::Handler, rate))
            .await?;
        s.print();
        steady_handler.push(s);
        if receiver::UNAVAILABLE.is_none() {
            let rate = WEBHOOK_TARGET * STEADY_OFFER;
            eprintln!("{tag}: steady state to a webhook, offering {rate:.0} events/s");
            let s = bench
                .measured(|| steady(bench, Destination::Webhook, rate))
                .await?;
            s.print();
            steady_webhook.push(s);
        }
    }

    let reference = report.row(
        SECTION,
        format!("reference: pg_recvlogical (pgoutput) decoding the backlog's WAL ({n} rows + their capture rows)"),
        Unit::PerSec,
        same_wal,
        "reference limit",
    );
    let plain = report.row(
        SECTION,
        format!("reference: pg_recvlogical (pgoutput) decoding {n} rows inserted without capture"),
        Unit::PerSec,
        plain_wal,
        "reference limit of a logical capture",
    );
    report.row(
        SECTION,
        format!("writing the backlog: {n} rows in 10,000-row transactions, capture installed"),
        Unit::PerSec,
        inserts,
        "rows/s (how fast capture accepts bulk writes)",
    );
    let handler = report.row(
        SECTION,
        format!("backlog of {n} events → in-process handler"),
        Unit::PerSec,
        drains.iter().map(Drain::rate).collect(),
        format!(
            "{:.2}× pg_recvlogical on the same WAL, {:.2}× on capture-free WAL",
            median(&drains.iter().map(Drain::rate).collect::<Vec<_>>()) / reference,
            median(&drains.iter().map(Drain::rate).collect::<Vec<_>>()) / plain
        ),
    );
    report.check(
        format!("throughput to an in-process handler ≥ 20,000 events/s (backlog of {n})"),
        handler,
        Unit::PerSec,
        Goal::AtLeast(HANDLER_TARGET),
    );
    let logical_median = median(&logical);
    let logical = report.row(
        SECTION,
        format!("backlog of {nw} events → in-process handler, pgevents logical mode (changes waiting in the WAL)"),
        Unit::PerSec,
        logical,
        format!(
            "{:.2}× pg_recvlogical on capture-free WAL of the same table",
            logical_median / plain
        ),
    );
    report.check(
        format!(
            "logical mode, backlog → in-process handler ≥ {LOGICAL_SHARE}× pg_recvlogical's decode rate on capture-free WAL of the same table"
        ),
        logical / plain,
        Unit::Ratio,
        Goal::AtLeast(LOGICAL_SHARE),
    );
    let steady_rows = |report: &mut Report, to: &str, s: &[Steady], target: f64| {
        let offered = target * STEADY_OFFER;
        report.row(
            SECTION,
            format!("steady state → {to}: writer offering {offered:.0}/s, achieved"),
            Unit::PerSec,
            s.iter().map(|s| s.written_per_sec).collect(),
            "events written/s",
        );
        let delivered = report.row(
            SECTION,
            format!("steady state → {to}: delivered during the write window"),
            Unit::PerSec,
            s.iter().map(|s| s.delivered_per_sec).collect(),
            "",
        );
        report.row(
            SECTION,
            format!("steady state → {to}: catch-up after the writer stopped"),
            Unit::Secs,
            s.iter().map(|s| s.catch_up.as_secs_f64()).collect(),
            "≈0 = kept up",
        );
        delivered
    };
    let steady_h = steady_rows(
        report,
        "in-process handler",
        &steady_handler,
        HANDLER_TARGET,
    );
    report.check(
        "steady-state throughput to an in-process handler ≥ 20,000 events/s",
        steady_h,
        Unit::PerSec,
        Goal::AtLeast(HANDLER_TARGET),
    );
    match receiver::UNAVAILABLE {
        Some(why) => {
            report.row(SECTION, "backlog → webhook", Unit::PerSec, Vec::new(), why);
            report.not_measured("throughput to a webhook ≥ 10,000 events/s", why);
        }
        None => {
            let hook = report.row(
                SECTION,
                format!("backlog of {nw} events → loopback webhook (WebhookSink, axum receiver)"),
                Unit::PerSec,
                webhook,
                "",
            );
            report.check(
                format!("throughput to a webhook ≥ 10,000 events/s (backlog of {nw})"),
                hook,
                Unit::PerSec,
                Goal::AtLeast(WEBHOOK_TARGET),
            );
            let steady_w = steady_rows(report, "loopback webhook", &steady_webhook, WEBHOOK_TARGET);
            report.check(
                "steady-state throughput to a webhook ≥ 10,000 events/s",
                steady_w,
                Unit::PerSec,
                Goal::AtLeast(WEBHOOK_TARGET),
            );
        }
    }
    Ok(drains)
}
