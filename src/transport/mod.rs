//! Transport: the versioned wire envelope and the Kafka side of the data path. Topic naming:
//! one topic per origin region, `ferry.<region>.changes`, and `ferry.<region>.dlq` for records
//! that cannot be applied.

pub mod envelope;
pub mod kafka;
pub mod reach;

/// The topic a region's changes are published to.
pub fn changes_topic(region: &str) -> String {
    format!("ferry.{region}.changes")
}

/// The dead-letter topic of a region.
pub fn dlq_topic(region: &str) -> String {
    format!("ferry.{region}.dlq")
}
