//! Reading the conflict log (`ferry.conflicts`) for `ferry conflicts`.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use serde::Serialize;

use crate::config::Config;

/// `--since`.
#[derive(Debug, Clone, PartialEq)]
pub enum Since {
    Ago(Duration),
    /// A UTC time, `YYYY-MM-DD hh:mm:ss[.f]`.
    At(String),
}

/// One logged conflict.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: u64,
    pub decided_at: String,
    pub table: String,
    /// The row's primary key (JSON).
    pub key: serde_json::Value,
    pub kind: String,
    pub rule: String,
    pub winner: String,
    pub local_version_us: Option<i64>,
    pub incoming_version_us: i64,
    pub origin: String,
    pub origin_gtid: String,
    pub local_image: Option<serde_json::Value>,
    pub incoming_image: Option<serde_json::Value>,
}

impl Entry {
    /// The one-line form: when, where, what, who won, and by which rule.
    pub fn line(&self) -> String {
        let key = match &self.key {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(c, v)| format!("{c}={}", v.get("v").unwrap_or(v)))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        format!(
            "{}  {}  {}  {:<14} {:<8} won by {:<16} from {} {}",
            self.decided_at,
            self.table,
            key,
            self.kind,
            self.winner,
            self.rule,
            self.origin,
            self.origin_gtid
        )
    }
}

/// The newest `limit` conflicts on the local primary, optionally only since `since` and of
/// `table`.
pub async fn list(
    config: &Config,
    since: Option<Since>,
    table: Option<String>,
    limit: u64,
) -> Result<Vec<Entry>, String> {
    let local = config.local().ok_or("no local region")?;
    let mut conn = mysql_async::Conn::new(crate::failover::mysql::primary_opts(&local.mysql).await?)
        .await
        .map_err(|e| format!("connecting to the local primary: {e}"))?;
    let mut conds = vec!["1 = 1".to_string()];
    let mut params: Vec<mysql_async::Value> = Vec::new();
    match since {
        Some(Since::Ago(d)) => {
            conds.push("decided_at >= UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND".into());
            params.push((d.as_micros() as u64).into());
        }
        Some(Since::At(t)) => {
            conds.push("decided_at >= ?".into());
            params.push(t.into());
        }
        None => {}
    }
    if let Some(t) = table {
        conds.push("table_name = ?".into());
        params.push(t.into());
    }
    params.push(limit.into());
    // decided_at is written by the server's clock in UTC (ferry's sessions use +00:00).
    let sql = format!(
        "SELECT id, CAST(decided_at AS CHAR), table_name, row_key, kind, rule, winner, local_version_us, \
         incoming_version_us, origin, origin_gtid, local_image, incoming_image FROM ferry.conflicts \
         WHERE {} ORDER BY id DESC LIMIT ?",
        conds.join(" AND ")
    );
    conn.query_drop("SET SESSION time_zone = '+00:00'").await.map_err(|e| e.to_string())?;
    let rows: Vec<mysql_async::Row> =
        conn.exec(sql, params).await.map_err(|e| format!("reading ferry.conflicts: {e}"))?;
    let _ = conn.disconnect().await;
    let text = |r: &mysql_async::Row, i: usize| r.get::<Option<String>, _>(i).flatten();
    let json = |t: Option<String>| t.and_then(|t| serde_json::from_str(&t).ok());
    Ok(rows
        .iter()
        .map(|r| {
            let key: Vec<u8> = r.get::<Option<Vec<u8>>, _>(3).flatten().unwrap_or_default();
            Entry {
                id: r.get::<Option<u64>, _>(0).flatten().unwrap_or_default(),
                decided_at: text(r, 1).unwrap_or_default(),
                table: text(r, 2).unwrap_or_default(),
                key: serde_json::from_slice(&key).unwrap_or_else(|_| String::from_utf8_lossy(&key).into()),
                kind: text(r, 4).unwrap_or_default(),
                rule: text(r, 5).unwrap_or_default(),
                winner: text(r, 6).unwrap_or_default(),
                local_version_us: r.get::<Option<i64>, _>(7).flatten(),
                incoming_version_us: r.get::<Option<i64>, _>(8).flatten().unwrap_or_default(),
                origin: text(r, 9).unwrap_or_default(),
                origin_gtid: text(r, 10).unwrap_or_default(),
                local_image: json(text(r, 11)),
                incoming_image: json(text(r, 12)),
            }
        })
        .collect())
}
