//! The one HTTP listener: `/metrics`, `/health/live`, `/health/ready`, `/status`.
//!
//! Binding is separate from serving so that a port conflict fails start-up before any role runs.
//! The server stops when its token is cancelled: it is the last thing ordered shutdown stops.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::status::Status;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    status: Status,
}

pub fn router(metrics: Metrics, status: Status) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready_handler))
        .route("/status", get(status_handler))
        .with_state(AppState { metrics, status })
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed\n").into_response(),
    }
}

async fn ready_handler(State(state): State<AppState>) -> Response {
    let snap = state.status.snapshot();
    let code = if snap.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({ "ready": snap.ready, "roles": snap.roles });
    (code, Json(body)).into_response()
}

async fn status_handler(State(state): State<AppState>) -> Response {
    Json(state.status.snapshot()).into_response()
}

/// A bound, not yet serving, HTTP listener.
pub struct HttpServer {
    listener: TcpListener,
}

impl HttpServer {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self { listener: TcpListener::bind(addr).await? })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `stop` is cancelled, then finish in-flight requests and return.
    pub async fn serve(self, router: Router, stop: CancellationToken) -> std::io::Result<()> {
        axum::serve(self.listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await
    }
}
