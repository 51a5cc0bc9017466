//! The `failover` section: how primaries are promoted and clients re-pointed (see
//! `crate::failover`). Which targets fail over is said on the target (`watch.targets[].failover`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;

/// How much a promotion may lose: a number of transactions against the old primary's last
/// known position, or `any` (also when that position is unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LossBudget {
    Transactions(u64),
    Any(AnyLoss),
}

impl Default for LossBudget {
    fn default() -> Self {
        LossBudget::Transactions(0)
    }
}

/// The word `any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnyLoss {
    Any,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// The most transactions of the failed primary's last known position a promotion may
    /// lose (default 0: with semi-sync replication an acknowledged commit is on a replica),
    /// or `any`: promote even when this ferry never observed the old primary's position, so
    /// that the loss cannot be bounded.
    #[serde(default)]
    pub budget: LossBudget,
    /// How long the chosen replica may take to apply what its relay log holds.
    #[serde(default = "default_relay_wait", with = "humantime_serde")]
    pub relay_wait: Duration,
    /// How long each attempt to reach the old primary (to fence it) may take: a frozen
    /// server does not answer.
    #[serde(default = "default_fence_timeout", with = "humantime_serde")]
    pub fence_timeout: Duration,
    /// The account re-pointed replicas and a rejoining old primary replicate with (needs
    /// REPLICATION SLAVE). Default: the region's `mysql.user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationAccount>,
    /// The authoritative DNS server clients find primaries through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            budget: LossBudget::default(),
            relay_wait: default_relay_wait(),
            fence_timeout: default_fence_timeout(),
            replication: None,
            dns: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationAccount {
    pub user: String,
    pub password: Secret,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `ip:port` of the authoritative server (UPDATEs go there, answers are read back there).
    pub server: SocketAddr,
    /// The zone the records live in (`psi.example.com`).
    pub zone: String,
    /// The TSIG key (hmac-sha256) the server accepts UPDATEs signed with.
    pub key_name: String,
    /// Its secret, base64.
    pub key: Secret,
    /// TTL written with a switched record, in seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// The services a region failover switches: `<service>.<region>.<zone>` of the failed
    /// region takes the standby region's addresses.
    #[serde(default = "default_services")]
    pub services: Vec<String>,
}

impl DnsConfig {
    /// `name` as a fully qualified name in the zone (`db.east` → `db.east.<zone>`).
    pub fn fqdn(&self, name: &str) -> String {
        let name = name.trim_end_matches('.');
        let zone = self.zone.trim_end_matches('.');
        if name == zone || name.ends_with(&format!(".{zone}")) {
            name.to_string()
        } else {
            format!("{name}.{zone}")
        }
    }
}

/// What ferry fails over when the target goes Down: one of the region's primaries
/// (`primary`), or a whole other region (`region`: automatic region failover, off unless
/// configured). Exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFailover {
    /// `mysql` (`regions.<local>.mysql`) or `redis` (`regions.<local>.redis`). The probe follows
    /// the current primary; its configured address is only where it starts when no primary can
    /// be found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<PrimaryKind>,
    /// The DNS name clients reach this primary by (`db.east`, relative to `failover.dns.zone`
    /// or fully qualified); switched to the promoted server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The HAProxy backend clients reach this primary through: the promoted server is made
    /// its only server in service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy: Option<HaproxyBackend>,
    /// Another region whose traffic this region takes over (as `ferry failover region --from
    /// <region> --to <local> --confirm`) once the target has been Down for `confirm` *and* the
    /// region's own ferry does not answer either (if it does, it is a partition: no switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// That region's ferry (`host:port` of its HTTP listener; `/health/live` is asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ferry: Option<String>,
    /// How long the region must stay Down (and its ferry silent) first.
    #[serde(default = "default_confirm", with = "humantime_serde")]
    pub confirm: Duration,
}

impl TargetFailover {
    /// Fail the region's `kind` primary over, switching `record` when given.
    pub fn primary(kind: PrimaryKind, record: Option<String>) -> Self {
        Self {
            primary: Some(kind),
            record,
            haproxy: None,
            region: None,
            ferry: None,
            confirm: default_confirm(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyBackend {
    /// The runtime API: a unix socket path, or `host:port` for a TCP stats socket.
    pub api: String,
    /// The backend whose servers are the primary and its replicas (one per server, by address).
    pub backend: String,
    /// `host:port` of the frontend clients use: a fresh connection through it must reach the
    /// promoted server for the switch to count as done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
}

fn default_confirm() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrimaryKind {
    Mysql,
    Redis,
}

impl PrimaryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrimaryKind::Mysql => "mysql",
            PrimaryKind::Redis => "redis",
        }
    }
}

fn default_relay_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_fence_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_ttl() -> u32 {
    30
}
fn default_services() -> Vec<String> {
    vec!["app".into(), "db".into(), "redis".into()]
}
