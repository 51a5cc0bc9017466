//! The `ferry` metadata schema that exists on every primary (design.md, "Data path").
//!
//! - `capture_checkpoint`: last GTID whose records the broker acknowledged, per capture stream.
//! - `applied`: per origin region, the last applied GTID and the Kafka offset it came from,
//!   written in the same transaction as the applied rows.
//! - `tombstones`: deleted rows' keys and versions, so an older update cannot resurrect them;
//!   written by apply for deletes it applies and by capture for local deletes.
//! - `row_origins`: for rows apply wrote, the region and version it wrote (the tie-break
//!   needs the writer of the local row; a row whose version differs was written here).
//! - `conflicts`: one row per conflict decided, with both images, winner and rule.
//! - `failovers`: each region failover ferry carried out, with its RPO report.
//! - `snapshot_progress`: an initial sync's tables on the origin (written by `ferry sync start`,
//!   the signal), each with the last key published and acknowledged.
//! - `snapshot_watermark`: the low and high watermarks capture writes around each chunk.
//! - `check_progress`: where a scheduled full check stands, per table (resumes after a restart).
//! - `watch_probe`: the watch loop's MySQL heartbeat writes (`heartbeat: true` probes).
//! - `heartbeat`: written every second by each region; the only `ferry` table that is captured.
//!
//! Statements are idempotent (`IF NOT EXISTS`), so installing twice is harmless.

pub const DATABASE: &str = "ferry";

/// The schemas that hold no user tables (SQL list): the server's own and ferry's.
pub const NOT_USER_SCHEMAS: &str = "('mysql', 'information_schema', 'performance_schema', 'sys', 'ferry')";

/// MySQL's "Unknown column" error.
const UNKNOWN_COLUMN: u16 = 1054;

/// The DDL, one statement per entry.
pub const STATEMENTS: &[&str] = &[
    "CREATE DATABASE IF NOT EXISTS ferry CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS ferry.capture_checkpoint (
        stream VARCHAR(64) NOT NULL PRIMARY KEY,
        gtid VARCHAR(255) NOT NULL,
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS ferry.applied (
        origin VARCHAR(32) NOT NULL PRIMARY KEY,
        gtid VARCHAR(255) NOT NULL,
        kafka_topic VARCHAR(255) NOT NULL,
        kafka_partition INT NOT NULL,
        kafka_offset BIGINT NOT NULL,
        applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS ferry.tombstones (
        table_name VARCHAR(128) NOT NULL,
        -- table_name (128 chars x 4 bytes) + row_key must fit InnoDB's 3072-byte key limit.
        row_key VARBINARY(2048) NOT NULL,
        -- the deleted row's version (µs; the delete's commit time if the table has none)
        version_us BIGINT NOT NULL,
        origin VARCHAR(32) NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
        PRIMARY KEY (table_name, row_key),
        KEY by_created (created_at)
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS ferry.row_origins (
        table_name VARCHAR(128) NOT NULL,
        row_key VARBINARY(2048) NOT NULL,
        version_us BIGINT NOT NULL,
        origin VARCHAR(32) NOT NULL,
        written_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
        PRIMARY KEY (table_name, row_key),
        KEY by_written (written_at)
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS ferry.conflicts (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        table_name VARCHAR(128) NOT NULL,
        row_key VARBINARY(2048) NOT NULL,
        kind VARCHAR(32) NOT NULL,
        rule VARCHAR(32) NOT NULL,
        winner VARCHAR(32) NOT NULL,
        local_version_us BIGINT NULL,
        incoming_version_us BIGINT NOT NULL,
        local_image JSON NULL,
        incoming_image JSON NULL,
        origin VARCHAR(32) NOT NULL,
        origin_gtid VARCHAR(255) NOT NULL,
        decided_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        KEY by_time (decided_at),
        KEY by_table (table_name, decided_at)
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS ferry.failovers (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        kind VARCHAR(16) NOT NULL,
        from_region VARCHAR(32) NOT NULL,
        to_region VARCHAR(32) NOT NULL,
        result VARCHAR(16) NOT NULL,
        unapplied BIGINT NOT NULL,
        report JSON NOT NULL,
        decided_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        KEY by_time (decided_at)
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS ferry.check_progress (
        table_name VARCHAR(200) NOT NULL PRIMARY KEY,
        -- the last key compared (JSON, see check::progress), NULL once done
        after_key TEXT NULL,
        done TINYINT NOT NULL DEFAULT 0,
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS ferry.snapshot_progress (
        table_name VARCHAR(200) NOT NULL PRIMARY KEY,
        -- the last key published and acknowledged (JSON, see check::progress), NULL: none yet
        last_key TEXT NULL,
        done TINYINT NOT NULL DEFAULT 0,
        rows_done BIGINT NOT NULL DEFAULT 0,
        chunks BIGINT NOT NULL DEFAULT 0,
        requested_by VARCHAR(32) NOT NULL,
        requested_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS ferry.snapshot_watermark (
        id TINYINT NOT NULL PRIMARY KEY,
        mark VARCHAR(300) NOT NULL
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS ferry.watch_probe (
        target VARCHAR(255) NOT NULL PRIMARY KEY,
        probed_at DATETIME(6) NOT NULL
    ) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS ferry.heartbeat (
        region VARCHAR(32) NOT NULL PRIMARY KEY,
        beat_at_us BIGINT NOT NULL,
        written_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
    ) ENGINE=InnoDB",
];

/// Create the `ferry` schema if missing (idempotent).
pub async fn install(conn: &mut mysql_async::Conn) -> Result<(), mysql_async::Error> {
    use mysql_async::prelude::Queryable;
    for sql in STATEMENTS {
        conn.query_drop(*sql).await?;
    }
    // Earlier builds created these two tables with other columns and never wrote them:
    // replace them with the current shape. Only a table that provably lacks the column is
    // replaced: the server must say the column is unknown (1054). information_schema hides
    // columns an account holds no privilege on, so its silence proves nothing, and dropping
    // on it would lose every tombstone (deleted rows would come back).
    for (table, column) in [("tombstones", "version_us"), ("conflicts", "incoming_version_us")] {
        match conn.query_drop(format!("SELECT {column} FROM ferry.{table} LIMIT 0")).await {
            Ok(()) => {}
            Err(mysql_async::Error::Server(e)) if e.code == UNKNOWN_COLUMN => {
                tracing::warn!(table = %format!("ferry.{table}"), "replacing a table of an earlier shape (it lacks {column})");
                conn.query_drop(format!("DROP TABLE ferry.{table}")).await?;
                let create =
                    STATEMENTS.iter().find(|s| s.contains(&format!("ferry.{table} ("))).expect("listed");
                conn.query_drop(*create).await?;
            }
            Err(e) => {
                tracing::warn!(table = %format!("ferry.{table}"), error = %e, "cannot check the table's shape; left as it is");
            }
        }
    }
    Ok(())
}
