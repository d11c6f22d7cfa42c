//! The `pgevents` command: a thin layer of argument parsing and printing over the library
//! and the daemon crate.

mod daemon;
mod demo;
mod init;
mod progress;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Committed PostgreSQL row changes, delivered durably and at least once.
#[derive(Debug, Parser)]
#[command(name = "pgevents", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch events flow: starts a throwaway PostgreSQL (unless --database-url is given),
    /// writes rows to demo tables on a timer, prints every event as it arrives and serves
    /// the console (unless --no-console) to watch retries, attempts and redelivery.
    Demo(demo::Args),
    /// Write a commented starter config for a database: its tables as commented-out
    /// `[[trigger]]` blocks, every section with its defaults.
    Init(init::Args),
    #[command(flatten)]
    Daemon(daemon::Command),
}

fn main() -> ExitCode {
    // Big rows' buffers go back to the system once delivered (see the function's docs).
    pgevents::release_large_allocations();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGEVENTS_LOG")
                .unwrap_or_else(|_| "pgevents=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => match demo::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            },
            Command::Init(args) => init::run(args).await,
            Command::Daemon(command) => daemon::run(command).await,
        }
    })
}
