//! `ferry bench capture`: how fast capture reads and decodes a binlog, beside how fast the
//! binlog can be copied raw from the same server (`mariadb-binlog --read-from-remote-server
//! --raw`), the limit any reader of that server faces.
//!
//! Steps: start a throwaway MariaDB (and broker), generate N rows of PSI writes in 1,000-row
//! transactions, then time (1) the raw copy, (2) ferry's capture pipeline into a sink that
//! acknowledges at once, (3) the same pipeline publishing to the broker. Ratios compare (2)
//! and (3) with (1). "One core" is rows per CPU-second of this process while decoding.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mysql_async::prelude::Queryable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::capture::metrics::CaptureMetrics;
use crate::capture::pipeline::{self, PipelineSettings, Progress};
use crate::model::{MariaGtid, Position};
use crate::sandbox::{Broker, MariaDb, MariaDbOptions, install_schemas};
use crate::transport::changes_topic;
use crate::transport::envelope::Record;
use crate::transport::kafka::{AckFuture, KafkaSink, RecordSink, SinkError};

const ROWS_PER_TRANSACTION: usize = 1000;

pub struct Options {
    pub rows: usize,
    pub kafka: bool,
}

/// A sink that counts and acknowledges at once: measures capture itself.
struct NullSink {
    bytes: Arc<AtomicU64>,
}

impl RecordSink for NullSink {
    async fn send(&mut self, record: &Record) -> Result<AckFuture, SinkError> {
        self.bytes.fetch_add(record.payload.len() as u64, Ordering::Relaxed);
        Ok(Box::pin(std::future::ready(Ok(()))))
    }
    async fn flush(&mut self, _: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes into the struct we own.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    if !ok {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above.
    let u = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

pub(crate) struct Leg {
    pub(crate) seconds: f64,
    pub(crate) cpu_seconds: f64,
    pub(crate) bytes: u64,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    if opts.rows < ROWS_PER_TRANSACTION {
        bail!("--rows must be at least {ROWS_PER_TRANSACTION}");
    }
    println!("bench capture: starting a MariaDB{}", if opts.kafka { " and a broker" } else { "" });
    let db = MariaDb::start_temp(MariaDbOptions::test("bench-db", 101, 1)).await?;
    let broker = if opts.kafka { Some(Broker::start_temp().await?) } else { None };
    install_schemas(&db).await?;
    let mut conn = db.conn().await?;
    let start: Position =
        conn.query_first::<String, _>("SELECT @@gtid_binlog_pos").await?.unwrap_or_default().parse()?;

    let generated = Instant::now();
    let transactions = opts.rows / ROWS_PER_TRANSACTION;
    for t in 0..transactions {
        let base = t * ROWS_PER_TRANSACTION;
        let (table, sql) = if t % 2 == 0 {
            (
                "stock",
                format!(
                    "INSERT INTO psi.stock (warehouse_id, product_id, quantity, reserved) \
                 SELECT {w}, seq, seq % 500, seq % 7 FROM psi.seq_{lo}_to_{hi}",
                    w = 1 + t % 10,
                    lo = base + 1,
                    hi = base + ROWS_PER_TRANSACTION
                ),
            )
        } else {
            (
                "order_items",
                format!(
                    "INSERT INTO psi.order_items (order_id, line_no, product_id, quantity, unit_price) \
                 SELECT seq, 1, seq % 5000, 1 + seq % 9, (seq % 10000) / 100 FROM psi.seq_{lo}_to_{hi}",
                    lo = base + 1,
                    hi = base + ROWS_PER_TRANSACTION
                ),
            )
        };
        conn.query_drop(&sql).await.with_context(|| format!("generating {table} rows"))?;
    }
    let end: String = conn.query_first("SELECT @@gtid_binlog_pos").await?.unwrap_or_default();
    let end: MariaGtid = end.parse::<Position>()?.get(1).context("no GTID after generating")?;
    let rows = transactions * ROWS_PER_TRANSACTION;
    println!(
        "bench capture: generated {rows} rows in {transactions} transactions in {:.1}s",
        generated.elapsed().as_secs_f64()
    );

    let raw = raw_copy(&db, &mut conn).await?;
    let null = capture_leg(&db, &start, end, NullSink { bytes: Arc::new(AtomicU64::new(0)) }).await?;
    let kafka = match &broker {
        Some(b) => Some(
            capture_leg(
                &db,
                &start,
                end,
                KafkaSink::connect(
                    &crate::config::KafkaConfig::single_broker(vec![b.bootstrap()]),
                    &changes_topic("east"),
                )
                .await?,
            )
            .await?,
        ),
        None => None,
    };

    let per_s = |secs: f64| rows as f64 / secs;
    println!("\nbench capture: {rows} rows, binlog {:.1} MiB", raw.bytes as f64 / 1048576.0);
    println!(
        "  raw binlog copy (mariadb-binlog --raw)  {:>8.2}s  {:>10.0} rows/s  {:>7.1} MiB/s",
        raw.seconds,
        per_s(raw.seconds),
        raw.bytes as f64 / 1048576.0 / raw.seconds
    );
    println!(
        "  ferry capture → null sink              {:>8.2}s  {:>10.0} rows/s  ratio to raw {:.2}  ({:.0} rows per CPU-second)",
        null.seconds,
        per_s(null.seconds),
        raw.seconds / null.seconds,
        rows as f64 / null.cpu_seconds.max(1e-9)
    );
    if let Some(k) = kafka {
        println!(
            "  ferry capture → Kafka (acks=all)       {:>8.2}s  {:>10.0} rows/s  ratio to raw {:.2}  ({:.1} MiB published)",
            k.seconds,
            per_s(k.seconds),
            raw.seconds / k.seconds,
            k.bytes as f64 / 1048576.0
        );
    }
    println!("  targets: ratio ≥ 0.5 (decoding keeps up with the raw read), ≥ 100000 rows per CPU-second");
    Ok(())
}

/// Time `mariadb-binlog --read-from-remote-server --raw` copying every binlog file.
async fn raw_copy(db: &MariaDb, conn: &mut mysql_async::Conn) -> anyhow::Result<Leg> {
    let logs: Vec<(String, u64)> = conn.query("SHOW BINARY LOGS").await?;
    let dir = tempfile::tempdir()?;
    let bytes = logs.iter().map(|(_, size)| size).sum();
    let o = db.options();
    let started = Instant::now();
    let out = tokio::process::Command::new("mariadb-binlog")
        .args(["--read-from-remote-server", "--raw", "--host", &o.ip.to_string()])
        .args(["--port", &db.addr().port().to_string(), "--user", &o.user])
        .arg(format!("--password={}", o.password))
        .arg(format!("--result-file={}/", dir.path().display()))
        .args(logs.iter().map(|(f, _)| f.as_str()))
        .output()
        .await
        .context("running mariadb-binlog (package mariadb-client)")?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("mariadb-binlog failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Leg { seconds, cpu_seconds: 0.0, bytes })
}

/// Time the capture pipeline from `start` until `end` is acknowledged.
pub(crate) async fn capture_leg<S: RecordSink>(
    db: &MariaDb,
    start: &Position,
    end: MariaGtid,
    mut sink: S,
) -> anyhow::Result<Leg> {
    let settings = PipelineSettings {
        region: "east".into(),
        flavor: crate::config::Flavor::Mariadb,
        origin: crate::model::OriginFilter::Domain(1),
        reader_server_id: 7001,
        heartbeat: Duration::from_secs(1),
        max_record_bytes: 512 * 1024,
        max_inflight_bytes: 64 * 1024 * 1024,
        filter: None,
        tombstones: None,
    };
    let metrics = CaptureMetrics::default();
    let (progress, mut watcher) = watch::channel(Progress::default());
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    let done = tokio::spawn(async move {
        let _ = watcher.wait_for(|p| p.position.includes(end)).await;
        stopper.cancel();
    });
    let (t0, cpu0) = (Instant::now(), cpu_seconds());
    pipeline::run(
        db.opts(),
        &settings,
        start.clone(),
        &mut sink,
        &progress,
        &metrics,
        &stop,
        &mut crate::capture::snapshot::Windows::none(),
    )
    .await?;
    let (seconds, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    done.abort();
    if !progress.borrow().position.includes(end) {
        bail!("capture stopped before reaching {end}");
    }
    Ok(Leg { seconds, cpu_seconds: cpu, bytes: metrics.published_bytes.get() })
}
