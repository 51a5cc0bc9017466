//! Capture never loses an acknowledged-to-the-client transaction: `ferry run` is killed with
//! SIGKILL at random moments while a writer commits continuously, many of its transactions
//! larger than a record (so a kill can cut one between its records); after a final run, every
//! source transaction is in the topic, complete (duplicates are allowed, loss never). Then a
//! second region applies the whole topic: its table ends identical to the source's, with every
//! cut transaction superseded by capture's resend, and apply never pauses.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry::model::Gtid;
use ferry::sandbox::{Broker, MariaDb, MariaDbOptions, pick_port};
use ferry::transport::envelope::Envelope;
use mysql_async::prelude::Queryable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

mod common;
use common::{FERRY, Lcg, region_yaml};
const KILLS: usize = 12;
/// The smallest record capture allows: the writer's large transactions span several.
const MAX_RECORD_BYTES: usize = 16384;
/// Rows of a large transaction and the bytes of each row's note: about 48 KiB, 3 or more records.
const LARGE_ROWS: usize = 48;
const NOTE_BYTES: usize = 1000;

fn config(dir: &std::path::Path, db: &MariaDb, broker: &Broker) -> std::path::PathBuf {
    let http = pick_port([127, 0, 0, 1].into(), None).unwrap();
    let path = dir.join("ferry.yaml");
    let text = format!(
        "region: east\nregions:\n{}http: {{ listen: \"127.0.0.1:{http}\" }}\n\
         log: {{ format: json, level: \"info\" }}\nshutdown: {{ grace: 20s }}\n\
         capture:\n  server_id: 1001\n  checkpoint_interval: 200ms\n  max_record_bytes: {MAX_RECORD_BYTES}\n",
        region_yaml("east", db, 1, 1, &broker.bootstrap())
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Every complete transaction in the topic: GTID → rows of table `t.load` (records may repeat);
/// the records read; and how many transactions were cut (records of one transaction followed
/// by another transaction before its last record).
fn topic_transactions(bootstrap: &str) -> (BTreeMap<String, usize>, usize, usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", "capture-kill-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("ferry.east.changes", 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let (_, high) = consumer.fetch_watermarks("ferry.east.changes", 0, Duration::from_secs(10)).unwrap();
    // Per GTID, the rows of each record index (a repeated record replaces itself).
    let mut parts: BTreeMap<String, BTreeMap<u32, usize>> = BTreeMap::new();
    let mut last_index: BTreeMap<String, u32> = BTreeMap::new();
    let mut records = 0;
    let mut cut = 0;
    let mut open: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next_offset = 0;
    while next_offset < high {
        assert!(Instant::now() < deadline, "could not read the topic up to offset {high}");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.unwrap();
        next_offset = message.offset() + 1;
        records += 1;
        let env = Envelope::parse(message.payload().unwrap()).expect("every record is a valid envelope");
        let gtid = env.origin.gtid.to_string();
        if open.as_ref().is_some_and(|o| *o != gtid) {
            cut += 1;
        }
        open = (!env.last).then(|| gtid.clone());
        let rows = env.rows.iter().filter(|r| r.table == "load").count();
        parts.entry(gtid.clone()).or_default().insert(env.record, rows);
        if env.last {
            last_index.insert(gtid, env.record);
        }
    }
    let complete = last_index
        .into_iter()
        .filter_map(|(gtid, last)| {
            let p = &parts[&gtid];
            (0..=last).all(|i| p.contains_key(&i)).then(|| (gtid, p.values().sum()))
        })
        .collect();
    (complete, records, cut)
}

#[tokio::test]
async fn kill_9_at_random_moments_never_loses_a_transaction() {
    let db = MariaDb::start_temp(MariaDbOptions::test("kill-db", 101, 1)).await.unwrap();
    let broker = Broker::start_temp().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &db, &broker);
    let mut c = db.conn().await.unwrap();
    c.query_drop("CREATE DATABASE t").await.unwrap();
    let create = "CREATE TABLE t.load (id BIGINT AUTO_INCREMENT PRIMARY KEY, batch INT, note TEXT)";
    c.query_drop(create).await.unwrap();

    // Capture without a checkpoint starts at the current position: establish it first, so every
    // transaction the writer commits is after capture's start.
    let log = dir.path().join("ferry.log");
    let spawn = || {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        Command::new(FERRY)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap()
    };
    let mut first = spawn();
    let checkpoint_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let saved: Option<String> = c
            .query_first("SELECT gtid FROM ferry.capture_checkpoint WHERE stream = 'capture'")
            .await
            .unwrap_or(None);
        if saved.is_some() {
            break;
        }
        assert!(Instant::now() < checkpoint_deadline, "capture never stored its first checkpoint");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();

    // The writer: single-row and 10-row transactions, recording each committed GTID.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, opts) = (stop.clone(), db.opts());
        tokio::spawn(async move {
            let mut conn = mysql_async::Conn::new(opts).await.unwrap();
            let mut written: Vec<(String, usize)> = Vec::new();
            let mut batch = 0;
            while !stop.load(Ordering::Relaxed) {
                batch += 1;
                // Every third transaction spans several records.
                let (rows, pad) = if batch % 3 == 0 { (LARGE_ROWS, NOTE_BYTES) } else { (1, 0) };
                let values: Vec<String> = (0..rows)
                    .map(|i| format!("({batch}, 'row {i} of batch {batch} {}')", "x".repeat(pad)))
                    .collect();
                conn.query_drop(format!("INSERT INTO t.load (batch, note) VALUES {}", values.join(",")))
                    .await
                    .unwrap();
                let gtid: String = conn.query_first("SELECT @@last_gtid").await.unwrap().unwrap();
                written.push((gtid, rows));
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            written
        })
    };

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("kill schedule seed: {seed}");
    let mut rng = Lcg(seed);
    for _ in 0..KILLS {
        let mut child = spawn();
        tokio::time::sleep(Duration::from_millis(300 + rng.next(1500))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let expected: BTreeMap<String, usize> = written.iter().cloned().collect();

    // A final run catches up; then stop it cleanly.
    let mut last = spawn();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (found, records, cut) = loop {
        let t = Instant::now();
        let (found, records, cut) = topic_transactions(&broker.bootstrap());
        println!("read {records} records in {:?}", t.elapsed());
        if expected.keys().all(|g| found.contains_key(g)) || Instant::now() > deadline {
            break (found, records, cut);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(last.id() as i32, libc::SIGTERM) };
    let status = last.wait().unwrap();

    let missing: Vec<&String> = expected.keys().filter(|g| !found.contains_key(*g)).collect();
    let wrong_rows: Vec<(&String, usize, usize)> =
        expected.iter().filter_map(|(g, n)| found.get(g).filter(|f| *f != n).map(|f| (g, *n, *f))).collect();
    let source_gtids: BTreeSet<&String> = expected.keys().collect();
    println!(
        "capture kill -9: runs {KILLS} killed + 1 final, source transactions {}, records in topic {records}, \
         complete transactions in topic {}, missing {}, transactions cut between records {cut}",
        source_gtids.len(),
        found.len(),
        missing.len()
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        missing.is_empty(),
        "{} transactions missing, e.g. {:?}; ferry log tail:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        &log_text[log_text.len().saturating_sub(3000)..]
    );
    assert!(wrong_rows.is_empty(), "transactions with wrong row counts: {wrong_rows:?}");
    assert!(expected.len() > 200, "the writer committed only {} transactions", expected.len());
    assert_eq!(status.code(), Some(0), "the final run stops cleanly");
    assert!(expected.keys().all(|g| g.parse::<Gtid>().is_ok()));

    apply_everything_in_a_second_region(&db, &broker, dir.path(), cut).await;
}

/// West applies east's whole topic: it ends with east's rows exactly, each cut transaction
/// superseded (counted, never dead-lettered), apply never paused.
async fn apply_everything_in_a_second_region(
    east: &MariaDb,
    broker: &Broker,
    dir: &std::path::Path,
    cut: usize,
) {
    let west = MariaDb::start_temp(MariaDbOptions::test("kill-west", 201, 2)).await.unwrap();
    let mut w = west.conn().await.unwrap();
    w.query_drop("CREATE DATABASE t").await.unwrap();
    w.query_drop("CREATE TABLE t.load (id BIGINT AUTO_INCREMENT PRIMARY KEY, batch INT, note TEXT)")
        .await
        .unwrap();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], pick_port([127, 0, 0, 1].into(), None).unwrap()));
    let config = common::apply_only_config(dir, &west, &broker.bootstrap(), http, "{}");
    let _apply = common::Reaped(common::spawn_ferry(&config, &dir.join("west.log")));
    let digest = "SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT(id, ':', batch, ':', note))), 0) FROM t.load";
    let mut e = east.conn().await.unwrap();
    let want: (u64, u64) = e.query_first(digest).await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have: (u64, u64) = w.query_first(digest).await.unwrap().unwrap();
        if have == want {
            break;
        }
        let (code, ready) =
            ferry::sandbox::http_get(http, "/health/ready").await.unwrap_or((0, String::new()));
        assert!(code != 503 || !ready.contains("paused"), "apply paused: {ready}");
        assert!(Instant::now() < deadline, "west has {have:?} (rows, checksum), east {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = ferry::sandbox::http_get(http, "/metrics").await.unwrap();
    let superseded = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_apply_superseded_total{origin=\"east\"} "))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    println!("applied {} rows in west; transactions cut {cut}, superseded {superseded}", want.0);
    assert_eq!(superseded, cut, "every cut transaction is superseded by its resend: {metrics}");
    assert!(metrics.contains("ferry_apply_paused{origin=\"east\"} 0"), "{metrics}");
    assert!(!metrics.contains("ferry_apply_dlq_records_total{"), "nothing dead-lettered: {metrics}");
}
