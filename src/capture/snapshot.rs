//! Initial sync, capture's side: DBLog's watermark algorithm (docs/architecture.md, "Initial
//! sync"). A driver reads each table requested in `ferry.snapshot_progress` in primary-key
//! chunks, each between a low and a high watermark it writes to `ferry.snapshot_watermark`
//! (local transactions in the binlog). The pipeline, reading the binlog, notes every key of
//! that table any transaction changed between the two; at the high watermark it drops those
//! keys from the chunk and publishes the rest as `snapshot` rows inside the high watermark's
//! own transaction. A row in the chunk that nothing changed in the window holds, at the high
//! watermark, the state it held when read: placed there in the stream, it is consistent with
//! every change before and after it. The driver records a chunk as done only once the
//! pipeline's acknowledged position covers that transaction; a chunk lost to a restart is
//! read again (its rows again are harmless: equal stamps are kept).

use std::collections::HashSet;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Params, Value as MyValue};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::pipeline::Progress;
use crate::catalog::{Definition, beyond};
use crate::check::Key;
use crate::check::progress::{decode, encode};
use crate::model::{Gtid, Op, Row, RowChange};

/// Rows per chunk.
const CHUNK_ROWS: u64 = 2_000;
/// How long the driver waits when there is nothing to do, or after a failed chunk.
const IDLE: Duration = Duration::from_secs(1);

/// One chunk read between its watermarks.
#[derive(Debug)]
pub struct Chunk {
    /// The driver's run (a restarted capture replays an earlier run's watermarks).
    pub run: u64,
    pub number: u64,
    /// `db.table`
    pub table: String,
    pub rows: Vec<RowChange>,
    /// Told when the rows went out at the high watermark; dropped unanswered when they did
    /// not (the driver then reads the chunk again).
    pub published: tokio::sync::oneshot::Sender<()>,
}

/// A watermark row's meaning.
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    Low { run: u64, number: u64, table: String },
    High { run: u64, number: u64 },
}

/// The mark a `ferry.snapshot_watermark` row carries (`low|run|n|db.table`, `high|run|n`).
pub fn mark(row: &RowChange) -> Option<Mark> {
    let text = match row.after.as_ref()?.get("mark")? {
        crate::model::Value::Text { v } => v.clone(),
        crate::model::Value::Bytes { v } => String::from_utf8_lossy(v).into_owned(),
        _ => return None,
    };
    let mut parts = text.splitn(4, '|');
    match (parts.next()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()) {
        ("low", run, number, Some(table)) => Some(Mark::Low { run, number, table: table.to_string() }),
        ("high", run, number, None) => Some(Mark::High { run, number }),
        _ => None,
    }
}

/// The pipeline's view: the window open now, and the chunks the driver hands over.
pub struct Windows {
    chunks: Option<mpsc::Receiver<Chunk>>,
    open: Option<Window>,
}

struct Window {
    run: u64,
    number: u64,
    table: String,
    changed: HashSet<String>,
}

impl Windows {
    /// No initial sync (`ferry tail`, benchmarks).
    pub fn none() -> Self {
        Self { chunks: None, open: None }
    }

    pub fn new(chunks: mpsc::Receiver<Chunk>) -> Self {
        Self { chunks: Some(chunks), open: None }
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// A low watermark: note the table's changed keys from here.
    pub fn open(&mut self, run: u64, number: u64, table: String) {
        self.open = Some(Window { run, number, table, changed: HashSet::new() });
    }

    /// A row some transaction changed: noted when the window's table.
    pub fn note(&mut self, row: &RowChange) {
        let Some(w) = self.open.as_mut() else { return };
        if format!("{}.{}", row.db, row.table) != w.table {
            return;
        }
        for image in [row.before.as_ref(), row.after.as_ref()].into_iter().flatten() {
            w.changed.insert(crate::conflict::key_text(row, image));
        }
    }

    /// The high watermark of chunk `number` of `run`: the chunk's rows that nothing changed in
    /// the window, and the chunk told they went out. Empty when the chunk is not this
    /// pipeline's (an earlier run's watermark, replayed after a restart) or its window is not
    /// the one open: the driver, not told, reads the chunk again.
    pub fn close(&mut self, run: u64, number: u64) -> Vec<RowChange> {
        let window = self.open.take().filter(|w| w.run == run && w.number == number);
        let Some(rx) = self.chunks.as_mut() else { return Vec::new() };
        let Some(window) = window else { return Vec::new() };
        // The driver hands a chunk over before it writes its high watermark; earlier chunks
        // still waiting were not published (their drivers, not told, read them again).
        let mut chunk = None;
        while let Ok(c) = rx.try_recv() {
            if c.run == run && c.number == number {
                chunk = Some(c);
                break;
            }
        }
        let Some(chunk) = chunk.filter(|c| c.table == window.table) else { return Vec::new() };
        let _ = chunk.published.send(());
        chunk
            .rows
            .into_iter()
            .filter(|r| {
                r.after.as_ref().is_some_and(|a| !window.changed.contains(&crate::conflict::key_text(r, a)))
            })
            .collect()
    }
}

/// The driver: chunk by chunk through the requested tables, until `stop`.
pub async fn drive(
    opts: Opts,
    chunks: mpsc::Sender<Chunk>,
    mut acked: watch::Receiver<Progress>,
    stop: CancellationToken,
    metrics: super::metrics::CaptureMetrics,
) {
    let mut conn: Option<Conn> = None;
    let mut number = 0u64;
    // This driver's run: a restarted pipeline replays earlier runs' watermarks first.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut busy = false;
    loop {
        if !busy {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(IDLE) => {}
            }
        }
        if conn.is_none() {
            conn = match Conn::new(opts.clone()).await {
                // TIMESTAMP columns read as UTC, as the envelope writes them.
                Ok(mut c) => c.query_drop("SET SESSION time_zone = '+00:00'").await.ok().map(|()| c),
                Err(_) => None,
            };
        }
        let Some(c) = conn.as_mut() else {
            busy = false;
            continue;
        };
        number += 1;
        busy = match step(c, &chunks, &mut acked, run, number, &stop, &metrics).await {
            Ok(worked) => worked,
            Err(e) => {
                tracing::warn!(error = %e, "initial sync: a chunk failed; reading it again");
                conn = None;
                false
            }
        };
    }
}

/// One chunk of the first unfinished table; whether there was one.
async fn step(
    conn: &mut Conn,
    chunks: &mpsc::Sender<Chunk>,
    acked: &mut watch::Receiver<Progress>,
    run: u64,
    number: u64,
    stop: &CancellationToken,
    metrics: &super::metrics::CaptureMetrics,
) -> Result<bool, String> {
    let sql = |what: &'static str| move |e: mysql_async::Error| format!("{what}: {e}");
    let todo: Option<(String, Option<String>, String)> = conn
        .query_first(
            "SELECT table_name, last_key, CAST(requested_at AS CHAR) FROM ferry.snapshot_progress WHERE done = 0 \
             ORDER BY table_name LIMIT 1",
        )
        .await
        .map_err(sql("reading ferry.snapshot_progress"))?;
    let Some((table, last, requested)) = todo else {
        metrics.sync_active.set(0);
        return Ok(false);
    };
    metrics.sync_active.set(1);
    let request = Request { table: &table, requested: &requested };
    let (db, name) = table.split_once('.').ok_or("not db.table")?;
    let Some(def) = Definition::read(conn, db, name).await.map_err(sql("reading the table"))? else {
        tracing::warn!(%table, "initial sync: the table does not exist here; left out");
        return finish(conn, &request, None, 0, true).await;
    };
    if def.key.is_empty() {
        tracing::warn!(%table, "initial sync: the table has no primary key; left out");
        return finish(conn, &request, None, 0, true).await;
    }
    let after = match last.as_deref() {
        None => None,
        Some(l) => Some(serde_json::from_str(l).ok().and_then(|j| decode(&j)).ok_or_else(|| {
            format!("{table}: the recorded place {l} is not a key: cancel and start the sync again")
        })?),
    };
    let quoted = format!("{}.{}", crate::apply::sql::quote(db), crate::apply::sql::quote(name));
    conn.exec_drop(
        "REPLACE INTO ferry.snapshot_watermark (id, mark) VALUES (1, ?)",
        (format!("low|{run}|{number}|{table}"),),
    )
    .await
    .map_err(sql("writing the low watermark"))?;
    let (cond, mut params) = match &after {
        Some(k) => beyond(&def.key, &k.0, ">"),
        None => ("1 = 1".to_string(), Vec::new()),
    };
    params.push(MyValue::UInt(CHUNK_ROWS));
    let read: Vec<mysql_async::Row> = conn
        .exec(
            format!(
                "SELECT {k}, {t} FROM {quoted} WHERE {cond} ORDER BY {k} LIMIT ?",
                k = def.key_list(),
                t = def.text_list()
            ),
            Params::Positional(params),
        )
        .await
        .map_err(sql("reading a chunk"))?;
    let mut rows = Vec::with_capacity(read.len());
    let mut last_key = None;
    for row in read {
        let mut values = row.unwrap();
        let key = Key(values.drain(..def.key.len()).collect());
        let texts: Vec<Option<String>> = values.into_iter().map(crate::catalog::text_of).collect();
        rows.push(snapshot_row(&def, db, name, &texts)?);
        last_key = Some(key);
    }
    let count = rows.len() as u64;
    let (published, told) = tokio::sync::oneshot::channel();
    chunks
        .send(Chunk { run, number, table: table.clone(), rows, published })
        .await
        .map_err(|_| "the pipeline stopped")?;
    conn.exec_drop(
        "REPLACE INTO ferry.snapshot_watermark (id, mark) VALUES (1, ?)",
        (format!("high|{run}|{number}"),),
    )
    .await
    .map_err(sql("writing the high watermark"))?;
    let high: Option<String> =
        conn.query_first("SELECT @@last_gtid").await.map_err(sql("reading the high watermark's GTID"))?;
    let high: Gtid =
        high.unwrap_or_default().parse().map_err(|e| format!("the high watermark's GTID: {e}"))?;
    // Recorded only once the pipeline published the chunk at its high watermark and the
    // broker acknowledged that transaction. A restarted pipeline stops this driver too.
    let published = tokio::select! {
        _ = stop.cancelled() => return Ok(false),
        told = told => told.is_ok(),
    };
    if !published {
        return Err(format!("chunk {number} of {table} was not published (a restart in between)"));
    }
    loop {
        if acked.borrow().position.includes_gtid(&high) {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            changed = acked.changed() => if changed.is_err() { return Ok(false) },
        }
    }
    let labels = super::metrics::TableLabels { table: table.clone() };
    metrics.sync_rows.get_or_create(&labels).inc_by(count);
    metrics.sync_chunks.get_or_create(&labels).inc();
    let key = last_key.or(after);
    let done = finish(conn, &request, key.as_ref(), count, count < CHUNK_ROWS).await?;
    // Rows left: the server's estimate of the table's size less what this request published.
    let left: Option<(Option<u64>, u64)> = conn
        .exec_first(
            "SELECT t.TABLE_ROWS, p.rows_done FROM ferry.snapshot_progress p JOIN information_schema.TABLES t \
             ON t.TABLE_SCHEMA = ? AND t.TABLE_NAME = ? WHERE p.table_name = ?",
            (db, name, &table),
        )
        .await
        .unwrap_or(None);
    let remaining = if count < CHUNK_ROWS {
        0
    } else {
        left.map_or(0, |(estimate, published)| estimate.unwrap_or(0).saturating_sub(published))
    };
    metrics.sync_remaining.get_or_create(&labels).set(i64::try_from(remaining).unwrap_or(i64::MAX));
    Ok(done)
}

/// The table a chunk belongs to, and when it was requested (a new request resets the row).
struct Request<'a> {
    table: &'a str,
    requested: &'a str,
}

async fn finish(
    conn: &mut Conn,
    request: &Request<'_>,
    key: Option<&Key>,
    rows: u64,
    done: bool,
) -> Result<bool, String> {
    // Only the request this chunk belongs to: a `sync start` made meanwhile starts over.
    conn.exec_drop(
        "UPDATE ferry.snapshot_progress SET last_key = ?, rows_done = rows_done + ?, chunks = chunks + 1, \
         done = ? WHERE table_name = ? AND CAST(requested_at AS CHAR) = ?",
        (key.map(|k| encode(k).to_string()), rows, done as u8, request.table, request.requested),
    )
    .await
    .map_err(|e| format!("recording the initial sync's progress: {e}"))?;
    if done {
        tracing::info!(table = %request.table, "initial sync: table done");
    }
    Ok(true)
}

/// A row read as text (`Definition::text_list`, name order) as a `snapshot` change with its
/// image in table order, typed as the wire envelope types it.
fn snapshot_row(
    def: &Definition,
    db: &str,
    table: &str,
    texts: &[Option<String>],
) -> Result<RowChange, String> {
    let mut columns: Vec<(u32, String, crate::model::Value)> = Vec::with_capacity(texts.len());
    for (c, text) in def.columns.iter().zip(texts) {
        let value = serde_json::from_value(c.envelope(text.as_deref()))
            .map_err(|e| format!("{db}.{table}.{}: {e}", c.name))?;
        columns.push((c.ordinal, c.name.clone(), value));
    }
    columns.sort_by_key(|(ordinal, _, _)| *ordinal);
    let image = Row(columns.into_iter().map(|(_, n, v)| (n, v)).collect());
    let key = Row(image.0.iter().filter(|(n, _)| def.key.contains(n)).cloned().collect());
    Ok(RowChange {
        db: db.to_string(),
        table: table.to_string(),
        op: Op::Snapshot,
        key,
        before: None,
        after: Some(image),
        generated: Vec::new(),
    })
}
