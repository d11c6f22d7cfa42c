//! The client programs the benchmark runs beside itself — pgbench, pg_recvlogical, its own
//! listener child — started so that none can outlive it: killed when their handle drops
//! (also on error or Ctrl-C), and sent SIGKILL by the kernel if this process dies.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::cluster::{Bench, PUBLICATION};

/// A command that dies with its handle and with this process.
pub fn command(program: &Path) -> Command {
    let mut command = Command::new(program);
    command.kill_on_drop(true).stdin(Stdio::null());
    // SAFETY: the closure only calls prctl, which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
}

/// What one pgbench run reported.
#[derive(Debug, Clone, Copy)]
pub struct Pgbench {
    /// Transactions per second (without connection time).
    pub tps: f64,
    /// Transactions committed.
    pub transactions: u64,
}

/// Runs pgbench with `script` at `clients` clients for `secs` seconds.
///
/// pgbench is a client: it connects over TCP to the cluster as `postgres` (trust
/// authentication), also when this tool runs as root.
pub async fn pgbench(
    bench: &Bench,
    script: &Path,
    clients: u32,
    secs: u64,
    defines: &[(&str, String)],
) -> anyhow::Result<Pgbench> {
    let mut cmd = command(&bench.bindir.join("pgbench"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &bench.port().to_string(),
        "-U",
        "postgres",
    ])
    .args(["-n", "-M", "prepared", "-j", "2"])
    .args(["-c", &clients.to_string(), "-T", &secs.to_string()])
    .arg("-f")
    .arg(script);
    for (name, value) in defines {
        cmd.arg("-D").arg(format!("{name}={value}"));
    }
    cmd.arg("bench");
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .with_context(|| format!("no `{prefix}` line in pgbench's output:\n{stdout}"))
    };
    Ok(Pgbench {
        tps: field("tps = ")?,
        transactions: field("number of transactions actually processed:")? as u64,
    })
}

/// pg_recvlogical streaming `slot` (pgoutput, the benchmark publication) to /dev/null,
/// until `endpos` when given, else until killed.
pub fn recvlogical(bench: &Bench, slot: &str, endpos: Option<&str>) -> anyhow::Result<Child> {
    let mut cmd = command(&bench.bindir.join("pg_recvlogical"));
    cmd.arg("-d")
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres dbname=bench",
            bench.port()
        ))
        .args(["--slot", slot, "--start", "--no-loop", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={PUBLICATION}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(lsn) = endpos {
        cmd.arg("--endpos").arg(lsn);
    }
    cmd.spawn().context("starting pg_recvlogical")
}

/// Waits until `slot` has an active consumer.
pub async fn wait_active(bench: &Bench, slot: &str) -> anyhow::Result<()> {
    let client = bench.connect().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active: Option<bool> = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .context("looking at the replication slot")?
            .map(|r| r.get(0));
        if active == Some(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pg_recvlogical did not start streaming slot {slot} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `child` to exit successfully, within `timeout`.
pub async fn finish(mut child: Child, what: &str, timeout: Duration) -> anyhow::Result<()> {
    let status = tokio::time::timeout(timeout, child.wait())
        .await
        .with_context(|| format!("{what} did not finish within {timeout:?}"))?
        .with_context(|| format!("waiting for {what}"))?;
    if !status.success() {
        let mut detail = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = stderr.read_to_string(&mut detail).await;
        }
        bail!("{what} failed ({status}): {}", detail.trim());
    }
    Ok(())
}
