//! `ferry bench check`: `ferry check` over two regions' copies of one table, beside
//! pt-table-checksum (Percona Toolkit) over one server's copy of the same table, in the same
//! run on the same machine. Both run as child processes; wall time and peak RSS are theirs.
//!
//! pt-table-checksum is the baseline an operator knows: chunked CRC32 checksums sized to
//! `--chunk-time` 0.5 s, on one server (with no replicas it only computes and stores them).
//! ferry computes SHA-1 row digests in both regions at once and compares their sums; the goal is
//! ferry's rows/s over two regions ≥ pt-table-checksum's over one.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use mysql_async::prelude::Queryable;

use crate::sandbox::{MariaDb, MariaDbOptions, install_schemas, region_yaml};

pub struct Options {
    pub rows: u64,
}

const TABLE: &str = "CREATE TABLE bench.items (
    id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    sku VARCHAR(64) NOT NULL,
    name VARCHAR(255) NOT NULL,
    price DECIMAL(12,2) NOT NULL,
    quantity INT NOT NULL,
    note VARCHAR(255) NULL,
    updated_at DATETIME(6) NOT NULL
) ENGINE=InnoDB";

/// A child's wall time, peak RSS (KiB) and exit status.
struct Ran {
    seconds: f64,
    max_rss_kib: i64,
    status: i32,
    output: String,
}

/// Run `command` to completion, reaping it with wait4 to read its own peak RSS.
fn run_child(mut command: std::process::Command, out: &Path) -> anyhow::Result<Ran> {
    let file = std::fs::File::create(out)?;
    command.stdout(file.try_clone()?).stderr(file);
    let started = Instant::now();
    let child = command.spawn().context("starting the child")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: waits for our own child; both out-pointers are valid for writes.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
    if waited != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let seconds = started.elapsed().as_secs_f64();
    // SAFETY: filled in by the successful wait4 above.
    let usage = unsafe { usage.assume_init() };
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    Ok(Ran { seconds, max_rss_kib: usage.ru_maxrss, status: code, output: std::fs::read_to_string(out)? })
}

async fn fill(db: &MariaDb, rows: u64) -> anyhow::Result<()> {
    let mut c = db.root_conn().await?;
    c.query_drop("SET SESSION sql_log_bin = 0").await?;
    c.query_drop("CREATE DATABASE bench").await?;
    c.query_drop(TABLE).await?;
    let mut from = 1;
    while from <= rows {
        let to = (from + 99_999).min(rows);
        c.query_drop(format!(
            "INSERT INTO bench.items SELECT seq, CONCAT('SKU-', seq), CONCAT('product number ', seq), \
             seq % 100000 / 100, seq % 1000, IF(seq % 7 = 0, NULL, REPEAT('n', seq % 40)), \
             '2026-11-01 00:00:00' + INTERVAL seq MICROSECOND FROM bench.seq_{from}_to_{to}"
        ))
        .await?;
        from = to + 1;
    }
    Ok(())
}

pub async fn run(opts: Options, ferry_bin: &Path) -> anyhow::Result<()> {
    if opts.rows < 1_000 {
        bail!("--rows must be at least 1000");
    }
    println!("bench check: two MariaDB servers with {} identical rows each", opts.rows);
    let east = MariaDb::start_temp(MariaDbOptions::test("bench-check-east", 101, 1)).await?;
    let west = MariaDb::start_temp(MariaDbOptions::test("bench-check-west", 201, 2)).await?;
    let filled = Instant::now();
    for db in [&east, &west] {
        install_schemas(db).await?;
        fill(db, opts.rows).await?;
    }
    println!("  filled in {:.1} s", filled.elapsed().as_secs_f64());
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("east.yaml");
    std::fs::write(
        &config,
        format!(
            "region: east\nregions:\n{}{}",
            region_yaml("east", &east, 1, 1, "127.0.0.1:9"),
            region_yaml("west", &west, 2, 2, "127.0.0.1:9")
        ),
    )?;

    // pt-table-checksum first on west's copy, then ferry over both: each leg starts with the
    // same buffer pool state on its own server (the fill left the rows cached).
    let o = west.options();
    let mut pt = std::process::Command::new("pt-table-checksum");
    pt.args(["--no-check-binlog-format", "--recursion-method=none", "--no-check-replication-filters"])
        .args(["--chunk-time=0.5", "--tables=bench.items", "--no-version-check"])
        .arg(format!("h={},P={},u={},p={}", west.addr().ip(), west.addr().port(), o.user, o.password));
    let baseline = run_child(pt, &dir.path().join("pt.out"))?;
    if baseline.status != 0 {
        bail!("pt-table-checksum exited {}: {}", baseline.status, baseline.output);
    }
    let mut check = std::process::Command::new(ferry_bin);
    check.args(["check", "--tables", "bench.items", "--config"]).arg(&config);
    let ferry = run_child(check, &dir.path().join("check.out"))?;
    if ferry.status != 0 {
        bail!("ferry check exited {} (0 expected: the copies are identical): {}", ferry.status, ferry.output);
    }
    let rows = opts.rows as f64;
    let (ferry_rate, pt_rate) = (rows / ferry.seconds, rows / baseline.seconds);
    println!(
        "  pt-table-checksum, one server:  {:>7.2} s  {:>9.0} rows/s  peak RSS {:>6} MiB",
        baseline.seconds,
        pt_rate,
        baseline.max_rss_kib / 1024
    );
    println!(
        "  ferry check, two regions:       {:>7.2} s  {:>9.0} rows/s  peak RSS {:>6} MiB",
        ferry.seconds,
        ferry_rate,
        ferry.max_rss_kib / 1024
    );
    println!(
        "  ferry / pt-table-checksum: {:.2}× the rows per second (each region read in full)",
        ferry_rate / pt_rate
    );
    println!("  ferry: {}", ferry.output.lines().last().unwrap_or_default());
    for line in baseline.output.lines().filter(|l| !l.trim().is_empty()) {
        println!("  pt-table-checksum: {line}");
    }
    println!("  target: ferry ≥ 1.0× pt-table-checksum (which reads one copy)");
    Ok(())
}
