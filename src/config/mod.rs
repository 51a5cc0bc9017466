//! ferry's configuration: typed structs, loading with env overrides, and validation.
//!
//! Contract: [`load`] either returns a fully validated [`Config`] or *every* problem found, each
//! naming its YAML path (`regions.east.mysql.primary.server_id`). Unknown fields are errors,
//! durations are humantime strings (`5s`), optional features are `Option`s (absent = off),
//! secrets are [`Secret`]s resolved from env or files and never printed.
//! Later subsystems add their own sections here; the loader is generic over the tree.

mod failover;
mod load;
mod secret;
mod validate;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use failover::{
    AnyLoss, DnsConfig, FailoverConfig, HaproxyBackend, LossBudget, PrimaryKind, ReplicationAccount,
    TargetFailover,
};
pub use load::{ConfigErrors, ConfigProblem, ENV_PREFIX, load, load_str};
pub use secret::{Secret, SecretSource};
pub use watch::{
    AlertmanagerConfig, DownState, FlapConfig, HaproxyApi, KubeLeaseConfig, KubeSwitch, LbMember,
    LeaderConfig, ProbeConfig, RedisRole, TargetConfig, WatchConfig, haproxy_api,
};

impl MysqlConfig {
    /// Which transactions are this region's own.
    pub fn origin_filter(&self) -> crate::model::OriginFilter {
        use crate::model::OriginFilter;
        match self.flavor {
            Flavor::Mariadb => OriginFilter::Domain(self.gtid_domain_id.unwrap_or(0)),
            Flavor::Mysql => {
                OriginFilter::Uuids(self.server_uuids.iter().map(|u| u.to_ascii_lowercase()).collect())
            }
        }
    }

    /// Connection options for this region's primary.
    pub fn primary_opts(&self) -> mysql_async::Opts {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.primary.host.clone())
            .tcp_port(self.primary.port)
            .user(Some(self.user.clone()))
            .pass(Some(self.password.expose().to_string()))
            .prefer_socket(false)
            .into()
    }
}

/// The whole configuration of one ferry process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The region this process runs in; must be a key of `regions`.
    pub region: String,
    /// Every region of the deployment, by name (lowercase letters, digits, `-`).
    pub regions: BTreeMap<String, RegionConfig>,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The capture role: tail the local primary's binlog and publish local transactions.
    /// Absent = this process does not capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureConfig>,
    /// The apply role: consume every other region's changes and apply them here.
    /// Absent = this process does not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<ApplyConfig>,
    /// How apply decides when a row changed in two regions (see `conflict`).
    #[serde(default)]
    pub conflicts: ConflictConfig,
    /// The health loop: targets to probe and the members to drain (see `watch`). Absent = no
    /// watching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchConfig>,
    /// How primaries are promoted and clients re-pointed (targets with `failover`, `ferry
    /// failover`, `ferry switchover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverConfig>,
    /// How `ferry check` compares the regions.
    #[serde(default)]
    pub check: CheckConfig,
}

impl Config {
    /// This process's own region. Validation guarantees it exists.
    pub fn local(&self) -> Option<&RegionConfig> {
        self.regions.get(&self.region)
    }

    /// Regions ordered for tie-breaks: the smallest `priority` first.
    pub fn tie_break_order(&self) -> Vec<&str> {
        let mut names: Vec<(&str, u32)> =
            self.regions.iter().map(|(n, r)| (n.as_str(), r.priority)).collect();
        names.sort_by_key(|&(n, p)| (p, n));
        names.into_iter().map(|(n, _)| n).collect()
    }
}

/// One region: its databases, broker and cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Tie-break rank: when two regions' versions are equal, the smaller number wins.
    /// Unique across regions so every region picks the same winner.
    pub priority: u32,
    /// The region that takes over this region's traffic in a region failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    pub mysql: MysqlConfig,
    pub kafka: KafkaConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
}

/// The region's MySQL/MariaDB primary and its in-region replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    pub user: String,
    pub password: Secret,
    /// `mariadb` (10.5+, the default) or `mysql` (8.0+).
    #[serde(default)]
    pub flavor: Flavor,
    /// MariaDB: the `gtid_domain_id` of this region's writes; unique across regions. It is how
    /// capture tells this region's transactions from those ferry applied for another region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid_domain_id: Option<u32>,
    /// MySQL: the `@@server_uuid` of each of this region's servers (a promoted replica keeps
    /// writing under its own UUID); a transaction is this region's when its GTID carries one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_uuids: Vec<String>,
    pub primary: DbServer,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<DbServer>,
}

/// Which server family a region runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    #[default]
    Mariadb,
    Mysql,
}

/// One database server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbServer {
    pub host: String,
    #[serde(default = "default_mysql_port")]
    pub port: u16,
    /// The server's `server_id`; unique across the whole deployment.
    pub server_id: u32,
}

fn default_mysql_port() -> u16 {
    3306
}

/// The Kafka-protocol broker this region's change topic lives on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port` of one or more brokers.
    pub bootstrap: Vec<String>,
    /// Copies of each record the brokers keep (topics ferry creates get this many).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Copies that must hold a record before `acks=all` acknowledges it: the number of broker
    /// losses a checkpointed record survives is this minus one.
    #[serde(default = "default_min_insync_replicas")]
    pub min_insync_replicas: i32,
    /// Publish to an existing topic whose replication factor or `min.insync.replicas` is
    /// below the two settings above (default: refuse, with both values in the error).
    #[serde(default)]
    pub allow_under_replicated: bool,
}

impl KafkaConfig {
    /// A single broker (the sandbox and tests): one copy, said explicitly.
    pub fn single_broker(bootstrap: Vec<String>) -> Self {
        Self { bootstrap, replication_factor: 1, min_insync_replicas: 1, allow_under_replicated: false }
    }
}

fn default_replication_factor() -> i32 {
    3
}

fn default_min_insync_replicas() -> i32 {
    2
}

/// The region's Redis primary and replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `host:port`.
    pub primary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

impl RedisConfig {
    /// The primary and the replicas, as addresses (entries that are not `ip:port` left out).
    pub fn servers(&self) -> Vec<SocketAddr> {
        std::iter::once(&self.primary).chain(&self.replicas).filter_map(|a| a.parse().ok()).collect()
    }
}

/// The one HTTP listener: `/metrics`, `/health/live`, `/health/ready`, `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9464)) }
    }
}

/// Apply settings (see `apply`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// What to do after parking a record in the dead-letter queue: `pause` applying from that
    /// origin until an operator steps in (default), or `skip` it and go on (counted, alerted).
    #[serde(default)]
    pub on_error: OnError,
    /// Connections applying one origin's transactions concurrently. Transactions that touch
    /// disjoint rows execute in parallel; any two that touch the same row run in origin order;
    /// all commit in origin order. 1 applies serially.
    #[serde(default = "default_apply_workers")]
    pub workers: usize,
    /// While catching up, up to this many consecutive origin transactions are committed
    /// together in one local transaction (each stays whole). 1 commits each on its own.
    #[serde(default = "default_max_group_transactions")]
    pub max_group_transactions: usize,
    /// The schemas apply may write (besides `ferry.heartbeat`); absent = every user schema.
    /// System schemas and the rest of `ferry` are never written, listed or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schemas: Option<Vec<String>>,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        Self {
            on_error: OnError::default(),
            workers: default_apply_workers(),
            max_group_transactions: default_max_group_transactions(),
            schemas: None,
        }
    }
}

/// Conflict rules: last write wins on a version column, region order on ties, tombstones for
/// deletes, additive delta columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictConfig {
    /// The version column of every table that does not name its own (µs precision).
    #[serde(default = "default_version_column")]
    pub version_column: String,
    /// Tombstones older than this are collected.
    #[serde(default = "default_tombstone_horizon", with = "humantime_serde")]
    pub tombstone_horizon: Duration,
    /// An incoming version further ahead of the local clock than this is counted and alerted.
    #[serde(default = "default_max_clock_skew", with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Per table (`schema.table`) overrides.
    #[serde(default)]
    pub tables: BTreeMap<String, TableRules>,
}

impl Default for ConflictConfig {
    fn default() -> Self {
        Self {
            version_column: default_version_column(),
            tombstone_horizon: default_tombstone_horizon(),
            max_clock_skew: default_max_clock_skew(),
            tables: BTreeMap::new(),
        }
    }
}

impl ConflictConfig {
    /// The rules of `db.table` (the defaults when it has no entry).
    pub fn table(&self, db: &str, table: &str) -> Option<&TableRules> {
        self.tables.get(&format!("{db}.{table}"))
    }
}

/// One table's conflict rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRules {
    /// This table's version column instead of `conflicts.version_column`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_column: Option<String>,
    /// Columns merged additively (`column + (after − before)`) whoever wins the others.
    #[serde(default)]
    pub delta_columns: Vec<String>,
    /// Only this region writes the table: its changes apply as they are, no conflict rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_writer: Option<String>,
}

/// Where `ferry check` reads each region's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// The region's current primary.
    #[default]
    Primary,
    /// The region's first replica (keeps the load off the primary; its lag adds to the wait).
    Replica,
}

/// The consistency check (`ferry check`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Each region's primary or its first replica.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// The chunk size adapts so that one chunk's checksum takes about this long.
    #[serde(default = "default_chunk_time", with = "humantime_serde")]
    pub chunk_time: Duration,
    /// How long a differing row waits for every region to apply what the others had when it
    /// was read, before it is read again.
    #[serde(default = "default_check_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// How many times a differing row is read again before it is reported.
    #[serde(default = "default_rechecks")]
    pub rechecks: u32,
    /// Rows read per second per region at most (0 = no limit).
    #[serde(default)]
    pub max_rows_per_second: u64,
    /// Checking pauses while any region's apply backlog is older than this.
    #[serde(default = "default_check_max_lag", with = "humantime_serde")]
    pub max_lag: Duration,
    /// `ferry run`: check the rows changed recently (`window`, up to `settle` ago) this often.
    /// Absent: no sliding-window checks.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// How far back a sliding-window check looks.
    #[serde(default = "default_check_window", with = "humantime_serde")]
    pub window: Duration,
    /// Rows changed more recently than this are left to the next window (still replicating).
    #[serde(default = "default_check_settle", with = "humantime_serde")]
    pub settle: Duration,
    /// `ferry run`: a full check this often (resumed after a restart). Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub full_every: Option<Duration>,
    /// The tables scheduled checks compare (`db.table`); empty: every user table apply
    /// governs.
    #[serde(default)]
    pub tables: Vec<String>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            read_from: ReadFrom::default(),
            chunk_time: default_chunk_time(),
            max_wait: default_check_max_wait(),
            rechecks: default_rechecks(),
            max_rows_per_second: 0,
            max_lag: default_check_max_lag(),
            interval: None,
            window: default_check_window(),
            settle: default_check_settle(),
            full_every: None,
            tables: Vec::new(),
        }
    }
}

fn default_check_window() -> Duration {
    Duration::from_secs(600)
}

fn default_check_settle() -> Duration {
    Duration::from_secs(60)
}

fn default_chunk_time() -> Duration {
    Duration::from_millis(500)
}

fn default_check_max_wait() -> Duration {
    Duration::from_secs(60)
}

fn default_rechecks() -> u32 {
    3
}

fn default_check_max_lag() -> Duration {
    Duration::from_secs(10)
}

fn default_version_column() -> String {
    "updated_at".into()
}

fn default_tombstone_horizon() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_max_clock_skew() -> Duration {
    Duration::from_secs(5)
}

fn default_apply_workers() -> usize {
    4
}

fn default_max_group_transactions() -> usize {
    200
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Pause,
    Skip,
}

/// Capture settings (see `capture`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// The server id the binlog reader registers with; unique across every server and reader.
    pub server_id: u32,
    /// How often the primary sends a heartbeat on an idle stream; three missed = reconnect.
    #[serde(default = "default_heartbeat_period", with = "humantime_serde")]
    pub heartbeat_period: Duration,
    /// Target size of one Kafka record (a transaction spans as many as it needs). Keep it
    /// under the broker's message size limit.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Published but not yet acknowledged bytes; reading the binlog pauses above this.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: usize,
    /// How often the acknowledged position is written to `ferry.capture_checkpoint`.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Write `ferry.heartbeat` every second so other regions can measure end-to-end lag.
    #[serde(default = "default_true")]
    pub write_heartbeat: bool,
}

fn default_heartbeat_period() -> Duration {
    Duration::from_secs(1)
}
fn default_max_record_bytes() -> usize {
    512 * 1024
}
fn default_max_inflight_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `ferry=debug,info`); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: default_log_level() }
    }
}

fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long the whole ordered shutdown may take before ferry gives up and exits non-zero.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace: Duration::from_secs(30) }
    }
}
