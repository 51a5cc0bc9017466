//! Tombstones of local deletes. Apply writes the tombstone of every delete it applies; a row
//! deleted here by the application gets its tombstone from capture, which sees the delete in
//! the binlog, so that an older update from another region arriving later cannot bring the
//! row back. Written when the deleting transaction's end is read, shortly after its commit:
//! an incoming update applied within that window finds no tombstone and re-creates the row
//! (see docs/architecture.md, "Conflicts").

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Value as MyValue};

use super::pipeline::CaptureError;
use crate::conflict::{Rules, key_text};
use crate::model::{Op, RowChange};

pub struct LocalTombstones {
    opts: Opts,
    conn: Option<Conn>,
    rules: Arc<Rules>,
    /// (table, key, version µs) of the current transaction's deletes.
    pending: Vec<(String, String, i64)>,
}

impl LocalTombstones {
    pub fn new(opts: Opts, rules: Arc<Rules>) -> Self {
        Self { opts, conn: None, rules, pending: Vec::new() }
    }

    /// Remember a delete of a table the conflict rules govern.
    pub fn note(&mut self, change: &RowChange, commit_us: i64) {
        if change.op != Op::Delete {
            return;
        }
        let (Some(policy), Some(before)) = (self.rules.governs(change), change.before.as_ref()) else {
            return;
        };
        let stamp = self.rules.stamp(&policy, change, &self.rules.region, commit_us);
        self.pending.push((change.qualified_table(), key_text(change, before), stamp.at_us));
    }

    /// The transaction was not forwarded: forget its deletes.
    pub fn discard(&mut self) {
        self.pending.clear();
    }

    /// Write the transaction's tombstones (an existing later one is kept).
    pub async fn flush(&mut self) -> Result<(), CaptureError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let err = |e: mysql_async::Error| CaptureError::Checkpoint(format!("writing local tombstones: {e}"));
        if self.conn.is_none() {
            self.conn = Some(Conn::new(self.opts.clone()).await.map_err(err)?);
        }
        let conn =
            self.conn.as_mut().ok_or_else(|| CaptureError::Checkpoint("no tombstone connection".into()))?;
        for chunk in self.pending.chunks(500) {
            let tuples = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
            let mut params: Vec<MyValue> = Vec::with_capacity(chunk.len() * 4);
            for (table, key, version) in chunk {
                params.extend([
                    MyValue::from(table.as_str()),
                    MyValue::Bytes(key.clone().into_bytes()),
                    MyValue::Int(*version),
                    MyValue::from(self.rules.region.as_str()),
                ]);
            }
            let sql = format!(
                "INSERT INTO ferry.tombstones (table_name, row_key, version_us, origin) VALUES {tuples} \
                 ON DUPLICATE KEY UPDATE origin = IF(VALUES(version_us) >= version_us, VALUES(origin), origin), \
                 version_us = GREATEST(version_us, VALUES(version_us))"
            );
            if let Err(e) = conn.exec_drop(sql, params).await {
                self.conn = None;
                return Err(err(e));
            }
        }
        self.pending.clear();
        Ok(())
    }
}
