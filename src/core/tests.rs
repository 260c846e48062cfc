//! Unit tests of the core's rules, one behaviour each, driving nodes by hand.

use super::*;

pub(super) const A: &str = "i-000000a0";
pub(super) const B: &str = "i-000000b0";
const C: &str = "i-000000c0";

pub(super) fn ms(v: u64) -> Time {
    Duration::from_millis(v)
}

pub(super) fn node_a() -> Node {
    Node::new(CoreConfig::example("node-a", A, &[("node-b", None)]), ms(0))
}

pub(super) fn node_b() -> Node {
    Node::new(CoreConfig::example("node-b", B, &[("node-a", None)]), ms(0))
}

/// node-b with a corroborating probe that must fail twice.
pub(super) fn node_b_corroborated() -> Node {
    let mut cfg = CoreConfig::example("node-b", B, &[("node-a", None)]);
    cfg.corroborate_fall = Some(2);
    Node::new(cfg, ms(0))
}

pub(super) fn heartbeat(from: &Node, name: &str) -> Event {
    Event::Heartbeat {
        peer: name.parse().unwrap(),
        advert: from.advert(),
        incarnation: 1,
    }
}

pub(super) fn has(actions: &[Action], pred: impl Fn(&Action) -> bool) -> bool {
    actions.iter().any(pred)
}

pub(super) fn claim_of(actions: &[Action]) -> Option<(Option<String>, bool, ClaimKind)> {
    // Ids as text, so the tests compare with literals.
    actions.iter().find_map(|a| match a {
        Action::Claim {
            expected_holder,
            force,
            kind,
            ..
        } => Some((
            expected_holder.as_ref().map(|i| i.to_string()),
            *force,
            *kind,
        )),
        _ => None,
    })
}

pub(super) fn transitioned_to(actions: &[Action], role: Role) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::Transitioned { to, reason, .. } if *to == role => Some(reason.clone()),
        _ => None,
    })
}

/// node-a as master, node-b heard and alive.
pub(super) fn master_a(now: Time) -> (Node, Node) {
    let mut a = node_a();
    let mut b = node_b();
    a.start(ms(0));
    b.start(ms(0));
    a.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    b.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    a.handle(Event::NetApplied(Ok(())), ms(20));
    a.handle(heartbeat(&b, "node-b"), now);
    b.handle(heartbeat(&a, "node-a"), now);
    assert_eq!(a.role(), Role::Master);
    assert_eq!(b.role(), Role::Backup);
    (a, b)
}

#[test]
fn start_asks_the_cloud_and_heartbeats() {
    let mut a = node_a();
    let out = a.start(ms(0));
    assert!(out.contains(&Action::QueryCloud));
    assert!(out.contains(&Action::SendHeartbeat));
    assert_eq!(a.role(), Role::Starting);
    // Only one query in flight.
    let out = a.handle(Event::Tick, ms(1));
    assert!(!out.contains(&Action::QueryCloud));
}

#[test]
fn adopts_an_eni_already_attached_here_without_claiming() {
    let mut a = node_a();
    a.start(ms(0));
    let out = a.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(5),
    );
    assert_eq!(a.role(), Role::Master);
    assert!(
        claim_of(&out).is_none(),
        "a restart must not move the ENI: {out:?}"
    );
    assert!(!out.contains(&Action::Release));
    assert!(out.contains(&Action::ApplyNet));
    let master_hook = |out: &[Action]| {
        has(out, |a| {
            matches!(
                a,
                Action::RunHooks {
                    kind: HookKind::Master,
                    ..
                }
            )
        })
    };
    assert!(
        !master_hook(&out),
        "the on-master hook waits for the address to exist: {out:?}"
    );
    assert!(transitioned_to(&out, Role::Master).is_some_and(|r| r.contains("adopted")));
    assert!(!a.is_serving());
    let out = a.handle(Event::NetApplied(Ok(())), ms(6));
    assert!(a.is_serving());
    assert!(master_hook(&out), "hook once the host network is applied");
    // Exactly once: a later re-apply (drift repair) does not restart the service again.
    assert!(!master_hook(&a.handle(Event::NetApplied(Ok(())), ms(7))));
}

#[test]
fn backup_while_the_holder_is_alive_then_claims_with_force_when_it_is_silent() {
    let (mut a, mut b) = master_a(ms(100));
    // Heartbeats keep coming: no claim.
    for t in (200..=2000).step_by(200) {
        let out = b.handle(heartbeat(&a, "node-a"), ms(t));
        assert!(claim_of(&out).is_none());
        a.handle(Event::Tick, ms(t));
    }
    // Silence: nothing until the dead interval has passed...
    let out = b.handle(Event::Tick, ms(2000 + 999));
    assert!(claim_of(&out).is_none());
    let out = b.handle(Event::Tick, ms(2000 + 1001));
    let (expected, force, kind) = claim_of(&out).expect("claims after the dead interval");
    assert_eq!(expected.as_deref(), Some(A), "names the holder it replaces");
    assert!(force, "the holder is believed dead");
    assert_eq!(kind, ClaimKind::Failover);
    assert_eq!(b.role(), Role::Claiming);
    let out = b.handle(Event::ClaimDone(Ok(ClaimResult::Claimed)), ms(3100));
    assert_eq!(b.role(), Role::Master);
    assert!(out.contains(&Action::ApplyNet));
}

#[test]
fn a_holder_never_heard_is_not_forced_off_on_silence_alone() {
    let mut b = node_b();
    b.start(ms(0));
    b.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    assert_eq!(b.role(), Role::Backup);
    let out = b.handle(Event::Tick, ms(1100));
    assert!(
        claim_of(&out).is_none(),
        "a wrong key looks like this: {out:?}"
    );
    assert!(has(&out, |x| matches!(
        x,
        Action::Alert(Alert::PeerNeverHeard { peer, .. }) if peer == "node-a"
    )));
    // Paced: not again at once, but again after ALERT_EVERY.
    let out = b.handle(Event::Tick, ms(1200));
    assert!(!has(&out, |x| matches!(x, Action::Alert(_))));
    let out = b.handle(Event::Tick, ms(1100) + ALERT_EVERY);
    assert!(has(&out, |x| matches!(x, Action::Alert(_))));
    assert!(claim_of(&out).is_none());
}

#[test]
fn a_holder_never_heard_is_replaced_once_the_probe_says_its_service_is_down() {
    let mut b = node_b_corroborated();
    b.start(ms(0));
    b.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    b.handle(
        Event::EniProbe {
            sent: ms(500),
            ok: false,
        },
        ms(600),
    );
    b.handle(
        Event::EniProbe {
            sent: ms(800),
            ok: false,
        },
        ms(900),
    );
    assert!(claim_of(&b.handle(Event::Tick, ms(900))).is_none());
    let (expected, force, _) = claim_of(&b.handle(Event::Tick, ms(1100))).expect("claims");
    assert_eq!((expected.as_deref(), force), (Some(A), true));
}

#[test]
fn simultaneous_start_the_best_candidate_claims_and_the_other_waits() {
    let mut a = node_a();
    let mut b = node_b();
    a.start(ms(0));
    b.start(ms(0));
    for n in [&mut a, &mut b] {
        n.handle(Event::CloudState(Ok(CloudView::Nobody)), ms(10));
    }
    let hb_a = heartbeat(&a, "node-a");
    let hb_b = heartbeat(&b, "node-b");
    a.handle(hb_b, ms(20));
    b.handle(hb_a, ms(20));
    // Before the settle time nobody claims.
    assert!(claim_of(&a.handle(Event::Tick, ms(500))).is_none());
    let out_a = a.handle(Event::Tick, ms(600));
    let out_b = b.handle(Event::Tick, ms(600));
    // Equal priority: the smaller name wins.
    assert_eq!(claim_of(&out_a).map(|c| c.2), Some(ClaimKind::Election));
    assert!(claim_of(&out_b).is_none());
    assert_eq!(b.role(), Role::Backup);
    assert!(transitioned_to(&out_b, Role::Backup).is_some_and(|r| r.contains("node-a")));
}

#[test]
fn higher_priority_wins_the_election() {
    let mut a = node_a();
    let mut cfg = CoreConfig::example("node-b", B, &[("node-a", None)]);
    cfg.priority = 150;
    let mut b = Node::new(cfg, ms(0));
    a.start(ms(0));
    b.start(ms(0));
    for n in [&mut a, &mut b] {
        n.handle(Event::CloudState(Ok(CloudView::Nobody)), ms(10));
    }
    let hb_a = heartbeat(&a, "node-a");
    let hb_b = heartbeat(&b, "node-b");
    a.handle(hb_b, ms(20));
    b.handle(hb_a, ms(20));
    assert!(claim_of(&a.handle(Event::Tick, ms(600))).is_none());
    assert!(claim_of(&b.handle(Event::Tick, ms(600))).is_some());
}

#[test]
fn a_lost_race_against_an_unheard_winner_holds_down_but_not_against_a_heard_one() {
    let mut a = node_a();
    a.start(ms(0));
    a.handle(Event::CloudState(Ok(CloudView::Nobody)), ms(10));
    a.handle(Event::Tick, ms(700));
    assert_eq!(a.role(), Role::Claiming);
    a.handle(
        Event::ClaimDone(Ok(ClaimResult::HeldBy(B.parse().unwrap()))),
        ms(750),
    );
    assert_eq!(a.role(), Role::Backup);
    assert!(a.hold_down_left(ms(750)).is_some(), "partition suspected");
    // Even after the winner's dead interval, no claim during the hold-down.
    assert!(claim_of(&a.handle(Event::Tick, ms(5000))).is_none());
    assert!(claim_of(&a.handle(Event::Tick, ms(10_751))).is_some());

    let (_, b) = master_a(ms(100));
    let mut a2 = node_a();
    a2.start(ms(0));
    a2.handle(heartbeat(&b, "node-b"), ms(5));
    a2.handle(Event::CloudState(Ok(CloudView::Nobody)), ms(10));
    a2.handle(heartbeat(&b, "node-b"), ms(600));
    if a2.role() == Role::Claiming {
        a2.handle(
            Event::ClaimDone(Ok(ClaimResult::HeldBy(B.parse().unwrap()))),
            ms(650),
        );
        assert!(a2.hold_down_left(ms(650)).is_none());
    }
}

#[test]
fn master_that_loses_the_eni_steps_down_at_once_and_hold_down_grows() {
    let (mut a, _) = master_a(ms(100));
    let out = a.handle(
        Event::CloudState(Ok(CloudView::Holder(B.parse().unwrap()))),
        ms(200),
    );
    assert_eq!(a.role(), Role::Backup);
    assert!(out.contains(&Action::RemoveNet));
    assert!(has(&out, |x| matches!(
        x,
        Action::RunHooks {
            kind: HookKind::Backup,
            ..
        }
    )));
    let first = a.hold_down_left(ms(200)).expect("hold-down");
    assert_eq!(first, Duration::from_secs(10));
    // Back to master (the peer died), then lost again: the hold-down doubles.
    a.handle(Event::Tick, ms(10_300));
    assert_eq!(a.role(), Role::Claiming);
    a.handle(Event::ClaimDone(Ok(ClaimResult::Claimed)), ms(10_400));
    a.handle(Event::LinkLost, ms(10_500));
    assert_eq!(a.role(), Role::Backup);
    assert_eq!(a.hold_down_left(ms(10_500)), Some(Duration::from_secs(20)));
}

#[test]
fn link_lost_steps_down_and_asks_the_cloud() {
    let (mut a, _) = master_a(ms(100));
    let out = a.handle(Event::LinkLost, ms(200));
    assert_eq!(a.role(), Role::Backup);
    assert!(out.contains(&Action::QueryCloud));
    assert!(transitioned_to(&out, Role::Backup).is_some_and(|r| r.contains("disappeared")));
}

#[test]
fn master_keeps_serving_when_the_cloud_is_unreachable() {
    let (mut a, _) = master_a(ms(100));
    a.handle(Event::Tick, ms(5100));
    a.handle(
        Event::CloudState(Err(Failure::retryable("timeout"))),
        ms(5200),
    );
    assert_eq!(a.role(), Role::Master);
}

#[test]
fn master_verifies_the_attachment_periodically() {
    let (mut a, _) = master_a(ms(100));
    let out = a.handle(Event::Tick, ms(5100));
    assert!(out.contains(&Action::QueryCloud));
    let out = a.handle(Event::Tick, ms(5200));
    assert!(!out.contains(&Action::QueryCloud), "one query at a time");
}

/// Drives a full yield between two nodes, delivering each one's heartbeats to the other.
#[test]
fn yield_hands_over_in_order_and_replies_once_the_peer_is_master() {
    let (mut a, mut b) = master_a(ms(100));
    let out = a.handle(
        Event::YieldRequested {
            token: 7,
            timeout: Duration::from_secs(30),
        },
        ms(200),
    );
    assert!(out.contains(&Action::SendHeartbeat));
    assert!(matches!(a.advert().yield_msg, YieldMsg::Offer { ref to, .. } if to == "node-b"));
    // b accepts.
    let out = b.handle(heartbeat(&a, "node-a"), ms(201));
    assert!(out.contains(&Action::SendHeartbeat));
    assert!(matches!(b.advert().yield_msg, YieldMsg::Accept { .. }));
    // a releases: host config first, then the detach.
    let out = a.handle(heartbeat(&b, "node-b"), ms(202));
    assert_eq!(a.role(), Role::Releasing);
    assert!(out.contains(&Action::RemoveNet));
    assert!(!out.contains(&Action::Release));
    let out = a.handle(Event::NetRemoved(Ok(())), ms(203));
    assert!(out.contains(&Action::Release));
    a.handle(Event::ReleaseDone(Ok(())), ms(300));
    assert_eq!(a.role(), Role::Backup);
    // b claims, naming a as the expected (releasing) holder, without force.
    let out = b.handle(heartbeat(&a, "node-a"), ms(301));
    let (expected, force, kind) = claim_of(&out).expect("claims on release");
    assert_eq!(
        (expected.as_deref(), force, kind),
        (Some(A), false, ClaimKind::Yield)
    );
    b.handle(Event::ClaimDone(Ok(ClaimResult::Claimed)), ms(400));
    assert_eq!(b.role(), Role::Master);
    // a replies once it hears b is master.
    let out = a.handle(heartbeat(&b, "node-b"), ms(401));
    assert!(has(&out, |x| matches!(
        x,
        Action::Reply {
            token: 7,
            result: Ok(_)
        }
    )));
    // and does not try to claim afterwards while b is alive.
    let out = a.handle(Event::Tick, ms(1000));
    assert!(claim_of(&out).is_none());
}

#[test]
fn yield_is_refused_on_a_backup_and_without_a_live_peer() {
    let (_, mut b) = master_a(ms(100));
    let out = b.handle(
        Event::YieldRequested {
            token: 1,
            timeout: Duration::from_secs(1),
        },
        ms(200),
    );
    assert!(has(
        &out,
        |x| matches!(x, Action::Reply { token: 1, result: Err(e) } if e.contains("not master"))
    ));

    let (mut a, _) = master_a(ms(100));
    let out = a.handle(
        Event::YieldRequested {
            token: 2,
            timeout: Duration::from_secs(1),
        },
        ms(5000),
    );
    assert!(has(
        &out,
        |x| matches!(x, Action::Reply { token: 2, result: Err(e) } if e.contains("no live peer"))
    ));
    assert_eq!(a.role(), Role::Master);
}

#[test]
fn yield_to_a_peer_in_fault_is_rejected_and_the_master_keeps_the_eni() {
    let (mut a, _) = master_a(ms(100));
    let mut f = node_b();
    f.start(ms(0));
    f.handle(
        Event::CloudState(Err(Failure::permanent("UnauthorizedOperation"))),
        ms(10),
    );
    assert_eq!(f.role(), Role::Fault);
    // a hears f in fault: it is no candidate.
    a.handle(heartbeat(&f, "node-b"), ms(150));
    let out = a.handle(
        Event::YieldRequested {
            token: 3,
            timeout: Duration::from_secs(1),
        },
        ms(200),
    );
    assert!(has(&out, |x| matches!(
        x,
        Action::Reply {
            token: 3,
            result: Err(_)
        }
    )));
    assert_eq!(a.role(), Role::Master);
}

#[test]
fn a_failed_handover_is_reported_and_the_eni_taken_back() {
    let (mut a, mut b) = master_a(ms(100));
    a.handle(
        Event::YieldRequested {
            token: 9,
            timeout: Duration::from_secs(2),
        },
        ms(200),
    );
    b.handle(heartbeat(&a, "node-a"), ms(201));
    a.handle(heartbeat(&b, "node-b"), ms(202));
    a.handle(Event::NetRemoved(Ok(())), ms(203));
    a.handle(Event::ReleaseDone(Ok(())), ms(300));
    // b never claims (it died). At the deadline a reports and reclaims.
    let out = a.handle(Event::Tick, ms(2300));
    assert!(has(
        &out,
        |x| matches!(x, Action::Reply { token: 9, result: Err(e) } if e.contains("did not become master"))
    ));
    let (expected, force, kind) = claim_of(&out).expect("reclaims");
    assert_eq!((expected, force, kind), (None, false, ClaimKind::Reclaim));
}

#[test]
fn restart_stop_keeps_the_eni_and_peers_wait_the_grace() {
    let (mut a, mut b) = master_a(ms(100));
    let out = a.handle(Event::Stop { handover: false }, ms(200));
    assert!(out.contains(&Action::Exit));
    assert!(!out.contains(&Action::Release));
    assert!(!out.contains(&Action::RemoveNet));
    assert_eq!(a.advert().stopping_ms, 30_000);
    b.handle(heartbeat(&a, "node-a"), ms(201));
    // Well past the dead interval but within the restart grace: no claim.
    assert!(claim_of(&b.handle(Event::Tick, ms(20_000))).is_none());
    assert!(claim_of(&b.handle(Event::Tick, ms(30_300))).is_some());
}

#[test]
fn shutdown_stop_hands_over_then_exits() {
    let (mut a, mut b) = master_a(ms(100));
    let out = a.handle(Event::Stop { handover: true }, ms(200));
    assert!(!out.contains(&Action::Exit));
    b.handle(heartbeat(&a, "node-a"), ms(201));
    a.handle(heartbeat(&b, "node-b"), ms(202));
    a.handle(Event::NetRemoved(Ok(())), ms(203));
    a.handle(Event::ReleaseDone(Ok(())), ms(300));
    b.handle(heartbeat(&a, "node-a"), ms(301));
    b.handle(Event::ClaimDone(Ok(ClaimResult::Claimed)), ms(400));
    let out = a.handle(heartbeat(&b, "node-b"), ms(401));
    assert!(out.contains(&Action::Exit));
    assert!(has(&out, |x| matches!(
        x,
        Action::RunHooks {
            kind: HookKind::Stop,
            ..
        }
    )));
}

#[test]
fn shutdown_without_a_live_peer_keeps_the_eni() {
    let (mut a, _) = master_a(ms(100));
    let out = a.handle(Event::Stop { handover: true }, ms(5000));
    assert!(out.contains(&Action::Exit));
    assert!(!out.contains(&Action::Release));
}

#[test]
fn preempt_waits_the_delay_then_takes_over_by_handover() {
    let (mut a, _) = master_a(ms(100));
    let mut cfg = CoreConfig::example("node-b", B, &[("node-a", None)]);
    cfg.priority = 200;
    cfg.preempt = true;
    cfg.preempt_delay = Duration::from_secs(3);
    let mut b = Node::new(cfg, ms(0));
    b.start(ms(0));
    b.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    let mut t = 100;
    while t < 3000 {
        b.handle(heartbeat(&a, "node-a"), ms(t));
        a.handle(heartbeat(&b, "node-b"), ms(t));
        assert!(!b.advert().wants_master, "not before the delay");
        assert!(a.advert().yield_msg == YieldMsg::None);
        t += 200;
    }
    while a.advert().yield_msg == YieldMsg::None && t < 4000 {
        b.handle(heartbeat(&a, "node-a"), ms(t));
        a.handle(heartbeat(&b, "node-b"), ms(t));
        t += 200;
    }
    assert!(b.advert().wants_master);
    assert!(matches!(a.advert().yield_msg, YieldMsg::Offer { ref to, .. } if to == "node-b"));
    assert_eq!(a.role(), Role::Master, "never stolen: offered");
    // The rest is an ordinary handover: b accepts, a releases.
    let out = b.handle(heartbeat(&a, "node-a"), ms(t));
    assert!(claim_of(&out).is_none());
    a.handle(heartbeat(&b, "node-b"), ms(t + 1));
    assert_eq!(a.role(), Role::Releasing);
}

#[test]
fn without_preempt_a_higher_priority_backup_stays_backup() {
    let (mut a, _) = master_a(ms(100));
    let mut cfg = CoreConfig::example("node-b", B, &[("node-a", None)]);
    cfg.priority = 200;
    let mut b = Node::new(cfg, ms(0));
    b.start(ms(0));
    b.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    for t in (100..60_000).step_by(200) {
        b.handle(heartbeat(&a, "node-a"), ms(t));
        a.handle(heartbeat(&b, "node-b"), ms(t));
    }
    assert!(!b.advert().wants_master);
    assert_eq!(a.role(), Role::Master);
    assert_eq!(b.role(), Role::Backup);
}

#[test]
fn host_network_failures_give_the_eni_up_then_fault_then_start_over() {
    let mut a = node_a();
    a.start(ms(0));
    a.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    a.handle(Event::NetApplied(Err("no link".into())), ms(20));
    assert_eq!(a.role(), Role::Master);
    let out = a.handle(Event::Tick, ms(1020));
    assert!(out.contains(&Action::ApplyNet), "retried");
    a.handle(Event::NetApplied(Err("no link".into())), ms(1030));
    a.handle(Event::Tick, ms(2030));
    let out = a.handle(Event::NetApplied(Err("no link".into())), ms(2040));
    assert_eq!(a.role(), Role::Releasing);
    assert!(out.contains(&Action::RemoveNet));
    let out = a.handle(Event::NetRemoved(Ok(())), ms(2050));
    assert!(out.contains(&Action::Release));
    let out = a.handle(Event::ReleaseDone(Ok(())), ms(2100));
    assert_eq!(a.role(), Role::Fault);
    assert!(has(&out, |x| matches!(
        x,
        Action::RunHooks {
            kind: HookKind::Fault,
            ..
        }
    )));
    let out = a.handle(Event::Tick, ms(2100 + 5000));
    assert_eq!(a.role(), Role::Starting);
    assert!(out.contains(&Action::QueryCloud));
}

#[test]
fn permanent_cloud_error_at_start_is_a_fault_and_transient_is_retried() {
    let mut a = node_a();
    a.start(ms(0));
    a.handle(
        Event::CloudState(Err(Failure::retryable("throttled"))),
        ms(10),
    );
    assert_eq!(a.role(), Role::Starting);
    assert!(a
        .handle(Event::Tick, ms(500))
        .iter()
        .all(|x| *x != Action::QueryCloud));
    assert!(a
        .handle(Event::Tick, ms(1010))
        .contains(&Action::QueryCloud));
    let out = a.handle(
        Event::CloudState(Err(Failure::permanent(
            "InvalidNetworkInterfaceID.NotFound",
        ))),
        ms(1020),
    );
    assert_eq!(a.role(), Role::Fault);
    assert!(transitioned_to(&out, Role::Fault).is_some_and(|r| r.contains("NotFound")));
}

#[test]
fn a_failed_claim_backs_off_before_trying_again() {
    let mut b = node_b();
    let a = node_a();
    b.start(ms(0));
    b.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    b.handle(heartbeat(&a, "node-a"), ms(20));
    b.handle(Event::Tick, ms(1100));
    assert_eq!(b.role(), Role::Claiming);
    b.handle(Event::ClaimDone(Err(Failure::retryable("5xx"))), ms(1200));
    assert_eq!(b.role(), Role::Backup);
    assert!(claim_of(&b.handle(Event::Tick, ms(2000))).is_none());
    assert!(claim_of(&b.handle(Event::Tick, ms(3300))).is_some());
}

#[test]
fn never_takes_the_eni_from_an_unknown_instance() {
    let cfg = CoreConfig::example("node-a", A, &[("node-b", Some(B)), ("node-c", Some(C))]);
    let mut a = Node::new(cfg, ms(0));
    a.start(ms(0));
    a.handle(
        Event::CloudState(Ok(CloudView::Holder("i-0000ffff".parse().unwrap()))),
        ms(10),
    );
    assert_eq!(a.role(), Role::Backup);
    for t in (100..30_000).step_by(500) {
        assert!(claim_of(&a.handle(Event::Tick, ms(t))).is_none());
    }
}

#[test]
fn two_masters_make_the_master_ask_the_cloud() {
    let (mut a, _) = master_a(ms(100));
    let mut rogue = node_b();
    rogue.start(ms(0));
    rogue.handle(
        Event::CloudState(Ok(CloudView::Holder(B.parse().unwrap()))),
        ms(10),
    );
    assert_eq!(rogue.role(), Role::Master);
    let out = a.handle(heartbeat(&rogue, "node-b"), ms(200));
    assert!(out.contains(&Action::QueryCloud));
}

#[test]
fn next_wakeup_is_never_in_the_past_nor_later_than_the_next_heartbeat() {
    let (mut a, mut b) = master_a(ms(100));
    for t in (100..20_000).step_by(37) {
        let now = ms(t);
        for n in [&mut a, &mut b] {
            n.handle(Event::Tick, now);
            let w = n.next_wakeup(now);
            assert!(w >= now);
            assert!(w <= now + n.config().heartbeat_interval);
        }
    }
}

#[test]
fn transitions_are_recorded_with_reasons() {
    let (a, _) = master_a(ms(100));
    let t = a.last_transition().expect("a transition");
    assert_eq!((t.from, t.to), (Role::Starting, Role::Master));
    assert!(!t.reason.is_empty());
}

#[test]
fn a_detached_eni_is_claimed_at_once_despite_the_hold_down() {
    let (mut a, _) = master_a(ms(100));
    a.handle(Event::LinkLost, ms(200));
    assert!(a.hold_down_left(ms(200)).is_some());
    // The operator detached it: nobody holds it. The hold-down stops forcing, not this.
    let out = a.handle(Event::CloudState(Ok(CloudView::Nobody)), ms(250));
    assert_eq!(claim_of(&out), Some((None, false, ClaimKind::Election)));
}

#[test]
fn a_cloud_answer_older_than_a_lost_link_is_discarded_and_asked_again() {
    let (mut a, _) = master_a(ms(100));
    assert!(a
        .handle(Event::Tick, ms(5100))
        .contains(&Action::QueryCloud));
    a.handle(Event::LinkLost, ms(5150));
    assert_eq!(a.role(), Role::Backup);
    // The answer to the query sent before the link vanished still says "here".
    let out = a.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(5160),
    );
    assert_eq!(
        a.role(),
        Role::Backup,
        "a stale answer must not make it master again"
    );
    assert!(out.contains(&Action::QueryCloud), "asked again");
    // The fresh answer counts.
    a.handle(
        Event::CloudState(Ok(CloudView::Holder(B.parse().unwrap()))),
        ms(5200),
    );
    assert_eq!(a.holder(), &HolderBelief::Instance(B.parse().unwrap()));
}

#[test]
fn an_interrupted_handover_is_answered_exactly_once() {
    let (mut a, _) = master_a(ms(100));
    a.handle(
        Event::YieldRequested {
            token: 5,
            timeout: Duration::from_secs(30),
        },
        ms(200),
    );
    let out = a.handle(Event::LinkLost, ms(300));
    let replies: Vec<_> = out
        .iter()
        .filter(|x| {
            matches!(
                x,
                Action::Reply {
                    token: 5,
                    result: Err(_)
                }
            )
        })
        .collect();
    assert_eq!(replies.len(), 1, "{out:?}");
    let later = a.handle(Event::Tick, ms(40_000));
    assert!(!has(&later, |x| matches!(
        x,
        Action::Reply { token: 5, .. }
    )));
}

#[test]
fn starting_as_backup_clears_host_config_left_by_an_earlier_run() {
    let mut b = node_b();
    b.start(ms(0));
    let out = b.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    assert_eq!(b.role(), Role::Backup);
    assert!(out.contains(&Action::RemoveNet));
}

#[test]
fn a_master_that_cannot_apply_its_host_network_never_starts_the_master_hook() {
    let mut a = node_a();
    a.start(ms(0));
    let mut all = a.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    for (t, tick) in [(20, 1020), (1030, 2030)] {
        all.extend(a.handle(Event::NetApplied(Err("no link".into())), ms(t)));
        all.extend(a.handle(Event::Tick, ms(tick)));
    }
    all.extend(a.handle(Event::NetApplied(Err("no link".into())), ms(2040)));
    assert_eq!(a.role(), Role::Releasing);
    assert!(!has(&all, |x| matches!(
        x,
        Action::RunHooks {
            kind: HookKind::Master,
            ..
        }
    )));
}

/// The corroborating probe does not run on a master: what it said before this node took over
/// (the failures that corroborated the takeover) must not count once it is backup again, nor
/// may a report that was on its way when it became master.
#[test]
fn probe_failures_from_before_a_mastership_are_forgotten() {
    let mut a = node_a();
    a.start(ms(0));
    for sent in [1, 2, 3] {
        a.handle(
            Event::EniProbe {
                sent: ms(sent),
                ok: false,
            },
            ms(5),
        );
    }
    assert_eq!(a.probe().fails, 3);
    a.handle(
        Event::CloudState(Ok(CloudView::Holder(A.parse().unwrap()))),
        ms(10),
    );
    assert_eq!(a.role(), Role::Master);
    assert_eq!(a.probe(), &ProbeHistory::default());
    a.handle(
        Event::EniProbe {
            sent: ms(4),
            ok: false,
        },
        ms(12),
    );
    assert_eq!(
        a.probe().fails,
        0,
        "a report sent before the mastership counted"
    );
    a.handle(
        Event::EniProbe {
            sent: ms(20),
            ok: false,
        },
        ms(21),
    );
    assert_eq!(a.probe().fails, 1);
}
