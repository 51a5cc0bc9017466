//! One acting watcher: a Kubernetes Lease (`KubeLease`) or, off Kubernetes, a Redis lease
//! (`Lease`), each with a fencing epoch. Acquiring the
//! lease (`SET key token NX PX ttl`) and taking the next epoch (`INCR key:epoch`) happen in one
//! script; the holder renews every `ttl / 3` while the key still holds its token. Before every
//! action the holder checks, in one script, that the key still holds its token and the epoch is
//! still its own (`Lease::fenced`); an action with a stale epoch does not run. A holder that
//! cannot renew stops acting at once, and in any case when its lease would have expired.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::runtime::AbortOnDrop;

const ACQUIRE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
                       return redis.call('INCR', KEYS[2]) else return 0 end";
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const FENCED: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then \
                      return 1 else return 0 end";

/// Where leadership stands (shared with the target loops).
#[derive(Debug, Default)]
pub struct Leadership {
    /// The epoch held, 0 when not leading.
    epoch: AtomicU64,
    /// While leading: the lease's local expiry (ms since `base`).
    until_ms: AtomicU64,
    base: std::sync::OnceLock<Instant>,
}

impl Leadership {
    fn base(&self) -> Instant {
        *self.base.get_or_init(Instant::now)
    }

    /// The epoch this instance leads under, if its lease is still valid locally.
    pub fn epoch(&self) -> Option<u64> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let until = self.until_ms.load(Ordering::SeqCst);
        let now = self.base().elapsed().as_millis() as u64;
        (epoch > 0 && now < until).then_some(epoch)
    }

    fn set(&self, epoch: u64, valid_for: Duration) {
        let until = (self.base().elapsed() + valid_for).as_millis() as u64;
        self.until_ms.store(until, Ordering::SeqCst);
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.epoch.store(0, Ordering::SeqCst);
    }

    /// Always leading (no lease configured: this instance acts alone).
    pub fn alone() -> Arc<Self> {
        let l = Arc::new(Self::default());
        l.set(1, Duration::from_secs(100 * 365 * 24 * 3600));
        l
    }
}

/// The watch role's leadership, shared with other roles that act only on the leader (the
/// scheduled checks): set once the watch role holds its lease (or acts alone).
pub type LeaderCell = Arc<std::sync::OnceLock<Arc<Leadership>>>;

/// Holds (or tries to take) the lease in the background; stops when dropped.
pub struct Lease {
    pub leadership: Arc<Leadership>,
    conn: Arc<Mutex<Option<redis::aio::MultiplexedConnection>>>,
    client: redis::Client,
    key: String,
    token: String,
    _task: AbortOnDrop,
}

impl Lease {
    pub fn start(url: &str, key: &str, ttl: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("watch.leader.redis: {e}"))?;
        let token = Holder::identity();
        let leadership = Arc::new(Leadership::default());
        let conn: Arc<Mutex<Option<redis::aio::MultiplexedConnection>>> = Arc::default();
        let task = tokio::spawn(hold(
            client.clone(),
            key.to_string(),
            token.clone(),
            ttl,
            leadership.clone(),
            conn.clone(),
        ));
        Ok(Self { leadership, conn, client, key: key.to_string(), token, _task: AbortOnDrop(task) })
    }

    /// True when, in Redis, the lease still holds this instance's token and `epoch` is the
    /// current epoch: the check every action passes right before it runs.
    pub async fn fenced(&self, epoch: u64) -> bool {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = connect(&self.client).await.ok();
        }
        let Some(conn) = guard.as_mut() else { return false };
        let result: Result<i64, _> = redis::Script::new(FENCED)
            .key(&self.key)
            .key(format!("{}:epoch", self.key))
            .arg(&self.token)
            .arg(epoch)
            .invoke_async(conn)
            .await;
        match result {
            Ok(1) => true,
            Ok(_) => false,
            Err(_) => {
                *guard = None;
                false
            }
        }
    }
}

async fn connect(client: &redis::Client) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
    super::net::redis_connection(client, Duration::from_secs(1)).await
}

async fn hold(
    client: redis::Client,
    key: String,
    token: String,
    ttl: Duration,
    leadership: Arc<Leadership>,
    conn: Arc<Mutex<Option<redis::aio::MultiplexedConnection>>>,
) {
    let every = ttl / 3;
    let ttl_ms = ttl.as_millis() as u64;
    // Stop acting a little before the lease can expire in Redis.
    let valid_for = ttl.saturating_sub(every / 2);
    let mut leading = false;
    loop {
        let started = Instant::now();
        let mut guard = conn.lock().await;
        if guard.is_none() {
            *guard = connect(&client).await.ok();
        }
        let outcome: Option<u64> = match guard.as_mut() {
            None => None,
            Some(c) if leading => redis::Script::new(RENEW)
                .key(&key)
                .arg(&token)
                .arg(ttl_ms)
                .invoke_async::<i64>(c)
                .await
                .ok()
                .filter(|r| *r == 1)
                .map(|_| leadership.epoch.load(Ordering::SeqCst))
                .filter(|e| *e > 0),
            Some(c) => redis::Script::new(ACQUIRE)
                .key(&key)
                .key(format!("{key}:epoch"))
                .arg(&token)
                .arg(ttl_ms)
                .invoke_async::<u64>(c)
                .await
                .ok()
                .filter(|e| *e > 0),
        };
        if outcome.is_none() && guard.is_some() && leading {
            // A failed renewal: the connection may be bad; reconnect next time.
            *guard = None;
        }
        drop(guard);
        match outcome {
            Some(epoch) => {
                if !leading {
                    tracing::info!(%key, epoch, "watch: leading (lease acquired)");
                }
                leading = true;
                leadership.set(epoch, valid_for.saturating_sub(started.elapsed()));
            }
            None => {
                if leading {
                    tracing::warn!(%key, "watch: lease lost; not acting");
                }
                leading = false;
                leadership.clear();
            }
        }
        tokio::time::sleep(every).await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "ferry".into())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    h.finish()
}

/// The Kubernetes Lease (coordination.k8s.io/v1) kept by kube-lease-manager. The epoch is the
/// Lease's `leaseTransitions`, which grows by one on every change of holder; the fencing check
/// reads the Lease and requires this instance as holder, the same transitions and an unexpired
/// renewal.
pub struct KubeLease {
    pub leadership: Arc<Leadership>,
    api: kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    name: String,
    identity: String,
    _task: AbortOnDrop,
}

impl KubeLease {
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        ttl: Duration,
    ) -> Result<Self, String> {
        let seconds = ttl.as_secs().max(2);
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(seconds)
            .with_grace((seconds / 3).max(1))
            .build()
            .await
            .map_err(|e| format!("Kubernetes lease {namespace}/{name}: {e}"))?;
        let leadership = Arc::new(Leadership::default());
        let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client, namespace);
        let task = tokio::spawn(follow(
            manager,
            api.clone(),
            name.to_string(),
            identity.to_string(),
            ttl,
            leadership.clone(),
        ));
        Ok(Self {
            leadership,
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            _task: AbortOnDrop(task),
        })
    }

    /// The Lease still names this instance, with `epoch` transitions, and is not expired.
    pub async fn fenced(&self, epoch: u64) -> bool {
        current_epoch(&self.api, &self.name, &self.identity).await == Some(epoch)
    }
}

/// The Lease's transitions if `identity` holds it and its renewal has not expired.
async fn current_epoch(
    api: &kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    name: &str,
    identity: &str,
) -> Option<u64> {
    let lease = api.get(name).await.ok()?;
    let spec = lease.spec?;
    let renewed: std::time::SystemTime = spec.renew_time?.0.into();
    let valid = renewed + Duration::from_secs(u64::try_from(spec.lease_duration_seconds?).ok()?);
    (spec.holder_identity.as_deref() == Some(identity) && std::time::SystemTime::now() < valid)
        .then(|| u64::try_from(spec.lease_transitions.unwrap_or(0)).unwrap_or(0).max(1))
}

async fn follow(
    manager: kube_lease_manager::LeaseManager,
    api: kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    name: String,
    identity: String,
    ttl: Duration,
    leadership: Arc<Leadership>,
) {
    let (mut leading, _keeper) = manager.watch().await;
    let every = ttl / 3;
    loop {
        if *leading.borrow_and_update() {
            match current_epoch(&api, &name, &identity).await {
                Some(epoch) => leadership.set(epoch, ttl.saturating_sub(every / 2)),
                None => leadership.clear(),
            }
        } else {
            leadership.clear();
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() { leadership.clear(); return },
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Whichever lease is configured.
pub enum Holder {
    Redis(Lease),
    Kube(KubeLease),
}

impl Holder {
    pub fn leadership(&self) -> Arc<Leadership> {
        match self {
            Holder::Redis(l) => l.leadership.clone(),
            Holder::Kube(l) => l.leadership.clone(),
        }
    }

    /// The lease still names this instance under `epoch` (checked at the source).
    pub async fn fenced(&self, epoch: u64) -> bool {
        match self {
            Holder::Redis(l) => l.fenced(epoch).await,
            Holder::Kube(l) => l.fenced(epoch).await,
        }
    }

    /// This instance's name in a lease: host, pid and a random part.
    pub fn identity() -> String {
        format!("{}-{}-{}", hostname(), std::process::id(), rand_suffix() % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;

    type Store = Arc<std::sync::Mutex<Option<serde_json::Value>>>;

    /// JSON merge patch semantics: objects merge, `null` removes, anything else replaces.
    fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        match (target.as_object_mut(), patch.as_object()) {
            (Some(t), Some(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            _ => *target = patch.clone(),
        }
    }

    fn status(code: StatusCode, reason: &str) -> Response<Body> {
        let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code.as_u16()});
        Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
    }

    /// A client whose API server is a Lease store shared with other clients (a stand-in for
    /// one Lease object of a real API server, including server-side apply refusing to take a
    /// held lease for another holder). Aborting the returned task cuts this client off.
    fn client(store: Store) -> (kube::Client, tokio::task::JoinHandle<()>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let apply = request
                    .headers()
                    .get("content-type")
                    .is_some_and(|c| c.to_str().unwrap_or("").contains("apply-patch"));
                let body = request.into_body().collect_bytes().await.unwrap();
                let mut stored = store.lock().unwrap();
                let answer = match method {
                    Method::GET => match stored.as_ref() {
                        Some(lease) => Response::new(Body::from(serde_json::to_vec(lease).unwrap())),
                        None => status(StatusCode::NOT_FOUND, "NotFound"),
                    },
                    Method::POST => {
                        let lease: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        *stored = Some(lease.clone());
                        Response::builder()
                            .status(StatusCode::CREATED)
                            .body(Body::from(serde_json::to_vec(&lease).unwrap()))
                            .unwrap()
                    }
                    Method::PATCH => {
                        let patch: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let holder = stored
                            .as_ref()
                            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string));
                        let wanted = patch["spec"]["holderIdentity"].as_str();
                        if apply && holder.is_some() && wanted.is_some() && holder.as_deref() != wanted {
                            status(StatusCode::CONFLICT, "Conflict")
                        } else {
                            let lease = stored.get_or_insert_with(|| {
                                serde_json::json!({
                                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                    "metadata": {"name": "watch", "namespace": "psi"}, "spec": {},
                                })
                            });
                            merge(lease, &patch);
                            Response::new(Body::from(serde_json::to_vec(lease).unwrap()))
                        }
                    }
                    _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
                };
                send.send_response(answer);
            }
        });
        (kube::Client::new(service, "psi"), server)
    }

    async fn until(limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        while !check() {
            assert!(started.elapsed() < limit, "not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    #[tokio::test]
    async fn one_instance_leads_and_the_other_takes_over_with_a_new_epoch_when_it_is_cut_off() {
        let store: Store = Arc::default();
        let ttl = Duration::from_secs(2);
        let (a_client, a_server) = client(store.clone());
        let a = KubeLease::start(a_client, "psi", "watch", "ferry-a", ttl).await.unwrap();
        until(Duration::from_secs(10), || a.leadership.epoch().is_some()).await;
        let (b_client, _b_server) = client(store.clone());
        let b = KubeLease::start(b_client, "psi", "watch", "ferry-b", ttl).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let first = a.leadership.epoch().expect("a still leads");
        assert_eq!(b.leadership.epoch(), None, "b does not lead while a renews");
        assert!(a.fenced(first).await, "a's epoch is current");
        assert!(!b.fenced(first).await, "b holds no epoch");

        // A is cut off from the API server: it cannot renew, stops leading, and B takes over.
        a_server.abort();
        let took_over = until(Duration::from_secs(15), || b.leadership.epoch().is_some()).await;
        let second = b.leadership.epoch().unwrap();
        assert!(second > first, "a new epoch: {second} after {first}");
        assert!(b.fenced(second).await);
        assert_eq!(a.leadership.epoch(), None, "a no longer acts");
        assert_eq!(store.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"], "ferry-b");
        println!("b led {took_over:?} after a was cut off (lease {ttl:?})");
    }
}
