//! `ferry sync start|status|cancel`: an initial sync from another region, asked for from the
//! receiving region (its config). The request is a row per table in the origin's
//! `ferry.snapshot_progress`, which the origin's capture reads and works through
//! (`capture::snapshot`); status reads the same rows.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::config::Config;

/// A `ferry.snapshot_progress` row: table, chunks, rows, done, the table's row estimate,
/// seconds since the request.
type ProgressRow = (String, u64, u64, i8, Option<u64>, Option<f64>);

/// One table's progress on the origin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableProgress {
    pub table: String,
    pub chunks: u64,
    pub rows: u64,
    /// The origin's estimate of the table's rows (`information_schema.TABLES`).
    pub estimate: u64,
    pub done: bool,
    /// Seconds from the request to the last chunk recorded.
    pub seconds: f64,
}

impl TableProgress {
    /// Rows published per second so far.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.rows as f64 / self.seconds } else { 0.0 }
    }

    /// Seconds left at the rate so far (None: done, or no rate yet).
    pub fn eta(&self) -> Option<f64> {
        let rate = self.rate();
        (!self.done && rate > 0.0).then(|| self.estimate.saturating_sub(self.rows) as f64 / rate)
    }
}

async fn primary(config: &Config, region: &str) -> Result<Conn, String> {
    if !config.regions.contains_key(region) {
        return Err(format!("--from: no region {region} in the configuration"));
    }
    Ok(crate::check::connect(config, region, crate::config::ReadFrom::Primary).await?.conn)
}

/// User tables with a primary key on `conn`, in `apply.schemas` when set.
async fn user_tables(conn: &mut Conn, config: &Config) -> Result<Vec<String>, String> {
    let schemas = config.apply.as_ref().and_then(|a| a.schemas.clone());
    let tables = crate::catalog::user_tables(conn, schemas.as_deref(), true)
        .await
        .map_err(|e| format!("listing tables: {e}"))?;
    Ok(tables.into_iter().map(|(db, t)| format!("{db}.{t}")).collect())
}

/// Ask `from` to snapshot `tables` (every user table with a primary key apply governs when
/// empty) into its stream. Every table must exist here first. Returns the tables.
pub async fn start(config: &Config, from: &str, tables: &[String]) -> Result<Vec<String>, String> {
    if from == config.region {
        return Err(format!(
            "--from {from} is this configuration's own region: run it with the receiving region's"
        ));
    }
    let mut origin = primary(config, from).await?;
    let tables = if tables.is_empty() { user_tables(&mut origin, config).await? } else { tables.to_vec() };
    let mut here = primary(config, &config.region).await?;
    let present = user_tables(&mut here, config).await?;
    let missing: Vec<&String> = tables.iter().filter(|t| !present.contains(t)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "not in {} (create them first; their rows would have nowhere to go): {}",
            config.region,
            missing.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    for table in &tables {
        origin
            .exec_drop(
                "INSERT INTO ferry.snapshot_progress (table_name, requested_by) VALUES (?, ?) ON DUPLICATE KEY \
                 UPDATE last_key = NULL, done = 0, rows_done = 0, chunks = 0, requested_by = VALUES(requested_by), \
                 requested_at = CURRENT_TIMESTAMP(6)",
                (table, &config.region),
            )
            .await
            .map_err(|e| format!("{from}: requesting {table}: {e}"))?;
    }
    Ok(tables)
}

/// Each requested table's progress on `from`.
pub async fn status(config: &Config, from: &str) -> Result<Vec<TableProgress>, String> {
    let mut origin = primary(config, from).await?;
    let rows: Vec<ProgressRow> = origin
        .query(
            "SELECT p.table_name, p.chunks, p.rows_done, p.done, t.TABLE_ROWS, \
             UNIX_TIMESTAMP(p.updated_at) - UNIX_TIMESTAMP(p.requested_at) FROM ferry.snapshot_progress p \
             LEFT JOIN information_schema.TABLES t ON CONCAT(t.TABLE_SCHEMA, '.', t.TABLE_NAME) = p.table_name \
             ORDER BY p.table_name",
        )
        .await
        .map_err(|e| format!("{from}: reading ferry.snapshot_progress: {e}"))?;
    Ok(rows
        .into_iter()
        .map(|(table, chunks, rows, done, estimate, seconds)| TableProgress {
            table,
            chunks,
            rows,
            estimate: estimate.unwrap_or(0),
            done: done != 0,
            seconds: seconds.unwrap_or(0.0).max(0.0),
        })
        .collect())
}

/// Stop what is not done yet (what was applied stays).
pub async fn cancel(config: &Config, from: &str) -> Result<u64, String> {
    let mut origin = primary(config, from).await?;
    origin
        .exec_iter("DELETE FROM ferry.snapshot_progress WHERE done = 0", ())
        .await
        .map(|r| r.affected_rows())
        .map_err(|e| format!("{from}: {e}"))
}
