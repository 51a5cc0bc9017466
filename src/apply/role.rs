//! The `apply-<origin>` role: one per remote region. Assigns itself the origin topic's
//! partition at the offset stored in `ferry.applied` (no consumer-group rebalancing), rebuilds
//! transactions from records, and applies them in origin order. What cannot be decoded or
//! applied goes to `ferry.<this region>.dlq` with its reason; then applying from that origin
//! pauses (default) or skips it (counted).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use prometheus_client::metrics::gauge::Gauge;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::admit::Admission;
use super::collect::Collector;
use super::metrics::{ApplyMetrics, ConflictLabels, OriginKindLabels, OriginLabels, OriginTableLabels};
use super::parallel::{KeyTracker, Sequencer, row_keys};
use super::reassemble::{Assembled, Reassembler, Transaction};
use super::target::{ApplyError, GroupOutcome, Statements, Target};
use crate::config::{Config, MysqlConfig, OnError};
use crate::conflict::Rules;
use crate::model::{Gtid, Value};
use crate::runtime::{AbortOnDrop, Role, RoleContext, RoleFuture, Stage};
use crate::status::RoleState;
use crate::transport::envelope::Envelope;
use crate::transport::kafka::{client_config, ensure_topic};
use crate::transport::{changes_topic, dlq_topic};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How many times in a row a group is decided again after local writes raced its inserts.
const RACE_RETRIES: u32 = 5;
/// How often apply tries again while the server refuses ferry's account (a missing grant is
/// usually fixed by hand: resume soon after).
const REFUSED_RECHECK: Duration = Duration::from_secs(3);
/// While catching up, consecutive transactions are committed together, up to this many rows
/// (and `apply.max_group_transactions` transactions).
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
    local_kafka: crate::config::KafkaConfig,
    on_error: OnError,
    /// Connections applying this origin's groups (see `parallel`).
    workers: usize,
    /// Most origin transactions committed together.
    max_group: usize,
    rules: Arc<Rules>,
    /// This role also runs the collector of old tombstones and checks the rules against the
    /// schema (the first apply role does).
    collects: bool,
    config: Arc<Config>,
    /// What the origin's transactions may claim and write.
    admission: Admission,
    metrics: ApplyMetrics,
    /// When what was last applied here happened at the origin: the lag gauges are refreshed
    /// from it every second, so they grow while nothing arrives (a broker outage, a pause).
    clock: LagClock,
    /// The server refused ferry's account and nothing was applied since: cleared (readiness
    /// and `ferry_apply_refused` with it) by the next group applied, whichever path applies it.
    refusing: std::sync::atomic::AtomicBool,
    /// Waiting for a migration the origin ran (`ApplyError::SchemaBehind`).
    schema_behind: std::sync::atomic::AtomicBool,
}

impl ApplyRole {
    /// One role per remote region when `apply` is configured.
    pub fn from_config(config: &Config, metrics: &ApplyMetrics) -> Vec<Self> {
        let (Some(apply), Some(local)) = (config.apply.as_ref(), config.local()) else { return Vec::new() };
        let rules = Arc::new(Rules::from_config(config));
        let shared = Arc::new(config.clone());
        config
            .regions
            .iter()
            .filter(|(name, _)| **name != config.region)
            .enumerate()
            .map(|(i, (origin, remote))| Self {
                name: format!("apply-{origin}"),
                origin: origin.clone(),
                region: config.region.clone(),
                local: local.mysql.clone(),
                origin_bootstrap: remote.kafka.bootstrap.clone(),
                local_kafka: local.kafka.clone(),
                on_error: apply.on_error,
                workers: apply.workers.max(1),
                max_group: apply.max_group_transactions.max(1),
                rules: rules.clone(),
                collects: i == 0,
                config: shared.clone(),
                admission: Admission::new(origin, &remote.mysql, apply.schemas.as_deref()),
                metrics: metrics.clone(),
                clock: LagClock::default(),
                refusing: std::sync::atomic::AtomicBool::new(false),
                schema_behind: std::sync::atomic::AtomicBool::new(false),
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
            |context: &str, e: &dyn std::fmt::Display| ApplyError::Lost(format!("{context}: {e}"));
        // After a failover the primary is another server: find it each session.
        let primary =
            crate::failover::mysql::primary_opts(&self.local).await.map_err(|e| match e.refused {
                true => ApplyError::Refused(e.message),
                false => ApplyError::Lost(e.message),
            })?;
        let mut target = Target::connect(primary.clone(), self.local.flavor).await?;
        target.ensure_schema().await?;
        let topic = changes_topic(&self.origin);
        let applied = target.applied(&self.origin).await?;
        let start = match &applied {
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
        // The first record read must be the one asked for: retention or a recreated topic
        // would otherwise make the consumer jump silently.
        let mut start_gap = None;
        let mut expect_offset = match start {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        if let Some(o) = expect_offset {
            let (c, t) = (consumer.clone(), topic.clone());
            let marks =
                tokio::task::spawn_blocking(move || c.fetch_watermarks(&t, PARTITION, WATERMARK_TIMEOUT))
                    .await
                    .map_err(|e| transient("reading the topic's offsets", &e))?
                    .map_err(|e| transient("reading the topic's offsets", &e))?;
            start_gap = offsets_gap(o, marks);
        }
        // The last origin transaction seen in order: the next one must name it (or an
        // earlier one) as its predecessor.
        let mut chain: Option<Gtid> = applied.as_ref().map(|a| a.gtid.clone());
        let dlq_name = dlq_topic(&self.region);
        ensure_topic(&self.local_kafka, &dlq_name, 1)
            .await
            .map_err(|e| transient("dead-letter topic", &e))?;
        let dlq: FutureProducer = client_config(&self.local_kafka.bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(|e| transient("dead-letter producer", &e))?;
        tracing::info!(origin = %self.origin, %topic, ?start, "applying");
        ctx.reporter.set(RoleState::Ready);
        self.metrics.paused.get_or_create(&self.labels()).set(0);
        self.metrics.refused.get_or_create(&self.labels()).set(0);
        self.refusing.store(false, Ordering::Relaxed);

        let next_offset = Arc::new(AtomicI64::new(match start {
            Offset::Offset(o) => o,
            _ => 0,
        }));
        if self.clock.beat_us.load(Ordering::Relaxed) == 0
            && let Some(beat) = target.last_beat(&self.origin).await?
        {
            self.clock.beat_us.store(beat, Ordering::Relaxed);
        }
        let backlog = BacklogProbe::start(
            &self.origin_bootstrap,
            topic.clone(),
            next_offset.clone(),
            self.metrics.backlog.get_or_create(&self.labels()).clone(),
        );
        if let Some(reason) = start_gap {
            self.stop_on_gap(&reason, applied.as_ref().map(|a| &a.gtid), ctx);
            return Ok(Some(backlog));
        }
        if self.collects {
            self.warn_about_schema(&mut target).await;
        }
        let _collector = self.collects.then(|| {
            let collected = self.metrics.collected.clone();
            Collector::start(primary.clone(), self.rules.horizon, collected)
        });
        let mut idle = vec![target];
        for _ in 1..self.workers {
            let mut more = Target::connect(primary.clone(), self.local.flavor).await?;
            more.ensure_schema().await?;
            idle.push(more);
        }
        let groups = idle[0].groups();
        let catalog = Arc::new(idle[0].key_catalog().await?);
        for target in &mut idle {
            target.govern(self.rules.clone(), catalog.clone());
        }
        let sequencer = Sequencer::default();
        let mut tracker = KeyTracker::default();
        let session = Session {
            consumer: &consumer,
            topic: &topic,
            dlq: &dlq,
            dlq_name: &dlq_name,
            ctx,
            sequencer: &sequencer,
        };
        let mut running = FuturesUnordered::new();
        let mut dispatched = 0u64;
        let mut reassembler = Reassembler::default();
        let mut group: Vec<Transaction> = Vec::new();
        // Hand the open group (emptying it) to an idle connection.
        let dispatch = |group: &mut Vec<Transaction>,
                        idle: &mut Vec<Target>,
                        tracker: &mut KeyTracker,
                        dispatched: &mut u64| {
            let group = std::mem::take(group);
            let target = idle.pop().expect("dispatch only with an idle connection");
            *dispatched += 1;
            let after = tracker.register(*dispatched, &row_keys(&group, &catalog));
            sequencer.dispatched(*dispatched);
            self.run_group(target, *dispatched, after, group, &session)
        };
        // Records that cannot form an admissible transaction, or a gap: everything before them
        // is applied first, and nothing after them until each is parked (and then only if the
        // policy is to skip; a gap always stops).
        let mut parked: Vec<Stop> = Vec::new();
        let mut held: Vec<Transaction> = Vec::new();
        loop {
            let full = {
                let rows: usize = group.iter().map(|t| t.rows.len()).sum();
                !group.is_empty() && (!groups || group.len() >= self.max_group || rows >= MAX_GROUP_ROWS)
            };
            if (full || (!parked.is_empty() && !group.is_empty())) && !idle.is_empty() {
                running.push(dispatch(&mut group, &mut idle, &mut tracker, &mut dispatched));
                continue;
            }
            if !parked.is_empty() && group.is_empty() && running.is_empty() {
                for stop in std::mem::take(&mut parked) {
                    let paused = match stop {
                        Stop::Letter(letter, kind) => self.park(&dlq, &dlq_name, letter, kind, ctx).await?,
                        Stop::Gap(reason) => {
                            self.stop_on_gap(&reason, chain.as_ref(), ctx);
                            true
                        }
                    };
                    if paused {
                        return Ok(Some(backlog));
                    }
                }
                group = std::mem::take(&mut held);
                continue;
            }
            let receive = !full && parked.is_empty();
            let event = tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => return Ok(None),
                Some((target, flow)) = running.next(), if !running.is_empty() => Event::Done(target, flow),
                // With a group open, wait only briefly: when nothing more is queued, apply it.
                m = consumer.recv(), if receive && group.is_empty() => Event::Message(m),
                m = tokio::time::timeout(GROUP_WAIT, consumer.recv()), if receive && !group.is_empty() => match m {
                    Ok(m) => Event::Message(m),
                    Err(_) => Event::Quiet,
                },
            };
            let message = match event {
                Event::Done(target, flow) => {
                    idle.push(target);
                    match flow? {
                        Flow::Paused => return Ok(Some(backlog)),
                        Flow::Applied { next } => next_offset.fetch_max(next, Ordering::Relaxed),
                    };
                    tracker.forget_through(sequencer.committed());
                    continue;
                }
                Event::Quiet => {
                    if !idle.is_empty() {
                        running.push(dispatch(&mut group, &mut idle, &mut tracker, &mut dispatched));
                    }
                    continue;
                }
                Event::Message(m) => m.map_err(|e| transient("consuming", &e))?,
            };
            let offset = message.offset();
            let payload = message.payload().unwrap_or_default().to_vec();
            drop(message);
            if let Some(expected) = expect_offset.take()
                && offset != expected
            {
                parked.push(Stop::Gap(format!(
                    "asked the topic for offset {expected} (after the last applied), got offset {offset}: \
                     records were deleted or the topic was recreated"
                )));
                continue;
            }
            let envelope = match Envelope::parse(&payload) {
                Ok(e) => e,
                Err(e) => {
                    parked.push(Stop::Letter(
                        DeadLetter::record(&topic, offset, &e.to_string(), &payload),
                        "decode",
                    ));
                    continue;
                }
            };
            for assembled in reassembler.feed(envelope, offset) {
                let txn = match assembled {
                    Assembled::Complete(txn) => txn,
                    Assembled::Superseded { gtid, first_offset, last_offset } => {
                        self.metrics.superseded.get_or_create(&self.labels()).inc();
                        tracing::info!(origin = %self.origin, %gtid, first_offset, last_offset,
                            "partial transaction superseded by capture's resend");
                        continue;
                    }
                    Assembled::Broken { reason, gtid, first_offset, last_offset } => {
                        // Transactions completed before it are still applied first; what
                        // follows it waits (the reassembler has moved past it). The dead
                        // letter accounts for it: the chain moves past it.
                        if let Ok(g) = gtid.parse::<Gtid>()
                            && !chain.as_ref().is_some_and(|c| c.covers(&g))
                        {
                            chain = Some(g);
                        }
                        let letter = DeadLetter::sequence(&topic, &gtid, first_offset, last_offset, &reason);
                        parked.push(Stop::Letter(letter, "sequence"));
                        continue;
                    }
                };
                if !chain.as_ref().is_some_and(|c| c.covers(&txn.origin.gtid)) {
                    if let Some(reason) = chain_gap(chain.as_ref(), &txn) {
                        parked.push(Stop::Gap(reason));
                        break;
                    }
                    chain = Some(txn.origin.gtid.clone());
                }
                if let Err(reason) = self.admission.check(&txn) {
                    parked.push(Stop::Letter(
                        DeadLetter::transaction(&topic, &txn, &reason, "refused"),
                        "refused",
                    ));
                } else if parked.is_empty() {
                    group.push(txn);
                } else {
                    held.push(txn);
                }
            }
        }
    }

    /// Log what `ferry validate` would refuse in the conflict rules (once per session): apply
    /// still runs, deciding such a table by commit times.
    async fn warn_about_schema(&self, target: &mut Target) {
        match target.check_rules(&self.config).await {
            Ok(problems) => {
                for p in problems {
                    tracing::warn!(path = %p.path, problem = %p.message, "conflict rules do not fit the schema (see ferry validate)");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not check the conflict rules against the schema"),
        }
    }

    /// Apply one group on its own connection: execute when the rows allow, commit when every
    /// earlier group has committed (see `parallel`). On an error when first in line, the serial
    /// path decides (retries, dead-lettering, pause).
    async fn run_group(
        &self,
        mut target: Target,
        seq: u64,
        after: u64,
        group: Vec<Transaction>,
        session: &Session<'_>,
    ) -> (Target, Result<Flow, ApplyError>) {
        let sequencer = session.sequencer;
        let next = group.last().map(|t| t.last_offset + 1).unwrap_or_default();
        loop {
            let aborts = sequencer.ready(seq, after).await;
            let staged = target.stage(&self.origin, &group, Statements::Batched).await;
            if let Err(ApplyError::Raced(reason)) = &staged {
                // Counted here: the serial path's new decision usually succeeds.
                self.metrics.errors.get_or_create(&self.kind("raced")).inc();
                tracing::info!(origin = %self.origin, %reason, "a local write created a row apply was inserting; deciding again");
            }
            match staged {
                Ok(staged) => {
                    if !sequencer.my_turn(seq, aborts).await {
                        // A group before this one needs a lock it holds: roll back, go again alone.
                        target.abandon().await;
                        self.metrics.errors.get_or_create(&self.kind("parallel_abort")).inc();
                        continue;
                    }
                    match target.finish(staged, session.topic, PARTITION).await {
                        Ok(outcome) => {
                            self.applied(&outcome, &group, session);
                            sequencer.commit(seq);
                            return (target, Ok(Flow::Applied { next }));
                        }
                        Err(_) => break,
                    }
                }
                Err(_) if sequencer.is_first(seq) => break,
                Err(e @ ApplyError::Lost(_)) => return (target, Err(e)),
                Err(_) => {
                    // Perhaps only because it ran before its turn (a unique or foreign key
                    // shared with an earlier group): try again alone, when first in line.
                    sequencer.abort();
                    self.metrics.errors.get_or_create(&self.kind("parallel_abort")).inc();
                }
            }
        }
        // First in line and failing: nothing later may hold a lock this group needs.
        sequencer.abort();
        let result = self
            .apply_group(&mut target, &group, session)
            .await
            .map(|paused| if paused { Flow::Paused } else { Flow::Applied { next } });
        if let Ok(Flow::Applied { .. }) = result {
            sequencer.commit(seq);
        }
        (target, result)
    }

    /// Apply a group (consecutive origin transactions, committed together) alone. When the
    /// batched group fails for a reason retrying cannot fix, it is applied change by change in
    /// the origin's order; if that fails too, transaction by transaction, so that exactly the
    /// failing one is dead-lettered. Returns true when applying is now paused.
    async fn apply_group(
        &self,
        target: &mut Target,
        group: &[Transaction],
        session: &Session<'_>,
    ) -> Result<bool, ApplyError> {
        let Session { topic, dlq, dlq_name, ctx, .. } = *session;
        if group.is_empty() {
            return Ok(false);
        }
        if self.apply_retrying(target, group, Statements::Batched, session).await?.is_ok() {
            return Ok(false);
        }
        match self.apply_retrying(target, group, Statements::InOrder, session).await? {
            Ok(()) => return Ok(false),
            Err(reason) if group.len() == 1 => {
                let parked = DeadLetter::transaction(topic, &group[0], &reason, "apply");
                return self.park(dlq, dlq_name, parked, "apply", ctx).await;
            }
            Err(_) => {}
        }
        for txn in group {
            if let Err(reason) =
                self.apply_retrying(target, std::slice::from_ref(txn), Statements::InOrder, session).await?
                && self
                    .park(dlq, dlq_name, DeadLetter::transaction(topic, txn, &reason, "apply"), "apply", ctx)
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
        group: &[Transaction],
        how: Statements,
        session: &Session<'_>,
    ) -> Result<Result<(), String>, ApplyError> {
        let mut backoff = FIRST_BACKOFF;
        let mut races = 0;
        loop {
            match target.apply(&self.origin, group, how, session.topic, PARTITION).await {
                Ok(outcome) => {
                    self.applied(&outcome, group, session);
                    return Ok(Ok(()));
                }
                Err(ApplyError::Refused(reason)) => {
                    // Not the record's fault: never dead-lettered. Wait for the grant.
                    if !self.refusing.load(Ordering::Relaxed) {
                        self.refused(&reason, session.ctx);
                    }
                    tokio::select! {
                        _ = session.ctx.shutdown.cancelled() => return Err(ApplyError::Lost("shutdown while refused".into())),
                        _ = tokio::time::sleep(REFUSED_RECHECK) => {}
                    }
                }
                Err(ApplyError::SchemaBehind(reason)) => {
                    // A migration the origin ran and this region has not: not the record's
                    // fault either. Wait for the schema, then go on from the same transaction.
                    if !self.schema_behind.swap(true, Ordering::Relaxed) {
                        self.metrics.errors.get_or_create(&self.kind("schema_behind")).inc();
                        tracing::error!(origin = %self.origin, %reason, recheck_every = ?REFUSED_RECHECK,
                            "the local schema lacks what a change from the origin needs: nothing is \
                             dead-lettered; applying waits until the migration has run here");
                        session.ctx.reporter.set(RoleState::NotReady {
                            reason: format!(
                                "waiting for a migration: {}; {} ran it, run it here and apply \
                                 resumes by itself (rechecked every {}s) [{reason}]",
                                missing_here(&reason),
                                self.origin,
                                REFUSED_RECHECK.as_secs()
                            ),
                        });
                    }
                    tokio::select! {
                        _ = session.ctx.shutdown.cancelled() => return Err(ApplyError::Lost("shutdown while waiting for a migration".into())),
                        _ = tokio::time::sleep(REFUSED_RECHECK) => {}
                    }
                }
                Err(ApplyError::Permanent(reason)) => {
                    self.metrics.errors.get_or_create(&self.kind("permanent")).inc();
                    return Ok(Err(reason));
                }
                Err(ApplyError::Raced(reason)) => {
                    // Decided again at once over the row that appeared. A race that keeps
                    // coming back is not a race: treated as the permanent error it is.
                    self.metrics.errors.get_or_create(&self.kind("raced")).inc();
                    races += 1;
                    if races > RACE_RETRIES {
                        return Ok(Err(reason));
                    }
                    tracing::info!(origin = %self.origin, %reason, "a local write created a row apply was inserting; deciding again");
                }
                Err(ApplyError::Transient(reason)) => {
                    self.metrics.errors.get_or_create(&self.kind("transient")).inc();
                    let gtid = group.last().map(|t| t.origin.gtid.to_string()).unwrap_or_default();
                    tracing::warn!(origin = %self.origin, %gtid, %reason, retry_in = ?backoff, "apply failed; retrying");
                    tokio::select! {
                        _ = session.ctx.shutdown.cancelled() => return Err(ApplyError::Lost("shutdown during retry".into())),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(lost @ ApplyError::Lost(_)) => {
                    self.metrics.errors.get_or_create(&self.kind("connection")).inc();
                    return Err(lost);
                }
            }
        }
    }

    /// Count a committed group, report progress and lag.
    fn applied(&self, outcome: &GroupOutcome, group: &[Transaction], session: &Session<'_>) {
        if self.refusing.swap(false, Ordering::Relaxed) {
            self.metrics.refused.get_or_create(&self.labels()).set(0);
            session.ctx.reporter.set(RoleState::Ready);
            tracing::info!(origin = %self.origin, "the server accepts ferry's account again: applying");
        }
        if self.schema_behind.swap(false, Ordering::Relaxed) {
            session.ctx.reporter.set(RoleState::Ready);
            tracing::info!(origin = %self.origin, "the local schema has what the origin's changes need: applying");
        }
        self.metrics.transactions.get_or_create(&self.labels()).inc_by(outcome.applied as u64);
        if outcome.applied > 0 {
            let mut per_table: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
            for change in group.iter().flat_map(|t| &t.rows) {
                *per_table.entry(change.qualified_table()).or_default() += 1;
            }
            for (table, n) in per_table {
                let labels = OriginTableLabels { origin: self.origin.clone(), table };
                self.metrics.rows.get_or_create(&labels).inc_by(n);
            }
        }
        self.metrics.duplicates.get_or_create(&self.labels()).inc_by(outcome.duplicates as u64);
        for c in &outcome.conflicts {
            let labels = ConflictLabels {
                table: c.table.clone(),
                kind: c.kind.as_str(),
                resolution: c.winner.as_str(),
            };
            self.metrics.conflicts.get_or_create(&labels).inc();
        }
        let Some(last) = group.last() else { return };
        // Only for lag monitoring: ferry.applied is where apply resumes from.
        let mut done = TopicPartitionList::new();
        if done.add_partition_offset(session.topic, PARTITION, Offset::Offset(last.last_offset + 1)).is_ok() {
            let _ = session.consumer.commit(&done, CommitMode::Async);
        }
        let lag = self.observe_lag(group, last);
        session.ctx.reporter.set_details(serde_json::json!({
            "origin": self.origin,
            "last_applied_gtid": last.origin.gtid.to_string(),
            "last_applied_offset": last.last_offset,
            "lag_seconds": lag,
            "paused": false,
        }));
    }

    /// Update the lag metrics; returns the apply lag in seconds.
    fn observe_lag(&self, group: &[Transaction], last: &Transaction) -> f64 {
        self.clock.commit_us.fetch_max(last.commit_time_us, Ordering::Relaxed);
        self.metrics.lag.get_or_create(&self.labels()).set(seconds_since(last.commit_time_us));
        let rows = group.iter().flat_map(|t| &t.rows);
        let beat = rows.rev().find(|r| r.db == "ferry" && r.table == "heartbeat").and_then(|r| {
            match r.after.as_ref()?.get("beat_at_us")? {
                Value::Int { v } => Some(*v),
                _ => None,
            }
        });
        if let Some(beat) = beat {
            self.clock.beat_us.fetch_max(beat, Ordering::Relaxed);
            self.metrics.e2e_lag.get_or_create(&self.labels()).set(seconds_since(beat));
        }
        seconds_since(last.commit_time_us)
    }

    /// Stop applying this origin: transactions are missing (never skipped, whatever
    /// `apply.on_error` says). Shown in `/health/ready`, `/status`, `ferry_apply_gap` and the
    /// log; a restart checks again.
    fn stop_on_gap(&self, reason: &str, seen: Option<&Gtid>, ctx: &RoleContext) {
        self.metrics.gap.get_or_create(&self.labels()).set(1);
        self.metrics.paused.get_or_create(&self.labels()).set(1);
        tracing::error!(origin = %self.origin, %reason, "gap in the origin's stream: applying stopped (see docs/operations.md)");
        ctx.reporter.set_details(serde_json::json!({
            "origin": self.origin,
            "paused": true,
            "gap": true,
            "reason": reason,
            "last_seen_gtid": seen.map(|g| g.to_string()),
        }));
        ctx.reporter.set(RoleState::NotReady {
            reason: format!("stopped: gap in {}'s stream: {reason}", self.origin),
        });
    }

    /// The server refuses ferry's account: count it, say why, and show it in readiness.
    fn refused(&self, reason: &str, ctx: &RoleContext) {
        self.refusing.store(true, Ordering::Relaxed);
        self.metrics.errors.get_or_create(&self.kind("refused")).inc();
        self.metrics.refused.get_or_create(&self.labels()).set(1);
        tracing::error!(origin = %self.origin, %reason, recheck_every = ?REFUSED_RECHECK,
            "the server refuses ferry's account (a missing privilege or a wrong password): nothing is \
             dead-lettered; applying waits until the grant exists");
        ctx.reporter.set(RoleState::NotReady {
            reason: format!(
                "waiting: the server refuses ferry's account ({reason}); grant it and apply resumes \
                 (rechecked every {}s)",
                REFUSED_RECHECK.as_secs()
            ),
        });
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
            .map_err(|(e, _)| ApplyError::Lost(format!("writing the dead-letter topic: {e}")))?;
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

/// What one session's connections share.
#[derive(Clone, Copy)]
struct Session<'a> {
    consumer: &'a StreamConsumer,
    topic: &'a str,
    dlq: &'a FutureProducer,
    dlq_name: &'a str,
    ctx: &'a RoleContext,
    sequencer: &'a Sequencer,
}

/// Why the session loop stops taking new records until what came before is applied.
enum Stop {
    /// Park this in the dead-letter topic (then pause or skip, per `apply.on_error`).
    Letter(DeadLetter, &'static str),
    /// Transactions are missing from the topic: stop applying this origin, whatever the policy.
    Gap(String),
}

/// How long reading the topic's watermarks may take at session start.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

/// A gap between the next offset to apply and what the topic holds (`(low, high)`
/// watermarks), if any.
fn offsets_gap(next: i64, (low, high): (i64, i64)) -> Option<String> {
    if next < low {
        Some(format!(
            "the topic no longer holds offsets {next}..{low} (retention deleted them before they were applied here)"
        ))
    } else if next > high {
        Some(format!(
            "the topic ends at offset {high} but ferry.applied says offset {} was applied: the topic was recreated",
            next - 1
        ))
    } else {
        None
    }
}

/// A gap in the origin's order: `txn` (not yet applied) names a predecessor that is not the
/// last one seen here.
fn chain_gap(seen: Option<&Gtid>, txn: &Transaction) -> Option<String> {
    let (seen, prev) = (seen?, txn.prev.as_ref()?);
    (!seen.covers(prev)).then(|| {
        format!(
            "transaction {} at offset {} follows {prev} at its origin, but the last transaction seen here is {seen}: \
             the transactions between are missing from the topic",
            txn.origin.gtid, txn.first_offset
        )
    })
}

/// How a group ended.
enum Flow {
    /// Committed (or dead-lettered and skipped); `next` is the offset after it.
    Applied { next: i64 },
    /// Dead-lettered, and the policy is to pause.
    Paused,
}

/// What woke the session loop.
enum Event<F> {
    Done(Target, Result<Flow, ApplyError>),
    Message(F),
    /// Nothing arrived within the group wait.
    Quiet,
}

/// What a 1054/1146 error says is missing, in an operator's words: "psi.products: column
/// `barcode` missing here" (the server's own message when it cannot be read).
fn missing_here(reason: &str) -> String {
    let quoted = |after: &str| reason.split_once(after).and_then(|(_, rest)| rest.split('\'').next());
    // The statement context names the table as `db`.`table`.
    let table = reason
        .split_once('`')
        .and_then(|(_, rest)| rest.split_once("`.`"))
        .and_then(|(db, rest)| Some(format!("{db}.{}", rest.split('`').next()?)));
    match (table, quoted("Unknown column '"), quoted("Table '")) {
        (Some(t), Some(column), _) => format!("{t}: column `{column}` missing here"),
        (_, None, Some(table)) => format!("table {table} missing here"),
        _ => reason.to_string(),
    }
}

/// How often the backlog (high watermark − next offset to apply) is measured.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// Seconds from `us` (microseconds since the Unix epoch) to now, never negative.
fn seconds_since(us: i64) -> f64 {
    ((crate::runtime::now_us() - us) as f64 / 1e6).max(0.0)
}

/// The origin commit time of the newest transaction applied here and the newest origin
/// heartbeat applied here (microseconds since the Unix epoch; 0: not known yet).
#[derive(Clone, Default)]
struct LagClock {
    commit_us: Arc<AtomicI64>,
    beat_us: Arc<AtomicI64>,
}

impl LagClock {
    /// Keep `lag` and `e2e_lag` at the age of what was last applied, every second, for as long
    /// as the role runs: across sessions, reconnects and pauses, so they grow while nothing
    /// arrives. Stops when dropped.
    fn tick(
        &self,
        lag: Gauge<f64, std::sync::atomic::AtomicU64>,
        e2e_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    ) -> AbortOnDrop {
        let clock = self.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(BACKLOG_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                for (at, gauge) in [(&clock.commit_us, &lag), (&clock.beat_us, &e2e_lag)] {
                    let at = at.load(Ordering::Relaxed);
                    if at > 0 {
                        gauge.set(seconds_since(at));
                    }
                }
            }
        }))
    }
}

/// Measures the backlog in the background; stops when dropped. Fetching watermarks is a
/// blocking network round trip in rdkafka, so it runs off the async threads.
///
/// On its own client: a watermark request shares its connection with whatever else the client
/// sends, and its 1 s deadline expiring (a frozen broker) makes librdkafka drop the connection,
/// taking the applier's long-poll fetch with it. Through the consumer's own client, that cost
/// 1–3 s of reconnecting after a broker came back.
struct BacklogProbe {
    _task: AbortOnDrop,
}

impl BacklogProbe {
    fn start(bootstrap: &[String], topic: String, next: Arc<AtomicI64>, gauge: Gauge) -> Self {
        let client: Result<rdkafka::consumer::BaseConsumer, _> = client_config(bootstrap).create();
        let consumer = match client {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(error = %e, "no client for measuring the backlog: ferry_apply_backlog_records stays unset");
                return Self { _task: AbortOnDrop(tokio::spawn(async {})) };
            }
        };
        let task = tokio::spawn(async move {
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
        });
        Self { _task: AbortOnDrop(task) }
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

    fn transaction(topic: &str, txn: &Transaction, reason: &str, kind: &str) -> Self {
        Self(serde_json::json!({
            "v": 1, "kind": kind, "reason": reason, "topic": topic, "partition": PARTITION,
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
            let _lag = self.clock.tick(
                self.metrics.lag.get_or_create(&self.labels()).clone(),
                self.metrics.e2e_lag.get_or_create(&self.labels()).clone(),
            );
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
                    Err(ApplyError::Refused(reason)) => {
                        // Setting up the session (ferry's own tables, the stored position)
                        // was refused: a grant is missing. Recheck soon, never back off far.
                        self.refused(&reason, &ctx);
                        tokio::select! {
                            _ = ctx.shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(REFUSED_RECHECK) => {}
                        }
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_column_or_table_is_named() {
        let column = "INSERT INTO `psi`.`products`: Server error: `ERROR 1054 (42S22): Unknown column 'barcode' in 'INSERT INTO''";
        assert_eq!(super::missing_here(column), "psi.products: column `barcode` missing here");
        let table = "SELECT 1 FROM `psi`.`gadgets`: Server error: `ERROR 1146 (42S02): Table 'psi.gadgets' doesn't exist'";
        assert_eq!(super::missing_here(table), "table psi.gadgets missing here");
        assert_eq!(super::missing_here("odd"), "odd");
    }
}
