//! Semantic checks that serde cannot express: references between sections, uniqueness of ids
//! across regions, well-formed addresses and names. Pure: no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use super::load::Finding;
use super::{Config, DbServer, Flavor};

pub(super) fn validate(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |path: String, message: String, refers_to: Option<String>| {
        out.push(Finding { path, message, refers_to });
    };

    if config.regions.is_empty() {
        push("regions".into(), "at least one region is required".into(), None);
    } else if !config.regions.contains_key(&config.region) {
        push(
            "region".into(),
            format!(
                "region `{}` is not defined under `regions` (defined: {})",
                config.region,
                config.regions.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            Some(format!("regions.{}", config.region)),
        );
    }

    let mut priorities: BTreeMap<u32, &str> = BTreeMap::new();
    let mut domains: BTreeMap<u32, String> = BTreeMap::new();
    let mut server_ids: BTreeMap<u32, String> = BTreeMap::new();

    for (name, region) in &config.regions {
        let at = format!("regions.{name}");
        if !is_region_name(name) {
            push(
                at.clone(),
                "a region name must be 1-32 lowercase letters, digits or `-` (it is part of topic names)"
                    .into(),
                None,
            );
        }
        if let Some(first) = priorities.insert(region.priority, name) {
            push(
                format!("{at}.priority"),
                format!(
                    "priority {} is also used by region `{first}`; tie-breaks need a total order",
                    region.priority
                ),
                None,
            );
        }
        if let Some(standby) = &region.standby {
            if standby == name {
                push(format!("{at}.standby"), "a region cannot be its own standby".into(), None);
            } else if !config.regions.contains_key(standby) {
                push(
                    format!("{at}.standby"),
                    format!("standby region `{standby}` is not defined under `regions`"),
                    Some(format!("regions.{standby}")),
                );
            }
        }

        let mysql = &region.mysql;
        if let Some(problem) = mysql.password.problem() {
            push(format!("{at}.mysql.password"), problem.to_string(), None);
        }
        if mysql.user.is_empty() {
            push(format!("{at}.mysql.user"), "must not be empty".into(), None);
        }
        let domain_at = format!("{at}.mysql.gtid_domain_id");
        match (mysql.flavor, mysql.gtid_domain_id) {
            (Flavor::Mariadb, None) => push(domain_at, "is required for flavor mariadb".into(), None),
            (Flavor::Mariadb, Some(domain)) => {
                if let Some(first) = domains.insert(domain, domain_at.clone()) {
                    push(domain_at, format!("gtid_domain_id {domain} is also used by {first}"), None);
                }
            }
            (Flavor::Mysql, _) => {
                if mysql.server_uuids.is_empty() {
                    push(
                        format!("{at}.mysql.server_uuids"),
                        "is required for flavor mysql: list every server's @@server_uuid".into(),
                        None,
                    );
                }
                for (i, uuid) in mysql.server_uuids.iter().enumerate() {
                    if crate::model::GtidSet::uuid_bytes(uuid).is_none() {
                        push(
                            format!("{at}.mysql.server_uuids[{i}]"),
                            format!("`{uuid}` is not a UUID"),
                            None,
                        );
                    }
                }
            }
        }
        let servers = std::iter::once((format!("{at}.mysql.primary"), &mysql.primary))
            .chain(mysql.replicas.iter().enumerate().map(|(i, s)| (format!("{at}.mysql.replicas[{i}]"), s)));
        for (server_at, server) in servers {
            check_server(&server_at, server, &mut server_ids, &mut push);
        }

        if region.kafka.bootstrap.is_empty() {
            push(format!("{at}.kafka.bootstrap"), "at least one broker address is required".into(), None);
        }
        for (i, addr) in region.kafka.bootstrap.iter().enumerate() {
            if let Err(e) = check_host_port(addr) {
                push(format!("{at}.kafka.bootstrap[{i}]"), e, None);
            }
        }
        let kafka = &region.kafka;
        if kafka.replication_factor < 1 {
            push(format!("{at}.kafka.replication_factor"), "must be at least 1".into(), None);
        }
        if kafka.min_insync_replicas < 1 || kafka.min_insync_replicas > kafka.replication_factor.max(1) {
            push(
                format!("{at}.kafka.min_insync_replicas"),
                format!("must be between 1 and replication_factor ({})", kafka.replication_factor),
                None,
            );
        }
        if let Some(redis) = &region.redis {
            if let Some(problem) = redis.password.as_ref().and_then(|p| p.problem()) {
                push(format!("{at}.redis.password"), problem.to_string(), None);
            }
            if let Err(e) = check_host_port(&redis.primary) {
                push(format!("{at}.redis.primary"), e, None);
            }
            for (i, addr) in redis.replicas.iter().enumerate() {
                if let Err(e) = check_host_port(addr) {
                    push(format!("{at}.redis.replicas[{i}]"), e, None);
                }
            }
        }
    }

    if let Some(apply) = &config.apply {
        if !(1..=64).contains(&apply.workers) {
            push("apply.workers".into(), "must be between 1 and 64".into(), None);
        }
        for (i, schema) in apply.schemas.iter().flatten().enumerate() {
            let lower = schema.to_ascii_lowercase();
            if schema.is_empty() {
                push(format!("apply.schemas[{i}]"), "must not be empty".into(), None);
            } else if crate::apply::admit::SYSTEM_SCHEMAS.contains(&lower.as_str())
                || lower == crate::schema::DATABASE
            {
                push(format!("apply.schemas[{i}]"), format!("`{schema}` is never written by apply"), None);
            }
        }
        if !(1..=10_000).contains(&apply.max_group_transactions) {
            push("apply.max_group_transactions".into(), "must be between 1 and 10000".into(), None);
        }
    }
    let check = &config.check;
    if check.chunk_time < Duration::from_millis(10) {
        push("check.chunk_time".into(), "must be at least 10ms".into(), None);
    }
    if check.max_wait.is_zero() {
        push("check.max_wait".into(), "must be more than 0s".into(), None);
    }
    if check.max_lag.is_zero() {
        push("check.max_lag".into(), "must be more than 0s".into(), None);
    }
    if check.interval.is_some_and(|i| i < Duration::from_secs(1)) {
        push("check.interval".into(), "must be at least 1s".into(), None);
    }
    if check.full_every.is_some_and(|i| i < Duration::from_secs(60)) {
        push("check.full_every".into(), "must be at least 1m".into(), None);
    }
    if let Some(i) = check.interval
        && check.settle < check.window
        && i > check.window - check.settle
    {
        push(
            "check.interval".into(),
            format!(
                "must be at most check.window − check.settle ({:?}): windows would leave gaps",
                check.window - check.settle
            ),
            None,
        );
    }
    if check.settle >= check.window {
        push("check.settle".into(), format!("must be shorter than check.window ({:?})", check.window), None);
    }
    for (i, t) in check.tables.iter().enumerate() {
        if t.split_once('.').is_none_or(|(d, n)| d.is_empty() || n.is_empty()) {
            push(format!("check.tables[{i}]"), format!("{t:?} is not db.table"), None);
        }
    }
    let conflicts = &config.conflicts;
    if conflicts.version_column.trim().is_empty() {
        push("conflicts.version_column".into(), "must name a column".into(), None);
    }
    if conflicts.tombstone_horizon < Duration::from_secs(60) {
        push("conflicts.tombstone_horizon".into(), "must be at least 1m".into(), None);
    }
    for (name, rules) in &conflicts.tables {
        let at = format!("conflicts.tables.{name}");
        match name.split_once('.') {
            Some((db, table)) if !db.is_empty() && !table.is_empty() && !table.contains('.') => {}
            _ => push(at.clone(), "must be `schema.table`".into(), None),
        }
        if let Some(region) = &rules.single_writer {
            if !config.regions.contains_key(region) {
                push(
                    format!("{at}.single_writer"),
                    format!("region `{region}` is not defined under `regions`"),
                    Some(format!("regions.{region}")),
                );
            }
            if !rules.delta_columns.is_empty() {
                push(
                    format!("{at}.delta_columns"),
                    "a single-writer table has no concurrent changes to merge".into(),
                    None,
                );
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, column) in rules.delta_columns.iter().enumerate() {
            if column.trim().is_empty() {
                push(format!("{at}.delta_columns[{i}]"), "must name a column".into(), None);
            } else if !seen.insert(column) {
                push(format!("{at}.delta_columns[{i}]"), format!("`{column}` is listed twice"), None);
            } else if rules.version_column.as_deref().unwrap_or(&conflicts.version_column) == column {
                push(
                    format!("{at}.delta_columns[{i}]"),
                    "the version column cannot be a delta column".into(),
                    None,
                );
            }
        }
    }

    if let Some(watch) = &config.watch {
        let mut names = std::collections::BTreeSet::new();
        if watch.tick_tolerance < Duration::from_millis(100) {
            push("watch.tick_tolerance".into(), "must be at least 100ms".into(), None);
        }
        if let Some(am) = &watch.alertmanager
            && !am.url.starts_with("http://")
        {
            push(
                "watch.alertmanager.url".into(),
                format!("`{}`: only http:// URLs are supported", am.url),
                None,
            );
        }
        if let Some(leader) = &watch.leader {
            if leader.ttl < Duration::from_secs(1) {
                push("watch.leader.ttl".into(), "must be at least 1s".into(), None);
            }
            if leader.redis.is_some() == leader.kubernetes.is_some() {
                push("watch.leader".into(), "set exactly one of `redis` and `kubernetes`".into(), None);
            }
        }
        if watch.flap.transitions == 0 {
            push("watch.flap.transitions".into(), "must be at least 1".into(), None);
        }
        let counts = watch.targets.iter().fold(std::collections::HashMap::new(), |mut m, t| {
            *m.entry(t.name.as_str()).or_insert(0) += 1;
            m
        });
        for (i, target) in watch.targets.iter().enumerate() {
            // Named by its name when that names it alone; by its index otherwise.
            let unique = !target.name.trim().is_empty() && counts.get(target.name.as_str()) == Some(&1);
            let at = if unique {
                format!("watch.targets[{}]", target.name)
            } else {
                format!("watch.targets[{i}]")
            };
            if target.name.trim().is_empty() {
                push(format!("{at}.name"), "must not be empty".into(), None);
            } else if !names.insert(target.name.as_str()) {
                push(format!("{at}.name"), format!("`{}` is used by another target", target.name), None);
            }
            if target.interval < Duration::from_millis(100) {
                push(format!("{at}.interval"), "must be at least 100ms".into(), None);
            }
            if target.timeout.is_zero() || target.timeout > target.interval {
                push(format!("{at}.timeout"), "must be more than 0 and at most the interval".into(), None);
            }
            for (key, n) in [
                ("failure_threshold", target.failure_threshold),
                ("recovery_threshold", target.recovery_threshold),
            ] {
                if n == 0 {
                    push(format!("{at}.{key}"), "must be at least 1".into(), None);
                }
            }
            let address = target.probe.address();
            if address
                .rsplit_once(':')
                .and_then(|(h, p)| (!h.is_empty()).then_some(p))
                .and_then(|p| p.parse::<u16>().ok())
                .is_none()
            {
                push(
                    format!("{at}.probe.{}.address", target.probe.kind()),
                    format!("`{address}` is not `host:port`"),
                    None,
                );
            }
            if let Some(member @ super::LbMember::Kubernetes { namespace, pod, peers, .. }) = &target.lb {
                for (key, value) in [("namespace", namespace), ("pod", pod), ("peers", peers)] {
                    if value.trim().is_empty() {
                        push(format!("{at}.lb.kubernetes.{key}"), "must not be empty".into(), None);
                    }
                }
                if member.kube_switch().is_none() {
                    push(format!("{at}.lb.kubernetes"), "set exactly one of `gate` and `label`".into(), None);
                }
            }
            if let Some(f) = &target.failover {
                match (f.primary, &f.region) {
                    (Some(primary), None) => {
                        let (kind, configured) = match primary {
                            super::PrimaryKind::Mysql => ("mysql", config.local().is_some()),
                            super::PrimaryKind::Redis => {
                                ("redis", config.local().is_some_and(|r| r.redis.is_some()))
                            }
                        };
                        if target.probe.kind() != kind {
                            push(
                                format!("{at}.probe"),
                                format!(
                                    "a {kind} primary is probed with a `{kind}` probe, not `{}`",
                                    target.probe.kind()
                                ),
                                None,
                            );
                        }
                        if !configured {
                            push(
                                format!("{at}.failover.primary"),
                                format!("regions.{}.{kind} is not configured", config.region),
                                None,
                            );
                        }
                    }
                    (None, Some(region)) => {
                        if !config.regions.contains_key(region) || *region == config.region {
                            push(
                                format!("{at}.failover.region"),
                                format!("`{region}` is not another configured region"),
                                None,
                            );
                        }
                        if f.ferry.is_none() {
                            push(
                                format!("{at}.failover.ferry"),
                                "needs that region's ferry (`host:port`): a region whose ferry still answers is \
                                 partitioned, not down"
                                    .into(),
                                None,
                            );
                        }
                        if config.failover.as_ref().and_then(|f| f.dns.as_ref()).is_none() {
                            push(format!("{at}.failover.region"), "needs failover.dns".into(), None);
                        }
                        if config.regions.get(region).is_some_and(|r| r.standby.is_none()) {
                            push(
                                format!("{at}.failover.region"),
                                format!(
                                    "regions.{region}.standby is not set: automatic region failover sends {region}'s \
                                     traffic to its standby, and only the standby's ferry switches it"
                                ),
                                Some(format!("regions.{region}")),
                            );
                        }
                    }
                    _ => push(
                        format!("{at}.failover"),
                        "set exactly one of `primary` and `region`".into(),
                        None,
                    ),
                }
                if f.record.is_some() && config.failover.as_ref().and_then(|f| f.dns.as_ref()).is_none() {
                    push(format!("{at}.failover.record"), "needs failover.dns".into(), None);
                }
            }
            if let Some(super::LbMember::Haproxy { api, backend, server, .. }) = &target.lb {
                for (key, value) in [("api", api), ("backend", backend), ("server", server)] {
                    if value.trim().is_empty() {
                        push(format!("{at}.lb.haproxy.{key}"), "must not be empty".into(), None);
                    }
                }
            }
        }
    }

    if let Some(failover) = &config.failover {
        if failover.fence_timeout.is_zero() {
            push("failover.fence_timeout".into(), "must be more than 0".into(), None);
        }
        if let Some(problem) = failover.replication.as_ref().and_then(|r| r.password.problem()) {
            push("failover.replication.password".into(), problem.to_string(), None);
        }
        if let Some(dns) = &failover.dns {
            if let Some(problem) = dns.key.problem() {
                push("failover.dns.key".into(), problem.to_string(), None);
            } else if dns.key.expose().is_empty() || crate::model::base64::decode(dns.key.expose()).is_err() {
                push("failover.dns.key".into(), "is not base64".into(), None);
            }
            if dns.zone.trim().is_empty() {
                push("failover.dns.zone".into(), "must not be empty".into(), None);
            }
        }
    }

    if let Some(capture) = &config.capture {
        let at = "capture.server_id".to_string();
        if capture.server_id == 0 {
            push(at, "must not be 0".into(), None);
        } else if let Some(first) = server_ids.get(&capture.server_id) {
            push(
                at,
                format!(
                    "server_id {} is also used by {first}; the binlog reader needs its own",
                    capture.server_id
                ),
                None,
            );
        }
        if capture.heartbeat_period < Duration::from_millis(100)
            || capture.heartbeat_period > Duration::from_secs(60)
        {
            push("capture.heartbeat_period".into(), "must be between 100ms and 60s".into(), None);
        }
        if !(16 * 1024..=16 * 1024 * 1024).contains(&capture.max_record_bytes) {
            push("capture.max_record_bytes".into(), "must be between 16384 and 16777216".into(), None);
        }
        if capture.max_inflight_bytes < 2 * capture.max_record_bytes {
            push(
                "capture.max_inflight_bytes".into(),
                "must be at least twice capture.max_record_bytes".into(),
                None,
            );
        }
        if capture.checkpoint_interval.is_zero() {
            push("capture.checkpoint_interval".into(), "must be longer than 0s".into(), None);
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        push("log.level".into(), format!("not a valid log filter: {e}"), None);
    }
    if config.shutdown.grace.is_zero() {
        push("shutdown.grace".into(), "must be longer than 0s".into(), None);
    }
    out
}

fn check_server(
    at: &str,
    server: &DbServer,
    seen: &mut BTreeMap<u32, String>,
    push: &mut impl FnMut(String, String, Option<String>),
) {
    if server.host.is_empty() {
        push(format!("{at}.host"), "must not be empty".into(), None);
    }
    if server.port == 0 {
        push(format!("{at}.port"), "must not be 0".into(), None);
    }
    let id_at = format!("{at}.server_id");
    if server.server_id == 0 {
        push(id_at, "must not be 0 (MariaDB/MySQL refuse to replicate with server_id 0)".into(), None);
    } else if let Some(first) = seen.insert(server.server_id, at.to_string()) {
        push(
            id_at,
            format!("server_id {} is also used by {first}; every server needs its own", server.server_id),
            None,
        );
    }
}

fn is_region_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `host:port` with a non-empty host and a port in 1..=65535 (`[v6]:port` accepted).
fn check_host_port(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("`{addr}` is not host:port"));
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("`{addr}` has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{addr}` has no valid port (1-65535)")),
    }
}
