//! Runs each part of the daemon as a task and restarts it, with backoff, if it ever ends
//! or panics before shutdown. A part being restarted shows in `/healthz` and stops the
//! systemd watchdog pings; it never takes the process down.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::node_sync::BACKOFF;
use crate::telemetry::status::PartStatus;
use crate::telemetry::DaemonStatus;

pub fn supervise<F, Fut>(
    name: &'static str,
    status: Arc<DaemonStatus>,
    cancel: CancellationToken,
    part: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut restarts = 0u32;
        loop {
            status.update(|s| {
                let p = s
                    .parts
                    .entry(name.to_string())
                    .or_insert_with(PartStatus::default);
                p.alive = true;
            });
            let mut task = tokio::spawn(part());
            let result = tokio::select! {
                r = &mut task => r,
                _ = cancel.cancelled() => {
                    // Parts watch the same token: let them finish cleanly.
                    let _ = task.await;
                    return;
                }
            };
            if cancel.is_cancelled() {
                return;
            }
            restarts += 1;
            let why = match result {
                Ok(()) => "ended unexpectedly".to_string(),
                Err(e) if e.is_panic() => "panicked".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!(part = name, restarts, "{name} {why}; restarting");
            status.update(|s| {
                let p = s
                    .parts
                    .entry(name.to_string())
                    .or_insert_with(PartStatus::default);
                p.alive = false;
                p.restarts = restarts;
                p.last_error = Some(why.clone());
            });
            status.error(format!("{name} {why}"));
            tokio::select! {
                _ = tokio::time::sleep(BACKOFF.delay(restarts - 1)) => {}
                _ = cancel.cancelled() => return,
            }
        }
    })
}
