//! One shape for every loop that keeps something outside the process matching what it
//! should be: the kernel's VTEP entries, the VPC route tables, the CiliumVTEPConfig.
//!
//! A [`Target`] does one pass (desired → actual → diff → apply) and says in its
//! [`Outcome`] when it wants to look again. [`drive`] owns everything else: waiting,
//! wake-ups (coalesced: a burst of changes is one pass), the resync, the one jittered and
//! bounded backoff after failures, and stopping. [`while_leading`] runs a target only while
//! this process leads, one fresh target per term.
//!
//! A pass is never interrupted: cancellation and the end of a term are looked at between
//! passes. Dropping a pass half-way would not un-send a request already on the wire, and
//! "stopped" must mean "no write of ours is still in flight". Passes bound their own calls.

use std::future::Future;
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll, StreamExt};
use futures::{FutureExt, Stream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::election::{ElectionHandle, Term};

/// What one pass did, and when the next one should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Writes made (routes, entries, objects); for logs and tests.
    pub changes: u64,
    pub next: Next,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Converged: look again after this long (drift nobody tells us about), or when woken.
    Resync(Duration),
    /// Part of the work failed: retry after the backoff, or when woken.
    Retry,
    /// Nothing to do until something changes (no input yet, nothing configured).
    Idle,
}

impl Outcome {
    pub fn resync(changes: u64, after: Duration) -> Self {
        Outcome {
            changes,
            next: Next::Resync(after),
        }
    }

    pub fn retry(changes: u64) -> Self {
        Outcome {
            changes,
            next: Next::Retry,
        }
    }

    pub fn idle() -> Self {
        Outcome {
            changes: 0,
            next: Next::Idle,
        }
    }
}

/// Something kept in shape by repeated passes.
pub trait Target: Send {
    type Error: Send;

    /// One pass. Must bound its own external calls: the driver never interrupts it.
    fn pass(&mut self) -> impl Future<Output = Result<Outcome, Self::Error>> + Send;

    /// Reports a failed pass (log, status, metrics); the driver then backs off.
    fn failed(&mut self, error: &Self::Error);
}

/// Why [`drive`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Cancelled,
    /// A wake-up source ended (its sender was dropped, its stream finished).
    SourceGone,
}

enum Wake {
    Changed,
    Gone,
}

/// The inputs whose changes call for a pass now rather than at the next resync.
#[derive(Default)]
pub struct Wakeups {
    sources: SelectAll<BoxStream<'static, Wake>>,
}

impl Wakeups {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every change of `rx` (as `watch` sees changes: values published since it last looked).
    pub fn on_change<T: Send + Sync + 'static>(self, rx: watch::Receiver<T>) -> Self {
        let changes = futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok().map(|()| ((), rx))
        });
        self.on_stream(changes)
    }

    /// Every item of `stream`.
    pub fn on_stream(mut self, stream: impl Stream<Item = ()> + Send + 'static) -> Self {
        let wakes = stream
            .map(|()| Wake::Changed)
            .chain(futures::stream::once(async { Wake::Gone }));
        self.sources.push(wakes.boxed());
        self
    }

    /// Waits for a wake-up, then takes every other one already queued with it: a burst of
    /// changes costs one pass. `false` when a source is gone.
    async fn next(&mut self) -> bool {
        if self.sources.is_empty() {
            return std::future::pending().await;
        }
        match self.sources.next().await {
            Some(Wake::Changed) => {}
            Some(Wake::Gone) | None => return false,
        }
        while let Some(more) = self.sources.next().now_or_never() {
            match more {
                Some(Wake::Changed) => {}
                Some(Wake::Gone) | None => return false,
            }
        }
        true
    }
}

/// Runs passes of `target` until `cancel` or until a wake-up source is gone: at once, then
/// whenever woken, after the resync the target asked for, or after the backoff following
/// a failure (a wake-up cuts a backoff short too: the change may be the fix).
pub async fn drive<T: Target>(
    target: &mut T,
    wakeups: &mut Wakeups,
    backoff: Backoff,
    cancel: &CancellationToken,
) -> Stopped {
    let mut failures = 0u32;
    loop {
        if cancel.is_cancelled() {
            return Stopped::Cancelled;
        }
        let wait = match target.pass().await {
            Ok(Outcome {
                next: Next::Resync(after),
                ..
            }) => {
                failures = 0;
                Some(after)
            }
            Ok(Outcome {
                next: Next::Idle, ..
            }) => {
                failures = 0;
                None
            }
            Ok(Outcome {
                next: Next::Retry, ..
            }) => {
                failures += 1;
                Some(backoff.delay(failures - 1))
            }
            Err(e) => {
                target.failed(&e);
                failures += 1;
                Some(backoff.delay(failures - 1))
            }
        };
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Stopped::Cancelled,
            woke = wakeups.next() => if !woke { return Stopped::SourceGone },
            _ = sleep => {}
        }
    }
}

/// Runs a target only while this process leads: for every term, `start(term)` builds a
/// fresh target and its wake-ups, [`drive`] runs it, and the end of the term stops it
/// between passes. Returns on `cancel` or when the election is gone.
pub async fn while_leading<T, F>(
    election: &ElectionHandle,
    mut start: F,
    backoff: Backoff,
    cancel: &CancellationToken,
) where
    T: Target,
    F: FnMut(Term) -> (T, Wakeups),
{
    while let Some(term) = election.wait_for_term(cancel).await {
        let (mut target, mut wakeups) = start(term.clone());
        let term_over = cancel.child_token();
        let run = drive(&mut target, &mut wakeups, backoff, &term_over);
        let ended = term.ended();
        tokio::pin!(run, ended);
        let stopped = tokio::select! {
            s = &mut run => s,
            _ = &mut ended => {
                term_over.cancel();
                run.await
            }
        };
        if cancel.is_cancelled() {
            return;
        }
        if stopped == Stopped::SourceGone {
            // Still leading, but an input ended (a watch that gave up): start over with
            // fresh inputs, not in a tight loop.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff.delay(0)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
