//! Exactly-once apply: west's applier is killed with SIGKILL at random moments while east
//! writes continuously, and its stored offset is once rewound to the start of the topic; the
//! tables still match and every east transaction appears exactly once in west's binlog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry::sandbox::{Broker, MariaDb, MariaDbOptions, pick_port};
use mysql_async::prelude::Queryable;

mod common;
use common::{Lcg, region_yaml, spawn_ferry};
const KILLS: usize = 10;

/// The config of `region` and its HTTP port.
fn config(
    dir: &Path,
    region: &str,
    east: &MariaDb,
    west: &MariaDb,
    broker: &Broker,
    role: &str,
) -> (PathBuf, u16) {
    let http = pick_port([127, 0, 0, 1].into(), None).unwrap();
    let r = |name: &str, db: &MariaDb, domain: u32, priority: u32| {
        region_yaml(name, db, domain, priority, &broker.bootstrap())
    };
    let path = dir.join(format!("{region}.yaml"));
    std::fs::write(
        &path,
        format!(
            "region: {region}\nregions:\n{}{}http: {{ listen: \"127.0.0.1:{http}\" }}\nlog: {{ format: json }}\n{role}\n",
            r("east", east, 1, 1),
            r("west", west, 2, 2)
        ),
    )
    .unwrap();
    (path, http)
}

/// How often each domain-1 GTID was written to `db`'s binlog.
async fn gtid_counts(db: &MariaDb) -> BTreeMap<String, usize> {
    let mut c = db.conn().await.unwrap();
    let logs: Vec<(String, u64)> = c.query("SHOW BINARY LOGS").await.unwrap();
    let mut counts = BTreeMap::new();
    for (file, _) in logs {
        let events: Vec<mysql_async::Row> = c.query(format!("SHOW BINLOG EVENTS IN '{file}'")).await.unwrap();
        for e in events {
            let kind: String = e.get("Event_type").unwrap();
            let info: String = e.get("Info").unwrap();
            if kind == "Gtid"
                && let Some(g) = info.split_whitespace().last().filter(|g| g.starts_with("1-"))
            {
                *counts.entry(g.to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

async fn rows(db: &MariaDb) -> Vec<(i64, String)> {
    db.conn().await.unwrap().query("SELECT id, note FROM t.load ORDER BY id").await.unwrap()
}

#[tokio::test]
async fn killing_the_applier_and_rewinding_applies_every_transaction_exactly_once() {
    let east = MariaDb::start_temp(MariaDbOptions::test("east-k", 101, 1)).await.unwrap();
    let west = MariaDb::start_temp(MariaDbOptions::test("west-k", 201, 2)).await.unwrap();
    let broker = Broker::start_temp().await.unwrap();
    for db in [&east, &west] {
        let mut c = db.conn().await.unwrap();
        c.query_drop("CREATE DATABASE t").await.unwrap();
        c.query_drop("CREATE TABLE t.load (id BIGINT PRIMARY KEY, note VARCHAR(100))").await.unwrap();
        c.query_drop("CREATE TABLE t.counter (id INT PRIMARY KEY, n BIGINT)").await.unwrap();
        c.query_drop("INSERT INTO t.counter VALUES (1, 0)").await.unwrap();
    }
    // On west, count every committed apply of each row: BEFORE INSERT fires for each applied
    // insert, an upsert of an existing row included, and rolls back with its transaction.
    // Row images are idempotent, so this (not the data) is what shows a double apply.
    let mut w = west.conn().await.unwrap();
    w.query_drop("CREATE TABLE t.seen (id BIGINT PRIMARY KEY, n INT NOT NULL)").await.unwrap();
    w.query_drop(
        "CREATE TRIGGER t.count_apply BEFORE INSERT ON t.load FOR EACH ROW \
         INSERT INTO t.seen (id, n) VALUES (NEW.id, 1) ON DUPLICATE KEY UPDATE n = n + 1",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (east_cfg, _) = config(
        dir.path(),
        "east",
        &east,
        &west,
        &broker,
        "capture: { server_id: 1001, checkpoint_interval: 200ms }",
    );
    let (west_cfg, west_http) =
        config(dir.path(), "west", &east, &west, &broker, "apply: { on_error: pause }");
    let (east_log, west_log) = (dir.path().join("east.log"), dir.path().join("west.log"));
    let mut capture = spawn_ferry(&east_cfg, &east_log);
    // Let capture store its first checkpoint before writing.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, opts) = (stop.clone(), east.opts());
        tokio::spawn(async move {
            let mut c = mysql_async::Conn::new(opts).await.unwrap();
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let rows = if n % 50 == 0 { 25 } else { 1 };
                let values: Vec<String> =
                    (0..rows).map(|i| format!("({}, 'row {}')", n + i, n + i)).collect();
                // t.load is insert-only (so a second apply of a row can only be a replay);
                // updates go to one t.counter row, overwritten in origin order.
                c.query_drop(format!("INSERT INTO t.load VALUES {}", values.join(","))).await.unwrap();
                if n % 10 == 0 {
                    c.query_drop(format!("UPDATE t.counter SET n = {n} WHERE id = 1")).await.unwrap();
                }
                n += rows;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("apply kill schedule seed: {seed}");
    let mut rng = Lcg(seed);
    for _ in 0..KILLS {
        let mut applier = spawn_ferry(&west_cfg, &west_log);
        tokio::time::sleep(Duration::from_millis(400 + rng.next(1200))).await;
        applier.kill().unwrap();
        applier.wait().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();

    // Rewind once: as if the stored offsets were lost, read the whole topic again.
    w.query_drop("UPDATE ferry.applied SET kafka_offset = -1").await.unwrap();
    let mut applier = spawn_ferry(&west_cfg, &west_log);
    let deadline = Instant::now() + Duration::from_secs(120);
    let expected = rows(&east).await;
    while rows(&west).await != expected {
        assert!(
            Instant::now() < deadline,
            "west did not catch up: {} of {} rows",
            rows(&west).await.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The rewound reader must reach the end of the topic (everything it had applied read
    // again, and skipped): stop capture, then wait for ferry.applied to name the last record.
    let _ = capture.kill();
    let _ = capture.wait();
    let high = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("broker.address.family", "v4")
            .create()
            .unwrap();
        c.fetch_watermarks("ferry.east.changes", 0, Duration::from_secs(10)).unwrap().1
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let at: Option<i64> =
            w.query_first("SELECT kafka_offset FROM ferry.applied WHERE origin = 'east'").await.unwrap();
        if at == Some(high - 1) {
            break;
        }
        assert!(Instant::now() < deadline, "the rewound reader stopped at offset {at:?} of {high}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], west_http));
    let (_, metrics) = ferry::sandbox::http_get(addr, "/metrics").await.unwrap();
    let duplicates: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_apply_duplicates_total{origin=\"east\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    println!(
        "the rewound reader reached offset {} and skipped {duplicates} transactions it had applied",
        high - 1
    );
    assert!(duplicates > 100.0, "the rewound reader re-read what it had applied ({duplicates} duplicates)");
    let _ = applier.kill();
    let _ = applier.wait();

    let seen: Vec<(i64, i64)> =
        w.query("SELECT COUNT(*), COALESCE(SUM(n > 1), 0) FROM t.seen").await.unwrap();
    let (rows_seen, applied_twice_rows) = seen[0];
    println!(
        "apply kill -9: rows applied once {rows_seen}, rows applied more than once {applied_twice_rows}"
    );
    assert_eq!(rows_seen as usize, expected.len(), "every east row was applied");
    assert_eq!(applied_twice_rows, 0, "rows applied more than once");
    let source = gtid_counts(&east).await;
    let applied = gtid_counts(&west).await;
    let twice: Vec<(&String, &usize)> = applied.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "apply kill -9: {KILLS} kills + rewind, {written} rows, {} east GTIDs, {} applied in west, applied twice {}",
        source.len(),
        applied.len(),
        twice.len()
    );
    assert!(twice.is_empty(), "transactions applied more than once: {:?}", &twice[..twice.len().min(5)]);
    assert_eq!(rows(&west).await, expected, "west matches east");
    let counter = |db: &MariaDb| {
        let opts = db.opts();
        async move {
            let mut c = mysql_async::Conn::new(opts).await.unwrap();
            c.query_first::<i64, _>("SELECT n FROM t.counter WHERE id = 1").await.unwrap()
        }
    };
    assert_eq!(counter(&west).await, counter(&east).await, "the updated row ends at the origin's last value");
    let local: Vec<&String> = source.keys().filter(|g| g.starts_with("1-101-")).collect();
    assert!(local.len() > 100, "east committed only {} transactions", local.len());
}
