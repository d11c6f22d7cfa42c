//! Latency from commit to handler, at a fixed rate of single-row INSERT transactions.
//!
//! A paced, open-loop writer (the i-th row is due at `i / rate` seconds, whatever happened
//! to earlier ones) inserts rows carrying their index as `id`, each in its own transaction,
//! and records the instant its commit was acknowledged; the handler records the instant it
//! received the row's event. Latency is the difference (an event can reach the handler a
//! hair before the writer has read its commit acknowledgement: such samples count as 0).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgevents::Event;
use tokio::task::JoinSet;

use crate::cluster::{Bench, NOTE, TABLE};
use crate::isolation::Condition;
use crate::listening::{Counter, RunningListener};
use crate::report::{Goal, Report, Unit};
use crate::stats::{median, percentile};

const SECTION: &str = "Latency — commit → in-process handler";
/// The rates measured, events/s.
const RATES: [u64; 2] = [1_000, 10_000];
/// A slot not yet written.
const UNSET: u64 = u64::MAX;

/// Instants of one run, as nanoseconds since `base`, indexed by row id.
struct Timeline {
    base: Instant,
    committed: Vec<AtomicU64>,
    received: Vec<AtomicU64>,
    commit_time: Vec<AtomicU64>,
}

impl Timeline {
    fn new(total: usize) -> Timeline {
        let slots = || (0..total).map(|_| AtomicU64::new(UNSET)).collect();
        Timeline {
            base: Instant::now(),
            committed: slots(),
            received: slots(),
            commit_time: slots(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(UNSET - 1)
    }
}

/// One figure of a [`Run`].
type Field = fn(&Run) -> f64;

/// What one run measured.
pub struct Run {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub achieved: f64,
    pub commit_p50: f64,
}

async fn measure(bench: &Bench, rate: u64) -> anyhow::Result<Run> {
    bench.reset(0).await?;
    Condition::Alone.prepare(bench).await?;
    measure_with(bench, rate, Condition::Alone).await
}

/// One latency run at `rate` on a log already prepared for `condition` (see `isolation`),
/// the benchmark table empty.
pub async fn measure_with(bench: &Bench, rate: u64, condition: Condition) -> anyhow::Result<Run> {
    let total = (rate * bench.sizes.latency_secs) as usize;
    let timeline = Arc::new(Timeline::new(total));
    let counter = Counter::new();
    let handler = {
        let timeline = timeline.clone();
        let counter = counter.clone();
        move |event: Event| {
            let timeline = timeline.clone();
            let counter = counter.clone();
            async move {
                let at = timeline.now();
                let id = event
                    .new()
                    .and_then(|row| row.get("id"))
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|id| usize::try_from(id).ok());
                if let Some(slot) = id.and_then(|id| timeline.received.get(id)) {
                    // The first delivery counts (at least once: a redelivery is not news).
                    let _ = slot.compare_exchange(UNSET, at, Ordering::Relaxed, Ordering::Relaxed);
                }
                counter.hit();
                Ok::<_, std::convert::Infallible>(())
            }
        }
    };
    let listener = condition
        .builder(bench, handler)?
        .build()
        .await
        .context("building the listener")?;
    let running = RunningListener::start(listener);
    // Let the dispatcher settle into its idle state, as it would be between bursts.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let connections = (rate / 250).clamp(4, 32);
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for _ in 0..connections {
        let client = bench.connect().await?;
        let next = next.clone();
        let timeline = timeline.clone();
        writers.spawn(async move {
            let insert = client
                .prepare(&format!(
                    "INSERT INTO {TABLE} (id, v, note) VALUES ($1, 0, $2)"
                ))
                .await
                .context("preparing the latency insert")?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= total {
                    return anyhow::Ok(());
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
                let sent = timeline.now();
                client
                    .execute(&insert, &[&(i as i64), &NOTE])
                    .await
                    .context("latency insert")?;
                let acked = timeline.now();
                timeline.committed[i].store(acked, Ordering::Relaxed);
                timeline.commit_time[i].store(acked - sent, Ordering::Relaxed);
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.context("a latency writer panicked")??;
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    counter
        .wait_for(total as u64, Duration::from_secs(120))
        .await?;
    running.stop().await?;

    let mut latencies: Vec<f64> = timeline
        .committed
        .iter()
        .zip(&timeline.received)
        .map(|(c, r)| (c.load(Ordering::Relaxed), r.load(Ordering::Relaxed)))
        .filter(|(c, r)| *c != UNSET && *r != UNSET)
        .map(|(c, r)| r.saturating_sub(c) as f64 / 1e6)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let mut commits: Vec<f64> = timeline
        .commit_time
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .filter(|c| *c != UNSET)
        .map(|c| c as f64 / 1e6)
        .collect();
    commits.sort_by(f64::total_cmp);
    Ok(Run {
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        p999: percentile(&latencies, 99.9),
        max: latencies.last().copied().unwrap_or(f64::NAN),
        achieved,
        commit_p50: percentile(&commits, 50.0),
    })
}

/// Runs the latency scenario and adds its rows and targets to `report`.
pub async fn run(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let runs = bench.sizes.runs;
    for rate in RATES {
        let mut measured = Vec::new();
        for run in 0..runs {
            eprintln!(
                "latency: {rate} events/s, run {}/{runs} ({} s)",
                run + 1,
                bench.sizes.latency_secs
            );
            let r = bench.measured(|| measure(bench, rate)).await?;
            eprintln!(
                "    p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms (writer achieved {:.0}/s)",
                r.p50, r.p99, r.p999, r.achieved
            );
            measured.push(r);
        }
        let column = |f: fn(&Run) -> f64| measured.iter().map(f).collect::<Vec<f64>>();
        let label = format!("{rate} events/s");
        let percentiles: [(&str, Field); 4] = [
            ("p50", |r| r.p50),
            ("p99", |r| r.p99),
            ("p99.9", |r| r.p999),
            ("max", |r| r.max),
        ];
        let [p50, p99, _, _] = percentiles.map(|(name, value)| {
            report.row(
                SECTION,
                format!("{label}: {name}"),
                Unit::Ms,
                column(value),
                "",
            )
        });
        report.row(
            SECTION,
            format!("{label}: writer achieved"),
            Unit::PerSec,
            column(|r| r.achieved),
            format!(
                "single-row transactions; median commit round trip {:.2} ms",
                median(&column(|r| r.commit_p50))
            ),
        );
        if rate == 1_000 {
            report.check(
                "latency at 1,000 events/s: p50 ≤ 5 ms",
                p50,
                Unit::Ms,
                Goal::AtMost(5.0),
            );
            report.check(
                "latency at 1,000 events/s: p99 ≤ 50 ms",
                p99,
                Unit::Ms,
                Goal::AtMost(50.0),
            );
        }
    }
    Ok(())
}
