//! Unit tests of the health and corroboration rules (issue 11): when a silent holder may be
//! replaced, what a failing check does on a master and on a backup, stalls and the hold-down.

use super::tests::{claim_of, has, heartbeat, master_a, ms, node_a, node_b, transitioned_to, A, B};
use super::*;

fn corroborated(mut n: Node) -> Node {
    n.cfg.corroborate_fall = Some(2);
    n
}

/// node-a master, node-b a corroborating backup, both heard at 100 ms.
fn pair() -> (Node, Node) {
    let (a, b) = master_a(ms(100));
    (a, corroborated(b))
}

fn probe(n: &mut Node, sent: u64, ok: bool) -> Vec<Action> {
    n.handle(Event::EniProbe { sent: ms(sent), ok }, ms(sent + 5))
}

fn alerts(out: &[Action]) -> Vec<&Alert> {
    out.iter()
        .filter_map(|a| match a {
            Action::Alert(x) => Some(x),
            _ => None,
        })
        .collect()
}

#[test]
fn a_silent_holder_whose_service_answers_through_the_eni_is_not_taken_over() {
    let (_a, mut b) = pair();
    for t in (200..=3000).step_by(100) {
        let out = probe(&mut b, t, true);
        assert!(
            claim_of(&out).is_none(),
            "serving master attacked at {t} ms: {out:?}"
        );
    }
    assert_eq!(b.silent_but_serving().map(|n| n.as_str()), Some("node-a"));
    assert_eq!(b.role(), Role::Backup);
}

#[test]
fn silence_and_a_failing_service_take_over_with_force_at_once() {
    let (_a, mut b) = pair();
    // The probe history is there when the silence ends: no extra delay.
    probe(&mut b, 1000, false);
    probe(&mut b, 1050, false);
    let out = b.handle(Event::Tick, ms(1101));
    let (expected, force, kind) = claim_of(&out).expect("claims when silent and not serving");
    assert_eq!(
        (expected.as_deref(), force, kind),
        (Some(A), true, ClaimKind::Failover)
    );
    assert!(transitioned_to(&out, Role::Claiming).is_some_and(|r| r.contains("does not answer")));
}

#[test]
fn failures_that_all_predate_the_silence_do_not_corroborate_it() {
    let (_a, mut b) = pair();
    probe(&mut b, 50, false);
    probe(&mut b, 90, false);
    assert!(claim_of(&b.handle(Event::Tick, ms(1200))).is_none());
    // One more failure after the silence began is enough.
    let out = probe(&mut b, 1300, false);
    assert!(claim_of(&out).is_some());
}

#[test]
fn the_service_failing_later_ends_the_wait_the_moment_the_probe_fails() {
    let (_a, mut b) = pair();
    probe(&mut b, 1200, true);
    assert!(claim_of(&b.handle(Event::Tick, ms(1300))).is_none());
    assert!(
        claim_of(&probe(&mut b, 1400, false)).is_none(),
        "one failure is not fall"
    );
    assert!(claim_of(&probe(&mut b, 1500, false)).is_some());
}

#[test]
fn peer_silent_service_up_is_warned_with_pacing() {
    let (_a, mut b) = pair();
    probe(&mut b, 1000, true);
    let silent = |out: &[Action]| {
        alerts(out)
            .iter()
            .filter(|x| matches!(x, Alert::PeerSilentServiceUp { peer, .. } if peer == "node-a"))
            .count()
    };
    assert_eq!(silent(&b.handle(Event::Tick, ms(1200))), 1);
    assert_eq!(silent(&b.handle(Event::Tick, ms(1300))), 0);
    assert_eq!(silent(&b.handle(Event::Tick, ms(1200) + ALERT_EVERY)), 1);
}

#[test]
fn heard_again_the_condition_is_cleared() {
    let (a, mut b) = pair();
    probe(&mut b, 1000, true);
    b.handle(Event::Tick, ms(1200));
    assert!(b.silent_but_serving().is_some());
    b.handle(heartbeat(&a, "node-a"), ms(1300));
    assert!(b.silent_but_serving().is_none());
}

#[test]
fn a_stall_of_this_node_gives_the_peer_one_more_interval() {
    let (a, mut b) = master_a(ms(100));
    // Paused from 200 ms to 1500 ms: the loop wakes up and sees the master silent for 1.4 s.
    let out = b.handle(Event::Stalled { gap: ms(1300) }, ms(1500));
    assert!(
        claim_of(&out).is_none(),
        "judged the peer by our own stall: {out:?}"
    );
    // The buffered heartbeat drained right after clears it.
    b.handle(heartbeat(&a, "node-a"), ms(1510));
    assert!(claim_of(&b.handle(Event::Tick, ms(1710))).is_none());
    assert_eq!(b.role(), Role::Backup);
}

#[test]
fn after_a_stall_a_really_dead_peer_is_still_replaced() {
    let (_a, mut b) = master_a(ms(100));
    b.handle(Event::Stalled { gap: ms(1300) }, ms(1500));
    assert!(claim_of(&b.handle(Event::Tick, ms(1699))).is_none());
    assert!(claim_of(&b.handle(Event::Tick, ms(1701))).is_some());
}

#[test]
fn the_hold_down_stops_uncorroborated_takeovers_but_not_a_corroborated_one() {
    let (a, b) = master_a(ms(100));
    let mut plain = b.clone();
    let mut corro = corroborated(b);
    for n in [&mut plain, &mut corro] {
        n.hold_down.start(&n.cfg.clone(), ms(100));
    }
    assert!(claim_of(&plain.handle(Event::Tick, ms(1200))).is_none());
    assert!(claim_of(&probe(&mut corro, 1150, false)).is_none());
    assert!(claim_of(&probe(&mut corro, 1190, false)).is_some());
    let _ = a;
}

#[test]
fn hearing_the_peer_after_a_loss_forgets_the_escalation() {
    let (a, mut b) = master_a(ms(100));
    let cfg = b.cfg.clone();
    b.hold_down.start(&cfg, ms(100));
    b.hold_down.start(&cfg, ms(200));
    assert_eq!(b.hold_down_left(ms(200)), Some(cfg.hold_down * 2));
    b.handle(heartbeat(&a, "node-a"), ms(300));
    b.hold_down.start(&cfg, ms(400));
    assert_eq!(b.hold_down_left(ms(400)), Some(cfg.hold_down));
}

#[test]
fn a_backup_whose_checks_fail_never_claims() {
    let (_a, mut b) = master_a(ms(100));
    let out = b.handle(
        Event::Health {
            healthy: false,
            detail: "http 503".into(),
        },
        ms(150),
    );
    assert!(
        out.contains(&Action::SendHeartbeat),
        "peers learn it at once"
    );
    assert!(!b.advert().healthy);
    // The master dies: an unhealthy backup does not take over, nor claim a detached ENI.
    assert!(claim_of(&b.handle(Event::Tick, ms(2000))).is_none());
    b.handle(Event::CloudState(Ok(CloudView::Nobody)), ms(2100));
    assert!(claim_of(&b.handle(Event::Tick, ms(2200))).is_none());
    // Healthy again (rise): eligible again.
    let out = b.handle(
        Event::Health {
            healthy: true,
            detail: "ok".into(),
        },
        ms(2300),
    );
    assert!(claim_of(&out).is_some());
}

#[test]
fn an_unhealthy_backup_refuses_a_handover_and_is_never_a_target() {
    let (mut a, mut b) = master_a(ms(100));
    b.handle(
        Event::Health {
            healthy: false,
            detail: "x".into(),
        },
        ms(150),
    );
    a.handle(heartbeat(&b, "node-b"), ms(160));
    let out = a.handle(
        Event::YieldRequested {
            token: 1,
            timeout: Duration::from_secs(5),
        },
        ms(170),
    );
    assert!(has(&out, |x| matches!(
        x,
        Action::Reply {
            token: 1,
            result: Err(_)
        }
    )));
    // An offer made before b turned unhealthy is rejected, not accepted.
    let mut a2 = node_a();
    a2.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    let offer = Advert {
        yield_msg: YieldMsg::Offer {
            id: 9,
            to: "node-b".parse().unwrap(),
        },
        ..a2.advert()
    };
    b.handle(
        Event::Heartbeat {
            peer: "node-a".parse().unwrap(),
            advert: offer,
            incarnation: 1,
        },
        ms(180),
    );
    assert!(matches!(
        b.advert().yield_msg,
        YieldMsg::Reject { id: 9, .. }
    ));
}

#[test]
fn a_master_whose_checks_fail_hands_over_to_a_healthy_backup() {
    let (mut a, mut b) = master_a(ms(100));
    a.handle(
        Event::Health {
            healthy: false,
            detail: "http: connection refused".into(),
        },
        ms(200),
    );
    let out = a.handle(Event::Tick, ms(201));
    assert!(matches!(a.advert().yield_msg, YieldMsg::Offer { ref to, .. } if to == "node-b"));
    let _ = out;
    // The ordinary handover follows: accept, release, claim without force.
    b.handle(heartbeat(&a, "node-a"), ms(210));
    a.handle(heartbeat(&b, "node-b"), ms(220));
    assert_eq!(a.role(), Role::Releasing);
    a.handle(Event::NetRemoved(Ok(())), ms(230));
    a.handle(Event::ReleaseDone(Ok(())), ms(240));
    let out = b.handle(heartbeat(&a, "node-a"), ms(250));
    assert_eq!(
        claim_of(&out).map(|c| (c.1, c.2)),
        Some((false, ClaimKind::Yield))
    );
}

#[test]
fn a_master_whose_checks_fail_without_a_healthy_peer_keeps_the_eni_degraded() {
    let (mut a, mut b) = master_a(ms(100));
    b.handle(
        Event::Health {
            healthy: false,
            detail: "x".into(),
        },
        ms(150),
    );
    a.handle(heartbeat(&b, "node-b"), ms(160));
    let out = a.handle(
        Event::Health {
            healthy: false,
            detail: "y".into(),
        },
        ms(200),
    );
    assert_eq!(a.role(), Role::Master);
    assert!(a.is_degraded());
    assert!(matches!(a.advert().yield_msg, YieldMsg::None));
    assert!(alerts(&out)
        .iter()
        .any(|x| matches!(x, Alert::Degraded { .. })));
    // Recovered: no longer degraded, and nothing moves.
    a.handle(
        Event::Health {
            healthy: true,
            detail: "ok".into(),
        },
        ms(300),
    );
    assert!(!a.is_degraded());
    assert_eq!(a.role(), Role::Master);
}

fn maintenance(n: &mut Node, on: bool, force: bool, at: u64) -> Vec<Action> {
    n.handle(
        Event::Maintenance {
            on,
            reason: "kernel update".into(),
            force,
            token: Some(5),
        },
        ms(at),
    )
}

fn reply_of(out: &[Action]) -> Option<Result<String, String>> {
    out.iter().find_map(|a| match a {
        Action::Reply { token: 5, result } => Some(result.clone()),
        _ => None,
    })
}

#[test]
fn a_backup_in_maintenance_never_claims_and_its_peer_knows() {
    let (a, mut b) = master_a(ms(100));
    let out = maintenance(&mut b, true, false, 150);
    assert!(matches!(reply_of(&out), Some(Ok(_))));
    assert!(b.advert().maintenance);
    assert!(
        claim_of(&b.handle(Event::Tick, ms(2000))).is_none(),
        "master dead, still no claim"
    );
    let out = maintenance(&mut b, false, false, 2100);
    assert!(matches!(reply_of(&out), Some(Ok(_))));
    assert!(claim_of(&out).is_some(), "out of maintenance it takes over");
    let _ = a;
}

#[test]
fn a_master_going_into_maintenance_hands_over_first_and_answers_when_done() {
    let (mut a, mut b) = master_a(ms(100));
    let out = maintenance(&mut a, true, false, 200);
    assert!(
        reply_of(&out).is_none(),
        "answered when the handover is over"
    );
    assert!(matches!(a.advert().yield_msg, YieldMsg::Offer { ref to, .. } if to == "node-b"));
    b.handle(heartbeat(&a, "node-a"), ms(210));
    a.handle(heartbeat(&b, "node-b"), ms(220));
    a.handle(Event::NetRemoved(Ok(())), ms(230));
    a.handle(Event::ReleaseDone(Ok(())), ms(240));
    b.handle(heartbeat(&a, "node-a"), ms(250));
    b.handle(Event::ClaimDone(Ok(ClaimResult::Claimed)), ms(300));
    let out = a.handle(heartbeat(&b, "node-b"), ms(310));
    assert!(matches!(reply_of(&out), Some(Ok(_))));
    assert_eq!(a.role(), Role::Backup);
    assert_eq!(a.maintenance(), Some("kernel update"));
    // b is master; a in maintenance is not a handover target for b.
    let out = b.handle(
        Event::YieldRequested {
            token: 6,
            timeout: Duration::from_secs(5),
        },
        ms(320),
    );
    let _ = out;
    b.handle(heartbeat(&a, "node-a"), ms(330));
    assert!(matches!(b.advert().yield_msg, YieldMsg::None));
}

#[test]
fn maintenance_on_a_master_without_a_healthy_peer_is_refused_unless_forced() {
    let mut a = node_a();
    a.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    a.handle(Event::NetApplied(Ok(())), ms(20));
    let out = maintenance(&mut a, true, false, 2000);
    assert!(matches!(reply_of(&out), Some(Err(ref e)) if e.contains("--force")));
    assert_eq!(a.maintenance(), None);
    let out = maintenance(&mut a, true, true, 2100);
    assert!(matches!(reply_of(&out), Some(Ok(_))));
    assert_eq!(
        a.role(),
        Role::Master,
        "keeps the ENI: nobody else can serve"
    );
    assert!(!a.is_degraded(), "maintenance is not a failing check");
}

#[test]
fn losing_and_regaining_a_peer_is_told_once_each() {
    let (a, mut b) = master_a(ms(100));
    let lost = |out: &[Action]| {
        alerts(out)
            .iter()
            .filter(|x| matches!(x, Alert::PeerLost { peer } if peer == "node-a"))
            .count()
    };
    let mut all = Vec::new();
    for t in (200..=1500).step_by(100) {
        all.extend(b.handle(Event::Tick, ms(t)));
    }
    assert_eq!(lost(&all), 1, "{all:?}");
    let out = b.handle(heartbeat(&a, "node-a"), ms(1600));
    assert!(alerts(&out)
        .iter()
        .any(|x| matches!(x, Alert::PeerBack { peer } if peer == "node-a")));
}

/// A peer heard for the first time (the pair forming) is not "back": only a lost one is.
#[test]
fn a_peer_heard_for_the_first_time_is_not_back() {
    let mut a = node_a();
    let b = node_b();
    let mut all = a.handle(Event::Tick, ms(0));
    all.extend(a.handle(heartbeat(&b, "node-b"), ms(100)));
    all.extend(a.handle(Event::Tick, ms(200)));
    assert!(
        !alerts(&all)
            .iter()
            .any(|x| matches!(x, Alert::PeerBack { .. } | Alert::PeerLost { .. })),
        "{all:?}"
    );
}

#[test]
fn a_hold_down_and_a_fault_are_told() {
    let (mut a, _b) = master_a(ms(100));
    let out = a.handle(
        Event::CloudState(Ok(CloudView::Holder(B.parse().unwrap()))),
        ms(200),
    );
    assert!(alerts(&out)
        .iter()
        .any(|x| matches!(x, Alert::HoldDownStarted { duration } if !duration.is_zero())));
    let mut c = node_a();
    c.start(ms(0));
    let out = c.handle(
        Event::CloudState(Err(Failure::permanent("UnauthorizedOperation"))),
        ms(10),
    );
    assert!(alerts(&out)
        .iter()
        .any(|x| matches!(x, Alert::FaultEntered { .. })));
}

#[test]
fn a_reload_changes_priority_and_timings_without_a_role_change() {
    let (mut a, _b) = master_a(ms(100));
    let mut cfg = a.config().clone();
    cfg.priority = 200;
    cfg.dead_interval = Duration::from_secs(3);
    cfg.name = "renamed".parse().unwrap();
    let out = a.reconfigure(cfg, ms(150));
    assert_eq!(a.role(), Role::Master);
    assert!(!out.iter().any(|x| matches!(x, Action::Transitioned { .. })));
    assert!(out.contains(&Action::SendHeartbeat));
    assert_eq!(a.advert().priority, 200);
    assert_eq!(a.config().dead_interval, Duration::from_secs(3));
    assert_eq!(a.config().name, "node-a", "identity is not reloaded");
}

#[test]
fn a_holder_never_heard_but_serving_is_reported_as_a_setup_problem() {
    let mut b = corroborated(super::tests::node_b());
    b.start(ms(0));
    b.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    probe(&mut b, 900, true);
    let out = b.handle(Event::Tick, ms(1100));
    assert!(claim_of(&out).is_none());
    assert!(alerts(&out)
        .iter()
        .any(|x| matches!(x, Alert::PeerNeverHeard { peer, .. } if peer == "node-a")));
    assert_eq!(b.silent_but_serving().map(|n| n.as_str()), Some("node-a"));
}
