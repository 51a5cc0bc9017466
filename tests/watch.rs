//! The health loop against real HAProxy and real app processes, in the sandbox: an app node
//! killed by its pid leaves HAProxy within `failure_threshold × interval` + 1 s (drained by
//! ferry through the runtime API), comes back after `recovery_threshold` successes once it
//! runs again, and the last serving member of a backend is never taken out.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry::sandbox::http_get;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// The sandbox's watch timing (config/sandbox.yaml).
const INTERVAL: Duration = Duration::from_secs(1);
const FAILURES: u32 = 3;
const RECOVERIES: u32 = 3;

/// `srv_admin_state` of `server` in backend `app`.
async fn admin_state(api: &Path, server: &str) -> u32 {
    let answer = ferry::watch::lb::command(api.to_str().unwrap(), "show servers state app").await.unwrap();
    let servers = ferry::watch::lb::parse_servers(&answer, "app");
    servers.iter().find(|s| s.name == server).unwrap_or_else(|| panic!("{server} in {answer}")).admin_state
}

/// Time until `server`'s draining flag is `draining`.
async fn until_drain(api: &Path, server: &str, draining: bool, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if (admin_state(api, server).await & 0x08 != 0) == draining {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{server} draining = {draining} not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kill(pid: u32) {
    let status = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_dead_app_node_is_drained_in_haproxy_and_comes_back_when_it_recovers() {
    let sb = common::Sandbox::up();
    let mut children = Vec::new();
    let state = sb.state.clone();
    let east = &state.regions["east"];
    let api = east.haproxy.runtime_api.clone();
    let app = &east.apps[0];
    // Let the loop see every member healthy first.
    tokio::time::sleep(INTERVAL * 2).await;
    assert_eq!(admin_state(&api, &app.name).await, 0, "{} starts in service", app.name);

    kill(app.process.pid);
    let limit = INTERVAL * FAILURES + Duration::from_secs(1);
    let detection = until_drain(&api, &app.name, true, limit + Duration::from_secs(5)).await;
    println!("detection: {} drained {detection:?} after its kill (bound {limit:?})", app.name);
    assert!(detection <= limit, "drained after {detection:?}, bound {limit:?}");

    // Start it again on the same address.
    let listen = app.url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let child = Command::new(FERRY)
        .args([
            "sandbox",
            "app",
            "--listen",
            &listen,
            "--name",
            &format!("east-{}", app.name),
            "--region",
            "east",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    children.push(common::Reaped(child));
    let limit = INTERVAL * RECOVERIES + Duration::from_secs(1);
    let recovery = until_drain(&api, &app.name, false, limit + Duration::from_secs(5)).await;
    println!("recovery: {} back in service {recovery:?} after its restart (bound {limit:?})", app.name);
    assert!(recovery <= limit + Duration::from_millis(500), "re-enabled after {recovery:?}");

    // /status shows the journal; the metrics count the transitions and actions.
    // The journal entry is written once the action returns, just after HAProxy shows its
    // effect: read until it is there (or the bound passes).
    let http: std::net::SocketAddr = east.ferry.http_url.trim_start_matches("http://").parse().unwrap();
    let journaled = std::time::Instant::now() + Duration::from_secs(3);
    let (journal, actions) = loop {
        let (_, status) = http_get(http, "/status").await.unwrap();
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        let journal = status["details"]["watch"]["journal"].as_array().cloned().unwrap_or_default();
        let actions: Vec<(String, String)> = journal
            .iter()
            .filter(|e| e["kind"] == "action" && e["target"] == app.name.as_str() && e["result"] != "already")
            .map(|e| {
                (e["what"].as_str().unwrap_or("").to_string(), e["result"].as_str().unwrap_or("").to_string())
            })
            .collect();
        if actions.len() >= 2 || std::time::Instant::now() > journaled {
            break (journal, actions);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        actions,
        [("take_out".to_string(), "done".to_string()), ("put_back".into(), "done".into())],
        "{journal:#?}"
    );
    let (_, metrics) = http_get(http, "/metrics").await.unwrap();
    for line in [
        format!("ferry_watch_transitions_total{{target=\"{}\",to=\"down\"}} 1", app.name),
        format!("ferry_watch_transitions_total{{target=\"{}\",to=\"up\"}} 1", app.name),
        format!("ferry_watch_actions_total{{target=\"{}\",action=\"take_out\",result=\"done\"}} 1", app.name),
        "ferry_watch_tilted 0".to_string(),
    ] {
        assert!(metrics.contains(&line), "missing {line}");
    }

    // West: kill every app node; the last one serving is not taken out.
    let west = &state.regions["west"];
    let api = west.haproxy.runtime_api.clone();
    tokio::time::sleep(INTERVAL).await;
    kill(west.apps[0].process.pid);
    until_drain(&api, &west.apps[0].name, true, Duration::from_secs(10)).await;
    for app in &west.apps[1..] {
        kill(app.process.pid);
    }
    tokio::time::sleep(INTERVAL * (FAILURES + 2)).await;
    let last = west.apps.last().unwrap();
    assert_eq!(admin_state(&api, &last.name).await & 0x08, 0, "the last member was not taken out");
    let http: std::net::SocketAddr = west.ferry.http_url.trim_start_matches("http://").parse().unwrap();
    let (_, metrics) = http_get(http, "/metrics").await.unwrap();
    let refused = format!(
        "ferry_watch_actions_total{{target=\"{}\",action=\"take_out\",result=\"refused_last_member\"}}",
        last.name
    );
    assert!(metrics.contains(&refused), "the refusal is counted: {refused}");
}
