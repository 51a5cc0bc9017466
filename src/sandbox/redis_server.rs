//! A Redis server (primary, or replica of another) with persistence off.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use super::SandboxError;
use super::process::{ServerDir, ServerProcess, start_server};

#[derive(Debug)]
pub struct RedisServer {
    process: ServerProcess,
    dir: ServerDir,
    name: String,
    addr: SocketAddr,
}

impl RedisServer {
    /// A primary on 127.0.0.1 and a free port, in a temp dir (tests).
    pub async fn start_temp(name: &str) -> Result<Self, SandboxError> {
        Self::start(name, ServerDir::temp(name)?, IpAddr::from([127, 0, 0, 1]), None, None).await
    }

    /// Start in `dir` on `ip` (`preferred_port` if free); a replica of `replica_of` if given.
    /// Ready when it answers PING and, for a replica, its link to the primary is up.
    pub async fn start(
        name: &str,
        dir: ServerDir,
        ip: IpAddr,
        preferred_port: Option<u16>,
        replica_of: Option<SocketAddr>,
    ) -> Result<Self, SandboxError> {
        let dir_path = dir.path().to_path_buf();
        let command = |port: u16| {
            let mut cmd = Command::new("redis-server");
            cmd.args(["--bind", &ip.to_string(), "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""])
                // Diskless sync waits 5 s by default for more replicas to join; none join later here.
                .args(["--repl-diskless-sync-delay", "0"])
                // Replicas connect from 127.0.0.1, not their own address: announce the address a
                // primary and ferry know them by (FAILOVER TO names the replica that way).
                .args(["--replica-announce-ip", &ip.to_string()])
                .args(["--protected-mode", "no", "--dir"])
                .arg(&dir_path);
            if let Some(primary) = replica_of {
                cmd.args(["--replicaof", &primary.ip().to_string(), &primary.port().to_string()]);
            }
            Ok(cmd)
        };
        let probe = |addr| async move {
            match replica_of {
                None => ping(addr).await,
                Some(_) => link_up(addr).await,
            }
        };
        let (process, addr) =
            start_server(name, ip, preferred_port, &dir_path.join("redis.log"), command, probe).await?;
        Ok(Self { process, dir, name: name.to_string(), addr })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    pub fn detach(self) -> (super::ProcessRecord, ServerDir) {
        (self.process.detach(), self.dir)
    }
}

async fn connection(addr: SocketAddr) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/")).ok()?;
    client.get_multiplexed_async_connection().await.ok()
}

async fn ping(addr: SocketAddr) -> bool {
    let Some(mut conn) = connection(addr).await else { return false };
    redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok_and(|r| r == "PONG")
}

async fn link_up(addr: SocketAddr) -> bool {
    let Some(mut conn) = connection(addr).await else { return false };
    let info: Result<String, _> = redis::cmd("INFO").arg("replication").query_async(&mut conn).await;
    info.is_ok_and(|i| i.lines().any(|l| l.trim() == "master_link_status:up"))
}
