//! Talking to systemd: READY once the gateway can carry traffic, a STATUS line that follows
//! the daemon's state, watchdog pings only while every supervised part runs, STOPPING.
//! Outside systemd (no NOTIFY_SOCKET) every call is a no-op.

use std::sync::Arc;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::telemetry::DaemonStatus;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// Sends STATUS= on every change and READY=1 the first time the daemon is ready.
pub async fn status_notifier(status: Arc<DaemonStatus>, cancel: CancellationToken) {
    let mut ready_sent = false;
    let mut last = String::new();
    loop {
        let changed = status.changed.notified();
        let snap = status.snapshot();
        let line = snap.line();
        if line != last {
            notify(&[NotifyState::Status(&line)]);
            last = line;
        }
        if snap.ready() && !ready_sent {
            notify(&[NotifyState::Ready]);
            tracing::info!("ready: {last}");
            ready_sent = true;
        }
        tokio::select! {
            _ = changed => {}
            // Changes that do not notify (time passing) still refresh the line now and then.
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// WATCHDOG=1 at half the WatchdogSec interval, but only while every part is alive: a
/// part stuck in restarts lets systemd restart the whole daemon.
pub async fn watchdog(status: Arc<DaemonStatus>, cancel: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = interval / 2;
    loop {
        if status.snapshot().healthy() {
            notify(&[NotifyState::Watchdog]);
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

pub fn reloaded() {
    notify(&[NotifyState::Ready]);
}
