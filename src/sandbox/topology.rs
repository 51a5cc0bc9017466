//! `ferry sandbox up|down|status`: a whole multi-region topology of real servers.
//!
//! Addresses: region *n* (1-based, in the order given) uses `127.77.n.x`, one address per
//! process, so a DNS name points at exactly one server and a client that follows DNS needs
//! nothing else. Shared servers use `127.77.0.x`. Each server gets its well-known port when that
//! is free there, otherwise a free one (all recorded in `sandbox.json`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::task::JoinSet;

use super::haproxy::BACKEND;
use super::mariadb::{MariaDb, MariaDbOptions};
use super::process::{ProcessRecord, ServerDir, ServerProcess, start_server};
use super::state::*;
use super::{Broker, DnsServer, Haproxy, RedisServer, SandboxError, http_get, random_password};
use crate::config::{self, Config, KafkaConfig, MysqlConfig, RedisConfig, RegionConfig, Secret};

pub const ZONE: &str = "psi.test";
/// The sandbox's MariaDB administrator (all privileges; the DSNs in `sandbox.json`).
pub const ADMIN_USER: &str = "admin";
/// ferry's own MariaDB account, created by the install guide's SQL (`docs/install.md`).
pub const FERRY_USER: &str = "ferry";
/// The PSI application's MariaDB account (same password as ferry's): SELECT, INSERT, UPDATE and
/// DELETE on `psi.*`, nothing that bypasses `read_only`.
pub const APP_USER: &str = "app";
pub const DEFAULT_REGIONS: &[&str] = &["east", "west"];
/// The settings every sandbox ferry starts from (see the file's own comments).
const TEMPLATE: &str = include_str!("../../config/sandbox.yaml");
const PSI_SCHEMA: &str = include_str!("psi.sql");
const PROGRAMS: &[&str] =
    &["mariadbd", "mariadb-install-db", "redis-server", "haproxy", "knotd", "kdig", "nisshi"];
const APPS_PER_REGION: u8 = 2;
/// How long `down` waits for a process to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Host octets within a region's `127.77.n.0/24`.
mod host {
    pub const DB_PRIMARY: u8 = 1;
    pub const DB_REPLICA: u8 = 2;
    pub const REDIS_PRIMARY: u8 = 3;
    pub const REDIS_REPLICA: u8 = 4;
    pub const FIRST_APP: u8 = 5;
    pub const HAPROXY: u8 = 7;
    pub const FERRY: u8 = 8;
    pub const BROKER: u8 = 1;
    pub const DNS: u8 = 2;
}

fn ip(region: u8, host: u8) -> IpAddr {
    IpAddr::from([127, 77, region, host])
}

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dir: PathBuf,
    pub regions: Vec<String>,
    /// The ferry binary to run app nodes and per-region daemons with.
    pub ferry_bin: PathBuf,
}

#[derive(Debug)]
pub enum UpOutcome {
    Started(SandboxState),
    AlreadyUp(SandboxState),
}

struct AppNode {
    name: String,
    addr: SocketAddr,
    process: ServerProcess,
}

struct RegionServers {
    name: String,
    octet: u8,
    db_primary: MariaDb,
    db_replica: MariaDb,
    redis_primary: RedisServer,
    redis_replica: RedisServer,
    apps: Vec<AppNode>,
    haproxy: Haproxy,
}

pub async fn up(opts: UpOptions) -> Result<UpOutcome, SandboxError> {
    let started = std::time::Instant::now();
    let dir = std::path::absolute(&opts.dir).map_err(|e| SandboxError::io("resolving the sandbox dir", e))?;
    std::fs::create_dir_all(&dir).map_err(|e| SandboxError::io(format!("creating {}", dir.display()), e))?;
    if let Some(state) = SandboxState::load(&dir)? {
        if state.processes().iter().any(|(_, p)| p.is_running()) {
            return Ok(UpOutcome::AlreadyUp(state));
        }
        std::fs::remove_file(SandboxState::path(&dir))
            .map_err(|e| SandboxError::io("removing a stale state file", e))?;
    }
    check_regions(&opts.regions)?;
    check_programs()?;

    let password = random_password()?;
    let secret_file = write_secret(&dir, "mysql-password", &password)?;
    let records = dns_records(&opts.regions);
    let dns_key = super::dns::TsigKey::generate("ferry-update")?;
    let dns_key_file = write_secret(&dir, "dns-key", &dns_key.secret)?;

    let mut regions_started = JoinSet::new();
    for (i, name) in opts.regions.iter().enumerate() {
        let octet = u8::try_from(i + 1).map_err(|_| SandboxError::Setup("too many regions".into()))?;
        let region_dir = ServerDir::fresh(dir.join(name))?;
        regions_started.spawn(start_region(
            region_dir.path().to_path_buf(),
            name.clone(),
            octet,
            password.clone(),
            opts.ferry_bin.clone(),
        ));
    }
    let (broker, dns) = tokio::join!(
        async { Broker::start(ServerDir::fresh(dir.join("kafka"))?, ip(0, host::BROKER), Some(9092)).await },
        async {
            DnsServer::start(
                ServerDir::fresh(dir.join("dns"))?,
                ip(0, host::DNS),
                Some(5300),
                ZONE,
                &records,
                dns_key,
            )
            .await
        },
    );
    let (broker, dns) = (broker?, dns?);
    let mut regions = BTreeMap::new();
    while let Some(joined) = regions_started.join_next().await {
        let region =
            joined.map_err(|e| SandboxError::Setup(format!("a region's start-up failed: {e}")))??;
        regions.insert(region.name.clone(), region);
    }

    let mut topics = Vec::new();
    for name in &opts.regions {
        for kind in ["changes", "dlq"] {
            let topic = format!("ferry.{name}.{kind}");
            broker.create_topic(&topic, 1).await?;
            topics.push(topic);
        }
    }
    for region in regions.values() {
        install_schemas(&region.db_primary).await?;
        create_ferry_account(&region.db_primary, &["psi"]).await?;
    }

    let template = config::load_str("config/sandbox.yaml", TEMPLATE, std::iter::empty())
        .map_err(|e| SandboxError::Setup(format!("the built-in sandbox template is invalid: {e}")))?;
    let secret = Secret::from_file(&secret_file).map_err(SandboxError::Setup)?;
    let regions_config = regions_config(&regions, &broker, &secret);
    let failover = crate::config::FailoverConfig {
        dns: Some(crate::config::DnsConfig {
            server: dns.addr(),
            zone: ZONE.into(),
            key_name: dns.key().name.clone(),
            key: Secret::from_file(&dns_key_file).map_err(SandboxError::Setup)?,
            ttl: super::dns::RECORD_TTL,
            services: vec!["app".into(), "db".into(), "redis".into()],
        }),
        ..template.failover.clone().unwrap_or_default()
    };
    let mut template = template;
    template.failover = Some(failover);
    let mut ferries = BTreeMap::new();
    for region in regions.values() {
        let ferry = start_ferry(&dir, region, &template, &regions_config, &opts.ferry_bin).await?;
        ferries.insert(region.name.clone(), ferry);
    }

    let mut state = SandboxState {
        format: FORMAT,
        dir: dir.clone(),
        started_at_unix_seconds: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        startup_seconds: 0.0,
        regions: BTreeMap::new(),
        kafka: KafkaState { bootstrap: broker.bootstrap(), topics, process: broker.detach().0 },
        dns: DnsState {
            server: dns.addr().to_string(),
            zone: ZONE.into(),
            tsig: dns.key().clone(),
            records: records.into_iter().map(|(n, ip)| (format!("{n}.{ZONE}"), ip)).collect(),
            process: dns.detach().0,
        },
    };
    for (name, region) in regions {
        let ferry =
            ferries.remove(&name).ok_or_else(|| SandboxError::Setup(format!("no ferry for {name}")))?;
        state.regions.insert(name, region.into_state(ferry));
    }
    state.startup_seconds = started.elapsed().as_secs_f64();
    state.save()?;
    Ok(UpOutcome::Started(state))
}

async fn start_region(
    dir: PathBuf,
    name: String,
    octet: u8,
    password: String,
    ferry_bin: PathBuf,
) -> Result<RegionServers, SandboxError> {
    let region_count_hint = 16; // auto_increment_increment: room for up to 16 regions
    let db_opts = |role: &str, host_octet: u8, server_id: u32| MariaDbOptions {
        name: format!("{name}-db-{role}"),
        ip: ip(octet, host_octet),
        preferred_port: Some(3306),
        server_id,
        gtid_domain_id: u32::from(octet),
        user: ADMIN_USER.into(),
        password: password.clone(),
        extra_args: vec![
            format!("--auto-increment-increment={region_count_hint}"),
            format!("--auto-increment-offset={octet}"),
        ],
    };
    let base_id = u32::from(octet) * 100;
    let databases = async {
        let primary = MariaDb::start_primary(
            db_opts("primary", host::DB_PRIMARY, base_id + 1),
            ServerDir::fresh(dir.join("db-primary"))?,
        )
        .await?;
        let replica = MariaDb::start_replica(
            db_opts("replica", host::DB_REPLICA, base_id + 2),
            ServerDir::fresh(dir.join("db-replica"))?,
            &primary,
            true,
        )
        .await?;
        Ok::<_, SandboxError>((primary, replica))
    };
    let caches = async {
        let primary = RedisServer::start(
            &format!("{name}-redis-primary"),
            ServerDir::fresh(dir.join("redis-primary"))?,
            ip(octet, host::REDIS_PRIMARY),
            Some(6379),
            None,
        )
        .await?;
        let replica = RedisServer::start(
            &format!("{name}-redis-replica"),
            ServerDir::fresh(dir.join("redis-replica"))?,
            ip(octet, host::REDIS_REPLICA),
            Some(6379),
            Some(primary.addr()),
        )
        .await?;
        Ok::<_, SandboxError>((primary, replica))
    };
    let front = async {
        let mut apps = Vec::new();
        for i in 0..APPS_PER_REGION {
            apps.push(start_app(&dir, &name, octet, i, &ferry_bin).await?);
        }
        Ok::<_, SandboxError>(apps)
    };
    let ((db_primary, db_replica), (redis_primary, redis_replica), apps) =
        tokio::try_join!(databases, caches, front)?;
    let members: Vec<(String, SocketAddr)> = apps.iter().map(|a| (a.name.clone(), a.addr)).collect();
    let db = super::haproxy::DbBackend {
        preferred_port: 3306,
        servers: vec![("primary".into(), db_primary.addr()), ("replica".into(), db_replica.addr())],
    };
    let haproxy = Haproxy::start(
        ServerDir::fresh(dir.join("haproxy"))?,
        ip(octet, host::HAPROXY),
        Some(8080),
        &members,
        Some(db),
    )
    .await?;
    Ok(RegionServers { name, octet, db_primary, db_replica, redis_primary, redis_replica, apps, haproxy })
}

async fn start_app(
    dir: &Path,
    region: &str,
    octet: u8,
    index: u8,
    ferry_bin: &Path,
) -> Result<AppNode, SandboxError> {
    let name = format!("app{}", index + 1);
    let app_dir = ServerDir::fresh(dir.join(&name))?;
    let app_ip = ip(octet, host::FIRST_APP + index);
    let full_name = format!("{region}-{name}");
    let command = |port: u16| {
        let mut cmd = Command::new(ferry_bin);
        cmd.args(["sandbox", "app", "--listen", &format!("{app_ip}:{port}")])
            .args(["--name", &full_name, "--region", region]);
        Ok(cmd)
    };
    let probe = |addr| async move { matches!(http_get(addr, "/health/ready").await, Ok((200, _))) };
    let log = app_dir.path().join("app.log");
    let (process, addr) = start_server(&full_name, app_ip, Some(8080), &log, command, probe).await?;
    Ok(AppNode { name, addr, process })
}

/// Create ferry's account on `primary` (it replicates to the replicas) exactly as the install
/// guide's SQL does, with the sandbox's password and the application grants on `schemas`: the
/// sandbox's ferries run with the least privilege the guide gives, not as an administrator.
pub async fn create_ferry_account(primary: &MariaDb, schemas: &[&str]) -> Result<(), SandboxError> {
    let mut conn = primary.root_conn().await?;
    for sql in super::guide::account_sql(&primary.options().password, schemas) {
        conn.query_drop(&sql).await.map_err(|e| {
            SandboxError::sql(format!("creating ferry's account on {}: {sql}", primary.name()), e)
        })?;
    }
    conn.disconnect().await.ok();
    Ok(())
}

/// Install the `ferry` metadata schema and the PSI demo schema on `primary`.
pub async fn install_schemas(primary: &MariaDb) -> Result<(), SandboxError> {
    let mut conn = primary.conn().await?;
    let psi = PSI_SCHEMA
        .split(';')
        .map(|s| s.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n"))
        .filter(|s| !s.trim().is_empty());
    // The application's account: data only, so `read_only` (fencing) stops it.
    let o = primary.options();
    let app = [
        format!("CREATE USER IF NOT EXISTS '{APP_USER}'@'%' IDENTIFIED BY '{}'", o.password),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON psi.* TO '{APP_USER}'@'%'"),
    ];
    for sql in crate::schema::STATEMENTS.iter().map(|s| s.to_string()).chain(psi).chain(app) {
        conn.query_drop(&sql)
            .await
            .map_err(|e| SandboxError::sql(format!("installing schemas on {}", primary.name()), e))?;
    }
    conn.disconnect().await.ok();
    Ok(())
}

/// The `regions` section every sandbox ferry shares.
fn regions_config(
    regions: &BTreeMap<String, RegionServers>,
    broker: &Broker,
    secret: &Secret,
) -> BTreeMap<String, RegionConfig> {
    let names: Vec<&String> = regions.keys().collect();
    regions
        .values()
        .map(|r| {
            let pos = names.iter().position(|n| **n == r.name).unwrap_or(0);
            let standby = (names.len() > 1).then(|| names[(pos + 1) % names.len()].clone());
            let config = RegionConfig {
                priority: u32::from(r.octet),
                standby,
                mysql: MysqlConfig {
                    user: FERRY_USER.into(),
                    password: secret.clone(),
                    flavor: crate::config::Flavor::Mariadb,
                    gtid_domain_id: Some(r.db_primary.options().gtid_domain_id),
                    server_uuids: Vec::new(),
                    primary: r.db_primary.db_server(),
                    replicas: vec![r.db_replica.db_server()],
                },
                kafka: KafkaConfig::single_broker(vec![broker.bootstrap()]),
                redis: Some(RedisConfig {
                    primary: r.redis_primary.addr().to_string(),
                    replicas: vec![r.redis_replica.addr().to_string()],
                    password: None,
                }),
            };
            (r.name.clone(), config)
        })
        .collect()
}

struct FerryProcess {
    process: ServerProcess,
    http: SocketAddr,
    config: PathBuf,
}

async fn start_ferry(
    dir: &Path,
    region: &RegionServers,
    template: &Config,
    regions: &BTreeMap<String, RegionConfig>,
    ferry_bin: &Path,
) -> Result<FerryProcess, SandboxError> {
    let ferry_dir = ServerDir::fresh(dir.join(&region.name).join("ferry"))?;
    let config_path = dir.join(&region.name).join("ferry.yaml");
    let listen_ip = ip(region.octet, host::FERRY);
    let command = |port: u16| {
        let mut config = template.clone();
        config.region = region.name.clone();
        config.regions = regions.clone();
        config.http.listen = SocketAddr::new(listen_ip, port);
        if let Some(capture) = config.capture.as_mut() {
            capture.server_id = u32::from(region.octet) * 1000 + 1;
        }
        if let Some(watch) = config.watch.as_mut() {
            watch.targets = region_targets(region, &watch.targets);
        }
        let yaml = serde_saphyr::to_string(&config)
            .map_err(|e| SandboxError::Setup(format!("encoding the ferry config: {e}")))?;
        let header = "# Generated by `ferry sandbox up` from config/sandbox.yaml; rewritten on every up.\n";
        std::fs::write(&config_path, format!("{header}{yaml}"))
            .map_err(|e| SandboxError::io(format!("writing {}", config_path.display()), e))?;
        let mut cmd = Command::new(ferry_bin);
        cmd.arg("run").arg("--config").arg(&config_path);
        Ok(cmd)
    };
    let probe = |addr| async move { matches!(http_get(addr, "/health/live").await, Ok((200, _))) };
    let log = ferry_dir.path().join("ferry.log");
    let name = format!("{}-ferry", region.name);
    let (process, http) = start_server(&name, listen_ip, Some(9464), &log, command, probe).await?;
    Ok(FerryProcess { process, http, config: config_path })
}

/// The region's watch targets: each app node (a member of the region's HAProxy backend), the
/// MariaDB primary and the Redis primary (failed over, their DNS records switched). The
/// template's target of the same name (`app`, `db`, `redis`) gives the timing.
fn region_targets(
    region: &RegionServers,
    template: &[crate::config::TargetConfig],
) -> Vec<crate::config::TargetConfig> {
    use crate::config::{LbMember, PrimaryKind, ProbeConfig, TargetConfig, TargetFailover};
    let like = |name: &str, probe: ProbeConfig| {
        let t = template.iter().find(|t| t.name == name);
        TargetConfig {
            name: name.to_string(),
            probe,
            interval: t.map_or(Duration::from_secs(1), |t| t.interval),
            timeout: t.map_or(Duration::from_millis(500), |t| t.timeout),
            failure_threshold: t.map_or(3, |t| t.failure_threshold),
            recovery_threshold: t.map_or(3, |t| t.recovery_threshold),
            lb: None,
            failover: None,
        }
    };
    let mut targets: Vec<TargetConfig> = region
        .apps
        .iter()
        .map(|app| TargetConfig {
            name: app.name.clone(),
            lb: Some(LbMember::Haproxy {
                api: region.haproxy.admin_socket().display().to_string(),
                backend: super::haproxy::BACKEND.into(),
                server: app.name.clone(),
                down_state: crate::config::DownState::Drain,
            }),
            ..like(
                "app",
                ProbeConfig::Http {
                    address: app.addr.to_string(),
                    path: "/health/ready".into(),
                    expect_status: 200,
                    body_contains: None,
                },
            )
        })
        .collect();
    targets.push(TargetConfig {
        failover: Some(TargetFailover {
            haproxy: Some(crate::config::HaproxyBackend {
                api: region.haproxy.admin_socket().display().to_string(),
                backend: super::haproxy::DB_BACKEND.into(),
                frontend: region.haproxy.db_frontend().map(|a| a.to_string()),
            }),
            ..TargetFailover::primary(PrimaryKind::Mysql, Some(format!("db.{}", region.name)))
        }),
        ..like(
            "db",
            ProbeConfig::Mysql {
                address: region.db_primary.addr().to_string(),
                heartbeat: false,
                max_replica_lag: None,
            },
        )
    });
    targets.push(TargetConfig {
        failover: Some(TargetFailover::primary(PrimaryKind::Redis, Some(format!("redis.{}", region.name)))),
        ..like("redis", ProbeConfig::Redis { address: region.redis_primary.addr().to_string(), role: None })
    });
    targets
}

impl RegionServers {
    fn into_state(self, ferry: FerryProcess) -> RegionState {
        let db = |db: MariaDb| {
            let (dsn, addr, server_id, socket) = (db.dsn(), db.addr(), db.options().server_id, db.socket());
            DbState { dsn, host: addr.ip(), port: addr.port(), server_id, socket, process: db.detach().0 }
        };
        let redis = |r: RedisServer| RedisNode { address: r.addr().to_string(), process: r.detach().0 };
        RegionState {
            mysql: MysqlState {
                gtid_domain_id: self.db_primary.options().gtid_domain_id,
                primary: db(self.db_primary),
                replica: db(self.db_replica),
            },
            redis: RedisState { primary: redis(self.redis_primary), replica: redis(self.redis_replica) },
            apps: self
                .apps
                .into_iter()
                .map(|a| AppState {
                    name: a.name,
                    url: format!("http://{}", a.addr),
                    process: a.process.detach(),
                })
                .collect(),
            haproxy: HaproxyState {
                frontend_url: format!("http://{}", self.haproxy.frontend()),
                runtime_api: self.haproxy.admin_socket(),
                backend: BACKEND.into(),
                db_frontend: self.haproxy.db_frontend().map(|a| a.to_string()),
                process: self.haproxy.detach().0,
            },
            ferry: FerryState {
                http_url: format!("http://{}", ferry.http),
                config: ferry.config,
                process: ferry.process.detach(),
            },
        }
    }
}

fn dns_records(regions: &[String]) -> Vec<(String, IpAddr)> {
    let mut records = Vec::new();
    for (i, name) in regions.iter().enumerate() {
        let octet = u8::try_from(i + 1).unwrap_or(u8::MAX);
        records.push((format!("db.{name}"), ip(octet, host::DB_PRIMARY)));
        records.push((format!("redis.{name}"), ip(octet, host::REDIS_PRIMARY)));
        records.push((format!("app.{name}"), ip(octet, host::HAPROXY)));
    }
    records
}

fn check_regions(regions: &[String]) -> Result<(), SandboxError> {
    let mut seen = std::collections::BTreeSet::new();
    if regions.is_empty() || regions.len() > 16 {
        return Err(SandboxError::Setup("give between 1 and 16 regions".into()));
    }
    for r in regions {
        let ok = !r.is_empty()
            && r.len() <= 32
            && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(SandboxError::Setup(format!(
                "region name `{r}`: use lowercase letters, digits and `-`"
            )));
        }
        if !seen.insert(r) {
            return Err(SandboxError::Setup(format!("region `{r}` is given twice")));
        }
    }
    Ok(())
}

fn check_programs() -> Result<(), SandboxError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = PROGRAMS
        .iter()
        .filter(|p| !std::env::split_paths(&path).any(|d| is_executable(&d.join(p))))
        .map(|p| p.to_string())
        .collect();
    if missing.is_empty() { Ok(()) } else { Err(SandboxError::MissingPrograms(missing)) }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn write_secret(dir: &Path, name: &str, value: &str) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::OpenOptionsExt;
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).map_err(|e| SandboxError::io("creating the secrets folder", e))?;
    let path = secrets.join(name);
    let _ = std::fs::remove_file(&path);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        f.write_all(value.as_bytes())
    };
    write().map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

/// What `down` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Stopped by SIGTERM.
    pub stopped: Vec<String>,
    /// Did not exit within the timeout and were killed.
    pub killed: Vec<String>,
    /// Were no longer running (or the pid now belongs to another process, left alone).
    pub not_running: Vec<String>,
}

/// Stop everything `up` started in `dir`, by recorded pid, and nothing else. `None` when
/// `dir` holds no sandbox (so running `down` twice is fine).
pub async fn down(dir: &Path) -> Result<Option<DownReport>, SandboxError> {
    let Some(state) = SandboxState::load(dir)? else { return Ok(None) };
    let mut report = DownReport::default();
    for (label, process) in state.processes() {
        if !process.signal(libc::SIGTERM) {
            report.not_running.push(label);
            continue;
        }
        if wait_exit(process, STOP_TIMEOUT).await {
            report.stopped.push(label);
        } else {
            process.signal(libc::SIGKILL);
            wait_exit(process, Duration::from_secs(5)).await;
            report.killed.push(label);
        }
    }
    std::fs::remove_file(SandboxState::path(dir))
        .map_err(|e| SandboxError::io("removing sandbox.json", e))?;
    Ok(Some(report))
}

async fn wait_exit(process: &ProcessRecord, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while process.is_running() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// One recorded process and whether it is still running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStatus {
    pub label: String,
    pub record: ProcessRecord,
    pub running: bool,
}

/// The recorded state and each process's status. `None` when `dir` holds no sandbox.
pub fn status(dir: &Path) -> Result<Option<(SandboxState, Vec<ProcessStatus>)>, SandboxError> {
    let Some(state) = SandboxState::load(dir)? else { return Ok(None) };
    let processes = state
        .processes()
        .into_iter()
        .map(|(label, p)| ProcessStatus { label, record: p.clone(), running: p.is_running() })
        .collect();
    Ok(Some((state, processes)))
}
