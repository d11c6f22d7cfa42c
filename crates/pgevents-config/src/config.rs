//! [`Config`]: reading a config file, checking all of it, and the checked result.

use std::path::Path;

use pgevents_sinks::Env;

use crate::error::{ConfigError, ConfigErrors, Problems};
use crate::file::File;
use crate::sections::{self, AdminConfig, CaptureConfig, DatabaseConfig, RetentionConfig};
use crate::trigger::{self, TriggerConfig};

/// The environment variable the CLI reads the config file's path from when `--config` is not
/// given (the CLI's job; this crate only reads the path it is handed).
pub const CONFIG_PATH_ENV: &str = "PGEVENTS_CONFIG";

/// A checked pgevents config: every value parsed, every default filled in, every
/// `*_from_env` variable read. There is no unchecked `Config`: [`Config::load`] and
/// [`Config::from_toml_str`] parse the file and check all of it, reporting every problem at
/// once. `Debug` never shows a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The file the config came from (for messages).
    pub source: String,
    /// `[database]`.
    pub database: DatabaseConfig,
    /// `[capture]`.
    pub capture: CaptureConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[retention]`.
    pub retention: RetentionConfig,
    /// Every `[[trigger]]`, in file order (possibly none: see [`Config::warnings`]).
    pub triggers: Vec<TriggerConfig>,
    warnings: Vec<ConfigError>,
}

impl Config {
    /// Reads, parses and checks the config file at `path`, reading `*_from_env` variables
    /// from the process environment. Errors are prefixed with `path` as given.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
        let path = path.as_ref();
        let source = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml_str(&text, &source),
            Err(error) => Err(ConfigErrors {
                source,
                errors: vec![ConfigError::new(
                    "",
                    format!("cannot read the config file ({error}); check the path given with --config or {CONFIG_PATH_ENV}"),
                )],
            }),
        }
    }

    /// Parses and checks config `text`, naming it `source` in errors, reading `*_from_env`
    /// variables from the process environment.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml_str_with_env(text, source, &Env::Process)
    }

    /// Parses and checks config `text` like [`Config::from_toml_str`], reading `*_from_env`
    /// variables from `env` (now, and when sinks are built later).
    pub fn from_toml_str_with_env(
        text: &str,
        source: &str,
        env: &Env,
    ) -> Result<Config, ConfigErrors> {
        let errors = |errors| ConfigErrors {
            source: source.to_string(),
            errors,
        };
        let file = parse(text).map_err(|error| errors(vec![error]))?;
        let mut problems = Problems::default();
        let mut notes = Problems::default();
        let config = Config {
            source: source.to_string(),
            database: sections::database(file.database, env, &mut problems),
            capture: sections::capture(file.capture, &mut problems, &mut notes),
            admin: sections::admin(file.admin, env, &mut problems),
            retention: sections::retention(file.retention, &mut problems),
            triggers: trigger::triggers(file.trigger, env, &mut problems, &mut notes),
            warnings: notes.0,
        };
        if problems.0.is_empty() {
            Ok(config)
        } else {
            Err(errors(problems.0))
        }
    }

    /// The database connection URL, resolved from `url` or `url_from_env`. It may hold a
    /// password: never log it.
    pub fn database_url(&self) -> &str {
        self.database.url()
    }

    /// The trigger named `name`.
    pub fn trigger(&self, name: &str) -> Option<&TriggerConfig> {
        self.triggers.iter().find(|t| t.name == name)
    }

    /// Things that are allowed but probably not meant (no trigger at all, settings the chosen
    /// mode ignores), in the same form as errors; `check` shows them, `run` may log them.
    pub fn warnings(&self) -> &[ConfigError] {
        &self.warnings
    }
}

/// Parses the TOML into the file's shape; a syntax error, an unknown key or a wrong type is
/// reported with its key path, line and column.
fn parse(text: &str) -> Result<File, ConfigError> {
    let deserializer = toml::de::Deserializer::parse(text).map_err(|e| located("", &e, text))?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let mut located = located(&path, error.inner(), text);
        if path == "trigger" && located.message.contains("expected a sequence") {
            located
                .message
                .push_str("; write [[trigger]] (double brackets) above each trigger's keys");
        }
        located
    })
}

/// A TOML error as one line, with the line and column it points at.
fn located(path: &str, error: &toml::de::Error, text: &str) -> ConfigError {
    let mut message = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(span) = error.span() {
        let (line, column) = line_and_column(text, span.start);
        message.push_str(&format!(" (line {line}, column {column})"));
    }
    ConfigError::new(path, message)
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based() {
        let text = "a = 1\nbé = x\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 6), (2, 1));
        assert_eq!(line_and_column(text, 11), (2, 5));
        assert_eq!(line_and_column(text, 999), (3, 1));
    }
}
