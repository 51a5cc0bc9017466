//! Which replica to promote when a region's primary is lost: a pure function over GTID
//! positions (MariaDB: the last GTID of each domain; MySQL: GTID sets).
//!
//! - A candidate with **errant** transactions (written on the replica itself: a domain whose
//!   last GTID carries the replica's own server id on MariaDB; GTIDs of its own server UUID
//!   that another candidate or the old primary lacks on MySQL) is never promoted: the other
//!   servers never had them.
//! - The most advanced candidate is the one whose **received** position (executed plus what is
//!   in its relay log) covers every other candidate's, domain by domain. If none covers all
//!   (their histories diverged), nothing is promoted.
//! - Transactions the chosen candidate lacks against the primary's last known position are
//!   the loss; above the budget, nothing is promoted. When that position was never observed
//!   (the watch just started, a new leader, a primary that moved), the loss cannot be bounded:
//!   nothing is promoted unless the budget is `any`.
//! - When it has received more than it executed, its relay log must be applied first.
//! - Ties keep the configured order of the candidates.
//!
//! MariaDB positions keep only the last GTID of each domain, so an errant transaction is seen
//! only while it is the last of its domain; a replica written locally is normally written in a
//! domain of its own (its `gtid_domain_id`), where it stays visible.

use crate::config::LossBudget;
use crate::model::Position;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub server_id: u32,
    /// `@@gtid_current_pos` (or `gtid_slave_pos`): what it has applied.
    pub executed: Position,
    /// Executed plus received into the relay log (`Gtid_IO_Pos`).
    pub received: Position,
    /// MySQL: its `@@server_uuid` (the GTIDs it wrote itself carry it).
    pub server_uuid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Promote {
        name: String,
        /// Its relay log holds transactions it has not applied yet: wait for them.
        wait_for_relay: bool,
        /// Transactions of the primary's last known position it does not have.
        lost: u64,
    },
    Refuse(String),
}

/// `a` has everything `b` has (MariaDB: domain by domain; MySQL: every GTID of the set).
fn covers(a: &Position, b: &Position) -> bool {
    a.covers(b)
}

/// Transactions of `reference` that `p` lacks.
fn missing(p: &Position, reference: &Position) -> u64 {
    p.lacks(reference)
}

/// MySQL: transactions `c` wrote itself (its server UUID) that another candidate or the
/// primary's last known position lacks. A former primary's own GTIDs that everyone has are
/// history, not errant.
fn mysql_errant(c: &Candidate, all: &[Candidate], primary: Option<&Position>) -> Option<String> {
    let uuid = c.server_uuid.as_deref()?;
    let (_, own) = c.executed.gtid_set().iter().find(|(u, _)| *u == uuid)?;
    let others = all
        .iter()
        .filter(|o| o.name != c.name)
        .map(|o| o.received.gtid_set())
        .chain(primary.map(Position::gtid_set));
    for other in others {
        if let Some((start, end)) = own.iter().find(|(s, e)| !other.covers(uuid, *s, *e)) {
            return Some(format!("{uuid}:{start}-{end}"));
        }
    }
    None
}

/// Choose the replica to promote. `primary` is the failed primary's last known position, if
/// any; `budget` the most transactions a promotion may lose.
pub fn choose(candidates: &[Candidate], primary: Option<&Position>, budget: LossBudget) -> Choice {
    let mut clean = Vec::new();
    for c in candidates {
        let maria = c
            .executed
            .iter()
            .chain(c.received.iter())
            .find(|g| g.server_id == c.server_id)
            .map(|g| g.to_string());
        match maria.or_else(|| mysql_errant(c, candidates, primary)) {
            Some(g) => tracing::warn!(candidate = %c.name, gtid = %g, "errant transaction: not a candidate"),
            None => clean.push(c),
        }
    }
    if clean.is_empty() {
        return Choice::Refuse(if candidates.is_empty() {
            "no replica to promote".into()
        } else {
            "every replica has errant transactions (written on the replica itself)".into()
        });
    }
    let Some(best) = clean.iter().find(|c| clean.iter().all(|o| covers(&c.received, &o.received))) else {
        let names: Vec<&str> = clean.iter().map(|c| c.name.as_str()).collect();
        return Choice::Refuse(format!(
            "the replicas' histories diverged: none has all the others have ({})",
            names.join(", ")
        ));
    };
    let lost = match (primary, budget) {
        (Some(p), LossBudget::Transactions(most)) => {
            let lost = missing(&best.received, p);
            if lost > most {
                return Choice::Refuse(format!(
                    "the most advanced replica, {}, lacks {lost} transaction(s) of the primary (budget {most})",
                    best.name
                ));
            }
            lost
        }
        (None, LossBudget::Transactions(_)) => {
            return Choice::Refuse(
                "the old primary's position was never observed by this ferry (it just started, took the lead, \
                 or the primary had just moved), so the loss cannot be bounded; set failover.budget: any to \
                 promote anyway"
                    .into(),
            );
        }
        (Some(p), LossBudget::Any(_)) => missing(&best.received, p),
        (None, LossBudget::Any(_)) => 0,
    };
    Choice::Promote { name: best.name.clone(), wait_for_relay: !covers(&best.executed, &best.received), lost }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(s: &str) -> Position {
        s.parse().unwrap()
    }

    fn c(name: &str, server_id: u32, executed: &str, received: &str) -> Candidate {
        Candidate {
            name: name.into(),
            server_id,
            executed: pos(executed),
            received: pos(received),
            server_uuid: None,
        }
    }

    fn promote(name: &str, wait_for_relay: bool, lost: u64) -> Choice {
        Choice::Promote { name: name.into(), wait_for_relay, lost }
    }

    /// (what, candidates, the primary's last position, budget, expected choice)
    type Case<'a> = (&'a str, Vec<Candidate>, Option<&'a Position>, LossBudget, Choice);

    const ANY: LossBudget = LossBudget::Any(crate::config::AnyLoss::Any);

    fn most(n: u64) -> LossBudget {
        LossBudget::Transactions(n)
    }

    #[test]
    fn table() {
        let primary = pos("1-101-10,2-201-7");
        let cases: Vec<Case<'_>> = vec![
            (
                "ahead wins over behind",
                vec![
                    c("r1", 102, "1-101-8,2-201-7", "1-101-8,2-201-7"),
                    c("r2", 103, "1-101-10,2-201-7", "1-101-10,2-201-7"),
                ],
                Some(&primary),
                most(0),
                promote("r2", false, 0),
            ),
            (
                "behind only: refused with a zero budget",
                vec![c("r1", 102, "1-101-8,2-201-7", "1-101-8,2-201-7")],
                Some(&primary),
                most(0),
                Choice::Refuse(
                    "the most advanced replica, r1, lacks 2 transaction(s) of the primary (budget 0)".into(),
                ),
            ),
            (
                "behind only: promoted within the budget",
                vec![c("r1", 102, "1-101-8,2-201-7", "1-101-8,2-201-7")],
                Some(&primary),
                most(5),
                promote("r1", false, 2),
            ),
            (
                "errant transactions disqualify the more advanced replica",
                vec![
                    c("r1", 102, "1-101-10,2-201-7,9-102-3", "1-101-10,2-201-7,9-102-3"),
                    c("r2", 103, "1-101-10,2-201-7", "1-101-10,2-201-7"),
                ],
                Some(&primary),
                most(0),
                promote("r2", false, 0),
            ),
            (
                "relay-only: the transactions are received, not yet applied",
                vec![
                    c("r1", 102, "1-101-6,2-201-7", "1-101-10,2-201-7"),
                    c("r2", 103, "1-101-9,2-201-7", "1-101-9,2-201-7"),
                ],
                Some(&primary),
                most(0),
                promote("r1", true, 0),
            ),
            (
                "equal: the configured order decides",
                vec![
                    c("r1", 102, "1-101-10,2-201-7", "1-101-10,2-201-7"),
                    c("r2", 103, "1-101-10,2-201-7", "1-101-10,2-201-7"),
                ],
                Some(&primary),
                most(0),
                promote("r1", false, 0),
            ),
            (
                "diverged: each has something the other lacks",
                vec![
                    c("r1", 102, "1-101-10,2-201-5", "1-101-10,2-201-5"),
                    c("r2", 103, "1-101-8,2-201-7", "1-101-8,2-201-7"),
                ],
                None,
                most(100),
                Choice::Refuse(
                    "the replicas' histories diverged: none has all the others have (r1, r2)".into(),
                ),
            ),
            (
                "primary position unknown: refused, the loss cannot be bounded",
                vec![c("r1", 102, "1-101-3", "1-101-3"), c("r2", 103, "1-101-4", "1-101-4")],
                None,
                most(1000),
                Choice::Refuse(
                    "the old primary's position was never observed by this ferry (it just started, took the lead, \
                     or the primary had just moved), so the loss cannot be bounded; set failover.budget: any to \
                     promote anyway"
                        .into(),
                ),
            ),
            (
                "primary position unknown, budget any: the most advanced, no loss counted",
                vec![c("r1", 102, "1-101-3", "1-101-3"), c("r2", 103, "1-101-4", "1-101-4")],
                None,
                ANY,
                promote("r2", false, 0),
            ),
            (
                "budget any with a known position: promoted whatever it lacks, the loss reported",
                vec![c("r1", 102, "1-101-8,2-201-7", "1-101-8,2-201-7")],
                Some(&primary),
                ANY,
                promote("r1", false, 2),
            ),
            ("no replica", vec![], Some(&primary), most(0), Choice::Refuse("no replica to promote".into())),
        ];
        for (what, candidates, primary, budget, want) in cases {
            assert_eq!(choose(&candidates, primary, budget), want, "{what}");
        }
    }

    #[test]
    fn mysql_gtid_sets_choose_the_replica_holding_every_other_ones_transactions() {
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let primary = pos(&format!("{u}:1-100"));
        let r1 = c("r1", 102, &format!("{u}:1-90"), &format!("{u}:1-95"));
        let r2 = c("r2", 103, &format!("{u}:1-97"), &format!("{u}:1-97"));
        assert_eq!(choose(&[r1.clone(), r2.clone()], Some(&primary), most(5)), promote("r2", false, 3));
        assert_eq!(choose(&[r2.clone(), r1.clone()], Some(&primary), most(5)), promote("r2", false, 3));
        // A hole in the set counts: r3 lacks 50..=60 although its last GTID is the highest.
        let r3 = c("r3", 104, &format!("{u}:1-49:61-99"), &format!("{u}:1-49:61-99"));
        assert!(
            matches!(choose(&[r3, r2], Some(&primary), most(5)), Choice::Refuse(reason) if reason.contains("diverged"))
        );
        assert!(
            matches!(choose(&[r1], Some(&primary), most(4)), Choice::Refuse(reason) if reason.contains("lacks 5"))
        );
    }

    #[test]
    fn a_mysql_replica_with_transactions_of_its_own_that_others_lack_is_not_promoted() {
        let (u, own) = ("3e11fa47-71ca-11e1-9e33-c80aa9429562", "8e1e6e46-9c54-11e9-a3b8-0242ac110002");
        let other = "aaaaaaaa-0000-0000-0000-000000000003";
        let primary = pos(&format!("{u}:1-100"));
        let with_uuid = |mut c: Candidate, uuid: &str| {
            c.server_uuid = Some(uuid.into());
            c
        };
        // r1 wrote 8e1e…:1-2 itself (a write on the replica): errant, though it is ahead.
        let mine = format!("{u}:1-100,{own}:1-2");
        let r1 = with_uuid(c("r1", 102, &mine, &mine), own);
        let r2 = with_uuid(c("r2", 103, &format!("{u}:1-98"), &format!("{u}:1-98")), other);
        assert_eq!(choose(&[r1, r2], Some(&primary), most(5)), promote("r2", false, 2));
        // A former primary's own GTIDs that every other server has are history: not errant.
        let r1 = with_uuid(c("r1", 102, &mine, &mine), own);
        let r2 = with_uuid(c("r2", 103, &mine, &mine), other);
        assert_eq!(choose(&[r1, r2], Some(&pos(&mine)), most(0)), promote("r1", false, 0));
    }
}
