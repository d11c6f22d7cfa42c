//! The Kafka destination under test: topics on tansu, read back by the Python
//! confluent-kafka client (see `kafka_topic`), and the Kafka-only flows — several tables
//! with each key setting, and one row's long run of updates.

use std::collections::BTreeMap;

use pgevents::{Format, Listener, Trigger};
use pgevents_sinks::{Env, KafkaConfig, KafkaSink, ResolveSink};
use tokio::time::Instant;

use super::kafka_topic::{partition_of, Message, Topic, KAFKA_BROKERS};
use super::process::OwnedServer;
use super::{database, retry_policy, Broker, Received, Running, POLL, WAIT};

/// Partitions of the test topics.
const PARTITIONS: u32 = 4;
/// Updates of the one row in [`one_row_in_order`].
const UPDATES: i64 = 1_000;

/// A topic of the test's own, on the machine's broker or on a tansu of the test's own.
pub struct Kafka {
    topic: Topic,
    server: Option<OwnedServer>,
    /// What the broker held when it was stopped: tansu keeps messages in memory, so a
    /// restarted broker starts empty (and the topic is created again).
    before_restart: Vec<Received>,
}

impl Kafka {
    /// A topic on the machine's broker (127.0.0.1:9092).
    pub async fn shared() -> Kafka {
        Kafka {
            topic: Topic::create(KAFKA_BROKERS, PARTITIONS).await,
            server: None,
            before_restart: Vec::new(),
        }
    }

    /// A topic on a tansu of the test's own, which [`Broker::stop`] kills and
    /// [`Broker::start`] starts again.
    pub async fn owned() -> Kafka {
        let tansu = which_tansu();
        let server = OwnedServer::launch(&tansu, |port, _dir| {
            let url = format!("tcp://127.0.0.1:{port}");
            [
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ]
            .map(String::from)
            .to_vec()
        })
        .await;
        let brokers = format!("127.0.0.1:{}", server.port());
        Kafka {
            topic: Topic::create(&brokers, PARTITIONS).await,
            server: Some(server),
            before_restart: Vec::new(),
        }
    }

    async fn now(&self) -> Result<Vec<Received>, String> {
        Ok(self
            .topic
            .messages()
            .await?
            .into_iter()
            .map(|m| Received {
                id: m.header("pgevents-id").unwrap_or_default().to_string(),
                payload: m.value,
            })
            .collect())
    }
}

/// The tansu binary: where `cargo install` puts it, or on PATH.
fn which_tansu() -> String {
    let home = std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo/bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    home.into_iter()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join("tansu"))
        .find(|bin| bin.is_file())
        .map(|bin| bin.display().to_string())
        .unwrap_or_else(|| {
            panic!("tansu is not installed: run scripts/start-kafka.sh (builds it once with cargo install)")
        })
}

/// A Kafka sink producing to `topic` with `key` (`"row"`, `"table"`, `"none"`).
fn kafka_sink(topic: &Topic, key: &str) -> KafkaSink {
    let config: KafkaConfig = toml::from_str(&format!(
        "brokers = {:?}\ntopic = {:?}\nkey = {key:?}",
        topic.brokers, topic.name
    ))
    .expect("kafka settings parse");
    config
        .resolve("kafka", Format::Seed, &Env::default())
        .expect("valid settings")
}

impl Broker for Kafka {
    type Sink = KafkaSink;
    const KEEPS_MESSAGES: bool = false;

    fn sink(&self) -> KafkaSink {
        kafka_sink(&self.topic, "row")
    }

    async fn count(&mut self) -> Result<usize, String> {
        Ok(self.before_restart.len() + self.now().await?.len())
    }

    async fn received(&mut self) -> Result<Vec<Received>, String> {
        let mut all = self.before_restart.clone();
        all.extend(self.now().await?);
        Ok(all)
    }

    async fn stop(&mut self) {
        self.before_restart = self.now().await.unwrap_or_else(|e| panic!("{e}"));
        self.server
            .as_mut()
            .expect("only a broker of the test's own is stopped")
            .stop(libc::SIGKILL)
            .await;
    }

    async fn start(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.start().await;
            self.topic.make(PARTITIONS).await;
        }
    }

    async fn cleanup(&mut self) {
        self.topic.delete().await;
    }
}

/// The tables of [`three_tables`], one per key setting.
const KEYED_TABLES: [(&str, &str); 3] = [
    ("by_row", "row"),
    ("by_table", "table"),
    ("unkeyed", "none"),
];
/// Rows per table in [`three_tables`]; rows 1 to 3 are deleted at the end.
const KEYED_ROWS: i64 = 10;
/// Events per table in [`three_tables`]: inserts, updates, deletes.
const KEYED_EVENTS: usize = (KEYED_ROWS * 2 + 3) as usize;

/// Row `id`'s image (`to_json`) in the tables of [`three_tables`].
fn keyed_image(id: i64, v: &str) -> String {
    format!(r#"{{"id":{id},"v":"{v}"}}"#)
}

/// Polls `topic` until it holds `n` messages, or panics at `deadline`.
async fn wait_for_messages(topic: &Topic, n: usize, deadline: Instant) -> Vec<Message> {
    let mut last = Err("not asked yet".to_string());
    while Instant::now() < deadline {
        last = topic.messages().await;
        if last.as_ref().is_ok_and(|m| m.len() >= n) {
            return last.unwrap_or_default();
        }
        tokio::time::sleep(POLL).await;
    }
    let summary = last.map(|m| m.len());
    panic!(
        "timed out waiting for {n} messages on {}: {summary:?}",
        topic.name
    );
}

/// Three tables routed to one topic, with keys `row`, `table` and `none`: inserts, updates
/// and deletes, each event read back by the outside client with the right key, partition,
/// headers and exact payload, and each row's events in commit order in one partition.
pub async fn three_tables() {
    let deadline = Instant::now() + WAIT;
    let ddl: String = KEYED_TABLES
        .iter()
        .map(|(table, _)| format!("CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL);"))
        .collect();
    let (url, client) = database(&ddl).await;
    let topic = Topic::create(KAFKA_BROKERS, PARTITIONS).await;
    let mut builder = Listener::builder(&url).retry(retry_policy());
    for (table, key) in KEYED_TABLES {
        builder =
            builder.sink(Trigger::for_table(table, kafka_sink(&topic, key)).expect("a table name"));
    }
    let running = Running::start(builder).await;
    for (table, _) in KEYED_TABLES {
        client
            .batch_execute(&format!(
                "INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, {KEYED_ROWS}) g;
                 UPDATE {table} SET v = v || '+';
                 DELETE FROM {table} WHERE id <= 3;"
            ))
            .await
            .expect("write the tables");
    }
    let messages = wait_for_messages(&topic, KEYED_EVENTS * KEYED_TABLES.len(), deadline).await;
    running.stop().await;
    assert_eq!(
        messages.len(),
        KEYED_EVENTS * KEYED_TABLES.len(),
        "no duplicates without a fault"
    );

    let row_keys: BTreeMap<i64, Option<i64>> = client
        .query("SELECT seq, row_key FROM pgevents.event", &[])
        .await
        .expect("read the event log")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Per key setting and row: the actions in the order the topic holds them.
    let mut actions: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
    for m in &messages {
        let id = m.header("pgevents-id").expect("a pgevents-id header");
        let json: serde_json::Value = serde_json::from_slice(&m.value).expect("a JSON payload");
        assert_eq!(json["id"], id);
        let table = json["table"].as_str().expect("table").to_string();
        let action = json["action"].as_str().expect("action").to_string();
        let trigger = format!("public.{table}");
        assert_eq!(m.header("pgevents-trigger"), Some(trigger.as_str()));
        assert_eq!(m.header("pgevents-action"), Some(action.as_str()));
        let row = json["data"]["new"]["id"]
            .as_i64()
            .or(json["data"]["old"]["id"].as_i64())
            .expect("the row's id");
        let (old, new) = match action.as_str() {
            "INSERT" => ("null".into(), keyed_image(row, &format!("v{row}"))),
            "UPDATE" => (
                keyed_image(row, &format!("v{row}")),
                keyed_image(row, &format!("v{row}+")),
            ),
            _ => (keyed_image(row, &format!("v{row}+")), "null".into()),
        };
        let expected = format!(
            r#"{{"id":"{id}","schema":"public","table":"{table}","trigger":"{trigger}","action":"{action}","created_at":"{}","data":{{"old":{old},"new":{new}}}}}"#,
            json["created_at"].as_str().expect("created_at")
        );
        assert_eq!(std::str::from_utf8(&m.value), Ok(expected.as_str()));

        let seq = pgevents_event::seq_from_id(id.parse().expect("a UUID")).expect("a seq");
        let key = match table.as_str() {
            "by_row" => row_keys.get(&seq).copied().flatten().map(|k| k.to_string()),
            "by_table" => Some("public.by_table".to_string()),
            _ => None,
        };
        assert_eq!(m.key, key, "the key of {table} row {row}'s {action}");
        if let Some(key) = &key {
            assert_eq!(
                m.partition,
                partition_of(key.as_bytes(), PARTITIONS),
                "{m:?}"
            );
        }
        if table != "unkeyed" {
            actions.entry((table, row)).or_default().push(action);
        }
    }
    assert!(
        row_keys.values().all(Option::is_some),
        "rows with primary keys have ordering keys"
    );
    assert_eq!(actions.len(), 2 * KEYED_ROWS as usize);
    for ((table, row), seen) in actions {
        let mut expected = vec!["INSERT", "UPDATE"];
        if row <= 3 {
            expected.push("DELETE");
        }
        assert_eq!(seen, expected, "{table} row {row}'s events out of order");
    }
    topic.delete().await;
}

/// One row inserted, then updated 1,000 times in as many transactions: every event lands
/// in the partition of the row's key, once, in commit order.
pub async fn one_row_in_order() {
    let deadline = Instant::now() + WAIT;
    let (url, client) = database("CREATE TABLE one (id int PRIMARY KEY, n int NOT NULL)").await;
    let topic = Topic::create(KAFKA_BROKERS, PARTITIONS).await;
    let running = Running::start(
        Listener::builder(&url)
            .retry(retry_policy())
            .sink(Trigger::for_table("one", kafka_sink(&topic, "row")).expect("a table name")),
    )
    .await;
    client
        .batch_execute("INSERT INTO one VALUES (1, 0)")
        .await
        .expect("insert the row");
    for _ in 0..UPDATES {
        client
            .batch_execute("UPDATE one SET n = n + 1")
            .await
            .expect("update the row");
    }
    let events = UPDATES as usize + 1;
    let messages = wait_for_messages(&topic, events, deadline).await;
    running.stop().await;
    assert_eq!(messages.len(), events, "every event once");
    let key = messages[0].key.clone().expect("a key");
    let partition = partition_of(key.as_bytes(), PARTITIONS);
    let mut steps = Vec::new();
    for m in &messages {
        assert_eq!(
            (m.key.as_deref(), m.partition),
            (Some(key.as_str()), partition)
        );
        let json: serde_json::Value = serde_json::from_slice(&m.value).expect("a JSON payload");
        steps.push(json["data"]["new"]["n"].as_i64().expect("data.new.n"));
    }
    assert_eq!(
        steps,
        (0..=UPDATES).collect::<Vec<_>>(),
        "out of commit order"
    );
    topic.delete().await;
}
