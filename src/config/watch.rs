//! The `watch` section: targets to probe, the load-balancer member each one is, and how the
//! loop decides and acts (see `crate::watch`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// A loop tick later than this means the process stalled or the clock jumped: stop acting.
    #[serde(default = "default_tick_tolerance", with = "humantime_serde")]
    pub tick_tolerance: Duration,
    /// On-time ticks in a row before acting again after a late one.
    #[serde(default = "default_on_time_ticks")]
    pub on_time_ticks: u32,
    #[serde(default)]
    pub flap: FlapConfig,
    /// Actions and transitions kept for `/status`.
    #[serde(default = "default_journal")]
    pub journal: usize,
    /// Where alerts go (Alertmanager API v2). Absent = metrics and log only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<AlertmanagerConfig>,
    /// When several ferry instances watch the same targets: only the holder of this lease
    /// acts. Absent = this instance acts alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderConfig {
    /// A Redis holding the lease (`host:port`; the local region's Redis password is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// The Redis key (default `ferry:watch:leader:<region>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Or a Kubernetes Lease (coordination.k8s.io/v1; needs RBAC to get, create and patch
    /// leases in the namespace). Exactly one of `redis` and `kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeLeaseConfig>,
    /// How long a lease lasts without renewal (renewed every third of it).
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeLeaseConfig {
    pub namespace: String,
    /// The Lease's name (default `ferry-watch-<region>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(6)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// `http://host:port[/prefix]`; alerts are posted to `<url>/api/v2/alerts`.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlapConfig {
    /// More than this many Up/Down changes within `window` holds the target down.
    #[serde(default = "default_flap_transitions")]
    pub transitions: usize,
    #[serde(default = "default_flap_window", with = "humantime_serde")]
    pub window: Duration,
    #[serde(default = "default_hold_down", with = "humantime_serde")]
    pub hold_down: Duration,
}

impl Default for FlapConfig {
    fn default() -> Self {
        Self {
            transitions: default_flap_transitions(),
            window: default_flap_window(),
            hold_down: default_hold_down(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Unique among the targets; a label on every metric and alert.
    pub name: String,
    pub probe: ProbeConfig,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "default_threshold")]
    pub recovery_threshold: u32,
    /// The load-balancer member this target is: drained on Down, re-enabled on Up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<LbMember>,
    /// This target is one of the region's primaries: on Down, promote a replica (see
    /// `failover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<super::TargetFailover>,
}

/// How a target is probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ProbeConfig {
    /// `GET path` answers `expect_status` (and contains `body_contains`, if set).
    Http {
        address: String,
        #[serde(default = "default_http_path")]
        path: String,
        #[serde(default = "default_expect_status")]
        expect_status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_contains: Option<String>,
    },
    /// A TCP connection is accepted.
    Tcp { address: String },
    /// Connect with the local region's MySQL credentials and `SELECT 1`; with `heartbeat`,
    /// also write a row (`ferry.watch_probe`: fails on a read-only server); with
    /// `max_replica_lag`, also require a running replica at most that far behind.
    Mysql {
        address: String,
        #[serde(default)]
        heartbeat: bool,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
        max_replica_lag: Option<Duration>,
    },
    /// `PING` answers `PONG` (with the local region's Redis password, if any); with `role`,
    /// `ROLE` must answer it (`master` or `replica`).
    Redis {
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<RedisRole>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisRole {
    Master,
    Replica,
}

impl ProbeConfig {
    pub fn address(&self) -> &str {
        match self {
            ProbeConfig::Http { address, .. }
            | ProbeConfig::Tcp { address }
            | ProbeConfig::Mysql { address, .. }
            | ProbeConfig::Redis { address, .. } => address,
        }
    }

    /// The same probe against another address (a primary target follows the primary).
    pub fn with_address(&self, to: String) -> ProbeConfig {
        let mut probe = self.clone();
        match &mut probe {
            ProbeConfig::Http { address, .. }
            | ProbeConfig::Tcp { address }
            | ProbeConfig::Mysql { address, .. }
            | ProbeConfig::Redis { address, .. } => *address = to,
        }
        probe
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ProbeConfig::Http { .. } => "http",
            ProbeConfig::Tcp { .. } => "tcp",
            ProbeConfig::Mysql { .. } => "mysql",
            ProbeConfig::Redis { .. } => "redis",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum LbMember {
    /// A server in an HAProxy backend, driven through the runtime API.
    Haproxy {
        /// The runtime API: a unix socket path, or `host:port` for a TCP stats socket.
        api: String,
        backend: String,
        server: String,
        /// What Down sets: `drain` (finish current connections, take no new ones; default) or
        /// `maint` (cut now).
        #[serde(default)]
        down_state: DownState,
    },
    /// A pod behind a Kubernetes Service: taken out by a readiness gate condition (`gate`,
    /// listed in the pod's `readinessGates`) or by a label the Service selects on (`label`,
    /// set to `false`); exactly one of the two.
    Kubernetes {
        namespace: String,
        pod: String,
        /// Label selector of the pods behind the same Service: the last Ready one is never
        /// taken out.
        peers: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gate: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
}

/// How a Kubernetes member is taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeSwitch {
    /// A readiness gate condition type.
    Gate(String),
    /// A label key (`true` in, `false` out).
    Label(String),
}

impl LbMember {
    /// The Kubernetes switch, if this is a valid Kubernetes member.
    pub fn kube_switch(&self) -> Option<KubeSwitch> {
        match self {
            LbMember::Kubernetes { gate: Some(g), label: None, .. } => Some(KubeSwitch::Gate(g.clone())),
            LbMember::Kubernetes { gate: None, label: Some(l), .. } => Some(KubeSwitch::Label(l.clone())),
            _ => None,
        }
    }

    /// How `/status` and the journal name it.
    pub fn describe(&self) -> String {
        match self {
            LbMember::Haproxy { backend, server, .. } => format!("haproxy {backend}/{server}"),
            LbMember::Kubernetes { namespace, pod, .. } => format!("kubernetes pod {namespace}/{pod}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownState {
    #[default]
    Drain,
    Maint,
}

impl DownState {
    pub fn as_str(self) -> &'static str {
        match self {
            DownState::Drain => "drain",
            DownState::Maint => "maint",
        }
    }
}

/// Where an HAProxy runtime API listens.
pub fn haproxy_api(api: &str) -> HaproxyApi {
    match api.parse::<std::net::SocketAddr>() {
        Ok(addr) => HaproxyApi::Tcp(addr),
        Err(_) => HaproxyApi::Unix(PathBuf::from(api)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaproxyApi {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

fn default_tick_tolerance() -> Duration {
    Duration::from_secs(1)
}
fn default_on_time_ticks() -> u32 {
    3
}
fn default_journal() -> usize {
    100
}
fn default_flap_transitions() -> usize {
    4
}
fn default_flap_window() -> Duration {
    Duration::from_secs(120)
}
fn default_hold_down() -> Duration {
    Duration::from_secs(300)
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_threshold() -> u32 {
    3
}
fn default_http_path() -> String {
    "/health/ready".into()
}
fn default_expect_status() -> u16 {
    200
}
