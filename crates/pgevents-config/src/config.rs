//! [`Config`]: reading a config file, checking all of it, and the checked result.

use std::path::Path;

use pgevents_sinks::Env;

use crate::error::{ConfigError, ConfigErrors, Problems};
use crate::file::File;
use crate::sections::{self, AdminConfig, CaptureConfig, DatabaseConfig, RetentionConfig};
use crate::trigger::{self, TriggerConfig};
use serde_path_to_error::Segment;
use toml::de::{DeTable, DeValue};

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
        let (file, unknown_keys) = parse(text).map_err(errors)?;
        let mut problems = Problems(unknown_keys);
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

/// Parses the TOML into the file's shape, with a problem for every unknown key (each with
/// its key path, line and column): an unknown key is left out and parsing goes on, so that
/// the checks that follow report the file's other mistakes in the same run. A syntax error
/// or a wrong type stops the parse: those problems are the whole answer.
fn parse(text: &str) -> Result<(File, Vec<ConfigError>), Vec<ConfigError>> {
    let mut root = DeTable::parse(text).map_err(|e| vec![located("", &e, text)])?;
    let mut unknown_keys = Vec::new();
    loop {
        let deserializer = toml::de::Deserializer::from(root.clone());
        let error = match serde_path_to_error::deserialize(deserializer) {
            Ok(file) => return Ok((file, unknown_keys)),
            Err(error) => error,
        };
        let path = error.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let mut problem = located(&path, error.inner(), text);
        let unknown = remove_unknown_key(root.get_mut(), &error);
        if unknown && unknown_keys.len() < MAX_UNKNOWN_KEYS {
            unknown_keys.push(problem);
            continue;
        }
        if path == "trigger" && problem.message.contains("expected a sequence") {
            problem
                .message
                .push_str("; write [[trigger]] (double brackets) above each trigger's keys");
        }
        unknown_keys.push(problem);
        return Err(unknown_keys);
    }
}

/// Unknown keys reported before the parse gives up (each costs a parse of the document).
const MAX_UNKNOWN_KEYS: usize = 64;

/// When `error` is about an unknown key, removes that key from `root`; whether it did.
fn remove_unknown_key(
    root: &mut DeTable<'_>,
    error: &serde_path_to_error::Error<toml::de::Error>,
) -> bool {
    let segments: Vec<&Segment> = error.path().iter().collect();
    let Some((Segment::Map { key }, parents)) = segments.split_last() else {
        return false;
    };
    if !error
        .inner()
        .message()
        .starts_with(&format!("unknown field `{key}`"))
    {
        return false;
    }
    let Some(table) = table_at(root, parents) else {
        return false;
    };
    let found = table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(k, _)| k.clone());
    found.is_some_and(|k| table.remove(&k).is_some())
}

/// The table that `segments` (keys, each maybe followed by array indexes) lead to.
fn table_at<'a, 'i>(
    table: &'a mut DeTable<'i>,
    segments: &[&Segment],
) -> Option<&'a mut DeTable<'i>> {
    let Some((first, mut rest)) = segments.split_first() else {
        return Some(table);
    };
    let Segment::Map { key } = first else {
        return None;
    };
    let mut value = table
        .iter_mut()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v.get_mut())?;
    while let Some((Segment::Seq { index }, more)) = rest.split_first() {
        let DeValue::Array(array) = value else {
            return None;
        };
        value = array.get_mut(*index)?.get_mut();
        rest = more;
    }
    match value {
        DeValue::Table(inner) => table_at(inner, rest),
        _ => None,
    }
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
