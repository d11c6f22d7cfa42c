//! The TOML file's shape, exactly as written: what `serde` reads before anything is checked.
//!
//! Fields that can be wrong in ways worth reporting together (durations, operations, names)
//! are read as text here and checked later, so one run reports all of them. An unknown key
//! is reported with its path, line and column and left out, so the rest is still checked; a
//! wrong type stops the parse.

use std::fmt;

use pgevents_event::Format;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::sections::CaptureMode;
use crate::trigger::OrderingSetting;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    pub(crate) database: Database,
    #[serde(default)]
    pub(crate) capture: Capture,
    #[serde(default)]
    pub(crate) admin: Admin,
    #[serde(default)]
    pub(crate) retention: Retention,
    #[serde(default)]
    pub(crate) trigger: Vec<Trigger>,
}

/// `[database]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Database {
    pub(crate) url: Option<String>,
    pub(crate) url_from_env: Option<String>,
    pub(crate) log_schema: Option<String>,
}

/// `[capture]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Capture {
    pub(crate) mode: Option<CaptureMode>,
    pub(crate) slot: Option<String>,
    pub(crate) publication: Option<String>,
    pub(crate) notify: Option<bool>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Admin {
    pub(crate) listen: Option<String>,
    pub(crate) token_from_env: Option<String>,
    /// Names the admin server is reached by, beside loopback and its own address.
    pub(crate) allowed_hosts: Option<Vec<String>>,
}

/// `[retention]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Retention {
    pub(crate) delivered: Option<DurationText>,
    pub(crate) failed: Option<DurationText>,
}

/// One `[[trigger]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Trigger {
    pub(crate) name: Option<String>,
    pub(crate) table: Option<String>,
    pub(crate) operations: Option<Vec<String>>,
    pub(crate) columns: Option<Vec<String>>,
    pub(crate) format: Option<Format>,
    pub(crate) ordering: Option<OrderingSetting>,
    pub(crate) payload_columns: Option<Vec<String>>,
    #[serde(rename = "where")]
    pub(crate) condition: Option<String>,
    pub(crate) retry: Option<Retry>,
    // Destinations: exactly one must be set. A new sink adds its key here and one line in
    // `SinkConfig::take_all`.
    #[cfg(feature = "webhook")]
    pub(crate) webhook: Option<pgevents_sinks::WebhookConfig>,
    #[cfg(feature = "nats")]
    pub(crate) nats: Option<pgevents_sinks::NatsConfig>,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<pgevents_sinks::RedisConfig>,
    #[cfg(feature = "amqp")]
    pub(crate) amqp: Option<pgevents_sinks::AmqpConfig>,
    #[cfg(feature = "kafka")]
    pub(crate) kafka: Option<pgevents_sinks::KafkaConfig>,
    #[cfg(feature = "stdout")]
    pub(crate) stdout: Option<pgevents_sinks::StdoutConfig>,
}

/// A trigger's `retry = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Retry {
    pub(crate) max_retries: Option<u32>,
    pub(crate) initial_interval: Option<DurationText>,
    pub(crate) max_interval: Option<DurationText>,
    pub(crate) timeout: Option<DurationText>,
}

/// A duration as written: a string, or a bare number kept as text so that the check can say
/// "add a unit" instead of "invalid type".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DurationText(pub(crate) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = DurationText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"30s\"")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<DurationText, E> {
        Ok(DurationText(value.to_string()))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<DurationText, E> {
        Ok(DurationText(value.to_string()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<DurationText, E> {
        Ok(DurationText(value.to_string()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<DurationText, E> {
        Ok(DurationText(value.to_string()))
    }
}
