//! Every metric ferry exports, with its help text, in one place. Dashboards and alert rules use
//! only names from [`ALL`]; a test checks it. Naming: `ferry_<subsystem>_<name>_<unit>`,
//! counters end in `_total` (the OpenMetrics encoder adds the suffix to the registered name).

/// A metric's exported name (as it appears in `/metrics`) and its help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricName {
    /// The name without the `_total` suffix that OpenMetrics adds to counters.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Info,
}

impl MetricName {
    /// The name as it appears in an exposition and in PromQL.
    pub fn exposed(&self) -> String {
        match self.kind {
            MetricKind::Counter => format!("{}_total", self.name),
            MetricKind::Info => format!("{}_info", self.name),
            MetricKind::Gauge => self.name.to_string(),
        }
    }
}

const fn m(name: &'static str, kind: MetricKind, help: &'static str) -> MetricName {
    MetricName { name, help, kind }
}

use MetricKind::{Counter, Gauge, Info};

pub const BUILD: MetricName = m("ferry_build", Info, "ferry's version; the value is always 1");
pub const UP: MetricName =
    m("ferry_up", Gauge, "1 while the process is running, 0 once ordered shutdown has begun");
pub const ROLE_READY: MetricName =
    m("ferry_role_ready", Gauge, "1 when the role reports ready, else 0 (label: role)");
pub const PROCESS_START_TIME: MetricName = m(
    "ferry_process_start_time_seconds",
    Gauge,
    "Start time of the process since the Unix epoch, in seconds",
);
pub const PROCESS_CPU: MetricName =
    m("ferry_process_cpu_seconds", Counter, "User and system CPU time spent, in seconds");
pub const PROCESS_RESIDENT_MEMORY: MetricName =
    m("ferry_process_resident_memory_bytes", Gauge, "Resident memory size, in bytes");
pub const PROCESS_OPEN_FDS: MetricName =
    m("ferry_process_open_fds", Gauge, "Number of open file descriptors");
pub const PROCESS_THREADS: MetricName = m("ferry_process_threads", Gauge, "Number of OS threads");

pub const CAPTURE_CONNECTED: MetricName =
    m("ferry_capture_connected", Gauge, "1 while the binlog stream of the local primary is connected");
pub const KAFKA_REACHABLE: MetricName = m(
    "ferry_kafka_reachable",
    Gauge,
    "1 while a region's brokers answer ferry's metadata requests within 2 s, 0 while they do not (label: region)",
);
pub const CAPTURE_EVENTS: MetricName = m(
    "ferry_capture_events",
    Counter,
    "Binlog events read (rows events, transactions, statements, heartbeats)",
);
pub const CAPTURE_TRANSACTIONS: MetricName = m(
    "ferry_capture_transactions",
    Counter,
    "Transactions read, by kind: forwarded, empty, checkpoint, or foreign (applied from another region, loop-filtered)",
);
pub const CAPTURE_ROWS: MetricName = m("ferry_capture_rows", Counter, "Row changes forwarded for publishing");
pub const CAPTURE_PUBLISHED_TRANSACTIONS: MetricName =
    m("ferry_capture_published_transactions", Counter, "Transactions whose records the broker acknowledged");
pub const CAPTURE_PUBLISHED_RECORDS: MetricName =
    m("ferry_capture_published_records", Counter, "Records the broker acknowledged");
pub const CAPTURE_PUBLISHED_BYTES: MetricName =
    m("ferry_capture_published_bytes", Counter, "Payload bytes the broker acknowledged");
pub const CAPTURE_STATEMENTS: MetricName = m(
    "ferry_capture_statements",
    Counter,
    "Statements not replicated (DDL and the like), recorded in the log",
);
pub const CAPTURE_RECONNECTS: MetricName =
    m("ferry_capture_reconnects", Counter, "Times capture restarted from its checkpoint after an error");
pub const CAPTURE_CHECKPOINT_AGE: MetricName = m(
    "ferry_capture_checkpoint_age_seconds",
    Gauge,
    "Seconds since the stored capture checkpoint last moved (acknowledged progress written); grows when the broker stops acknowledging or the binlog stream stalls",
);
pub const CAPTURE_LAG: MetricName = m(
    "ferry_capture_lag_seconds",
    Gauge,
    "Now minus the origin commit time of the last transaction the broker acknowledged",
);
pub const HEARTBEAT_WRITES: MetricName =
    m("ferry_heartbeat_writes", Counter, "ferry.heartbeat writes, by result (ok, error)");

pub const APPLY_TRANSACTIONS: MetricName =
    m("ferry_apply_transactions", Counter, "Origin transactions applied (label: origin)");
pub const APPLY_ROWS: MetricName =
    m("ferry_apply_rows", Counter, "Row changes applied (labels: origin, table)");
pub const APPLY_DUPLICATES: MetricName = m(
    "ferry_apply_duplicates",
    Counter,
    "Origin transactions received again and skipped because ferry.applied already covers them (label: origin)",
);
pub const APPLY_DLQ: MetricName = m(
    "ferry_apply_dlq_records",
    Counter,
    "Records or transactions parked in the dead-letter queue (labels: origin, kind: decode, sequence, refused, apply)",
);
pub const APPLY_CONFLICTS: MetricName = m(
    "ferry_apply_conflicts",
    Counter,
    "Conflicts decided by the conflict rules, each also a row in ferry.conflicts (labels: table, kind: insert_insert, update_update, update_delete, delete_update, unique_key, clock_skew; resolution: incoming, local — which side's non-delta columns won)",
);
pub const APPLY_COLLECTED: MetricName = m(
    "ferry_apply_collected_rows",
    Counter,
    "Tombstones and row origins older than conflicts.tombstone_horizon deleted by the collector (labels: table: tombstones, row_origins)",
);
pub const WATCH_TARGET_UP: MetricName = m(
    "ferry_watch_target_up",
    Gauge,
    "1 while a watched target counts as serving (up or suspect), 0 while down or recovering (labels: target)",
);
pub const WATCH_FAILURES: MetricName =
    m("ferry_watch_consecutive_failures", Gauge, "Consecutive failed probes of a target (labels: target)");
pub const WATCH_PROBE_SECONDS: MetricName =
    m("ferry_watch_probe_seconds", Gauge, "How long the last probe of a target took (labels: target)");
pub const WATCH_TRANSITIONS: MetricName = m(
    "ferry_watch_transitions",
    Counter,
    "Targets going down or up, or held down for flapping (labels: target, to: down, up, held_down)",
);
pub const WATCH_ACTIONS: MetricName = m(
    "ferry_watch_actions",
    Counter,
    "Actions taken on a target's load-balancer member (labels: target, action: take_out, put_back; result: done, already, refused_last_member, failed, skipped_tilted, skipped_not_leader)",
);
pub const WATCH_CREDENTIALS_REFUSED: MetricName = m(
    "ferry_watch_credentials_refused",
    Gauge,
    "1 while a target's probe is refused ferry's credentials or privileges: a configuration problem, not counted as a failure (labels: target)",
);
pub const WATCH_TILTED: MetricName = m(
    "ferry_watch_tilted",
    Gauge,
    "1 while the watch loop distrusts itself (its ticks ran late: the process stalled or the clock jumped) and does not act",
);
pub const WATCH_LEADER: MetricName = m(
    "ferry_watch_leader",
    Gauge,
    "1 while this instance holds the watch lease (or acts alone, with no lease configured), 0 otherwise",
);
pub const FAILOVER_TOTAL: MetricName = m(
    "ferry_failover",
    Counter,
    "Failovers of a primary by kind (mysql, redis, region) and result (done, refused, failed)",
);
pub const FAILOVER_PHASE_SECONDS: MetricName = m(
    "ferry_failover_phase_seconds",
    Gauge,
    "How long each phase of the last failover of this kind took (detect, choose, fence, relay, promote, repoint, dns, verify)",
);
pub const FAILOVER_OLD_PRIMARY: MetricName = m(
    "ferry_failover_old_primary_fenced",
    Gauge,
    "Old primaries that returned with transactions the new primary lacks and are left fenced for an operator",
);
pub const APPLY_ERRORS: MetricName = m(
    "ferry_apply_errors",
    Counter,
    "Apply errors (labels: origin, kind: transient, permanent, connection, parallel_abort: a group rolled back to run again in origin order)",
);
pub const APPLY_LAG: MetricName = m(
    "ferry_apply_lag_seconds",
    Gauge,
    "Now minus the origin commit time of the last applied transaction (label: origin)",
);
pub const APPLY_E2E_LAG: MetricName = m(
    "ferry_apply_end_to_end_lag_seconds",
    Gauge,
    "Now minus the origin's ferry.heartbeat timestamp as last applied here (label: origin)",
);
pub const APPLY_BACKLOG: MetricName = m(
    "ferry_apply_backlog_records",
    Gauge,
    "Records in the origin's topic not yet applied here: high watermark minus the next offset to apply (label: origin)",
);
pub const APPLY_PAUSED: MetricName = m(
    "ferry_apply_paused",
    Gauge,
    "1 while applying from an origin is paused after a dead-lettered record or a gap (label: origin)",
);
pub const APPLY_GAP: MetricName = m(
    "ferry_apply_gap",
    Gauge,
    "1 while applying from an origin is stopped because transactions are missing from its topic (label: origin)",
);
pub const APPLY_REFUSED: MetricName = m(
    "ferry_apply_refused",
    Gauge,
    "1 while applying from an origin waits because the server refuses ferry's account a privilege or its password (label: origin)",
);
pub const APPLY_SUPERSEDED: MetricName = m(
    "ferry_apply_superseded",
    Counter,
    "Partial transactions dropped because capture resent them whole after a restart (label: origin)",
);

/// Every metric ferry can export.
pub const SYNC_ROWS: MetricName =
    m("ferry_sync_rows", Counter, "Rows an initial sync published from this region (label: table)");
pub const SYNC_CHUNKS: MetricName =
    m("ferry_sync_chunks", Counter, "Chunks an initial sync published from this region (label: table)");
pub const SYNC_REMAINING: MetricName = m(
    "ferry_sync_remaining_rows",
    Gauge,
    "Rows of a table an initial sync has still to read, estimated from the server's table statistics (label: table)",
);
pub const SYNC_ACTIVE: MetricName =
    m("ferry_sync_active", Gauge, "1 while an initial sync is reading tables in this region, 0 otherwise");
pub const CHECK_ROWS: MetricName =
    m("ferry_check_rows", Counter, "Rows compared by scheduled checks (label: mode: window, full)");
pub const CHECK_CHUNKS: MetricName =
    m("ferry_check_chunks", Counter, "Chunks compared by scheduled checks (label: mode: window, full)");
pub const CHECK_DIFFERENCES: MetricName = m(
    "ferry_check_differences",
    Gauge,
    "Differences the last completed scheduled check of a mode found (labels: mode, table, kind: missing, different, unsettled, schema)",
);
pub const CHECK_LAST_COMPLETED: MetricName = m(
    "ferry_check_last_completed_timestamp_seconds",
    Gauge,
    "When the last scheduled check of a mode completed, Unix seconds (label: mode)",
);
pub const CHECK_DURATION: MetricName = m(
    "ferry_check_duration_seconds",
    Gauge,
    "How long the last completed scheduled check of a mode took (label: mode)",
);
pub const CHECK_INTERVAL: MetricName = m(
    "ferry_check_interval_seconds",
    Gauge,
    "The configured interval of a scheduled check mode (check.interval, check.full_every) (label: mode)",
);
pub const ALL: &[MetricName] = &[
    SYNC_ROWS,
    SYNC_CHUNKS,
    SYNC_REMAINING,
    SYNC_ACTIVE,
    CHECK_ROWS,
    CHECK_CHUNKS,
    CHECK_DIFFERENCES,
    CHECK_LAST_COMPLETED,
    CHECK_DURATION,
    CHECK_INTERVAL,
    BUILD,
    UP,
    ROLE_READY,
    PROCESS_START_TIME,
    PROCESS_CPU,
    PROCESS_RESIDENT_MEMORY,
    PROCESS_OPEN_FDS,
    PROCESS_THREADS,
    CAPTURE_CONNECTED,
    KAFKA_REACHABLE,
    CAPTURE_EVENTS,
    CAPTURE_TRANSACTIONS,
    CAPTURE_ROWS,
    CAPTURE_PUBLISHED_TRANSACTIONS,
    CAPTURE_PUBLISHED_RECORDS,
    CAPTURE_PUBLISHED_BYTES,
    CAPTURE_STATEMENTS,
    CAPTURE_RECONNECTS,
    CAPTURE_CHECKPOINT_AGE,
    CAPTURE_LAG,
    HEARTBEAT_WRITES,
    APPLY_TRANSACTIONS,
    APPLY_ROWS,
    APPLY_DUPLICATES,
    APPLY_DLQ,
    APPLY_CONFLICTS,
    WATCH_TARGET_UP,
    WATCH_FAILURES,
    WATCH_PROBE_SECONDS,
    WATCH_TRANSITIONS,
    WATCH_ACTIONS,
    WATCH_TILTED,
    WATCH_LEADER,
    FAILOVER_TOTAL,
    FAILOVER_PHASE_SECONDS,
    FAILOVER_OLD_PRIMARY,
    APPLY_COLLECTED,
    APPLY_ERRORS,
    APPLY_LAG,
    APPLY_E2E_LAG,
    WATCH_CREDENTIALS_REFUSED,
    APPLY_PAUSED,
    APPLY_GAP,
    APPLY_REFUSED,
    APPLY_SUPERSEDED,
    APPLY_BACKLOG,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for metric in ALL {
            assert!(metric.name.starts_with("ferry_"), "{} lacks the ferry_ prefix", metric.name);
            assert!(!metric.name.ends_with("_total"), "{}: the encoder adds _total", metric.name);
            assert!(
                metric.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{} is not snake_case",
                metric.name
            );
            assert!(!metric.help.is_empty(), "{} has no help", metric.name);
            assert!(!metric.help.ends_with('.'), "{}: the encoder appends the period", metric.name);
            assert!(seen.insert(metric.exposed()), "{} is listed twice", metric.name);
        }
    }
}
