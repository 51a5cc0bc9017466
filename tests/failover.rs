//! In-region failover in the sandbox, against real MariaDB, Redis and Knot: a client that
//! finds the primary through its DNS name keeps writing across the failover, and nothing it
//! saw acknowledged is lost; a frozen primary is fenced when it resumes; a killed Redis
//! primary is replaced and rejoins as a replica when it returns. Each test prints the times
//! it measured.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Sandbox;
use ferry::failover::dns::{Authority, addresses};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

/// The sandbox's primary targets: probed every second, Down after 5 failures.
const INTERVAL: Duration = Duration::from_secs(1);
const FAILURES: u32 = 5;

fn authority(sb: &Sandbox) -> Authority {
    Authority {
        server: sb.state.dns.server.parse().unwrap(),
        zone: sb.state.dns.zone.clone(),
        key_name: sb.state.dns.tsig.name.clone(),
        key: ferry::model::base64::decode(&sb.state.dns.tsig.secret).unwrap(),
    }
}

fn password(sb: &Sandbox) -> String {
    std::fs::read_to_string(sb.dir.join("secrets").join("mysql-password")).unwrap()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {signal} {pid}");
}

/// Numbers the writer saw acknowledged, with when and by which server.
type Acked = Arc<Mutex<Vec<(u64, Instant, IpAddr)>>>;

/// The first acknowledgement by `server` after `t`.
fn first_ack(acked: &Acked, t: Instant, server: IpAddr) -> Option<Instant> {
    acked.lock().unwrap().iter().find(|(_, at, by)| *at > t && *by == server).map(|(_, at, _)| *at)
}

/// A client of the PSI application: resolves `name` through the sandbox's DNS server on every
/// (re)connect, connects as `app` (ports by address, as a client knows its service's port),
/// and inserts uniquely numbered customers, one per statement, each bounded by 1 s. A failed
/// or unanswered statement is never counted: only what was acknowledged is.
struct Writer {
    acked: Acked,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(sb: &Sandbox, region: &str) -> Self {
        let mysql = &sb.state.regions[region].mysql;
        let ports: BTreeMap<IpAddr, u16> =
            [&mysql.primary, &mysql.replica].into_iter().map(|d| (d.host, d.port)).collect();
        let (authority, password) = (authority(sb), password(sb));
        let name = format!("db.{region}.{}", sb.state.dns.zone);
        let acked: Acked = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s, region) = (acked.clone(), stop.clone(), region.to_string());
        let task = tokio::spawn(async move {
            let mut conn: Option<(Conn, IpAddr)> = None;
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let Some((c, by)) = conn.as_mut() else {
                    let ip = match addresses(&authority, &name).await {
                        Ok(found) if found.len() == 1 => IpAddr::V4(found[0]),
                        _ => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let opts = OptsBuilder::default()
                        .ip_or_hostname(ip.to_string())
                        .tcp_port(ports[&ip])
                        .user(Some(ferry::sandbox::APP_USER))
                        .pass(Some(password.clone()))
                        .prefer_socket(false);
                    match tokio::time::timeout(Duration::from_secs(1), Conn::new(opts)).await {
                        Ok(Ok(c)) => conn = Some((c, ip)),
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    continue;
                };
                n += 1;
                let insert = c.exec_drop(
                    "INSERT INTO psi.customers (name, email, region) VALUES (?, ?, ?)",
                    (format!("w{n}"), format!("w{n}@writer"), &region),
                );
                match tokio::time::timeout(Duration::from_secs(1), insert).await {
                    Ok(Ok(())) => a.lock().unwrap().push((n, Instant::now(), *by)),
                    // Dropped, not closed politely: the server may be gone or frozen.
                    _ => conn = None,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self { acked, stop, task }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The first acknowledgement by `server` after `t`.
    fn first_after(&self, t: Instant, server: IpAddr) -> Option<Instant> {
        first_ack(&self.acked, t, server)
    }

    async fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.acked.lock().unwrap().iter().map(|(n, ..)| *n).collect()
    }
}

async fn wait_for<F: FnMut() -> bool>(what: &str, within: Duration, mut done: F) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The watch journal of the ferry whose HTTP listener is `url` (`/status`).
async fn journal(url: &str) -> Vec<serde_json::Value> {
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let (_, body) = ferry::sandbox::http_get(addr, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["details"]["watch"]["journal"].as_array().cloned().unwrap_or_default()
}

/// The first entry of that journal `matches` accepts, waited for.
async fn wait_entry(
    url: &str,
    what: &str,
    within: Duration,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let journal = journal(url).await;
        if let Some(entry) = journal.iter().find(|e| matches(e)) {
            return entry.clone();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}: {journal:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The journal's entry for `target`'s first failover, waited for; it must be `done`.
async fn failover_entry(sb: &Sandbox, region: &str, target: &str, within: Duration) -> serde_json::Value {
    let url = &sb.state.regions[region].ferry.http_url;
    let entry = wait_entry(url, &format!("failover of {target}"), within, |e| {
        e["target"] == target && e["kind"] == "failover"
    })
    .await;
    assert_eq!(entry["what"], "done", "failover of {target}: {entry:#}");
    entry
}

/// What the journal says became of the old primary `old`, waited for.
async fn old_primary_outcome(sb: &Sandbox, region: &str, old: &str, within: Duration) -> String {
    let url = &sb.state.regions[region].ferry.http_url;
    let entry = wait_entry(url, &format!("{old} settled"), within, |e| {
        e["kind"] == "old_primary" && e["what"] == old
    })
    .await;
    entry["detail"].as_str().unwrap_or_default().to_string()
}

/// When (Unix ms) `target` was called Down, from the journal.
async fn down_at(sb: &Sandbox, region: &str, target: &str) -> u64 {
    let journal = journal(&sb.state.regions[region].ferry.http_url).await;
    journal
        .iter()
        .find(|e| e["target"] == target && e["kind"] == "transition" && e["what"] == "down")
        .and_then(|e| e["at_unix_ms"].as_u64())
        .unwrap_or_else(|| panic!("no Down of {target} in {journal:#?}"))
}

fn phases(report: &serde_json::Value) -> Vec<(String, f64)> {
    report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_f64().unwrap()))
        .collect()
}

async fn ferry_conn(db: &ferry::sandbox::DbState) -> Conn {
    Conn::new(mysql_async::Opts::from_url(&db.dsn).unwrap()).await.unwrap()
}

/// Every acknowledged number is a row on `db`; returns how many rows the writer left there.
async fn assert_all_acked_on(db: &ferry::sandbox::DbState, acked: &[u64]) -> usize {
    let mut conn = ferry_conn(db).await;
    let names: Vec<String> =
        conn.query("SELECT name FROM psi.customers WHERE email LIKE '%@writer'").await.unwrap();
    conn.disconnect().await.ok();
    let have: std::collections::BTreeSet<u64> =
        names.iter().filter_map(|n| n.strip_prefix('w')).filter_map(|n| n.parse().ok()).collect();
    let lost: Vec<u64> = acked.iter().copied().filter(|n| !have.contains(n)).collect();
    assert!(lost.is_empty(), "{} acknowledged insert(s) missing on the new primary: {lost:?}", lost.len());
    have.len()
}

#[tokio::test]
async fn a_killed_mariadb_primary_is_replaced_and_no_acknowledged_insert_is_lost() {
    let sb = Sandbox::up();
    let east = sb.state.regions["east"].clone();
    let writer = Writer::start(&sb, "east");
    wait_for("first writes", Duration::from_secs(20), || writer.count() >= 50).await;

    // How it was started, to start it again later.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", east.mysql.primary.process.pid)).unwrap();
    let killed = Instant::now();
    let killed_ms = unix_ms();
    signal(east.mysql.primary.process.pid, "-9");
    let entry = failover_entry(&sb, "east", "db", Duration::from_secs(30)).await;
    let detection = Duration::from_millis(down_at(&sb, "east", "db").await.saturating_sub(killed_ms));
    wait_for("writes on the new primary", Duration::from_secs(20), || {
        writer.first_after(killed, east.mysql.replica.host).is_some()
    })
    .await;
    let resumed = writer.first_after(killed, east.mysql.replica.host).unwrap() - killed;
    let before = writer.count();
    wait_for("more writes", Duration::from_secs(20), || writer.count() >= before + 50).await;
    let acked = writer.finish().await;

    let report = &entry["report"];
    assert_eq!(
        report["new"],
        format!(
            "{}:{} (server_id {})",
            east.mysql.replica.host, east.mysql.replica.port, east.mysql.replica.server_id
        )
    );
    assert_eq!(report["lost"], 0, "{report:#}");
    let dns = addresses(&authority(&sb), &format!("db.east.{}", sb.state.dns.zone)).await.unwrap();
    assert_eq!(
        dns,
        [match east.mysql.replica.host {
            IpAddr::V4(ip) => ip,
            other => panic!("{other}"),
        }]
    );
    let rows = assert_all_acked_on(&east.mysql.replica, &acked).await;
    // Clients behind the region's HAProxy database frontend reach the new primary too.
    assert!(report["haproxy"].is_string(), "{report:#}");
    let front: SocketAddr = east.haproxy.db_frontend.as_deref().unwrap().parse().unwrap();
    let through = OptsBuilder::default()
        .ip_or_hostname(front.ip().to_string())
        .tcp_port(front.port())
        .user(Some(ferry::sandbox::APP_USER))
        .pass(Some(password(&sb)))
        .prefer_socket(false);
    let mut c = Conn::new(through).await.unwrap();
    let id: Option<u32> = c.query_first("SELECT @@server_id").await.unwrap();
    assert_eq!(id, Some(east.mysql.replica.server_id), "through HAProxy {front}");
    c.disconnect().await.ok();
    let promotion: f64 = phases(&entry["report"]).iter().filter(|(p, _)| p != "detect").map(|(_, s)| s).sum();
    println!(
        "mariadb kill -9: detected (Down) {detection:?} after the kill (bound {:?}); promotion + DNS + verify {:.3} s \
         {:?}; the writer's first acknowledged insert through db.east came {resumed:?} after the kill; \
         {} acknowledged inserts, all {} on the new primary ({rows} rows there)",
        INTERVAL * (FAILURES + 1),
        promotion,
        phases(&entry["report"]),
        acked.len(),
        acked.len()
    );
    assert!(detection <= INTERVAL * (FAILURES + 1), "detected after {detection:?}");

    // Capture follows the new primary: the last insert reaches west.
    let last = format!("w{}", acked.last().unwrap());
    let mut west = ferry_conn(&sb.state.regions["west"].mysql.primary).await;
    let started = Instant::now();
    loop {
        let found: Option<String> =
            west.exec_first("SELECT name FROM psi.customers WHERE name = ?", (&last,)).await.unwrap();
        if found.is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{last} never reached west");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked_on_west: Option<i64> =
        west.query_first("SELECT COUNT(*) FROM psi.customers WHERE email LIKE '%@writer'").await.unwrap();
    assert!(
        acked_on_west.unwrap() as usize >= acked.len(),
        "west has {acked_on_west:?} of {} rows",
        acked.len()
    );
    println!(
        "capture followed the new primary: {last} reached west {:?} after the writer stopped",
        started.elapsed()
    );

    // The old primary comes back (writable, as it was started): ferry fences it at once and
    // lets it rejoin as a replica, unless it holds a commit the new primary never received
    // (one in flight at the kill), in which case it stays fenced. Either way no client can
    // write to it, and it is never the primary again on its own.
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let restarted = std::process::Command::new(&args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _restarted = common::Reaped(restarted);
    let back = Instant::now();
    let old = format!("{}:{}", east.mysql.primary.host, east.mysql.primary.port);
    let outcome = old_primary_outcome(&sb, "east", &old, Duration::from_secs(60)).await;
    let settled = back.elapsed();
    let mut o = ferry_conn(&east.mysql.primary).await;
    let read_only: Option<i64> = o.query_first("SELECT @@read_only").await.unwrap();
    assert_eq!(read_only, Some(1), "{outcome}");
    if outcome.contains("rejoined") {
        // It replicates from the new primary: a row written there arrives.
        let mut n = ferry_conn(&east.mysql.replica).await;
        n.query_drop(
            "INSERT INTO psi.customers (name, email, region) VALUES ('after', 'after@rejoin', 'east')",
        )
        .await
        .unwrap();
        let started = Instant::now();
        while o
            .query_first::<String, _>("SELECT name FROM psi.customers WHERE email = 'after@rejoin'")
            .await
            .unwrap()
            .is_none()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the rejoined old primary does not replicate"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        assert!(outcome.contains("left for an operator"), "{outcome}");
    }
    let db = &sb.status("east").await["details"]["watch"]["targets"]["db"];
    assert_eq!(db["primary"], format!("{}:{}", east.mysql.replica.host, east.mysql.replica.port), "{db:#}");
    println!("restarted old primary settled {settled:?} after it started: {outcome}");
}

#[tokio::test]
async fn a_frozen_mariadb_primary_is_fenced_when_it_resumes() {
    let sb = Sandbox::up();
    let west = sb.state.regions["west"].clone();
    let writer = Writer::start(&sb, "west");
    wait_for("first writes", Duration::from_secs(20), || writer.count() >= 50).await;

    let frozen = Instant::now();
    signal(west.mysql.primary.process.pid, "-STOP");
    let entry = failover_entry(&sb, "west", "db", Duration::from_secs(30)).await;
    let promoted = frozen.elapsed();
    wait_for("writes on the new primary", Duration::from_secs(20), || {
        writer.first_after(frozen, west.mysql.replica.host).is_some()
    })
    .await;
    let resumed = writer.first_after(frozen, west.mysql.replica.host).unwrap() - frozen;
    signal(west.mysql.primary.process.pid, "-CONT");
    let thawed = Instant::now();

    // The loop fences it at its first answer.
    let old = format!("{}:{}", west.mysql.primary.host, west.mysql.primary.port);
    let outcome = old_primary_outcome(&sb, "west", &old, Duration::from_secs(30)).await;
    let fenced_after = thawed.elapsed();
    let acked = writer.finish().await;

    // No client write is accepted there any more.
    let app = OptsBuilder::default()
        .ip_or_hostname(west.mysql.primary.host.to_string())
        .tcp_port(west.mysql.primary.port)
        .user(Some(ferry::sandbox::APP_USER))
        .pass(Some(password(&sb)))
        .prefer_socket(false);
    let mut conn = Conn::new(app).await.unwrap();
    let refused = conn
        .exec_drop(
            "INSERT INTO psi.customers (name, email, region) VALUES ('late', 'late@writer', 'west')",
            (),
        )
        .await
        .expect_err("the fenced old primary accepted a write");
    assert!(refused.to_string().contains("read-only"), "{refused}");
    let rows = assert_all_acked_on(&west.mysql.replica, &acked).await;
    println!(
        "mariadb SIGSTOP: promoted {promoted:?} after the freeze (phases {:?}); the writer's first acknowledged \
         insert through db.west came {resumed:?} after the freeze; resumed old primary fenced {fenced_after:?} \
         after SIGCONT: {outcome}; it refuses writes ({refused}); {} acknowledged inserts, none lost ({rows} rows)",
        phases(&entry["report"]),
        acked.len()
    );

    // Left fenced, it is counted until an operator rebuilds it as a replica of the new primary;
    // then ferry notices and stops alerting.
    if outcome.contains("left for an operator") {
        let metric = |sb: &Sandbox| {
            let addr: SocketAddr =
                sb.state.regions["west"].ferry.http_url.trim_start_matches("http://").parse().unwrap();
            async move {
                let (_, body) = ferry::sandbox::http_get(addr, "/metrics").await.unwrap();
                body.lines()
                    .find_map(|l| l.strip_prefix("ferry_failover_old_primary_fenced "))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            }
        };
        wait_for_async("fenced counted", Duration::from_secs(10), || async { metric(&sb).await == "1" })
            .await;
        let mut new = ferry_conn(&west.mysql.replica).await;
        let position: Option<String> = new.query_first("SELECT @@gtid_binlog_pos").await.unwrap();
        let mut old = ferry_conn(&west.mysql.primary).await;
        for sql in [
            "STOP SLAVE".to_string(),
            "RESET SLAVE ALL".to_string(),
            format!("SET GLOBAL gtid_slave_pos = '{}'", position.unwrap()),
            format!(
                "CHANGE MASTER TO MASTER_HOST = '{}', MASTER_PORT = {}, MASTER_USER = 'ferry', MASTER_PASSWORD = '{}', \
                 MASTER_USE_GTID = slave_pos",
                west.mysql.replica.host,
                west.mysql.replica.port,
                password(&sb)
            ),
            // A stand-in for a rebuild: the old primary still holds its own rows, so let the
            // replicated ones overwrite them instead of stopping on duplicates.
            "SET GLOBAL slave_exec_mode = 'IDEMPOTENT'".to_string(),
            "START SLAVE".to_string(),
        ] {
            old.query_drop(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let rebuilt = Instant::now();
        wait_for_async("fenced cleared", Duration::from_secs(20), || async { metric(&sb).await == "0" })
            .await;
        println!(
            "operator rebuilt the fenced old primary: ferry stopped counting it {:?} later",
            rebuilt.elapsed()
        );
    } else {
        // It held nothing the new primary lacked, so ferry let it rejoin: no rebuild to do,
        // but say so and check it really replicates from the new primary.
        assert!(outcome.contains("rejoined as a replica"), "an outcome this test knows: {outcome}");
        let mut old = ferry_conn(&west.mysql.primary).await;
        let status: Option<mysql_async::Row> = old.query_first("SHOW SLAVE STATUS").await.unwrap();
        let status = status.expect("the old primary replicates");
        let master: Option<String> = status.get("Master_Port").map(|p: u16| p.to_string());
        assert_eq!(master, Some(west.mysql.replica.port.to_string()), "it replicates from the new primary");
        println!(
            "the old primary rejoined by itself: the operator-rebuild branch had nothing to do this run"
        );
    }
}

async fn wait_for_async<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_killed_redis_primary_is_replaced_and_rejoins_as_a_replica() {
    let sb = Sandbox::up();
    let east = sb.state.regions["east"].clone();
    let auth = authority(&sb);
    let name = format!("redis.east.{}", sb.state.dns.zone);
    let ports: BTreeMap<IpAddr, u16> = [&east.redis.primary, &east.redis.replica]
        .into_iter()
        .map(|r| r.address.parse::<SocketAddr>().unwrap())
        .map(|a| (a.ip(), a.port()))
        .collect();
    // A client writing through the name, reconnecting (and re-resolving) after any error.
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (acked, stop, auth, name, ports) =
            (acked.clone(), stop.clone(), auth.clone(), name.clone(), ports.clone());
        tokio::spawn(async move {
            let mut conn = None;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Some((c, by)) = conn.as_mut() else {
                    if let Ok(found) = addresses(&auth, &name).await
                        && let [ip] = found.as_slice()
                    {
                        let addr = SocketAddr::new(IpAddr::V4(*ip), ports[&IpAddr::V4(*ip)]);
                        conn = ferry::failover::redis_promote::connect(addr, None)
                            .await
                            .ok()
                            .map(|c| (c, addr.ip()));
                    }
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                };
                n += 1;
                let mut command = redis::cmd("SET");
                command.arg(format!("w{n}")).arg(n);
                let set = command.query_async::<()>(c);
                match tokio::time::timeout(Duration::from_secs(1), set).await {
                    Ok(Ok(())) => acked.lock().unwrap().push((n, Instant::now(), *by)),
                    _ => conn = None,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_for("first writes", Duration::from_secs(20), || acked.lock().unwrap().len() >= 50).await;

    let killed = Instant::now();
    let killed_ms = unix_ms();
    signal(east.redis.primary.process.pid, "-9");
    let entry = failover_entry(&sb, "east", "redis", Duration::from_secs(30)).await;
    let detection = Duration::from_millis(down_at(&sb, "east", "redis").await.saturating_sub(killed_ms));
    let replica_ip = east.redis.replica.address.parse::<SocketAddr>().unwrap().ip();
    let first_after = || first_ack(&acked, killed, replica_ip);
    wait_for("writes on the promoted replica", Duration::from_secs(20), || first_after().is_some()).await;
    let resumed = first_after().unwrap() - killed;
    assert_eq!(entry["report"]["new"], east.redis.replica.address);
    let dns = addresses(&auth, &name).await.unwrap();
    assert_eq!(
        dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [east.redis.replica.address.split(':').next().unwrap()]
    );

    // The old primary comes back empty (no persistence) and as a master: ferry makes it follow.
    let old: SocketAddr = east.redis.primary.address.parse().unwrap();
    let restarted = std::process::Command::new("redis-server")
        .args(["--bind", &old.ip().to_string(), "--port", &old.port().to_string()])
        .args(["--replica-announce-ip", &old.ip().to_string()])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--repl-diskless-sync-delay",
            "0",
        ])
        .arg("--dir")
        .arg(sb.dir.join("east").join("redis-primary"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _restarted = common::Reaped(restarted);
    let started = Instant::now();
    loop {
        if let Ok(mut c) = ferry::failover::redis_promote::connect(old, None).await
            && let Ok((role, _)) = ferry::failover::redis_promote::role(&mut c).await
            && role == "slave"
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the old Redis primary never became a replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rejoined = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let acked: Vec<(u64, Instant)> = acked.lock().unwrap().iter().map(|(n, at, _)| (*n, *at)).collect();

    // What was acknowledged is on the promoted replica; Redis replication is asynchronous, so
    // writes acknowledged in the last moment before the kill may be missing: counted, not hidden.
    let new: SocketAddr = east.redis.replica.address.parse().unwrap();
    let mut c = ferry::failover::redis_promote::connect(new, None).await.unwrap();
    let mut missing_before = 0;
    for (n, at) in &acked {
        let got: Option<u64> = redis::cmd("GET").arg(format!("w{n}")).query_async(&mut c).await.unwrap();
        if got != Some(*n) {
            assert!(*at < killed, "w{n}, acknowledged by the promoted replica, is missing");
            missing_before += 1;
        }
    }

    // A planned switchover back to the restarted server: FAILOVER TO loses nothing, DNS follows,
    // and the watch loop follows the primary.
    let switch = std::process::Command::new(common::FERRY)
        .args(["switchover", "redis", "--config"])
        .arg(&east.ferry.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&switch.stdout);
    assert!(switch.status.success(), "{text}{}", String::from_utf8_lossy(&switch.stderr));
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["new"], east.redis.primary.address, "{report:#}");
    let dns = addresses(&auth, &name).await.unwrap();
    assert_eq!(dns.iter().map(ToString::to_string).collect::<Vec<_>>(), [old.ip().to_string()]);
    let mut back = ferry::failover::redis_promote::connect(old, None).await.unwrap();
    let last = acked.last().unwrap().0;
    let got: Option<u64> = redis::cmd("GET").arg(format!("w{last}")).query_async(&mut back).await.unwrap();
    assert_eq!(got, Some(last), "the last acknowledged SET survives the switchover");
    let started = Instant::now();
    loop {
        let status = sb.status("east").await;
        if status["details"]["watch"]["targets"]["redis"]["primary"] == east.redis.primary.address.as_str() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the watch loop did not follow: {status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("redis switchover back to {old}: phases {:?}", phases(&report));

    println!(
        "redis kill -9: detected (Down) {detection:?} after the kill; phases {:?}; the client's first acknowledged \
         SET through {name} came {resumed:?} after the kill (Redis Sentinel reference on this machine: 6.2 s with \
         a 5 s down-after); restarted old primary was a replica {rejoined:?} after it started; {} acknowledged \
         SETs, {missing_before} of those acknowledged before the kill missing on the promoted replica",
        phases(&entry["report"]),
        acked.len()
    );
}

fn failover_region(sb: &Sandbox, confirm: bool) -> (i32, serde_json::Value) {
    let config = &sb.state.regions["west"].ferry.config;
    let mut cmd = std::process::Command::new(common::FERRY);
    cmd.args(["failover", "region", "--from", "east", "--to", "west", "--json", "--config"]).arg(config);
    if confirm {
        cmd.arg("--confirm");
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let report = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

fn unapplied(report: &serde_json::Value) -> Vec<String> {
    report["rpo"]["Ok"]["transactions"]
        .as_array()
        .unwrap_or_else(|| panic!("no RPO in {report:#}"))
        .iter()
        .map(|t| t["gtid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_region_failover_switches_dns_and_reports_what_the_standby_had_not_applied() {
    let sb = Sandbox::up();
    let (east, west) = (sb.state.regions["east"].clone(), sb.state.regions["west"].clone());
    // West applies east's first transactions, then stops applying: what east commits from now
    // on is published but not applied in west.
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(west.ferry.process.pid, "-9");
    let mut conn = ferry_conn(&east.mysql.primary).await;
    let mut written = Vec::new();
    for i in 0..25 {
        conn.exec_drop(
            "INSERT INTO psi.customers (name, email, region) VALUES (?, ?, 'east')",
            (format!("r{i}"), format!("r{i}@region")),
        )
        .await
        .unwrap();
        let gtid: Option<String> = conn.query_first("SELECT @@last_gtid").await.unwrap();
        written.push(gtid.unwrap());
    }
    conn.disconnect().await.ok();

    // The plan (no --confirm) already reports them once east's capture has published them.
    let started = Instant::now();
    let planned = loop {
        let (code, report) = failover_region(&sb, false);
        assert_eq!(code, 0, "{report:#}");
        let have = unapplied(&report);
        if written.iter().all(|g| have.contains(g)) {
            break report;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not all published: {report:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(planned["result"], "planned");
    let auth = authority(&sb);
    let zone = sb.state.dns.zone.clone();
    let east_db = addresses(&auth, &format!("db.east.{zone}")).await.unwrap();
    assert_eq!(
        east_db.iter().map(|a| IpAddr::V4(*a)).collect::<Vec<_>>(),
        [east.mysql.primary.host],
        "a plan changes nothing"
    );

    // The whole east region goes down.
    for pid in [
        east.ferry.process.pid,
        east.mysql.primary.process.pid,
        east.mysql.replica.process.pid,
        east.redis.primary.process.pid,
        east.redis.replica.process.pid,
    ] {
        signal(pid, "-9");
    }
    let switching = Instant::now();
    let (code, report) = failover_region(&sb, true);
    let took = switching.elapsed();
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["result"], "done", "{report:#}");
    for (service, want) in [
        ("db", west.mysql.primary.host.to_string()),
        ("redis", west.redis.primary.address.split(':').next().unwrap().to_string()),
        (
            "app",
            west.haproxy.frontend_url.trim_start_matches("http://").split(':').next().unwrap().to_string(),
        ),
    ] {
        let now = addresses(&auth, &format!("{service}.east.{zone}")).await.unwrap();
        assert_eq!(now.iter().map(ToString::to_string).collect::<Vec<_>>(), [want], "{service}.east");
    }
    // The RPO is exactly what east committed after west stopped applying, checked against what
    // west's ferry.applied says it applied.
    let mut reported = unapplied(&report);
    reported.sort();
    let mut expected = written.clone();
    expected.sort();
    assert_eq!(reported, expected, "{report:#}");
    let mut w = ferry_conn(&west.mysql.primary).await;
    let applied: Option<String> =
        w.query_first("SELECT gtid FROM ferry.applied WHERE origin = 'east'").await.unwrap();
    assert_eq!(report["rpo"]["Ok"]["applied_gtid"].as_str(), applied.as_deref());
    let kept: Option<(String, i64)> = w
        .query_first(
            "SELECT result, unapplied FROM ferry.failovers WHERE kind = 'region' ORDER BY id DESC LIMIT 1",
        )
        .await
        .unwrap();
    assert_eq!(kept, Some(("done".to_string(), written.len() as i64)));
    println!(
        "region failover east → west: {} records switched in {took:?}; RPO {} transaction(s) published by east and \
         not applied in west ({} → {}), {} heartbeat(s) besides; report kept in ferry.failovers",
        report["records"].as_array().unwrap().len(),
        reported.len(),
        reported.first().unwrap(),
        reported.last().unwrap(),
        report["rpo"]["Ok"]["heartbeats"]
    );
}

#[tokio::test]
async fn automatic_region_failover_waits_out_a_partition_and_switches_when_the_region_is_down() {
    let sb = Sandbox::up();
    let (east, west) = (sb.state.regions["east"].clone(), sb.state.regions["west"].clone());
    // A second ferry in west that only watches east: the region is its app frontend, confirmed
    // by east's own ferry being silent too.
    let mut config = ferry::config::load(&west.ferry.config).unwrap();
    config.capture = None;
    config.apply = None;
    let listen_ip: IpAddr = "127.77.2.9".parse().unwrap();
    config.http.listen = SocketAddr::new(listen_ip, ferry::sandbox::pick_port(listen_ip, None).unwrap());
    let east_front = east.haproxy.frontend_url.trim_start_matches("http://").to_string();
    let east_ferry = east.ferry.http_url.trim_start_matches("http://").to_string();
    let confirm = Duration::from_secs(3);
    let watch = config.watch.as_mut().unwrap();
    watch.targets = vec![ferry::config::TargetConfig {
        name: "region-east".into(),
        probe: ferry::config::ProbeConfig::Http {
            address: east_front,
            path: "/health/ready".into(),
            expect_status: 200,
            body_contains: None,
        },
        interval: INTERVAL,
        timeout: Duration::from_millis(500),
        failure_threshold: 2,
        recovery_threshold: 2,
        lb: None,
        failover: Some(ferry::config::TargetFailover {
            primary: None,
            record: None,
            haproxy: None,
            region: Some("east".into()),
            ferry: Some(east_ferry),
            confirm,
        }),
    }];
    let path = sb.dir.join("west").join("region-watch.yaml");
    std::fs::write(&path, serde_saphyr::to_string(&config).unwrap()).unwrap();
    let _watcher = common::Reaped(common::spawn_ferry(&path, &sb.dir.join("west").join("region-watch.log")));
    // A third, cut off from east altogether: east's ferry is out of its reach too (an address
    // that answers nothing). Only east's heartbeats, arriving in west through east's topic,
    // tell it that east is up.
    let mut cut_off = config.clone();
    cut_off.http.listen = SocketAddr::new(listen_ip, ferry::sandbox::pick_port(listen_ip, None).unwrap());
    let unreachable = SocketAddr::new(listen_ip, ferry::sandbox::pick_port(listen_ip, None).unwrap());
    cut_off.watch.as_mut().unwrap().targets[0].failover.as_mut().unwrap().ferry =
        Some(unreachable.to_string());
    let cut_off_path = sb.dir.join("west").join("region-watch-cut-off.yaml");
    std::fs::write(&cut_off_path, serde_saphyr::to_string(&cut_off).unwrap()).unwrap();
    let cut_off_watcher = common::Reaped(common::spawn_ferry(
        &cut_off_path,
        &sb.dir.join("west").join("region-watch-cut-off.log"),
    ));
    common::wait_ready(config.http.listen).await;
    common::wait_ready(cut_off.http.listen).await;
    let watcher_url = format!("http://{}", config.http.listen);
    let cut_off_url = format!("http://{}", cut_off.http.listen);
    let decided =
        |what: &'static str| move |e: &serde_json::Value| e["kind"] == "region_failover" && e["what"] == what;
    let auth = authority(&sb);
    let zone = sb.state.dns.zone.clone();
    let app_east_name = format!("app.east.{zone}");
    let app_east = || addresses(&auth, &app_east_name);
    let east_front_ip =
        east.haproxy.frontend_url.trim_start_matches("http://").split(':').next().unwrap().to_string();

    // East's frontend dies, east's ferry still answers: a partition, nothing switched.
    signal(east.haproxy.process.pid, "-9");
    let cut = Instant::now();
    let partition =
        wait_entry(&watcher_url, "a partition decision", Duration::from_secs(20), decided("partition")).await;
    let waited = cut.elapsed();
    assert!(waited >= confirm, "decided after {waited:?}, before the {confirm:?} window");
    assert_eq!(
        app_east().await.unwrap().iter().map(ToString::to_string).collect::<Vec<_>>(),
        std::slice::from_ref(&east_front_ip)
    );
    // The observer cut off from east's frontend and east's ferry: east's heartbeats still
    // arrive, so it is a partition too, and nothing is switched.
    let cut_off_partition = wait_entry(
        &cut_off_url,
        "the cut-off observer's decision",
        Duration::from_secs(20),
        decided("partition"),
    )
    .await;
    assert!(
        cut_off_partition["detail"].as_str().unwrap_or_default().contains("heartbeats still arrive"),
        "{cut_off_partition}"
    );
    assert_eq!(
        app_east().await.unwrap().iter().map(ToString::to_string).collect::<Vec<_>>(),
        std::slice::from_ref(&east_front_ip),
        "nothing switched"
    );
    drop(cut_off_watcher);

    // East's ferry goes too: the region is down. The switch follows.
    signal(east.ferry.process.pid, "-9");
    let silent = Instant::now();
    let entry = wait_entry(&watcher_url, "a region failover", Duration::from_secs(30), decided("done")).await;
    let switched = silent.elapsed();
    let west_front_ip =
        west.haproxy.frontend_url.trim_start_matches("http://").split(':').next().unwrap().to_string();
    assert_eq!(
        app_east().await.unwrap().iter().map(ToString::to_string).collect::<Vec<_>>(),
        [west_front_ip]
    );
    let db_east = addresses(&auth, &format!("db.east.{zone}")).await.unwrap();
    assert_eq!(db_east.iter().map(|a| IpAddr::V4(*a)).collect::<Vec<_>>(), [west.mysql.primary.host]);
    println!(
        "automatic region failover (confirm {confirm:?}): partition recognised {waited:?} after east's frontend died \
         ({}; cut-off observer: {}); switched {switched:?} after east's ferry went silent too; records {}",
        partition["detail"], cut_off_partition["detail"], entry["report"]["records"]
    );
}
