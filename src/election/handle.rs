//! What leader-only work needs from the election, in one place: wait for office, notice
//! when the term is over, and ask before every write whether this very term still has
//! time left.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ElectionHandle, Leadership};

/// Leadership in one term. A write checks [`Term::remaining`] just before it goes out: it
/// is zero as soon as the election stepped down, and also when leadership was lost and won
/// again in between (a new term), so work planned in an old term never lands in a new one.
#[derive(Clone)]
pub struct Term {
    handle: ElectionHandle,
    term: u32,
}

impl Term {
    pub fn number(&self) -> u32 {
        self.term
    }

    /// Time left before this term must stop acting; zero once it is over.
    pub fn remaining(&self) -> Duration {
        if self.is_current() {
            self.handle.remaining()
        } else {
            Duration::ZERO
        }
    }

    /// Asks the election to move the store's term above `seen` (see
    /// [`ElectionHandle::raise_term_above`]); success ends this term and starts a higher one.
    pub fn raise_term_above(&self, seen: u32) {
        self.handle.raise_term_above(seen);
    }

    /// Whether this process still leads, in this term.
    pub fn is_current(&self) -> bool {
        matches!(*self.handle.leadership.borrow(), Leadership::Leader { term, .. } if term == self.term)
    }

    /// Resolves once this term is over: standby, another term, or the election gone.
    pub async fn ended(&self) {
        let mut rx = self.handle.leadership.clone();
        // `wait_for` looks at the current value first, so an end that already happened is
        // seen at once.
        let _ = rx
            .wait_for(|l| !matches!(l, Leadership::Leader { term, .. } if *term == self.term))
            .await;
    }
}

impl ElectionHandle {
    /// Waits until this process leads and returns that term; `None` on `cancel` or when the
    /// election is gone.
    pub async fn wait_for_term(&self, cancel: &CancellationToken) -> Option<Term> {
        let mut rx = self.leadership.clone();
        let term = tokio::select! {
            _ = cancel.cancelled() => return None,
            l = rx.wait_for(Leadership::is_leader) => match &*l.ok()? {
                Leadership::Leader { term, .. } => *term,
                Leadership::Standby { .. } => return None,
            },
        };
        Some(Term {
            handle: self.clone(),
            term,
        })
    }

    /// Whether this process leads right now.
    pub fn is_leader(&self) -> bool {
        self.leadership.borrow().is_leader()
    }
}

/// Lets tests outside this module (the reconcile driver's) play the election.
#[cfg(test)]
impl super::ElectionPublisher {
    pub(crate) fn test_leader(&self, term: u32, until: tokio::time::Instant) {
        self.leader(jiff::Timestamp::now(), term, until);
    }

    pub(crate) fn test_standby(&self, leader: Option<&str>) {
        self.standby(leader);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::channel;

    #[tokio::test(start_paused = true)]
    async fn a_term_ends_on_standby_and_on_a_new_term() {
        let (publisher, handle) = channel();
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        publisher.test_leader(4, until);
        let term = handle
            .wait_for_term(&CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(term.number(), 4);
        assert_eq!(term.remaining(), Duration::from_secs(2));

        // Lost and won again before anyone looked: the old term has no time left.
        publisher.standby(None);
        publisher.test_leader(5, until);
        assert!(!term.is_current());
        assert_eq!(term.remaining(), Duration::ZERO);
        tokio::time::timeout(Duration::from_millis(1), term.ended())
            .await
            .expect("term 4 is over");
        let next = handle
            .wait_for_term(&CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(next.number(), 5);

        publisher.standby(Some("other"));
        tokio::time::timeout(Duration::from_millis(1), next.ended())
            .await
            .expect("standby ends the term");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_term_stops_on_cancel() {
        let (_publisher, handle) = channel();
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(handle.wait_for_term(&cancel).await.is_none());
    }
}
