//! Repairing what a check found, by the conflict rules and through the pipeline.
//!
//! For each persistent difference the winner is the row (or tombstone) the rules would keep:
//! the latest version, ties to the region first in the region order, and a tombstone as late
//! as a row beats it (as apply decides). Then:
//! - **a row wins**: in the winning region its version column is moved forward (to the later
//!   of now and one step past its version), changing nothing else. Capture publishes that
//!   update and every other region applies it by the rules: it is the newest version, so it
//!   replaces a differing row and re-creates a missing one.
//! - **a delete wins**: the row is deleted in each region holding it; capture records the
//!   tombstone and publishes the delete.
//!
//! Never blind: each write happens only while every region's row still has the digest the
//! check last read (re-read just before, and the write itself is conditional on the winner's
//! digest); a row written meanwhile is left to that newer write and reported as changed.
//! Each repair is one row in that region's `ferry.conflicts` (kind `repair`), in the same
//! transaction. Not repaired: tables without the version column, differences in delta
//! columns (an additive column cannot be set through an additive merge), `unsettled` rows
//! and schema differences.

use std::collections::BTreeMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, TxOpts, Value as MyValue};
use serde::Serialize;

use super::{Difference, Key, read, table::Definition};
use crate::apply::sql::quote;
use crate::config::Config;
use crate::config::ReadFrom;
use crate::conflict::{Rules, Stamp, version_text};

/// What a repair does with one difference.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Move the winner's version forward in `region`; the pipeline carries the row.
    Rewrite { region: String, version_us: i64 },
    /// Delete the row in `regions` (a tombstone in `winner` is later than every copy).
    Delete { regions: Vec<String>, winner: String, version_us: i64 },
    /// Not repaired, and why.
    Leave { reason: String },
}

/// One difference and its repair.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub table: String,
    pub key: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(flatten)]
    pub action: Action,
    /// After carrying out: `repaired`, `changed since the check` or the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// The plan for every difference of `found`.
pub async fn plan(config: &Config, found: &[Difference]) -> Result<Vec<Planned>, String> {
    let rules = Rules::from_config(config);
    let mut out = Vec::new();
    for d in found {
        let action = match decide(config, &rules, d).await {
            Ok(a) => a,
            Err(reason) => Action::Leave { reason },
        };
        out.push(Planned { table: d.table.clone(), key: d.key.clone(), action, outcome: None });
    }
    Ok(out)
}

async fn decide(config: &Config, rules: &Rules, d: &Difference) -> Result<Action, String> {
    match d.kind {
        "schema" => return Err("a schema difference: change the table by hand".into()),
        "unsettled" => return Err("kept changing while checked: check again later".into()),
        _ => {}
    }
    let (db, table) = d.table.split_once('.').ok_or("not db.table")?;
    let policy =
        rules.policy(db, table).ok_or("the conflict rules do not govern this table (single_writer)")?;
    if let Some(c) = d.columns.iter().find(|c| policy.is_delta(c)) {
        return Err(format!(
            "delta column {c} differs: an additive column cannot be set by replaying a write"
        ));
    }
    let mut best: Option<(Stamp, String)> = None;
    for (region, row) in &d.texts {
        let text = row.get(policy.version_column).ok_or_else(|| {
            format!("no version column {} in the table: decide by hand", policy.version_column)
        })?;
        let at_us = text.as_deref().and_then(version_text).ok_or("the version column is NULL")?;
        let stamp = Stamp { at_us, rank: rules.rank(region) };
        if best.as_ref().is_none_or(|(b, _)| stamp.beats(b)) {
            best = Some((stamp, region.clone()));
        }
    }
    let (row_stamp, row_region) = best.ok_or("no region holds the row")?;
    let newest_us = d
        .texts
        .values()
        .filter_map(|row| row.get(policy.version_column)?.as_deref().and_then(version_text))
        .max()
        .unwrap_or(row_stamp.at_us);
    if !d.absent_in.is_empty() && !d.plain_key {
        return Err("a missing row whose key is not integers or text: its tombstone cannot be looked up; decide by hand".into());
    }
    // A tombstone as late as the latest row wins (apply drops a same-version write).
    let mut tomb: Option<(Stamp, String)> = None;
    for region in &d.absent_in {
        if let Some(t) = tombstone(config, rules, region, &d.table, d).await?
            && t.at_us >= row_stamp.at_us
            && tomb.as_ref().is_none_or(|(b, _)| t.beats(b))
        {
            tomb = Some((t, region.clone()));
        }
    }
    Ok(match tomb {
        Some((t, winner)) => Action::Delete { regions: d.present_in.clone(), winner, version_us: t.at_us },
        // The new version: one step past the newest copy, so it beats every differing copy
        // and loses to any real write made since (which carries the time it was made).
        None => Action::Rewrite { region: row_region, version_us: newest_us },
    })
}

/// The tombstone `region` holds for the difference's key, if any.
async fn tombstone(
    config: &Config,
    rules: &Rules,
    region: &str,
    table: &str,
    d: &Difference,
) -> Result<Option<Stamp>, String> {
    let key = d.key.as_ref().ok_or("no key")?;
    let mut r = super::connect(config, region, ReadFrom::Primary).await?;
    let rows: Vec<(Vec<u8>, i64, String)> = r
        .conn
        .exec("SELECT row_key, version_us, origin FROM ferry.tombstones WHERE table_name = ?", (table,))
        .await
        .map_err(|e| format!("{region}: reading tombstones: {e}"))?;
    r.conn.disconnect().await.ok();
    for (row_key, version_us, origin) in rows {
        let Ok(stored) = serde_json::from_slice::<crate::model::Row>(&row_key) else { continue };
        let same = stored.0.len() == key.len()
            && stored.0.iter().all(|(c, v)| key.get(c).is_some_and(|want| plain(v) == plain_json(want)));
        if same {
            return Ok(Some(Stamp { at_us: version_us, rank: rules.rank(&origin) }));
        }
    }
    Ok(None)
}

fn plain(v: &crate::model::Value) -> String {
    use crate::model::Value;
    match v {
        Value::Int { v } => v.to_string(),
        Value::Uint { v } => v.to_string(),
        Value::Text { v } => v.clone(),
        // Keys of other types never match (`Definition::plain_key` keeps them out).
        other => format!("\u{0}{}", serde_json::to_string(other).unwrap_or_default()),
    }
}

fn plain_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Carry out `plans` (those not `Leave`), filling in each outcome.
pub async fn carry_out(config: &Config, found: &[Difference], plans: &mut [Planned]) -> Result<(), String> {
    for (d, p) in found.iter().zip(plans.iter_mut()) {
        let outcome = match &p.action {
            Action::Leave { .. } => continue,
            action => repair_one(config, d, action).await,
        };
        p.outcome = Some(match outcome {
            Ok(true) => "repaired".into(),
            Ok(false) => "changed since the check: left to the newer write".into(),
            Err(e) => format!("failed: {e}"),
        });
    }
    Ok(())
}

async fn repair_one(config: &Config, d: &Difference, action: &Action) -> Result<bool, String> {
    let key = d.key_values.as_ref().ok_or("no key")?;
    let (db, name) = d.table.split_once('.').ok_or("not db.table")?;
    let table = format!("{}.{}", quote(db), quote(name));
    // Every region still as the check left it?
    for region in config.regions.keys().filter(|r| d.texts.contains_key(*r) || d.absent_in.contains(*r)) {
        let mut r = super::connect(config, region, ReadFrom::Primary).await?;
        let def =
            Definition::read(&mut r.conn, db, name).await.map_err(|e| e.to_string())?.ok_or("table gone")?;
        let now = read::digests_of(&mut r.conn, &table, &def, std::slice::from_ref(key))
            .await
            .map_err(|e| e.to_string())?;
        r.conn.disconnect().await.ok();
        if now.get(&key.id()).map(|x| &x.1) != d.digests.get(region) {
            return Ok(false);
        }
    }
    let rules = Rules::from_config(config);
    let (db_, table_) = (db.to_string(), name.to_string());
    let policy = rules.policy(&db_, &table_).ok_or("not governed")?;
    let key_json = serde_json::to_string(&d.key).unwrap_or_default();
    match action {
        Action::Rewrite { region, version_us } => {
            let mut r = super::connect(config, region, ReadFrom::Primary).await?;
            let def = Definition::read(&mut r.conn, db, name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("table gone")?;
            let v = quote(policy.version_column);
            let next: MyValue = if def.is_integer(policy.version_column) {
                MyValue::from(version_us + 1)
            } else {
                let step = 10_i64.pow(6 - def.precision(policy.version_column).min(6));
                MyValue::from(datetime_text((version_us.div_euclid(step) + 1) * step))
            };
            let loser = d.texts.iter().find(|(n, _)| *n != region).map(|(_, row)| row);
            let mut tx = r.conn.start_transaction(TxOpts::default()).await.map_err(|e| e.to_string())?;
            let (cond, key_params) = key_cond(&def, key);
            let mut params = vec![next];
            params.extend(key_params);
            params.push(MyValue::from(d.digests.get(region).cloned().unwrap_or_default()));
            let sql = format!("UPDATE {table} SET {v} = ? WHERE {cond} AND {} = ?", def.digest_sql());
            if !one_row(&mut tx, sql, params).await? {
                tx.rollback().await.ok();
                return Ok(false);
            }
            log(&mut tx, d, "last_write_wins", region, loser, d.texts.get(region), *version_us, &key_json)
                .await?;
            tx.commit().await.map_err(|e| e.to_string())?;
            r.conn.disconnect().await.ok();
            Ok(true)
        }
        Action::Delete { regions, winner, version_us } => {
            for region in regions {
                let mut r = super::connect(config, region, ReadFrom::Primary).await?;
                let def = Definition::read(&mut r.conn, db, name)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("table gone")?;
                let mut tx = r.conn.start_transaction(TxOpts::default()).await.map_err(|e| e.to_string())?;
                let (cond, mut params) = key_cond(&def, key);
                params.push(MyValue::from(d.digests.get(region).cloned().unwrap_or_default()));
                let sql = format!("DELETE FROM {table} WHERE {cond} AND {} = ?", def.digest_sql());
                if !one_row(&mut tx, sql, params).await? {
                    tx.rollback().await.ok();
                    return Ok(false);
                }
                log(&mut tx, d, "tombstone", winner, d.texts.get(region), None, *version_us, &key_json)
                    .await?;
                tx.commit().await.map_err(|e| e.to_string())?;
                r.conn.disconnect().await.ok();
            }
            Ok(true)
        }
        Action::Leave { .. } => Ok(false),
    }
}

/// `YYYY-MM-DD hh:mm:ss.ffffff` (UTC) of `us` since the epoch.
pub(super) fn datetime_text(us: i64) -> String {
    let (y, mo, d, h, mi, s) = crate::model::civil_from_unix(us.div_euclid(1_000_000));
    crate::model::format_datetime(
        (u16::try_from(y).unwrap_or(9999), mo, d),
        (h, mi, s),
        u32::try_from(us.rem_euclid(1_000_000)).unwrap_or(0),
        6,
    )
}

/// Run a write conditional on the row's digest; whether it found exactly the one row.
async fn one_row(
    tx: &mut mysql_async::Transaction<'_>,
    sql: String,
    params: Vec<MyValue>,
) -> Result<bool, String> {
    let result = tx.exec_iter(sql, Params::Positional(params)).await.map_err(|e| e.to_string())?;
    Ok(result.affected_rows() == 1)
}

fn key_cond(def: &Definition, key: &Key) -> (String, Vec<MyValue>) {
    let cond = def.key.iter().map(|k| format!("{} = ?", quote(k))).collect::<Vec<_>>().join(" AND ");
    (cond, key.0.clone())
}

#[allow(clippy::too_many_arguments)]
async fn log(
    tx: &mut mysql_async::Transaction<'_>,
    d: &Difference,
    rule: &str,
    winner: &str,
    local: Option<&BTreeMap<String, Option<String>>>,
    incoming: Option<&BTreeMap<String, Option<String>>>,
    version_us: i64,
    key_json: &str,
) -> Result<(), String> {
    let image = |row: Option<&BTreeMap<String, Option<String>>>| {
        row.map(|r| serde_json::to_string(r).unwrap_or_default())
    };
    tx.exec_drop(
        "INSERT INTO ferry.conflicts (table_name, row_key, kind, rule, winner, local_version_us, \
         incoming_version_us, local_image, incoming_image, origin, origin_gtid) \
         VALUES (?, ?, 'repair', ?, ?, NULL, ?, ?, ?, ?, 'ferry check')",
        (&d.table, key_json, rule, winner, version_us, image(local), image(incoming), winner),
    )
    .await
    .map_err(|e| format!("writing the conflict log: {e}"))
}
