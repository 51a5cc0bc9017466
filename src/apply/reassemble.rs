//! Transactions from records. Pure: no I/O.
//!
//! Records arrive in topic order and may repeat (capture resends from its checkpoint after a
//! restart, starting again at record 0 of a transaction). A transaction is complete at its
//! `last` record.
//!
//! A capture that dies while publishing a multi-record transaction leaves its first records in
//! the topic, followed by the resend from its checkpoint: record 0 of a transaction that is
//! *not after* the open one in the origin's order (same GTID domain or server UUID, sequence
//! not greater). The partial transaction is then superseded (the resend carries it whole
//! later): reported as such, for a metric, never dead-lettered.
//!
//! Anything else that cannot form a transaction (a gap in record indexes, a later transaction
//! before the previous one's last record, a first record that is not 0) is reported as broken,
//! with the offsets it spans, for the dead-letter queue: never skipped silently.

use crate::model::{Gtid, RowChange};
use crate::transport::envelope::{Envelope, Origin};

/// A complete origin transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub origin: Origin,
    pub commit_time_us: i64,
    pub seq: u64,
    /// The origin's previous published transaction, when capture named it.
    pub prev: Option<Gtid>,
    pub rows: Vec<RowChange>,
    /// Offsets of its first and last record in the topic.
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Assembled {
    Complete(Transaction),
    /// Records that cannot form a transaction, with why and where.
    Broken {
        reason: String,
        gtid: String,
        first_offset: i64,
        last_offset: i64,
    },
    /// The first records of a transaction that capture sent again from its checkpoint (the
    /// resend carries it whole): dropped, counted, not an error.
    Superseded {
        gtid: String,
        first_offset: i64,
        last_offset: i64,
    },
}

#[derive(Debug, Default)]
pub struct Reassembler {
    open: Option<Transaction>,
    next_record: u32,
}

impl Reassembler {
    /// Feed one record; returns what it completed or broke.
    pub fn feed(&mut self, env: Envelope, offset: i64) -> Vec<Assembled> {
        let mut out = Vec::new();
        if let Some(open) = &self.open {
            if open.origin.gtid != env.origin.gtid
                && env.record == 0
                && open.origin.gtid.covers(&env.origin.gtid)
            {
                out.extend(self.open.take().map(|t| Assembled::Superseded {
                    gtid: t.origin.gtid.to_string(),
                    first_offset: t.first_offset,
                    last_offset: t.last_offset,
                }));
            } else if open.origin.gtid != env.origin.gtid {
                let broken = self.open.take().map(|t| Assembled::Broken {
                    reason: format!(
                        "transaction ended without its last record (after record {})",
                        self.next_record - 1
                    ),
                    gtid: t.origin.gtid.to_string(),
                    first_offset: t.first_offset,
                    last_offset: t.last_offset,
                });
                out.extend(broken);
            } else if env.record < self.next_record && env.record != 0 {
                return out; // a repeated record of the open transaction
            } else if env.record > self.next_record {
                let t = self.open.take();
                out.extend(t.map(|t| Assembled::Broken {
                    reason: format!(
                        "record {} follows record {} (records missing)",
                        env.record,
                        self.next_record - 1
                    ),
                    gtid: t.origin.gtid.to_string(),
                    first_offset: t.first_offset,
                    last_offset: offset,
                }));
                return out;
            }
        }
        if env.record == 0 {
            // A transaction starts (or starts again after a resend: its rows restart too).
            self.open = Some(Transaction {
                origin: env.origin,
                commit_time_us: env.commit_time_us,
                seq: env.seq,
                prev: env.prev,
                rows: env.rows,
                first_offset: offset,
                last_offset: offset,
            });
            self.next_record = 1;
        } else if let Some(open) = self.open.as_mut() {
            open.rows.extend(env.rows);
            open.last_offset = offset;
            self.next_record += 1;
        } else {
            out.push(Assembled::Broken {
                reason: format!("record {} of a transaction whose record 0 was not seen", env.record),
                gtid: env.origin.gtid.to_string(),
                first_offset: offset,
                last_offset: offset,
            });
            return out;
        }
        if env.last {
            out.extend(self.open.take().map(Assembled::Complete));
            self.next_record = 0;
        }
        out
    }

    /// True while a transaction has started but not finished.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, Row, Value};
    use crate::transport::envelope::VERSION;

    fn env(seq: u64, record: u32, last: bool, row_ids: &[i64]) -> Envelope {
        Envelope {
            v: VERSION,
            origin: Origin {
                region: "east".into(),
                server_id: 101,
                gtid: format!("1-101-{seq}").parse().unwrap(),
            },
            commit_time_us: 1,
            seq,
            prev: None,
            record,
            rows: row_ids
                .iter()
                .map(|i| RowChange {
                    db: "psi".into(),
                    table: "stock".into(),
                    op: Op::Insert,
                    key: Row(vec![("id".into(), Value::Int { v: *i })]),
                    before: None,
                    after: Some(Row(vec![("id".into(), Value::Int { v: *i })])),
                    generated: Vec::new(),
                })
                .collect(),
            last,
        }
    }

    fn ids(t: &Transaction) -> Vec<i64> {
        t.rows
            .iter()
            .map(|r| match r.key.get("id") {
                Some(Value::Int { v }) => *v,
                _ => -1,
            })
            .collect()
    }

    fn complete(out: Vec<Assembled>) -> Transaction {
        match out.as_slice() {
            [Assembled::Complete(t)] => t.clone(),
            other => panic!("expected one complete transaction, got {other:?}"),
        }
    }

    #[test]
    fn multi_record_transactions_complete_at_their_last_record() {
        let mut r = Reassembler::default();
        assert!(r.feed(env(7, 0, false, &[1, 2]), 10).is_empty());
        assert!(r.feed(env(7, 1, false, &[3]), 11).is_empty());
        let t = complete(r.feed(env(7, 2, true, &[]), 12));
        assert_eq!((ids(&t), t.first_offset, t.last_offset, t.seq), (vec![1, 2, 3], 10, 12, 7));
        assert!(!r.in_transaction());
    }

    #[test]
    fn a_resend_from_record_zero_restarts_the_transaction_and_repeats_are_ignored() {
        let mut r = Reassembler::default();
        r.feed(env(7, 0, false, &[1]), 10);
        r.feed(env(7, 1, false, &[2]), 11);
        assert!(r.feed(env(7, 1, false, &[2]), 12).is_empty(), "a repeated record is ignored");
        // Capture restarted: the whole transaction again.
        r.feed(env(7, 0, false, &[1]), 13);
        r.feed(env(7, 1, false, &[2]), 14);
        let t = complete(r.feed(env(7, 2, true, &[3]), 15));
        assert_eq!((ids(&t), t.first_offset), (vec![1, 2, 3], 13));
    }

    #[test]
    fn a_partial_transaction_followed_by_capture_resending_from_its_checkpoint_is_superseded() {
        // Capture died after record 1 of 9; it restarts at its checkpoint (after 5) and sends
        // 6, 7, 8 and 9 again, 9 whole this time.
        let mut r = Reassembler::default();
        r.feed(env(9, 0, false, &[1]), 10);
        r.feed(env(9, 1, false, &[2]), 11);
        let out = r.feed(env(6, 0, true, &[6]), 12);
        assert!(
            matches!(&out[0], Assembled::Superseded { gtid, first_offset: 10, last_offset: 11 } if gtid == "1-101-9"),
            "{out:?}"
        );
        assert_eq!(ids(&complete(out[1..].to_vec())), vec![6]);
        assert_eq!(ids(&complete(r.feed(env(7, 0, true, &[7]), 13))), vec![7]);
        r.feed(env(9, 0, false, &[1]), 14);
        r.feed(env(9, 1, false, &[2]), 15);
        let t = complete(r.feed(env(9, 2, true, &[3]), 16));
        assert_eq!((ids(&t), t.first_offset), (vec![1, 2, 3], 14));
    }

    #[test]
    fn gaps_truncations_and_orphans_are_broken_never_skipped() {
        let mut r = Reassembler::default();
        r.feed(env(7, 0, false, &[1]), 10);
        let out = r.feed(env(7, 2, true, &[3]), 11);
        assert!(
            matches!(&out[..], [Assembled::Broken { reason, first_offset: 10, last_offset: 11, .. }] if reason.contains("missing")),
            "{out:?}"
        );

        r.feed(env(8, 0, false, &[1]), 20);
        let out = r.feed(env(9, 0, true, &[5]), 21);
        assert!(
            matches!(&out[0], Assembled::Broken { gtid, reason, .. } if gtid == "1-101-8" && reason.contains("without its last")),
            "{out:?}"
        );
        assert_eq!(ids(&complete(out[1..].to_vec())), vec![5], "the next transaction still applies");

        let out = r.feed(env(10, 3, true, &[]), 30);
        assert!(
            matches!(&out[..], [Assembled::Broken { reason, .. }] if reason.contains("record 0 was not seen")),
            "{out:?}"
        );
    }
}
