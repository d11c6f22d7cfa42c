//! The `nats = { ... }` settings of a trigger, and their resolution into a [`NatsSink`].

use std::fmt;

use pgevents_event::Format;
use serde::Deserialize;

use super::sink::{NatsSink, Target};
use crate::endpoint::{redact_url, resolve_url, Secrets, UrlRules};
use crate::error::first_problem;
use crate::{join_path, Env, ResolveSink, SinkConfigError, SinkConfigErrorKind};

/// What a NATS server URL may be.
const URL_RULES: UrlRules = UrlRules {
    schemes: &["nats", "tls"],
    expected: "nats:// (or tls:// to require TLS)",
    example: "nats://127.0.0.1:4222",
    missing: "set url = \"nats://127.0.0.1:4222\" or url_from_env = \"VAR\"",
};

/// How subjects are described in errors.
const SUBJECT: &str = "a NATS subject";
/// A valid subject, for error messages.
const SUBJECT_EXAMPLE: &str = "pg.orders";

/// Where a trigger's events are published with JetStream:
/// `nats = { url = "nats://127.0.0.1:4222", subject = "pg.orders" }`.
///
/// Plain data, exactly as written in the config file; [`ResolveSink::resolve`] reads the
/// environment and checks everything. `Debug` shows URLs with their password, token and query
/// replaced by `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The server, `nats://host:port` (`tls://` to require TLS); credentials may be given as
    /// `nats://user:password@host` or `nats://token@host`. Exactly one of `url` and
    /// `url_from_env` must be given.
    #[serde(default)]
    pub url: Option<String>,
    /// The name of an environment variable holding the server URL (for URLs that carry
    /// credentials). Exactly one of `url` and `url_from_env` must be given.
    #[serde(default)]
    pub url_from_env: Option<String>,
    /// The subject events are published to, e.g. `pg.orders`: dot-separated tokens, without
    /// spaces or wildcards. A JetStream stream must capture it.
    #[serde(default)]
    pub subject: Option<String>,
}

impl NatsConfig {
    /// Checks every setting and reads every variable, collecting all problems.
    fn target(&self, path: &str, env: &Env) -> Result<Target, Vec<SinkConfigError>> {
        let mut problems = Vec::new();
        let url = resolve_url(
            path,
            self.url.as_deref(),
            self.url_from_env.as_deref(),
            env,
            &URL_RULES,
        )
        .map_err(|e| problems.push(e))
        .ok();
        let subject = self
            .subject(&join_path(path, "subject"))
            .map_err(|e| problems.push(e))
            .ok();
        match (url, subject) {
            (Some(url), Some(subject)) if problems.is_empty() => Ok(Target {
                secrets: Secrets::of(&url),
                url,
                subject,
            }),
            _ => Err(problems),
        }
    }

    fn subject(&self, path: &str) -> Result<String, SinkConfigError> {
        let error = |kind| SinkConfigError::new(path, kind);
        let Some(subject) = &self.subject else {
            return Err(error(SinkConfigErrorKind::Missing {
                advice: "name the subject to publish to, e.g. subject = \"pg.orders\"",
            }));
        };
        check_subject(subject).map_err(|reason| {
            error(SinkConfigErrorKind::InvalidName {
                what: SUBJECT,
                reason,
                example: SUBJECT_EXAMPLE,
            })
        })?;
        Ok(subject.clone())
    }
}

/// Why `subject` cannot be published to, if it cannot.
pub(super) fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("is empty".into());
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{subject:?} contains whitespace or control characters"
        ));
    }
    for token in subject.split('.') {
        match token {
            "" => {
                return Err(format!(
                    "{subject:?} has an empty token (a leading, trailing or double dot)"
                ))
            }
            "*" | ">" => {
                return Err(format!(
                    "{subject:?} contains the wildcard {token:?}, and messages cannot be published to a wildcard"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

impl ResolveSink for NatsConfig {
    type Sink = NatsSink;

    fn validate(&self, path: &str, env: &Env) -> Vec<SinkConfigError> {
        self.target(path, env).err().unwrap_or_default()
    }

    fn resolve(&self, path: &str, format: Format, env: &Env) -> Result<NatsSink, SinkConfigError> {
        let target = self
            .target(path, env)
            .map_err(|problems| first_problem(path, problems))?;
        Ok(NatsSink::new(target, format))
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("url_from_env", &self.url_from_env)
            .field("subject", &self.subject)
            .finish()
    }
}
