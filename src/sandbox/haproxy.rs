//! HAProxy in front of the PSI app nodes of one region, with its runtime API on a unix socket
//! (`set server BACKEND/SERVER state maint|ready`, `show servers state`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::SandboxError;
use super::process::{ServerDir, ServerProcess, start_server};

/// The backend that holds the app nodes.
pub const BACKEND: &str = "app";
/// The TCP backend in front of the region's MariaDB servers (the primary in service, the
/// replicas in maintenance until a failover makes one of them the primary).
pub const DB_BACKEND: &str = "db";

/// A TCP frontend and backend for the databases: the port to prefer and the servers, the
/// first one in service.
pub struct DbBackend {
    pub preferred_port: u16,
    pub servers: Vec<(String, SocketAddr)>,
}

#[derive(Debug)]
pub struct Haproxy {
    process: ServerProcess,
    dir: ServerDir,
    frontend: SocketAddr,
    db_frontend: Option<SocketAddr>,
}

impl Haproxy {
    /// Start with `members` (server name → address) in backend [`BACKEND`], health-checked on
    /// `GET /health/ready` every second, and with `db`, a TCP frontend for the databases.
    pub async fn start(
        dir: ServerDir,
        ip: IpAddr,
        preferred_port: Option<u16>,
        members: &[(String, SocketAddr)],
        db: Option<DbBackend>,
    ) -> Result<Self, SandboxError> {
        let dir_path = dir.path().to_path_buf();
        let (config, socket) = (dir_path.join("haproxy.cfg"), dir_path.join("admin.sock"));
        let db = match db {
            Some(d) => Some((SocketAddr::new(ip, super::pick_port(ip, Some(d.preferred_port))?), d.servers)),
            None => None,
        };
        let db_frontend = db.as_ref().map(|(at, _)| *at);
        let command = |port: u16| {
            std::fs::write(&config, render_config(&socket, SocketAddr::new(ip, port), members, db.as_ref()))
                .map_err(|e| SandboxError::io("writing haproxy.cfg", e))?;
            let mut cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(&config);
            Ok(cmd)
        };
        let probe = |_| async { runtime_command(&socket, "show info").await.is_ok() };
        let (process, frontend) =
            start_server("haproxy", ip, preferred_port, &dir_path.join("haproxy.log"), command, probe)
                .await?;
        Ok(Self { process, dir, frontend, db_frontend })
    }

    pub fn frontend(&self) -> SocketAddr {
        self.frontend
    }

    /// The databases' TCP frontend, when started with one.
    pub fn db_frontend(&self) -> Option<SocketAddr> {
        self.db_frontend
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Run one runtime API command and return its answer.
    pub async fn command(&self, command: &str) -> Result<String, SandboxError> {
        runtime_command(&self.admin_socket(), command).await
    }

    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    pub fn detach(self) -> (super::ProcessRecord, ServerDir) {
        (self.process.detach(), self.dir)
    }
}

fn render_config(
    socket: &Path,
    frontend: SocketAddr,
    members: &[(String, SocketAddr)],
    db: Option<&(SocketAddr, Vec<(String, SocketAddr)>)>,
) -> String {
    let mut cfg = format!(
        "global\n    stats socket {} mode 600 level admin\n    stats timeout 30s\n\n\
         defaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend psi\n    bind {frontend}\n    default_backend {BACKEND}\n\n\
         backend {BACKEND}\n    option httpchk GET /health/ready\n    http-check expect status 200\n",
        socket.display()
    );
    for (name, addr) in members {
        cfg.push_str(&format!("    server {name} {addr} check inter 1s fall 3 rise 2\n"));
    }
    if let Some((listen, servers)) = db {
        cfg.push_str(&format!(
            "\nfrontend psi-db\n    mode tcp\n    bind {listen}\n    timeout client 1h\n    default_backend {DB_BACKEND}\n\n\
             backend {DB_BACKEND}\n    mode tcp\n    timeout server 1h\n"
        ));
        for (i, (name, addr)) in servers.iter().enumerate() {
            let state = if i == 0 { "" } else { " disabled" };
            cfg.push_str(&format!("    server {name} {addr}{state}\n"));
        }
    }
    cfg
}

/// One command over the runtime API socket (see `watch::lb::command`).
pub async fn runtime_command(socket: &Path, command: &str) -> Result<String, SandboxError> {
    crate::watch::lb::command(&socket.display().to_string(), command).await.map_err(SandboxError::Setup)
}
