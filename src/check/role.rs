//! The `check` role of `ferry run`: scheduled checks on the leader (the watch lease, or this
//! instance alone when there is none). A sliding-window check of the rows changed in
//! `[now − check.window, now − check.settle]` every `check.interval` (fresh divergence found
//! within minutes), and a full check every `check.full_every`, recorded chunk by chunk in
//! `ferry.check_progress` so a restarted ferry resumes it at once. Results go to metrics
//! (`ferry_check_*`, alerts `FerryRegionsDiffer`, `FerryCheckStale`) and `/status`; repairs
//! stay an operator's decision (`ferry check --repair`).

use crate::runtime::now_us;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use super::{Options, Report, progress};
use crate::config::Config;
use crate::metrics::{Metrics, names};
use crate::runtime::{Role, RoleContext, RoleFuture, Stage};
use crate::status::RoleState;
use crate::watch::leader::{LeaderCell, Leadership};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DifferenceLabels {
    pub mode: &'static str,
    pub table: String,
    pub kind: &'static str,
}

#[derive(Clone, Default)]
pub struct CheckMetrics {
    pub rows: Family<ModeLabels, Counter>,
    pub chunks: Family<ModeLabels, Counter>,
    pub differences: Family<DifferenceLabels, Gauge>,
    pub last_completed: Family<ModeLabels, Gauge<f64, AtomicU64>>,
    pub duration: Family<ModeLabels, Gauge<f64, AtomicU64>>,
    pub interval: Family<ModeLabels, Gauge<f64, AtomicU64>>,
}

impl CheckMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(names::CHECK_ROWS, m.rows.clone());
        metrics.register(names::CHECK_CHUNKS, m.chunks.clone());
        metrics.register(names::CHECK_DIFFERENCES, m.differences.clone());
        metrics.register(names::CHECK_LAST_COMPLETED, m.last_completed.clone());
        metrics.register(names::CHECK_DURATION, m.duration.clone());
        metrics.register(names::CHECK_INTERVAL, m.interval.clone());
        m
    }
}

pub struct CheckRole {
    config: Arc<Config>,
    metrics: CheckMetrics,
    leader: LeaderCell,
}

impl CheckRole {
    /// `None` unless `check.interval` or `check.full_every` is set.
    pub fn from_config(config: &Config, metrics: CheckMetrics, leader: LeaderCell) -> Option<Self> {
        (config.check.interval.is_some() || config.check.full_every.is_some()).then(|| Self {
            config: Arc::new(config.clone()),
            metrics,
            leader,
        })
    }

    /// Whether this instance leads now (alone when the watch has no lease configured).
    fn leading(&self) -> bool {
        let leased = self.config.watch.as_ref().is_some_and(|w| w.leader.is_some());
        if !leased {
            return true;
        }
        self.leader.get().map(Arc::clone).as_deref().and_then(Leadership::epoch).is_some()
    }
}

/// The shortest time a scheduled window run may take before it is cut.
const MIN_RUN_LIMIT: Duration = Duration::from_secs(60);
/// A failed full check is tried again this soon (or at its interval, if shorter).
const RETRY_FULL: Duration = Duration::from_secs(60);

/// The last completed run of each mode, for the metrics and `/status`.
#[derive(Default)]
struct Last {
    runs: BTreeMap<&'static str, serde_json::Value>,
    differences: BTreeMap<&'static str, Vec<(String, &'static str)>>,
}

impl CheckRole {
    fn record(
        &self,
        mode: &'static str,
        report: &Report,
        last: &mut Last,
        reporter: &crate::status::RoleReporter,
    ) {
        let labels = ModeLabels { mode };
        self.metrics.rows.get_or_create(&labels).inc_by(report.summary.rows);
        self.metrics.chunks.get_or_create(&labels).inc_by(report.summary.chunks);
        self.metrics.last_completed.get_or_create(&labels).set(now_us() as f64 / 1e6);
        self.metrics.duration.get_or_create(&labels).set(report.summary.seconds);
        // A resumed full check compared only the tables not done before the restart: the
        // others keep what was found for them.
        let mut found: Vec<(String, &'static str)> = last
            .differences
            .remove(mode)
            .unwrap_or_default()
            .into_iter()
            .filter(|(table, _)| !report.compared.contains(table))
            .collect();
        found.extend(report.differences.iter().map(|d| (d.table.clone(), d.kind)));
        last.differences.insert(mode, found);
        // Rebuilt from both modes: a gauge of a difference that is gone must go too.
        self.metrics.differences.clear();
        for (mode, found) in &last.differences {
            for (table, kind) in found {
                self.metrics
                    .differences
                    .get_or_create(&DifferenceLabels { mode, table: table.clone(), kind })
                    .inc();
            }
        }
        if !report.differences.is_empty() {
            tracing::warn!(
                mode,
                differences = report.differences.len(),
                "the regions differ (ferry check --repair decides and fixes)"
            );
        }
        last.runs.insert(
            mode,
            serde_json::json!({
                "completed_at_us": now_us(),
                "summary": report.summary,
                "differences": report.differences.iter().take(50).collect::<Vec<_>>(),
                "skipped": report.skipped,
            }),
        );
        reporter.set_details(serde_json::json!(last.runs));
    }
}

impl Role for CheckRole {
    fn name(&self) -> &str {
        "check"
    }

    fn stage(&self) -> Stage {
        Stage::Control
    }

    fn run(self: Box<Self>, ctx: RoleContext) -> RoleFuture {
        Box::pin(async move {
            let c = &self.config.check;
            if let Some(i) = c.interval {
                self.metrics.interval.get_or_create(&ModeLabels { mode: "window" }).set(i.as_secs_f64());
            }
            if let Some(i) = c.full_every {
                self.metrics.interval.get_or_create(&ModeLabels { mode: "full" }).set(i.as_secs_f64());
            }
            ctx.reporter.set(RoleState::Ready);
            let options = Options { tables: c.tables.clone(), regions: Vec::new() };
            let mut last = Last::default();
            let started = Instant::now();
            let mut next_window = c.interval.map(|i| started + i);
            // A full check left half-way by an earlier process resumes at once; otherwise the
            // next one is due a full interval after the last completed one (at once if never).
            let mut next_full = None;
            if let Some(every) = c.full_every {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    first = self.first_full(started, every) => next_full = Some(first),
                }
            }
            // Where the last window ended: the next starts there, so no rows fall in a gap.
            let mut window_end: Option<i64> = None;
            let mut led = false;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                if !self.leading() {
                    if led {
                        // What this instance found is the new leader's to say now.
                        self.metrics.differences.clear();
                        last = Last::default();
                        ctx.reporter.set_details(serde_json::json!({ "leading": false }));
                        led = false;
                    }
                    continue;
                }
                led = true;
                let now = Instant::now();
                if let (Some(at), Some(every)) = (next_window, c.interval)
                    && now >= at
                {
                    next_window = Some(now + every);
                    let to = now_us() - i64::try_from(c.settle.as_micros()).unwrap_or(0);
                    let back = now_us() - i64::try_from(c.window.as_micros()).unwrap_or(0);
                    let from = window_end.map_or(back, |end| end.min(back));
                    // A run stuck on a connection that never answers must not stop every
                    // later one: it is cut after a window's length (its rows are checked again).
                    let run = tokio::time::timeout(
                        c.window.max(MIN_RUN_LIMIT),
                        super::window(&self.config, &options, from, to),
                    );
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return Ok(()),
                        result = run => match result.unwrap_or_else(|_| Err("cut: it ran longer than check.window".into())) {
                            Ok(report) => {
                                window_end = Some(to);
                                self.record("window", &report, &mut last, &ctx.reporter)
                            }
                            Err(e) => tracing::warn!(error = %e, "the sliding-window check failed; the next covers its rows"),
                        },
                    }
                }
                if let (Some(at), Some(every)) = (next_full, c.full_every)
                    && now >= at
                {
                    next_full = Some(now + every);
                    // Cut after its interval; the next run resumes it from ferry.check_progress.
                    let run = tokio::time::timeout(every, self.full(&options));
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return Ok(()),
                        result = run => match result.unwrap_or_else(|_| Err("cut: it ran longer than check.full_every".into())) {
                            Ok(report) => self.record("full", &report, &mut last, &ctx.reporter),
                            Err(e) => {
                                tracing::warn!(error = %e, "the full check failed; it resumes in a minute");
                                next_full = Some(Instant::now() + every.min(RETRY_FULL));
                            }
                        },
                    }
                }
            }
        })
    }
}

impl CheckRole {
    async fn store(&self) -> Result<progress::Store, String> {
        let local =
            super::connect(&self.config, &self.config.region, crate::config::ReadFrom::Primary).await?;
        Ok(progress::Store::new(local.conn))
    }

    /// When the first full check of this process is due, from `ferry.check_progress`.
    async fn first_full(&self, now: Instant, every: Duration) -> Instant {
        let Ok(mut store) = self.store().await else { return now };
        if store.load().await.is_ok_and(|places| !places.is_empty()) {
            return now;
        }
        match store.completed_ago().await {
            Ok(Some(ago)) => {
                // The alert's clock starts from the last completion, not from this restart.
                let at = now_us() as f64 / 1e6 - ago.as_secs_f64();
                self.metrics.last_completed.get_or_create(&ModeLabels { mode: "full" }).set(at);
                if ago < every { now + (every - ago) } else { now }
            }
            _ => now,
        }
    }

    async fn full(&self, options: &Options) -> Result<Report, String> {
        let mut store = self.store().await?;
        super::run_with(&self.config, options, Some(&mut store)).await
    }
}
