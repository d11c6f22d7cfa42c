//! `pgevents-bench`: measures pgevents against its baselines on a PostgreSQL it starts itself.
//!
//! ```sh
//! cargo run --release -p pgevents-bench -- all            # every scenario, 3 runs each
//! cargo run --release -p pgevents-bench -- writer --runs 5
//! cargo run --release -p pgevents-bench -- all --quick    # small sizes: a CI smoke run
//! cargo run --release -p pgevents-bench -- backfill       # READ rows/s and writers' TPS beside
//! cargo run --release -p pgevents-bench -- kafka          # needs scripts/start-kafka.sh
//! cargo run --release -p pgevents-bench -- profile        # where the time goes per event
//! ```
//!
//! Each scenario runs several times against a throwaway cluster (fsync on,
//! `wal_level = logical`) and the tool prints one Markdown table of medians, each beside the
//! baseline measured in the same run, and every target of the benchmark issue marked MET or
//! NOT MET with the measured value. Progress goes to standard error, the table to standard
//! output. Everything the tool starts (the cluster, pgbench, pg_recvlogical, its own child
//! processes) is stopped and removed when it ends, also on error or Ctrl-C.

mod backfill;
mod cluster;
mod isolation;
#[cfg(feature = "kafka")]
mod kafka;
mod latency;
mod listening;
mod load;
mod memory;
mod process;
mod profile;
mod receiver;
mod report;
mod stats;
mod throughput;
mod writer;

use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::cluster::{Bench, Sizes};
use crate::report::Report;

/// Benchmarks of pgevents: writer overhead, throughput, latency, memory, isolation and backfill.
#[derive(Debug, Parser)]
#[command(name = "pgevents-bench", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// What every scenario accepts.
#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// How many times each measurement runs; the table shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Small sizes and short runs (a CI smoke test, about two minutes).
    #[arg(long)]
    quick: bool,
    /// (experiments) Server settings for pgevents' own sessions only, e.g.
    /// `-c plan_cache_mode=force_custom_plan`: passed as `options` in the listeners' URL.
    #[arg(long, hide = true)]
    listener_pg_options: Option<String>,
    /// Backlog size of the drain measurements (default 1,000,000 to a handler, 200,000 to a
    /// webhook and in logical mode; 20,000 with --quick); sets all three.
    #[arg(long)]
    events: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Writer overhead: pgbench single-row INSERT and UPDATE at 8 clients, per capture mode.
    Writer(Common),
    /// End-to-end events/s to a handler and a webhook, backlog and steady state, and pg_recvlogical.
    Throughput(Common),
    /// Commit → handler latency percentiles at 1,000 and 10,000 events/s.
    Latency(Common),
    /// Peak RSS of a listener process draining a backlog, delivering one 50 MB row, and
    /// draining 2,000 rows of 10 MB.
    Memory(Common),
    /// Drain rate and latency of a trigger alone and beside another trigger's backlog, dead
    /// webhook, or millions of delivered events, in the same log.
    Isolation(Common),
    /// READ events/s backfilling a 1,000,000-row table to a handler, and the writers' TPS
    /// (pgbench UPDATE, 8 clients) with and without the backfill.
    Backfill(Common),
    /// Every scenario but `kafka` and `profile`, one after the other, in one table.
    All(Common),
    /// Where the time goes per event, in each capture mode: CPU of pgevents and of
    /// PostgreSQL, WAL, and the statements (pg_stat_statements) of a backlog drain (the
    /// webhook backlog's size, 200,000 by default).
    Profile(Common),
    /// Backlog drain to a Kafka topic (needs a broker: `scripts/start-kafka.sh`).
    #[cfg(feature = "kafka")]
    Kafka {
        #[command(flatten)]
        common: Common,
        /// The broker to produce to.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
    },
    /// (internal) The listener process whose memory the `memory` scenario measures.
    #[command(name = "__drain-child", hide = true)]
    DrainChild(memory::ChildArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pgevents-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (common, which, kafka) = match cli.scenario {
        Scenario::DrainChild(args) => return memory::child(args).await,
        Scenario::Profile(c) => return profiled(c).await,
        Scenario::Writer(c) => (c, [true, false, false, false, false, false], None),
        Scenario::Throughput(c) => (c, [false, true, false, false, false, false], None),
        Scenario::Latency(c) => (c, [false, false, true, false, false, false], None),
        Scenario::Memory(c) => (c, [false, false, false, true, false, false], None),
        Scenario::Isolation(c) => (c, [false, false, false, false, true, false], None),
        Scenario::Backfill(c) => (c, [false, false, false, false, false, true], None),
        Scenario::All(c) => (c, [true; 6], None),
        #[cfg(feature = "kafka")]
        Scenario::Kafka { common, brokers } => (common, [false; 6], Some(brokers)),
    };
    let sizes = Sizes::new(common.quick, common.runs, common.events);
    let options = common.listener_pg_options;
    // Ctrl-C drops the scenario future: every guard it holds (cluster, child processes)
    // cleans up on the way out.
    tokio::select! {
        result = scenarios(sizes, options.as_deref(), which, kafka.as_deref()) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; everything started was stopped and removed")),
    }
}

/// The `profile` scenario, on a cluster of its own that loads pg_stat_statements.
async fn profiled(common: Common) -> anyhow::Result<()> {
    let sizes = Sizes::new(common.quick, common.runs, common.events);
    let n = sizes.webhook_backlog;
    let bench = Bench::start(
        sizes,
        common.listener_pg_options.as_deref(),
        &profile::SETTINGS,
    )
    .await?;
    let outcome = tokio::select! {
        result = profile::run(&bench, n) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; everything started was stopped and removed")),
    };
    bench.shutdown()?;
    println!("{}", outcome?);
    Ok(())
}

async fn scenarios(
    sizes: Sizes,
    listener_options: Option<&str>,
    [writer, throughput, latency, memory, isolation, backfill]: [bool; 6],
    kafka: Option<&str>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bench = Bench::start(sizes.clone(), listener_options, &[]).await?;
    let mut report = Report::new(bench.machine().await?, &sizes);
    if let Some(options) = listener_options {
        report.note(format!(
            "EXPERIMENT: pgevents' own sessions ran with `{options}` (not the library's defaults)"
        ));
    }
    let outcome = async {
        if writer {
            writer::run(&bench, &mut report).await?;
        }
        // The throughput scenario drains its handler backlog in a child process and hands
        // those drains (with their peak RSS) to the memory scenario, so `all` drains once.
        let mut drains = Vec::new();
        if throughput {
            drains = throughput::run(&bench, &mut report).await?;
        }
        if latency {
            latency::run(&bench, &mut report).await?;
        }
        if memory {
            memory::run(&bench, &mut report, drains).await?;
        }
        if isolation {
            isolation::run(&bench, &mut report).await?;
        }
        if backfill {
            backfill::run(&bench, &mut report).await?;
        }
        #[cfg(feature = "kafka")]
        if let Some(brokers) = kafka {
            kafka::run(&bench, &mut report, brokers).await?;
        }
        #[cfg(not(feature = "kafka"))]
        let _ = kafka;
        anyhow::Ok(())
    }
    .await;
    report.finish(started.elapsed(), bench.background());
    // Print what was measured, even when a later scenario failed.
    println!("{}", report.render());
    bench.shutdown()?;
    outcome
}
