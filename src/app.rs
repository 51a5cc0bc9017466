//! The supervisor: starts the roles configured for this region, serves HTTP, and stops
//! everything in order when a signal arrives or a role dies.
//!
//! Contract:
//! - A role runs until its shutdown token is cancelled. A role that returns (or panics) before
//!   shutdown was asked for is a failure: the whole process shuts down and exits non-zero. It
//!   never limps on without a critical role.
//! - Shutdown is ordered by [`Stage`], following the data path: stop reading the binlog, drain
//!   publishing, let appliers finish the in-flight transaction, let control actions finish; the
//!   HTTP server stops last so health and metrics stay visible until the end.
//! - The whole shutdown shares one grace deadline. Roles still running at the deadline are
//!   aborted and named, and the outcome is non-zero.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{self, HttpServer, Metrics};
use crate::runtime::{Role, RoleContext, Stage, shutdown_signal};
use crate::status::{RoleReporter, RoleState, Status};

/// How a supervised run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Asked to stop, and everything stopped in order within the grace period.
    Clean,
    /// One or more roles failed (ended early, returned an error, or panicked).
    RolesFailed { failures: Vec<(String, String)> },
    /// The grace period ran out; these were still running and were aborted.
    GraceExceeded { pending: Vec<String> },
    /// The HTTP server failed.
    HttpFailed { error: String },
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Clean => 0,
            _ => 1,
        }
    }
}

pub struct Supervisor {
    roles: Vec<Box<dyn Role>>,
    grace: Duration,
    status: Status,
    metrics: Metrics,
}

struct Running {
    name: String,
    stage: Stage,
    reporter: RoleReporter,
}

impl Supervisor {
    pub fn new(grace: Duration, status: Status, metrics: Metrics) -> Self {
        Self { roles: Vec::new(), grace, status, metrics }
    }

    pub fn add(&mut self, role: Box<dyn Role>) {
        self.roles.push(role);
    }

    /// Run the roles and the HTTP server until `stop` resolves or something fails, then shut
    /// down in order.
    pub async fn run(self, http: HttpServer, stop: impl Future<Output = ()>) -> Outcome {
        let stage_tokens: HashMap<Stage, CancellationToken> =
            Stage::ORDER.iter().map(|s| (*s, CancellationToken::new())).collect();
        let mut tasks = JoinSet::new();
        let mut running: HashMap<Id, Running> = HashMap::new();
        for role in self.roles {
            let (name, stage) = (role.name().to_string(), role.stage());
            let reporter = self.status.reporter(&name);
            let ctx = RoleContext { shutdown: stage_tokens[&stage].clone(), reporter: reporter.clone() };
            let handle = tasks.spawn(role.run(ctx));
            running.insert(handle.id(), Running { name, stage, reporter });
        }

        let http_stop = CancellationToken::new();
        let router = metrics::router(self.metrics.clone(), self.status.clone());
        let mut http_task = tokio::spawn(http.serve(router, http_stop.clone()));

        let mut failures: Vec<(String, String)> = Vec::new();
        let mut http_error: Option<String> = None;
        tokio::select! {
            biased;
            _ = stop => tracing::info!("shutdown requested"),
            Some(joined) = tasks.join_next_with_id() => {
                record(joined, &mut running, &mut failures, false);
            }
            res = &mut http_task => http_error = Some(http_result(res)),
        }

        self.status.begin_shutdown();
        self.metrics.up.set(0);
        let deadline = Instant::now() + self.grace;
        let mut pending = Vec::new();
        for stage in Stage::ORDER {
            let started = Instant::now();
            stage_tokens[&stage].cancel();
            for r in running.values().filter(|r| r.stage == stage) {
                r.reporter.set(RoleState::Stopping);
            }
            while running.values().any(|r| r.stage == stage) {
                match tokio::time::timeout_at(deadline, tasks.join_next_with_id()).await {
                    Ok(Some(joined)) => record(joined, &mut running, &mut failures, true),
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
            if running.values().any(|r| r.stage == stage) {
                break;
            }
            tracing::debug!(?stage, elapsed = ?started.elapsed(), "stage stopped");
        }
        if !running.is_empty() {
            tasks.abort_all();
            pending = running.values().map(|r| r.name.clone()).collect();
            pending.sort();
            for r in running.values() {
                r.reporter.set(RoleState::Failed { error: "did not stop within the grace period".into() });
            }
            tracing::error!(?pending, grace = ?self.grace, "roles did not stop within the grace period; aborted");
        }

        http_stop.cancel();
        if http_error.is_none() {
            match tokio::time::timeout_at(
                deadline.max(Instant::now() + Duration::from_secs(1)),
                &mut http_task,
            )
            .await
            {
                Ok(res) => {
                    let error = http_result(res);
                    if !error.is_empty() {
                        http_error = Some(error);
                    }
                }
                Err(_) => {
                    http_task.abort();
                    pending.push("http".into());
                }
            }
        }

        if !pending.is_empty() {
            Outcome::GraceExceeded { pending }
        } else if !failures.is_empty() {
            Outcome::RolesFailed { failures }
        } else if let Some(error) = http_error.filter(|e| !e.is_empty()) {
            Outcome::HttpFailed { error }
        } else {
            Outcome::Clean
        }
    }
}

fn http_result(res: Result<std::io::Result<()>, tokio::task::JoinError>) -> String {
    match res {
        Ok(Ok(())) => String::new(),
        Ok(Err(e)) => format!("http server failed: {e}"),
        Err(e) => format!("http server task failed: {e}"),
    }
}

fn record(
    joined: Result<(Id, anyhow::Result<()>), tokio::task::JoinError>,
    running: &mut HashMap<Id, Running>,
    failures: &mut Vec<(String, String)>,
    stopping: bool,
) {
    let (id, error) = match joined {
        Ok((id, Ok(()))) if stopping => (id, None),
        Ok((id, Ok(()))) => (id, Some("exited before shutdown was requested".to_string())),
        Ok((id, Err(e))) => (id, Some(format!("{e:#}"))),
        Err(e) => (e.id(), Some(if e.is_panic() { "panicked".to_string() } else { e.to_string() })),
    };
    let Some(role) = running.remove(&id) else { return };
    match error {
        None => {
            role.reporter.set(RoleState::Stopped);
            tracing::info!(role = %role.name, "role stopped");
        }
        Some(error) => {
            tracing::error!(role = %role.name, %error, "role failed");
            role.reporter.set(RoleState::Failed { error: error.clone() });
            failures.push((role.name, error));
        }
    }
}

/// `ferry run`: wire the configured roles and supervise them until a signal.
pub async fn run(config: Config) -> anyhow::Result<Outcome> {
    let metrics = Metrics::new();
    let status = Status::new(&config.region, metrics.role_ready.clone());
    let http = HttpServer::bind(config.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (http.listen): {e}", config.http.listen))?;
    tracing::info!(region = %config.region, http = %http.local_addr()?, version = crate::VERSION, "ferry running");
    let mut supervisor = Supervisor::new(config.shutdown.grace, status, metrics.clone());
    let capture_metrics = crate::capture::metrics::CaptureMetrics::register(&metrics);
    if let Some(role) = crate::capture::role::CaptureRole::from_config(&config, capture_metrics.clone()) {
        supervisor.add(Box::new(role));
    }
    if let Some(role) = crate::capture::role::HeartbeatRole::from_config(&config, capture_metrics) {
        supervisor.add(Box::new(role));
    }
    let apply_metrics = crate::apply::metrics::ApplyMetrics::register(&metrics);
    for role in crate::apply::role::ApplyRole::from_config(&config, &apply_metrics) {
        supervisor.add(Box::new(role));
    }
    let reach_metrics = crate::transport::reach::ReachMetrics::register(&metrics);
    for role in crate::transport::reach::BrokerProbe::from_config(&config, &reach_metrics) {
        supervisor.add(Box::new(role));
    }
    let watch_metrics = crate::watch::role::WatchMetrics::register(&metrics);
    let leader = crate::watch::leader::LeaderCell::default();
    match crate::watch::role::WatchRole::from_config(&config, watch_metrics, leader.clone()) {
        Some(role) => supervisor.add(Box::new(role)),
        // No watch role runs (no targets): nothing takes a lease, this instance acts alone.
        None => {
            let _ = leader.set(crate::watch::leader::Leadership::alone());
        }
    }
    let check_metrics = crate::check::role::CheckMetrics::register(&metrics);
    if let Some(role) = crate::check::role::CheckRole::from_config(&config, check_metrics, leader) {
        supervisor.add(Box::new(role));
    }
    let outcome = supervisor.run(http, shutdown_signal()).await;
    match &outcome {
        Outcome::Clean => tracing::info!("ferry stopped cleanly"),
        other => tracing::error!(outcome = ?other, "ferry stopped with errors"),
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests;
