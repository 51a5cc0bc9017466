//! Alerts to on-call: `ferry run` watching a TCP target posts a firing alert to an
//! Alertmanager API v2 receiver when the target goes down (retrying when the receiver fails)
//! and the resolved alert when it is back. With two instances sharing a Redis lease, only the
//! leader acts; when it is killed, the other takes over and acts once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

mod common;
use common::Reaped;

/// A stand-in Alertmanager: records every `POST /api/v2/alerts` body; answers 503 to the first
/// `fail_first` posts, then 202.
async fn receiver(fail_first: usize) -> (std::net::SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let out = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let (got, seen) = (got.clone(), seen.clone());
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&raw).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            assert!(head.starts_with("POST /api/v2/alerts "), "{head}");
                            break body.to_string();
                        }
                    }
                };
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let status = if n < fail_first { "503 Service Unavailable" } else { "202 Accepted" };
                if n >= fail_first {
                    got.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                }
                let _ =
                    s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            });
        }
    });
    (addr, out)
}

/// A config watching the TCP target `target` and alerting `am`, with `extra` appended to the
/// `watch` section; its HTTP address.
fn watch_config(
    dir: &std::path::Path,
    name: &str,
    am: std::net::SocketAddr,
    target: std::net::SocketAddr,
    extra: &str,
) -> (std::path::PathBuf, std::net::SocketAddr) {
    let http = std::net::SocketAddr::from((
        [127, 0, 0, 1],
        ferry::sandbox::pick_port([127, 0, 0, 1].into(), None).unwrap(),
    ));
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "region: east\nregions:\n  east:\n    priority: 1\n    mysql: {{ user: u, password: p, gtid_domain_id: 1, \
             primary: {{ host: 127.0.0.1, port: 9, server_id: 1 }} }}\n    kafka: {{ bootstrap: [\"127.0.0.1:9\"] }}\n\
             http: {{ listen: \"{http}\" }}\nwatch:\n  alertmanager: {{ url: \"http://{am}\" }}\n  targets:\n    \
             - name: orders-db\n      probe: {{ tcp: {{ address: \"{target}\" }} }}\n      interval: 200ms\n      \
             timeout: 100ms\n      failure_threshold: 2\n      recovery_threshold: 2\n{extra}"
        ),
    )
    .unwrap();
    (config, http)
}

/// A TCP target that accepts while it runs.
fn serve(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        }
    })
}

/// The delivered alerts named `name`: (labels, has endsAt).
fn delivered(
    got: &Mutex<Vec<serde_json::Value>>,
    name: &str,
) -> Vec<(serde_json::Value, serde_json::Value, bool)> {
    got.lock()
        .unwrap()
        .iter()
        .flat_map(|batch| batch.as_array().cloned().unwrap_or_default())
        .filter(|a| a["labels"]["alertname"] == name)
        .map(|a| (a["labels"].clone(), a["annotations"].clone(), a.get("endsAt").is_some()))
        .collect()
}

async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_target_going_down_and_up_fires_and_resolves_an_alert() {
    let (am, got) = receiver(1).await;
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let serving = serve(target);
    let dir = tempfile::tempdir().unwrap();
    let (config, http) = watch_config(dir.path(), "east", am, target_addr, "");
    let _ferry = Reaped(common::spawn_ferry(&config, &dir.path().join("ferry.log")));
    wait_for("ferry ready", Duration::from_secs(30), || std::net::TcpStream::connect(http).is_ok()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(delivered(&got, "FerryTargetDown").is_empty(), "nothing fires while the target is up");

    serving.abort();
    let _ = serving.await;
    let fired = wait_for("the firing alert, after one failed post", Duration::from_secs(10), || {
        !delivered(&got, "FerryTargetDown").is_empty()
    })
    .await;
    let (labels, annotations, resolved) = delivered(&got, "FerryTargetDown")[0].clone();
    assert!(!resolved, "firing first");
    assert_eq!(labels["region"], "east");
    assert_eq!(labels["target"], "orders-db");
    assert_eq!(labels["kind"], "tcp");
    assert_eq!(labels["severity"], "critical");
    assert!(annotations["summary"].as_str().unwrap().contains("orders-db"), "{annotations}");

    let again = TcpListener::bind(target_addr).await.unwrap();
    let _serving = serve(again);
    let back = wait_for("the resolved alert", Duration::from_secs(10), || {
        delivered(&got, "FerryTargetDown").iter().any(|(_, _, resolved)| *resolved)
    })
    .await;
    println!(
        "alert delivered {fired:?} after the target stopped (one 503 retried); resolved {back:?} after it came back"
    );
}

/// `ferry_watch_leader` of the instance at `http`.
async fn leading(http: std::net::SocketAddr) -> bool {
    match ferry::sandbox::http_get(http, "/metrics").await {
        Ok((200, m)) => m.lines().any(|l| l == "ferry_watch_leader 1"),
        _ => false,
    }
}

/// Posts that carried a firing `FerryTargetDown`.
fn firing_posts(got: &Mutex<Vec<serde_json::Value>>) -> usize {
    got.lock()
        .unwrap()
        .iter()
        .filter(|batch| {
            batch.as_array().is_some_and(|b| {
                b.iter().any(|a| a["labels"]["alertname"] == "FerryTargetDown" && a.get("endsAt").is_none())
            })
        })
        .count()
}

#[tokio::test]
async fn only_the_lease_holder_acts_and_the_other_takes_over_when_it_dies() {
    let redis = ferry::sandbox::RedisServer::start_temp("lease-redis").await.unwrap();
    let (am, got) = receiver(0).await;
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let mut serving = serve(target);
    let dir = tempfile::tempdir().unwrap();
    let lease = format!("  leader: {{ redis: \"{}\", ttl: 1500ms }}\n", redis.addr());
    let (a_cfg, a_http) = watch_config(dir.path(), "a", am, target_addr, &lease);
    let (b_cfg, b_http) = watch_config(dir.path(), "b", am, target_addr, &lease);
    let mut a = Some(Reaped(common::spawn_ferry(&a_cfg, &dir.path().join("a.log"))));
    let mut b = Some(Reaped(common::spawn_ferry(&b_cfg, &dir.path().join("b.log"))));
    let mut both = (false, false);
    wait_for("one leader", Duration::from_secs(15), || {
        both = futures_lite_poll(async move { (leading(a_http).await, leading(b_http).await) });
        both.0 ^ both.1
    })
    .await;
    // Both watch the target; only the leader posts when it goes down.
    serving.abort();
    let _ = serving.await;
    wait_for("a firing alert", Duration::from_secs(5), || firing_posts(&got) > 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(firing_posts(&got), 1, "one instance acted: {:#?}", got.lock().unwrap());
    serving = serve(TcpListener::bind(target_addr).await.unwrap());
    wait_for("the resolved alert", Duration::from_secs(5), || {
        delivered(&got, "FerryTargetDown").iter().any(|d| d.2)
    })
    .await;

    // Kill the leader; the other takes the lease over and acts, once.
    let (dead, survivor) = if both.0 { (&mut a, b_http) } else { (&mut b, a_http) };
    dead.take();
    let took_over =
        wait_for("the survivor leads", Duration::from_secs(10), || futures_lite_poll(leading(survivor)))
            .await;
    let before = firing_posts(&got);
    serving.abort();
    let _ = serving.await;
    wait_for("the new leader's alert", Duration::from_secs(5), || firing_posts(&got) > before).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(firing_posts(&got), before + 1, "the new leader acted once");
    println!("the survivor led {took_over:?} after the leader was killed (lease ttl 1.5 s)");
    drop((a, b));
}

/// Run a short future to completion from a synchronous check (the test's runtime is
/// current-thread, so a nested runtime on another thread does it).
fn futures_lite_poll<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(fut)
    })
    .join()
    .unwrap()
}

/// A one-shot HTTP server answering every request with `answer` (or never, if None).
async fn http_stub(answer: Option<&'static str>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                match answer {
                    Some(a) => {
                        let _ = s.write_all(a.as_bytes()).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn each_probe_kind_tells_healthy_from_not() {
    use ferry::config::{ProbeConfig, RedisRole, Secret};
    use ferry::watch::probe::{Credentials, Failure, probe};
    let t = Duration::from_secs(2);
    let none = Credentials::default();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };

    let ok = http_stub(Some("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nready")).await.to_string();
    let http = |address: &str, status: u16, body: Option<&str>| ProbeConfig::Http {
        address: address.to_string(),
        path: "/health/ready".into(),
        expect_status: status,
        body_contains: body.map(str::to_string),
    };
    assert_eq!(probe(&http(&ok, 200, Some("ready")), &none, t).await, Ok(()));
    let err = probe(&http(&ok, 200, Some("green")), &none, t).await.unwrap_err();
    assert!(err.reason().contains("without `green`"), "{err:?}");
    let err = probe(&http(&ok, 204, None), &none, t).await.unwrap_err();
    assert!(err.reason().contains("answered 200, expected 204"), "{err:?}");
    let silent = http_stub(None).await.to_string();
    let err = probe(&http(&silent, 200, None), &none, Duration::from_millis(200)).await.unwrap_err();
    assert!(err.reason().contains("no answer within"), "{err:?}");
    assert!(probe(&http(&closed, 200, None), &none, t).await.is_err());
    assert_eq!(probe(&ProbeConfig::Tcp { address: ok.clone() }, &none, t).await, Ok(()));
    assert!(probe(&ProbeConfig::Tcp { address: closed.clone() }, &none, t).await.is_err());

    let redis = ferry::sandbox::RedisServer::start_temp("probe-redis").await.unwrap();
    let r = |role| ProbeConfig::Redis { address: redis.addr().to_string(), role };
    assert_eq!(probe(&r(None), &none, t).await, Ok(()));
    assert_eq!(probe(&r(Some(RedisRole::Master)), &none, t).await, Ok(()));
    let err = probe(&r(Some(RedisRole::Replica)), &none, t).await.unwrap_err();
    assert!(err.reason().contains("ROLE is master"), "{err:?}");
    assert!(probe(&ProbeConfig::Redis { address: closed.clone(), role: None }, &none, t).await.is_err());

    let db = ferry::sandbox::MariaDb::start_temp(ferry::sandbox::MariaDbOptions::test("probe-db", 401, 4))
        .await
        .unwrap();
    let mysql = |db: &ferry::sandbox::MariaDb, heartbeat, max_replica_lag| ProbeConfig::Mysql {
        address: db.addr().to_string(),
        heartbeat,
        max_replica_lag,
    };
    let m = mysql(&db, false, None);
    let user = db.options().user.clone();
    let good = Credentials {
        mysql: Some((user.clone(), Secret::inline("ferry-test-pw"))),
        ..Credentials::default()
    };
    assert_eq!(probe(&m, &good, t).await, Ok(()));
    let bad = Credentials { mysql: Some((user, Secret::inline("wrong"))), ..Credentials::default() };
    let err = probe(&m, &bad, t).await.unwrap_err();
    assert!(
        matches!(&err, Failure::Credentials(r) if r.contains("connect") && r.contains("Access denied")),
        "a refused password is a credentials problem, not ill health: {err:?}"
    );
    // The heartbeat write needs the ferry schema and a writable server.
    let err = probe(&mysql(&db, true, None), &good, t).await.unwrap_err();
    assert!(err.reason().contains("heartbeat write"), "{err:?}");
    let mut c = db.conn().await.unwrap();
    ferry::schema::install(&mut c).await.unwrap();
    assert_eq!(probe(&mysql(&db, true, None), &good, t).await, Ok(()));
    let err = probe(&mysql(&db, false, Some(Duration::from_secs(5))), &good, t).await.unwrap_err();
    assert!(err.reason().contains("not a replica"), "{err:?}");
    let replica = ferry::sandbox::MariaDb::start_idle_replica(
        ferry::sandbox::MariaDbOptions::test("probe-replica", 402, 4),
        ferry::sandbox::ServerDir::temp("probe-replica").unwrap(),
    )
    .await
    .unwrap();
    let lagging = mysql(&replica, false, Some(Duration::from_secs(5)));
    replica.replicate_from(&db, false).await.unwrap();
    replica.wait_caught_up(&db).await.unwrap();
    assert_eq!(probe(&lagging, &good, t).await, Ok(()), "a running replica within the bound");
    let mut root = replica.root_conn().await.unwrap();
    root.query_drop("STOP SLAVE").await.unwrap();
    let err = probe(&lagging, &good, t).await.unwrap_err();
    assert!(err.reason().contains("not running"), "{err:?}");
}

/// A wrong password says nothing of the primary's health (issue 13, item 15): the probe's
/// "Access denied" is never counted as a failure, so a healthy primary is never failed over;
/// ferry is not ready with the reason and alerts `FerryProbeCredentials`.
#[tokio::test]
async fn a_wrong_password_never_fails_over_a_healthy_primary() {
    let db = ferry::sandbox::MariaDb::start_temp(ferry::sandbox::MariaDbOptions::test("creds-db", 101, 1))
        .await
        .unwrap();
    let (am, got) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let http = std::net::SocketAddr::from((
        [127, 0, 0, 1],
        ferry::sandbox::pick_port([127, 0, 0, 1].into(), None).unwrap(),
    ));
    let region = ferry::sandbox::region_yaml("east", &db, 1, 1, "127.0.0.1:9")
        .replace(&format!("password: {}", db.options().password), "password: not-the-password");
    let config = dir.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "region: east\nregions:\n{region}http: {{ listen: \"{http}\" }}\nwatch:\n  alertmanager: {{ url: \"http://{am}\" }}\n  \
             targets:\n    - name: db\n      probe: {{ mysql: {{ address: \"{}\" }} }}\n      interval: 500ms\n      \
             timeout: 500ms\n      failure_threshold: 2\n      recovery_threshold: 2\n      \
             failover: {{ primary: mysql, record: db.east }}\n\
             failover:\n  dns: {{ server: \"127.0.0.1:9\", zone: psi.test, key_name: k, key: c2VjcmV0 }}\n",
            db.addr()
        ),
    )
    .unwrap();
    let _ferry = Reaped(common::spawn_ferry(&config, &dir.path().join("ferry.log")));
    let log = || std::fs::read_to_string(dir.path().join("ferry.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) =
            ferry::sandbox::http_get(http, "/health/ready").await.unwrap_or((0, String::new()));
        if code == 503 && body.contains("refuses ferry's credentials") && body.contains("Access denied") {
            break;
        }
        assert!(Instant::now() < deadline, "never not-ready for the credentials: {code} {body}\n{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("the FerryProbeCredentials alert", Duration::from_secs(10), || {
        !delivered(&got, "FerryProbeCredentials").is_empty()
    })
    .await;
    // Eight more probe intervals: far past the failure threshold of two.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, metrics) = ferry::sandbox::http_get(http, "/metrics").await.unwrap();
    assert!(metrics.contains("ferry_watch_credentials_refused{target=\"db\"} 1"), "{metrics}");
    let attempts: Vec<&str> = metrics.lines().filter(|l| l.starts_with("ferry_failover_total{")).collect();
    assert!(attempts.is_empty(), "no failover was attempted: {attempts:?}\n{}", log());
    assert!(!log().contains("failover"), "nothing about a failover in the log:\n{}", log());
    assert!(delivered(&got, "FerryTargetDown").is_empty(), "the target was never called down");
}
