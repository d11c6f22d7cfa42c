//! The `stdout` destination: each event is written to standard output as one JSON line.
//!
//! For trying pgevents out and for piping events into another program (`pgevents run | jq`).

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::StdoutConfig;
pub use sink::StdoutSink;
