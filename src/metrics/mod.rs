//! Metrics: the registry (every name from [`names`]), process metrics, and the HTTP server that
//! exposes them together with health and status.

pub mod names;
mod process;
mod server;

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};

pub use names::MetricName;
pub use server::{HttpServer, router};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

/// The process-wide registry and the metrics the core owns. Subsystems register theirs with
/// [`Metrics::register`], which only takes names from [`names`].
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub up: Gauge,
    pub role_ready: Family<RoleLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let build = Info::new(vec![("version", crate::VERSION)]);
        registry.register(names::BUILD.name, names::BUILD.help, build);
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        let metrics = Self {
            registry: Arc::new(Mutex::new(registry)),
            up: Gauge::default(),
            role_ready: Family::default(),
        };
        metrics.register(names::UP, metrics.up.clone());
        metrics.register(names::ROLE_READY, metrics.role_ready.clone());
        metrics.up.set(1);
        metrics
    }

    pub fn register(&self, name: MetricName, metric: impl Metric) {
        self.lock().register(name.name, name.help, metric);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.lock())?;
        Ok(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family in the exposition is declared in names.rs, and every core metric shows up.
    #[test]
    fn exposition_uses_only_declared_names() {
        let metrics = Metrics::new();
        metrics.role_ready.get_or_create(&RoleLabels { role: "test".into() }).set(1);
        let text = metrics.encode().expect("encodes");
        let declared: Vec<&str> = names::ALL.iter().map(|m| m.name).collect();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let family = line.split_whitespace().nth(2).unwrap_or_default();
            assert!(declared.contains(&family), "{family} is exported but not in names.rs");
        }
        for want in ["ferry_build_info{version=", "ferry_up 1", "ferry_role_ready{role=\"test\"} 1"] {
            assert!(text.contains(want), "expected {want:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "OpenMetrics must end with # EOF:\n{text}");
    }
}
