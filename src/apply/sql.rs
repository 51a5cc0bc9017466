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
}

/// `` `name` `` with backticks doubled.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn table(row: &RowChange) -> String {
    format!("{}.{}", quote(&row.db), quote(&row.table))
}

/// The placeholder for a value: text goes through utf8mb4 into the column's charset.
fn placeholder(v: &Value) -> &'static str {
    match v {
        Value::Text { .. } | Value::Enum { .. } | Value::Set { .. } | Value::Json { .. } => {
            "CONVERT(? USING utf8mb4)"
        }
        _ => "?",
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
    let conds: Vec<String> =
        cols.iter().map(|(c, v)| format!("{} <=> {}", quote(c), placeholder(v))).collect();
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
    })
}

/// `DELETE … WHERE <before's key>`.
pub fn delete(change: &RowChange) -> Option<Statement> {
    let before = change.before.as_ref()?;
    let (cond, params, limit) = locate(change, before);
    Some(Statement { sql: format!("DELETE FROM {} WHERE {cond}{limit}", table(change)), params })
}

/// The statement for a change as the origin made it.
pub fn statement(change: &RowChange) -> Option<Statement> {
    match change.op {
        Op::Insert => upsert(change),
        Op::Update => update(change),
        Op::Delete => delete(change),
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
