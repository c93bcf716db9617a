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
    e.try_acquire_or_renew(Instant::now(), Timestamp::now())
        .await
        .unwrap()
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
