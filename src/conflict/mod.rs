//! Conflict rules: what happens when an incoming change meets a row the local region changed
//! too. The rules here are pure (no I/O); `check` compares the configuration with the schema. Apply calls [`decide`] once per row change, in origin order, with what
//! the target holds for that key, and carries out the [`Action`].
//!
//! The rules, identical on every region so that all regions converge:
//! - Every write has a [`Stamp`]: its version (the table's version column, µs, of the after
//!   image, or of the before image for a delete; the origin commit time when the table has no
//!   version column) and the rank of the region that wrote it. Stamps are totally ordered:
//!   the later version wins, and on equal versions the region earlier in the configured region
//!   order wins.
//! - No conflict: the local row is what the origin saw (its version equals the incoming
//!   before image's), so the change is causally later and applies whatever the clocks say.
//! - Update or insert against a concurrently changed row: last write wins on the stamp.
//! - Deletes leave a tombstone with the delete's stamp; an update or insert that loses to the
//!   tombstone is dropped, one that beats it re-creates the row and removes the tombstone.
//! - Delta columns (stock quantities) always merge additively, whoever wins the other columns:
//!   an update adds `after − before`, an insert of a row that already exists adds its values.
//! - An incoming version further ahead of the local clock than the configured bound is
//!   reported (clock skew) and still decided by the same rule.

use std::fmt;

pub mod check;
pub mod log;
mod num;
mod rules;

pub use num::Num;
pub use rules::{Rules, TablePolicy, key_row, key_text, version_of, version_text};

/// A write's place in the total order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The version, µs (a version column's value, or the origin commit time).
    pub at_us: i64,
    /// The writing region's position in the region order (0 first).
    pub rank: u32,
}

impl Stamp {
    /// `self` is strictly later than `other` in the total order.
    pub fn beats(&self, other: &Stamp) -> bool {
        self.at_us > other.at_us || (self.at_us == other.at_us && self.rank < other.rank)
    }
}

/// What the target holds for the key of an incoming change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// A live row with its stamp (its version and the region that wrote it).
    Row { stamp: Stamp, version_us: Option<i64> },
    /// No row; a tombstone if a delete was recorded.
    Gone { tombstone: Option<Stamp> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    /// A row's state from an initial sync (see [`decide`]).
    Snapshot,
}

/// An incoming row change, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub op: Op,
    pub stamp: Stamp,
    /// The version of the before image (updates and deletes of tables with a version
    /// column): when it equals the local row's, nothing happened here in between.
    pub before_version_us: Option<i64>,
}

/// What to do with the incoming change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the incoming image; delta columns add the change's delta (updates: after −
    /// before; inserts over an existing row: the inserted values).
    Overwrite,
    /// Insert the incoming image as it is (no row here); remove a tombstone if there is one.
    Insert,
    /// Keep the local row's other columns; delta columns add the change's delta.
    AddDelta,
    /// Delete the row and record a tombstone with the incoming stamp.
    Delete,
    /// Record a tombstone (the row is already gone) with the later of the two stamps.
    Tombstone,
    /// Nothing to write: the local state wins.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    InsertInsert,
    UpdateUpdate,
    /// An incoming insert or update met a deleted row.
    UpdateDelete,
    /// An incoming delete met a row changed here.
    DeleteUpdate,
    UniqueKey,
    ClockSkew,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::InsertInsert => "insert_insert",
            Kind::UpdateUpdate => "update_update",
            Kind::UpdateDelete => "update_delete",
            Kind::DeleteUpdate => "delete_update",
            Kind::UniqueKey => "unique_key",
            Kind::ClockSkew => "clock_skew",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side a conflict was decided for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Winner {
    Local,
    Incoming,
}

impl Winner {
    pub fn as_str(self) -> &'static str {
        match self {
            Winner::Local => "local",
            Winner::Incoming => "incoming",
        }
    }
}

/// The rule that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Later version wins.
    LastWriteWins,
    /// Equal versions: the region earlier in the region order wins.
    RegionOrder,
    /// Against a tombstone.
    Tombstone,
    /// The row is gone and no delete was recorded: the change re-creates it.
    NoTombstone,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::LastWriteWins => "last_write_wins",
            Rule::RegionOrder => "region_order",
            Rule::Tombstone => "tombstone",
            Rule::NoTombstone => "no_tombstone",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub kind: Kind,
    pub winner: Winner,
    pub rule: Rule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub conflict: Option<Conflict>,
}

fn won(incoming: &Stamp, local: &Stamp, kind: Kind) -> (bool, Conflict) {
    // Equal stamps (one region, one µs) keep that region's order: the incoming one is later.
    let incoming_wins = !local.beats(incoming);
    let rule = if incoming.at_us == local.at_us { Rule::RegionOrder } else { Rule::LastWriteWins };
    let winner = if incoming_wins { Winner::Incoming } else { Winner::Local };
    (incoming_wins, Conflict { kind, winner, rule })
}

/// Decide a unique-key collision: an incoming row wants a unique value that another local row
/// (the holder) has. The same total order decides; the loser is removed and logged.
pub fn unique(incoming: &Stamp, holder: &Stamp) -> Conflict {
    won(incoming, holder, Kind::UniqueKey).1
}

/// Decide one incoming change against the local state of its key.
pub fn decide(local: Local, incoming: Incoming) -> Decision {
    let none = |action| Decision { action, conflict: None };
    let with = |action, conflict| Decision { action, conflict: Some(conflict) };
    match (incoming.op, local) {
        (Op::Insert, Local::Gone { tombstone: None }) => none(Action::Insert),
        (Op::Insert | Op::Update, Local::Gone { tombstone: Some(t) }) => {
            // A delete's version is that of the row it deleted, so another region's write
            // with the same version is one the delete saw (arriving late, through its own
            // topic): the tombstone wins that tie, as the row's own region decides when the
            // delete reaches it (`unchanged_here`). The same region's write after its own
            // delete comes later in that region's topic: it re-creates the row.
            let tie_lost = t.at_us == incoming.stamp.at_us && t.rank != incoming.stamp.rank;
            if t.at_us > incoming.stamp.at_us || tie_lost {
                with(
                    Action::Keep,
                    Conflict { kind: Kind::UpdateDelete, winner: Winner::Local, rule: Rule::Tombstone },
                )
            } else {
                with(
                    Action::Insert,
                    Conflict { kind: Kind::UpdateDelete, winner: Winner::Incoming, rule: Rule::Tombstone },
                )
            }
        }
        (Op::Update, Local::Gone { tombstone: None }) => with(
            Action::Insert,
            Conflict { kind: Kind::UpdateDelete, winner: Winner::Incoming, rule: Rule::NoTombstone },
        ),
        (Op::Insert, Local::Row { stamp, .. }) => {
            let (incoming_wins, conflict) = won(&incoming.stamp, &stamp, Kind::InsertInsert);
            with(if incoming_wins { Action::Overwrite } else { Action::AddDelta }, conflict)
        }
        (Op::Update, Local::Row { stamp, version_us }) => {
            if unchanged_here(version_us, incoming.before_version_us) {
                return none(Action::Overwrite);
            }
            let (incoming_wins, conflict) = won(&incoming.stamp, &stamp, Kind::UpdateUpdate);
            with(if incoming_wins { Action::Overwrite } else { Action::AddDelta }, conflict)
        }
        (Op::Delete, Local::Row { stamp, version_us }) => {
            if unchanged_here(version_us, incoming.before_version_us) {
                return none(Action::Delete);
            }
            let (incoming_wins, conflict) = won(&incoming.stamp, &stamp, Kind::DeleteUpdate);
            with(if incoming_wins { Action::Delete } else { Action::Keep }, conflict)
        }
        (Op::Delete, Local::Gone { .. }) => none(Action::Tombstone),
        // A snapshot row is a state the stream may already have moved past: it fills a gap,
        // never wins a contest. Absent: inserted, unless a tombstone as late says the row was
        // deleted since. Present: replaced only by a strictly later stamp (the same write
        // arriving twice keeps the row), and its delta columns are never added (carried out
        // with no deltas). Nothing here is a conflict between writers.
        (Op::Snapshot, Local::Gone { tombstone: None }) => none(Action::Insert),
        (Op::Snapshot, Local::Gone { tombstone: Some(t) }) => {
            none(if t.at_us >= incoming.stamp.at_us { Action::Keep } else { Action::Insert })
        }
        (Op::Snapshot, Local::Row { stamp, .. }) => {
            none(if incoming.stamp.beats(&stamp) { Action::Overwrite } else { Action::Keep })
        }
    }
}

/// The local row is the one the origin changed: same version (a table without a version
/// column has no way to tell, and is single-writer or delta-only by configuration).
fn unchanged_here(local: Option<i64>, before: Option<i64>) -> bool {
    match (local, before) {
        (Some(l), Some(b)) => l == b,
        _ => true,
    }
}

/// The incoming version is further ahead of the local clock than `max_skew_us`.
pub fn skewed(incoming: &Stamp, now_us: i64, max_skew_us: i64) -> bool {
    incoming.at_us.saturating_sub(now_us) > max_skew_us
}

/// The later of two optional stamps (tombstones keep the latest delete).
pub fn latest(a: Option<Stamp>, b: Stamp) -> Stamp {
    match a {
        Some(a) if a.beats(&b) => a,
        _ => b,
    }
}

/// Microseconds since the epoch of `YYYY-MM-DD hh:mm:ss[.ffffff]`, read as UTC (how ferry
/// reads DATETIME and TIMESTAMP versions on every region alike). None if malformed.
pub fn datetime_us(text: &str) -> Option<i64> {
    let (date, time) = text.split_once(' ').unwrap_or((text, "00:00:00"));
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) =
        (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, mi, s): (i64, i64, i64) =
        (t.next()?.parse().ok()?, t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) || !(1..=12).contains(&m) {
        return None;
    }
    let micros: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().ok()? };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000_000 + s * 1_000_000 + micros)
}

#[cfg(test)]
mod tests;
