//! The rules, decision by decision. The properties over random histories run the real
//! planner: `apply::resolve::props`.

use super::*;

#[test]
fn stamps_are_totally_ordered_and_ties_go_to_the_earlier_region() {
    let s = |at_us, rank| Stamp { at_us, rank };
    assert!(s(2, 1).beats(&s(1, 0)));
    assert!(s(1, 0).beats(&s(1, 1)), "equal versions: region order");
    assert!(!s(1, 1).beats(&s(1, 1)));
    assert!(!s(1, 1).beats(&s(1, 0)) && !s(1, 0).beats(&s(2, 1)));
}

#[test]
fn a_delete_older_than_a_local_update_loses_and_a_newer_one_wins() {
    let row = |at_us| Local::Row { stamp: Stamp { at_us, rank: 1 }, version_us: Some(at_us) };
    let delete =
        |at_us| Incoming { op: Op::Delete, stamp: Stamp { at_us, rank: 0 }, before_version_us: Some(at_us) };
    let d = decide(row(10), delete(5));
    assert_eq!(d.action, Action::Keep);
    assert_eq!(d.conflict.unwrap().kind, Kind::DeleteUpdate);
    assert_eq!(decide(row(10), delete(10)).action, Action::Delete, "the row the delete saw: no conflict");
    let tomb = Local::Gone { tombstone: Some(Stamp { at_us: 10, rank: 0 }) };
    let update =
        |at_us| Incoming { op: Op::Update, stamp: Stamp { at_us, rank: 1 }, before_version_us: Some(1) };
    assert_eq!(decide(tomb, update(9)).action, Action::Keep, "older than the tombstone: dropped");
    assert_eq!(decide(tomb, update(11)).action, Action::Insert, "newer: re-creates the row");
}

#[test]
fn skew_is_measured_against_the_local_clock() {
    let s = Stamp { at_us: 10_000_000, rank: 0 };
    assert!(skewed(&s, 4_000_000, 5_000_000));
    assert!(!skewed(&s, 6_000_000, 5_000_000));
}

#[test]
fn datetimes_read_as_utc_microseconds() {
    assert_eq!(datetime_us("1970-01-01 00:00:00"), Some(0));
    assert_eq!(datetime_us("1970-01-01 00:00:01.5"), Some(1_500_000));
    assert_eq!(datetime_us("2026-11-22 19:00:00.000001"), Some(1_795_374_000_000_001));
    assert_eq!(datetime_us("2000-02-29 00:00:00"), Some(951_782_400_000_000));
    assert_eq!(datetime_us("nonsense"), None);
}

/// A delete's version is the version of the row it deleted, so it ties with the write it
/// saw. When two regions write one row in the same microsecond, region 0's write wins the tie;
/// region 1 then deletes its own (losing) row. Region 0 takes that delete for one of its own
/// row (same version) and deletes; region 1, holding the tombstone, meets region 0's write at
/// the same version and the tombstone wins the tie. Both end without the row.
#[test]
fn a_delete_wins_a_tie_with_the_write_it_saw_in_every_region() {
    let a = Stamp { at_us: 7, rank: 0 };
    let b = Stamp { at_us: 7, rank: 1 };
    let local = Local::Row { stamp: a, version_us: Some(7) };
    let delete = Incoming { op: Op::Delete, stamp: b, before_version_us: Some(7) };
    assert_eq!(decide(local, delete), Decision { action: Action::Delete, conflict: None });
    let gone = Local::Gone { tombstone: Some(b) };
    let update = Incoming { op: Op::Update, stamp: a, before_version_us: Some(6) };
    assert_eq!(decide(gone, update).action, Action::Keep);
}

/// A region that deletes a row and inserts it again with the same version (a table stamped by
/// commit time, one-second resolution on MariaDB; or one transaction doing both): its insert
/// follows its delete in its own topic, so it re-creates the row everywhere.
#[test]
fn a_regions_own_reinsert_at_the_version_of_its_delete_recreates_the_row() {
    let b = Stamp { at_us: 7, rank: 1 };
    let gone = Local::Gone { tombstone: Some(b) };
    let insert = Incoming { op: Op::Insert, stamp: b, before_version_us: None };
    assert_eq!(decide(gone, insert).action, Action::Insert);
}

#[test]
fn a_snapshot_row_fills_a_gap_and_never_wins_a_contest() {
    let snapshot =
        |at_us| Incoming { op: Op::Snapshot, stamp: Stamp { at_us, rank: 0 }, before_version_us: None };
    let row = |at_us, rank| Local::Row { stamp: Stamp { at_us, rank }, version_us: Some(at_us) };
    let gone = |t: Option<i64>| Local::Gone { tombstone: t.map(|at_us| Stamp { at_us, rank: 1 }) };
    let cases = [
        (gone(None), 5, Action::Insert, "absent: inserted"),
        (gone(Some(5)), 5, Action::Keep, "deleted at the snapshot's version: stays deleted"),
        (gone(Some(9)), 5, Action::Keep, "deleted later: stays deleted"),
        (gone(Some(4)), 5, Action::Insert, "deleted before the row was written again: inserted"),
        (row(5, 0), 5, Action::Keep, "the same write: kept"),
        (row(9, 1), 5, Action::Keep, "a newer row: kept"),
        (row(4, 1), 5, Action::Overwrite, "an older row: replaced"),
        (row(5, 1), 5, Action::Overwrite, "a tie goes to the earlier region, as for every write"),
    ];
    for (local, at, want, why) in cases {
        let d = decide(local, snapshot(at));
        assert_eq!(d.action, want, "{why}");
        assert!(d.conflict.is_none(), "{why}: a snapshot is not a conflict");
    }
}
