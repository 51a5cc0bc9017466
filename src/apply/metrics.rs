//! Apply's metrics (names in `metrics::names`), labelled by origin region.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{Metrics, names};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    pub origin: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginTableLabels {
    pub origin: String,
    /// `db.table`
    pub table: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginKindLabels {
    pub origin: String,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabels {
    /// `db.table`
    pub table: String,
    pub kind: &'static str,
    pub resolution: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectedLabels {
    pub table: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct ApplyMetrics {
    pub conflicts: Family<ConflictLabels, Counter>,
    pub collected: Family<CollectedLabels, Counter>,
    pub transactions: Family<OriginLabels, Counter>,
    pub rows: Family<OriginTableLabels, Counter>,
    pub duplicates: Family<OriginLabels, Counter>,
    pub dlq: Family<OriginKindLabels, Counter>,
    pub errors: Family<OriginKindLabels, Counter>,
    pub lag: Family<OriginLabels, Gauge<f64, AtomicU64>>,
    pub e2e_lag: Family<OriginLabels, Gauge<f64, AtomicU64>>,
    pub paused: Family<OriginLabels, Gauge>,
    pub gap: Family<OriginLabels, Gauge>,
    pub refused: Family<OriginLabels, Gauge>,
    pub superseded: Family<OriginLabels, Counter>,
    pub backlog: Family<OriginLabels, Gauge>,
}

impl ApplyMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(names::APPLY_TRANSACTIONS, m.transactions.clone());
        metrics.register(names::APPLY_ROWS, m.rows.clone());
        metrics.register(names::APPLY_DUPLICATES, m.duplicates.clone());
        metrics.register(names::APPLY_DLQ, m.dlq.clone());
        metrics.register(names::APPLY_CONFLICTS, m.conflicts.clone());
        metrics.register(names::APPLY_COLLECTED, m.collected.clone());
        metrics.register(names::APPLY_ERRORS, m.errors.clone());
        metrics.register(names::APPLY_LAG, m.lag.clone());
        metrics.register(names::APPLY_E2E_LAG, m.e2e_lag.clone());
        metrics.register(names::APPLY_PAUSED, m.paused.clone());
        metrics.register(names::APPLY_GAP, m.gap.clone());
        metrics.register(names::APPLY_REFUSED, m.refused.clone());
        metrics.register(names::APPLY_SUPERSEDED, m.superseded.clone());
        metrics.register(names::APPLY_BACKLOG, m.backlog.clone());
        m
    }
}
