//! HAProxy in front of the PSI app nodes of one region, with its runtime API on a unix socket
//! (`set server BACKEND/SERVER state maint|ready`, `show servers state`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::SandboxError;
use super::process::{ServerDir, ServerProcess, start_server};

/// The backend that holds the app nodes.
pub const BACKEND: &str = "app";

#[derive(Debug)]
pub struct Haproxy {
    process: ServerProcess,
    dir: ServerDir,
    frontend: SocketAddr,
}

impl Haproxy {
    /// Start with `members` (server name → address) in backend [`BACKEND`], health-checked on
    /// `GET /health/ready` every second.
    pub async fn start(
        dir: ServerDir,
        ip: IpAddr,
        preferred_port: Option<u16>,
        members: &[(String, SocketAddr)],
    ) -> Result<Self, SandboxError> {
        let dir_path = dir.path().to_path_buf();
        let (config, socket) = (dir_path.join("haproxy.cfg"), dir_path.join("admin.sock"));
        let command = |port: u16| {
            std::fs::write(&config, render_config(&socket, SocketAddr::new(ip, port), members))
                .map_err(|e| SandboxError::io("writing haproxy.cfg", e))?;
            let mut cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(&config);
            Ok(cmd)
        };
        let probe = |_| async { runtime_command(&socket, "show info").await.is_ok() };
        let (process, frontend) =
            start_server("haproxy", ip, preferred_port, &dir_path.join("haproxy.log"), command, probe)
                .await?;
        Ok(Self { process, dir, frontend })
    }

    pub fn frontend(&self) -> SocketAddr {
        self.frontend
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

fn render_config(socket: &Path, frontend: SocketAddr, members: &[(String, SocketAddr)]) -> String {
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
    cfg
}

/// One command over the runtime API socket (see `watch::lb::command`).
pub async fn runtime_command(socket: &Path, command: &str) -> Result<String, SandboxError> {
    crate::watch::lb::command(&socket.display().to_string(), command).await.map_err(SandboxError::Setup)
}
