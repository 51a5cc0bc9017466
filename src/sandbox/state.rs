//! `DIR/sandbox.json`: what `ferry sandbox up` started and where. A public interface
//! (`docs/sandbox.md`): tests and tools read it; `format` changes when a field's meaning does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ProcessRecord, SandboxError, TsigKey};

pub const STATE_FILE: &str = "sandbox.json";
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxState {
    pub format: u32,
    pub dir: PathBuf,
    pub started_at_unix_seconds: u64,
    /// Wall time `up` took, from its start to everything being ready.
    pub startup_seconds: f64,
    pub regions: BTreeMap<String, RegionState>,
    pub kafka: KafkaState,
    pub dns: DnsState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionState {
    pub mysql: MysqlState,
    pub redis: RedisState,
    pub apps: Vec<AppState>,
    pub haproxy: HaproxyState,
    pub ferry: FerryState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MysqlState {
    pub gtid_domain_id: u32,
    pub primary: DbState,
    pub replica: DbState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbState {
    /// `mysql://user:pass@host:port/`
    pub dsn: String,
    pub host: IpAddr,
    pub port: u16,
    pub server_id: u32,
    /// Unix socket; root can log in through it without a password.
    pub socket: PathBuf,
    pub process: ProcessRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedisState {
    pub primary: RedisNode,
    pub replica: RedisNode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedisNode {
    /// `host:port`
    pub address: String,
    pub process: ProcessRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppState {
    pub name: String,
    pub url: String,
    pub process: ProcessRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaproxyState {
    pub frontend_url: String,
    /// Path of the runtime API unix socket.
    pub runtime_api: PathBuf,
    pub backend: String,
    /// `host:port` of the databases' TCP frontend (backend `db`: the region's primary).
    #[serde(default)]
    pub db_frontend: Option<String>,
    pub process: ProcessRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FerryState {
    pub http_url: String,
    pub config: PathBuf,
    pub process: ProcessRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaState {
    pub bootstrap: String,
    pub topics: Vec<String>,
    pub process: ProcessRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsState {
    /// `host:port` of the authoritative server.
    pub server: String,
    pub zone: String,
    pub tsig: TsigKey,
    /// Fully qualified name → address, as served at start.
    pub records: BTreeMap<String, IpAddr>,
    pub process: ProcessRecord,
}

impl SandboxState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// The recorded state, or `None` when `dir` holds no sandbox.
    pub fn load(dir: &Path) -> Result<Option<Self>, SandboxError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SandboxError::io(format!("reading {}", path.display()), e)),
        };
        let state: Self = serde_json::from_str(&text).map_err(|e| {
            SandboxError::Setup(format!("{} is not a sandbox state file: {e}", path.display()))
        })?;
        if state.format != FORMAT {
            return Err(SandboxError::Setup(format!(
                "{} has format {}, this ferry reads format {FORMAT}",
                path.display(),
                state.format
            )));
        }
        Ok(Some(state))
    }

    /// Write atomically (temp file + rename), so a reader never sees half a file.
    pub fn save(&self) -> Result<(), SandboxError> {
        let path = Self::path(&self.dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| SandboxError::Setup(format!("encoding sandbox state: {e}")))?;
        std::fs::write(&tmp, text + "\n")
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))
    }

    /// Every recorded process with a label, in the order `down` stops them: ferry first (it
    /// uses everything else), then the app tier, caches, replicas, primaries, and the shared
    /// DNS and broker last.
    pub fn processes(&self) -> Vec<(String, &ProcessRecord)> {
        let mut out = Vec::new();
        for (name, r) in &self.regions {
            out.push((format!("{name}/ferry"), &r.ferry.process));
        }
        for (name, r) in &self.regions {
            out.push((format!("{name}/haproxy"), &r.haproxy.process));
            for app in &r.apps {
                out.push((format!("{name}/{}", app.name), &app.process));
            }
        }
        for (name, r) in &self.regions {
            out.push((format!("{name}/redis-replica"), &r.redis.replica.process));
            out.push((format!("{name}/redis-primary"), &r.redis.primary.process));
            out.push((format!("{name}/db-replica"), &r.mysql.replica.process));
            out.push((format!("{name}/db-primary"), &r.mysql.primary.process));
        }
        out.push(("dns".into(), &self.dns.process));
        out.push(("kafka".into(), &self.kafka.process));
        out
    }
}
