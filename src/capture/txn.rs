//! Transactions from binlog events, and the origin filter. Pure: no I/O.
//!
//! A transaction is `Begin` (MariaDB GTID event) … rows … `Commit` (XID or `COMMIT`), or a
//! standalone `Begin` + one statement (DDL). It is *local* when its GTID domain is this
//! region's; anything else was written by ferry's applier under another region's identity and
//! is skipped (that is the loop prevention). Rows of the `ferry` schema are dropped except
//! `ferry.heartbeat`. Rows are handed on as they arrive, so a transaction of any size streams
//! through without being held whole.

use crate::model::{Gtid, OriginFilter, Position, RowChange};

use super::source::SourceEvent;

/// Origin identity of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnHeader {
    pub gtid: Gtid,
    pub server_id: u32,
    pub commit_time_us: i64,
}

/// What the assembler tells its caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Rows of an open local transaction, to forward.
    Rows { header: TxnHeader, rows: Vec<RowChange> },
    /// A transaction ended; `position` is the replication position just after it.
    End { header: TxnHeader, outcome: Outcome, forwarded_rows: u64, position: Position },
    /// Rows of another region's transaction, handed on only while an initial sync's window is
    /// open (`Assembler::track_foreign`): never forwarded, only their keys are noted.
    Foreign { rows: Vec<RowChange> },
    /// A statement that is not replicated (DDL and the like), with the transaction it was in.
    Statement { header: Option<TxnHeader>, schema: String, query: String },
}

/// How a transaction was treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Local, with rows forwarded.
    Forwarded,
    /// Local but nothing to forward (only `ferry` rows, or a standalone statement).
    Empty,
    /// Local and it touched only `ferry.capture_checkpoint`: capture's own bookkeeping.
    Checkpoint,
    /// Another region's transaction, applied here by ferry: not forwarded.
    Foreign,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("{0} outside a transaction")]
    OutsideTransaction(&'static str),
    #[error("transaction {0} began before {1} ended")]
    Overlap(Gtid, Gtid),
}

pub const FERRY_SCHEMA: &str = "ferry";
pub const HEARTBEAT_TABLE: &str = "heartbeat";
pub const CHECKPOINT_TABLE: &str = "capture_checkpoint";
/// The initial sync's watermarks: handed on like the heartbeat, never published
/// (`capture::snapshot`).
pub const WATERMARK_TABLE: &str = "snapshot_watermark";

#[derive(Debug)]
struct Open {
    header: TxnHeader,
    local: bool,
    standalone: bool,
    forwarded: u64,
    touched_checkpoint: bool,
    touched_other: bool,
}

#[derive(Debug)]
pub struct Assembler {
    origin: OriginFilter,
    position: Position,
    open: Option<Open>,
    /// Hand on other regions' rows as [`Step::Foreign`] (an initial sync's window is open).
    pub track_foreign: bool,
}

impl Assembler {
    pub fn new(origin: OriginFilter, start: Position) -> Self {
        Self { origin, position: start, open: None, track_foreign: false }
    }

    /// The position after the last transaction that ended.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// True while a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    pub fn feed(&mut self, event: SourceEvent) -> Result<Vec<Step>, AssembleError> {
        match event {
            SourceEvent::Begin { gtid, server_id, commit_time_us, standalone } => {
                if let Some(open) = &self.open {
                    return Err(AssembleError::Overlap(gtid, open.header.gtid.clone()));
                }
                self.open = Some(Open {
                    local: self.origin.is_local(&gtid),
                    header: TxnHeader { gtid, server_id, commit_time_us },
                    standalone,
                    forwarded: 0,
                    touched_checkpoint: false,
                    touched_other: false,
                });
                Ok(Vec::new())
            }
            SourceEvent::Rows(rows) => {
                let open = self.open.as_mut().ok_or(AssembleError::OutsideTransaction("rows"))?;
                for r in &rows {
                    if r.db == FERRY_SCHEMA && r.table == CHECKPOINT_TABLE {
                        open.touched_checkpoint = true;
                    } else {
                        open.touched_other = true;
                    }
                }
                if !open.local {
                    let rows: Vec<RowChange> = if self.track_foreign {
                        rows.into_iter().filter(|r| r.db != FERRY_SCHEMA).collect()
                    } else {
                        Vec::new()
                    };
                    return Ok(if rows.is_empty() { Vec::new() } else { vec![Step::Foreign { rows }] });
                }
                let rows: Vec<RowChange> = rows
                    .into_iter()
                    .filter(|r| {
                        r.db != FERRY_SCHEMA || r.table == HEARTBEAT_TABLE || r.table == WATERMARK_TABLE
                    })
                    .collect();
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                open.forwarded += rows.len() as u64;
                Ok(vec![Step::Rows { header: open.header.clone(), rows }])
            }
            SourceEvent::Commit => {
                let open = self.open.take().ok_or(AssembleError::OutsideTransaction("commit"))?;
                Ok(vec![self.end(open)])
            }
            SourceEvent::Statement { schema, query } => {
                let header = self.open.as_ref().map(|o| o.header.clone());
                let mut steps = vec![Step::Statement { header, schema, query }];
                if self.open.as_ref().is_some_and(|o| o.standalone) {
                    let open = self.open.take().ok_or(AssembleError::OutsideTransaction("statement"))?;
                    steps.push(self.end(open));
                }
                Ok(steps)
            }
            SourceEvent::GtidList(_) | SourceEvent::Heartbeat => Ok(Vec::new()),
        }
    }

    fn end(&mut self, open: Open) -> Step {
        self.position.advance_gtid(&open.header.gtid);
        let outcome = if !open.local {
            Outcome::Foreign
        } else if open.forwarded > 0 {
            Outcome::Forwarded
        } else if open.touched_checkpoint && !open.touched_other {
            Outcome::Checkpoint
        } else {
            Outcome::Empty
        };
        Step::End {
            header: open.header,
            outcome,
            forwarded_rows: open.forwarded,
            position: self.position.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, Row};

    fn begin(g: &str, standalone: bool) -> SourceEvent {
        let gtid: crate::model::MariaGtid = g.parse().unwrap();
        SourceEvent::Begin {
            gtid: Gtid::MariaDb(gtid),
            server_id: gtid.server_id,
            commit_time_us: 1,
            standalone,
        }
    }

    fn rows_of(tables: &[(&str, &str)]) -> SourceEvent {
        SourceEvent::Rows(
            tables
                .iter()
                .map(|(db, t)| RowChange {
                    db: db.to_string(),
                    table: t.to_string(),
                    op: Op::Insert,
                    key: Row::default(),
                    before: None,
                    after: Some(Row::default()),
                    generated: Vec::new(),
                })
                .collect(),
        )
    }

    fn outcome(steps: &[Step]) -> Option<(Outcome, u64, String)> {
        steps.iter().find_map(|s| match s {
            Step::End { outcome, forwarded_rows, position, .. } => {
                Some((*outcome, *forwarded_rows, position.to_string()))
            }
            _ => None,
        })
    }

    #[test]
    fn local_rows_are_forwarded_as_they_arrive_and_the_position_advances_at_commit() {
        let mut a = Assembler::new(OriginFilter::Domain(1), "2-201-4".parse().unwrap());
        assert!(a.feed(begin("1-101-7", false)).unwrap().is_empty());
        let steps = a.feed(rows_of(&[("psi", "stock"), ("psi", "orders")])).unwrap();
        assert!(matches!(&steps[..], [Step::Rows { rows, .. }] if rows.len() == 2));
        assert_eq!(a.position().to_string(), "2-201-4", "not advanced before commit");
        let steps = a.feed(SourceEvent::Commit).unwrap();
        assert_eq!(outcome(&steps), Some((Outcome::Forwarded, 2, "1-101-7,2-201-4".into())));
    }

    #[test]
    fn another_regions_transaction_is_skipped_but_advances_the_position() {
        let mut a = Assembler::new(OriginFilter::Domain(1), Position::default());
        a.feed(begin("2-201-9", false)).unwrap();
        assert!(a.feed(rows_of(&[("psi", "stock")])).unwrap().is_empty(), "foreign rows are not forwarded");
        let steps = a.feed(SourceEvent::Commit).unwrap();
        assert_eq!(outcome(&steps), Some((Outcome::Foreign, 0, "2-201-9".into())));
    }

    #[test]
    fn ferry_schema_is_excluded_except_heartbeat_and_checkpoint_only_transactions_are_marked() {
        let mut a = Assembler::new(OriginFilter::Domain(1), Position::default());
        a.feed(begin("1-101-1", false)).unwrap();
        let steps =
            a.feed(rows_of(&[("ferry", "applied"), ("ferry", "heartbeat"), ("psi", "stock")])).unwrap();
        let Step::Rows { rows, .. } = &steps[0] else { panic!("{steps:?}") };
        let tables: Vec<&str> = rows.iter().map(|r| r.table.as_str()).collect();
        assert_eq!(tables, ["heartbeat", "stock"]);
        a.feed(SourceEvent::Commit).unwrap();

        a.feed(begin("1-101-2", false)).unwrap();
        assert!(a.feed(rows_of(&[("ferry", "capture_checkpoint")])).unwrap().is_empty());
        assert_eq!(outcome(&a.feed(SourceEvent::Commit).unwrap()).map(|o| o.0), Some(Outcome::Checkpoint));

        a.feed(begin("1-101-3", false)).unwrap();
        a.feed(rows_of(&[("ferry", "applied")])).unwrap();
        assert_eq!(outcome(&a.feed(SourceEvent::Commit).unwrap()).map(|o| o.0), Some(Outcome::Empty));
    }

    #[test]
    fn a_standalone_statement_is_reported_and_ends_its_transaction() {
        let mut a = Assembler::new(OriginFilter::Domain(1), Position::default());
        a.feed(begin("1-101-5", true)).unwrap();
        let steps = a
            .feed(SourceEvent::Statement {
                schema: "psi".into(),
                query: "ALTER TABLE stock ADD x INT".into(),
            })
            .unwrap();
        assert!(
            matches!(&steps[0], Step::Statement { header: Some(_), query, .. } if query.starts_with("ALTER"))
        );
        assert_eq!(outcome(&steps), Some((Outcome::Empty, 0, "1-101-5".into())));
        assert!(!a.in_transaction());
    }

    #[test]
    fn all_domains_mode_forwards_every_origin() {
        let mut a = Assembler::new(OriginFilter::All, Position::default());
        a.feed(begin("2-201-9", false)).unwrap();
        assert_eq!(a.feed(rows_of(&[("psi", "stock")])).unwrap().len(), 1);
        assert_eq!(outcome(&a.feed(SourceEvent::Commit).unwrap()).map(|o| o.0), Some(Outcome::Forwarded));
    }

    #[test]
    fn mysql_origins_are_matched_by_server_uuid() {
        let ours = OriginFilter::Uuids(vec!["3e11fa47-71ca-11e1-9e33-c80aa9429562".into()]);
        let local = Gtid::MySql { uuid: "3e11fa47-71ca-11e1-9e33-c80aa9429562".into(), gno: 4 };
        let other = Gtid::MySql { uuid: "4e11fa47-71ca-11e1-9e33-c80aa9429562".into(), gno: 4 };
        assert!(ours.is_local(&local) && !ours.is_local(&other));
        assert!(!OriginFilter::Domain(1).is_local(&local), "a MariaDB filter never matches a MySQL GTID");
        let mut a = Assembler::new(ours, Position::default());
        a.feed(SourceEvent::Begin { gtid: other, server_id: 2, commit_time_us: 1, standalone: false })
            .unwrap();
        assert!(a.feed(rows_of(&[("psi", "stock")])).unwrap().is_empty());
        assert_eq!(outcome(&a.feed(SourceEvent::Commit).unwrap()).map(|o| o.0), Some(Outcome::Foreign));
        assert!(
            a.position()
                .includes_gtid(&Gtid::MySql { uuid: "4e11fa47-71ca-11e1-9e33-c80aa9429562".into(), gno: 4 })
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut a = Assembler::new(OriginFilter::Domain(1), Position::default());
        assert_eq!(a.feed(SourceEvent::Commit), Err(AssembleError::OutsideTransaction("commit")));
        assert!(a.feed(rows_of(&[("psi", "stock")])).is_err());
        a.feed(begin("1-101-1", false)).unwrap();
        assert!(matches!(a.feed(begin("1-101-2", false)), Err(AssembleError::Overlap(..))));
    }
}
