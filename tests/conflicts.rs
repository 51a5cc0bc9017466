//! Conflict rules end to end: two real regions under `ferry run` write the same rows, and
//! every table ends identical in both, with stock decrements all counted and exactly one
//! `ferry.conflicts` row per conflict.
//!
//! Phase 1 (both ferries running): 1,000 stock decrements in each region at once.
//! Phase 2 (both ferries stopped while the regions write, so every pair below is concurrent
//! by construction; then east starts first, so its capture records its deletes' tombstones
//! before west's changes reach it): updates of the same products in the same millisecond (and
//! the same microsecond), an update from a clock an hour ahead, a delete racing an older and a
//! newer update, the same `order_no` inserted in both, the same product id inserted in both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry::sandbox::{Broker, MariaDb, MariaDbOptions, http_get, pick_port};
use mysql_async::prelude::Queryable;

mod common;
use common::{Reaped, dump, region_yaml, spawn_ferry, two_regions, wait_ready};

fn write_config(
    dir: &Path,
    region: &str,
    east: &MariaDb,
    west: &MariaDb,
    broker: &Broker,
) -> (PathBuf, std::net::SocketAddr) {
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], pick_port([127, 0, 0, 1].into(), None).unwrap()));
    let reader = if region == "east" { 1001 } else { 2001 };
    let text = format!(
        "region: {region}\nregions:\n{}{}http: {{ listen: \"{http}\" }}\nlog: {{ format: json }}\n\
         capture: {{ server_id: {reader}, checkpoint_interval: 200ms }}\napply: {{ on_error: pause }}\n\
         conflicts:\n  max_clock_skew: 5s\n  tables:\n    psi.stock: {{ delta_columns: [quantity, reserved] }}\n",
        region_yaml("east", east, 1, 1, &broker.bootstrap()),
        region_yaml("west", west, 2, 2, &broker.bootstrap()),
    );
    let path = dir.join(format!("{region}.yaml"));
    std::fs::write(&path, text).unwrap();
    (path, http)
}

/// Wait until both regions hold the same rows; fail showing the first difference.
async fn converge(east: &MariaDb, west: &MariaDb, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let (e, w) = loop {
        let (e, w) = (dump(east).await, dump(west).await);
        if e == w || Instant::now() > deadline {
            break (e, w);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for ((table, e), (_, w)) in e.iter().zip(&w) {
        assert_eq!(e.len(), w.len(), "{what}: psi.{table}: east has {} rows, west {}", e.len(), w.len());
        for (re, rw) in e.iter().zip(w) {
            assert_eq!(re, rw, "{what}: psi.{table} differs");
        }
    }
}

/// `ferry.conflicts` rows after id `after`, counted per (table, kind, winner).
async fn logged(db: &MariaDb, after: u64) -> BTreeMap<(String, String, String), u64> {
    let mut c = db.conn().await.unwrap();
    let rows: Vec<(String, String, String, u64)> = c
        .exec(
            "SELECT table_name, kind, winner, COUNT(*) FROM ferry.conflicts WHERE id > ? GROUP BY 1, 2, 3",
            (after,),
        )
        .await
        .unwrap();
    rows.into_iter().map(|(t, k, w, n)| ((t, k, w), n)).collect()
}

async fn last_conflict(db: &MariaDb) -> u64 {
    let mut c = db.conn().await.unwrap();
    c.query_first("SELECT COALESCE(MAX(id), 0) FROM ferry.conflicts").await.unwrap().unwrap()
}

/// Sum of `ferry_apply_conflicts_total` samples for `table`.
async fn counted(http: std::net::SocketAddr, table: &str) -> f64 {
    let (_, metrics) = http_get(http, "/metrics").await.unwrap();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("ferry_apply_conflicts_total{") && l.contains(&format!("table=\"{table}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn decrement(db: &MariaDb, times: usize, seed: u64) {
    let mut c = db.conn().await.unwrap();
    let mut rng = common::Lcg(seed);
    for _ in 0..times {
        let product = rng.next(5) + 1;
        c.exec_drop(
            "UPDATE psi.stock SET quantity = quantity - 1, reserved = reserved + 1 WHERE warehouse_id = 1 AND product_id = ?",
            (product,),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn two_regions_writing_the_same_rows_converge_and_log_every_conflict() {
    let (east, west, broker) = two_regions().await;
    let dir = tempfile::tempdir().unwrap();
    let (east_cfg, east_http) = write_config(dir.path(), "east", &east, &west, &broker);
    let (west_cfg, west_http) = write_config(dir.path(), "west", &east, &west, &broker);
    let (east_log, west_log) = (dir.path().join("east.log"), dir.path().join("west.log"));
    let mut east_ferry = Some(Reaped(spawn_ferry(&east_cfg, &east_log)));
    let mut west_ferry = Some(Reaped(spawn_ferry(&west_cfg, &west_log)));
    wait_ready(east_http).await;
    wait_ready(west_http).await;

    // Seed in east: products 1..=20 (explicit ids), their stock in warehouse 1.
    let mut e = east.conn().await.unwrap();
    for id in 1..=20u64 {
        e.exec_drop(
            "INSERT INTO psi.products (id, sku, name, unit_price) VALUES (?, ?, ?, 10.00)",
            (id, format!("SKU-{id}"), format!("product {id}")),
        )
        .await
        .unwrap();
    }
    e.query_drop("INSERT INTO psi.stock (warehouse_id, product_id, quantity, reserved) SELECT 1, id, 10000, 0 FROM psi.products")
        .await
        .unwrap();
    converge(&east, &west, "seed").await;

    // Phase 1: 1,000 decrements per region, concurrently, on five stock rows.
    let before = (last_conflict(&east).await, last_conflict(&west).await);
    tokio::join!(decrement(&east, 1000, 7), decrement(&west, 1000, 11));
    converge(&east, &west, "stock decrements").await;
    for db in [&east, &west] {
        let mut c = db.conn().await.unwrap();
        let (quantity, reserved): (i64, i64) = c
            .query_first("SELECT CAST(SUM(quantity) AS SIGNED), CAST(SUM(reserved) AS SIGNED) FROM psi.stock WHERE warehouse_id = 1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(quantity, 20 * 10_000 - 2_000, "every decrement of both regions counts");
        assert_eq!(reserved, 2_000);
    }
    let mut stock_conflicts = 0;
    for (db, http, after, name) in
        [(&east, east_http, before.0, "east"), (&west, west_http, before.1, "west")]
    {
        let rows: u64 = logged(db, after).await.values().sum();
        let metric = counted(http, "psi.stock").await;
        assert_eq!(rows as f64, metric, "{name}: one ferry.conflicts row per conflict counted");
        stock_conflicts += rows;
    }
    assert!(stock_conflicts > 0, "concurrent decrements of five rows met each other at least once");
    println!("stock: 2,000 decrements, {stock_conflicts} update/update conflicts merged additively");

    // Phase 2: both ferries stopped; each region writes without seeing the other.
    east_ferry.take();
    west_ferry.take();
    let before = (last_conflict(&east).await, last_conflict(&west).await);
    let mut w = west.conn().await.unwrap();
    // Explicit versions a second from now (well within the 5 s skew bound).
    let base: String = e
        .query_first("SELECT DATE_FORMAT(NOW() + INTERVAL 1 SECOND, '%Y-%m-%d %H:%i:%s')")
        .await
        .unwrap()
        .unwrap();
    for id in 1..=5u64 {
        // The same microsecond: region order decides (east, priority 1).
        let at = format!("{base}.{id:06}");
        e.exec_drop("UPDATE psi.products SET unit_price = 11.11, updated_at = ? WHERE id = ?", (&at, id))
            .await
            .unwrap();
        w.exec_drop("UPDATE psi.products SET unit_price = 22.22, updated_at = ? WHERE id = ?", (&at, id))
            .await
            .unwrap();
    }
    for id in 6..=10u64 {
        // The same millisecond, west 100 µs later: west wins.
        e.exec_drop(
            "UPDATE psi.products SET unit_price = 11.11, updated_at = ? WHERE id = ?",
            (format!("{base}.000100"), id),
        )
        .await
        .unwrap();
        w.exec_drop(
            "UPDATE psi.products SET unit_price = 22.22, updated_at = ? WHERE id = ?",
            (format!("{base}.000200"), id),
        )
        .await
        .unwrap();
    }
    // Product 11: west's clock is an hour ahead.
    e.query_drop("UPDATE psi.products SET name = 'east name' WHERE id = 11").await.unwrap();
    w.query_drop("SET @@timestamp = UNIX_TIMESTAMP(NOW(6)) + 3600").await.unwrap();
    w.query_drop("UPDATE psi.products SET name = 'west name from the future' WHERE id = 11").await.unwrap();
    w.query_drop("SET @@timestamp = DEFAULT").await.unwrap();
    // Product 12: east deletes it, west updates it with an older version: the delete wins.
    // Product 13: east deletes it, west updates it later: the update wins and re-creates it.
    e.query_drop("DELETE FROM psi.products WHERE id IN (12, 13)").await.unwrap();
    w.query_drop(
        "UPDATE psi.products SET name = 'older', updated_at = updated_at - INTERVAL 1 SECOND WHERE id = 12",
    )
    .await
    .unwrap();
    w.query_drop("UPDATE psi.products SET name = 'newer' WHERE id = 13").await.unwrap();
    // The same order number in both regions (different ids), and the same product id.
    for (c, customer) in [(&mut e, 1), (&mut w, 2)] {
        c.exec_drop(
            "INSERT INTO psi.orders (order_no, customer_id, warehouse_id, status, total) VALUES ('DUP-1', ?, 1, 'new', 5)",
            (customer,),
        )
        .await
        .unwrap();
        c.exec_drop(
            "INSERT INTO psi.products (id, sku, name, unit_price) VALUES (500, ?, 'twice', 1)",
            (format!("SKU-500-{customer}"),),
        )
        .await
        .unwrap();
    }

    // Who must win each double insert, from the versions each region stamped (the later wins;
    // equal: east, priority 1), as east's log will say it.
    let mut expect = Vec::new();
    for sql in [
        "SELECT CAST(updated_at AS CHAR) FROM psi.products WHERE id = 500",
        "SELECT CAST(updated_at AS CHAR) FROM psi.orders WHERE order_no = 'DUP-1'",
    ] {
        let east_version: String = e.query_first(sql).await.unwrap().unwrap();
        let west_version: String = w.query_first(sql).await.unwrap().unwrap();
        expect.push(if east_version >= west_version { "local" } else { "incoming" });
    }
    let winners = (expect[0], expect[1]);

    // East first: its capture records the tombstones of its deletes before west's changes
    // can reach it (they are not even published until west's ferry starts).
    east_ferry = Some(Reaped(spawn_ferry(&east_cfg, &east_log)));
    wait_ready(east_http).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: u64 = e
            .query_first("SELECT COUNT(*) FROM ferry.tombstones WHERE table_name = 'psi.products'")
            .await
            .unwrap()
            .unwrap();
        if n == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "east's capture recorded its two deletes' tombstones ({n})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    west_ferry = Some(Reaped(spawn_ferry(&west_cfg, &west_log)));
    wait_ready(west_http).await;
    converge(&east, &west, "concurrent writes").await;

    let price = |id: u64| format!("SELECT CAST(unit_price AS CHAR), name FROM psi.products WHERE id = {id}");
    for id in [1u64, 6, 11, 12, 13] {
        let row: Option<(String, String)> = e.query_first(price(id)).await.unwrap();
        match id {
            1 => assert_eq!(row.unwrap().0, "11.11", "equal versions: east (priority 1) wins"),
            6 => assert_eq!(row.unwrap().0, "22.22", "later version wins"),
            11 => assert_eq!(
                row.unwrap().1,
                "west name from the future",
                "the skewed write still wins by the rule"
            ),
            12 => assert!(row.is_none(), "the delete beat the older update: {row:?}"),
            _ => assert_eq!(row.unwrap().1, "newer", "the newer update beat the delete"),
        }
    }
    let orders: Vec<(u64, String)> =
        e.query("SELECT id, order_no FROM psi.orders WHERE order_no = 'DUP-1'").await.unwrap();
    assert_eq!(orders.len(), 1, "one DUP-1 survives: {orders:?}");

    assert_eq!(dup_winner(&mut e).await, winners, "the later insert survived (product 500, DUP-1)");
    let key = |t: &str, k: &str, w: &str| (t.to_string(), k.to_string(), w.to_string());
    let east_expected: BTreeMap<_, u64> = [
        (key("psi.products", "update_update", "local"), 5), // ties: east keeps its own
        (key("psi.products", "update_update", "incoming"), 6), // 6..=10 and 11
        (key("psi.products", "clock_skew", "incoming"), 1),
        (key("psi.products", "update_delete", "local"), 1), // 12: the tombstone wins
        (key("psi.products", "update_delete", "incoming"), 1), // 13: the update re-creates it
        (key("psi.products", "insert_insert", winners.0), 1),
        (key("psi.orders", "unique_key", winners.1), 1),
    ]
    .into_iter()
    .collect();
    let west_expected: BTreeMap<_, u64> = [
        (key("psi.products", "update_update", "incoming"), 5),
        (key("psi.products", "update_update", "local"), 6),
        (key("psi.products", "delete_update", "incoming"), 1), // 12
        (key("psi.products", "delete_update", "local"), 1),    // 13
        (key("psi.products", "insert_insert", flip(winners.0)), 1),
        (key("psi.orders", "unique_key", flip(winners.1)), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(logged(&east, before.0).await, east_expected, "east's conflict log");
    assert_eq!(logged(&west, before.1).await, west_expected, "west's conflict log");
    let (_, metrics) = http_get(east_http, "/metrics").await.unwrap();
    assert!(
        metrics.contains("ferry_apply_conflicts_total{table=\"psi.products\",kind=\"clock_skew\",resolution=\"incoming\"} 1"),
        "the skew is counted"
    );
    drop((east_ferry, west_ferry));

    // `ferry conflicts` lists them; `ferry validate` checks the rules against the schema.
    let ferry = |args: &[&str]| {
        let out = std::process::Command::new(common::FERRY).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cfg = east_cfg.to_str().unwrap();
    let (code, out, err) = ferry(&["conflicts", "--config", cfg, "--table", "psi.orders"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("psi.orders") && out.contains("unique_key") && out.ends_with("1 conflict\n"),
        "{out}"
    );
    print!("ferry conflicts --table psi.orders:\n{out}");
    let (code, out, err) =
        ferry(&["conflicts", "--config", cfg, "--since", "1h", "--json", "--limit", "100000"]);
    assert_eq!(code, Some(0), "{err}");
    let total: u64 = logged(&east, 0).await.values().sum();
    assert_eq!(out.lines().count() as u64, total, "every logged conflict is listed");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(first["incoming_image"].is_object() && first["kind"].is_string(), "{first}");
    let (code, out, err) = ferry(&["validate", "--config", cfg]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("the servers answer and hold what ferry run needs"), "{out}");
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(&east_cfg)
        .unwrap()
        .replace("[quantity, reserved]", "[product_id, quantity, sku]");
    std::fs::write(&bad, text).unwrap();
    let (code, _, err) = ferry(&["validate", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("conflicts.tables.psi.stock.delta_columns[0]")
            && err.contains("part of a primary or unique key"),
        "{err}"
    );
    assert!(
        err.contains("conflicts.tables.psi.stock.delta_columns[2]") && err.contains("no column `sku`"),
        "{err}"
    );
}

#[tokio::test]
async fn the_collector_deletes_only_what_is_older_than_the_horizon() {
    let db = MariaDb::start_temp(MariaDbOptions::test("collect-db", 301, 3)).await.unwrap();
    let mut c = db.conn().await.unwrap();
    ferry::schema::install(&mut c).await.unwrap();
    for (table, column) in [("tombstones", "created_at"), ("row_origins", "written_at")] {
        c.query_drop(format!(
            "INSERT INTO ferry.{table} (table_name, row_key, version_us, origin, {column}) VALUES \
             ('psi.t', 'old', 1, 'east', NOW(6) - INTERVAL 8 DAY), ('psi.t', 'new', 2, 'east', NOW(6) - INTERVAL 6 DAY)"
        ))
        .await
        .unwrap();
    }
    let counter = prometheus_client::metrics::family::Family::default();
    let week = Duration::from_secs(7 * 24 * 3600);
    let deleted = ferry::apply::collect::collect(&db.opts(), week, &counter).await.unwrap();
    assert_eq!(deleted, 2, "one old row in each table");
    for table in ["tombstones", "row_origins"] {
        let left: Vec<String> =
            c.query(format!("SELECT CAST(row_key AS CHAR) FROM ferry.{table}")).await.unwrap();
        assert_eq!(left, ["new"], "ferry.{table}");
    }
}

/// Whose product 500 and DUP-1 order survived, as east's log names the winner.
async fn dup_winner(e: &mut mysql_async::Conn) -> (&'static str, &'static str) {
    let name: String = e.query_first("SELECT sku FROM psi.products WHERE id = 500").await.unwrap().unwrap();
    let product = if name.ends_with("-1") { "local" } else { "incoming" };
    let order: u64 =
        e.query_first("SELECT id FROM psi.orders WHERE order_no = 'DUP-1'").await.unwrap().unwrap();
    // East's ids are 1 mod 16, west's 2 mod 16.
    let order = if order % 16 == 1 { "local" } else { "incoming" };
    (product, order)
}

fn flip(winner: &str) -> &'static str {
    if winner == "local" { "incoming" } else { "local" }
}
