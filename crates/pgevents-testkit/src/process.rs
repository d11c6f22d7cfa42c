//! Child processes a test starts (the `pgevents` binary, a capture process): signalled by
//! their own process id, and killed and reaped when the test is done with them, whatever
//! happens to the test.

use std::process::{Command, ExitStatus};

/// A child process of the test's own; dropping it kills it (SIGKILL) and reaps it.
pub struct OwnedChild(std::process::Child);

impl OwnedChild {
    /// Starts `command`; panics, naming `what`, if it cannot be started.
    pub fn spawn(command: &mut Command, what: &str) -> OwnedChild {
        OwnedChild(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("start {what}: {e}")),
        )
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: signals the process this test spawned, by its own process id.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// How the process exited, once it has (`None` while it runs).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().expect("wait")
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// SIGKILL (no chance to flush or say goodbye), and waits until the process is gone.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        self.kill();
    }
}
