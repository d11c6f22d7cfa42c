//! The pgevents event: what a committed row change becomes, and the bytes it is delivered as.
//!
//! An [`Event`] carries the change exactly as PostgreSQL rendered it: `old` and `new` are the
//! text of `to_json(row)`, kept verbatim so that numbers are never rounded through a float
//! and columns keep their table order. [`Format`] turns an event into a payload: the seed's
//! `{id, schema, table, trigger, action, created_at, data: {old, new}}` or Hasura's body.
//!
//! ```
//! use pgevents_event::{Action, Event, EventParts};
//! let event = Event::from_parts(EventParts {
//!     seq: 7,
//!     salt: 0x2a,
//!     created_at: chrono::Utc::now(),
//!     trigger: "order_events".into(),
//!     schema: "public".into(),
//!     table: "orders".into(),
//!     action: Action::Insert,
//!     old: None,
//!     new: Some(r#"{"id":7,"total":12.50}"#.into()),
//!     ordering_key: Some(-4_153_267_419_371_906_547),
//! });
//! assert!(event.payload_str().contains(r#""new":{"id":7,"total":12.50}"#));
//! assert_eq!(event.ordering_key(), Some(-4_153_267_419_371_906_547));
//! ```

mod action;
mod format;
mod id;

pub use action::{Action, UnknownAction};
pub use format::{Attempt, Format};
pub use id::{event_id, seq_from_id};

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Everything an [`Event`] is built from (as read from the event log).
#[derive(Debug, Clone)]
pub struct EventParts {
    /// The event's position in the log.
    pub seq: i64,
    /// The installation's id salt (see [`event_id`]).
    pub salt: u16,
    /// When the change was captured (the writing transaction's start time).
    pub created_at: DateTime<Utc>,
    /// The name of the trigger that captured it.
    pub trigger: Arc<str>,
    /// The table's schema.
    pub schema: Arc<str>,
    /// The bare table name.
    pub table: Arc<str>,
    /// What happened.
    pub action: Action,
    /// `to_json(OLD)` as PostgreSQL rendered it.
    pub old: Option<String>,
    /// `to_json(NEW)` as PostgreSQL rendered it (the invoked JSON for a manual event).
    pub new: Option<String>,
    /// The key events are ordered by (see [`Event::ordering_key`]), when the log gave one.
    pub ordering_key: Option<i64>,
}

/// One captured change, cheap to clone.
#[derive(Debug, Clone)]
pub struct Event {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    parts: EventParts,
    id: uuid::Uuid,
    payload: OnceLock<Vec<u8>>,
    old: OnceLock<Option<Value>>,
    new: OnceLock<Option<Value>>,
}

impl Event {
    /// Builds an event from its parts.
    pub fn from_parts(parts: EventParts) -> Event {
        let id = event_id(parts.created_at, parts.salt, parts.seq);
        Event {
            inner: Arc::new(Inner {
                parts,
                id,
                payload: OnceLock::new(),
                old: OnceLock::new(),
                new: OnceLock::new(),
            }),
        }
    }

    /// The event's id: unique, stable across retries and redeliveries; consumers dedupe on it.
    pub fn id(&self) -> uuid::Uuid {
        self.inner.id
    }

    /// The event's position in the event log.
    pub fn seq(&self) -> i64 {
        self.inner.parts.seq
    }

    /// The table's schema.
    pub fn schema(&self) -> &str {
        &self.inner.parts.schema
    }

    /// The bare table name.
    pub fn table(&self) -> &str {
        &self.inner.parts.table
    }

    /// The name of the trigger that captured the event.
    pub fn trigger(&self) -> &str {
        &self.inner.parts.trigger
    }

    /// What happened to the row.
    pub fn action(&self) -> Action {
        self.inner.parts.action
    }

    /// The key the event log orders this event by: events with the same key (one row's, under
    /// per-row ordering) are delivered in commit order. A hash, stable for a trigger and row
    /// (or table, under per-table ordering); `None` for unordered events, manual events and
    /// events not read from the dispatcher's claim.
    pub fn ordering_key(&self) -> Option<i64> {
        self.inner.parts.ordering_key
    }

    /// When the change was captured.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.inner.parts.created_at
    }

    /// The row before the change (`None` for INSERT, TRUNCATE and MANUAL).
    pub fn old(&self) -> Option<&Value> {
        parse_once(&self.inner.old, self.inner.parts.old.as_deref())
    }

    /// The row after the change (`None` for DELETE and TRUNCATE).
    #[allow(clippy::new_ret_no_self)] // `new` is the row image's name in every payload.
    pub fn new(&self) -> Option<&Value> {
        parse_once(&self.inner.new, self.inner.parts.new.as_deref())
    }

    /// The old row's JSON text exactly as PostgreSQL rendered it.
    pub fn old_json(&self) -> Option<&str> {
        self.inner.parts.old.as_deref()
    }

    /// The new row's JSON text exactly as PostgreSQL rendered it.
    pub fn new_json(&self) -> Option<&str> {
        self.inner.parts.new.as_deref()
    }

    /// The seed-format JSON payload (see [`Format::Seed`]).
    pub fn payload(&self) -> &[u8] {
        self.inner
            .payload
            .get_or_init(|| Format::Seed.encode(self, &Attempt::default()))
    }

    /// The seed-format JSON payload as text.
    pub fn payload_str(&self) -> &str {
        // The payload is assembled from UTF-8 strings only, so this never fails in practice.
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }

    /// The event's creation time as it appears in payloads: RFC 3339, microseconds, `Z`.
    pub fn created_at_rfc3339(&self) -> String {
        self.created_at()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    }
}

fn parse_once<'a>(cell: &'a OnceLock<Option<Value>>, raw: Option<&str>) -> Option<&'a Value> {
    cell.get_or_init(|| raw.and_then(|text| serde_json::from_str(text).ok()))
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(old: Option<&str>, new: Option<&str>, action: Action) -> Event {
        Event::from_parts(EventParts {
            seq: 42,
            salt: 0x123,
            created_at: DateTime::parse_from_rfc3339("2026-11-24T10:15:00.123456Z")
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
            trigger: "order_events".into(),
            schema: "public".into(),
            table: "orders".into(),
            action,
            old: old.map(Into::into),
            new: new.map(Into::into),
            ordering_key: None,
        })
    }

    #[test]
    fn seed_payload_keeps_postgres_json_verbatim() {
        let e = sample(
            Some(r#"{"id":9007199254740993,"n":1.10000000000000000001}"#),
            Some(r#"{"id":9007199254740993,"n":2}"#),
            Action::Update,
        );
        let expected = format!(
            r#"{{"id":"{}","schema":"public","table":"orders","trigger":"order_events","action":"UPDATE","created_at":"2026-11-24T10:15:00.123456Z","data":{{"old":{{"id":9007199254740993,"n":1.10000000000000000001}},"new":{{"id":9007199254740993,"n":2}}}}}}"#,
            e.id()
        );
        assert_eq!(e.payload_str(), expected);
    }

    #[test]
    fn accessors_parse_exactly_and_keep_column_order() {
        let e = sample(
            None,
            Some(r#"{"z":1,"a":12345678901234567890.5}"#),
            Action::Insert,
        );
        assert!(e.old().is_none());
        let new = e.new().and_then(Value::as_object);
        let keys: Vec<&String> = new.map(|m| m.keys().collect()).unwrap_or_default();
        assert_eq!(keys, ["z", "a"]);
        assert_eq!(
            new.and_then(|m| m.get("a")).map(ToString::to_string),
            Some("12345678901234567890.5".to_string())
        );
        assert_eq!(e.action().to_string(), "INSERT");
    }

    #[test]
    fn delete_and_truncate_have_null_images() {
        let d = sample(Some(r#"{"id":1}"#), None, Action::Delete);
        assert!(d
            .payload_str()
            .ends_with(r#""data":{"old":{"id":1},"new":null}}"#));
        let t = sample(None, None, Action::Truncate);
        assert!(t
            .payload_str()
            .ends_with(r#""data":{"old":null,"new":null}}"#));
    }

    #[test]
    fn hostile_names_are_escaped() {
        let e = Event::from_parts(EventParts {
            trigger: "a\"b".into(),
            schema: "my schema".into(),
            table: "Weird \"Name\"".into(),
            ..sample(None, None, Action::Manual).inner.parts.clone()
        });
        let v: Value = serde_json::from_slice(e.payload()).unwrap_or_default();
        assert_eq!(v["table"], "Weird \"Name\"");
        assert_eq!(v["trigger"], "a\"b");
    }
}
