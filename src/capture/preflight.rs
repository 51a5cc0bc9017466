//! Checks before streaming, each failure a specific error: binlog format and row metadata,
//! GTIDs, replication privileges, the reader's server id, and whether the checkpoint's range is
//! still in the binlogs (never silently starting elsewhere).

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::pipeline::CaptureError;
use crate::config::{ConfigProblem, Flavor, MysqlConfig};
use crate::model::OriginFilter;
use crate::model::{GtidSet, Position};

fn fail(message: String) -> CaptureError {
    CaptureError::Preflight(message)
}

fn sql(context: &str, e: mysql_async::Error) -> CaptureError {
    CaptureError::Checkpoint(format!("{context}: {e}"))
}

/// Server settings capture needs, with the values it requires.
const REQUIRED: &[(&str, &str)] = &[
    ("log_bin", "1"),
    ("binlog_format", "ROW"),
    ("binlog_row_image", "FULL"),
    ("binlog_row_metadata", "FULL"),
    // Every event's CRC32 is verified against what the server computed when it wrote the
    // event; without checksums a corrupted event could decode into wrong values.
    ("binlog_checksum", "CRC32"),
];
/// And on MySQL: GTIDs on, whole JSON values in row images.
const REQUIRED_MYSQL: &[(&str, &str)] = &[("gtid_mode", "ON"), ("binlog_row_value_options", "")];

/// `report_host` is the name capture registers with; a registration with the same id and that
/// name is a previous ferry connection (e.g. of a killed process), which the new one replaces.
pub async fn check_server(
    conn: &mut Conn,
    flavor: Flavor,
    reader_server_id: u32,
    report_host: &str,
) -> Result<(), CaptureError> {
    let extra = if flavor == Flavor::Mysql { REQUIRED_MYSQL } else { &[] };
    for (name, want) in REQUIRED.iter().chain(extra) {
        let got: Option<String> = conn
            .query_first(format!("SELECT @@{name}"))
            .await
            .map_err(|e| sql("reading server settings", e))?;
        let got = got.unwrap_or_default();
        if !got.eq_ignore_ascii_case(want) {
            return Err(fail(format!("the primary has {name}={got}; capture needs {name}={want}")));
        }
    }
    let compressed: Option<String> = conn.query_first("SELECT @@log_bin_compress").await.unwrap_or(None);
    if compressed.as_deref() == Some("1") {
        return Err(fail("the primary has log_bin_compress=ON; compressed events cannot be decoded".into()));
    }
    let own: Option<u32> =
        conn.query_first("SELECT @@server_id").await.map_err(|e| sql("reading @@server_id", e))?;
    if own == Some(reader_server_id) {
        return Err(fail(format!("capture.server_id {reader_server_id} is the primary's own server_id")));
    }
    let grants: Vec<String> = conn.query("SHOW GRANTS").await.map_err(|e| sql("SHOW GRANTS", e))?;
    let can_replicate = grants.iter().any(|g| {
        let g = g.to_ascii_uppercase();
        g.contains("ALL PRIVILEGES ON *.*")
            || g.contains("REPLICATION SLAVE")
            || g.contains("REPLICATION REPLICA")
    });
    if !can_replicate {
        return Err(fail("the capture user lacks REPLICATION SLAVE (REPLICA) on *.*".into()));
    }
    let hosts: Vec<mysql_async::Row> =
        conn.query("SHOW SLAVE HOSTS").await.map_err(|e| sql("SHOW SLAVE HOSTS", e))?;
    for host in hosts {
        let id: Option<u32> = host.get_opt("Server_id").and_then(Result::ok);
        let name: String = host.get_opt("Host").and_then(Result::ok).unwrap_or_default();
        if id == Some(reader_server_id) && name != report_host {
            return Err(fail(format!(
                "capture.server_id {reader_server_id} is in use by the replica at {name}; give capture its own id"
            )));
        }
    }
    Ok(())
}

/// Where the configured identity of `region`'s servers disagrees with the primary `conn` is
/// connected to: a `gtid_domain_id` (MariaDB) or server UUID (MySQL) that is not the server's
/// makes capture count every local transaction as another region's and publish nothing, and
/// a server id that is none of the configured servers' breaks apply's identity check in the
/// other regions. Each problem names its YAML path and both values.
pub async fn identity_problems(
    conn: &mut Conn,
    region: &str,
    mysql: &MysqlConfig,
) -> Result<Vec<ConfigProblem>, mysql_async::Error> {
    let at = |path: &str| format!("regions.{region}.mysql.{path}");
    let mut out = Vec::new();
    let server_id: Option<u32> = conn.query_first("SELECT @@server_id").await?;
    let configured: Vec<u32> =
        std::iter::once(&mysql.primary).chain(&mysql.replicas).map(|s| s.server_id).collect();
    if let Some(id) = server_id.filter(|id| !configured.contains(id)) {
        out.push(ConfigProblem {
            path: at("primary.server_id"),
            message: format!(
                "the primary has server_id {id}, which is none of the configured servers' ({configured:?})"
            ),
        });
    }
    match mysql.flavor {
        Flavor::Mariadb => {
            let domain: Option<u32> = conn.query_first("SELECT @@gtid_domain_id").await?;
            if domain.is_some() && domain != mysql.gtid_domain_id {
                out.push(ConfigProblem {
                    path: at("gtid_domain_id"),
                    message: format!(
                        "is {}, but the primary writes under gtid_domain_id {}: capture would take every local \
                         transaction for another region's and publish nothing",
                        mysql.gtid_domain_id.map_or("not set".into(), |d| d.to_string()),
                        domain.unwrap_or_default()
                    ),
                });
            }
        }
        Flavor::Mysql => {
            let uuid: Option<String> = conn.query_first("SELECT @@server_uuid").await?;
            let uuid = uuid.unwrap_or_default().to_ascii_lowercase();
            if !mysql.server_uuids.iter().any(|u| u.eq_ignore_ascii_case(&uuid)) {
                out.push(ConfigProblem {
                    path: at("server_uuids"),
                    message: format!(
                        "does not list the primary's server_uuid {uuid}: capture would take every local \
                         transaction for another region's and publish nothing"
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// Refuse to capture when the configured identity is not the primary's (see
/// [`identity_problems`]).
pub async fn check_identity(conn: &mut Conn, region: &str, mysql: &MysqlConfig) -> Result<(), CaptureError> {
    let problems =
        identity_problems(conn, region, mysql).await.map_err(|e| sql("reading the server's identity", e))?;
    if problems.is_empty() {
        return Ok(());
    }
    let text: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.path, p.message)).collect();
    Err(fail(format!("the configuration does not match the primary: {}", text.join("; "))))
}

/// One region's `auto_increment_increment` and `auto_increment_offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoIncrement {
    pub region: String,
    pub increment: u64,
    pub offset: u64,
}

/// Pairs of regions whose AUTO_INCREMENT sequences can hand out the same key: the sequences
/// `o₁ + k·i₁` and `o₂ + j·i₂` meet exactly when `gcd(i₁, i₂)` divides `o₁ − o₂`. Concurrent
/// inserts would then collide on the primary key in both regions. One message per pair.
pub fn auto_increment_overlaps(regions: &[AutoIncrement]) -> Vec<String> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let mut out = Vec::new();
    for (i, a) in regions.iter().enumerate() {
        for b in &regions[i + 1..] {
            let g = gcd(a.increment.max(1), b.increment.max(1));
            if a.offset.abs_diff(b.offset) % g == 0 {
                out.push(format!(
                    "regions {} (auto_increment_increment={}, offset={}) and {} (increment={}, offset={}) \
                     can generate the same AUTO_INCREMENT keys; give every region the same increment \
                     (at least the number of regions) and its own offset",
                    a.region, a.increment, a.offset, b.region, b.increment, b.offset
                ));
            }
        }
    }
    out
}

/// A server's AUTO_INCREMENT settings.
pub async fn auto_increment(conn: &mut Conn, region: &str) -> Result<AutoIncrement, mysql_async::Error> {
    let (increment, offset): (u64, u64) = conn
        .query_first("SELECT @@auto_increment_increment, @@auto_increment_offset")
        .await?
        .unwrap_or((1, 1));
    Ok(AutoIncrement { region: region.to_string(), increment, offset })
}

/// The GTID state at the start of the oldest binlog still on the server.
pub async fn oldest_binlog_state(conn: &mut Conn) -> Result<Position, CaptureError> {
    let logs: Vec<mysql_async::Row> =
        conn.query("SHOW BINARY LOGS").await.map_err(|e| sql("SHOW BINARY LOGS", e))?;
    let Some(first) = logs.first() else { return Ok(Position::default()) };
    let file: String = first.get_opt(0).and_then(Result::ok).unwrap_or_default();
    let events: Vec<mysql_async::Row> = conn
        .query(format!("SHOW BINLOG EVENTS IN '{}' LIMIT 4", file.replace('\'', "")))
        .await
        .map_err(|e| sql("SHOW BINLOG EVENTS", e))?;
    for event in events {
        let kind: String = event.get_opt("Event_type").and_then(Result::ok).unwrap_or_default();
        if kind.eq_ignore_ascii_case("Gtid_list") {
            let info: String = event.get_opt("Info").and_then(Result::ok).unwrap_or_default();
            let list = info.trim().trim_start_matches('[').trim_end_matches(']');
            return list.parse().map_err(|e| fail(format!("GTID list of {file}: {e}")));
        }
    }
    Ok(Position::default())
}

/// Where to resume from `checkpoint`: what the server can still send, checked as
/// [`resume_position`] (MariaDB) or [`resume_gtid_set`] (MySQL) describe.
pub async fn resume(
    conn: &mut Conn,
    flavor: Flavor,
    checkpoint: &Position,
    origin: &OriginFilter,
) -> Result<Position, CaptureError> {
    match (flavor, origin) {
        (Flavor::Mariadb, OriginFilter::Domain(domain)) => {
            resume_position(checkpoint, &oldest_binlog_state(conn).await?, *domain)
        }
        (Flavor::Mysql, OriginFilter::Uuids(uuids)) => {
            let purged: Option<String> = conn
                .query_first("SELECT @@gtid_purged")
                .await
                .map_err(|e| sql("reading @@gtid_purged", e))?;
            let purged: GtidSet =
                purged.unwrap_or_default().parse().map_err(|e| fail(format!("@@gtid_purged: {e}")))?;
            resume_gtid_set(checkpoint.gtid_set(), &purged, uuids).map(Position::from_gtid_set)
        }
        _ => Ok(checkpoint.clone()),
    }
}

/// MySQL: every purged range of this region's UUIDs must be in the checkpoint (else those
/// changes were never read: refuse, naming the range); other UUIDs' purged ranges are added
/// (capture skips them anyway, and the server refuses a request that lacks them).
pub fn resume_gtid_set(
    checkpoint: &GtidSet,
    purged: &GtidSet,
    local_uuids: &[String],
) -> Result<GtidSet, CaptureError> {
    let mut start = checkpoint.clone();
    for (uuid, intervals) in purged.iter() {
        for &(a, b) in intervals {
            if checkpoint.covers(uuid, a, b) {
                continue;
            }
            if local_uuids.iter().any(|u| u == uuid) {
                return Err(fail(format!(
                    "the binlogs holding GTIDs {uuid}:{a}-{b} of this region were purged before capture read them; \
                     the tables written by those transactions need a re-sync from this region before capture restarts"
                )));
            }
            start.add_range(uuid, a, b);
        }
    }
    Ok(start)
}

/// Decide where to start from the checkpoint and the oldest binlog's state. The local domain
/// must be complete: a purged range means lost changes, reported with the range and never
/// skipped. Other domains are only ever skipped by capture, so a purged one is fast-forwarded.
pub fn resume_position(
    checkpoint: &Position,
    oldest: &Position,
    local_domain: u32,
) -> Result<Position, CaptureError> {
    let mut start = checkpoint.clone();
    for first in oldest.iter() {
        let have = checkpoint.get(first.domain).map(|g| g.seq).unwrap_or(0);
        if have >= first.seq {
            continue;
        }
        if first.domain == local_domain {
            return Err(fail(format!(
                "the binlogs holding GTIDs {}-*-{}..{} of this region were purged before capture read them; \
                 the tables written by those transactions need a re-sync from this region before capture restarts",
                first.domain,
                have + 1,
                first.seq
            )));
        }
        tracing::info!(
            domain = first.domain,
            from = have,
            to = first.seq,
            "fast-forwarding a purged foreign domain"
        );
        start.advance(first);
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_increment_sequences_that_meet_are_reported() {
        let r = |region: &str, increment, offset| AutoIncrement { region: region.into(), increment, offset };
        assert!(auto_increment_overlaps(&[r("east", 2, 1), r("west", 2, 2)]).is_empty());
        assert!(auto_increment_overlaps(&[r("east", 3, 1), r("west", 3, 2), r("north", 3, 3)]).is_empty());
        assert_eq!(auto_increment_overlaps(&[r("east", 1, 1), r("west", 1, 1)]).len(), 1, "the defaults");
        assert_eq!(auto_increment_overlaps(&[r("east", 2, 1), r("west", 2, 3)]).len(), 1, "odd and odd");
        // 1 + 2k and 2 + 3j meet (5), although the offsets differ.
        assert_eq!(auto_increment_overlaps(&[r("east", 2, 1), r("west", 3, 2)]).len(), 1);
        let three = auto_increment_overlaps(&[r("east", 2, 1), r("west", 2, 2), r("north", 2, 1)]);
        assert_eq!(three.len(), 1, "{three:?}");
        assert!(three[0].contains("east") && three[0].contains("north"));
    }

    fn pos(s: &str) -> Position {
        s.parse().unwrap()
    }

    #[test]
    fn a_purged_local_range_is_refused_with_the_missing_range() {
        let err = resume_position(&pos("1-101-5,2-201-9"), &pos("1-101-12,2-201-3"), 1).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("1-*-6..12") && text.contains("re-sync"), "{text}");
    }

    #[test]
    fn mysql_purged_ranges_are_refused_for_local_uuids_and_added_for_others() {
        let (ours, theirs) = ("3e11fa47-71ca-11e1-9e33-c80aa9429562", "4e11fa47-71ca-11e1-9e33-c80aa9429562");
        let local = vec![ours.to_string()];
        let set = |s: String| s.parse::<GtidSet>().unwrap();
        let checkpoint = set(format!("{ours}:1-10,{theirs}:1-3"));
        let ok = resume_gtid_set(&checkpoint, &set(format!("{ours}:1-10,{theirs}:1-50")), &local).unwrap();
        assert_eq!(ok.to_string(), format!("{ours}:1-10,{theirs}:1-50"));
        let err = resume_gtid_set(&checkpoint, &set(format!("{ours}:1-12")), &local).unwrap_err().to_string();
        assert!(err.contains(&format!("{ours}:1-12")) && err.contains("re-sync"), "{err}");
    }

    #[test]
    fn a_purged_foreign_domain_is_fast_forwarded_and_a_complete_one_kept() {
        assert_eq!(
            resume_position(&pos("1-101-5,2-201-9"), &pos("1-101-5,2-201-30"), 1).unwrap(),
            pos("1-101-5,2-201-30")
        );
        assert_eq!(
            resume_position(&pos("1-101-5"), &pos("1-101-2,2-201-30"), 1).unwrap(),
            pos("1-101-5,2-201-30")
        );
        assert_eq!(resume_position(&pos("1-101-5,2-201-9"), &pos(""), 1).unwrap(), pos("1-101-5,2-201-9"));
    }
}
