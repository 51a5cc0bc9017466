//! `ferry validate` checks what `ferry run` will need, against real servers (MariaDB, the
//! nisshi broker, Knot DNS): a wrong password, missing grants (and that the GRANTs it prints
//! are enough), brokers that do not answer, a missing HAProxy socket and a wrong DNS key each
//! exit 64 with the YAML path and the fix; a good configuration exits 0; `ferry init` sets a
//! region up (issue 14).

use std::path::{Path, PathBuf};

use ferry::sandbox::{Broker, MariaDb, MariaDbOptions, region_yaml};
use mysql_async::prelude::Queryable;

mod common;
use common::FERRY;

/// East (local: capture and apply) and west, both on `db`'s server and `bootstrap`; `extra`
/// appended.
fn config(dir: &Path, db: &MariaDb, bootstrap: &str, extra: &str) -> PathBuf {
    let path = dir.join("east.yaml");
    let text = format!(
        "region: east\nregions:\n{}{}capture: {{ server_id: 1001 }}\napply: {{ schemas: [shop] }}\n{extra}",
        region_yaml("east", db, 1, 1, bootstrap),
        region_yaml("west", db, 2, 2, bootstrap).replace("server_id: 101", "server_id: 201"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `ferry validate`: (exit code, stdout + stderr).
fn validate(config: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(FERRY).args(["validate", "--config"]).arg(config).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

async fn servers() -> (MariaDb, Broker, tempfile::TempDir) {
    let db = MariaDb::start_temp(MariaDbOptions::test("validate-db", 101, 1)).await.unwrap();
    let mut root = db.root_conn().await.unwrap();
    root.query_drop("CREATE DATABASE shop").await.unwrap();
    (db, Broker::start_temp().await.unwrap(), tempfile::tempdir().unwrap())
}

#[tokio::test]
async fn a_good_configuration_is_valid_and_a_wrong_password_is_not() {
    let (db, broker, dir) = servers().await;
    let good = config(dir.path(), &db, &broker.bootstrap(), "");
    let (code, out) = validate(&good);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("valid (region east"), "{out}");

    let text = std::fs::read_to_string(&good).unwrap();
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(&wrong, text.replacen("password: ferry-test-pw", "password: not-it", 1)).unwrap();
    let json = std::process::Command::new(FERRY)
        .args(["validate", "--json", "--config"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(64));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["valid"], false, "{report}");
    assert_eq!(report["problems"][0]["path"], "regions.east.mysql.password", "{report}");
    let (code, out) = validate(&wrong);
    println!("wrong password:\n{out}");
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("regions.east.mysql.password") && out.contains("refuses ferry's account"), "{out}");
    assert!(out.contains("Access denied"), "{out}");

    // The server's GTID domain is 1; a config that says 7 would capture nothing as local.
    let domain = dir.path().join("domain.yaml");
    std::fs::write(&domain, text.replacen("gtid_domain_id: 1", "gtid_domain_id: 7", 1)).unwrap();
    let (code, out) = validate(&domain);
    println!("wrong domain id:\n{out}");
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("regions.east.mysql.gtid_domain_id"), "{out}");

    // A setting capture can start without but failover needs (the guide sets it).
    let mut root = db.root_conn().await.unwrap();
    root.query_drop("SET GLOBAL gtid_strict_mode = OFF").await.unwrap();
    let (code, out) = validate(&good);
    println!("strict mode off:\n{out}");
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("regions.east.mysql.primary: gtid_strict_mode is 0; set gtid_strict_mode = 1"),
        "{out}"
    );
    root.query_drop("SET GLOBAL gtid_strict_mode = ON").await.unwrap();
    assert_eq!(validate(&good).0, Some(0));
}

#[tokio::test]
async fn missing_grants_are_named_with_the_grant_that_fixes_them_and_that_grant_is_enough() {
    let (db, broker, dir) = servers().await;
    let mut root = db.root_conn().await.unwrap();
    root.query_drop("CREATE USER narrow@'%' IDENTIFIED BY 'narrow-pw'").await.unwrap();
    root.query_drop("GRANT SELECT ON ferry.* TO narrow@'%'").await.unwrap();
    root.query_drop("GRANT REPLICATION SLAVE ON *.* TO narrow@'%'").await.unwrap();
    let text = std::fs::read_to_string(config(dir.path(), &db, &broker.bootstrap(), "")).unwrap();
    let narrow = dir.path().join("narrow.yaml");
    std::fs::write(
        &narrow,
        text.replacen("user: ferry", "user: narrow", 1).replacen(
            "password: ferry-test-pw",
            "password: narrow-pw",
            1,
        ),
    )
    .unwrap();
    let (code, out) = validate(&narrow);
    println!("missing grants:\n{out}");
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("regions.east.mysql.user"), "{out}");
    for want in [
        "GRANT ALL PRIVILEGES ON `ferry`.* TO 'narrow'@'%'",
        "GRANT BINLOG MONITOR ON *.*",
        "GRANT BINLOG REPLAY ON *.*",
        "GRANT SLAVE MONITOR ON *.*",
        "GRANT DELETE ON `shop`.*",
    ] {
        assert!(out.contains(want), "`{want}` in:\n{out}");
    }
    assert!(!out.contains("GRANT REPLICATION SLAVE ON"), "it holds REPLICATION SLAVE:\n{out}");
    // Run exactly what it printed, as an administrator would: then it is valid.
    for statement in out.split("GRANT ").skip(1) {
        let statement = format!("GRANT {}", statement.split(';').next().unwrap());
        root.query_drop(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let (code, out) = validate(&narrow);
    assert_eq!(code, Some(0), "after the printed GRANTs:\n{out}");
}

#[tokio::test]
async fn brokers_that_do_not_answer_a_missing_haproxy_socket_and_a_wrong_dns_key_are_problems() {
    let (db, _broker, dir) = servers().await;
    let dns = ferry::sandbox::DnsServer::start_temp("psi.test", &[]).await.unwrap();
    let extra = format!(
        "watch:\n  targets:\n    - name: web\n      probe: {{ tcp: {{ address: \"127.0.0.1:9\" }} }}\n      \
         lb: {{ haproxy: {{ api: /nonexistent/haproxy.sock, backend: app, server: app1 }} }}\n\
         failover:\n  dns: {{ server: \"{}\", zone: psi.test, key_name: {}, key: d3JvbmcgZXZlcnl0aGluZw== }}\n",
        dns.addr(),
        dns.key().name
    );
    let path = config(dir.path(), &db, "127.0.0.1:9", &extra);
    let (code, out) = validate(&path);
    println!("dead broker and missing socket:\n{out}");
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("regions.east.kafka.bootstrap: the brokers do not answer"), "{out}");
    assert!(out.contains("regions.west.kafka.bootstrap: the brokers do not answer"), "{out}");
    assert!(out.contains("watch.targets[web].lb.api: does not answer"), "{out}");
    assert!(out.contains("/nonexistent/haproxy.sock"), "{out}");
    assert!(out.contains("failover.dns.key: the DNS server at"), "{out}");

    // The right key is accepted.
    let text = std::fs::read_to_string(&path).unwrap().replace("d3JvbmcgZXZlcnl0aGluZw==", &dns.key().secret);
    std::fs::write(&path, text).unwrap();
    let (_, out) = validate(&path);
    assert!(!out.contains("failover.dns.key"), "{out}");
}

/// `ferry init` (issue 14): on a server with only an administrator, `--apply` creates ferry's
/// account with the grants its roles need, the `ferry` schema and the topics; a second run
/// has nothing to do, and `ferry validate` then passes.
#[tokio::test]
async fn init_sets_up_a_region_and_a_second_run_has_nothing_to_do() {
    let mut o = MariaDbOptions::test("init-db", 101, 1);
    o.user = "admin".into();
    let db = MariaDb::start_temp(o).await.unwrap();
    let broker = Broker::start_temp().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut root = db.root_conn().await.unwrap();
    for sql in [
        "CREATE DATABASE shop",
        "CREATE USER boss@'%' IDENTIFIED BY 'boss-pw'",
        "GRANT ALL PRIVILEGES ON *.* TO boss@'%' WITH GRANT OPTION",
    ] {
        root.query_drop(sql).await.unwrap();
    }
    let text = std::fs::read_to_string(config(dir.path(), &db, &broker.bootstrap(), "")).unwrap();
    let path = dir.path().join("init.yaml");
    std::fs::write(&path, text.replace("user: admin", "user: ferry")).unwrap();
    let (code, out) = validate(&path);
    assert_eq!(code, Some(64), "no account yet:\n{out}");

    let init = |apply: bool| {
        let mut cmd = std::process::Command::new(FERRY);
        cmd.args(["init", "--config"])
            .arg(&path)
            .env("FERRY_ADMIN_USER", "boss")
            .env("FERRY_ADMIN_PASSWORD", "boss-pw");
        if apply {
            cmd.arg("--apply");
        }
        let out = cmd.output().unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let (code, plan) = init(false);
    println!("ferry init:\n{plan}");
    assert_eq!(code, Some(0), "{plan}");
    assert!(
        plan.contains("CREATE USER IF NOT EXISTS 'ferry'@'%'") && plan.contains("GRANT BINLOG REPLAY ON *.*"),
        "{plan}"
    );
    let (code, first) = init(true);
    println!("ferry init --apply:\n{first}");
    assert_eq!(code, Some(0), "{first}");
    assert!(first.contains("done:         CREATE USER 'ferry'@'%'"), "{first}");
    assert!(first.contains("done:         kafka topic ferry.east.changes"), "{first}");
    let (code, second) = init(true);
    println!("ferry init --apply, again:\n{second}");
    assert_eq!(code, Some(0), "{second}");
    assert!(second.contains("nothing to do") && !second.contains("done:        "), "{second}");
    let (code, out) = validate(&path);
    assert_eq!(code, Some(0), "after init:\n{out}");
}
