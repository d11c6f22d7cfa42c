//! The `amqp = { ... }` settings of a trigger, and their resolution into an [`AmqpSink`].

use std::fmt;

use pgevents_event::Format;
use serde::Deserialize;

use super::sink::{AmqpSink, Target};
use crate::endpoint::{redact_url, resolve_url_with, Secrets, UrlRules};
use crate::error::first_problem;
use crate::{join_path, Env, ResolveSink, SinkConfigError, SinkConfigErrorKind};

/// What a broker URL may be.
const URL_RULES: UrlRules = UrlRules {
    schemes: &["amqp", "amqps"],
    expected: "amqp:// (or amqps:// for TLS)",
    example: "amqp://guest:guest@127.0.0.1:5672",
    missing: "set url = \"amqp://user:password@host:5672\" or url_from_env = \"VAR\"",
};

/// The longest exchange name or routing key AMQP 0-9-1 carries (a short string), in bytes.
const MAX_NAME_BYTES: usize = 255;

/// Where a trigger's events are published:
/// `amqp = { url = "amqp://guest:guest@127.0.0.1:5672", exchange = "pg", routing_key = "orders" }`.
///
/// Plain data, exactly as written in the config file; [`ResolveSink::resolve`] reads the
/// environment and checks everything. `Debug` shows URLs with their password and query
/// replaced by `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// The broker, `amqp://user:password@host:5672[/vhost]` (`amqps://` for TLS; the default
    /// virtual host `/` is written `%2f`, or left out). Exactly one of `url` and
    /// `url_from_env` must be given.
    #[serde(default)]
    pub url: Option<String>,
    /// The name of an environment variable holding the broker URL (URLs carry a password).
    /// Exactly one of `url` and `url_from_env` must be given.
    #[serde(default)]
    pub url_from_env: Option<String>,
    /// The exchange events are published to; it must exist (pgevents does not declare it).
    /// `""` is the default exchange, which routes to the queue named by `routing_key`.
    #[serde(default)]
    pub exchange: Option<String>,
    /// The routing key of every message (default `""`, for exchanges that ignore it, such as
    /// fanout exchanges).
    #[serde(default)]
    pub routing_key: Option<String>,
}

impl AmqpConfig {
    /// Checks every setting and reads every variable, collecting all problems.
    fn target(&self, path: &str, env: &Env) -> Result<Target, Vec<SinkConfigError>> {
        let mut problems = Vec::new();
        // The client's own parser (virtual host, query options), without connecting.
        let url = resolve_url_with(
            path,
            self.url.as_deref(),
            self.url_from_env.as_deref(),
            env,
            &URL_RULES,
            |url| url.as_str().parse::<lapin::uri::AMQPUri>().map(drop),
        )
        .map_err(|e| problems.push(e))
        .ok();
        let exchange = match &self.exchange {
            None => {
                problems.push(SinkConfigError::new(
                    join_path(path, "exchange"),
                    SinkConfigErrorKind::Missing {
                        advice: "name the exchange to publish to, e.g. exchange = \"pg\" (or \"\" for the default exchange)",
                    },
                ));
                None
            }
            Some(exchange) => name(
                exchange,
                &join_path(path, "exchange"),
                "an AMQP exchange name",
                "pg",
                &mut problems,
            ),
        };
        let routing_key = name(
            self.routing_key.as_deref().unwrap_or_default(),
            &join_path(path, "routing_key"),
            "an AMQP routing key",
            "orders",
            &mut problems,
        );
        if exchange.as_deref() == Some("") && routing_key.as_deref() == Some("") {
            problems.push(SinkConfigError::new(
                join_path(path, "routing_key"),
                SinkConfigErrorKind::Missing {
                    advice: "the default exchange (exchange = \"\") routes to the queue named by routing_key: set routing_key to a queue's name",
                },
            ));
        }
        match (url, exchange, routing_key) {
            (Some((url, ())), Some(exchange), Some(routing_key)) if problems.is_empty() => {
                Ok(Target {
                    secrets: Secrets::of(&url),
                    url,
                    exchange,
                    routing_key,
                })
            }
            _ => Err(problems),
        }
    }
}

/// Checks an exchange name or routing key: at most [`MAX_NAME_BYTES`], no control characters.
fn name(
    text: &str,
    path: &str,
    what: &'static str,
    example: &'static str,
    problems: &mut Vec<SinkConfigError>,
) -> Option<String> {
    let reason = if text.len() > MAX_NAME_BYTES {
        format!("is {} bytes long, over AMQP's {MAX_NAME_BYTES}", text.len())
    } else if text.chars().any(char::is_control) {
        format!("{text:?} contains control characters")
    } else {
        return Some(text.to_string());
    };
    problems.push(SinkConfigError::new(
        path,
        SinkConfigErrorKind::InvalidName {
            what,
            reason,
            example,
        },
    ));
    None
}

impl ResolveSink for AmqpConfig {
    type Sink = AmqpSink;

    fn validate(&self, path: &str, env: &Env) -> Vec<SinkConfigError> {
        self.target(path, env).err().unwrap_or_default()
    }

    fn resolve(&self, path: &str, format: Format, env: &Env) -> Result<AmqpSink, SinkConfigError> {
        let target = self
            .target(path, env)
            .map_err(|problems| first_problem(path, problems))?;
        Ok(AmqpSink::new(target, format))
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("url_from_env", &self.url_from_env)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .finish()
    }
}
