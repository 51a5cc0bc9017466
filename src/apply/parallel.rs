//! Parallel apply: which groups may execute together, and the order they commit in.
//!
//! Groups (consecutive origin transactions applied as one local transaction) are numbered in
//! origin order. A group waits before executing until every earlier group that touches one of
//! its rows has committed ([`KeyTracker`]); groups with disjoint rows execute at the same time
//! on different connections. Every group commits in number order ([`Sequencer`]), so
//! `ferry.applied` only ever moves forward over a gap-free prefix and the local binlog records
//! the origin's GTIDs in the origin's order: a crash at any point neither loses nor repeats a
//! transaction, exactly as with one connection.
//!
//! Primary keys are not the only way two groups can meet: a unique secondary key or a foreign
//! key can make a group wait on a lock held by a later group that is itself waiting to commit
//! after it. The apply session's short lock wait turns that into an error; the group then
//! aborts everything in flight (each later group rolls back and re-executes alone, in order)
//! and retries when it is first in line. That is optimistic parallel replication: correct
//! always, parallel whenever the rows allow.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use tokio::sync::watch;

use super::reassemble::Transaction;
use crate::model::{Row, Value};

/// Unique keys and foreign keys of the target's tables: what besides the primary key makes
/// two groups touch "the same row" (the write set MySQL's own dependency tracking uses).
#[derive(Debug, Default, Clone)]
pub struct KeyCatalog {
    tables: HashMap<TableName, TableKeys>,
}

/// `(schema, table)`
type TableName = (String, String);
/// `(index name, its columns in order)`
type Index = (String, Vec<String>);

#[derive(Debug, Default, Clone)]
struct TableKeys {
    /// Unique indexes other than the primary key.
    uniques: Vec<Index>,
    /// Foreign keys: the child's columns and the parent's unique index they reference.
    parents: Vec<ParentKey>,
}

struct ForeignKey {
    parent: TableName,
    columns: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct ParentKey {
    columns: Vec<String>,
    db: String,
    table: String,
    index: String,
}

impl KeyCatalog {
    /// Build from `(schema, table, index, column)` rows of unique indexes (in index column
    /// order) and `(schema, table, constraint, column, parent schema, parent table, parent
    /// column)` rows of foreign keys (in key column order). A foreign key whose parent columns
    /// are not a unique index of the parent is left out (the lock it takes is then met by the
    /// optimistic abort instead).
    pub fn new(
        uniques: Vec<(String, String, String, String)>,
        foreign: Vec<(String, String, String, String, String, String, String)>,
    ) -> Self {
        let mut indexes: HashMap<TableName, Vec<Index>> = HashMap::new();
        for (db, table, index, column) in uniques {
            let list = indexes.entry((db, table)).or_default();
            match list.iter_mut().find(|(name, _)| *name == index) {
                Some((_, cols)) => cols.push(column),
                None => list.push((index, vec![column])),
            }
        }
        let mut catalog = Self::default();
        // (child table, constraint) → parent table and (child column, parent column) pairs
        let mut fks: std::collections::BTreeMap<(TableName, String), ForeignKey> = Default::default();
        for (db, table, name, column, pdb, ptable, pcolumn) in foreign {
            let fk = fks
                .entry(((db, table), name))
                .or_insert_with(|| ForeignKey { parent: (pdb, ptable), columns: Vec::new() });
            fk.columns.push((column, pcolumn));
        }
        for (((db, table), _), ForeignKey { parent, columns: cols }) in fks {
            let parent_columns: Vec<&String> = cols.iter().map(|(_, p)| p).collect();
            let Some((index, _)) = indexes.get(&parent).and_then(|list| {
                list.iter().find(|(_, icols)| icols.iter().collect::<Vec<_>>() == parent_columns)
            }) else {
                continue;
            };
            catalog.tables.entry((db, table)).or_default().parents.push(ParentKey {
                columns: cols.into_iter().map(|(c, _)| c).collect(),
                db: parent.0,
                table: parent.1,
                index: index.clone(),
            });
        }
        for ((db, table), list) in indexes {
            let keys = catalog.tables.entry((db, table)).or_default();
            keys.uniques = list.into_iter().filter(|(name, _)| name != "PRIMARY").collect();
        }
        catalog
    }

    /// The unique indexes of a table other than its primary key: `(name, columns)`.
    pub fn uniques(&self, db: &str, table: &str) -> &[(String, Vec<String>)] {
        self.get(db, table).map(|k| k.uniques.as_slice()).unwrap_or_default()
    }

    fn get(&self, db: &str, table: &str) -> Option<&TableKeys> {
        self.tables.get(&(db.to_string(), table.to_string()))
    }
}

/// What a group touches, as hashes of (schema, table, index, values): each row's primary key
/// (the before and the after key of an update that changes it), the values of its unique keys
/// in both images (a value freed by one group may be taken by a later one), and, for a child
/// row, its parent's key (the foreign-key check locks the parent). A table without a primary
/// key counts as one row. Text is case-folded and trailing spaces are dropped (most
/// collations compare that way), so a hash can only make two groups wait for each other
/// needlessly, never miss a shared row.
pub fn row_keys(group: &[Transaction], catalog: &KeyCatalog) -> Keys {
    let mut keys: Vec<u64> = Vec::new();
    let mut parents: Vec<u64> = Vec::new();
    for change in group.iter().flat_map(|t| &t.rows) {
        let images = [change.before.as_ref(), change.after.as_ref()];
        let key_columns: Vec<&str> = change.key.columns().collect();
        if key_columns.is_empty() {
            keys.push(key_hash(&change.db, &change.table, "", []));
        }
        let table = catalog.get(&change.db, &change.table);
        for image in images.into_iter().flatten() {
            if !key_columns.is_empty()
                && let Some(values) = values_of(image, &key_columns)
            {
                keys.push(key_hash(&change.db, &change.table, "PRIMARY", values));
            }
            let Some(table) = table else { continue };
            for (index, columns) in &table.uniques {
                if let Some(values) = values_of(image, columns) {
                    keys.push(key_hash(&change.db, &change.table, index, values));
                }
            }
            for parent in &table.parents {
                if let Some(values) = values_of(image, &parent.columns) {
                    parents.push(key_hash(&parent.db, &parent.table, &parent.index, values));
                }
            }
        }
        if change.before.is_none() && change.after.is_none() && !key_columns.is_empty() {
            keys.push(key_hash(&change.db, &change.table, "PRIMARY", change.key.0.iter().map(|(_, v)| v)));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    parents.sort_unstable();
    parents.dedup();
    parents.retain(|p| keys.binary_search(p).is_err());
    Keys { writes: keys, reads: parents }
}

/// What a group touches: rows it writes, and parent rows it only references (the foreign-key
/// check takes a shared lock: two groups referencing one parent do not wait for each other,
/// but a group writing the parent and one referencing it do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    pub writes: Vec<u64>,
    pub reads: Vec<u64>,
}

/// The values of `columns` in `image`, in that order; None when one is missing or NULL (a NULL
/// never collides in a unique index, and a NULL foreign key references nothing).
pub fn values_of<'a, S: AsRef<str>>(image: &'a Row, columns: &[S]) -> Option<Vec<&'a Value>> {
    columns
        .iter()
        .map(|c| {
            image.0.iter().find(|(name, _)| name == c.as_ref()).map(|(_, v)| v).filter(|v| **v != Value::Null)
        })
        .collect()
}

fn key_hash<'a>(db: &str, table: &str, index: &str, values: impl IntoIterator<Item = &'a Value>) -> u64 {
    let mut h = DefaultHasher::new();
    db.hash(&mut h);
    table.hash(&mut h);
    index.hash(&mut h);
    for value in values {
        hash_value(value, &mut h);
    }
    h.finish()
}

fn hash_value(value: &Value, h: &mut DefaultHasher) {
    let folded = |s: &str, h: &mut DefaultHasher| s.trim_end_matches(' ').to_lowercase().hash(h);
    match value {
        Value::Null => 0u8.hash(h),
        Value::Int { v } => i128::from(*v).hash(h),
        Value::Uint { v } => i128::from(*v).hash(h),
        Value::Year { v } => i128::from(*v).hash(h),
        Value::Bit { v, .. } => i128::from(*v).hash(h),
        Value::Float { v } => f64::from(*v).to_bits().hash(h),
        Value::Double { v } => v.to_bits().hash(h),
        Value::Bytes { v } => v.hash(h),
        Value::Text { v } | Value::Enum { v } => folded(v, h),
        Value::Set { v } => folded(&v.join(","), h),
        Value::Decimal { v }
        | Value::Date { v }
        | Value::Datetime { v, .. }
        | Value::Timestamp { v, .. }
        | Value::Time { v, .. }
        | Value::Json { v } => v.hash(h),
    }
}

/// For each key, the last group that writes it and the last that only references it.
#[derive(Debug, Default)]
pub struct KeyTracker {
    last: HashMap<u64, Last>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Last {
    write: u64,
    read: u64,
}

impl KeyTracker {
    /// Record that group `seq` touches `keys`; returns the latest earlier group it conflicts
    /// with (0 when none), which must commit before `seq` executes: a write waits for the last
    /// write and the last reference of its key, a reference only for the last write.
    pub fn register(&mut self, seq: u64, keys: &Keys) -> u64 {
        let mut after = 0;
        for key in &keys.writes {
            let last = self.last.entry(*key).or_default();
            after = after.max(last.write).max(last.read);
            last.write = seq;
        }
        for key in &keys.reads {
            let last = self.last.entry(*key).or_default();
            after = after.max(last.write);
            last.read = seq;
        }
        after
    }

    /// Forget keys whose last groups have committed: nothing waits on them any more.
    pub fn forget_through(&mut self, committed: u64) {
        self.last.retain(|_, last| last.write.max(last.read) > committed);
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Turn {
    /// The last group committed (or skipped); groups commit in number order.
    committed: u64,
    /// Bumped by every abort.
    aborts: u64,
    /// Groups up to this one were in flight at the last abort: each executes alone, when it
    /// is first in line. Later groups execute only once it has committed.
    barrier: u64,
    /// The last group handed to a connection.
    dispatched: u64,
}

/// The commit order of one origin's groups, shared by its connections.
#[derive(Debug)]
pub struct Sequencer {
    turn: watch::Sender<Turn>,
}

impl Default for Sequencer {
    fn default() -> Self {
        Self { turn: watch::Sender::new(Turn::default()) }
    }
}

impl Sequencer {
    /// Group `seq` has been handed to a connection.
    pub fn dispatched(&self, seq: u64) {
        self.turn.send_if_modified(|t| {
            t.dispatched = t.dispatched.max(seq);
            false
        });
    }

    pub fn committed(&self) -> u64 {
        self.turn.borrow().committed
    }

    /// Wait until group `seq` may execute: after `after` (the last earlier group sharing a
    /// row) has committed, or, for a group caught by an abort, when it is first in line.
    /// Returns the abort count to pass to [`Sequencer::my_turn`].
    pub async fn ready(&self, seq: u64, after: u64) -> u64 {
        let mut rx = self.turn.subscribe();
        let turn = rx
            .wait_for(|t| {
                if seq <= t.barrier { t.committed + 1 >= seq } else { t.committed >= after.max(t.barrier) }
            })
            .await
            .map(|t| *t)
            .unwrap_or_default();
        turn.aborts
    }

    /// Wait until group `seq`, executed since abort count `aborts`, may commit: true when every
    /// earlier group has committed, false when an abort came first (roll back and go again).
    pub async fn my_turn(&self, seq: u64, aborts: u64) -> bool {
        let mut rx = self.turn.subscribe();
        let turn = rx
            .wait_for(|t| t.committed + 1 >= seq || t.aborts != aborts)
            .await
            .map(|t| *t)
            .unwrap_or_default();
        turn.committed + 1 >= seq
    }

    /// Whether group `seq` is first in line.
    pub fn is_first(&self, seq: u64) -> bool {
        self.committed() + 1 >= seq
    }

    /// Group `seq` committed (or was skipped): the next may commit.
    pub fn commit(&self, seq: u64) {
        self.turn.send_modify(|t| t.committed = t.committed.max(seq));
    }

    /// Make every group in flight roll back and execute again alone, in order.
    pub fn abort(&self) {
        self.turn.send_modify(|t| {
            t.aborts += 1;
            t.barrier = t.dispatched;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{Op, RowChange};
    use crate::transport::envelope::Origin;

    fn change(table: &str, id: i64, before_id: Option<i64>) -> RowChange {
        let row =
            |id: i64| Row(vec![("id".into(), Value::Int { v: id }), ("qty".into(), Value::Int { v: 1 })]);
        RowChange {
            db: "psi".into(),
            table: table.into(),
            op: if before_id.is_some() { Op::Update } else { Op::Insert },
            key: Row(vec![("id".into(), Value::Int { v: id })]),
            before: before_id.map(row),
            after: Some(row(id)),
            generated: Vec::new(),
        }
    }

    fn txn(rows: Vec<RowChange>) -> Transaction {
        Transaction {
            origin: Origin { region: "east".into(), server_id: 101, gtid: "1-101-1".parse().unwrap() },
            commit_time_us: 0,
            seq: 0,
            prev: None,
            rows,
            first_offset: 0,
            last_offset: 0,
        }
    }

    #[test]
    fn keys_are_per_table_and_row_and_include_a_changed_key() {
        let none = KeyCatalog::default();
        let a = row_keys(&[txn(vec![change("stock", 1, None)])], &none).writes;
        let b = row_keys(&[txn(vec![change("stock", 2, None)])], &none).writes;
        let c = row_keys(&[txn(vec![change("orders", 1, None)])], &none).writes;
        assert_eq!(a.len(), 1);
        assert_ne!(a, b);
        assert_ne!(a, c);
        // An update moving row 7 to key 1 touches both rows.
        let moved = row_keys(&[txn(vec![change("stock", 1, Some(7))])], &none).writes;
        assert_eq!(moved.len(), 2);
        assert!(moved.contains(&a[0]));
        assert!(moved.contains(&row_keys(&[txn(vec![change("stock", 7, None)])], &none).writes[0]));
        // An update in place touches one row.
        assert_eq!(row_keys(&[txn(vec![change("stock", 1, Some(1))])], &none).writes, a);
    }

    #[test]
    fn unique_values_and_parent_rows_are_keys_too() {
        let s = |v: &str| v.to_string();
        let catalog = KeyCatalog::new(
            vec![
                (s("psi"), s("orders"), s("PRIMARY"), s("id")),
                (s("psi"), s("orders"), s("order_no"), s("order_no")),
                (s("psi"), s("items"), s("PRIMARY"), s("id")),
            ],
            vec![(s("psi"), s("items"), s("fk_order"), s("order_id"), s("psi"), s("orders"), s("id"))],
        );
        let order = |id: i64, no: &str| {
            let row = Row(vec![
                ("id".into(), Value::Int { v: id }),
                ("order_no".into(), Value::Text { v: no.into() }),
            ]);
            RowChange {
                db: "psi".into(),
                table: "orders".into(),
                op: Op::Insert,
                key: Row(vec![("id".into(), Value::Int { v: id })]),
                before: None,
                after: Some(row),
                generated: Vec::new(),
            }
        };
        let item = |id: i64, order: Value| RowChange {
            db: "psi".into(),
            table: "items".into(),
            op: Op::Insert,
            key: Row(vec![("id".into(), Value::Int { v: id })]),
            before: None,
            after: Some(Row(vec![("id".into(), Value::Int { v: id }), ("order_id".into(), order)])),
            generated: Vec::new(),
        };
        let keys = |c: RowChange| row_keys(&[txn(vec![c])], &catalog);
        let shares = |a: &[u64], b: &[u64]| a.iter().any(|k| b.contains(k));
        let (one, two) = (keys(order(1, "A-1")), keys(order(2, "a-1")));
        assert_eq!(one.writes.len(), 2, "primary key and order_no");
        assert!(shares(&one.writes, &two.writes), "the same order_no");
        assert!(!shares(&one.writes, &keys(order(2, "A-2")).writes));
        let child = keys(item(9, Value::Int { v: 1 }));
        assert_eq!(child.writes.len(), 1);
        assert!(shares(&child.reads, &one.writes), "a child references its parent");
        assert!(!shares(&keys(item(9, Value::Int { v: 3 })).reads, &one.writes));
        assert!(keys(item(9, Value::Null)).reads.is_empty(), "a NULL reference locks nothing");
    }

    #[test]
    fn text_keys_fold_case_and_trailing_spaces() {
        let text = |v: &str| {
            let mut c = change("customers", 0, None);
            c.key = Row(vec![("code".into(), Value::Text { v: v.into() })]);
            c.before = None;
            c.after = Some(c.key.clone());
            row_keys(&[txn(vec![c])], &KeyCatalog::default()).writes
        };
        assert_eq!(text("ABC"), text("abc "));
        assert_ne!(text("abc"), text("abd"));
    }

    #[test]
    fn tracker_orders_groups_that_share_a_row() {
        let w = |keys: &[u64]| Keys { writes: keys.to_vec(), reads: Vec::new() };
        let r = |keys: &[u64]| Keys { writes: Vec::new(), reads: keys.to_vec() };
        let mut t = KeyTracker::default();
        assert_eq!(t.register(1, &w(&[10, 11])), 0);
        assert_eq!(t.register(2, &w(&[12])), 0, "disjoint rows: no wait");
        assert_eq!(t.register(3, &w(&[11, 12])), 2, "waits for the latest group sharing a row");
        t.forget_through(2);
        assert_eq!(t.len(), 2, "rows last touched by group 3 are kept");
        assert_eq!(t.register(4, &w(&[10])), 0, "group 1 committed");
        t.forget_through(4);
        assert!(t.is_empty());
        // References to one parent do not wait for each other; writing the parent does.
        assert_eq!(t.register(5, &r(&[20])), 0);
        assert_eq!(t.register(6, &r(&[20])), 0, "two children of one parent");
        assert_eq!(t.register(7, &w(&[20])), 6, "the parent written after its children");
        assert_eq!(t.register(8, &r(&[20])), 7, "a child after the parent is written");
    }

    #[tokio::test(start_paused = true)]
    async fn groups_commit_in_order_and_an_abort_serialises_the_window() {
        let s = Sequencer::default();
        for seq in 1..=3 {
            s.dispatched(seq);
        }
        // Independent groups may all execute at once.
        let a1 = s.ready(1, 0).await;
        let a3 = s.ready(3, 0).await;
        // Group 3 may not commit before 1 and 2.
        let early = tokio::time::timeout(Duration::from_secs(1), s.my_turn(3, a3)).await;
        assert!(early.is_err(), "group 3 must wait for its turn");
        assert!(s.my_turn(1, a1).await);
        s.commit(1);
        // Group 2 hits a lock held by 3 and aborts: 3 is told to roll back.
        s.abort();
        assert!(!s.my_turn(3, a3).await, "group 3 rolls back");
        // Now 3 executes only when it is first in line, and so does 2.
        let waiting = tokio::time::timeout(Duration::from_secs(1), s.ready(3, 0)).await;
        assert!(waiting.is_err());
        let a2 = s.ready(2, 0).await;
        assert!(s.my_turn(2, a2).await);
        s.commit(2);
        let a3 = s.ready(3, 0).await;
        assert!(s.my_turn(3, a3).await);
        s.commit(3);
        // A group dispatched after the abort waits for the barrier, then runs freely.
        s.dispatched(4);
        s.dispatched(5);
        assert_eq!(s.ready(5, 0).await, 1, "past the barrier: executes without waiting for 4");
        assert!(s.is_first(4) && !s.is_first(5));
    }
}
