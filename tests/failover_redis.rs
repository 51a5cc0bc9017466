//! Redis promotion against real servers: the replica becomes primary (verified with `ROLE`),
//! an old primary that still answers is fenced (it follows the new one and refuses writes),
//! and a killed one is simply left behind.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferry::failover::redis_promote::promote;
use ferry::sandbox::{RedisServer, ServerDir};

async fn pair(name: &str) -> (RedisServer, RedisServer) {
    let primary = RedisServer::start_temp(&format!("{name}-primary")).await.unwrap();
    let replica = RedisServer::start(
        &format!("{name}-replica"),
        ServerDir::temp(&format!("{name}-replica")).unwrap(),
        IpAddr::from([127, 0, 0, 1]),
        None,
        Some(primary.addr()),
    )
    .await
    .unwrap();
    let mut p = conn(&primary).await;
    let _: () = redis::cmd("SET").arg("psi:stock:1").arg("42").query_async(&mut p).await.unwrap();
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut p).await.unwrap();
    assert_eq!(acked, 1);
    (primary, replica)
}

async fn conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let mut c = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    c.set_response_timeout(Duration::from_secs(10));
    c
}

#[tokio::test]
async fn a_live_old_primary_is_fenced_and_a_dead_one_left_behind() {
    let (primary, replica) = pair("fence").await;
    let promoted = promote(replica.addr(), primary.addr(), None).await.unwrap();
    assert!(promoted.old_fenced, "the old primary answered and now follows the new one");
    assert!(promoted.offset > 0, "the replica's offset is reported: {promoted:?}");
    let mut new = conn(&replica).await;
    let _: () = redis::cmd("SET").arg("psi:stock:1").arg("41").query_async(&mut new).await.unwrap();
    let mut old = conn(&primary).await;
    let refused: Result<(), _> = redis::cmd("SET").arg("psi:stock:1").arg("99").query_async(&mut old).await;
    let err = refused.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("read only"), "the fenced old primary refuses writes: {err}");

    let (primary, replica) = pair("dead").await;
    let (replica_addr, primary_addr) = (replica.addr(), primary.addr());
    let killed = Instant::now();
    drop(primary);
    let promoted = promote(replica_addr, primary_addr, None).await.unwrap();
    assert!(!promoted.old_fenced, "nothing to fence");
    let mut new = conn(&replica).await;
    let got: Option<String> = redis::cmd("GET").arg("psi:stock:1").query_async(&mut new).await.unwrap();
    assert_eq!(got.as_deref(), Some("42"), "the acknowledged write survived");
    let _: () = redis::cmd("SET").arg("psi:stock:2").arg("7").query_async(&mut new).await.unwrap();
    println!("promotion itself (after the primary was gone): {:?}", killed.elapsed());
}
