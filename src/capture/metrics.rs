//! Capture's metrics (names in `metrics::names`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{Metrics, names};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// `db.table`
    pub table: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct CaptureMetrics {
    pub connected: Gauge,
    pub events: Counter,
    pub transactions: Family<KindLabels, Counter>,
    pub rows: Counter,
    pub published_transactions: Counter,
    pub published_records: Counter,
    pub published_bytes: Counter,
    pub statements: Counter,
    pub reconnects: Counter,
    /// Seconds since the stored checkpoint last moved (see `checkpoint_moved`).
    pub checkpoint_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// When the stored checkpoint last moved; kept across capture restarts so that a capture
    /// stuck reconnecting shows an ever older checkpoint.
    pub checkpoint_moved: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    pub lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub heartbeat_writes: Family<ResultLabels, Counter>,
    /// Initial sync: rows and chunks published, rows left (estimate), whether one runs.
    pub sync_rows: Family<TableLabels, Counter>,
    pub sync_chunks: Family<TableLabels, Counter>,
    pub sync_remaining: Family<TableLabels, Gauge>,
    pub sync_active: Gauge,
}

impl CaptureMetrics {
    /// The stored checkpoint moved just now.
    pub fn checkpoint_moved_now(&self) {
        if let Ok(mut at) = self.checkpoint_moved.lock() {
            *at = Some(std::time::Instant::now());
        }
        self.checkpoint_age.set(0.0);
    }

    /// Refresh `checkpoint_age` (0 until the first checkpoint of this process).
    pub fn refresh_checkpoint_age(&self) {
        let at = self.checkpoint_moved.lock().ok().and_then(|at| *at);
        self.checkpoint_age.set(at.map(|at| at.elapsed().as_secs_f64()).unwrap_or(0.0));
    }

    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(names::CAPTURE_CONNECTED, m.connected.clone());
        metrics.register(names::CAPTURE_EVENTS, m.events.clone());
        metrics.register(names::CAPTURE_TRANSACTIONS, m.transactions.clone());
        metrics.register(names::CAPTURE_ROWS, m.rows.clone());
        metrics.register(names::CAPTURE_PUBLISHED_TRANSACTIONS, m.published_transactions.clone());
        metrics.register(names::CAPTURE_PUBLISHED_RECORDS, m.published_records.clone());
        metrics.register(names::CAPTURE_PUBLISHED_BYTES, m.published_bytes.clone());
        metrics.register(names::CAPTURE_STATEMENTS, m.statements.clone());
        metrics.register(names::CAPTURE_RECONNECTS, m.reconnects.clone());
        metrics.register(names::CAPTURE_CHECKPOINT_AGE, m.checkpoint_age.clone());
        metrics.register(names::CAPTURE_LAG, m.lag.clone());
        metrics.register(names::HEARTBEAT_WRITES, m.heartbeat_writes.clone());
        metrics.register(names::SYNC_ROWS, m.sync_rows.clone());
        metrics.register(names::SYNC_CHUNKS, m.sync_chunks.clone());
        metrics.register(names::SYNC_REMAINING, m.sync_remaining.clone());
        metrics.register(names::SYNC_ACTIVE, m.sync_active.clone());
        m
    }
}
