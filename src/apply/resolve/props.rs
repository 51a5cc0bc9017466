//! The real planner against random histories. Regions write the same rows concurrently
//! (inserts, updates, deletes, a delta column, a unique column, versions that tie across
//! regions); every change reaches every other region in origin order, interleaved across
//! origins, in groups of several transactions, with duplicates (skipped as `ferry.applied`
//! does). Each delivery runs what apply runs: `items`, `Plan::decide` over what the region
//! holds (the rows of the group's keys, their tombstones and writers, the rows holding the
//! unique values written, read the way `Shape::read` and `Shape::read_holders` read them),
//! then the plan's effects are carried out on an in-memory table the way `Plan::statements`
//! writes them. Every region must end identical, every delta must count, and no write may
//! break the unique column.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;
use crate::model::MariaGtid;

const VERSION: &str = "updated_at";

fn region_name(i: u32) -> String {
    format!("r{i}")
}

/// The rules as region `here` of `regions` sees them.
fn rules(regions: u32, here: u32) -> Rules {
    let mut yaml = format!("region: r{here}\nregions:\n");
    for i in 0..regions {
        yaml.push_str(&format!(
            "  r{i}:\n    priority: {}\n    mysql: {{ user: u, password: p, gtid_domain_id: {}, primary: {{ host: h, server_id: {} }} }}\n    \
             kafka: {{ bootstrap: [\"k:9092\"] }}\n",
            i + 1,
            i + 1,
            i + 1
        ));
    }
    yaml.push_str("conflicts:\n  tables:\n    t.r: { delta_columns: [qty] }\n");
    Rules::from_config(&crate::config::load_str("test", &yaml, Vec::new()).unwrap())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cells {
    code: i64,
    payload: i64,
    qty: i64,
    version: i64,
}

fn image(id: i64, c: Cells) -> Row {
    Row(vec![
        ("id".into(), Value::Int { v: id }),
        ("code".into(), Value::Int { v: c.code }),
        ("payload".into(), Value::Int { v: c.payload }),
        ("qty".into(), Value::Int { v: c.qty }),
        (VERSION.into(), Value::Int { v: c.version }),
    ])
}

fn int(row: &Row, column: &str) -> i64 {
    match row.get(column) {
        Some(Value::Int { v }) => *v,
        other => panic!("{column}: {other:?}"),
    }
}

fn cells(row: &Row) -> Cells {
    Cells {
        code: int(row, "code"),
        payload: int(row, "payload"),
        qty: int(row, "qty"),
        version: int(row, VERSION),
    }
}

fn change(op: Op, id: i64, before: Option<Cells>, after: Option<Cells>) -> RowChange {
    RowChange {
        db: "t".into(),
        table: "r".into(),
        op,
        key: Row(vec![("id".into(), Value::Int { v: id })]),
        before: before.map(|c| image(id, c)),
        after: after.map(|c| image(id, c)),
        generated: Vec::new(),
    }
}

fn key_of(id: i64) -> String {
    key_text(
        &change(Op::Delete, id, None, None),
        &image(id, Cells { code: 0, payload: 0, qty: 0, version: 0 }),
    )
}

/// One region's copy of `t.r` and ferry's tables for it.
#[derive(Debug, Clone, Default)]
struct Table {
    rows: BTreeMap<i64, Row>,
    tombstones: HashMap<String, Stamp>,
    origins: HashMap<String, Stamp>,
}

impl Table {
    /// What `Shape::read` and `Shape::read_holders` find for `items`.
    fn known(&self, items: &[Item<'_>]) -> Known {
        let mut known = Known::default();
        let group: HashSet<&str> = items.iter().map(|i| i.key.as_str()).collect();
        for (id, row) in &self.rows {
            let key = key_of(*id);
            if group.contains(key.as_str()) {
                known.rows.insert(key, (version_of(row, VERSION), serde_json::to_value(row).unwrap()));
            }
        }
        for key in &group {
            if let Some(t) = self.tombstones.get(*key) {
                known.tombstones.insert(key.to_string(), *t);
            }
            if let Some(o) = self.origins.get(*key) {
                known.origins.insert(key.to_string(), *o);
            }
        }
        for (i, item) in items.iter().enumerate() {
            let Some(code) = item.image.as_ref().and_then(|im| im.get("code")).cloned() else { continue };
            for (id, row) in &self.rows {
                let key = key_of(*id);
                if row.get("code") != Some(&code) || group.contains(key.as_str()) {
                    continue;
                }
                if let Some(o) = self.origins.get(&key) {
                    known.origins.insert(key.clone(), *o);
                }
                known.holders.entry(i).or_default().push(Holder {
                    columns: vec!["code".into()],
                    values: vec![code.clone()],
                    key,
                    version: version_of(row, VERSION),
                    image: serde_json::to_value(row).unwrap(),
                });
            }
        }
        known
    }

    /// Carry out `plan` as `Plan::statements` writes it: evicted unique holders, deletes of
    /// rows that existed, upserts (a key absent when read is a plain insert), delta-only
    /// updates of existing rows, tombstones, row origins.
    fn write(&mut self, plan: &Plan, origins: bool) -> Result<(), String> {
        for (columns, values) in &plan.evicted {
            self.rows.retain(|_, row| columns.iter().zip(values).any(|(c, v)| row.get(c) != Some(v)));
        }
        let id_of = |s: &KeyState| int(&s.key_row, "id");
        for (_, s) in &plan.states {
            if s.existed && matches!(s.effect, Effect::Deleted) {
                self.rows.remove(&id_of(s));
            }
        }
        for (key, s) in &plan.states {
            let id = id_of(s);
            let add = |base: i64, deltas: &BTreeMap<String, Num>| {
                let d = deltas.get("qty").copied().unwrap_or(Num::ZERO);
                match Num::of(&Value::Int { v: base }).and_then(|b| b.checked_add(d)).map(Num::to_value) {
                    Some(Value::Int { v }) => v,
                    other => panic!("qty {base} + {d:?} = {other:?}"),
                }
            };
            match &s.effect {
                Effect::None | Effect::Deleted => {}
                Effect::Absolute(image) => {
                    if !s.existed && self.rows.contains_key(&id) {
                        return Err(format!("insert of {key}: the row exists"));
                    }
                    self.rows.insert(id, image.clone());
                }
                Effect::Relative { image: Some(image), deltas } => {
                    let base = self.rows.get(&id).map(|r| int(r, "qty")).unwrap_or(0);
                    let mut row = image.clone();
                    for (c, v) in &mut row.0 {
                        if c == "qty" {
                            *v = Value::Int { v: add(base, deltas) };
                        }
                    }
                    self.rows.insert(id, row);
                }
                Effect::Relative { image: None, deltas } => {
                    if let Some(row) = self.rows.get_mut(&id) {
                        let qty = add(int(row, "qty"), deltas);
                        for (c, v) in &mut row.0 {
                            if c == "qty" {
                                *v = Value::Int { v: qty };
                            }
                        }
                    }
                }
            }
            if s.tombstone != s.initial_tombstone {
                match s.tombstone {
                    Some(t) => self.tombstones.insert(key.clone(), t),
                    None => self.tombstones.remove(key),
                };
            }
            if origins
                && matches!(s.effect, Effect::Absolute(_) | Effect::Relative { image: Some(_), .. })
                && let Local::Row { stamp, .. } = s.local
            {
                self.origins.insert(key.clone(), stamp);
            }
        }
        let mut codes = BTreeSet::new();
        for row in self.rows.values() {
            if !codes.insert(int(row, "code")) {
                return Err(format!("two rows hold code {}", int(row, "code")));
            }
        }
        Ok(())
    }

    fn visible(&self) -> BTreeMap<i64, Cells> {
        self.rows.iter().map(|(id, row)| (*id, cells(row))).collect()
    }
}

#[derive(Debug, Clone)]
struct Sent {
    seq: u64,
    change: RowChange,
}

#[derive(Debug, Clone, Default)]
struct Region {
    table: Table,
    /// Per origin, what arrived and was not applied yet.
    inbox: BTreeMap<u32, VecDeque<Sent>>,
    applied: BTreeSet<(u32, u64)>,
    seq: u64,
    clock: i64,
}

/// What a history may contain.
#[derive(Debug, Clone, Copy)]
struct Mix {
    /// Versions of one region's writes tie with another region's (at most one write per
    /// region per tick, so a region never ties with itself).
    ties: bool,
    /// Deletes and inserts (re-inserts) of rows.
    deletes: bool,
    /// Writes move the unique column to values other rows hold. Each row is written once
    /// (by one region) and without deltas: the loser of a unique-key conflict is deleted, so a
    /// delta to it is lost as with a delete, and a row deleted because its holder won can
    /// diverge if the holder then moves on (`a_unique_loser_deleted_before_its_holder_moves_on_diverges`).
    moves: bool,
}

#[derive(Debug, Clone)]
enum Step {
    /// Region writes row `id`: kind 0..=5 update or insert, 6 delete.
    Write { region: u32, id: i64, kind: u8, code: i64, payload: i64, delta: i64 },
    /// Region applies up to `n` of origin's next transactions as one group.
    Deliver { region: u32, origin: u32, n: usize },
    /// The last transaction of origin reaches region again.
    Duplicate { region: u32, origin: u32 },
    /// Global time moves on (0 keeps it: versions tie across regions).
    Tick(u8),
}

struct World {
    /// Per region, the rules as it sees them.
    rules: Vec<Rules>,
    regions: Vec<Region>,
    now: i64,
    /// Each row's delta changes written anywhere, summed (what `qty` must show).
    delta_sum: BTreeMap<i64, i64>,
    sent: Vec<Vec<Sent>>,
    mix: Mix,
    /// Conflicts the planner logged, per kind.
    conflicts: BTreeMap<&'static str, usize>,
    /// Rows written so far (with moves, each row is written once: see `Mix::moves`).
    written: BTreeSet<i64>,
    /// Let the histories do what the properties exclude (a region writing a version older
    /// than what it observed, a row written again after a unique-key conflict): for the
    /// tests that pin those limits down.
    unguarded: bool,
}

impl World {
    fn new(n: u32, mix: Mix) -> Self {
        let mut regions = vec![Region::default(); n as usize];
        let mut delta_sum = BTreeMap::new();
        for id in 0..3 {
            let row = image(id, Cells { code: id, payload: 0, qty: 100, version: 1 });
            for r in &mut regions {
                r.table.rows.insert(id, row.clone());
            }
            delta_sum.insert(id, 100);
        }
        Self {
            rules: (0..n).map(|here| rules(n, here)).collect(),
            regions,
            now: 1_000,
            delta_sum,
            sent: vec![Vec::new(); n as usize],
            mix,
            conflicts: BTreeMap::new(),
            written: BTreeSet::new(),
            unguarded: false,
        }
    }

    fn run(&mut self, step: &Step) -> Result<(), String> {
        match *step {
            Step::Tick(n) => self.now += i64::from(n),
            Step::Write { region, id, kind, code, payload, delta } => {
                self.write(region, id, kind, code, payload, delta)
            }
            Step::Deliver { region, origin, n } => self.deliver(region, origin, n)?,
            Step::Duplicate { region, origin } => {
                if region != origin
                    && let Some(last) = self.sent[origin as usize].last().cloned()
                {
                    self.regions[region as usize].inbox.entry(origin).or_default().push_back(last);
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, region: u32, id: i64, kind: u8, code: i64, payload: i64, delta: i64) {
        let Mix { ties, deletes, moves } = self.mix;
        // Without moves the unique column keeps the row's id; with them, no deltas.
        let (code, delta) = if moves { (code, 0) } else { (id, delta) };
        let regions = self.regions.len() as i64;
        let r = &mut self.regions[region as usize];
        // A region's clock moves forward between its writes, and its write of a row is newer
        // than the row (or tombstone) it replaces: clocks are synchronized well enough for
        // that. (A region whose clock is behind what it observed can diverge three regions:
        // `three_regions_with_skewed_clocks_can_diverge` pins that limit.)
        let observed = r.table.rows.get(&id).map(|row| int(row, VERSION)).into_iter();
        let observed =
            observed.chain(r.table.tombstones.get(&key_of(id)).map(|t| t.at_us)).max().unwrap_or(0);
        // Unguarded, a region's clock is whatever `unguarded` set it to (skewed).
        let (observed, now) = if self.unguarded { (0, 0) } else { (observed, self.now) };
        let tick = now.max(r.clock + 1).max(observed / regions + 1);
        r.clock = tick;
        // With ties, two regions writing in one tick write the same version; without, each
        // region's versions are its own residue.
        let version = if ties { tick * regions } else { tick * regions + i64::from(region) };
        if moves && !self.written.insert(id) && !self.unguarded {
            return;
        }
        let before = r.table.rows.get(&id).map(cells);
        // The application's own unique check: a value another row holds here is refused.
        let taken = r.table.rows.iter().any(|(other, row)| *other != id && int(row, "code") == code);
        let (op, after) = match before {
            Some(b) if kind == 6 && deletes => {
                r.table.rows.remove(&id);
                // Capture records the tombstone of a delete made here.
                let stamp = Stamp { at_us: b.version, rank: region };
                let t = latest(r.table.tombstones.get(&key_of(id)).copied(), stamp);
                r.table.tombstones.insert(key_of(id), t);
                (Op::Delete, None)
            }
            _ if taken => return,
            Some(b) => {
                let a = Cells { code, payload, qty: b.qty + delta, version };
                r.table.rows.insert(id, image(id, a));
                *self.delta_sum.entry(id).or_default() += delta;
                (Op::Update, Some(a))
            }
            None if deletes => {
                let a = Cells { code, payload, qty: delta, version };
                r.table.rows.insert(id, image(id, a));
                (Op::Insert, Some(a))
            }
            None => return,
        };
        r.seq += 1;
        let sent = Sent { seq: r.seq, change: change(op, id, before, after) };
        self.sent[region as usize].push(sent.clone());
        for (i, other) in self.regions.iter_mut().enumerate() {
            if i as u32 != region {
                other.inbox.entry(region).or_default().push_back(sent.clone());
            }
        }
    }

    /// Apply origin's next `n` transactions at `region` as one group, through the planner.
    fn deliver(&mut self, region: u32, origin: u32, n: usize) -> Result<(), String> {
        let rules = &self.rules[region as usize];
        let r = &mut self.regions[region as usize];
        let mut group = Vec::new();
        while group.len() < n {
            let Some(sent) = r.inbox.get_mut(&origin).and_then(|q| q.pop_front()) else { break };
            if r.applied.insert((origin, sent.seq)) {
                group.push(sent);
            }
        }
        if group.is_empty() {
            return Ok(());
        }
        let origin_name = region_name(origin);
        let gtids: Vec<Gtid> = group
            .iter()
            .map(|s| Gtid::MariaDb(MariaGtid { domain: origin + 1, server_id: origin + 1, seq: s.seq }))
            .collect();
        let sourced: Vec<Sourced<'_>> = group
            .iter()
            .zip(&gtids)
            .map(|(s, gtid)| Sourced { change: &s.change, origin: &origin_name, gtid, commit_us: 0 })
            .collect();
        let policy = rules.policy("t", "r").expect("t.r is governed");
        let items = items(rules, &policy, &sourced).map_err(|e| e.to_string())?;
        let known = r.table.known(&items);
        // Versions are small numbers: "now" far ahead of them, so none is clock skew.
        let plan = Plan::decide(rules, &items, &known, 1 << 50).map_err(|e| e.to_string())?;
        for c in &plan.conflicts {
            *self.conflicts.entry(c.kind.as_str()).or_default() += 1;
        }
        r.table.write(&plan, rules.track_writers())
    }

    fn drain(&mut self) -> Result<(), String> {
        loop {
            let mut moved = false;
            for region in 0..self.regions.len() as u32 {
                for origin in 0..self.regions.len() as u32 {
                    if self.regions[region as usize].inbox.get(&origin).is_some_and(|q| !q.is_empty()) {
                        self.deliver(region, origin, 1)?;
                        moved = true;
                    }
                }
            }
            if !moved {
                return Ok(());
            }
        }
    }
}

fn write_step(regions: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..regions, 0i64..4, 0u8..7, 0i64..5, -1000i64..1000, -5i64..5).prop_map(
            |(region, id, kind, code, payload, delta)| Step::Write { region, id, kind, code, payload, delta }
        ),
        1 => (0u8..3).prop_map(Step::Tick),
    ]
}

fn delivery_step(regions: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..regions, 0..regions, 1usize..2).prop_map(|(region, origin, n)| Step::Deliver { region, origin, n }),
        1 => (0..regions, 0..regions).prop_map(|(region, origin)| Step::Duplicate { region, origin }),
    ]
}

fn any_step(regions: u32) -> impl Strategy<Value = Step> {
    prop_oneof![write_step(regions), delivery_step(regions)]
}

/// The steps that concern only the first `regions` regions (deliveries to self dropped).
fn within(steps: &[Step], regions: u32) -> Vec<Step> {
    let keep = |s: &&Step| match s {
        Step::Write { region, .. } => *region < regions,
        Step::Deliver { region, origin, .. } | Step::Duplicate { region, origin } => {
            *region < regions && *origin < regions && region != origin
        }
        Step::Tick(_) => true,
    };
    steps.iter().filter(keep).cloned().collect()
}

/// Run `steps`, deliver everything, and check: every region identical, no unique value held
/// twice (checked at every write), and, without deletes or moves, `qty` = initial + every
/// delta.
fn converges(regions: u32, mix: Mix, steps: &[Step]) -> Result<World, TestCaseError> {
    let mut w = World::new(regions, mix);
    for s in steps {
        w.run(s).map_err(TestCaseError::fail)?;
    }
    w.drain().map_err(TestCaseError::fail)?;
    // With deletes, the delta column is left out: a delete and a delta do not compose (a
    // region that deleted a row has nothing to add a concurrent change's delta to; PSI never
    // deletes its stock rows), which README states.
    let seen = |t: &Table| -> BTreeMap<i64, Cells> {
        t.visible()
            .into_iter()
            .map(|(id, c)| (id, Cells { qty: if mix.deletes { 0 } else { c.qty }, ..c }))
            .collect()
    };
    let first = seen(&w.regions[0].table);
    for (i, r) in w.regions.iter().enumerate().skip(1) {
        prop_assert_eq!(&first, &seen(&r.table), "region r{} differs from r0", i);
    }
    if !mix.deletes && !mix.moves {
        for (id, c) in &first {
            prop_assert_eq!(c.qty, w.delta_sum[id], "row {}: qty", id);
        }
    }
    Ok(w)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Concurrent updates of the delta column, versions tying across regions, two and three
    /// regions, any interleaving and grouping of deliveries, with duplicates: all converge
    /// and every delta counts.
    #[test]
    fn concurrent_updates_with_ties_converge_and_every_delta_counts(
        regions in 2u32..=3,
        writes in prop::collection::vec(write_step(3), 1..40),
        deliveries in prop::collection::vec(delivery_step(3), 0..60),
    ) {
        let mut steps = within(&writes, regions);
        steps.extend(within(&deliveries, regions));
        converges(regions, Mix { ties: true, deletes: false, moves: false }, &steps)?;
    }

    /// Updates and deltas with writes and deliveries interleaved and tying versions: each
    /// region also writes on top of rows the others' changes made.
    #[test]
    fn interleaved_updates_with_ties_converge_and_every_delta_counts(
        regions in 2u32..=3,
        steps in prop::collection::vec(any_step(3), 1..120),
    ) {
        converges(regions, Mix { ties: true, deletes: false, moves: false }, &within(&steps, regions))?;
    }

    /// Updates that move the unique column onto values other rows hold, concurrently, with
    /// tying versions: all converge and no unique value is ever held twice.
    #[test]
    fn unique_collisions_with_ties_converge_and_never_duplicate_a_value(
        regions in 2u32..=3,
        steps in prop::collection::vec(any_step(3), 1..120),
    ) {
        converges(regions, Mix { ties: true, deletes: false, moves: true }, &within(&steps, regions))?;
    }

    /// Inserts, updates, deletes and re-inserts, two and three regions, writes and deliveries
    /// interleaved: all converge.
    #[test]
    fn inserts_updates_deletes_and_reinserts_converge(
        regions in 2u32..=3,
        steps in prop::collection::vec(any_step(3), 1..100),
    ) {
        converges(regions, Mix { ties: true, deletes: true, moves: false }, &within(&steps, regions))?;
    }

    /// Inserts and deletes with unique collisions, two and three regions: all converge and no
    /// unique value is ever held twice.
    #[test]
    fn inserts_deletes_and_unique_collisions_converge(
        regions in 2u32..=3,
        steps in prop::collection::vec(any_step(3), 1..100),
    ) {
        converges(regions, Mix { ties: false, deletes: true, moves: true }, &within(&steps, regions))?;
    }
}

/// The generator reaches the cases the properties are about, in a fixed sample of histories:
/// versions tying across regions, and conflicts of every kind.
#[test]
fn the_histories_produce_ties_and_conflicts_of_every_kind() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut ties = 0;
    for i in 0..400 {
        let mix = match i % 4 {
            0 => Mix { ties: true, deletes: false, moves: false },
            1 => Mix { ties: true, deletes: false, moves: true },
            2 => Mix { ties: false, deletes: true, moves: false },
            _ => Mix { ties: false, deletes: true, moves: true },
        };
        let steps = prop::collection::vec(any_step(2), 1..120).new_tree(&mut runner).unwrap().current();
        let w = converges(2, mix, &within(&steps, 2)).unwrap();
        for (kind, n) in w.conflicts {
            *kinds.entry(kind).or_default() += n;
        }
        let version = |s: &Sent| s.change.after.as_ref().map(|a| int(a, VERSION));
        let theirs: BTreeSet<i64> = w.sent[1].iter().filter_map(version).collect();
        ties += w.sent[0].iter().filter_map(version).filter(|v| theirs.contains(v)).count();
    }
    assert!(ties > 50, "{ties} versions written in both regions");
    for kind in ["update_update", "unique_key", "insert_insert", "update_delete", "delete_update"] {
        assert!(kinds.get(kind).copied().unwrap_or(0) > 10, "{kind}: {kinds:?}");
    }
}

/// A world that runs `steps` without the properties' guards, then delivers everything.
fn unguarded(regions: u32, mix: Mix, skew: &[i64], steps: &[Step]) -> World {
    let mut w = World::new(regions, mix);
    w.unguarded = true;
    for s in steps {
        if let Step::Write { region, .. } = s {
            // A region's clock, skewed from global time.
            let clock = &mut w.regions[*region as usize].clock;
            *clock = (*clock).max(w.now + skew[*region as usize] - 1);
        }
        w.run(s).unwrap();
    }
    w.drain().unwrap();
    w
}

fn update(region: u32, id: i64, code: i64) -> Step {
    Step::Write { region, id, kind: 0, code, payload: i64::from(region), delta: 0 }
}

/// The limit of last-write-wins on a version column, pinned down: region 0's write beats
/// region 1's concurrent one; region 2, whose clock is behind, then overwrites region 0's row
/// with an *older* version. Regions 0 and 1 apply that causally (their row is the one it
/// replaced); region 2 meets region 1's write after its own and lets the later version win.
/// No rule that sees only versions can tell; the clock-skew alert is the guard.
#[test]
fn three_regions_with_skewed_clocks_can_diverge() {
    let mix = Mix { ties: false, deletes: false, moves: false };
    let steps =
        [update(0, 1, 1), Step::Deliver { region: 2, origin: 0, n: 1 }, update(1, 1, 1), update(2, 1, 1)];
    let w = unguarded(3, mix, &[2, 0, -2], &steps);
    let visible: Vec<_> = w.regions.iter().map(|r| r.table.visible()).collect();
    assert_eq!(visible[0], visible[1], "{visible:?}");
    assert_ne!(visible[0], visible[2], "{visible:?}");
}

/// The limit of deciding unique values by deleting the loser, pinned down: region 0 moves row
/// 0 to code 3 while region 1 moves row 2 to code 3 (newer) and region 0 then moves row 2 on
/// to code 2. In region 1, row 0 loses code 3 to row 2 and is deleted; row 2 then moves on,
/// but the deleted row does not come back. Region 0 never sees row 2 take code 3 (its own
/// later write wins), so it keeps row 0. The conflict log holds the deleted row.
#[test]
fn a_unique_loser_deleted_before_its_holder_moves_on_diverges() {
    let mix = Mix { ties: true, deletes: false, moves: true };
    // (Region 1's second write is refused there, row 0 holding code 0: it only moves its clock.)
    let steps = [
        update(1, 0, 0),
        update(1, 1, 0),
        update(1, 0, 0),
        update(0, 0, 0),
        update(0, 0, 0),
        update(0, 0, 3),
        update(1, 2, 3),
        update(0, 2, 2),
    ];
    let w = unguarded(2, mix, &[0, 0], &steps);
    let (r0, r1) = (w.regions[0].table.visible(), w.regions[1].table.visible());
    assert!(r0.contains_key(&0) && !r1.contains_key(&0), "r0 {r0:?} r1 {r1:?}");
}
