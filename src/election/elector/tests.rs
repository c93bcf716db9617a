use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use tokio::time::{advance, Instant};

use super::*;

/// An in-memory store with the same optimistic-concurrency contract as the real ones.
#[derive(Default)]
struct MemStore {
    state: Mutex<Option<(LeaderRecord, u64)>>,
    /// Every successful write: when, and the holder it wrote.
    writes: Mutex<Vec<(Instant, String)>>,
}

impl MemStore {
    fn delete(&self) {
        *self.state.lock().unwrap() = None;
    }
    fn overwrite(&self, f: impl FnOnce(&mut LeaderRecord)) {
        let mut s = self.state.lock().unwrap();
        let (rec, v) = s.as_mut().unwrap();
        f(rec);
        *v += 1;
    }
    fn record(&self) -> LeaderRecord {
        self.state.lock().unwrap().as_ref().unwrap().0.clone()
    }
}

impl LockStore for &MemStore {
    async fn get(&self) -> Result<Option<Observed>, LockError> {
        Ok(self.state.lock().unwrap().as_ref().map(|(r, v)| Observed {
            record: r.clone(),
            version: v.to_string(),
        }))
    }
    async fn create(&self, record: &LeaderRecord) -> Result<Observed, LockError> {
        let mut s = self.state.lock().unwrap();
        if s.is_some() {
            return Err(LockError::Conflict);
        }
        *s = Some((record.clone(), 1));
        self.writes
            .lock()
            .unwrap()
            .push((Instant::now(), record.holder.clone()));
        Ok(Observed {
            record: record.clone(),
            version: "1".into(),
        })
    }
    async fn update(
        &self,
        previous: &Observed,
        record: &LeaderRecord,
    ) -> Result<Observed, LockError> {
        let mut s = self.state.lock().unwrap();
        let Some((r, v)) = s.as_mut() else {
            return Err(LockError::Conflict);
        };
        if v.to_string() != previous.version {
            return Err(LockError::Conflict);
        }
        *r = record.clone();
        *v += 1;
        self.writes
            .lock()
            .unwrap()
            .push((Instant::now(), record.holder.clone()));
        Ok(Observed {
            record: record.clone(),
            version: v.to_string(),
        })
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

const T: Timings = Timings {
    lease_duration: Duration::from_secs(3),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_secs(1),
};

async fn tick<S: LockStore>(e: &mut Elector<S>) -> bool {
    e.try_acquire_or_renew(Timestamp::now()).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn first_comer_wins_and_the_other_waits_a_full_lease_from_its_own_observation() {
    let store = MemStore::default();
    let mut a = Elector::new(&store, "a".into(), T);
    let mut b = Elector::new(&store, "b".into(), T);
    assert!(tick(&mut a).await);
    assert_eq!(store.record().transitions, 0);
    assert!(!tick(&mut b).await);
    assert_eq!(b.observed_holder(), Some("a"));
    // a stops renewing (crash). b saw the record at t=0: it must wait 3 s by its own clock.
    advance(Duration::from_millis(2900)).await;
    assert!(!tick(&mut b).await, "took over before the lease expired");
    advance(Duration::from_millis(200)).await;
    assert!(tick(&mut b).await);
    let rec = store.record();
    assert_eq!((rec.holder.as_str(), rec.transitions), ("b", 1));
}

#[tokio::test(start_paused = true)]
async fn expiry_ignores_the_holders_renew_time() {
    let store = MemStore::default();
    let mut a = Elector::new(&store, "a".into(), T);
    let mut b = Elector::new(&store, "b".into(), T);
    assert!(tick(&mut a).await);
    // The holder's clock is an hour behind: its renewTime looks ancient. Irrelevant.
    store
        .overwrite(|r| r.renew_time = Some(Timestamp::now() - jiff::SignedDuration::from_hours(1)));
    assert!(!tick(&mut b).await);
    advance(Duration::from_secs(2)).await;
    assert!(!tick(&mut b).await);
}

#[tokio::test(start_paused = true)]
async fn renewals_restart_the_observers_clock_and_keep_term_and_acquire_time() {
    let store = MemStore::default();
    let mut a = Elector::new(&store, "a".into(), T);
    let mut b = Elector::new(&store, "b".into(), T);
    assert!(tick(&mut a).await);
    let acquired = store.record().acquire_time;
    for _ in 0..5 {
        advance(Duration::from_secs(2)).await;
        assert!(tick(&mut a).await);
        assert!(
            !tick(&mut b).await,
            "b took over a lease that was being renewed"
        );
    }
    let rec = store.record();
    assert_eq!((rec.transitions, rec.acquire_time), (0, acquired));
    assert!(rec.renew_time > acquired);
}

#[tokio::test(start_paused = true)]
async fn release_lets_the_standby_in_at_once_and_keeps_the_term() {
    let store = MemStore::default();
    let mut a = Elector::new(&store, "a".into(), T);
    let mut b = Elector::new(&store, "b".into(), T);
    assert!(tick(&mut a).await);
    assert!(!tick(&mut b).await);
    assert!(a.release(Timestamp::now()).await.unwrap());
    let rec = store.record();
    assert_eq!(
        (rec.holder.as_str(), rec.transitions, rec.lease_duration),
        ("", 0, Duration::from_secs(1))
    );
    assert!(!a.is_leader());
    assert!(
        tick(&mut b).await,
        "an empty holder must be taken without waiting"
    );
    assert_eq!(store.record().transitions, 1);
    // Releasing when not leader writes nothing.
    assert!(!a.release(Timestamp::now()).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_hand_edited_holder_makes_the_leader_lose() {
    let store = MemStore::default();
    let mut a = Elector::new(&store, "a".into(), T);
    assert!(tick(&mut a).await);
    store.overwrite(|r| r.holder = "someone-else".into());
    advance(Duration::from_secs(1)).await;
    assert!(
        !tick(&mut a).await,
        "the fast path must not overwrite a foreign holder"
    );
    assert_eq!(a.observed_holder(), Some("someone-else"));
    assert_eq!(store.record().holder, "someone-else");
}

#[tokio::test(start_paused = true)]
async fn two_contenders_racing_on_one_version_cannot_both_win() {
    let store = MemStore::default();
    let mut a = Elector::new(&store, "a".into(), T);
    let mut b = Elector::new(&store, "b".into(), T);
    let mut c = Elector::new(&store, "c".into(), T);
    assert!(tick(&mut c).await);
    assert!(!tick(&mut a).await);
    assert!(!tick(&mut b).await);
    advance(Duration::from_secs(4)).await;
    // Both see the same expired version; only the first write may succeed.
    let seen = (&store).get().await.unwrap().unwrap();
    let mut rec = seen.record.clone();
    rec.holder = "a".into();
    (&store).update(&seen, &rec).await.unwrap();
    assert!(
        !tick(&mut b).await,
        "b must see a's fresh record, not win on the old version"
    );
}

#[tokio::test(start_paused = true)]
async fn creating_on_an_empty_store_and_losing_the_create_race() {
    let store = MemStore::default();
    let mut a = Elector::new(&store, "a".into(), T);
    assert!(tick(&mut a).await);
    assert!(a.is_leader());
    assert_eq!(a.observed_term(), Some(0));
}

/// A store whose reads take as long as the test says: the read happens (the record is
/// taken) at the *end* of the delay, as a GET answered late reflects the store as of late.
struct SlowReads<'a> {
    inner: &'a MemStore,
    delays: Mutex<VecDeque<Duration>>,
}

impl<'a> SlowReads<'a> {
    fn new(inner: &'a MemStore, delays: &[Duration]) -> Self {
        SlowReads {
            inner,
            delays: Mutex::new(delays.iter().copied().collect()),
        }
    }
}

impl LockStore for &SlowReads<'_> {
    async fn get(&self) -> Result<Option<Observed>, LockError> {
        let delay = self.delays.lock().unwrap().pop_front().unwrap_or_default();
        tokio::time::sleep(delay).await;
        LockStore::get(&self.inner).await
    }
    async fn create(&self, record: &LeaderRecord) -> Result<Observed, LockError> {
        LockStore::create(&self.inner, record).await
    }
    async fn update(
        &self,
        previous: &Observed,
        record: &LeaderRecord,
    ) -> Result<Observed, LockError> {
        LockStore::update(&self.inner, previous, record).await
    }
    fn describe(&self) -> String {
        "slow memory".into()
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Finding 1 of issue 10. A standby's GET is sent at S = 0 and answered 1 s later (the
/// store timeout with the default timings), after the leader renewed at 0.9 s. Had the
/// standby stamped its observation at S, it would take over at 3 s while the leader —
/// with `renew_deadline = "2.5s"`, which config used to accept — acts until 3.4 s. The
/// observation is stamped when the read returns (1 s), so the standby waits until 4 s.
#[tokio::test(start_paused = true)]
async fn a_slow_read_starts_the_standbys_clock_when_it_returns_not_when_it_was_sent() {
    const T25: Timings = Timings {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_millis(2500),
        retry_period: Duration::from_secs(1),
    };
    let store = MemStore::default();
    let slow = SlowReads::new(&store, &[ms(1000)]);
    let mut a = Elector::new(&store, "a".into(), T25);
    let mut b = Elector::new(&slow, "b".into(), T25);
    let t0 = Instant::now();
    assert!(tick(&mut a).await);
    let (b_won, renewed_at) = tokio::join!(tick(&mut b), async {
        tokio::time::sleep(ms(900)).await;
        let started = Instant::now();
        assert!(tick(&mut a).await);
        started
    });
    assert!(!b_won);
    assert_eq!(Instant::now() - t0, ms(1000));
    // a now stops renewing (crashed or paused); it acts until its last renewal's start +
    // renew deadline.
    let a_acts_until = renewed_at + T25.renew_deadline;
    tokio::time::sleep_until(t0 + ms(3050)).await;
    assert!(Instant::now() < a_acts_until);
    assert!(
        !tick(&mut b).await,
        "b took over at {:?} while a acts until {:?}",
        Instant::now() - t0,
        a_acts_until - t0
    );
    tokio::time::sleep_until(t0 + ms(4001)).await;
    assert!(
        tick(&mut b).await,
        "b must take over one lease after its read returned"
    );
}

/// Finding 6 of issue 10: an edit that changes only the object's version (a label on the
/// Lease) is no renewal and must not restart the standby's clock (client-go compares the
/// record, not the resourceVersion).
#[tokio::test(start_paused = true)]
async fn an_edit_that_leaves_the_record_alone_does_not_restart_the_clock() {
    let store = MemStore::default();
    let mut a = Elector::new(&store, "a".into(), T);
    let mut b = Elector::new(&store, "b".into(), T);
    assert!(tick(&mut a).await);
    assert!(!tick(&mut b).await);
    advance(ms(2000)).await;
    store.overwrite(|_| {}); // new version, same record
    assert!(!tick(&mut b).await);
    advance(ms(1100)).await;
    assert!(
        tick(&mut b).await,
        "the label edit restarted the clock: takeover delayed"
    );
}

/// Finding 6 of issue 10: a renewal that timed out but landed leaves the leader a version
/// behind; its release must still free the record instead of failing with a conflict.
#[tokio::test(start_paused = true)]
async fn release_after_a_renewal_that_landed_unseen_still_frees_the_record() {
    let store = MemStore::default();
    let mut a = Elector::new(&store, "a".into(), T);
    assert!(tick(&mut a).await);
    // The "lost" renewal: the store moved on, still naming a.
    store.overwrite(|r| r.renew_time = Some(Timestamp::now()));
    assert!(a.release(Timestamp::now()).await.unwrap());
    assert_eq!(store.record().holder, "");
}

/// A deleted record (kubectl delete lease, the lock item gone) must not let a standby act
/// while the holder it saw may still act; and the term carries on from what it saw.
#[tokio::test(start_paused = true)]
async fn a_deleted_record_is_recreated_only_after_the_holders_lease_and_keeps_counting() {
    let store = MemStore::default();
    let mut a = Elector::new(&store, "a".into(), T);
    let mut b = Elector::new(&store, "b".into(), T);
    assert!(tick(&mut a).await);
    a.raise_term(6);
    assert!(tick(&mut a).await);
    assert_eq!(store.record().transitions, 6);
    assert!(!tick(&mut b).await);
    store.delete();
    advance(ms(1000)).await;
    assert!(
        !tick(&mut b).await,
        "b recreated the record while a may still act"
    );
    advance(ms(2100)).await;
    assert!(tick(&mut b).await);
    assert_eq!(
        (store.record().holder.as_str(), store.record().transitions),
        ("b", 7)
    );
}

/// The fence's lever: a raised term is written at the next renewal (conditionally, like
/// every write), and later holders count on from it.
#[tokio::test(start_paused = true)]
async fn a_raised_term_is_written_by_the_holder_and_counted_on_by_the_next() {
    let store = MemStore::default();
    let mut a = Elector::new(&store, "a".into(), T);
    let mut b = Elector::new(&store, "b".into(), T);
    assert!(tick(&mut a).await);
    a.raise_term(41);
    assert!(tick(&mut a).await);
    assert_eq!(a.observed_term(), Some(41));
    // A deposed holder cannot raise: its conditional write fails.
    assert!(!tick(&mut b).await);
    advance(ms(3100)).await;
    assert!(tick(&mut b).await);
    assert_eq!(store.record().transitions, 42);
    a.raise_term(99);
    assert!(!tick(&mut a).await);
    assert_eq!(store.record().transitions, 42);
}

// ------------------------------------------------------ health-aware leadership ---

mod health {
    use super::*;
    use crate::election::advisor::{Advisor, HealthInputs};
    use crate::election::health::{HealthRules, PeerScore};
    use crate::election::{channel, run, run_advised, Leadership};
    use crate::probe::health::Score;
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    fn score(up: usize, down: usize) -> Option<Score> {
        Some(Score {
            up,
            down,
            unknown: 0,
        })
    }

    /// One contender's health: its own score (set by the test) and its view of the
    /// other's, republished every 500 ms as a live peer's would be.
    struct Side {
        own: watch::Sender<Option<Score>>,
        peers: watch::Sender<Vec<PeerScore>>,
    }

    fn side() -> (Side, HealthInputs) {
        let (own, own_rx) = watch::channel(score(1, 0));
        let (peers, peers_rx) = watch::channel(Vec::new());
        (
            Side { own, peers },
            HealthInputs::new(own_rx, peers_rx, HealthRules::default()),
        )
    }

    /// Every 500 ms until `stop`: each side sees the other's current score, fresh.
    async fn heartbeats(a: &Side, b: &Side, a_alive: &CancellationToken, stop: &CancellationToken) {
        let ratio = |s: &Side| s.own.borrow().and_then(|s| s.ratio()).unwrap_or(0.0);
        while !stop.is_cancelled() {
            let now = Instant::now();
            if !a_alive.is_cancelled() {
                b.peers.send_replace(vec![PeerScore {
                    identity: "a".into(),
                    ratio: ratio(a),
                    seen_changed_at: now,
                }]);
            }
            a.peers.send_replace(vec![PeerScore {
                identity: "b".into(),
                ratio: ratio(b),
                seen_changed_at: now,
            }]);
            tokio::select! {
                _ = tokio::time::sleep(ms(500)) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    fn writes_of(store: &MemStore) -> Vec<(Instant, String)> {
        store.writes.lock().unwrap().clone()
    }

    /// A leader whose tunnels break (0 % against the standby's 100 %) hands over after the
    /// hold-down, the way a stop does: Standby published first, the lock released only
    /// once the hold of its last renewal has run out (no write of its term can still
    /// land), then the peer takes it; the worse gateway does not take it back.
    /// `wired = false` is the daemon before issue 15 (leadership follows liveness only).
    async fn one_sided_break(wired: bool) -> Result<(), String> {
        let store = MemStore::default();
        let (sa, ha) = side();
        let (sb, hb) = side();
        let (handovers, handed) = watch::channel(None);
        let mut adv_a = Advisor::new(ha, handovers);
        let mut adv_b = Advisor::new(hb, watch::channel(None).0);
        let mut a = Elector::new(&store, "a".into(), T);
        let mut b = Elector::new(&store, "b".into(), T);
        let (pa, ha_) = channel();
        let mut la = ha_.leadership;
        let (pb, hb_) = channel();
        let lb = hb_.leadership;
        let (ca, cb, stop, alive) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let run_a = async {
            if wired {
                run_advised(&mut a, &pa, None, Some(&mut adv_a), ca.clone()).await
            } else {
                run(&mut a, &pa, None, ca.clone()).await
            }
        };
        let run_b = async {
            // a goes first.
            tokio::time::sleep(ms(100)).await;
            run_advised(&mut b, &pb, None, Some(&mut adv_b), cb.clone()).await
        };
        let script = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert!(la.borrow().is_leader(), "a leads before the break");
            let broke = Instant::now();
            sa.own.send_replace(score(0, 1));
            let _ = tokio::time::timeout(Duration::from_secs(30), la.wait_for(|l| !l.is_leader()))
                .await;
            let stood_down = Instant::now();
            tokio::time::sleep(Duration::from_secs(25)).await;
            let b_leads = lb.borrow().is_leader();
            ca.cancel();
            cb.cancel();
            stop.cancel();
            (broke, stood_down, b_leads)
        };
        let ((), (), (broke, stood_down, b_leads), ()) =
            tokio::join!(run_a, run_b, script, heartbeats(&sa, &sb, &alive, &stop));
        let writes = writes_of(&store);
        let released = writes
            .iter()
            .find(|(t, h)| *t >= broke && h.is_empty())
            .map(|(t, _)| *t)
            .ok_or_else(|| format!("a never released the lock: {writes:?}"))?;
        let last_renewal = writes
            .iter()
            .filter(|(t, h)| *t < released && h == "a")
            .map(|(t, _)| *t)
            .max()
            .unwrap();
        let rules = HealthRules::default();
        assert!(
            stood_down - broke >= rules.hold_down,
            "handed over {:?} after the break, before the hold-down",
            stood_down - broke
        );
        assert!(stood_down <= released, "released before standing down");
        assert!(
            released >= last_renewal + T.renew_deadline,
            "released {:?} after the last renewal, before its hold ({:?}) ran out",
            released - last_renewal,
            T.renew_deadline
        );
        let taken = writes
            .iter()
            .find(|(t, h)| *t > released && h == "b")
            .map(|(t, _)| *t)
            .ok_or("b never took the lock")?;
        assert!(
            taken - released <= Duration::from_millis(2500),
            "b took {:?}",
            taken - released
        );
        assert!(
            !writes.iter().any(|(t, h)| *t > released && h == "a"),
            "a took the lock back while its tunnels were broken: {writes:?}"
        );
        assert!(b_leads, "b does not lead at the end");
        let h = handed.borrow().clone().expect("the handover is reported");
        assert_eq!((h.to.as_str(), h.own, h.peer), ("b", 0.0, 1.0));
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_with_broken_tunnels_hands_over_as_a_stop_does() {
        one_sided_break(true).await.unwrap();
    }

    /// Without the wiring the broken leader keeps the lock: the test above can fail.
    #[tokio::test(start_paused = true)]
    async fn without_health_the_broken_leader_keeps_the_lock() {
        let e = one_sided_break(false).await.unwrap_err();
        assert!(e.contains("never released"), "{e}");
    }

    /// Fast timings (1 s lease): the leader dies while a standby whose probes answer
    /// through the leader's VTEP scores 0 % against the dead leader's last, still fresh,
    /// 100 %. The dead holder's score must not keep the standby out: it takes over when
    /// the lease runs out, not when that score goes stale (2.5 s).
    #[tokio::test(start_paused = true)]
    async fn a_standby_worse_than_a_dead_leader_still_takes_over_at_expiry() {
        const FAST: Timings = Timings {
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(600),
            retry_period: Duration::from_millis(250),
        };
        let store = MemStore::default();
        let (sa, ha) = side();
        let (sb, hb) = side();
        let mut adv_a = Advisor::new(ha, watch::channel(None).0);
        let mut adv_b = Advisor::new(hb, watch::channel(None).0);
        let mut a = Elector::new(&store, "a".into(), FAST);
        let mut b = Elector::new(&store, "b".into(), FAST);
        let (pa, ha_) = channel();
        let la = ha_.leadership;
        let (pb, hb_) = channel();
        let mut lb = hb_.leadership;
        let (ca, cb, stop, alive) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let run_a = run_advised(&mut a, &pa, None, Some(&mut adv_a), ca.clone());
        let run_b = async {
            tokio::time::sleep(ms(100)).await;
            run_advised(&mut b, &pb, None, Some(&mut adv_b), cb.clone()).await
        };
        let script = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(la.borrow().is_leader());
            // a dies (no release); its last score stays fresh for b for 2.5 s, and b's
            // own probes fail at once (their replies went through a).
            ca.cancel();
            alive.cancel();
            sb.own.send_replace(score(0, 1));
            let died = Instant::now();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), lb.wait_for(Leadership::is_leader))
                    .await;
            let took = Instant::now() - died;
            cb.cancel();
            stop.cancel();
            took
        };
        let ((), (), took, ()) =
            tokio::join!(run_a, run_b, script, heartbeats(&sa, &sb, &alive, &stop));
        assert!(
            took <= FAST.lease_duration + FAST.retry_period * 2,
            "b took over {took:?} after a died (lease {:?}): it waited for the dead leader's score to go stale",
            FAST.lease_duration
        );
        assert!(writes_of(&store).iter().any(|(_, h)| h == "b"));
    }

    /// A standby far below a fresh peer gives it the first go at a free lock, but only for
    /// a lease duration: a peer that publishes scores yet never campaigns (a stuck
    /// process) must not leave the cluster without a leader.
    #[tokio::test(start_paused = true)]
    async fn a_vetoed_standby_campaigns_after_a_lease_of_a_free_lock() {
        let store = MemStore::default();
        let (s, inputs) = side();
        s.own.send_replace(score(0, 1));
        let mut adv = Advisor::new(inputs, watch::channel(None).0);
        let mut e = Elector::new(&store, "s".into(), T);
        let (p, h) = channel();
        let mut l = h.leadership;
        let (cancel, stop, alive) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let peer = Side {
            own: watch::channel(score(1, 0)).0,
            peers: watch::channel(Vec::new()).0,
        };
        let started = Instant::now();
        s.peers.send_replace(vec![PeerScore {
            identity: "b".into(),
            ratio: 1.0,
            seen_changed_at: started,
        }]);
        let script = async {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), l.wait_for(Leadership::is_leader))
                    .await;
            let took = Instant::now() - started;
            cancel.cancel();
            stop.cancel();
            took
        };
        let ((), took, ()) = tokio::join!(
            run_advised(&mut e, &p, None, Some(&mut adv), cancel.clone()),
            script,
            heartbeats(&s, &peer, &alive, &stop)
        );
        assert!(
            took >= T.lease_duration && took <= T.lease_duration + T.retry_period * 3,
            "the vetoed standby took the free lock after {took:?}"
        );
    }
}
