//! The target: the local primary, where each origin transaction is applied as exactly one
//! target transaction under its origin identity, with `ferry.applied` updated inside it.
//!
//! Contract: `apply` either commits the whole transaction and its progress row, or nothing
//! (it rolls back). A transaction already recorded in `ferry.applied` is recognised and not
//! applied again, so replays are harmless. Errors are classified: transient ones (lost
//! connection, deadlock, lock wait timeout) are retried by the caller; permanent ones (the
//! row does not fit the target table) go to the dead-letter queue.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, TxOpts};

use super::reassemble::Transaction;
use super::sql;
use crate::config::Flavor;
use crate::model::Gtid;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("transient: {0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

impl ApplyError {
    fn from_sql(context: &str, e: mysql_async::Error) -> Self {
        let message = format!("{context}: {e}");
        match &e {
            // Deadlock, lock wait timeout, query interrupted / server shutting down.
            mysql_async::Error::Server(s) if matches!(s.code, 1205 | 1213 | 1317 | 1053) => {
                ApplyError::Transient(message)
            }
            mysql_async::Error::Server(_) => ApplyError::Permanent(message),
            _ => ApplyError::Transient(message),
        }
    }
}

/// What `apply` did with a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupOutcome {
    /// Transactions written.
    pub applied: usize,
    pub rows: usize,
    /// Transactions `ferry.applied` already covered (replays), left out.
    pub duplicates: usize,
}

/// Where an origin's apply stands, from `ferry.applied`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub gtid: Gtid,
    pub offset: i64,
}

pub struct Target {
    conn: Conn,
    flavor: Flavor,
}

impl Target {
    pub async fn connect(opts: Opts, flavor: Flavor) -> Result<Self, ApplyError> {
        let mut conn =
            Conn::new(opts).await.map_err(|e| ApplyError::from_sql("connecting to the local primary", e))?;
        // UTC for temporal literals, the binary charset so bound bytes are never reinterpreted,
        // strict so a value that does not fit its column is an error (never silently
        // coerced), zero dates and explicit zero keys allowed (they are what the origin stored).
        conn.query_drop(
            "SET NAMES binary, SESSION time_zone = '+00:00', \
             SESSION sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO'",
        )
        .await
        .map_err(|e| ApplyError::from_sql("setting up the apply session", e))?;
        Ok(Self { conn, flavor })
    }

    /// Create the `ferry` schema if missing.
    pub async fn ensure_schema(&mut self) -> Result<(), ApplyError> {
        crate::schema::install(&mut self.conn)
            .await
            .map_err(|e| ApplyError::from_sql("installing the ferry schema", e))
    }

    /// The last transaction applied from `origin` and its offset.
    pub async fn applied(&mut self, origin: &str) -> Result<Option<Applied>, ApplyError> {
        let row: Option<(String, i64)> = self
            .conn
            .exec_first("SELECT gtid, kafka_offset FROM ferry.applied WHERE origin = ?", (origin,))
            .await
            .map_err(|e| ApplyError::from_sql("reading ferry.applied", e))?;
        row.map(|(g, offset)| {
            g.parse()
                .map(|gtid| Applied { gtid, offset })
                .map_err(|e| ApplyError::Permanent(format!("ferry.applied: {e}")))
        })
        .transpose()
    }

    /// Apply consecutive origin transactions (from `topic` partition `partition`) as one local
    /// transaction: each stays whole, the group carries the last one's GTID, and
    /// `ferry.applied` records the last one. Transactions `ferry.applied` already covers are
    /// left out. On MySQL, where `gtid_next` names exactly one transaction, apply groups of one.
    pub async fn apply(
        &mut self,
        group: &[Transaction],
        topic: &str,
        partition: i32,
    ) -> Result<GroupOutcome, ApplyError> {
        let Some(first) = group.first() else { return Ok(GroupOutcome::default()) };
        let done = self.applied(&first.origin.region).await?;
        let fresh: Vec<&Transaction> = group
            .iter()
            .filter(|t| !done.as_ref().is_some_and(|d| covers(&d.gtid, &t.origin.gtid)))
            .collect();
        let mut outcome = GroupOutcome { duplicates: group.len() - fresh.len(), ..GroupOutcome::default() };
        let Some(last) = fresh.last() else { return Ok(outcome) };
        self.set_identity(&last.origin.gtid).await?;
        let result = self.write(&fresh, topic, partition).await;
        if self.flavor == Flavor::Mysql {
            let _ = self.conn.query_drop("SET gtid_next = 'AUTOMATIC'").await;
        }
        result?;
        outcome.applied = fresh.len();
        outcome.rows = fresh.iter().map(|t| t.rows.len()).sum();
        Ok(outcome)
    }

    /// Whether this target can commit several origin transactions together.
    pub fn groups(&self) -> bool {
        self.flavor == Flavor::Mariadb
    }

    async fn write(&mut self, group: &[&Transaction], topic: &str, partition: i32) -> Result<(), ApplyError> {
        let Some(last) = group.last() else { return Ok(()) };
        let mut tx = self
            .conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| ApplyError::from_sql("starting the apply transaction", e))?;
        for statement in sql::batch(group.iter().flat_map(|t| &t.rows)) {
            let context = statement.sql.split(" (").next().unwrap_or_default().to_string();
            tx.exec_drop(&statement.sql, statement.params)
                .await
                .map_err(|e| ApplyError::from_sql(&context, e))?;
        }
        tx.exec_drop(
            "INSERT INTO ferry.applied (origin, gtid, kafka_topic, kafka_partition, kafka_offset) VALUES (?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE gtid = VALUES(gtid), kafka_topic = VALUES(kafka_topic), \
             kafka_partition = VALUES(kafka_partition), kafka_offset = VALUES(kafka_offset)",
            (&last.origin.region, last.origin.gtid.to_string(), topic, partition, last.last_offset),
        )
        .await
        .map_err(|e| ApplyError::from_sql("writing ferry.applied", e))?;
        tx.commit().await.map_err(|e| ApplyError::from_sql("committing", e))
    }

    /// Make the next transaction carry the origin's GTID, so the target's binlog records it
    /// and the target's own capture recognises it as foreign.
    async fn set_identity(&mut self, gtid: &Gtid) -> Result<(), ApplyError> {
        let result = match gtid {
            Gtid::MariaDb(g) => {
                self.conn
                    .exec_drop(
                        "SET SESSION gtid_domain_id = ?, SESSION server_id = ?, SESSION gtid_seq_no = ?",
                        (g.domain, g.server_id, g.seq),
                    )
                    .await
            }
            Gtid::MySql { .. } => self.conn.exec_drop("SET gtid_next = ?", (gtid.to_string(),)).await,
        };
        result.map_err(|e| {
            ApplyError::from_sql("setting the origin identity (needs SUPER or BINLOG REPLAY)", e)
        })
    }
}

/// `done` (the last applied GTID of an origin) already covers `next`.
fn covers(done: &Gtid, next: &Gtid) -> bool {
    match (done, next) {
        (Gtid::MariaDb(d), Gtid::MariaDb(n)) => d.domain == n.domain && n.seq <= d.seq,
        (Gtid::MySql { uuid: du, gno: dg }, Gtid::MySql { uuid: nu, gno: ng }) => du == nu && ng <= dg,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_recognised_per_domain_or_uuid() {
        let g = |s: &str| s.parse::<Gtid>().unwrap();
        assert!(covers(&g("1-101-9"), &g("1-101-9")));
        assert!(covers(&g("1-101-9"), &g("1-102-4")), "a promoted replica continues the domain's sequence");
        assert!(!covers(&g("1-101-9"), &g("1-101-10")));
        assert!(!covers(&g("1-101-9"), &g("2-201-1")), "another domain");
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        assert!(covers(&g(&format!("{u}:5")), &g(&format!("{u}:5"))));
        assert!(!covers(&g(&format!("{u}:5")), &g("4e11fa47-71ca-11e1-9e33-c80aa9429562:1")));
    }
}
