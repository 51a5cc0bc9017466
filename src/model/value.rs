//! Typed column values, exact for every MariaDB/MySQL type, and their JSON form in the wire
//! envelope (`docs/wire-format.md`): `{"t": TYPE, "v": VALUE, ...}`.
//!
//! Exactness rules: integers keep sign and width (`int` / `uint`), DECIMAL is its exact text,
//! binary data is base64, character data is text only when its charset could be decoded
//! (otherwise it stays `bytes`), temporal values are MySQL's literal text with `p` fractional
//! digits (zero dates included), ENUM and SET are their string values.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Value {
    Null,
    Int {
        v: i64,
    },
    Uint {
        v: u64,
    },
    Float {
        v: f32,
    },
    Double {
        v: f64,
    },
    Decimal {
        v: String,
    },
    Text {
        v: String,
    },
    Bytes {
        #[serde(with = "base64")]
        v: Vec<u8>,
    },
    /// `YYYY-MM-DD`
    Date {
        v: String,
    },
    /// `YYYY-MM-DD hh:mm:ss[.f…]`, `p` fractional digits.
    Datetime {
        v: String,
        p: u8,
    },
    /// UTC, same text form as `datetime`; `0000-00-00 00:00:00` is the zero timestamp.
    Timestamp {
        v: String,
        p: u8,
    },
    /// `[-]hhh:mm:ss[.f…]`
    Time {
        v: String,
        p: u8,
    },
    /// 0 is the zero year `0000`.
    Year {
        v: u16,
    },
    /// The bits as an unsigned number, and the column width.
    Bit {
        v: u64,
        bits: u8,
    },
    Enum {
        v: String,
    },
    Set {
        v: Vec<String>,
    },
    /// JSON document text (MySQL JSON columns; MariaDB JSON is LONGTEXT and arrives as text).
    Json {
        v: String,
    },
}

/// A row image: column name → value, in table column order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row(pub Vec<(String, Value)>);

impl Row {
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.iter().find(|(c, _)| c == column).map(|(_, v)| v)
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(c, _)| c.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of column name to typed value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Row(out))
            }
        }
        d.deserialize_map(RowVisitor)
    }
}

/// `YYYY-MM-DD hh:mm:ss` plus `precision` digits of `micros` (0..=6).
pub fn format_datetime(
    (y, mo, d): (u16, u8, u8),
    (h, mi, s): (u8, u8, u8),
    micros: u32,
    precision: u8,
) -> String {
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}{}", fraction(micros, precision))
}

/// `[-]hh:mm:ss` (hours may exceed 99) plus `precision` digits of `micros`.
pub fn format_time(negative: bool, hours: u32, mi: u8, s: u8, micros: u32, precision: u8) -> String {
    let sign = if negative { "-" } else { "" };
    format!("{sign}{hours:02}:{mi:02}:{s:02}{}", fraction(micros, precision))
}

fn fraction(micros: u32, precision: u8) -> String {
    if precision == 0 {
        return String::new();
    }
    let digits = format!("{micros:06}");
    format!(".{}", &digits[..usize::from(precision.min(6))])
}

/// The UTC civil date-time of `secs` since the Unix epoch: (year, month, day, h, m, s).
pub fn civil_from_unix(secs: i64) -> (i64, u8, u8, u8, u8, u8) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, (rem / 3600) as u8, ((rem % 3600) / 60) as u8, (rem % 60) as u8)
}

/// Base64 (RFC 4648, padded) for `bytes` values.
pub mod base64 {
    use serde::{Deserialize, Deserializer, Serializer};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        let text = text.trim_end_matches('=');
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let (mut acc, mut nbits) = (0u32, 0u32);
        for c in text.bytes() {
            let v =
                ALPHABET.iter().position(|a| *a == c).ok_or_else(|| format!("invalid base64 byte {c:#x}"))?;
            acc = (acc << 6) | v as u32;
            nbits += 6;
            if nbits >= 8 {
                nbits -= 8;
                out.push((acc >> nbits) as u8);
                acc &= (1 << nbits) - 1;
            }
        }
        Ok(out)
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_json_exactly() {
        let row = Row(vec![
            ("i".into(), Value::Int { v: i64::MIN }),
            ("u".into(), Value::Uint { v: u64::MAX }),
            ("f".into(), Value::Float { v: 3.4028235e38 }),
            ("d".into(), Value::Double { v: -2.2250738585072014e-308 }),
            (
                "dec".into(),
                Value::Decimal {
                    v: "-99999999999999999999999999999999999.999999999999999999999999999999".into(),
                },
            ),
            ("b".into(), Value::Bytes { v: vec![0, 0xff, 0xfe, b'a'] }),
            ("t".into(), Value::Time { v: "-838:59:59.000000".into(), p: 6 }),
            ("s".into(), Value::Set { v: vec!["a".into(), "c".into()] }),
            ("n".into(), Value::Null),
        ]);
        let json = serde_json::to_string(&row).unwrap();
        assert!(json.starts_with(r#"{"i":{"t":"int","v":-9223372036854775808}"#), "{json}");
        assert!(json.contains(r#""b":{"t":"bytes","v":"AP/+YQ=="}"#), "{json}");
        let back: Row = serde_json::from_str(&json).unwrap();
        assert_eq!(back, row);
    }

    #[test]
    fn base64_round_trips_every_length() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(97)).collect();
            assert_eq!(base64::decode(&base64::encode(&bytes)).unwrap(), bytes, "length {n}");
        }
        assert_eq!(base64::encode(b"foobar"), "Zm9vYmFy");
        assert!(base64::decode("a$==").is_err());
    }

    #[test]
    fn civil_dates_from_unix_seconds() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil_from_unix(2_147_483_647), (2038, 1, 19, 3, 14, 7));
        assert_eq!(civil_from_unix(-1), (1969, 12, 31, 23, 59, 59));
    }

    #[test]
    fn temporal_text_has_exactly_the_precision() {
        assert_eq!(format_datetime((2026, 11, 22), (1, 2, 3), 123_456, 3), "2026-11-22 01:02:03.123");
        assert_eq!(format_datetime((0, 0, 0), (0, 0, 0), 0, 0), "0000-00-00 00:00:00");
        assert_eq!(format_time(true, 838, 59, 59, 0, 6), "-838:59:59.000000");
        assert_eq!(format_time(false, 1, 2, 3, 500_000, 1), "01:02:03.5");
    }
}
