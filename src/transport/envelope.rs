//! The wire envelope (version 1), documented in `docs/wire-format.md`: one JSON object per
//! Kafka record, readable by any Kafka tool.
//!
//! A transaction becomes one or more records: each carries the origin identity, the record
//! index and the transaction's rows that fit under the size limit; the last one has
//! `"last": true` (and may hold no rows). [`RecordBuilder`] serializes each row as it arrives,
//! so memory per transaction is bounded by one record, whatever the transaction's size.

use serde::{Deserialize, Serialize};

use crate::capture::txn::TxnHeader;
use crate::model::{Gtid, RowChange};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub region: String,
    pub server_id: u32,
    pub gtid: Gtid,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub origin: Origin,
    /// Commit time at the origin, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// Transaction sequence in the origin's order (the GTID sequence number).
    pub seq: u64,
    /// The origin's previous published transaction (absent when capture did not know it: the
    /// first transaction ever, or a checkpoint an older ferry wrote). A reader that applied a
    /// different previous transaction has missed some: a gap, never skipped silently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Gtid>,
    /// Index of this record within its transaction, from 0.
    pub record: u32,
    pub rows: Vec<RowChange>,
    /// True on the transaction's final record.
    pub last: bool,
}

impl Envelope {
    /// Parse a record; any version other than [`VERSION`] is an error, never guessed at.
    pub fn parse(payload: &[u8]) -> Result<Self, EnvelopeError> {
        #[derive(Deserialize)]
        struct Probe {
            v: u32,
        }
        let probe: Probe =
            serde_json::from_slice(payload).map_err(|e| EnvelopeError::Invalid(e.to_string()))?;
        if probe.v != VERSION {
            return Err(EnvelopeError::Version(probe.v));
        }
        serde_json::from_slice(payload).map_err(|e| EnvelopeError::Invalid(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a valid envelope: {0}")]
    Invalid(String),
    #[error("unknown envelope version {0} (this ferry reads version {VERSION})")]
    Version(u32),
    #[error("cannot encode a row: {0}")]
    Encode(String),
}

/// An encoded record, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The transaction's GTID: the Kafka key.
    pub key: String,
    pub payload: Vec<u8>,
    pub gtid: Gtid,
    pub index: u32,
    pub rows: usize,
    pub last: bool,
}

/// Builds the records of one transaction at a time.
#[derive(Debug)]
pub struct RecordBuilder {
    region: String,
    max_bytes: usize,
    current: Option<(TxnHeader, u32)>,
    rows: Vec<u8>,
    count: usize,
    /// The last transaction finished (the `prev` of the next one).
    published: Option<Gtid>,
}

/// Bytes of a record besides its rows (origin, fields, punctuation), with room to spare.
const ENVELOPE_OVERHEAD: usize = 256;

impl RecordBuilder {
    /// `max_bytes` is the target size of a record; a single row larger than that still goes
    /// out, alone in its record.
    pub fn new(region: &str, max_bytes: usize) -> Self {
        Self {
            region: region.to_string(),
            max_bytes,
            current: None,
            rows: Vec::new(),
            count: 0,
            published: None,
        }
    }

    /// Name `published` as the predecessor of the first transaction built.
    pub fn after(mut self, published: Option<Gtid>) -> Self {
        self.published = published;
        self
    }

    /// Add a row of the transaction `header`. Returns a full record to send when the row did
    /// not fit in the current one.
    pub fn push(&mut self, header: &TxnHeader, row: &RowChange) -> Result<Option<Record>, EnvelopeError> {
        let encoded = serde_json::to_vec(row).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
        let (open, index) = match self.current.take() {
            Some((h, _)) if h.gtid != header.gtid => {
                let message = format!("rows of {} before {} finished", header.gtid, h.gtid);
                self.current = Some((h, 0));
                return Err(EnvelopeError::Encode(message));
            }
            Some(current) => current,
            None => (header.clone(), 0),
        };
        let full = self.count > 0 && self.rows.len() + encoded.len() + ENVELOPE_OVERHEAD > self.max_bytes;
        let (record, index) =
            if full { (Some(self.encode(&open, index, false)), index + 1) } else { (None, index) };
        self.current = Some((open, index));
        if self.count > 0 {
            self.rows.push(b',');
        }
        self.rows.extend_from_slice(&encoded);
        self.count += 1;
        Ok(record)
    }

    /// True when the open transaction has rows buffered or already sent records.
    pub fn has_rows_or_records(&self) -> bool {
        self.count > 0 || self.current.as_ref().is_some_and(|(_, index)| *index > 0)
    }

    /// Forget the open transaction (all its rows were filtered out).
    pub fn discard(&mut self) {
        self.rows.clear();
        self.count = 0;
        self.current = None;
    }

    /// The transaction's final record (with whatever rows are left, possibly none).
    pub fn finish(&mut self, header: &TxnHeader) -> Record {
        let (open, index) = self.current.take().unwrap_or_else(|| (header.clone(), 0));
        let record = self.encode(&open, index, true);
        self.published = Some(open.gtid);
        record
    }

    /// Encode the buffered rows as record `index` of `header`'s transaction, and empty the buffer.
    fn encode(&mut self, header: &TxnHeader, index: u32, last: bool) -> Record {
        let seq = match &header.gtid {
            Gtid::MariaDb(g) => g.seq,
            Gtid::MySql { gno, .. } => *gno,
        };
        let region = serde_json::to_string(&self.region).unwrap_or_else(|_| "\"\"".into());
        let prev = self.published.as_ref().map(|g| format!("\"prev\":\"{g}\",")).unwrap_or_default();
        let mut payload = format!(
            "{{\"v\":{VERSION},\"origin\":{{\"region\":{region},\"server_id\":{},\"gtid\":\"{}\"}},\
             \"commit_time_us\":{},\"seq\":{seq},{prev}\"record\":{index},\"rows\":[",
            header.server_id, header.gtid, header.commit_time_us
        )
        .into_bytes();
        payload.extend_from_slice(&self.rows);
        payload.extend_from_slice(if last { b"],\"last\":true}" } else { b"],\"last\":false}" });
        let record = Record {
            key: header.gtid.to_string(),
            payload,
            gtid: header.gtid.clone(),
            index,
            rows: self.count,
            last,
        };
        self.rows.clear();
        self.count = 0;
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, Row, Value};

    fn header(seq: u64) -> TxnHeader {
        TxnHeader {
            gtid: Gtid::MariaDb(crate::model::MariaGtid { domain: 1, server_id: 101, seq }),
            server_id: 101,
            commit_time_us: 1_795_000_000_000_000,
        }
    }

    fn row(i: i64, filler: usize) -> RowChange {
        RowChange {
            db: "psi".into(),
            table: "stock".into(),
            op: Op::Update,
            key: Row(vec![("id".into(), Value::Int { v: i })]),
            before: Some(Row(vec![
                ("id".into(), Value::Int { v: i }),
                ("note".into(), Value::Text { v: "a".repeat(filler) }),
            ])),
            after: Some(Row(vec![
                ("id".into(), Value::Int { v: i }),
                ("note".into(), Value::Text { v: "b".repeat(filler) }),
            ])),
            generated: Vec::new(),
        }
    }

    #[test]
    fn a_large_transaction_splits_into_size_bounded_records_that_reassemble_exactly() {
        let mut b = RecordBuilder::new("east", 4096);
        let rows: Vec<RowChange> = (0..100).map(|i| row(i, 100)).collect();
        let mut records = Vec::new();
        for r in &rows {
            records.extend(b.push(&header(7), r).unwrap());
        }
        records.push(b.finish(&header(7)));
        assert!(records.len() > 5, "expected several records, got {}", records.len());
        let mut seen = Vec::new();
        for (i, rec) in records.iter().enumerate() {
            assert!(rec.payload.len() <= 4096, "record {i} is {} bytes", rec.payload.len());
            let env = Envelope::parse(&rec.payload).unwrap();
            assert_eq!(env.record as usize, i);
            assert_eq!(env.last, i == records.len() - 1);
            assert_eq!(
                env.origin,
                Origin { region: "east".into(), server_id: 101, gtid: "1-101-7".parse().unwrap() }
            );
            assert_eq!(env.seq, 7);
            seen.extend(env.rows);
        }
        assert_eq!(seen, rows, "rows reassemble in order");
    }

    #[test]
    fn an_oversized_row_goes_alone_and_the_next_transaction_starts_at_record_zero() {
        let mut b = RecordBuilder::new("east", 1024);
        assert!(b.push(&header(1), &row(1, 10)).unwrap().is_none());
        let full = b.push(&header(1), &row(2, 5000)).unwrap().expect("the small row is flushed first");
        assert_eq!(full.rows, 1);
        let last = b.finish(&header(1));
        assert_eq!((last.rows, last.index, last.last), (1, 1, true));
        assert!(b.push(&header(2), &row(3, 10)).unwrap().is_none());
        let next = b.finish(&header(2));
        assert_eq!((next.index, next.key.as_str()), (0, "1-101-2"));
    }

    #[test]
    fn every_record_names_the_previous_published_transaction() {
        let prev = |r: &Record| Envelope::parse(&r.payload).unwrap().prev.map(|g| g.to_string());
        let mut b = RecordBuilder::new("east", 1024);
        assert_eq!(prev(&b.finish(&header(1))), None, "nothing published before");
        let mut b = RecordBuilder::new("east", 1024).after(Some("1-101-4".parse().unwrap()));
        let first = b.push(&header(5), &row(1, 10)).unwrap();
        assert!(first.is_none());
        let full = b.push(&header(5), &row(2, 5000)).unwrap().expect("flushed");
        assert_eq!(prev(&full).as_deref(), Some("1-101-4"));
        assert_eq!(prev(&b.finish(&header(5))).as_deref(), Some("1-101-4"));
        assert_eq!(
            prev(&b.finish(&header(9))).as_deref(),
            Some("1-101-5"),
            "the next names the last finished"
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        assert_eq!(Envelope::parse(br#"{"v":2,"anything":true}"#), Err(EnvelopeError::Version(2)));
        assert!(matches!(Envelope::parse(b"not json"), Err(EnvelopeError::Invalid(_))));
        assert!(matches!(Envelope::parse(br#"{"v":1}"#), Err(EnvelopeError::Invalid(_))));
    }
}
