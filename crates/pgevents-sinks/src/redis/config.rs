//! The `redis = { ... }` settings of a trigger, and their resolution into a [`RedisSink`].

use std::fmt;

use pgevents_event::Format;
use serde::Deserialize;

use super::sink::{RedisSink, Target};
use crate::endpoint::{redact_url, resolve_url_with, Secrets, UrlRules};
use crate::error::first_problem;
use crate::{join_path, Env, ResolveSink, SinkConfigError, SinkConfigErrorKind};

/// What a Redis server URL may be.
const URL_RULES: UrlRules = UrlRules {
    schemes: &["redis", "rediss", "valkey", "valkeys"],
    expected: "redis:// (or rediss:// for TLS)",
    example: "redis://127.0.0.1:6379",
    missing: "set url = \"redis://127.0.0.1:6379\" or url_from_env = \"VAR\"",
};

/// Where a trigger's events are appended with `XADD`:
/// `redis = { url = "redis://127.0.0.1:6379", stream = "pg:orders" }`, optionally with
/// `maxlen = 100000`.
///
/// Plain data, exactly as written in the config file; [`ResolveSink::resolve`] reads the
/// environment and checks everything. `Debug` shows URLs with their password and query
/// replaced by `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The server, `redis://[user:password@]host[:port][/db]` (`rediss://` for TLS). Exactly
    /// one of `url` and `url_from_env` must be given.
    #[serde(default)]
    pub url: Option<String>,
    /// The name of an environment variable holding the server URL (for URLs that carry a
    /// password). Exactly one of `url` and `url_from_env` must be given.
    #[serde(default)]
    pub url_from_env: Option<String>,
    /// The key of the stream events are appended to, e.g. `pg:orders`; `XADD` creates it.
    #[serde(default)]
    pub stream: Option<String>,
    /// When set, each `XADD` trims the stream to about this many entries (`MAXLEN ~`);
    /// when absent, the stream keeps every entry.
    #[serde(default)]
    pub maxlen: Option<u64>,
}

impl RedisConfig {
    /// Checks every setting and reads every variable, collecting all problems.
    fn target(&self, path: &str, env: &Env) -> Result<Target, Vec<SinkConfigError>> {
        let mut problems = Vec::new();
        // The client parses the URL (database, credentials) without connecting.
        let client = resolve_url_with(
            path,
            self.url.as_deref(),
            self.url_from_env.as_deref(),
            env,
            &URL_RULES,
            |url| redis::Client::open(url.as_str()).map_err(|e| e.to_string()),
        )
        .map_err(|e| problems.push(e))
        .ok();
        let stream = match self.stream.as_deref() {
            None => {
                problems.push(SinkConfigError::new(
                    join_path(path, "stream"),
                    SinkConfigErrorKind::Missing {
                        advice: "name the stream to append to, e.g. stream = \"pg:orders\"",
                    },
                ));
                None
            }
            Some("") => {
                problems.push(SinkConfigError::new(
                    join_path(path, "stream"),
                    SinkConfigErrorKind::InvalidName {
                        what: "a Redis stream key",
                        reason: "is empty".into(),
                        example: "pg:orders",
                    },
                ));
                None
            }
            Some(stream) => Some(stream.to_string()),
        };
        if self.maxlen == Some(0) {
            problems.push(SinkConfigError::new(
                join_path(path, "maxlen"),
                SinkConfigErrorKind::OutOfRange {
                    value: "0".into(),
                    advice: "give at least 1, or remove maxlen to keep every entry",
                },
            ));
        }
        match (client, stream) {
            (Some((url, client)), Some(stream)) if problems.is_empty() => Ok(Target {
                client,
                secrets: Secrets::of(&url),
                url,
                stream,
                maxlen: self.maxlen,
            }),
            _ => Err(problems),
        }
    }
}

impl ResolveSink for RedisConfig {
    type Sink = RedisSink;

    fn validate(&self, path: &str, env: &Env) -> Vec<SinkConfigError> {
        self.target(path, env).err().unwrap_or_default()
    }

    fn resolve(&self, path: &str, format: Format, env: &Env) -> Result<RedisSink, SinkConfigError> {
        let target = self
            .target(path, env)
            .map_err(|problems| first_problem(path, problems))?;
        Ok(RedisSink::new(target, format))
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("url_from_env", &self.url_from_env)
            .field("stream", &self.stream)
            .field("maxlen", &self.maxlen)
            .finish()
    }
}
