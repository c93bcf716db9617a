//! The two HTTP listeners: `/metrics` for Prometheus, and `/healthz`, `/readyz`, `/status`
//! for health checks and `hybrid-gateway status`. Both default to loopback.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use super::{DaemonStatus, Metrics};

#[derive(Clone)]
struct Shared {
    status: Arc<DaemonStatus>,
    metrics: Arc<Metrics>,
}

pub fn metrics_router(metrics: Arc<Metrics>, status: Arc<DaemonStatus>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(Shared { status, metrics })
}

pub fn health_router(metrics: Arc<Metrics>, status: Arc<DaemonStatus>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .with_state(Shared { status, metrics })
}

async fn metrics_text(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Alive: every supervised part is running (a part being restarted fails this).
async fn healthz(State(s): State<Shared>) -> impl IntoResponse {
    let snap = s.status.snapshot();
    if snap.healthy() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        let down: Vec<String> = snap
            .parts
            .iter()
            .filter(|(_, p)| !p.alive)
            .map(|(n, p)| format!("{n}: {}", p.last_error.as_deref().unwrap_or("not running")))
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {}\n", down.join("; ")),
        )
    }
}

/// Ready: device up, first node sync applied, identity known.
async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    let snap = s.status.snapshot();
    if snap.ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", snap.line()),
        )
    }
}

async fn status_json(State(s): State<Shared>) -> impl IntoResponse {
    Json(s.status.snapshot())
}

/// Serves `router` on an already bound listener (binding first lets start-up fail on a
/// taken port) until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
