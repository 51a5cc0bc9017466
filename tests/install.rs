//! docs/install.md stays true: two MariaDB servers started with the guide's settings (its `ini`
//! block, as every sandbox and test server is) whose only account is an administrator get
//! ferry's account from the guide's own SQL blocks (read out of the page), `ferry validate`
//! accepts the configs, and `ferry run` with capture in east and apply in west carries a row
//! across (issue 14). A grant missing from the guide fails this test.

use std::time::{Duration, Instant};

use ferry::sandbox::{Broker, MariaDb, MariaDbOptions, pick_port, region_yaml};
use mysql_async::prelude::Queryable;

mod common;
use common::{FERRY, Reaped, spawn_ferry, wait_ready};

const PASSWORD: &str = "guide-pw";

async fn server(name: &str, id: u32, domain: u32) -> MariaDb {
    let mut o = MariaDbOptions::test(name, id, domain);
    // The only account the server starts with is the administrator's.
    o.user = "admin".into();
    let db = MariaDb::start_temp(o).await.unwrap();
    let mut root = db.root_conn().await.unwrap();
    root.query_drop("CREATE DATABASE shop").await.unwrap();
    root.query_drop(
        "CREATE TABLE shop.t (id INT PRIMARY KEY, note VARCHAR(40), updated_at DATETIME(6) NOT NULL)",
    )
    .await
    .unwrap();
    for statement in ferry::sandbox::guide::account_sql(PASSWORD, &["shop"]) {
        root.query_drop(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    db
}

#[tokio::test]
async fn the_install_guides_sql_is_all_capture_and_apply_need() {
    let east = server("install-east", 101, 1).await;
    let west = server("install-west", 201, 2).await;
    let broker = Broker::start_temp().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let region = |name: &str, db: &MariaDb, n: u32| {
        region_yaml(name, db, n, n, &broker.bootstrap())
            .replace("user: admin", "user: ferry")
            .replace(&format!("password: {}", db.options().password), &format!("password: {PASSWORD}"))
    };
    let mut https = Vec::new();
    let mut configs = Vec::new();
    for (name, role) in [("east", "capture: { server_id: 1001 }"), ("west", "apply: { schemas: [shop] }")] {
        let http =
            std::net::SocketAddr::from(([127, 0, 0, 1], pick_port([127, 0, 0, 1].into(), None).unwrap()));
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "region: {name}\nregions:\n{}{}http: {{ listen: \"{http}\" }}\n{role}\n",
                region("east", &east, 1),
                region("west", &west, 2)
            ),
        )
        .unwrap();
        let out =
            std::process::Command::new(FERRY).args(["validate", "--config"]).arg(&path).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        https.push(http);
        configs.push(path);
    }
    let _ferries: Vec<Reaped> = configs
        .iter()
        .zip(["east", "west"])
        .map(|(c, n)| Reaped(spawn_ferry(c, &dir.path().join(format!("{n}.log")))))
        .collect();
    for http in &https {
        wait_ready(*http).await;
    }
    let mut admin = east.root_conn().await.unwrap();
    admin.query_drop("INSERT INTO shop.t VALUES (1, 'from east', NOW(6))").await.unwrap();
    let mut w = west.root_conn().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let note: Option<String> = w.query_first("SELECT note FROM shop.t WHERE id = 1").await.unwrap();
        if note.as_deref() == Some("from east") {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("west.log")).unwrap_or_default();
            let east_log = std::fs::read_to_string(dir.path().join("east.log")).unwrap_or_default();
            panic!("east's row never reached west\nwest:\n{log}\neast:\n{east_log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The guide's failover grants are enough to fence a primary (read-only, client sessions
/// killed), promote its replica and make the old primary replicate from it, as ferry's
/// failover does, with nothing but the guide's account.
#[tokio::test]
async fn the_install_guides_failover_grants_fence_promote_and_re_point() {
    use ferry::config::Flavor;
    use ferry::failover::mysql::{Accounts, fence, promote, replicate, replicates_from};
    let primary = server("install-primary", 301, 3).await;
    let mut o = MariaDbOptions::test("install-replica", 302, 3);
    o.user = "admin".into();
    let replica = MariaDb::start_replica(
        o,
        ferry::sandbox::ServerDir::temp("install-replica").unwrap(),
        &primary,
        false,
    )
    .await
    .unwrap();
    // An application session on the primary, with data privileges only.
    let mut root = primary.root_conn().await.unwrap();
    root.query_drop("CREATE USER app@'%' IDENTIFIED BY 'app-pw'").await.unwrap();
    root.query_drop("GRANT SELECT, INSERT ON shop.* TO app@'%'").await.unwrap();
    let mut app = mysql_async::Conn::new(primary.opts_as("app", "app-pw")).await.unwrap();
    app.query_drop("INSERT INTO shop.t VALUES (1, 'before', NOW(6))").await.unwrap();

    let accounts = Accounts {
        user: "ferry".into(),
        password: PASSWORD.into(),
        repl_user: "ferry".into(),
        repl_password: PASSWORD.into(),
        flavor: Flavor::Mariadb,
    };
    let (old, new) = (primary.db_server(), replica.db_server());
    let killed = fence(&old, &accounts, Duration::from_secs(5)).await.unwrap();
    assert!(killed >= 1, "the application's session was killed ({killed})");
    assert!(app.query_drop("SELECT 1").await.is_err(), "the application's session is gone");
    let promoted = promote(&new, &accounts).await.unwrap();
    assert!(promoted.writable(), "{promoted:?}");
    replicate(&old, &new, &accounts, true).await.unwrap();
    assert!(replicates_from(&old, &new, &accounts, Duration::from_secs(5)).await.unwrap());
}
