//! The database side of an in-region failover: what each server has (GTID positions, role),
//! which one is the primary now, fencing, promotion, re-pointing replicas and letting a
//! returned old primary rejoin. Each step reads its result back from the server.
//!
//! MariaDB and MySQL 8 differ in the statements and the columns they answer with: [`Dialect`]
//! holds each flavor's (MariaDB: `@@gtid_current_pos`, `SHOW SLAVE STATUS`, `read_only`,
//! `MASTER_GTID_WAIT`, `CHANGE MASTER … MASTER_USE_GTID`; MySQL 8.0.23 and later:
//! `@@gtid_executed`, `SHOW REPLICA STATUS`, `super_read_only`, `WAIT_FOR_EXECUTED_GTID_SET`,
//! `CHANGE REPLICATION SOURCE … SOURCE_AUTO_POSITION`). Only the MariaDB side has run against
//! live servers; the MySQL side is unit-tested against recorded replies.
//!
//! Fencing is `read_only=ON` plus killing every client session: clients without the
//! `READ_ONLY ADMIN` privilege (MariaDB's counterpart of `super_read_only`) can no longer
//! write, and nobody keeps a session open on the old primary. The sandbox's `app` account
//! is such a client; ferry's own account is not, which is why ferry never writes to a server
//! it did not find writable (see `locate`).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row};

use crate::config::{DbServer, Flavor, MysqlConfig};
use crate::model::{GtidSet, Position};

/// A server error that refuses ferry's account or one of its privileges (wrong password, no
/// privilege on a schema, table, column or routine, a missing dynamic privilege): it says
/// nothing about the server's health or the data, only that the configuration is wrong.
/// Also a locked account (MariaDB 4151, MySQL 3118, 3955) and an expired password (1820, 1862).
pub fn access_refused(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if matches!(
        s.code,
        1044 | 1045 | 1142 | 1143 | 1227 | 1370 | 1698 | 1820 | 1862 | 3118 | 3955 | 4151
    ))
}

/// A failure to reach or use a server, saying whether the server refused ferry's account
/// (then nothing is wrong with the server: the configuration or a grant is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    pub message: String,
    pub refused: bool,
}

impl DbError {
    fn other(message: String) -> Self {
        Self { message, refused: false }
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DbError {}

impl From<DbError> for String {
    fn from(e: DbError) -> String {
        e.message
    }
}

/// Who ferry connects as: its own account, and the one replicas replicate with; and what the
/// region's servers run (all of one region run the same flavor).
#[derive(Clone)]
pub struct Accounts {
    pub user: String,
    pub password: String,
    pub repl_user: String,
    pub repl_password: String,
    pub flavor: Flavor,
}

impl Accounts {
    pub fn from_config(mysql: &MysqlConfig, failover: Option<&crate::config::FailoverConfig>) -> Self {
        let repl = failover.and_then(|f| f.replication.as_ref());
        Self {
            flavor: mysql.flavor,
            user: mysql.user.clone(),
            password: mysql.password.expose().to_string(),
            repl_user: repl.map_or_else(|| mysql.user.clone(), |r| r.user.clone()),
            repl_password: repl
                .map_or_else(|| mysql.password.expose().to_string(), |r| r.password.expose().into()),
        }
    }
}

/// The statements and reply columns of one server flavor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect(pub Flavor);

/// A replica's status, from `SHOW SLAVE STATUS` (MariaDB) or `SHOW REPLICA STATUS` (MySQL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// What its relay log holds: `Gtid_IO_Pos` / `Retrieved_Gtid_Set`.
    pub received: String,
    pub io_running: String,
    pub sql_running: String,
    pub source_host: String,
    pub source_port: Option<u16>,
    pub last_io_error: String,
}

impl ReplicaStatus {
    /// Both replication threads running.
    pub fn running(&self) -> bool {
        self.io_running == "Yes" && self.sql_running == "Yes"
    }
}

impl Dialect {
    /// The executed position and whether the server refuses client writes.
    pub fn state_query(self) -> &'static str {
        match self.0 {
            Flavor::Mariadb => "SELECT @@gtid_current_pos, @@read_only",
            // `super_read_only=ON` forces `read_only=ON`.
            Flavor::Mysql => "SELECT @@GLOBAL.gtid_executed, @@read_only",
        }
    }

    pub fn replica_status_query(self) -> &'static str {
        match self.0 {
            Flavor::Mariadb => "SHOW SLAVE STATUS",
            Flavor::Mysql => "SHOW REPLICA STATUS",
        }
    }

    /// Read a status row through `column` (the value of a column by name, as text).
    pub fn replica_status(self, column: impl Fn(&str) -> Option<String>) -> ReplicaStatus {
        let names = match self.0 {
            Flavor::Mariadb => {
                ["Gtid_IO_Pos", "Slave_IO_Running", "Slave_SQL_Running", "Master_Host", "Master_Port"]
            }
            Flavor::Mysql => [
                "Retrieved_Gtid_Set",
                "Replica_IO_Running",
                "Replica_SQL_Running",
                "Source_Host",
                "Source_Port",
            ],
        };
        let get = |name: &str| column(name).unwrap_or_default();
        ReplicaStatus {
            received: get(names[0]),
            io_running: get(names[1]),
            sql_running: get(names[2]),
            source_host: get(names[3]),
            source_port: get(names[4]).trim().parse().ok(),
            last_io_error: get("Last_IO_Error"),
        }
    }

    /// A position as the server writes it. MySQL's GTID sets may be spread over lines.
    pub fn position(self, text: &str, what: &str) -> Result<Position, String> {
        let text: String = text.split_whitespace().collect();
        text.parse().map_err(|e| format!("{what} `{text}`: {e}"))
    }

    /// Refuse writes from every client without the bypass privilege.
    pub fn fence(self) -> &'static str {
        match self.0 {
            Flavor::Mariadb => "SET GLOBAL read_only = ON",
            // `read_only` alone lets accounts with CONNECTION_ADMIN or SUPER write.
            Flavor::Mysql => "SET GLOBAL super_read_only = ON",
        }
    }

    /// Stop replicating, forget the source, accept writes.
    pub fn promote(self) -> &'static [&'static str] {
        match self.0 {
            Flavor::Mariadb => &[
                "STOP SLAVE",
                "RESET SLAVE ALL",
                "SET GLOBAL rpl_semi_sync_slave_enabled = OFF",
                "SET GLOBAL read_only = OFF",
            ],
            Flavor::Mysql => &[
                "STOP REPLICA",
                "RESET REPLICA ALL",
                "SET GLOBAL super_read_only = OFF",
                "SET GLOBAL read_only = OFF",
            ],
        }
    }

    pub fn stop_replica(self) -> &'static str {
        match self.0 {
            Flavor::Mariadb => "STOP SLAVE",
            Flavor::Mysql => "STOP REPLICA",
        }
    }

    pub fn start_replica(self) -> &'static str {
        match self.0 {
            Flavor::Mariadb => "START SLAVE",
            Flavor::Mysql => "START REPLICA",
        }
    }

    /// Before replicating, a former primary continues from what it has itself. (MySQL's
    /// auto-positioning sends the replica's own `gtid_executed`: nothing to do.)
    pub fn continue_from_own(self) -> Option<&'static str> {
        match self.0 {
            Flavor::Mariadb => Some("SET GLOBAL gtid_slave_pos = @@gtid_current_pos"),
            Flavor::Mysql => None,
        }
    }

    /// Point at `host:port` by GTID. CHANGE MASTER takes no placeholders: the values are
    /// quoted here ([`quote`], under [`SESSION_SQL_MODE`]). MySQL: `GET_SOURCE_PUBLIC_KEY`, for
    /// `caching_sha2_password` accounts over a connection without TLS.
    pub fn change_source(self, host: &str, port: u16, user: &str, password: &str) -> String {
        let (host, user, password) = (quote(host), quote(user), quote(password));
        match self.0 {
            Flavor::Mariadb => format!(
                "CHANGE MASTER TO MASTER_HOST = {host}, MASTER_PORT = {port}, MASTER_USER = {user}, \
                 MASTER_PASSWORD = {password}, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1"
            ),
            Flavor::Mysql => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST = {host}, SOURCE_PORT = {port}, SOURCE_USER = {user}, \
                 SOURCE_PASSWORD = {password}, SOURCE_AUTO_POSITION = 1, SOURCE_CONNECT_RETRY = 1, \
                 GET_SOURCE_PUBLIC_KEY = 1"
            ),
        }
    }

    /// Wait (position, seconds) until the relay log is applied up to a position: 0 when done.
    pub fn wait_applied(self) -> &'static str {
        match self.0 {
            Flavor::Mariadb => "SELECT MASTER_GTID_WAIT(?, ?)",
            Flavor::Mysql => "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)",
        }
    }
}

/// What `theirs` holds that `ours` does not, as GTID text (MariaDB: per domain, a later
/// sequence; MySQL: intervals of the set).
pub fn ahead_of(theirs: &Position, ours: &Position) -> Vec<String> {
    let mut out: Vec<String> = theirs.iter().filter(|g| !ours.includes(*g)).map(|g| g.to_string()).collect();
    for (uuid, intervals) in theirs.gtid_set().iter() {
        for (start, end) in intervals {
            if !ours.gtid_set().covers(uuid, *start, *end) {
                out.push(if start == end {
                    format!("{uuid}:{start}")
                } else {
                    format!("{uuid}:{start}-{end}")
                });
            }
        }
    }
    out
}

pub fn describe(server: &DbServer) -> String {
    format!("{}:{} (server_id {})", server.host, server.port, server.server_id)
}

/// The session mode of every connection made here, whatever the server's global mode: the
/// literals [`quote`] builds are only literals under it (backslashes are plain characters,
/// quotes are doubled).
pub const SESSION_SQL_MODE: &str = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES'";

pub fn opts(server: &DbServer, accounts: &Accounts) -> Opts {
    OptsBuilder::default()
        .ip_or_hostname(server.host.clone())
        .tcp_port(server.port)
        .user(Some(accounts.user.clone()))
        .pass(Some(accounts.password.clone()))
        .prefer_socket(false)
        .setup(vec![SESSION_SQL_MODE])
        .into()
}

pub async fn connect(server: &DbServer, accounts: &Accounts, within: Duration) -> Result<Conn, DbError> {
    match tokio::time::timeout(within, Conn::new(opts(server, accounts))).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            Err(DbError { refused: access_refused(&e), message: format!("{}: {e}", describe(server)) })
        }
        Err(_) => Err(DbError::other(format!("{}: no answer within {within:?}", describe(server)))),
    }
}

/// What one server has and is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub server: DbServer,
    /// `@@gtid_current_pos`: what it has applied or written.
    pub executed: Position,
    /// Executed plus what its relay log holds (`Gtid_IO_Pos`).
    pub received: Position,
    /// It has a replication configuration (`SHOW SLAVE STATUS` answers a row).
    pub replica: bool,
    pub read_only: bool,
    /// MySQL: `@@server_uuid`, the source of the GTIDs it writes itself (None on MariaDB,
    /// whose GTIDs carry the server id).
    pub server_uuid: Option<String>,
}

impl Observed {
    /// A server clients may write to: not read-only, not replicating.
    pub fn writable(&self) -> bool {
        !self.read_only && !self.replica
    }
}

/// Per domain the further of the two (MariaDB); the union of the sets (MySQL).
fn union(a: &Position, b: &Position) -> Position {
    let mut out = a.clone();
    for g in b.iter() {
        if !out.includes(g) {
            out.advance(g);
        }
    }
    if !b.gtid_set().is_empty() {
        let mut set: GtidSet = a.gtid_set().clone();
        for (uuid, intervals) in b.gtid_set().iter() {
            for (start, end) in intervals {
                set.add_range(uuid, *start, *end);
            }
        }
        let mut merged = Position::from_gtid_set(set);
        for g in out.iter() {
            merged.advance(g);
        }
        out = merged;
    }
    out
}

fn text(row: &Row, column: &str) -> Option<String> {
    row.get_opt::<Option<String>, _>(column).and_then(Result::ok).flatten()
}

/// The replica status of the server `conn` is on, if it replicates.
async fn replica_status(
    conn: &mut Conn,
    dialect: Dialect,
) -> Result<Option<ReplicaStatus>, mysql_async::Error> {
    let row: Option<Row> = conn.query_first(dialect.replica_status_query()).await?;
    Ok(row.map(|row| dialect.replica_status(|c| text(&row, c))))
}

/// What a server has and is, from its answers to [`Dialect::state_query`] and the replica
/// status query.
pub fn observed(
    dialect: Dialect,
    server: &DbServer,
    (current, read_only): (String, i64),
    status: Option<&ReplicaStatus>,
) -> Result<Observed, String> {
    let executed = dialect.position(&current, "executed GTIDs")?;
    let received = match status {
        Some(s) => union(&executed, &dialect.position(&s.received, "received GTIDs")?),
        None => executed.clone(),
    };
    Ok(Observed {
        server: server.clone(),
        executed,
        received,
        replica: status.is_some(),
        read_only: read_only != 0,
        server_uuid: None,
    })
}

pub async fn observe_conn(conn: &mut Conn, server: &DbServer, dialect: Dialect) -> Result<Observed, String> {
    let sql = |e: mysql_async::Error| format!("{}: {e}", describe(server));
    let state: (String, i64) =
        conn.query_first(dialect.state_query()).await.map_err(sql)?.unwrap_or_default();
    let status = replica_status(conn, dialect).await.map_err(sql)?;
    let mut observed = observed(dialect, server, state, status.as_ref())?;
    if dialect.0 == Flavor::Mysql {
        let uuid: Option<String> = conn.query_first("SELECT @@server_uuid").await.map_err(sql)?;
        observed.server_uuid = uuid.map(|u| u.to_ascii_lowercase());
    }
    Ok(observed)
}

pub async fn observe(server: &DbServer, accounts: &Accounts, within: Duration) -> Result<Observed, DbError> {
    let mut conn = connect(server, accounts, within).await?;
    let observed = tokio::time::timeout(within, observe_conn(&mut conn, server, Dialect(accounts.flavor)))
        .await
        .map_err(|_| DbError::other(format!("{}: no answer within {within:?}", describe(server))))?;
    conn.disconnect().await.ok();
    observed.map_err(DbError::other)
}

/// Every configured server of the region, the configured primary first.
pub fn servers(mysql: &MysqlConfig) -> Vec<DbServer> {
    std::iter::once(mysql.primary.clone()).chain(mysql.replicas.iter().cloned()).collect()
}

/// The region's primary now: the one configured server that is writable. Fewer or more than
/// one is an error (never a guess): after a failover the configured primary may be a fenced
/// replica, and while a returned old primary is not fenced yet two servers may look writable.
pub async fn locate(mysql: &MysqlConfig, accounts: &Accounts, within: Duration) -> Result<DbServer, DbError> {
    let all = servers(mysql);
    let observed = futures_util::future::join_all(all.iter().map(|s| observe(s, accounts, within))).await;
    let mut writable = Vec::new();
    let mut errors = Vec::new();
    for o in observed {
        match o {
            Ok(o) if o.writable() => writable.push(o.server),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    match writable.len() {
        1 => Ok(writable.remove(0)),
        0 => Err(DbError {
            // Some server refused ferry's account: that, not the servers, is what to fix.
            refused: errors.iter().any(|e| e.refused),
            message: format!(
                "no writable primary among the region's servers ({})",
                errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ")
            ),
        }),
        _ => Err(DbError::other(format!(
            "several servers are writable: {}; not choosing",
            writable.iter().map(describe).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Connection options for the region's current primary (see `locate`). No fallback to the
/// configured primary: ferry's account may write to a fenced server (it bypasses `read_only`),
/// so a writer that cannot tell the primary waits and tries again.
pub async fn primary_opts(mysql: &MysqlConfig) -> Result<Opts, DbError> {
    let accounts = Accounts::from_config(mysql, None);
    let server = locate(mysql, &accounts, Duration::from_secs(2)).await?;
    if server != mysql.primary {
        tracing::info!(primary = %describe(&server), "the region's primary is not the configured one");
    }
    Ok(opts(&server, &accounts))
}

/// Make `server` refuse client writes and drop every client session. Returns how many sessions
/// were killed.
pub async fn fence(server: &DbServer, accounts: &Accounts, within: Duration) -> Result<usize, String> {
    let mut conn = connect(server, accounts, within).await?;
    let work = async {
        let sql = |e: mysql_async::Error| format!("fencing {}: {e}", describe(server));
        conn.query_drop(Dialect(accounts.flavor).fence()).await.map_err(sql)?;
        let ids: Vec<u64> = conn
            .query(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
                 AND COMMAND NOT IN ('Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker') \
                 AND USER NOT IN ('system user', 'event_scheduler')",
            )
            .await
            .map_err(sql)?;
        for id in &ids {
            // A session that ended meanwhile is fine.
            let _ = conn.query_drop(format!("KILL CONNECTION {id}")).await;
        }
        let read_only: Option<i64> = conn.query_first("SELECT @@read_only").await.map_err(sql)?;
        if read_only != Some(1) {
            return Err(format!("{} is not read-only after fencing", describe(server)));
        }
        Ok(ids.len())
    };
    let result = tokio::time::timeout(within, work)
        .await
        .unwrap_or_else(|_| Err(format!("fencing {}: no answer within {within:?}", describe(server))));
    conn.disconnect().await.ok();
    result
}

/// Wait until `server` has applied `position` (its relay log), at most `within`.
pub async fn wait_applied(
    server: &DbServer,
    accounts: &Accounts,
    position: &Position,
    within: Duration,
) -> Result<(), String> {
    let mut conn = connect(server, accounts, Duration::from_secs(5)).await?;
    let waited: Option<i64> = conn
        .exec_first(Dialect(accounts.flavor).wait_applied(), (position.to_string(), within.as_secs_f64()))
        .await
        .map_err(|e| format!("{}: {e}", describe(server)))?;
    conn.disconnect().await.ok();
    match waited {
        Some(0) => Ok(()),
        _ => Err(format!(
            "{} did not apply its relay log up to {position} within {within:?}",
            describe(server)
        )),
    }
}

/// Make `server` a primary: stop replicating, forget its primary, accept writes. Returns what
/// it has then.
pub async fn promote(server: &DbServer, accounts: &Accounts) -> Result<Observed, String> {
    let mut conn = connect(server, accounts, Duration::from_secs(5)).await?;
    let dialect = Dialect(accounts.flavor);
    let sql = |e: mysql_async::Error| format!("promoting {}: {e}", describe(server));
    for statement in dialect.promote() {
        conn.query_drop(*statement).await.map_err(sql)?;
    }
    let now = observe_conn(&mut conn, server, dialect).await?;
    conn.disconnect().await.ok();
    if !now.writable() {
        return Err(format!("{} is not writable after promotion", describe(server)));
    }
    Ok(now)
}

/// Point `replica` at `primary` by GTID and start replicating; checked a moment later (a
/// server whose history the primary lacks is refused by the primary, error 1236).
pub async fn replicate(
    replica: &DbServer,
    primary: &DbServer,
    accounts: &Accounts,
    from_current: bool,
) -> Result<(), String> {
    let mut conn = connect(replica, accounts, Duration::from_secs(5)).await?;
    let dialect = Dialect(accounts.flavor);
    let sql = |e: mysql_async::Error| format!("re-pointing {}: {e}", describe(replica));
    conn.query_drop(dialect.stop_replica()).await.map_err(sql)?;
    if from_current && let Some(own) = dialect.continue_from_own() {
        // It was a primary: it continues from what it has itself.
        conn.query_drop(own).await.map_err(sql)?;
    }
    // The statement's error can quote it, password included: only the code is passed on.
    conn.query_drop(dialect.change_source(
        &primary.host,
        primary.port,
        &accounts.repl_user,
        &accounts.repl_password,
    ))
    .await
    .map_err(|e| format!("re-pointing {}: CHANGE MASTER failed ({})", describe(replica), redacted(&e)))?;
    conn.query_drop(dialect.start_replica()).await.map_err(sql)?;
    // The IO thread connects (or is refused) within a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = replica_status(&mut conn, dialect).await.map_err(sql)?;
        let status =
            status.ok_or_else(|| format!("{} has no replication after CHANGE MASTER", describe(replica)))?;
        if !status.last_io_error.is_empty() {
            let _ = conn.query_drop(dialect.stop_replica()).await;
            return Err(format!(
                "{} cannot replicate from {}: {}",
                describe(replica),
                describe(primary),
                status.last_io_error
            ));
        }
        if status.running() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{} replication not running after 5 s (IO: {})",
                describe(replica),
                status.io_running
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn.disconnect().await.ok();
    Ok(())
}

/// A SQL string literal under [`SESSION_SQL_MODE`] (`NO_BACKSLASH_ESCAPES`): quotes doubled,
/// nothing else special.
pub(crate) fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// An error of a statement that held a secret, without the server's message (which can quote
/// the statement).
fn redacted(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => {
            format!("server error {}; message withheld: it can quote the statement", s.code)
        }
        other => other.to_string(),
    }
}

/// `replica` replicates from `primary` (both threads running, no error).
pub async fn replicates_from(
    replica: &DbServer,
    primary: &DbServer,
    accounts: &Accounts,
    within: Duration,
) -> Result<bool, String> {
    let mut conn = connect(replica, accounts, within).await?;
    let status = replica_status(&mut conn, Dialect(accounts.flavor))
        .await
        .map_err(|e| format!("{}: {e}", describe(replica)))?;
    conn.disconnect().await.ok();
    Ok(status
        .is_some_and(|s| s.source_host == primary.host && s.source_port == Some(primary.port) && s.running()))
}

/// What became of a returned old primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returned {
    /// Fenced and replicating from the new primary.
    Rejoined,
    /// Fenced and left alone: it has transactions the new primary does not.
    Fenced { reason: String },
}

/// An old primary answers again: fence it, then let it rejoin as a replica of `primary` if its
/// history is part of the new primary's.
pub async fn rejoin(
    old: &DbServer,
    primary: &DbServer,
    accounts: &Accounts,
    within: Duration,
) -> Result<Returned, String> {
    fence(old, accounts, within).await?;
    let theirs = observe(old, accounts, within).await?;
    let ours = observe(primary, accounts, within).await?;
    let ahead = ahead_of(&theirs.executed, &ours.executed);
    if !ahead.is_empty() {
        return Ok(Returned::Fenced {
            reason: format!(
                "it has transactions the new primary lacks ({}); an operator must reconcile them",
                ahead.join(", ")
            ),
        });
    }
    match replicate(old, primary, accounts, true).await {
        Ok(()) => Ok(Returned::Rejoined),
        Err(e) => Ok(Returned::Fenced { reason: e }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn server() -> DbServer {
        DbServer { host: "10.0.0.2".into(), port: 3306, server_id: 2 }
    }

    /// A status row as a map of column → text, the way the server sent it.
    fn row(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const UUID_A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const UUID_B: &str = "8e1e6e46-9c54-11e9-a3b8-0242ac110002";

    #[test]
    fn mysql_replies_are_read_from_their_own_columns() {
        let mysql = Dialect(Flavor::Mysql);
        assert_eq!(mysql.state_query(), "SELECT @@GLOBAL.gtid_executed, @@read_only");
        assert_eq!(mysql.replica_status_query(), "SHOW REPLICA STATUS");
        // SHOW REPLICA STATUS as MySQL 8.0 answers it (the reference manual's example, with
        // GTIDs): MariaDB's column names are absent.
        let reply = row(&[
            ("Replica_IO_State", "Waiting for source to send event"),
            ("Source_Host", "127.0.0.1"),
            ("Source_User", "root"),
            ("Source_Port", "13000"),
            ("Replica_IO_Running", "Yes"),
            ("Replica_SQL_Running", "Yes"),
            ("Last_IO_Error", ""),
            ("Retrieved_Gtid_Set", &format!("{UUID_A}:1-80")),
            ("Executed_Gtid_Set", &format!("{UUID_A}:1-77,\n{UUID_B}:1-3")),
        ]);
        let status = mysql.replica_status(|c| reply.get(c).cloned());
        assert_eq!(status.source_host, "127.0.0.1");
        assert_eq!(status.source_port, Some(13000));
        assert!(status.running());
        assert_eq!(Dialect(Flavor::Mariadb).replica_status(|c| reply.get(c).cloned()).source_port, None);

        // @@GLOBAL.gtid_executed spans lines when it holds several UUIDs.
        let executed = format!("{UUID_A}:1-77,\n{UUID_B}:1-3");
        let o = observed(mysql, &server(), (executed, 1), Some(&status)).unwrap();
        assert!(o.replica && o.read_only && !o.writable());
        assert!(o.executed.includes_gtid(&format!("{UUID_B}:3").parse().unwrap()));
        assert!(!o.executed.includes_gtid(&format!("{UUID_A}:78").parse().unwrap()));
        assert!(
            o.received.includes_gtid(&format!("{UUID_A}:80").parse().unwrap()),
            "received = executed ∪ retrieved"
        );
        assert!(o.received.includes_gtid(&format!("{UUID_B}:2").parse().unwrap()));

        let primary = observed(mysql, &server(), (format!("{UUID_A}:1-90"), 0), None).unwrap();
        assert!(primary.writable());
    }

    #[test]
    fn mariadb_replies_are_read_from_its_columns() {
        let maria = Dialect(Flavor::Mariadb);
        assert_eq!(maria.state_query(), "SELECT @@gtid_current_pos, @@read_only");
        let reply = row(&[
            ("Master_Host", "10.0.0.1"),
            ("Master_Port", "3306"),
            ("Slave_IO_Running", "Yes"),
            ("Slave_SQL_Running", "No"),
            ("Last_IO_Error", ""),
            ("Gtid_IO_Pos", "1-101-9,2-201-4"),
        ]);
        let status = maria.replica_status(|c| reply.get(c).cloned());
        assert_eq!((status.source_host.as_str(), status.source_port), ("10.0.0.1", Some(3306)));
        assert!(!status.running(), "the SQL thread stopped");
        let o = observed(maria, &server(), ("1-101-7".into(), 1), Some(&status)).unwrap();
        assert_eq!(o.executed.to_string(), "1-101-7");
        assert_eq!(o.received.to_string(), "1-101-9,2-201-4");
    }

    #[test]
    fn each_flavor_fences_promotes_and_re_points_with_its_own_statements() {
        let (maria, mysql) = (Dialect(Flavor::Mariadb), Dialect(Flavor::Mysql));
        assert_eq!(maria.fence(), "SET GLOBAL read_only = ON");
        assert_eq!(mysql.fence(), "SET GLOBAL super_read_only = ON");
        assert_eq!(
            mysql.promote(),
            [
                "STOP REPLICA",
                "RESET REPLICA ALL",
                "SET GLOBAL super_read_only = OFF",
                "SET GLOBAL read_only = OFF"
            ]
        );
        assert!(maria.promote().contains(&"RESET SLAVE ALL"));
        assert_eq!(mysql.continue_from_own(), None, "auto-positioning sends the replica's own gtid_executed");
        assert_eq!(maria.continue_from_own(), Some("SET GLOBAL gtid_slave_pos = @@gtid_current_pos"));
        assert_eq!(
            mysql.change_source("db1", 3306, "repl", "it's"),
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST = 'db1', SOURCE_PORT = 3306, SOURCE_USER = 'repl', \
             SOURCE_PASSWORD = 'it''s', SOURCE_AUTO_POSITION = 1, SOURCE_CONNECT_RETRY = 1, GET_SOURCE_PUBLIC_KEY = 1",
            "caching_sha2_password (MySQL 8's default) over a plain connection needs the source's key"
        );
        assert!(maria.change_source("db1", 3306, "repl", "x").contains("MASTER_USE_GTID = slave_pos"));
        assert_eq!(mysql.wait_applied(), "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)");
        assert_eq!((mysql.stop_replica(), mysql.start_replica()), ("STOP REPLICA", "START REPLICA"));
    }

    #[test]
    fn what_an_old_primary_has_that_the_new_one_lacks_is_found_in_either_flavor() {
        let p = |t: &str| -> Position { t.parse().unwrap() };
        assert_eq!(ahead_of(&p("1-101-9,2-201-4"), &p("1-101-7,2-201-4")), ["1-101-9"]);
        assert!(ahead_of(&p("1-101-7"), &p("1-101-9")).is_empty());
        let theirs = p(&format!("{UUID_A}:1-80:85,{UUID_B}:1-3"));
        let ours = p(&format!("{UUID_A}:1-82,{UUID_B}:1-3"));
        assert_eq!(ahead_of(&theirs, &ours), [format!("{UUID_A}:85")]);
        assert!(ahead_of(&ours, &p(&format!("{UUID_A}:1-82,{UUID_B}:1-5"))).is_empty());
    }

    #[test]
    fn quoting_doubles_quotes_and_leaves_backslashes_to_the_session_mode() {
        assert_eq!(super::quote("pa'ss\\word"), "'pa''ss\\word'");
        assert_eq!(super::quote("plain"), "'plain'");
        assert!(super::SESSION_SQL_MODE.contains("NO_BACKSLASH_ESCAPES"));
    }
}
