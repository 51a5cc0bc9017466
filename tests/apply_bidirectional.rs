//! Two regions written concurrently on different rows converge through real Kafka, with
//! `ferry run` (capture + apply) in both, and no transaction comes back to its origin.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::sandbox::{Broker, MariaDb, http_get, install_schemas};
use mysql_async::prelude::Queryable;

mod common;
use common::{FERRY, db_options, dump, region_config, two_regions, wait_ready};

struct Ferry(std::process::Child, PathBuf);

impl Ferry {
    fn start(config: &Path, log: &Path) -> Self {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(FERRY)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Ferry(child, log.to_path_buf())
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            eprintln!(
                "----- {} (last 4000 bytes) -----\n{}",
                self.1.display(),
                &log[log.len().saturating_sub(4000)..]
            );
        }
    }
}

async fn workload(db: &MariaDb, tag: &str, rows: usize) {
    let mut c = db.conn().await.unwrap();
    for i in 0..rows {
        c.exec_drop(
            "INSERT INTO psi.products (sku, name, unit_price) VALUES (?, ?, ?)",
            (format!("{tag}-{i}"), format!("product {i} of {tag} ☕"), format!("{}.{:02}", i % 100, i % 97)),
        )
        .await
        .unwrap();
        if i % 3 == 0 {
            c.exec_drop(
                "UPDATE psi.products SET unit_price = unit_price + 1 WHERE sku = ?",
                (format!("{tag}-{i}"),),
            )
            .await
            .unwrap();
        }
        if i % 7 == 0 {
            c.exec_drop("DELETE FROM psi.products WHERE sku = ?", (format!("{tag}-{i}"),)).await.unwrap();
        }
        if i % 10 == 0 {
            let mut tx = c.start_transaction(Default::default()).await.unwrap();
            tx.exec_drop(
                "INSERT INTO psi.customers (name, email, region) VALUES (?, ?, ?)",
                (format!("customer {i}"), format!("c{i}@{tag}.test"), tag),
            )
            .await
            .unwrap();
            tx.exec_drop(
                "INSERT INTO psi.orders (order_no, customer_id, warehouse_id, status, total) VALUES (?, LAST_INSERT_ID(), 1, 'paid', 10.5)",
                (format!("{tag}-order-{i}"),),
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
    }
}

/// (records in `topic`, records whose GTID is not in `domain`): the topic of a region whose
/// server writes in GTID domain `domain` holds a transaction of another domain only if its
/// capture published what apply wrote there, a loop. (The envelope's region field is set by the
/// publishing capture, so comparing it with the topic's region would prove nothing.)
fn foreign_domains_in_topic(bootstrap: &str, topic: &str, domain: u32) -> (usize, Vec<String>) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", "loop-check")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let (_, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap();
    let (mut records, mut strangers, mut next) = (0, Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < high && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            next = m.offset() + 1;
            records += 1;
            let env = ferry::transport::envelope::Envelope::parse(m.payload().unwrap()).unwrap();
            match &env.origin.gtid {
                ferry::model::Gtid::MariaDb(g) if g.domain == domain => {}
                other => strangers.push(other.to_string()),
            }
        }
    }
    assert_eq!(next, high, "{topic} was read to its end ({high} records)");
    (records, strangers)
}

#[tokio::test]
async fn two_regions_written_concurrently_converge_without_loops() {
    let (east, west, broker) = two_regions().await;
    let dir = tempfile::tempdir().unwrap();
    let regions = [("east", &east), ("west", &west)];
    let (east_cfg, east_http) = region_config(dir.path(), "east", &regions, &broker.bootstrap());
    let (west_cfg, west_http) = region_config(dir.path(), "west", &regions, &broker.bootstrap());
    let _east_ferry = Ferry::start(&east_cfg, &dir.path().join("east.log"));
    let _west_ferry = Ferry::start(&west_cfg, &dir.path().join("west.log"));
    wait_ready(east_http).await;
    wait_ready(west_http).await;

    let started = Instant::now();
    let (a, b) = tokio::join!(workload(&east, "east", 300), workload(&west, "west", 300));
    let _ = (a, b);
    // One large transaction in each region (stock rows keyed by warehouse 1 / 2).
    for (db, warehouse) in [(&east, 1), (&west, 2)] {
        let mut c = db.conn().await.unwrap();
        c.query_drop(format!(
            "INSERT INTO psi.stock (warehouse_id, product_id, quantity, reserved) \
             SELECT {warehouse}, seq, seq % 100, 0 FROM psi.seq_1_to_100000"
        ))
        .await
        .unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(180);
    let (east_rows, west_rows) = loop {
        let (e, w) = (dump(&east).await, dump(&west).await);
        if e == w || Instant::now() > deadline {
            break (e, w);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for ((table, e), (_, w)) in east_rows.iter().zip(&west_rows) {
        assert_eq!(e.len(), w.len(), "psi.{table}: east has {} rows, west {}", e.len(), w.len());
        for (i, (re, rw)) in e.iter().zip(w).enumerate() {
            assert_eq!(re, rw, "psi.{table} row {i} differs");
        }
    }
    let stock = &east_rows.iter().find(|(t, _)| t == "stock").unwrap().1;
    assert_eq!(stock.len(), 200_000, "both 100,000-row transactions arrived on both sides");
    println!("converged in {:?}", started.elapsed());

    // No loop: each region's capture saw the other's applied transactions and skipped them,
    // and each topic holds only its own region's transactions.
    for (http, region) in [(east_http, "east"), (west_http, "west")] {
        let (_, metrics) = http_get(http, "/metrics").await.unwrap();
        let foreign = metrics
            .lines()
            .find(|l| l.starts_with("ferry_capture_transactions_total{kind=\"foreign\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            foreign > 0.0,
            "{region}'s capture saw and skipped the applied transactions (foreign = {foreign})"
        );
        // east's server writes in GTID domain 1, west's in 2 (common::two_regions).
        let domain = if region == "east" { 1 } else { 2 };
        let (records, strangers) =
            foreign_domains_in_topic(&broker.bootstrap(), &format!("ferry.{region}.changes"), domain);
        assert!(records > 100, "ferry.{region}.changes holds {region}'s transactions ({records} records)");
        assert!(
            strangers.is_empty(),
            "ferry.{region}.changes holds {} transactions of another region's domain (a loop): {:?}",
            strangers.len(),
            &strangers[..strangers.len().min(5)]
        );
        let applied = metrics.lines().find(|l| l.starts_with("ferry_apply_transactions_total")).unwrap_or("");
        assert!(!applied.is_empty(), "{region} applied something: {metrics}");
        let other = if region == "east" { "west" } else { "east" };
        let per_table = format!("ferry_apply_rows_total{{origin=\"{other}\",table=\"psi.stock\"}} 100000");
        assert!(
            metrics.contains(&per_table),
            "{region} counts applied rows per origin and table: {per_table}"
        );
    }
}

#[tokio::test]
async fn a_three_region_ring_converges_the_same_way() {
    let names = ["east", "west", "north"];
    let mut dbs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let n = i as u32 + 1;
        let db = MariaDb::start_temp(db_options(&format!("{name}-db"), n * 100 + 1, n, n)).await.unwrap();
        install_schemas(&db).await.unwrap();
        dbs.push(db);
    }
    let broker = Broker::start_temp().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let regions: Vec<(&str, &MariaDb)> = names.iter().copied().zip(dbs.iter()).collect();
    let mut ferries = Vec::new();
    let mut https = Vec::new();
    for name in names {
        let (cfg, http) = region_config(dir.path(), name, &regions, &broker.bootstrap());
        ferries.push(Ferry::start(&cfg, &dir.path().join(format!("{name}.log"))));
        https.push(http);
    }
    for http in &https {
        wait_ready(*http).await;
    }
    let started = Instant::now();
    tokio::join!(
        workload(&dbs[0], "east", 120),
        workload(&dbs[1], "west", 120),
        workload(&dbs[2], "north", 120)
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let dumps = loop {
        let mut d = Vec::new();
        for db in &dbs {
            d.push(dump(db).await);
        }
        if (d[0] == d[1] && d[1] == d[2]) || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (i, name) in names.iter().enumerate().skip(1) {
        assert_eq!(dumps[i], dumps[0], "{name} differs from east");
    }
    let products = &dumps[0].iter().find(|(t, _)| t == "products").unwrap().1;
    assert!(products.iter().any(|r| r.contains("north-5")), "north's rows reached east");
    println!("ring of 3 converged in {:?}", started.elapsed());
    // No loop in a ring either: region i's server writes in GTID domain i + 1.
    for (i, name) in names.iter().enumerate() {
        let (records, strangers) =
            foreign_domains_in_topic(&broker.bootstrap(), &format!("ferry.{name}.changes"), i as u32 + 1);
        assert!(records > 0, "ferry.{name}.changes holds {name}'s transactions");
        assert!(
            strangers.is_empty(),
            "ferry.{name}.changes holds other regions' transactions: {strangers:?}"
        );
    }
    drop(ferries);
}
