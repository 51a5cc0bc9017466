//! Capture: tail the local primary's binlog by GTID, decode each transaction into row changes,
//! keep only this region's own transactions, and hand them on (to Kafka, or to `ferry tail`).

pub mod checkpoint;
pub mod decode;
pub mod error;
pub mod generated;
pub mod metrics;
pub mod mysql8;
pub mod pipeline;
pub mod preflight;
pub mod role;
pub mod snapshot;
pub mod source;
pub mod tail;
pub mod tombstones;
pub mod txn;
