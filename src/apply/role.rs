//! The `apply-<origin>` role: one per remote region. Assigns itself the origin topic's
//! partition at the offset stored in `ferry.applied` (no consumer-group rebalancing), rebuilds
//! transactions from records, and applies them in origin order. What cannot be decoded or
//! applied goes to `ferry.<this region>.dlq` with its reason; then applying from that origin
//! pauses (default) or skips it (counted).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::Gauge;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::metrics::{ApplyMetrics, OriginKindLabels, OriginLabels, OriginTableLabels};
use super::reassemble::{Assembled, Reassembler, Transaction};
use super::target::{ApplyError, Target};
use crate::app::{Role, RoleContext, RoleFuture, Stage};
use crate::config::{Config, MysqlConfig, OnError};
use crate::model::Value;
use crate::status::RoleState;
use crate::transport::envelope::Envelope;
use crate::transport::kafka::{client_config, ensure_topic};
use crate::transport::{changes_topic, dlq_topic};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// While catching up, consecutive transactions are committed together, up to these limits.
const MAX_GROUP_TRANSACTIONS: usize = 200;
const MAX_GROUP_ROWS: usize = 5000;
/// How long an open group waits for the next record before it is applied.
const GROUP_WAIT: Duration = Duration::from_millis(2);
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

    /// Connect, seek, and apply until shutdown (`Ok(None)`), a pause (`Ok(Some(probe))`: the
    /// backlog probe keeps measuring while paused) or a failure to retry (`Err`).
    async fn session(&self, ctx: &RoleContext) -> Result<Option<BacklogProbe>, ApplyError> {
        let transient =
            |context: &str, e: &dyn std::fmt::Display| ApplyError::Transient(format!("{context}: {e}"));
        let mut target = Target::connect(self.local.primary_opts(), self.local.flavor).await?;
        target.ensure_schema().await?;
        let topic = changes_topic(&self.origin);
        let start = match target.applied(&self.origin).await? {
            Some(done) => Offset::Offset(done.offset + 1),
            None => Offset::Beginning,
        };
        let consumer: Arc<StreamConsumer> = client_config(&self.origin_bootstrap)
            .set("group.id", format!("ferry-apply-{}", self.region))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map(Arc::new)
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

        let next_offset = Arc::new(AtomicI64::new(match start {
            Offset::Offset(o) => o,
            _ => 0,
        }));
        let backlog = BacklogProbe::start(
            consumer.clone(),
            topic.clone(),
            next_offset.clone(),
            self.metrics.backlog.get_or_create(&self.labels()).clone(),
        );
        let mut reassembler = Reassembler::default();
        let mut group: Vec<Transaction> = Vec::new();
        let groups = target.groups();
        // Apply the open group (emptying it); true when applying is now paused.
        let mut flush = async |group: &mut Vec<Transaction>| {
            let group = std::mem::take(group);
            let paused = self.apply_group(&mut target, &consumer, &group, &topic, &dlq, &dlq_name, ctx).await;
            if let (Ok(false), Some(last)) = (&paused, group.last()) {
                next_offset.store(last.last_offset + 1, Ordering::Relaxed);
            }
            paused
        };
        loop {
            // With a group open, wait only briefly: when nothing more is queued, apply it.
            let message = if group.is_empty() {
                tokio::select! {
                    biased;
                    _ = ctx.shutdown.cancelled() => return Ok(None),
                    m = consumer.recv() => Some(m.map_err(|e| transient("consuming", &e))?),
                }
            } else {
                tokio::select! {
                    biased;
                    _ = ctx.shutdown.cancelled() => return Ok(None),
                    m = tokio::time::timeout(GROUP_WAIT, consumer.recv()) => match m {
                        Ok(m) => Some(m.map_err(|e| transient("consuming", &e))?),
                        Err(_) => None,
                    },
                }
            };
            let Some(message) = message else {
                if flush(&mut group).await? {
                    return Ok(Some(backlog));
                }
                continue;
            };
            let offset = message.offset();
            let payload = message.payload().unwrap_or_default().to_vec();
            drop(message);
            let envelope = match Envelope::parse(&payload) {
                Ok(e) => e,
                Err(e) => {
                    if flush(&mut group).await? {
                        return Ok(Some(backlog));
                    }
                    let parked = DeadLetter::record(&topic, offset, &e.to_string(), &payload);
                    if self.park(&dlq, &dlq_name, parked, "decode", ctx).await? {
                        return Ok(Some(backlog));
                    }
                    continue;
                }
            };
            for assembled in reassembler.feed(envelope, offset) {
                match assembled {
                    Assembled::Complete(txn) => {
                        group.push(txn);
                        let rows: usize = group.iter().map(|t| t.rows.len()).sum();
                        let full = !groups || group.len() >= MAX_GROUP_TRANSACTIONS || rows >= MAX_GROUP_ROWS;
                        if full && flush(&mut group).await? {
                            return Ok(Some(backlog));
                        }
                    }
                    Assembled::Broken { reason, gtid, first_offset, last_offset } => {
                        if flush(&mut group).await? {
                            return Ok(Some(backlog));
                        }
                        let parked = DeadLetter::sequence(&topic, &gtid, first_offset, last_offset, &reason);
                        if self.park(&dlq, &dlq_name, parked, "sequence", ctx).await? {
                            return Ok(Some(backlog));
                        }
                    }
                }
            }
        }
    }

    /// Apply a group (consecutive origin transactions, committed together). When the group
    /// fails for a reason retrying cannot fix, its transactions are applied one by one so that
    /// exactly the failing one is dead-lettered. Returns true when applying is now paused.
    #[allow(clippy::too_many_arguments)] // the pieces of one session, all distinct
    async fn apply_group(
        &self,
        target: &mut Target,
        consumer: &StreamConsumer,
        group: &[Transaction],
        topic: &str,
        dlq: &FutureProducer,
        dlq_name: &str,
        ctx: &RoleContext,
    ) -> Result<bool, ApplyError> {
        if group.is_empty() {
            return Ok(false);
        }
        match self.apply_retrying(target, consumer, group, topic, ctx).await? {
            Ok(()) => return Ok(false),
            Err(reason) if group.len() == 1 => {
                let parked = DeadLetter::transaction(topic, &group[0], &reason);
                return self.park(dlq, dlq_name, parked, "apply", ctx).await;
            }
            Err(_) => {}
        }
        for txn in group {
            if let Err(reason) =
                self.apply_retrying(target, consumer, std::slice::from_ref(txn), topic, ctx).await?
                && self
                    .park(dlq, dlq_name, DeadLetter::transaction(topic, txn, &reason), "apply", ctx)
                    .await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Apply, retrying transient errors in place (order is kept: nothing after it is applied
    /// first). `Ok(Err(reason))` is a permanent failure.
    async fn apply_retrying(
        &self,
        target: &mut Target,
        consumer: &StreamConsumer,
        group: &[Transaction],
        topic: &str,
        ctx: &RoleContext,
    ) -> Result<Result<(), String>, ApplyError> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match target.apply(group, topic, PARTITION).await {
                Ok(outcome) => {
                    self.metrics.transactions.get_or_create(&self.labels()).inc_by(outcome.applied as u64);
                    if outcome.applied > 0 {
                        let mut per_table: std::collections::BTreeMap<String, u64> =
                            std::collections::BTreeMap::new();
                        for change in group.iter().flat_map(|t| &t.rows) {
                            *per_table.entry(change.qualified_table()).or_default() += 1;
                        }
                        for (table, n) in per_table {
                            let labels = OriginTableLabels { origin: self.origin.clone(), table };
                            self.metrics.rows.get_or_create(&labels).inc_by(n);
                        }
                    }
                    self.metrics.duplicates.get_or_create(&self.labels()).inc_by(outcome.duplicates as u64);
                    if let Some(last) = group.last() {
                        // Only for lag monitoring: ferry.applied is where apply resumes from.
                        let mut done = TopicPartitionList::new();
                        if done
                            .add_partition_offset(topic, PARTITION, Offset::Offset(last.last_offset + 1))
                            .is_ok()
                        {
                            let _ = consumer.commit(&done, CommitMode::Async);
                        }
                        let lag = self.observe_lag(group, last);
                        ctx.reporter.set_details(serde_json::json!({
                            "origin": self.origin,
                            "last_applied_gtid": last.origin.gtid.to_string(),
                            "last_applied_offset": last.last_offset,
                            "lag_seconds": lag,
                            "paused": false,
                        }));
                    }
                    return Ok(Ok(()));
                }
                Err(ApplyError::Permanent(reason)) => {
                    self.metrics.errors.get_or_create(&self.kind("permanent")).inc();
                    return Ok(Err(reason));
                }
                Err(ApplyError::Transient(reason)) => {
                    self.metrics.errors.get_or_create(&self.kind("transient")).inc();
                    let gtid = group.last().map(|t| t.origin.gtid.to_string()).unwrap_or_default();
                    tracing::warn!(origin = %self.origin, %gtid, %reason, retry_in = ?backoff, "apply failed; retrying");
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

    /// Update the lag metrics; returns the apply lag in seconds.
    fn observe_lag(&self, group: &[Transaction], last: &Transaction) -> f64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        let seconds = |us: i64| ((now - us) as f64 / 1e6).max(0.0);
        self.metrics.lag.get_or_create(&self.labels()).set(seconds(last.commit_time_us));
        let rows = group.iter().flat_map(|t| &t.rows);
        let beat = rows.rev().find(|r| r.db == "ferry" && r.table == "heartbeat").and_then(|r| {
            match r.after.as_ref()?.get("beat_at_us")? {
                Value::Int { v } => Some(*v),
                _ => None,
            }
        });
        if let Some(beat) = beat {
            self.metrics.e2e_lag.get_or_create(&self.labels()).set(seconds(beat));
        }
        seconds(last.commit_time_us)
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
                ctx.reporter.set_details(serde_json::json!({
                    "origin": self.origin,
                    "paused": true,
                    "reason": parked.0["reason"],
                    "dead_letter_topic": dlq_name,
                    "parked_offsets": [parked.0["first_offset"], parked.0["last_offset"]],
                }));
                ctx.reporter.set(RoleState::NotReady { reason });
                Ok(true)
            }
        }
    }
}

/// How often the backlog (high watermark − next offset to apply) is measured.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// Measures the backlog in the background; stops when dropped. Fetching watermarks is a
/// blocking network round trip in rdkafka, so it runs off the async threads.
struct BacklogProbe(tokio::task::JoinHandle<()>);

impl BacklogProbe {
    fn start(consumer: Arc<StreamConsumer>, topic: String, next: Arc<AtomicI64>, gauge: Gauge) -> Self {
        Self(tokio::spawn(async move {
            let mut tick = tokio::time::interval(BACKLOG_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let (c, t) = (consumer.clone(), topic.clone());
                let fetched =
                    tokio::task::spawn_blocking(move || c.fetch_watermarks(&t, PARTITION, BACKLOG_EVERY))
                        .await;
                if let Ok(Ok((_, high))) = fetched {
                    gauge.set((high - next.load(Ordering::Relaxed)).max(0));
                }
            }
        }))
    }
}

impl Drop for BacklogProbe {
    fn drop(&mut self) {
        self.0.abort();
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
                    Ok(None) => return Ok(()),
                    Ok(Some(_backlog)) => {
                        // Paused: stay up (health shows why, the backlog grows) until shutdown.
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
