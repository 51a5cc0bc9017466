//! Where a full check stands, so that one killed half-way resumes: `ferry.check_progress` on
//! the local primary holds, per table, the last key whose chunk was compared (written after
//! every chunk) and whether the table is done. A resumed check redoes at most the chunk that
//! was running; a completed check clears the tables and records when it completed (the row
//! named `''`), so a restart neither repeats nor postpones the schedule.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as MyValue};
use serde_json::{Value as Json, json};

use super::Key;

/// `ferry.check_progress` on one connection.
pub struct Store {
    conn: Conn,
}

/// A table's saved place.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// Compare keys after this one next.
    After(Key),
    /// This table was compared in full.
    Done,
}

impl Store {
    pub fn new(conn: Conn) -> Self {
        Self { conn }
    }

    /// Each table's saved place (empty when no full check is under way).
    pub async fn load(&mut self) -> Result<Vec<(String, Place)>, String> {
        let rows: Vec<(String, Option<String>, i8)> = self
            .conn
            .query("SELECT table_name, after_key, done FROM ferry.check_progress WHERE table_name <> ''")
            .await
            .map_err(|e| format!("reading ferry.check_progress: {e}"))?;
        Ok(rows
            .into_iter()
            .filter_map(|(table, key, done)| {
                if done != 0 {
                    return Some((table, Place::Done));
                }
                let key = key.and_then(|k| decode(&serde_json::from_str(&k).ok()?))?;
                Some((table, Place::After(key)))
            })
            .collect())
    }

    /// Record `place` for `table`.
    pub async fn save(&mut self, table: &str, place: &Place) -> Result<(), String> {
        let (key, done) = match place {
            Place::After(k) => (Some(encode(k).to_string()), 0),
            Place::Done => (None, 1),
        };
        self.conn
            .exec_drop(
                "REPLACE INTO ferry.check_progress (table_name, after_key, done) VALUES (?, ?, ?)",
                (table, key, done),
            )
            .await
            .map_err(|e| format!("writing ferry.check_progress: {e}"))
    }

    /// The full check completed: nothing to resume; the row named `''` records when.
    pub async fn clear(&mut self) -> Result<(), String> {
        for sql in [
            "DELETE FROM ferry.check_progress WHERE table_name <> ''",
            "REPLACE INTO ferry.check_progress (table_name, after_key, done) VALUES ('', NULL, 1)",
        ] {
            self.conn.query_drop(sql).await.map_err(|e| format!("clearing ferry.check_progress: {e}"))?;
        }
        Ok(())
    }

    /// How long ago a full check last completed (None: never, here).
    pub async fn completed_ago(&mut self) -> Result<Option<std::time::Duration>, String> {
        let age: Option<Option<f64>> = self
            .conn
            .query_first(
                "SELECT UNIX_TIMESTAMP(NOW(6)) - UNIX_TIMESTAMP(updated_at) FROM ferry.check_progress \
                 WHERE table_name = ''",
            )
            .await
            .map_err(|e| format!("reading ferry.check_progress: {e}"))?;
        Ok(age.flatten().map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
    }
}

/// A key's values as JSON, each tagged with its kind so it binds back as it was read.
pub fn encode(key: &Key) -> Json {
    Json::Array(
        key.0
            .iter()
            .map(|v| match v {
                MyValue::NULL => Json::Null,
                MyValue::Int(i) => json!({ "i": i }),
                MyValue::UInt(u) => json!({ "u": u }),
                MyValue::Float(f) => json!({ "f": f }),
                MyValue::Double(d) => json!({ "d": d }),
                MyValue::Bytes(b) => json!({ "b": crate::model::base64::encode(b) }),
                MyValue::Date(y, mo, d, h, mi, s, us) => json!({ "date": [y, mo, d, h, mi, s, us] }),
                MyValue::Time(neg, d, h, mi, s, us) => json!({ "time": [neg, d, h, mi, s, us] }),
            })
            .collect(),
    )
}

/// The key `encode` wrote, or None when it is not one.
pub fn decode(json: &Json) -> Option<Key> {
    let mut out = Vec::new();
    for v in json.as_array()? {
        let value = match v {
            Json::Null => MyValue::NULL,
            Json::Object(m) => {
                let (tag, inner) = m.iter().next()?;
                let n = |i: usize| inner.get(i).and_then(Json::as_u64);
                match tag.as_str() {
                    "i" => MyValue::Int(inner.as_i64()?),
                    "u" => MyValue::UInt(inner.as_u64()?),
                    "f" => MyValue::Float(inner.as_f64()? as f32),
                    "d" => MyValue::Double(inner.as_f64()?),
                    "b" => MyValue::Bytes(crate::model::base64::decode(inner.as_str()?).ok()?),
                    "date" => MyValue::Date(
                        u16::try_from(n(0)?).ok()?,
                        u8::try_from(n(1)?).ok()?,
                        u8::try_from(n(2)?).ok()?,
                        u8::try_from(n(3)?).ok()?,
                        u8::try_from(n(4)?).ok()?,
                        u8::try_from(n(5)?).ok()?,
                        u32::try_from(n(6)?).ok()?,
                    ),
                    "time" => MyValue::Time(
                        inner.get(0)?.as_bool()?,
                        u32::try_from(n(1)?).ok()?,
                        u8::try_from(n(2)?).ok()?,
                        u8::try_from(n(3)?).ok()?,
                        u8::try_from(n(4)?).ok()?,
                        u32::try_from(n(5)?).ok()?,
                    ),
                    _ => return None,
                }
            }
            _ => return None,
        };
        out.push(value);
    }
    Some(Key(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_garbage_is_none() {
        let key = Key(vec![
            MyValue::Int(-7),
            MyValue::UInt(u64::MAX),
            MyValue::Bytes(b"a,\x00b".to_vec()),
            MyValue::Date(2026, 12, 1, 5, 6, 7, 123_456),
            MyValue::Time(true, 1, 2, 3, 4, 5),
            MyValue::Double(0.1),
            MyValue::NULL,
        ]);
        assert_eq!(decode(&encode(&key)), Some(key));
        for bad in [json!(7), json!([{ "x": 1 }]), json!([{ "date": [1] }]), json!([{ "b": "%%" }])] {
            assert_eq!(decode(&bad), None, "{bad}");
        }
    }
}
