//! Isolation: what another trigger's trouble costs a trigger sharing the same event log.
//!
//! The same two measurements — a backlog drain to an in-process handler, and commit →
//! handler latency at 1,000 events/s — are made on the benchmark table alone, and then, in
//! the same run, with the log in each of these states:
//! - another trigger (a table nobody listens to: a service that is down, or was removed
//!   without `uninstall`) holds a backlog of pending events;
//! - another trigger, served by the same listener, has a webhook that is down: its events
//!   are claimed, fail and are retried all the time;
//! - the log holds millions of delivered events kept by retention (a week at ~16 events/s).
//!
//! The target: each figure within 10% of the figure alone.

use std::time::Duration;

use anyhow::Context;

use crate::cluster::{Bench, NOTE, TABLE};
use crate::latency;
use crate::listening::{drain_rate, Counter};
use crate::report::{ratio_text, Goal, Report, Unit};
use crate::stats::median;

const SECTION: &str = "Isolation — one trigger beside another's trouble, same log";
/// The other trigger's table.
const OTHER: &str = "bench_other";
/// Rows per transaction of the other table's backlog.
const CHUNK: i64 = 50_000;
/// The latency rate measured under each condition.
const RATE: u64 = 1_000;

/// The state of the log, besides the benchmark table's own events.
#[derive(Debug, Clone, Copy)]
pub enum Condition {
    /// Nothing else.
    Alone,
    /// This many pending events of a trigger nobody delivers.
    Backlog(u64),
    /// This many events of a trigger, delivered by the same listener, whose webhook is down.
    Failing(u64),
    /// This many delivered events of another trigger kept by retention.
    Delivered(u64),
}

impl Condition {
    fn label(self) -> String {
        match self {
            Condition::Alone => "alone".into(),
            Condition::Backlog(n) => format!("beside {n} pending events of another trigger"),
            Condition::Failing(n) => {
                format!("beside {n} events of another trigger whose webhook is down")
            }
            Condition::Delivered(n) => format!("with {n} delivered events kept in the log"),
        }
    }

    /// Puts the log in this state; the benchmark table is reset and captured.
    pub async fn prepare(self, bench: &Bench) -> anyhow::Result<()> {
        let client = bench.connect().await?;
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {OTHER};
                 CREATE TABLE {OTHER} (id bigserial PRIMARY KEY, v integer NOT NULL, note text NOT NULL)"
            ))
            .await
            .context("creating the other table")?;
        // Both tables captured, as two services sharing the log would have them.
        pgevents::Listener::builder(&bench.listener_url)
            .on(TABLE, Counter::new().handler())
            .on(OTHER, Counter::new().handler())
            .build()
            .await
            .context("installing capture on both tables")?;
        let rows = match self {
            Condition::Alone => return Ok(()),
            Condition::Backlog(n) | Condition::Failing(n) => n,
            Condition::Delivered(n) => {
                eprintln!("    writing {n} delivered events into the log");
                client
                    .execute(
                        &format!(
                            "INSERT INTO pgevents.event (trigger_id, op, row_key, new_row, status,
                                                         attempts, created_at, finished_at)
                             SELECT t.id, 'I', hashtextextended(g::text, t.id),
                                    json_build_object('id', g, 'v', 0, 'note', $2::text),
                                    'd', 1, now() - interval '3 days', now() - interval '3 days'
                               FROM pgevents.trigger t, generate_series(1, $1::int8) g
                              WHERE t.table_name = '{OTHER}'"
                        ),
                        &[&(n as i64), &NOTE],
                    )
                    .await
                    .context("writing delivered events")?;
                client
                    .batch_execute("VACUUM (ANALYZE) pgevents.event")
                    .await
                    .context("vacuuming the log")?;
                bench.checkpoint().await?;
                return Ok(());
            }
        };
        eprintln!("    writing {rows} pending events of another trigger");
        let mut left = rows as i64;
        while left > 0 {
            let n = left.min(CHUNK);
            client
                .execute(
                    &format!(
                        "INSERT INTO {OTHER} (v, note) SELECT g, $2 FROM generate_series(1, $1::int8) g"
                    ),
                    &[&n, &NOTE],
                )
                .await
                .context("writing the other table's backlog")?;
            left -= n;
        }
        // Into the indexed log, as a running daemon would have moved them.
        while client
            .query_one("SELECT pgevents.ingest(100000)", &[])
            .await
            .context("moving the backlog into the log")?
            .get::<_, i32>(0)
            > 0
        {}
        client
            .batch_execute("VACUUM (ANALYZE) pgevents.event")
            .await
            .context("vacuuming the log")?;
        bench.checkpoint().await?;
        Ok(())
    }

    /// The listener for the measured table: with [`Condition::Failing`], it also delivers
    /// the other table to a webhook nobody answers.
    pub fn builder(
        self,
        bench: &Bench,
        handler: impl pgevents::Handler,
    ) -> anyhow::Result<pgevents::ListenerBuilder> {
        let builder = pgevents::Listener::builder(&bench.listener_url)
            .on(TABLE, handler)
            .drain_timeout(Duration::from_secs(5));
        match self {
            Condition::Failing(_) => failing_webhook(builder),
            _ => Ok(builder),
        }
    }
}

#[cfg(feature = "webhook")]
fn failing_webhook(
    builder: pgevents::ListenerBuilder,
) -> anyhow::Result<pgevents::ListenerBuilder> {
    use pgevents_sinks::{Env, ResolveSink, WebhookConfig};
    // Port 9 (discard) on loopback: nothing listens, every attempt is refused at once.
    let sink = WebhookConfig {
        url: Some("http://127.0.0.1:9/down".into()),
        ..WebhookConfig::default()
    }
    .resolve(
        "bench.other.webhook",
        pgevents::Format::Seed,
        &Env::default(),
    )
    .context("building the failing webhook")?;
    let retry = pgevents::RetryPolicy {
        max_retries: 1_000_000,
        initial_interval: Duration::from_millis(100),
        max_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    };
    Ok(builder.sink(pgevents::Trigger::for_table(OTHER, sink)?.retry(retry)))
}

#[cfg(not(feature = "webhook"))]
fn failing_webhook(_: pgevents::ListenerBuilder) -> anyhow::Result<pgevents::ListenerBuilder> {
    anyhow::bail!("built without the `webhook` feature")
}

/// Empties the benchmark table and removes its events from the log, leaving the other
/// trigger's as they are, so measurements under one condition share one prepared log.
pub async fn clear_table(bench: &Bench) -> anyhow::Result<()> {
    bench
        .connect()
        .await?
        .batch_execute(&format!(
            "TRUNCATE {TABLE};
             DELETE FROM pgevents.event WHERE trigger_id =
                 (SELECT id FROM pgevents.trigger WHERE table_name = '{TABLE}');
             DELETE FROM pgevents.capture WHERE trigger_id =
                 (SELECT id FROM pgevents.trigger WHERE table_name = '{TABLE}');"
        ))
        .await
        .context("clearing the benchmark table's events")
}

/// One backlog drain of `n` events of the benchmark table, the log prepared for
/// `condition`; events/s.
async fn drain(bench: &Bench, condition: Condition, n: u64) -> anyhow::Result<f64> {
    clear_table(bench).await?;
    bench.insert_rows(n, 10_000).await?;
    let counter = Counter::new();
    let listener = condition
        .builder(bench, counter.handler())?
        .build()
        .await
        .context("building the listener")?;
    drain_rate(listener, &counter, n).await
}

/// Runs the isolation scenario and adds its rows and targets to `report`.
pub async fn run(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let sizes = &bench.sizes;
    let (backlog, failing, delivered) = if sizes.quick {
        (50_000, 2_000, 200_000)
    } else {
        (1_000_000, 10_000, 10_000_000)
    };
    let n = sizes.webhook_backlog;
    let conditions = [
        Condition::Alone,
        Condition::Backlog(backlog),
        Condition::Failing(failing),
        Condition::Delivered(delivered),
    ];
    let mut alone: Option<(f64, f64)> = None;
    for condition in conditions {
        let mut rates = Vec::new();
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        let mut maxes = Vec::new();
        // The log is prepared once per condition: writing millions of events takes minutes.
        bench.reset(0).await?;
        condition.prepare(bench).await?;
        for run in 0..sizes.runs {
            eprintln!(
                "isolation: {}, run {}/{}: draining {n} events",
                condition.label(),
                run + 1,
                sizes.runs
            );
            let rate = bench.measured(|| drain(bench, condition, n)).await?;
            eprintln!("    {rate:.0} events/s");
            rates.push(rate);
            eprintln!("    latency at {RATE} events/s");
            let r = bench
                .measured(|| async {
                    clear_table(bench).await?;
                    latency::measure_with(bench, RATE, condition).await
                })
                .await?;
            eprintln!(
                "    p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                r.p50, r.p99, r.max
            );
            p50s.push(r.p50);
            p99s.push(r.p99);
            maxes.push(r.max);
        }
        let (rate, p50) = (median(&rates), median(&p50s));
        let versus = |value: f64, base: Option<f64>| match base {
            Some(b) => ratio_text(value / b),
            None => "baseline".to_string(),
        };
        let label = condition.label();
        report.row(
            SECTION,
            format!("drain of {n} events, {label}"),
            Unit::PerSec,
            rates,
            versus(rate, alone.map(|a| a.0)),
        );
        report.row(
            SECTION,
            format!("latency p50 at {RATE}/s, {label}"),
            Unit::Ms,
            p50s,
            versus(p50, alone.map(|a| a.1)),
        );
        report.row(
            SECTION,
            format!("latency p99 at {RATE}/s, {label}"),
            Unit::Ms,
            p99s,
            "",
        );
        report.row(
            SECTION,
            format!("latency max at {RATE}/s, {label}"),
            Unit::Ms,
            maxes,
            "",
        );
        match alone {
            None => alone = Some((rate, p50)),
            Some((base_rate, base_p50)) => {
                report.check(
                    format!("drain {label}: ≥ 90% of the drain alone"),
                    rate / base_rate,
                    Unit::Ratio,
                    Goal::AtLeast(0.9),
                );
                // Below a millisecond, 10% is noise of the clock and the scheduler.
                report.check(
                    format!("latency p50 {label}: within 10% (or 0.5 ms) of alone"),
                    p50 - base_p50.max(0.0),
                    Unit::Ms,
                    Goal::AtMost((base_p50 * 0.1).max(0.5)),
                );
            }
        }
    }
    Ok(())
}
