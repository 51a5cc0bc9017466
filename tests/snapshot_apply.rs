//! Apply's side of an initial sync (issue 16): a `snapshot` row from the origin's topic is
//! a state, not a change. Against the real applier: an absent row is inserted; a newer row
//! is kept; an older row is replaced except its delta columns (the stream carries those); a
//! row deleted as late or later stays deleted; the same rows arriving again (a resent chunk)
//! change nothing; nothing is logged as a conflict.

use std::time::{Duration, Instant};

use ferry::capture::txn::TxnHeader;
use ferry::model::{Gtid, MariaGtid, Op, Row, RowChange, Value};
use ferry::sandbox::{Broker, MariaDb, MariaDbOptions, pick_port};
use ferry::transport::envelope::RecordBuilder;
use mysql_async::prelude::Queryable;

mod common;
use common::{Reaped, apply_only_config, produce, spawn_ferry, wait_ready};

fn version(us: u32) -> Value {
    Value::Datetime { v: format!("2026-11-01 00:00:00.{us:06}"), p: 6 }
}

fn snapshot_row(id: i64, note: &str, qty: i64, at: u32) -> RowChange {
    let key = Row(vec![("id".into(), Value::Int { v: id })]);
    let image = Row(vec![
        ("id".into(), Value::Int { v: id }),
        ("note".into(), Value::Text { v: note.into() }),
        ("qty".into(), Value::Int { v: qty }),
        ("updated_at".into(), version(at)),
    ]);
    RowChange {
        db: "t".into(),
        table: "s".into(),
        op: Op::Snapshot,
        key,
        before: None,
        after: Some(image),
        generated: Vec::new(),
    }
}

/// One snapshot chunk as one origin transaction.
fn chunk(seq: u64, rows: &[RowChange]) -> Vec<u8> {
    let header = TxnHeader {
        gtid: Gtid::MariaDb(MariaGtid { domain: 1, server_id: common::EAST_SERVER_ID, seq }),
        server_id: common::EAST_SERVER_ID,
        commit_time_us: 1_795_000_000_000_000,
    };
    let mut b = RecordBuilder::new("east", 65536);
    for row in rows {
        assert!(b.push(&header, row).unwrap().is_none());
    }
    b.finish(&header).payload
}

async fn rows(db: &MariaDb) -> Vec<(i64, String, i64, String)> {
    db.conn()
        .await
        .unwrap()
        .query("SELECT id, note, qty, CAST(updated_at AS CHAR) FROM t.s ORDER BY id")
        .await
        .unwrap()
}

#[tokio::test]
async fn snapshot_rows_fill_gaps_and_never_overwrite_newer_rows_tombstones_or_deltas() {
    let west = MariaDb::start_temp(MariaDbOptions::test("west-snap", 201, 2)).await.unwrap();
    let broker = Broker::start_temp().await.unwrap();
    broker.create_topic("ferry.east.changes", 1).await.unwrap();
    ferry::sandbox::install_schemas(&west).await.unwrap();
    let mut c = west.conn().await.unwrap();
    c.query_drop("CREATE DATABASE t").await.unwrap();
    c.query_drop("CREATE TABLE t.s (id INT PRIMARY KEY, note VARCHAR(40), qty BIGINT NOT NULL, updated_at DATETIME(6) NOT NULL)")
        .await
        .unwrap();
    c.query_drop(
        "INSERT INTO t.s VALUES (2, 'newer here', 20, '2026-11-01 00:00:00.000009'), \
         (3, 'older here', 30, '2026-11-01 00:00:00.000004')",
    )
    .await
    .unwrap();
    // Row 4 was deleted here after the version the snapshot read.
    c.exec_drop(
        "INSERT INTO ferry.tombstones (table_name, row_key, version_us, origin) VALUES ('t.s', ?, ?, 'east')",
        (r#"{"id":{"t":"int","v":4}}"#, 1_793_491_200_000_007_i64),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], pick_port([127, 0, 0, 1].into(), None).unwrap()));
    let config = apply_only_config(dir.path(), &west, &broker.bootstrap(), http, "{ on_error: pause }");
    let text = std::fs::read_to_string(&config).unwrap()
        + "conflicts:\n  tables:\n    t.s: { delta_columns: [qty] }\n";
    std::fs::write(&config, text).unwrap();

    let snapshot = [
        snapshot_row(1, "from the snapshot", 10, 5),
        snapshot_row(2, "from the snapshot", 99, 5),
        snapshot_row(3, "from the snapshot", 99, 5),
        snapshot_row(4, "from the snapshot", 99, 5),
    ];
    // The chunk, then the same chunk resent (a capture restart reads it again).
    produce(&broker.bootstrap(), "ferry.east.changes", &[chunk(1, &snapshot), chunk(2, &snapshot)]).await;
    let _ferry = Reaped(spawn_ferry(&config, &dir.path().join("west.log")));
    wait_ready(http).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied: Option<String> =
            c.query_first("SELECT gtid FROM ferry.applied WHERE origin = 'east'").await.unwrap();
        if applied.as_deref() == Some("1-101-2") {
            break;
        }
        assert!(Instant::now() < deadline, "the chunks were never applied: {applied:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = |us: u32| format!("2026-11-01 00:00:00.{us:06}");
    assert_eq!(
        rows(&west).await,
        vec![
            (1, "from the snapshot".into(), 10, t(5)),
            (2, "newer here".into(), 20, t(9)),
            // Replaced, but its delta column is the stream's to change, not the snapshot's.
            (3, "from the snapshot".into(), 30, t(5)),
        ],
        "row 4 stays deleted"
    );
    let conflicts: i64 = c.query_first("SELECT COUNT(*) FROM ferry.conflicts").await.unwrap().unwrap();
    assert_eq!(conflicts, 0, "a snapshot row is not a conflict");
}
