//! The `capture` and `heartbeat` roles that `ferry run` starts when `capture` is configured.

use crate::runtime::now_us;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::metrics::{CaptureMetrics, ResultLabels};
use super::pipeline::{self, CaptureError, PipelineSettings, Progress};
use super::{checkpoint, preflight};
use crate::config::{CaptureConfig, Config, MysqlConfig};
use crate::conflict::Rules;
use crate::model::{Gtid, Position};
use crate::runtime::{AbortOnDrop, Role, RoleContext, RoleFuture, Stage};
use crate::status::RoleState;
use crate::transport::changes_topic;
use crate::transport::kafka::KafkaSink;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct CaptureRole {
    region: String,
    mysql: MysqlConfig,
    kafka: crate::config::KafkaConfig,
    capture: CaptureConfig,
    /// The other regions' primaries, for the AUTO_INCREMENT overlap warning.
    others: Vec<(String, MysqlConfig)>,
    metrics: CaptureMetrics,
    rules: Arc<Rules>,
}

impl CaptureRole {
    /// `None` when the config has no `capture` section or no local region.
    pub fn from_config(config: &Config, metrics: CaptureMetrics) -> Option<Self> {
        let local = config.local()?;
        Some(Self {
            region: config.region.clone(),
            mysql: local.mysql.clone(),
            kafka: local.kafka.clone(),
            capture: config.capture.clone()?,
            others: config
                .regions
                .iter()
                .filter(|(name, _)| **name != config.region)
                .map(|(name, r)| (name.clone(), r.mysql.clone()))
                .collect(),
            metrics,
            rules: Arc::new(Rules::from_config(config)),
        })
    }

    fn settings(&self) -> PipelineSettings {
        PipelineSettings {
            region: self.region.clone(),
            flavor: self.mysql.flavor,
            origin: self.mysql.origin_filter(),
            reader_server_id: self.capture.server_id,
            heartbeat: self.capture.heartbeat_period,
            max_record_bytes: self.capture.max_record_bytes,
            max_inflight_bytes: self.capture.max_inflight_bytes,
            filter: None,
            tombstones: Some(self.rules.clone()),
        }
    }

    /// Connect, check and find the start position. Cancelled by shutdown (nothing to drain yet).
    async fn prepare(
        &self,
    ) -> Result<(Conn, Position, Option<Gtid>, KafkaSink, mysql_async::Opts), CaptureError> {
        // After a failover the primary is another server: find it each session. Its binlog has
        // the same GTIDs (log_slave_updates), so capture resumes from the checkpoint there.
        let opts = crate::failover::mysql::primary_opts(&self.mysql)
            .await
            .map_err(|e| CaptureError::Checkpoint(e.message))?;
        let db = |e: mysql_async::Error| CaptureError::Checkpoint(format!("local primary: {e}"));
        let mut conn = Conn::new(opts.clone()).await.map_err(db)?;
        crate::schema::install(&mut conn).await.map_err(db)?;
        let flavor = self.mysql.flavor;
        let host = pipeline::report_host(&self.region);
        preflight::check_server(&mut conn, flavor, self.capture.server_id, &host).await?;
        preflight::check_identity(&mut conn, &self.region, &self.mysql).await?;
        let (start, published) = match checkpoint::load(&mut conn).await? {
            Some((saved, published)) => {
                (preflight::resume(&mut conn, flavor, &saved, &self.mysql.origin_filter()).await?, published)
            }
            None => {
                let now = checkpoint::current_position(&mut conn, flavor).await?;
                tracing::info!(position = %now, "no checkpoint: capture starts at the current binlog position");
                checkpoint::save(&mut conn, &now, None).await?;
                (now, None)
            }
        };
        let sink = KafkaSink::connect(&self.kafka, &changes_topic(&self.region)).await?;
        Ok((conn, start, published, sink, opts))
    }

    async fn session(&self, ctx: &RoleContext) -> Result<(), CaptureError> {
        let (conn, start, published, mut sink, opts) = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return Ok(()),
            prepared = self.prepare() => prepared?,
        };
        let (progress, watcher) = watch::channel(Progress {
            position: start.clone(),
            published: published.clone(),
            ..Progress::default()
        });
        let stop_writer = CancellationToken::new();
        let writer = tokio::spawn(write_checkpoints(
            conn,
            watcher,
            self.capture.checkpoint_interval,
            stop_writer.clone(),
            self.metrics.clone(),
        ));
        // The initial sync's driver: chunks handed to this pipeline, recorded once acknowledged.
        let (chunks, handed) = tokio::sync::mpsc::channel(4);
        let stop_driver = CancellationToken::new();
        // MariaDB only: the driver reads the high watermark's GTID from @@last_gtid.
        let driver = (self.settings().flavor == crate::config::Flavor::Mariadb).then(|| {
            crate::runtime::AbortOnDrop(tokio::spawn(super::snapshot::drive(
                opts.clone(),
                chunks,
                progress.subscribe(),
                stop_driver.clone(),
                self.metrics.clone(),
            )))
        });
        let mut windows = super::snapshot::Windows::new(handed);
        ctx.reporter.set(RoleState::Ready);
        let result = pipeline::run(
            opts,
            &self.settings(),
            start,
            &mut sink,
            &progress,
            &self.metrics,
            &ctx.shutdown,
            &mut windows,
        )
        .await;
        stop_driver.cancel();
        drop(driver);
        stop_writer.cancel();
        let written = writer.await.map_err(|e| CaptureError::Checkpoint(e.to_string()))?;
        result.and(written)
    }
}

impl Role for CaptureRole {
    fn name(&self) -> &'static str {
        "capture"
    }

    fn stage(&self) -> Stage {
        Stage::Capture
    }

    fn run(self: Box<Self>, ctx: RoleContext) -> RoleFuture {
        Box::pin(async move {
            // How long the stored position has stood still, refreshed every second whatever
            // capture is doing: with heartbeats a healthy capture moves it every checkpoint
            // interval; when the broker stops acknowledging, the binlog stream stalls or capture
            // keeps reconnecting, it grows, which is what an alert wants to see.
            let metrics = self.metrics.clone();
            let ager = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    metrics.refresh_checkpoint_age();
                }
            });
            let _ager = AbortOnDrop(ager);
            // Once per process, beside capture: a reconnecting capture must not wait on other
            // regions' primaries.
            let _overlap = AbortOnDrop(tokio::spawn(warn_on_auto_increment_overlap(
                self.region.clone(),
                self.mysql.clone(),
                self.others.clone(),
            )));
            let mut backoff = FIRST_BACKOFF;
            loop {
                let error = match self.session(&ctx).await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                };
                if ctx.shutdown.is_cancelled() {
                    tracing::warn!(error = %error, "capture stopped with an error during shutdown");
                    return Ok(());
                }
                if !error.is_transient() {
                    ctx.reporter.set(RoleState::Failed { error: error.to_string() });
                    return Err(anyhow::anyhow!(error).context("capture needs an operator"));
                }
                tracing::warn!(error = %error, retry_in = ?backoff, "capture failed; restarting from the checkpoint");
                ctx.reporter.set(RoleState::NotReady { reason: error.to_string() });
                self.metrics.reconnects.inc();
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }
}

/// Write the acknowledged position every `interval` when it moved (and once more on stop).
async fn write_checkpoints(
    mut conn: Conn,
    progress: watch::Receiver<Progress>,
    interval: Duration,
    stop: CancellationToken,
    metrics: CaptureMetrics,
) -> Result<(), CaptureError> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut written = 0u64;
    loop {
        let stopping = tokio::select! {
            biased;
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let current = progress.borrow().clone();
        if current.generation != written {
            checkpoint::save(&mut conn, &current.position, current.published.as_ref()).await?;
            written = current.generation;
            metrics.checkpoint_moved_now();
        }
        let now = now_us();
        if let Some(commit) = current.last_commit_us {
            metrics.lag.set(((now - commit) as f64 / 1e6).max(0.0));
        }
        if stopping {
            tracing::info!(position = %current.position, "final capture checkpoint written");
            return Ok(());
        }
    }
}

/// Warn when two regions' AUTO_INCREMENT settings can generate the same keys. The other
/// regions' primaries are asked too, best effort (a region that cannot be reached from here
/// within a few seconds is left out and said so).
async fn warn_on_auto_increment_overlap(
    region: String,
    local: MysqlConfig,
    others: Vec<(String, MysqlConfig)>,
) {
    let ask = |region: String, mysql: MysqlConfig| async move {
        let read = async {
            let mut c = Conn::new(mysql.primary_opts()).await?;
            let s = preflight::auto_increment(&mut c, &region).await;
            let _ = c.disconnect().await;
            s
        };
        match tokio::time::timeout(Duration::from_secs(3), read).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::info!(%region, error = %e, "auto_increment check skips a region");
                None
            }
            Err(_) => {
                tracing::info!(%region, "auto_increment check skips a region (no answer in 3s)");
                None
            }
        }
    };
    let mut settings = Vec::new();
    for (region, mysql) in std::iter::once((region, local)).chain(others) {
        settings.extend(ask(region, mysql).await);
    }
    for problem in preflight::auto_increment_overlaps(&settings) {
        tracing::warn!(%problem, "preflight");
    }
}

/// Writes `ferry.heartbeat` (region, microseconds) every second on the local primary.
pub struct HeartbeatRole {
    region: String,
    mysql: MysqlConfig,
    metrics: CaptureMetrics,
}

impl HeartbeatRole {
    pub fn from_config(config: &Config, metrics: CaptureMetrics) -> Option<Self> {
        let capture = config.capture.as_ref()?;
        let local = config.local()?;
        capture.write_heartbeat.then(|| Self {
            region: config.region.clone(),
            mysql: local.mysql.clone(),
            metrics,
        })
    }
}

/// Heartbeats are one per second: the unit other regions measure lag in.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

impl Role for HeartbeatRole {
    fn name(&self) -> &'static str {
        "heartbeat"
    }

    fn stage(&self) -> Stage {
        Stage::Capture
    }

    fn run(self: Box<Self>, ctx: RoleContext) -> RoleFuture {
        Box::pin(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut conn: Option<Conn> = None;
            loop {
                tokio::select! {
                    biased;
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                let write = async {
                    if conn.is_none() {
                        let opts = crate::failover::mysql::primary_opts(&self.mysql)
                            .await
                            .map_err(|e| mysql_async::Error::Other(e.into()))?;
                        conn = Some(Conn::new(opts).await?);
                    }
                    let c = conn.as_mut().ok_or(mysql_async::Error::Other("no connection".into()))?;
                    c.exec_drop(
                        "REPLACE INTO ferry.heartbeat (region, beat_at_us) VALUES (?, ?)",
                        (&self.region, now_us()),
                    )
                    .await
                };
                match tokio::time::timeout(HEARTBEAT_EVERY, write).await {
                    Ok(Ok(())) => {
                        self.metrics.heartbeat_writes.get_or_create(&ResultLabels { result: "ok" }).inc();
                        ctx.reporter.set(RoleState::Ready);
                    }
                    Ok(Err(e)) => {
                        conn = None;
                        self.metrics.heartbeat_writes.get_or_create(&ResultLabels { result: "error" }).inc();
                        ctx.reporter.set(RoleState::NotReady { reason: format!("heartbeat write: {e}") });
                    }
                    Err(_) => {
                        conn = None;
                        self.metrics.heartbeat_writes.get_or_create(&ResultLabels { result: "error" }).inc();
                        ctx.reporter.set(RoleState::NotReady { reason: "heartbeat write timed out".into() });
                    }
                }
            }
        })
    }
}
