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

async fn connect(
    addr: SocketAddr,
    password: Option<&str>,
) -> Result<redis::aio::MultiplexedConnection, String> {
    use crate::watch::net::{redis_connection, redis_url};
    let client =
        redis::Client::open(redis_url(&addr.to_string(), password)).map_err(|e| format!("{addr}: {e}"))?;
    redis_connection(&client, Duration::from_secs(2)).await.map_err(|e| format!("{addr}: {e}"))
}

/// `ROLE`'s first element (`master`, `slave`) and, for a replica, its offset.
async fn role(conn: &mut redis::aio::MultiplexedConnection) -> Result<(String, i64), String> {
    let answer: Vec<redis::Value> =
        redis::cmd("ROLE").query_async(conn).await.map_err(|e| format!("ROLE: {e}"))?;
    let text = |v: Option<&redis::Value>| match v {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    };
    let role = text(answer.first());
    // master: [role, offset, replicas]; slave: [role, host, port, state, offset]
    let offset = match (role.as_str(), answer.get(1), answer.get(4)) {
        ("master", Some(redis::Value::Int(o)), _) | ("slave", _, Some(redis::Value::Int(o))) => *o,
        _ => -1,
    };
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
    let old_fenced = match connect(old, password).await {
        Err(_) => false,
        Ok(mut o) => {
            let fenced: Result<(), _> = redis::cmd("REPLICAOF")
                .arg(replica.ip().to_string())
                .arg(replica.port())
                .query_async(&mut o)
                .await;
            fenced.is_ok() && role(&mut o).await.is_ok_and(|(r, _)| r == "slave")
        }
    };
    Ok(Promoted { offset, old_fenced })
}
