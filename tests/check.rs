//! `ferry check` on two live regions (issue 15): differences made behind ferry's back are
//! found exactly, and nothing else, while a writer keeps changing other rows in both regions;
//! `--repair` fixes them through the pipeline, and a repair never overwrites a write made
//! after the check.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry::sandbox::MariaDb;
use mysql_async::prelude::Queryable;

mod common;
use common::{FERRY, Reaped, region_config, spawn_ferry, two_regions, wait_ready};

const TABLE: &str = "CREATE TABLE psi.items (
    id INT PRIMARY KEY,
    note VARCHAR(40) COLLATE utf8mb4_unicode_ci NOT NULL,
    amount DECIMAL(12,4) NOT NULL,
    data VARBINARY(16) NULL,
    extra INT NULL,
    ratio FLOAT NOT NULL,
    updated_at DATETIME(6) NOT NULL
)";
const GADGETS: &str =
    "CREATE TABLE psi.gadgets (id INT PRIMARY KEY, a INT, b INT, updated_at DATETIME(6) NOT NULL)";
/// A composite key, so chunks are cut on two columns.
const PAIRS: &str = "CREATE TABLE psi.pairs (a INT NOT NULL, b VARCHAR(10) NOT NULL, v INT NOT NULL, \
                     updated_at DATETIME(6) NOT NULL, PRIMARY KEY (a, b))";
const ROWS: i64 = 3_000;
/// The writer changes rows above this one; differences are injected below it.
const HOT: i64 = 2_000;

/// The same rows in both regions, written outside the binlog (as a restored copy would be).
async fn seed(db: &MariaDb) {
    let mut c = db.root_conn().await.unwrap();
    c.query_drop("SET SESSION sql_log_bin = 0").await.unwrap();
    c.query_drop(TABLE).await.unwrap();
    c.query_drop(GADGETS).await.unwrap();
    let mut values = Vec::new();
    for id in 1..=ROWS {
        values.push(format!(
            "({id}, 'note {id} abc', {id}.1234, UNHEX('{:08X}'), {}, {}.5, '2026-11-01 00:00:00.{:06}')",
            id * 7,
            id % 5,
            id,
            id % 1_000_000
        ));
    }
    for chunk in values.chunks(500) {
        c.query_drop(format!("INSERT INTO psi.items VALUES {}", chunk.join(","))).await.unwrap();
    }
    c.query_drop("INSERT INTO psi.gadgets VALUES (1, 1, 1, '2026-11-01 00:00:00')").await.unwrap();
    c.query_drop(PAIRS).await.unwrap();
    let pairs: Vec<String> =
        (0..2_500).map(|i| format!("({}, 'k{}', {i}, '2026-11-01 00:00:00')", i / 10, i % 10)).collect();
    c.query_drop(format!("INSERT INTO psi.pairs VALUES {}", pairs.join(","))).await.unwrap();
}

/// Two seeded regions under `ferry run`, both ready.
struct Live {
    east: MariaDb,
    west: MariaDb,
    east_cfg: std::path::PathBuf,
    _broker: ferry::sandbox::Broker,
    _dir: tempfile::TempDir,
    _ferries: [Reaped; 2],
}

async fn live() -> Live {
    let (east, west, broker) = two_regions().await;
    seed(&east).await;
    seed(&west).await;
    let dir = tempfile::tempdir().unwrap();
    let regions = [("east", &east), ("west", &west)];
    let (east_cfg, east_http) = region_config(dir.path(), "east", &regions, &broker.bootstrap());
    let (west_cfg, west_http) = region_config(dir.path(), "west", &regions, &broker.bootstrap());
    let ferries = [
        Reaped(spawn_ferry(&east_cfg, &dir.path().join("east.log"))),
        Reaped(spawn_ferry(&west_cfg, &dir.path().join("west.log"))),
    ];
    wait_ready(east_http).await;
    wait_ready(west_http).await;
    Live { east, west, east_cfg, _broker: broker, _dir: dir, _ferries: ferries }
}

/// Keeps updating the hot rows in `db` until `stop`.
fn writer(db: &MariaDb, region: &'static str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let opts = db.opts();
    tokio::spawn(async move {
        let mut c = mysql_async::Conn::new(opts).await.unwrap();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let id = HOT + 1 + (n as i64 * 37 + if region == "east" { 0 } else { 11 }) % (ROWS - HOT);
            c.exec_drop(
                "UPDATE psi.items SET note = ?, extra = extra + 1, updated_at = NOW(6) WHERE id = ?",
                (format!("{region} {n}"), id),
            )
            .await
            .unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    })
}

/// Run `ferry check` and return its exit code and its JSON lines.
fn check(config: &std::path::Path, extra: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let out = std::process::Command::new(FERRY)
        .args(["check", "--json", "--tables", "psi.items,psi.gadgets,psi.pairs", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{e}: {l}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
        })
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

/// (table, key id, kind, columns) of each difference.
fn found(lines: &[serde_json::Value]) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| l.get("kind").is_some())
        .map(|l| {
            format!(
                "{} {} {} {}",
                l["table"].as_str().unwrap(),
                l.get("key").map(|k| k.to_string()).unwrap_or_default(),
                l["kind"].as_str().unwrap(),
                l.get("columns").map(|c| c.to_string()).unwrap_or_default()
            )
        })
        .collect()
}

// Multi-threaded: the writers go on while the test waits for a `ferry check` process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_differences_are_found_exactly_under_live_writes_and_repaired_through_the_pipeline() {
    let Live { east, west, east_cfg, _broker, _dir, _ferries } = live().await;

    // Behind ferry's back, in west only.
    let mut w = west.root_conn().await.unwrap();
    w.query_drop("SET SESSION sql_log_bin = 0").await.unwrap();
    for sql in [
        "UPDATE psi.items SET note = 'changed' WHERE id = 10",
        "DELETE FROM psi.items WHERE id = 20",
        "INSERT INTO psi.items VALUES (5000, 'extra', 1, NULL, NULL, 1, '2026-11-01 00:00:00')",
        "UPDATE psi.items SET extra = NULL WHERE id = 30",
        "UPDATE psi.items SET amount = amount + 0.0001 WHERE id = 40",
        "UPDATE psi.items SET note = 'NOTE 50 ABC' WHERE id = 50",
        "UPDATE psi.items SET data = UNHEX('000001A5') WHERE id = 60",
        // One step of FLOAT: its six-digit text form is still 70.5.
        "UPDATE psi.items SET ratio = 70.500005 WHERE id = 70",
        "ALTER TABLE psi.gadgets DROP COLUMN b",
    ] {
        w.query_drop(sql).await.unwrap();
    }
    let shown: String =
        w.query_first("SELECT CAST(ratio AS CHAR) FROM psi.items WHERE id = 70").await.unwrap().unwrap();
    assert_eq!(shown, "70.5", "the changed FLOAT reads the same as text");
    w.query_drop("UPDATE psi.pairs SET v = -1 WHERE a = 120 AND b = 'k3'").await.unwrap();
    // Row 80 deleted in west through ferry (a tombstone in both regions), then put back in
    // east alone with its old version: the tombstone wins.
    w.query_drop("SET SESSION sql_log_bin = 1").await.unwrap();
    w.query_drop("DELETE FROM psi.items WHERE id = 80").await.unwrap();
    w.query_drop("SET SESSION sql_log_bin = 0").await.unwrap();
    let mut e = east.root_conn().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while e.query_first::<i64, _>("SELECT id FROM psi.items WHERE id = 80").await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "east never applied west's delete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.query_drop("SET SESSION sql_log_bin = 0").await.unwrap();
    e.query_drop(
        "INSERT INTO psi.items VALUES (80, 'note 80 abc', 80.1234, UNHEX('00000230'), 0, 80.5, \
         '2026-11-01 00:00:00.000080')",
    )
    .await
    .unwrap();
    let expected: BTreeSet<String> = [
        "psi.gadgets  schema ",
        "psi.items {\"id\":10} different [\"note\"]",
        "psi.items {\"id\":20} missing ",
        "psi.items {\"id\":5000} missing ",
        "psi.items {\"id\":30} different [\"extra\"]",
        "psi.items {\"id\":40} different [\"amount\"]",
        "psi.items {\"id\":50} different [\"note\"]",
        "psi.items {\"id\":60} different [\"data\"]",
        "psi.items {\"id\":70} different [\"ratio\"]",
        "psi.items {\"id\":80} missing ",
        "psi.pairs {\"a\":120,\"b\":\"k3\"} different [\"v\"]",
    ]
    .into_iter()
    .map(String::from)
    .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let writers = [writer(&east, "east", stop.clone()), writer(&west, "west", stop.clone())];
    for run in 1..=3 {
        let (code, lines) = check(&east_cfg, &[]);
        assert_eq!(found(&lines), expected, "run {run}: {lines:#?}");
        assert_eq!(code, 3, "run {run}");
        let summary = &lines.last().unwrap()["summary"];
        assert!(summary["rows"].as_u64().unwrap() >= ROWS as u64, "{summary}");
        println!("run {run}: {summary}");
    }
    let missing = check(&east_cfg, &[]).1;
    let twenty = missing.iter().find(|l| l.get("key").is_some_and(|k| k["id"] == 20)).unwrap();
    assert_eq!(twenty["present_in"], serde_json::json!(["east"]));
    assert_eq!(twenty["absent_in"], serde_json::json!(["west"]));
    // Values as the wire envelope encodes them.
    let forty = missing.iter().find(|l| l.get("key").is_some_and(|k| k["id"] == 40)).unwrap();
    assert_eq!(
        forty["rows"]["east"]["amount"],
        serde_json::json!({"t": "decimal", "v": "40.1234"}),
        "{forty}"
    );
    assert_eq!(
        forty["rows"]["west"]["amount"],
        serde_json::json!({"t": "decimal", "v": "40.1235"}),
        "{forty}"
    );
    let sixty = missing.iter().find(|l| l.get("key").is_some_and(|k| k["id"] == 60)).unwrap();
    assert_eq!(sixty["rows"]["west"]["data"], serde_json::json!({"t": "bytes", "v": "AAABpQ=="}), "{sixty}");

    let (code, lines) = check(&east_cfg, &["--repair"]);
    assert_eq!(code, 3);
    let repairs: Vec<&serde_json::Value> = lines.iter().filter_map(|l| l.get("repair")).collect();
    println!("repairs: {repairs:#?}");
    let repaired = repairs.iter().filter(|r| r["outcome"] == "repaired").count();
    assert_eq!(repaired, expected.len() - 1, "every row difference repaired: {repairs:#?}");
    let eighty = repairs.iter().find(|r| r["key"]["id"] == 80).unwrap();
    assert_eq!(eighty["action"], "delete", "west's tombstone wins: {eighty}");
    assert_eq!(eighty["regions"], serde_json::json!(["east"]), "{eighty}");

    // After the repair travelled through the pipeline, only the schema difference is left.
    let (_, lines) = check(&east_cfg, &[]);
    assert_eq!(found(&lines), ["psi.gadgets  schema ".to_string()].into_iter().collect(), "{lines:#?}");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        assert!(w.await.unwrap() > 10, "the writers kept writing");
    }
    let logged: i64 = east
        .root_conn()
        .await
        .unwrap()
        .query_first("SELECT COUNT(*) FROM ferry.conflicts WHERE kind = 'repair'")
        .await
        .unwrap()
        .unwrap();
    let logged_west: i64 =
        w.query_first("SELECT COUNT(*) FROM ferry.conflicts WHERE kind = 'repair'").await.unwrap().unwrap();
    assert_eq!(logged + logged_west, repaired as i64, "one conflict-log row per repaired row");
}

/// A row written after the check and before the repair is not overwritten: the repair sees
/// the row changed and leaves it to the newer write.
#[tokio::test]
async fn a_write_between_the_check_and_the_repair_keeps_the_newer_value() {
    let Live { east, west, east_cfg, _broker, _dir, _ferries } = live().await;
    let mut w = west.root_conn().await.unwrap();
    w.query_drop("SET SESSION sql_log_bin = 0").await.unwrap();
    w.query_drop("UPDATE psi.items SET note = 'stale' WHERE id = 7").await.unwrap();

    let config = ferry::config::load(&east_cfg).unwrap();
    let options = ferry::check::Options { tables: vec!["psi.items".into()], regions: Vec::new() };
    let report = ferry::check::run(&config, &options).await.unwrap();
    assert_eq!(report.differences.len(), 1, "{:?}", report.differences);
    // The check's winner is east (same version, east first); now west writes a newer value.
    let mut app = mysql_async::Conn::new(west.opts()).await.unwrap();
    app.query_drop("UPDATE psi.items SET note = 'newest', updated_at = NOW(6) WHERE id = 7").await.unwrap();
    let mut plans = ferry::check::repair::plan(&config, &report.differences).await.unwrap();
    ferry::check::repair::carry_out(&config, &report.differences, &mut plans).await.unwrap();
    assert_eq!(plans[0].outcome.as_deref(), Some("changed since the check: left to the newer write"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e: Option<String> = east
            .root_conn()
            .await
            .unwrap()
            .query_first("SELECT note FROM psi.items WHERE id = 7")
            .await
            .unwrap();
        if e.as_deref() == Some("newest") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "east never got west's newer write: {e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = ferry::check::run(&config, &options).await.unwrap();
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}

/// The value of the first sample of `metric` (name and labels, as exported) in `text`.
fn sample(text: &str, metric: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(metric)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn metrics(http: std::net::SocketAddr) -> String {
    ferry::sandbox::http_get(http, "/metrics").await.map(|(_, m)| m).unwrap_or_default()
}

/// `ferry run` with `check.full_every` runs a full check at once (none completed yet), records
/// it chunk by chunk; killed half-way and started again it resumes where it stopped (comparing
/// fewer rows than the table holds) and still finds a difference in the second half. A
/// sliding-window check finds a recently changed row that differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_full_check_killed_half_way_resumes_and_a_window_check_finds_fresh_divergence() {
    let (east, west, broker) = two_regions().await;
    seed(&east).await;
    seed(&west).await;
    let mut w = west.root_conn().await.unwrap();
    w.query_drop("SET SESSION sql_log_bin = 0").await.unwrap();
    // Second half of the table, in west only.
    w.query_drop("UPDATE psi.items SET note = 'late' WHERE id = 2900").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let regions = [("east", &east), ("west", &west)];
    let (east_cfg, east_http) = region_config(dir.path(), "east", &regions, &broker.bootstrap());
    let (west_cfg, west_http) = region_config(dir.path(), "west", &regions, &broker.bootstrap());
    // Slow enough (about 1,000 rows a second) to be killed half-way.
    let check = "check: { full_every: 1h, interval: 2s, window: 1h, settle: 1s, chunk_time: 10ms, \
                 max_rows_per_second: 1000, tables: [psi.items] }\n";
    let text = std::fs::read_to_string(&east_cfg).unwrap() + check;
    std::fs::write(&east_cfg, text).unwrap();
    let _west_ferry = Reaped(spawn_ferry(&west_cfg, &dir.path().join("west.log")));
    let mut east_ferry = Reaped(spawn_ferry(&east_cfg, &dir.path().join("east.log")));
    wait_ready(west_http).await;
    wait_ready(east_http).await;

    let mut e = east.root_conn().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let at: Option<String> = e
            .query_first(
                "SELECT after_key FROM ferry.check_progress WHERE table_name = 'psi.items' AND done = 0",
            )
            .await
            .unwrap();
        if at.is_some() {
            println!("killed at {at:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the full check never recorded progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = east_ferry.0.kill();
    let _ = east_ferry.0.wait();
    let _east_again = Reaped(spawn_ferry(&east_cfg, &dir.path().join("east-again.log")));
    wait_ready(east_http).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = metrics(east_http).await;
        if sample(&m, "ferry_check_last_completed_timestamp_seconds{mode=\"full\"}").is_some() {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "the resumed full check never completed\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rows = sample(&m, "ferry_check_rows_total{mode=\"full\"}").unwrap();
    assert!(rows < ROWS as f64, "the resumed check compared {rows} rows: it started over");
    assert_eq!(
        sample(&m, "ferry_check_differences{mode=\"full\",table=\"psi.items\",kind=\"different\"}"),
        Some(1.0),
        "{m}"
    );
    let done: Vec<(String, i8)> = e.query("SELECT table_name, done FROM ferry.check_progress").await.unwrap();
    assert_eq!(done, vec![(String::new(), 1)], "a completed check leaves only its completion mark");

    // A row changed just now, differently in west: the next window finds it.
    w.query_drop("UPDATE psi.items SET note = 'fresh', updated_at = UTC_TIMESTAMP(6) - INTERVAL 2 SECOND WHERE id = 15")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(east_http).await;
        if sample(&m, "ferry_check_differences{mode=\"window\",table=\"psi.items\",kind=\"missing\"}")
            .is_some()
            || sample(&m, "ferry_check_differences{mode=\"window\",table=\"psi.items\",kind=\"different\"}")
                .is_some()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no window check found row 15\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = ferry::sandbox::http_get(east_http, "/status").await.unwrap().1;
    assert!(status.contains("\"window\"") && status.contains("\"full\""), "{status}");
}
