//! The capture checkpoint in the local primary's `ferry.capture_checkpoint`: the position up
//! to which every local transaction is acknowledged by the broker. It is written through the
//! binlog (so a promoted replica has it too); capture recognises its own checkpoint writes and
//! never publishes them or writes again because of them.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::pipeline::CaptureError;
use crate::config::Flavor;
use crate::model::Position;

/// The checkpoint row's key.
pub const STREAM: &str = "capture";

fn err(context: &str, e: impl std::fmt::Display) -> CaptureError {
    CaptureError::Checkpoint(format!("{context}: {e}"))
}

/// The stored checkpoint, if any.
pub async fn load(conn: &mut Conn) -> Result<Option<Position>, CaptureError> {
    let text: Option<String> = conn
        .exec_first("SELECT gtid FROM ferry.capture_checkpoint WHERE stream = ?", (STREAM,))
        .await
        .map_err(|e| err("reading ferry.capture_checkpoint", e))?;
    text.map(|t| t.parse().map_err(|e| err("stored checkpoint", e))).transpose()
}

pub async fn save(conn: &mut Conn, position: &Position) -> Result<(), CaptureError> {
    conn.exec_drop(
        "INSERT INTO ferry.capture_checkpoint (stream, gtid) VALUES (?, ?) ON DUPLICATE KEY UPDATE gtid = VALUES(gtid)",
        (STREAM, position.to_string()),
    )
    .await
    .map_err(|e| err("writing ferry.capture_checkpoint", e))
}

/// The server's current binlog position (where capture starts without a checkpoint).
pub async fn current_position(conn: &mut Conn, flavor: Flavor) -> Result<Position, CaptureError> {
    let variable = match flavor {
        Flavor::Mariadb => "@@gtid_binlog_pos",
        Flavor::Mysql => "@@gtid_executed",
    };
    let text: Option<String> = conn
        .query_first(format!("SELECT {variable}"))
        .await
        .map_err(|e| err(&format!("reading {variable}"), e))?;
    text.unwrap_or_default().parse().map_err(|e| err(variable, e))
}
