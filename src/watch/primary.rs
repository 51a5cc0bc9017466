//! A target that is one of the region's primaries (`failover` on the target). The loop probes
//! whichever server is the primary now; when it goes Down the leader fails it over
//! (`failover::run`), and an old primary that answers again is fenced and, when its history
//! allows, rejoins as a replica (never promoted back on its own).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::{
    DbServer, FailoverConfig, MysqlConfig, PrimaryKind, RedisConfig, RegionConfig, TargetFailover,
};
use crate::failover::mysql::{self, Accounts, Returned};
use crate::failover::redis_promote;
use crate::failover::run::{self, Plan, Report};
use crate::model::Position;

/// After a failover that did not finish, the next attempt waits this many intervals.
const RETRY_INTERVALS: u32 = 10;
/// How often an old primary left fenced is looked at again (an operator may have rebuilt it).
const RECHECK_FENCED: Duration = Duration::from_secs(5);

/// An old primary left fenced for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    pub server: Server,
    pub reason: String,
}

/// One of the region's servers of the target's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    Db(DbServer),
    Redis(SocketAddr),
}

impl Server {
    pub fn address(&self) -> String {
        match self {
            Server::Db(s) => format!("{}:{}", s.host, s.port),
            Server::Redis(a) => a.to_string(),
        }
    }
}

/// What the region has, for failing over one kind of primary.
#[derive(Clone)]
pub struct Region {
    pub mysql: MysqlConfig,
    /// Who ferry connects to the MariaDB servers as.
    accounts: Accounts,
    pub redis: Option<RedisConfig>,
    pub failover: FailoverConfig,
}

impl Region {
    pub fn new(local: &RegionConfig, failover: FailoverConfig) -> Self {
        Self {
            mysql: local.mysql.clone(),
            accounts: Accounts::from_config(&local.mysql, Some(&failover)),
            redis: local.redis.clone(),
            failover,
        }
    }

    fn redis_password(&self) -> Option<String> {
        self.redis.as_ref().and_then(|r| r.password.as_ref()).map(|p| p.expose().to_string())
    }

    fn redis_servers(&self) -> Vec<SocketAddr> {
        self.redis.as_ref().map(RedisConfig::servers).unwrap_or_default()
    }
}

/// The failover state of one primary target.
pub struct PrimaryWatch {
    pub kind: PrimaryKind,
    pub config: TargetFailover,
    pub current: Server,
    /// Old primaries not heard from since their failover: fenced (and maybe rejoined) once
    /// they answer.
    pub returned: Vec<Server>,
    /// Old primaries left fenced for an operator, with why. Each leaves the list once it
    /// replicates from the current primary (rebuilt by the operator).
    pub fenced: Vec<Fenced>,
    recheck_at: Option<Instant>,
    /// Why the last failover did not finish (alerted while set).
    pub refused: Option<String>,
    /// The primary's position at its last successful probe.
    pub last_position: Option<Position>,
    /// When the current run of failed probes began.
    pub failing_since: Option<Instant>,
    retry_at: Option<Instant>,
}

impl PrimaryWatch {
    /// Find the current primary (the configured one when none can be told).
    pub async fn start(kind: PrimaryKind, config: TargetFailover, region: &Region, fallback: &str) -> Self {
        let current = match kind {
            PrimaryKind::Mysql => Server::Db(
                mysql::locate(&region.mysql, &region.accounts, Duration::from_secs(2)).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "watch: could not tell the MariaDB primary; using the configured one");
                    region.mysql.primary.clone()
                }),
            ),
            PrimaryKind::Redis => {
                let password = region.redis_password();
                let found = redis_promote::locate(&region.redis_servers(), password.as_deref()).await;
                Server::Redis(found.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "watch: could not tell the Redis primary; using the configured one");
                    region
                        .redis
                        .as_ref()
                        .and_then(|r| r.primary.parse().ok())
                        .or_else(|| fallback.parse().ok())
                        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 6379)))
                }))
            }
        };
        Self {
            kind,
            config,
            current,
            returned: Vec::new(),
            fenced: Vec::new(),
            recheck_at: None,
            refused: None,
            last_position: None,
            failing_since: None,
            retry_at: None,
        }
    }

    /// Note a probe's result. While the primary answers, keep its position (MariaDB) and
    /// notice when it is no longer the primary (a planned switchover, an operator): then the
    /// loop follows whichever server is. Returns the new primary when it moved.
    pub async fn observed(&mut self, healthy: bool, region: &Region) -> Option<String> {
        if !healthy {
            self.failing_since.get_or_insert_with(Instant::now);
            return None;
        }
        self.failing_since = None;
        // Answering again: whatever a failover attempt could not do is moot.
        self.refused = None;
        self.retry_at = None;
        let within = Duration::from_millis(500);
        let moved = match &self.current {
            Server::Db(server) => match mysql::observe(server, &region.accounts, within).await {
                Ok(o) if o.writable() => {
                    self.last_position = Some(o.executed);
                    None
                }
                Ok(_) => mysql::locate(&region.mysql, &region.accounts, within).await.ok().map(Server::Db),
                Err(_) => None,
            },
            Server::Redis(addr) => {
                let password = region.redis_password();
                let role = match redis_promote::connect(*addr, password.as_deref()).await {
                    Ok(mut c) => redis_promote::role(&mut c).await.ok(),
                    Err(_) => None,
                };
                match role {
                    Some((r, _)) if r != "master" => {
                        redis_promote::locate(&region.redis_servers(), password.as_deref())
                            .await
                            .ok()
                            .map(Server::Redis)
                    }
                    _ => None,
                }
            }
        };
        let moved = moved.filter(|m| *m != self.current)?;
        self.current = moved;
        self.last_position = None;
        Some(self.current.address())
    }

    /// A failover may start now (it is Down and no retry is pending).
    pub fn due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }

    /// Fail the current primary over. On success the promoted server is the current one and
    /// the old one waits to be fenced when it answers.
    pub async fn fail_over(&mut self, region: &Region, interval: Duration) -> Report {
        let detected = self.failing_since.map_or(Duration::ZERO, |t| t.elapsed());
        let plan =
            Plan::new(&region.failover, self.config.record.as_deref(), self.config.haproxy.clone(), detected);
        let report = match plan {
            Err(e) => failed(self.kind, &self.current, e),
            Ok(plan) => match &self.current {
                Server::Db(old) => {
                    run::mysql_primary(
                        &plan,
                        &region.mysql,
                        &region.accounts,
                        old,
                        self.last_position.as_ref(),
                    )
                    .await
                }
                Server::Redis(old) => {
                    let password = region.redis_password();
                    run::redis_primary(&plan, &region.redis_servers(), password.as_deref(), *old).await
                }
            },
        };
        let promoted = report.new.as_ref().filter(|_| report.result == "done");
        match (promoted, &self.current) {
            (Some(_), Server::Db(_)) => {
                let new = mysql::servers(&region.mysql)
                    .into_iter()
                    .find(|s| Some(mysql::describe(s)) == report.new);
                if let Some(new) = new {
                    self.returned.push(std::mem::replace(&mut self.current, Server::Db(new)));
                }
            }
            (Some(new), Server::Redis(_)) => {
                if let Ok(new) = new.parse() {
                    self.returned.push(std::mem::replace(&mut self.current, Server::Redis(new)));
                }
            }
            (None, _) => {}
        }
        if report.result == "done" {
            self.refused = None;
            self.retry_at = None;
            self.failing_since = None;
            self.last_position = None;
        } else {
            self.refused = report.reason.clone();
            self.retry_at = Some(Instant::now() + interval * RETRY_INTERVALS);
        }
        report
    }

    /// Old primaries are waiting to be fenced, or fenced ones are due a look.
    pub fn settle_due(&self, now: Instant) -> bool {
        !self.returned.is_empty() || (!self.fenced.is_empty() && self.recheck_at.is_none_or(|t| now >= t))
    }

    /// Try each old primary that has not answered since its failover: fence it and let it
    /// rejoin when its history allows. Look again at those left fenced: one that now
    /// replicates from the current primary needs no operator any more. Returns a journal line
    /// per old primary dealt with.
    pub async fn settle_returned(
        &mut self,
        region: &Region,
        probe_timeout: Duration,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut waiting = Vec::new();
        for old in std::mem::take(&mut self.returned) {
            // Only a server that accepts connections is worth a full attempt.
            let reachable =
                tokio::time::timeout(probe_timeout, tokio::net::TcpStream::connect(old.address()))
                    .await
                    .is_ok_and(|c| c.is_ok());
            let result = match (&old, &self.current, reachable) {
                (_, _, false) => None,
                (Server::Db(o), Server::Db(new), true) => {
                    mysql::rejoin(o, new, &region.accounts, region.failover.fence_timeout)
                        .await
                        .map_err(|e| tracing::warn!(old = %mysql::describe(o), error = %e, "old primary answers but is not settled yet; retrying"))
                        .ok()
                }
                (Server::Redis(o), Server::Redis(new), true) => {
                    let password = region.redis_password();
                    redis_promote::follow(*o, *new, password.as_deref())
                        .await
                        .map_err(|e| tracing::warn!(old = %o, error = %e, "old Redis primary answers but does not follow yet; retrying"))
                        .ok()
                        .map(|()| Returned::Rejoined)
                }
                _ => None,
            };
            match result {
                None => waiting.push(old),
                Some(Returned::Rejoined) => out.push((
                    old.address(),
                    format!("fenced; rejoined as a replica of {}", self.current.address()),
                )),
                Some(Returned::Fenced { reason }) => {
                    out.push((old.address(), format!("fenced and left for an operator: {reason}")));
                    self.fenced.push(Fenced { server: old, reason });
                }
            }
        }
        self.returned = waiting;
        if !self.fenced.is_empty() && self.recheck_at.is_none_or(|t| Instant::now() >= t) {
            let mut still = Vec::new();
            for f in std::mem::take(&mut self.fenced) {
                let rebuilt = match (&f.server, &self.current) {
                    (Server::Db(o), Server::Db(new)) => {
                        mysql::replicates_from(o, new, &region.accounts, probe_timeout).await.unwrap_or(false)
                    }
                    (Server::Redis(o), Server::Redis(new)) => {
                        redis_promote::follows(*o, *new, region.redis_password().as_deref()).await
                    }
                    _ => false,
                };
                if rebuilt {
                    out.push((
                        f.server.address(),
                        format!("replicates from {}: no longer fenced", self.current.address()),
                    ));
                } else {
                    still.push(f);
                }
            }
            self.fenced = still;
            self.recheck_at = Some(Instant::now() + RECHECK_FENCED);
        }
        out
    }
}

fn failed(kind: PrimaryKind, current: &Server, reason: String) -> Report {
    let mut report = run::Report::empty(kind, current.address());
    report.reason = Some(reason);
    report
}
