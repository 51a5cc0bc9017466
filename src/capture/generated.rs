//! Which columns are generated (so apply never writes them). The binlog does not say; the
//! primary's `information_schema` does. Looked up once per table and forgotten whenever a
//! statement (DDL) passes through the binlog, since that may have changed them.

use std::collections::HashMap;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use super::pipeline::CaptureError;
use crate::model::RowChange;

pub struct GeneratedColumns {
    opts: Opts,
    conn: Option<Conn>,
    /// db → table → generated columns; looked up by `&str`, so a hit allocates nothing (it
    /// runs for every row captured).
    cache: HashMap<String, HashMap<String, Arc<[String]>>>,
}

impl GeneratedColumns {
    pub fn new(opts: Opts) -> Self {
        Self { opts, conn: None, cache: HashMap::new() }
    }

    /// Forget everything (a statement may have altered a table).
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }

    /// Fill `row.generated` with the generated columns present in its images.
    pub async fn mark(&mut self, row: &mut RowChange) -> Result<(), CaptureError> {
        let generated = self.of(&row.db, &row.table).await?;
        if generated.is_empty() {
            return Ok(());
        }
        let image = row.after.as_ref().or(row.before.as_ref());
        row.generated =
            generated.iter().filter(|c| image.is_some_and(|i| i.get(c).is_some())).cloned().collect();
        Ok(())
    }

    async fn of(&mut self, db: &str, table: &str) -> Result<Arc<[String]>, CaptureError> {
        if let Some(found) = self.cache.get(db).and_then(|tables| tables.get(table)) {
            return Ok(found.clone());
        }
        let err = |e: mysql_async::Error| {
            CaptureError::Checkpoint(format!("reading generated columns of {db}.{table}: {e}"))
        };
        if self.conn.is_none() {
            self.conn = Some(Conn::new(self.opts.clone()).await.map_err(err)?);
        }
        let conn =
            self.conn.as_mut().ok_or_else(|| CaptureError::Checkpoint("no metadata connection".into()))?;
        let columns: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND IS_GENERATED = 'ALWAYS' ORDER BY ORDINAL_POSITION",
                (db, table),
            )
            .await
            .map_err(|e| {
                self.conn = None;
                err(e)
            })?;
        let columns: Arc<[String]> = columns.into();
        self.cache.entry(db.to_string()).or_default().insert(table.to_string(), columns.clone());
        Ok(columns)
    }
}
