//! Probes: one check of one target, bounded by its timeout. `Ok` is healthy; `Err` says why not.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::config::{ProbeConfig, RedisRole, Secret};

/// Credentials probes borrow from the region's configuration.
#[derive(Clone, Default)]
pub struct Credentials {
    pub mysql: Option<(String, Secret)>,
    pub redis_password: Option<Secret>,
}

/// Run one probe within `timeout`.
pub async fn probe(config: &ProbeConfig, credentials: &Credentials, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, run(config, credentials)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn run(config: &ProbeConfig, credentials: &Credentials) -> Result<(), String> {
    match config {
        ProbeConfig::Http { address, path, expect_status, body_contains } => {
            let (status, body) = super::net::http(address, "GET", path, None).await?;
            if status != *expect_status {
                return Err(format!("GET {path} answered {status}, expected {expect_status}"));
            }
            match body_contains {
                Some(want) if !body.contains(want.as_str()) => {
                    Err(format!("GET {path} answered {status} without `{want}` in the body"))
                }
                _ => Ok(()),
            }
        }
        ProbeConfig::Tcp { address } => tokio::net::TcpStream::connect(address.as_str())
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}")),
        ProbeConfig::Mysql { address, heartbeat, max_replica_lag } => {
            let (host, port) = split(address)?;
            let mut opts =
                mysql_async::OptsBuilder::default().ip_or_hostname(host).tcp_port(port).prefer_socket(false);
            if let Some((user, password)) = &credentials.mysql {
                opts = opts.user(Some(user.clone())).pass(Some(password.expose().to_string()));
            }
            let mut conn = mysql_async::Conn::new(opts).await.map_err(|e| format!("connect: {e}"))?;
            let result = mysql_checks(&mut conn, address, *heartbeat, *max_replica_lag).await;
            let _ = conn.disconnect().await;
            result
        }
        ProbeConfig::Redis { address, role } => {
            let url = super::net::redis_url(address, credentials.redis_password.as_ref().map(Secret::expose));
            let client = redis::Client::open(url).map_err(|e| format!("redis address: {e}"))?;
            let mut conn =
                client.get_multiplexed_async_connection().await.map_err(|e| format!("connect: {e}"))?;
            let pong: String =
                redis::cmd("PING").query_async(&mut conn).await.map_err(|e| format!("PING: {e}"))?;
            if pong != "PONG" {
                return Err(format!("PING answered {pong}"));
            }
            let Some(want) = role else { return Ok(()) };
            let answer: redis::Value =
                redis::cmd("ROLE").query_async(&mut conn).await.map_err(|e| format!("ROLE: {e}"))?;
            let is = match answer {
                redis::Value::Array(items) => match items.first() {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(redis::Value::SimpleString(s)) => s.clone(),
                    other => format!("{other:?}"),
                },
                other => format!("{other:?}"),
            };
            let wanted = match want {
                RedisRole::Master => "master",
                RedisRole::Replica => "slave",
            };
            if is == wanted { Ok(()) } else { Err(format!("ROLE is {is}, expected {wanted}")) }
        }
    }
}

/// `SELECT 1`, then the optional heartbeat write and replica lag check.
async fn mysql_checks(
    conn: &mut mysql_async::Conn,
    address: &str,
    heartbeat: bool,
    max_replica_lag: Option<Duration>,
) -> Result<(), String> {
    let one: Option<u8> = conn.query_first("SELECT 1").await.map_err(|e| format!("SELECT 1: {e}"))?;
    if one != Some(1) {
        return Err("SELECT 1 returned nothing".into());
    }
    if heartbeat {
        conn.exec_drop(
            "INSERT INTO ferry.watch_probe (target, probed_at) VALUES (?, NOW(6)) \
             ON DUPLICATE KEY UPDATE probed_at = VALUES(probed_at)",
            (address,),
        )
        .await
        .map_err(|e| format!("heartbeat write: {e}"))?;
    }
    if let Some(max) = max_replica_lag {
        let rows: Vec<mysql_async::Row> =
            conn.query("SHOW SLAVE STATUS").await.map_err(|e| format!("SHOW SLAVE STATUS: {e}"))?;
        let row = rows.first().ok_or("not a replica (SHOW SLAVE STATUS is empty)")?;
        let lag: Option<u64> =
            row.get_opt::<Option<u64>, _>("Seconds_Behind_Master").and_then(Result::ok).flatten();
        match lag {
            None => return Err("replication is not running (Seconds_Behind_Master is NULL)".into()),
            Some(s) if Duration::from_secs(s) > max => {
                return Err(format!("replica lag {s} s exceeds {max:?}"));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn split(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address.rsplit_once(':').ok_or_else(|| format!("`{address}` is not host:port"))?;
    let port = port.parse().map_err(|_| format!("`{address}` is not host:port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}
