//! The collector: deletes tombstones and row origins older than `conflicts.tombstone_horizon`
//! (a change older than that is not expected to arrive any more). Runs beside one apply role,
//! in small batches so it never holds many locks.

use std::time::Duration;

use mysql_async::Opts;
use mysql_async::prelude::Queryable;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::metrics::CollectedLabels;
use crate::runtime::AbortOnDrop;

const EVERY: Duration = Duration::from_secs(60);
const BATCH: u64 = 5000;

/// Collects in the background until dropped.
pub struct Collector {
    _task: AbortOnDrop,
}

impl Collector {
    pub fn start(opts: Opts, horizon: Duration, counter: Family<CollectedLabels, Counter>) -> Self {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = collect(&opts, horizon, &counter).await {
                    tracing::warn!(error = %e, "collecting old tombstones failed; trying again in a minute");
                }
            }
        });
        Self { _task: AbortOnDrop(task) }
    }
}

/// One pass: delete what is older than `horizon` from both tables; returns rows deleted.
pub async fn collect(
    opts: &Opts,
    horizon: Duration,
    counter: &Family<CollectedLabels, Counter>,
) -> Result<u64, mysql_async::Error> {
    let mut conn = mysql_async::Conn::new(opts.clone()).await?;
    let seconds = horizon.as_secs_f64();
    let mut total = 0;
    for (table, column) in [("tombstones", "created_at"), ("row_origins", "written_at")] {
        loop {
            conn.exec_drop(
                format!(
                    "DELETE FROM ferry.{table} WHERE {column} < NOW(6) - INTERVAL ? SECOND LIMIT {BATCH}"
                ),
                (seconds,),
            )
            .await?;
            let deleted = conn.affected_rows();
            counter.get_or_create(&CollectedLabels { table }).inc_by(deleted);
            total += deleted;
            if deleted < BATCH {
                break;
            }
        }
    }
    conn.disconnect().await?;
    Ok(total)
}
