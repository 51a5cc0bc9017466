//! What the check reads from one region: chunk checksums, per-row digests of a key range or of
//! chosen keys, rows as text, and the newest heartbeat each region has of every other.

use std::collections::BTreeMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Value as MyValue};

use super::table::Definition;
use crate::apply::sql::quote;
use crate::catalog::beyond;

/// A primary key's values as the server returned them (bound back as they are).
#[derive(Debug, Clone, PartialEq)]
pub struct Key(pub Vec<MyValue>);

impl Key {
    /// A text form, equal exactly when the values are: map key and display.
    pub fn id(&self) -> String {
        self.0.iter().map(|v| v.as_sql(true)).collect::<Vec<_>>().join(",")
    }
}

/// A range of primary keys: above `after` (exclusive) up to `upto` (inclusive); None = open.
#[derive(Debug, Clone, Default)]
pub struct Range {
    pub after: Option<Key>,
    pub upto: Option<Key>,
}

/// A chunk's aggregate in one region: its row count and the XOR of the first 64 bits of its
/// rows' digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sum {
    pub rows: u64,
    pub xor: u64,
}

/// A digest per key (hex MD5).
pub type Digests = BTreeMap<String, (Key, String)>;

fn tuple(cols: &str, n: usize) -> String {
    if n == 1 { cols.to_string() } else { format!("({cols})") }
}

fn marks(n: usize) -> String {
    let m = vec!["?"; n].join(", ");
    if n == 1 { m } else { format!("({m})") }
}

/// `WHERE` text and parameters of `range` over `def`'s key.
fn range_where(def: &Definition, range: &Range) -> (String, Vec<MyValue>) {
    let mut conds = vec!["1 = 1".to_string()];
    let mut params = Vec::new();
    if let Some(after) = &range.after {
        let (c, p) = beyond(&def.key, &after.0, ">");
        conds.push(c);
        params.extend(p);
    }
    if let Some(upto) = &range.upto {
        let (c, p) = beyond(&def.key, &upto.0, "<");
        conds.push(format!("({c} OR {})", equal(&def.key)));
        params.extend(p);
        params.extend(upto.0.iter().cloned());
    }
    (conds.join(" AND "), params)
}

fn equal(cols: &[String]) -> String {
    format!("({})", cols.iter().map(|c| format!("{} = ?", quote(c))).collect::<Vec<_>>().join(" AND "))
}

/// The key `size` rows above `after` (the end of a chunk of `size` rows), or None when fewer
/// remain.
pub async fn chunk_end(
    conn: &mut Conn,
    table: &str,
    def: &Definition,
    after: Option<&Key>,
    size: u64,
) -> Result<Option<Key>, mysql_async::Error> {
    let (cond, mut params) = range_where(def, &Range { after: after.cloned(), upto: None });
    params.push(MyValue::UInt(size.saturating_sub(1)));
    let row: Option<mysql_async::Row> = conn
        .exec_first(
            format!("SELECT {k} FROM {table} WHERE {cond} ORDER BY {k} LIMIT 1 OFFSET ?", k = def.key_list()),
            Params::Positional(params),
        )
        .await?;
    Ok(row.map(|r| Key(r.unwrap())))
}

/// Count and digest XOR of the rows in `range`.
pub async fn checksum(
    conn: &mut Conn,
    table: &str,
    def: &Definition,
    range: &Range,
) -> Result<Sum, mysql_async::Error> {
    let (cond, params) = range_where(def, range);
    // CAST: BIT_XOR of CONV's decimal text would clip values above 2^63 - 1.
    let row: Option<(u64, u64)> = conn
        .exec_first(
            format!(
                "SELECT COUNT(*), COALESCE(BIT_XOR(CAST(CONV(LEFT({d}, 16), 16, 10) AS UNSIGNED)), 0) \
                 FROM {table} WHERE {cond}",
                d = def.digest_sql()
            ),
            Params::Positional(params),
        )
        .await?;
    let (rows, xor) = row.unwrap_or_default();
    Ok(Sum { rows, xor })
}

/// The keys of the rows whose `version` column lies in `[from, to]` (at most `limit`).
pub async fn keys_between(
    conn: &mut Conn,
    table: &str,
    def: &Definition,
    version: &str,
    from: &str,
    to: &str,
    limit: usize,
) -> Result<Vec<Key>, mysql_async::Error> {
    let v = quote(version);
    let rows: Vec<mysql_async::Row> = conn
        .exec(
            format!(
                "SELECT {k} FROM {table} WHERE {v} >= ? AND {v} <= ? ORDER BY {v} LIMIT ?",
                k = def.key_list()
            ),
            (from, to, limit as u64),
        )
        .await?;
    Ok(rows.into_iter().map(|r| Key(r.unwrap())).collect())
}

/// Every row's digest in `range`.
pub async fn digests(
    conn: &mut Conn,
    table: &str,
    def: &Definition,
    range: &Range,
) -> Result<Digests, mysql_async::Error> {
    let (cond, params) = range_where(def, range);
    let sql = format!("SELECT {d}, {k} FROM {table} WHERE {cond}", d = def.digest_sql(), k = def.key_list());
    collect_digests(conn.exec(sql, Params::Positional(params)).await?)
}

/// The digests of `keys` (absent rows are absent from the result).
pub async fn digests_of(
    conn: &mut Conn,
    table: &str,
    def: &Definition,
    keys: &[Key],
) -> Result<Digests, mysql_async::Error> {
    let mut out = Digests::new();
    for batch in keys.chunks(500) {
        let (cond, params) = key_where(def, batch);
        let sql =
            format!("SELECT {d}, {k} FROM {table} WHERE {cond}", d = def.digest_sql(), k = def.key_list());
        out.extend(collect_digests(conn.exec(sql, Params::Positional(params)).await?)?);
    }
    Ok(out)
}

fn key_where(def: &Definition, keys: &[Key]) -> (String, Vec<MyValue>) {
    let cols = tuple(&def.key_list(), def.key.len());
    let list = vec![marks(def.key.len()); keys.len()].join(", ");
    (format!("{cols} IN ({list})"), keys.iter().flat_map(|k| k.0.iter().cloned()).collect())
}

fn collect_digests(rows: Vec<mysql_async::Row>) -> Result<Digests, mysql_async::Error> {
    let mut out = Digests::new();
    for row in rows {
        let mut values = row.unwrap();
        let digest = crate::catalog::text_of(values.remove(0)).unwrap_or_default();
        let key = Key(values);
        out.insert(key.id(), (key, digest));
    }
    Ok(out)
}

/// The rows of `keys` as text per column (`def.columns` order), with their digests.
pub async fn rows_of(
    conn: &mut Conn,
    table: &str,
    def: &Definition,
    keys: &[Key],
) -> Result<BTreeMap<String, (String, Vec<Option<String>>)>, mysql_async::Error> {
    let mut out = BTreeMap::new();
    for batch in keys.chunks(500) {
        let (cond, params) = key_where(def, batch);
        let sql = format!(
            "SELECT {d}, {k}, {t} FROM {table} WHERE {cond}",
            d = def.digest_sql(),
            k = def.key_list(),
            t = def.text_list()
        );
        let rows: Vec<mysql_async::Row> = conn.exec(sql, Params::Positional(params)).await?;
        for row in rows {
            let mut values = row.unwrap();
            let digest = crate::catalog::text_of(values.remove(0)).unwrap_or_default();
            let key = Key(values.drain(..def.key.len()).collect());
            let text = values.into_iter().map(crate::catalog::text_of).collect();
            out.insert(key.id(), (digest, text));
        }
    }
    Ok(out)
}

/// The newest heartbeat (origin clock, µs) this region holds of each region.
pub async fn heartbeats(conn: &mut Conn) -> Result<BTreeMap<String, i64>, mysql_async::Error> {
    let rows: Vec<(String, i64)> = conn.query("SELECT region, beat_at_us FROM ferry.heartbeat").await?;
    Ok(rows.into_iter().collect())
}
