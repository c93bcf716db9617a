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
    // The device and readiness gauges say what the kernel holds now, not what the last
    // pass found.
    let written = s.status.snapshot().nodes_from_snapshot;
    s.metrics
        .nodes_from_snapshot
        .set(i64::from(written.is_some()));
    s.metrics
        .nodes_snapshot_age_seconds
        .set(written.map_or(0, |w| (jiff::Timestamp::now().as_second() - w).max(0)));
    if let Some(live) = s.status.live().await {
        s.metrics.vxlan_interface_up.set(i64::from(live.device_up));
        s.metrics.ready.set(i64::from(
            s.status.snapshot().ready() && live.problems.is_empty(),
        ));
    }
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

/// Ready: device up, first node sync applied, identity known — and the kernel, looked at
/// now, still has the device up and forwarding on (drift since the last pass counts).
async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    let snap = s.status.snapshot();
    let live = s.status.live().await.unwrap_or_default();
    if snap.ready() && live.problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else if !snap.ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", snap.line()),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: datapath broken: {}\n", live.problems.join("; ")),
        )
    }
}

async fn status_json(State(s): State<Shared>) -> impl IntoResponse {
    Json(s.status.snapshot())
}

/// What one HTTP listener allows a client. The endpoints answer from memory in
/// microseconds, so anything slower is a stuck or hostile client; these keep it from
/// holding the listener (or the daemon's file descriptors).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this long; also how long an idle keep-alive
    /// connection may wait for its next request (hyper arms the same timer for both).
    pub header_read_timeout: std::time::Duration,
    /// A connection is asked to close (after its current response) at this age, and
    /// dropped a few seconds later: bounds a client that reads its response slowly.
    pub max_connection_age: std::time::Duration,
    /// Connections served at once; further clients wait in the kernel's accept backlog
    /// until one of these closes (by the timeouts above at the latest).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: std::time::Duration::from_secs(5),
            max_connection_age: std::time::Duration::from_secs(60),
            max_connections: 64,
        }
    }
}

/// Serves `router` on an already bound listener (binding first lets start-up fail on a
/// taken port) until `cancel`, with the default [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, cancel, Limits::default()).await
}

/// [`serve`] with explicit limits. axum's own `serve` sets no timer, so hyper's header-read
/// timeout never fires there and a client that sends half a request holds its connection
/// (and a file descriptor) forever; this accept loop sets the timer and caps connections.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
    limits: Limits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        // Take a slot before accepting: at the cap, new clients queue in the backlog
        // instead of being accepted and starved.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return Ok(()), // never closed; nothing left to serve if it were
            },
            _ = cancel.cancelled() => return Ok(()),
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: transient; do not spin on it.
                    tracing::warn!("accepting an HTTP connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => return Ok(()),
        };
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let (cancel, age) = (cancel.clone(), limits.max_connection_age);
        tokio::spawn(async move {
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("HTTP connection: {e}");
                    }
                    return;
                }
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(age) => {}
            }
            // Shutting down or too old: finish the response in flight, then close; a
            // client that does not read it loses the connection shortly after.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn server(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(DaemonStatus::new("test"));
        let metrics = Arc::new(Metrics::new(
            &crate::telemetry::GatewayInfo::named("test"),
            Arc::new(crate::k8s::cilium_nodes::NodeWatchStats::default()),
        ));
        let cancel = CancellationToken::new();
        tokio::spawn(serve_with(
            listener,
            health_router(metrics, status),
            cancel.clone(),
            limits,
        ));
        (addr, cancel)
    }

    /// Half a request line, then nothing: a slow-loris client.
    async fn slow_client(addr: std::net::SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        s
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        max_connection_age: Duration::from_secs(30),
        max_connections: 4,
    };

    #[tokio::test]
    async fn slow_clients_are_cut_at_the_header_read_timeout() {
        let (addr, cancel) = server(LIMITS).await;
        let mut slow = slow_client(addr).await;
        let t0 = Instant::now();
        let mut buf = [0u8; 256];
        // The server closes it (EOF or a 408 then EOF) instead of waiting forever.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match slow.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a half-sent request held its connection for 5 s"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t0.elapsed()
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn slow_clients_cannot_hold_the_listener() {
        let (addr, cancel) = server(LIMITS).await;
        // More slow clients than the cap: every slot is taken...
        let mut held = Vec::new();
        for _ in 0..LIMITS.max_connections * 3 {
            held.push(slow_client(addr).await);
        }
        // ...yet a real request is answered once the timeout frees them, not never.
        let t0 = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), get(addr, "/healthz"))
            .await
            .expect("the listener stayed blocked by slow clients");
        assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        drop(held);
        cancel.cancel();
    }

    #[tokio::test]
    async fn connections_are_capped() {
        let (addr, cancel) = server(Limits {
            header_read_timeout: Duration::from_secs(30),
            ..LIMITS
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..LIMITS.max_connections {
            held.push(slow_client(addr).await);
        }
        // At the cap a new client waits in the backlog...
        assert!(
            tokio::time::timeout(Duration::from_millis(500), get(addr, "/healthz"))
                .await
                .is_err(),
            "served beyond max_connections"
        );
        // ...and is served as soon as a slot frees up.
        held.pop();
        let answer = tokio::time::timeout(Duration::from_secs(3), get(addr, "/healthz"))
            .await
            .expect("not served after a slot was freed");
        assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
        cancel.cancel();
    }
}
