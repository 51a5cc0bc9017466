//! `ferry bench apply`: a PSI write workload of many small transactions (an order, two items,
//! the order's total: four row changes each), applied (a) by ferry from Kafka and (b) by
//! MariaDB's own replication, serially and with `slave_parallel_threads=4`, on this machine in
//! one run, with durability on for every target (`sync_binlog=1`,
//! `innodb_flush_log_at_trx_commit=1`). Reports rows/s of each and the ratios.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mysql_async::prelude::Queryable;

use super::capture::capture_leg;
use crate::model::{MariaGtid, Position};
use crate::sandbox::{Broker, MariaDb, MariaDbOptions, ServerDir, install_schemas, pick_port, region_yaml};
use crate::transport::changes_topic;
use crate::transport::kafka::KafkaSink;

const ROWS_PER_TRANSACTION: usize = 4;
const WRITERS: usize = 4;
/// `apply.workers` of the parallel ferry leg.
const FERRY_WORKERS: usize = 4;
const DURABLE: [&str; 2] = ["--sync-binlog=1", "--innodb-flush-log-at-trx-commit=1"];

pub struct Options {
    pub transactions: usize,
}

fn durable(name: &str, server_id: u32, domain: u32, extra: &[&str]) -> MariaDbOptions {
    let mut o = MariaDbOptions::test(name, server_id, domain);
    o.extra_args = DURABLE.iter().chain(extra).map(|s| s.to_string()).collect();
    o
}

pub async fn run(opts: Options, ferry_bin: &Path) -> anyhow::Result<()> {
    if opts.transactions < WRITERS {
        bail!("--transactions must be at least {WRITERS}");
    }
    println!("bench apply: starting the source, a broker, ferry's target and two replicas");
    let source = MariaDb::start_temp(MariaDbOptions::test("bench-source", 101, 1)).await?;
    let broker = Broker::start_temp().await?;
    install_schemas(&source).await?;
    let mut conn = source.conn().await?;
    let start: Position =
        conn.query_first::<String, _>("SELECT @@gtid_binlog_pos").await?.unwrap_or_default().parse()?;

    let generated = Instant::now();
    let per_writer = opts.transactions / WRITERS;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let opts = source.opts();
        writers.push(tokio::spawn(async move {
            let mut c = mysql_async::Conn::new(opts).await?;
            for i in 0..per_writer {
                let mut tx = c.start_transaction(Default::default()).await?;
                tx.exec_drop(
                    "INSERT INTO psi.orders (order_no, customer_id, warehouse_id, status, total) VALUES (?, ?, 1, 'new', 0)",
                    (format!("B{w}-{i}"), (i % 500) as u64 + 1),
                )
                .await?;
                let order: Option<u64> = tx.query_first("SELECT LAST_INSERT_ID()").await?;
                let order = order.unwrap_or_default();
                for line in 1..=2u32 {
                    tx.exec_drop(
                        "INSERT INTO psi.order_items (order_id, line_no, product_id, quantity, unit_price) VALUES (?, ?, ?, ?, 9.90)",
                        (order, line, (i % 1000) as u64 + 1, line),
                    )
                    .await?;
                }
                tx.exec_drop("UPDATE psi.orders SET total = 29.70, status = 'paid' WHERE id = ?", (order,)).await?;
                tx.commit().await?;
            }
            Ok::<_, mysql_async::Error>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let transactions = per_writer * WRITERS;
    let rows = transactions * ROWS_PER_TRANSACTION;
    let end: String = conn.query_first("SELECT @@gtid_binlog_pos").await?.unwrap_or_default();
    let end: MariaGtid = end.parse::<Position>()?.get(1).context("no GTID after the workload")?;
    println!(
        "bench apply: {transactions} transactions ({rows} row changes) written in {:.1}s",
        generated.elapsed().as_secs_f64()
    );

    let bootstrap = broker.bootstrap();
    capture_leg(
        &source,
        &start,
        end,
        KafkaSink::connect(
            &crate::config::KafkaConfig::single_broker(vec![bootstrap.clone()]),
            &changes_topic("east"),
        )
        .await?,
    )
    .await?;
    println!("bench apply: the workload is in ferry.east.changes");

    let ferry_serial = ferry_leg(&source, &broker, end, ferry_bin, 1).await?;
    let ferry = ferry_leg(&source, &broker, end, ferry_bin, FERRY_WORKERS).await?;
    let serial = native_leg(&source, durable("bench-serial", 102, 1, &[])).await?;
    let parallel = native_leg(
        &source,
        durable(
            "bench-parallel",
            103,
            1,
            &["--slave-parallel-threads=4", "--slave-parallel-mode=optimistic"],
        ),
    )
    .await?;

    let per_s = |secs: f64| rows as f64 / secs;
    println!(
        "\nbench apply: {transactions} transactions, {rows} row changes, durability on for every target"
    );
    println!("  MariaDB replication, serial            {serial:>7.2}s  {:>9.0} rows/s", per_s(serial));
    println!("  MariaDB replication, 4 parallel threads {parallel:>6.2}s  {:>9.0} rows/s", per_s(parallel));
    for (label, secs) in [("1 connection ", ferry_serial), ("4 connections", ferry)] {
        println!(
            "  ferry apply from Kafka, {label}  {secs:>7.2}s  {:>9.0} rows/s  ratio to 4 threads {:.2}, to serial {:.2}",
            per_s(secs),
            parallel / secs,
            serial / secs
        );
    }
    println!("  target: ferry ≥ 2× native replication with 4 threads, every origin transaction kept whole");
    Ok(())
}

/// Time `ferry run` (apply only, `workers` connections) from start until `end` is recorded in
/// `ferry.applied`, on a fresh target.
async fn ferry_leg(
    source: &MariaDb,
    broker: &Broker,
    end: MariaGtid,
    ferry_bin: &Path,
    workers: usize,
) -> anyhow::Result<f64> {
    let name = format!("bench-ferry-{workers}");
    let target = MariaDb::start_primary(durable(&name, 201, 2, &[]), ServerDir::temp(&name)?).await?;
    install_schemas(&target).await?;
    let dir = tempfile::tempdir()?;
    let http = pick_port([127, 0, 0, 1].into(), None)?;
    let region = |name: &str, db: &MariaDb, domain: u32, priority: u32| {
        region_yaml(name, db, domain, priority, &broker.bootstrap())
    };
    let config = dir.path().join("west.yaml");
    std::fs::write(
        &config,
        format!(
            "region: west\nregions:\n{}{}http: {{ listen: \"127.0.0.1:{http}\" }}\nlog: {{ level: warn }}\napply: {{ workers: {workers} }}\n",
            region("east", source, 1, 1),
            region("west", &target, 2, 2)
        ),
    )?;
    let mut conn = target.conn().await?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(ferry_bin)
        .args(["run", "--config"])
        .arg(&config)
        .kill_on_drop(true)
        .spawn()
        .context("starting ferry run")?;
    let deadline = started + Duration::from_secs(600);
    loop {
        let done: Option<String> =
            conn.query_first("SELECT gtid FROM ferry.applied WHERE origin = 'east'").await.unwrap_or(None);
        if done
            .and_then(|g| g.parse::<MariaGtid>().ok())
            .is_some_and(|g| g.domain == end.domain && g.seq >= end.seq)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("ferry did not apply up to {end} within 600s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    // What the parallel apply had to retry (a high count means groups kept meeting).
    if let Ok((_, metrics)) = crate::sandbox::http_get(([127, 0, 0, 1], http).into(), "/metrics").await {
        let retried: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("ferry_apply_errors_total{"))
            .filter_map(|l| {
                Some((l.split('"').nth(3)?.to_string(), l.rsplit(' ').next()?.parse::<f64>().ok()?))
            })
            .map(|(kind, n)| {
                println!("  ferry, {workers} connection(s): {n} apply errors of kind {kind}");
                n
            })
            .sum();
        if retried == 0.0 {
            println!("  ferry, {workers} connection(s): no apply errors or parallel aborts");
        }
    }
    let _ = child.start_kill();
    Ok(seconds)
}

/// Time a MariaDB replica catching up with `source` from empty.
async fn native_leg(source: &MariaDb, opts: MariaDbOptions) -> anyhow::Result<f64> {
    let name = opts.name.clone();
    let replica = MariaDb::start_idle_replica(opts, ServerDir::temp(&name)?).await?;
    let started = Instant::now();
    replica.replicate_from(source, false).await?;
    replica.wait_caught_up(source).await?;
    Ok(started.elapsed().as_secs_f64())
}
