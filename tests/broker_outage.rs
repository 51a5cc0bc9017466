//! A broker outage is visible and short: with the broker frozen (SIGSTOP) for 20 s while east
//! keeps writing, both regions' ferries say so within seconds (log, `/health/ready`,
//! `ferry_kafka_reachable`), west's end-to-end lag grows instead of standing still, and once
//! the broker is back west applies east's writes again within 2 s (issue 13, item 17).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry::sandbox::{Broker, MariaDb, http_get};
use mysql_async::prelude::Queryable;

mod common;
use common::{Reaped, region_config, spawn_ferry, two_regions, wait_ready};

const FREEZE: Duration = Duration::from_secs(20);

async fn customers(db: &MariaDb) -> i64 {
    let mut c = db.conn().await.unwrap();
    c.query_first("SELECT COUNT(*) FROM psi.customers").await.unwrap().unwrap_or(0)
}

/// The value of the first sample of `metric` (name and labels, as exported) in `text`.
fn sample(text: &str, metric: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(metric)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn signal(broker: &Broker, signal: i32) {
    // SAFETY: kill(2) on the broker this test started and still owns.
    let sent = unsafe { libc::kill(broker.process().pid() as i32, signal) };
    assert_eq!(sent, 0, "signal {signal} to the broker");
}

async fn metrics(http: std::net::SocketAddr) -> String {
    http_get(http, "/metrics").await.map(|(_, m)| m).unwrap_or_default()
}

#[tokio::test]
async fn a_frozen_broker_is_reported_within_seconds_and_apply_resumes_within_two_seconds_of_its_return() {
    let (east, west, broker) = two_regions().await;
    let dir = tempfile::tempdir().unwrap();
    let regions = [("east", &east), ("west", &west)];
    let (east_cfg, east_http) = region_config(dir.path(), "east", &regions, &broker.bootstrap());
    let (west_cfg, west_http) = region_config(dir.path(), "west", &regions, &broker.bootstrap());
    let (east_log, west_log) = (dir.path().join("east.log"), dir.path().join("west.log"));
    let _east_ferry = Reaped(spawn_ferry(&east_cfg, &east_log));
    let _west_ferry = Reaped(spawn_ferry(&west_cfg, &west_log));
    wait_ready(east_http).await;
    wait_ready(west_http).await;

    // East writes a customer every 50 ms throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, mut c) = (stop.clone(), east.conn().await.unwrap());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                c.exec_drop(
                    "INSERT INTO psi.customers (name, email, region) VALUES (?, ?, 'east')",
                    (format!("customer {i}"), format!("c{i}@east.test")),
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            i
        })
    };
    let flowing = Instant::now() + Duration::from_secs(30);
    while customers(&west).await < 20 {
        assert!(Instant::now() < flowing, "east's writes never reached west");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    signal(&broker, libc::SIGSTOP);
    let frozen = Instant::now();
    // Both ferries say so within a few seconds.
    let mut seen = Vec::new();
    for (region, http) in [("west", west_http), ("east", east_http)] {
        loop {
            let (code, body) = http_get(http, "/health/ready").await.unwrap();
            if code == 503 && body.contains("brokers") && body.contains("have not answered") {
                seen.push((region, frozen.elapsed()));
                break;
            }
            assert!(
                frozen.elapsed() < Duration::from_secs(10),
                "{region} still ready 10 s into the outage: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("not ready after {seen:?}");
    // West asks east's brokers and its own (here the same broker) in two roles: either may
    // notice first; east's gauge follows within one more probe.
    let reachable = "ferry_kafka_reachable{region=\"east\"}";
    while sample(&metrics(west_http).await, reachable) != Some(0.0) {
        assert!(frozen.elapsed() < Duration::from_secs(10), "{reachable} still not 0 after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&west_log).unwrap();
    assert!(log.contains("the brokers do not answer"), "west logged the outage");

    // West's end-to-end lag grows while nothing arrives.
    let lag_early =
        sample(&metrics(west_http).await, "ferry_apply_end_to_end_lag_seconds{origin=\"east\"}").unwrap();
    tokio::time::sleep(FREEZE.saturating_sub(frozen.elapsed())).await;
    let lag_late =
        sample(&metrics(west_http).await, "ferry_apply_end_to_end_lag_seconds{origin=\"east\"}").unwrap();
    assert!(
        lag_late >= 15.0 && lag_late > lag_early + 10.0,
        "the end-to-end lag grew during the outage: {lag_early} s then {lag_late} s"
    );

    let applied_before = customers(&west).await;
    signal(&broker, libc::SIGCONT);
    let thawed = Instant::now();
    while customers(&west).await <= applied_before {
        assert!(
            thawed.elapsed() < Duration::from_secs(30),
            "west never applied east's writes after the thaw"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = thawed.elapsed();
    println!("west applied again {resumed:?} after the broker's return");
    assert!(resumed < Duration::from_secs(2), "west resumed applying {resumed:?} after the broker's return");

    for http in [west_http, east_http] {
        wait_ready(http).await;
    }
    println!("both ready again {:?} after the thaw", thawed.elapsed());
    let m = metrics(west_http).await;
    assert_eq!(sample(&m, "ferry_kafka_reachable{region=\"east\"}"), Some(1.0), "{m}");
    let log = std::fs::read_to_string(&west_log).unwrap();
    assert!(log.contains("the brokers answer again"), "west logged the end of the outage");

    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap() as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while customers(&west).await != written {
        assert!(
            Instant::now() < deadline,
            "west has {} of east's {written} customers",
            customers(&west).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("caught up: {written} customers in both regions");
}
