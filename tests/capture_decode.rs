//! Decoding against a real MariaDB: every column type, written with edge values, decoded from
//! the binlog, equals what SELECT returns; ALTER TABLE between events does not shift values;
//! another region's transaction is skipped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::capture::source::BinlogSource;
use ferry::capture::txn::{Assembler, Outcome, Step};
use ferry::config::Flavor;
use ferry::model::OriginFilter;

mod common;
use common::single_region_config;
use ferry::model::{Position, Row, RowChange, Value, base64};
use ferry::sandbox::{MariaDb, MariaDbOptions};
use mysql_async::prelude::Queryable;

const READER_ID: u32 = 9001;

async fn position(db: &MariaDb) -> Position {
    let mut c = db.conn().await.unwrap();
    let pos: String = c.query_first("SELECT @@gtid_binlog_pos").await.unwrap().unwrap();
    pos.parse().unwrap()
}

/// Read from `from` until `want` rows of `table` were forwarded; also returns the outcomes.
async fn capture(db: &MariaDb, from: &Position, table: &str, want: usize) -> (Vec<RowChange>, Vec<Outcome>) {
    let mut source = BinlogSource::connect(
        db.opts(),
        Flavor::Mariadb,
        READER_ID,
        "ferry-test",
        from,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let mut asm = Assembler::new(OriginFilter::Domain(1), from.clone());
    let (mut rows, mut outcomes) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while rows.iter().filter(|r: &&RowChange| r.table == table).count() < want {
        let event = tokio::time::timeout_at(deadline, source.next()).await.expect("rows within 30s").unwrap();
        for step in asm.feed(event).unwrap() {
            match step {
                Step::Rows { rows: r, .. } => rows.extend(r),
                Step::End { outcome, .. } => outcomes.push(outcome),
                Step::Statement { .. } | Step::Foreign { .. } => {}
            }
        }
    }
    (rows.into_iter().filter(|r| r.table == table).collect(), outcomes)
}

/// The text SELECT gives for a column, rendered the same way as a decoded value.
fn render(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Int { v } => v.to_string(),
        Value::Uint { v } => v.to_string(),
        Value::Float { v } => format!("f32:{:08x}", v.to_bits()),
        Value::Double { v } => format!("f64:{:016x}", v.to_bits()),
        Value::Decimal { v }
        | Value::Text { v }
        | Value::Date { v }
        | Value::Json { v }
        | Value::Enum { v } => v.clone(),
        Value::Datetime { v, .. } | Value::Timestamp { v, .. } | Value::Time { v, .. } => v.clone(),
        Value::Bytes { v } => v.iter().map(|b| format!("{b:02X}")).collect(),
        Value::Year { v } => format!("{v:04}"),
        Value::Bit { v, .. } => v.to_string(),
        Value::Set { v } => v.join(","),
    })
}

/// (column, type, SQL expression giving the canonical text of the column)
const COLUMNS: &[(&str, &str, &str)] = &[
    ("ti", "TINYINT", "CAST(ti AS CHAR)"),
    ("tiu", "TINYINT UNSIGNED", "CAST(tiu AS CHAR)"),
    ("si", "SMALLINT", "CAST(si AS CHAR)"),
    ("siu", "SMALLINT UNSIGNED", "CAST(siu AS CHAR)"),
    ("mi", "MEDIUMINT", "CAST(mi AS CHAR)"),
    ("miu", "MEDIUMINT UNSIGNED", "CAST(miu AS CHAR)"),
    ("i", "INT", "CAST(i AS CHAR)"),
    ("iu", "INT UNSIGNED", "CAST(iu AS CHAR)"),
    ("bi", "BIGINT", "CAST(bi AS CHAR)"),
    ("biu", "BIGINT UNSIGNED", "CAST(biu AS CHAR)"),
    ("dec65", "DECIMAL(65,30)", "CAST(dec65 AS CHAR)"),
    ("dec52", "DECIMAL(5,2)", "CAST(dec52 AS CHAR)"),
    ("f", "FLOAT", "f"),
    ("d", "DOUBLE", "d"),
    ("dt", "DATE", "CAST(dt AS CHAR)"),
    ("dt0", "DATETIME", "CAST(dt0 AS CHAR)"),
    ("dt3", "DATETIME(3)", "CAST(dt3 AS CHAR)"),
    ("dt6", "DATETIME(6)", "CAST(dt6 AS CHAR)"),
    ("ts0", "TIMESTAMP NULL", "CAST(ts0 AS CHAR)"),
    ("ts6", "TIMESTAMP(6) NULL", "CAST(ts6 AS CHAR)"),
    ("tm0", "TIME", "CAST(tm0 AS CHAR)"),
    ("tm2", "TIME(2)", "CAST(tm2 AS CHAR)"),
    ("tm6", "TIME(6)", "CAST(tm6 AS CHAR)"),
    ("y", "YEAR", "CAST(y AS CHAR)"),
    ("b1", "BIT(1)", "CAST(b1 AS UNSIGNED)"),
    ("b13", "BIT(13)", "CAST(b13 AS UNSIGNED)"),
    ("b64", "BIT(64)", "CAST(b64 AS UNSIGNED)"),
    ("e", "ENUM('small','médium','large')", "CAST(e AS CHAR)"),
    ("s", "SET('a','b','c','d')", "CAST(s AS CHAR)"),
    ("c", "CHAR(10) CHARACTER SET utf8mb4", "c"),
    ("vc", "VARCHAR(100) CHARACTER SET utf8mb4", "vc"),
    ("tx", "TEXT CHARACTER SET utf8mb4", "tx"),
    ("l1", "VARCHAR(50) CHARACTER SET latin1", "l1"),
    ("bin", "BINARY(4)", "HEX(bin)"),
    ("vb", "VARBINARY(20)", "HEX(vb)"),
    ("bl", "BLOB", "HEX(bl)"),
    ("j", "JSON", "j"),
    ("g", "INT GENERATED ALWAYS AS (i + 1) STORED", "CAST(g AS CHAR)"),
];

/// Edge rows: (id, values for every column except the generated one).
fn rows() -> Vec<String> {
    vec![
        // minimums, negative TIME, zero dates, empty strings
        "(1, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0, \
         '-99999999999999999999999999999999999.999999999999999999999999999999', -999.99, \
         -3.40282e38, -1.7976931348623157e308, '0000-00-00', '0000-00-00 00:00:00', '1000-01-01 00:00:00.000', \
         '1000-01-01 00:00:00.000000', '0000-00-00 00:00:00', '0000-00-00 00:00:00.000000', '-838:59:59', '-838:59:59.00', \
         '-838:59:59.000000', 0, b'0', b'0', b'0', '', '', '', '', '', '', X'00000000', X'', X'', '[]')"
            .into(),
        // maximums, fractions, emoji, latin1, non-UTF-8 bytes, JSON
        "(2, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807, \
         18446744073709551615, '99999999999999999999999999999999999.999999999999999999999999999999', 999.99, \
         3.40282e38, 1.7976931348623157e308, '9999-12-31', '9999-12-31 23:59:59', '9999-12-31 23:59:59.999', \
         '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07', '2038-01-19 03:14:07.999999', '838:59:59', '838:59:59.99', \
         '838:59:59.000000', 2155, b'1', b'1111111111111', b'1111111111111111111111111111111111111111111111111111111111111111', \
         'médium', 'a,c,d', 'emoji📦', 'café ☕ 𝄞', REPEAT('ü', 300), 'café €', X'00FF80FE', X'FFFE00C3', X'DEADBEEF00', \
         '{\"k\": [1, 2.5, \"x\"], \"n\": null}')"
            .into(),
        // ordinary values with small fractions
        "(3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, '0.000000000000000000000000000001', 0.01, 1.5, 0.1, '2026-11-22', \
         '2026-11-22 10:11:12', '2026-11-22 10:11:12.001', '2026-11-22 10:11:12.000001', '1970-01-01 00:00:01', \
         '2026-11-22 10:11:12.500000', '00:00:00', '00:00:00.01', '-00:00:00.000001', 1901, b'1', b'0000000000001', \
         b'1000000000000000000000000000000000000000000000000000000000000000', 'large', 'b', 'x', 'y', 'z', 'ÿ', \
         X'01020304', X'41', X'00', '{}')"
            .into(),
    ]
}

#[tokio::test]
async fn every_column_type_decodes_to_what_select_returns() {
    let db = MariaDb::start_temp(MariaDbOptions::test("types", 101, 1)).await.unwrap();
    let mut c = db.conn().await.unwrap();
    c.query_drop("SET SESSION sql_mode = '', time_zone = '+00:00'").await.unwrap();
    c.query_drop("CREATE DATABASE t").await.unwrap();
    let defs: Vec<String> = COLUMNS.iter().map(|(n, ty, _)| format!("{n} {ty}")).collect();
    c.query_drop(format!("CREATE TABLE t.all_types (id INT PRIMARY KEY, {})", defs.join(", ")))
        .await
        .unwrap();
    let insert_cols: Vec<&str> = COLUMNS.iter().filter(|(n, ..)| *n != "g").map(|(n, ..)| *n).collect();
    let from = position(&db).await;
    for row in rows() {
        c.query_drop(format!("INSERT INTO t.all_types (id, {}) VALUES {row}", insert_cols.join(", ")))
            .await
            .unwrap();
    }
    // A row with NULL in every nullable column.
    c.query_drop("INSERT INTO t.all_types (id) VALUES (4)").await.unwrap();

    let (changes, _) = capture(&db, &from, "all_types", 4).await;
    assert_eq!(changes.len(), 4);
    for change in &changes {
        let after = change.after.as_ref().expect("inserts have an after image");
        let id = match after.get("id") {
            Some(Value::Int { v }) => *v,
            other => panic!("id decoded as {other:?}"),
        };
        assert_eq!(change.key, Row(vec![("id".into(), Value::Int { v: id })]), "primary key of row {id}");
        let exprs: Vec<&str> = COLUMNS.iter().map(|(_, _, e)| *e).collect();
        let sql = format!("SELECT {} FROM t.all_types WHERE id = ?", exprs.join(", "));
        let selected: mysql_async::Row = c.exec_first(sql, (id,)).await.unwrap().unwrap();
        for (i, (name, ty, _)) in COLUMNS.iter().enumerate() {
            let decoded = after.get(name).unwrap_or_else(|| panic!("row {id}: column {name} missing"));
            let expected: Option<String> = match selected.as_ref(i).unwrap() {
                mysql_async::Value::NULL => None,
                mysql_async::Value::Float(f) => Some(format!("f32:{:08x}", f.to_bits())),
                mysql_async::Value::Double(f) => Some(format!("f64:{:016x}", f.to_bits())),
                mysql_async::Value::Bytes(b) => Some(String::from_utf8(b.clone()).unwrap()),
                mysql_async::Value::Int(v) => Some(v.to_string()),
                mysql_async::Value::UInt(v) => Some(v.to_string()),
                other => panic!("{name}: SELECT returned {other:?}"),
            };
            assert_eq!(render(decoded), expected, "row {id} column {name} ({ty}): decoded {decoded:?}");
        }
    }
    // Binary data stays bytes; latin1 and utf8mb4 become text.
    let row2 = changes
        .iter()
        .find_map(|c| c.after.as_ref().filter(|a| a.get("id") == Some(&Value::Int { v: 2 })))
        .unwrap();
    assert_eq!(row2.get("vb"), Some(&Value::Bytes { v: vec![0xff, 0xfe, 0x00, 0xc3] }));
    assert_eq!(row2.get("l1"), Some(&Value::Text { v: "café €".into() }));
    assert_eq!(row2.get("ts6"), Some(&Value::Timestamp { v: "2038-01-19 03:14:07.999999".into(), p: 6 }));
    let json = serde_json::to_string(row2).unwrap();
    assert!(json.contains(&format!("\"{}\"", base64::encode(&[0xde, 0xad, 0xbe, 0xef, 0x00]))), "{json}");
}

#[tokio::test]
async fn alter_table_between_events_never_shifts_values() {
    let db = MariaDb::start_temp(MariaDbOptions::test("alter", 101, 1)).await.unwrap();
    let mut c = db.conn().await.unwrap();
    c.query_drop("CREATE DATABASE t").await.unwrap();
    c.query_drop("CREATE TABLE t.items (id INT PRIMARY KEY, name VARCHAR(20), qty INT)").await.unwrap();
    let from = position(&db).await;
    c.query_drop("INSERT INTO t.items VALUES (1, 'bolt', 10)").await.unwrap();
    c.query_drop("ALTER TABLE t.items ADD COLUMN price DECIMAL(6,2) AFTER id, DROP COLUMN name")
        .await
        .unwrap();
    c.query_drop("INSERT INTO t.items VALUES (2, 9.50, 20)").await.unwrap();
    c.query_drop("UPDATE t.items SET qty = qty - 1 WHERE id = 1").await.unwrap();

    let (changes, _) = capture(&db, &from, "items", 3).await;
    let first = changes[0].after.as_ref().unwrap();
    assert_eq!(first.columns().collect::<Vec<_>>(), ["id", "name", "qty"], "first insert uses the old shape");
    assert_eq!(first.get("name"), Some(&Value::Text { v: "bolt".into() }));
    let second = changes[1].after.as_ref().unwrap();
    assert_eq!(
        second.columns().collect::<Vec<_>>(),
        ["id", "price", "qty"],
        "second insert uses the new shape"
    );
    assert_eq!(second.get("price"), Some(&Value::Decimal { v: "9.50".into() }));
    assert_eq!(second.get("qty"), Some(&Value::Int { v: 20 }));
    let update = &changes[2];
    assert_eq!(update.before.as_ref().unwrap().get("qty"), Some(&Value::Int { v: 10 }));
    assert_eq!(update.after.as_ref().unwrap().get("qty"), Some(&Value::Int { v: 9 }));
    assert_eq!(
        update.after.as_ref().unwrap().get("price"),
        Some(&Value::Null),
        "new column of the old row is NULL"
    );
}

#[tokio::test]
async fn another_regions_transaction_is_not_forwarded() {
    let db = MariaDb::start_temp(MariaDbOptions::test("origin", 101, 1)).await.unwrap();
    let mut c = db.conn().await.unwrap();
    c.query_drop("CREATE DATABASE t").await.unwrap();
    c.query_drop("CREATE TABLE t.x (id INT PRIMARY KEY)").await.unwrap();
    let from = position(&db).await;
    // As ferry's applier does: write under the origin region's GTID identity.
    c.query_drop("SET SESSION gtid_domain_id = 2, server_id = 201, gtid_seq_no = 77").await.unwrap();
    c.query_drop("INSERT INTO t.x VALUES (1)").await.unwrap();
    c.query_drop("SET SESSION gtid_domain_id = 1, server_id = 101").await.unwrap();
    c.query_drop("INSERT INTO t.x VALUES (2)").await.unwrap();

    let (changes, outcomes) = capture(&db, &from, "x", 1).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].key, Row(vec![("id".into(), Value::Int { v: 2 })]), "only the local row");
    assert!(
        outcomes.contains(&Outcome::Foreign),
        "the applied transaction was seen and skipped: {outcomes:?}"
    );
}

#[tokio::test]
async fn preflight_refuses_a_wrong_binlog_setting_and_an_id_used_by_someone_else() {
    use ferry::capture::preflight::check_server;
    let mut opts = MariaDbOptions::test("preflight", 101, 1);
    opts.extra_args = vec!["--binlog-row-metadata=MINIMAL".into()];
    let minimal = MariaDb::start_temp(opts).await.unwrap();
    let mut c = minimal.conn().await.unwrap();
    let err = check_server(&mut c, Flavor::Mariadb, 1001, "ferry-east").await.unwrap_err().to_string();
    assert!(
        err.contains("binlog_row_metadata=MINIMAL") && err.contains("needs binlog_row_metadata=FULL"),
        "{err}"
    );

    let db = MariaDb::start_temp(MariaDbOptions::test("preflight-ok", 101, 1)).await.unwrap();
    let mut c = db.conn().await.unwrap();
    check_server(&mut c, Flavor::Mariadb, 1001, "ferry-east").await.expect("a fresh primary passes");
    assert!(
        check_server(&mut c, Flavor::Mariadb, 101, "ferry-east")
            .await
            .unwrap_err()
            .to_string()
            .contains("own server_id")
    );
    // A live registration with id 1001 under ferry's own name is accepted (a killed capture's
    // stale connection); under another name it is someone else's.
    let from = position(&db).await;
    let _reader =
        BinlogSource::connect(db.opts(), Flavor::Mariadb, 1001, "ferry-east", &from, Duration::from_secs(1))
            .await
            .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hosts: Vec<mysql_async::Row> = c.query("SHOW SLAVE HOSTS").await.unwrap();
        if !hosts.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reader never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_server(&mut c, Flavor::Mariadb, 1001, "ferry-east")
        .await
        .expect("ferry's own registration is not a conflict");
    let err = check_server(&mut c, Flavor::Mariadb, 1001, "ferry-west").await.unwrap_err().to_string();
    assert!(err.contains("in use by the replica at ferry-east"), "{err}");
}

/// Collects records in memory and acknowledges them at once.
struct CollectSink(Arc<Mutex<Vec<Vec<u8>>>>);

impl ferry::transport::kafka::RecordSink for CollectSink {
    async fn send(
        &mut self,
        record: &ferry::transport::envelope::Record,
    ) -> Result<ferry::transport::kafka::AckFuture, ferry::transport::kafka::SinkError> {
        self.0.lock().unwrap().push(record.payload.clone());
        Ok(Box::pin(std::future::ready(Ok(()))))
    }
    async fn flush(&mut self, _: Duration) -> Result<(), ferry::transport::kafka::SinkError> {
        Ok(())
    }
}

#[tokio::test]
async fn generated_columns_are_marked_through_the_pipeline() {
    use ferry::capture::metrics::CaptureMetrics;
    use ferry::capture::pipeline::{self, PipelineSettings, Progress};
    use ferry::transport::envelope::Envelope;

    let db = MariaDb::start_temp(MariaDbOptions::test("generated", 101, 1)).await.unwrap();
    let mut c = db.conn().await.unwrap();
    c.query_drop("CREATE DATABASE t").await.unwrap();
    c.query_drop(
        "CREATE TABLE t.gen (id INT PRIMARY KEY, a INT, s INT AS (a * 2) STORED, v INT AS (a + 1) VIRTUAL)",
    )
    .await
    .unwrap();
    let from = position(&db).await;
    c.query_drop("INSERT INTO t.gen (id, a) VALUES (1, 20)").await.unwrap();

    let records = Arc::new(Mutex::new(Vec::new()));
    let mut sink = CollectSink(records.clone());
    let settings = PipelineSettings {
        region: "east".into(),
        flavor: Flavor::Mariadb,
        origin: OriginFilter::Domain(1),
        reader_server_id: READER_ID,
        heartbeat: Duration::from_secs(1),
        max_record_bytes: 65536,
        max_inflight_bytes: 1 << 20,
        filter: None,
        tombstones: None,
    };
    let (progress, watcher) = tokio::sync::watch::channel(Progress::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = stop.clone();
    let waiter = tokio::spawn(async move {
        let mut watcher = watcher;
        let _ = tokio::time::timeout(Duration::from_secs(30), watcher.wait_for(|p| p.generation > 0)).await;
        stopper.cancel();
    });
    pipeline::run(
        db.opts(),
        &settings,
        from,
        &mut sink,
        &progress,
        &CaptureMetrics::default(),
        &stop,
        &mut ferry::capture::snapshot::Windows::none(),
    )
    .await
    .unwrap();
    waiter.await.unwrap();

    let records = records.lock().unwrap();
    let env = Envelope::parse(records.first().expect("one record")).unwrap();
    let row = &env.rows[0];
    let after = row.after.as_ref().unwrap();
    assert_eq!(after.get("s"), Some(&Value::Int { v: 40 }), "stored generated value");
    let mut generated = row.generated.clone();
    generated.sort();
    let in_image: Vec<&str> = after.columns().collect();
    let expected: Vec<String> =
        ["s", "v"].iter().filter(|c| in_image.contains(c)).map(|c| c.to_string()).collect();
    assert_eq!(generated, expected, "every generated column in the image is marked; image has {in_image:?}");
    assert!(generated.contains(&"s".to_string()), "the stored generated column is marked");
    assert_eq!(
        progress.borrow().position.to_string(),
        format!("1-101-{}", env.seq),
        "progress after the ack"
    );
}

#[tokio::test]
async fn ferry_run_refuses_a_checkpoint_whose_binlogs_were_purged() {
    let db = MariaDb::start_temp(MariaDbOptions::test("purged", 101, 1)).await.unwrap();
    let mut c = db.conn().await.unwrap();
    for sql in ferry::schema::STATEMENTS {
        c.query_drop(*sql).await.unwrap();
    }
    c.query_drop("CREATE DATABASE t").await.unwrap();
    c.query_drop("CREATE TABLE t.x (id INT PRIMARY KEY)").await.unwrap();
    let early = position(&db).await;
    for i in 0..5 {
        c.query_drop(format!("INSERT INTO t.x VALUES ({i})")).await.unwrap();
    }
    c.query_drop("FLUSH BINARY LOGS").await.unwrap();
    let logs: Vec<(String, u64)> = c.query("SHOW BINARY LOGS").await.unwrap();
    let (first, last) = (logs[0].0.clone(), logs.last().unwrap().0.clone());
    // MariaDB keeps a file crash recovery still needs until its binlog checkpoint moves on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        c.query_drop(format!("PURGE BINARY LOGS TO '{last}'")).await.unwrap();
        let now: Vec<(String, u64)> = c.query("SHOW BINARY LOGS").await.unwrap();
        if now[0].0 != first {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{first} was never purged");
        c.query_drop("FLUSH BINARY LOGS").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A checkpoint from before the purge: the 5 inserts are gone from the binlogs.
    c.exec_drop(
        "INSERT INTO ferry.capture_checkpoint (stream, gtid) VALUES ('capture', ?)",
        (early.to_string(),),
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = single_region_config(
        dir.path(),
        &db,
        "http: { listen: \"127.0.0.1:0\" }\ncapture: { server_id: 1001 }\n",
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let _ = child.start_kill();
    let mut log = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut log).await.unwrap();
    let status = status.unwrap_or_else(|_| panic!("ferry run did not exit by itself; log:\n{log}")).unwrap();
    assert_eq!(status.code(), Some(1), "refusal exits non-zero; log:\n{log}");
    let first_missing = early.get(1).map(|g| g.seq + 1).unwrap_or(1);
    assert!(log.contains(&format!("1-*-{first_missing}..")), "names the missing range; log:\n{log}");
    assert!(log.contains("purged") && log.contains("re-sync"), "{log}");
}

#[tokio::test]
async fn sigterm_stops_capture_promptly_while_the_broker_is_unreachable() {
    let db = MariaDb::start_temp(MariaDbOptions::test("no-broker", 101, 1)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = single_region_config(
        dir.path(),
        &db,
        "http: { listen: \"127.0.0.1:0\" }\ncapture: { server_id: 1001 }\n",
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = tokio::time::Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status =
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("stops within 10s").unwrap();
    assert_eq!(status.code(), Some(0), "a clean stop");
    assert!(sent.elapsed() < Duration::from_secs(5), "took {:?}", sent.elapsed());
}
