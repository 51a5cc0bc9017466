//! Knot DNS serving one zone on a loopback port, updatable by RFC 2136 UPDATE signed with one
//! TSIG key (hmac-sha256). Records use a short TTL so a switch is seen quickly.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::process::{ServerDir, ServerProcess, start_server};
use super::{SandboxError, random_bytes, run_command};

/// TTL of every record in the sandbox zone, in seconds.
pub const RECORD_TTL: u32 = 5;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: String,
    /// Base64.
    pub secret: String,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TsigKey({}, {}, [redacted])", self.name, self.algorithm)
    }
}

impl TsigKey {
    pub fn generate(name: &str) -> Result<Self, SandboxError> {
        Ok(Self {
            name: name.into(),
            algorithm: "hmac-sha256".into(),
            secret: crate::model::base64::encode(&random_bytes::<32>()?),
        })
    }

    /// `algorithm:name:secret`, the form `knsupdate -y` and `kdig -y` take.
    pub fn knot_arg(&self) -> String {
        format!("{}:{}:{}", self.algorithm, self.name, self.secret)
    }
}

#[derive(Debug)]
pub struct DnsServer {
    process: ServerProcess,
    dir: ServerDir,
    addr: SocketAddr,
    zone: String,
    key: TsigKey,
}

impl DnsServer {
    pub async fn start_temp(zone: &str, records: &[(String, IpAddr)]) -> Result<Self, SandboxError> {
        let key = TsigKey::generate("ferry-update")?;
        Self::start(ServerDir::temp("dns")?, IpAddr::from([127, 0, 0, 1]), None, zone, records, key).await
    }

    /// Serve `zone` with `records` (relative name → IPv4/IPv6 address), accepting UPDATEs
    /// signed with `key`.
    pub async fn start(
        dir: ServerDir,
        ip: IpAddr,
        preferred_port: Option<u16>,
        zone: &str,
        records: &[(String, IpAddr)],
        key: TsigKey,
    ) -> Result<Self, SandboxError> {
        let dir_path = dir.path().to_path_buf();
        for sub in ["run", "db", "zones"] {
            std::fs::create_dir_all(dir_path.join(sub))
                .map_err(|e| SandboxError::io("creating knot folders", e))?;
        }
        std::fs::write(dir_path.join("zones").join(format!("{zone}.zone")), render_zone(zone, records))
            .map_err(|e| SandboxError::io("writing the zone file", e))?;
        let conf = dir_path.join("knot.conf");
        let command = |port: u16| {
            std::fs::write(&conf, render_config(&dir_path, SocketAddr::new(ip, port), zone, &key))
                .map_err(|e| SandboxError::io("writing knot.conf", e))?;
            let mut cmd = Command::new("knotd");
            cmd.arg("-c").arg(&conf);
            Ok(cmd)
        };
        let probe = |addr| soa_answers(addr, zone);
        let (process, addr) =
            start_server("dns", ip, preferred_port, &dir_path.join("knotd.log"), command, probe).await?;
        Ok(Self { process, dir, addr, zone: zone.to_string(), key })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }

    pub fn key(&self) -> &TsigKey {
        &self.key
    }

    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    pub fn detach(self) -> (super::ProcessRecord, ServerDir) {
        (self.process.detach(), self.dir)
    }
}

fn render_config(dir: &std::path::Path, listen: SocketAddr, zone: &str, key: &TsigKey) -> String {
    format!(
        "server:\n    rundir: \"{run}\"\n    listen: {ip}@{port}\n\n\
         log:\n  - target: stdout\n    any: info\n\n\
         database:\n    storage: \"{db}\"\n\n\
         key:\n  - id: {kname}\n    algorithm: {alg}\n    secret: {secret}\n\n\
         acl:\n  - id: ferry-update\n    key: {kname}\n    action: update\n\n\
         template:\n  - id: default\n    storage: \"{zones}\"\n    file: \"%s.zone\"\n    zonefile-sync: -1\n    journal-content: changes\n\n\
         zone:\n  - domain: {zone}\n    acl: ferry-update\n",
        run = dir.join("run").display(),
        ip = listen.ip(),
        port = listen.port(),
        db = dir.join("db").display(),
        kname = key.name,
        alg = key.algorithm,
        secret = key.secret,
        zones = dir.join("zones").display(),
    )
}

fn render_zone(zone: &str, records: &[(String, IpAddr)]) -> String {
    let mut z = format!(
        "$ORIGIN {zone}.\n$TTL {RECORD_TTL}\n\
         @ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 {RECORD_TTL}\n\
         @ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
    );
    for (name, ip) in records {
        let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
        z.push_str(&format!("{name} IN {rtype} {ip}\n"));
    }
    z
}

async fn soa_answers(addr: SocketAddr, zone: &str) -> bool {
    let mut cmd = tokio::process::Command::new("kdig");
    cmd.arg(format!("@{}", addr.ip())).args([
        "-p",
        &addr.port().to_string(),
        "+short",
        "+time=1",
        "+retry=0",
        zone,
        "SOA",
    ]);
    matches!(run_command("kdig", &mut cmd).await, Ok(out) if !out.trim().is_empty())
}
