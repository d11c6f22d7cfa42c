//! Config problems: each names the field at fault and says what to do.

use std::fmt;

use pgevents_sinks::SinkConfigError;

/// One problem with a config file, e.g.
/// `trigger["order_events"].retry.timeout: "0s" is not allowed; give the time one attempt may take, e.g. "30s"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field at fault, e.g. `trigger[2].retry.timeout` or `trigger["order_events"].table`
    /// (triggers are named by `name` when it is set and unique, else by their 0-based
    /// position); empty for problems with the file as a whole (unreadable, bad TOML syntax).
    pub path: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl ConfigError {
    /// A problem with the field at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<SinkConfigError> for ConfigError {
    fn from(error: SinkConfigError) -> ConfigError {
        ConfigError::new(error.path, error.kind.to_string())
    }
}

/// Every problem found in one config file; displayed one per line, each prefixed by the
/// file's name: `pgevents.toml: trigger[1].table: missing; ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file's name as given (or the source name passed to
    /// [`Config::from_toml_str`](crate::Config::from_toml_str)).
    pub source: String,
    /// The problems, in file order as far as possible; never empty.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {error}", self.source)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems while a config is checked, so that all of them are reported at once.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub(crate) Vec<ConfigError>);

impl Problems {
    /// Records a problem with the field at `path`.
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl fmt::Display) {
        self.0.push(ConfigError::new(path, message.to_string()));
    }

    /// The value of `result`, or `None` after recording its error against `path`.
    pub(crate) fn check<T, E: fmt::Display>(
        &mut self,
        path: impl Into<String>,
        result: Result<T, E>,
    ) -> Option<T> {
        result.map_err(|error| self.push(path, error)).ok()
    }
}
