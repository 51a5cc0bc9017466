//! The nisshi Kafka-protocol broker (`components.md`): sqlite storage, topics created
//! explicitly (auto-created ones get 4 partitions; ferry's topics need 1 for total order).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use super::process::{ServerDir, ServerProcess, start_server};
use super::{SandboxError, run_command};

#[derive(Debug)]
pub struct Broker {
    process: ServerProcess,
    dir: ServerDir,
    addr: SocketAddr,
}

impl Broker {
    pub async fn start_temp() -> Result<Self, SandboxError> {
        Self::start(ServerDir::temp("kafka")?, IpAddr::from([127, 0, 0, 1]), None).await
    }

    pub async fn start(
        dir: ServerDir,
        ip: IpAddr,
        preferred_port: Option<u16>,
    ) -> Result<Self, SandboxError> {
        let dir_path = dir.path().to_path_buf();
        let command = |port: u16| {
            let url = format!("tcp://{ip}:{port}");
            let mut cmd = Command::new("nisshi");
            // nisshi resolves a sqlite:// path against its working directory (an absolute path
            // loses its leading slash), so it runs in its own folder.
            cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "sqlite://broker.db"])
                .current_dir(&dir_path);
            Ok(cmd)
        };
        let probe = |addr| async move { tokio::net::TcpStream::connect(addr).await.is_ok() };
        let (process, addr) =
            start_server("kafka", ip, preferred_port, &dir_path.join("nisshi.log"), command, probe).await?;
        Ok(Self { process, dir, addr })
    }

    /// `host:port` for a Kafka client's `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<(), SandboxError> {
        let mut cmd = tokio::process::Command::new("nisshi");
        cmd.args(["topic", "create", name, "--broker", &format!("tcp://{}", self.addr)])
            .args(["--partitions", &partitions.to_string()]);
        run_command(&format!("creating topic {name}"), &mut cmd).await.map(|_| ())
    }

    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    pub fn detach(self) -> (super::ProcessRecord, ServerDir) {
        (self.process.detach(), self.dir)
    }
}
