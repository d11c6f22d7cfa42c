//! `pgevents demo` end to end: events printed within seconds, nothing left behind on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn demo_prints_events_and_cleans_up_on_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgevents"))
        .args(["demo", "--interval-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgevents demo");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let err_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(format!("out:{line}"));
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(format!("err:{line}"));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut data_dir: Option<PathBuf> = None;
    let mut actions = Vec::new();
    while actions.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("demo output within a minute");
        if let Some(rest) = line.strip_prefix("err:") {
            if let Some(dir) = rest.split("(data in ").nth(1) {
                data_dir = Some(PathBuf::from(dir.trim_end_matches(')')));
            }
        } else if let Some(rest) = line.strip_prefix("out:") {
            let (action, payload) = rest.split_once(' ').expect("ACTION PAYLOAD");
            assert!(payload.starts_with("{\"id\":\""), "{payload}");
            assert!(payload.contains("\"table\":\"pgevents_demo_orders\""));
            actions.push(action.to_string());
        }
    }
    assert!(actions.iter().any(|a| a == "INSERT"));
    let dir = data_dir.expect("the demo names its data directory");
    assert!(dir.exists());
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "demo exits after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "demo exits 0 after Ctrl-C: {status}");
    assert!(
        !dir.exists(),
        "the throwaway cluster's directory is removed"
    );
    let pid_file = dir.join("data/postmaster.pid");
    assert!(!pid_file.exists());
    let port_open = std::fs::read_dir("/proc")
        .map(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                std::fs::read_to_string(e.path().join("cmdline"))
                    .map(|c| c.contains(&dir.display().to_string()))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false);
    assert!(!port_open, "no server process of the demo is left running");
}
