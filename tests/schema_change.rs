//! A schema change made in one region before the other (issue 16, "Schema changes while
//! running"): east adds a column and writes rows that use it while west has not run the
//! migration yet. West's apply waits with the reason (nothing dead-lettered), resumes by itself
//! once west runs the same migration, and both regions end identical. Meanwhile west's own
//! writes keep reaching east.

use std::time::{Duration, Instant};

use ferry::sandbox::http_get;
use mysql_async::prelude::Queryable;

mod common;
use common::{Reaped, dump, region_config, spawn_ferry, two_regions, wait_ready};

const MIGRATION: &str = "ALTER TABLE psi.products ADD COLUMN barcode VARCHAR(32) NULL";

#[tokio::test]
async fn a_column_added_in_one_region_first_pauses_the_other_until_it_runs_the_migration() {
    let (east, west, broker) = two_regions().await;
    let dir = tempfile::tempdir().unwrap();
    let regions = [("east", &east), ("west", &west)];
    let (east_cfg, east_http) = region_config(dir.path(), "east", &regions, &broker.bootstrap());
    let (west_cfg, west_http) = region_config(dir.path(), "west", &regions, &broker.bootstrap());
    let _east_ferry = Reaped(spawn_ferry(&east_cfg, &dir.path().join("east.log")));
    let _west_ferry = Reaped(spawn_ferry(&west_cfg, &dir.path().join("west.log")));
    wait_ready(east_http).await;
    wait_ready(west_http).await;

    let mut e = east.conn().await.unwrap();
    let mut w = west.conn().await.unwrap();
    e.query_drop(MIGRATION).await.unwrap();
    e.query_drop(
        "INSERT INTO psi.products (id, sku, name, unit_price, barcode) VALUES (1, 'A-1', 'apple', 1.50, '4006381333931')",
    )
    .await
    .unwrap();
    // West writes too, without the column: east takes it (the column stays NULL there).
    w.query_drop("INSERT INTO psi.products (id, sku, name, unit_price) VALUES (2, 'B-2', 'bread', 2.00)")
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        if let Ok((503, body)) = http_get(west_http, "/health/ready").await
            && body.contains("waiting for a migration")
        {
            break body;
        }
        assert!(Instant::now() < deadline, "west never said it waits for the migration");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("west: {reason}");
    assert!(reason.contains("psi.products: column `barcode` missing here; east ran it"), "{reason}");
    // Still waiting a few seconds later, and nothing parked.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let metrics = http_get(west_http, "/metrics").await.unwrap().1;
    assert!(!metrics.lines().any(|l| l.starts_with("ferry_apply_dlq_records_total")), "{metrics}");
    let two_in_east: Option<String> =
        e.query_first("SELECT name FROM psi.products WHERE id = 2").await.unwrap();
    assert_eq!(two_in_east.as_deref(), Some("bread"), "west's rows still reach east");

    w.query_drop(MIGRATION).await.unwrap();
    let resumed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let barcode: Option<Option<String>> =
            w.query_first("SELECT barcode FROM psi.products WHERE id = 1").await.unwrap();
        if barcode == Some(Some("4006381333931".into())) {
            break;
        }
        assert!(Instant::now() < deadline, "west never applied east's row after its migration");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("west applied east's row {:?} after its own migration", resumed.elapsed());
    wait_ready(west_http).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while dump(&east).await != dump(&west).await {
        assert!(Instant::now() < deadline, "the regions did not converge");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
