//! The data path's promises against real servers (MariaDB, the nisshi broker): what a record
//! may make apply write, what happens to a transaction cut short by a capture restart, a gap
//! in an origin's stream, changes that find no row, and the start-up checks that keep a wrong
//! configuration from publishing nothing or losing data. Each test failed on the code before
//! the fix it guards (issue 13).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry::capture::txn::TxnHeader;
use ferry::model::{Gtid, MariaGtid, Op, Row, RowChange, Value};
use ferry::sandbox::{Broker, MariaDb, MariaDbOptions, http_get, pick_port};
use ferry::transport::envelope::RecordBuilder;
use mysql_async::prelude::Queryable;

mod common;
use common::{EAST_SERVER_ID, FERRY, Reaped, apply_only_config, dead_letters, produce, spawn_ferry};

const TOPIC: &str = "ferry.east.changes";
const DLQ: &str = "ferry.west.dlq";

fn row(db: &str, table: &str, op: Op, id: i64, note: &str) -> RowChange {
    let image =
        Row(vec![("id".into(), Value::Int { v: id }), ("note".into(), Value::Text { v: note.into() })]);
    let (before, after) = match op {
        Op::Insert | Op::Snapshot => (None, Some(image)),
        Op::Update => (Some(image.clone()), Some(image)),
        Op::Delete => (Some(image), None),
    };
    RowChange {
        db: db.into(),
        table: table.into(),
        op,
        key: Row(vec![("id".into(), Value::Int { v: id })]),
        before,
        after,
        generated: Vec::new(),
    }
}

/// The records of one transaction `domain-server-seq` claiming `region`, each at most
/// `max_bytes`, naming `prev` as the previous published transaction.
fn txn(
    region: &str,
    gtid: (u32, u32, u64),
    prev: Option<&str>,
    rows: &[RowChange],
    max_bytes: usize,
) -> Vec<Vec<u8>> {
    let (domain, server_id, seq) = gtid;
    let header = TxnHeader {
        gtid: Gtid::MariaDb(MariaGtid { domain, server_id, seq }),
        server_id,
        commit_time_us: 1_795_000_000_000_000 + seq as i64,
    };
    let mut b = RecordBuilder::new(region, max_bytes).after(prev.map(|p| p.parse().unwrap()));
    let mut out: Vec<Vec<u8>> = Vec::new();
    for r in rows {
        out.extend(b.push(&header, r).unwrap().map(|r| r.payload));
    }
    out.push(b.finish(&header).payload);
    out
}

/// East's transaction `seq` inserting `ids` into `t.x`, in one record.
fn east(seq: u64, prev: Option<&str>, ids: &[i64]) -> Vec<u8> {
    let rows: Vec<RowChange> =
        ids.iter().map(|i| row("t", "x", Op::Insert, *i, &format!("row {i}"))).collect();
    let mut records = txn("east", (1, EAST_SERVER_ID, seq), prev, &rows, 1 << 20);
    assert_eq!(records.len(), 1);
    records.remove(0)
}

struct West {
    db: MariaDb,
    broker: Broker,
    dir: tempfile::TempDir,
    config: PathBuf,
    http: std::net::SocketAddr,
}

impl West {
    /// West's primary with `t.x`, a broker with east's topic, and an apply-only config with
    /// `apply` (YAML flow mapping) and `extra` top-level YAML appended.
    async fn start(name: &str, apply: &str, extra: &str) -> Self {
        let db = MariaDb::start_temp(MariaDbOptions::test(name, 201, 2)).await.unwrap();
        let broker = Broker::start_temp().await.unwrap();
        broker.create_topic(TOPIC, 1).await.unwrap();
        let mut c = db.conn().await.unwrap();
        c.query_drop("CREATE DATABASE t").await.unwrap();
        c.query_drop("CREATE TABLE t.x (id INT PRIMARY KEY, note VARCHAR(40))").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let http =
            std::net::SocketAddr::from(([127, 0, 0, 1], pick_port([127, 0, 0, 1].into(), None).unwrap()));
        let config = apply_only_config(dir.path(), &db, &broker.bootstrap(), http, apply);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(extra);
        std::fs::write(&config, text).unwrap();
        Self { db, broker, dir, config, http }
    }

    fn run(&self) -> Reaped {
        Reaped(spawn_ferry(&self.config, &self.dir.path().join("west.log")))
    }

    async fn ids(&self) -> Vec<i64> {
        self.db.conn().await.unwrap().query("SELECT id FROM t.x ORDER BY id").await.unwrap()
    }

    async fn wait_ids(&self, want: &[i64]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ids().await != want {
            assert!(
                Instant::now() < deadline,
                "expected rows {want:?}, have {:?}; log:\n{}",
                self.ids().await,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> String {
        http_get(self.http, "/metrics").await.map(|(_, m)| m).unwrap_or_default()
    }

    async fn status(&self) -> serde_json::Value {
        let (_, body) = http_get(self.http, "/status").await.unwrap();
        serde_json::from_str(&body).unwrap()
    }

    /// `/health/ready` once it answers 503 with `needle` in its body.
    async fn wait_not_ready(&self, needle: &str) -> String {
        wait_not_ready(self.http, needle, &self.dir.path().join("west.log")).await
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("west.log")).unwrap_or_default();
        text[text.len().saturating_sub(4000)..].to_string()
    }
}

#[tokio::test]
async fn records_claiming_what_their_origin_may_not_write_are_dead_lettered_and_nothing_of_them_is_written() {
    let west = West::start("west-forged", "{ on_error: skip }", "").await;
    let mut root = west.db.root_conn().await.unwrap();
    // A table in the server's own schema that a forged record aims at.
    root.query_drop("CREATE TABLE mysql.forged (id INT PRIMARY KEY, note VARCHAR(40))").await.unwrap();
    let x = |id: i64| vec![row("t", "x", Op::Insert, id, "forged")];
    let forged = [
        txn("west", (1, EAST_SERVER_ID, 2), None, &x(2), 1 << 20),
        txn("east", (2, EAST_SERVER_ID, 3), None, &x(3), 1 << 20),
        txn("east", (1, 999, 4), None, &x(4), 1 << 20),
        txn(
            "east",
            (1, EAST_SERVER_ID, 5),
            None,
            &[row("mysql", "forged", Op::Insert, 5, "forged")],
            1 << 20,
        ),
        txn(
            "east",
            (1, EAST_SERVER_ID, 6),
            None,
            &[row("ferry", "applied", Op::Insert, 6, "forged")],
            1 << 20,
        ),
    ];
    let mut records = vec![east(1, None, &[1])];
    records.extend(forged.into_iter().flatten());
    records.push(east(7, None, &[7]));
    produce(&west.broker.bootstrap(), TOPIC, &records).await;
    let _ferry = west.run();
    west.wait_ids(&[1, 7]).await;

    let parked = dead_letters(&west.broker.bootstrap(), DLQ, 5);
    let summary: Vec<(&str, &str, i64)> = parked
        .iter()
        .map(|p| {
            (p["kind"].as_str().unwrap(), p["gtid"].as_str().unwrap(), p["first_offset"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("refused", "1-101-2", 1),
            ("refused", "2-101-3", 2),
            ("refused", "1-999-4", 3),
            ("refused", "1-101-5", 4),
            ("refused", "1-101-6", 5)
        ],
        "{parked:?}"
    );
    let reasons: Vec<&str> = parked.iter().map(|p| p["reason"].as_str().unwrap()).collect();
    for (reason, want) in reasons.iter().zip([
        "claims region `west`",
        "not in east's domain 1",
        "server id 999",
        "system schema `mysql`",
        "not `ferry.applied`",
    ]) {
        assert!(reason.contains(want), "expected `{want}` in `{reason}`");
    }
    assert!(parked.iter().all(|p| p["rows"].as_array().is_some_and(|r| r.len() == 1)), "the rows are kept");
    let mut c = west.db.conn().await.unwrap();
    let in_mysql: Vec<i64> = root.query("SELECT id FROM mysql.forged").await.unwrap();
    assert!(in_mysql.is_empty(), "nothing written to the mysql schema: {in_mysql:?}");
    let progress: Vec<(String, String)> =
        c.query("SELECT origin, gtid FROM ferry.applied ORDER BY origin").await.unwrap();
    assert_eq!(
        progress,
        vec![("east".to_string(), "1-101-7".to_string())],
        "progress only under the topic's origin"
    );
    let metrics = west.metrics().await;
    assert!(
        metrics.contains("ferry_apply_dlq_records_total{origin=\"east\",kind=\"refused\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_transaction_cut_short_by_a_capture_restart_is_superseded_by_the_resend_not_dead_lettered() {
    let west = West::start("west-resend", "{}", "").await;
    // Transaction 9 spans three records; capture died after sending two of them, restarted
    // from its checkpoint (after 5) and sent 6 and 9 again, whole.
    let big: Vec<RowChange> = (90..96).map(|i| row("t", "x", Op::Insert, i, &"n".repeat(30))).collect();
    let nine = txn("east", (1, EAST_SERVER_ID, 9), Some("1-101-6"), &big, 300);
    assert!(nine.len() >= 3, "the test needs a transaction of several records, got {}", nine.len());
    let mut records = vec![east(5, None, &[5]), east(6, Some("1-101-5"), &[6])];
    records.extend(nine[..2].iter().cloned());
    records.push(east(6, Some("1-101-5"), &[6]));
    records.extend(nine.iter().cloned());
    records.push(east(10, Some("1-101-9"), &[10]));
    produce(&west.broker.bootstrap(), TOPIC, &records).await;
    let _ferry = west.run();
    let mut want: Vec<i64> = vec![5, 6, 10];
    want.extend(90..96);
    west.wait_ids(&want).await;
    let metrics = west.metrics().await;
    assert!(metrics.contains("ferry_apply_superseded_total{origin=\"east\"} 1"), "{metrics}");
    assert!(metrics.contains("ferry_apply_paused{origin=\"east\"} 0"), "{metrics}");
    assert!(!metrics.contains("ferry_apply_dlq_records_total{"), "nothing dead-lettered: {metrics}");
    let (code, body) = http_get(west.http, "/health/ready").await.unwrap();
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn a_gap_in_the_origins_stream_stops_applying_it_with_the_reason_whatever_the_error_policy() {
    let west = West::start("west-gap", "{ on_error: skip }", "").await;
    // 3 and 4 never reached the topic (deleted by retention, say): 5 names 4 as its predecessor.
    let records = vec![east(1, None, &[1]), east(2, Some("1-101-1"), &[2]), east(5, Some("1-101-4"), &[5])];
    produce(&west.broker.bootstrap(), TOPIC, &records).await;
    let ferry = west.run();
    let body = west.wait_not_ready("gap in east's stream").await;
    assert!(body.contains("1-101-5") && body.contains("1-101-4") && body.contains("1-101-2"), "{body}");
    assert_eq!(west.ids().await, vec![1, 2], "what came before the gap is applied, nothing after it");
    let metrics = west.metrics().await;
    assert!(metrics.contains("ferry_apply_gap{origin=\"east\"} 1"), "{metrics}");
    let status = west.status().await;
    assert_eq!(status["details"]["apply-east"]["gap"], true, "{status}");
    drop(ferry);

    // The stored offset is past the end of the topic (the topic was recreated): stopped at
    // start, with both offsets.
    let mut c = west.db.conn().await.unwrap();
    c.query_drop("UPDATE ferry.applied SET kafka_offset = 40 WHERE origin = 'east'").await.unwrap();
    let _ferry = west.run();
    let body = west.wait_not_ready("the topic was recreated").await;
    assert!(body.contains("ends at offset 3") && body.contains("offset 40"), "{body}");
    assert_eq!(west.ids().await, vec![1, 2]);
}

#[tokio::test]
async fn ungoverned_changes_that_find_no_row_or_write_nothing_are_dead_lettered_not_dropped() {
    let tables = "conflicts:\n  tables:\n    t.x: { single_writer: east }\n";
    let west = West::start("west-nothing", "{ on_error: skip, max_group_transactions: 1 }", tables).await;
    let mut c = west.db.conn().await.unwrap();
    c.query_drop("INSERT INTO t.x VALUES (1, 'row 1')").await.unwrap();
    c.query_drop("CREATE TABLE t.keyless (id INT, note VARCHAR(40))").await.unwrap();
    let mut keyless = row("t", "keyless", Op::Delete, 3, "absent");
    keyless.key = Row(Vec::new());
    let mut no_image = row("t", "x", Op::Update, 1, "row 1");
    no_image.after = None;
    let steps = [
        vec![row("t", "x", Op::Update, 8, "absent")],
        vec![row("t", "x", Op::Delete, 9, "absent")],
        vec![keyless],
        vec![no_image],
        vec![row("t", "x", Op::Update, 1, "row 1")],
    ];
    let mut records: Vec<Vec<u8>> = Vec::new();
    for (i, rows) in steps.iter().enumerate() {
        records.extend(txn("east", (1, EAST_SERVER_ID, i as u64 + 1), None, rows, 1 << 20));
    }
    records.push(east(6, None, &[6]));
    produce(&west.broker.bootstrap(), TOPIC, &records).await;
    let _ferry = west.run();
    west.wait_ids(&[1, 6]).await;
    let parked = dead_letters(&west.broker.bootstrap(), DLQ, 4);
    let summary: Vec<(&str, &str)> =
        parked.iter().map(|p| (p["gtid"].as_str().unwrap(), p["reason"].as_str().unwrap())).collect();
    assert_eq!(parked.len(), 4, "{summary:?}");
    for ((gtid, reason), (want_gtid, want)) in summary.iter().zip([
        ("1-101-1", "found 0 of the 1 row"),
        ("1-101-2", "found 0 of the 1 row"),
        ("1-101-3", "found 0 of the 1 row"),
        ("1-101-4", "nothing to write"),
    ]) {
        assert_eq!(*gtid, want_gtid);
        assert!(reason.contains(want), "{gtid}: expected `{want}` in `{reason}`");
    }
    let applied: Option<String> =
        c.query_first("SELECT gtid FROM ferry.applied WHERE origin = 'east'").await.unwrap();
    assert_eq!(applied.as_deref(), Some("1-101-6"));
}

#[tokio::test]
async fn a_missing_privilege_during_apply_dead_letters_nothing_and_apply_resumes_once_granted() {
    let west = West::start("west-grant", "{}", "").await;
    // West's apply runs as `applier`: everything on ferry's schema and what replication needs,
    // but only SELECT on the application's schema.
    let mut root = west.db.root_conn().await.unwrap();
    for sql in [
        "CREATE USER applier@'%' IDENTIFIED BY 'applier-pw'",
        "GRANT ALL PRIVILEGES ON ferry.* TO applier@'%'",
        "GRANT SELECT ON t.* TO applier@'%'",
        "GRANT REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR, REPLICATION MASTER ADMIN, BINLOG REPLAY, \
         READ_ONLY ADMIN ON *.* TO applier@'%'",
    ] {
        root.query_drop(sql).await.unwrap();
    }
    let text = std::fs::read_to_string(&west.config).unwrap();
    let (east_part, west_part) = text.split_at(text.find("  west:").unwrap());
    let west_part = west_part.replacen("user: ferry", "user: applier", 1).replacen(
        "password: ferry-test-pw",
        "password: applier-pw",
        1,
    );
    std::fs::write(&west.config, format!("{east_part}{west_part}")).unwrap();
    let records = vec![east(1, None, &[1]), east(2, Some("1-101-1"), &[2]), east(3, Some("1-101-2"), &[3])];
    produce(&west.broker.bootstrap(), TOPIC, &records).await;
    let _ferry = west.run();

    let body = west.wait_not_ready("refuses ferry's account").await;
    assert!(
        body.contains("command denied") && body.contains("`t`.`x`"),
        "the reason names the privilege and the table: {body}"
    );
    let metrics = west.metrics().await;
    assert!(metrics.contains("ferry_apply_refused{origin=\"east\"} 1"), "{metrics}");
    assert!(metrics.contains("ferry_apply_errors_total{origin=\"east\",kind=\"refused\"}"), "{metrics}");
    assert_eq!(west.ids().await, Vec::<i64>::new());

    root.query_drop("GRANT INSERT, UPDATE, DELETE ON t.* TO applier@'%'").await.unwrap();
    let granted = Instant::now();
    west.wait_ids(&[1, 2, 3]).await;
    println!("applied {:?} after the grant", granted.elapsed());
    let metrics = west.metrics().await;
    assert!(metrics.contains("ferry_apply_refused{origin=\"east\"} 0"), "{metrics}");
    assert!(!metrics.contains("ferry_apply_dlq_records_total{"), "nothing dead-lettered: {metrics}");
    assert!(metrics.contains("ferry_apply_paused{origin=\"east\"} 0"), "{metrics}");
    let (code, body) = http_get(west.http, "/health/ready").await.unwrap();
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn a_row_a_local_write_creates_while_apply_inserts_it_is_decided_by_the_rules_not_overwritten() {
    let west = West::start("west-race", "{}", "").await;
    let mut local = west.db.conn().await.unwrap();
    local
        .query_drop(
            "CREATE TABLE t.v (id INT PRIMARY KEY, note VARCHAR(40), updated_at DATETIME(6) NOT NULL)",
        )
        .await
        .unwrap();
    // West inserts row 7 (newer than east's) and has not committed when apply reads: apply
    // finds no row 7, so nothing to decide, and its insert waits for west's lock.
    local.query_drop("BEGIN").await.unwrap();
    local.query_drop("INSERT INTO t.v VALUES (7, 'west', '2026-01-01 00:00:09')").await.unwrap();
    let image = Row(vec![
        ("id".into(), Value::Int { v: 7 }),
        ("note".into(), Value::Text { v: "east".into() }),
        ("updated_at".into(), Value::Datetime { v: "2026-01-01 00:00:01.000000".into(), p: 6 }),
    ]);
    let insert = RowChange {
        db: "t".into(),
        table: "v".into(),
        op: Op::Insert,
        key: Row(vec![("id".into(), Value::Int { v: 7 })]),
        before: None,
        after: Some(image),
        generated: Vec::new(),
    };
    let records = txn("east", (1, EAST_SERVER_ID, 1), None, &[insert], 1 << 20);
    produce(&west.broker.bootstrap(), TOPIC, &records).await;
    let _ferry = west.run();
    let mut root = west.db.root_conn().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Apply's insert of row 7, waiting for west's lock (the sandbox's lock wait timeout
        // is short; apply retries it until west commits).
        let waiting: Option<u64> = root
            .query_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'INSERT INTO `t`.`v`%'",
            )
            .await
            .unwrap();
        if waiting.unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "apply never waited for west's lock; log:\n{}", west.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    local.query_drop("COMMIT").await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied: Option<String> =
            root.query_first("SELECT gtid FROM ferry.applied WHERE origin = 'east'").await.unwrap();
        if applied.as_deref() == Some("1-101-1") {
            break;
        }
        assert!(Instant::now() < deadline, "east's insert was never applied; log:\n{}", west.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let note: Option<String> = root.query_first("SELECT note FROM t.v WHERE id = 7").await.unwrap();
    assert_eq!(
        note.as_deref(),
        Some("west"),
        "west's newer row stays; east's older insert lost the conflict"
    );
    let logged: Vec<(String, String)> =
        root.query("SELECT kind, winner FROM ferry.conflicts WHERE table_name = 't.v'").await.unwrap();
    assert_eq!(logged, vec![("insert_insert".to_string(), "local".to_string())], "the conflict is logged");
    let metrics = west.metrics().await;
    assert!(metrics.contains("ferry_apply_errors_total{origin=\"east\",kind=\"raced\"} 1"), "{metrics}");
    assert!(!metrics.contains("ferry_apply_dlq_records_total{"), "nothing dead-lettered: {metrics}");
}

#[tokio::test]
async fn a_wrong_password_for_apply_is_a_refusal_shown_as_such_not_a_lost_connection() {
    let west = West::start("west-password", "{}", "").await;
    let text = std::fs::read_to_string(&west.config).unwrap();
    let (east_part, west_part) = text.split_at(text.find("  west:").unwrap());
    let west_part = west_part.replacen("password: ferry-test-pw", "password: not-the-password", 1);
    std::fs::write(&west.config, format!("{east_part}{west_part}")).unwrap();
    produce(&west.broker.bootstrap(), TOPIC, &[east(1, None, &[1])]).await;
    let _ferry = west.run();
    let body = west.wait_not_ready("refuses ferry's account").await;
    assert!(body.contains("Access denied"), "{body}");
    let metrics = west.metrics().await;
    assert!(metrics.contains("ferry_apply_refused{origin=\"east\"} 1"), "{metrics}");
    assert!(!metrics.contains("ferry_apply_dlq_records_total{"), "nothing dead-lettered: {metrics}");
}

/// `/health/ready` at `http` once it answers 503 with `needle` in its body (within 30 s; the
/// tail of `log` shows why not).
async fn wait_not_ready(http: std::net::SocketAddr, needle: &str, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(http, "/health/ready").await.unwrap_or((0, String::new()));
        if code == 503 && body.contains(needle) {
            return body;
        }
        if Instant::now() >= deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!(
                "never not-ready with `{needle}`; last: {code} {body}\n{}",
                &text[text.len().saturating_sub(4000)..]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The kafka section for one broker: one copy, said explicitly.
fn single_broker(broker: &Broker) -> String {
    format!("{{ bootstrap: [\"{}\"], replication_factor: 1, min_insync_replicas: 1 }}", broker.bootstrap())
}

/// A one-region config (`east`) on `db` with capture, and `kafka` as its kafka section.
fn capture_config(dir: &Path, db: &MariaDb, kafka: &str, domain: u32) -> (PathBuf, std::net::SocketAddr) {
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], pick_port([127, 0, 0, 1].into(), None).unwrap()));
    let region = common::region_yaml("east", db, domain, 1, "127.0.0.1:9");
    let region =
        region.lines().filter(|l| !l.trim_start().starts_with("kafka:")).collect::<Vec<_>>().join("\n");
    let path = dir.join("east.yaml");
    std::fs::write(
        &path,
        format!("region: east\nregions:\n{region}\n    kafka: {kafka}\nhttp: {{ listen: \"{http}\" }}\ncapture: {{ server_id: 1001 }}\n"),
    )
    .unwrap();
    (path, http)
}

/// `ferry run` that must stop by itself within 30 s: its exit code and log.
fn run_to_exit(config: &Path, log: &Path) -> (Option<i32>, String) {
    let mut child = Reaped(spawn_ferry(config, log));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ferry kept running: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    (status.code(), std::fs::read_to_string(log).unwrap_or_default())
}

#[tokio::test]
async fn capture_refuses_a_configured_identity_that_is_not_the_servers_and_validate_says_so() {
    let db = MariaDb::start_temp(MariaDbOptions::test("east-identity", 101, 1)).await.unwrap();
    let broker = Broker::start_temp().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kafka = single_broker(&broker);
    let (config, _) = capture_config(dir.path(), &db, &kafka, 7);
    let out = std::process::Command::new(FERRY).args(["validate", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("regions.east.mysql.gtid_domain_id")
            && err.contains("is 7")
            && err.contains("gtid_domain_id 1"),
        "{err}"
    );
    let (code, log) = run_to_exit(&config, &dir.path().join("east.log"));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("is 7, but the primary writes under gtid_domain_id 1"), "{log}");
}

#[tokio::test]
async fn capture_refuses_a_server_without_binlog_checksums() {
    let mut o = MariaDbOptions::test("east-nocrc", 101, 1);
    o.extra_args = vec!["--binlog-checksum=NONE".into()];
    let db = MariaDb::start_temp(o).await.unwrap();
    let broker = Broker::start_temp().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kafka = single_broker(&broker);
    let (config, _) = capture_config(dir.path(), &db, &kafka, 1);
    let (code, log) = run_to_exit(&config, &dir.path().join("east.log"));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("binlog_checksum=NONE; capture needs binlog_checksum=CRC32"), "{log}");
}

#[tokio::test]
async fn capture_refuses_a_topic_keeping_fewer_copies_than_configured() {
    let db = MariaDb::start_temp(MariaDbOptions::test("east-copies", 101, 1)).await.unwrap();
    let broker = Broker::start_temp().await.unwrap();
    // The topic exists with one copy; the configuration asks for the production defaults.
    broker.create_topic(TOPIC, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, http) =
        capture_config(dir.path(), &db, &format!("{{ bootstrap: [\"{}\"] }}", broker.bootstrap()), 1);
    let _ferry = Reaped(spawn_ferry(&config, &dir.path().join("east.log")));
    let body = wait_not_ready(http, "refusing to publish", &dir.path().join("east.log")).await;
    assert!(body.contains("keeps 1 copy") && body.contains("replication_factor 3"), "{body}");
}

#[tokio::test]
async fn schema_install_never_drops_a_table_whose_columns_the_account_cannot_see() {
    let db = MariaDb::start_temp(MariaDbOptions::test("schema-grants", 101, 1)).await.unwrap();
    let mut root = db.root_conn().await.unwrap();
    ferry::schema::install(&mut root).await.unwrap();
    root.query_drop("INSERT INTO ferry.tombstones (table_name, row_key, version_us, origin) VALUES ('psi.stock', 'k1', 1, 'east')")
        .await
        .unwrap();
    // An account that may create and drop ferry's tables but holds no column privilege on the
    // tombstones: information_schema shows it none of their columns.
    root.query_drop("CREATE USER narrow@'%' IDENTIFIED BY 'narrow-pw'").await.unwrap();
    root.query_drop("GRANT CREATE, DROP ON ferry.* TO narrow@'%'").await.unwrap();
    let mut narrow = mysql_async::Conn::new(db.opts_as("narrow", "narrow-pw")).await.unwrap();
    let visible: Option<u8> = narrow
        .query_first("SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'ferry' AND TABLE_NAME = 'tombstones'")
        .await
        .unwrap();
    assert_eq!(visible, None, "the account must not see the columns for this test to mean anything");
    ferry::schema::install(&mut narrow).await.unwrap();
    let kept: Vec<String> = root.query("SELECT row_key FROM ferry.tombstones").await.unwrap();
    assert_eq!(kept, vec!["k1".to_string()], "the tombstone survives");
}

#[tokio::test]
async fn re_pointing_a_replica_works_with_quotes_and_backslashes_in_the_password_under_no_backslash_escapes()
{
    use ferry::failover::mysql::{Accounts, replicate, replicates_from};
    let primary = MariaDb::start_temp(MariaDbOptions::test("quote-primary", 301, 3)).await.unwrap();
    let replica = MariaDb::start_idle_replica(
        MariaDbOptions::test("quote-replica", 302, 3),
        ferry::sandbox::ServerDir::temp("quote-replica").unwrap(),
    )
    .await
    .unwrap();
    let password = r#"it's a \'back\slash\\ "pw""#;
    let mut root = primary.root_conn().await.unwrap();
    // CREATE USER takes no placeholder: a literal under this session's NO_BACKSLASH_ESCAPES.
    root.query_drop("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'").await.unwrap();
    let literal = password.replace('\'', "''");
    root.query_drop(format!("CREATE USER quoted@'%' IDENTIFIED BY '{literal}'")).await.unwrap();
    root.query_drop("GRANT REPLICATION SLAVE ON *.* TO quoted@'%'").await.unwrap();
    // The server's global mode makes a backslash a plain character: a literal escaped with
    // backslashes ends at the password's first quote.
    let mut replica_root = replica.root_conn().await.unwrap();
    replica_root.query_drop("SET GLOBAL sql_mode = 'NO_BACKSLASH_ESCAPES'").await.unwrap();
    // ferry's account on the replica (the idle replica has only root until it replicates),
    // kept out of its binlog: a local GTID there would stop strict-mode replication.
    replica_root.query_drop("SET SESSION sql_log_bin = 0").await.unwrap();
    replica_root.query_drop("CREATE USER admin@'%' IDENTIFIED BY 'admin-pw'").await.unwrap();
    replica_root.query_drop("GRANT ALL ON *.* TO admin@'%'").await.unwrap();
    let accounts = Accounts {
        user: "admin".into(),
        password: "admin-pw".into(),
        repl_user: "quoted".into(),
        repl_password: password.into(),
        flavor: ferry::config::Flavor::Mariadb,
    };
    replicate(&replica.db_server(), &primary.db_server(), &accounts, false).await.unwrap();
    assert!(
        replicates_from(&replica.db_server(), &primary.db_server(), &accounts, Duration::from_secs(5))
            .await
            .unwrap(),
        "the replica authenticated with the exact password and replicates"
    );
}
