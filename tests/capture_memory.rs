//! A 1,000,000-row transaction streams through capture without being held whole: `ferry tail`
//! prints every row while its peak resident memory stays far below the transaction's size.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::sandbox::{MariaDb, MariaDbOptions};
use mysql_async::prelude::Queryable;

mod common;
use common::single_region_config;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const ROWS: usize = 1_000_000;
/// Peak RSS allowed for tail while 1M rows (hundreds of MB of JSON) pass through it.
const PEAK_RSS_LIMIT_BYTES: u64 = 200 * 1024 * 1024;

fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[tokio::test]
async fn a_million_row_transaction_streams_with_bounded_memory() {
    let db = MariaDb::start_temp(MariaDbOptions::test("big-txn", 101, 1)).await.unwrap();
    let mut c = db.conn().await.unwrap();
    c.query_drop("CREATE DATABASE t").await.unwrap();
    c.query_drop("CREATE TABLE t.big (id BIGINT PRIMARY KEY, qty INT, note VARCHAR(64))").await.unwrap();
    let from: String = c.query_first("SELECT @@gtid_binlog_pos").await.unwrap().unwrap();
    c.query_drop(format!(
        "INSERT INTO t.big SELECT seq, seq % 1000, CONCAT('stock movement number ', seq) FROM t.seq_1_to_{ROWS}"
    ))
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = single_region_config(dir.path(), &db, "");
    let mut tail = Command::new(FERRY)
        .args(["tail", "--config"])
        .arg(&config)
        .args(["--from", &from, "--table", "t.big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = tail.id();
    let stdout = tail.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut rows, mut records, mut bytes, mut last) = (0usize, 0usize, 0usize, false);
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            records += 1;
            bytes += line.len();
            rows += line.matches("\"op\":\"insert\"").count();
            last |= line.ends_with("\"last\":true}");
            if rows >= ROWS && last {
                break;
            }
        }
        (rows, records, bytes)
    });
    let started = Instant::now();
    let mut peak = 0;
    while !reader.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(300), "tail did not stream {ROWS} rows within 300s");
        peak = peak.max(peak_rss_bytes(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak = peak.max(peak_rss_bytes(pid).unwrap_or(0));
    let (rows, records, bytes) = reader.join().unwrap();
    let _ = tail.kill();
    let _ = tail.wait();
    println!(
        "1M-row transaction: {rows} rows in {records} records, {} MiB of JSON, tail peak RSS {} MiB, {:?}",
        bytes >> 20,
        peak >> 20,
        started.elapsed()
    );
    assert_eq!(rows, ROWS, "every row came through");
    assert!(records > 100, "the transaction was split into many records, got {records}");
    assert!(peak > 0, "could not read tail's peak RSS");
    assert!(
        peak < PEAK_RSS_LIMIT_BYTES && (peak as usize) < bytes / 2,
        "peak RSS {} MiB for {} MiB of output: the transaction was held in memory",
        peak >> 20,
        bytes >> 20
    );
}
