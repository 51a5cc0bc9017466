//! `ferry check`: are the regions the same? Compares every table apply governs across the
//! regions' primaries (or replicas) while writes go on, finds the exact rows that differ, and
//! repairs them through the pipeline.
//!
//! How (README "Checks" has the operator's view):
//! 1. **Schema**: each table's stored columns (type, nullability, collation), primary key and
//!    indexes are compared first; a table that differs is reported (`schema`) and its rows are
//!    not compared.
//! 2. **Chunks**: primary-key ranges cut in the first region, sized so that one checksum takes
//!    about `check.chunk_time`. Every region computes the chunk's row count and the XOR of the
//!    first 64 bits of its rows' digests (SHA-1 of every stored column's exact bytes), at the
//!    same time.
//! 3. **Drill-down**: a chunk whose sums differ is read row by row (digests only) in every
//!    region: the keys whose digests differ or that some regions lack.
//! 4. **Settle**: right after reading, each region's newest own heartbeat is noted; the check
//!    waits (at most `check.max_wait`) until every region holds a newer heartbeat of every
//!    other, i.e. has applied everything the others had committed when the rows were read,
//!    then reads those keys again (up to `check.rechecks` times). A key that agrees is dropped;
//!    one that still differs with unchanged digests is a difference; one whose digests kept
//!    changing is `unsettled`.
//! 5. **Repair** (`repair`): the winner by the conflict rules, written again through capture
//!    and apply.

pub mod progress;
mod read;
pub mod repair;
pub mod role;
pub(crate) use crate::catalog as table;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mysql_async::Conn;
use serde::Serialize;

use crate::config::{Config, ReadFrom};
pub use read::Key;
use read::{Digests, Range};
pub use table::Definition;

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `db.table` names; empty = every user table apply governs.
    pub tables: Vec<String>,
    /// Region names; empty = every configured region.
    pub regions: Vec<String>,
}

/// One difference.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Difference {
    pub table: String,
    /// The primary key, column → value (None for a schema difference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<BTreeMap<String, serde_json::Value>>,
    /// `missing`, `different`, `unsettled` or `schema`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub present_in: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub absent_in: Vec<String>,
    /// The columns whose values differ (`different`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// Each region's row, column → value as the wire envelope encodes it (`{"t": …, "v": …}`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rows: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// The same rows, column → text (binary as `0x…` hex, NULL as None): what repairs read
    /// and log.
    #[serde(skip)]
    pub texts: BTreeMap<String, BTreeMap<String, Option<String>>>,
    /// What differs (`schema`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// The key's values for repairing (not printed).
    #[serde(skip)]
    pub key_values: Option<Key>,
    /// Each holding region's row digest when last read (not printed): a repair writes only
    /// while these still hold.
    #[serde(skip)]
    pub digests: BTreeMap<String, String>,
    /// Whether the key's columns are integers or text (tombstones can be looked up).
    #[serde(skip)]
    pub plain_key: bool,
}

impl Difference {
    /// The one-line form.
    pub fn line(&self) -> String {
        let key = self
            .key
            .as_ref()
            .map(|k| k.iter().map(|(c, v)| format!("{c}={v}")).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let what = match self.kind {
            "missing" => {
                format!("present in {}, absent in {}", self.present_in.join(","), self.absent_in.join(","))
            }
            "different" => format!("columns {}", self.columns.join(",")),
            "schema" => self.details.join("; "),
            _ => "kept changing while checked".to_string(),
        };
        format!("{}  {}  {:<10} {}", self.table, key, self.kind, what)
    }
}

/// Totals of one check.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub tables: u64,
    pub chunks: u64,
    pub rows: u64,
    pub differences: u64,
    pub unsettled: u64,
    pub seconds: f64,
}

/// A check's findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub differences: Vec<Difference>,
    pub summary: Summary,
    /// Tables left out, with why (no primary key).
    pub skipped: Vec<(String, String)>,
    /// The tables whose rows this run compared (a resumed full check skips those done).
    #[serde(skip)]
    pub compared: Vec<String>,
}

/// One region's reading connection.
pub(crate) struct Region {
    name: String,
    pub(crate) conn: Conn,
}

/// The compared regions and the others (whose heartbeats only are read).
struct Scope<'a> {
    regions: &'a mut Vec<Region>,
    witnesses: &'a mut Vec<Region>,
}

/// How the check paces itself.
struct Pace {
    chunk_time: Duration,
    size: u64,
    max_rows_per_second: u64,
}

const FIRST_CHUNK: u64 = 1_000;
const MIN_CHUNK: u64 = 10;
const MAX_CHUNK: u64 = 200_000;

impl Pace {
    /// The next chunk's size from how long this one took: halfway to the size that would take
    /// `check.chunk_time` at this chunk's rate, growing at most 4× at a time.
    fn observe(&mut self, rows: u64, took: Duration) {
        if rows == 0 {
            return;
        }
        let took = took.as_secs_f64().max(1e-4);
        let wanted = (rows as f64) * self.chunk_time.as_secs_f64() / took;
        let next = (self.size as f64 + wanted) / 2.0;
        self.size = (next as u64).clamp(MIN_CHUNK, (self.size * 4).min(MAX_CHUNK));
    }

    async fn throttle(&self, rows: u64, took: Duration) {
        if self.max_rows_per_second == 0 {
            return;
        }
        let least = Duration::from_secs_f64(rows as f64 / self.max_rows_per_second as f64);
        if least > took {
            tokio::time::sleep(least - took).await;
        }
    }
}

/// How long connecting to a region's server may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// A connection to `name`'s primary or first replica (UTC, READ COMMITTED).
pub(crate) async fn connect(config: &Config, name: &str, from: ReadFrom) -> Result<Region, String> {
    let region = config.regions.get(name).ok_or_else(|| format!("no region {name} in the configuration"))?;
    let accounts = crate::failover::mysql::Accounts::from_config(&region.mysql, None);
    let opts = match from {
        ReadFrom::Primary => {
            crate::failover::mysql::primary_opts(&region.mysql).await.map_err(|e| e.to_string())?
        }
        ReadFrom::Replica => {
            let replica = region.mysql.replicas.first().ok_or_else(|| {
                format!("regions.{name}.mysql.replicas: none configured, but check.read_from is replica")
            })?;
            crate::failover::mysql::opts(replica, &accounts)
        }
    };
    let opts = mysql_async::OptsBuilder::from_opts(opts).setup(vec![
        "SET SESSION time_zone = '+00:00'",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    ]);
    let conn = tokio::time::timeout(CONNECT_WITHIN, Conn::new(opts))
        .await
        .map_err(|_| format!("{name}: no answer within {CONNECT_WITHIN:?}"))?
        .map_err(|e| format!("{name}: connecting: {e}"))?;
    Ok(Region { name: name.to_string(), conn })
}

fn sql(region: &str, what: &str) -> impl FnOnce(mysql_async::Error) -> String {
    let (region, what) = (region.to_string(), what.to_string());
    move |e| format!("{region}: {what}: {e}")
}

/// The tables to check: those named, or every user table (in `apply.schemas` when set) of
/// any region.
async fn tables(
    config: &Config,
    regions: &mut [Region],
    options: &Options,
) -> Result<Vec<(String, String)>, String> {
    if !options.tables.is_empty() {
        return options
            .tables
            .iter()
            .map(|t| {
                t.split_once('.')
                    .map(|(d, n)| (d.to_string(), n.to_string()))
                    .ok_or_else(|| format!("--tables: {t} is not db.table"))
            })
            .collect();
    }
    let schemas = config.apply.as_ref().and_then(|a| a.schemas.clone());
    let mut all = BTreeSet::new();
    for r in regions.iter_mut() {
        all.extend(
            crate::catalog::user_tables(&mut r.conn, schemas.as_deref(), false)
                .await
                .map_err(sql(&r.name, "listing tables"))?,
        );
    }
    Ok(all.into_iter().collect())
}

/// Run the check (no repair).
pub async fn run(config: &Config, options: &Options) -> Result<Report, String> {
    run_with(config, options, None).await
}

/// The compared regions' connections, the others' (heartbeats only), and the tables.
async fn open(
    config: &Config,
    options: &Options,
) -> Result<(Vec<Region>, Vec<Region>, Vec<(String, String)>), String> {
    let names: Vec<String> = if options.regions.is_empty() {
        config.regions.keys().cloned().collect()
    } else {
        options.regions.clone()
    };
    if names.len() < 2 {
        return Err("--regions: a check compares at least two regions".into());
    }
    let mut regions = Vec::new();
    for name in &names {
        regions.push(connect(config, name, config.check.read_from).await?);
    }
    // Regions not compared still write: their heartbeats tell when their in-flight writes
    // have reached the compared ones.
    let mut witnesses = Vec::new();
    for name in config.regions.keys().filter(|n| !names.contains(n)) {
        witnesses.push(connect(config, name, ReadFrom::Primary).await?);
    }
    let tables = tables(config, &mut regions, options).await?;
    Ok((regions, witnesses, tables))
}

async fn close(regions: Vec<Region>, witnesses: Vec<Region>) {
    for r in regions.into_iter().chain(witnesses) {
        r.conn.disconnect().await.ok();
    }
}

fn finish(mut report: Report, started: Instant) -> Report {
    report.summary.differences = report.differences.iter().filter(|d| d.kind != "unsettled").count() as u64;
    report.summary.unsettled = report.differences.iter().filter(|d| d.kind == "unsettled").count() as u64;
    report.summary.seconds = started.elapsed().as_secs_f64();
    report
}

/// A full check; with `store`, resumed from where a killed one stopped and recorded chunk by
/// chunk (cleared once complete). The report covers what this run compared.
pub async fn run_with(
    config: &Config,
    options: &Options,
    mut store: Option<&mut progress::Store>,
) -> Result<Report, String> {
    let started = Instant::now();
    let (mut regions, mut witnesses, tables) = open(config, options).await?;
    let saved = match store.as_deref_mut() {
        Some(s) => s.load().await?,
        None => Vec::new(),
    };
    if !saved.is_empty() {
        tracing::info!(tables = saved.len(), "resuming the full check where it stopped");
    }
    let mut report = Report::default();
    let mut pace = Pace {
        chunk_time: config.check.chunk_time,
        size: FIRST_CHUNK,
        max_rows_per_second: config.check.max_rows_per_second,
    };
    for (db, name) in tables {
        let table = format!("{}.{}", crate::apply::sql::quote(&db), crate::apply::sql::quote(&name));
        let label = format!("{db}.{name}");
        let place = saved.iter().find(|(t, _)| *t == label).map(|(_, p)| p.clone());
        if place == Some(progress::Place::Done) {
            continue;
        }
        report.summary.tables += 1;
        let Some(def) = compare_schemas(&mut regions, &db, &name, &label, &mut report).await? else {
            continue;
        };
        if def.key.is_empty() {
            report.skipped.push((label, "no primary key".into()));
            continue;
        }
        // A key saved for another shape of the table (its key changed since) starts it over.
        let after = match place {
            Some(progress::Place::After(k)) if k.0.len() == def.key.len() => Some(k),
            Some(progress::Place::After(_)) => {
                tracing::warn!(table = %label, "the saved place does not fit the table's key: starting it over");
                None
            }
            _ => None,
        };
        report.compared.push(label.clone());
        let mut scope = Scope { regions: &mut regions, witnesses: &mut witnesses };
        let at = Chunking { table: &table, label: &label, def: &def, after };
        check_table(config, &mut scope, at, &mut pace, &mut report, store.as_deref_mut()).await?;
        if let Some(s) = store.as_deref_mut() {
            s.save(&label, &progress::Place::Done).await?;
        }
    }
    if let Some(s) = store {
        s.clear().await?;
    }
    close(regions, witnesses).await;
    Ok(finish(report, started))
}

/// Rows most keys a sliding-window check takes from one table in one run.
const WINDOW_KEYS: usize = 100_000;

/// A sliding-window check: the rows whose version column lies in `[from, to]` (µs, UTC) in
/// any region, compared by their digests and settled like a full check's. Tables whose
/// version column is not a DATETIME/TIMESTAMP are skipped (said so).
pub async fn window(config: &Config, options: &Options, from_us: i64, to_us: i64) -> Result<Report, String> {
    let started = Instant::now();
    let (mut regions, mut witnesses, tables) = open(config, options).await?;
    let rules = crate::conflict::Rules::from_config(config);
    let mut report = Report::default();
    let (from, to) = (repair::datetime_text(from_us), repair::datetime_text(to_us));
    for (db, name) in tables {
        let table = format!("{}.{}", crate::apply::sql::quote(&db), crate::apply::sql::quote(&name));
        let label = format!("{db}.{name}");
        report.summary.tables += 1;
        let Some(def) = compare_schemas(&mut regions, &db, &name, &label, &mut report).await? else {
            continue;
        };
        let Some(policy) = rules.policy(&db, &name) else {
            report.skipped.push((label, "not governed by the conflict rules".into()));
            continue;
        };
        let version = policy.version_column;
        if def.key.is_empty() || !def.is_temporal(version) {
            report
                .skipped
                .push((label, format!("no primary key or no DATETIME/TIMESTAMP version column {version}")));
            continue;
        }
        report.compared.push(label.clone());
        let mut keys: BTreeMap<String, Key> = BTreeMap::new();
        for r in regions.iter_mut() {
            for key in read::keys_between(&mut r.conn, &table, &def, version, &from, &to, WINDOW_KEYS)
                .await
                .map_err(sql(&r.name, &format!("reading {label}'s recent rows")))?
            {
                keys.insert(key.id(), key);
            }
        }
        if keys.len() >= WINDOW_KEYS {
            tracing::warn!(table = %label, keys = WINDOW_KEYS, "more rows changed in the window than one run takes (the oldest are taken): the rest wait for the full check");
        }
        let keys: Vec<Key> = keys.into_values().collect();
        report.summary.chunks += 1;
        report.summary.rows += keys.len() as u64;
        let mut seen = Vec::new();
        for r in regions.iter_mut() {
            seen.push(
                read::digests_of(&mut r.conn, &table, &def, &keys)
                    .await
                    .map_err(sql(&r.name, &format!("reading {label}")))?,
            );
        }
        let differing = differing(&seen);
        if !differing.is_empty() {
            let mut scope = Scope { regions: &mut regions, witnesses: &mut witnesses };
            settle(config, &mut scope, &table, &label, &def, differing, seen, &mut report).await?;
        }
    }
    close(regions, witnesses).await;
    Ok(finish(report, started))
}

/// The table's definition when it is the same everywhere; otherwise a `schema` difference.
async fn compare_schemas(
    regions: &mut [Region],
    db: &str,
    name: &str,
    label: &str,
    report: &mut Report,
) -> Result<Option<Definition>, String> {
    let mut defs = Vec::new();
    for r in regions.iter_mut() {
        let def = Definition::read(&mut r.conn, db, name)
            .await
            .map_err(sql(&r.name, "reading the table's definition"))?;
        defs.push((r.name.clone(), def));
    }
    let present: Vec<String> = defs.iter().filter(|(_, d)| d.is_some()).map(|(n, _)| n.clone()).collect();
    let absent: Vec<String> = defs.iter().filter(|(_, d)| d.is_none()).map(|(n, _)| n.clone()).collect();
    if !absent.is_empty() {
        report.differences.push(Difference {
            table: label.to_string(),
            key: None,
            kind: "schema",
            present_in: present,
            absent_in: absent.clone(),
            columns: Vec::new(),
            rows: BTreeMap::new(),
            texts: BTreeMap::new(),
            details: vec![format!("the table does not exist in {}", absent.join(","))],
            key_values: None,
            digests: BTreeMap::new(),
            plain_key: false,
        });
        return Ok(None);
    }
    let (first_name, first) = (&defs[0].0, defs[0].1.clone().unwrap_or_else(unreachable_def));
    let mut details = Vec::new();
    for (other_name, other) in defs.iter().skip(1) {
        if let Some(other) = other {
            details.extend(first.differences(other, first_name, other_name));
        }
    }
    if details.is_empty() {
        return Ok(Some(first));
    }
    report.differences.push(Difference {
        table: label.to_string(),
        key: None,
        kind: "schema",
        present_in: Vec::new(),
        absent_in: Vec::new(),
        columns: Vec::new(),
        rows: BTreeMap::new(),
        texts: BTreeMap::new(),
        details,
        key_values: None,
        digests: BTreeMap::new(),
        plain_key: false,
    });
    Ok(None)
}

fn unreachable_def() -> Definition {
    Definition { columns: Vec::new(), key: Vec::new(), indexes: Vec::new() }
}

/// Where a table's comparison starts.
struct Chunking<'a> {
    table: &'a str,
    label: &'a str,
    def: &'a Definition,
    /// Compare keys after this one (a resumed check).
    after: Option<Key>,
}

async fn check_table(
    config: &Config,
    scope: &mut Scope<'_>,
    at: Chunking<'_>,
    pace: &mut Pace,
    report: &mut Report,
    mut store: Option<&mut progress::Store>,
) -> Result<(), String> {
    let Chunking { table, label, def, mut after } = at;
    loop {
        wait_for_lag(config, scope.regions).await;
        let first = &mut scope.regions[0];
        let upto = read::chunk_end(&mut first.conn, table, def, after.as_ref(), pace.size)
            .await
            .map_err(sql(&first.name, &format!("cutting a chunk of {label}")))?;
        let range = Range { after: after.clone(), upto: upto.clone() };
        let began = Instant::now();
        let sums = futures_util::future::try_join_all(scope.regions.iter_mut().map(|r| {
            let range = range.clone();
            async move {
                read::checksum(&mut r.conn, table, def, &range)
                    .await
                    .map_err(sql(&r.name, &format!("checksumming {label}")))
            }
        }))
        .await?;
        let took = began.elapsed();
        let rows = sums.iter().map(|s| s.rows).max().unwrap_or(0);
        report.summary.chunks += 1;
        report.summary.rows += rows;
        pace.observe(rows, took);
        if sums.iter().any(|s| *s != sums[0]) {
            drill_down(config, scope, table, label, def, &range, report).await?;
        }
        pace.throttle(rows, took).await;
        match upto {
            Some(k) => {
                if let Some(s) = store.as_deref_mut() {
                    s.save(label, &progress::Place::After(k.clone())).await?;
                }
                after = Some(k)
            }
            None => return Ok(()),
        }
    }
}

/// Each region's digests of `range`, then the keys that differ, settled.
async fn drill_down(
    config: &Config,
    scope: &mut Scope<'_>,
    table: &str,
    label: &str,
    def: &Definition,
    range: &Range,
    report: &mut Report,
) -> Result<(), String> {
    let mut seen = Vec::new();
    for r in scope.regions.iter_mut() {
        let d = read::digests(&mut r.conn, table, def, range)
            .await
            .map_err(sql(&r.name, &format!("reading {label}")))?;
        seen.push(d);
    }
    let keys = differing(&seen);
    if keys.is_empty() {
        return Ok(());
    }
    settle(config, scope, table, label, def, keys, seen, report).await
}

/// The keys whose digests are not the same in every region (absent counts as different).
fn differing(seen: &[Digests]) -> Vec<Key> {
    let mut all: BTreeMap<&String, &Key> = BTreeMap::new();
    for d in seen {
        for (id, (key, _)) in d {
            all.insert(id, key);
        }
    }
    all.into_iter()
        .filter(|(id, _)| {
            let first = seen[0].get(*id).map(|(_, h)| h);
            seen.iter().any(|d| d.get(*id).map(|(_, h)| h) != first)
        })
        .map(|(_, k)| k.clone())
        .collect()
}

/// Wait until every region has applied what every other had when the rows were last read
/// (a newer heartbeat of it than the one it had itself), then read the keys again; report
/// what keeps differing.
#[allow(clippy::too_many_arguments)]
async fn settle(
    config: &Config,
    scope: &mut Scope<'_>,
    table: &str,
    label: &str,
    def: &Definition,
    mut keys: Vec<Key>,
    mut seen: Vec<Digests>,
    report: &mut Report,
) -> Result<(), String> {
    let mut changing: BTreeSet<String> = BTreeSet::new();
    let mut caught_up = true;
    for _ in 0..config.check.rechecks {
        caught_up = wait_applied(config, scope).await?;
        let mut again = Vec::new();
        for r in scope.regions.iter_mut() {
            again.push(
                read::digests_of(&mut r.conn, table, def, &keys)
                    .await
                    .map_err(sql(&r.name, &format!("re-reading {label}")))?,
            );
        }
        let asked: std::collections::HashSet<String> = keys.iter().map(Key::id).collect();
        let still: Vec<Key> = differing(&again).into_iter().filter(|k| asked.contains(&k.id())).collect();
        changing = still
            .iter()
            .map(Key::id)
            .filter(|id| {
                seen.iter()
                    .zip(&again)
                    .any(|(before, now)| before.get(id).map(|x| &x.1) != now.get(id).map(|x| &x.1))
            })
            .collect();
        keys = still;
        seen = again;
        if keys.is_empty() || (changing.is_empty() && caught_up) {
            break;
        }
    }
    if keys.is_empty() {
        return Ok(());
    }
    if !caught_up {
        // Replication did not catch up within check.max_wait: nothing here is certain.
        changing = keys.iter().map(Key::id).collect();
    }
    describe(scope.regions, table, label, def, &keys, &changing, report).await
}

/// Read the rows of `keys` everywhere and add one difference per key.
async fn describe(
    regions: &mut [Region],
    table: &str,
    label: &str,
    def: &Definition,
    keys: &[Key],
    changing: &BTreeSet<String>,
    report: &mut Report,
) -> Result<(), String> {
    let mut rows = Vec::new();
    for r in regions.iter_mut() {
        rows.push((
            r.name.clone(),
            read::rows_of(&mut r.conn, table, def, keys)
                .await
                .map_err(sql(&r.name, &format!("reading {label}")))?,
        ));
    }
    for key in keys {
        let id = key.id();
        let present_in: Vec<String> =
            rows.iter().filter(|(_, m)| m.contains_key(&id)).map(|(n, _)| n.clone()).collect();
        let absent_in: Vec<String> =
            rows.iter().filter(|(_, m)| !m.contains_key(&id)).map(|(n, _)| n.clone()).collect();
        let images: BTreeMap<String, BTreeMap<String, Option<String>>> = rows
            .iter()
            .filter_map(|(n, m)| {
                m.get(&id).map(|(_, text)| {
                    (
                        n.clone(),
                        def.columns.iter().map(|c| c.name.clone()).zip(text.iter().cloned()).collect(),
                    )
                })
            })
            .collect();
        let columns: Vec<String> = if absent_in.is_empty() {
            def.columns
                .iter()
                .map(|c| &c.name)
                .filter(|c| {
                    let mut values = images.values().map(|img| img.get(*c));
                    let first = values.next().flatten();
                    values.any(|v| v != first)
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let digests: BTreeSet<&String> =
            rows.iter().filter_map(|(_, m)| m.get(&id).map(|(d, _)| d)).collect();
        let kind = if changing.contains(&id) {
            "unsettled"
        } else if !absent_in.is_empty() {
            "missing"
        } else if digests.len() <= 1 {
            // Agreeing now (written meanwhile): nothing to report.
            continue;
        } else {
            "different"
        };
        let key_json = def.key.iter().zip(&key.0).map(|(c, v)| (c.clone(), key_value(def, c, v))).collect();
        report.differences.push(Difference {
            table: label.to_string(),
            key: Some(key_json),
            kind,
            present_in: if kind == "missing" { present_in } else { Vec::new() },
            absent_in: if kind == "missing" { absent_in } else { Vec::new() },
            columns,
            rows: images
                .iter()
                .map(|(region, row)| {
                    let encoded = def
                        .columns
                        .iter()
                        .map(|c| (c.name.clone(), c.envelope(row.get(&c.name).and_then(Option::as_deref))))
                        .collect();
                    (region.clone(), encoded)
                })
                .collect(),
            texts: images,
            details: Vec::new(),
            key_values: Some(key.clone()),
            digests: rows
                .iter()
                .filter_map(|(n, m)| m.get(&id).map(|(d, _)| (n.clone(), d.clone())))
                .collect(),
            plain_key: def.plain_key(),
        });
    }
    Ok(())
}

fn key_value(def: &Definition, column: &str, v: &mysql_async::Value) -> serde_json::Value {
    match v {
        mysql_async::Value::Int(i) => serde_json::json!(i),
        mysql_async::Value::UInt(u) => serde_json::json!(u),
        mysql_async::Value::Bytes(b) if def.is_integer(column) => String::from_utf8_lossy(b)
            .parse::<i64>()
            .map(|i| serde_json::json!(i))
            .unwrap_or_else(|_| serde_json::json!(String::from_utf8_lossy(b))),
        mysql_async::Value::Bytes(b) => serde_json::json!(String::from_utf8_lossy(b)),
        other => serde_json::json!(other.as_sql(true)),
    }
}

/// Until every compared region holds, of every region (compared or not), a heartbeat newer
/// than the one that region held of itself just now; at most `check.max_wait`. Whether it
/// caught up.
async fn wait_applied(config: &Config, scope: &mut Scope<'_>) -> Result<bool, String> {
    let mut own = BTreeMap::new();
    for r in scope.regions.iter_mut().chain(scope.witnesses.iter_mut()) {
        let beats = read::heartbeats(&mut r.conn).await.map_err(sql(&r.name, "reading ferry.heartbeat"))?;
        own.insert(r.name.clone(), beats.get(&r.name).copied().unwrap_or(i64::MIN));
    }
    let deadline = Instant::now() + config.check.max_wait;
    loop {
        let mut behind = Vec::new();
        for r in scope.regions.iter_mut() {
            let beats =
                read::heartbeats(&mut r.conn).await.map_err(sql(&r.name, "reading ferry.heartbeat"))?;
            for (other, at) in &own {
                if *other != r.name && beats.get(other).copied().unwrap_or(i64::MIN) <= *at {
                    behind.push(format!("{} has not applied {other}'s latest", r.name));
                }
            }
        }
        if behind.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            tracing::warn!(behind = %behind.join("; "), "check.max_wait passed: the rows read are reported as unsettled");
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pause while any region's newest heartbeat of another is older than `check.max_lag` by
/// that region's own clock (at most `check.max_wait`, then go on).
async fn wait_for_lag(config: &Config, regions: &mut [Region]) {
    let deadline = Instant::now() + config.check.max_wait;
    let max_lag = i64::try_from(config.check.max_lag.as_micros()).unwrap_or(i64::MAX);
    loop {
        let mut lagging = Vec::new();
        let mut newest = BTreeMap::new();
        for r in regions.iter_mut() {
            if let Ok(beats) = read::heartbeats(&mut r.conn).await {
                newest.insert(r.name.clone(), beats);
            }
        }
        for (region, beats) in &newest {
            let Some(own) = beats.get(region) else { continue };
            for (other, at) in beats {
                if other != region && newest.contains_key(other) && own - at > max_lag {
                    lagging.push(format!("{region} is {} s behind {other}", (own - at) / 1_000_000));
                }
            }
        }
        if lagging.is_empty() || Instant::now() >= deadline {
            if !lagging.is_empty() {
                tracing::warn!(lagging = %lagging.join("; "), "check.max_lag exceeded for check.max_wait; checking anyway");
            }
            return;
        }
        tracing::info!(lagging = %lagging.join("; "), "check paused: apply lag above check.max_lag");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
