//! The conflict rules as configured: which tables they govern, each table's version and delta
//! columns, the region order. Shared by apply (which decides) and capture (which records the
//! tombstones of local deletes).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::{Stamp, datetime_us};
use crate::config::{Config, TableRules};
use crate::model::{Op, Row, RowChange, Value};

#[derive(Debug, Clone)]
pub struct Rules {
    /// This region.
    pub region: String,
    ranks: HashMap<String, u32>,
    default_version: String,
    tables: BTreeMap<String, TableRules>,
    pub max_skew_us: i64,
    pub horizon: Duration,
}

/// How one table's changes are decided.
#[derive(Debug, Clone, Copy)]
pub struct TablePolicy<'a> {
    pub version_column: &'a str,
    pub delta_columns: &'a [String],
}

impl TablePolicy<'_> {
    pub fn is_delta(&self, column: &str) -> bool {
        self.delta_columns.iter().any(|c| c == column)
    }
}

impl Rules {
    pub fn from_config(config: &Config) -> Self {
        let ranks = config
            .tie_break_order()
            .into_iter()
            .enumerate()
            .map(|(rank, name)| (name.to_string(), rank as u32))
            .collect();
        Self {
            region: config.region.clone(),
            ranks,
            default_version: config.conflicts.version_column.clone(),
            tables: config.conflicts.tables.clone(),
            max_skew_us: i64::try_from(config.conflicts.max_clock_skew.as_micros()).unwrap_or(i64::MAX),
            horizon: config.conflicts.tombstone_horizon,
        }
    }

    /// A region's place in the tie-break order (an unknown region comes last).
    pub fn rank(&self, region: &str) -> u32 {
        self.ranks.get(region).copied().unwrap_or(u32::MAX)
    }

    /// Whether apply records which region wrote each row it applies (`ferry.row_origins`).
    /// The writer of a local row breaks ties between equal versions. With two regions it is
    /// never needed: a row this region did not write last was written by the other region,
    /// and that region's next change of it carries the same before-version, so it applies as
    /// causally later without comparing stamps; a different before-version means this region
    /// wrote in between. With three or more regions, two others can tie on one row.
    pub fn track_writers(&self) -> bool {
        self.ranks.len() >= 3
    }

    /// The region at `rank` (`?` for an unknown one).
    pub fn region_at(&self, rank: u32) -> &str {
        self.ranks.iter().find(|(_, r)| **r == rank).map(|(n, _)| n.as_str()).unwrap_or("?")
    }

    /// The policy deciding `change`, or None when it applies as it is: a table without a
    /// primary key (nothing to decide by; `ferry validate` asks for `single_writer`), and
    /// the tables `policy` leaves alone.
    pub fn governs(&self, change: &RowChange) -> Option<TablePolicy<'_>> {
        if change.key.is_empty() {
            return None;
        }
        self.policy(&change.db, &change.table)
    }

    /// None when the table's changes apply as they are: ferry's own tables (each region writes
    /// only its own rows) and tables declared `single_writer`.
    pub fn policy(&self, db: &str, table: &str) -> Option<TablePolicy<'_>> {
        if db == crate::schema::DATABASE {
            return None;
        }
        let rules = self.tables.get(&format!("{db}.{table}"));
        if rules.is_some_and(|r| r.single_writer.is_some()) {
            return None;
        }
        Some(TablePolicy {
            version_column: rules.and_then(|r| r.version_column.as_deref()).unwrap_or(&self.default_version),
            delta_columns: rules.map(|r| r.delta_columns.as_slice()).unwrap_or_default(),
        })
    }

    /// The stamp of a change from `origin` committed at `commit_us`: the version column of the
    /// after image (the before image for a delete), or the commit time when the table has none.
    pub fn stamp(&self, policy: &TablePolicy<'_>, change: &RowChange, origin: &str, commit_us: i64) -> Stamp {
        let image = match change.op {
            Op::Delete => change.before.as_ref(),
            _ => change.after.as_ref(),
        };
        let at_us = image.and_then(|i| version_of(i, policy.version_column)).unwrap_or(commit_us);
        Stamp { at_us, rank: self.rank(origin) }
    }
}

/// The version a row image holds in `column`, µs: DATETIME/TIMESTAMP/DATE read as UTC, or an
/// integer. None when the image has no such column or it is NULL.
pub fn version_of(image: &Row, column: &str) -> Option<i64> {
    match image.get(column)? {
        Value::Datetime { v, .. } | Value::Timestamp { v, .. } | Value::Date { v } => datetime_us(v),
        Value::Int { v } => Some(*v),
        Value::Uint { v } => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// A version read back from the server as text (`CAST(col AS CHAR)`).
pub fn version_text(text: &str) -> Option<i64> {
    if text.contains('-') && text.len() >= 10 && text.as_bytes()[4] == b'-' {
        datetime_us(text)
    } else {
        text.parse().ok()
    }
}

/// The primary-key columns of `image` (the columns of `change.key`), in table order.
pub fn key_row(change: &RowChange, image: &Row) -> Row {
    let cols: Vec<&str> = change.key.columns().collect();
    Row(image.0.iter().filter(|(c, _)| cols.contains(&c.as_str())).cloned().collect())
}

/// The key of a row as ferry stores it in `ferry.tombstones` and `ferry.row_origins`: the
/// primary-key columns of `image`, in the envelope's JSON form.
pub fn key_text(change: &RowChange, image: &Row) -> String {
    serde_json::to_string(&key_row(change, image)).unwrap_or_default()
}
