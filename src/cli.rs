//! The command line: `ferry validate|run|sandbox ...`. Parses arguments, loads configuration,
//! runs the command, and maps the outcome to an exit code: 0 success, 64 bad configuration or
//! usage, 1 any other failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{self, Config, LogFormat};
use crate::sandbox::{self, UpOptions, UpOutcome};
use crate::{EXIT_CONFIG, logging};

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "Cross-region replication and failover for PSI databases")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load and validate a configuration; print every problem with its YAML path (exit 64).
    /// When the local primary is reachable, the conflict rules are checked against its schema
    /// too.
    Validate {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        /// Only the file: do not connect to the servers.
        #[arg(long)]
        offline: bool,
        /// Print the outcome as one JSON object on stdout: `{"valid", "problems": [{"path",
        /// "message"}]}` (same exit codes).
        #[arg(long)]
        json: bool,
    },
    /// What this region needs before `ferry run`: ferry's account and the grants its roles
    /// need, the `ferry` schema, the topics. Prints them as SQL; with `--apply`, carries out
    /// what is missing as the administrator given by FERRY_ADMIN_USER / FERRY_ADMIN_PASSWORD
    /// and reports what was already done (idempotent).
    Init {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        apply: bool,
        #[arg(long, env = "FERRY_ADMIN_USER", default_value = "root")]
        admin_user: String,
        #[arg(long, env = "FERRY_ADMIN_PASSWORD", hide_env_values = true, default_value = "")]
        admin_password: String,
    },
    /// List the conflicts this region decided (`ferry.conflicts` on the local primary), newest
    /// first.
    /// Compare the regions' tables row by row while writes go on: chunked checksums, the
    /// differing rows found exactly, each re-read after replication caught up before it is
    /// reported. Exit 0: the regions agree; 3: differences found; 64: bad configuration;
    /// 1: any other failure.
    Check {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        /// Only these tables (`db.table,...`); default: every user table apply governs.
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// Only these regions (`a,b`); default: every configured region.
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
        /// One JSON object per line: each difference, then `{"summary": ...}`.
        #[arg(long)]
        json: bool,
        /// Repair every persistent difference by the conflict rules, through the pipeline.
        #[arg(long)]
        repair: bool,
        /// With --repair: print the plan, change nothing.
        #[arg(long, requires = "repair")]
        dry_run: bool,
    },
    Conflicts {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        /// Only those decided within this long (`10m`, `2h`, `7d`) or since this UTC time
        /// (`2026-11-22 10:00:00`).
        #[arg(long)]
        since: Option<String>,
        /// Only this table (`db.table`).
        #[arg(long)]
        table: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// One JSON object per line, with both images.
        #[arg(long)]
        json: bool,
    },
    /// Run this region's roles under one supervisor until SIGINT/SIGTERM.
    Run {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
    },
    /// Print decoded transactions straight from the local primary's binlog as JSON lines (the
    /// envelope capture would publish), without Kafka. Runs until Ctrl-C.
    Tail {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        /// Start after this GTID position (`1-101-5,2-201-9`); default: the current position.
        #[arg(long)]
        from: Option<String>,
        /// Only rows of this table (`db.table`); repeatable.
        #[arg(long)]
        table: Vec<String>,
        /// Also print transactions of other regions (applied here by ferry).
        #[arg(long)]
        all_origins: bool,
    },
    /// Switch a whole region's traffic to another region (DNS), with the RPO report.
    Failover {
        #[command(subcommand)]
        command: FailoverCommand,
    },
    /// An initial sync from another region (run with the receiving region's config): the
    /// origin's capture reads the tables in chunks between watermarks and publishes them into
    /// its stream, where this region's apply takes them by the rules.
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
    /// A planned, lossless handover of a primary to a replica.
    Switchover {
        #[command(subcommand)]
        command: SwitchoverCommand,
    },
    /// Measure performance against a baseline on this machine (build with --release).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// A local multi-region topology of real servers (MariaDB, Redis, Kafka, DNS, HAProxy).
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
    },
}

#[derive(Debug, Subcommand)]
enum FailoverCommand {
    /// Point every DNS record of region FROM's services (failover.dns.services) at region TO's
    /// addresses, after checking TO's primaries, and report the RPO: FROM's published
    /// transactions TO has not applied. Without --confirm, only plans and reports (exit 0);
    /// with it, switches (exit 1 when refused or not every record switched). The report is
    /// kept in ferry.failovers on TO's primary.
    Region {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        confirm: bool,
        /// The report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SyncCommand {
    /// Ask `--from`'s capture to snapshot the tables (default: every user table with a primary
    /// key that apply governs). Every table must exist here.
    Start {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
    },
    /// Per table: chunks and rows published, the origin's row estimate, done.
    Status {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop what is not done yet.
    Cancel {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        from: String,
    },
}

#[derive(Debug, Subcommand)]
enum SwitchoverCommand {
    /// `FAILOVER TO` the Redis replica with the highest offset, then switch `redis.<region>`
    /// in DNS (when failover.dns is set) and verify it reaches the new primary.
    Redis {
        #[arg(long, env = "FERRY_CONFIG")]
        config: PathBuf,
        /// Default: the configuration's own region.
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// End-to-end lag (heartbeat write → applied in the other region) under a steady load in
    /// both regions of a real sandbox.
    E2e {
        /// Row changes per second written in each region.
        #[arg(long, default_value_t = 2000)]
        rows_per_second: u64,
        /// How long to sample.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// ferry's apply beside MariaDB's own replication (serial and 4 threads) on one workload.
    Apply {
        /// Transactions of the PSI workload (4 row changes each).
        #[arg(long, default_value_t = 20_000)]
        transactions: usize,
    },
    /// `ferry check` over two regions' copies of a table beside pt-table-checksum over one.
    Check {
        /// Rows in the table.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
    /// Capture's decoding speed beside a raw binlog copy of the same binlog.
    Capture {
        /// Rows of PSI writes to generate (in 1,000-row transactions).
        #[arg(long, default_value_t = 500_000)]
        rows: usize,
        /// Skip the leg that publishes to a broker.
        #[arg(long)]
        no_kafka: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SandboxCommand {
    /// Start every server of every region, then one `ferry run` per region.
    Up {
        /// Folder for data, logs, generated configs and sandbox.json.
        #[arg(long, default_value = ".sandbox")]
        dir: PathBuf,
        /// Regions to create, in tie-break order.
        #[arg(long, value_delimiter = ',', default_values_t = sandbox::DEFAULT_REGIONS.iter().map(|s| s.to_string()))]
        regions: Vec<String>,
    },
    /// Stop everything `up` started in DIR (by recorded pid), and nothing else.
    Down {
        #[arg(long, default_value = ".sandbox")]
        dir: PathBuf,
    },
    /// Show what is running (exit 1 if anything recorded has stopped).
    Status {
        #[arg(long, default_value = ".sandbox")]
        dir: PathBuf,
        /// Print sandbox.json with a `running` flag per process.
        #[arg(long)]
        json: bool,
    },
    /// Serve a stand-in PSI app node (used by `up`).
    App {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long)]
        region: String,
    },
}

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_CONFIG } else { 0 };
        }
    };
    match cli.command {
        Command::Validate { config, offline, json } => validate(&config, offline, json),
        Command::Init { config, apply, admin_user, admin_password } => {
            let admin = apply.then_some(crate::setup::Admin { user: admin_user, password: admin_password });
            init(&config, admin)
        }
        Command::Check { config, tables, regions, json, repair, dry_run } => {
            check(&config, crate::check::Options { tables, regions }, json, repair, dry_run)
        }
        Command::Conflicts { config, since, table, limit, json } => {
            conflicts(&config, ConflictFilter { since, table, limit }, json)
        }
        Command::Run { config } => run(&config),
        Command::Tail { config, from, table, all_origins } => tail(&config, from, table, all_origins),
        Command::Failover { command: FailoverCommand::Region { config, from, to, confirm, json } } => {
            region_failover(&config, &from, &to, confirm, json)
        }
        Command::Sync { command } => sync(command),
        Command::Switchover { command: SwitchoverCommand::Redis { config, region } } => {
            redis_switchover(&config, region)
        }
        Command::Bench { command } => bench(command),
        Command::Sandbox { command } => {
            logging::init(LogFormat::Text, "warn,ferry=info");
            block_on(sandbox_command(command))
        }
    }
}

fn region_failover(path: &Path, from: &str, to: &str, confirm: bool, json: bool) -> i32 {
    let c = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(LogFormat::Text, "warn");
    block_on(async move {
        let report = match crate::failover::region::fail_over(&c, from, to, confirm).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("failover region: {e}");
                return 1;
            }
        };
        if json {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            print!("{}", crate::failover::region::render(&report));
        }
        match report.result.as_str() {
            "done" | "planned" => 0,
            _ => 1,
        }
    })
}

fn redis_switchover(path: &Path, region: Option<String>) -> i32 {
    let c = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(LogFormat::Text, "warn");
    let region = region.unwrap_or_else(|| c.region.clone());
    let Some(redis) = c.regions.get(&region).and_then(|r| r.redis.clone()) else {
        eprintln!("switchover redis: regions.{region}.redis is not configured");
        return EXIT_CONFIG;
    };
    block_on(async move {
        let failover = c.failover.clone().unwrap_or_default();
        let record = failover.dns.as_ref().map(|_| format!("redis.{region}"));
        let plan = match crate::failover::run::Plan::new(
            &failover,
            record.as_deref(),
            None,
            std::time::Duration::ZERO,
        ) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("switchover redis: {e}");
                return EXIT_CONFIG;
            }
        };
        let servers = redis.servers();
        let password = redis.password.as_ref().map(|p| p.expose().to_string());
        let report = crate::failover::run::redis_switchover(&plan, &servers, password.as_deref()).await;
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        if report.result == "done" { 0 } else { 1 }
    })
}

fn load(path: &Path) -> Result<Config, i32> {
    config::load(path).map_err(|errors| {
        eprint!("{errors}");
        EXIT_CONFIG
    })
}

fn validate(path: &Path, offline: bool, json: bool) -> i32 {
    let report = |problems: &[config::ConfigProblem]| {
        let problems: Vec<serde_json::Value> =
            problems.iter().map(|p| serde_json::json!({ "path": p.path, "message": p.message })).collect();
        println!(
            "{}",
            serde_json::json!({ "config": path.display().to_string(), "valid": problems.is_empty(), "problems": problems })
        );
    };
    let c = match config::load(path) {
        Ok(c) => c,
        Err(errors) if json => {
            report(&errors.problems);
            return EXIT_CONFIG;
        }
        Err(errors) => {
            eprint!("{errors}");
            return EXIT_CONFIG;
        }
    };
    if !offline {
        let Some(problems) = block_on_value(crate::setup::problems(&c)) else {
            eprintln!("{}: cannot start an async runtime to check the servers", path.display());
            return 1;
        };
        if !problems.is_empty() {
            if json {
                report(&problems);
            } else {
                eprint!("{}", config::ConfigErrors { source: path.display().to_string(), problems });
            }
            return EXIT_CONFIG;
        }
        if !json {
            println!(
                "{}: the servers answer and hold what ferry run needs (accounts, grants, binlog settings, identity, \
                 schema, brokers, HAProxy, Redis, DNS key)",
                path.display()
            );
        }
    }
    if json {
        report(&[]);
    } else {
        println!("{}: valid (region {}, {} regions)", path.display(), c.region, c.regions.len());
    }
    0
}

fn init(path: &Path, admin: Option<crate::setup::Admin>) -> i32 {
    let c = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let applying = admin.is_some();
    let Some(result) = block_on_value(crate::setup::init(&c, admin.as_ref())) else {
        eprintln!("ferry init: cannot start an async runtime");
        return 1;
    };
    match result {
        Ok(steps) if !applying => {
            println!("-- what region {} needs before `ferry run` (run as an administrator):", c.region);
            for step in steps {
                println!("{}", step.what);
            }
            0
        }
        Ok(steps) => {
            let todo = steps.iter().filter(|s| !s.done).count();
            for step in &steps {
                println!("{} {}", if step.done { "already done:" } else { "done:        " }, step.what);
            }
            if todo == 0 {
                println!("nothing to do: region {} is set up", c.region);
            }
            0
        }
        Err(e) => {
            eprintln!("ferry init: {e}");
            1
        }
    }
}

struct ConflictFilter {
    since: Option<String>,
    table: Option<String>,
    limit: u64,
}

fn conflicts(path: &Path, filter: ConflictFilter, json: bool) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let since = match filter.since.as_deref().map(since_condition).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("--since: {e}");
            return EXIT_CONFIG;
        }
    };
    block_on(async move {
        match crate::conflict::log::list(&config, since, filter.table, filter.limit).await {
            Ok(rows) => {
                for row in &rows {
                    if json {
                        println!("{}", serde_json::to_string(row).unwrap_or_default());
                    } else {
                        println!("{}", row.line());
                    }
                }
                if !json {
                    println!("{} conflict{}", rows.len(), if rows.len() == 1 { "" } else { "s" });
                }
                0
            }
            Err(e) => {
                eprintln!("ferry conflicts: {e}");
                1
            }
        }
    })
}

fn sync(command: SyncCommand) -> i32 {
    let path = match &command {
        SyncCommand::Start { config, .. }
        | SyncCommand::Status { config, .. }
        | SyncCommand::Cancel { config, .. } => config.clone(),
    };
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(config.log.format, "warn");
    block_on(async move {
        let result = match command {
            SyncCommand::Start { from, tables, .. } => {
                crate::sync::start(&config, &from, &tables).await.map(|t| {
                    println!("asked {from} to snapshot {} table(s): {}", t.len(), t.join(", "));
                    println!("follow it with: ferry sync status --config {} --from {from}", path.display());
                })
            }
            SyncCommand::Status { from, json, .. } => crate::sync::status(&config, &from).await.map(|rows| {
                for r in &rows {
                    if json {
                        println!("{}", serde_json::to_string(r).unwrap_or_default());
                    } else {
                        let percent = if r.done {
                            100.0
                        } else {
                            (r.rows as f64 * 100.0 / r.estimate.max(1) as f64).min(99.0)
                        };
                        let eta = r.eta().map(|s| format!("  ETA {s:.0} s")).unwrap_or_default();
                        println!(
                            "{:<32} {:>6} chunks {:>10} rows  {:>5.1}%  {:>9.0} rows/s  {}{eta}",
                            r.table,
                            r.chunks,
                            r.rows,
                            percent,
                            r.rate(),
                            if r.done { "done" } else { "running" }
                        );
                    }
                }
                if !json && rows.is_empty() {
                    println!("no initial sync requested from {from}");
                }
            }),
            SyncCommand::Cancel { from, .. } => {
                crate::sync::cancel(&config, &from).await.map(|n| println!("cancelled {n} table(s)"))
            }
        };
        match result {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ferry sync: {e}");
                1
            }
        }
    })
}

/// Exit code of `ferry check` when the regions differ.
const EXIT_DIFFERENT: i32 = 3;

fn check(path: &Path, options: crate::check::Options, json: bool, repair: bool, dry_run: bool) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(config.log.format, "warn");
    block_on(async move {
        let report = match crate::check::run(&config, &options).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("ferry check: {e}");
                return 1;
            }
        };
        for d in &report.differences {
            if json {
                println!("{}", serde_json::to_string(d).unwrap_or_default());
            } else {
                println!("{}", d.line());
            }
        }
        for (table, why) in &report.skipped {
            if json {
                println!("{}", serde_json::json!({ "skipped": { "table": table, "reason": why } }));
            } else {
                println!("{table}  skipped: {why}");
            }
        }
        let s = &report.summary;
        if json {
            println!("{}", serde_json::json!({ "summary": s }));
        } else {
            println!(
                "{} tables, {} chunks, {} rows compared, {} differences, {} unsettled in {:.1} s ({:.0} rows/s)",
                s.tables,
                s.chunks,
                s.rows,
                s.differences,
                s.unsettled,
                s.seconds,
                s.rows as f64 / s.seconds.max(1e-3)
            );
        }
        if repair && !report.differences.is_empty() {
            let mut plans = match crate::check::repair::plan(&config, &report.differences).await {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("ferry check --repair: {e}");
                    return 1;
                }
            };
            if !dry_run
                && let Err(e) =
                    crate::check::repair::carry_out(&config, &report.differences, &mut plans).await
            {
                eprintln!("ferry check --repair: {e}");
                return 1;
            }
            for p in &plans {
                if json {
                    println!("{}", serde_json::json!({ "repair": p }));
                } else {
                    let key = p
                        .key
                        .as_ref()
                        .map(|k| serde_json::to_string(k).unwrap_or_default())
                        .unwrap_or_default();
                    let what = match &p.action {
                        crate::check::repair::Action::Rewrite { region, .. } => {
                            format!("rewrite from {region} (its row wins)")
                        }
                        crate::check::repair::Action::Delete { regions, winner, .. } => {
                            format!("delete in {} ({winner}'s tombstone wins)", regions.join(","))
                        }
                        crate::check::repair::Action::Leave { reason } => format!("left alone: {reason}"),
                    };
                    let outcome = p.outcome.as_deref().map(|o| format!(": {o}")).unwrap_or_default();
                    println!("repair {}  {key}  {what}{outcome}", p.table);
                }
            }
        }
        if s.differences + s.unsettled > 0 { EXIT_DIFFERENT } else { 0 }
    })
}

/// `--since`: a duration back from now, or a UTC time.
fn since_condition(text: &str) -> Result<crate::conflict::log::Since, String> {
    use crate::conflict::log::Since;
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(Since::Ago(d));
    }
    match crate::conflict::datetime_us(text) {
        Some(_) => Ok(Since::At(text.to_string())),
        None => Err(format!("`{text}` is neither a duration (10m, 2h, 7d) nor a time (2026-11-22 10:00:00)")),
    }
}

fn block_on_value<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().ok().map(|rt| rt.block_on(fut))
}

fn run(path: &Path) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(config.log.format, &config.log.level);
    block_on(async move {
        match crate::app::run(config).await {
            Ok(outcome) => outcome.exit_code(),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "ferry failed to start");
                1
            }
        }
    })
}

fn tail(path: &Path, from: Option<String>, tables: Vec<String>, all_origins: bool) -> i32 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    logging::init(config.log.format, "warn");
    let from = match from.map(|f| f.parse::<crate::model::Position>()).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("--from: {e}");
            return EXIT_CONFIG;
        }
    };
    block_on(async move {
        match crate::capture::tail::run(&config, from, tables, all_origins).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ferry tail: {e}");
                1
            }
        }
    })
}

/// `ferry bench ...`: errors print with the benchmark's name and exit 1.
fn bench(command: BenchCommand) -> i32 {
    logging::init(LogFormat::Text, "warn");
    block_on(async move {
        let exe = std::env::current_exe();
        let (name, result) = match (command, exe) {
            (BenchCommand::Capture { rows, no_kafka }, _) => (
                "capture",
                crate::bench::capture::run(crate::bench::capture::Options { rows, kafka: !no_kafka }).await,
            ),
            (BenchCommand::Apply { transactions }, Ok(bin)) => {
                ("apply", crate::bench::apply::run(crate::bench::apply::Options { transactions }, &bin).await)
            }
            (BenchCommand::Check { rows }, Ok(bin)) => {
                ("check", crate::bench::check::run(crate::bench::check::Options { rows }, &bin).await)
            }
            (BenchCommand::E2e { rows_per_second, seconds }, Ok(bin)) => {
                let options = crate::bench::e2e::Options { rows_per_second, seconds };
                ("e2e", crate::bench::e2e::run(options, &bin).await)
            }
            (_, Err(e)) => ("", Err(anyhow::anyhow!("cannot find the ferry binary: {e}"))),
        };
        match result {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bench {name}: {e:#}");
                1
            }
        }
    })
}

fn block_on(fut: impl std::future::Future<Output = i32>) -> i32 {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            1
        }
    }
}

async fn sandbox_command(command: SandboxCommand) -> i32 {
    match command {
        SandboxCommand::Up { dir, regions } => {
            let ferry_bin = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("cannot find the ferry binary: {e}");
                    return 1;
                }
            };
            println!("starting sandbox regions {} in {} ...", regions.join(","), dir.display());
            match sandbox::up(UpOptions { dir: dir.clone(), regions, ferry_bin }).await {
                Ok(UpOutcome::Started(state)) => {
                    print_summary(&state, &dir, "up");
                    0
                }
                Ok(UpOutcome::AlreadyUp(state)) => {
                    print_summary(&state, &dir, "already up");
                    0
                }
                Err(e) => {
                    eprintln!("sandbox up failed (everything it started was stopped): {e}");
                    1
                }
            }
        }
        SandboxCommand::Down { dir } => match sandbox::down(&dir).await {
            Ok(None) => {
                println!("no sandbox running in {}", dir.display());
                0
            }
            Ok(Some(report)) => {
                println!(
                    "sandbox in {} stopped: {} stopped, {} killed after the timeout, {} were not running",
                    dir.display(),
                    report.stopped.len(),
                    report.killed.len(),
                    report.not_running.len()
                );
                for label in &report.killed {
                    println!("  killed: {label}");
                }
                0
            }
            Err(e) => {
                eprintln!("sandbox down failed: {e}");
                1
            }
        },
        SandboxCommand::Status { dir, json } => status(&dir, json),
        SandboxCommand::App { listen, name, region } => {
            match sandbox::app_node::serve(listen, &name, &region).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("app node {name} on {listen}: {e}");
                    1
                }
            }
        }
    }
}

fn status(dir: &Path, json: bool) -> i32 {
    let (state, processes) = match sandbox::status(dir) {
        Ok(Some(found)) => found,
        Ok(None) => {
            if json {
                println!("{{\"running\": false}}");
            } else {
                println!("no sandbox in {}", dir.display());
            }
            return 0;
        }
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let all_running = processes.iter().all(|p| p.running);
    if json {
        let mut value = serde_json::to_value(&state).unwrap_or_default();
        value["running"] = serde_json::Value::Bool(all_running);
        value["processes"] = processes
            .iter()
            .map(|p| serde_json::json!({"name": p.label, "pid": p.record.pid, "running": p.running, "log": p.record.log}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        print_summary(&state, dir, if all_running { "up" } else { "DEGRADED" });
        println!("\nprocesses:");
        for p in &processes {
            let state = if p.running { "running" } else { "STOPPED" };
            println!("  {:<22} pid {:<8} {:<8} {}", p.label, p.record.pid, state, p.record.log.display());
        }
    }
    if all_running { 0 } else { 1 }
}

fn print_summary(state: &sandbox::SandboxState, dir: &Path, how: &str) {
    println!("sandbox {how} in {} (started in {:.1}s)", state.dir.display(), state.startup_seconds);
    for (name, r) in &state.regions {
        println!("  {name}:");
        println!("    ferry    {}  (config {})", r.ferry.http_url, r.ferry.config.display());
        println!(
            "    mysql    primary {}:{}  replica {}:{}",
            r.mysql.primary.host, r.mysql.primary.port, r.mysql.replica.host, r.mysql.replica.port
        );
        println!("    redis    primary {}  replica {}", r.redis.primary.address, r.redis.replica.address);
        println!(
            "    app      {} (haproxy; runtime API {})",
            r.haproxy.frontend_url,
            r.haproxy.runtime_api.display()
        );
    }
    println!("  kafka      {}  topics {}", state.kafka.bootstrap, state.kafka.topics.join(", "));
    println!("  dns        {}  zone {} (TSIG key {})", state.dns.server, state.dns.zone, state.dns.tsig.name);
    let first = state.regions.values().next();
    let d = dir.display();
    // The binary is usually not on PATH (scripts/sandbox builds it in the cargo target dir).
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "ferry".into());
    println!("\nnext:");
    println!("  status   {exe} sandbox status --dir {d}     (details: {}/sandbox.json)", state.dir.display());
    if let Some(r) = first {
        println!("  metrics  curl {}/metrics     status: curl {}/status", r.ferry.http_url, r.ferry.http_url);
    }
    println!("  stop     {exe} sandbox down --dir {d}");
}
