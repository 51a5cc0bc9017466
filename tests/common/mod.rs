//! Helpers shared by the integration tests that run `ferry run` against a test topology.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ferry::sandbox::{MariaDb, pick_port};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

pub use ferry::sandbox::region_yaml;

/// `ferry run --config CONFIG` with its log appended to `log`.
pub fn spawn_ferry(config: &Path, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(FERRY)
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap()
}

/// `dir/west.yaml`: region `west` applying `east`'s topic on `bootstrap`, both regions' primary
/// being `db` (apply only needs the origin's topic). East's primary is configured as server
/// 101 in domain 1, the identity the tests' hand-made records carry (apply admits only the
/// origin's own identity); `/status` on `http` and `apply` as given (YAML flow mapping).
pub fn apply_only_config(
    dir: &Path,
    db: &MariaDb,
    bootstrap: &str,
    http: std::net::SocketAddr,
    apply: &str,
) -> std::path::PathBuf {
    let server_id = db.options().server_id;
    let east = region_yaml("east", db, 1, 1, bootstrap)
        .replace(&format!("server_id: {server_id}"), &format!("server_id: {EAST_SERVER_ID}"));
    let path = dir.join("west.yaml");
    let text = format!(
        "region: west\nregions:\n{east}{}http: {{ listen: \"{http}\" }}\napply: {apply}\n",
        region_yaml("west", db, 2, 2, bootstrap)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The server id of east's primary in [`apply_only_config`].
pub const EAST_SERVER_ID: u32 = 101;

/// A child process killed when dropped, so a failing test leaves no `ferry run` behind.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// East's and west's primaries (server ids 101 and 201, GTID domains 1 and 2, the PSI schema
/// installed) and one broker both regions use.
pub async fn two_regions() -> (MariaDb, MariaDb, ferry::sandbox::Broker) {
    let east = MariaDb::start_temp(db_options("east-db", 101, 1, 1)).await.unwrap();
    let west = MariaDb::start_temp(db_options("west-db", 201, 2, 2)).await.unwrap();
    let broker = ferry::sandbox::Broker::start_temp().await.unwrap();
    ferry::sandbox::install_schemas(&east).await.unwrap();
    ferry::sandbox::install_schemas(&west).await.unwrap();
    (east, west, broker)
}

/// A small deterministic generator for kill schedules (print the seed to replay one).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// A one-region (`east`) config at `dir/ferry.yaml` for `db`, with `extra` top-level YAML
/// appended. Its broker address answers nothing: for tests that never reach Kafka.
pub fn single_region_config(dir: &Path, db: &MariaDb, extra: &str) -> std::path::PathBuf {
    let path = dir.join("ferry.yaml");
    let text = format!("region: east\nregions:\n{}{extra}", region_yaml("east", db, 1, 1, "127.0.0.1:9"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Wait until `ferry run` at `addr` reports ready.
pub async fn wait_ready(addr: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !matches!(ferry::sandbox::http_get(addr, "/health/ready").await, Ok((200, _))) {
        assert!(std::time::Instant::now() < deadline, "ferry on {addr} never became ready");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The PSI tables two regions must hold identically.
pub const PSI_TABLES: &[&str] = &["products", "warehouses", "stock", "customers", "orders", "order_items"];

/// Every row of every PSI table, as text, in key order.
pub async fn dump(db: &MariaDb) -> Vec<(String, Vec<String>)> {
    use mysql_async::prelude::Queryable;
    let mut c = db.conn().await.unwrap();
    let mut out = Vec::new();
    for t in PSI_TABLES {
        let rows: Vec<mysql_async::Row> =
            c.query(format!("SELECT * FROM psi.{t} ORDER BY 1, 2")).await.unwrap();
        let rows = rows
            .into_iter()
            .map(|r| {
                (0..r.len()).map(|i| format!("{:?}", r.as_ref(i).unwrap())).collect::<Vec<_>>().join("|")
            })
            .collect();
        out.push((t.to_string(), rows));
    }
    out
}

/// A test MariaDB that generates keys `offset`, `offset + 16`, … (the sandbox's scheme, so
/// two regions never generate the same key).
pub fn db_options(name: &str, server_id: u32, domain: u32, offset: u32) -> ferry::sandbox::MariaDbOptions {
    let mut o = ferry::sandbox::MariaDbOptions::test(name, server_id, domain);
    o.extra_args = vec!["--auto-increment-increment=16".into(), format!("--auto-increment-offset={offset}")];
    o
}

/// One sandbox at a time on this machine: sandboxes share the 127.77.x.x addresses and
/// prefer the same ports, and two starting at once can take each other's server for their own.
/// nextest runs the sandbox tests in one test group (`.config/nextest.toml`); this lock (an
/// advisory `flock`, released when dropped) covers `cargo test`, whose threads would not.
pub struct SandboxLock(std::fs::File);

pub fn sandbox_lock() -> SandboxLock {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("ferry-sandbox-tests.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor this function owns; it blocks until the lock is free.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
    SandboxLock(file)
}

/// A sandbox (`ferry sandbox up`) in a temp dir, taken down when dropped.
pub struct Sandbox {
    pub dir: std::path::PathBuf,
    pub state: ferry::sandbox::SandboxState,
    _tmp: tempfile::TempDir,
    // Dropped last, after the sandbox is down.
    _lock: SandboxLock,
}

impl Sandbox {
    pub fn up() -> Self {
        let lock = sandbox_lock();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sb");
        let out = Command::new(FERRY).args(["sandbox", "up", "--dir"]).arg(&dir).output().unwrap();
        let sandbox = |state| Self { dir: dir.clone(), state, _tmp: tmp, _lock: lock };
        if !out.status.success() {
            // Take down whatever did start before failing.
            let _ = Command::new(FERRY).args(["sandbox", "down", "--dir"]).arg(&dir).output();
            panic!("sandbox up: {}", String::from_utf8_lossy(&out.stderr));
        }
        sandbox(ferry::sandbox::SandboxState::load(&dir).unwrap().unwrap())
    }

    /// The region's ferry `/status`, parsed.
    pub async fn status(&self, region: &str) -> serde_json::Value {
        let url = &self.state.regions[region].ferry.http_url;
        let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
        match ferry::sandbox::http_get(addr, "/status").await {
            Ok((200, body)) => serde_json::from_str(&body).unwrap(),
            other => panic!("/status of {region}: {other:?}"),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if ferry::sandbox::SandboxState::path(&self.dir).exists() {
            let _ = Command::new(FERRY).args(["sandbox", "down", "--dir"]).arg(&self.dir).output();
        }
    }
}

/// Publish `payloads` to `topic` as they are (forged or broken records included).
pub async fn produce(bootstrap: &str, topic: &str, payloads: &[Vec<u8>]) {
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .create()
        .unwrap();
    for p in payloads {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(topic).key("k").payload(p),
                std::time::Duration::from_secs(20),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Up to `want` records of the dead-letter topic `topic` (waiting up to 30 s), parsed.
pub fn dead_letters(bootstrap: &str, topic: &str, want: usize) -> Vec<serde_json::Value> {
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", "dlq-check")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
    rdkafka::consumer::Consumer::assign(&consumer, &tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while out.len() < want && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(200)) {
            out.push(serde_json::from_slice(rdkafka::message::Message::payload(&m).unwrap()).unwrap());
        }
    }
    out
}

/// The config of `region` in a deployment of `regions` (name, database), all on one broker.
pub fn region_config(
    dir: &Path,
    region: &str,
    regions: &[(&str, &MariaDb)],
    bootstrap: &str,
) -> (PathBuf, std::net::SocketAddr) {
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], pick_port([127, 0, 0, 1].into(), None).unwrap()));
    let mut text = format!("region: {region}\nregions:\n");
    for (i, (name, db)) in regions.iter().enumerate() {
        let p = i as u32 + 1;
        text.push_str(&region_yaml(name, db, p, p, bootstrap));
    }
    let reader = 1000 * (regions.iter().position(|(n, _)| *n == region).unwrap_or(0) + 1) + 1;
    text.push_str(&format!(
        "http: {{ listen: \"{http}\" }}\nlog: {{ format: json }}\n\
         capture: {{ server_id: {reader}, checkpoint_interval: 200ms }}\napply: {{ on_error: pause }}\n"
    ));
    let path = dir.join(format!("{region}.yaml"));
    std::fs::write(&path, text).unwrap();
    (path, http)
}
