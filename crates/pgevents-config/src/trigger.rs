//! `[[trigger]]`: which table's changes become events, and where they are delivered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pgevents_delivery::{DynSink, RetryPolicy};
use pgevents_event::{Action, Format};
use pgevents_sinks::{join_path, Env, ResolveSink, SinkConfigError};
use serde::Deserialize;

use crate::error::{ConfigError, Problems};
use crate::file;
use crate::sections::duration;
use crate::table::TableName;

/// Operations captured when `operations` is not given.
pub const DEFAULT_OPERATIONS: [Action; 3] = [Action::Insert, Action::Update, Action::Delete];

/// The longest trigger name, in bytes.
const MAX_NAME_BYTES: usize = 63;

/// In which order a trigger's events are delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DeliveryOrdering {
    /// `"row"` (default): the events of one row are delivered in commit order; a failing event
    /// holds back only later events of the same row.
    #[default]
    PerRow,
    /// `"table"`: all the trigger's events in commit order; a failing event holds back every
    /// later one. For tables without a primary key, and for consumers that need the order
    /// across rows.
    Table,
    /// `"none"`: events are delivered as soon as possible, in any order.
    Unordered,
    /// `{ columns = ["account_id"] }`: the events that share these columns' values are
    /// delivered in commit order; a failing event holds back only later events of its group.
    Columns(Vec<String>),
}

/// A trigger's destination: one arm per sink, holding that sink's settings.
///
/// A new sink adds one arm here, its key in the file's trigger table and one line in
/// `SinkConfig::take_all`; everything else goes through [`ResolveSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkConfig {
    /// `webhook = { ... }`.
    #[cfg(feature = "webhook")]
    Webhook(pgevents_sinks::WebhookConfig),
    /// `nats = { ... }` (JetStream).
    #[cfg(feature = "nats")]
    Nats(pgevents_sinks::NatsConfig),
    /// `redis = { ... }` (`XADD` to a stream).
    #[cfg(feature = "redis")]
    Redis(pgevents_sinks::RedisConfig),
    /// `amqp = { ... }` (RabbitMQ, publisher confirms).
    #[cfg(feature = "amqp")]
    Amqp(pgevents_sinks::AmqpConfig),
    /// `kafka = { ... }` (idempotent produce, `acks=all`).
    #[cfg(feature = "kafka")]
    Kafka(pgevents_sinks::KafkaConfig),
    /// `stdout = {}`.
    #[cfg(feature = "stdout")]
    Stdout(pgevents_sinks::StdoutConfig),
}

/// The spellings of `ordering` that are names.
const ORDERING_NAMES: [&str; 3] = ["row", "table", "none"];

impl<'de> Deserialize<'de> for DeliveryOrdering {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderingVisitor)
    }
}

/// `ordering = { columns = [...] }` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderingTable {
    columns: Vec<String>,
}

/// Reads `ordering`: one of [`ORDERING_NAMES`], or a table `{ columns = [...] }`.
struct OrderingVisitor;

impl<'de> serde::de::Visitor<'de> for OrderingVisitor {
    type Value = DeliveryOrdering;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"row\", \"table\", \"none\" or { columns = [...] }")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<DeliveryOrdering, E> {
        match value {
            "row" => Ok(DeliveryOrdering::PerRow),
            "table" => Ok(DeliveryOrdering::Table),
            "none" => Ok(DeliveryOrdering::Unordered),
            other => Err(E::unknown_variant(other, &ORDERING_NAMES)),
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<DeliveryOrdering, A::Error> {
        let table = OrderingTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(DeliveryOrdering::Columns(table.columns))
    }
}

impl DeliveryOrdering {
    /// The log's ordering of this setting.
    pub fn ordering(&self) -> pgevents_log::Ordering {
        match self {
            DeliveryOrdering::PerRow => pgevents_log::Ordering::Row,
            DeliveryOrdering::Table => pgevents_log::Ordering::Table,
            DeliveryOrdering::Unordered => pgevents_log::Ordering::None,
            DeliveryOrdering::Columns(columns) => pgevents_log::Ordering::Columns(columns.clone()),
        }
    }
}

impl SinkConfig {
    /// The destination's key in the trigger table (`"webhook"`, `"nats"`, `"redis"`,
    /// `"amqp"`, `"kafka"`, `"stdout"`).
    pub fn key(&self) -> &'static str {
        match *self {
            #[cfg(feature = "webhook")]
            SinkConfig::Webhook(_) => "webhook",
            #[cfg(feature = "nats")]
            SinkConfig::Nats(_) => "nats",
            #[cfg(feature = "redis")]
            SinkConfig::Redis(_) => "redis",
            #[cfg(feature = "amqp")]
            SinkConfig::Amqp(_) => "amqp",
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(_) => "kafka",
            #[cfg(feature = "stdout")]
            SinkConfig::Stdout(_) => "stdout",
        }
    }

    fn settings(&self) -> &dyn AnySettings {
        match *self {
            #[cfg(feature = "webhook")]
            SinkConfig::Webhook(ref settings) => settings,
            #[cfg(feature = "nats")]
            SinkConfig::Nats(ref settings) => settings,
            #[cfg(feature = "redis")]
            SinkConfig::Redis(ref settings) => settings,
            #[cfg(feature = "amqp")]
            SinkConfig::Amqp(ref settings) => settings,
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(ref settings) => settings,
            #[cfg(feature = "stdout")]
            SinkConfig::Stdout(ref settings) => settings,
        }
    }

    /// Every destination key set in a trigger's table.
    #[allow(unused_mut, unused_variables)] // with every sink feature off, there are none
    fn take_all(trigger: &mut file::Trigger) -> Vec<SinkConfig> {
        let mut found = Vec::new();
        #[cfg(feature = "webhook")]
        found.extend(trigger.webhook.take().map(SinkConfig::Webhook));
        #[cfg(feature = "nats")]
        found.extend(trigger.nats.take().map(SinkConfig::Nats));
        #[cfg(feature = "redis")]
        found.extend(trigger.redis.take().map(SinkConfig::Redis));
        #[cfg(feature = "amqp")]
        found.extend(trigger.amqp.take().map(SinkConfig::Amqp));
        #[cfg(feature = "kafka")]
        found.extend(trigger.kafka.take().map(SinkConfig::Kafka));
        #[cfg(feature = "stdout")]
        found.extend(trigger.stdout.take().map(SinkConfig::Stdout));
        found
    }
}

/// [`ResolveSink`] with the sink type erased, so one `match` serves every sink.
trait AnySettings {
    fn validate(&self, path: &str, env: &Env) -> Vec<SinkConfigError>;
    fn build(
        &self,
        path: &str,
        format: Format,
        env: &Env,
    ) -> Result<Arc<dyn DynSink>, SinkConfigError>;
}

impl<T: ResolveSink> AnySettings for T {
    fn validate(&self, path: &str, env: &Env) -> Vec<SinkConfigError> {
        ResolveSink::validate(self, path, env)
    }

    fn build(
        &self,
        path: &str,
        format: Format,
        env: &Env,
    ) -> Result<Arc<dyn DynSink>, SinkConfigError> {
        Ok(Arc::new(self.resolve(path, format, env)?))
    }
}

/// One `[[trigger]]`: a table's changes, which of them, in what shape, to where.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TriggerConfig {
    /// The trigger's unique name (in payloads, the API and the CLI).
    pub name: String,
    /// The watched table.
    pub table: TableName,
    /// The captured operations, without duplicates, in the order INSERT, UPDATE, DELETE,
    /// TRUNCATE (default [`DEFAULT_OPERATIONS`]).
    pub operations: Vec<Action>,
    /// When set, an UPDATE fires only if one of these columns changed.
    pub columns: Option<Vec<String>>,
    /// The payload format (default seed).
    pub format: Format,
    /// The delivery order (default per row).
    pub ordering: DeliveryOrdering,
    /// When set, `data.old` / `data.new` hold only these columns (in table order).
    pub payload_columns: Option<Vec<String>>,
    /// `where`: when set, an SQL condition on the row's columns (INSERT tests the new row,
    /// DELETE the old one, UPDATE fires when either matches); checked against the database
    /// by `check` and `install`.
    pub condition: Option<String>,
    /// Retries and the attempt timeout (defaults from `pgevents_delivery`).
    pub retry: RetryPolicy,
    /// Where events are delivered.
    pub sink: SinkConfig,
    env: Env,
}

impl TriggerConfig {
    /// How config errors name this trigger: `trigger["order_events"]`.
    pub fn path(&self) -> String {
        format!("trigger[{:?}]", self.name)
    }

    /// Whether the trigger captures `action`.
    pub fn captures(&self, action: Action) -> bool {
        self.operations.contains(&action)
    }

    /// Builds the trigger's ready-to-use sink, reading its secrets from the environment the
    /// config was loaded with. `path` is how errors name the trigger, normally
    /// [`TriggerConfig::path`]; the error names the field at fault below it (an environment
    /// variable unset since the config was loaded, an HTTP client that cannot start).
    pub fn build_sink(&self, path: &str) -> Result<Arc<dyn DynSink>, ConfigError> {
        self.sink
            .settings()
            .build(&join_path(path, self.sink.key()), self.format, &self.env)
            .map_err(ConfigError::from)
    }

    /// Problems with the destination that only asking it shows, each naming the field at
    /// fault below `path`: for Kafka, brokers that do not answer within `timeout` and a topic
    /// that does not exist. Empty when all is well, and for destinations with nothing to ask.
    #[allow(unused_variables)] // with the kafka feature off, there is nothing to ask
    pub async fn reach_destination(&self, path: &str, timeout: Duration) -> Vec<ConfigError> {
        let at = join_path(path, self.sink.key());
        match self.sink {
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(ref settings) => {
                match settings.resolve(&at, self.format, &self.env) {
                    Ok(sink) => match sink.check(timeout).await {
                        Ok(()) => Vec::new(),
                        Err(problem) => vec![ConfigError::new(at, problem)],
                    },
                    Err(problem) => vec![ConfigError::from(problem)],
                }
            }
            #[allow(unreachable_patterns)] // with only the kafka feature on
            _ => Vec::new(),
        }
    }
}

/// Checks every `[[trigger]]`.
pub(crate) fn triggers(
    files: Vec<file::Trigger>,
    env: &Env,
    problems: &mut Problems,
    notes: &mut Problems,
) -> Vec<TriggerConfig> {
    if files.is_empty() {
        notes.push(
            "trigger",
            "there is no [[trigger]], so nothing is captured or delivered; add one with name, table and a destination",
        );
    }
    let mut first_with_name: HashMap<&str, usize> = HashMap::new();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (i, file) in files.iter().enumerate() {
        if let Some(name) = file.name.as_deref() {
            first_with_name.entry(name).or_insert(i);
            *count.entry(name).or_default() += 1;
        }
    }
    let paths: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, file)| match file.name.as_deref() {
            Some(name) if valid_name(name) && count.get(name) == Some(&1) => {
                format!("trigger[{name:?}]")
            }
            _ => format!("trigger[{i}]"),
        })
        .collect();
    for (i, file) in files.iter().enumerate() {
        let Some(name) = file.name.as_deref() else {
            continue;
        };
        match first_with_name.get(name) {
            Some(&first) if first != i => problems.push(
                format!("trigger[{i}].name"),
                format!("{name:?} is already the name of trigger[{first}]; trigger names must be unique, so rename one"),
            ),
            _ => {}
        }
    }
    files
        .into_iter()
        .zip(&paths)
        .filter_map(|(file, path)| trigger(file, path, env, problems, notes))
        .collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks one `[[trigger]]` at `path`; `None` when it has no usable destination.
fn trigger(
    mut file: file::Trigger,
    path: &str,
    env: &Env,
    problems: &mut Problems,
    notes: &mut Problems,
) -> Option<TriggerConfig> {
    let at = |field: &str| join_path(path, field);
    let name = file.name.take().unwrap_or_default();
    if name.is_empty() {
        problems.push(
            at("name"),
            "missing; give the trigger a unique name, e.g. name = \"order_events\"",
        );
    } else if !valid_name(&name) {
        problems.push(
            at("name"),
            format!("{name:?} is not a trigger name; use 1 to {MAX_NAME_BYTES} letters, digits, _, - and ., e.g. \"order_events\""),
        );
    }

    let table = match file.table.take() {
        None => {
            problems.push(
                at("table"),
                "missing; name the table to watch, e.g. table = \"public.orders\"",
            );
            None
        }
        Some(text) => problems.check(at("table"), TableName::parse(&text)),
    };

    let operations = operations(file.operations.take(), &at("operations"), problems);
    let columns = column_list(
        file.columns.take(),
        &at("columns"),
        "list the columns whose change makes an UPDATE fire, or remove columns to fire on every UPDATE",
        problems,
    );
    let payload_columns = column_list(
        file.payload_columns.take(),
        &at("payload_columns"),
        "list the columns events should carry, or remove payload_columns to carry every column",
        problems,
    );
    if columns.is_some() && !operations.contains(&Action::Update) {
        notes.push(
            at("columns"),
            "only filters UPDATE events, and operations has no UPDATE; remove columns or add UPDATE",
        );
    }
    let ordering = match file.ordering.take().unwrap_or_default() {
        DeliveryOrdering::Columns(names) => DeliveryOrdering::Columns(
            column_list(
                Some(names),
                &at("ordering.columns"),
                "list the columns whose values make a group, e.g. columns = [\"account_id\"], or use ordering = \"row\"",
                problems,
            )
            .unwrap_or_default(),
        ),
        other => other,
    };
    let condition = file.condition.take();
    if condition.as_deref().is_some_and(|c| c.trim().is_empty()) {
        problems.push(
            at("where"),
            "is empty; write an SQL condition on the row's columns, e.g. where = \"status <> 'draft'\", or remove where",
        );
    }
    let retry = retry(file.retry.take(), &at("retry"), problems);

    let mut sinks = SinkConfig::take_all(&mut file);
    let sink = match sinks.len() {
        0 => {
            problems.push(
                path,
                "has no destination; add one (webhook, nats, redis, amqp, kafka or stdout), e.g. webhook = { url = \"https://...\" } or stdout = {}",
            );
            None
        }
        1 => sinks.pop(),
        _ => {
            let keys: Vec<&str> = sinks.iter().map(SinkConfig::key).collect();
            problems.push(
                path,
                format!(
                    "has {} destinations ({}); a trigger has exactly one: keep one, and add a trigger per extra destination",
                    keys.len(),
                    keys.join(", ")
                ),
            );
            None
        }
    }?;
    for error in sink.settings().validate(&at(sink.key()), env) {
        problems.0.push(error.into());
    }

    Some(TriggerConfig {
        name,
        table: table.unwrap_or_else(|| TableName::new("", "")),
        operations,
        columns,
        format: file.format.unwrap_or_default(),
        ordering,
        payload_columns,
        condition,
        retry,
        sink,
        env: env.clone(),
    })
}

/// Checks `operations`: INSERT, UPDATE, DELETE, TRUNCATE, any case, at least one.
fn operations(texts: Option<Vec<String>>, path: &str, problems: &mut Problems) -> Vec<Action> {
    let Some(texts) = texts else {
        return DEFAULT_OPERATIONS.to_vec();
    };
    if texts.is_empty() {
        problems.push(
            path,
            "is empty; list at least one of INSERT, UPDATE, DELETE, TRUNCATE, or remove operations to capture INSERT, UPDATE and DELETE",
        );
    }
    let mut found = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match text.trim().parse::<Action>() {
            Ok(action) if !action.is_captured() => problems.push(
                format!("{path}[{i}]"),
                format!("{action} events are made by `pgevents invoke` and `pgevents backfill`, not captured; remove it from operations"),
            ),
            Ok(action) => found.push(action),
            Err(_) => problems.push(
                format!("{path}[{i}]"),
                format!("{text:?} is not an operation; use INSERT, UPDATE, DELETE or TRUNCATE"),
            ),
        }
    }
    [
        Action::Insert,
        Action::Update,
        Action::Delete,
        Action::Truncate,
    ]
    .into_iter()
    .filter(|action| found.contains(action))
    .collect()
}

/// Checks a list of column names (`columns`, `payload_columns`): not empty (else the
/// problem says `when_empty`), no empty names; duplicates are dropped.
fn column_list(
    texts: Option<Vec<String>>,
    path: &str,
    when_empty: &str,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    let texts = texts?;
    if texts.is_empty() {
        problems.push(path, format!("is empty; {when_empty}"));
    }
    let mut columns: Vec<String> = Vec::with_capacity(texts.len());
    for (i, column) in texts.into_iter().enumerate() {
        if column.is_empty() {
            problems.push(
                format!("{path}[{i}]"),
                "is an empty column name; write the column's name as the table has it",
            );
        } else if !columns.contains(&column) {
            columns.push(column);
        }
    }
    Some(columns)
}

/// Checks `retry = { ... }`, filling in `pgevents_delivery`'s defaults.
fn retry(file: Option<file::Retry>, path: &str, problems: &mut Problems) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let Some(file) = file else {
        return defaults;
    };
    let at = |field: &str| join_path(path, field);
    let shown = |text: &Option<file::DurationText>, default| {
        text.as_ref().map_or_else(
            || format!("{default:?} (the default)"),
            |t| format!("{:?}", t.0),
        )
    };
    let initial_text = shown(&file.initial_interval, defaults.initial_interval);
    let max_text = shown(&file.max_interval, defaults.max_interval);
    let errors_before = problems.0.len();
    let policy = RetryPolicy {
        max_retries: file.max_retries.unwrap_or(defaults.max_retries),
        initial_interval: duration(
            at("initial_interval"),
            file.initial_interval,
            defaults.initial_interval,
            problems,
        ),
        max_interval: duration(
            at("max_interval"),
            file.max_interval,
            defaults.max_interval,
            problems,
        ),
        timeout: duration(at("timeout"), file.timeout, defaults.timeout, problems),
    };
    // Compare only durations that parsed; a bad one was reported already.
    let durations_parsed = problems.0.len() == errors_before;
    if policy.timeout.is_zero() {
        problems.push(
            at("timeout"),
            "is zero; give the time one attempt may take, e.g. \"30s\"",
        );
    }
    if policy.initial_interval.is_zero() {
        problems.push(
            at("initial_interval"),
            "is zero, which would retry without pause; give the first wait, e.g. \"1s\"",
        );
    }
    if durations_parsed && policy.initial_interval > policy.max_interval {
        problems.push(
            at("initial_interval"),
            format!("{initial_text} is longer than max_interval {max_text}; lower initial_interval or raise max_interval"),
        );
    }
    policy
}
