//! The status board: what each running role reports about itself, shared by the supervisor, the
//! roles and the HTTP server (`/health/ready`, `/status`).
//!
//! Readiness is strict: ready only when every started role reports `Ready` and ordered shutdown
//! has not begun (so a load balancer stops sending work to a process that is going away).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::metrics::RoleLabels;

/// A role's self-reported state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RoleState {
    Starting,
    Ready,
    NotReady { reason: String },
    Stopping,
    Stopped,
    Failed { error: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    pub version: &'static str,
    pub region: String,
    pub started_at_unix_seconds: u64,
    pub uptime_seconds: u64,
    pub ready: bool,
    pub shutting_down: bool,
    pub roles: BTreeMap<String, RoleState>,
    /// What roles report beyond their state (e.g. apply: origin, last applied GTID, lag).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug)]
struct Board {
    region: String,
    started: SystemTime,
    shutting_down: bool,
    roles: BTreeMap<String, RoleState>,
    details: BTreeMap<String, serde_json::Value>,
}

/// Cheap to clone; all clones share one board.
#[derive(Debug, Clone)]
pub struct Status {
    board: Arc<RwLock<Board>>,
    role_ready: Family<RoleLabels, Gauge>,
}

impl Status {
    pub fn new(region: impl Into<String>, role_ready: Family<RoleLabels, Gauge>) -> Self {
        let board = Board {
            region: region.into(),
            started: SystemTime::now(),
            shutting_down: false,
            roles: BTreeMap::new(),
            details: BTreeMap::new(),
        };
        Self { board: Arc::new(RwLock::new(board)), role_ready }
    }

    /// Register a role (state `Starting`) and return the handle it reports through.
    pub fn reporter(&self, role: &str) -> RoleReporter {
        let reporter = RoleReporter { role: role.to_string(), status: self.clone() };
        reporter.set(RoleState::Starting);
        reporter
    }

    pub fn begin_shutdown(&self) {
        self.write().shutting_down = true;
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let board = self.read();
        let since_epoch =
            |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let ready = !board.shutting_down && board.roles.values().all(|s| matches!(s, RoleState::Ready));
        StatusSnapshot {
            version: crate::VERSION,
            region: board.region.clone(),
            started_at_unix_seconds: since_epoch(board.started),
            uptime_seconds: board.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
            ready,
            shutting_down: board.shutting_down,
            roles: board.roles.clone(),
            details: board.details.clone(),
        }
    }

    // A poisoned lock only means a reporter panicked mid-write of a plain map; the data is
    // still a valid map, so keep serving it.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Board> {
        self.board.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Board> {
        self.board.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A role's handle on the board.
#[derive(Debug, Clone)]
pub struct RoleReporter {
    role: String,
    status: Status,
}

impl RoleReporter {
    pub fn set(&self, state: RoleState) {
        let ready = matches!(state, RoleState::Ready);
        self.status.write().roles.insert(self.role.clone(), state);
        self.status.role_ready.get_or_create(&RoleLabels { role: self.role.clone() }).set(i64::from(ready));
    }

    /// Replace what this role shows in `/status` beyond its state.
    pub fn set_details(&self, details: serde_json::Value) {
        self.status.write().details.insert(self.role.clone(), details);
    }

    pub fn role(&self) -> &str {
        &self.role
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_role_is_ready_and_not_shutting_down() {
        let status = Status::new("east", Family::default());
        assert!(status.snapshot().ready, "no roles: nothing is unready");
        let a = status.reporter("capture");
        let b = status.reporter("apply");
        assert!(!status.snapshot().ready, "both starting");
        a.set(RoleState::Ready);
        assert!(!status.snapshot().ready, "apply still starting");
        b.set(RoleState::Ready);
        assert!(status.snapshot().ready, "both ready");
        b.set(RoleState::NotReady { reason: "broker unreachable".into() });
        assert!(!status.snapshot().ready, "apply not ready");
        b.set(RoleState::Ready);
        status.begin_shutdown();
        let snap = status.snapshot();
        assert!(!snap.ready && snap.shutting_down, "shutting down is never ready: {snap:?}");
    }
}
