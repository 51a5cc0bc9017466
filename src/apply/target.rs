//! The target: the local primary, where each origin transaction is applied as exactly one
//! target transaction under its origin identity, with `ferry.applied` updated inside it.
//!
//! Contract: `apply` either commits the whole transaction and its progress row, or nothing
//! (it rolls back). A transaction already recorded in `ferry.applied` is recognised and not
//! applied again, so replays are harmless. Errors are classified: transient ones (lost
//! connection, deadlock, lock wait timeout) are retried by the caller; permanent ones (the
//! row does not fit the target table) go to the dead-letter queue.

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use super::parallel::KeyCatalog;
use super::reassemble::Transaction;
use super::resolve::{self, Recorded, Sourced};
use super::sql;
use crate::config::Flavor;
use crate::conflict::Rules;
use crate::model::{Gtid, RowChange};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Worth retrying in place (deadlock, lock wait timeout, interrupted statement).
    #[error("transient: {0}")]
    Transient(String),
    /// The connection (or the broker) is gone: the session reconnects and seeks again.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The server refused ferry's account (authentication or a missing privilege): a
    /// configuration problem, not a bad record. Nothing is dead-lettered; apply waits and
    /// tries again until the grant exists.
    #[error("refused: {0}")]
    Refused(String),
    /// The local schema lacks what the change needs (a column or a table the origin has):
    /// a migration not run here yet. Nothing is dead-lettered; apply waits and tries again
    /// until the schema has it.
    #[error("schema behind: {0}")]
    SchemaBehind(String),
    /// A row apply found absent (and so could not lock) was created by a local write before
    /// apply's insert: the group is decided again over what the table holds now.
    #[error("raced by a local write: {0}")]
    Raced(String),
    #[error("{0}")]
    Permanent(String),
}

impl ApplyError {
    pub(crate) fn from_sql(context: &str, e: mysql_async::Error) -> Self {
        let message = format!("{context}: {e}");
        match &e {
            // Deadlock, lock wait timeout, query interrupted / server shutting down.
            mysql_async::Error::Server(s) if matches!(s.code, 1205 | 1213 | 1317 | 1053) => {
                ApplyError::Transient(message)
            }
            _ if crate::failover::mysql::access_refused(&e) => ApplyError::Refused(message),
            // Unknown column, unknown table: the origin ran a migration this region has not.
            mysql_async::Error::Server(s) if matches!(s.code, 1054 | 1146) => {
                ApplyError::SchemaBehind(message)
            }
            // The server is read-only: it is no longer the primary (a failover demoted it).
            // Reconnecting finds the primary again.
            mysql_async::Error::Server(s) if matches!(s.code, 1290 | 1836) => ApplyError::Lost(message),
            mysql_async::Error::Server(_) => ApplyError::Permanent(message),
            _ => ApplyError::Lost(message),
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
    /// Conflicts decided (and logged in `ferry.conflicts`).
    pub conflicts: Vec<Recorded>,
}

/// How a group's changes become statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statements {
    /// Each row's final state, batched per table (`sql::batch`): the fast way.
    Batched,
    /// Every change as the origin made it, in the origin's order: slower, but valid whenever
    /// the origin's own order was (batching reorders across tables, which a foreign key
    /// between rows of one group can refuse).
    InOrder,
}

/// A group written but not yet committed (see `Target::stage`).
#[derive(Debug, Default)]
#[must_use = "a staged group holds an open transaction: finish or abandon it"]
pub struct Staged {
    outcome: GroupOutcome,
    /// Origin region, GTID and offset of the last fresh transaction; None when all were
    /// replays (no transaction was opened).
    last: Option<(String, Gtid, i64)>,
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
    /// The conflict rules and the unique keys they consult; without them every change is
    /// written as it is.
    rules: Option<(Arc<Rules>, Arc<KeyCatalog>)>,
}

impl Target {
    pub async fn connect(opts: Opts, flavor: Flavor) -> Result<Self, ApplyError> {
        // Affected rows count the rows a statement found, changed or not: an update or delete
        // that finds nothing is then told apart from one that changed nothing.
        let opts = mysql_async::OptsBuilder::from_opts(opts).client_found_rows(true);
        let mut conn =
            Conn::new(opts).await.map_err(|e| ApplyError::from_sql("connecting to the local primary", e))?;
        // UTC for temporal literals, the binary charset so bound bytes are never reinterpreted,
        // strict so a value that does not fit its column is an error (never silently
        // coerced), zero dates and explicit zero keys allowed (they are what the origin stored).
        // Read committed takes no gap locks, so parallel groups writing disjoint rows do not
        // block each other; a short lock wait turns a wait on a later group (which waits for
        // this one to commit first) into a retry instead of a long stall.
        conn.query_drop(
            "SET NAMES binary, SESSION time_zone = '+00:00', \
             SESSION sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO', \
             SESSION innodb_lock_wait_timeout = 2",
        )
        .await
        .map_err(|e| ApplyError::from_sql("setting up the apply session", e))?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(|e| ApplyError::from_sql("setting up the apply session", e))?;
        Ok(Self { conn, flavor, rules: None })
    }

    /// Decide the changes of every table the rules govern by them (see `resolve`).
    pub fn govern(&mut self, rules: Arc<Rules>, catalog: Arc<KeyCatalog>) {
        self.rules = Some((rules, catalog));
    }

    /// Create the `ferry` schema if missing.
    pub async fn ensure_schema(&mut self) -> Result<(), ApplyError> {
        crate::schema::install(&mut self.conn)
            .await
            .map_err(|e| ApplyError::from_sql("installing the ferry schema", e))
    }

    /// The unique and foreign keys of every user table, for parallel apply's dependency
    /// tracking (read once per session: a table created later is tracked by primary key
    /// until the next session).
    pub async fn key_catalog(&mut self) -> Result<KeyCatalog, ApplyError> {
        let user = format!("NOT IN {}", crate::schema::NOT_USER_SCHEMAS);
        let uniques: Vec<(String, String, String, String)> = self
            .conn
            .query(format!(
                "SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE NON_UNIQUE = 0 AND TABLE_SCHEMA {user} \
                 ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
            ))
            .await
            .map_err(|e| ApplyError::from_sql("reading unique keys", e))?;
        let foreign: Vec<(String, String, String, String, String, String, String)> = self
            .conn
            .query(format!(
                "SELECT TABLE_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, REFERENCED_TABLE_SCHEMA, \
                 REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE REFERENCED_TABLE_NAME IS NOT NULL AND TABLE_SCHEMA {user} \
                 ORDER BY TABLE_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION"
            ))
            .await
            .map_err(|e| ApplyError::from_sql("reading foreign keys", e))?;
        Ok(KeyCatalog::new(uniques, foreign))
    }

    /// What `ferry validate` would find wrong with the conflict rules in this schema.
    pub async fn check_rules(
        &mut self,
        config: &crate::config::Config,
    ) -> Result<Vec<crate::config::ConfigProblem>, ApplyError> {
        crate::conflict::check::check(&mut self.conn, config)
            .await
            .map_err(|e| ApplyError::from_sql("reading the schema", e))
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

    /// The newest heartbeat of `origin` applied here (`beat_at_us`), if any.
    pub async fn last_beat(&mut self, origin: &str) -> Result<Option<i64>, ApplyError> {
        self.conn
            .exec_first("SELECT beat_at_us FROM ferry.heartbeat WHERE region = ?", (origin,))
            .await
            .map_err(|e| ApplyError::from_sql("reading ferry.heartbeat", e))
    }

    /// Apply consecutive origin transactions (from `topic` partition `partition`) as one local
    /// transaction: each stays whole, the group carries the last one's GTID, and
    /// `ferry.applied` records the last one. Transactions `ferry.applied` already covers are
    /// left out. On MySQL, where `gtid_next` names exactly one transaction, apply groups of one.
    pub async fn apply(
        &mut self,
        origin: &str,
        group: &[Transaction],
        how: Statements,
        topic: &str,
        partition: i32,
    ) -> Result<GroupOutcome, ApplyError> {
        let staged = self.stage(origin, group, how).await?;
        self.finish(staged, topic, partition).await
    }

    /// The first half of `apply`: open the local transaction under the group's identity and
    /// write its rows, leaving it uncommitted (parallel apply commits in origin order). On an
    /// error the transaction is rolled back. Progress is kept under `origin`, the topic's
    /// origin (never a region a record names).
    pub async fn stage(
        &mut self,
        origin: &str,
        group: &[Transaction],
        how: Statements,
    ) -> Result<Staged, ApplyError> {
        if group.is_empty() {
            return Ok(Staged::default());
        }
        let done = self.applied(origin).await?;
        let fresh: Vec<&Transaction> =
            group.iter().filter(|t| !done.as_ref().is_some_and(|d| d.gtid.covers(&t.origin.gtid))).collect();
        let mut staged = Staged {
            outcome: GroupOutcome { duplicates: group.len() - fresh.len(), ..GroupOutcome::default() },
            last: None,
        };
        let Some(last) = fresh.last() else { return Ok(staged) };
        self.set_identity(&last.origin.gtid).await?;
        match self.write(&fresh, how).await {
            Ok(conflicts) => staged.outcome.conflicts = conflicts,
            Err(e) => {
                self.abandon().await;
                return Err(e);
            }
        }
        staged.outcome.applied = fresh.len();
        staged.outcome.rows = fresh.iter().map(|t| t.rows.len()).sum();
        staged.last = Some((origin.to_string(), last.origin.gtid.clone(), last.last_offset));
        Ok(staged)
    }

    /// The second half of `apply`: record progress in `ferry.applied` and commit.
    pub async fn finish(
        &mut self,
        staged: Staged,
        topic: &str,
        partition: i32,
    ) -> Result<GroupOutcome, ApplyError> {
        let Some((origin, gtid, offset)) = &staged.last else { return Ok(staged.outcome) };
        let result = async {
            self.conn
                .exec_drop(
                    "INSERT INTO ferry.applied (origin, gtid, kafka_topic, kafka_partition, kafka_offset) \
                     VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE gtid = VALUES(gtid), \
                     kafka_topic = VALUES(kafka_topic), kafka_partition = VALUES(kafka_partition), \
                     kafka_offset = VALUES(kafka_offset)",
                    (origin, gtid.to_string(), topic, partition, offset),
                )
                .await
                .map_err(|e| ApplyError::from_sql("writing ferry.applied", e))?;
            self.conn.query_drop("COMMIT").await.map_err(|e| ApplyError::from_sql("committing", e))
        }
        .await;
        if result.is_err() {
            self.abandon().await;
        } else if self.flavor == Flavor::Mysql {
            let _ = self.conn.query_drop("SET gtid_next = 'AUTOMATIC'").await;
        }
        result.map(|()| staged.outcome)
    }

    /// Roll back a staged group (best effort: a lost connection rolls back by itself).
    pub async fn abandon(&mut self) {
        let _ = self.conn.query_drop("ROLLBACK").await;
        if self.flavor == Flavor::Mysql {
            let _ = self.conn.query_drop("SET gtid_next = 'AUTOMATIC'").await;
        }
    }

    /// Whether this target can commit several origin transactions together.
    pub fn groups(&self) -> bool {
        self.flavor == Flavor::Mariadb
    }

    /// Write a group's changes: tables the conflict rules govern through `resolve`, the
    /// others (single-writer tables, ferry's own) as they are.
    async fn write(&mut self, group: &[&Transaction], how: Statements) -> Result<Vec<Recorded>, ApplyError> {
        self.conn
            .query_drop("START TRANSACTION")
            .await
            .map_err(|e| ApplyError::from_sql("starting the apply transaction", e))?;
        let now_us = crate::runtime::now_us();
        let sourced: Vec<Sourced<'_>> = group
            .iter()
            .flat_map(|t| {
                t.rows.iter().map(|change| Sourced {
                    change,
                    origin: &t.origin.region,
                    gtid: &t.origin.gtid,
                    commit_us: t.commit_time_us,
                })
            })
            .collect();
        let ruled: Vec<bool> = sourced
            .iter()
            .map(|s| self.rules.as_ref().and_then(|(r, _)| r.governs(s.change)).is_some())
            .collect();
        let mut conflicts = Vec::new();
        match how {
            Statements::Batched => {
                let plain: Vec<&RowChange> =
                    sourced.iter().zip(&ruled).filter(|(_, r)| !**r).map(|(s, _)| s.change).collect();
                // Batching keeps only what it can write: a change it could not is an error
                // here too, never dropped.
                if let Some(unwritable) = plain.iter().find(|c| sql::statement(c).is_none()) {
                    return Err(nothing_to_write(unwritable));
                }
                self.run(sql::batch(plain)).await?;
                // Per table, in the order the group first touches it.
                let mut tables: Vec<((&str, &str), Vec<Sourced<'_>>)> = Vec::new();
                for s in sourced.iter().zip(&ruled).filter(|(_, r)| **r).map(|(s, _)| *s) {
                    let t = (s.change.db.as_str(), s.change.table.as_str());
                    match tables.iter_mut().find(|(k, _)| *k == t) {
                        Some((_, list)) => list.push(s),
                        None => tables.push((t, vec![s])),
                    }
                }
                for (_, changes) in tables {
                    conflicts.extend(self.resolve(&changes, now_us).await?);
                }
            }
            Statements::InOrder => {
                for (s, governed) in sourced.iter().zip(ruled) {
                    if governed {
                        conflicts.extend(self.resolve(std::slice::from_ref(s), now_us).await?);
                    } else {
                        let statement = sql::statement(s.change).ok_or_else(|| nothing_to_write(s.change))?;
                        self.run([statement]).await?;
                    }
                }
            }
        }
        Ok(conflicts)
    }

    /// One governed table's changes (all of one table).
    async fn resolve(&mut self, changes: &[Sourced<'_>], now_us: i64) -> Result<Vec<Recorded>, ApplyError> {
        let (Some((rules, catalog)), Some(first)) = (self.rules.as_ref(), changes.first()) else {
            return Ok(Vec::new());
        };
        let Some(policy) = rules.governs(first.change) else { return Ok(Vec::new()) };
        resolve::write_table(&mut self.conn, rules, catalog, policy, changes, now_us).await
    }

    async fn run(&mut self, statements: impl IntoIterator<Item = sql::Statement>) -> Result<(), ApplyError> {
        execute(&mut self.conn, statements).await
    }

    /// Make the next transaction carry the origin's GTID, so the target's binlog records it
    /// and the target's own capture recognises it as foreign.
    ///
    /// MariaDB: the domain and server id first, then the sequence number, in two statements.
    /// Under `gtid_strict_mode` the server checks a new `gtid_seq_no` against the session's
    /// domain and server id *as they are when the statement starts* (every assignment of one
    /// SET is checked before any is made), so setting all three at once checks the origin's
    /// number against this region's own domain and fails whenever that domain is further on.
    async fn set_identity(&mut self, gtid: &Gtid) -> Result<(), ApplyError> {
        let result = match gtid {
            Gtid::MariaDb(g) => {
                match self
                    .conn
                    .exec_drop(
                        "SET SESSION gtid_domain_id = ?, SESSION server_id = ?",
                        (g.domain, g.server_id),
                    )
                    .await
                {
                    Ok(()) => self.conn.exec_drop("SET SESSION gtid_seq_no = ?", (g.seq,)).await,
                    Err(e) => Err(e),
                }
            }
            Gtid::MySql { .. } => self.conn.exec_drop("SET gtid_next = ?", (gtid.to_string(),)).await,
        };
        result.map_err(|e| {
            ApplyError::from_sql("setting the origin identity (needs SUPER or BINLOG REPLAY)", e)
        })
    }
}

/// Run `statements` in order on `conn`; an error names the statement's start. A statement
/// that finds fewer rows than it must (see `Statement::finds`) is a permanent error.
pub(super) async fn execute(
    conn: &mut Conn,
    statements: impl IntoIterator<Item = sql::Statement>,
) -> Result<(), ApplyError> {
    for statement in statements {
        let context = statement.sql.split(" (").next().unwrap_or_default().to_string();
        // A read (an existence check) finds what it counts; a write, its affected rows.
        let found = if statement.sql.starts_with("SELECT") {
            let count: Option<u64> = conn
                .exec_first(&statement.sql, statement.params)
                .await
                .map_err(|e| ApplyError::from_sql(&context, e))?;
            count.unwrap_or(0)
        } else {
            let fresh = statement.fresh;
            conn.exec_drop(&statement.sql, statement.params).await.map_err(|e| match &e {
                mysql_async::Error::Server(s) if fresh && s.code == 1062 => {
                    ApplyError::Raced(format!("{context}: {}", s.message))
                }
                _ => ApplyError::from_sql(&context, e),
            })?;
            conn.affected_rows()
        };
        if let Some(want) = statement.finds
            && found < want
        {
            let context: String = context.split(" WHERE").next().unwrap_or_default().to_string();
            return Err(ApplyError::Permanent(format!(
                "{context}: found {found} of the {want} row(s) the origin changed (the row is not here: \
                 the regions differ)"
            )));
        }
    }
    Ok(())
}

/// A change that yields no statement (no image to write, or only generated columns).
fn nothing_to_write(change: &RowChange) -> ApplyError {
    ApplyError::Permanent(format!(
        "{:?} of {}: the change has nothing to write (no image, or only generated columns)",
        change.op,
        change.qualified_table()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: u16) -> ApplyError {
        let e = mysql_async::ServerError { code, message: "m".into(), state: "HY000".into() };
        ApplyError::from_sql("x", mysql_async::Error::Server(e))
    }

    #[test]
    fn refused_privileges_wait_read_only_reconnects_deadlocks_retry_and_bad_data_is_permanent() {
        for code in [1044, 1045, 1142, 1143, 1227, 1370, 1698, 1820, 1862, 3118, 3955, 4151] {
            assert!(matches!(server_error(code), ApplyError::Refused(_)), "{code}");
        }
        for code in [1290, 1836] {
            assert!(matches!(server_error(code), ApplyError::Lost(_)), "{code}");
        }
        for code in [1205, 1213] {
            assert!(matches!(server_error(code), ApplyError::Transient(_)), "{code}");
        }
        for code in [1264, 1366, 1062] {
            assert!(matches!(server_error(code), ApplyError::Permanent(_)), "{code}");
        }
        for code in [1054, 1146] {
            assert!(matches!(server_error(code), ApplyError::SchemaBehind(_)), "{code}");
        }
    }

    #[test]
    fn replays_are_recognised_per_domain_or_uuid() {
        let g = |s: &str| s.parse::<Gtid>().unwrap();
        let covers = |a: &Gtid, b: &Gtid| a.covers(b);
        assert!(covers(&g("1-101-9"), &g("1-101-9")));
        assert!(covers(&g("1-101-9"), &g("1-102-4")), "a promoted replica continues the domain's sequence");
        assert!(!covers(&g("1-101-9"), &g("1-101-10")));
        assert!(!covers(&g("1-101-9"), &g("2-201-1")), "another domain");
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        assert!(covers(&g(&format!("{u}:5")), &g(&format!("{u}:5"))));
        assert!(!covers(&g(&format!("{u}:5")), &g("4e11fa47-71ca-11e1-9e33-c80aa9429562:1")));
    }
}
