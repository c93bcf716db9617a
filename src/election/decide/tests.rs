use std::time::Duration;

use tokio::time::{advance, Instant};

use super::*;

const T: Timings = Timings {
    lease_duration: Duration::from_secs(3),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_secs(1),
};
/// The DynamoDB lock with a longer lease, as a config may set it.
const LOCK_T: Timings = Timings {
    lease_duration: Duration::from_secs(4),
    ..T
};
fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[tokio::test(start_paused = true)]
async fn a_standby_that_wins_acts_for_the_renew_deadline_from_the_rounds_start() {
    let started = Instant::now();
    advance(ms(300)).await;
    let p = solo(Hold::Standby, started, Instant::now(), Round::Held, &T);
    let until = started + T.renew_deadline;
    assert_eq!(p.hold, Hold::Leading { until });
    assert_eq!(p.change, Change::Became { until });
    assert_eq!(p.next, Next::At(started + T.retry_period));
    for r in [Round::Lost, Round::Failed, Round::TimedOut] {
        let p = solo(Hold::Standby, started, Instant::now(), r, &T);
        assert_eq!(
            (p.hold, p.change, p.next),
            (Hold::Standby, Change::None, Next::Poll)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_leader_renews_keeps_acting_through_errors_and_stops_at_its_deadline() {
    let t0 = Instant::now();
    let mut hold = solo(Hold::Standby, t0, t0, Round::Held, &T).hold;
    // A renewal at 1 s extends to 3 s.
    advance(ms(1000)).await;
    let p = solo(hold, Instant::now(), Instant::now(), Round::Held, &T);
    assert_eq!(
        p.change,
        Change::Extended {
            until: t0 + ms(3000)
        }
    );
    hold = p.hold;
    // At 2 s the store fails: keep acting, retry a period on, never past the deadline.
    advance(ms(1000)).await;
    let p = solo(hold, Instant::now(), Instant::now(), Round::Failed, &T);
    assert_eq!((p.hold, p.change.clone()), (hold, Change::None));
    assert_eq!(p.next, Next::At(t0 + ms(3000)));
    // The round may only take what is left.
    advance(ms(500)).await;
    assert_eq!(round_limit(hold, Instant::now(), &T), Some(ms(500)));
    // At the deadline: step down without asking the store.
    advance(ms(500)).await;
    assert_eq!(round_limit(hold, Instant::now(), &T), None);
    assert_eq!(
        deadline_passed().change,
        Change::SteppedDown(StepDown::Deadline)
    );
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_sees_another_holder_or_gets_no_answer_steps_down_at_once() {
    let t0 = Instant::now();
    let hold = Hold::Leading {
        until: t0 + ms(2000),
    };
    let p = solo(hold, t0, t0, Round::Lost, &T);
    assert_eq!(
        (p.hold, p.change),
        (Hold::Standby, Change::SteppedDown(StepDown::OtherHolder))
    );
    let p = solo(hold, t0, t0 + ms(2000), Round::TimedOut, &T);
    assert_eq!(
        (p.hold, p.change),
        (Hold::Standby, Change::SteppedDown(StepDown::Deadline))
    );
}

#[test]
fn a_standby_polls_no_later_than_just_past_the_others_expiry() {
    assert_eq!(poll_pause(ms(1100), None), ms(1100));
    assert_eq!(poll_pause(ms(1100), Some(ms(300))), ms(305));
    assert_eq!(poll_pause(ms(1100), Some(ms(3000))), ms(1100));
}

#[tokio::test(start_paused = true)]
async fn old_or_missing_lease_news_counts_as_an_unreachable_api() {
    let at = Instant::now();
    assert_eq!(
        judge_lease(Lease::Unknown, at, at + ms(2000), &T),
        Lease::Unknown
    );
    assert_eq!(
        judge_lease(Lease::Unknown, at, at + ms(2001), &T),
        Lease::Unreachable
    );
    assert_eq!(judge_lease(Lease::Held, at, at + ms(3000), &T), Lease::Held);
    assert_eq!(
        judge_lease(Lease::OtherHolds, at, at + ms(3001), &T),
        Lease::Unreachable
    );
}

fn state() -> LockState {
    LockState::new(T, LOCK_T)
}

/// Runs one lock round as the loop does: action, then settle with the given outcome.
fn lock_round(
    s: &mut LockState,
    lease: Lease,
    holds_lock: bool,
    round: Option<Round>,
    started: Instant,
    now: Instant,
) -> (LockAction, LockPlan) {
    let action = s.action(lease, holds_lock, started);
    let plan = s.settle(&action, lease, Some("gw-b"), started, round, now);
    (action, plan)
}

#[tokio::test(start_paused = true)]
async fn the_lock_is_tried_with_the_lease_or_without_the_api_and_never_before_the_first_report() {
    let s = state();
    let now = Instant::now();
    assert_eq!(s.action(Lease::Unknown, false, now), LockAction::Wait);
    assert_eq!(s.action(Lease::OtherHolds, false, now), LockAction::Observe);
    for l in [Lease::Held, Lease::Unreachable] {
        assert_eq!(
            s.action(l, false, now),
            LockAction::Try {
                limit: T.renew_deadline
            }
        );
    }
    // An acting holder's try may only take what is left of its hold.
    let s = LockState {
        acting_until: Some(now + ms(700)),
        ..state()
    };
    assert_eq!(
        s.action(Lease::Held, true, now),
        LockAction::Try { limit: ms(700) }
    );
}

#[tokio::test(start_paused = true)]
async fn a_lock_holder_acts_renews_and_stops_at_its_deadline() {
    let mut s = state();
    let t0 = Instant::now();
    let (_, p) = lock_round(&mut s, Lease::Held, false, Some(Round::Held), t0, t0);
    assert_eq!(
        p.change,
        Change::Became {
            until: t0 + ms(2000)
        }
    );
    advance(ms(1000)).await;
    let now = Instant::now();
    let (_, p) = lock_round(&mut s, Lease::Held, true, Some(Round::Held), now, now);
    assert_eq!(
        p.change,
        Change::Extended {
            until: t0 + ms(3000)
        }
    );
    // DynamoDB errors: keep acting until the hold runs out, then stop.
    advance(ms(1000)).await;
    let now = Instant::now();
    let (_, p) = lock_round(&mut s, Lease::Held, true, Some(Round::Failed), now, now);
    assert_eq!(p.change, Change::None);
    assert!(s.acting());
    advance(ms(1000)).await;
    let now = Instant::now();
    let (_, p) = lock_round(
        &mut s,
        Lease::Held,
        true,
        Some(Round::TimedOut),
        now - ms(1),
        now,
    );
    assert_eq!(p.change, Change::SteppedDown(StepDown::Deadline));
    assert!(!s.acting());
}

/// Finding 3 of issue 10: the lock used to be released the moment the Lease showed
/// another holder, while this gateway's writes (admitted against its hold) could still
/// be sent; the new Lease holder would take the lock within a second and write too.
#[tokio::test(start_paused = true)]
async fn a_lock_holder_that_loses_the_lease_stops_at_once_but_frees_the_lock_only_after_its_hold() {
    let mut s = state();
    let t0 = Instant::now();
    lock_round(&mut s, Lease::Held, false, Some(Round::Held), t0, t0);
    advance(ms(400)).await;
    let now = Instant::now();
    let (action, p) = lock_round(&mut s, Lease::OtherHolds, true, None, now, now);
    assert_eq!(action, LockAction::StepDown);
    assert_eq!(
        p.change,
        Change::SteppedDown(StepDown::LeaseHeldBy(Some("gw-b".into())))
    );
    assert!(!s.acting());
    assert_eq!(
        p.release_at,
        Some(t0 + ms(2000)),
        "the lock must stay ours until our hold has ended"
    );
    // Not acting but still named on the lock (e.g. after the deadline): free it now.
    advance(ms(3000)).await;
    let now = Instant::now();
    let (_, p) = lock_round(&mut s, Lease::OtherHolds, true, None, now, now);
    assert_eq!(p.release_at, Some(now));
}

/// Finding 3 of issue 10: a gateway that read the lock held by someone else while acting
/// kept acting until its renew deadline.
#[tokio::test(start_paused = true)]
async fn a_lock_holder_that_reads_another_owner_steps_down_at_once() {
    let mut s = state();
    let t0 = Instant::now();
    lock_round(&mut s, Lease::Unreachable, false, Some(Round::Held), t0, t0);
    advance(ms(1000)).await;
    let now = Instant::now();
    let (_, p) = lock_round(
        &mut s,
        Lease::Unreachable,
        false,
        Some(Round::Lost),
        now,
        now,
    );
    assert_eq!(p.change, Change::SteppedDown(StepDown::OtherHolder));
    assert!(
        !s.acting(),
        "acted on after reading the lock held by someone else"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_holder_without_the_lock_gives_the_lease_up_after_a_lock_lease_and_a_round() {
    let mut s = state();
    let t0 = Instant::now();
    let mut gave_up_at = None;
    for _ in 0..60 {
        let now = Instant::now();
        let (_, p) = lock_round(&mut s, Lease::Held, false, Some(Round::Lost), now, now);
        if p.give_up_lease {
            gave_up_at = Some(now - t0);
            break;
        }
        advance(ms(100)).await;
    }
    assert_eq!(gave_up_at, Some(LOCK_T.lease_duration + T.retry_period));
    // Getting the lock, or losing the Lease, resets the count.
    let now = Instant::now();
    lock_round(&mut s, Lease::Held, false, Some(Round::Lost), now, now);
    advance(ms(4900)).await;
    let now = Instant::now();
    let (_, p) = lock_round(&mut s, Lease::OtherHolds, false, None, now, now);
    assert!(!p.give_up_lease);
    let (_, p) = lock_round(&mut s, Lease::Held, false, Some(Round::Lost), now, now);
    assert!(!p.give_up_lease);
}

#[tokio::test(start_paused = true)]
async fn the_lock_loop_sleeps_no_longer_than_the_hold_or_the_others_expiry() {
    let now = Instant::now();
    let s = state();
    assert_eq!(s.pause(ms(1150), now, None), ms(1000));
    assert_eq!(s.pause(ms(900), now, Some(ms(200))), ms(205));
    let s = LockState {
        acting_until: Some(now + ms(300)),
        ..state()
    };
    assert_eq!(s.pause(ms(1150), now, None), ms(300));
}
