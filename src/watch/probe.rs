//! Probes: one check of one target, bounded by its timeout. `Ok` is healthy; `Err` says why not.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{ProbeConfig, Secret};

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
            let (status, body) = http_get(address, path).await?;
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
        ProbeConfig::Mysql { address } => {
            let (host, port) = split(address)?;
            let mut opts =
                mysql_async::OptsBuilder::default().ip_or_hostname(host).tcp_port(port).prefer_socket(false);
            if let Some((user, password)) = &credentials.mysql {
                opts = opts.user(Some(user.clone())).pass(Some(password.expose().to_string()));
            }
            let mut conn = mysql_async::Conn::new(opts).await.map_err(|e| format!("connect: {e}"))?;
            let one: Option<u8> = conn.query_first("SELECT 1").await.map_err(|e| format!("SELECT 1: {e}"))?;
            let _ = conn.disconnect().await;
            one.filter(|v| *v == 1).map(drop).ok_or_else(|| "SELECT 1 returned nothing".into())
        }
        ProbeConfig::Redis { address } => {
            let url = match &credentials.redis_password {
                Some(p) => format!("redis://:{}@{address}/", p.expose()),
                None => format!("redis://{address}/"),
            };
            let client = redis::Client::open(url).map_err(|e| format!("redis address: {e}"))?;
            let mut conn =
                client.get_multiplexed_async_connection().await.map_err(|e| format!("connect: {e}"))?;
            let pong: String =
                redis::cmd("PING").query_async(&mut conn).await.map_err(|e| format!("PING: {e}"))?;
            if pong == "PONG" { Ok(()) } else { Err(format!("PING answered {pong}")) }
        }
    }
}

fn split(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address.rsplit_once(':').ok_or_else(|| format!("`{address}` is not host:port"))?;
    let port = port.parse().map_err(|_| format!("`{address}` is not host:port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// `GET path` over HTTP/1.1 with `Connection: close`; the status and the body (read to the end
/// or 64 KiB).
async fn http_get(address: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: ferry-watch\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut limited = (&mut stream).take(64 * 1024);
    limited.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "not an HTTP response".to_string())?;
    Ok((status, body.to_string()))
}
