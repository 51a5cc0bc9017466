//! Region failover (`ferry failover region --from east --to west`): every DNS record of the
//! failed region's services (`<service>.<from>.<zone>`) takes the standby region's address
//! (`<service>.<to>.<zone>`), each switch guarded by the record's current value, after the
//! standby's primaries are checked.
//!
//! The RPO report: the failed region's transactions that were published to its topic
//! (`ferry.<from>.changes`) and that the standby has not applied (`ferry.applied` on the
//! standby's primary), read from the topic itself. Transactions committed in the failed region
//! and never published cannot be known from outside it; the report says so. When the failed
//! region returns, its ferry publishes the rest and the standby's apply takes them through the
//! conflict rules as usual.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use mysql_async::Opts;
use mysql_async::prelude::Queryable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use super::dns::{self, Switched};
use super::mysql::{self, Accounts};
use crate::config::{Config, DbServer, RegionConfig};
use crate::model::Gtid;
use crate::transport::envelope::Envelope;
use crate::transport::{changes_topic, kafka::client_config};

/// One published transaction of the failed region the standby has not applied.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Unapplied {
    pub gtid: String,
    pub offset: i64,
    pub commit_time_us: i64,
    /// `db.table` of its rows (empty for a transaction with none, e.g. DDL).
    pub tables: Vec<String>,
}

impl Unapplied {
    /// Only ferry's own heartbeat, no application data.
    pub fn heartbeat_only(&self) -> bool {
        !self.tables.is_empty() && self.tables.iter().all(|t| t.starts_with("ferry."))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Rpo {
    pub topic: String,
    /// What the standby had applied: its last GTID and the topic offset it came from.
    pub applied_gtid: Option<String>,
    pub applied_offset: Option<i64>,
    /// The topic's end when it was read.
    pub high_watermark: i64,
    /// Published and not applied, application data only.
    pub transactions: Vec<Unapplied>,
    /// Of the same, ferry's heartbeats only (no data to lose; listed for completeness).
    pub heartbeats: usize,
    /// Records that could not be decoded (counted, never skipped silently).
    pub undecodable: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordSwitch {
    pub name: String,
    pub from: Vec<Ipv4Addr>,
    pub to: Ipv4Addr,
    /// `switched`, `already`, `stale`, `planned` (not confirmed) or the error.
    pub result: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionReport {
    pub from: String,
    pub to: String,
    pub confirmed: bool,
    /// `done`, `planned` (without --confirm), `refused` (standby unhealthy) or `failed`.
    pub result: String,
    /// The standby's health checks: what was checked and the answer.
    pub standby: Vec<(String, Result<String, String>)>,
    pub records: Vec<RecordSwitch>,
    pub rpo: Result<Rpo, String>,
}

fn region<'a>(config: &'a Config, name: &str) -> Result<&'a RegionConfig, String> {
    config.regions.get(name).ok_or_else(|| format!("no region `{name}` in the configuration"))
}

/// The standby can take the traffic: its MariaDB primary (`primary`, located by the caller) and
/// its Redis primary answer as primaries.
async fn standby_health(
    standby: &RegionConfig,
    primary: &Result<DbServer, String>,
) -> Vec<(String, Result<String, String>)> {
    let mut checks =
        vec![("mysql primary".to_string(), primary.as_ref().map(mysql::describe).map_err(Clone::clone))];
    if let Some(redis) = &standby.redis {
        let servers = redis.servers();
        let password = redis.password.as_ref().map(|p| p.expose().to_string());
        let found = super::redis_promote::locate(&servers, password.as_deref()).await;
        checks.push(("redis primary".to_string(), found.map(|a| a.to_string())));
    }
    checks
}

/// Read the failed region's topic past what the standby (its primary at `standby`) applied.
async fn rpo(failed: &RegionConfig, from: &str, standby: &Opts) -> Result<Rpo, String> {
    let mut conn =
        mysql_async::Conn::new(standby.clone()).await.map_err(|e| format!("standby primary: {e}"))?;
    let applied: Option<(String, i64)> = conn
        .exec_first("SELECT gtid, kafka_offset FROM ferry.applied WHERE origin = ?", (from,))
        .await
        .map_err(|e| format!("reading ferry.applied: {e}"))?;
    conn.disconnect().await.ok();
    let done: Option<Gtid> = applied.as_ref().and_then(|(g, _)| g.parse().ok());
    let topic = changes_topic(from);
    let start = applied.as_ref().map_or(0, |(_, o)| o + 1);
    let (bootstrap, t) = (failed.kafka.bootstrap.clone(), topic.clone());
    let records = tokio::task::spawn_blocking(move || read_topic(&bootstrap, &t, start))
        .await
        .map_err(|e| e.to_string())??;
    let mut report = Rpo {
        topic,
        applied_gtid: applied.as_ref().map(|(g, _)| g.clone()),
        applied_offset: applied.as_ref().map(|(_, o)| *o),
        high_watermark: records.0,
        transactions: Vec::new(),
        heartbeats: 0,
        undecodable: 0,
    };
    let mut open: Option<Unapplied> = None;
    for (offset, payload) in records.1 {
        let Ok(envelope) = Envelope::parse(&payload) else {
            report.undecodable += 1;
            continue;
        };
        if done.as_ref().is_some_and(|d| d.covers(&envelope.origin.gtid)) {
            continue;
        }
        let txn = open.get_or_insert_with(|| Unapplied {
            gtid: envelope.origin.gtid.to_string(),
            offset,
            commit_time_us: envelope.commit_time_us,
            tables: Vec::new(),
        });
        let mut tables: BTreeSet<String> = txn.tables.drain(..).collect();
        tables.extend(envelope.rows.iter().map(|r| format!("{}.{}", r.db, r.table)));
        txn.tables = tables.into_iter().collect();
        if envelope.last
            && let Some(txn) = open.take()
        {
            if txn.heartbeat_only() {
                report.heartbeats += 1;
            } else {
                report.transactions.push(txn);
            }
        }
    }
    Ok(report)
}

/// A topic's end offset and its records (offset, payload) from some offset on.
type TopicTail = (i64, Vec<(i64, Vec<u8>)>);

/// Every record from `start` to the end of the topic's single partition.
fn read_topic(bootstrap: &[String], topic: &str, start: i64) -> Result<TopicTail, String> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", "ferry-failover-rpo")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("kafka consumer: {e}"))?;
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .map_err(|e| format!("{topic}: reading its end: {e}"))?;
    let mut out = Vec::new();
    if start >= high {
        return Ok((high, out));
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(start)).map_err(|e| e.to_string())?;
    consumer.assign(&assignment).map_err(|e| format!("assigning {topic}: {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut next = start;
    while next < high {
        if std::time::Instant::now() > deadline {
            return Err(format!("{topic}: read up to offset {next} of {high} within 60 s"));
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                out.push((m.offset(), m.payload().unwrap_or_default().to_vec()));
            }
            Some(Err(e)) => return Err(format!("{topic}: {e}")),
            None => {}
        }
    }
    Ok((high, out))
}

/// Plan (and with `confirm`, carry out) the failover of region `from` to `to`.
pub async fn fail_over(config: &Config, from: &str, to: &str, confirm: bool) -> Result<RegionReport, String> {
    let dns = config.failover.as_ref().and_then(|f| f.dns.as_ref()).ok_or("needs failover.dns")?;
    let standby = region(config, to)?;
    region(config, from)?;
    if from == to {
        return Err("--from and --to are the same region".into());
    }
    let authority = super::run::authority(dns)?;
    let mut records = Vec::new();
    for service in &dns.services {
        let name = dns.fqdn(&format!("{service}.{from}"));
        let target = dns.fqdn(&format!("{service}.{to}"));
        let current = dns::addresses(&authority, &name).await?;
        let wanted = dns::addresses(&authority, &target).await?;
        let [to_ip] = wanted.as_slice() else {
            return Err(format!("{target} answers {wanted:?}; expected one address"));
        };
        records.push(RecordSwitch { name, from: current, to: *to_ip, result: "planned".into() });
    }
    // The standby's primary, found once for the health check, the RPO and keeping the report.
    let accounts = Accounts::from_config(&standby.mysql, None);
    let primary =
        mysql::locate(&standby.mysql, &accounts, Duration::from_secs(3)).await.map_err(String::from);
    let health = standby_health(standby, &primary).await;
    let healthy = health.iter().all(|(_, r)| r.is_ok());
    let standby_opts = primary.map(|s| mysql::opts(&s, &accounts));
    let rpo = match &standby_opts {
        Ok(opts) => rpo(region(config, from)?, from, opts).await,
        Err(e) => Err(format!("standby primary: {e}")),
    };
    let mut report = RegionReport {
        from: from.into(),
        to: to.into(),
        confirmed: confirm,
        result: "planned".into(),
        standby: health,
        records,
        rpo,
    };
    if !confirm {
        return Ok(report);
    }
    if !healthy {
        report.result = "refused".into();
        return Ok(report);
    }
    let mut all = true;
    for record in &mut report.records {
        record.result = match record.from.as_slice() {
            [only] if *only == record.to => "already".into(),
            [old] => match dns::switch(&authority, &record.name, *old, record.to, dns.ttl).await {
                Ok(Switched::Done) => "switched".into(),
                Ok(Switched::Stale) => "stale: the record changed since it was read; left as it is".into(),
                Err(e) => e,
            },
            other => format!("holds {other:?}; only a single address is switched"),
        };
        all &= record.result == "switched" || record.result == "already";
    }
    report.result = if all { "done" } else { "failed" }.into();
    if let Ok(opts) = &standby_opts {
        keep(opts, &report).await;
    }
    Ok(report)
}

/// Keep the report on the standby's primary (`ferry.failovers`); a failure is logged, the
/// report is printed anyway.
async fn keep(standby: &Opts, report: &RegionReport) {
    let unapplied = report.rpo.as_ref().map_or(-1, |r| r.transactions.len() as i64);
    let json = serde_json::to_string(report).unwrap_or_default();
    let write = async {
        let mut conn = mysql_async::Conn::new(standby.clone()).await.map_err(|e| e.to_string())?;
        crate::schema::install(&mut conn).await.map_err(|e| e.to_string())?;
        conn.exec_drop(
            "INSERT INTO ferry.failovers (kind, from_region, to_region, result, unapplied, report) \
             VALUES ('region', ?, ?, ?, ?, ?)",
            (&report.from, &report.to, &report.result, unapplied, json),
        )
        .await
        .map_err(|e| e.to_string())?;
        conn.disconnect().await.ok();
        Ok::<_, String>(())
    };
    if let Err(e) = write.await {
        tracing::error!(error = %e, "could not keep the region failover report in ferry.failovers");
    }
}

/// The report as text for a terminal.
pub fn render(report: &RegionReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "region failover {} → {}: {}", report.from, report.to, report.result);
    for (what, answer) in &report.standby {
        match answer {
            Ok(a) => _ = writeln!(out, "  standby {what}: {a}"),
            Err(e) => _ = writeln!(out, "  standby {what}: UNHEALTHY: {e}"),
        }
    }
    for r in &report.records {
        let from: Vec<String> = r.from.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "  {} {} → {}: {}", r.name, from.join(","), r.to, r.result);
    }
    match &report.rpo {
        Ok(rpo) => {
            let _ = writeln!(
                out,
                "  RPO: {} transaction(s) of {} published and not applied by {} (applied up to {} at offset {}; topic end {}); \
                 {} heartbeat(s); {} undecodable record(s)",
                rpo.transactions.len(),
                report.from,
                report.to,
                rpo.applied_gtid.as_deref().unwrap_or("nothing"),
                rpo.applied_offset.map_or("-".to_string(), |o| o.to_string()),
                rpo.high_watermark,
                rpo.heartbeats,
                rpo.undecodable,
            );
            for t in &rpo.transactions {
                let _ = writeln!(out, "    {} (offset {}) {}", t.gtid, t.offset, t.tables.join(", "));
            }
            let _ = writeln!(
                out,
                "  (transactions {} committed but never published cannot be seen from outside it)",
                report.from
            );
        }
        Err(e) => _ = writeln!(out, "  RPO: not known: {e}"),
    }
    out
}
