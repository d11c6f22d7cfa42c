//! The three broker destinations under test: each makes its sink from the settings a user
//! would write, and reads back what the broker holds, in the broker's order.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use pgevents::Format;
use pgevents_sinks::ResolveSink;
use pgevents_sinks::{AmqpConfig, AmqpSink, Env, NatsConfig, NatsSink, RedisConfig, RedisSink};
use pgevents_testkit::brokers::{unique, AMQP_URL, NATS_URL, REDIS_URL};

use super::process::{OwnedServer, RabbitApp};
use super::{Broker, Received};

/// A stream's entries: (entry id, [(field, value)]).
type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// How long one question to a broker may take.
const ASK: Duration = Duration::from_secs(10);

async fn ask<T, E: std::fmt::Display>(
    what: &str,
    question: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(ASK, question).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(format!("{what}: {error}")),
        Err(_) => Err(format!("{what}: no answer within {ASK:?}")),
    }
}

// ---- NATS ------------------------------------------------------------------------------

/// A JetStream stream capturing a subject of the test's own.
pub struct Nats {
    url: String,
    subject: String,
    stream: String,
    context: jetstream::Context,
    server: Option<OwnedServer>,
}

impl Nats {
    /// A memory stream on the machine's server (127.0.0.1:4222).
    pub async fn shared() -> Nats {
        Nats::create(NATS_URL.into(), stream::StorageType::Memory, None).await
    }

    /// A file stream on a `nats-server -js` of the test's own, which [`Broker::stop`]
    /// stops (SIGTERM, a clean shutdown) and [`Broker::start`] starts again.
    pub async fn owned() -> Nats {
        let server = OwnedServer::launch("/usr/sbin/nats-server", |port, dir| {
            vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-js".into(),
                "-sd".into(),
                dir.display().to_string(),
            ]
        })
        .await;
        let url = format!("nats://127.0.0.1:{}", server.port());
        Nats::create(url, stream::StorageType::File, Some(server)).await
    }

    async fn create(
        url: String,
        storage: stream::StorageType,
        server: Option<OwnedServer>,
    ) -> Nats {
        let client = ask("connect to NATS", async_nats::connect(url.as_str()))
            .await
            .expect("NATS with JetStream runs (see .ci/run)");
        let context = jetstream::new(client);
        let subject = unique("pgevents.e2e");
        let stream = unique("PGEVENTS_E2E").to_uppercase();
        ask(
            "create the stream",
            context.create_stream(stream::Config {
                name: stream.clone(),
                subjects: vec![subject.clone()],
                storage,
                ..stream::Config::default()
            }),
        )
        .await
        .expect("create the test stream");
        Nats {
            url,
            subject,
            stream,
            context,
            server,
        }
    }

    async fn last_sequence(&self) -> Result<u64, String> {
        let mut stream = ask("get the stream", self.context.get_stream(&self.stream)).await?;
        let info = ask("stream info", stream.info()).await?;
        Ok(info.state.last_sequence)
    }
}

impl Broker for Nats {
    type Sink = NatsSink;

    fn sink(&self) -> NatsSink {
        NatsConfig {
            url: Some(self.url.clone()),
            subject: Some(self.subject.clone()),
            ..NatsConfig::default()
        }
        .resolve("nats", Format::Seed, &Env::default())
        .expect("valid settings")
    }

    async fn count(&mut self) -> Result<usize, String> {
        self.last_sequence()
            .await
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn received(&mut self) -> Result<Vec<Received>, String> {
        let stream = ask("get the stream", self.context.get_stream(&self.stream)).await?;
        let last = self.last_sequence().await?;
        let mut received = Vec::new();
        for sequence in 1..=last {
            let message = ask("get a message", stream.get_raw_message(sequence)).await?;
            let id = message
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            received.push(Received {
                id,
                payload: message.payload.to_vec(),
            });
        }
        Ok(received)
    }

    async fn stop(&mut self) {
        self.server
            .as_mut()
            .expect("only a server of the test's own is stopped")
            .stop(libc::SIGTERM)
            .await;
    }

    async fn start(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.start().await;
        }
    }

    async fn cleanup(&mut self) {
        let _ = ask(
            "delete the stream",
            self.context.delete_stream(&self.stream),
        )
        .await;
    }
}

// ---- Redis -----------------------------------------------------------------------------

/// A stream key of the test's own.
pub struct Redis {
    url: String,
    stream: String,
    client: redis::Client,
    server: Option<OwnedServer>,
}

impl Redis {
    /// A stream on the machine's server (127.0.0.1:6379).
    pub fn shared() -> Redis {
        Redis::create(REDIS_URL.into(), None)
    }

    /// A stream on a `redis-server` of the test's own, with every write fsynced to its
    /// append-only file (so an acknowledged entry survives a crash), which
    /// [`Broker::stop`] kills (SIGKILL, a crash) and [`Broker::start`] starts again.
    pub async fn owned() -> Redis {
        let server = OwnedServer::launch("/usr/bin/redis-server", |port, dir| {
            vec![
                "--bind".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                "always".into(),
                "--dir".into(),
                dir.display().to_string(),
            ]
        })
        .await;
        let url = format!("redis://127.0.0.1:{}", server.port());
        Redis::create(url, Some(server))
    }

    fn create(url: String, server: Option<OwnedServer>) -> Redis {
        let client = redis::Client::open(url.as_str()).expect("a Redis URL");
        Redis {
            url,
            stream: unique("pgevents:e2e"),
            client,
            server,
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        ask(
            "connect to Redis",
            self.client.get_multiplexed_async_connection(),
        )
        .await
    }
}

impl Broker for Redis {
    type Sink = RedisSink;

    fn sink(&self) -> RedisSink {
        RedisConfig {
            url: Some(self.url.clone()),
            stream: Some(self.stream.clone()),
            ..RedisConfig::default()
        }
        .resolve("redis", Format::Seed, &Env::default())
        .expect("valid settings")
    }

    async fn count(&mut self) -> Result<usize, String> {
        let mut connection = self.connection().await?;
        ask(
            "XLEN",
            redis::cmd("XLEN")
                .arg(&self.stream)
                .query_async::<usize>(&mut connection),
        )
        .await
    }

    async fn received(&mut self) -> Result<Vec<Received>, String> {
        let mut connection = self.connection().await?;
        let entries: Entries = ask(
            "XRANGE",
            redis::cmd("XRANGE")
                .arg(&self.stream)
                .arg("-")
                .arg("+")
                .query_async(&mut connection),
        )
        .await?;
        entries
            .into_iter()
            .map(|(entry, fields)| match &fields[..] {
                [(id_field, id), (payload_field, payload)]
                    if id_field == "id" && payload_field == "payload" =>
                {
                    Ok(Received {
                        id: String::from_utf8_lossy(id).into_owned(),
                        payload: payload.clone(),
                    })
                }
                _ => Err(format!("entry {entry} has unexpected fields")),
            })
            .collect()
    }

    async fn stop(&mut self) {
        self.server
            .as_mut()
            .expect("only a server of the test's own is stopped")
            .stop(libc::SIGKILL)
            .await;
    }

    async fn start(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.start().await;
        }
    }

    async fn cleanup(&mut self) {
        if let Ok(mut connection) = self.connection().await {
            let _ = ask(
                "DEL",
                redis::cmd("DEL")
                    .arg(&self.stream)
                    .query_async::<()>(&mut connection),
            )
            .await;
        }
    }
}

// ---- AMQP ------------------------------------------------------------------------------

/// A durable direct exchange of the test's own, bound to a durable queue that keeps every
/// message until the test reads it.
pub struct Amqp {
    exchange: String,
    queue: String,
    taken: Vec<Received>,
    app: RabbitApp,
}

impl Amqp {
    pub async fn new() -> Amqp {
        let amqp = Amqp {
            exchange: unique("pgevents_e2e"),
            queue: unique("pgevents_e2e_queue"),
            taken: Vec::new(),
            app: RabbitApp::new(),
        };
        let (_connection, channel) = amqp
            .channel()
            .await
            .expect("RabbitMQ runs on 127.0.0.1:5672 (see .ci/run)");
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                amqp.exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await
            .expect("declare the exchange");
        channel
            .queue_declare(
                amqp.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the queue");
        channel
            .queue_bind(
                amqp.queue.as_str().into(),
                amqp.exchange.as_str().into(),
                "orders".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the queue");
        amqp
    }

    /// A channel on a new connection (the broker may have restarted since the last one).
    async fn channel(&self) -> Result<(Connection, Channel), String> {
        let connection = ask(
            "connect to RabbitMQ",
            Connection::connect(AMQP_URL, ConnectionProperties::default()),
        )
        .await?;
        let channel = ask("open a channel", connection.create_channel()).await?;
        Ok((connection, channel))
    }
}

impl Broker for Amqp {
    type Sink = AmqpSink;

    fn sink(&self) -> AmqpSink {
        AmqpConfig {
            url: Some(AMQP_URL.into()),
            exchange: Some(self.exchange.clone()),
            routing_key: Some("orders".into()),
            ..AmqpConfig::default()
        }
        .resolve("amqp", Format::Seed, &Env::default())
        .expect("valid settings")
    }

    async fn count(&mut self) -> Result<usize, String> {
        let (_connection, channel) = self.channel().await?;
        let queue = ask(
            "inspect the queue",
            channel.queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        Ok(self.taken.len() + queue.message_count() as usize)
    }

    async fn received(&mut self) -> Result<Vec<Received>, String> {
        let (_connection, channel) = self.channel().await?;
        let take = BasicGetOptions { no_ack: true };
        while let Some(message) = ask(
            "basic.get",
            channel.basic_get(self.queue.as_str().into(), take),
        )
        .await?
        {
            let id = message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_string())
                .unwrap_or_default();
            self.taken.push(Received {
                id,
                payload: message.delivery.data,
            });
        }
        Ok(self.taken.clone())
    }

    async fn stop(&mut self) {
        self.app.stop().await;
    }

    async fn start(&mut self) {
        self.app.start().await;
    }

    async fn cleanup(&mut self) {
        if let Ok((_connection, channel)) = self.channel().await {
            let _ = ask(
                "delete the queue",
                channel.queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default()),
            )
            .await;
            let _ = ask(
                "delete the exchange",
                channel.exchange_delete(
                    self.exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                ),
            )
            .await;
        }
    }
}
