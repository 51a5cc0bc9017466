//! What every role is made of, below both the roles and the supervisor that runs them
//! (`app`): the [`Role`] trait and its context, shutdown [`Stage`]s, [`AbortOnDrop`] for a
//! role's background tasks, and the signal that starts a shutdown. Roles import this module,
//! never `app`.

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

use crate::status::RoleReporter;

/// Shutdown order. Roles of an earlier stage have stopped before the next stage is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Reads sources (binlog): stops first so nothing new enters the pipeline.
    Capture,
    /// Publishes what was read and advances checkpoints once acknowledged.
    Publish,
    /// Applies remote transactions; finishes the one in flight.
    Apply,
    /// Health loop and failover actions; finishes or times out the running action.
    Control,
}

impl Stage {
    pub const ORDER: [Stage; 4] = [Stage::Capture, Stage::Publish, Stage::Apply, Stage::Control];
}

pub type RoleFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A long-running part of ferry (capture, apply, watch, ...).
pub trait Role: Send + 'static {
    fn name(&self) -> &str;
    fn stage(&self) -> Stage;
    /// Run until `ctx.shutdown` is cancelled, reporting state through `ctx.reporter`.
    /// Returning early, with `Ok` or `Err`, is a failure of the process.
    fn run(self: Box<Self>, ctx: RoleContext) -> RoleFuture;
}

pub struct RoleContext {
    pub shutdown: CancellationToken,
    pub reporter: RoleReporter,
}

/// A background task of a role (a metric refresher, a probe), aborted when dropped so that it
/// ends with the role.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; only a kill will stop this process");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
    }
}

/// Now, in µs since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
