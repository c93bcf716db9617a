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
