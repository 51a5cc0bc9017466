//! The `ferry` binary: validation exit codes, `ferry run`'s HTTP endpoints and its ordered,
//! signal-driven shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::sandbox::{http_get, pick_port};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn ferry(args: &[&str]) -> std::process::Output {
    Command::new(FERRY).args(args).output().expect("ferry runs")
}

#[test]
fn every_file_in_config_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            continue;
        }
        // The example reads its secrets from the environment, as a deployment would. Offline:
        // its servers do not exist here (online checks: tests/validate.rs).
        let out = Command::new(FERRY)
            .args(["validate", "--offline", "--config"])
            .arg(&path)
            .envs([
                ("FERRY_EAST_MYSQL_PASSWORD", "x"),
                ("FERRY_WEST_MYSQL_PASSWORD", "y"),
                ("FERRY_EAST_REDIS_PASSWORD", "z"),
                ("FERRY_DNS_TSIG_KEY", "c2VjcmV0"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not validate:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 2, "expected the example and the sandbox template in config/, found {checked}");
}

#[test]
fn a_bad_config_exits_64_listing_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"
region: north
regions:
  east:
    priority: 1
    standby: south
    colour: blue
    mysql:
      user: ferry
      password: { env: FERRY_TEST_UNSET_VARIABLE }
      gtid_domain_id: 1
      primary: { host: a, server_id: 101 }
    kafka: { bootstrap: ["k:9092"] }
  west:
    priority: 2
    mysql:
      user: ferry
      password: x
      gtid_domain_id: 2
      primary: { host: b, server_id: 101 }
    kafka: { bootstrap: ["k:9092"] }
shutdown: { grace: 5 fortnights }
"#,
    )
    .unwrap();
    let out = ferry(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "exit code");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "6 configuration problems",
        "region: region `north` is not defined",
        "regions.east.colour: unknown field `colour`",
        "regions.east.standby: standby region `south`",
        "regions.east.mysql.password: environment variable `FERRY_TEST_UNSET_VARIABLE` is not set",
        "regions.west.mysql.primary.server_id: server_id 101 is also used by regions.east.mysql.primary",
        "shutdown.grace: invalid value",
    ] {
        assert!(stderr.contains(want), "expected {want:?} in:\n{stderr}");
    }
    // The same file given to `run` is refused the same way, before anything starts.
    let out = ferry(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "run exit code");
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    assert_eq!(ferry(&["frobnicate"]).status.code(), Some(64));
    assert_eq!(ferry(&["validate"]).status.code(), Some(64), "missing --config");
    for args in [
        &["--help"][..],
        &["validate", "--help"],
        &["run", "--help"],
        &["sandbox", "--help"],
        &["sandbox", "up", "--help"],
        &["failover", "region", "--help"],
        &["switchover", "redis", "--help"],
        &["sandbox", "down", "--help"],
        &["sandbox", "status", "--help"],
        &["sandbox", "app", "--help"],
    ] {
        let out = ferry(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"), "{args:?} prints usage");
    }
}

fn minimal_config(dir: &Path, listen: SocketAddr, grace: &str) -> std::path::PathBuf {
    let path = dir.join("ferry.yaml");
    let text = format!(
        r#"
region: east
regions:
  east:
    priority: 1
    mysql:
      user: ferry
      password: {{ env: FERRY_TEST_DB_PASSWORD }}
      gtid_domain_id: 1
      primary: {{ host: 127.0.0.1, server_id: 101 }}
    kafka: {{ bootstrap: ["127.0.0.1:9092"] }}
http: {{ listen: "{listen}" }}
log: {{ format: json }}
shutdown: {{ grace: {grace} }}
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Kills the child if the test fails before it exits.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_live(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(http_get(addr, "/health/live").await, Ok((200, _))) {
        assert!(Instant::now() < deadline, "ferry run did not serve /health/live on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn raw_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn run_serves_health_metrics_and_status_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::new([127, 0, 0, 1].into(), pick_port([127, 0, 0, 1].into(), None).unwrap());
    // The file says port 1; the environment override must win.
    let config = minimal_config(dir.path(), "127.0.0.1:1".parse().unwrap(), "10s");
    let mut child = Running(
        Command::new(FERRY)
            .args(["run", "--config"])
            .arg(&config)
            .env("FERRY_TEST_DB_PASSWORD", "pw")
            .env("FERRY__HTTP__LISTEN", listen.to_string())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_live(listen).await;

    let metrics = raw_get(listen, "/metrics").await;
    assert!(
        metrics.to_ascii_lowercase().contains("content-type: application/openmetrics-text"),
        "OpenMetrics content type:\n{metrics}"
    );
    for want in ["ferry_build_info{version=\"", "ferry_up 1", "ferry_process_resident_memory_bytes ", "# EOF"]
    {
        assert!(metrics.contains(want), "expected {want:?} in /metrics:\n{metrics}");
    }
    let (code, body) = http_get(listen, "/health/ready").await.unwrap();
    assert_eq!(code, 200, "ready with no roles: {body}");
    let (code, body) = http_get(listen, "/status").await.unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["region"], "east", "{status}");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");
    assert_eq!(status["shutting_down"], false, "{status}");

    let sent = Instant::now();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let exit = tokio::task::spawn_blocking(move || {
        let status = child.0.wait().unwrap();
        let mut log = String::new();
        std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut log).unwrap();
        (status, log)
    })
    .await
    .unwrap();
    let (status, log) = exit;
    assert_eq!(status.code(), Some(0), "clean shutdown exits 0; log:\n{log}");
    assert!(sent.elapsed() < Duration::from_secs(5), "shutdown took {:?}", sent.elapsed());
    let signal = log.find("\"signal\":\"SIGTERM\"").expect("logs the signal");
    let clean = log.find("ferry stopped cleanly").expect("logs a clean stop");
    assert!(signal < clean, "signal logged before the stop:\n{log}");
    assert!(http_get(listen, "/health/live").await.is_err(), "the HTTP listener is closed after exit");
}

#[tokio::test]
async fn run_fails_fast_when_its_http_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = minimal_config(dir.path(), taken.local_addr().unwrap(), "10s");
    let out = Command::new(FERRY)
        .args(["run", "--config"])
        .arg(&config)
        .env("FERRY_TEST_DB_PASSWORD", "pw")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("(http.listen)") && log.contains("Address already in use"), "{log}");
}
