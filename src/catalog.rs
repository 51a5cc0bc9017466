//! A table as it is on one server: its stored columns (generated ones left out, since they
//! are not replicated), its primary key and its indexes; the SQL that reads a row as text and
//! turns it into a digest of its exact bytes (`check`), and the text back into typed values
//! (`Column::envelope`, for the initial sync). Used by `check` and `capture`.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::apply::sql::quote;

/// `information_schema.COLUMNS`: name, type, data type, nullable, charset, collation,
/// generated.
type ColumnRow = (String, String, String, String, Option<String>, Option<String>, String, u32);

/// One column's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The column's position in the table (row images keep table order).
    pub ordinal: u32,
    /// `COLUMN_TYPE`, e.g. `decimal(12,2)`, `varchar(40)`.
    pub column_type: String,
    pub data_type: String,
    pub nullable: bool,
    pub charset: Option<String>,
    pub collation: Option<String>,
}

/// A table's definition in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// Stored columns by name (generated columns left out).
    pub columns: Vec<Column>,
    /// Primary-key columns, in key order (empty: no primary key).
    pub key: Vec<String>,
    /// Every index: (name, unique, columns in order).
    pub indexes: Vec<(String, bool, Vec<String>)>,
}

impl Definition {
    /// Read `db.table`'s definition, or None when the table does not exist.
    pub async fn read(conn: &mut Conn, db: &str, table: &str) -> Result<Option<Self>, mysql_async::Error> {
        let rows: Vec<ColumnRow> = conn
            .exec(
                // EXTRA says `VIRTUAL GENERATED`/`STORED GENERATED` on MariaDB and MySQL alike
                // (MySQL has no IS_GENERATED column).
                "SELECT COLUMN_NAME, COLUMN_TYPE, DATA_TYPE, IS_NULLABLE, CHARACTER_SET_NAME, COLLATION_NAME, \
                 IF(EXTRA LIKE '%GENERATED%', 'ALWAYS', 'NEVER'), ORDINAL_POSITION FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY COLUMN_NAME",
                (db, table),
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let columns = rows
            .into_iter()
            .filter(|r| r.6 != "ALWAYS")
            .map(|(name, column_type, data_type, nullable, charset, collation, _, ordinal)| Column {
                name,
                ordinal,
                column_type: column_type.to_ascii_lowercase(),
                data_type: data_type.to_ascii_lowercase(),
                nullable: nullable == "YES",
                charset,
                collation,
            })
            .collect();
        // COLUMN_NAME is NULL for a MySQL functional index part: such parts are left out.
        let parts: Vec<(String, i64, Option<String>)> = conn
            .exec(
                "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (db, table),
            )
            .await?;
        let mut indexes: Vec<(String, bool, Vec<String>)> = Vec::new();
        for (name, non_unique, column) in parts.into_iter().filter_map(|(n, u, c)| Some((n, u, c?))) {
            match indexes.last_mut() {
                Some((n, _, cols)) if *n == name => cols.push(column),
                _ => indexes.push((name, non_unique == 0, vec![column])),
            }
        }
        let key =
            indexes.iter().find(|(n, _, _)| n == "PRIMARY").map(|(_, _, c)| c.clone()).unwrap_or_default();
        Ok(Some(Definition { columns, key, indexes }))
    }

    /// How `other` differs from this definition, in words (empty when they are the same).
    /// Column order does not matter (apply matches columns by name).
    pub fn differences(&self, other: &Definition, here: &str, there: &str) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.columns {
            match other.columns.iter().find(|o| o.name == c.name) {
                None => out.push(format!("column {} is in {here} but not in {there}", c.name)),
                Some(o) if o != c => out.push(format!(
                    "column {} is {} in {here} but {} in {there}",
                    c.name,
                    c.describe(),
                    o.describe()
                )),
                Some(_) => {}
            }
        }
        for o in &other.columns {
            if !self.columns.iter().any(|c| c.name == o.name) {
                out.push(format!("column {} is in {there} but not in {here}", o.name));
            }
        }
        if self.key != other.key {
            out.push(format!(
                "the primary key is ({}) in {here} but ({}) in {there}",
                self.key.join(", "),
                other.key.join(", ")
            ));
        }
        for (name, unique, cols) in &self.indexes {
            if !other.indexes.iter().any(|(n, u, c)| n == name && u == unique && c == cols) {
                out.push(format!("index {name} differs between {here} and {there}"));
            }
        }
        for (name, _, _) in &other.indexes {
            if !self.indexes.iter().any(|(n, _, _)| n == name) {
                out.push(format!("index {name} is in {there} but not in {here}"));
            }
        }
        out
    }

    /// The SQL expression of one row's digest: SHA-1 (hex) over every stored column, by name
    /// order, in a form that differs whenever a stored value does (see `encoded`). The
    /// chunk sums use its first 64 bits; the drill-down compares all 160.
    pub fn digest_sql(&self) -> String {
        let parts: Vec<String> = self.columns.iter().map(encoded).collect();
        format!("SHA1(CONCAT_WS(',', {}))", parts.join(", "))
    }

    /// The column's fractional-second digits (`datetime(6)` → 6), 0 when it has none.
    pub fn precision(&self, column: &str) -> u32 {
        self.columns
            .iter()
            .find(|c| c.name == column)
            .and_then(|c| c.column_type.split_once('(')?.1.trim_end_matches(')').parse().ok())
            .unwrap_or(0)
    }

    /// Whether `tombstone_key` can look up this table's keys: integer and text key columns
    /// (the forms the tombstone's JSON key holds as they are).
    pub fn plain_key(&self) -> bool {
        self.key.iter().all(|k| {
            self.columns.iter().any(|c| {
                c.name == *k
                    && (self.is_integer(k)
                        || (matches!(c.data_type.as_str(), "char" | "varchar" | "text") && !c.is_binary()))
            })
        })
    }

    /// The primary-key columns, quoted and comma-separated.
    pub fn key_list(&self) -> String {
        self.key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
    }

    /// Each stored column read as text (binary data as `0x…` hex), for reports and repairs.
    pub fn text_list(&self) -> String {
        self.columns.iter().map(text_sql).collect::<Vec<_>>().join(", ")
    }

    /// DATETIME or TIMESTAMP.
    pub fn is_temporal(&self, column: &str) -> bool {
        self.columns
            .iter()
            .any(|c| c.name == column && matches!(c.data_type.as_str(), "datetime" | "timestamp"))
    }

    pub fn is_integer(&self, column: &str) -> bool {
        self.columns.iter().any(|c| {
            c.name == column
                && matches!(c.data_type.as_str(), "tinyint" | "smallint" | "mediumint" | "int" | "bigint")
        })
    }
}

impl Column {
    /// A value read as text (`text_sql`'s form; None: NULL) as the wire envelope encodes this
    /// column's type (`model::Value`). Text that does not parse as the type stays text.
    pub fn envelope(&self, text: Option<&str>) -> serde_json::Value {
        use crate::model::Value;
        let Some(t) = text else { return serde_json::to_value(Value::Null).unwrap_or_default() };
        let precision = || {
            self.column_type
                .split_once('(')
                .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
                .unwrap_or(0)
        };
        let text = || Value::Text { v: t.to_string() };
        let value = match self.data_type.as_str() {
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
                if self.column_type.contains("unsigned") =>
            {
                t.parse().map_or_else(|_| text(), |v| Value::Uint { v })
            }
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint" => {
                t.parse().map_or_else(|_| text(), |v| Value::Int { v })
            }
            "float" => t.parse::<f64>().map_or_else(|_| text(), |v| Value::Float { v: v as f32 }),
            "double" => t.parse().map_or_else(|_| text(), |v| Value::Double { v }),
            "decimal" => Value::Decimal { v: t.to_string() },
            "date" => Value::Date { v: t.to_string() },
            "datetime" => Value::Datetime { v: t.to_string(), p: precision() },
            "timestamp" => Value::Timestamp { v: t.to_string(), p: precision() },
            "time" => Value::Time { v: t.to_string(), p: precision() },
            "year" => t.parse().map_or_else(|_| text(), |v| Value::Year { v }),
            "bit" => t.parse().map_or_else(|_| text(), |v| Value::Bit { v, bits: precision() }),
            "enum" => Value::Enum { v: t.to_string() },
            "set" => Value::Set { v: t.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect() },
            _ if self.is_binary() => match t.strip_prefix("0x").map(hex) {
                Some(Some(v)) => Value::Bytes { v },
                _ => text(),
            },
            _ => text(),
        };
        serde_json::to_value(value).unwrap_or_default()
    }

    fn describe(&self) -> String {
        let mut s = self.column_type.clone();
        s.push_str(if self.nullable { " NULL" } else { " NOT NULL" });
        if let Some(c) = &self.collation {
            s.push_str(&format!(" COLLATE {c}"));
        }
        s
    }

    /// Strings, binaries, JSON, ENUM/SET, spatial: anything whose text may hold a `,`.
    fn is_text_like(&self) -> bool {
        self.is_binary()
            || self.charset.is_some()
            || matches!(self.data_type.as_str(), "json" | "enum" | "set" | "longtext" | "text")
    }

    fn is_binary(&self) -> bool {
        matches!(
            self.data_type.as_str(),
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "bit" | "geometry"
        ) || self.charset.as_deref() == Some("binary")
    }
}

/// One column in the row's digest input, `,`-separated from the next: strings and binaries
/// as their byte length and then their stored bytes (so a change of letter case or of one
/// byte shows, whatever the collation says, and a `,` inside a value cannot shift the
/// columns); FLOAT widened exactly to DOUBLE (whose text form round-trips, unlike FLOAT's
/// own); BIT as its number; everything else (integers, DECIMAL with its fixed scale, temporal
/// types with their fraction) in its text form, which never holds a `,`. NULL is `N`, which
/// no length and no such text form is.
fn encoded(c: &Column) -> String {
    let q = quote(&c.name);
    match c.data_type.as_str() {
        "float" => format!("IFNULL(CAST({q} AS DOUBLE), 'N')"),
        "bit" => format!("IFNULL(CAST({q} AS UNSIGNED), 'N')"),
        _ if c.is_text_like() => format!("IFNULL(LENGTH({q}), 'N'), {q}"),
        _ => format!("IFNULL({q}, 'N')"),
    }
}

fn text_sql(c: &Column) -> String {
    let q = quote(&c.name);
    if c.is_binary() && c.data_type != "bit" {
        format!("IF({q} IS NULL, NULL, CONCAT('0x', HEX({q})))")
    } else if c.data_type == "bit" {
        format!("CAST(CAST({q} AS UNSIGNED) AS CHAR)")
    } else if c.data_type == "float" {
        format!("CAST(CAST({q} AS DOUBLE) AS CHAR)")
    } else {
        format!("CAST({q} AS CHAR)")
    }
}

/// `(a, b) > (x, y)` (or `<`) spelled out as `a > x OR (a = x AND b > y)`, which the range
/// optimizer uses (it does not use a row-constructor comparison). `values` in key order.
pub fn beyond(cols: &[String], values: &[mysql_async::Value], op: &str) -> (String, Vec<mysql_async::Value>) {
    let mut ors = Vec::new();
    let mut params = Vec::new();
    for i in 0..cols.len().min(values.len()) {
        let mut ands: Vec<String> = cols[..i].iter().map(|c| format!("{} = ?", quote(c))).collect();
        ands.push(format!("{} {op} ?", quote(&cols[i])));
        params.extend(values[..=i].iter().cloned());
        ors.push(format!("({})", ands.join(" AND ")));
    }
    (format!("({})", ors.join(" OR ")), params)
}

/// The user tables on `conn` (every schema but the server's own and ferry's), in
/// `schemas` when given; with `keyed`, only those with a primary key. Sorted.
pub async fn user_tables(
    conn: &mut mysql_async::Conn,
    schemas: Option<&[String]>,
    keyed: bool,
) -> Result<Vec<(String, String)>, mysql_async::Error> {
    use mysql_async::prelude::Queryable;
    let key = if keyed {
        " AND EXISTS (SELECT 1 FROM information_schema.STATISTICS s WHERE s.TABLE_SCHEMA = t.TABLE_SCHEMA \
         AND s.TABLE_NAME = t.TABLE_NAME AND s.INDEX_NAME = 'PRIMARY')"
    } else {
        ""
    };
    let rows: Vec<(String, String)> = conn
        .query(format!(
            "SELECT t.TABLE_SCHEMA, t.TABLE_NAME FROM information_schema.TABLES t WHERE t.TABLE_TYPE = 'BASE TABLE' \
             AND t.TABLE_SCHEMA NOT IN {}{key} ORDER BY 1, 2",
            crate::schema::NOT_USER_SCHEMAS
        ))
        .await?;
    Ok(rows.into_iter().filter(|(db, _)| schemas.is_none_or(|s| s.contains(db))).collect())
}

/// A value read back from `Definition::text_list` as the text it is (NULL: None).
pub fn text_of(v: mysql_async::Value) -> Option<String> {
    match v {
        mysql_async::Value::NULL => None,
        mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        other => Some(other.as_sql(true)),
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    text.len()
        .is_multiple_of(2)
        .then(|| {
            (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(data_type: &str, column_type: &str) -> Column {
        Column {
            name: "c".into(),
            ordinal: 1,
            column_type: column_type.into(),
            data_type: data_type.into(),
            nullable: true,
            charset: None,
            collation: None,
        }
    }

    #[test]
    fn values_are_encoded_as_the_envelope_encodes_them() {
        let cases = [
            (column("int", "int(11)"), Some("-7"), serde_json::json!({"t": "int", "v": -7})),
            (
                column("bigint", "bigint(20) unsigned"),
                Some("18446744073709551615"),
                serde_json::json!({"t": "uint", "v": 18446744073709551615u64}),
            ),
            (
                column("decimal", "decimal(12,4)"),
                Some("1.2340"),
                serde_json::json!({"t": "decimal", "v": "1.2340"}),
            ),
            (
                column("datetime", "datetime(6)"),
                Some("2026-11-01 00:00:00.000001"),
                serde_json::json!({"t": "datetime", "v": "2026-11-01 00:00:00.000001", "p": 6}),
            ),
            (
                column("varbinary", "varbinary(16)"),
                Some("0x00FF"),
                serde_json::json!({"t": "bytes", "v": "AP8="}),
            ),
            (column("set", "set('a','b')"), Some("a,b"), serde_json::json!({"t": "set", "v": ["a", "b"]})),
            (column("varchar", "varchar(4)"), None, serde_json::json!({"t": "null"})),
        ];
        for (c, text, want) in cases {
            assert_eq!(c.envelope(text), want, "{c:?} {text:?}");
        }
    }
}
