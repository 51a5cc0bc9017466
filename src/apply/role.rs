//! The `apply-<origin>` role: one per remote region. Assigns itself the origin topic's
//! partition at the offset stored in `ferry.applied` (no consumer-group rebalancing), rebuilds
//! transactions from records, and applies them in origin order. What cannot be decoded or
//! applied goes to `ferry.<this region>.dlq` with its reason; then applying from that origin
//! pauses (default) or skips it (counted).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::metrics::{ApplyMetrics, OriginKindLabels, OriginLabels};
use super::reassemble::{Assembled, Reassembler, Transaction};
use super::target::{ApplyError, ApplyOutcome, Target};
use crate::app::{Role, RoleContext, RoleFuture, Stage};
use crate::config::{Config, MysqlConfig, OnError};
use crate::model::Value;
use crate::status::RoleState;
use crate::transport::envelope::Envelope;
use crate::transport::kafka::{client_config, ensure_topic};
use crate::transport::{changes_topic, dlq_topic};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The topics ferry uses have one partition: order is total.
const PARTITION: i32 = 0;

pub struct ApplyRole {
    name: String,
    origin: String,
    region: String,
    local: MysqlConfig,
    /// The origin region's brokers (its topic lives there).
    origin_bootstrap: Vec<String>,
    /// This region's brokers (the dead-letter topic lives here).
    local_bootstrap: Vec<String>,
    on_error: OnError,
    metrics: ApplyMetrics,
}

impl ApplyRole {
    /// One role per remote region when `apply` is configured.
    pub fn from_config(config: &Config, metrics: &ApplyMetrics) -> Vec<Self> {
        let (Some(apply), Some(local)) = (config.apply.as_ref(), config.local()) else { return Vec::new() };
        config
            .regions
            .iter()
            .filter(|(name, _)| **name != config.region)
            .map(|(origin, remote)| Self {
                name: format!("apply-{origin}"),
                origin: origin.clone(),
                region: config.region.clone(),
                local: local.mysql.clone(),
                origin_bootstrap: remote.kafka.bootstrap.clone(),
                local_bootstrap: local.kafka.bootstrap.clone(),
                on_error: apply.on_error,
                metrics: metrics.clone(),
            })
            .collect()
    }

    fn labels(&self) -> OriginLabels {
        OriginLabels { origin: self.origin.clone() }
    }

    fn kind(&self, kind: &'static str) -> OriginKindLabels {
        OriginKindLabels { origin: self.origin.clone(), kind }
    }

    /// Connect, seek, and apply until shutdown (Ok) or a failure to retry (Err, transient) or
    /// a pause (Ok(paused = true)).
    async fn session(&self, ctx: &RoleContext) -> Result<bool, ApplyError> {
        let transient =
            |context: &str, e: &dyn std::fmt::Display| ApplyError::Transient(format!("{context}: {e}"));
        let mut target = Target::connect(self.local.primary_opts(), self.local.flavor).await?;
        target.ensure_schema().await?;
        let topic = changes_topic(&self.origin);
        let start = match target.applied(&self.origin).await? {
            Some(done) => Offset::Offset(done.offset + 1),
            None => Offset::Beginning,
        };
        let consumer: StreamConsumer = client_config(&self.origin_bootstrap)
            .set("group.id", format!("ferry-apply-{}", self.region))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| transient("kafka consumer", &e))?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, PARTITION, start).map_err(|e| transient("assignment", &e))?;
        consumer.assign(&assignment).map_err(|e| transient("assigning the partition", &e))?;
        let dlq_name = dlq_topic(&self.region);
        ensure_topic(&self.local_bootstrap, &dlq_name, 1)
            .await
            .map_err(|e| transient("dead-letter topic", &e))?;
        let dlq: FutureProducer = client_config(&self.local_bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(|e| transient("dead-letter producer", &e))?;
        tracing::info!(origin = %self.origin, %topic, ?start, "applying");
        ctx.reporter.set(RoleState::Ready);
        self.metrics.paused.get_or_create(&self.labels()).set(0);

        let mut reassembler = Reassembler::default();
        loop {
            let message = tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => return Ok(false),
                m = consumer.recv() => m.map_err(|e| transient("consuming", &e))?,
            };
            let offset = message.offset();
            let payload = message.payload().unwrap_or_default().to_vec();
            drop(message);
            let envelope = match Envelope::parse(&payload) {
                Ok(e) => e,
                Err(e) => {
                    let parked = DeadLetter::record(&topic, offset, &e.to_string(), &payload);
                    if self.park(&dlq, &dlq_name, parked, "decode", ctx).await? {
                        return Ok(true);
                    }
                    continue;
                }
            };
            for assembled in reassembler.feed(envelope, offset) {
                let paused = match assembled {
                    Assembled::Complete(txn) => {
                        self.apply_with_retry(&mut target, &txn, &topic, &dlq, &dlq_name, ctx).await?
                    }
                    Assembled::Broken { reason, gtid, first_offset, last_offset } => {
                        let parked = DeadLetter::sequence(&topic, &gtid, first_offset, last_offset, &reason);
                        self.park(&dlq, &dlq_name, parked, "sequence", ctx).await?
                    }
                };
                if paused {
                    return Ok(true);
                }
            }
        }
    }

    /// Apply one transaction, retrying transient errors in place (order is kept: nothing
    /// after it is applied first). Returns true when applying is now paused.
    async fn apply_with_retry(
        &self,
        target: &mut Target,
        txn: &Transaction,
        topic: &str,
        dlq: &FutureProducer,
        dlq_name: &str,
        ctx: &RoleContext,
    ) -> Result<bool, ApplyError> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match target.apply(txn, topic, PARTITION).await {
                Ok(ApplyOutcome::Applied { rows }) => {
                    self.metrics.transactions.get_or_create(&self.labels()).inc();
                    self.metrics.rows.get_or_create(&self.labels()).inc_by(rows as u64);
                    self.observe_lag(txn);
                    return Ok(false);
                }
                Ok(ApplyOutcome::AlreadyApplied) => {
                    self.metrics.duplicates.get_or_create(&self.labels()).inc();
                    return Ok(false);
                }
                Err(ApplyError::Permanent(reason)) => {
                    self.metrics.errors.get_or_create(&self.kind("permanent")).inc();
                    let parked = DeadLetter::transaction(topic, txn, &reason);
                    return self.park(dlq, dlq_name, parked, "apply", ctx).await;
                }
                Err(ApplyError::Transient(reason)) => {
                    self.metrics.errors.get_or_create(&self.kind("transient")).inc();
                    tracing::warn!(origin = %self.origin, gtid = %txn.origin.gtid, %reason, retry_in = ?backoff, "apply failed; retrying");
                    if reason.contains("connecting") || reason.contains("driver") || reason.contains("io") {
                        // The connection is gone: let the session reconnect and seek again.
                        return Err(ApplyError::Transient(reason));
                    }
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return Err(ApplyError::Transient("shutdown during retry".into())),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn observe_lag(&self, txn: &Transaction) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        let seconds = |us: i64| ((now - us) as f64 / 1e6).max(0.0);
        self.metrics.lag.get_or_create(&self.labels()).set(seconds(txn.commit_time_us));
        let beat = txn.rows.iter().rev().find(|r| r.db == "ferry" && r.table == "heartbeat").and_then(|r| {
            match r.after.as_ref()?.get("beat_at_us")? {
                Value::Int { v } => Some(*v),
                _ => None,
            }
        });
        if let Some(beat) = beat {
            self.metrics.e2e_lag.get_or_create(&self.labels()).set(seconds(beat));
        }
    }

    /// Write to the dead-letter topic; returns true when the policy is to pause.
    async fn park(
        &self,
        dlq: &FutureProducer,
        dlq_name: &str,
        parked: DeadLetter,
        kind: &'static str,
        ctx: &RoleContext,
    ) -> Result<bool, ApplyError> {
        self.metrics.dlq.get_or_create(&self.kind(kind)).inc();
        let body = serde_json::to_vec(&parked.0).unwrap_or_default();
        let key = format!("{}:{}", self.origin, parked.0["first_offset"]);
        dlq.send(FutureRecord::to(dlq_name).key(&key).payload(&body), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| ApplyError::Transient(format!("writing the dead-letter topic: {e}")))?;
        tracing::error!(origin = %self.origin, reason = %parked.0["reason"], dlq = dlq_name, "parked in the dead-letter queue");
        match self.on_error {
            OnError::Skip => Ok(false),
            OnError::Pause => {
                self.metrics.paused.get_or_create(&self.labels()).set(1);
                let reason =
                    format!("paused: {} (see {dlq_name}; restart ferry to retry)", parked.0["reason"]);
                ctx.reporter.set(RoleState::NotReady { reason });
                Ok(true)
            }
        }
    }
}

/// A dead-letter record: why, where from, and enough to find or replay the input.
struct DeadLetter(serde_json::Value);

impl DeadLetter {
    fn record(topic: &str, offset: i64, reason: &str, payload: &[u8]) -> Self {
        let payload = match std::str::from_utf8(payload) {
            Ok(text) => serde_json::json!({ "text": text }),
            Err(_) => serde_json::json!({ "base64": crate::model::base64::encode(payload) }),
        };
        Self(serde_json::json!({
            "v": 1, "kind": "decode", "reason": reason, "topic": topic, "partition": PARTITION,
            "first_offset": offset, "last_offset": offset, "payload": payload,
        }))
    }

    fn sequence(topic: &str, gtid: &str, first: i64, last: i64, reason: &str) -> Self {
        Self(serde_json::json!({
            "v": 1, "kind": "sequence", "reason": reason, "topic": topic, "partition": PARTITION,
            "gtid": gtid, "first_offset": first, "last_offset": last,
        }))
    }

    fn transaction(topic: &str, txn: &Transaction, reason: &str) -> Self {
        Self(serde_json::json!({
            "v": 1, "kind": "apply", "reason": reason, "topic": topic, "partition": PARTITION,
            "gtid": txn.origin.gtid.to_string(), "first_offset": txn.first_offset, "last_offset": txn.last_offset,
            "rows": txn.rows,
        }))
    }
}

impl Role for ApplyRole {
    fn name(&self) -> &str {
        &self.name
    }

    fn stage(&self) -> Stage {
        Stage::Apply
    }

    fn run(self: Box<Self>, ctx: RoleContext) -> RoleFuture {
        Box::pin(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let result = tokio::select! {
                    biased;
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    r = self.session(&ctx) => r,
                };
                match result {
                    Ok(false) => return Ok(()),
                    Ok(true) => {
                        // Paused: stay up (health shows why) until shutdown.
                        ctx.shutdown.cancelled().await;
                        return Ok(());
                    }
                    Err(e) => {
                        if ctx.shutdown.is_cancelled() {
                            return Ok(());
                        }
                        tracing::warn!(origin = %self.origin, error = %e, retry_in = ?backoff, "apply session failed; reconnecting");
                        ctx.reporter.set(RoleState::NotReady { reason: e.to_string() });
                        tokio::select! {
                            _ = ctx.shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        })
    }
}
