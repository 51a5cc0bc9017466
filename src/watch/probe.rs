//! Probes: one check of one target, bounded by its timeout. `Ok` is healthy; `Err` says why
//! not, and whether the answer says anything about the target's health at all: a server that
//! refuses ferry's credentials or privileges is answering, so that is a configuration problem
//! ([`Failure::Credentials`]), never a reason to count the target down and fail it over.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::config::{ProbeConfig, RedisRole, Secret};

/// Credentials probes borrow from the region's configuration.
#[derive(Clone, Default)]
pub struct Credentials {
    pub mysql: Option<(String, Secret)>,
    pub redis_password: Option<Secret>,
}

/// Why a probe did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The target did not answer as a healthy one should.
    Unhealthy(String),
    /// The target answered, refusing ferry's credentials or privileges (MySQL: see
    /// `failover::mysql::access_refused`; Redis NOAUTH, WRONGPASS, NOPERM): says nothing of its health.
    Credentials(String),
}

impl Failure {
    pub fn reason(&self) -> &str {
        match self {
            Failure::Unhealthy(r) | Failure::Credentials(r) => r,
        }
    }
}

/// A Redis error that refuses ferry's password or one of its ACL permissions.
pub fn redis_access_error(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// Run one probe within `timeout`.
pub async fn probe(
    config: &ProbeConfig,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<(), Failure> {
    match tokio::time::timeout(timeout, run(config, credentials)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Unhealthy(format!("no answer within {timeout:?}"))),
    }
}

fn mysql_failure(context: &str) -> impl Fn(mysql_async::Error) -> Failure + '_ {
    move |e| {
        let reason = format!("{context}: {e}");
        if crate::failover::mysql::access_refused(&e) {
            Failure::Credentials(reason)
        } else {
            Failure::Unhealthy(reason)
        }
    }
}

fn redis_failure(context: &str) -> impl Fn(redis::RedisError) -> Failure + '_ {
    move |e| {
        let reason = format!("{context}: {e}");
        if redis_access_error(&e) { Failure::Credentials(reason) } else { Failure::Unhealthy(reason) }
    }
}

async fn run(config: &ProbeConfig, credentials: &Credentials) -> Result<(), Failure> {
    match config {
        ProbeConfig::Mysql { address, heartbeat, max_replica_lag } => {
            let (host, port) = split(address).map_err(Failure::Unhealthy)?;
            let mut opts =
                mysql_async::OptsBuilder::default().ip_or_hostname(host).tcp_port(port).prefer_socket(false);
            if let Some((user, password)) = &credentials.mysql {
                opts = opts.user(Some(user.clone())).pass(Some(password.expose().to_string()));
            }
            let mut conn = mysql_async::Conn::new(opts).await.map_err(mysql_failure("connect"))?;
            let result = mysql_checks(&mut conn, address, *heartbeat, *max_replica_lag).await;
            let _ = conn.disconnect().await;
            result
        }
        ProbeConfig::Redis { address, role } => {
            let url = super::net::redis_url(address, credentials.redis_password.as_ref().map(Secret::expose));
            let client = redis::Client::open(url).map_err(redis_failure("redis address"))?;
            let mut conn =
                client.get_multiplexed_async_connection().await.map_err(redis_failure("connect"))?;
            let pong: String =
                redis::cmd("PING").query_async(&mut conn).await.map_err(redis_failure("PING"))?;
            if pong != "PONG" {
                return Err(Failure::Unhealthy(format!("PING answered {pong}")));
            }
            let Some(want) = role else { return Ok(()) };
            let answer: redis::Value =
                redis::cmd("ROLE").query_async(&mut conn).await.map_err(redis_failure("ROLE"))?;
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
            if is == wanted {
                Ok(())
            } else {
                Err(Failure::Unhealthy(format!("ROLE is {is}, expected {wanted}")))
            }
        }
        ProbeConfig::Http { address, path, expect_status, body_contains } => {
            http_check(address, path, *expect_status, body_contains.as_deref())
                .await
                .map_err(Failure::Unhealthy)
        }
        ProbeConfig::Tcp { address } => tokio::net::TcpStream::connect(address.as_str())
            .await
            .map(drop)
            .map_err(|e| Failure::Unhealthy(format!("connect: {e}"))),
    }
}

async fn http_check(
    address: &str,
    path: &str,
    expect_status: u16,
    body_contains: Option<&str>,
) -> Result<(), String> {
    let (status, body) = super::net::http(address, "GET", path, None).await?;
    if status != expect_status {
        return Err(format!("GET {path} answered {status}, expected {expect_status}"));
    }
    match body_contains {
        Some(want) if !body.contains(want) => {
            Err(format!("GET {path} answered {status} without `{want}` in the body"))
        }
        _ => Ok(()),
    }
}

/// `SELECT 1`, then the optional heartbeat write and replica lag check.
async fn mysql_checks(
    conn: &mut mysql_async::Conn,
    address: &str,
    heartbeat: bool,
    max_replica_lag: Option<Duration>,
) -> Result<(), Failure> {
    let one: Option<u8> = conn.query_first("SELECT 1").await.map_err(mysql_failure("SELECT 1"))?;
    if one != Some(1) {
        return Err(Failure::Unhealthy("SELECT 1 returned nothing".into()));
    }
    if heartbeat {
        conn.exec_drop(
            "INSERT INTO ferry.watch_probe (target, probed_at) VALUES (?, NOW(6)) \
             ON DUPLICATE KEY UPDATE probed_at = VALUES(probed_at)",
            (address,),
        )
        .await
        .map_err(mysql_failure("heartbeat write"))?;
    }
    if let Some(max) = max_replica_lag {
        let rows: Vec<mysql_async::Row> =
            conn.query("SHOW SLAVE STATUS").await.map_err(mysql_failure("SHOW SLAVE STATUS"))?;
        let row = rows
            .first()
            .ok_or_else(|| Failure::Unhealthy("not a replica (SHOW SLAVE STATUS is empty)".into()))?;
        let lag: Option<u64> =
            row.get_opt::<Option<u64>, _>("Seconds_Behind_Master").and_then(Result::ok).flatten();
        match lag {
            None => {
                return Err(Failure::Unhealthy(
                    "replication is not running (Seconds_Behind_Master is NULL)".into(),
                ));
            }
            Some(s) if Duration::from_secs(s) > max => {
                return Err(Failure::Unhealthy(format!("replica lag {s} s exceeds {max:?}")));
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
