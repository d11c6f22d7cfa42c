//! `pgevents backfill TRIGGER`'s progress line: rows done of the estimate, rate and time
//! left, redrawn in place on a terminal, a plain line every few seconds otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use pgevents_config::Config;
use pgevents_daemon::{DaemonError, Progress};
use pgevents_log::backfill::State;

/// How often the line is redrawn on a terminal.
const TERMINAL_EVERY: Duration = Duration::from_millis(200);
/// How often a line is printed when stderr is not a terminal (a log file, CI).
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Runs the backfill, printing progress on stderr and the outcome on stdout: exit 0 when
/// every row was read, 1 when it was cancelled or failed.
pub async fn backfill(
    config: &Config,
    trigger: &str,
    condition: Option<&str>,
) -> Result<(), DaemonError> {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        TERMINAL_EVERY
    } else {
        PLAIN_EVERY
    };
    let started = Instant::now();
    let mut printed: Option<Instant> = None;
    let mut first = None;
    let ended = pgevents_daemon::backfill(config, trigger, condition, |p| {
        let first = *first.get_or_insert(p.rows_done);
        if printed.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        printed = Some(Instant::now());
        let line = line(trigger, p, p.rows_done - first, started.elapsed());
        if terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    })
    .await?;
    if terminal {
        eprintln!();
    }
    let seconds = started.elapsed().as_secs_f64();
    match ended.state {
        State::Done => {
            println!(
                "backfill {} of {trigger} done: {} rows in {seconds:.1}s",
                ended.id, ended.rows_done
            );
            Ok(())
        }
        State::Running => Ok(()),
        State::Cancelled => Err(DaemonError::Runtime(format!(
            "backfill {} of {trigger} was cancelled after {} rows",
            ended.id, ended.rows_done
        ))),
        State::Failed => Err(DaemonError::Runtime(format!(
            "backfill {} of {trigger} failed after {} rows: {}",
            ended.id,
            ended.rows_done,
            ended.error.unwrap_or_default()
        ))),
    }
}

/// `backfill 3 of orders: 42000 / 100000 rows (42%), 51234 rows/s, 1s left`; `moved` rows
/// were read in `elapsed` by this run.
fn line(trigger: &str, p: &Progress, moved: i64, elapsed: Duration) -> String {
    let estimated = p.rows_estimated.max(p.rows_done);
    let percent = if estimated > 0 {
        p.rows_done * 100 / estimated
    } else {
        100
    };
    let rate = moved as f64 / elapsed.as_secs_f64().max(0.001);
    let left = if rate >= 1.0 {
        format!("{:.0}s left", (estimated - p.rows_done) as f64 / rate)
    } else {
        "time left unknown".into()
    };
    format!(
        "backfill {} of {trigger}: {} / {estimated} rows ({percent}%), {rate:.0} rows/s, {left}",
        p.id, p.rows_done
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_rows_estimate_rate_and_time_left() {
        let p = Progress {
            id: 3,
            rows_done: 40_000,
            rows_estimated: 100_000,
        };
        assert_eq!(
            line("orders", &p, 40_000, Duration::from_secs(2)),
            "backfill 3 of orders: 40000 / 100000 rows (40%), 20000 rows/s, 3s left"
        );
        let empty = Progress {
            id: 1,
            rows_done: 0,
            rows_estimated: 0,
        };
        assert!(
            line("t", &empty, 0, Duration::ZERO).ends_with("(100%), 0 rows/s, time left unknown")
        );
    }
}
