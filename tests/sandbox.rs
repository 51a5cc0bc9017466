//! `ferry sandbox up|status|down` through the binary, as a user runs it: every server of two
//! regions comes up, is wired as documented in docs/sandbox.md, and goes away again.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry::sandbox::{SandboxState, http_get};
use mysql_async::prelude::Queryable;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn ferry(args: &[&str], dir: &Path) -> (i32, String) {
    let out = Command::new(FERRY).args(args).arg("--dir").arg(dir).output().expect("ferry runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `sandbox down` if the test ends early, so no server outlives a failed test.
struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        if SandboxState::path(&self.0).exists() {
            let _ = Command::new(FERRY).args(["sandbox", "down", "--dir"]).arg(&self.0).output();
        }
    }
}

async fn kdig_a(server: &str, name: &str) -> String {
    let (host, port) = server.rsplit_once(':').unwrap();
    let out = tokio::process::Command::new("kdig")
        .args([&format!("@{host}"), "-p", port, "+short", name, "A"])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn sandbox_comes_up_wired_and_goes_down_completely() {
    let _lock = common::sandbox_lock();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sb");
    let _guard = Guard(dir.clone());

    let (code, out) = ferry(&["sandbox", "up", "--regions", "east,west"], &dir);
    assert_eq!(code, 0, "sandbox up failed:\n{out}");
    let state = SandboxState::load(&dir).unwrap().expect("sandbox.json written");
    assert_eq!(state.regions.keys().collect::<Vec<_>>(), ["east", "west"]);
    assert!(state.startup_seconds < 60.0, "start-up took {}s", state.startup_seconds);
    for (label, p) in state.processes() {
        assert!(p.is_running(), "{label} (pid {}) is not running", p.pid);
        assert!(p.log.exists(), "{label} log {} exists", p.log.display());
    }
    assert_eq!(state.processes().len(), 18, "9 processes per region");

    // DNS: each region's names point at that region's servers.
    for (name, region) in &state.regions {
        let db = kdig_a(&state.dns.server, &format!("db.{name}.{}", state.dns.zone)).await;
        assert_eq!(db, region.mysql.primary.host.to_string(), "db.{name}");
        let redis = kdig_a(&state.dns.server, &format!("redis.{name}.{}", state.dns.zone)).await;
        assert_eq!(redis, region.redis.primary.address.rsplit_once(':').unwrap().0, "redis.{name}");
    }

    // MariaDB: schemas installed, a write on the primary reaches the in-region replica, and
    // the two regions use different GTID domains and server ids.
    let east = &state.regions["east"];
    let mut primary =
        mysql_async::Conn::new(mysql_async::Opts::from_url(&east.mysql.primary.dsn).unwrap()).await.unwrap();
    let tables: Vec<String> = primary.query("SHOW TABLES FROM psi").await.unwrap();
    assert_eq!(
        tables,
        ["customers", "order_items", "orders", "products", "stock", "suppliers", "warehouses"]
    );
    let ferry_tables: Vec<String> = primary.query("SHOW TABLES FROM ferry").await.unwrap();
    assert_eq!(
        ferry_tables,
        [
            "applied",
            "capture_checkpoint",
            "check_progress",
            "conflicts",
            "failovers",
            "heartbeat",
            "row_origins",
            "snapshot_progress",
            "snapshot_watermark",
            "tombstones",
            "watch_probe"
        ]
    );
    primary
        .query_drop("INSERT INTO psi.warehouses (code, name, region) VALUES ('E1', 'East main', 'east')")
        .await
        .unwrap();
    let gtid: String = primary.query_first("SELECT @@gtid_binlog_pos").await.unwrap().unwrap();
    assert!(gtid.contains("1-101-"), "east writes carry domain 1, server 101: {gtid}");
    let mut replica =
        mysql_async::Conn::new(mysql_async::Opts::from_url(&east.mysql.replica.dsn).unwrap()).await.unwrap();
    let waited: Option<i64> = replica.exec_first("SELECT MASTER_GTID_WAIT(?, 10)", (gtid,)).await.unwrap();
    assert_eq!(waited, Some(0));
    let code: Option<String> = replica.query_first("SELECT code FROM psi.warehouses").await.unwrap();
    assert_eq!(code.as_deref(), Some("E1"));
    assert_eq!(state.regions["west"].mysql.gtid_domain_id, 2);

    // Each region's ferry serves its status, and its generated config is valid.
    for (name, region) in &state.regions {
        let addr = region.ferry.http_url.trim_start_matches("http://").parse().unwrap();
        let (code, body) = http_get(addr, "/status").await.unwrap();
        assert_eq!(code, 200);
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["region"], name.as_str(), "{body}");
        let out =
            Command::new(FERRY).args(["validate", "--config"]).arg(&region.ferry.config).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            region.ferry.config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // The password is referenced by file, never written into the config.
        let config = std::fs::read_to_string(&region.ferry.config).unwrap();
        let password = std::fs::read_to_string(dir.join("secrets/mysql-password")).unwrap();
        assert!(!config.contains(&password), "the generated config must not contain the password");
        // The load balancer answers through the region's app nodes.
        let frontend = region.haproxy.frontend_url.trim_start_matches("http://").parse().unwrap();
        let (code, body) = http_get(frontend, "/").await.unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("\"region\":\"{name}\"")), "{body}");
    }

    // Each region's ferry captures: a row written in each region is published to its topic.
    for (name, region) in &state.regions {
        let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&region.mysql.primary.dsn).unwrap())
            .await
            .unwrap();
        c.exec_drop(
            "INSERT INTO psi.customers (name, email, region) VALUES (?, ?, ?)",
            ("Ada", format!("ada@{name}.test"), name),
        )
        .await
        .unwrap();
        let gtid: String = c.query_first("SELECT @@last_gtid").await.unwrap().unwrap();
        let found = published(&state.kafka.bootstrap, &format!("ferry.{name}.changes"), &gtid).await;
        assert!(found.contains(&format!("ada@{name}.test")), "ferry.{name}.changes holds {gtid}: {found}");
        let beat: Option<i64> =
            c.exec_first("SELECT beat_at_us FROM ferry.heartbeat WHERE region = ?", (name,)).await.unwrap();
        assert!(beat.is_some_and(|us| us > 1_700_000_000_000_000), "{name} writes its heartbeat: {beat:?}");
    }

    // ... and applies the other region's: the sandbox replicates both ways.
    for (name, region) in &state.regions {
        let other = if name == "east" { "west" } else { "east" };
        let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&region.mysql.primary.dsn).unwrap())
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let n: Option<i64> = c
                .exec_first(
                    "SELECT COUNT(*) FROM psi.customers WHERE email = ?",
                    (format!("ada@{other}.test"),),
                )
                .await
                .unwrap();
            if n == Some(1) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{name} never received {other}'s customer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let (code, out) = ferry(&["sandbox", "up"], &dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("already up"), "a second up says so:\n{out}");
    assert_eq!(SandboxState::load(&dir).unwrap().as_ref(), Some(&state), "a second up changes nothing");

    let (code, out) = ferry(&["sandbox", "status"], &dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("east/db-primary") && !out.contains("STOPPED"), "{out}");

    let (code, out) = ferry(&["sandbox", "down"], &dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("18 stopped"), "{out}");
    for (label, p) in state.processes() {
        assert!(!p.is_running(), "{label} (pid {}) still running after down", p.pid);
    }
    assert!(!SandboxState::path(&dir).exists(), "sandbox.json removed");
    let (code, out) = ferry(&["sandbox", "down"], &dir);
    assert_eq!(code, 0, "a second down is harmless: {out}");
    assert!(out.contains("no sandbox running"), "{out}");
    let (code, out) = ferry(&["sandbox", "status"], &dir);
    assert_eq!(code, 0);
    assert!(out.contains("no sandbox"), "{out}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// The payload of the record keyed `gtid` in `topic` (waits up to 30 s for it).
async fn published(bootstrap: &str, topic: &str, gtid: &str) -> String {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", "sandbox-test")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200))
            && m.key() == Some(gtid.as_bytes())
        {
            return String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        }
    }
    String::new()
}

#[test]
fn status_reports_a_dead_process_and_down_leaves_other_processes_alone() {
    let _lock = common::sandbox_lock();
    // A hand-written state naming one live process of ours and one pid reused by another
    // process (wrong start time): down stops the first and must not touch the second.
    let tmp = tempfile::tempdir().unwrap();
    let mut ours = Command::new("sleep").arg("60").spawn().unwrap();
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        rest.split_whitespace().nth(19).unwrap().parse().unwrap()
    };
    let record = |pid: u32, start_ticks: u64| serde_json::json!({"pid": pid, "program": "sleep", "start_ticks": start_ticks, "log": "/dev/null"});
    let ours_rec = record(ours.id(), ticks(ours.id()));
    let stale = record(bystander.id(), ticks(bystander.id()) + 7);
    let db = |p: &serde_json::Value| serde_json::json!({"dsn": "mysql://u:p@127.0.0.1:1/", "host": "127.0.0.1", "port": 1, "server_id": 1, "socket": "/x", "process": p});
    let redis = |p: &serde_json::Value| serde_json::json!({"address": "127.0.0.1:1", "process": p});
    let state = serde_json::json!({
        "format": 1, "dir": tmp.path(), "started_at_unix_seconds": 0, "startup_seconds": 1.0,
        "regions": {"east": {
            "mysql": {"gtid_domain_id": 1, "primary": db(&ours_rec), "replica": db(&stale)},
            "redis": {"primary": redis(&stale), "replica": redis(&stale)},
            "apps": [], "haproxy": {"frontend_url": "http://x", "runtime_api": "/x", "backend": "app", "process": stale},
            "ferry": {"http_url": "http://x", "config": "/x", "process": stale}
        }},
        "kafka": {"bootstrap": "x:1", "topics": [], "process": stale},
        "dns": {"server": "x:1", "zone": "psi.test", "tsig": {"name": "k", "algorithm": "hmac-sha256", "secret": "c2VjcmV0"}, "records": {}, "process": stale}
    });
    std::fs::write(tmp.path().join("sandbox.json"), state.to_string()).unwrap();

    let (code, out) = ferry(&["sandbox", "status"], tmp.path());
    assert_eq!(code, 1, "status exits 1 when a recorded process is gone:\n{out}");
    assert!(out.contains("STOPPED"), "{out}");

    let (code, out) = ferry(&["sandbox", "down"], tmp.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 stopped") && out.contains("7 were not running"), "{out}");
    let ours_status = ours.wait().unwrap();
    assert!(!ours_status.success(), "our process was terminated by a signal");
    assert!(bystander.try_wait().unwrap().is_none(), "the bystander with a reused pid must be left running");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}
