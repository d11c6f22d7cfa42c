//! Stdout sink tests: one line per event, whole, and a failed write is retried.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pgevents_delivery::{Delivery, Outcome, Report, Sink};
use pgevents_event::{Action, Attempt, Event, EventParts, Format};

use super::StdoutConfig;
use super::StdoutSink;
use crate::{Env, ResolveSink};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::BrokenPipe, "pipe closed"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn delivery(new: &str) -> Delivery {
    Delivery {
        event: Event::from_parts(EventParts {
            seq: 1,
            salt: 1,
            created_at: chrono::Utc::now(),
            trigger: "t".into(),
            schema: "public".into(),
            table: "docs".into(),
            action: Action::Insert,
            old: None,
            new: Some(new.into()),
            ordering_key: None,
        }),
        attempt: Attempt::default(),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn writes_one_json_line_per_event() {
    let captured = Captured::default();
    let sink = StdoutSink::with_writer(Format::Seed, captured.clone());
    let first = delivery(r#"{"id":1}"#);
    let second = delivery("{\"id\":2,\n \"body\": {\"a\":\r\n1}}");
    for d in [first.clone(), second.clone()] {
        assert_eq!(sink.deliver(d).await, Outcome::Delivered(Report::default()));
    }
    let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0].as_bytes(), first.event.payload());
    let parsed: serde_json::Value = serde_json::from_str(lines[1]).expect("a JSON line");
    assert_eq!(parsed["data"]["new"]["body"]["a"], 1);
}

#[tokio::test]
async fn a_failed_write_is_retried() {
    let sink = StdoutSink::with_writer(Format::Seed, Broken);
    match sink.deliver(delivery("{}")).await {
        Outcome::Retry {
            report,
            after: None,
        } => {
            assert!(report.error.unwrap_or_default().contains("pipe closed"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn settings_are_an_empty_table() {
    let config: StdoutConfig = toml::from_str("").expect("empty table");
    assert!(config.validate("stdout", &Env::default()).is_empty());
    let sink = config
        .resolve("stdout", Format::Hasura, &Env::default())
        .expect("always resolves");
    assert_eq!(sink.format(), Format::Hasura);
    assert!(toml::from_str::<StdoutConfig>("pretty = true").is_err());
}
