//! A Kafka topic of a test's own, created and read back with a client that is not
//! pgevents': the Python `confluent-kafka` (`kafka.py` beside this file), run as a subprocess.
//!
//! The broker is tansu on 127.0.0.1:9092 unless a test starts its own;
//! `scripts/start-kafka.sh` starts it and installs the Python client.

use std::process::Stdio;
use std::time::Duration;

use pgevents_testkit::brokers::unique;

/// The machine's Kafka-protocol broker.
pub const KAFKA_BROKERS: &str = "127.0.0.1:9092";
/// What to run when the broker or the Python client is missing.
const START: &str = "run scripts/start-kafka.sh (starts tansu on 127.0.0.1:9092 and installs the confluent-kafka Python client)";
/// The longest one call of the Python client may take.
const CALL: Duration = Duration::from_secs(60);

/// One message as the outside client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// `(name, value)` in the order the message carries them.
    pub headers: Vec<(String, String)>,
    pub value: Vec<u8>,
}

impl Message {
    /// The value of header `name`, if the message has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A topic on a broker, made by [`Topic::create`].
#[derive(Debug, Clone)]
pub struct Topic {
    pub brokers: String,
    pub name: String,
}

impl Topic {
    /// A new topic with `partitions` partitions and a name no other test (or run) uses.
    pub async fn create(brokers: &str, partitions: u32) -> Topic {
        let topic = Topic::missing(brokers);
        topic.make(partitions).await;
        topic
    }

    /// Creates this topic (again: a broker keeping topics in memory forgets them when it
    /// restarts) with `partitions` partitions.
    pub async fn make(&self, partitions: u32) {
        self.client(&["create", &partitions.to_string()])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A name for a topic that does not exist.
    pub fn missing(brokers: &str) -> Topic {
        Topic {
            brokers: brokers.to_string(),
            name: unique("pgevents_test"),
        }
    }

    /// Every message of the topic, in (partition, offset) order.
    pub async fn messages(&self) -> Result<Vec<Message>, String> {
        let out = self.client(&["consume"]).await?;
        out.lines().map(parse).collect()
    }

    /// Deletes the topic.
    pub async fn delete(&self) {
        if let Err(e) = self.client(&["delete"]).await {
            eprintln!("could not delete the test topic: {e}");
        }
    }

    async fn client(&self, args: &[&str]) -> Result<String, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/kafka.py");
        let run = tokio::process::Command::new("python3")
            .arg(script)
            .arg(args[0])
            .arg(&self.brokers)
            .arg(&self.name)
            .args(&args[1..])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(CALL, run)
            .await
            .map_err(|_| format!("kafka.py {} took over {CALL:?}; {START}", args[0]))?
            .map_err(|e| format!("could not run python3 kafka.py: {e}; {START}"))?;
        if !output.status.success() {
            return Err(format!(
                "kafka.py {} {} failed: {}; is the broker running? {START}",
                args[0],
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        String::from_utf8(output.stdout).map_err(|e| format!("kafka.py printed non-UTF-8: {e}"))
    }
}

fn parse(line: &str) -> Result<Message, String> {
    let json: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("kafka.py printed {line:?}: {e}"))?;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let hex = json["value"].as_str().unwrap_or_default();
    let value = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| format!("kafka.py printed a bad value in {line:?}: {e}"))?;
    Ok(Message {
        partition: json["partition"].as_i64().unwrap_or(-1) as i32,
        offset: json["offset"].as_i64().unwrap_or(-1),
        key: text(&json["key"]),
        headers: json["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), text(v).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default(),
        value,
    })
}

/// The partition Kafka's default partitioner (and pgevents') puts `key` in: murmur2 of the
/// key's bytes, made positive, modulo the partition count — as Java clients compute it.
pub fn partition_of(key: &[u8], partitions: u32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions) as i32
}
