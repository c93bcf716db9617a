//! Where one reconcile pass spent its time, step by step: logged at debug level and read
//! by the `vtep_reconcile` bench, so a slow node event can be attributed to its step (the
//! desired state, the address read, one kind of netlink request, the filter's element
//! batch, waiting for a worker thread) instead of guessed at.

use std::time::{Duration, Instant};

/// One pass's steps in the order they ran, plus the latency of every netlink request it
/// made (sent → acknowledged), by kind. Steps can nest (`apply` contains its requests).
#[derive(Debug, Clone, Default)]
pub struct PassTimes {
    pub steps: Vec<(&'static str, Duration)>,
    /// `route`, `neigh` (ARP), `fdb`: one entry per request, its own round trip (requests
    /// of one plan phase are in flight together, so these overlap).
    pub requests: Vec<(&'static str, Duration)>,
}

impl PassTimes {
    /// Records `step` as the time since `since`, and returns now (the next step's start).
    pub fn step(&mut self, step: &'static str, since: Instant) -> Instant {
        let now = Instant::now();
        self.steps.push((step, now - since));
        now
    }

    pub fn add(&mut self, step: &'static str, took: Duration) {
        self.steps.push((step, took));
    }

    /// The total of the steps called `step` (zero when there was none).
    pub fn of(&self, step: &str) -> Duration {
        self.steps
            .iter()
            .filter(|(s, _)| *s == step)
            .map(|(_, d)| *d)
            .sum()
    }
}

impl std::fmt::Display for PassTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, d)) in self.steps.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{step} {:.3} ms", d.as_secs_f64() * 1e3)?;
        }
        for (kind, d) in &self.requests {
            write!(f, ", {kind} request {:.3} ms", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}
