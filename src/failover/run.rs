//! One in-region failover from start to verified end, timed phase by phase:
//!
//! - MariaDB: observe the replicas → choose (`candidate::choose`) → fence the old primary if
//!   it answers → wait for the chosen replica's relay log → promote → re-point the other
//!   replicas → switch the DNS record → verify from the client's side (a fresh connection
//!   through the name reaches the new `@@server_id`).
//! - Redis: choose the replica with the highest offset → promote, fencing the old primary if
//!   it answers → re-point the other replicas → switch DNS → verify (`ROLE` through the name).
//!
//! Every step that changes something happens only after the ones before it succeeded; the
//! report says how far it got.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::candidate::{Candidate, Choice, choose};
use super::dns::{self, Authority, Switched};
use super::mysql::{self, Accounts, describe};
use super::redis_promote;
use crate::config::{DbServer, DnsConfig, FailoverConfig, HaproxyBackend, MysqlConfig, PrimaryKind};
use crate::model::Position;

/// What a failover did, for the journal, the log and the metrics.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kind: &'static str,
    /// `done`, `refused` (nothing was changed) or `failed` (stopped part way: see `phases`).
    pub result: &'static str,
    pub old: String,
    pub new: Option<String>,
    pub reason: Option<String>,
    /// Every candidate with what it had (GTID positions or replication offset).
    pub candidates: Vec<serde_json::Value>,
    /// The failed primary's last known position, when known.
    pub old_position: Option<String>,
    /// Transactions of that position the promoted server lacks.
    pub lost: Option<u64>,
    /// Whether the old primary answered and was fenced.
    pub old_fenced: bool,
    pub dns: Option<String>,
    pub haproxy: Option<String>,
    /// Phase name → seconds, in order (detect, fence, relay, promote, repoint, dns, verify).
    pub phases: Vec<(&'static str, f64)>,
}

impl Report {
    /// A report of a failover that has not done anything yet (`failed` until it finishes).
    pub fn empty(kind: PrimaryKind, old: String) -> Self {
        Self {
            kind: kind.as_str(),
            result: "failed",
            old,
            new: None,
            reason: None,
            candidates: Vec::new(),
            old_position: None,
            lost: None,
            old_fenced: false,
            dns: None,
            haproxy: None,
            phases: Vec::new(),
        }
    }

    fn stop(mut self, result: &'static str, reason: String) -> Self {
        self.result = result;
        self.reason = Some(reason);
        self
    }

    pub fn total_seconds(&self) -> f64 {
        self.phases.iter().map(|(_, s)| s).sum()
    }
}

/// Times phases one after the other.
struct Clock(Instant);

impl Clock {
    fn lap(&mut self, report: &mut Report, phase: &'static str) {
        let now = Instant::now();
        report.phases.push((phase, (now - self.0).as_secs_f64()));
        self.0 = now;
    }
}

/// What a failover needs to know besides the servers.
pub struct Plan<'a> {
    pub failover: &'a FailoverConfig,
    /// The DNS record clients use, fully qualified, and where to update it.
    pub record: Option<(String, Authority, u32)>,
    /// The HAProxy backend clients use.
    pub haproxy: Option<HaproxyBackend>,
    /// How long it took to call the primary Down.
    pub detected_in: Duration,
}

impl<'a> Plan<'a> {
    pub fn new(
        failover: &'a FailoverConfig,
        record: Option<&str>,
        haproxy: Option<HaproxyBackend>,
        detected_in: Duration,
    ) -> Result<Self, String> {
        let record = match (record, failover.dns.as_ref()) {
            (Some(r), Some(dns)) => Some((dns.fqdn(r), authority(dns)?, dns.ttl)),
            (Some(r), None) => return Err(format!("record {r} needs failover.dns")),
            (None, _) => None,
        };
        Ok(Self { failover, record, haproxy, detected_in })
    }

    fn start(&self, kind: PrimaryKind, old: String) -> (Report, Clock) {
        let mut report = Report::empty(kind, old);
        report.phases.push(("detect", self.detected_in.as_secs_f64()));
        (report, Clock(Instant::now()))
    }

    /// Re-point the clients from `old` to `new`: the DNS record (switched only if it still
    /// holds `old`'s address, then resolved as a client would), and the HAProxy backend (`new`
    /// made its only server in service). Each counts as done only when `check` finds the new
    /// primary through it: at the resolved address on `new`'s port, and at the frontend.
    async fn repoint_clients<F, Fut>(
        &self,
        report: &mut Report,
        clock: &mut Clock,
        old: SocketAddr,
        new: SocketAddr,
        check: F,
    ) -> Result<(), String>
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        if let Some((fqdn, authority, ttl)) = &self.record {
            let (IpAddr::V4(from), IpAddr::V4(to)) = (old.ip(), new.ip()) else {
                return Err("only IPv4 (A) records are switched".into());
            };
            let switched = dns::switch(authority, fqdn, from, to, *ttl).await?;
            clock.lap(report, "dns");
            if switched == Switched::Stale {
                return Err(format!(
                    "{fqdn} no longer holds {from}: someone switched it since; left as it is"
                ));
            }
            report.dns = Some(format!("{fqdn} {from} → {to}"));
            let answer = dns::resolve(authority.server, fqdn).await?;
            let [ip] = answer.as_slice() else { return Err(format!("{fqdn} answers {answer:?}")) };
            check(SocketAddr::new(IpAddr::V4(*ip), new.port())).await?;
            clock.lap(report, "verify");
        }
        if let Some(h) = &self.haproxy {
            crate::watch::lb::make_active(&h.api, &h.backend, new).await?;
            clock.lap(report, "haproxy");
            report.haproxy = Some(format!("backend {} now sends to {new} only", h.backend));
            if let Some(frontend) = &h.frontend {
                let at = frontend.parse().map_err(|e| format!("frontend {frontend}: {e}"))?;
                check(at).await.map_err(|e| format!("through HAProxy {frontend}: {e}"))?;
                clock.lap(report, "verify_haproxy");
            }
        }
        Ok(())
    }
}

pub fn authority(dns: &DnsConfig) -> Result<Authority, String> {
    Ok(Authority {
        server: dns.server,
        zone: dns.zone.clone(),
        key_name: dns.key_name.clone(),
        key: crate::model::base64::decode(dns.key.expose()).map_err(|e| format!("failover.dns.key: {e}"))?,
    })
}

fn ip_of(host: &str) -> Result<IpAddr, String> {
    host.parse().map_err(|_| format!("`{host}` is not an IP address (DNS switching needs one)"))
}

/// Fail the region's MariaDB primary `old` over to the best replica.
pub async fn mysql_primary(
    plan: &Plan<'_>,
    region: &MysqlConfig,
    accounts: &Accounts,
    old: &DbServer,
    old_position: Option<&Position>,
) -> Report {
    let (mut report, mut clock) = plan.start(PrimaryKind::Mysql, describe(old));
    report.old_position = old_position.map(ToString::to_string);
    let within = plan.failover.fence_timeout;
    let others: Vec<DbServer> = mysql::servers(region).into_iter().filter(|s| s != old).collect();
    let observed =
        futures_util::future::join_all(others.iter().map(|s| mysql::observe(s, accounts, within))).await;
    let mut candidates = Vec::new();
    for (server, o) in others.iter().zip(observed) {
        match o {
            Ok(o) => {
                report.candidates.push(serde_json::json!({
                    "server": describe(server), "executed": o.executed.to_string(),
                    "received": o.received.to_string(), "replica": o.replica, "read_only": o.read_only,
                }));
                candidates.push(Candidate {
                    name: describe(server),
                    server_id: server.server_id,
                    executed: o.executed,
                    received: o.received,
                    server_uuid: o.server_uuid,
                });
            }
            Err(e) => {
                report.candidates.push(serde_json::json!({ "server": describe(server), "error": e.message }))
            }
        }
    }
    let (name, wait_for_relay, lost) = match choose(&candidates, old_position, plan.failover.budget) {
        Choice::Promote { name, wait_for_relay, lost } => (name, wait_for_relay, lost),
        Choice::Refuse(reason) => return report.stop("refused", reason),
    };
    report.lost = old_position.map(|_| lost);
    let chosen = candidates.iter().find(|c| c.name == name).map(|c| c.received.clone()).unwrap_or_default();
    let Some(new) = others.iter().find(|s| describe(s) == name).cloned() else {
        return report.stop("failed", format!("chosen {name} is not configured"));
    };
    report.new = Some(describe(&new));
    clock.lap(&mut report, "choose");

    // A frozen or partitioned old primary does not answer; once it does, the watch loop
    // fences it before anything else (see `mysql::rejoin`).
    match mysql::fence(old, accounts, within).await {
        Ok(killed) => {
            report.old_fenced = true;
            tracing::info!(old = %describe(old), killed, "old primary fenced");
        }
        Err(e) => tracing::info!(old = %describe(old), error = %e, "old primary not reachable to fence"),
    }
    clock.lap(&mut report, "fence");
    if wait_for_relay
        && let Err(e) = mysql::wait_applied(&new, accounts, &chosen, plan.failover.relay_wait).await
    {
        return report.stop("refused", e);
    }
    clock.lap(&mut report, "relay");
    if let Err(e) = mysql::promote(&new, accounts).await {
        return report.stop("failed", e);
    }
    clock.lap(&mut report, "promote");
    for replica in others.iter().filter(|s| **s != new) {
        if let Err(e) = mysql::replicate(replica, &new, accounts, false).await {
            // The primary is promoted and serving; a replica left behind is for an operator.
            tracing::warn!(replica = %describe(replica), error = %e, "could not re-point a replica");
        }
    }
    clock.lap(&mut report, "repoint");
    let (Ok(old_ip), Ok(new_ip)) = (ip_of(&old.host), ip_of(&new.host)) else {
        return report.stop("failed", "re-pointing clients needs the servers' hosts as IP addresses".into());
    };
    let expect = new.server_id;
    let check = |at: SocketAddr| {
        let through = DbServer { host: at.ip().to_string(), port: at.port(), server_id: expect };
        async move {
            let mut conn = mysql::connect(&through, accounts, Duration::from_secs(5)).await?;
            let id: Option<u32> =
                mysql_async::prelude::Queryable::query_first(&mut conn, "SELECT @@server_id")
                    .await
                    .map_err(|e| format!("{at}: {e}"))?;
            conn.disconnect().await.ok();
            if id == Some(expect) {
                Ok(())
            } else {
                Err(format!("{at} reaches server_id {id:?}, not {expect}"))
            }
        }
    };
    let (old_at, new_at) = (SocketAddr::new(old_ip, old.port), SocketAddr::new(new_ip, new.port));
    if let Err(e) = plan.repoint_clients(&mut report, &mut clock, old_at, new_at, check).await {
        return report.stop("failed", e);
    }
    report.result = "done";
    report
}

/// Fail the region's Redis primary `old` over to the replica with the highest offset.
pub async fn redis_primary(
    plan: &Plan<'_>,
    servers: &[SocketAddr],
    password: Option<&str>,
    old: SocketAddr,
) -> Report {
    let (mut report, mut clock) = plan.start(PrimaryKind::Redis, old.to_string());
    let others: Vec<SocketAddr> = servers.iter().copied().filter(|s| *s != old).collect();
    for (server, role) in others.iter().zip(redis_promote::roles(&others, password).await) {
        report.candidates.push(match role {
            Ok((role, offset)) => {
                serde_json::json!({ "server": server.to_string(), "role": role, "offset": offset })
            }
            Err(e) => serde_json::json!({ "server": server.to_string(), "error": e }),
        });
    }
    let new = match redis_promote::choose(&others, password).await {
        Ok((new, _)) => new,
        Err(e) => return report.stop("refused", e),
    };
    report.new = Some(new.to_string());
    clock.lap(&mut report, "choose");
    match redis_promote::promote(new, old, password).await {
        Ok(promoted) => report.old_fenced = promoted.old_fenced,
        Err(e) => return report.stop("failed", e),
    }
    clock.lap(&mut report, "promote");
    for replica in others.iter().filter(|s| **s != new) {
        if let Err(e) = redis_promote::follow(*replica, new, password).await {
            tracing::warn!(%replica, error = %e, "could not re-point a Redis replica");
        }
    }
    clock.lap(&mut report, "repoint");
    redis_clients(plan, report, clock, old, new, password).await
}

/// A planned Redis switchover: `FAILOVER TO` the replica with the highest offset (the primary
/// stops writes, waits for the replica to catch up, then hands over: nothing acknowledged is
/// lost), then the DNS switch and its verification as in a failover.
pub async fn redis_switchover(plan: &Plan<'_>, servers: &[SocketAddr], password: Option<&str>) -> Report {
    let old = match redis_promote::locate(servers, password).await {
        Ok(old) => old,
        Err(e) => return Report::empty(PrimaryKind::Redis, String::new()).stop("refused", e),
    };
    let (mut report, mut clock) = plan.start(PrimaryKind::Redis, old.to_string());
    report.phases.clear();
    let others: Vec<SocketAddr> = servers.iter().copied().filter(|s| *s != old).collect();
    let new = match redis_promote::choose(&others, password).await {
        Ok((new, _)) => new,
        Err(e) => return report.stop("refused", e),
    };
    report.new = Some(new.to_string());
    clock.lap(&mut report, "choose");
    let handed = async {
        let mut conn = redis_promote::connect(old, password).await?;
        // FAILOVER TO needs a replica the primary lists as connected (a replica still in its
        // first sync is not yet): wait for it a little.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !redis_promote::lists_replica(&mut conn, new).await? {
            if Instant::now() > deadline {
                return Err(format!("{old} does not list {new} as a connected replica"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _: () = redis::cmd("FAILOVER")
            .arg("TO")
            .arg(new.ip().to_string())
            .arg(new.port())
            .arg("TIMEOUT")
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("FAILOVER TO {new}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut n = redis_promote::connect(new, password).await?;
            if redis_promote::role(&mut n).await?.0 == "master" {
                return Ok::<_, String>(());
            }
            if Instant::now() > deadline {
                return Err(format!("{new} is not the primary 15 s after FAILOVER TO"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if let Err(e) = handed.await {
        return report.stop("failed", e);
    }
    report.old_fenced = true;
    clock.lap(&mut report, "promote");
    redis_clients(plan, report, clock, old, new, password).await
}

/// The last steps of a Redis failover or switchover: clients re-pointed from `old` to `new`,
/// checked with `ROLE` through each way in.
async fn redis_clients(
    plan: &Plan<'_>,
    mut report: Report,
    mut clock: Clock,
    old: SocketAddr,
    new: SocketAddr,
    password: Option<&str>,
) -> Report {
    let check = |at: SocketAddr| redis_answers_master(at, password);
    if let Err(e) = plan.repoint_clients(&mut report, &mut clock, old, new, check).await {
        return report.stop("failed", e);
    }
    report.result = "done";
    report
}

/// What a client reaching `addr` finds is a Redis primary.
async fn redis_answers_master(addr: SocketAddr, password: Option<&str>) -> Result<(), String> {
    let mut conn = redis_promote::connect(addr, password).await?;
    match redis_promote::role(&mut conn).await? {
        (r, _) if r == "master" => Ok(()),
        (r, _) => Err(format!("the name reaches a Redis {r}")),
    }
}
