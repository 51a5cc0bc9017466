//! The MariaDB side of an in-region failover: what each server has (GTID positions, role),
//! which one is the primary now, fencing, promotion, re-pointing replicas and letting a
//! returned old primary rejoin. Each step reads its result back from the server.
//!
//! Fencing is `read_only=ON` plus killing every client session: clients without the
//! `READ_ONLY ADMIN` privilege (MariaDB's counterpart of `super_read_only`) can no longer
//! write, and nobody keeps a session open on the old primary. The sandbox's `app` account
//! is such a client; ferry's own account is not, which is why ferry never writes to a server
//! it did not find writable (see `locate`).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row};

use crate::config::{DbServer, MysqlConfig};
use crate::model::Position;

/// A server error that refuses ferry's account or one of its privileges (wrong password, no
/// privilege on a schema, table, column or routine, a missing dynamic privilege): it says
/// nothing about the server's health or the data, only that the configuration is wrong.
pub fn access_refused(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if matches!(s.code, 1044 | 1045 | 1142 | 1143 | 1227 | 1370 | 1698))
}

/// Who ferry connects as: its own account, and the one replicas replicate with.
#[derive(Clone)]
pub struct Accounts {
    pub user: String,
    pub password: String,
    pub repl_user: String,
    pub repl_password: String,
}

impl Accounts {
    pub fn from_config(mysql: &MysqlConfig, failover: Option<&crate::config::FailoverConfig>) -> Self {
        let repl = failover.and_then(|f| f.replication.as_ref());
        Self {
            user: mysql.user.clone(),
            password: mysql.password.expose().to_string(),
            repl_user: repl.map_or_else(|| mysql.user.clone(), |r| r.user.clone()),
            repl_password: repl
                .map_or_else(|| mysql.password.expose().to_string(), |r| r.password.expose().into()),
        }
    }
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

pub async fn connect(server: &DbServer, accounts: &Accounts, within: Duration) -> Result<Conn, String> {
    match tokio::time::timeout(within, Conn::new(opts(server, accounts))).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(format!("{}: {e}", describe(server))),
        Err(_) => Err(format!("{}: no answer within {within:?}", describe(server))),
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
}

impl Observed {
    /// A server clients may write to: not read-only, not replicating.
    pub fn writable(&self) -> bool {
        !self.read_only && !self.replica
    }
}

/// Per domain, the further of the two.
fn union(a: &Position, b: &Position) -> Position {
    let mut out = a.clone();
    for g in b.iter() {
        if !out.includes(g) {
            out.advance(g);
        }
    }
    out
}

fn text(row: &Row, column: &str) -> String {
    row.get_opt::<Option<String>, _>(column).and_then(Result::ok).flatten().unwrap_or_default()
}

fn position(text: &str, what: &str) -> Result<Position, String> {
    text.parse().map_err(|e| format!("{what} `{text}`: {e}"))
}

pub async fn observe_conn(conn: &mut Conn, server: &DbServer) -> Result<Observed, String> {
    let sql = |e: mysql_async::Error| format!("{}: {e}", describe(server));
    let (current, read_only): (String, i64) =
        conn.query_first("SELECT @@gtid_current_pos, @@read_only").await.map_err(sql)?.unwrap_or_default();
    let executed = position(&current, "gtid_current_pos")?;
    let status: Option<Row> = conn.query_first("SHOW SLAVE STATUS").await.map_err(sql)?;
    let received = match &status {
        Some(row) => union(&executed, &position(&text(row, "Gtid_IO_Pos"), "Gtid_IO_Pos")?),
        None => executed.clone(),
    };
    Ok(Observed {
        server: server.clone(),
        executed,
        received,
        replica: status.is_some(),
        read_only: read_only != 0,
    })
}

pub async fn observe(server: &DbServer, accounts: &Accounts, within: Duration) -> Result<Observed, String> {
    let mut conn = connect(server, accounts, within).await?;
    let observed = tokio::time::timeout(within, observe_conn(&mut conn, server))
        .await
        .map_err(|_| format!("{}: no answer within {within:?}", describe(server)))?;
    conn.disconnect().await.ok();
    observed
}

/// Every configured server of the region, the configured primary first.
pub fn servers(mysql: &MysqlConfig) -> Vec<DbServer> {
    std::iter::once(mysql.primary.clone()).chain(mysql.replicas.iter().cloned()).collect()
}

/// The region's primary now: the one configured server that is writable. Fewer or more than
/// one is an error (never a guess): after a failover the configured primary may be a fenced
/// replica, and while a returned old primary is not fenced yet two servers may look writable.
pub async fn locate(mysql: &MysqlConfig, accounts: &Accounts, within: Duration) -> Result<DbServer, String> {
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
        0 => Err(format!("no writable primary among the region's servers ({})", errors.join("; "))),
        _ => Err(format!(
            "several servers are writable: {}; not choosing",
            writable.iter().map(describe).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Connection options for the region's current primary (see `locate`). No fallback to the
/// configured primary: ferry's account may write to a fenced server (it bypasses `read_only`),
/// so a writer that cannot tell the primary waits and tries again.
pub async fn primary_opts(mysql: &MysqlConfig) -> Result<Opts, String> {
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
        conn.query_drop("SET GLOBAL read_only = ON").await.map_err(sql)?;
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
        .exec_first("SELECT MASTER_GTID_WAIT(?, ?)", (position.to_string(), within.as_secs_f64()))
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
    let sql = |e: mysql_async::Error| format!("promoting {}: {e}", describe(server));
    for statement in [
        "STOP SLAVE",
        "RESET SLAVE ALL",
        "SET GLOBAL rpl_semi_sync_slave_enabled = OFF",
        "SET GLOBAL read_only = OFF",
    ] {
        conn.query_drop(statement).await.map_err(sql)?;
    }
    let now = observe_conn(&mut conn, server).await?;
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
    let sql = |e: mysql_async::Error| format!("re-pointing {}: {e}", describe(replica));
    conn.query_drop("STOP SLAVE").await.map_err(sql)?;
    if from_current {
        // It was a primary: it continues from what it has itself.
        conn.query_drop("SET GLOBAL gtid_slave_pos = @@gtid_current_pos").await.map_err(sql)?;
    }
    // CHANGE MASTER takes no placeholders: the values are quoted here. Its error can quote the
    // statement, password included: only the code is passed on.
    conn.query_drop(format!(
        "CHANGE MASTER TO MASTER_HOST = {}, MASTER_PORT = {}, MASTER_USER = {}, MASTER_PASSWORD = {}, \
         MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1",
        quote(&primary.host),
        primary.port,
        quote(&accounts.repl_user),
        quote(&accounts.repl_password),
    ))
    .await
    .map_err(|e| format!("re-pointing {}: CHANGE MASTER failed ({})", describe(replica), redacted(&e)))?;
    conn.query_drop("START SLAVE").await.map_err(sql)?;
    // The IO thread connects (or is refused) within a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status: Option<Row> = conn.query_first("SHOW SLAVE STATUS").await.map_err(sql)?;
        let row =
            status.ok_or_else(|| format!("{} has no replication after CHANGE MASTER", describe(replica)))?;
        let (io, error) = (text(&row, "Slave_IO_Running"), text(&row, "Last_IO_Error"));
        if !error.is_empty() {
            let _ = conn.query_drop("STOP SLAVE").await;
            return Err(format!(
                "{} cannot replicate from {}: {error}",
                describe(replica),
                describe(primary)
            ));
        }
        if io == "Yes" && text(&row, "Slave_SQL_Running") == "Yes" {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{} replication not running after 5 s (IO: {io})", describe(replica)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn.disconnect().await.ok();
    Ok(())
}

/// A SQL string literal under [`SESSION_SQL_MODE`] (`NO_BACKSLASH_ESCAPES`): quotes doubled,
/// nothing else special.
fn quote(text: &str) -> String {
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
    let status: Option<Row> =
        conn.query_first("SHOW SLAVE STATUS").await.map_err(|e| format!("{}: {e}", describe(replica)))?;
    conn.disconnect().await.ok();
    Ok(status.is_some_and(|row| {
        text(&row, "Master_Host") == primary.host
            && row.get_opt::<u16, _>("Master_Port").and_then(Result::ok) == Some(primary.port)
            && text(&row, "Slave_IO_Running") == "Yes"
            && text(&row, "Slave_SQL_Running") == "Yes"
    }))
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
    let ahead: Vec<String> =
        theirs.executed.iter().filter(|g| !ours.executed.includes(*g)).map(|g| g.to_string()).collect();
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
    #[test]
    fn quoting_doubles_quotes_and_leaves_backslashes_to_the_session_mode() {
        assert_eq!(super::quote("pa'ss\\word"), "'pa''ss\\word'");
        assert_eq!(super::quote("plain"), "'plain'");
        assert!(super::SESSION_SQL_MODE.contains("NO_BACKSLASH_ESCAPES"));
    }
}
