//! `ferry tail`: the capture pipeline with stdout as its sink (the operator's `mysqlbinlog -v`).

use std::sync::Arc;

use mysql_async::Conn;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::checkpoint;
use super::metrics::CaptureMetrics;
use super::pipeline::{self, CaptureError, PipelineSettings, Progress};
use crate::config::Config;
use crate::model::OriginFilter;
use crate::model::{Position, RowChange};
use crate::transport::kafka::StdoutSink;

/// A server id for tail's binlog connection when `capture` is not configured.
const TAIL_SERVER_ID: u32 = 4_000_000_001;

pub async fn run(
    config: &Config,
    from: Option<Position>,
    tables: Vec<String>,
    all_origins: bool,
) -> Result<(), CaptureError> {
    let local = config.local().ok_or_else(|| CaptureError::Preflight("no local region".into()))?;
    let opts = local.mysql.primary_opts();
    let start = match from {
        Some(p) => p,
        None => {
            let mut conn =
                Conn::new(opts.clone()).await.map_err(|e| CaptureError::Checkpoint(e.to_string()))?;
            checkpoint::current_position(&mut conn, local.mysql.flavor).await?
        }
    };
    // Tail runs beside capture: it needs a reader id of its own.
    let server_id =
        config.capture.as_ref().map(|c| c.server_id.wrapping_add(500_000)).unwrap_or(TAIL_SERVER_ID);
    let filter: pipeline::RowFilter = if tables.is_empty() {
        None
    } else {
        Some(Arc::new(move |r: &RowChange| tables.iter().any(|t| *t == r.qualified_table())))
    };
    let settings = PipelineSettings {
        region: config.region.clone(),
        flavor: local.mysql.flavor,
        origin: if all_origins { OriginFilter::All } else { local.mysql.origin_filter() },
        reader_server_id: server_id,
        heartbeat: std::time::Duration::from_secs(1),
        max_record_bytes: 1024 * 1024,
        max_inflight_bytes: 4 * 1024 * 1024,
        filter,
        tombstones: None,
    };
    let (progress, _watch) = watch::channel(Progress::default());
    let stop = CancellationToken::new();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        crate::runtime::shutdown_signal().await;
        signal_stop.cancel();
    });
    let metrics = CaptureMetrics::default();
    pipeline::run(
        opts,
        &settings,
        start,
        &mut StdoutSink,
        &progress,
        &metrics,
        &stop,
        &mut super::snapshot::Windows::none(),
    )
    .await
}
