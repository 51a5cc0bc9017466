//! The rules against random histories: regions write the same keys concurrently (updates,
//! deletes, re-inserts, stock-like deltas, skewed and colliding clocks), every change reaches
//! every other region in origin order but interleaved arbitrarily across origins and with
//! duplicates (skipped by GTID, as `ferry.applied` does), and every region must end in the
//! same state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SimRow {
    payload: i64,
    version: i64,
    writer: u32,
    delta: i64,
}

#[derive(Debug, Clone)]
struct Change {
    origin: u32,
    seq: u64,
    key: u8,
    op: Op,
    before: Option<SimRow>,
    after: Option<SimRow>,
    stamp: Stamp,
}

#[derive(Debug, Default, Clone)]
struct Region {
    rows: BTreeMap<u8, SimRow>,
    tombstones: BTreeMap<u8, Stamp>,
    /// Per origin, what arrived and was not applied yet.
    inbox: BTreeMap<u32, VecDeque<Change>>,
    applied: BTreeSet<(u32, u64)>,
    seq: u64,
    clock: i64,
}

#[derive(Debug, Clone)]
enum Step {
    /// Region writes key: 0..=5 update or insert, 6 delete.
    Write { region: u32, key: u8, kind: u8, payload: i64, delta: i64 },
    /// Region applies the next change from origin.
    Deliver { region: u32, origin: u32 },
    /// The last change from origin to region arrives again.
    Duplicate { region: u32, origin: u32 },
    /// Global time moves on (0 keeps it: equal versions).
    Tick(u8),
}

fn step(regions: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..regions, 0u8..3, 0u8..7, -1000i64..1000, -5i64..5)
            .prop_map(|(region, key, kind, payload, delta)| Step::Write { region, key, kind, payload, delta }),
        4 => (0..regions, 0..regions).prop_map(|(region, origin)| Step::Deliver { region, origin }),
        1 => (0..regions, 0..regions).prop_map(|(region, origin)| Step::Duplicate { region, origin }),
        2 => (0u8..3).prop_map(Step::Tick),
    ]
}

struct World {
    regions: Vec<Region>,
    /// Per region, its clock's offset from global time (skew), µs.
    skew: Vec<i64>,
    now: i64,
    /// Delta changes written anywhere, summed per key (what the delta columns must show).
    delta_sum: BTreeMap<u8, i64>,
    deletes: bool,
    sent: Vec<Vec<Change>>,
}

impl World {
    fn new(n: u32, skew: Vec<i64>, initial: bool) -> Self {
        let mut regions = vec![Region::default(); n as usize];
        let mut delta_sum = BTreeMap::new();
        if initial {
            for key in 0..3u8 {
                let row = SimRow { payload: 0, version: 0, writer: 0, delta: 100 };
                for r in &mut regions {
                    r.rows.insert(key, row);
                }
                delta_sum.insert(key, 100);
            }
        }
        Self { regions, skew, now: 1_000, delta_sum, deletes: false, sent: vec![Vec::new(); n as usize] }
    }

    fn run(&mut self, step: &Step, allow_deletes: bool) {
        match *step {
            Step::Tick(n) => self.now += i64::from(n),
            Step::Write { region, key, kind, payload, delta } => {
                self.write(region, key, kind, payload, delta, allow_deletes)
            }
            Step::Deliver { region, origin } => self.deliver(region, origin),
            Step::Duplicate { region, origin } => {
                if region != origin
                    && let Some(last) = self.sent[origin as usize].last().cloned()
                {
                    self.regions[region as usize].inbox.entry(origin).or_default().push_back(last);
                }
            }
        }
    }

    fn write(&mut self, region: u32, key: u8, kind: u8, payload: i64, delta: i64, allow_deletes: bool) {
        // A region's own clock moves forward between its writes (µs versions: two writes of one
        // row in one region never share a version); across regions they skew and interleave,
        // but two regions never write one row in the very same microsecond (see
        // `equal_versions_in_two_regions_defeat_the_unchanged_check`).
        let r = &mut self.regions[region as usize];
        let tick = (self.now + self.skew[region as usize]).max(r.clock + 1);
        r.clock = tick;
        let clock = tick * 4 + i64::from(region);
        r.seq += 1;
        let before = r.rows.get(&key).copied();
        let (op, after, stamp) = match before {
            Some(b) if kind == 6 && allow_deletes => {
                r.rows.remove(&key);
                // Capture records the local delete's tombstone.
                let stamp = Stamp { at_us: b.version, rank: region };
                let t = latest(r.tombstones.get(&key).copied(), stamp);
                r.tombstones.insert(key, t);
                self.deletes = true;
                (Op::Delete, None, stamp)
            }
            Some(b) => {
                let a = SimRow { payload, version: clock, writer: region, delta: b.delta + delta };
                r.rows.insert(key, a);
                *self.delta_sum.entry(key).or_default() += delta;
                (Op::Update, Some(a), Stamp { at_us: clock, rank: region })
            }
            None if allow_deletes => {
                let a = SimRow { payload, version: clock, writer: region, delta };
                r.rows.insert(key, a);
                (Op::Insert, Some(a), Stamp { at_us: clock, rank: region })
            }
            None => return,
        };
        let change = Change { origin: region, seq: r.seq, key, op, before, after, stamp };
        self.sent[region as usize].push(change.clone());
        for (i, other) in self.regions.iter_mut().enumerate() {
            if i as u32 != region {
                other.inbox.entry(region).or_default().push_back(change.clone());
            }
        }
    }

    fn deliver(&mut self, region: u32, origin: u32) {
        let r = &mut self.regions[region as usize];
        let Some(c) = r.inbox.get_mut(&origin).and_then(|q| q.pop_front()) else { return };
        if !r.applied.insert((c.origin, c.seq)) {
            return; // a replay: ferry.applied already covers it
        }
        apply(r, &c);
    }

    fn drain(&mut self) {
        loop {
            let mut moved = false;
            for region in 0..self.regions.len() as u32 {
                for origin in 0..self.regions.len() as u32 {
                    if self.regions[region as usize].inbox.get(&origin).is_some_and(|q| !q.is_empty()) {
                        self.deliver(region, origin);
                        moved = true;
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }
}

/// What apply does with a decision (the SQL in `apply` mirrors this).
fn apply(r: &mut Region, c: &Change) {
    let local = match r.rows.get(&c.key) {
        Some(row) => Local::Row {
            stamp: Stamp { at_us: row.version, rank: row.writer },
            version_us: Some(row.version),
        },
        None => Local::Gone { tombstone: r.tombstones.get(&c.key).copied() },
    };
    let incoming = Incoming { op: c.op, stamp: c.stamp, before_version_us: c.before.map(|b| b.version) };
    let change_delta = match (c.before, c.after) {
        (Some(b), Some(a)) => a.delta - b.delta,
        (None, Some(a)) => a.delta,
        _ => 0,
    };
    match decide(local, incoming).action {
        Action::Overwrite => {
            let a = c.after.expect("overwrite has an after image");
            let delta = r.rows.get(&c.key).map(|l| l.delta + change_delta).unwrap_or(a.delta);
            r.rows.insert(c.key, SimRow { delta, writer: c.stamp.rank, ..a });
        }
        Action::Insert => {
            let a = c.after.expect("insert has an after image");
            r.rows.insert(c.key, SimRow { writer: c.stamp.rank, ..a });
            r.tombstones.remove(&c.key);
        }
        Action::AddDelta => {
            if let Some(l) = r.rows.get_mut(&c.key) {
                l.delta += change_delta;
            }
        }
        Action::Delete | Action::Tombstone => {
            r.rows.remove(&c.key);
            let t = latest(r.tombstones.get(&c.key).copied(), c.stamp);
            r.tombstones.insert(c.key, t);
        }
        Action::Keep => {}
    }
}

fn visible(r: &Region) -> BTreeMap<u8, (i64, i64, i64)> {
    r.rows.iter().map(|(k, v)| (*k, (v.payload, v.version, v.delta))).collect()
}

fn write_step(regions: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..regions, 0u8..3, 0u8..7, -1000i64..1000, -5i64..5)
            .prop_map(|(region, key, kind, payload, delta)| Step::Write { region, key, kind, payload, delta }),
        1 => (0u8..3).prop_map(Step::Tick),
    ]
}

fn delivery_step(regions: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..regions, 0..regions).prop_map(|(region, origin)| Step::Deliver { region, origin }),
        1 => (0..regions, 0..regions).prop_map(|(region, origin)| Step::Duplicate { region, origin }),
    ]
}

/// The steps that concern only the first `regions` regions.
fn within(steps: &[Step], regions: u32) -> Vec<Step> {
    let keep = |s: &&Step| match s {
        Step::Write { region, .. } => *region < regions,
        Step::Deliver { region, origin } | Step::Duplicate { region, origin } => {
            *region < regions && *origin < regions
        }
        Step::Tick(_) => true,
    };
    steps.iter().filter(keep).cloned().collect()
}

/// Concurrent histories: every region writes (several times, to the same keys, with skewed
/// and colliding clocks) before any other region's change reaches it; then the changes are
/// delivered, interleaved across origins in any order, with duplicates.
fn concurrent(regions: u32, deletes: bool, writes: &[Step], deliveries: &[Step], skew: Vec<i64>) -> World {
    let mut w = World::new(regions, skew, true);
    for s in writes {
        w.run(s, deletes);
    }
    for s in deliveries {
        w.run(s, deletes);
    }
    w.drain();
    w
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Concurrent updates and stock deltas, two and three regions: all converge, and every
    /// delta column equals its initial value plus every delta written anywhere.
    #[test]
    fn concurrent_updates_converge_and_deltas_all_count(
        regions in 2u32..=3,
        writes in prop::collection::vec(write_step(3), 1..40),
        deliveries in prop::collection::vec(delivery_step(3), 0..60),
        skew in prop::collection::vec(-3i64..3, 3),
    ) {
        let (writes, deliveries) = (within(&writes, regions), within(&deliveries, regions));
        let w = concurrent(regions, false, &writes, &deliveries, skew[..regions as usize].to_vec());
        let first = visible(&w.regions[0]);
        for r in &w.regions[1..] {
            prop_assert_eq!(&first, &visible(r));
        }
        for (key, (_, _, delta)) in &first {
            prop_assert_eq!(*delta, w.delta_sum[key], "key {}", key);
        }
    }

    /// Concurrent updates, deletes and re-inserts of a table without delta columns, two and
    /// three regions: all converge. (A delete and a delta do not compose: a region that
    /// deleted a stock row has no quantity to add a concurrent sale to. PSI never deletes
    /// stock rows; the sandbox's delta columns are on `psi.stock` only.)
    #[test]
    fn concurrent_updates_and_deletes_converge(
        regions in 2u32..=3,
        writes in prop::collection::vec(write_step(3), 1..40),
        deliveries in prop::collection::vec(delivery_step(3), 0..60),
        skew in prop::collection::vec(-3i64..3, 3),
    ) {
        let (writes, deliveries) = (within(&writes, regions), within(&deliveries, regions));
        let w = concurrent(regions, true, &writes, &deliveries, skew[..regions as usize].to_vec());
        let lww = |r: &Region| -> BTreeMap<u8, (i64, i64)> { visible(r).into_iter().map(|(k, (p, v, _))| (k, (p, v))).collect() };
        let first = lww(&w.regions[0]);
        for r in &w.regions[1..] {
            prop_assert_eq!(&first, &lww(r));
        }
    }

    /// Two regions where changes also arrive between writes (each region writes on top of the
    /// other's rows, with skewed clocks): updates and deltas still converge and all count.
    #[test]
    fn two_regions_interleaved_converge_and_deltas_all_count(
        steps in prop::collection::vec(step(2), 1..120),
        skew in prop::collection::vec(-3i64..3, 2),
    ) {
        let mut w = World::new(2, skew, true);
        for s in &steps {
            w.run(s, false);
        }
        w.drain();
        let a = visible(&w.regions[0]);
        prop_assert_eq!(&a, &visible(&w.regions[1]));
        for (key, (_, _, delta)) in &a {
            prop_assert_eq!(*delta, w.delta_sum[key], "key {}", key);
        }
    }
}

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

/// The limit of last-write-wins on a version column, pinned down: region 0's write beats
/// region 1's concurrent one; region 2, whose clock is behind, then overwrites region 0's row
/// with an *older* version. Regions 0 and 1 apply that causally (their row is the one it
/// replaced); region 2 meets region 1's write after its own and lets the later version win.
/// No rule that sees only versions can tell; the clock-skew alert is the guard.
#[test]
fn three_regions_with_skewed_clocks_can_diverge() {
    let mut w = World::new(3, vec![1, 0, -1], true);
    let write = |region| Step::Write { region, key: 1, kind: 0, payload: i64::from(region), delta: 0 };
    for s in [write(0), Step::Deliver { region: 2, origin: 0 }, write(1), write(2)] {
        w.run(&s, false);
    }
    w.drain();
    assert_eq!(visible(&w.regions[0]), visible(&w.regions[1]));
    assert_ne!(visible(&w.regions[0]), visible(&w.regions[2]));
}

/// The other limit, pinned down: "the local row is what the origin saw" is judged by version.
/// When two regions write one row in the same microsecond, region 0's write wins the tie
/// everywhere; region 1 then deletes its own (losing) row, and region 0 mistakes that delete
/// for one of its own row, so region 0 ends without the row and region 1 with it.
#[test]
fn equal_versions_in_two_regions_defeat_the_unchanged_check() {
    let a = Stamp { at_us: 7, rank: 0 };
    let b = Stamp { at_us: 7, rank: 1 };
    // Region 0 holds its own row at version 7; region 1's delete saw its own row at version 7.
    let local = Local::Row { stamp: a, version_us: Some(7) };
    let delete = Incoming { op: Op::Delete, stamp: b, before_version_us: Some(7) };
    assert_eq!(decide(local, delete), Decision { action: Action::Delete, conflict: None });
    // Region 1 holds the tombstone; region 0's row wins the tie and comes back there.
    let gone = Local::Gone { tombstone: Some(b) };
    let update = Incoming { op: Op::Update, stamp: a, before_version_us: Some(6) };
    assert_eq!(decide(gone, update).action, Action::Insert);
}
