//! Row decoding: a TABLE_MAP event's schema (column names, types, signedness, charsets, primary
//! key, ENUM/SET strings, fractional precision, all from `binlog_row_metadata=FULL`) applied to
//! the row images of the rows events that follow it. Rows are decoded with the schema *at their
//! position* in the binlog, so an `ALTER TABLE` between events never shifts values.
//!
//! mysql_common indexes metadata without bounds checks, so a malformed event could panic in
//! it; every call into it here is contained and turned into a [`DecodeError`].

use std::panic::{AssertUnwindSafe, catch_unwind};

use mysql_async::Value as MyValue;
use mysql_async::binlog::events::{
    OptionalMetaExtractor, OptionalMetadataField, RowsEventData, TableMapEvent,
};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_common::io::ParseBuf;

use crate::model::{Op, Row, RowChange, Value, civil_from_unix, format_datetime, format_time};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("table map for {table}: {reason}")]
    TableMap { table: String, reason: String },
    #[error("{table}.{column}: {reason}")]
    Column { table: String, column: String, reason: String },
    #[error("rows event for {table}: {reason}")]
    Rows { table: String, reason: String },
    #[error("malformed event: the decoder panicked ({0})")]
    Panicked(String),
}

/// What decoding needs to know about one column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnShape {
    pub name: String,
    pub kind: ColumnType,
    pub unsigned: bool,
    pub primary_key: bool,
    /// Fractional digits of temporal columns; BIT width in bits.
    pub precision: u8,
    pub bit_width: u8,
    pub enum_values: Vec<String>,
    pub set_values: Vec<String>,
    /// Declared byte length of CHAR/BINARY columns: the binlog strips BINARY's trailing zero
    /// bytes, which SELECT returns.
    pub fixed_len: usize,
    /// The column's TABLE_MAP metadata bytes (cached: looking them up walks every column).
    pub meta: Vec<u8>,
    /// Collation id of character columns (0 when not a character column or not known).
    pub collation: u16,
}

/// A table's shape as one TABLE_MAP event describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableShape {
    pub db: String,
    pub table: String,
    pub columns: Vec<ColumnShape>,
}

impl TableShape {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.db, self.table)
    }

    /// Read the shape out of a TABLE_MAP event. Requires column names in the metadata.
    pub fn from_table_map(tme: &TableMapEvent<'_>) -> Result<Self, DecodeError> {
        contained(|| Self::read(tme))?
    }

    fn read(tme: &TableMapEvent<'_>) -> Result<Self, DecodeError> {
        let table = format!("{}.{}", tme.database_name(), tme.table_name());
        let fail = |reason: String| DecodeError::TableMap { table: table.clone(), reason };
        let count = usize::try_from(tme.columns_count()).map_err(|_| fail("column count".into()))?;
        let mut columns = Vec::with_capacity(count);
        for i in 0..count {
            let kind = tme
                .get_column_type(i)
                .map_err(|e| fail(format!("column {i}: {e}")))?
                .ok_or_else(|| fail(format!("column {i} has no type")))?;
            let meta = tme.get_column_metadata(i).unwrap_or(&[]);
            let precision = match kind {
                ColumnType::MYSQL_TYPE_DATETIME2
                | ColumnType::MYSQL_TYPE_TIME2
                | ColumnType::MYSQL_TYPE_TIMESTAMP2 => meta.first().copied().unwrap_or(0).min(6),
                _ => 0,
            };
            let bit_width = match kind {
                ColumnType::MYSQL_TYPE_BIT => {
                    let (bits, bytes) =
                        (meta.first().copied().unwrap_or(0), meta.get(1).copied().unwrap_or(0));
                    bytes.saturating_mul(8).saturating_add(bits)
                }
                _ => 0,
            };
            let fixed_len = match kind {
                ColumnType::MYSQL_TYPE_STRING => string_length(meta),
                _ => 0,
            };
            columns.push(ColumnShape {
                meta: meta.to_vec(),
                collation: 0,
                fixed_len,
                name: String::new(),
                kind,
                unsigned: false,
                primary_key: false,
                precision,
                bit_width,
                enum_values: Vec::new(),
                set_values: Vec::new(),
            });
        }

        let mut have_names = false;
        for field in tme.iter_optional_meta() {
            let field = field.map_err(|e| fail(format!("optional metadata: {e}")))?;
            match field {
                OptionalMetadataField::ColumnName(names) => {
                    for (col, name) in columns.iter_mut().zip(names.iter_names()) {
                        let name = name.map_err(|e| fail(format!("column name: {e}")))?;
                        col.name = name.name().into_owned();
                    }
                    have_names = true;
                }
                OptionalMetadataField::Signedness(bits) => {
                    let numeric = columns.iter_mut().filter(|c| c.kind.is_numeric_type());
                    for (col, bit) in numeric.zip(bits.iter()) {
                        col.unsigned = *bit;
                    }
                }
                OptionalMetadataField::SimplePrimaryKey(pk) => {
                    for index in pk.iter_indexes() {
                        let index = index.map_err(|e| fail(format!("primary key: {e}")))?;
                        if let Some(col) = usize::try_from(index).ok().and_then(|i| columns.get_mut(i)) {
                            col.primary_key = true;
                        }
                    }
                }
                OptionalMetadataField::PrimaryKeyWithPrefix(pk) => {
                    for key in pk.iter_keys() {
                        let key = key.map_err(|e| fail(format!("primary key: {e}")))?;
                        if let Some(col) =
                            usize::try_from(key.column_index()).ok().and_then(|i| columns.get_mut(i))
                        {
                            col.primary_key = true;
                        }
                    }
                }
                OptionalMetadataField::EnumStrValue(enums) => {
                    let targets = columns.iter_mut().filter(|c| c.kind == ColumnType::MYSQL_TYPE_ENUM);
                    for (col, values) in targets.zip(enums.iter_values()) {
                        let values = values.map_err(|e| fail(format!("enum values: {e}")))?;
                        col.enum_values = values.values().iter().map(|v| text_of(v.value_raw())).collect();
                    }
                }
                OptionalMetadataField::SetStrValue(sets) => {
                    let targets = columns.iter_mut().filter(|c| c.kind == ColumnType::MYSQL_TYPE_SET);
                    for (col, values) in targets.zip(sets.iter_values()) {
                        let values = values.map_err(|e| fail(format!("set values: {e}")))?;
                        col.set_values = values.values().iter().map(|v| text_of(v.value_raw())).collect();
                    }
                }
                _ => {}
            }
        }
        let extractor = OptionalMetaExtractor::new(tme.iter_optional_meta())
            .map_err(|e| fail(format!("optional metadata: {e}")))?;
        let mut charsets = extractor.iter_charset();
        for col in columns.iter_mut().filter(|c| c.kind.is_character_type()) {
            match charsets.next() {
                Some(Ok(collation)) => col.collation = collation,
                Some(Err(e)) => return Err(fail(format!("column charset: {e}"))),
                None => break,
            }
        }
        if !have_names {
            return Err(fail(
                "no column names in the table map; the server needs binlog_row_metadata=FULL".into(),
            ));
        }
        Ok(Self { db: tme.database_name().into_owned(), table: tme.table_name().into_owned(), columns })
    }
}

/// Byte length of a CHAR/BINARY column from its two metadata bytes (the real type shares the
/// first byte with the high bits of the length).
fn string_length(meta: &[u8]) -> usize {
    let (b0, b1) =
        (usize::from(meta.first().copied().unwrap_or(0)), usize::from(meta.get(1).copied().unwrap_or(0)));
    if b0 & 0x30 != 0x30 { b1 | (((b0 & 0x30) ^ 0x30) << 4) } else { b1 }
}

/// ENUM/SET strings are stored in the column's charset; UTF-8 when valid, else Latin-1.
fn text_of(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => decode_cp1252(bytes),
    }
}

/// Decode all rows of one rows event into row changes.
pub fn decode_rows(
    event: &RowsEventData<'_>,
    tme: &TableMapEvent<'_>,
    shape: &TableShape,
) -> Result<Vec<RowChange>, DecodeError> {
    contained(|| {
        let op = match event {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => Op::Insert,
            RowsEventData::UpdateRowsEventV1(_)
            | RowsEventData::UpdateRowsEvent(_)
            | RowsEventData::PartialUpdateRowsEvent(_) => Op::Update,
            RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => Op::Delete,
        };
        if !matches!(event, RowsEventData::PartialUpdateRowsEvent(_)) {
            return parse_rows(event, op, shape);
        }
        // Partial JSON updates (MySQL binlog_row_value_options=PARTIAL_JSON, refused by
        // preflight) still decode through mysql_common's row reader.
        let mut out = Vec::new();
        for pair in event.rows(tme) {
            let (before, after) =
                pair.map_err(|e| DecodeError::Rows { table: shape.qualified(), reason: e.to_string() })?;
            let before = before.map(|r| decode_row(r, shape)).transpose()?;
            let after = after.map(|r| decode_row(r, shape)).transpose()?;
            out.push(row_change(shape, op, before, after));
        }
        Ok(out)
    })?
}

/// Parse every row image of a write/update/delete event straight from its bytes, with the
/// shape's cached metadata.
fn parse_rows<'a>(
    event: &'a RowsEventData<'a>,
    op: Op,
    shape: &'a TableShape,
) -> Result<Vec<RowChange>, DecodeError> {
    let fail = |reason: String| DecodeError::Rows { table: shape.qualified(), reason };
    let columns = usize::try_from(event.num_columns()).map_err(|_| fail("column count".into()))?;
    if columns > shape.columns.len() {
        return Err(fail(format!(
            "{columns} columns in the rows event, {} in the table map",
            shape.columns.len()
        )));
    }
    let before_cols: Option<Vec<bool>> = event
        .columns_before_image()
        .map(|b| (0..columns).map(|i| b.get(i).as_deref().copied().unwrap_or(false)).collect());
    let after_cols: Option<Vec<bool>> = event
        .columns_after_image()
        .map(|b| (0..columns).map(|i| b.get(i).as_deref().copied().unwrap_or(false)).collect());
    parse_images(event.rows_data(), before_cols.as_deref(), after_cols.as_deref(), op, shape)
}

/// Every row of an event's data: each row its before and/or after image. A row that consumes
/// no bytes (no column present, yet data left) is an error: looping on it would never end.
fn parse_images<'a>(
    data: &'a [u8],
    before_cols: Option<&[bool]>,
    after_cols: Option<&[bool]>,
    op: Op,
    shape: &'a TableShape,
) -> Result<Vec<RowChange>, DecodeError> {
    let mut buf = ParseBuf(data);
    let mut out = Vec::new();
    while !buf.is_empty() {
        let left = buf.0.len();
        let before = before_cols.map(|cols| parse_image(&mut buf, cols, shape)).transpose()?;
        let after = after_cols.map(|cols| parse_image(&mut buf, cols, shape)).transpose()?;
        if buf.0.len() == left {
            return Err(DecodeError::Rows {
                table: shape.qualified(),
                reason: format!("a row image with no columns present, {left} bytes of row data left"),
            });
        }
        out.push(row_change(shape, op, before, after));
    }
    Ok(out)
}

/// One row image: the null bitmap over the present columns, then each non-null value.
fn parse_image<'a>(
    buf: &mut ParseBuf<'a>,
    present: &[bool],
    shape: &'a TableShape,
) -> Result<Row, DecodeError> {
    let fail = |reason: String| DecodeError::Rows { table: shape.qualified(), reason };
    let count = present.iter().filter(|p| **p).count();
    let nulls: &[u8] = buf.parse(count.div_ceil(8)).map_err(|e| fail(format!("null bitmap: {e}")))?;
    let mut values = Vec::with_capacity(count);
    let present_columns = shape.columns.iter().zip(present).filter(|(_, p)| **p).map(|(c, _)| c);
    for (image_index, col) in present_columns.enumerate() {
        let is_null = nulls.get(image_index / 8).is_none_or(|b| b & (1 << (image_index % 8)) != 0);
        let value = if is_null {
            Value::Null
        } else {
            let raw: BinlogValue<'_> = buf
                .parse((col.kind, col.meta.as_slice(), col.unsigned, false))
                .map_err(|e| fail(format!("column {}: {e}", col.name)))?;
            convert(col, col.collation, raw).map_err(|reason| DecodeError::Column {
                table: shape.qualified(),
                column: col.name.clone(),
                reason,
            })?
        };
        values.push((col.name.clone(), value));
    }
    Ok(Row(values))
}

/// A row change with its primary key taken from the after image (the before image for deletes).
fn row_change(shape: &TableShape, op: Op, before: Option<Row>, after: Option<Row>) -> RowChange {
    let image = match op {
        Op::Delete => before.as_ref(),
        _ => after.as_ref(),
    };
    let key = image.map(|img| key_of(img, shape)).unwrap_or_default();
    RowChange {
        db: shape.db.clone(),
        table: shape.table.clone(),
        op,
        key,
        before,
        after,
        generated: Vec::new(),
    }
}

fn key_of(image: &Row, shape: &TableShape) -> Row {
    Row(shape
        .columns
        .iter()
        .filter(|c| c.primary_key)
        .filter_map(|c| image.get(&c.name).map(|v| (c.name.clone(), v.clone())))
        .collect())
}

fn decode_row(mut row: BinlogRow, shape: &TableShape) -> Result<Row, DecodeError> {
    let columns = row.columns();
    let mut out = Vec::with_capacity(columns.len());
    for (i, column) in columns.iter().enumerate() {
        let name = column.name_str().into_owned();
        let col = shape.columns.iter().find(|c| c.name == name).ok_or_else(|| DecodeError::Column {
            table: shape.qualified(),
            column: name.clone(),
            reason: "not in the table map".into(),
        })?;
        let value = match row.take(i) {
            None => Value::Null,
            Some(v) => convert(col, column.character_set(), v).map_err(|reason| DecodeError::Column {
                table: shape.qualified(),
                column: name.clone(),
                reason,
            })?,
        };
        out.push((name, value));
    }
    Ok(Row(out))
}

/// Convert one decoded binlog value to a typed [`Value`].
pub fn convert(col: &ColumnShape, collation: u16, value: BinlogValue<'_>) -> Result<Value, String> {
    use ColumnType::*;
    let v = match value {
        BinlogValue::Value(v) => v,
        BinlogValue::Jsonb(j) => {
            let json: serde_json::Value = j.try_into().map_err(|e| format!("JSON: {e:?}"))?;
            return Ok(Value::Json { v: json.to_string() });
        }
        BinlogValue::JsonDiff(_) => {
            return Err("partial JSON updates are not supported; set binlog_row_value_options=''".into());
        }
    };
    if v == MyValue::NULL {
        return Ok(Value::Null);
    }
    let unexpected = |v: &MyValue| format!("unexpected value {v:?} for column type {:?}", col.kind);
    Ok(match col.kind {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG => {
            match v {
                MyValue::Int(i) if col.unsigned => Value::Uint { v: unsigned_of(col.kind, i) },
                MyValue::Int(i) => Value::Int { v: signed_of(col.kind, i) },
                MyValue::UInt(u) if col.unsigned => Value::Uint { v: u },
                MyValue::UInt(u) => Value::Int { v: u as i64 },
                other => return Err(unexpected(&other)),
            }
        }
        MYSQL_TYPE_FLOAT => match v {
            MyValue::Float(f) => Value::Float { v: f },
            other => return Err(unexpected(&other)),
        },
        MYSQL_TYPE_DOUBLE => match v {
            MyValue::Double(f) => Value::Double { v: f },
            other => return Err(unexpected(&other)),
        },
        MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => Value::Decimal { v: utf8(bytes(v, col)?)? },
        MYSQL_TYPE_YEAR => {
            let text = utf8(bytes(v, col)?)?;
            let year: u16 = text.parse().map_err(|_| format!("bad YEAR {text}"))?;
            // mysql_common adds 1900 to the stored byte; the stored 0 is the zero year.
            Value::Year { v: if year == 1900 { 0 } else { year } }
        }
        MYSQL_TYPE_NEWDATE | MYSQL_TYPE_DATE => match v {
            MyValue::Date(y, m, d, ..) => Value::Date { v: format!("{y:04}-{m:02}-{d:02}") },
            other => return Err(unexpected(&other)),
        },
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => match v {
            MyValue::Date(y, mo, d, h, mi, s, us) => Value::Datetime {
                v: format_datetime((y, mo, d), (h, mi, s), us, col.precision),
                p: col.precision,
            },
            other => return Err(unexpected(&other)),
        },
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => {
            let (secs, micros) = match v {
                MyValue::Int(s) => (s, 0),
                MyValue::Bytes(b) => {
                    let text = utf8(b)?;
                    let (s, us) = text.split_once('.').unwrap_or((text.as_str(), "0"));
                    let secs = s.parse().map_err(|_| format!("bad TIMESTAMP {text}"))?;
                    let micros = us.parse().map_err(|_| format!("bad TIMESTAMP {text}"))?;
                    (secs, micros)
                }
                other => return Err(unexpected(&other)),
            };
            let text = if secs == 0 && micros == 0 {
                format_datetime((0, 0, 0), (0, 0, 0), 0, col.precision)
            } else {
                let (y, mo, d, h, mi, s) = civil_from_unix(secs);
                let y = u16::try_from(y).map_err(|_| format!("TIMESTAMP {secs} out of range"))?;
                format_datetime((y, mo, d), (h, mi, s), micros, col.precision)
            };
            Value::Timestamp { v: text, p: col.precision }
        }
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => match v {
            MyValue::Time(neg, days, h, mi, s, us) => {
                let hours = days * 24 + u32::from(h);
                Value::Time { v: format_time(neg, hours, mi, s, us, col.precision), p: col.precision }
            }
            other => return Err(unexpected(&other)),
        },
        MYSQL_TYPE_BIT => {
            let b = bytes(v, col)?;
            if b.len() > 8 {
                return Err(format!("BIT value of {} bytes", b.len()));
            }
            Value::Bit { v: b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)), bits: col.bit_width }
        }
        MYSQL_TYPE_ENUM => match v {
            MyValue::Int(0) => Value::Enum { v: String::new() },
            MyValue::Int(i) => {
                let idx = usize::try_from(i - 1).map_err(|_| format!("bad ENUM index {i}"))?;
                let s = col
                    .enum_values
                    .get(idx)
                    .ok_or_else(|| format!("ENUM index {i} beyond the {} values", col.enum_values.len()))?;
                Value::Enum { v: s.clone() }
            }
            other => return Err(unexpected(&other)),
        },
        MYSQL_TYPE_SET => {
            let b = bytes(v, col)?;
            let mask = b.iter().rev().fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
            let members = col
                .set_values
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < 64 && mask & (1u64 << i) != 0)
                .map(|(_, s)| s.clone())
                .collect();
            Value::Set { v: members }
        }
        MYSQL_TYPE_JSON => Value::Json { v: utf8(bytes(v, col)?)? },
        MYSQL_TYPE_STRING if charset_of(collation) == Charset::Binary => {
            let mut b = bytes(v, col)?;
            if b.len() < col.fixed_len {
                b.resize(col.fixed_len, 0);
            }
            Value::Bytes { v: b }
        }
        MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_STRING
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_BLOB => text_or_bytes(bytes(v, col)?, collation),
        _ => match v {
            MyValue::Bytes(b) => Value::Bytes { v: b },
            other => return Err(unexpected(&other)),
        },
    })
}

fn bytes(v: MyValue, col: &ColumnShape) -> Result<Vec<u8>, String> {
    match v {
        MyValue::Bytes(b) => Ok(b),
        other => Err(format!("unexpected value {other:?} for column type {:?}", col.kind)),
    }
}

fn utf8(b: Vec<u8>) -> Result<String, String> {
    String::from_utf8(b).map_err(|e| format!("not UTF-8: {e}"))
}

/// mysql_common sign-extends or not depending on width; normalise by the column's width.
fn signed_of(kind: ColumnType, i: i64) -> i64 {
    match kind {
        ColumnType::MYSQL_TYPE_TINY => i64::from(i as i8),
        ColumnType::MYSQL_TYPE_SHORT => i64::from(i as i16),
        ColumnType::MYSQL_TYPE_INT24 => (i << 40) >> 40,
        ColumnType::MYSQL_TYPE_LONG => i64::from(i as i32),
        _ => i,
    }
}

fn unsigned_of(kind: ColumnType, i: i64) -> u64 {
    match kind {
        ColumnType::MYSQL_TYPE_TINY => u64::from(i as u8),
        ColumnType::MYSQL_TYPE_SHORT => u64::from(i as u16),
        ColumnType::MYSQL_TYPE_INT24 => (i as u64) & 0xff_ffff,
        ColumnType::MYSQL_TYPE_LONG => u64::from(i as u32),
        _ => i as u64,
    }
}

/// Character data by the column's collation: UTF-8 family and ASCII as text, Latin-1 (which
/// MySQL means as cp1252) decoded to text, binary and anything else kept as exact bytes.
fn text_or_bytes(b: Vec<u8>, collation: u16) -> Value {
    match charset_of(collation) {
        Charset::Utf8 => match String::from_utf8(b) {
            Ok(s) => Value::Text { v: s },
            Err(e) => Value::Bytes { v: e.into_bytes() },
        },
        Charset::Latin1 => Value::Text { v: decode_cp1252(&b) },
        Charset::Binary | Charset::Other => Value::Bytes { v: b },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Latin1,
    Binary,
    Other,
}

/// The charset of a collation id (MySQL 8 and MariaDB 10.5+ numbering).
pub fn charset_of(collation: u16) -> Charset {
    match collation {
        63 => Charset::Binary,
        5 | 8 | 15 | 31 | 47 | 48 | 49 | 94 => Charset::Latin1,
        // ascii, utf8mb3 and utf8mb4 collations (ASCII is a subset of UTF-8)
        11 | 65 | 33 | 83 | 192..=215 | 223 | 45 | 46 | 224..=247 | 255..=323 | 576..=578 | 608..=610 => {
            Charset::Utf8
        }
        // MariaDB 10.10+ UCA-14.0.0 collations: utf8mb3 2048-2303, utf8mb4 2304-2559
        2048..=2559 => Charset::Utf8,
        _ => Charset::Other,
    }
}

/// MySQL's latin1 is Windows-1252, with the five undefined bytes mapped to C1 controls.
pub fn decode_cp1252(bytes: &[u8]) -> String {
    const HIGH: [char; 32] = [
        '\u{20AC}', '\u{0081}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
        '\u{02C6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{008D}', '\u{017D}', '\u{008F}',
        '\u{0090}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
        '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}', '\u{009D}', '\u{017E}', '\u{0178}',
    ];
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9f => HIGH[usize::from(b - 0x80)],
            _ => char::from(b),
        })
        .collect()
}

/// Run `f`, turning a panic inside mysql_common into an error.
fn contained<T>(f: impl FnOnce() -> T) -> Result<T, DecodeError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        DecodeError::Panicked(what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp1252_matches_mysql_latin1() {
        assert_eq!(decode_cp1252(b"caf\xe9 \x80 \x9f \x81"), "café € Ÿ \u{81}");
    }

    #[test]
    fn integer_widths_are_normalised() {
        assert_eq!(signed_of(ColumnType::MYSQL_TYPE_TINY, 0xff), -1);
        assert_eq!(signed_of(ColumnType::MYSQL_TYPE_INT24, 0x80_0000), -8_388_608);
        assert_eq!(unsigned_of(ColumnType::MYSQL_TYPE_TINY, -1), 255);
        assert_eq!(unsigned_of(ColumnType::MYSQL_TYPE_LONG, -1), 4_294_967_295);
        assert_eq!(unsigned_of(ColumnType::MYSQL_TYPE_INT24, -1), 16_777_215);
    }

    #[test]
    fn row_data_whose_images_consume_nothing_is_an_error_not_an_endless_loop() {
        let shape = TableShape { db: "t".into(), table: "x".into(), columns: Vec::new() };
        let none: &[bool] = &[];
        for (before, after) in
            [(Some(none), None), (None, Some(none)), (Some(none), Some(none)), (None, None)]
        {
            let got = parse_images(&[1, 2, 3], before, after, Op::Update, &shape);
            assert!(
                matches!(&got, Err(DecodeError::Rows { reason, .. }) if reason.contains("no columns present, 3 bytes")),
                "{got:?}"
            );
        }
        assert_eq!(parse_images(&[], Some(none), None, Op::Delete, &shape).map(|r| r.len()).ok(), Some(0));
    }

    #[test]
    fn a_panic_in_the_decoder_is_an_error() {
        let r: Result<(), _> = contained(|| panic!("index out of bounds"));
        assert_eq!(r, Err(DecodeError::Panicked("index out of bounds".into())));
    }
}
