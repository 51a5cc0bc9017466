//! Initial sync (issue 16): rows east holds that never went through its stream (loaded with
//! `sql_log_bin=0`) reach west through `ferry sync start --from east`, while writers change
//! the same tables in both regions throughout: every table ends identical and stock sums are
//! exact (a snapshot row never counts a delta twice). Then a kill -9 of east's ferry in the
//! middle of a second sync: it resumes and completes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry::sandbox::MariaDb;
use mysql_async::prelude::Queryable;

mod common;
use common::{FERRY, Reaped, dump, region_config, spawn_ferry, two_regions, wait_ready};

const PRODUCTS: u64 = 20_000;
const STOCK: u64 = 3_000;
const SUPPLIERS: u64 = 4_000;

async fn load(db: &MariaDb) {
    let mut c = db.root_conn().await.unwrap();
    c.query_drop("SET SESSION sql_log_bin = 0").await.unwrap();
    c.query_drop(format!(
        "INSERT INTO psi.products (id, sku, name, unit_price, updated_at) SELECT seq, CONCAT('SKU-', seq), \
         CONCAT('product ', seq), seq % 1000 / 10, '2026-11-01 00:00:00' + INTERVAL seq MICROSECOND \
         FROM psi.seq_1_to_{PRODUCTS}"
    ))
    .await
    .unwrap();
    c.query_drop(format!(
        "INSERT INTO psi.stock (warehouse_id, product_id, quantity, reserved, updated_at) SELECT 1, seq, 1000, 0, \
         '2026-11-01 00:00:00' + INTERVAL seq MICROSECOND FROM psi.seq_1_to_{STOCK}"
    ))
    .await
    .unwrap();
    c.query_drop(format!(
        "INSERT INTO psi.suppliers (id, code, name, updated_at) SELECT seq, CONCAT('S-', seq), 'v0', \
         '2026-11-01 00:00:00' FROM psi.seq_1_to_{SUPPLIERS}"
    ))
    .await
    .unwrap();
}

/// East keeps changing loaded rows (prices, stock decrements), west keeps inserting customers.
fn writers(east: &MariaDb, west: &MariaDb, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<u64>> {
    let (e, w) = (east.opts(), west.opts());
    let east_writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut c = mysql_async::Conn::new(e).await.unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = (n * 7919) % PRODUCTS + 1;
                c.exec_drop("UPDATE psi.products SET unit_price = unit_price + 1 WHERE id = ?", (id,))
                    .await
                    .unwrap();
                // Suppliers in the order the snapshot reads them, a little ahead of it.
                c.exec_drop(
                    "UPDATE psi.suppliers SET name = ? WHERE id = ?",
                    (format!("v{n}"), n % SUPPLIERS + 1),
                )
                .await
                .unwrap();
                let s = (n * 104_729) % STOCK + 1;
                c.exec_drop(
                    "UPDATE psi.stock SET quantity = quantity - 1 WHERE warehouse_id = 1 AND product_id = ?",
                    (s,),
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    let west_writer = tokio::spawn(async move {
        let mut c = mysql_async::Conn::new(w).await.unwrap();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            c.exec_drop(
                "INSERT INTO psi.customers (name, email, region) VALUES (?, ?, 'west')",
                (format!("c{n}"), format!("c{n}@west")),
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    });
    vec![east_writer, west_writer]
}

fn sync(config: &std::path::Path, verb: &str) -> String {
    let out = std::process::Command::new(FERRY)
        .args(["sync", verb, "--from", "east", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ferry sync {verb}: {text}");
    text
}

async fn until_done(config: &std::path::Path, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let status = sync(config, "status");
        assert!(status.contains("rows/s"), "{status}");
        if !status.contains("running") && status.contains("done") {
            println!("{status}");
            return;
        }
        assert!(Instant::now() < deadline, "the initial sync never finished:\n{status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn converge(east: &MariaDb, west: &MariaDb) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (e, w) = (dump(east).await, dump(west).await);
        if e == w {
            return;
        }
        if Instant::now() > deadline {
            for ((t, a), (_, b)) in e.iter().zip(&w) {
                if a != b {
                    println!("{t}: east {} rows, west {} rows", a.len(), b.len());
                }
            }
            panic!("the regions did not converge");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// Multi-threaded: the writers go on while the test waits for `ferry sync` processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_east_never_streamed_reach_west_while_both_keep_writing_and_a_killed_sync_resumes() {
    let (east, west, broker) = two_regions().await;
    load(&east).await;
    let dir = tempfile::tempdir().unwrap();
    let regions = [("east", &east), ("west", &west)];
    let (east_cfg, east_http) = region_config(dir.path(), "east", &regions, &broker.bootstrap());
    let (west_cfg, west_http) = region_config(dir.path(), "west", &regions, &broker.bootstrap());
    for cfg in [&east_cfg, &west_cfg] {
        let text = std::fs::read_to_string(cfg).unwrap()
            + "conflicts:\n  tables:\n    psi.stock: { delta_columns: [quantity, reserved] }\n";
        std::fs::write(cfg, text).unwrap();
    }
    let mut east_ferry = Reaped(spawn_ferry(&east_cfg, &dir.path().join("east.log")));
    let _west_ferry = Reaped(spawn_ferry(&west_cfg, &dir.path().join("west.log")));
    wait_ready(east_http).await;
    wait_ready(west_http).await;

    let stop = Arc::new(AtomicBool::new(false));
    let running = writers(&east, &west, stop.clone());
    let started = Instant::now();
    println!("{}", sync(&west_cfg, "start"));
    until_done(&west_cfg, Duration::from_secs(120)).await;
    println!("initial sync of {} rows done in {:?}", PRODUCTS + STOCK + SUPPLIERS, started.elapsed());
    // East's metrics count what it published; the estimate of rows left is 0 once done.
    let metrics = ferry::sandbox::http_get(east_http, "/metrics").await.unwrap().1;
    let sample = |name: &str| {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(sample("ferry_sync_rows_total{table=\"psi.products\"}"), Some(PRODUCTS as f64), "{metrics}");
    assert_eq!(
        sample("ferry_sync_chunks_total{table=\"psi.products\"}"),
        Some((PRODUCTS / 2_000 + 1) as f64)
    );
    assert_eq!(sample("ferry_sync_remaining_rows{table=\"psi.products\"}"), Some(0.0), "{metrics}");
    stop.store(true, Ordering::Relaxed);
    for w in running {
        assert!(w.await.unwrap() > 10, "the writers kept writing");
    }
    converge(&east, &west).await;

    // Again, killing east's ferry half-way: the sync resumes from its last acknowledged chunk.
    let mut c = west.root_conn().await.unwrap();
    c.query_drop("SET SESSION sql_log_bin = 0").await.unwrap();
    c.query_drop("DELETE FROM psi.products WHERE id > 1000").await.unwrap();
    let mut e = east.root_conn().await.unwrap();
    sync(&west_cfg, "start");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let chunks: Option<u64> = e
            .query_first(
                "SELECT chunks FROM ferry.snapshot_progress WHERE table_name = 'psi.products' AND done = 0",
            )
            .await
            .unwrap();
        if chunks.is_some_and(|c| c >= 2) {
            break;
        }
        assert!(Instant::now() < deadline, "the second sync never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = east_ferry.0.kill();
    let _ = east_ferry.0.wait();
    let _east_again = Reaped(spawn_ferry(&east_cfg, &dir.path().join("east-again.log")));
    wait_ready(east_http).await;
    until_done(&west_cfg, Duration::from_secs(120)).await;
    // 10 full chunks and the empty one that ends the table: a restart from the beginning
    // would have counted the chunks done before the kill twice.
    let chunks: u64 = e
        .query_first("SELECT chunks FROM ferry.snapshot_progress WHERE table_name = 'psi.products'")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(chunks, PRODUCTS / 2_000 + 1, "resumed where it stopped");
    converge(&east, &west).await;
}
