//! The small network clients the control path shares: one HTTP/1.1 exchange (probes,
//! Alertmanager) and Redis connections (probes, the lease, promotion).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most of an answer read (status line, headers and body).
const MAX_ANSWER: u64 = 64 * 1024;

/// One HTTP/1.1 request with `Connection: close` to `address` (`host:port`); the status and the
/// body (read to the end, at most 64 KiB). `body` is `(content type, content)`.
pub async fn http(
    address: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> Result<(u16, String), String> {
    let mut stream =
        tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connect {address}: {e}"))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: ferry\r\nConnection: close\r\n");
    if let Some((kind, content)) = body {
        request.push_str(&format!("Content-Type: {kind}\r\nContent-Length: {}\r\n", content.len()));
    }
    request.push_str("\r\n");
    if let Some((_, content)) = body {
        request.push_str(content);
    }
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    (&mut stream).take(MAX_ANSWER).read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
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

/// `redis://[:password@]address/`.
pub fn redis_url(address: &str, password: Option<&str>) -> String {
    match password {
        Some(p) => format!("redis://:{p}@{address}/"),
        None => format!("redis://{address}/"),
    }
}

/// A connection that gives up connecting after 1 s and waiting for an answer after
/// `response_timeout` (the crate's own default, 500 ms, is too short for some commands).
pub async fn redis_connection(
    client: &redis::Client,
    response_timeout: Duration,
) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout));
    client.get_multiplexed_async_connection_with_config(&config).await
}
