//! The results: rows of medians beside their baselines, the targets marked MET or
//! NOT MET, rendered as the Markdown that BENCHMARKS.md records.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cluster::{Machine, Sizes};
use crate::stats::median;

/// How a figure is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Transactions per second.
    Tps,
    /// Events per second.
    PerSec,
    /// Milliseconds.
    Ms,
    /// Megabytes (10^6 bytes, as the targets count them).
    MB,
    /// A ratio to a baseline.
    Ratio,
    /// Seconds.
    Secs,
    /// Percent.
    Percent,
    /// Percentage points (a difference of two percentages).
    Points,
    /// A plain count.
    Count,
}

impl Unit {
    fn format(self, value: f64) -> String {
        if value.is_nan() {
            return "—".into();
        }
        match self {
            Unit::Tps => format!("{} TPS", thousands(value)),
            Unit::PerSec => format!("{} /s", thousands(value)),
            Unit::Ms => format!("{value:.2} ms"),
            Unit::MB => format!("{value:.1} MB"),
            Unit::Ratio => format!("{value:.3}"),
            Unit::Secs => format!("{value:.1} s"),
            Unit::Percent => format!("{value:.1}%"),
            Unit::Points => format!("{value:+.1} points"),
            Unit::Count => thousands(value),
        }
    }

    fn format_bare(self, value: f64) -> String {
        match self {
            Unit::Tps | Unit::PerSec | Unit::Count => thousands(value),
            Unit::Ms => format!("{value:.2}"),
            Unit::MB | Unit::Secs | Unit::Percent | Unit::Points => format!("{value:.1}"),
            Unit::Ratio => format!("{value:.3}"),
        }
    }
}

/// `12345.6` → `12,346`.
fn thousands(value: f64) -> String {
    let n = value.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut groups = Vec::new();
    let mut rest = digits.as_str();
    while rest.len() > 3 {
        let (head, tail) = rest.split_at(rest.len() - 3);
        groups.push(tail);
        rest = head;
    }
    groups.push(rest);
    groups.reverse();
    let out = groups.join(",");
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// One measured figure: every run's sample, shown as their median.
#[derive(Debug, Clone)]
struct Row {
    section: &'static str,
    name: String,
    unit: Unit,
    samples: Vec<f64>,
    versus: String,
}

/// Whether a target is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reached.
    Met,
    /// Missed.
    NotMet,
    /// Could not be measured (what is missing is in the measured column).
    NotMeasured,
}

/// Which way a target goes.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// The value must be at most the limit.
    AtMost(f64),
    /// The value must be at least the limit.
    AtLeast(f64),
}

#[derive(Debug, Clone)]
struct Check {
    target: String,
    measured: String,
    verdict: Verdict,
}

/// Everything measured in one run of the tool.
#[derive(Debug)]
pub struct Report {
    machine: Machine,
    sizes: Sizes,
    rows: Vec<Row>,
    checks: Vec<Check>,
    notes: Vec<String>,
    elapsed: Option<Duration>,
    background: Vec<f64>,
    load_at_start: f64,
}

impl Report {
    /// An empty report for `machine`.
    pub fn new(machine: Machine, sizes: &Sizes) -> Report {
        Report {
            machine,
            sizes: sizes.clone(),
            rows: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            elapsed: None,
            background: Vec::new(),
            load_at_start: crate::load::loadavg(),
        }
    }

    /// Adds a figure: the median of `samples`, with `versus` saying how it compares to its
    /// baseline (empty for a baseline itself). Returns the median.
    pub fn row(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        unit: Unit,
        samples: Vec<f64>,
        versus: impl Into<String>,
    ) -> f64 {
        let m = median(&samples);
        self.rows.push(Row {
            section,
            name: name.into(),
            unit,
            samples,
            versus: versus.into(),
        });
        m
    }

    /// Marks a target met or not by `value` (NaN: not measured, with `missing` saying why).
    pub fn check(&mut self, target: impl Into<String>, value: f64, unit: Unit, goal: Goal) {
        let (limit, met) = match goal {
            Goal::AtMost(limit) => (limit, value <= limit),
            Goal::AtLeast(limit) => (limit, value >= limit),
        };
        let share = if limit != 0.0 {
            format!(" ({:.0}% of the target)", value / limit * 100.0)
        } else {
            String::new()
        };
        let (measured, verdict) = if value.is_nan() {
            ("not measured".to_string(), Verdict::NotMeasured)
        } else {
            (
                format!("{}{share}", unit.format(value)),
                if met { Verdict::Met } else { Verdict::NotMet },
            )
        };
        self.checks.push(Check {
            target: target.into(),
            measured,
            verdict,
        });
    }

    /// Records a target that could not be measured, and why.
    pub fn not_measured(&mut self, target: impl Into<String>, why: impl Into<String>) {
        self.checks.push(Check {
            target: target.into(),
            measured: why.into(),
            verdict: Verdict::NotMeasured,
        });
    }

    /// Adds a line under the tables.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Records how long the whole run took, and how busy other work kept the CPUs at the
    /// start of each measurement.
    pub fn finish(&mut self, elapsed: Duration, background: Vec<f64>) {
        self.elapsed = Some(elapsed);
        self.background = background;
    }

    /// The report as Markdown.
    pub fn render(&self) -> String {
        let m = &self.machine;
        let s = &self.sizes;
        let mut out = String::new();
        let _ = writeln!(out, "## pgevents benchmark results\n");
        let _ = writeln!(
            out,
            "- machine: {} CPUs ({}), {} MiB memory, Linux {}",
            m.cpus, m.cpu_model, m.memory_mib, m.kernel
        );
        let _ = writeln!(out, "- server: {}", m.postgres);
        let _ = writeln!(
            out,
            "- cluster: throwaway, same machine, fsync = on, synchronous_commit = on, wal_level = logical, default memory settings"
        );
        let _ = writeln!(
            out,
            "- sizes: {} runs per figure (median shown){}; backlog {} events (webhook and logical mode: {}); pgbench {} s per run; steady state {} s; latency {} s per rate; big row {:.1} MB",
            s.runs,
            if s.quick { ", --quick" } else { "" },
            thousands(s.backlog as f64),
            thousands(s.webhook_backlog as f64),
            s.writer_secs,
            s.steady_secs,
            s.latency_secs,
            s.big_row_bytes as f64 / 1e6
        );
        if let Some(elapsed) = self.elapsed {
            let _ = writeln!(out, "- total time: {:.0} s", elapsed.as_secs_f64());
        }
        if !self.background.is_empty() {
            let disturbed = self.background.iter().filter(|b| **b >= 0.3).count();
            let _ = writeln!(
                out,
                "- other work on the machine (other builds and tests share it): 1-min load {:.2} at the start, {:.2} at the end; \
                 other processes took a median {:.2} CPUs (max {:.2}) during the {} measurements kept; \
                 {} of them were still disturbed (> 0.3 CPU) after 3 tries",
                self.load_at_start,
                crate::load::loadavg(),
                median(&self.background),
                self.background.iter().copied().fold(0.0, f64::max),
                self.background.len(),
                disturbed,
            );
        }
        let mut sections: Vec<&'static str> = Vec::new();
        for row in &self.rows {
            if !sections.contains(&row.section) {
                sections.push(row.section);
            }
        }
        for section in sections {
            let _ = writeln!(out, "\n### {section}\n");
            let _ = writeln!(out, "| measure | median | runs | vs baseline (same run) |");
            let _ = writeln!(out, "|---|---:|---|---|");
            for row in self.rows.iter().filter(|r| r.section == section) {
                let runs = row
                    .samples
                    .iter()
                    .map(|v| row.unit.format_bare(*v))
                    .collect::<Vec<_>>()
                    .join(" · ");
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    row.name,
                    row.unit.format(median(&row.samples)),
                    if runs.is_empty() { "—".into() } else { runs },
                    row.versus
                );
            }
        }
        if !self.checks.is_empty() {
            let _ = writeln!(out, "\n### Targets\n");
            let _ = writeln!(out, "| target | measured (median) | verdict |");
            let _ = writeln!(out, "|---|---|---|");
            for c in &self.checks {
                let verdict = match c.verdict {
                    Verdict::Met => "MET",
                    Verdict::NotMet => "NOT MET",
                    Verdict::NotMeasured => "NOT MEASURED",
                };
                let _ = writeln!(out, "| {} | {} | **{verdict}** |", c.target, c.measured);
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nNotes:\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

/// `0.83` → `0.830 (−17.0%)`: a ratio to a baseline and the change it means.
pub fn ratio_text(ratio: f64) -> String {
    if ratio.is_nan() {
        return "—".into();
    }
    format!("{ratio:.3} ({:+.1}%)", (ratio - 1.0) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
        assert_eq!(ratio_text(0.83), "0.830 (-17.0%)");
        assert_eq!(Unit::Ms.format(f64::NAN), "—");
        assert_eq!(Unit::Points.format(3.46), "+3.5 points");
        assert_eq!(Unit::Points.format(-0.5), "-0.5 points");
    }
}
