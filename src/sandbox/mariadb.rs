//! A MariaDB server (primary or GTID replica) started with the settings of the install guide
//! (`docs/install.md`, read by [`super::guide`]): ROW format, FULL row image and row metadata,
//! strict GTIDs with a per-region domain, `log_slave_updates` so a promoted replica has every
//! transaction in its binlog, read-only until made a primary.
//!
//! Users: the primary creates the application user (all privileges) and the replication user;
//! replicas receive both through replication (creating them locally would break it).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row};

use super::process::{ServerDir, ServerProcess, start_server};
use super::{READY_TIMEOUT, SandboxError, run_command};

/// Options of every instance besides the install guide's settings (`guide::server_settings`,
/// which every server starts with): a small footprint and a loopback-only server.
const SERVER_ARGS: &[&str] = &[
    "--relay-log=relay",
    "--skip-name-resolve",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_unicode_ci",
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=16M",
    "--rpl-semi-sync-master-timeout=2000",
    "--skip-slave-start",
    "--max-connections=300",
];

/// User that in-region replicas connect as.
pub const REPL_USER: &str = "repl";

#[derive(Debug, Clone)]
pub struct MariaDbOptions {
    pub name: String,
    pub ip: IpAddr,
    /// Tried first; otherwise a free port.
    pub preferred_port: Option<u16>,
    pub server_id: u32,
    pub gtid_domain_id: u32,
    pub user: String,
    pub password: String,
    /// More `mariadbd` options (e.g. `--auto-increment-offset=2`).
    pub extra_args: Vec<String>,
}

impl MariaDbOptions {
    /// Options for a throw-away test server on 127.0.0.1 and a free port.
    pub fn test(name: &str, server_id: u32, gtid_domain_id: u32) -> Self {
        Self {
            name: name.to_string(),
            ip: IpAddr::from([127, 0, 0, 1]),
            preferred_port: None,
            server_id,
            gtid_domain_id,
            user: "ferry".into(),
            password: "ferry-test-pw".into(),
            extra_args: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct MariaDb {
    // Field order matters: the process must be killed before its folder is removed.
    process: ServerProcess,
    dir: ServerDir,
    opts: MariaDbOptions,
    port: u16,
}

impl MariaDb {
    /// Start a primary in a fresh temp dir (tests).
    pub async fn start_temp(opts: MariaDbOptions) -> Result<Self, SandboxError> {
        let dir = ServerDir::temp(&opts.name)?;
        Self::start_primary(opts, dir).await
    }

    /// Start a primary in `dir` and create its users.
    pub async fn start_primary(opts: MariaDbOptions, dir: ServerDir) -> Result<Self, SandboxError> {
        let db = Self::start(opts, dir).await?;
        let o = &db.opts;
        let statements = [
            format!("CREATE USER '{}'@'%' IDENTIFIED BY '{}'", o.user, o.password),
            format!("GRANT ALL PRIVILEGES ON *.* TO '{}'@'%' WITH GRANT OPTION", o.user),
            format!("CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{}'", o.password),
            format!("GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{REPL_USER}'@'%'"),
            // Every server starts read-only (the guide); the first primary is made writable by
            // hand, once, as the guide says.
            "SET GLOBAL read_only = OFF".to_string(),
        ];
        let mut conn = db.root_conn().await?;
        for sql in statements {
            conn.query_drop(&sql).await.map_err(|e| SandboxError::sql("creating users", e))?;
        }
        conn.disconnect().await.ok();
        Ok(db)
    }

    /// Start a replica in `dir` replicating from `primary` by GTID, and wait until it has
    /// caught up (so the users exist on it too). `semi_sync` turns on semi-synchronous
    /// acknowledgement on both sides.
    pub async fn start_replica(
        opts: MariaDbOptions,
        dir: ServerDir,
        primary: &MariaDb,
        semi_sync: bool,
    ) -> Result<Self, SandboxError> {
        let db = Self::start_idle_replica(opts, dir).await?;
        db.replicate_from(primary, semi_sync).await?;
        db.wait_caught_up(primary).await?;
        Ok(db)
    }

    /// Start a read-only server that will be a replica, without replicating yet.
    pub async fn start_idle_replica(opts: MariaDbOptions, dir: ServerDir) -> Result<Self, SandboxError> {
        Self::start(opts, dir).await
    }

    /// Point this server at `primary` by GTID and start replicating.
    pub async fn replicate_from(&self, primary: &MariaDb, semi_sync: bool) -> Result<(), SandboxError> {
        let mut conn = self.root_conn().await?;
        let change = format!(
            "CHANGE MASTER TO MASTER_HOST='{}', MASTER_PORT={}, MASTER_USER='{REPL_USER}', \
             MASTER_PASSWORD='{}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            primary.opts.ip, primary.port, primary.opts.password
        );
        if semi_sync {
            conn.query_drop("SET GLOBAL rpl_semi_sync_slave_enabled=ON")
                .await
                .map_err(|e| SandboxError::sql("enabling semi-sync on the replica", e))?;
        }
        for sql in [change.as_str(), "START SLAVE"] {
            conn.query_drop(sql).await.map_err(|e| SandboxError::sql("starting replication", e))?;
        }
        conn.disconnect().await.ok();
        if semi_sync {
            let mut p = primary.root_conn().await?;
            p.query_drop("SET GLOBAL rpl_semi_sync_master_enabled=ON")
                .await
                .map_err(|e| SandboxError::sql("enabling semi-sync on the primary", e))?;
            p.disconnect().await.ok();
        }
        Ok(())
    }

    async fn start(opts: MariaDbOptions, dir: ServerDir) -> Result<Self, SandboxError> {
        let data = dir.path().join("data");
        // A private tmpdir: concurrent bootstraps sharing /tmp collide on temp-table files.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| SandboxError::io("creating the MariaDB tmpdir", e))?;
        let mut install = tokio::process::Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg("--innodb-log-file-size=16M");
        if is_root() {
            install.arg("--user=root");
        }
        run_command(&format!("mariadb-install-db for {}", opts.name), &mut install).await?;

        let dir_path = dir.path().to_path_buf();
        let socket = dir_path.join("mysqld.sock");
        let command = |port: u16| {
            let mut cmd = Command::new("mariadbd");
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", dir_path.join("mysqld.pid").display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .arg(format!("--port={port}"))
                .arg(format!("--bind-address={}", opts.ip))
                .arg(format!("--server-id={}", opts.server_id))
                .arg(format!("--gtid-domain-id={}", opts.gtid_domain_id))
                .args(super::guide::server_settings())
                .args(SERVER_ARGS)
                .args(&opts.extra_args);
            if is_root() {
                cmd.arg("--user=root");
            }
            Ok(cmd)
        };
        // Ready when root can log in over the socket (TCP has no user yet on a new primary).
        let probe = |_| async {
            match Conn::new(root_opts(&socket)).await {
                Ok(c) => {
                    c.disconnect().await.ok();
                    true
                }
                Err(_) => false,
            }
        };
        let log = dir_path.join("mariadbd.log");
        let (process, addr) =
            start_server(&opts.name, opts.ip, opts.preferred_port, &log, command, probe).await?;
        Ok(MariaDb { process, dir, port: addr.port(), opts })
    }

    /// Wait until this replica has applied everything `primary` has binlogged.
    pub async fn wait_caught_up(&self, primary: &MariaDb) -> Result<(), SandboxError> {
        let mut p = primary.root_conn().await?;
        let pos: Option<String> = p
            .query_first("SELECT @@gtid_binlog_pos")
            .await
            .map_err(|e| SandboxError::sql("reading the primary's GTID position", e))?;
        p.disconnect().await.ok();
        let mut r = self.root_conn().await?;
        let waited: Option<i64> = r
            .exec_first(
                "SELECT MASTER_GTID_WAIT(?, ?)",
                (pos.clone().unwrap_or_default(), READY_TIMEOUT.as_secs()),
            )
            .await
            .map_err(|e| SandboxError::sql("waiting for the replica to catch up", e))?;
        if waited != Some(0) {
            let status: Option<Row> = r.query_first("SHOW SLAVE STATUS").await.ok().flatten();
            let err = status
                .and_then(|row| row.get_opt::<String, _>("Last_IO_Error").and_then(Result::ok))
                .unwrap_or_default();
            return Err(SandboxError::Setup(format!(
                "{} did not catch up with {} (GTID {}): {err}",
                self.opts.name,
                primary.opts.name,
                pos.unwrap_or_default()
            )));
        }
        r.disconnect().await.ok();
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.opts.ip, self.port)
    }

    pub fn options(&self) -> &MariaDbOptions {
        &self.opts
    }

    /// This server as a ferry configuration names it.
    pub fn db_server(&self) -> crate::config::DbServer {
        crate::config::DbServer {
            host: self.addr().ip().to_string(),
            port: self.addr().port(),
            server_id: self.opts.server_id,
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    /// `mysql://user:pass@host:port/`
    pub fn dsn(&self) -> String {
        format!("mysql://{}:{}@{}:{}/", self.opts.user, self.opts.password, self.opts.ip, self.port)
    }

    /// Connection options for the application user over TCP.
    pub fn opts(&self) -> Opts {
        self.opts_as(&self.opts.user, &self.opts.password)
    }

    /// Connection options for `user` over TCP.
    pub fn opts_as(&self, user: &str, password: &str) -> Opts {
        OptsBuilder::default()
            .ip_or_hostname(self.opts.ip.to_string())
            .tcp_port(self.port)
            .user(Some(user))
            .pass(Some(password))
            .prefer_socket(false)
            .into()
    }

    /// A connection as the application user over TCP.
    pub async fn conn(&self) -> Result<Conn, SandboxError> {
        Conn::new(self.opts())
            .await
            .map_err(|e| SandboxError::sql(format!("connecting to {}", self.opts.name), e))
    }

    /// A root connection over the unix socket (administration).
    pub async fn root_conn(&self) -> Result<Conn, SandboxError> {
        Conn::new(root_opts(&self.socket()))
            .await
            .map_err(|e| SandboxError::sql(format!("connecting to {} as root", self.opts.name), e))
    }

    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    /// Detach (keep running after this program exits).
    pub fn detach(self) -> (super::ProcessRecord, ServerDir) {
        (self.process.detach(), self.dir)
    }
}

fn root_opts(socket: &std::path::Path) -> Opts {
    OptsBuilder::default().socket(Some(socket.to_string_lossy().into_owned())).user(Some("root")).into()
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The `regions.<name>` section of a ferry config for a region whose primary is `db` (its user
/// and password inline), with brokers at `bootstrap`: what tests and benchmarks run ferry with.
pub fn region_yaml(name: &str, db: &MariaDb, domain: u32, priority: u32, bootstrap: &str) -> String {
    let o = db.options();
    format!(
        "  {name}:\n    priority: {priority}\n    mysql:\n      user: {}\n      password: {}\n      \
         gtid_domain_id: {domain}\n      primary: {{ host: \"{}\", port: {}, server_id: {} }}\n    \
         kafka: {{ bootstrap: [\"{bootstrap}\"], replication_factor: 1, min_insync_replicas: 1 }}\n",
        o.user,
        o.password,
        db.addr().ip(),
        db.addr().port(),
        o.server_id,
    )
}
