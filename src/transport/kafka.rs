//! Publishing records: the [`RecordSink`] contract and its Kafka implementation.
//!
//! Contract: `send` queues one record and returns an [`AckFuture`] that resolves once the
//! record is durably acknowledged (Kafka: `acks=all` on an idempotent producer). Acks resolve
//! in send order for one sink; a failed ack means this record and every later one may be
//! missing, so the caller restarts from its last checkpoint (duplicates allowed, loss never).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::envelope::Record;

pub type AckFuture = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    #[error("kafka client: {0}")]
    Client(String),
    #[error("record not acknowledged: {0}")]
    Delivery(String),
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}

/// Where capture sends records.
pub trait RecordSink: Send {
    /// Queue `record`; waits only while the client's queue is full.
    fn send(&mut self, record: &Record) -> impl Future<Output = Result<AckFuture, SinkError>> + Send;
    /// Wait for everything queued to be acknowledged (or `timeout`).
    fn flush(&mut self, timeout: Duration) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// How long a topic check may take before it counts as a (transient) failure.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long librdkafka keeps retrying one record before reporting it undeliverable.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
}

/// Client settings shared by producers and consumers.
pub fn client_config(bootstrap: &[String]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap.join(","));
    // Brokers given as IPv4 literals: don't let the client try IPv6 first.
    if bootstrap
        .iter()
        .all(|b| b.rsplit_once(':').is_some_and(|(h, _)| h.parse::<std::net::Ipv4Addr>().is_ok()))
    {
        config.set("broker.address.family", "v4");
    }
    config
}

impl KafkaSink {
    /// A producer for `topic`, creating the topic (1 partition, so order is total) if missing.
    pub async fn connect(bootstrap: &[String], topic: &str) -> Result<Self, SinkError> {
        ensure_topic(bootstrap, topic, 1).await?;
        let producer: FutureProducer = client_config(bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", MESSAGE_TIMEOUT.as_millis().to_string())
            .create()
            .map_err(|e| SinkError::Client(e.to_string()))?;
        Ok(Self { producer, topic: topic.to_string() })
    }
}

impl RecordSink for KafkaSink {
    async fn send(&mut self, record: &Record) -> Result<AckFuture, SinkError> {
        loop {
            let message = FutureRecord::to(&self.topic).key(&record.key).payload(&record.payload);
            match self.producer.send_result(message) {
                Ok(delivery) => {
                    return Ok(Box::pin(async move {
                        match delivery.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, _))) => Err(SinkError::Delivery(e.to_string())),
                            Err(_) => Err(SinkError::Delivery("the producer was dropped".into())),
                        }
                    }));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(SinkError::Client(e.to_string())),
            }
        }
    }

    async fn flush(&mut self, timeout: Duration) -> Result<(), SinkError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| SinkError::Client(e.to_string()))?
            .map_err(|e| SinkError::Delivery(e.to_string()))
    }
}

/// Create `topic` with `partitions` if it does not exist.
pub async fn ensure_topic(bootstrap: &[String], topic: &str, partitions: i32) -> Result<(), SinkError> {
    let fail = |reason: String| SinkError::Topic { topic: topic.to_string(), reason };
    let admin: AdminClient<DefaultClientContext> =
        client_config(bootstrap).create().map_err(|e| SinkError::Client(e.to_string()))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options =
        AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    let results = admin.create_topics([&new], &options).await.map_err(|e| fail(e.to_string()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(fail(code.to_string())),
        }
    }
    Ok(())
}

/// `ferry tail`'s sink: each record as a JSON line on stdout, acknowledged at once.
pub struct StdoutSink;

impl RecordSink for StdoutSink {
    async fn send(&mut self, record: &Record) -> Result<AckFuture, SinkError> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(&record.payload)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| SinkError::Delivery(format!("stdout: {e}")))?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    async fn flush(&mut self, _timeout: Duration) -> Result<(), SinkError> {
        use std::io::Write;
        std::io::stdout().flush().map_err(|e| SinkError::Delivery(format!("stdout: {e}")))
    }
}
