//! Redis failover in a region: promote the replica (`REPLICAOF NO ONE`), fence the old primary
//! when it answers (`REPLICAOF <new>`: it stops taking writes and follows the new primary), and
//! verify both with `ROLE`. The replica's replication offset is reported, so what it had not
//! received is known.

use std::net::SocketAddr;
use std::time::Duration;

/// What a promotion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promoted {
    /// The promoted replica's replication offset when it was promoted.
    pub offset: i64,
    /// The old primary answered and now replicates from the new one.
    pub old_fenced: bool,
}

pub async fn connect(
    addr: SocketAddr,
    password: Option<&str>,
) -> Result<redis::aio::MultiplexedConnection, String> {
    use crate::watch::net::{redis_connection, redis_url};
    let client =
        redis::Client::open(redis_url(&addr.to_string(), password)).map_err(|e| format!("{addr}: {e}"))?;
    redis_connection(&client, Duration::from_secs(2)).await.map_err(|e| format!("{addr}: {e}"))
}

/// The `ROLE` reply: master `[role, offset, replicas]`, replica `[role, host, port, state,
/// offset]`.
async fn role_reply(conn: &mut redis::aio::MultiplexedConnection) -> Result<Vec<redis::Value>, String> {
    redis::cmd("ROLE").query_async(conn).await.map_err(|e| format!("ROLE: {e}"))
}

/// A string element of a reply (empty when it is not one).
fn text(v: Option<&redis::Value>) -> String {
    match v {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

/// `ROLE`'s first element (`master`, `slave`) and, for a replica, its offset.
pub async fn role(conn: &mut redis::aio::MultiplexedConnection) -> Result<(String, i64), String> {
    let answer = role_reply(conn).await?;
    let role = text(answer.first());
    let offset = match (role.as_str(), answer.get(1), answer.get(4)) {
        ("master", Some(redis::Value::Int(o)), _) | ("slave", _, Some(redis::Value::Int(o))) => *o,
        _ => -1,
    };
    if role == "slave" && offset < 0 {
        // ROLE says -1 while the link is down; INFO keeps what the replica had received.
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(conn)
            .await
            .map_err(|e| format!("INFO: {e}"))?;
        let received = info
            .lines()
            .find_map(|l| l.strip_prefix("slave_repl_offset:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1);
        return Ok((role, received));
    }
    Ok((role, offset))
}

/// Promote `replica`; fence `old` if it answers. Verified with `ROLE` on both.
pub async fn promote(
    replica: SocketAddr,
    old: SocketAddr,
    password: Option<&str>,
) -> Result<Promoted, String> {
    let mut r = connect(replica, password).await?;
    let (was, offset) = role(&mut r).await?;
    if was != "slave" && was != "master" {
        return Err(format!("{replica} answers ROLE {was}"));
    }
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut r)
        .await
        .map_err(|e| format!("REPLICAOF NO ONE: {e}"))?;
    let (now, _) = role(&mut r).await?;
    if now != "master" {
        return Err(format!("{replica} is {now} after REPLICAOF NO ONE"));
    }
    let old_fenced = follow(old, replica, password).await.is_ok();
    Ok(Promoted { offset, old_fenced })
}

/// Make `server` a replica of `primary` (`REPLICAOF`), verified with `ROLE`. This is also how
/// an old primary that answers again is fenced: it stops taking writes.
pub async fn follow(server: SocketAddr, primary: SocketAddr, password: Option<&str>) -> Result<(), String> {
    let mut conn = connect(server, password).await?;
    let _: () = redis::cmd("REPLICAOF")
        .arg(primary.ip().to_string())
        .arg(primary.port())
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("{server}: REPLICAOF {primary}: {e}"))?;
    match role(&mut conn).await? {
        (r, _) if r == "slave" => Ok(()),
        (r, _) => Err(format!("{server} is {r} after REPLICAOF")),
    }
}

/// Each server's `ROLE` and offset (an error for those that do not answer).
pub async fn roles(servers: &[SocketAddr], password: Option<&str>) -> Vec<Result<(String, i64), String>> {
    futures_util::future::join_all(
        servers.iter().map(|s| async move { role(&mut connect(*s, password).await?).await }),
    )
    .await
}

/// The one server answering `ROLE master`; fewer or more is an error.
pub async fn locate(servers: &[SocketAddr], password: Option<&str>) -> Result<SocketAddr, String> {
    let masters: Vec<SocketAddr> = servers
        .iter()
        .zip(roles(servers, password).await)
        .filter(|(_, r)| r.as_ref().is_ok_and(|(role, _)| role == "master"))
        .map(|(s, _)| *s)
        .collect();
    match masters.as_slice() {
        [one] => Ok(*one),
        [] => Err("no Redis server answers ROLE master".into()),
        many => Err(format!("several Redis servers answer ROLE master: {many:?}")),
    }
}

/// The replica to promote: of those answering as replicas, the one with the highest offset.
pub async fn choose(candidates: &[SocketAddr], password: Option<&str>) -> Result<(SocketAddr, i64), String> {
    candidates
        .iter()
        .zip(roles(candidates, password).await)
        .filter_map(|(s, r)| r.ok().filter(|(role, _)| role == "slave").map(|(_, offset)| (*s, offset)))
        .max_by_key(|&(_, offset)| offset)
        .ok_or_else(|| format!("no Redis replica answers among {candidates:?}"))
}

/// The primary behind `conn` lists `replica` among its connected replicas (`INFO replication`:
/// `slaveN:ip=..,port=..,state=online,...`).
pub async fn lists_replica(
    conn: &mut redis::aio::MultiplexedConnection,
    replica: SocketAddr,
) -> Result<bool, String> {
    let info: String =
        redis::cmd("INFO").arg("replication").query_async(conn).await.map_err(|e| format!("INFO: {e}"))?;
    let (ip, port) = (format!("ip={}", replica.ip()), format!("port={}", replica.port()));
    Ok(info.lines().filter(|l| l.starts_with("slave")).any(|l| {
        let fields: Vec<&str> = l.split([':', ',']).collect();
        fields.contains(&ip.as_str()) && fields.contains(&port.as_str()) && fields.contains(&"state=online")
    }))
}

/// `server` answers `ROLE` as a replica of `primary`.
pub async fn follows(server: SocketAddr, primary: SocketAddr, password: Option<&str>) -> bool {
    let Ok(mut conn) = connect(server, password).await else { return false };
    role_reply(&mut conn).await.is_ok_and(|a| {
        text(a.first()) == "slave"
            && text(a.get(1)) == primary.ip().to_string()
            && matches!(a.get(2), Some(redis::Value::Int(p)) if *p == i64::from(primary.port()))
    })
}
