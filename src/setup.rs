//! What `ferry run` needs from the servers it is configured with, checked online by
//! `ferry validate`: every account logs in, ferry's account holds the privileges its roles
//! need (the missing ones printed as a `GRANT`), the primary's binlog settings and identity
//! suit capture, the brokers answer and existing topics keep the configured copies, the HAProxy
//! runtime APIs answer and know the configured backends, Redis accepts the password, the DNS
//! server accepts the TSIG key (a signed update that changes nothing). Each
//! problem names the YAML path to fix and the server it came from.

use std::collections::BTreeSet;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::config::{Config, ConfigProblem, Flavor, LbMember, RegionConfig};

/// How long one server may take to answer.
const WITHIN: Duration = Duration::from_secs(5);

fn problem(path: impl Into<String>, message: impl Into<String>) -> ConfigProblem {
    ConfigProblem { path: path.into(), message: message.into() }
}

/// Every problem `ferry run` would meet with `config`'s servers.
pub async fn problems(config: &Config) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
    let Some(local) = config.local() else { return out };
    let at = format!("regions.{}", config.region);
    out.extend(mysql_problems(config, local, &at).await);
    out.extend(kafka_problems(config).await);
    out.extend(haproxy_problems(config).await);
    if let Some(redis) = &local.redis {
        out.extend(redis_problems(redis, &format!("{at}.redis")).await);
    }
    if let Some(dns) = config.failover.as_ref().and_then(|f| f.dns.as_ref()) {
        let checked = match crate::failover::run::authority(dns) {
            Ok(authority) => crate::failover::dns::key_accepted(&authority).await,
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            out.push(problem("failover.dns.key", format!("the DNS server at {}: {e}", dns.server)));
        }
    }
    out
}

async fn mysql_problems(config: &Config, local: &RegionConfig, at: &str) -> Vec<ConfigProblem> {
    use crate::failover::mysql::{Accounts, connect, describe, servers};
    let mut out = Vec::new();
    let accounts = Accounts::from_config(&local.mysql, config.failover.as_ref());
    let mut primary = None;
    for (i, server) in servers(&local.mysql).iter().enumerate() {
        let path =
            if i == 0 { format!("{at}.mysql.primary") } else { format!("{at}.mysql.replicas[{}]", i - 1) };
        match connect(server, &accounts, WITHIN).await {
            Ok(mut conn) => {
                match settings_problems(&mut conn, local.mysql.flavor).await {
                    Ok(found) => out.extend(found.into_iter().map(|m| problem(path.clone(), m))),
                    Err(e) => out.push(problem(path.clone(), format!("reading the server's settings: {e}"))),
                }
                if i == 0 {
                    primary = Some(conn);
                } else {
                    let _ = conn.disconnect().await;
                }
            }
            Err(e) if e.refused => out.push(problem(
                format!("{at}.mysql.password"),
                format!("{} refuses ferry's account `{}`: {e}", describe(server), local.mysql.user),
            )),
            Err(e) => out.push(problem(path, format!("does not answer: {e}"))),
        }
    }
    let Some(mut conn) = primary else { return out };
    let found = async {
        let mut found = Vec::new();
        if local.mysql.flavor == Flavor::Mariadb {
            let grants: Vec<String> = conn.query("SHOW GRANTS").await?;
            let needs = needed(config);
            let missing = Grants::parse(&grants).missing(&needs);
            if !missing.is_empty() {
                found.push(problem(
                    format!("{at}.mysql.user"),
                    format!(
                        "ferry's account lacks what its roles need; as an administrator run:\n{}",
                        missing
                            .iter()
                            .map(|m| format!("      {}", m.statement(&local.mysql.user)))
                            .collect::<Vec<_>>()
                            .join("\n")
                    ),
                ));
            }
        }
        if let Some(capture) = &config.capture {
            let host = crate::capture::pipeline::report_host(&config.region);
            if let Err(e) = crate::capture::preflight::check_server(
                &mut conn,
                local.mysql.flavor,
                capture.server_id,
                &host,
            )
            .await
            {
                found.push(problem(format!("{at}.mysql.primary"), e.to_string()));
            }
        }
        found.extend(
            crate::capture::preflight::identity_problems(&mut conn, &config.region, &local.mysql).await?,
        );
        found.extend(crate::conflict::check::check(&mut conn, config).await?);
        Ok::<_, mysql_async::Error>(found)
    }
    .await;
    match found {
        Ok(found) => out.extend(found),
        Err(e) => {
            out.push(problem(format!("{at}.mysql.primary"), format!("reading the server's settings: {e}")))
        }
    }
    let _ = conn.disconnect().await;
    out
}

/// The guide's settings (docs/install.md) on one server, primary or replica (a replica is a
/// primary after a failover): the binlog as capture reads it, `log_slave_updates` (a promoted
/// replica holds every transaction in its own binlog, so capture resumes there), strict GTIDs
/// (failover compares positions per domain) and UTC (versions in DATETIME columns are compared
/// as UTC). Each problem says what to set and why.
async fn settings_problems(
    conn: &mut mysql_async::Conn,
    flavor: Flavor,
) -> Result<Vec<String>, mysql_async::Error> {
    let mut wanted: Vec<(&str, &str, &str)> = vec![
        ("log_bin", "1", "capture reads the binlog, and a promoted replica must write one"),
        ("binlog_format", "ROW", "capture needs row images"),
        ("binlog_row_image", "FULL", "the conflict rules compare whole rows"),
        ("binlog_row_metadata", "FULL", "capture maps values to columns by name"),
        (
            "log_slave_updates",
            "1",
            "a promoted replica must hold every transaction in its binlog for capture to resume there",
        ),
    ];
    match flavor {
        Flavor::Mariadb => {
            wanted.push(("gtid_strict_mode", "1", "failover compares GTID positions per domain"));
        }
        Flavor::Mysql => {
            wanted.push(("gtid_mode", "ON", "capture and failover work by GTID"));
            wanted.push(("enforce_gtid_consistency", "ON", "GTID mode requires it"));
        }
    }
    let mut out = Vec::new();
    for (name, want, why) in wanted {
        let got: Option<String> = conn.query_first(format!("SELECT @@global.{name}")).await?;
        let got = got.unwrap_or_default();
        if !got.eq_ignore_ascii_case(want) {
            out.push(format!("{name} is {got}; set {name} = {want} ({why}; docs/install.md)"));
        }
    }
    let (zone, system): (Option<String>, Option<String>) =
        conn.query_first("SELECT @@global.time_zone, @@system_time_zone").await?.unwrap_or_default();
    let utc = |z: &str| matches!(z.to_ascii_uppercase().as_str(), "+00:00" | "UTC" | "GMT" | "ETC/UTC");
    let zone = zone.unwrap_or_default();
    let effective = if zone.eq_ignore_ascii_case("SYSTEM") { system.unwrap_or_default() } else { zone };
    if !utc(&effective) {
        out.push(format!(
            "the time zone is {effective}; set default_time_zone = '+00:00' (versions in DATETIME columns are \
             compared as UTC; docs/install.md)"
        ));
    }
    Ok(out)
}

/// A privilege on a scope (`*.*` or `` `db`.* ``) that a role needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Need {
    pub privilege: &'static str,
    /// None: global (`*.*`); Some(db): that schema.
    pub schema: Option<String>,
    /// Which role needs it.
    pub why: &'static str,
}

impl Need {
    fn global(privilege: &'static str, why: &'static str) -> Self {
        Self { privilege, schema: None, why }
    }

    fn on(privilege: &'static str, schema: &str, why: &'static str) -> Self {
        Self { privilege, schema: Some(schema.to_string()), why }
    }

    fn statement(&self, user: &str) -> String {
        let scope =
            self.schema.as_ref().map_or("*.*".to_string(), |s| format!("`{}`.*", s.replace('`', "``")));
        format!("GRANT {} ON {scope} TO '{}'@'%'; -- {}", self.privilege, user.replace('\'', "''"), self.why)
    }
}

/// What ferry's account needs on a MariaDB server for the roles `config` runs (see
/// docs/install.md, which lists the same).
pub fn needed(config: &Config) -> Vec<Need> {
    let mut out = vec![
        Need::on("ALL PRIVILEGES", "ferry", "ferry's own tables (schema set-up, checkpoints, progress)"),
        Need::global("SLAVE MONITOR", "finding the primary (SHOW SLAVE STATUS)"),
    ];
    if config.capture.is_some() {
        out.push(Need::global("REPLICATION SLAVE", "capture: reading the binlog"));
        out.push(Need::global("BINLOG MONITOR", "capture: binlog positions and settings"));
        out.push(Need::global("REPLICATION MASTER ADMIN", "capture: SHOW SLAVE HOSTS (server id check)"));
    }
    if let Some(apply) = &config.apply {
        out.push(Need::global("BINLOG REPLAY", "apply: writing under the origin's GTID"));
        for schema in apply.schemas.iter().flatten() {
            for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
                out.push(Need::on(privilege, schema, "apply: writing the replicated tables"));
            }
        }
    }
    let fails_over =
        config.watch.iter().flat_map(|w| &w.targets).any(|t| {
            t.failover.as_ref().is_some_and(|f| f.primary == Some(crate::config::PrimaryKind::Mysql))
        });
    if fails_over {
        for (privilege, why) in [
            ("READ_ONLY ADMIN", "failover: fencing (read_only)"),
            ("PROCESS", "failover: seeing every client session when fencing"),
            ("CONNECTION ADMIN", "failover: killing client sessions when fencing"),
            ("REPLICATION SLAVE ADMIN", "failover: promoting and re-pointing replicas"),
            ("RELOAD", "failover: RESET SLAVE ALL when promoting"),
            ("BINLOG MONITOR", "failover: GTID positions"),
        ] {
            out.push(Need::global(privilege, why));
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.privilege == b.privilege && a.schema == b.schema);
    out
}

/// What `SHOW GRANTS` says the account holds: global privileges and per-schema ones.
#[derive(Debug, Default)]
pub struct Grants {
    global: BTreeSet<String>,
    schemas: Vec<(String, BTreeSet<String>)>,
}

impl Grants {
    /// Read `GRANT <privileges> ON <scope> TO …` lines (table and column grants are ignored:
    /// ferry needs none narrower than a schema).
    pub fn parse(lines: &[String]) -> Self {
        let mut grants = Grants::default();
        for line in lines {
            let Some(rest) = line.strip_prefix("GRANT ") else { continue };
            let Some((privileges, rest)) = rest.split_once(" ON ") else { continue };
            let Some((scope, _)) = rest.split_once(" TO ") else { continue };
            let set: BTreeSet<String> =
                privileges.split(',').map(|p| p.trim().to_ascii_uppercase()).collect();
            let scope = scope.trim();
            if scope == "*.*" {
                grants.global.extend(set);
            } else if let Some(schema) = scope.strip_suffix(".*") {
                let schema = schema.trim_matches('`').replace("``", "`");
                grants.schemas.push((schema, set));
            }
        }
        grants
    }

    fn holds(&self, need: &Need) -> bool {
        let has = |set: &BTreeSet<String>| set.contains("ALL PRIVILEGES") || set.contains(need.privilege);
        has(&self.global)
            || need
                .schema
                .as_ref()
                .is_some_and(|s| self.schemas.iter().any(|(name, set)| name == s && has(set)))
    }

    pub fn missing<'a>(&self, needs: &'a [Need]) -> Vec<&'a Need> {
        needs.iter().filter(|n| !self.holds(n)).collect()
    }
}

async fn kafka_problems(config: &Config) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
    let uses = |name: &str| {
        if name == config.region {
            config.capture.is_some() || config.apply.is_some()
        } else {
            config.apply.is_some()
        }
    };
    for (name, region) in config.regions.iter().filter(|(n, _)| uses(n)) {
        let path = format!("regions.{name}.kafka.bootstrap");
        match crate::transport::kafka::topic_problem(&region.kafka, &crate::transport::changes_topic(name))
            .await
        {
            Ok(None) => {}
            Ok(Some(problem_text)) => out.push(problem(format!("regions.{name}.kafka"), problem_text)),
            Err(e) => out.push(problem(path, format!("the brokers do not answer: {e}"))),
        }
    }
    out
}

async fn haproxy_problems(config: &Config) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
    for target in config.watch.iter().flat_map(|w| &w.targets) {
        let at = format!("watch.targets[{}]", target.name);
        let mut apis: Vec<(String, &str, &str, Option<&str>)> = Vec::new();
        if let Some(LbMember::Haproxy { api, backend, server, .. }) = &target.lb {
            apis.push((format!("{at}.lb.api"), api, backend, Some(server)));
        }
        if let Some(h) = target.failover.as_ref().and_then(|f| f.haproxy.as_ref()) {
            apis.push((format!("{at}.failover.haproxy.api"), &h.api, &h.backend, None));
        }
        for (path, api, backend, server) in apis {
            match crate::watch::lb::servers(api, backend).await {
                Err(e) => out.push(problem(path, format!("does not answer: {e}"))),
                Ok(servers) if servers.is_empty() => out.push(problem(
                    path,
                    format!("HAProxy at {api} has no backend `{backend}` (or it has no servers)"),
                )),
                Ok(servers) => {
                    if let Some(server) = server.filter(|s| !servers.iter().any(|x| x.name == *s)) {
                        out.push(problem(
                            path,
                            format!("backend `{backend}` at {api} has no server `{server}`"),
                        ));
                    }
                }
            }
        }
    }
    out
}

async fn redis_problems(redis: &crate::config::RedisConfig, at: &str) -> Vec<ConfigProblem> {
    let password = redis.password.as_ref().map(crate::config::Secret::expose);
    let mut out = Vec::new();
    for address in std::iter::once(&redis.primary).chain(&redis.replicas) {
        let answer = async {
            let client = redis::Client::open(crate::watch::net::redis_url(address, password))?;
            let mut conn = crate::watch::net::redis_connection(&client, WITHIN).await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(WITHIN, answer).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if crate::watch::probe::redis_access_error(&e) => out.push(problem(
                format!("{at}.password"),
                format!("Redis at {address} refuses ferry's password: {e}"),
            )),
            Ok(Err(e)) => {
                out.push(problem(at.to_string(), format!("Redis at {address} does not answer: {e}")))
            }
            Err(_) => {
                out.push(problem(at.to_string(), format!("Redis at {address}: no answer within {WITHIN:?}")))
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_read_from_show_grants_and_the_missing_ones_printed() {
        let lines: Vec<String> = [
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `ferry`@`%` IDENTIFIED BY PASSWORD '*AB'",
            "GRANT ALL PRIVILEGES ON `ferry`.* TO `ferry`@`%`",
            "GRANT SELECT, INSERT ON `psi`.* TO `ferry`@`%`",
            "GRANT SELECT (`id`) ON `psi`.`t` TO `ferry`@`%`",
        ]
        .map(String::from)
        .to_vec();
        let grants = Grants::parse(&lines);
        let needs = vec![
            Need::global("REPLICATION SLAVE", "capture"),
            Need::global("SLAVE MONITOR", "locate"),
            Need::on("ALL PRIVILEGES", "ferry", "ferry"),
            Need::on("INSERT", "psi", "apply"),
            Need::on("DELETE", "psi", "apply"),
        ];
        let missing: Vec<String> = grants.missing(&needs).iter().map(|n| n.statement("ferry")).collect();
        assert_eq!(
            missing,
            [
                "GRANT SLAVE MONITOR ON *.* TO 'ferry'@'%'; -- locate",
                "GRANT DELETE ON `psi`.* TO 'ferry'@'%'; -- apply"
            ]
        );
        let all =
            Grants::parse(&["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION".into()]);
        assert!(all.missing(&needs).is_empty());
    }
}

/// One step `ferry init` takes (or would): what, and whether it was already done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    pub done: bool,
}

/// The administrator `ferry init --apply` connects as.
pub struct Admin {
    pub user: String,
    pub password: String,
}

/// `ferry init`: what the local region needs before `ferry run`: ferry's account and the grants
/// its roles need (docs/install.md), the `ferry` schema, the topics. Without `admin`, every
/// step is listed as SQL to run (nothing is changed); with it, each missing step is carried
/// out on the local primary (and the brokers), and the ones already done are reported as such.
pub async fn init(config: &Config, admin: Option<&Admin>) -> Result<Vec<Step>, String> {
    let local = config.local().ok_or("the local region is not configured")?;
    let user = &local.mysql.user;
    let account = format!("'{}'@'%'", user.replace('\'', "''"));
    let needs = needed(config);
    let Some(admin) = admin else {
        let mut steps = vec![Step {
            what: format!(
                "CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '<regions.{}.mysql.password>';",
                config.region
            ),
            done: false,
        }];
        steps.extend(needs.iter().map(|n| Step { what: n.statement(user), done: false }));
        steps.extend(crate::schema::STATEMENTS.iter().map(|s| Step { what: format!("{s};"), done: false }));
        for topic in topics(config) {
            steps.push(Step {
                what: format!("kafka topic {topic} (created by capture and apply on start)"),
                done: false,
            });
        }
        return Ok(steps);
    };
    let server = &local.mysql.primary;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(server.host.clone())
        .tcp_port(server.port)
        .user(Some(admin.user.clone()))
        .pass(Some(admin.password.clone()))
        .prefer_socket(false)
        .setup(vec![crate::failover::mysql::SESSION_SQL_MODE]);
    let sql = |e: mysql_async::Error| format!("{}:{}: {e}", server.host, server.port);
    let mut conn = mysql_async::Conn::new(opts).await.map_err(sql)?;
    let mut steps = Vec::new();
    let exists: Option<u64> = conn
        .exec_first("SELECT COUNT(*) FROM mysql.user WHERE User = ? AND Host = '%'", (user.as_str(),))
        .await
        .map_err(sql)?;
    let create = format!("CREATE USER {account} IDENTIFIED BY <the configured password>");
    if exists.unwrap_or(0) > 0 {
        steps.push(Step { what: create, done: true });
    } else {
        // CREATE USER takes no placeholders: the password is quoted by doubling, under the
        // session's NO_BACKSLASH_ESCAPES; an error would quote the statement: withheld.
        let password = crate::failover::mysql::quote(local.mysql.password.expose());
        conn.query_drop(format!("CREATE USER {account} IDENTIFIED BY {password}")).await.map_err(
            |e| match e {
                mysql_async::Error::Server(s) => {
                    format!("CREATE USER {account}: server error {} (message withheld)", s.code)
                }
                other => other.to_string(),
            },
        )?;
        steps.push(Step { what: create, done: false });
    }
    let grants: Vec<String> = conn.query(format!("SHOW GRANTS FOR {account}")).await.map_err(sql)?;
    let held = Grants::parse(&grants);
    for need in &needs {
        let statement = need.statement(user);
        let done = held.holds(need);
        if !done {
            conn.query_drop(statement.split(';').next().unwrap_or_default()).await.map_err(sql)?;
        }
        steps.push(Step { what: statement, done });
    }
    let tables: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'ferry'")
        .await
        .map_err(sql)?;
    let expected = crate::schema::STATEMENTS.iter().filter(|s| s.contains("CREATE TABLE")).count() as u64;
    let done = tables.unwrap_or(0) >= expected;
    if !done {
        crate::schema::install(&mut conn).await.map_err(sql)?;
    }
    steps.push(Step { what: "the ferry schema and its tables".into(), done });
    let _ = conn.disconnect().await;
    for (kafka, topic) in topic_homes(config) {
        let before = crate::transport::kafka::topic_exists(kafka, &topic).await?;
        if !before {
            crate::transport::kafka::ensure_topic(kafka, &topic, 1).await.map_err(|e| e.to_string())?;
        }
        steps.push(Step { what: format!("kafka topic {topic}"), done: before });
    }
    Ok(steps)
}

/// The topics this region's ferry writes: its changes (when capturing) and its dead letters
/// (when applying), with the brokers they live on.
fn topic_homes(config: &Config) -> Vec<(&crate::config::KafkaConfig, String)> {
    let Some(local) = config.local() else { return Vec::new() };
    let mut out = Vec::new();
    if config.capture.is_some() {
        out.push((&local.kafka, crate::transport::changes_topic(&config.region)));
    }
    if config.apply.is_some() {
        out.push((&local.kafka, crate::transport::dlq_topic(&config.region)));
    }
    out
}

fn topics(config: &Config) -> Vec<String> {
    topic_homes(config).into_iter().map(|(_, t)| t).collect()
}
