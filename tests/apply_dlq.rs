//! Bad input through the real broker: records that are not JSON, have an unknown envelope
//! version, or break a transaction's record sequence are parked in the dead-letter topic with
//! their offset and reason; the applier never panics and never skips data silently.

use std::time::{Duration, Instant};

use ferry::capture::txn::TxnHeader;
use ferry::model::{Gtid, MariaGtid, Op, Row, RowChange, Value};
use ferry::sandbox::{Broker, MariaDb, MariaDbOptions, http_get, pick_port};
use ferry::transport::envelope::RecordBuilder;
use mysql_async::prelude::Queryable;

mod common;
use common::{FERRY, Reaped, apply_only_config, dead_letters, produce};

fn insert(seq: u64, id: i64) -> Vec<u8> {
    insert_row(seq, id, true)
}

fn insert_row(seq: u64, id: i64, with_note: bool) -> Vec<u8> {
    let header = TxnHeader {
        gtid: Gtid::MariaDb(MariaGtid { domain: 1, server_id: 101, seq }),
        server_id: 101,
        commit_time_us: 1_795_000_000_000_000,
    };
    let mut row = Row(vec![("id".into(), Value::Int { v: id })]);
    if with_note {
        row.0.push(("note".into(), Value::Text { v: format!("row {id}") }));
    }
    let change = RowChange {
        db: "t".into(),
        table: "x".into(),
        op: Op::Insert,
        key: Row(vec![("id".into(), Value::Int { v: id })]),
        before: None,
        after: Some(row),
        generated: Vec::new(),
    };
    let mut b = RecordBuilder::new("east", 65536);
    assert!(b.push(&header, &change).unwrap().is_none());
    b.finish(&header).payload
}

async fn setup(
    on_error: &str,
) -> (MariaDb, Broker, tempfile::TempDir, std::path::PathBuf, std::net::SocketAddr) {
    let west = MariaDb::start_temp(MariaDbOptions::test("west-dlq", 201, 2)).await.unwrap();
    let broker = Broker::start_temp().await.unwrap();
    broker.create_topic("ferry.east.changes", 1).await.unwrap();
    let mut c = west.conn().await.unwrap();
    c.query_drop("CREATE DATABASE t").await.unwrap();
    c.query_drop("CREATE TABLE t.x (id INT PRIMARY KEY, note VARCHAR(40))").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], pick_port([127, 0, 0, 1].into(), None).unwrap()));
    let apply = format!("{{ on_error: {on_error} }}");
    let config = apply_only_config(dir.path(), &west, &broker.bootstrap(), http, &apply);
    (west, broker, dir, config, http)
}

async fn ids(db: &MariaDb) -> Vec<i64> {
    db.conn().await.unwrap().query("SELECT id FROM t.x ORDER BY id").await.unwrap()
}

#[tokio::test]
async fn bad_records_are_dead_lettered_and_skip_mode_applies_the_rest() {
    let (west, broker, dir, config, http) = setup("skip").await;
    let orphan =
        String::from_utf8(insert(3, 3)).unwrap().replace("\"record\":0", "\"record\":1").into_bytes();
    produce(
        &broker.bootstrap(),
        "ferry.east.changes",
        &[insert(1, 1), b"{not json".to_vec(), br#"{"v":9,"future":true}"#.to_vec(), orphan, insert(4, 4)],
    )
    .await;
    let log = std::fs::File::create(dir.path().join("west.log")).unwrap();
    let mut ferry =
        std::process::Command::new(FERRY).args(["run", "--config"]).arg(&config).stderr(log).spawn().unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while ids(&west).await != vec![1, 4] {
        assert!(Instant::now() < deadline, "rows 1 and 4 never applied; have {:?}", ids(&west).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let parked = dead_letters(&broker.bootstrap(), "ferry.west.dlq", 3);
    let (_, status) = http_get(http, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["details"]["apply-east"]["last_applied_gtid"], "1-101-4", "{status}");
    assert_eq!(status["details"]["apply-east"]["paused"], false, "{status}");
    let _ = ferry.kill();
    let _ = ferry.wait();
    assert_eq!(parked.len(), 3, "three records parked: {parked:?}");
    let summary: Vec<(String, i64)> = parked
        .iter()
        .map(|p| (p["kind"].as_str().unwrap().to_string(), p["first_offset"].as_i64().unwrap()))
        .collect();
    assert_eq!(summary, vec![("decode".into(), 1), ("decode".into(), 2), ("sequence".into(), 3)]);
    assert!(parked[0]["reason"].as_str().unwrap().contains("not a valid envelope"), "{}", parked[0]);
    assert_eq!(parked[0]["payload"]["text"], "{not json", "the bad record is kept");
    assert!(parked[1]["reason"].as_str().unwrap().contains("unknown envelope version 9"), "{}", parked[1]);
    assert!(parked[2]["reason"].as_str().unwrap().contains("record 0 was not seen"), "{}", parked[2]);
}

#[tokio::test]
async fn pause_mode_stops_at_the_bad_record_and_says_why() {
    let (west, broker, dir, config, http) = setup("pause").await;
    produce(&broker.bootstrap(), "ferry.east.changes", &[insert(1, 1), b"garbage".to_vec(), insert(2, 2)])
        .await;
    let log = std::fs::File::create(dir.path().join("west.log")).unwrap();
    let mut ferry =
        std::process::Command::new(FERRY).args(["run", "--config"]).arg(&config).stderr(log).spawn().unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (code, body) = http_get(http, "/health/ready").await.unwrap_or((0, String::new()));
        if code == 503 && body.contains("paused") {
            break body;
        }
        assert!(Instant::now() < deadline, "never paused; last /health/ready: {code} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ids(&west).await, vec![1], "nothing after the bad record is applied");
    assert!(body.contains("ferry.west.dlq"), "{body}");
    let (_, metrics) = http_get(http, "/metrics").await.unwrap();
    assert!(metrics.contains("ferry_apply_paused{origin=\"east\"} 1"), "{metrics}");
    let (_, status) = http_get(http, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let east = &status["details"]["apply-east"];
    assert_eq!(east["paused"], true, "{status}");
    assert!(east["reason"].as_str().unwrap_or_default().contains("not a valid envelope"), "{status}");
    assert_eq!(east["parked_offsets"], serde_json::json!([1, 1]), "{status}");
    // One record applied (offset 0), the bad one parked (1), one waiting (2): backlog 2.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_get(http, "/metrics").await.unwrap();
        if metrics.contains("ferry_apply_backlog_records{origin=\"east\"} 2") {
            break;
        }
        assert!(Instant::now() < deadline, "backlog never showed 2 records: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dead_letters(&broker.bootstrap(), "ferry.west.dlq", 1).len(), 1);
    let _ = ferry.kill();
    let _ = ferry.wait();
}

#[tokio::test]
async fn a_column_missing_here_waits_for_the_migration_and_a_value_that_does_not_fit_is_dead_lettered() {
    let (west, broker, dir, config, http) = setup("skip").await;
    let mut c = west.conn().await.unwrap();
    // The target lacks the column `note` (east ran a migration west has not), and `id` is
    // narrower than the origin's.
    c.query_drop("DROP TABLE t.x").await.unwrap();
    c.query_drop("CREATE TABLE t.x (id TINYINT PRIMARY KEY)").await.unwrap();
    // Row 1 carries the column the target lacks; row 1000 does not fit a TINYINT (a
    // non-strict session would store 127 with a warning).
    produce(&broker.bootstrap(), "ferry.east.changes", &[insert(1, 1), insert_row(2, 1000, false)]).await;
    let log = std::fs::File::create(dir.path().join("west.log")).unwrap();
    // Killed however the test ends.
    let _ferry = Reaped(
        std::process::Command::new(FERRY).args(["run", "--config"]).arg(&config).stderr(log).spawn().unwrap(),
    );
    // Waiting, with the reason, and nothing parked.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reason = loop {
        if let Ok((503, body)) = http_get(http, "/health/ready").await
            && body.contains("waiting for a migration")
        {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "apply never said it waits for the migration");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reason.contains("Unknown column 'note'") && reason.contains("run it here"), "{reason}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(ids(&west).await.is_empty(), "nothing applied while the column is missing");
    // The migration runs here: apply resumes by itself, and only the value that can never
    // fit is dead-lettered.
    c.query_drop("ALTER TABLE t.x ADD COLUMN note VARCHAR(40) NULL").await.unwrap();
    let parked = dead_letters(&broker.bootstrap(), "ferry.west.dlq", 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ids(&west).await != vec![1] {
        assert!(std::time::Instant::now() < deadline, "row 1 never applied after the migration");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["kind"], "apply", "{parked:?}");
    assert!(parked[0]["reason"].as_str().unwrap().contains("Out of range"), "{}", parked[0]);
    assert_eq!(parked[0]["gtid"], "1-101-2");
    assert!(parked[0]["rows"].as_array().is_some_and(|r| r.len() == 1), "the rows are kept: {}", parked[0]);
}
