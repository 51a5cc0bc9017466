//! SQL for row writes. Identifiers are quoted, values are bound (never spliced into SQL),
//! character data is bound as utf8mb4 and converted by the server into each column's charset
//! (the apply session itself uses the binary charset), and generated columns are never
//! written. Pure: builds statements, runs nothing.

use mysql_async::Value as MyValue;

use crate::model::{Op, Row, RowChange, Value};

/// One statement and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<MyValue>,
    /// The rows it must find (affected rows, counted as found with `CLIENT_FOUND_ROWS`):
    /// an update or delete of the origin's row that finds nothing here is an error, never a
    /// silent no-op. None: not checked.
    pub finds: Option<u64>,
    /// Inserts only rows whose keys were absent when apply read them (absent keys are not
    /// locked): a duplicate key then means a local write created the row since, and the group
    /// is decided again over what is there now (`ApplyError::Raced`), never overwritten.
    pub fresh: bool,
}

/// `` `name` `` with backticks doubled.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn table(row: &RowChange) -> String {
    format!("{}.{}", quote(&row.db), quote(&row.table))
}

/// The placeholder for a value: text goes through utf8mb4 into the column's charset.
pub fn placeholder(v: &Value) -> &'static str {
    match v {
        Value::Text { .. } | Value::Enum { .. } | Value::Set { .. } | Value::Json { .. } => {
            "CONVERT(? USING utf8mb4)"
        }
        _ => "?",
    }
}

/// The placeholder for a value compared with a column: text is compared in `utf8mb4_bin`, an
/// explicit collation, so the column's own collation (whatever it is) never clashes with the
/// converted parameter's (MariaDB error 1267), and the before image is found byte for byte.
pub fn matcher(v: &Value) -> &'static str {
    match placeholder(v) {
        "?" => "?",
        _ => "CONVERT(? USING utf8mb4) COLLATE utf8mb4_bin",
    }
}

/// The bound form of a value.
pub fn bind(v: &Value) -> MyValue {
    match v {
        Value::Null => MyValue::NULL,
        Value::Int { v } => MyValue::Int(*v),
        Value::Uint { v } => MyValue::UInt(*v),
        Value::Float { v } => MyValue::Float(*v),
        Value::Double { v } => MyValue::Double(*v),
        Value::Year { v } => MyValue::UInt(u64::from(*v)),
        Value::Bit { v, .. } => MyValue::UInt(*v),
        Value::Bytes { v } => MyValue::Bytes(v.clone()),
        Value::Set { v } => MyValue::Bytes(v.join(",").into_bytes()),
        Value::Decimal { v }
        | Value::Text { v }
        | Value::Date { v }
        | Value::Datetime { v, .. }
        | Value::Timestamp { v, .. }
        | Value::Time { v, .. }
        | Value::Enum { v }
        | Value::Json { v } => MyValue::Bytes(v.as_bytes().to_vec()),
    }
}

/// The columns of `image` that are written (generated ones are not).
fn written<'a>(image: &'a Row, change: &'a RowChange) -> impl Iterator<Item = &'a (String, Value)> {
    image.0.iter().filter(|(c, _)| !change.generated.iter().any(|g| g == c))
}

/// `INSERT … ON DUPLICATE KEY UPDATE …` of the after image: writing a row that already exists
/// (a replay, or a row the target already has) leaves the origin's values.
pub fn upsert(change: &RowChange) -> Option<Statement> {
    let after = change.after.as_ref()?;
    let cols: Vec<&(String, Value)> = written(after, change).collect();
    if cols.is_empty() {
        return None;
    }
    let names: Vec<String> = cols.iter().map(|(c, _)| quote(c)).collect();
    let marks: Vec<&str> = cols.iter().map(|(_, v)| placeholder(v)).collect();
    let updates: Vec<String> = names.iter().map(|n| format!("{n} = VALUES({n})")).collect();
    Some(Statement {
        sql: format!(
            "INSERT INTO {} ({}) VALUES ({}) ON DUPLICATE KEY UPDATE {}",
            table(change),
            names.join(", "),
            marks.join(", "),
            updates.join(", ")
        ),
        params: cols.iter().map(|(_, v)| bind(v)).collect(),
        finds: None,
        fresh: false,
    })
}

/// The `WHERE` that finds the row of the before image: by primary key, or (no key) by every
/// column with NULL-safe comparison, one row.
fn locate(change: &RowChange, before: &Row) -> (String, Vec<MyValue>, &'static str) {
    let key_cols: Vec<&str> = change.key.columns().collect();
    let cols: Vec<&(String, Value)> = if key_cols.is_empty() {
        written(before, change).collect()
    } else {
        before.0.iter().filter(|(c, _)| key_cols.contains(&c.as_str())).collect()
    };
    let conds: Vec<String> = cols.iter().map(|(c, v)| format!("{} <=> {}", quote(c), matcher(v))).collect();
    let limit = if key_cols.is_empty() { " LIMIT 1" } else { "" };
    (conds.join(" AND "), cols.iter().map(|(_, v)| bind(v)).collect(), limit)
}

/// `UPDATE … SET <after> WHERE <before's key>` (a changed primary key moves the row).
pub fn update(change: &RowChange) -> Option<Statement> {
    let (before, after) = (change.before.as_ref()?, change.after.as_ref()?);
    let sets: Vec<&(String, Value)> = written(after, change).collect();
    let (cond, cond_params, limit) = locate(change, before);
    let assignments: Vec<String> =
        sets.iter().map(|(c, v)| format!("{} = {}", quote(c), placeholder(v))).collect();
    let mut params: Vec<MyValue> = sets.iter().map(|(_, v)| bind(v)).collect();
    params.extend(cond_params);
    Some(Statement {
        sql: format!("UPDATE {} SET {} WHERE {cond}{limit}", table(change), assignments.join(", ")),
        params,
        finds: Some(1),
        fresh: false,
    })
}

/// `DELETE … WHERE <before's key>`.
pub fn delete(change: &RowChange) -> Option<Statement> {
    let before = change.before.as_ref()?;
    let (cond, params, limit) = locate(change, before);
    Some(Statement {
        sql: format!("DELETE FROM {} WHERE {cond}{limit}", table(change)),
        params,
        finds: Some(1),
        fresh: false,
    })
}

/// ferry's own rows (the heartbeat): each region writes only its own, and only the latest state
/// matters; the row can predate capture (its first captured change an update), so it is
/// written by state, never required to exist.
fn by_state(change: &RowChange) -> bool {
    change.db == crate::schema::DATABASE
}

/// The statement for a change as the origin made it.
pub fn statement(change: &RowChange) -> Option<Statement> {
    match change.op {
        Op::Insert => upsert(change),
        Op::Update if by_state(change) => upsert(change),
        Op::Update => update(change),
        Op::Delete if by_state(change) => delete(change).map(|d| Statement { finds: None, ..d }),
        Op::Delete => delete(change),
        // Tables the rules leave alone (one writer): the origin's state at that point.
        Op::Snapshot => upsert(change),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[(&str, Value)]) -> Row {
        Row(cols.iter().map(|(c, v)| (c.to_string(), v.clone())).collect())
    }

    fn change(op: Op, before: Option<Row>, after: Option<Row>) -> RowChange {
        RowChange {
            db: "psi".into(),
            table: "od`d".into(),
            op,
            key: row(&[("id", Value::Int { v: 1 })]),
            before,
            after,
            generated: vec!["total".into()],
        }
    }

    #[test]
    fn inserts_upsert_quoted_columns_with_text_converted_and_generated_columns_skipped() {
        let after = row(&[
            ("id", Value::Int { v: 1 }),
            ("name", Value::Text { v: "café".into() }),
            ("blob", Value::Bytes { v: vec![0xff] }),
            ("total", Value::Int { v: 9 }),
        ]);
        let s = statement(&change(Op::Insert, None, Some(after))).unwrap();
        assert_eq!(
            s.sql,
            "INSERT INTO `psi`.`od``d` (`id`, `name`, `blob`) VALUES (?, CONVERT(? USING utf8mb4), ?) \
             ON DUPLICATE KEY UPDATE `id` = VALUES(`id`), `name` = VALUES(`name`), `blob` = VALUES(`blob`)"
        );
        assert_eq!(
            s.params,
            vec![MyValue::Int(1), MyValue::Bytes("café".into()), MyValue::Bytes(vec![0xff])]
        );
    }

    #[test]
    fn updates_and_deletes_find_the_row_by_the_before_images_key() {
        let before = row(&[("id", Value::Int { v: 1 }), ("qty", Value::Int { v: 5 })]);
        let after = row(&[("id", Value::Int { v: 2 }), ("qty", Value::Int { v: 4 })]);
        let s = statement(&change(Op::Update, Some(before.clone()), Some(after))).unwrap();
        assert_eq!(s.sql, "UPDATE `psi`.`od``d` SET `id` = ?, `qty` = ? WHERE `id` <=> ?");
        assert_eq!(
            s.params,
            vec![MyValue::Int(2), MyValue::Int(4), MyValue::Int(1)],
            "the old key finds the row"
        );
        let d = statement(&change(Op::Delete, Some(before), None)).unwrap();
        assert_eq!(d.sql, "DELETE FROM `psi`.`od``d` WHERE `id` <=> ?");
    }

    #[test]
    fn a_table_without_a_key_is_matched_on_every_column_one_row() {
        let mut c = change(Op::Delete, Some(row(&[("a", Value::Null), ("b", Value::Int { v: 3 })])), None);
        c.key = Row::default();
        let s = statement(&c).unwrap();
        assert_eq!(s.sql, "DELETE FROM `psi`.`od``d` WHERE `a` <=> ? AND `b` <=> ? LIMIT 1");
    }
}

/// `(db, table)`
type TableName<'a> = (&'a str, &'a str);
/// A keyed row, the image its key is read from, and whether it must exist before the group.
type KeyedRow<'a> = (&'a RowChange, &'a Row, bool);
/// Rows per table, in the order the group first touches each table.
type PerTable<'a> = Vec<(TableName<'a>, Vec<KeyedRow<'a>>)>;
/// `(db, table, written columns)`: rows with the same shape share one multi-row upsert.
type UpsertShape<'a> = (&'a str, &'a str, Vec<&'a str>);

/// `VERB table WHERE (k1, k2) IN ((?, ?), …)` for the keys of `rows` (each key read from its
/// image), which must find the rows marked as existing.
fn by_keys(verb: &str, rows: &[KeyedRow<'_>]) -> Statement {
    let (first, _, _) = rows[0];
    let cols: Vec<&str> = first.key.columns().collect();
    let tuple = format!("({})", vec!["?"; cols.len()].join(", "));
    let mut params = Vec::new();
    for (change, image, _) in rows {
        for c in change.key.columns() {
            params.push(image.get(c).map(bind).unwrap_or(MyValue::NULL));
        }
    }
    let names: Vec<String> = cols.iter().map(|c| quote(c)).collect();
    Statement {
        sql: format!(
            "{verb} {} WHERE ({}) IN ({})",
            table(first),
            names.join(", "),
            vec![tuple.as_str(); rows.len()].join(", ")
        ),
        params,
        finds: Some(rows.iter().filter(|(_, _, must_exist)| *must_exist).count() as u64),
        fresh: false,
    }
}

/// How many rows one multi-row statement carries (well under MySQL's 65,535 placeholders).
const BATCH_ROWS: usize = 500;

/// Statements for a group of changes committed together, in as few round trips as the data
/// allows. Within one atomic commit only each row's final state matters: per primary key the
/// changes collapse to "upsert the last after image" or "delete" (a changed key is a delete of
/// the old key and an upsert of the new one). Deletes come first (a unique value a deleted row
/// held may be reused), then upserts, batched per table and column set. Rows of tables without
/// a primary key keep their order, one statement each.
///
/// A row the group first changes by its before image (an update or delete) existed at the
/// origin, so it must exist here: the statements count them (`Statement::finds`: a `SELECT
/// COUNT(*)` ahead of the writes for rows that end upserted, the deletes' own affected rows),
/// and a row that is missing fails the group instead of being silently created or skipped.
pub fn batch<'a>(changes: impl IntoIterator<Item = &'a RowChange>) -> Vec<Statement> {
    enum Final<'a> {
        Upsert(&'a RowChange),
        Delete(&'a RowChange, &'a Row),
    }
    // Per key: its final state, and whether the row must exist before the group.
    let mut finals: Vec<((String, String, String), Final<'a>, bool)> = Vec::new();
    let mut index: std::collections::HashMap<(String, String, String), usize> =
        std::collections::HashMap::new();
    let mut keyless = Vec::new();
    let mut set = |id: (String, String, String), f: Final<'a>, by_before: bool| match index.get(&id) {
        Some(&i) => finals[i].1 = f,
        None => {
            index.insert(id.clone(), finals.len());
            finals.push((id, f, by_before));
        }
    };
    for change in changes {
        if change.key.is_empty() {
            keyless.push(change);
            continue;
        }
        let id =
            |row: &Row| (change.db.clone(), change.table.clone(), crate::conflict::key_text(change, row));
        let must_exist = !by_state(change);
        match (change.op, change.before.as_ref(), change.after.as_ref()) {
            (Op::Insert | Op::Snapshot, _, Some(after)) => set(id(after), Final::Upsert(change), false),
            (Op::Update, Some(before), Some(after)) => {
                let (old, new) = (id(before), id(after));
                let moved = old != new;
                if moved {
                    set(old, Final::Delete(change, before), must_exist);
                }
                set(new, Final::Upsert(change), must_exist && !moved);
            }
            (Op::Delete, Some(before), _) => set(id(before), Final::Delete(change, before), must_exist),
            _ => keyless.push(change),
        }
    }

    let mut out = Vec::new();
    // Rows that end upserted but must exist first: counted before anything is written.
    let mut checks: PerTable<'_> = Vec::new();
    // Deletes, per table: `DELETE … WHERE (k1, k2) IN ((?, ?), …)`.
    let mut deletes: PerTable<'_> = Vec::new();
    for (_, f, must_exist) in &finals {
        let (list, change, image) = match f {
            Final::Delete(change, before) => (&mut deletes, *change, *before),
            Final::Upsert(change) if *must_exist => match change.after.as_ref() {
                Some(after) => (&mut checks, *change, after),
                None => continue,
            },
            Final::Upsert(_) => continue,
        };
        let t = (change.db.as_str(), change.table.as_str());
        match list.iter_mut().find(|(k, _)| *k == t) {
            Some((_, v)) => v.push((change, image, *must_exist)),
            None => list.push((t, vec![(change, image, *must_exist)])),
        }
    }
    for (verb, lists) in [("SELECT COUNT(*) FROM", checks), ("DELETE FROM", deletes)] {
        for (_, rows) in lists {
            for chunk in rows.chunks(BATCH_ROWS) {
                out.push(by_keys(verb, chunk));
            }
        }
    }
    // Upserts, per table and column set.
    let mut upserts: Vec<(UpsertShape<'_>, Vec<&RowChange>)> = Vec::new();
    for (_, f, _) in &finals {
        if let Final::Upsert(change) = f
            && let Some(after) = change.after.as_ref()
        {
            let cols: Vec<&str> = written(after, change).map(|(c, _)| c.as_str()).collect();
            let k = (change.db.as_str(), change.table.as_str(), cols);
            match upserts.iter_mut().find(|(x, _)| *x == k) {
                Some((_, v)) => v.push(change),
                None => upserts.push((k, vec![change])),
            }
        }
    }
    for ((_, _, cols), rows) in upserts {
        if cols.is_empty() {
            continue;
        }
        for chunk in rows.chunks(BATCH_ROWS) {
            let names: Vec<String> = cols.iter().map(|c| quote(c)).collect();
            let mut tuples = Vec::with_capacity(chunk.len());
            let mut params = Vec::with_capacity(chunk.len() * cols.len());
            for change in chunk {
                let Some(after) = change.after.as_ref() else { continue };
                let values: Vec<&Value> = written(after, change).map(|(_, v)| v).collect();
                tuples.push(format!(
                    "({})",
                    values.iter().map(|v| placeholder(v)).collect::<Vec<_>>().join(", ")
                ));
                params.extend(values.iter().map(|v| bind(v)));
            }
            let updates: Vec<String> = names.iter().map(|n| format!("{n} = VALUES({n})")).collect();
            out.push(Statement {
                sql: format!(
                    "INSERT INTO {} ({}) VALUES {} ON DUPLICATE KEY UPDATE {}",
                    table(chunk[0]),
                    names.join(", "),
                    tuples.join(", "),
                    updates.join(", ")
                ),
                params,
                finds: None,
                fresh: false,
            });
        }
    }
    out.extend(keyless.into_iter().filter_map(statement));
    out
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    fn row(id: i64, qty: i64) -> Row {
        Row(vec![("id".into(), Value::Int { v: id }), ("qty".into(), Value::Int { v: qty })])
    }

    fn change(op: Op, before: Option<Row>, after: Option<Row>) -> RowChange {
        let key_of = |r: &Row| Row(vec![("id".into(), r.get("id").cloned().unwrap_or(Value::Null))]);
        let key = after.as_ref().or(before.as_ref()).map(key_of).unwrap_or_default();
        RowChange { db: "psi".into(), table: "stock".into(), op, key, before, after, generated: Vec::new() }
    }

    #[test]
    fn a_group_collapses_to_final_states_with_deletes_first_and_batched_upserts() {
        let changes = vec![
            change(Op::Insert, None, Some(row(1, 5))),
            change(Op::Update, Some(row(1, 5)), Some(row(1, 4))),
            change(Op::Insert, None, Some(row(2, 9))),
            change(Op::Delete, Some(row(3, 1)), None),
            change(Op::Insert, None, Some(row(4, 1))),
            change(Op::Delete, Some(row(4, 1)), None),
            change(Op::Update, Some(row(5, 2)), Some(row(6, 2))),
        ];
        let s = batch(&changes);
        assert_eq!(s.len(), 2, "{s:#?}");
        assert_eq!(s[0].sql, "DELETE FROM `psi`.`stock` WHERE (`id`) IN ((?), (?), (?))");
        assert_eq!(s[0].params, vec![MyValue::Int(3), MyValue::Int(4), MyValue::Int(5)]);
        assert_eq!(
            s[0].finds,
            Some(2),
            "rows 3 and 5 existed at the origin; row 4 was inserted in the group"
        );
        assert!(s[1].sql.starts_with("INSERT INTO `psi`.`stock` (`id`, `qty`) VALUES (?, ?), (?, ?), (?, ?) ON DUPLICATE KEY UPDATE"), "{}", s[1].sql);
        assert_eq!(
            s[1].params,
            vec![
                MyValue::Int(1),
                MyValue::Int(4),
                MyValue::Int(2),
                MyValue::Int(9),
                MyValue::Int(6),
                MyValue::Int(2)
            ],
            "row 1's final image, row 2, and the moved row under its new key"
        );
        assert_eq!(s[1].finds, None);
    }

    #[test]
    fn ferrys_heartbeat_is_written_by_state_and_never_required_to_exist() {
        let mut beat = change(Op::Update, Some(row(1, 1)), Some(row(1, 2)));
        beat.db = "ferry".into();
        beat.table = "heartbeat".into();
        let one = statement(&beat).unwrap();
        assert!(one.sql.starts_with("INSERT INTO `ferry`.`heartbeat`"), "{}", one.sql);
        assert_eq!(one.finds, None);
        let s = batch([&beat]);
        assert_eq!(s.len(), 1, "{s:#?}");
        assert!(s[0].sql.starts_with("INSERT INTO `ferry`.`heartbeat`"), "{}", s[0].sql);
        assert_eq!(s[0].finds, None);
    }

    #[test]
    fn rows_the_group_first_changes_by_their_before_image_must_exist_before_anything_is_written() {
        let changes = vec![
            change(Op::Update, Some(row(7, 1)), Some(row(7, 2))),
            change(Op::Insert, None, Some(row(8, 1))),
            change(Op::Update, Some(row(8, 1)), Some(row(8, 3))),
            change(Op::Update, Some(row(9, 1)), Some(row(9, 0))),
        ];
        let s = batch(&changes);
        assert_eq!(s.len(), 2, "{s:#?}");
        assert_eq!(s[0].sql, "SELECT COUNT(*) FROM `psi`.`stock` WHERE (`id`) IN ((?), (?))");
        assert_eq!(s[0].params, vec![MyValue::Int(7), MyValue::Int(9)], "row 8 was inserted in the group");
        assert_eq!(s[0].finds, Some(2));
        assert!(s[1].sql.starts_with("INSERT INTO"), "{}", s[1].sql);
    }
}
