//! Whether the brokers ferry depends on answer. A broker that is down or frozen makes capture
//! and apply wait quietly inside the Kafka client (records queue, fetches hang), so each
//! region's brokers ferry uses are asked for metadata every second: an answer missing for
//! [`PROBE_TIMEOUT`] shows in the log (once per outage), in `/health/ready` (the role is not
//! ready, with the reason), in `ferry_kafka_reachable{region}` and in the
//! `FerryBrokerUnreachable` alert; the answer coming back is logged with the outage's length.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::time::Instant;

use super::kafka::client_config;
use crate::config::Config;
use crate::metrics::{Metrics, names};
use crate::runtime::{Role, RoleContext, RoleFuture, Stage};
use crate::status::RoleState;

/// How often the brokers are asked.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long an answer may take before the brokers count as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    /// The region whose brokers (and topic) these are.
    pub region: String,
}

/// `ferry_kafka_reachable{region}`.
#[derive(Clone, Default)]
pub struct ReachMetrics {
    pub reachable: Family<RegionLabels, Gauge>,
}

impl ReachMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(names::KAFKA_REACHABLE, m.reachable.clone());
        m
    }
}

/// The `kafka-<region>` role: probes one region's brokers.
pub struct BrokerProbe {
    name: String,
    region: String,
    bootstrap: Vec<String>,
    metrics: ReachMetrics,
}

impl BrokerProbe {
    /// One probe per region whose brokers this ferry uses: the local region's when capturing
    /// or applying (its topic, the dead-letter topic), each remote origin's when applying.
    pub fn from_config(config: &Config, metrics: &ReachMetrics) -> Vec<Self> {
        let capture = config.capture.is_some();
        let apply = config.apply.is_some();
        config
            .regions
            .iter()
            .filter(|(name, _)| if **name == config.region { capture || apply } else { apply })
            .map(|(name, region)| Self {
                name: format!("kafka-{name}"),
                region: name.clone(),
                bootstrap: region.kafka.bootstrap.clone(),
                metrics: metrics.clone(),
            })
            .collect()
    }

    /// Ask for the cluster's metadata (a blocking round trip in rdkafka: off the async
    /// threads). `Err` says why no answer came.
    async fn ask(client: &std::sync::Arc<BaseConsumer>) -> Result<(), String> {
        let c = client.clone();
        let answer = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(None, PROBE_TIMEOUT).map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| e.to_string())?;
        match answer {
            Ok(0) => Err("the cluster reported no brokers".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Role for BrokerProbe {
    fn name(&self) -> &str {
        &self.name
    }

    fn stage(&self) -> Stage {
        Stage::Control
    }

    fn run(self: Box<Self>, ctx: RoleContext) -> RoleFuture {
        Box::pin(async move {
            let client: BaseConsumer = client_config(&self.bootstrap)
                .create()
                .map_err(|e| anyhow::anyhow!("kafka client for {}'s brokers: {e}", self.region))?;
            let client = std::sync::Arc::new(client);
            let gauge =
                self.metrics.reachable.get_or_create(&RegionLabels { region: self.region.clone() }).clone();
            let brokers = self.bootstrap.join(",");
            let mut down_since: Option<Instant> = None;
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                let asked = Instant::now();
                let answer = tokio::select! {
                    biased;
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    a = Self::ask(&client) => a,
                };
                match answer {
                    Ok(()) => {
                        if let Some(since) = down_since.take() {
                            tracing::info!(region = %self.region, %brokers, outage = ?since.elapsed(), "the brokers answer again");
                        }
                        gauge.set(1);
                        ctx.reporter.set(RoleState::Ready);
                    }
                    Err(error) => {
                        let since = *down_since.get_or_insert_with(|| {
                            tracing::error!(region = %self.region, %brokers, %error,
                                "the brokers do not answer: capture and apply through them wait");
                            asked
                        });
                        gauge.set(0);
                        ctx.reporter.set(RoleState::NotReady {
                            reason: format!(
                                "{}'s brokers ({brokers}) have not answered for {}s: {error}",
                                self.region,
                                since.elapsed().as_secs()
                            ),
                        });
                    }
                }
            }
        })
    }
}
