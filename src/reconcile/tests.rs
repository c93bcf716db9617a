//! The driver under paused time: what runs when, and what never runs.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;
use crate::election::channel;

const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// Records when each pass started (relative to the test's start) and answers from a script.
struct Probe {
    t0: Instant,
    passes: Arc<Mutex<Vec<Duration>>>,
    answer: fn(usize) -> Result<Outcome, String>,
    /// How long each pass takes.
    busy: Duration,
    finished: Arc<Mutex<usize>>,
    failures_seen: usize,
}

impl Probe {
    fn new(answer: fn(usize) -> Result<Outcome, String>) -> Self {
        Probe {
            t0: Instant::now(),
            passes: Arc::default(),
            answer,
            busy: Duration::ZERO,
            finished: Arc::default(),
            failures_seen: 0,
        }
    }
}

impl Target for Probe {
    type Error = String;

    async fn pass(&mut self) -> Result<Outcome, String> {
        let n = {
            let mut p = self.passes.lock().unwrap();
            p.push(self.t0.elapsed());
            p.len() - 1
        };
        tokio::time::sleep(self.busy).await;
        *self.finished.lock().unwrap() += 1;
        (self.answer)(n)
    }

    fn failed(&mut self, _: &String) {
        self.failures_seen += 1;
    }
}

fn channel_wakeups() -> (mpsc::UnboundedSender<()>, Wakeups) {
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let stream = futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|()| ((), rx)) },
    );
    (tx, Wakeups::new().on_stream(stream))
}

fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

#[tokio::test(start_paused = true)]
async fn resyncs_at_the_interval_the_target_asks_for() {
    let mut probe = Probe::new(|_| Ok(Outcome::resync(0, Duration::from_secs(10))));
    let passes = probe.passes.clone();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(35)).await;
        c.cancel();
    });
    let stopped = drive(&mut probe, &mut Wakeups::new(), BACKOFF, &cancel).await;
    assert_eq!(stopped, Stopped::Cancelled);
    let secs: Vec<u64> = passes.lock().unwrap().iter().map(|d| d.as_secs()).collect();
    assert_eq!(secs, [0, 10, 20, 30]);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_wakeups_is_one_pass() {
    let mut probe = Probe::new(|_| Ok(Outcome::idle()));
    let passes = probe.passes.clone();
    let (tx, mut wakeups) = channel_wakeups();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(ms(500)).await;
        for _ in 0..5 {
            tx.send(()).unwrap();
        }
        tokio::time::sleep(ms(500)).await;
        tx.send(()).unwrap();
        tokio::time::sleep(ms(500)).await;
        c.cancel();
        drop(tx);
    });
    drive(&mut probe, &mut wakeups, BACKOFF, &cancel).await;
    let at: Vec<u128> = passes
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.as_millis())
        .collect();
    // The first pass, one for the burst of five, one for the single wake-up; idle between.
    assert_eq!(at, [0, 500, 1000]);
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_with_jitter_up_to_the_cap() {
    let mut probe = Probe::new(|_| Err("boom".into()));
    let passes = probe.passes.clone();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        c.cancel();
    });
    drive(&mut probe, &mut Wakeups::new(), BACKOFF, &cancel).await;
    let at = passes.lock().unwrap().clone();
    assert_eq!(probe.failures_seen, at.len());
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() > 30, "{gaps:?}");
    for (n, gap) in gaps.iter().enumerate() {
        let full = BACKOFF.base.saturating_mul(1 << n.min(16)).min(BACKOFF.cap);
        assert!(
            *gap >= full / 2 && *gap <= full,
            "retry {n} after {gap:?}, outside {:?}..={full:?}",
            full / 2
        );
    }
    let capped: std::collections::HashSet<_> = gaps[10..].iter().collect();
    assert!(capped.len() > 1, "no jitter at the cap: {gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn partial_failure_backs_off_and_success_resets_the_backoff() {
    // Retry, Retry, Retry, converge, Retry, converge: the last retry starts from the base
    // again.
    let mut probe = Probe::new(|n| match n {
        3 | 5 => Ok(Outcome::resync(1, Duration::from_secs(30))),
        _ => Ok(Outcome::retry(1)),
    });
    let passes = probe.passes.clone();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(31)).await;
        c.cancel();
    });
    drive(&mut probe, &mut Wakeups::new(), BACKOFF, &cancel).await;
    let at = passes.lock().unwrap().clone();
    assert_eq!(at.len(), 6, "{at:?}");
    let gap = |i: usize| at[i + 1] - at[i];
    assert!(gap(0) <= ms(100) && gap(1) <= ms(200) && gap(2) <= ms(400));
    assert_eq!(gap(3), Duration::from_secs(30));
    assert!(gap(4) <= ms(100), "backoff not reset: {:?}", gap(4));
}

#[tokio::test(start_paused = true)]
async fn a_wakeup_cuts_a_backoff_short() {
    let mut probe = Probe::new(|n| match n {
        0 => Err("boom".into()),
        _ => Ok(Outcome::idle()),
    });
    // A long backoff, so only the wake-up can explain the second pass.
    let slow = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
    let passes = probe.passes.clone();
    let (tx, mut wakeups) = channel_wakeups();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(ms(250)).await;
        tx.send(()).unwrap();
        tokio::time::sleep(ms(250)).await;
        c.cancel();
        drop(tx);
    });
    drive(&mut probe, &mut wakeups, slow, &cancel).await;
    let at: Vec<u128> = passes
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.as_millis())
        .collect();
    assert_eq!(at, [0, 250]);
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_between_passes_never_inside_one() {
    let mut probe = Probe::new(|_| Ok(Outcome::resync(0, Duration::from_secs(10))));
    probe.busy = Duration::from_secs(1);
    let finished = probe.finished.clone();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(ms(300)).await;
        c.cancel();
    });
    let t0 = Instant::now();
    let stopped = drive(&mut probe, &mut Wakeups::new(), BACKOFF, &cancel).await;
    assert_eq!(stopped, Stopped::Cancelled);
    assert_eq!(*finished.lock().unwrap(), 1, "the pass in flight completed");
    assert_eq!(t0.elapsed(), Duration::from_secs(1), "and nothing after it");

    // Cancelled while waiting: returns at once.
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.cancel();
    });
    let t0 = Instant::now();
    drive(&mut probe, &mut Wakeups::new(), BACKOFF, &cancel).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_closed_source_stops_the_driver() {
    let mut probe = Probe::new(|_| Ok(Outcome::idle()));
    let (tx, rx) = watch::channel(0u32);
    let mut wakeups = Wakeups::new().on_change(rx);
    tokio::spawn(async move {
        tokio::time::sleep(ms(100)).await;
        tx.send_replace(1);
        tokio::time::sleep(ms(100)).await;
        drop(tx);
    });
    let stopped = drive(&mut probe, &mut wakeups, BACKOFF, &CancellationToken::new()).await;
    assert_eq!(stopped, Stopped::SourceGone);
    assert_eq!(probe.passes.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn leader_only_targets_run_per_term_and_stop_when_it_ends() {
    let (publisher, handle) = channel();
    let terms: Arc<Mutex<Vec<(u32, Duration)>>> = Arc::default();
    let passes: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let t0 = Instant::now();
    let cancel = CancellationToken::new();
    let runner = {
        let (handle, terms, passes, cancel) = (
            handle.clone(),
            terms.clone(),
            passes.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            while_leading(
                &handle,
                |term| {
                    terms.lock().unwrap().push((term.number(), t0.elapsed()));
                    let mut p = Probe::new(|_| Ok(Outcome::resync(0, Duration::from_secs(1))));
                    p.t0 = t0;
                    p.passes = passes.clone();
                    (p, Wakeups::new())
                },
                BACKOFF,
                &cancel,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let far = Instant::now() + Duration::from_secs(3600);
    publisher.test_leader(7, far);
    tokio::time::sleep(ms(1500)).await;
    publisher.test_standby(Some("other"));
    tokio::time::sleep(ms(5500)).await;
    publisher.test_leader(9, far);
    tokio::time::sleep(ms(10)).await;
    cancel.cancel();
    runner.await.unwrap();
    assert_eq!(
        *terms.lock().unwrap(),
        [(7, Duration::from_secs(5)), (9, Duration::from_secs(12))]
    );
    let secs: Vec<u64> = passes.lock().unwrap().iter().map(|d| d.as_secs()).collect();
    assert_eq!(secs, [5, 6, 12], "passes only while leading");
}
