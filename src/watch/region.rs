//! Automatic region failover: a target that stands for another region (`failover.region`).
//! When it has been Down for the confirmation window, the region's own ferry is asked too: if
//! it still answers, this observer is cut off from the region rather than the region being
//! down (a partition), and nothing is switched. Otherwise the region's traffic is switched to
//! this region, exactly as `ferry failover region --from <region> --to <local> --confirm`.

use std::time::{Duration, Instant};

use crate::config::{Config, TargetFailover};
use crate::failover::region::{self, RegionReport};

/// What one act decided.
pub enum Decision {
    /// The region's ferry answers: not a region failure.
    Partition(String),
    /// The switch was carried out (or attempted: see the report's result).
    Switched(Box<RegionReport>),
    Failed(String),
}

pub struct RegionWatch {
    pub region: String,
    ferry: String,
    confirm: Duration,
    down_since: Option<Instant>,
    /// A switch finished: nothing more to do for this region until it is Up again.
    done: bool,
    /// The partition was journaled for the current Down.
    partition_noted: bool,
    retry_at: Option<Instant>,
}

impl RegionWatch {
    pub fn new(config: &TargetFailover) -> Option<Self> {
        Some(Self {
            region: config.region.clone()?,
            ferry: config.ferry.clone()?,
            confirm: config.confirm,
            down_since: None,
            done: false,
            partition_noted: false,
            retry_at: None,
        })
    }

    /// Note whether the region's target is serving.
    pub fn observed(&mut self, serving: bool, now: Instant) {
        if serving {
            self.down_since = None;
            self.done = false;
            self.partition_noted = false;
        } else {
            self.down_since.get_or_insert(now);
        }
    }

    /// Down for the whole confirmation window, not switched yet, no retry pending.
    pub fn due(&self, now: Instant) -> bool {
        !self.done
            && self.down_since.is_some_and(|t| now.duration_since(t) >= self.confirm)
            && self.retry_at.is_none_or(|at| now >= at)
    }

    pub async fn act(&mut self, config: &Config, interval: Duration) -> Option<Decision> {
        let asked = tokio::time::timeout(
            Duration::from_secs(2),
            crate::watch::net::http(&self.ferry, "GET", "/health/live", None),
        )
        .await;
        if let Ok(Ok((status, _))) = asked {
            if self.partition_noted {
                return None;
            }
            self.partition_noted = true;
            return Some(Decision::Partition(format!(
                "{}'s ferry at {} still answers ({status}): a partition between here and {}, not a region failure; \
                 not switching",
                self.region, self.ferry, self.region
            )));
        }
        match region::fail_over(config, &self.region, &config.region, true).await {
            Ok(report) => {
                if report.result == "done" {
                    self.done = true;
                } else {
                    self.retry_at = Some(Instant::now() + interval * 10);
                }
                Some(Decision::Switched(Box::new(report)))
            }
            Err(e) => {
                self.retry_at = Some(Instant::now() + interval * 10);
                Some(Decision::Failed(e))
            }
        }
    }
}
