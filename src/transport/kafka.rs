//! Publishing records: the [`RecordSink`] contract and its Kafka implementation.
//!
//! Contract: `send` queues one record and returns an [`AckFuture`] that resolves once the
//! record is durably acknowledged (Kafka: `acks=all` on an idempotent producer: the record is
//! on `min.insync.replicas` brokers, so it survives the loss of one fewer; capture refuses a
//! topic that keeps fewer copies than configured). Acks resolve
//! in send order for one sink; a failed ack means this record and every later one may be
//! missing, so the caller restarts from its last checkpoint (duplicates allowed, loss never).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::envelope::Record;
use crate::config::KafkaConfig;

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

/// The longest wait between attempts to reconnect to a broker.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Client settings shared by producers and consumers.
pub fn client_config(bootstrap: &[String]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap.join(","));
    // librdkafka waits up to 10 s between attempts to reach a broker that went away; cap it so
    // capture and apply resume within about a second of the broker's return.
    config.set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX.as_millis().to_string());
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
    /// A producer for `topic`, creating the topic (1 partition, so order is total) if missing;
    /// refused when the topic keeps fewer copies than `kafka` asks for.
    pub async fn connect(kafka: &KafkaConfig, topic: &str) -> Result<Self, SinkError> {
        let bootstrap = &kafka.bootstrap;
        ensure_topic(kafka, topic, 1).await?;
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

/// Create `topic` with `partitions`, `kafka.replication_factor` copies and
/// `min.insync.replicas` if it does not exist. An existing topic that keeps fewer copies than
/// configured is refused (unless `kafka.allow_under_replicated`): `acks=all` would then
/// acknowledge records that one broker's loss can erase.
pub async fn ensure_topic(kafka: &KafkaConfig, topic: &str, partitions: i32) -> Result<(), SinkError> {
    let fail = |reason: String| SinkError::Topic { topic: topic.to_string(), reason };
    let admin: AdminClient<DefaultClientContext> =
        client_config(&kafka.bootstrap).create().map_err(|e| SinkError::Client(e.to_string()))?;
    let min_insync = kafka.min_insync_replicas.to_string();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(kafka.replication_factor))
        .set("min.insync.replicas", &min_insync);
    let options =
        AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    let results = admin.create_topics([&new], &options).await.map_err(|e| fail(e.to_string()))?;
    for result in results {
        match result {
            Ok(_) => return Ok(()),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(fail(code.to_string())),
        }
    }
    if kafka.allow_under_replicated {
        return Ok(());
    }
    let metadata = metadata(kafka, Some(topic), ADMIN_TIMEOUT)
        .await
        .map_err(|e| fail(format!("reading the topic's metadata: {e}")))?;
    let replicas = fewest_replicas(&metadata, topic)
        .ok_or_else(|| fail("the broker lists no partition of the topic".into()))?;
    match existing_topic_problem(kafka, &admin, topic, replicas).await.map_err(fail)? {
        Some(problem) => Err(fail(problem)),
        None => Ok(()),
    }
}

/// Why an existing `topic` keeping `replicas` copies is below `kafka`'s settings: the copies
/// first, then (when more than one is asked for) its `min.insync.replicas`.
async fn existing_topic_problem(
    kafka: &KafkaConfig,
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    replicas: i32,
) -> Result<Option<String>, String> {
    if let Some(problem) = durability_problem(kafka, replicas, None) {
        return Ok(Some(problem));
    }
    if kafka.min_insync_replicas > 1 {
        let options =
            AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
        let insync = topic_min_insync(admin, topic, &options).await?;
        return Ok(durability_problem(kafka, replicas, Some(insync)));
    }
    Ok(None)
}

/// The cluster's metadata, of `topic` only or of every topic (a blocking request in rdkafka:
/// off the async threads).
async fn metadata(
    kafka: &KafkaConfig,
    topic: Option<&str>,
    timeout: Duration,
) -> Result<rdkafka::metadata::Metadata, String> {
    let client: rdkafka::consumer::BaseConsumer =
        client_config(&kafka.bootstrap).create().map_err(|e| format!("kafka client: {e}"))?;
    let topic = topic.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        rdkafka::consumer::Consumer::fetch_metadata(&client, topic.as_deref(), timeout)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// The fewest replicas of any of `topic`'s partitions, if the metadata lists any.
fn fewest_replicas(metadata: &rdkafka::metadata::Metadata, topic: &str) -> Option<i32> {
    let partitions = metadata.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions());
    partitions.map(|p| i32::try_from(p.replicas().len()).unwrap_or(i32::MAX)).min()
}

/// `topic` exists on `kafka`'s brokers (`Err`: they do not answer).
pub async fn topic_exists(kafka: &KafkaConfig, topic: &str) -> Result<bool, String> {
    let metadata = metadata(kafka, None, Duration::from_secs(5))
        .await
        .map_err(|e| format!("the brokers do not answer: {e}"))?;
    Ok(metadata.topics().iter().any(|t| t.name() == topic))
}

/// What is wrong with `topic` for `kafka`'s durability settings, read only (nothing is
/// created): `Ok(None)` when the topic does not exist yet (ferry creates it as configured) or
/// keeps enough copies; `Err` when the brokers do not answer.
pub async fn topic_problem(kafka: &KafkaConfig, topic: &str) -> Result<Option<String>, String> {
    let metadata = metadata(kafka, None, Duration::from_secs(5)).await?;
    if kafka.allow_under_replicated || !metadata.topics().iter().any(|t| t.name() == topic) {
        return Ok(None);
    }
    let admin: AdminClient<DefaultClientContext> =
        client_config(&kafka.bootstrap).create().map_err(|e| e.to_string())?;
    let replicas = fewest_replicas(&metadata, topic).unwrap_or(0);
    Ok(existing_topic_problem(kafka, &admin, topic, replicas).await?.map(|p| format!("topic {topic}: {p}")))
}

/// Why an existing topic with `replicas` copies (fewest of any partition) and
/// `min.insync.replicas` `insync` (None: not read, nothing is required of it) is below what
/// `kafka` asks for.
pub fn durability_problem(kafka: &KafkaConfig, replicas: i32, insync: Option<i32>) -> Option<String> {
    let low_insync = insync.filter(|i| *i < kafka.min_insync_replicas);
    if replicas >= kafka.replication_factor && low_insync.is_none() {
        return None;
    }
    Some(format!(
        "the topic keeps {replicas} cop{} of each record with min.insync.replicas {}; the configuration asks for \
         replication_factor {} and min_insync_replicas {}: refusing to publish (raise the topic's settings, or set \
         kafka.allow_under_replicated: true to accept the risk)",
        if replicas == 1 { "y" } else { "ies" },
        insync.map_or("(not read)".to_string(), |i| i.to_string()),
        kafka.replication_factor,
        kafka.min_insync_replicas,
    ))
}

/// The topic's `min.insync.replicas`.
async fn topic_min_insync(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    options: &AdminOptions,
) -> Result<i32, String> {
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], options)
        .await
        .map_err(|e| format!("reading the topic's configuration: {e}"))?;
    let resource = results
        .into_iter()
        .next()
        .ok_or("the broker described no configuration")?
        .map_err(|e| format!("reading the topic's configuration: {e}"))?;
    let value = resource.get("min.insync.replicas").and_then(|e| e.value.clone());
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "the broker did not report the topic's min.insync.replicas".to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_keeping_fewer_copies_than_configured_are_refused() {
        let production = KafkaConfig {
            bootstrap: vec!["k:9092".into()],
            replication_factor: 3,
            min_insync_replicas: 2,
            allow_under_replicated: false,
        };
        assert_eq!(durability_problem(&production, 3, Some(2)), None);
        assert_eq!(durability_problem(&production, 5, Some(3)), None);
        let one = durability_problem(&production, 1, Some(1)).expect("refused");
        assert!(one.contains("keeps 1 copy") && one.contains("replication_factor 3"), "{one}");
        let insync = durability_problem(&production, 3, Some(1)).expect("refused");
        assert!(insync.contains("min.insync.replicas 1"), "{insync}");
        let single = KafkaConfig::single_broker(vec!["k:9092".into()]);
        assert_eq!(durability_problem(&single, 1, None), None);
    }
}
