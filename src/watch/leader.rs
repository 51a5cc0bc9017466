//! One acting watcher: a Redis lease with a fencing epoch (off Kubernetes). Acquiring the
//! lease (`SET key token NX PX ttl`) and taking the next epoch (`INCR key:epoch`) happen in one
//! script; the holder renews every `ttl / 3` while the key still holds its token. Before every
//! action the holder checks, in one script, that the key still holds its token and the epoch is
//! still its own (`Lease::fenced`); an action with a stale epoch does not run. A holder that
//! cannot renew stops acting at once, and in any case when its lease would have expired.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::app::AbortOnDrop;

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
        let token = format!("{}-{}-{}", hostname(), std::process::id(), rand_suffix());
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
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    client.get_multiplexed_async_connection_with_config(&config).await
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
