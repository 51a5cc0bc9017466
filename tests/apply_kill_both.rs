//! Both regions write and replicate both ways while either region's `ferry run` (capture and
//! apply) is killed with SIGKILL at random moments; afterwards both regions hold the same rows
//! and every row was applied exactly once in the other region.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry::sandbox::{Broker, MariaDb, MariaDbOptions, pick_port};
use mysql_async::prelude::Queryable;

mod common;
use common::{Lcg, region_yaml, spawn_ferry};
const KILLS: usize = 12;

fn config(dir: &Path, region: &str, dbs: &[(&str, &MariaDb)], broker: &Broker) -> PathBuf {
    let http = pick_port([127, 0, 0, 1].into(), None).unwrap();
    let mut text = format!("region: {region}\nregions:\n");
    for (i, (name, db)) in dbs.iter().enumerate() {
        let p = i as u32 + 1;
        text.push_str(&region_yaml(name, db, p, p, &broker.bootstrap()));
    }
    let reader = if region == "east" { 1001 } else { 2001 };
    text.push_str(&format!(
        "http: {{ listen: \"127.0.0.1:{http}\" }}\nlog: {{ format: json }}\n\
         capture: {{ server_id: {reader}, checkpoint_interval: 200ms }}\napply: {{ on_error: pause }}\n"
    ));
    let path = dir.join(format!("{region}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

async fn rows(db: &MariaDb) -> Vec<(i64, String)> {
    db.conn().await.unwrap().query("SELECT id, origin FROM t.load ORDER BY id").await.unwrap()
}

#[tokio::test]
async fn killing_either_region_under_a_two_way_load_loses_and_repeats_nothing() {
    let east = MariaDb::start_temp(MariaDbOptions::test("east-kb", 101, 1)).await.unwrap();
    let west = MariaDb::start_temp(MariaDbOptions::test("west-kb", 201, 2)).await.unwrap();
    let broker = Broker::start_temp().await.unwrap();
    for db in [&east, &west] {
        let mut c = db.conn().await.unwrap();
        c.query_drop("CREATE DATABASE t").await.unwrap();
        // Insert-only, ids disjoint per region: a second apply of a row can only be a replay.
        c.query_drop("CREATE TABLE t.load (id BIGINT PRIMARY KEY, origin VARCHAR(8))").await.unwrap();
        c.query_drop("CREATE TABLE t.seen (id BIGINT PRIMARY KEY, n INT NOT NULL)").await.unwrap();
        // Counts only rows ferry applies (its session carries the origin's server_id); local
        // writes do not count, so t.seen itself is never replicated.
        c.query_drop(
            "CREATE TRIGGER t.count_apply BEFORE INSERT ON t.load FOR EACH ROW \
             IF @@SESSION.server_id <> @@GLOBAL.server_id THEN \
             INSERT INTO t.seen (id, n) VALUES (NEW.id, 1) ON DUPLICATE KEY UPDATE n = n + 1; END IF",
        )
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let dbs = [("east", &east), ("west", &west)];
    let cfg = [config(dir.path(), "east", &dbs, &broker), config(dir.path(), "west", &dbs, &broker)];
    let logs = [dir.path().join("east.log"), dir.path().join("west.log")];
    let mut running = [Some(spawn_ferry(&cfg[0], &logs[0])), Some(spawn_ferry(&cfg[1], &logs[1]))];
    tokio::time::sleep(Duration::from_secs(2)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (db, base, origin) in [(&east, 0i64, "east"), (&west, 1_000_000_000i64, "west")] {
        let (stop, opts) = (stop.clone(), db.opts());
        writers.push(tokio::spawn(async move {
            let mut c = mysql_async::Conn::new(opts).await.unwrap();
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let rows = if n % 40 == 0 { 20 } else { 1 };
                let values: Vec<String> =
                    (0..rows).map(|i| format!("({}, '{origin}')", base + n + i)).collect();
                c.query_drop(format!("INSERT INTO t.load VALUES {}", values.join(","))).await.unwrap();
                n += rows;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            n
        }));
    }

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("two-way kill schedule seed: {seed}");
    let mut rng = Lcg(seed);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(400 + rng.next(1000))).await;
        let victim = rng.next(2) as usize;
        if let Some(mut child) = running[victim].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(rng.next(500))).await;
        running[victim] = Some(spawn_ferry(&cfg[victim], &logs[victim]));
    }
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (e, w) = (rows(&east).await, rows(&west).await);
        if (e == w && e.len() as i64 == written) || Instant::now() > deadline {
            assert_eq!(e.len(), w.len(), "east has {} rows, west {}", e.len(), w.len());
            assert_eq!(e.len() as i64, written, "every written row is in both regions");
            assert!(e == w, "the regions hold the same rows");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for mut child in running.into_iter().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }
    for (name, db, foreign) in [("east", &east, "west"), ("west", &west, "east")] {
        let mut c = db.conn().await.unwrap();
        let counts: Vec<(i64, i64)> = c
            .exec("SELECT COUNT(*), COALESCE(SUM(s.n > 1), 0) FROM t.seen s JOIN t.load l USING (id) WHERE l.origin = ?", (foreign,))
            .await
            .unwrap();
        let (seen, twice) = counts[0];
        println!("two-way kill -9: {name} applied {seen} rows of {foreign}, {twice} more than once");
        assert_eq!(twice, 0, "{name} applied rows of {foreign} more than once");
        assert!(seen > 500, "{name} applied {seen} rows of {foreign}");
    }
    println!("two-way kill -9: {KILLS} kills, {written} rows written in both regions, identical afterwards");
}
