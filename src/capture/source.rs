//! The binlog source: a MariaDB replica connection that streams events from a GTID position.
//!
//! Contract: [`BinlogSource::next`] yields [`SourceEvent`]s in binlog order, or an error after
//! which the source is unusable (reconnect from the last checkpoint). It never panics on what
//! the server sends: event CRC32 is verified, MariaDB-specific events are parsed here, and a
//! panic inside mysql_common is contained and reported as a corrupt event. Silence beyond
//! three heartbeat periods is a dead connection. Cancel-safe: dropping it closes the socket.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use mysql_async::binlog::BinlogChecksumAlg;
use mysql_async::binlog::events::{Event, EventData, TableMapEvent};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};

use super::decode::{DecodeError, TableShape, decode_rows};
use super::mysql8;
use crate::config::Flavor;
use crate::model::{Gtid, MariaGtid, Position, RowChange};

/// MariaDB event types that mysql_common does not decode.
mod mariadb_event {
    pub const ANNOTATE_ROWS: u8 = 160;
    pub const BINLOG_CHECKPOINT: u8 = 161;
    pub const GTID: u8 = 162;
    pub const GTID_LIST: u8 = 163;
    pub const START_ENCRYPTION: u8 = 164;
    /// 166-171: compressed query/rows events (`log_bin_compress`), which cannot be decoded.
    pub const FIRST_COMPRESSED: u8 = 166;
    pub const LAST_COMPRESSED: u8 = 171;
}
const HEARTBEAT_EVENT: u8 = 27;
const XID_EVENT: u8 = 16;
/// GTID event flag: a statement outside a transaction (DDL); no XID follows.
const FL_STANDALONE: u8 = 0x01;

/// Silence longer than this many heartbeat periods means the connection is dead.
const HEARTBEAT_MISSES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("binlog connection: {0}")]
    Connection(#[source] mysql_async::Error),
    #[error("no event or heartbeat for {0:?}: the connection is presumed dead")]
    Silent(Duration),
    #[error("the server ended the binlog stream")]
    Ended,
    #[error("corrupt binlog event at {position} (type {event_type}): {reason}")]
    Corrupt { position: String, event_type: u8, reason: String },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("unsupported binlog content: {0}")]
    Unsupported(String),
}

impl SourceError {
    /// Transient errors are retried by reconnecting; the rest need an operator.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Connection(_) | SourceError::Silent(_) | SourceError::Ended)
    }
}

/// What the source reports, in binlog order.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// A transaction (or standalone statement) starts.
    Begin { gtid: Gtid, server_id: u32, commit_time_us: i64, standalone: bool },
    /// Decoded rows of one rows event.
    Rows(Vec<RowChange>),
    /// The transaction committed.
    Commit,
    /// A statement other than BEGIN/COMMIT (DDL and the like).
    Statement { schema: String, query: String },
    /// The GTID state at the start of a binlog file.
    GtidList(Position),
    /// A heartbeat (the server is alive, nothing new).
    Heartbeat,
}

pub struct BinlogSource {
    stream: BinlogStream,
    silence: Duration,
    handler: EventHandler,
}

impl BinlogSource {
    /// Connect as a replica with `server_id`, registering as `report_host` (shown in the
    /// primary's `SHOW SLAVE HOSTS`), and stream from `position` (empty = from the oldest
    /// binlog still on the server). MariaDB resumes from the per-domain GTIDs, MySQL from the
    /// GTID set (`COM_BINLOG_DUMP_GTID`).
    pub async fn connect(
        opts: Opts,
        flavor: Flavor,
        server_id: u32,
        report_host: &str,
        position: &Position,
        heartbeat: Duration,
    ) -> Result<Self, SourceError> {
        let mut conn = Conn::new(opts).await.map_err(SourceError::Connection)?;
        let mut setup = vec![format!("SET @master_heartbeat_period={}", heartbeat.as_nanos())];
        if flavor == Flavor::Mariadb {
            setup.extend([
                // Without this MariaDB replaces GTID events by BEGIN and others by dummy queries.
                "SET @mariadb_slave_capability=4".to_string(),
                format!("SET @slave_connect_state='{position}'"),
                "SET @slave_gtid_strict_mode=0".to_string(),
                "SET @slave_gtid_ignore_duplicates=0".to_string(),
            ]);
        }
        for sql in setup {
            conn.query_drop(sql).await.map_err(SourceError::Connection)?;
        }
        let mut request = BinlogStreamRequest::new(server_id).with_hostname(report_host.as_bytes());
        if flavor == Flavor::Mysql {
            request = request.with_gtid().with_gtid_set(mysql8::sids(position.gtid_set()));
        }
        let stream = conn.get_binlog_stream(request).await.map_err(SourceError::Connection)?;
        Ok(Self { stream, silence: heartbeat * HEARTBEAT_MISSES, handler: EventHandler::new(flavor) })
    }

    /// The next event that matters to capture. Events that carry nothing for it (format
    /// description, rotate, table map, annotations) are consumed here.
    pub async fn next(&mut self) -> Result<SourceEvent, SourceError> {
        loop {
            if let Some(ev) = self.handler.pop() {
                return Ok(ev);
            }
            let next = AssertUnwindSafe(self.stream.next()).catch_unwind();
            let event = match tokio::time::timeout(self.silence, next).await {
                Err(_) => return Err(SourceError::Silent(self.silence)),
                Ok(Err(_panic)) => {
                    return Err(SourceError::Corrupt {
                        position: self.handler.last_pos.to_string(),
                        event_type: 0,
                        reason: "the event could not be parsed (truncated or malformed)".into(),
                    });
                }
                Ok(Ok(None)) => return Err(SourceError::Ended),
                Ok(Ok(Some(Err(e)))) => return Err(SourceError::Connection(e)),
                Ok(Ok(Some(Ok(event)))) => event,
            };
            self.handler.handle(&event)?;
        }
    }
}

/// Turns binlog events into [`SourceEvent`]s for one server family. Keeps the table maps it
/// has seen (rows are decoded with the map in force at their position). No I/O.
pub struct EventHandler {
    flavor: Flavor,
    tables: HashMap<u64, (TableMapEvent<'static>, TableShape)>,
    /// MySQL: a GTID event opened a transaction and no BEGIN followed yet (a DDL is a GTID
    /// followed by its statement, with no BEGIN and no XID).
    awaiting_begin: bool,
    pending: VecDeque<SourceEvent>,
    /// `log_pos` of the last event, for error messages.
    last_pos: u32,
}

impl EventHandler {
    pub fn new(flavor: Flavor) -> Self {
        Self { flavor, tables: HashMap::new(), awaiting_begin: false, pending: VecDeque::new(), last_pos: 0 }
    }

    /// The next decoded event, if any is waiting.
    pub fn pop(&mut self) -> Option<SourceEvent> {
        self.pending.pop_front()
    }

    pub fn handle(&mut self, event: &Event) -> Result<(), SourceError> {
        let header = event.header();
        let event_type = header.event_type_raw();
        self.last_pos = header.log_pos();
        let corrupt = |reason: String| SourceError::Corrupt {
            position: header.log_pos().to_string(),
            event_type,
            reason,
        };
        verify_checksum(event).map_err(corrupt)?;
        match event_type {
            mariadb_event::GTID => {
                let (gtid, flags) = parse_gtid(event.data(), header.server_id()).map_err(corrupt)?;
                self.pending.push_back(SourceEvent::Begin {
                    gtid: Gtid::MariaDb(gtid),
                    server_id: header.server_id(),
                    commit_time_us: i64::from(header.timestamp()) * 1_000_000,
                    standalone: flags & FL_STANDALONE != 0,
                });
                return Ok(());
            }
            mariadb_event::GTID_LIST => {
                let position = parse_gtid_list(event.data()).map_err(corrupt)?;
                self.pending.push_back(SourceEvent::GtidList(position));
                return Ok(());
            }
            mariadb_event::ANNOTATE_ROWS | mariadb_event::BINLOG_CHECKPOINT => return Ok(()),
            mariadb_event::START_ENCRYPTION => {
                return Err(SourceError::Unsupported("encrypted binlog (encrypt_binlog=ON)".into()));
            }
            mariadb_event::FIRST_COMPRESSED..=mariadb_event::LAST_COMPRESSED => {
                return Err(SourceError::Unsupported(
                    "compressed binlog events; turn log_bin_compress off on the primary".into(),
                ));
            }
            mysql8::ANONYMOUS_GTID_EVENT => {
                return Err(SourceError::Unsupported(
                    "a transaction without a GTID: set gtid_mode=ON".into(),
                ));
            }
            mysql8::TRANSACTION_PAYLOAD_EVENT => {
                // mysql_async decompresses it and yields the inner events next, but drops a
                // payload it cannot decompress without a word: check it here first.
                return mysql8::check_payload(event).map_err(corrupt);
            }
            HEARTBEAT_EVENT => {
                self.pending.push_back(SourceEvent::Heartbeat);
                return Ok(());
            }
            XID_EVENT => {
                self.pending.push_back(SourceEvent::Commit);
                return Ok(());
            }
            _ => {}
        }
        let data = match event.read_data() {
            Ok(Some(data)) => data,
            Ok(None) => return Ok(()),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        match data {
            EventData::GtidEvent(gtid) => {
                self.awaiting_begin = true;
                self.pending.push_back(mysql8::begin(&gtid, header.server_id(), header.timestamp()));
            }
            EventData::QueryEvent(q) => {
                let query = q.query();
                let trimmed = query.trim();
                if trimmed.eq_ignore_ascii_case("BEGIN") {
                    self.awaiting_begin = false;
                } else if trimmed.eq_ignore_ascii_case("COMMIT") {
                    self.pending.push_back(SourceEvent::Commit);
                } else {
                    self.pending.push_back(SourceEvent::Statement {
                        schema: q.schema().into_owned(),
                        query: query.into_owned(),
                    });
                    if self.flavor == Flavor::Mysql && std::mem::take(&mut self.awaiting_begin) {
                        self.pending.push_back(SourceEvent::Commit);
                    }
                }
            }
            EventData::TableMapEvent(tme) => {
                let shape = TableShape::from_table_map(&tme)?;
                self.tables.insert(tme.table_id(), (tme.into_owned(), shape));
            }
            EventData::RowsEvent(rows) => {
                let table_id = rows.table_id();
                let Some((tme, shape)) = self.tables.get(&table_id) else {
                    return Err(corrupt(format!("rows event for table id {table_id} without a table map")));
                };
                self.pending.push_back(SourceEvent::Rows(decode_rows(&rows, tme, shape)?));
            }
            EventData::RotateEvent(_) => {
                // Table ids are only valid within one binlog file.
                self.tables.clear();
            }
            _ => {}
        }
        Ok(())
    }
}

/// Check the event's CRC32 when the stream carries checksums.
pub fn verify_checksum(event: &Event) -> Result<(), String> {
    let footer = event.footer();
    let Ok(Some(alg)) = footer.get_checksum_alg() else { return Ok(()) };
    if alg == BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_OFF {
        return Ok(());
    }
    let Some(stored) = event.checksum() else { return Ok(()) };
    let computed = event.calc_checksum(alg);
    if computed != u32::from_le_bytes(stored) {
        return Err(format!(
            "CRC32 mismatch: stored {:08x}, computed {computed:08x}",
            u32::from_le_bytes(stored)
        ));
    }
    Ok(())
}

/// GTID event body: `seq_no u64 LE | domain_id u32 LE | flags u8 | [commit_id u64 if flags & 2]`.
pub fn parse_gtid(body: &[u8], server_id: u32) -> Result<(MariaGtid, u8), String> {
    let seq = body.get(0..8).ok_or("GTID event shorter than 13 bytes")?;
    let domain = body.get(8..12).ok_or("GTID event shorter than 13 bytes")?;
    let flags = *body.get(12).ok_or("GTID event shorter than 13 bytes")?;
    let seq = u64::from_le_bytes(seq.try_into().map_err(|_| "GTID seq")?);
    let domain = u32::from_le_bytes(domain.try_into().map_err(|_| "GTID domain")?);
    Ok((MariaGtid { domain, server_id, seq }, flags))
}

/// GTID_LIST event body: `count u32 (low 28 bits)`, then `count × (domain u32, server u32, seq u64)`.
pub fn parse_gtid_list(body: &[u8]) -> Result<Position, String> {
    let count = body.get(0..4).ok_or("GTID_LIST event shorter than 4 bytes")?;
    let count = u32::from_le_bytes(count.try_into().map_err(|_| "count")?) & 0x0fff_ffff;
    let mut position = Position::default();
    for i in 0..count as usize {
        let at = 4 + i * 16;
        let entry =
            body.get(at..at + 16).ok_or_else(|| format!("GTID_LIST announces {count} entries, has {i}"))?;
        let u32_at = |o: usize| u32::from_le_bytes([entry[o], entry[o + 1], entry[o + 2], entry[o + 3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&entry[8..16]);
        position.advance(MariaGtid { domain: u32_at(0), server_id: u32_at(4), seq: u64::from_le_bytes(seq) });
    }
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_event_bodies_parse_and_short_ones_are_errors() {
        let mut body = 7u64.to_le_bytes().to_vec();
        body.extend(2u32.to_le_bytes());
        body.push(FL_STANDALONE);
        let (gtid, flags) = parse_gtid(&body, 201).unwrap();
        assert_eq!(gtid, MariaGtid { domain: 2, server_id: 201, seq: 7 });
        assert_eq!(flags & FL_STANDALONE, FL_STANDALONE);
        for len in 0..13 {
            assert!(parse_gtid(&body[..len], 1).is_err(), "{len} bytes must be an error");
        }
    }

    #[test]
    fn gtid_list_bodies_parse_and_truncated_ones_are_errors() {
        let mut body = 2u32.to_le_bytes().to_vec();
        for (d, s, n) in [(1u32, 101u32, 5u64), (2, 201, 9)] {
            body.extend(d.to_le_bytes());
            body.extend(s.to_le_bytes());
            body.extend(n.to_le_bytes());
        }
        assert_eq!(parse_gtid_list(&body).unwrap().to_string(), "1-101-5,2-201-9");
        for len in [0, 3, 4, 19, 35] {
            assert!(parse_gtid_list(&body[..len]).is_err(), "{len} bytes must be an error");
        }
    }
}
