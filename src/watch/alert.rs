//! Alerts to on-call through the Alertmanager API v2 (`POST /api/v2/alerts`). Firing alerts
//! are sent at once and re-sent every `RESEND` (Alertmanager resolves an alert it has not heard
//! of for its `resolve_timeout`); a resolved alert is sent with `endsAt` until Alertmanager
//! has taken it. Sends that fail are retried with backoff; nothing is dropped while the process
//! runs. Plain HTTP (`http://host:port[/prefix]`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::runtime::AbortOnDrop;

const RESEND: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(5);

/// One alert: its identity is its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Entry {
    alert: Alert,
    starts_at: String,
    ends_at: Option<String>,
    /// A resolved alert still to be delivered.
    pending_resolve: bool,
}

/// Sends alerts in the background; stops when dropped.
pub struct Alerter {
    state: Arc<Mutex<BTreeMap<String, Entry>>>,
    wake: Arc<Notify>,
    _task: AbortOnDrop,
}

/// Now, as RFC 3339 UTC with milliseconds.
pub(crate) fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, mo, day, h, mi, s) = crate::model::civil_from_unix(d.as_secs() as i64);
    format!("{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}.{:03}Z", d.subsec_millis())
}

/// An alert's identity: its labels.
fn key(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_default()
}

impl Alerter {
    /// Deliver to the Alertmanager at `url` (`http://host:port[/prefix]`).
    pub fn start(url: &str) -> Result<Self, String> {
        let rest =
            url.strip_prefix("http://").ok_or_else(|| format!("`{url}`: only http:// is supported"))?;
        let (address, prefix) = match rest.split_once('/') {
            Some((a, p)) => (a.to_string(), format!("/{}", p.trim_end_matches('/'))),
            None => (rest.to_string(), String::new()),
        };
        let path = format!("{}/api/v2/alerts", prefix.trim_end_matches('/'));
        let state: Arc<Mutex<BTreeMap<String, Entry>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(deliver(address, path, state.clone(), wake.clone()));
        Ok(Self { state, wake, _task: AbortOnDrop(task) })
    }

    /// Fire `alert` (again: keeps its start time).
    pub fn fire(&self, alert: Alert) {
        if let Ok(mut state) = self.state.lock() {
            let k = key(&alert.labels);
            let starts_at = state.get(&k).filter(|e| e.ends_at.is_none()).map(|e| e.starts_at.clone());
            state.insert(
                k,
                Entry {
                    alert,
                    starts_at: starts_at.unwrap_or_else(now_rfc3339),
                    ends_at: None,
                    pending_resolve: false,
                },
            );
        }
        self.wake.notify_one();
    }

    /// Resolve the alert with these labels, if it fired.
    pub fn resolve(&self, labels: &BTreeMap<String, String>) {
        if let Ok(mut state) = self.state.lock() {
            let k = key(labels);
            if let Some(e) = state.get_mut(&k).filter(|e| e.ends_at.is_none()) {
                e.ends_at = Some(now_rfc3339());
                e.pending_resolve = true;
            }
        }
        self.wake.notify_one();
    }
}

async fn deliver(
    address: String,
    path: String,
    state: Arc<Mutex<BTreeMap<String, Entry>>>,
    wake: Arc<Notify>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Everything firing, and what was resolved but not delivered yet.
        let (body, resolved): (Vec<serde_json::Value>, Vec<String>) = match state.lock() {
            Ok(s) => {
                let send: Vec<(&String, &Entry)> =
                    s.iter().filter(|(_, e)| e.ends_at.is_none() || e.pending_resolve).collect();
                (
                    send.iter()
                        .map(|(_, e)| {
                            let mut a = serde_json::json!({
                                "labels": e.alert.labels, "annotations": e.alert.annotations, "startsAt": e.starts_at,
                            });
                            if let Some(end) = &e.ends_at {
                                a["endsAt"] = end.clone().into();
                            }
                            a
                        })
                        .collect(),
                    send.iter().filter(|(_, e)| e.pending_resolve).map(|(k, _)| (*k).clone()).collect(),
                )
            }
            Err(_) => return,
        };
        let mut wait = RESEND;
        if !body.is_empty() {
            match post(&address, &path, &serde_json::Value::Array(body).to_string()).await {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    if let Ok(mut s) = state.lock() {
                        for k in resolved {
                            s.remove(&k);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "sending alerts to Alertmanager failed");
                    wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// `POST path` with a JSON body; Ok on a 2xx answer.
async fn post(address: &str, path: &str, body: &str) -> Result<(), String> {
    let exchange = super::net::http(address, "POST", path, Some(("application/json", body)));
    let (status, answer) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))??;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("Alertmanager answered {status}: {}", answer.lines().last().unwrap_or_default()))
    }
}
