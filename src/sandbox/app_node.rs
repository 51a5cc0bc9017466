//! A tiny stand-in for a PSI application node (`ferry sandbox app`): answers `/health/ready`
//! (200, or 503 after `POST /admin/health/down`) and `/` with its name, so the load balancer,
//! the watch loop and drills have real members to check, drain and fail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Node {
    name: Arc<str>,
    region: Arc<str>,
    healthy: Arc<AtomicBool>,
}

pub fn router(name: &str, region: &str) -> Router {
    let node = Node { name: name.into(), region: region.into(), healthy: Arc::new(AtomicBool::new(true)) };
    Router::new()
        .route("/", get(info))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .route("/admin/health/{state}", post(set_health))
        .with_state(node)
}

async fn info(State(node): State<Node>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": &*node.name,
        "region": &*node.region,
        "healthy": node.healthy.load(Ordering::Relaxed),
    }))
}

async fn ready(State(node): State<Node>) -> Response {
    if node.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn set_health(State(node): State<Node>, Path(state): Path<String>) -> Response {
    let healthy = match state.as_str() {
        "up" => true,
        "down" => false,
        _ => {
            return (StatusCode::BAD_REQUEST, "use /admin/health/up or /admin/health/down\n").into_response();
        }
    };
    node.healthy.store(healthy, Ordering::Relaxed);
    tracing::info!(node = %node.name, healthy, "health switched");
    (StatusCode::OK, format!("{state}\n")).into_response()
}

/// Serve until SIGINT/SIGTERM.
pub async fn serve(listen: SocketAddr, name: &str, region: &str) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, %name, %region, "PSI app node serving");
    let stop = CancellationToken::new();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        crate::runtime::shutdown_signal().await;
        signal_stop.cancel();
    });
    axum::serve(listener, router(name, region))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
