//! `pgevents check` asks Kafka destinations what only they can tell: brokers that do not
//! answer and topics that do not exist are listed like every other problem (exit 2, the
//! trigger's field named, what to do said). Needs the Kafka-protocol broker on
//! 127.0.0.1:9092 (`scripts/start-kafka.sh`) for the missing-topic half.

use crate::support::{config, run, text, write_config, Db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_flags_an_unreachable_kafka_broker_and_a_missing_topic() {
    let db = Db::fresh("kafka_check").await;
    db.client
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        .await
        .expect("table");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let missing = format!("pgevents.check.missing.{}", std::process::id());
    let triggers = format!(
        "[[trigger]]\nname = \"down\"\ntable = \"orders\"\n\
         kafka = {{ brokers = \"{closed}\", topic = \"pg.orders\" }}\n\n\
         [[trigger]]\nname = \"no_topic\"\ntable = \"orders\"\n\
         kafka = {{ brokers = \"127.0.0.1:9092\", topic = \"{missing}\" }}\n"
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cfg = write_config(&dir, &config(&db.url, &triggers));
    let out = run(&["check", "--config", &cfg.display().to_string()], &[]).await;
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "check exits 2:\n{err}");
    for needle in [
        format!("trigger[\"down\"].kafka: no Kafka broker at {closed} answered"),
        format!("trigger[\"no_topic\"].kafka: topic {missing} does not exist on the Kafka brokers at 127.0.0.1:9092: create it"),
    ] {
        assert!(
            err.contains(&needle),
            "check says {needle:?} (a missing-topic miss means no broker on 127.0.0.1:9092: run scripts/start-kafka.sh):\n{err}"
        );
    }
}
