//! Conflict-aware writes: how apply carries out `conflict::decide` for the tables the rules
//! govern. Per table of a group:
//!
//! 1. read, locking, what the target holds for every key the group touches (version, image),
//!    the keys' tombstones and last writers (`ferry.tombstones`, `ferry.row_origins`), and the
//!    rows under other keys that hold unique values the group writes;
//! 2. decide every change in origin order over that state in memory (`Plan::decide`, pure);
//! 3. write each key's final state: deletes, upserts, upserts that add the delta columns,
//!    delta-only updates, tombstones, row origins, and one `ferry.conflicts` row per conflict.
//!
//! Delta columns are summed exactly in Rust (`conflict::Num`) and added in SQL
//! (`col = col + VALUES(col)`), so a concurrent decrement in another region is never lost.

use std::collections::{BTreeMap, HashMap, HashSet};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as MyValue};

use super::parallel::{KeyCatalog, values_of};
use super::sql::{Statement, bind, quote};
use super::target::ApplyError;
use crate::conflict::{
    self, Action, Conflict, Incoming, Kind, Local, Num, Rules, Stamp, TablePolicy, Winner, decide, key_row,
    key_text, latest, skewed, version_of, version_text,
};
use crate::model::{Gtid, Op, Row, RowChange, Value};

/// Keys per locking read.
const READ_CHUNK: usize = 200;
/// Rows per multi-row write.
const WRITE_CHUNK: usize = 500;

/// A change with where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Sourced<'a> {
    pub change: &'a RowChange,
    pub origin: &'a str,
    pub gtid: &'a Gtid,
    pub commit_us: i64,
}

/// A conflict written to `ferry.conflicts` (counted once the group commits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub table: String,
    pub kind: Kind,
    pub winner: Winner,
}

/// Apply the changes of one governed table (in origin order) inside the open transaction.
pub async fn write_table(
    conn: &mut Conn,
    rules: &Rules,
    catalog: &KeyCatalog,
    policy: TablePolicy<'_>,
    changes: &[Sourced<'_>],
    now_us: i64,
) -> Result<Vec<Recorded>, ApplyError> {
    let Some(first) = changes.first() else { return Ok(Vec::new()) };
    let (db, table) = (first.change.db.as_str(), first.change.table.as_str());
    let items = items(rules, &policy, changes)?;
    let has_version = changes.iter().any(|s| {
        [&s.change.after, &s.change.before]
            .into_iter()
            .flatten()
            .any(|i| i.get(policy.version_column).is_some())
    });
    // Who wrote a local row only matters with three or more regions or without a version
    // column (see `Rules::track_writers`).
    let origins = rules.track_writers() || !has_version;
    let shape = Shape { db, table, policy, has_version, origins };
    let mut known = shape.read(conn, rules, &items).await?;
    for (_, cols) in catalog.uniques(db, table) {
        shape.read_holders(conn, rules, &items, cols, &mut known).await?;
    }
    let plan = Plan::decide(rules, &items, &known, now_us)?;
    plan.write(conn, &shape, rules).await?;
    let name = shape.name();
    Ok(plan
        .conflicts
        .iter()
        .map(|c| Recorded { table: name.clone(), kind: c.kind, winner: c.winner })
        .collect())
}

/// One row change as the rules see it (an update that moves a row's primary key is a delete of
/// the old key and an insert of the new one).
struct Item<'a> {
    source: Sourced<'a>,
    op: conflict::Op,
    key: String,
    key_row: Row,
    /// The columns written (inserts and updates; generated columns left out).
    image: Option<Row>,
    stamp: Stamp,
    before_version: Option<i64>,
    /// The version column of the image written.
    after_version: Option<i64>,
    /// `after − before` of each delta column (an insert: its values).
    deltas: Vec<(String, Num)>,
}

impl Item<'_> {
    /// The incoming image for the conflict log.
    fn logged_image(&self) -> serde_json::Value {
        let change = self.source.change;
        let image = if self.op == conflict::Op::Delete { &change.before } else { &change.after };
        serde_json::to_value(image).unwrap_or_default()
    }
}

fn items<'a>(
    rules: &Rules,
    policy: &TablePolicy<'_>,
    changes: &[Sourced<'a>],
) -> Result<Vec<Item<'a>>, ApplyError> {
    let mut out = Vec::with_capacity(changes.len());
    for source in changes {
        let change = source.change;
        let stamp = rules.stamp(policy, change, source.origin, source.commit_us);
        let before_version = change.before.as_ref().and_then(|b| version_of(b, policy.version_column));
        let deltas = |before: Option<&Row>, after: &Row| -> Result<Vec<(String, Num)>, ApplyError> {
            let num = |image: Option<&Row>, c: &str| match image.and_then(|i| i.get(c)) {
                None => Some(Num::ZERO),
                Some(v) => Num::of(v),
            };
            let mut out = Vec::new();
            for c in policy.delta_columns.iter().filter(|c| after.get(c).is_some()) {
                let delta = num(Some(after), c).zip(num(before, c)).and_then(|(a, b)| a.checked_sub(b));
                let Some(delta) = delta else {
                    return Err(ApplyError::Permanent(format!(
                        "{}: delta column `{c}` holds a value that is not an exact number",
                        change.qualified_table()
                    )));
                };
                out.push((c.clone(), delta));
            }
            Ok(out)
        };
        let written = |image: &Row| {
            Row(image.0.iter().filter(|(c, _)| !change.generated.contains(c)).cloned().collect())
        };
        let item = |op, image: &Row, written: Option<Row>, deltas| Item {
            source: *source,
            op,
            key: key_text(change, image),
            key_row: key_row(change, image),
            after_version: written.as_ref().and_then(|w| version_of(w, policy.version_column)),
            image: written,
            stamp,
            before_version,
            deltas,
        };
        match (change.op, change.before.as_ref(), change.after.as_ref()) {
            (Op::Insert, _, Some(after)) => {
                out.push(item(conflict::Op::Insert, after, Some(written(after)), deltas(None, after)?))
            }
            (Op::Update, Some(before), Some(after)) if key_row(change, before) != key_row(change, after) => {
                out.push(item(conflict::Op::Delete, before, None, Vec::new()));
                let insert = item(conflict::Op::Insert, after, Some(written(after)), deltas(None, after)?);
                out.push(Item { before_version: None, ..insert });
            }
            (Op::Update, Some(before), Some(after)) => out.push(item(
                conflict::Op::Update,
                after,
                Some(written(after)),
                deltas(Some(before), after)?,
            )),
            (Op::Delete, Some(before), _) => out.push(item(conflict::Op::Delete, before, None, Vec::new())),
            // A state, not a change: no deltas (the stream carries those).
            (Op::Snapshot, _, Some(after)) => {
                out.push(item(conflict::Op::Snapshot, after, Some(written(after)), Vec::new()))
            }
            _ => {
                return Err(ApplyError::Permanent(format!(
                    "{}: a {:?} without the images it needs",
                    change.qualified_table(),
                    change.op
                )));
            }
        }
    }
    Ok(out)
}

/// The table the statements address.
struct Shape<'a> {
    db: &'a str,
    table: &'a str,
    policy: TablePolicy<'a>,
    has_version: bool,
    /// Read and write `ferry.row_origins`.
    origins: bool,
}

/// What the target held before the group.
#[derive(Default)]
struct Known {
    /// Live rows: key → (version, image for the conflict log).
    rows: HashMap<String, (Option<i64>, serde_json::Value)>,
    tombstones: HashMap<String, Stamp>,
    /// key → stamp (version, writer) of the last write apply made.
    origins: HashMap<String, Stamp>,
    /// Per item index: rows under other keys holding a unique value the item writes.
    holders: HashMap<usize, Vec<Holder>>,
}

/// A row that holds a unique value an incoming row wants.
#[derive(Debug, Clone)]
struct Holder {
    /// The unique index's columns and values (to find and delete the row).
    columns: Vec<String>,
    values: Vec<Value>,
    /// Its primary key as `ferry.row_origins` stores it.
    key: String,
    version: Option<i64>,
    image: serde_json::Value,
}

impl Holder {
    fn id(&self) -> String {
        format!("{:?}={}", self.columns, serde_json::to_string(&self.values).unwrap_or_default())
    }
}

fn sql_error(context: &str, table: &str) -> impl FnOnce(mysql_async::Error) -> ApplyError {
    let context = format!("{context} {table}");
    move |e| ApplyError::from_sql(&context, e)
}

impl Shape<'_> {
    fn table(&self) -> String {
        format!("{}.{}", quote(self.db), quote(self.table))
    }

    fn name(&self) -> String {
        format!("{}.{}", self.db, self.table)
    }

    fn version_expr(&self) -> String {
        if self.has_version {
            format!("CAST({} AS CHAR)", quote(self.policy.version_column))
        } else {
            "NULL".into()
        }
    }

    /// The rows whose `cols` hold one of `tuples`, each with the index of its tuple; columns
    /// from 2 on are the row's (0: the index, 1: the version as text). The rows found are
    /// then read again, locked, so nothing changes them before the group commits. Only rows
    /// that exist are locked: a locking read of an absent key in InnoDB waits for whoever
    /// holds the next key, which may be a later group waiting for this one to commit.
    async fn fetch(
        &self,
        conn: &mut Conn,
        cols: &[String],
        tuples: &[Vec<MyValue>],
        context: &str,
    ) -> Result<Vec<(usize, mysql_async::Row)>, ApplyError> {
        let select = |tuples: &[Vec<MyValue>], lock: &str| {
            let (case, within, params) = match_tuples(cols, tuples);
            let sql = format!(
                "SELECT {case}, {}, t.* FROM {} AS t WHERE {within}{lock}",
                self.version_expr(),
                self.table()
            );
            (sql, params)
        };
        let (sql, params) = select(&padded(tuples), "");
        let rows: Vec<mysql_async::Row> =
            conn.exec(sql, params).await.map_err(sql_error(context, &self.name()))?;
        let mut found: Vec<usize> =
            rows.iter().filter_map(|r| r.get::<Option<usize>, _>(0).flatten()).collect();
        found.sort_unstable();
        found.dedup();
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let present: Vec<Vec<MyValue>> = found.iter().map(|&i| tuples[i].clone()).collect();
        let (sql, params) = select(&padded(&present), " FOR UPDATE");
        let rows: Vec<mysql_async::Row> =
            conn.exec(sql, params).await.map_err(sql_error(context, &self.name()))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let j = r.get::<Option<usize>, _>(0).flatten()?;
                Some((*found.get(j)?, r))
            })
            .collect())
    }

    async fn read(&self, conn: &mut Conn, rules: &Rules, items: &[Item<'_>]) -> Result<Known, ApplyError> {
        let mut keys: Vec<(&str, &Row)> = Vec::new();
        let mut seen = HashSet::new();
        for item in items {
            if seen.insert(item.key.as_str()) {
                keys.push((&item.key, &item.key_row));
            }
        }
        let mut known = Known::default();
        let Some((_, first)) = keys.first() else { return Ok(known) };
        let pk: Vec<String> = first.columns().map(str::to_string).collect();
        for chunk in keys.chunks(READ_CHUNK) {
            let tuples: Vec<Vec<MyValue>> = chunk.iter().map(|(_, k)| bound(k, &pk)).collect();
            for (i, row) in self.fetch(conn, &pk, &tuples, "reading the rows of").await? {
                let version = row.get::<Option<String>, _>(1).flatten();
                let entry = (version.as_deref().and_then(version_text), image_json(&row, 2));
                known.rows.insert(chunk[i].0.to_string(), entry);
            }
            let texts: Vec<&str> = chunk.iter().map(|(k, _)| *k).collect();
            for (what, stamp_key) in read_marks(conn, rules, &self.name(), &texts, self.origins).await? {
                let (key, stamp) = stamp_key;
                if what {
                    known.tombstones.insert(key, stamp)
                } else {
                    known.origins.insert(key, stamp)
                };
            }
        }
        Ok(known)
    }

    /// Rows under other primary keys that hold the values of unique index `cols` that the
    /// group's rows write.
    async fn read_holders(
        &self,
        conn: &mut Conn,
        rules: &Rules,
        items: &[Item<'_>],
        cols: &[String],
        known: &mut Known,
    ) -> Result<(), ApplyError> {
        let group_keys: HashSet<&str> = items.iter().map(|i| i.key.as_str()).collect();
        // Distinct value tuples, each with the items that write it.
        let mut wanted: Vec<(Vec<Value>, Vec<usize>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let Some(values) = item.image.as_ref().and_then(|image| values_of(image, cols)) else { continue };
            let values: Vec<Value> = values.into_iter().cloned().collect();
            let text = serde_json::to_string(&values).unwrap_or_default();
            match index.get(&text) {
                Some(&w) => wanted[w].1.push(i),
                None => {
                    index.insert(text, wanted.len());
                    wanted.push((values, vec![i]));
                }
            }
        }
        let mut found: Vec<(usize, Holder)> = Vec::new();
        for chunk in wanted.chunks(READ_CHUNK) {
            let tuples: Vec<Vec<MyValue>> = chunk.iter().map(|(v, _)| v.iter().map(bind).collect()).collect();
            for (w, row) in self.fetch(conn, cols, &tuples, "reading unique values of").await? {
                let (values, writers) = &chunk[w];
                let template = &items[writers[0]].key_row;
                // The row itself, or a row this group writes too (its own change decides). A key
                // that cannot be read back exactly (a primary key of a rare type) is left to the
                // write: it is never mistaken for another row.
                let Some(key) = holder_key(template, &row, items[writers[0]].source.change) else { continue };
                if group_keys.contains(key.as_str()) {
                    continue;
                }
                let version = row.get::<Option<String>, _>(1).flatten().as_deref().and_then(version_text);
                let holder = Holder {
                    columns: cols.to_vec(),
                    values: values.clone(),
                    key,
                    version,
                    image: image_json(&row, 2),
                };
                for &i in writers {
                    found.push((i, holder.clone()));
                }
            }
        }
        let keys: Vec<&str> = found.iter().map(|(_, h)| h.key.as_str()).collect();
        if !keys.is_empty() && self.origins {
            for (what, (key, stamp)) in read_marks(conn, rules, &self.name(), &keys, true).await? {
                if !what {
                    known.origins.insert(key, stamp);
                }
            }
        }
        for (i, holder) in found {
            known.holders.entry(i).or_default().push(holder);
        }
        Ok(())
    }
}

/// The values of `cols` in `row`, bound.
fn bound(row: &Row, cols: &[String]) -> Vec<MyValue> {
    cols.iter().map(|c| row.get(c).map(bind).unwrap_or(MyValue::NULL)).collect()
}

/// `list` grown to the next power of two (at most `READ_CHUNK`) by repeating its last entry,
/// so that reads of similar size share one prepared statement (the connection caches them by
/// text). A repeated tuple finds nothing new, and `CASE` names its first occurrence.
fn padded<T: Clone>(list: &[T]) -> Vec<T> {
    let want = list.len().next_power_of_two().min(READ_CHUNK.max(list.len()));
    let mut out = list.to_vec();
    if let Some(last) = list.last() {
        out.resize(want, last.clone());
    }
    out
}

/// `CASE WHEN … THEN 0 … END` (which tuple a row matched) and the condition that finds the
/// rows of `tuples`, with their parameters. The condition is `col IN (?, …)` for one column and
/// `(a = ? AND b = ?) OR …` for several, forms every server answers from the index (a row
/// constructor `IN` can make a locking read scan, and wait on, the whole table).
fn match_tuples(cols: &[String], tuples: &[Vec<MyValue>]) -> (String, String, Vec<MyValue>) {
    let (case, within) = conditions(cols, tuples.len());
    let mut params: Vec<MyValue> = tuples.iter().flatten().cloned().collect();
    params.extend(tuples.iter().flatten().cloned());
    (case, within, params)
}

/// The SQL of `match_tuples` for `n` tuples.
fn conditions(cols: &[String], n: usize) -> (String, String) {
    let equal = cols.iter().map(|c| format!("{} = ?", quote(c))).collect::<Vec<_>>().join(" AND ");
    let whens: Vec<String> = (0..n).map(|i| format!("WHEN {equal} THEN {i}")).collect();
    let within = match cols {
        [one] => format!("{} IN ({})", quote(one), vec!["?"; n].join(", ")),
        _ => vec![format!("({equal})"); n].join(" OR "),
    };
    (format!("CASE {} END", whens.join(" ")), within)
}

/// Tombstones (`true`) and, if `origins`, row origins (`false`) of `keys`.
async fn read_marks(
    conn: &mut Conn,
    rules: &Rules,
    table: &str,
    keys: &[&str],
    origins: bool,
) -> Result<Vec<(bool, (String, Stamp))>, ApplyError> {
    let keys = padded(keys);
    let marks = vec!["?"; keys.len()].join(", ");
    let mut params: Vec<MyValue> = Vec::new();
    for _ in 0..if origins { 2 } else { 1 } {
        params.push(table.into());
        params.extend(keys.iter().map(|k| MyValue::from(*k)));
    }
    let mut sql = format!(
        "SELECT 1, row_key, version_us, origin FROM ferry.tombstones WHERE table_name = ? AND row_key IN ({marks})"
    );
    if origins {
        sql.push_str(&format!(
            " UNION ALL SELECT 0, row_key, version_us, origin FROM ferry.row_origins WHERE table_name = ? AND row_key IN ({marks})"
        ));
    }
    let rows: Vec<(u8, Vec<u8>, i64, String)> =
        conn.exec(sql, params).await.map_err(sql_error("reading tombstones and row origins of", table))?;
    Ok(rows
        .into_iter()
        .map(|(what, key, at_us, origin)| {
            (
                what == 1,
                (String::from_utf8_lossy(&key).into_owned(), Stamp { at_us, rank: rules.rank(&origin) }),
            )
        })
        .collect())
}

/// The primary key of a row read back, in the form `key_text` gives, using an incoming key
/// of the same table as the template for each value's type. None if a value has no exact
/// counterpart.
fn holder_key(template: &Row, row: &mysql_async::Row, change: &RowChange) -> Option<String> {
    let mut key = Vec::new();
    for (col, like) in &template.0 {
        let i = row.columns_ref().iter().skip(2).position(|c| c.name_str() == col.as_str())? + 2;
        let got = row.as_ref(i)?;
        key.push((col.clone(), same_type(like, got)?));
    }
    let key = Row(key);
    Some(key_text(change, &key))
}

/// `got` as a value of the same type as `like`.
fn same_type(like: &Value, got: &MyValue) -> Option<Value> {
    let text = || match got {
        MyValue::Bytes(b) => String::from_utf8(b.clone()).ok(),
        MyValue::Int(i) => Some(i.to_string()),
        MyValue::UInt(u) => Some(u.to_string()),
        _ => None,
    };
    Some(match like {
        Value::Int { .. } => Value::Int { v: text()?.parse().ok()? },
        Value::Uint { .. } => Value::Uint { v: text()?.parse().ok()? },
        Value::Text { .. } => Value::Text { v: text()? },
        Value::Decimal { .. } => Value::Decimal { v: text()? },
        Value::Enum { .. } => Value::Enum { v: text()? },
        Value::Bytes { .. } => match got {
            MyValue::Bytes(b) => Value::Bytes { v: b.clone() },
            _ => return None,
        },
        Value::Date { .. } => match got {
            MyValue::Date(y, m, d, ..) => Value::Date { v: format!("{y:04}-{m:02}-{d:02}") },
            _ => return None,
        },
        Value::Datetime { p, .. } | Value::Timestamp { p, .. } => match got {
            MyValue::Date(y, mo, d, h, mi, s, us) => {
                let v = crate::model::format_datetime((*y, *mo, *d), (*h, *mi, *s), *us, *p);
                if matches!(like, Value::Datetime { .. }) {
                    Value::Datetime { v, p: *p }
                } else {
                    Value::Timestamp { v, p: *p }
                }
            }
            _ => return None,
        },
        _ => return None,
    })
}

/// The columns of a row read back, from `skip` on, as JSON (for the conflict log).
fn image_json(row: &mysql_async::Row, skip: usize) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (i, col) in row.columns_ref().iter().enumerate().skip(skip) {
        let value = match row.as_ref(i) {
            None | Some(MyValue::NULL) => serde_json::Value::Null,
            Some(MyValue::Int(v)) => (*v).into(),
            Some(MyValue::UInt(v)) => (*v).into(),
            Some(MyValue::Float(v)) => f64::from(*v).into(),
            Some(MyValue::Double(v)) => (*v).into(),
            Some(MyValue::Bytes(b)) => match std::str::from_utf8(b) {
                Ok(s) => s.into(),
                Err(_) => serde_json::json!({ "base64": crate::model::base64::encode(b) }),
            },
            Some(other) => other.as_sql(true).trim_matches('\'').into(),
        };
        map.insert(col.name_str().into_owned(), value);
    }
    serde_json::Value::Object(map)
}

/// The stamp of a live local row: its version, and the region apply wrote it from if that
/// write is still what it holds (else this region, `here`, wrote it). Without a version (no
/// version column) only the last write apply made is known; a row written here counts as
/// oldest.
fn local_stamp(here: u32, version: Option<i64>, origin: Option<&Stamp>) -> Stamp {
    match (version, origin) {
        (Some(v), Some(o)) if o.at_us == v => *o,
        (Some(v), _) => Stamp { at_us: v, rank: here },
        (None, Some(o)) => *o,
        (None, None) => Stamp { at_us: i64::MIN, rank: here },
    }
}

/// What a key ends as after the group.
#[derive(Debug, Clone)]
enum Effect {
    /// Untouched.
    None,
    Deleted,
    /// Written as this image (delta columns hold their final values).
    Absolute(Row),
    /// An existing row: its non-delta columns become `image` (if any), its delta columns
    /// grow by `deltas`.
    Relative {
        image: Option<Row>,
        deltas: BTreeMap<String, Num>,
    },
}

struct KeyState {
    key_row: Row,
    local: Local,
    tombstone: Option<Stamp>,
    initial_tombstone: Option<Stamp>,
    existed: bool,
    effect: Effect,
    /// The local row as the conflict log shows it.
    image: serde_json::Value,
}

/// One `ferry.conflicts` row.
struct Logged {
    key: String,
    kind: Kind,
    rule: conflict::Rule,
    winner: Winner,
    local_version: Option<i64>,
    incoming_version: i64,
    local_image: serde_json::Value,
    incoming_image: serde_json::Value,
    origin: String,
    gtid: String,
}

/// Everything a table's part of the group writes.
#[derive(Default)]
struct Plan {
    /// Rows that lost a unique-key conflict: (index columns, values).
    evicted: Vec<(Vec<String>, Vec<Value>)>,
    states: Vec<(String, KeyState)>,
    conflicts: Vec<Logged>,
}

/// A delta sum that does not fit ferry's exact arithmetic (38 digits): refused, never rounded.
fn too_large(column: &str) -> ApplyError {
    ApplyError::Permanent(format!("delta column `{column}`: the sum exceeds 38 digits"))
}

fn add_deltas(acc: &mut BTreeMap<String, Num>, deltas: &[(String, Num)]) -> Result<(), ApplyError> {
    for (c, d) in deltas {
        let sum = acc.get(c).copied().unwrap_or(Num::ZERO).checked_add(*d).ok_or_else(|| too_large(c))?;
        acc.insert(c.clone(), sum);
    }
    Ok(())
}

/// `image` with each delta column set to `base`'s value plus the delta.
fn absolute(image: &Row, base: &Row, deltas: &[(String, Num)]) -> Result<Row, ApplyError> {
    let mut out = image.clone();
    for (c, d) in deltas {
        let start = match base.get(c) {
            Some(v) => Num::of(v).ok_or_else(|| too_large(c))?,
            None => Num::ZERO,
        };
        let sum = start.checked_add(*d).ok_or_else(|| too_large(c))?;
        if let Some(slot) = out.0.iter_mut().find(|(name, _)| name == c) {
            slot.1 = sum.to_value();
        }
    }
    Ok(out)
}

impl Plan {
    fn decide(rules: &Rules, items: &[Item<'_>], known: &Known, now_us: i64) -> Result<Plan, ApplyError> {
        let mut plan = Plan::default();
        let mut at: HashMap<String, usize> = HashMap::new();
        let mut evicted: HashSet<String> = HashSet::new();
        let here = rules.rank(&rules.region);
        for (i, item) in items.iter().enumerate() {
            let s = *at.entry(item.key.clone()).or_insert_with(|| {
                let state = match known.rows.get(&item.key) {
                    Some((version, image)) => {
                        let stamp = local_stamp(here, *version, known.origins.get(&item.key));
                        KeyState {
                            key_row: item.key_row.clone(),
                            local: Local::Row { stamp, version_us: *version },
                            tombstone: known.tombstones.get(&item.key).copied(),
                            initial_tombstone: known.tombstones.get(&item.key).copied(),
                            existed: true,
                            effect: Effect::None,
                            image: image.clone(),
                        }
                    }
                    None => {
                        let tombstone = known.tombstones.get(&item.key).copied();
                        KeyState {
                            key_row: item.key_row.clone(),
                            local: Local::Gone { tombstone },
                            tombstone,
                            initial_tombstone: tombstone,
                            existed: false,
                            effect: Effect::None,
                            image: serde_json::Value::Null,
                        }
                    }
                };
                plan.states.push((item.key.clone(), state));
                plan.states.len() - 1
            });
            let state = &mut plan.states[s].1;
            let incoming =
                Incoming { op: item.op, stamp: item.stamp, before_version_us: item.before_version };
            let decision = decide(state.local, incoming);
            let log = |kind: Kind,
                       conflict: Conflict,
                       local_version: Option<i64>,
                       local_image: serde_json::Value| Logged {
                key: item.key.clone(),
                kind,
                rule: conflict.rule,
                winner: conflict.winner,
                local_version,
                incoming_version: item.stamp.at_us,
                local_image,
                incoming_image: item.logged_image(),
                origin: item.source.origin.to_string(),
                gtid: item.source.gtid.to_string(),
            };
            let local_version = match state.local {
                Local::Row { stamp, .. } => Some(stamp.at_us).filter(|v| *v != i64::MIN),
                Local::Gone { tombstone } => tombstone.map(|t| t.at_us),
            };
            let local_image = match state.local {
                Local::Row { .. } => state.image.clone(),
                Local::Gone { tombstone: Some(t) } => {
                    serde_json::json!({ "tombstone": { "version_us": t.at_us, "origin": rules.region_at(t.rank) } })
                }
                Local::Gone { tombstone: None } => serde_json::Value::Null,
            };
            if let Some(c) = decision.conflict {
                plan.conflicts.push(log(c.kind, c, local_version, local_image.clone()));
            }
            if skewed(&item.stamp, now_us, rules.max_skew_us) {
                let c = decision.conflict.unwrap_or(Conflict {
                    kind: Kind::ClockSkew,
                    winner: if decision.action == Action::Keep { Winner::Local } else { Winner::Incoming },
                    rule: conflict::Rule::LastWriteWins,
                });
                plan.conflicts.push(log(Kind::ClockSkew, c, local_version, local_image));
            }
            let mut action = decision.action;
            // Unique values held by other rows: the same order decides; the loser goes.
            if matches!(action, Action::Overwrite | Action::Insert) {
                for holder in known.holders.get(&i).into_iter().flatten() {
                    if evicted.contains(&holder.id()) {
                        continue;
                    }
                    let origin = known.origins.get(&holder.key);
                    let stamp = local_stamp(here, holder.version, origin);
                    let c = conflict::unique(&item.stamp, &stamp);
                    plan.conflicts.push(log(Kind::UniqueKey, c, holder.version, holder.image.clone()));
                    if c.winner == Winner::Incoming {
                        evicted.insert(holder.id());
                        plan.evicted.push((holder.columns.clone(), holder.values.clone()));
                    } else {
                        action = Action::Keep;
                        if matches!(state.local, Local::Row { .. }) {
                            // The row loses everywhere: where it came from, this value's holder
                            // replaces it too.
                            state.effect = Effect::Deleted;
                            state.local = Local::Gone { tombstone: state.tombstone };
                        }
                        break;
                    }
                }
            }
            match action {
                Action::Overwrite => {
                    let image = item.image.clone().unwrap_or_default();
                    state.effect = match std::mem::replace(&mut state.effect, Effect::None) {
                        Effect::Absolute(base) => Effect::Absolute(absolute(&image, &base, &item.deltas)?),
                        Effect::Relative { mut deltas, .. } => {
                            add_deltas(&mut deltas, &item.deltas)?;
                            Effect::Relative { image: Some(image.clone()), deltas }
                        }
                        Effect::None | Effect::Deleted => {
                            let mut deltas = BTreeMap::new();
                            add_deltas(&mut deltas, &item.deltas)?;
                            Effect::Relative { image: Some(image.clone()), deltas }
                        }
                    };
                    state.local = Local::Row { stamp: item.stamp, version_us: item.after_version };
                    state.image = serde_json::to_value(&image).unwrap_or_default();
                }
                Action::Insert => {
                    let image = item.image.clone().unwrap_or_default();
                    state.image = serde_json::to_value(&image).unwrap_or_default();
                    state.effect = Effect::Absolute(image);
                    state.local = Local::Row { stamp: item.stamp, version_us: item.after_version };
                    state.tombstone = None;
                }
                Action::AddDelta => {
                    state.effect = match std::mem::replace(&mut state.effect, Effect::None) {
                        Effect::Absolute(base) => Effect::Absolute(absolute(&base, &base, &item.deltas)?),
                        Effect::Relative { image, mut deltas } => {
                            add_deltas(&mut deltas, &item.deltas)?;
                            Effect::Relative { image, deltas }
                        }
                        Effect::None | Effect::Deleted => {
                            let mut deltas = BTreeMap::new();
                            add_deltas(&mut deltas, &item.deltas)?;
                            Effect::Relative { image: None, deltas }
                        }
                    };
                }
                Action::Delete | Action::Tombstone => {
                    if action == Action::Delete {
                        state.effect = Effect::Deleted;
                    }
                    state.tombstone = Some(latest(state.tombstone, item.stamp));
                    state.local = Local::Gone { tombstone: state.tombstone };
                }
                Action::Keep => {}
            }
        }
        Ok(plan)
    }
}

/// One row of a multi-row insert: a placeholder and a bound value per column.
type Tuple = Vec<(&'static str, MyValue)>;
/// The columns of an upsert, and whether its delta columns add.
/// (columns, delta columns add, the keys were absent when read).
type UpsertShape = (Vec<String>, bool, bool);

/// `INSERT INTO … (cols) VALUES (…), … <tail>`, `WRITE_CHUNK` rows per statement.
fn inserts(into: &str, cols: &[String], rows: Vec<Tuple>, tail: &str) -> Vec<Statement> {
    let names: Vec<String> = cols.iter().map(|c| quote(c)).collect();
    rows.chunks(WRITE_CHUNK)
        .map(|chunk| {
            let tuples: Vec<String> = chunk
                .iter()
                .map(|row| format!("({})", row.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(", ")))
                .collect();
            Statement {
                sql: format!("INSERT INTO {into} ({}) VALUES {}{tail}", names.join(", "), tuples.join(", ")),
                params: chunk.iter().flatten().map(|(_, v)| v.clone()).collect(),
                finds: None,
                fresh: false,
            }
        })
        .collect()
}

/// `DELETE FROM … WHERE <rows>` (found as `match_tuples` finds them), `WRITE_CHUNK` rows per
/// statement.
fn deletes(from: &str, cols: &[String], rows: Vec<Vec<MyValue>>) -> Vec<Statement> {
    rows.chunks(WRITE_CHUNK)
        .map(|chunk| Statement {
            sql: format!("DELETE FROM {from} WHERE {}", conditions(cols, chunk.len()).1),
            params: chunk.iter().flatten().cloned().collect(),
            finds: None,
            fresh: false,
        })
        .collect()
}

fn typed(v: &Value) -> (&'static str, MyValue) {
    (super::sql::placeholder(v), bind(v))
}

fn text(v: impl Into<String>) -> (&'static str, MyValue) {
    ("?", MyValue::Bytes(v.into().into_bytes()))
}

fn json(v: &serde_json::Value) -> (&'static str, MyValue) {
    if v.is_null() {
        ("?", MyValue::NULL)
    } else {
        ("CONVERT(? USING utf8mb4)", MyValue::Bytes(v.to_string().into_bytes()))
    }
}

impl Plan {
    fn statements(&self, shape: &Shape<'_>, rules: &Rules) -> Vec<Statement> {
        let table = shape.table();
        let name = shape.name();
        let mut out = Vec::new();
        // Rows that lost a unique-key conflict, by index.
        let mut evicted: Vec<(&Vec<String>, Vec<Vec<MyValue>>)> = Vec::new();
        for (cols, values) in &self.evicted {
            let tuple: Vec<MyValue> = values.iter().map(bind).collect();
            match evicted.iter_mut().find(|(c, _)| *c == cols) {
                Some((_, rows)) => rows.push(tuple),
                None => evicted.push((cols, vec![tuple])),
            }
        }
        for (cols, rows) in evicted {
            out.extend(deletes(&table, cols, rows));
        }
        let pk: Vec<String> = match self.states.first() {
            Some((_, s)) => s.key_row.columns().map(str::to_string).collect(),
            None => return out,
        };
        let gone: Vec<Vec<MyValue>> = self
            .states
            .iter()
            .filter(|(_, s)| s.existed && matches!(s.effect, Effect::Deleted))
            .map(|(_, s)| bound(&s.key_row, &pk))
            .collect();
        out.extend(deletes(&table, &pk, gone));

        // Upserts, per column set: absolute images, and images whose delta columns add. A
        // key absent when read is inserted without `ON DUPLICATE KEY UPDATE`: it was not
        // locked, and a row a local write created since must be decided, not overwritten.
        let mut shapes: Vec<(UpsertShape, Vec<Tuple>)> = Vec::new();
        let mut add = |shape: UpsertShape, tuple: Tuple| match shapes.iter_mut().find(|(k, _)| *k == shape) {
            Some((_, rows)) => rows.push(tuple),
            None => shapes.push((shape, vec![tuple])),
        };
        let mut bumps = Vec::new();
        for (_, s) in &self.states {
            let fresh = !s.existed;
            match &s.effect {
                Effect::Absolute(image) => add(
                    (image.columns().map(str::to_string).collect(), false, fresh),
                    image.0.iter().map(|(_, v)| typed(v)).collect(),
                ),
                Effect::Relative { image: Some(image), deltas } => {
                    let tuple = image
                        .0
                        .iter()
                        .map(|(c, v)| match shape.policy.is_delta(c) {
                            true => typed(&deltas.get(c).copied().unwrap_or(Num::ZERO).to_value()),
                            false => typed(v),
                        })
                        .collect();
                    add((image.columns().map(str::to_string).collect(), true, fresh), tuple)
                }
                Effect::Relative { image: None, deltas } if deltas.values().any(|d| !d.is_zero()) => {
                    let mut sets: Vec<String> =
                        deltas.keys().map(|c| format!("{0} = {0} + ?", quote(c))).collect();
                    let mut params: Vec<MyValue> = deltas.values().map(|d| bind(&d.to_value())).collect();
                    if shape.has_version {
                        // Keep the version: `ON UPDATE CURRENT_TIMESTAMP` would move it.
                        sets.push(format!("{0} = {0}", quote(shape.policy.version_column)));
                    }
                    let cond: Vec<String> = pk.iter().map(|c| format!("{} <=> ?", quote(c))).collect();
                    params.extend(bound(&s.key_row, &pk));
                    bumps.push(Statement {
                        sql: format!("UPDATE {table} SET {} WHERE {}", sets.join(", "), cond.join(" AND ")),
                        params,
                        finds: None,
                        fresh: false,
                    });
                }
                _ => {}
            }
        }
        // Fresh inserts last: a unique value they take may be one an upsert above moves away
        // from (a duplicate key there would be mistaken for a race).
        shapes.sort_by_key(|((_, _, fresh), _)| *fresh);
        for ((cols, merge, fresh), rows) in shapes {
            if fresh {
                let statements = inserts(&table, &cols, rows, "");
                out.extend(statements.into_iter().map(|s| Statement { fresh: true, ..s }));
                continue;
            }
            let updates: Vec<String> = cols
                .iter()
                .map(|c| match merge && shape.policy.is_delta(c) {
                    true => format!("{0} = {0} + VALUES({0})", quote(c)),
                    false => format!("{0} = VALUES({0})", quote(c)),
                })
                .collect();
            out.extend(inserts(
                &table,
                &cols,
                rows,
                &format!(" ON DUPLICATE KEY UPDATE {}", updates.join(", ")),
            ));
        }
        out.extend(bumps);

        // Tombstones and row origins.
        let marks = |cols: &[&str]| cols.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let stamp_row = |key: &str, stamp: &Stamp| -> Tuple {
            vec![
                text(name.clone()),
                text(key),
                ("?", MyValue::Int(stamp.at_us)),
                text(rules.region_at(stamp.rank)),
            ]
        };
        let mark_cols = marks(&["table_name", "row_key", "version_us", "origin"]);
        let upsert_mark =
            " ON DUPLICATE KEY UPDATE version_us = VALUES(version_us), origin = VALUES(origin)".to_string();
        let put: Vec<Tuple> = self
            .states
            .iter()
            .filter_map(|(k, s)| {
                s.tombstone.filter(|t| Some(*t) != s.initial_tombstone).map(|t| stamp_row(k, &t))
            })
            .collect();
        out.extend(inserts("ferry.tombstones", &mark_cols, put, &upsert_mark));
        let cleared: Vec<Vec<MyValue>> = self
            .states
            .iter()
            .filter(|(_, s)| s.tombstone.is_none() && s.initial_tombstone.is_some())
            .map(|(k, _)| vec![MyValue::from(name.as_str()), MyValue::Bytes(k.clone().into_bytes())])
            .collect();
        out.extend(deletes("ferry.tombstones", &marks(&["table_name", "row_key"]), cleared));
        let origins: Vec<Tuple> = self
            .states
            .iter()
            .filter(|_| shape.origins)
            .filter(|(_, s)| {
                matches!(s.effect, Effect::Absolute(_) | Effect::Relative { image: Some(_), .. })
            })
            .filter_map(|(k, s)| match s.local {
                Local::Row { stamp, .. } => Some(stamp_row(k, &stamp)),
                Local::Gone { .. } => None,
            })
            .collect();
        out.extend(inserts("ferry.row_origins", &mark_cols, origins, &upsert_mark));

        let logged: Vec<Tuple> = self
            .conflicts
            .iter()
            .map(|c| {
                vec![
                    text(name.clone()),
                    text(c.key.clone()),
                    text(c.kind.as_str()),
                    text(c.rule.as_str()),
                    text(c.winner.as_str()),
                    ("?", c.local_version.map(MyValue::Int).unwrap_or(MyValue::NULL)),
                    ("?", MyValue::Int(c.incoming_version)),
                    json(&c.local_image),
                    json(&c.incoming_image),
                    text(c.origin.clone()),
                    text(c.gtid.clone()),
                ]
            })
            .collect();
        let log_cols = marks(&[
            "table_name",
            "row_key",
            "kind",
            "rule",
            "winner",
            "local_version_us",
            "incoming_version_us",
            "local_image",
            "incoming_image",
            "origin",
            "origin_gtid",
        ]);
        out.extend(inserts("ferry.conflicts", &log_cols, logged, ""));
        out
    }

    async fn write(&self, conn: &mut Conn, shape: &Shape<'_>, rules: &Rules) -> Result<(), ApplyError> {
        super::target::execute(conn, self.statements(shape, rules)).await
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MariaGtid;

    fn rules() -> Rules {
        let yaml = "region: east\nregions:\n  east:\n    priority: 1\n    mysql: { user: u, password: p, gtid_domain_id: 1, \
                    primary: { host: h, server_id: 1 } }\n    kafka: { bootstrap: [\"k:9092\"] }\n  west:\n    priority: 2\n    \
                    mysql: { user: u, password: p, gtid_domain_id: 2, primary: { host: h, server_id: 2 } }\n    \
                    kafka: { bootstrap: [\"k:9092\"] }\nconflicts:\n  tables:\n    psi.stock: { delta_columns: [quantity] }\n";
        Rules::from_config(&crate::config::load_str("test", yaml, Vec::new()).unwrap())
    }

    fn stock(quantity: &str, at: &str) -> Row {
        Row(vec![
            ("id".into(), Value::Int { v: 1 }),
            ("quantity".into(), Value::Decimal { v: quantity.into() }),
            ("note".into(), Value::Text { v: format!("at {at}") }),
            ("updated_at".into(), Value::Datetime { v: format!("2026-01-01 00:00:{at}"), p: 6 }),
        ])
    }

    fn change(op: Op, before: Option<Row>, after: Option<Row>) -> RowChange {
        RowChange {
            db: "psi".into(),
            table: "stock".into(),
            op,
            key: Row(vec![("id".into(), Value::Int { v: 1 })]),
            before,
            after,
            generated: Vec::new(),
        }
    }

    fn us(at: &str) -> i64 {
        conflict::datetime_us(&format!("2026-01-01 00:00:{at}")).unwrap()
    }

    /// Decide `changes` (from west) against `known`; the statements and the conflicts' kinds.
    fn plan(changes: &[RowChange], known: Known) -> (Vec<Statement>, Vec<(Kind, Winner)>) {
        let rules = rules();
        let gtid = Gtid::MariaDb(MariaGtid { domain: 2, server_id: 2, seq: 9 });
        let policy = rules.policy("psi", "stock").unwrap();
        let sourced: Vec<Sourced<'_>> = changes
            .iter()
            .map(|c| Sourced { change: c, origin: "west", gtid: &gtid, commit_us: 0 })
            .collect();
        let items = items(&rules, &policy, &sourced).unwrap();
        let shape = Shape { db: "psi", table: "stock", policy, has_version: true, origins: false };
        let plan = Plan::decide(&rules, &items, &known, us("30")).unwrap();
        let kinds = plan.conflicts.iter().map(|c| (c.kind, c.winner)).collect();
        (plan.statements(&shape, &rules), kinds)
    }

    fn key() -> String {
        key_text(&change(Op::Delete, Some(stock("0", "00")), None), &stock("0", "00"))
    }

    fn existing(at: &str) -> Known {
        let mut known = Known::default();
        known.rows.insert(key(), (Some(us(at)), serde_json::json!({"id": 1})));
        known
    }

    #[test]
    fn causally_later_updates_overwrite_and_their_deltas_add_up_exactly() {
        let changes = [
            change(Op::Update, Some(stock("10.50", "01")), Some(stock("9.25", "02"))),
            change(Op::Update, Some(stock("9.25", "02")), Some(stock("7.00", "03"))),
        ];
        let (statements, conflicts) = plan(&changes, existing("01"));
        assert!(conflicts.is_empty(), "nothing changed here: {conflicts:?}");
        assert_eq!(statements.len(), 1, "{statements:#?}");
        assert_eq!(
            statements[0].sql,
            "INSERT INTO `psi`.`stock` (`id`, `quantity`, `note`, `updated_at`) VALUES (?, ?, CONVERT(? USING utf8mb4), ?) \
             ON DUPLICATE KEY UPDATE `id` = VALUES(`id`), `quantity` = `quantity` + VALUES(`quantity`), \
             `note` = VALUES(`note`), `updated_at` = VALUES(`updated_at`)"
        );
        assert_eq!(
            statements[0].params[1],
            MyValue::Bytes(b"-3.50".to_vec()),
            "10.50 → 7.00 is −3.50, exactly"
        );
        assert_eq!(
            statements[0].params[2],
            MyValue::Bytes(b"at 03".to_vec()),
            "the last image's other columns"
        );
    }

    #[test]
    fn an_older_concurrent_update_keeps_the_local_row_but_still_adds_its_delta() {
        let changes = [change(Op::Update, Some(stock("10", "01")), Some(stock("9", "02")))];
        let (statements, conflicts) = plan(&changes, existing("05"));
        assert_eq!(conflicts, [(Kind::UpdateUpdate, Winner::Local)]);
        assert_eq!(
            statements[0].sql,
            "UPDATE `psi`.`stock` SET `quantity` = `quantity` + ?, `updated_at` = `updated_at` WHERE `id` <=> ?",
            "the version is kept (ON UPDATE would move it)"
        );
        assert_eq!(statements[0].params, [MyValue::Int(-1), MyValue::Int(1)]);
        assert!(statements[1].sql.starts_with("INSERT INTO ferry.conflicts"), "{:?}", statements[1].sql);
        assert_eq!(statements.len(), 2);
    }

    #[test]
    fn tombstones_stop_older_writes_and_yield_to_newer_ones() {
        let mut known = Known::default();
        known.tombstones.insert(key(), Stamp { at_us: us("05"), rank: 0 });
        let older = [change(Op::Insert, None, Some(stock("1", "04")))];
        let (statements, conflicts) = plan(&older, known);
        assert_eq!(conflicts, [(Kind::UpdateDelete, Winner::Local)]);
        assert_eq!(statements.len(), 1, "only the conflict row: {statements:#?}");

        let mut known = Known::default();
        known.tombstones.insert(key(), Stamp { at_us: us("05"), rank: 0 });
        let newer = [change(Op::Insert, None, Some(stock("1", "06")))];
        let (statements, conflicts) = plan(&newer, known);
        assert_eq!(conflicts, [(Kind::UpdateDelete, Winner::Incoming)]);
        let sql: Vec<&str> = statements.iter().map(|s| s.sql.split(" (").next().unwrap()).collect();
        assert_eq!(
            sql,
            [
                "INSERT INTO `psi`.`stock`",
                "DELETE FROM ferry.tombstones WHERE",
                "INSERT INTO ferry.conflicts"
            ]
        );

        // A delete of a row that is already gone records (only) its tombstone.
        let gone = [change(Op::Delete, Some(stock("1", "07")), None)];
        let (statements, conflicts) = plan(&gone, Known::default());
        assert!(conflicts.is_empty());
        assert_eq!(statements.len(), 1);
        assert!(statements[0].sql.starts_with("INSERT INTO ferry.tombstones"), "{}", statements[0].sql);
        assert_eq!(statements[0].params[2], MyValue::Int(us("07")), "the deleted row's version");
        assert_eq!(statements[0].params[3], MyValue::Bytes(b"west".to_vec()));
    }
}
