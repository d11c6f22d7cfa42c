//! The `stdout = {}` settings of a trigger (there are none yet).

use pgevents_event::Format;
use serde::Deserialize;

use super::sink::StdoutSink;
use crate::{Env, ResolveSink, SinkConfigError};

/// `stdout = {}`: write each event to standard output as one JSON line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

impl ResolveSink for StdoutConfig {
    type Sink = StdoutSink;

    fn validate(&self, _path: &str, _env: &Env) -> Vec<SinkConfigError> {
        Vec::new()
    }

    fn resolve(
        &self,
        _path: &str,
        format: Format,
        _env: &Env,
    ) -> Result<StdoutSink, SinkConfigError> {
        Ok(StdoutSink::new(format))
    }
}
