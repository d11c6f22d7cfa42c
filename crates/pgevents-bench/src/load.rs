//! How busy the machine is with work that is not the benchmark's: sampled before every
//! measurement, waited out for a while, and reported, since other processes on a 2-core
//! machine take their CPU straight out of the figures.

use std::time::{Duration, Instant};

/// Busy CPU time and total CPU time since boot, in clock ticks (`/proc/stat`, line `cpu`).
fn ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPUs kept busy over `window` (e.g. 1.5 of 2).
async fn busy_cpus(window: Duration) -> Option<f64> {
    let (b0, t0) = ticks()?;
    tokio::time::sleep(window).await;
    let (b1, t1) = ticks()?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64 * cpus)
}

/// Waits (at most `max_wait`) until less than a quarter of a CPU is busy, the benchmark's
/// own cluster being idle; returns how many CPUs were busy at the last look.
pub async fn settle(max_wait: Duration) -> f64 {
    let deadline = Instant::now() + max_wait;
    loop {
        let busy = busy_cpus(Duration::from_millis(500)).await.unwrap_or(0.0);
        if busy < 0.25 || Instant::now() >= deadline {
            return busy;
        }
    }
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The fields of `/proc/<pid>/stat` after the command name (state, ppid, …), or `None` once
/// the process is gone.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    // The state is a letter: counted as 0, so the others keep their positions.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

/// After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
fn field(fields: &[u64], i: usize) -> u64 {
    fields.get(i).copied().unwrap_or(0)
}

/// CPU ticks (user + system) used so far by process `pid` itself: not its children, not
/// the processes it waited for. 0 once it is gone.
pub fn own_ticks(pid: u32) -> u64 {
    stat_fields(pid).map_or(0, |f| field(&f, 11) + field(&f, 12))
}

/// CPU ticks (user + system) used so far by the processes descending from `roots`.
pub fn tree_ticks(roots: &[u32]) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    // pid → (parent, ticks)
    let mut procs = std::collections::HashMap::new();
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(f) = stat_fields(pid) else {
            continue;
        };
        let ppid = u32::try_from(field(&f, 1)).unwrap_or(0);
        procs.insert(
            pid,
            (
                ppid,
                field(&f, 11) + field(&f, 12) + field(&f, 13) + field(&f, 14),
            ),
        );
    }
    procs
        .iter()
        .filter(|(pid, _)| {
            let mut at = **pid;
            for _ in 0..64 {
                if roots.contains(&at) {
                    return true;
                }
                match procs.get(&at) {
                    Some((parent, _)) if *parent != 0 => at = *parent,
                    _ => return false,
                }
            }
            false
        })
        .map(|(_, (_, ticks))| ticks)
        .sum()
}

/// Measures how much CPU other work on the machine took while a measurement ran: all busy
/// CPU time less what this process, its children and the benchmark's PostgreSQL used.
pub struct Meter {
    roots: Vec<u32>,
    start: Option<(u64, u64)>,
    ours: u64,
}

impl Meter {
    /// Starts metering; `roots` are the process trees that belong to the benchmark.
    pub fn start(roots: Vec<u32>) -> Meter {
        let ours = tree_ticks(&roots);
        Meter {
            start: ticks(),
            ours,
            roots,
        }
    }

    /// CPUs (on average) busy with other work since the start.
    pub fn others(&self) -> f64 {
        let (Some((b0, t0)), Some((b1, t1))) = (self.start, ticks()) else {
            return 0.0;
        };
        let ours = tree_ticks(&self.roots).saturating_sub(self.ours);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        if t1 <= t0 {
            return 0.0;
        }
        // `total` counts every CPU's ticks, so busy/total is a share of all CPUs.
        let others = (b1 - b0).saturating_sub(ours) as f64;
        others / (t1 - t0) as f64 * cpus
    }
}
