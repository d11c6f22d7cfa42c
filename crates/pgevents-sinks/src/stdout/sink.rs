//! The stdout sink: one payload, one line, written whole.

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use pgevents_delivery::{Delivery, Outcome, Report, Sink};
use pgevents_event::Format;

/// Writes each event's payload (in the trigger's format) to standard output as one line.
///
/// A line is written with a single locked write, so concurrent deliveries never interleave;
/// newlines inside the payload (JSON whitespace kept from a `json` column) become spaces,
/// which leaves the JSON's meaning unchanged. The write runs on tokio's blocking pool, so a
/// slow reader of the pipe does not stall the runtime. A failed write is retried.
#[derive(Clone)]
pub struct StdoutSink {
    format: Format,
    out: Arc<Mutex<dyn Write + Send>>,
}

impl StdoutSink {
    /// A sink writing `format` payloads to the process's standard output.
    pub fn new(format: Format) -> StdoutSink {
        StdoutSink::with_writer(format, std::io::stdout())
    }

    /// A sink writing to `out` instead (for tests).
    pub(super) fn with_writer(format: Format, out: impl Write + Send + 'static) -> StdoutSink {
        StdoutSink {
            format,
            out: Arc::new(Mutex::new(out)),
        }
    }

    /// The payload format events are written in.
    pub fn format(&self) -> Format {
        self.format
    }

    async fn write(&self, delivery: Delivery) -> Outcome {
        let mut line = self.format.encode(&delivery.event, &delivery.attempt);
        for byte in &mut line {
            if matches!(*byte, b'\n' | b'\r') {
                *byte = b' ';
            }
        }
        line.push(b'\n');
        let out = Arc::clone(&self.out);
        let written = tokio::task::spawn_blocking(move || {
            let mut out = out.lock().unwrap_or_else(PoisonError::into_inner);
            out.write_all(&line).and_then(|()| out.flush())
        })
        .await;
        match written {
            Ok(Ok(())) => Outcome::Delivered(Report::default()),
            Ok(Err(error)) => Outcome::retry(format!("writing to stdout failed: {error}")),
            Err(error) => Outcome::retry(format!("writing to stdout failed: {error}")),
        }
    }
}

impl Sink for StdoutSink {
    fn deliver(&self, delivery: Delivery) -> impl std::future::Future<Output = Outcome> + Send {
        self.write(delivery)
    }
}

impl fmt::Debug for StdoutSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdoutSink")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}
