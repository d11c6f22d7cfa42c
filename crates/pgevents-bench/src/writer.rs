//! Writer overhead: what capture costs the application's own writes.
//!
//! pgbench runs single-row INSERTs and single-row UPDATEs at 8 clients (prepared statements,
//! `synchronous_commit = on`, fsync on) against the benchmark table in each capture mode; the
//! figure is TPS, and each mode's ratio to "no capture" measured in the same run (per-run
//! ratios, then their median, so slow drift of the machine cancels out). The mode order
//! rotates from run to run for the same reason.

use std::future::poll_fn;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};

use crate::cluster::{Bench, TABLE};
use crate::listening::{Counter, RunningListener};
use crate::process;
use crate::report::{ratio_text, Goal, Report, Unit};
use crate::stats::median;

const SECTION: &str = "Writer overhead — pgbench, 8 clients, one row per transaction";
/// pgbench clients.
const CLIENTS: u32 = 8;
/// The slot pg_recvlogical consumes during the logical-decoding baseline.
const SLOT: &str = "bench_writer";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    Insert,
    Update,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Insert => "INSERT",
            Workload::Update => "UPDATE",
        }
    }

    /// The pgbench script (`:rows` rows for UPDATE).
    pub(crate) fn script(self) -> String {
        match self {
            Workload::Insert => format!(
                "\\set r random(1, 1000000)\nINSERT INTO {TABLE} (v, note) VALUES (:r, '{}');\n",
                crate::cluster::NOTE
            ),
            Workload::Update => {
                format!("\\set id random(1, :rows)\nUPDATE {TABLE} SET v = v + 1 WHERE id = :id;\n")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No capture at all: the baseline.
    None,
    /// pgevents trigger capture, no dispatcher running (captured rows pile up).
    TriggerIdle,
    /// pgevents trigger capture with a listener delivering concurrently: the honest figure.
    TriggerDraining,
    /// The seed's mechanism: a plpgsql trigger doing pg_notify of the row as JSON, with a
    /// LISTENing session consuming the notifications.
    Notify,
    /// A logical slot (pgoutput, publication on the table) streamed by pg_recvlogical.
    RecvLogical,
    /// pgevents logical capture with a listener delivering concurrently.
    LogicalDraining,
    /// pgevents trigger capture with a `where` that no row matches: what a filter costs
    /// writers whose rows it rejects.
    TriggerRejecting,
    /// [`Mode::RecvLogical`] on the table with `REPLICA IDENTITY FULL`, as logical mode sets
    /// it (every UPDATE then writes the whole old row to the WAL): the WAL's own cost of
    /// logical mode's payloads.
    RecvLogicalFull,
}

const MODES: [Mode; 8] = [
    Mode::None,
    Mode::TriggerIdle,
    Mode::TriggerDraining,
    Mode::Notify,
    Mode::RecvLogical,
    Mode::LogicalDraining,
    Mode::TriggerRejecting,
    Mode::RecvLogicalFull,
];

/// A `where` no benchmark row matches (`v` is never negative).
const REJECT_ALL: &str = "v < 0";

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "no capture (baseline)",
            Mode::TriggerIdle => "pgevents trigger mode, no dispatcher running",
            Mode::TriggerDraining => "pgevents trigger mode, dispatcher delivering concurrently",
            Mode::Notify => "NOTIFY-per-row trigger (the seed's mechanism) + a LISTENer",
            Mode::RecvLogical => "logical slot (pgoutput) read by pg_recvlogical",
            Mode::LogicalDraining => {
                "pgevents logical mode, listener capturing and delivering concurrently"
            }
            Mode::TriggerRejecting => "pgevents trigger mode, a `where` that rejects every row",
            Mode::RecvLogicalFull => {
                "logical slot read by pg_recvlogical, table REPLICA IDENTITY FULL (as logical mode sets it)"
            }
        }
    }
}

/// What a mode keeps running while pgbench runs.
enum Running {
    Nothing,
    Listener(RunningListener, Counter),
    Notifications(Client, AbortOnDrop, Arc<AtomicU64>),
    RecvLogical(tokio::process::Child),
}

/// A background task stopped when its handle drops.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn set_up(bench: &Bench, mode: Mode) -> anyhow::Result<Running> {
    Ok(match mode {
        Mode::None => Running::Nothing,
        Mode::TriggerIdle => {
            bench.install_capture(None).await?;
            Running::Nothing
        }
        Mode::TriggerRejecting => {
            bench.install_capture(Some(REJECT_ALL)).await?;
            Running::Nothing
        }
        Mode::TriggerDraining => {
            let counter = Counter::new();
            let listener = bench.listen(&counter).await?;
            Running::Listener(listener, counter)
        }
        Mode::LogicalDraining => {
            let counter = Counter::new();
            let listener = bench.listen_logical(&counter).await?;
            Running::Listener(listener, counter)
        }
        Mode::Notify => {
            let client = bench.connect().await?;
            client
                .batch_execute(&format!(
                    "CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                         PERFORM pg_notify('bench', json_build_object(
                             'table', TG_TABLE_NAME, 'action', TG_OP,
                             'data', json_build_object('old', to_json(OLD), 'new', to_json(NEW)))::text);
                         RETURN NULL;
                     END $$;
                     CREATE TRIGGER bench_notify AFTER INSERT OR UPDATE OR DELETE ON {TABLE}
                         FOR EACH ROW EXECUTE FUNCTION bench_notify()"
                ))
                .await
                .context("installing the NOTIFY-per-row trigger")?;
            let (listener, mut connection) =
                tokio_postgres::connect(&bench.url, tokio_postgres::NoTls)
                    .await
                    .context("connecting the LISTEN session")?;
            let received = Arc::new(AtomicU64::new(0));
            let count = received.clone();
            let task = tokio::spawn(async move {
                while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
                    if let AsyncMessage::Notification(_) = message {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            listener
                .batch_execute("LISTEN bench")
                .await
                .context("LISTEN bench")?;
            Running::Notifications(listener, AbortOnDrop(task), received)
        }
        Mode::RecvLogical | Mode::RecvLogicalFull => {
            if mode == Mode::RecvLogicalFull {
                bench
                    .connect()
                    .await?
                    .batch_execute(&format!("ALTER TABLE {TABLE} REPLICA IDENTITY FULL"))
                    .await
                    .context("setting REPLICA IDENTITY FULL")?;
            }
            bench.create_slot(SLOT, "pgoutput").await?;
            let child = process::recvlogical(bench, SLOT, None)?;
            process::wait_active(bench, SLOT).await?;
            Running::RecvLogical(child)
        }
    })
}

/// What a delivering mode had left when pgbench ended.
#[derive(Debug, Clone, Copy)]
struct Behind {
    /// Events not yet at the handler.
    events: i64,
    /// Seconds from pgbench's end to the last event's delivery (0 when none was left).
    catch_up: f64,
}

/// One pgbench run of `workload` in `mode`, from a freshly reset table; returns its TPS and,
/// for the delivering modes, what was left to deliver when pgbench ended.
async fn measure(
    bench: &Bench,
    script: &Path,
    workload: Workload,
    mode: Mode,
) -> anyhow::Result<(f64, Option<Behind>)> {
    bench.reset(bench.sizes.update_rows).await?;
    let running = set_up(bench, mode).await?;
    bench.checkpoint().await?;
    let rows = bench.sizes.update_rows.to_string();
    let result = process::pgbench(
        bench,
        script,
        CLIENTS,
        bench.sizes.writer_secs,
        &[("rows", rows)],
    )
    .await
    .with_context(|| format!("pgbench {} in mode {:?}", workload.name(), mode))?;
    let mut behind = None;
    match running {
        Running::Listener(listener, counter) => {
            let ended = Instant::now();
            let delivered = counter.count();
            let last = counter
                .wait_for(result.transactions, Duration::from_secs(120))
                .await
                .context("waiting for the last events after pgbench")?;
            let catch_up = last.saturating_duration_since(ended).as_secs_f64();
            behind = Some(Behind {
                events: result.transactions.saturating_sub(delivered) as i64,
                catch_up,
            });
            listener.stop().await?;
            eprintln!(
                "    (the handler had received {delivered} of {} events when pgbench ended, the last {catch_up:.3} s later)",
                result.transactions
            );
        }
        Running::RecvLogical(mut child) => {
            let _ = child.kill().await;
        }
        Running::Notifications(listener, task, received) => {
            // Let the last notifications arrive, then stop listening.
            tokio::time::sleep(Duration::from_millis(200)).await;
            eprintln!(
                "    (the LISTENer received {} notifications)",
                received.load(Ordering::Relaxed)
            );
            drop((listener, task));
        }
        Running::Nothing => {}
    }
    Ok((result.tps, behind))
}

/// Runs the writer-overhead scenario and adds its rows and targets to `report`.
pub async fn run(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a directory for pgbench scripts")?;
    let runs = bench.sizes.runs as usize;
    for workload in [Workload::Insert, Workload::Update] {
        let script = dir.path().join(format!("{}.sql", workload.name()));
        std::fs::write(&script, workload.script()).context("writing a pgbench script")?;
        // tps[mode][run]
        let mut tps: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); MODES.len()];
        let mut behind = Vec::new();
        let mut behind_logical = Vec::new();
        let mut catch_up = Vec::new();
        let mut catch_up_logical = Vec::new();
        for run in 0..runs {
            for k in 0..MODES.len() {
                let m = (k + run) % MODES.len();
                let mode = MODES[m];
                eprintln!(
                    "writer: {} run {}/{runs}: {}",
                    workload.name(),
                    run + 1,
                    mode.name()
                );
                let (t, p) = bench
                    .measured(|| measure(bench, &script, workload, mode))
                    .await?;
                eprintln!("    {t:.0} TPS");
                tps[m].push(t);
                let (events, secs) = match mode {
                    Mode::LogicalDraining => (&mut behind_logical, &mut catch_up_logical),
                    _ => (&mut behind, &mut catch_up),
                };
                if let Some(p) = p {
                    events.push(p.events as f64);
                    secs.push(p.catch_up);
                }
            }
        }
        let base = &tps[0];
        let mut overhead = [f64::NAN; MODES.len()];
        for (m, mode) in MODES.iter().enumerate() {
            let ratios: Vec<f64> = tps[m].iter().zip(base).map(|(t, b)| t / b).collect();
            let ratio = median(&ratios);
            overhead[m] = (1.0 - ratio) * 100.0;
            let versus = if *mode == Mode::None {
                "baseline".to_string()
            } else {
                ratio_text(ratio)
            };
            report.row(
                SECTION,
                format!("{} · {}", workload.name(), mode.name()),
                Unit::Tps,
                tps[m].clone(),
                versus,
            );
        }
        report.row(
            SECTION,
            format!(
                "{} · events not yet delivered when pgbench ended (dispatcher delivering)",
                workload.name()
            ),
            Unit::Count,
            behind,
            "0 would mean the dispatcher kept up",
        );
        report.row(
            SECTION,
            format!(
                "{} · events not yet delivered when pgbench ended (logical mode)",
                workload.name()
            ),
            Unit::Count,
            behind_logical,
            "0 would mean capture and delivery kept up",
        );
        report.row(
            SECTION,
            format!(
                "{} · seconds from pgbench's end to the last event delivered (dispatcher delivering)",
                workload.name()
            ),
            Unit::Secs,
            catch_up,
            "",
        );
        report.row(
            SECTION,
            format!(
                "{} · seconds from pgbench's end to the last event delivered (logical mode)",
                workload.name()
            ),
            Unit::Secs,
            catch_up_logical.clone(),
            "",
        );
        let trigger = overhead[2];
        let (limit, name) = match workload {
            Workload::Insert => (20.0, "INSERT"),
            Workload::Update => (30.0, "UPDATE"),
        };
        // The trigger's own cost to each writing transaction, and the cost with a
        // dispatcher sharing the same two cores (its CPU comes out of the writers' share).
        report.check(
            format!("writer overhead, trigger mode, {name} at 8 clients ≤ {limit:.0}% (the trigger's cost to writers)"),
            overhead[1],
            Unit::Percent,
            Goal::AtMost(limit),
        );
        report.check(
            format!("writer overhead, trigger mode, {name} at 8 clients ≤ {limit:.0}% (dispatcher delivering concurrently)"),
            trigger,
            Unit::Percent,
            Goal::AtMost(limit),
        );
        report.check(
            format!("writer overhead, logical mode, {name} at 8 clients ≤ 15% (listener capturing and delivering concurrently)"),
            overhead[5],
            Unit::Percent,
            Goal::AtMost(15.0),
        );
        report.check(
            format!("writer overhead, logical mode, {name} at 8 clients: within 7 points of pg_recvlogical's"),
            overhead[5] - overhead[4],
            Unit::Points,
            Goal::AtMost(7.0),
        );
        report.check(
            format!(
                "logical mode, {name} at 8 clients: nothing undelivered 1 s after the writers stop"
            ),
            median(&catch_up_logical),
            Unit::Secs,
            Goal::AtMost(1.0),
        );
        report.check(
            format!("writer overhead, trigger mode, {name} at 8 clients, a `where` rejecting every row: within 5 points of no capture"),
            overhead[6],
            Unit::Percent,
            Goal::AtMost(5.0),
        );
        report.note(format!(
            "{name}: trigger mode with no dispatcher running costs {:.1}%; the NOTIFY-per-row trigger costs {:.1}%; a bare logical slot read by pg_recvlogical costs {:.1}% ({:.1}% with REPLICA IDENTITY FULL, which logical mode needs for whole old rows).",
            overhead[1], overhead[3], overhead[4], overhead[7]
        ));
    }
    Ok(())
}
