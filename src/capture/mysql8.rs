//! The MySQL 8 parts of capture: GTID sets in the dump request (`COM_BINLOG_DUMP_GTID`), GTID
//! events (source UUID and original commit time), and compressed transaction payloads.
//!
//! Status: implemented and unit-tested with constructed events; **not yet run against a live
//! MySQL 8 server** (none is installable on the machines this project is built on).

use std::io::Read;

use mysql_async::binlog::TransactionPayloadCompressionType;
use mysql_async::binlog::events::{Event, GtidEvent, TransactionPayloadEvent};
use mysql_async::{GnoInterval, Sid};

use super::source::SourceEvent;
use crate::model::{Gtid, GtidSet};

/// MySQL event types ferry handles itself.
pub const ANONYMOUS_GTID_EVENT: u8 = 34;
pub const TRANSACTION_PAYLOAD_EVENT: u8 = 40;

/// The GTID set as the dump request's SIDs (intervals are half-open there).
pub fn sids(set: &GtidSet) -> Vec<Sid<'static>> {
    set.iter()
        .filter_map(|(uuid, intervals)| {
            let bytes = GtidSet::uuid_bytes(uuid)?;
            let intervals =
                intervals.iter().map(|&(a, b)| GnoInterval::new(a, b.saturating_add(1))).collect();
            Some(Sid::new(bytes).with_intervals(intervals))
        })
        .collect()
}

/// A GTID event as the start of a transaction. MySQL records the original commit time in µs;
/// an event from before 8.0.1 has none, and the header's whole seconds are used.
pub fn begin(event: &GtidEvent, server_id: u32, header_seconds: u32) -> SourceEvent {
    let uuid = GtidSet::uuid_text(&event.sid());
    let original = event.original_commit_timestamp();
    let commit_time_us = if original > 0 { original as i64 } else { i64::from(header_seconds) * 1_000_000 };
    SourceEvent::Begin {
        gtid: Gtid::MySql { uuid, gno: event.gno() },
        server_id,
        commit_time_us,
        standalone: false,
    }
}

/// Check that a transaction payload decompresses to exactly its declared size, streaming (no
/// buffer of the declared size is allocated here).
pub fn check_payload(event: &Event) -> Result<(), String> {
    let payload: TransactionPayloadEvent<'_> =
        event.read_event().map_err(|e| format!("transaction payload: {e}"))?;
    if payload.algorithm() == TransactionPayloadCompressionType::NONE {
        // Stored as is (no size is declared for it): nothing can fail to decompress.
        return Ok(());
    }
    let declared = payload.uncompressed_size();
    let mut reader = payload.decompressed().map_err(|e| format!("transaction payload: {e}"))?;
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| format!("transaction payload does not decompress: {e}"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > declared {
            return Err(format!("transaction payload decompresses past its declared {declared} bytes"));
        }
    }
    if total != declared {
        return Err(format!("transaction payload decompresses to {total} bytes, declared {declared}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use mysql_common::binlog::consts::{BinlogChecksumAlg, BinlogVersion, TransactionPayloadCompressionType};
    use mysql_common::binlog::events::{BinlogEventFooter, FormatDescriptionEvent, QueryEvent};
    use mysql_common::proto::MySerialize;

    use super::*;
    use crate::capture::source::{EventHandler, SourceError};
    use crate::config::Flavor;

    const UUID: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";

    /// An event as the server sends it: 19-byte header, body, optional checksum.
    fn raw(event_type: u8, body: &[u8], checksum: Option<u32>) -> Vec<u8> {
        let size = 19 + body.len() + if checksum.is_some() { 4 } else { 0 };
        let mut b = Vec::new();
        b.extend(1_795_000_000u32.to_le_bytes());
        b.push(event_type);
        b.extend(7u32.to_le_bytes());
        b.extend((size as u32).to_le_bytes());
        b.extend(4096u32.to_le_bytes());
        b.extend(0u16.to_le_bytes());
        b.extend(body);
        if let Some(c) = checksum {
            b.extend(c.to_le_bytes());
        }
        b
    }

    fn plain_fde() -> FormatDescriptionEvent<'static> {
        FormatDescriptionEvent::new(BinlogVersion::Version4)
    }

    fn event(event_type: u8, body: &[u8]) -> Event {
        Event::read(&plain_fde(), &raw(event_type, body, None)[..]).unwrap()
    }

    fn serialized(value: &impl MySerialize) -> Vec<u8> {
        let mut body = Vec::new();
        value.serialize(&mut body);
        body
    }

    fn gtid_event(gno: u64) -> Event {
        let uuid = GtidSet::uuid_bytes(UUID).unwrap();
        event(
            33,
            &serialized(&GtidEvent::new(uuid, gno).with_original_commit_timestamp(1_795_000_000_123_456)),
        )
    }

    fn query_event(query: &str) -> Event {
        event(
            2,
            &serialized(&QueryEvent::new(Vec::new(), b"psi".to_vec()).with_query(query.as_bytes().to_vec())),
        )
    }

    fn drain(h: &mut EventHandler) -> Vec<SourceEvent> {
        std::iter::from_fn(|| h.pop()).collect()
    }

    #[test]
    fn a_gtid_event_begins_a_transaction_with_uuid_gno_and_microsecond_commit_time() {
        let mut h = EventHandler::new(Flavor::Mysql);
        h.handle(&gtid_event(42)).unwrap();
        assert_eq!(
            drain(&mut h),
            vec![SourceEvent::Begin {
                gtid: Gtid::MySql { uuid: UUID.into(), gno: 42 },
                server_id: 7,
                commit_time_us: 1_795_000_000_123_456,
                standalone: false,
            }]
        );
    }

    #[test]
    fn a_ddl_without_begin_is_closed_by_a_commit_and_a_begin_xid_transaction_is_not() {
        let mut h = EventHandler::new(Flavor::Mysql);
        h.handle(&gtid_event(1)).unwrap();
        h.handle(&query_event("ALTER TABLE stock ADD x INT")).unwrap();
        let got = drain(&mut h);
        assert!(
            matches!(&got[1], SourceEvent::Statement { query, .. } if query.starts_with("ALTER")),
            "{got:?}"
        );
        assert_eq!(got[2], SourceEvent::Commit, "the DDL ends its transaction");

        h.handle(&gtid_event(2)).unwrap();
        h.handle(&query_event("BEGIN")).unwrap();
        h.handle(&query_event("SAVEPOINT s1")).unwrap();
        let got = drain(&mut h);
        assert_eq!(got.len(), 2, "begin + statement, no synthetic commit: {got:?}");
        h.handle(&event(16, &9u64.to_le_bytes())).unwrap();
        assert_eq!(drain(&mut h), vec![SourceEvent::Commit], "the XID commits");
    }

    #[test]
    fn transaction_payloads_are_checked_before_their_events_are_trusted() {
        let inner = b"pretend these are events".to_vec();
        let ok = TransactionPayloadEvent::new(
            inner.len() as u64,
            TransactionPayloadCompressionType::NONE,
            inner.len() as u64,
            inner.clone(),
        );
        assert_eq!(check_payload(&event(40, &serialized(&ok))), Ok(()));

        let garbage = vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4];
        let corrupt = TransactionPayloadEvent::new(
            garbage.len() as u64,
            TransactionPayloadCompressionType::ZSTD,
            1000,
            garbage,
        );
        let err = check_payload(&event(40, &serialized(&corrupt))).unwrap_err();
        assert!(err.contains("does not decompress"), "{err}");

        let packed = zstd::encode_all(&inner[..], 3).unwrap();
        let good = TransactionPayloadEvent::new(
            packed.len() as u64,
            TransactionPayloadCompressionType::ZSTD,
            inner.len() as u64,
            packed.clone(),
        );
        assert_eq!(check_payload(&event(40, &serialized(&good))), Ok(()));
        let short = TransactionPayloadEvent::new(
            packed.len() as u64,
            TransactionPayloadCompressionType::ZSTD,
            999,
            packed,
        );
        let err = check_payload(&event(40, &serialized(&short))).unwrap_err();
        assert!(err.contains("declared 999"), "{err}");

        // Through the handler, a bad payload is a corrupt event, never silence.
        let mut h = EventHandler::new(Flavor::Mysql);
        assert!(matches!(
            h.handle(&event(40, &serialized(&corrupt))),
            Err(SourceError::Corrupt { event_type: 40, .. })
        ));
    }

    #[test]
    fn an_anonymous_gtid_is_refused() {
        let mut h = EventHandler::new(Flavor::Mysql);
        let err = h.handle(&event(ANONYMOUS_GTID_EVENT, &[0; 42])).unwrap_err();
        assert!(err.to_string().contains("gtid_mode=ON"), "{err}");
    }

    #[test]
    fn a_checksum_mismatch_is_a_corrupt_event() {
        let fde =
            plain_fde().with_footer(BinlogEventFooter::new(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32));
        let body = 9u64.to_le_bytes();
        let read = |crc| Event::read(&fde, &raw(16, &body, Some(crc))[..]).unwrap();
        let right = read(0).calc_checksum(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32);
        let mut h = EventHandler::new(Flavor::Mariadb);
        h.handle(&read(right)).unwrap();
        assert_eq!(drain(&mut h), vec![SourceEvent::Commit]);
        let err = h.handle(&read(right ^ 1)).unwrap_err();
        assert!(
            matches!(&err, SourceError::Corrupt { reason, .. } if reason.contains("CRC32 mismatch")),
            "{err}"
        );
    }

    #[test]
    fn the_dump_request_gets_half_open_intervals() {
        let set: GtidSet = format!("{UUID}:1-5:7").parse().unwrap();
        let sids = sids(&set);
        let intervals: Vec<(u64, u64)> = sids[0].intervals().iter().map(|i| (i.start(), i.end())).collect();
        assert_eq!(intervals, vec![(1, 6), (7, 8)]);
        assert_eq!(GtidSet::uuid_text(&sids[0].uuid()), UUID);
    }
}
