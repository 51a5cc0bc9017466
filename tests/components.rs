//! One smoke test per real component, each started by the sandbox's own code on free loopback
//! ports in a temp dir and killed when the test ends (its log is printed if the test fails).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferry::sandbox::{Broker, DnsServer, Haproxy, MariaDb, MariaDbOptions, RedisServer, ServerDir};
use mysql_async::prelude::Queryable;

#[tokio::test]
async fn mariadb_replica_receives_a_primary_write_and_binlog_is_configured_for_capture() {
    let primary =
        MariaDb::start_temp(MariaDbOptions::test("db-primary", 11, 1)).await.expect("primary starts");
    let replica = MariaDb::start_replica(
        MariaDbOptions::test("db-replica", 12, 1),
        ServerDir::temp("db-replica").unwrap(),
        &primary,
        true,
    )
    .await
    .expect("replica starts and catches up");

    let mut p = primary.conn().await.unwrap();
    let settings: Vec<(String, String)> = p
        .query(
            "SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES \
             WHERE VARIABLE_NAME IN ('BINLOG_FORMAT','BINLOG_ROW_IMAGE','BINLOG_ROW_METADATA','LOG_BIN') \
             ORDER BY VARIABLE_NAME",
        )
        .await
        .unwrap();
    let expected: Vec<(String, String)> = [
        ("BINLOG_FORMAT", "ROW"),
        ("BINLOG_ROW_IMAGE", "FULL"),
        ("BINLOG_ROW_METADATA", "FULL"),
        ("LOG_BIN", "ON"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(settings, expected, "the primary's binlog settings");
    let semi: Option<(String, u32)> =
        p.query_first("SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'").await.unwrap();
    assert_eq!(semi.map(|s| s.1), Some(1), "the replica acknowledges semi-synchronously");

    p.query_drop("CREATE DATABASE smoke").await.unwrap();
    p.query_drop("CREATE TABLE smoke.t (id INT PRIMARY KEY, note VARCHAR(40), at DATETIME(6))")
        .await
        .unwrap();
    p.exec_drop("INSERT INTO smoke.t VALUES (?, ?, '2026-11-22 10:00:00.123456')", (1, "héllo 📦"))
        .await
        .unwrap();
    let gtid: String = p.query_first("SELECT @@gtid_binlog_pos").await.unwrap().unwrap();
    assert!(gtid.starts_with("1-11-"), "GTID carries domain 1 and server 11, got {gtid}");

    let mut r = replica.conn().await.unwrap();
    let waited: Option<i64> = r.exec_first("SELECT MASTER_GTID_WAIT(?, 10)", (gtid.clone(),)).await.unwrap();
    assert_eq!(waited, Some(0), "replica reached {gtid}");
    let row: Option<(i32, String, String)> =
        r.query_first("SELECT id, note, CAST(at AS CHAR) FROM smoke.t").await.unwrap();
    assert_eq!(row, Some((1, "héllo 📦".to_string(), "2026-11-22 10:00:00.123456".to_string())));
    let read_only: Option<i64> = r.query_first("SELECT @@read_only").await.unwrap();
    assert_eq!(read_only, Some(1), "a replica is read-only");
}

#[tokio::test]
async fn redis_replica_follows_the_primary() {
    let primary = RedisServer::start_temp("redis-primary").await.expect("primary starts");
    let replica = RedisServer::start(
        "redis-replica",
        ServerDir::temp("redis-replica").unwrap(),
        IpAddr::from([127, 0, 0, 1]),
        None,
        Some(primary.addr()),
    )
    .await
    .expect("replica starts linked");

    let client = redis::Client::open(primary.url()).unwrap();
    let mut p = client.get_multiplexed_async_connection().await.unwrap();
    // WAIT blocks up to its own timeout; the client's 500 ms default would cut it short.
    p.set_response_timeout(Duration::from_secs(10));
    let _: () = redis::cmd("SET").arg("psi:stock:1").arg("42").query_async(&mut p).await.unwrap();
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut p).await.unwrap();
    assert_eq!(acked, 1, "one replica acknowledged the write");

    let client = redis::Client::open(replica.url()).unwrap();
    let mut r = client.get_multiplexed_async_connection().await.unwrap();
    let got: Option<String> = redis::cmd("GET").arg("psi:stock:1").query_async(&mut r).await.unwrap();
    assert_eq!(got.as_deref(), Some("42"));
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut r).await.unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"slave".to_vec())),
        "ROLE of the replica: {role:?}"
    );
}

#[tokio::test]
async fn kafka_record_round_trips_through_nisshi_with_rdkafka() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Offset, TopicPartitionList};

    let broker = Broker::start_temp().await.expect("broker starts");
    broker.create_topic("ferry.east.changes", 1).await.expect("topic created");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("broker.address.family", "v4")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let payload = r#"{"v":1,"gtid":"1-101-7","last":true}"#;
    let delivery = producer
        .send(FutureRecord::to("ferry.east.changes").key("1-101-7").payload(payload), Duration::from_secs(20))
        .await
        .map_err(|(e, _)| e)
        .expect("broker acknowledged the record");
    let offset = delivery.offset;
    assert_eq!(delivery.partition, 0);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("broker.address.family", "v4")
        .set("group.id", "ferry-smoke")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset("ferry.east.changes", 0, Offset::Offset(offset)).unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let received = loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => break m.detach(),
            Some(Err(e)) => panic!("consume failed: {e}"),
            None if std::time::Instant::now() > deadline => panic!("no record within 30s"),
            None => continue,
        }
    };
    assert_eq!(received.offset(), offset);
    assert_eq!(received.key(), Some(&b"1-101-7"[..]));
    assert_eq!(received.payload(), Some(payload.as_bytes()));
}

/// `show servers state BACKEND` → (server name, admin state) pairs.
fn admin_states(answer: &str) -> Vec<(String, u32)> {
    answer
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.starts_with('1'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(3)?.to_string(), f.get(6)?.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn haproxy_member_is_disabled_and_re_enabled_through_the_runtime_api() {
    let mut members = Vec::new();
    let mut servers = Vec::new();
    for name in ["app1", "app2"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        servers.push(tokio::spawn(
            axum::serve(listener, ferry::sandbox::app_node::router(name, "east")).into_future(),
        ));
        members.push((name.to_string(), addr));
    }
    let lb = Haproxy::start(
        ServerDir::temp("haproxy").unwrap(),
        IpAddr::from([127, 0, 0, 1]),
        None,
        &members,
        None,
    )
    .await
    .expect("haproxy starts");

    let state = lb.command("show servers state app").await.unwrap();
    assert_eq!(
        admin_states(&state),
        vec![("app1".into(), 0), ("app2".into(), 0)],
        "initially ready:\n{state}"
    );

    let answer = lb.command("set server app/app1 state maint").await.unwrap();
    assert!(answer.trim().is_empty(), "set state answered: {answer}");
    let state = lb.command("show servers state app").await.unwrap();
    let states = admin_states(&state);
    assert_eq!(states[0].0, "app1");
    assert_ne!(states[0].1 & 1, 0, "app1 is in forced maintenance:\n{state}");
    assert_eq!(states[1], ("app2".into(), 0), "app2 untouched");

    lb.command("set server app/app1 state ready").await.unwrap();
    let state = lb.command("show servers state app").await.unwrap();
    assert_eq!(admin_states(&state), vec![("app1".into(), 0), ("app2".into(), 0)], "re-enabled:\n{state}");

    // Traffic through the frontend reaches a member.
    let (code, body) = ferry::sandbox::http_get(lb.frontend(), "/").await.expect("frontend answers");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"region\":\"east\""), "{body}");
    for s in servers {
        s.abort();
    }
}

async fn kdig_a(server: SocketAddr, name: &str) -> String {
    let out = tokio::process::Command::new("kdig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+short", name, "A"])
        .output()
        .await
        .expect("kdig runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn knsupdate(server: SocketAddr, key: &str, script: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("knsupdate")
        .args(["-y", key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("knsupdate runs");
    let full = format!("server {} {}\n{script}send\nquit\n", server.ip(), server.port());
    child.stdin.take().unwrap().write_all(full.as_bytes()).await.unwrap();
    child.wait_with_output().await.unwrap()
}

#[tokio::test]
async fn dns_update_signed_with_the_tsig_key_is_applied_and_a_wrong_key_is_refused() {
    let records = vec![("db.east".to_string(), IpAddr::from([127, 77, 1, 1]))];
    let dns = DnsServer::start_temp("psi.test", &records).await.expect("knot starts");
    assert_eq!(kdig_a(dns.addr(), "db.east.psi.test").await, "127.77.1.1");

    let switch =
        "zone psi.test\nupdate delete db.east.psi.test A\nupdate add db.east.psi.test 5 A 127.77.1.2\n";
    let out = knsupdate(dns.addr(), &dns.key().knot_arg(), switch).await;
    assert!(out.status.success(), "signed update failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(kdig_a(dns.addr(), "db.east.psi.test").await, "127.77.1.2", "the update is served");

    let wrong_key =
        format!("hmac-sha256:{}:{}", dns.key().name, "d3JvbmctLXdyb25nLS13cm9uZy0td3JvbmctLXdyb25nIQ==");
    let back =
        "zone psi.test\nupdate delete db.east.psi.test A\nupdate add db.east.psi.test 5 A 127.66.6.6\n";
    let out = knsupdate(dns.addr(), &wrong_key, back).await;
    assert!(!out.status.success(), "an update with a wrong key must fail");
    assert_eq!(kdig_a(dns.addr(), "db.east.psi.test").await, "127.77.1.2", "the wrong key changed nothing");
}
