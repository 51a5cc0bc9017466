use std::sync::{Arc, Mutex};

use super::*;
use crate::runtime::RoleFuture;

/// A role that waits for shutdown, then takes `linger` to stop and records its name.
struct Recorder {
    name: &'static str,
    stage: Stage,
    linger: Duration,
    log: Arc<Mutex<Vec<&'static str>>>,
}

impl Role for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }
    fn stage(&self) -> Stage {
        self.stage
    }
    fn run(self: Box<Self>, ctx: RoleContext) -> RoleFuture {
        Box::pin(async move {
            ctx.reporter.set(RoleState::Ready);
            ctx.shutdown.cancelled().await;
            tokio::time::sleep(self.linger).await;
            self.log.lock().unwrap().push(self.name);
            Ok(())
        })
    }
}

/// A role whose body is given by a closure.
struct Custom<F> {
    name: &'static str,
    body: F,
}

impl<F, Fut> Role for Custom<F>
where
    F: FnOnce(RoleContext) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }
    fn stage(&self) -> Stage {
        Stage::Apply
    }
    fn run(self: Box<Self>, ctx: RoleContext) -> RoleFuture {
        Box::pin((self.body)(ctx))
    }
}

fn supervisor(grace: Duration) -> (Supervisor, Status) {
    let metrics = Metrics::new();
    let status = Status::new("east", metrics.role_ready.clone());
    (Supervisor::new(grace, status.clone(), metrics), status)
}

async fn http() -> HttpServer {
    HttpServer::bind("127.0.0.1:0".parse().unwrap()).await.expect("bind")
}

#[tokio::test(start_paused = true)]
async fn stages_stop_in_data_path_order_even_when_earlier_stages_are_slow() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (mut sup, status) = supervisor(Duration::from_secs(30));
    // Added in scrambled order; the slow capture role must still finish before publish starts.
    for (name, stage, ms) in [
        ("watch", Stage::Control, 1),
        ("apply", Stage::Apply, 5),
        ("capture", Stage::Capture, 200),
        ("publish", Stage::Publish, 50),
    ] {
        sup.add(Box::new(Recorder { name, stage, linger: Duration::from_millis(ms), log: log.clone() }));
    }
    let outcome = sup.run(http().await, tokio::time::sleep(Duration::from_secs(1))).await;
    assert_eq!(outcome, Outcome::Clean);
    assert_eq!(*log.lock().unwrap(), vec!["capture", "publish", "apply", "watch"]);
    let snap = status.snapshot();
    assert!(snap.roles.values().all(|s| *s == RoleState::Stopped), "{snap:?}");
    assert!(!snap.ready, "a stopped process is not ready");
}

#[tokio::test(start_paused = true)]
async fn a_role_ignoring_shutdown_is_aborted_at_the_grace_deadline() {
    let (mut sup, _) = supervisor(Duration::from_secs(5));
    sup.add(Box::new(Custom {
        name: "stuck",
        body: |_ctx: RoleContext| async move {
            std::future::pending::<()>().await;
            Ok(())
        },
    }));
    let log = Arc::new(Mutex::new(Vec::new()));
    sup.add(Box::new(Recorder {
        name: "capture",
        stage: Stage::Capture,
        linger: Duration::ZERO,
        log: log.clone(),
    }));
    let started = Instant::now();
    let outcome = sup.run(http().await, std::future::ready(())).await;
    let took = started.elapsed();
    assert_eq!(outcome, Outcome::GraceExceeded { pending: vec!["stuck".into()] });
    assert_eq!(outcome.exit_code(), 1);
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(7), "took {took:?}");
    assert_eq!(*log.lock().unwrap(), vec!["capture"], "the well-behaved role still stopped");
}

#[tokio::test(start_paused = true)]
async fn a_failing_role_brings_the_process_down_in_order() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (mut sup, status) = supervisor(Duration::from_secs(30));
    sup.add(Box::new(Recorder {
        name: "capture",
        stage: Stage::Capture,
        linger: Duration::ZERO,
        log: log.clone(),
    }));
    sup.add(Box::new(Custom {
        name: "apply",
        body: |_ctx: RoleContext| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            anyhow::bail!("target database refused the schema")
        },
    }));
    let outcome = sup.run(http().await, std::future::pending()).await;
    assert_eq!(
        outcome,
        Outcome::RolesFailed {
            failures: vec![("apply".into(), "target database refused the schema".into())]
        }
    );
    assert_eq!(*log.lock().unwrap(), vec!["capture"], "the other role was stopped");
    assert!(matches!(status.snapshot().roles["apply"], RoleState::Failed { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_or_early_returning_role_is_a_failure_not_a_crash() {
    let (mut sup, _) = supervisor(Duration::from_secs(30));
    sup.add(Box::new(Custom {
        name: "panics",
        body: |_ctx: RoleContext| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("bug");
        },
    }));
    let outcome = sup.run(http().await, std::future::pending()).await;
    assert_eq!(outcome, Outcome::RolesFailed { failures: vec![("panics".into(), "panicked".into())] });

    let (mut sup, _) = supervisor(Duration::from_secs(30));
    sup.add(Box::new(Custom { name: "quits", body: |_ctx: RoleContext| async move { Ok(()) } }));
    let outcome = sup.run(http().await, std::future::pending()).await;
    assert_eq!(
        outcome,
        Outcome::RolesFailed {
            failures: vec![("quits".into(), "exited before shutdown was requested".into())]
        }
    );
}
