//! `ferry bench e2e`: a steady PSI load in both regions of a real sandbox (capture and apply
//! running in each region's `ferry run`), and the end-to-end lag of each region's
//! `ferry.heartbeat` as it arrives in the other region: arrival time minus write time,
//! sampled every 5 ms. Reports p50/p99/max per direction and the load achieved.

use crate::runtime::now_us;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mysql_async::prelude::Queryable;

use crate::sandbox::{self, UpOptions, UpOutcome};

/// Row changes per transaction of the load (order, two items, the order's total).
const ROWS_PER_TRANSACTION: u64 = 4;
const WRITERS_PER_REGION: u64 = 2;
/// How often a region's copy of the other's heartbeat is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

pub struct Options {
    pub rows_per_second: u64,
    pub seconds: u64,
}

pub async fn run(opts: Options, ferry_bin: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sb = dir.path().join("sandbox");
    println!("bench e2e: starting a two-region sandbox");
    let state = match sandbox::up(UpOptions {
        dir: sb.clone(),
        regions: vec!["east".into(), "west".into()],
        ferry_bin: ferry_bin.to_path_buf(),
    })
    .await?
    {
        UpOutcome::Started(s) => s,
        UpOutcome::AlreadyUp(_) => bail!("a sandbox is already up in {}", sb.display()),
    };
    let result = measure(&state, &opts).await;
    sandbox::down(&sb).await?;
    result
}

async fn measure(state: &sandbox::SandboxState, opts: &Options) -> anyhow::Result<()> {
    let dsn = |r: &str| -> anyhow::Result<mysql_async::Opts> {
        Ok(mysql_async::Opts::from_url(&state.regions.get(r).context("region")?.mysql.primary.dsn)?)
    };
    let until = Instant::now() + Duration::from_secs(opts.seconds + 3);
    let per_writer_tps = opts.rows_per_second / ROWS_PER_TRANSACTION / WRITERS_PER_REGION;
    let mut writers = Vec::new();
    for region in ["east", "west"] {
        for w in 0..WRITERS_PER_REGION {
            let opts = dsn(region)?;
            writers.push(tokio::spawn(write_load(
                opts,
                format!("{region}{w}"),
                per_writer_tps.max(1),
                until,
            )));
        }
    }
    // Let the load settle before sampling.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (east_to_west, west_to_east) =
        tokio::join!(sample(dsn("west")?, "east", opts.seconds), sample(dsn("east")?, "west", opts.seconds));
    let mut written = 0;
    for w in writers {
        written += w.await??;
    }
    let achieved = written as f64 * ROWS_PER_TRANSACTION as f64 / (opts.seconds as f64 + 3.0) / 2.0;
    println!(
        "\nbench e2e: load {:.0} rows/s per region (target {}), {} s of samples",
        achieved, opts.rows_per_second, opts.seconds
    );
    for (name, samples) in [("east → west", east_to_west?), ("west → east", west_to_east?)] {
        println!("  {name}: {}", summary(samples));
    }
    println!("  target: p99 < 1 s at 2,000 rows/s per region");
    Ok(())
}

fn summary(mut samples: Vec<f64>) -> String {
    if samples.is_empty() {
        return "no heartbeat arrived".into();
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    format!(
        "{} heartbeats, lag p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        samples.len(),
        at(0.5) * 1000.0,
        at(0.99) * 1000.0,
        samples[samples.len() - 1] * 1000.0
    )
}

/// PSI transactions at a steady rate until `until`; returns how many were committed.
async fn write_load(opts: mysql_async::Opts, tag: String, tps: u64, until: Instant) -> anyhow::Result<u64> {
    let mut c = mysql_async::Conn::new(opts).await?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / tps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        let mut tx = c.start_transaction(Default::default()).await?;
        tx.exec_drop(
            "INSERT INTO psi.orders (order_no, customer_id, warehouse_id, status, total) VALUES (?, 1, 1, 'new', 0)",
            (format!("{tag}-{n}"),),
        )
        .await?;
        let order: u64 = tx.query_first("SELECT LAST_INSERT_ID()").await?.unwrap_or_default();
        for line in 1..=2u32 {
            tx.exec_drop(
                "INSERT INTO psi.order_items (order_id, line_no, product_id, quantity, unit_price) VALUES (?, ?, ?, 1, 9.90)",
                (order, line, n % 1000 + 1),
            )
            .await?;
        }
        tx.exec_drop("UPDATE psi.orders SET total = 19.80, status = 'paid' WHERE id = ?", (order,)).await?;
        tx.commit().await?;
        n += 1;
    }
    Ok(n)
}

/// Read `origin`'s heartbeat as applied in the region of `opts`, every 5 ms for `seconds`;
/// each new value gives one sample: now − its write time.
async fn sample(opts: mysql_async::Opts, origin: &str, seconds: u64) -> anyhow::Result<Vec<f64>> {
    let mut c = mysql_async::Conn::new(opts).await?;
    let until = Instant::now() + Duration::from_secs(seconds);
    let (mut last, mut samples) = (None, Vec::new());
    while Instant::now() < until {
        let beat: Option<i64> =
            c.exec_first("SELECT beat_at_us FROM ferry.heartbeat WHERE region = ?", (origin,)).await?;
        if beat.is_some() && beat != last {
            if last.is_some() {
                samples.push((now_us() - beat.unwrap_or_default()) as f64 / 1e6);
            }
            last = beat;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    Ok(samples)
}
