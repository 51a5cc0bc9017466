//! Real servers of a local multi-region topology, on loopback addresses, each in its own folder
//! with its log there. `ferry sandbox up|down|status` drives a whole topology; tests start just
//! the servers they need from the same code (there is no second way of starting servers).
//!
//! Servers: MariaDB ([`MariaDb`], primary or GTID replica), Redis ([`RedisServer`]), the nisshi
//! Kafka-protocol broker ([`Broker`]), Knot DNS ([`DnsServer`]), HAProxy ([`Haproxy`]) and the
//! tiny PSI app node ([`app_node`]). A server handle kills its process when dropped; a topology
//! started by `up` detaches them and records their pids in `DIR/sandbox.json`
//! (`docs/sandbox.md`), which `down` uses to stop exactly those processes.
//!
//! Not here: anything ferry does *with* these servers (capture, apply, failover); this module
//! only starts, wires and stops them.

pub mod app_node;
mod dns;
pub mod guide;
mod haproxy;
mod kafka;
mod mariadb;
mod process;
mod redis_server;
mod state;
mod topology;

use std::path::PathBuf;
use std::time::Duration;

pub use dns::{DnsServer, TsigKey};
pub use haproxy::Haproxy;
pub use kafka::Broker;
pub use mariadb::{MariaDb, MariaDbOptions, region_yaml};
pub use process::{ProcessRecord, ServerDir, ServerProcess, pick_port};
pub use redis_server::RedisServer;
pub use state::{DbState, STATE_FILE, SandboxState};
pub use topology::{
    ADMIN_USER, APP_USER, DEFAULT_REGIONS, DownReport, FERRY_USER, ProcessStatus, UpOptions, UpOutcome, ZONE,
    create_ferry_account, down, install_schemas, status, up,
};

/// How long a server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("missing programs: {}; run scripts/setup to install them", .0.join(", "))]
    MissingPrograms(Vec<String>),
    #[error("{name} exited during start-up ({status}); log {}:\n{tail}", log.display())]
    Exited { name: String, status: String, log: PathBuf, tail: String },
    #[error("{name} was not ready after {after:?}; log {}:\n{tail}", log.display())]
    NotReady { name: String, after: Duration, log: PathBuf, tail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sql {
        context: String,
        #[source]
        source: mysql_async::Error,
    },
    #[error("{0}")]
    Setup(String),
}

impl SandboxError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SandboxError::Io { context: context.into(), source }
    }

    pub fn sql(context: impl Into<String>, source: mysql_async::Error) -> Self {
        SandboxError::Sql { context: context.into(), source }
    }

    /// The server could not bind its port (another process took it first).
    pub fn is_port_in_use(&self) -> bool {
        match self {
            SandboxError::Exited { tail, .. } | SandboxError::NotReady { tail, .. } => {
                let t = tail.to_ascii_lowercase();
                t.contains("address already in use") || t.contains("cannot bind") || t.contains("can't bind")
            }
            _ => false,
        }
    }
}

/// Run a command to completion, failing with its output when it does not succeed.
pub(crate) async fn run_command(
    what: &str,
    cmd: &mut tokio::process::Command,
) -> Result<String, SandboxError> {
    let out = cmd.stdin(std::process::Stdio::null()).output().await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            SandboxError::MissingPrograms(vec![cmd.as_std().get_program().to_string_lossy().into_owned()])
        }
        _ => SandboxError::io(what.to_string(), e),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(SandboxError::Setup(format!(
            "{what} failed ({}): {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Random bytes from the kernel, for passwords and keys.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], SandboxError> {
    use std::io::Read;
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| SandboxError::io("reading /dev/urandom", e))?;
    Ok(buf)
}

/// A random password of URL- and SQL-safe characters.
pub(crate) fn random_password() -> Result<String, SandboxError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    Ok(random_bytes::<20>()?.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect())
}

/// How long one HTTP probe may take.
const HTTP_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A minimal HTTP/1.0 request (no keep-alive, no chunking): `(status, body)`. Enough to probe
/// ferry's and the app nodes' endpoints without an HTTP client dependency.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(HTTP_PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP probe timed out"))??;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

/// `GET path` on `addr`; see [`http_request`].
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path).await
}
