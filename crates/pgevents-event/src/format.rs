//! Payload formats: the bytes an event is delivered as.

use serde::Deserialize;

use crate::{Action, Event};

/// Which JSON body an event is delivered as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The seed's object: `{id, schema, table, trigger, action, created_at, data: {old, new}}`.
    #[default]
    Seed,
    /// Hasura's event-trigger body, so existing Hasura webhooks work unchanged.
    Hasura,
}

/// Where a delivery stands in its retry policy (Hasura's `delivery_info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempt {
    /// How many retries came before this attempt (0 on the first attempt).
    pub current_retry: u32,
    /// The trigger's `max_retries`.
    pub max_retries: u32,
}

impl Format {
    /// Encodes `event` for delivery attempt `attempt`.
    ///
    /// Row images are spliced in as PostgreSQL rendered them, never re-parsed, so numbers,
    /// column order and nested JSON reach the receiver exactly.
    pub fn encode(self, event: &Event, attempt: &Attempt) -> Vec<u8> {
        let old = event.old_json().unwrap_or("null");
        let new = event.new_json().unwrap_or("null");
        let mut out = String::with_capacity(200 + old.len() + new.len());
        let id = event.id();
        let created_at = event.created_at_rfc3339();
        match self {
            Format::Seed => {
                out.push_str("{\"id\":\"");
                out.push_str(&id.to_string());
                out.push_str("\",\"schema\":");
                push_json_str(&mut out, event.schema());
                out.push_str(",\"table\":");
                push_json_str(&mut out, event.table());
                out.push_str(",\"trigger\":");
                push_json_str(&mut out, event.trigger());
                out.push_str(",\"action\":\"");
                out.push_str(event.action().as_str());
                out.push_str("\",\"created_at\":\"");
                out.push_str(&created_at);
                out.push_str("\",\"data\":{\"old\":");
            }
            Format::Hasura => {
                let simple = id.simple().to_string();
                out.push_str("{\"id\":\"");
                out.push_str(&id.to_string());
                out.push_str("\",\"created_at\":\"");
                out.push_str(&created_at);
                out.push_str("\",\"trigger\":{\"name\":");
                push_json_str(&mut out, event.trigger());
                out.push_str("},\"table\":{\"schema\":");
                push_json_str(&mut out, event.schema());
                out.push_str(",\"name\":");
                push_json_str(&mut out, event.table());
                out.push_str("},\"delivery_info\":{\"current_retry\":");
                out.push_str(&attempt.current_retry.to_string());
                out.push_str(",\"max_retries\":");
                out.push_str(&attempt.max_retries.to_string());
                out.push_str("},\"event\":{\"op\":\"");
                // Hasura sends a row read by hand as a manual invocation on that row.
                out.push_str(match event.action() {
                    Action::Read => Action::Manual.as_str(),
                    action => action.as_str(),
                });
                out.push_str("\",\"session_variables\":null,\"trace_context\":{\"trace_id\":\"");
                out.push_str(&simple);
                out.push_str("\",\"span_id\":\"");
                out.push_str(&simple[16..]);
                out.push_str("\"},\"data\":{\"old\":");
            }
        }
        out.push_str(old);
        out.push_str(",\"new\":");
        out.push_str(new);
        out.push_str(match self {
            Format::Seed => "}}",
            Format::Hasura => "}}}",
        });
        out.into_bytes()
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventParts;
    use serde_json::Value;

    fn event(action: Action, old: Option<&str>, new: Option<&str>) -> Event {
        Event::from_parts(EventParts {
            seq: 1,
            salt: 1,
            created_at: chrono::Utc::now(),
            trigger: "order_events".into(),
            schema: "public".into(),
            table: "orders".into(),
            action,
            old: old.map(String::from),
            new: new.map(String::from),
            ordering_key: None,
        })
    }

    #[test]
    fn hasura_body_has_hasuras_keys() {
        let e = event(Action::Update, Some(r#"{"id":1}"#), Some(r#"{"id":2}"#));
        let body = Format::Hasura.encode(
            &e,
            &Attempt {
                current_retry: 2,
                max_retries: 5,
            },
        );
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["id"], e.id().to_string());
        assert_eq!(v["trigger"]["name"], "order_events");
        assert_eq!(v["table"]["schema"], "public");
        assert_eq!(v["table"]["name"], "orders");
        assert_eq!(v["event"]["op"], "UPDATE");
        assert_eq!(v["event"]["data"]["old"]["id"], 1);
        assert_eq!(v["event"]["data"]["new"]["id"], 2);
        assert_eq!(v["delivery_info"]["current_retry"], 2);
        assert_eq!(v["delivery_info"]["max_retries"], 5);
        assert!(v["event"]["trace_context"]["trace_id"].is_string());
    }

    #[test]
    fn a_read_row_is_a_manual_op_for_hasura_and_read_in_the_seed() {
        let e = event(Action::Read, None, Some(r#"{"id":2}"#));
        let hasura: Value = serde_json::from_slice(&Format::Hasura.encode(&e, &Attempt::default()))
            .unwrap_or_default();
        assert_eq!(hasura["event"]["op"], "MANUAL");
        assert_eq!(hasura["event"]["data"]["new"]["id"], 2);
        assert!(hasura["event"]["data"]["old"].is_null());
        let seed: Value = serde_json::from_slice(&Format::Seed.encode(&e, &Attempt::default()))
            .unwrap_or_default();
        assert_eq!(seed["action"], "READ");
        assert!(seed["data"]["old"].is_null());
    }
}
