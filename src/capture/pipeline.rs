//! The capture pipeline: binlog source → transactions → records → sink, with acknowledged
//! progress.
//!
//! Contract: [`Progress`] only ever holds a position whose every local transaction was fully
//! acknowledged by the sink, in binlog order. Restarting from it may repeat records, never skip
//! one. Unacknowledged bytes are bounded by `max_inflight_bytes` (reading pauses above it), and a
//! transaction's rows stream through in records of `max_record_bytes`, so memory stays bounded
//! whatever the transaction size.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::Opts;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use super::error::CaptureError;
use super::generated::GeneratedColumns;
use super::metrics::{CaptureMetrics, KindLabels};
use super::snapshot::{Mark as Watermark, Windows};
use super::source::BinlogSource;
use super::tombstones::LocalTombstones;
use super::txn::{Assembler, FERRY_SCHEMA, Outcome, Step, WATERMARK_TABLE};
use crate::config::Flavor;
use crate::model::{Gtid, OriginFilter, Position, RowChange};
use crate::transport::envelope::{Record, RecordBuilder};
use crate::transport::kafka::{AckFuture, RecordSink, SinkError};

/// Records waiting for their ack; the byte budget is the real bound, this only caps entries.
const ACK_QUEUE: usize = 4096;
/// How long shutdown waits for outstanding acks.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Acknowledged progress, watched by the checkpoint writer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Everything up to here is acknowledged.
    pub position: Position,
    /// Bumped when `position` advanced for a reason other than capture's own checkpoint write
    /// (so writing the checkpoint never causes another write).
    pub generation: u64,
    /// Origin commit time of the last acknowledged published transaction.
    pub last_commit_us: Option<i64>,
    /// The last acknowledged published transaction (stored with the checkpoint: the next
    /// record published after a restart names it as `prev`).
    pub published: Option<Gtid>,
}

/// Which rows to forward (`ferry tail --table`); `None` = all.
pub type RowFilter = Option<Arc<dyn Fn(&RowChange) -> bool + Send + Sync>>;

#[derive(Clone)]
pub struct PipelineSettings {
    pub region: String,
    pub flavor: Flavor,
    /// Which transactions are this region's own (the rest are skipped).
    pub origin: OriginFilter,
    pub reader_server_id: u32,
    pub heartbeat: Duration,
    pub max_record_bytes: usize,
    pub max_inflight_bytes: usize,
    pub filter: RowFilter,
    /// Record tombstones of local deletes of the tables these rules govern (`ferry run`).
    pub tombstones: Option<Arc<crate::conflict::Rules>>,
}

struct Mark {
    position: Position,
    counts: bool,
    /// The published transaction this mark ends, with its commit time.
    published: Option<(Gtid, i64)>,
}

struct Pending {
    ack: Option<AckFuture>,
    bytes: u64,
    _permit: Option<OwnedSemaphorePermit>,
    last_of_txn: bool,
    mark: Option<Mark>,
}

/// The name capture registers with on the primary (`SHOW SLAVE HOSTS`), so preflight can tell
/// its own stale registration (left by a killed process) from a real replica.
pub fn report_host(region: &str) -> String {
    format!("ferry-{region}")
}

/// Stream from `start` until `shutdown` or an error, publishing through `sink` and reporting
/// acknowledged progress on `progress`. On shutdown: stop reading, wait for outstanding acks.
#[allow(clippy::too_many_arguments)] // the pieces are all distinct
pub async fn run<S: RecordSink>(
    opts: Opts,
    settings: &PipelineSettings,
    start: Position,
    sink: &mut S,
    progress: &watch::Sender<Progress>,
    metrics: &CaptureMetrics,
    shutdown: &CancellationToken,
    windows: &mut Windows,
) -> Result<(), CaptureError> {
    let host = report_host(&settings.region);
    let mut source = BinlogSource::connect(
        opts.clone(),
        settings.flavor,
        settings.reader_server_id,
        &host,
        &start,
        settings.heartbeat,
    )
    .await?;
    metrics.connected.set(1);
    tracing::info!(position = %start, "capture streaming");
    let mut tombstones = settings.tombstones.clone().map(|rules| LocalTombstones::new(opts.clone(), rules));
    let mut generated = GeneratedColumns::new(opts);
    let mut local = Local { generated: &mut generated, tombstones: tombstones.as_mut(), windows };
    // The first transaction published names the last one published before (kept with the
    // checkpoint, and handed in as the starting progress).
    let published = progress.borrow().published.clone();
    let mut builder = RecordBuilder::new(&settings.region, settings.max_record_bytes).after(published);
    let result =
        stream(&mut source, &mut local, settings, start, &mut builder, sink, progress, metrics, shutdown)
            .await;
    metrics.connected.set(0);
    result
}

#[allow(clippy::too_many_arguments)] // one call site; the pieces are all distinct
async fn stream<S: RecordSink>(
    source: &mut BinlogSource,
    local: &mut Local<'_>,
    settings: &PipelineSettings,
    start: Position,
    builder: &mut RecordBuilder,
    sink: &mut S,
    progress: &watch::Sender<Progress>,
    metrics: &CaptureMetrics,
    shutdown: &CancellationToken,
) -> Result<(), CaptureError> {
    let mut assembler = Assembler::new(settings.origin.clone(), start);
    let budget = Arc::new(Semaphore::new(settings.max_inflight_bytes));
    let (ack_tx, ack_rx) = mpsc::channel::<Pending>(ACK_QUEUE);
    let mut acks = tokio::spawn(await_acks(ack_rx, progress.clone(), metrics.clone()));
    let mut out = Outbox { sink, acks: ack_tx, budget, max: settings.max_inflight_bytes };

    let result: Result<(), CaptureError> = loop {
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            acked = &mut acks => break Err(ack_task_ended(acked)),
            event = source.next() => event,
        };
        let event = match event {
            Ok(e) => e,
            Err(e) => break Err(e.into()),
        };
        metrics.events.inc();
        let steps = match assembler.feed(event) {
            Ok(s) => s,
            Err(e) => break Err(e.into()),
        };
        if let Err(e) = handle_steps(steps, settings, builder, &mut out, local, metrics).await {
            break Err(e);
        }
        assembler.track_foreign = local.windows.is_open();
    };
    // Stop reading; let outstanding acks land so the checkpoint covers them.
    drop(out);
    if acks.is_finished() {
        return result;
    }
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut acks).await {
        Ok(Ok(Ok(()))) => result,
        Ok(Ok(Err(e))) => result.and(Err(e.into())),
        Ok(Err(join)) => result.and(Err(CaptureError::Sink(SinkError::Delivery(join.to_string())))),
        Err(_) => {
            acks.abort();
            tracing::warn!(
                "acknowledgements still outstanding after {DRAIN_TIMEOUT:?}; they will be re-sent on restart"
            );
            result
        }
    }
}

fn ack_task_ended(res: Result<Result<(), SinkError>, tokio::task::JoinError>) -> CaptureError {
    match res {
        Ok(Ok(())) => CaptureError::Sink(SinkError::Delivery("acknowledgement task ended".into())),
        Ok(Err(e)) => CaptureError::Sink(e),
        Err(e) => CaptureError::Sink(SinkError::Delivery(e.to_string())),
    }
}

async fn handle_steps<S: RecordSink>(
    steps: Vec<Step>,
    settings: &PipelineSettings,
    builder: &mut RecordBuilder,
    out: &mut Outbox<'_, S>,
    local: &mut Local<'_>,
    metrics: &CaptureMetrics,
) -> Result<(), CaptureError> {
    for step in steps {
        match step {
            Step::Foreign { rows } => {
                for row in &rows {
                    local.windows.note(row);
                }
            }
            Step::Rows { header, rows } => {
                for mut row in rows.into_iter().filter(|r| settings.filter.as_ref().is_none_or(|f| f(r))) {
                    if row.db == FERRY_SCHEMA && row.table == WATERMARK_TABLE {
                        // An initial sync's watermark: never published itself; at a high
                        // watermark, the chunk's rows nothing changed since the low one go
                        // out in this transaction.
                        match super::snapshot::mark(&row) {
                            Some(Watermark::Low { run, number, table }) => {
                                local.windows.open(run, number, table)
                            }
                            Some(Watermark::High { run, number }) => {
                                for snapshot in local.windows.close(run, number) {
                                    if let Some(record) = builder.push(&header, &snapshot)? {
                                        out.send(record, None).await?;
                                    }
                                }
                            }
                            None => {}
                        }
                        continue;
                    }
                    local.windows.note(&row);
                    metrics.rows.inc();
                    local.generated.mark(&mut row).await?;
                    if let Some(t) = local.tombstones.as_deref_mut() {
                        t.note(&row, header.commit_time_us);
                    }
                    if let Some(record) = builder.push(&header, &row)? {
                        out.send(record, None).await?;
                    }
                }
            }
            Step::End { header, outcome, position, .. } => {
                let kind = match outcome {
                    Outcome::Forwarded => "forwarded",
                    Outcome::Empty => "empty",
                    Outcome::Checkpoint => "checkpoint",
                    Outcome::Foreign => "foreign",
                };
                metrics.transactions.get_or_create(&KindLabels { kind }).inc();
                let counts = outcome != Outcome::Checkpoint;
                if let Some(t) = local.tombstones.as_deref_mut() {
                    match outcome {
                        Outcome::Forwarded => t.flush().await?,
                        _ => t.discard(),
                    }
                }
                if outcome == Outcome::Forwarded && builder.has_rows_or_records() {
                    let mark = Mark {
                        position,
                        counts,
                        published: Some((header.gtid.clone(), header.commit_time_us)),
                    };
                    out.send(builder.finish(&header), Some(mark)).await?;
                } else {
                    builder.discard();
                    out.mark(Mark { position, counts, published: None }).await?;
                }
            }
            Step::Statement { header, schema, query } => {
                metrics.statements.inc();
                local.generated.invalidate();
                let shown: String = query.chars().take(300).collect();
                let gtid = header.map(|h| h.gtid.to_string()).unwrap_or_default();
                if ferrys_own(&schema, &query) {
                    // ferry setting up its own tables (every region does the same).
                    tracing::debug!(%gtid, statement = %shown, "ferry's own schema set-up");
                } else {
                    tracing::info!(
                        %gtid,
                        %schema,
                        statement = %shown,
                        "statement not replicated: run schema changes in every region"
                    );
                }
            }
        }
    }
    Ok(())
}

/// A statement that sets up ferry's own schema (`CREATE DATABASE IF NOT EXISTS ferry`,
/// `CREATE TABLE IF NOT EXISTS ferry.…`): nothing an operator must repeat elsewhere.
fn ferrys_own(schema: &str, query: &str) -> bool {
    let q = query.to_ascii_lowercase();
    let q: Vec<&str> = q.split_whitespace().collect();
    let names_ferry = |w: &&str| {
        let w = w.trim_matches('`');
        w == "ferry" || w.starts_with("ferry.") || w.starts_with("ferry`.")
    };
    let ddl = matches!(q.first(), Some(&"create" | &"alter" | &"drop"));
    ddl && (schema == super::txn::FERRY_SCHEMA || q.iter().take(7).any(names_ferry))
}

/// What capture reads from and writes to the local primary besides the binlog.
struct Local<'a> {
    generated: &'a mut GeneratedColumns,
    tombstones: Option<&'a mut LocalTombstones>,
    windows: &'a mut Windows,
}

struct Outbox<'a, S> {
    sink: &'a mut S,
    acks: mpsc::Sender<Pending>,
    budget: Arc<Semaphore>,
    max: usize,
}

impl<S: RecordSink> Outbox<'_, S> {
    async fn send(&mut self, record: Record, mark: Option<Mark>) -> Result<(), CaptureError> {
        let want = u32::try_from(record.payload.len().min(self.max)).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.budget)
            .acquire_many_owned(want)
            .await
            .map_err(|_| SinkError::Delivery("byte budget closed".into()))?;
        let ack = self.sink.send(&record).await?;
        let pending = Pending {
            ack: Some(ack),
            bytes: record.payload.len() as u64,
            _permit: Some(permit),
            last_of_txn: record.last,
            mark,
        };
        self.acks
            .send(pending)
            .await
            .map_err(|_| SinkError::Delivery("acknowledgement task stopped".into()))?;
        Ok(())
    }

    async fn mark(&mut self, mark: Mark) -> Result<(), CaptureError> {
        let pending = Pending { ack: None, bytes: 0, _permit: None, last_of_txn: false, mark: Some(mark) };
        self.acks
            .send(pending)
            .await
            .map_err(|_| SinkError::Delivery("acknowledgement task stopped".into()))?;
        Ok(())
    }
}

/// Await acks in send order; advance progress only past fully acknowledged transactions.
async fn await_acks(
    mut rx: mpsc::Receiver<Pending>,
    progress: watch::Sender<Progress>,
    metrics: CaptureMetrics,
) -> Result<(), SinkError> {
    while let Some(pending) = rx.recv().await {
        if let Some(ack) = pending.ack {
            ack.await?;
            metrics.published_records.inc();
            metrics.published_bytes.inc_by(pending.bytes);
            if pending.last_of_txn {
                metrics.published_transactions.inc();
            }
        }
        if let Some(mark) = pending.mark {
            progress.send_modify(|p| {
                p.position = mark.position;
                if mark.counts {
                    p.generation += 1;
                }
                if let Some((gtid, commit_us)) = mark.published {
                    p.last_commit_us = Some(commit_us);
                    p.published = Some(gtid);
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ferrys_own_schema_set_up_is_told_from_an_application_schema_change() {
        assert!(super::ferrys_own("", "CREATE DATABASE IF NOT EXISTS ferry CHARACTER SET utf8mb4"));
        assert!(super::ferrys_own("psi", "CREATE TABLE IF NOT EXISTS ferry.applied (origin VARCHAR(32))"));
        assert!(super::ferrys_own("ferry", "DROP TABLE tombstones"));
        assert!(!super::ferrys_own("psi", "ALTER TABLE psi.stock ADD COLUMN ferry_note INT"));
        assert!(!super::ferrys_own("ferry", "INSERT INTO x VALUES (1)"), "not DDL");
        assert!(!super::ferrys_own("psi", "CREATE TABLE ferryboats (id INT)"));
    }
}
