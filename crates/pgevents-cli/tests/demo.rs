//! `pgevents demo` end to end: events printed within seconds, payments retried, the console
//! served and its URL printed, nothing left behind on Ctrl-C.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a demo may take to show what a test waits for.
pub const DEMO_WAIT: Duration = Duration::from_secs(90);

/// Held by each running demo: one at a time, so that demos (each with its own PostgreSQL,
/// one with a browser) do not add up to starve the other tests of this binary.
static ONE_DEMO: Mutex<()> = Mutex::new(());

/// A running `pgevents demo` and the lines it prints (`out:` stdout, `err:` stderr).
pub struct DemoRun {
    child: Child,
    _turn: MutexGuard<'static, ()>,
    lines: mpsc::Receiver<String>,
    /// The throwaway cluster's directory, once the demo has named it.
    pub data_dir: Option<PathBuf>,
    /// The console's URL, once the demo has printed it.
    pub console: Option<String>,
}

impl DemoRun {
    /// Starts `pgevents demo` with `args`.
    pub fn start(args: &[&str]) -> DemoRun {
        // A demo test that failed does not stop the others.
        let turn = ONE_DEMO.lock().unwrap_or_else(PoisonError::into_inner);
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgevents"))
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pgevents demo");
        let (tx, lines) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (prefix, stream) in [
            ("out:", Box::new(stdout) as Box<dyn Read + Send>),
            ("err:", Box::new(stderr)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(format!("{prefix}{line}"));
                }
            });
        }
        DemoRun {
            child,
            _turn: turn,
            lines,
            data_dir: None,
            console: None,
        }
    }

    /// The next line the demo prints; notes the data directory and the console's URL.
    pub fn next_line(&mut self, deadline: Instant) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = self
            .lines
            .recv_timeout(left)
            .expect("the demo prints what the test waits for in time");
        if let Some(rest) = line.strip_prefix("err:") {
            if let Some(dir) = rest.split("(data in ").nth(1) {
                self.data_dir = Some(PathBuf::from(dir.trim_end_matches(')')));
            }
            if let Some(url) = rest.strip_prefix("console: ") {
                self.console = url.split_whitespace().next().map(str::to_owned);
            }
        }
        line
    }

    /// The events printed on stdout until `done` holds for them: (action, payload) pairs.
    pub fn events_until(
        &mut self,
        done: impl Fn(&[(String, String)]) -> bool,
    ) -> Vec<(String, String)> {
        let deadline = Instant::now() + DEMO_WAIT;
        let mut events = Vec::new();
        while !done(&events) {
            if let Some(rest) = self.next_line(deadline).strip_prefix("out:") {
                let (action, payload) = rest.split_once(' ').expect("ACTION PAYLOAD");
                assert!(payload.starts_with("{\"id\":\""), "{payload}");
                events.push((action.to_owned(), payload.to_owned()));
            }
        }
        events
    }

    /// Sends Ctrl-C (SIGINT) and waits for the demo to exit, as a user would stop it;
    /// `None` when it is still running after [`DEMO_WAIT`].
    fn interrupt(&mut self) -> Option<ExitStatus> {
        // SAFETY: sending SIGINT to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + DEMO_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Stops the demo with Ctrl-C; checks it exited and removed everything.
    pub fn stop(mut self) -> ExitStatus {
        let status = self.interrupt().expect("demo exits after Ctrl-C");
        // The rest of what it printed, until the pipes close (or a leftover holds them).
        let mut rest = String::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            rest.push_str(&line);
            rest.push('\n');
        }
        if let Some(dir) = &self.data_dir {
            assert!(
                !dir.exists(),
                "the throwaway cluster's directory {} is removed ({status}); the demo's last lines:\n{rest}",
                dir.display()
            );
            let dir = dir.display().to_string();
            let left = std::fs::read_dir("/proc").map(|entries| {
                entries.filter_map(Result::ok).any(|e| {
                    std::fs::read_to_string(e.path().join("cmdline"))
                        .map(|c| c.contains(&dir))
                        .unwrap_or(false)
                })
            });
            assert!(
                !left.unwrap_or(false),
                "no server process of the demo is left running; the demo's last lines:\n{rest}"
            );
        }
        status
    }
}

impl Drop for DemoRun {
    fn drop(&mut self) {
        // A failed test leaves no demo running, and gives it the chance to clean up first.
        if let Ok(None) = self.child.try_wait() {
            if self.interrupt().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

fn is_table(payload: &str, table: &str) -> bool {
    payload.contains(&format!("\"table\":\"{table}\""))
}

/// `GET path` on the console's server: status line and body.
fn get(console: &str, path: &str) -> std::io::Result<(String, String)> {
    let host = console
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = TcpStream::connect(&host)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

#[test]
fn demo_prints_events_retries_payments_serves_the_console_and_cleans_up_on_ctrl_c() {
    let mut demo = DemoRun::start(&["--interval-ms", "200"]);
    let events = demo.events_until(|events| {
        events
            .iter()
            .filter(|(_, p)| is_table(p, "pgevents_demo_orders"))
            .count()
            >= 3
            && events
                .iter()
                .any(|(_, p)| is_table(p, "pgevents_demo_payments"))
    });
    assert!(events.iter().any(|(a, _)| a == "INSERT"));
    let console = demo
        .console
        .clone()
        .expect("the console's URL is printed before any event");
    let dir = demo
        .data_dir
        .clone()
        .expect("the demo names its data directory");
    assert!(dir.exists());

    let (status, body) = get(&console, "/api/v1/triggers").expect("the console's server answers");
    assert!(status.contains(" 200 "), "{status}: {body}");
    assert!(body.contains("pgevents_demo_orders"), "{body}");
    assert!(body.contains("pgevents_demo_payments"), "{body}");
    // Printed by the handler first, then recorded as delivered in the log.
    let deadline = Instant::now() + DEMO_WAIT;
    let delivered = loop {
        let (status, body) = get(
            &console,
            "/api/v1/events?trigger=public.pgevents_demo_payments&status=delivered",
        )
        .expect("the events of the payments");
        assert!(status.contains(" 200 "), "{status}: {body}");
        let listed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let delivered = listed["events"].as_array().cloned().unwrap_or_default();
        if !delivered.is_empty() {
            break delivered;
        }
        assert!(
            Instant::now() < deadline,
            "no payment recorded as delivered: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for event in &delivered {
        assert!(
            event["attempts"].as_i64() > Some(2),
            "a payment is delivered on its third attempt, after two failed ones: {event}"
        );
    }
    let (status, _) = get(&console, "/").expect("the console page");
    assert!(status.contains(" 200 "), "{status}");

    let status = demo.stop();
    assert!(status.success(), "demo exits 0 after Ctrl-C: {status}");
    assert!(
        get(&console, "/healthz").is_err(),
        "the console's server is stopped with the demo"
    );
}

#[test]
fn demo_without_console_serves_nothing() {
    let mut demo = DemoRun::start(&["--interval-ms", "200", "--no-console"]);
    let events = demo.events_until(|events| !events.is_empty());
    assert!(is_table(&events[0].1, "pgevents_demo_orders"), "{events:?}");
    assert_eq!(demo.console, None, "no console URL is printed");
    let status = demo.stop();
    assert!(status.success(), "demo exits 0 after Ctrl-C: {status}");
}
