//! The `kafka = { ... }` settings of a trigger, and their resolution into a [`KafkaSink`].

use pgevents_event::Format;
use serde::Deserialize;

use super::sink::{KafkaSink, Sasl, Target};
use crate::error::first_problem;
use crate::{join_path, Env, ResolveSink, SinkConfigError, SinkConfigErrorKind};

/// How broker lists are described in errors.
const BROKERS: &str = "a list of Kafka brokers";
/// A valid broker list, for error messages.
const BROKERS_EXAMPLE: &str = "127.0.0.1:9092,10.0.0.2:9092";
/// How topics are described in errors.
const TOPIC: &str = "a Kafka topic";
/// A valid topic, for error messages.
const TOPIC_EXAMPLE: &str = "pg.orders";
/// The longest topic name Kafka accepts.
const MAX_TOPIC_CHARS: usize = 249;

/// Where a trigger's events are produced:
/// `kafka = { brokers = "127.0.0.1:9092", topic = "pg.orders" }`.
///
/// Plain data, exactly as written in the config file; [`ResolveSink::resolve`] reads the
/// environment and checks everything. Secrets (SASL credentials) are only ever named here,
/// by the environment variables that hold them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// The bootstrap brokers, `host:port` separated by commas, e.g. `"10.0.0.1:9092,10.0.0.2:9092"`.
    /// Exactly one of `brokers` and `brokers_from_env` must be given.
    #[serde(default)]
    pub brokers: Option<String>,
    /// The name of an environment variable holding the bootstrap brokers. Exactly one of
    /// `brokers` and `brokers_from_env` must be given.
    #[serde(default)]
    pub brokers_from_env: Option<String>,
    /// The topic events are produced to, e.g. `pg.orders`. It must exist: pgevents never
    /// creates topics (partitions, replication and retention are the operator's decisions).
    #[serde(default)]
    pub topic: Option<String>,
    /// The message key (default `"row"`): see [`KafkaKey`].
    #[serde(default)]
    pub key: KafkaKey,
    /// `true` to speak TLS to the brokers, verified against the system's CA certificates
    /// (default `false`).
    #[serde(default)]
    pub tls: bool,
    /// SASL authentication, e.g.
    /// `sasl = { mechanism = "SCRAM-SHA-512", username_from_env = "KAFKA_USER", password_from_env = "KAFKA_PASSWORD" }`.
    #[serde(default)]
    pub sasl: Option<SaslConfig>,
}

/// What each message's key is, and so which partition it lands in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum KafkaKey {
    /// `"row"` (default): the event's ordering key (see
    /// [`Event::ordering_key`](pgevents_event::Event::ordering_key)) as decimal text, e.g.
    /// `"-4153267419371906547"`: a stable hash of the trigger and the row's primary key, so a
    /// row's events share a partition and stay in commit order. Events without one (unordered
    /// triggers, manual events) have no key.
    #[default]
    #[serde(rename = "row")]
    Row,
    /// `"table"`: `schema.table`, e.g. `public.orders`: a table's events share a partition.
    #[serde(rename = "table")]
    Table,
    /// `"none"`: no key; the producer spreads events over the partitions.
    #[serde(rename = "none")]
    None,
}

/// `sasl = { mechanism, username_from_env, password_from_env }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// `"PLAIN"`, `"SCRAM-SHA-256"` or `"SCRAM-SHA-512"`.
    pub mechanism: SaslMechanism,
    /// The name of an environment variable holding the user name.
    pub username_from_env: String,
    /// The name of an environment variable holding the password.
    pub password_from_env: String,
}

/// A SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    /// `"PLAIN"`: the password is sent as is (use it with `tls = true`).
    #[serde(rename = "PLAIN")]
    Plain,
    /// `"SCRAM-SHA-256"`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `"SCRAM-SHA-512"`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The mechanism's name as Kafka spells it.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl KafkaConfig {
    /// Checks every setting and reads every variable, collecting all problems.
    fn target(&self, path: &str, env: &Env) -> Result<Target, Vec<SinkConfigError>> {
        let mut problems = Vec::new();
        let brokers = self.brokers(path, env).map_err(|e| problems.push(e)).ok();
        let topic = self
            .topic(&join_path(path, "topic"))
            .map_err(|e| problems.push(e))
            .ok();
        let sasl = match &self.sasl {
            Some(sasl) => sasl
                .resolve(&join_path(path, "sasl"), env, &mut problems)
                .map(Some),
            None => Some(None),
        };
        match (brokers, topic, sasl) {
            (Some(brokers), Some(topic), Some(sasl)) if problems.is_empty() => Ok(Target {
                brokers,
                topic,
                key: self.key,
                tls: self.tls,
                sasl,
            }),
            _ => Err(problems),
        }
    }

    fn brokers(&self, path: &str, env: &Env) -> Result<String, SinkConfigError> {
        let (field, list) = match (&self.brokers, &self.brokers_from_env) {
            (Some(_), Some(_)) => {
                return Err(SinkConfigError::new(
                    join_path(path, "brokers_from_env"),
                    SinkConfigErrorKind::Conflict {
                        first: "brokers",
                        second: "brokers_from_env",
                    },
                ))
            }
            (None, None) => {
                return Err(SinkConfigError::new(
                    join_path(path, "brokers"),
                    SinkConfigErrorKind::Missing {
                        advice: "set brokers = \"127.0.0.1:9092\" or brokers_from_env = \"VAR\"",
                    },
                ))
            }
            (Some(list), None) => ("brokers", list.clone()),
            (None, Some(var)) => {
                let field = "brokers_from_env";
                let list = env
                    .require(var, "use brokers = \"host:port\"")
                    .map_err(|kind| SinkConfigError::new(join_path(path, field), kind))?;
                (field, list)
            }
        };
        check_brokers(&list).map_err(|reason| {
            SinkConfigError::new(
                join_path(path, field),
                SinkConfigErrorKind::InvalidName {
                    what: BROKERS,
                    reason,
                    example: BROKERS_EXAMPLE,
                },
            )
        })?;
        Ok(list.split(',').map(str::trim).collect::<Vec<_>>().join(","))
    }

    fn topic(&self, path: &str) -> Result<String, SinkConfigError> {
        let error = |kind| SinkConfigError::new(path, kind);
        let Some(topic) = &self.topic else {
            return Err(error(SinkConfigErrorKind::Missing {
                advice: "name the topic to produce to, e.g. topic = \"pg.orders\"",
            }));
        };
        check_topic(topic).map_err(|reason| {
            error(SinkConfigErrorKind::InvalidName {
                what: TOPIC,
                reason,
                example: TOPIC_EXAMPLE,
            })
        })?;
        Ok(topic.clone())
    }
}

impl SaslConfig {
    /// The credentials, or `None` after pushing what is wrong to `problems`.
    fn resolve(&self, path: &str, env: &Env, problems: &mut Vec<SinkConfigError>) -> Option<Sasl> {
        let mut read = |field: &str, var: &str| {
            env.require(var, "remove sasl if the brokers need no authentication")
                .map_err(|kind| problems.push(SinkConfigError::new(join_path(path, field), kind)))
                .ok()
        };
        let username = read("username_from_env", &self.username_from_env);
        let password = read("password_from_env", &self.password_from_env);
        Some(Sasl {
            mechanism: self.mechanism,
            username: username?,
            password: password?,
        })
    }
}

/// Why `list` is not a comma-separated list of `host:port`, if it is not.
pub(super) fn check_brokers(list: &str) -> Result<(), String> {
    if list.trim().is_empty() {
        return Err("is empty".into());
    }
    for broker in list.split(',').map(str::trim) {
        if broker.contains("://") {
            return Err(format!(
                "{broker:?} has a scheme; give host:port only (set tls = true for TLS)"
            ));
        }
        let Some((host, port)) = broker.rsplit_once(':') else {
            return Err(format!("{broker:?} has no port; write it as host:port"));
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{broker:?} has no valid host"));
        }
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("{broker:?} has no valid port (1 to 65535)"));
        }
    }
    Ok(())
}

/// Why Kafka would refuse `topic` as a topic name, if it would.
pub(super) fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("is empty".into());
    }
    if topic == "." || topic == ".." {
        return Err(format!("{topic:?} is reserved"));
    }
    if topic.chars().count() > MAX_TOPIC_CHARS {
        return Err(format!("is longer than {MAX_TOPIC_CHARS} characters"));
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{topic:?} contains {bad:?}; topics are letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

impl ResolveSink for KafkaConfig {
    type Sink = KafkaSink;

    fn validate(&self, path: &str, env: &Env) -> Vec<SinkConfigError> {
        self.target(path, env).err().unwrap_or_default()
    }

    fn resolve(&self, path: &str, format: Format, env: &Env) -> Result<KafkaSink, SinkConfigError> {
        let target = self
            .target(path, env)
            .map_err(|problems| first_problem(path, problems))?;
        Ok(KafkaSink::new(target, format))
    }
}
