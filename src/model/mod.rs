//! The data model shared by capture, transport and apply: GTIDs and positions, typed column
//! values, row changes. Plain data, no I/O.

mod gtid;
mod gtid_set;
mod value;

pub use gtid::{Gtid, GtidParseError, MariaGtid, OriginFilter, Position};
pub use gtid_set::GtidSet;
pub use value::{Row, Value, base64, civil_from_unix, format_datetime, format_time};

use serde::{Deserialize, Serialize};

/// What a row change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    /// A row as an initial sync read it (its state at a consistent point of the origin's
    /// stream, not a change): inserted where absent, never over a newer row or a tombstone as
    /// late, never adding to delta columns (`docs/wire-format.md`).
    Snapshot,
}

/// One row changed by one statement of a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    pub db: String,
    pub table: String,
    pub op: Op,
    /// Primary-key columns and their values (from the after image, or the before image for a
    /// delete). Empty when the table has no primary key.
    pub key: Row,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Row>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Row>,
    /// Generated columns present in the images; apply never writes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<String>,
}

impl RowChange {
    /// `db.table`
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.db, self.table)
    }
}
