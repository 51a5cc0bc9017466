//! The `watch` role: one loop per target. Each tick probes, feeds the target's `Tracker`, and
//! keeps the load-balancer member where the health says it belongs: taken out while Down (or
//! held down), put back when Up. The member's wanted place is reconciled every tick, so a
//! failed action is retried and an action skipped while the loop distrusted itself (late
//! ticks) happens once it is on time again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::alert::{Alert, Alerter};
use super::lb::{self, Outcome};
use super::leader::{Holder, KubeLease, Leadership, Lease};
use super::primary::{PrimaryWatch, Region};
use super::probe::{Credentials, Failure, probe};
use super::state::{Event, Thresholds, Tilt, Tracker};
use crate::config::{Config, LbMember, TargetConfig, WatchConfig};
use crate::metrics::{Metrics, names};
use crate::runtime::{Role, RoleContext, RoleFuture, Stage};
use crate::status::RoleState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub target: String,
    pub to: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub target: String,
    pub action: &'static str,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub kind: &'static str,
    pub phase: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct WatchMetrics {
    pub up: Family<TargetLabels, Gauge>,
    pub failures: Family<TargetLabels, Gauge>,
    pub probe_seconds: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub actions: Family<ActionLabels, Counter>,
    pub tilted: Gauge,
    pub leader: Gauge,
    pub failovers: Family<FailoverLabels, Counter>,
    pub failover_phases: Family<PhaseLabels, Gauge<f64, AtomicU64>>,
    pub old_primaries_fenced: Gauge,
    pub credentials_refused: Family<TargetLabels, Gauge>,
}

impl WatchMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(names::WATCH_TARGET_UP, m.up.clone());
        metrics.register(names::WATCH_FAILURES, m.failures.clone());
        metrics.register(names::WATCH_PROBE_SECONDS, m.probe_seconds.clone());
        metrics.register(names::WATCH_TRANSITIONS, m.transitions.clone());
        metrics.register(names::WATCH_ACTIONS, m.actions.clone());
        metrics.register(names::WATCH_TILTED, m.tilted.clone());
        metrics.register(names::WATCH_LEADER, m.leader.clone());
        metrics.register(names::FAILOVER_TOTAL, m.failovers.clone());
        metrics.register(names::FAILOVER_PHASE_SECONDS, m.failover_phases.clone());
        metrics.register(names::FAILOVER_OLD_PRIMARY, m.old_primaries_fenced.clone());
        metrics.register(names::WATCH_CREDENTIALS_REFUSED, m.credentials_refused.clone());
        m
    }
}

pub struct WatchRole {
    region: String,
    config: WatchConfig,
    credentials: Credentials,
    metrics: WatchMetrics,
    servers: Region,
    /// The whole configuration, for region failover.
    whole: Arc<Config>,
    /// Where the leadership is published for other roles.
    leader: crate::watch::leader::LeaderCell,
}

impl WatchRole {
    /// `None` without a `watch` section or targets (or, which validation rules out, without the
    /// local region).
    pub fn from_config(
        config: &Config,
        metrics: WatchMetrics,
        leader: crate::watch::leader::LeaderCell,
    ) -> Option<Self> {
        let watch = config.watch.clone().filter(|w| !w.targets.is_empty())?;
        let local = config.local()?;
        let credentials = Credentials {
            mysql: Some((local.mysql.user.clone(), local.mysql.password.clone())),
            redis_password: local.redis.as_ref().and_then(|r| r.password.clone()),
        };
        let servers = Region::new(local, config.failover.clone().unwrap_or_default());
        Some(Self {
            region: config.region.clone(),
            config: watch,
            credentials,
            metrics,
            servers,
            whole: Arc::new(config.clone()),
            leader,
        })
    }
}

/// What `/status` shows: each target's state and the recent journal.
#[derive(Default)]
struct Board {
    targets: BTreeMap<String, serde_json::Value>,
    journal: VecDeque<serde_json::Value>,
    limit: usize,
}

impl Board {
    fn record(&mut self, entry: serde_json::Value) {
        tracing::info!(event = %entry, "watch");
        self.journal.push_back(entry);
        while self.journal.len() > self.limit {
            self.journal.pop_front();
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "targets": self.targets, "journal": self.journal })
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Shared by the target loops.
struct Shared {
    board: Mutex<Board>,
    /// Target loops currently distrusting themselves.
    tilted: AtomicUsize,
    metrics: WatchMetrics,
    credentials: Credentials,
    reporter: crate::status::RoleReporter,
    shutdown: tokio_util::sync::CancellationToken,
    alerter: Option<Alerter>,
    region: String,
    leadership: Arc<Leadership>,
    lease: Option<Holder>,
    /// The Kubernetes client, made on first use (in-cluster config or kubeconfig).
    kube: tokio::sync::OnceCell<kube::Client>,
    /// The region's servers, for primary targets.
    servers: Region,
    /// Old primaries left fenced, over all targets.
    fenced: AtomicUsize,
    /// Targets whose probe refuses ferry's credentials, with the reason.
    refused: Mutex<BTreeMap<String, String>>,
    whole: Arc<Config>,
}

impl Shared {
    fn alert_labels(&self, name: &str, target: &TargetConfig) -> BTreeMap<String, String> {
        [
            ("alertname", name),
            ("region", self.region.as_str()),
            ("target", target.name.as_str()),
            ("kind", target.probe.kind()),
            ("severity", if name == "FerryTargetFlapping" { "warning" } else { "critical" }),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn fire(&self, name: &str, target: &TargetConfig, summary: String, description: String) {
        if let Some(alerter) = &self.alerter {
            let annotations = [("summary".to_string(), summary), ("description".to_string(), description)]
                .into_iter()
                .collect();
            alerter.fire(Alert { labels: self.alert_labels(name, target), annotations });
        }
    }

    fn resolve(&self, name: &str, target: &TargetConfig) {
        if let Some(alerter) = &self.alerter {
            alerter.resolve(&self.alert_labels(name, target));
        }
    }
}

impl Shared {
    async fn kube(&self) -> Result<kube::Client, String> {
        self.kube
            .get_or_try_init(|| async {
                kube::Client::try_default().await.map_err(|e| format!("Kubernetes client: {e}"))
            })
            .await
            .cloned()
    }

    /// Note whether `target`'s probe refuses ferry's credentials: ferry is then not ready
    /// (it cannot judge that target), with the reason.
    fn misconfigured(&self, target: &str, reason: Option<&str>) {
        let Ok(mut refused) = self.refused.lock() else { return };
        let changed = match reason {
            Some(r) => refused.insert(target.to_string(), r.to_string()).as_deref() != Some(r),
            None => refused.remove(target).is_some(),
        };
        self.metrics
            .credentials_refused
            .get_or_create(&TargetLabels { target: target.to_string() })
            .set(i64::from(reason.is_some()));
        if !changed {
            return;
        }
        if let Some(r) = reason {
            tracing::error!(%target, reason = %r, "probe refused ferry's credentials: not counted as a failure; fix the configuration");
        }
        match refused.iter().next() {
            Some((t, r)) => self
                .reporter
                .set(RoleState::NotReady { reason: format!("watch: {t} refuses ferry's credentials: {r}") }),
            None => self.reporter.set(RoleState::Ready),
        }
    }

    fn publish(&self) {
        let tilted = self.tilted.load(Ordering::Relaxed) > 0;
        self.metrics.tilted.set(i64::from(tilted));
        let epoch = self.leadership.epoch();
        self.metrics.leader.set(i64::from(epoch.is_some()));
        self.metrics.old_primaries_fenced.set(self.fenced.load(Ordering::Relaxed) as i64);
        let mut details = self.board.lock().map(|b| b.json()).unwrap_or_default();
        details["leader"] =
            serde_json::json!({ "leading": epoch.is_some(), "epoch": epoch, "lease": self.lease.is_some() });
        details["tilted"] = tilted.into();
        details["acting"] = (epoch.is_some() && !tilted).into();
        self.reporter.set_details(details);
    }
}

impl WatchRole {
    /// Start holding (or trying for) the configured lease.
    async fn lease(&self, l: &crate::config::LeaderConfig) -> Result<Holder, String> {
        match (&l.redis, &l.kubernetes) {
            (Some(redis), _) => {
                let password = self.credentials.redis_password.as_ref().map(crate::config::Secret::expose);
                let url = super::net::redis_url(redis, password);
                let key = l.key.clone().unwrap_or_else(|| format!("ferry:watch:leader:{}", self.region));
                Lease::start(&url, &key, l.ttl).map(Holder::Redis)
            }
            (None, Some(k)) => {
                let client =
                    kube::Client::try_default().await.map_err(|e| format!("Kubernetes client: {e}"))?;
                let name = k.name.clone().unwrap_or_else(|| format!("ferry-watch-{}", self.region));
                KubeLease::start(client, &k.namespace, &name, &Holder::identity(), l.ttl)
                    .await
                    .map(Holder::Kube)
            }
            (None, None) => Err("watch.leader: set redis or kubernetes".into()),
        }
    }
}

impl Role for WatchRole {
    fn name(&self) -> &str {
        "watch"
    }

    fn stage(&self) -> Stage {
        Stage::Control
    }

    fn run(self: Box<Self>, ctx: RoleContext) -> RoleFuture {
        Box::pin(async move {
            let lease = match &self.config.leader {
                None => None,
                Some(l) => Some(self.lease(l).await.map_err(|e| anyhow::anyhow!(e))?),
            };
            let shared = Arc::new(Shared {
                board: Mutex::new(Board { limit: self.config.journal.max(1), ..Board::default() }),
                tilted: AtomicUsize::new(0),
                metrics: self.metrics.clone(),
                credentials: self.credentials.clone(),
                reporter: ctx.reporter.clone(),
                shutdown: ctx.shutdown.clone(),
                alerter: self.config.alertmanager.as_ref().and_then(|am| match Alerter::start(&am.url) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        tracing::error!(error = %e, "watch.alertmanager: alerts go to the log and metrics only");
                        None
                    }
                }),
                region: self.region.clone(),
                leadership: lease.as_ref().map_or_else(Leadership::alone, Holder::leadership),
                lease,
                kube: tokio::sync::OnceCell::new(),
                servers: self.servers.clone(),
                fenced: AtomicUsize::new(0),
                refused: Mutex::new(BTreeMap::new()),
                whole: self.whole.clone(),
            });
            let _ = self.leader.set(shared.leadership.clone());
            ctx.reporter.set(RoleState::Ready);
            let mut loops = tokio::task::JoinSet::new();
            for target in self.config.targets.clone() {
                let (shared, watch) = (shared.clone(), self.config.clone());
                loops.spawn(watch_target(target, watch, shared));
            }
            ctx.shutdown.cancelled().await;
            loops.shutdown().await;
            Ok(())
        })
    }
}

/// Wait for the next tick; whether the loop may act (it was on time, see `Tilt`). Lateness is
/// measured on tokio's clock, the one the interval runs on.
async fn next_tick(tick: &mut tokio::time::Interval, tilt: &mut Tilt) -> bool {
    let due = tick.tick().await;
    tilt.tick(due.into_std(), tokio::time::Instant::now().into_std())
}

/// Where a target's load-balancer member should be, and where it was last put.
struct Membership {
    wanted_in: bool,
    known_in: Option<bool>,
    /// Taking it out was refused: it is the last member serving.
    kept_last: bool,
}

/// The alerts a target's state calls for.
fn wanted_alerts(
    tracker: &Tracker,
    member: &Membership,
    primary: Option<&PrimaryWatch>,
    refused: bool,
) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    if refused {
        out.insert("FerryProbeCredentials");
    }
    if primary.is_some_and(|p| p.refused.is_some()) {
        out.insert("FerryFailoverNotDone");
    }
    if primary.is_some_and(|p| !p.fenced.is_empty()) {
        out.insert("FerryOldPrimaryFenced");
    }
    if !tracker.health().is_serving() {
        out.insert("FerryTargetDown");
    }
    if tracker.held_until().is_some() {
        out.insert("FerryTargetFlapping");
    }
    if member.kept_last && !member.wanted_in {
        out.insert("FerryLastMemberKept");
    }
    out
}

async fn watch_target(target: TargetConfig, watch: WatchConfig, shared: Arc<Shared>) {
    let labels = TargetLabels { target: target.name.clone() };
    let thresholds = Thresholds { failure: target.failure_threshold, recovery: target.recovery_threshold };
    let mut tracker = Tracker::new(thresholds, watch.flap.clone());
    let mut tilt = Tilt::new(watch.tick_tolerance, watch.on_time_ticks);
    let mut member = Membership { wanted_in: true, known_in: None, kept_last: false };
    let mut alerts_sent: BTreeSet<&'static str> = BTreeSet::new();
    let mut primary = match target.failover.as_ref().and_then(|f| f.primary.map(|k| (k, f))) {
        Some((kind, f)) => {
            Some(PrimaryWatch::start(kind, f.clone(), &shared.servers, target.probe.address()).await)
        }
        None => None,
    };
    let mut other_region = target.failover.as_ref().and_then(super::region::RegionWatch::new);
    let mut tick = tokio::time::interval(target.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let was_tilted = tilt.is_tilted();
        let acting = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            acting = next_tick(&mut tick, &mut tilt) => acting,
        };
        if tilt.is_tilted() != was_tilted {
            if acting {
                shared.tilted.fetch_sub(1, Ordering::Relaxed);
            } else {
                shared.tilted.fetch_add(1, Ordering::Relaxed);
            }
            let what = if acting { "on time again: acting" } else { "tick ran late: not acting" };
            tracing::warn!(target = %target.name, "watch loop {what}");
            record(&shared, &target.name, "tilt", if acting { "resumed" } else { "tilted" }, None);
        }
        let started = Instant::now();
        let following = primary.as_ref().map(|p| target.probe.with_address(p.current.address()));
        let result =
            probe(following.as_ref().unwrap_or(&target.probe), &shared.credentials, target.timeout).await;
        // Refused credentials say nothing of the target's health: not counted either way.
        let refused = match &result {
            Err(Failure::Credentials(reason)) => Some(reason.clone()),
            _ => None,
        };
        shared.misconfigured(&target.name, refused.as_deref());
        if let Some(p) = primary.as_mut()
            && refused.is_none()
            && let Some(now) = p.observed(result.is_ok(), &shared.servers).await
        {
            record(
                &shared,
                &target.name,
                "primary_moved",
                &now,
                Some("no longer the primary: following".into()),
            );
        }
        shared.metrics.probe_seconds.get_or_create(&labels).set(started.elapsed().as_secs_f64());
        let event = if refused.is_some() { None } else { tracker.observe(result.is_ok(), Instant::now()) };
        let last_error = result.err().map(|f| f.reason().to_string());
        shared.metrics.failures.get_or_create(&labels).set(i64::from(tracker.consecutive_failures()));
        shared.metrics.up.get_or_create(&labels).set(i64::from(tracker.health().is_serving()));
        if let Some(event) = event {
            let (to, detail) = match event {
                Event::WentDown => ("down", last_error.clone()),
                Event::WentUp => ("up", None),
                Event::HeldDown { until } => (
                    "held_down",
                    Some(format!(
                        "flapping: held down for {:?}",
                        until.saturating_duration_since(Instant::now())
                    )),
                ),
            };
            shared
                .metrics
                .transitions
                .get_or_create(&TransitionLabels { target: target.name.clone(), to })
                .inc();
            record(&shared, &target.name, "transition", to, detail);
            member.wanted_in = matches!(event, Event::WentUp);
            member.kept_last = false;
        }
        // Only the leader acts, and only with an epoch Redis still confirms.
        let epoch = shared.leadership.epoch();
        let pending_lb = target.lb.is_some() && member.known_in != Some(member.wanted_in);
        let failover_due = refused.is_none()
            && primary.as_ref().is_some_and(|p| !tracker.health().is_serving() && p.due(Instant::now()));
        let settle_due = primary.as_ref().is_some_and(|p| p.settle_due(Instant::now()));
        if let Some(r) = other_region.as_mut() {
            r.observed(tracker.health().is_serving(), Instant::now());
        }
        let region_due = other_region.as_ref().is_some_and(|r| r.due(Instant::now()));
        let mut allowed = acting && epoch.is_some();
        if allowed
            && (pending_lb
                || failover_due
                || settle_due
                || region_due
                || wanted_alerts(&tracker, &member, primary.as_ref(), refused.is_some()) != alerts_sent)
            && let (Some(lease), Some(e)) = (&shared.lease, epoch)
            && !lease.fenced(e).await
        {
            tracing::warn!(target = %target.name, epoch = e, "watch: epoch no longer current; not acting");
            allowed = false;
        }
        if !allowed {
            // Whoever acts next starts from what the target needs, not from what was sent.
            alerts_sent.clear();
        }
        if let Some(lb) = &target.lb
            && pending_lb
        {
            if allowed {
                act(&shared, &target, lb, &mut member, epoch).await;
            } else {
                let action = if member.wanted_in { "put_back" } else { "take_out" };
                let why = if acting { "skipped_not_leader" } else { "skipped_tilted" };
                count(&shared, &target.name, action, why);
            }
        }
        if let Some(p) = primary.as_mut()
            && allowed
            && (failover_due || settle_due)
        {
            let started = Instant::now();
            let fenced_before = p.fenced.len();
            if failover_due {
                let report = p.fail_over(&shared.servers, target.interval).await;
                failed_over(&shared, &target.name, &report, epoch);
                if report.result == "done" {
                    // The promoted server starts with a clean slate.
                    tracker = Tracker::new(thresholds, watch.flap.clone());
                }
            }
            for (old, what) in p.settle_returned(&shared.servers, target.timeout).await {
                record(&shared, &target.name, "old_primary", &old, Some(what));
            }
            match p.fenced.len().cmp(&fenced_before) {
                std::cmp::Ordering::Greater => {
                    shared.fenced.fetch_add(p.fenced.len() - fenced_before, Ordering::Relaxed);
                }
                std::cmp::Ordering::Less => {
                    shared.fenced.fetch_sub(fenced_before - p.fenced.len(), Ordering::Relaxed);
                }
                std::cmp::Ordering::Equal => {}
            }
            // Acting took this long on purpose: the next tick is due an interval from now, not
            // late (which would read as a stalled process).
            if started.elapsed() > target.interval {
                tick.reset();
            }
        }
        if let Some(r) = other_region.as_mut()
            && allowed
            && region_due
        {
            let started = Instant::now();
            match r.act(&shared.whole, target.interval).await {
                Some(super::region::Decision::Partition(why)) => {
                    tracing::warn!(target = %target.name, "{why}");
                    record(&shared, &target.name, "region_failover", "partition", Some(why));
                }
                Some(super::region::Decision::NotStandby(why)) => {
                    tracing::warn!(target = %target.name, "{why}");
                    record(&shared, &target.name, "region_failover", "not_standby", Some(why));
                }
                Some(super::region::Decision::Unconfirmed(why)) => {
                    tracing::warn!(target = %target.name, "{why}");
                    record(&shared, &target.name, "region_failover", "unconfirmed", Some(why));
                }
                Some(super::region::Decision::Switched(report)) => {
                    let kind = FailoverLabels {
                        kind: "region",
                        result: if report.result == "done" { "done" } else { "failed" },
                    };
                    shared.metrics.failovers.get_or_create(&kind).inc();
                    tracing::warn!(target = %target.name, from = %r.region, result = %report.result, "region failover");
                    record_report(&shared, &target.name, "region_failover", &report.result, epoch, &*report);
                }
                Some(super::region::Decision::Failed(e)) => {
                    shared
                        .metrics
                        .failovers
                        .get_or_create(&FailoverLabels { kind: "region", result: "failed" })
                        .inc();
                    record(&shared, &target.name, "region_failover", "failed", Some(e));
                }
                None => {}
            }
            if started.elapsed() > target.interval {
                tick.reset();
            }
        }
        if allowed {
            let want_alerts = wanted_alerts(&tracker, &member, primary.as_ref(), refused.is_some());
            for name in want_alerts.difference(&alerts_sent) {
                let (summary, description) = match *name {
                    "FerryProbeCredentials" => (
                        format!("{} refuses ferry's credentials: a configuration problem", target.name),
                        format!(
                            "The {} probe was refused ({}); the target is not counted down or failed over \
                             for it. Fix the account or its grants.",
                            target.probe.kind(),
                            refused.clone().unwrap_or_default()
                        ),
                    ),
                    "FerryTargetDown" => (
                        format!("{} ({}) is down", target.name, target.probe.address()),
                        format!(
                            "{} consecutive {} probes failed; last: {}",
                            target.failure_threshold,
                            target.probe.kind(),
                            last_error.clone().unwrap_or_default()
                        ),
                    ),
                    "FerryFailoverNotDone" => (
                        format!("{} is down and ferry could not fail it over", target.name),
                        primary.as_ref().and_then(|p| p.refused.clone()).unwrap_or_default(),
                    ),
                    "FerryOldPrimaryFenced" => (
                        format!("an old primary of {} is fenced and needs an operator", target.name),
                        primary
                            .as_ref()
                            .map(|p| {
                                p.fenced
                                    .iter()
                                    .map(|f| format!("{}: {}", f.server.address(), f.reason))
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            })
                            .unwrap_or_default(),
                    ),
                    "FerryTargetFlapping" => (
                        format!("{} is flapping and held down", target.name),
                        format!(
                            "more than {} up/down changes within {:?}",
                            watch.flap.transitions, watch.flap.window
                        ),
                    ),
                    _ => (
                        format!("{} is down but is the last serving member of its backend", target.name),
                        "ferry did not take it out: no other member of the backend is serving".to_string(),
                    ),
                };
                shared.fire(name, &target, summary, description);
            }
            for name in alerts_sent.difference(&want_alerts) {
                shared.resolve(name, &target);
            }
            alerts_sent = want_alerts;
        }
        if let Ok(mut board) = shared.board.lock() {
            board.targets.insert(
                target.name.clone(),
                serde_json::json!({
                    "state": tracker.health().as_str(),
                    "consecutive_failures": tracker.consecutive_failures(),
                    "last_error": last_error,
                    "credentials_refused": refused,
                    "in_load_balancer": member.known_in,
                    "held_down": tracker.held_until().is_some(),
                    "primary": primary.as_ref().map(|p| p.current.address()),
                    "old_primaries_waiting": primary.as_ref().map(|p| p.returned.iter().map(|s| s.address()).collect::<Vec<_>>()),
                    "old_primaries_fenced": primary.as_ref().map(|p| {
                        p.fenced.iter().map(|f| (f.server.address(), f.reason.clone())).collect::<Vec<_>>()
                    }),
                }),
            );
        }
        shared.publish();
    }
}

/// Journal, log and count a failover.
fn failed_over(shared: &Shared, target: &str, report: &crate::failover::run::Report, epoch: Option<u64>) {
    shared
        .metrics
        .failovers
        .get_or_create(&FailoverLabels { kind: report.kind, result: report.result })
        .inc();
    for (phase, seconds) in &report.phases {
        shared.metrics.failover_phases.get_or_create(&PhaseLabels { kind: report.kind, phase }).set(*seconds);
    }
    if report.result == "done" {
        tracing::warn!(%target, old = %report.old, new = ?report.new, total_s = report.total_seconds(), "failed over");
    } else {
        tracing::error!(%target, old = %report.old, reason = ?report.reason, "failover {}", report.result);
    }
    record_report(shared, target, "failover", report.result, epoch, report);
}

/// A journal entry carrying a whole failover report.
fn record_report(
    shared: &Shared,
    target: &str,
    kind: &str,
    what: &str,
    epoch: Option<u64>,
    report: &impl serde::Serialize,
) {
    if let Ok(mut board) = shared.board.lock() {
        board.record(serde_json::json!({
            "at_unix_ms": unix_ms(), "target": target, "kind": kind, "what": what, "epoch": epoch,
            "report": serde_json::to_value(report).unwrap_or_default(),
        }));
    }
}

fn count(shared: &Shared, target: &str, action: &'static str, result: &'static str) {
    shared.metrics.actions.get_or_create(&ActionLabels { target: target.to_string(), action, result }).inc();
}

fn record(shared: &Shared, target: &str, kind: &str, what: &str, detail: Option<String>) {
    if let Ok(mut board) = shared.board.lock() {
        board.record(serde_json::json!({
            "at_unix_ms": unix_ms(), "target": target, "kind": kind, "what": what, "detail": detail,
        }));
    }
}

/// Move the member to where it should be; read back; journal and count the result.
async fn act(
    shared: &Shared,
    config: &TargetConfig,
    lb: &LbMember,
    member: &mut Membership,
    epoch: Option<u64>,
) {
    let target = config.name.as_str();
    let described = lb.describe();
    let started = Instant::now();
    let action = if member.wanted_in { "put_back" } else { "take_out" };
    let result = match lb {
        LbMember::Haproxy { api, backend, server, down_state } => {
            if member.wanted_in {
                lb::put_back(api, backend, server).await
            } else {
                lb::take_out(api, backend, server, *down_state).await
            }
        }
        LbMember::Kubernetes { namespace, pod, peers, .. } => match (shared.kube().await, lb.kube_switch()) {
            (Ok(client), Some(switch)) => {
                super::kube::set_member(client, namespace, pod, peers, &switch, member.wanted_in).await
            }
            (Err(e), _) => Err(e),
            (_, None) => Err("set exactly one of gate and label".into()),
        },
    };
    let took = started.elapsed();
    let (label, detail) = match &result {
        Ok(Outcome::Done) => ("done", None),
        Ok(Outcome::Already) => ("already", None),
        Ok(Outcome::LastMember) => {
            ("refused_last_member", Some(format!("{described} is the last member serving")))
        }
        Err(e) => ("failed", Some(e.clone())),
    };
    match &result {
        Ok(Outcome::Done | Outcome::Already) => member.known_in = Some(member.wanted_in),
        Ok(Outcome::LastMember) => {
            if !member.kept_last {
                tracing::error!(%target, member = %described, "not taking out the last serving member");
            }
            member.kept_last = true;
        }
        Err(e) => tracing::warn!(%target, error = %e, "load-balancer action failed; retrying next tick"),
    }
    count(shared, target, action, label);
    if let Ok(mut board) = shared.board.lock() {
        board.record(serde_json::json!({
            "at_unix_ms": unix_ms(), "target": target, "kind": "action", "what": action,
            "member": described, "result": label, "detail": detail, "epoch": epoch,
            "duration_ms": took.as_secs_f64() * 1000.0,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_loop_stops_acting_until_its_ticks_are_on_time_again() {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tilt = Tilt::new(Duration::from_millis(500), 3);
        assert!(next_tick(&mut tick, &mut tilt).await, "the first tick is on time");
        assert!(next_tick(&mut tick, &mut tilt).await);
        // The process stalls for 4 s (nothing runs, the clock moves on).
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!next_tick(&mut tick, &mut tilt).await, "the tick due 4 s ago arrives late");
        let mut on_time = 0;
        while !next_tick(&mut tick, &mut tilt).await {
            on_time += 1;
            assert!(on_time < 10, "acting never resumed");
        }
        assert_eq!(on_time, 2, "acting resumes on the third on-time tick");
    }
}
