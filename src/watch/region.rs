//! Automatic region failover: a target that stands for another region (`failover.region`).
//! One observer's silence is not proof. When the target has been Down for the confirmation
//! window, the switch needs every one of these to agree, each a different path to the region:
//!
//! 1. this observer: the region's target is Down (its probes);
//! 2. the region's own ferry does not answer (`failover.ferry`, `/health/live`);
//! 3. the region's heartbeats have stopped reaching the standby: the newest heartbeat of the
//!    region applied on this region's primary (`ferry.heartbeat`, written every second by the
//!    region's ferry and carried by its topic through the brokers) is older than the window.
//!    An observer cut off from the region while the region still publishes sees fresh
//!    heartbeats here: a partition, nothing switched.
//!
//! Only the region's configured standby (`regions.<region>.standby`) switches its traffic, to
//! itself, exactly as `ferry failover region --from <region> --to <standby> --confirm`; an
//! observer in any other region only journals that it is not the standby.
//!
//! The limit: the three witnesses are independent of this observer's own probes, not of the
//! network between the two regions. When the region's brokers sit in the region and the
//! standby is cut off from all of it (a full partition between the two regions), every
//! witness agrees and the standby switches while the region may be up. Brokers outside the
//! region, or (not built) a quorum of the other regions' ferries, would tell the two apart.

use std::time::{Duration, Instant};

use crate::config::{Config, TargetFailover};
use crate::failover::region::{self, RegionReport};

/// What one act decided.
pub enum Decision {
    /// The region's ferry answers, or its heartbeats still arrive: not a region failure.
    Partition(String),
    /// This ferry is not the region's standby (or none is configured): it does not switch.
    NotStandby(String),
    /// A witness could not be asked; asked again shortly.
    Unconfirmed(String),
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
    /// The last reason a witness could not be asked (journaled when it changes).
    unconfirmed: Option<String>,
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
            unconfirmed: None,
        })
    }

    /// Note whether the region's target is serving.
    pub fn observed(&mut self, serving: bool, now: Instant) {
        if serving {
            self.down_since = None;
            self.done = false;
            self.partition_noted = false;
            self.unconfirmed = None;
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
        let standby = config.regions.get(&self.region).and_then(|r| r.standby.as_deref());
        let ferry = match standby {
            Some(s) if s == config.region => {
                let asked = tokio::time::timeout(
                    Duration::from_secs(2),
                    crate::watch::net::http(&self.ferry, "GET", "/health/live", None),
                )
                .await;
                match asked {
                    Ok(Ok((status, _))) => Some(status),
                    _ => None,
                }
            }
            _ => None,
        };
        let heartbeat = match (standby, ferry) {
            (Some(s), None) if s == config.region => Some(self.heartbeat_age(config).await),
            _ => None,
        };
        let verdict = judge(&self.region, standby, &config.region, ferry, heartbeat, self.confirm);
        let reason = match verdict {
            Verdict::Switch => None,
            Verdict::Partition(why) => Some(Decision::Partition(why)),
            Verdict::NotStandby(why) => Some(Decision::NotStandby(why)),
            Verdict::Unconfirmed(why) => {
                self.retry_at = Some(Instant::now() + interval * 2);
                if self.unconfirmed.as_ref() == Some(&why) {
                    return None;
                }
                self.unconfirmed = Some(why.clone());
                return Some(Decision::Unconfirmed(why));
            }
        };
        if let Some(decision) = reason {
            if self.partition_noted {
                return None;
            }
            self.partition_noted = true;
            return Some(decision);
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

    /// How old the newest heartbeat of the watched region applied on this region's primary is.
    async fn heartbeat_age(&self, config: &Config) -> Result<Option<Duration>, String> {
        use mysql_async::prelude::Queryable;
        let local = config.local().ok_or("this region has no database configured")?;
        let opts = crate::failover::mysql::primary_opts(&local.mysql).await?;
        let mut conn =
            mysql_async::Conn::new(opts).await.map_err(|e| format!("this region's primary: {e}"))?;
        let beat: Option<i64> = conn
            .exec_first("SELECT beat_at_us FROM ferry.heartbeat WHERE region = ?", (self.region.as_str(),))
            .await
            .map_err(|e| format!("reading ferry.heartbeat: {e}"))?;
        conn.disconnect().await.ok();
        // beat_at_us is microseconds since the Unix epoch (the region's clock).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(beat.map(|us| now.saturating_sub(Duration::from_micros(us.max(0) as u64))))
    }
}

/// What the witnesses say, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Switch,
    Partition(String),
    NotStandby(String),
    /// A witness could not be asked: nothing is switched this time; asked again later.
    Unconfirmed(String),
}

/// Decide a region failover of `region` from this ferry (`here`), the target having been Down
/// for `confirm`: `ferry` is the status the region's ferry answered (None: silent);
/// `heartbeat` the age of its newest heartbeat applied here (asked only when the ferry was
/// silent; `Ok(None)`: none ever applied).
pub fn judge(
    region: &str,
    standby: Option<&str>,
    here: &str,
    ferry: Option<u16>,
    heartbeat: Option<Result<Option<Duration>, String>>,
    confirm: Duration,
) -> Verdict {
    match standby {
        None => {
            return Verdict::NotStandby(format!(
                "regions.{region}.standby is not set: no region is named to take {region}'s traffic; not switching"
            ));
        }
        Some(s) if s != here => {
            return Verdict::NotStandby(format!(
                "{region}'s standby is {s}, not {here}: only {s}'s ferry switches {region}'s traffic"
            ));
        }
        Some(_) => {}
    }
    if let Some(status) = ferry {
        return Verdict::Partition(format!(
            "{region}'s ferry still answers ({status}): a partition between here and {region}, not a region failure; \
             not switching"
        ));
    }
    match heartbeat {
        None => Verdict::Unconfirmed(format!("{region}'s heartbeats were not checked")),
        Some(Err(e)) => Verdict::Unconfirmed(format!(
            "cannot read {region}'s heartbeats on this region's primary ({e}): not switching without that witness"
        )),
        Some(Ok(None)) => Verdict::Unconfirmed(format!(
            "no heartbeat of {region} was ever applied here: its silence proves nothing; not switching"
        )),
        Some(Ok(Some(age))) if age < confirm => Verdict::Partition(format!(
            "{region}'s ferry does not answer, but its heartbeats still arrive here through its topic (newest {:.1} s \
             old): this observer is cut off, the region is up; not switching",
            age.as_secs_f64()
        )),
        Some(Ok(Some(_))) => Verdict::Switch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn beat(secs: u64) -> Option<Result<Option<Duration>, String>> {
        Some(Ok(Some(Duration::from_secs(secs))))
    }

    #[test]
    fn only_the_standby_switches_and_only_when_every_witness_agrees() {
        let j = |standby, ferry, heartbeat| judge("east", standby, "west", ferry, heartbeat, WINDOW);
        assert_eq!(j(Some("west"), None, beat(30)), Verdict::Switch);
        assert!(matches!(j(Some("north"), None, beat(30)), Verdict::NotStandby(w) if w.contains("north")));
        assert!(
            matches!(j(None, None, beat(30)), Verdict::NotStandby(w) if w.contains("regions.east.standby"))
        );
        assert!(
            matches!(j(Some("west"), Some(200), None), Verdict::Partition(w) if w.contains("still answers"))
        );
        assert!(
            matches!(j(Some("west"), None, beat(2)), Verdict::Partition(w) if w.contains("heartbeats still arrive"))
        );
        assert!(matches!(j(Some("west"), None, Some(Ok(None))), Verdict::Unconfirmed(_)));
        assert!(matches!(j(Some("west"), None, Some(Err("down".into()))), Verdict::Unconfirmed(_)));
    }
}
