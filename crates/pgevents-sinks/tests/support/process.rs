//! Broker processes the restart tests control.
//!
//! NATS and Redis restarts use a server of the test's own ([`OwnedServer`]): the same binary
//! as the machine's service, on a free loopback port, with its data in a temporary directory.
//! Killing it disturbs no one else using the machine's broker, and its `Drop` ends it (by its
//! own process id) whatever happens to the test. RabbitMQ is far slower to start, so its test
//! restarts the machine's broker application in place (`rabbitmqctl stop_app` /
//! `start_app`, which ends no process) under a [`RabbitApp`] guard whose `Drop` starts the
//! application again if the test stopped it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pgevents_testkit::net::free_port;
use pgevents_testkit::wait::Deadline;
use tokio::process::{Child, Command};

/// How long a broker may take to stop or to start.
const START_STOP: Duration = Duration::from_secs(60);

/// A broker server process started by the test, restarted on demand, ended on drop.
pub struct OwnedServer {
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl OwnedServer {
    /// Starts `program` with `args(port, dir)` on a free loopback port, its files in a new
    /// temporary directory; returns once the port accepts connections.
    pub async fn launch(program: &str, args: impl Fn(u16, &Path) -> Vec<String>) -> OwnedServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let mut server = OwnedServer {
            program: PathBuf::from(program),
            args: args(port, dir.path()),
            port,
            child: None,
            _dir: dir,
        };
        server.spawn().await;
        server
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    async fn spawn(&mut self) {
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
        wait_for_port(self.port, true).await;
    }

    /// Ends the server with `signal` (e.g. `libc::SIGTERM`, `libc::SIGKILL`) and waits until
    /// it has exited and its port refuses connections.
    pub async fn stop(&mut self, signal: libc::c_int) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id().and_then(|id| libc::pid_t::try_from(id).ok()) {
                // SAFETY: signals the server this test spawned, by its own process id.
                unsafe { libc::kill(pid, signal) };
            }
            tokio::time::timeout(START_STOP, child.wait())
                .await
                .expect("the server exits in time")
                .expect("wait for the server");
        }
        wait_for_port(self.port, false).await;
    }

    /// Starts the stopped server again, with the same arguments and data directory.
    pub async fn start(&mut self) {
        if self.child.is_none() {
            self.spawn().await;
        }
    }
}

/// Waits until `port` accepts connections (`open`) or refuses them (`!open`).
async fn wait_for_port(port: u16, open: bool) {
    let deadline = Deadline::after(START_STOP);
    loop {
        let accepts = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if accepts == open {
            return;
        }
        deadline
            .next_poll(|| {
                let state = if open { "open" } else { "close" };
                format!("port {port} did not {state} in time")
            })
            .await;
    }
}

/// Restarts of the machine's RabbitMQ application; `Drop` starts it again if it was left
/// stopped (a failed or panicking test), so the broker always ends up running.
pub struct RabbitApp {
    stopped: bool,
}

impl RabbitApp {
    pub fn new() -> RabbitApp {
        RabbitApp { stopped: false }
    }

    /// `rabbitmqctl stop_app`; returns once the broker refuses AMQP connections.
    pub async fn stop(&mut self) {
        self.stopped = true;
        rabbitmqctl("stop_app").await;
        wait_for_port(5672, false).await;
    }

    /// `rabbitmqctl start_app`; returns once the broker accepts AMQP connections again.
    pub async fn start(&mut self) {
        rabbitmqctl("start_app").await;
        self.stopped = false;
        wait_for_port(5672, true).await;
    }
}

impl Drop for RabbitApp {
    fn drop(&mut self) {
        if self.stopped {
            let _ = std::process::Command::new("rabbitmqctl")
                .arg("start_app")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn rabbitmqctl(command: &str) {
    let output = tokio::time::timeout(
        START_STOP,
        Command::new("rabbitmqctl")
            .arg(command)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("rabbitmqctl {command} finishes in time"))
    .unwrap_or_else(|e| panic!("run rabbitmqctl {command}: {e}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
