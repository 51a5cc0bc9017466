//! The capture checkpoint in the local primary's `ferry.capture_checkpoint`: the position up
//! to which every local transaction is acknowledged by the broker. It is written through the
//! binlog (so a promoted replica has it too); capture recognises its own checkpoint writes and
//! never publishes them or writes again because of them.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::pipeline::CaptureError;
use crate::config::Flavor;
use crate::model::{Gtid, Position};

/// The checkpoint row's key.
pub const STREAM: &str = "capture";
/// The row holding the last transaction published up to the checkpoint: the first record
/// published after a restart names it as its predecessor (`prev`), so apply sees a gap.
pub const PUBLISHED: &str = "capture.published";

fn err(context: &str, e: impl std::fmt::Display) -> CaptureError {
    CaptureError::Checkpoint(format!("{context}: {e}"))
}

/// The stored checkpoint, if any, and the last transaction published up to it (unknown when
/// an older ferry wrote the checkpoint).
pub async fn load(conn: &mut Conn) -> Result<Option<(Position, Option<Gtid>)>, CaptureError> {
    let rows: Vec<(String, String)> = conn
        .exec("SELECT stream, gtid FROM ferry.capture_checkpoint WHERE stream IN (?, ?)", (STREAM, PUBLISHED))
        .await
        .map_err(|e| err("reading ferry.capture_checkpoint", e))?;
    let text = |key: &str| rows.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let Some(position) = text(STREAM) else { return Ok(None) };
    let position = position.parse().map_err(|e| err("stored checkpoint", e))?;
    let published =
        text(PUBLISHED).map(|g| g.parse().map_err(|e| err("stored last published", e))).transpose()?;
    Ok(Some((position, published)))
}

/// Store the checkpoint and, when known, the last transaction published up to it (one
/// statement: both or neither).
pub async fn save(
    conn: &mut Conn,
    position: &Position,
    published: Option<&Gtid>,
) -> Result<(), CaptureError> {
    let result = match published {
        Some(gtid) => {
            conn.exec_drop(
                "INSERT INTO ferry.capture_checkpoint (stream, gtid) VALUES (?, ?), (?, ?) \
                 ON DUPLICATE KEY UPDATE gtid = VALUES(gtid)",
                (STREAM, position.to_string(), PUBLISHED, gtid.to_string()),
            )
            .await
        }
        None => {
            conn.exec_drop(
                "INSERT INTO ferry.capture_checkpoint (stream, gtid) VALUES (?, ?) \
                 ON DUPLICATE KEY UPDATE gtid = VALUES(gtid)",
                (STREAM, position.to_string()),
            )
            .await
        }
    };
    result.map_err(|e| err("writing ferry.capture_checkpoint", e))
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
