//! The procedures driven by hand against a tiny model cloud with a fake clock: which calls they
//! make, in which order, and what they conclude.

use std::net::Ipv4Addr;

use super::*;
use crate::cloud::Attachment;

const ME: &str = "i-0000000a";
const PEER: &str = "i-0000000b";
const OTHER: &str = "i-0000000c";

fn id(s: &str) -> InstanceId {
    s.parse().unwrap()
}

fn ctx() -> Context {
    Context {
        me: id(ME),
        eni: "eni-0123abcd".parse().unwrap(),
        limits: Limits {
            deadline: Duration::from_secs(5),
            force_detach_grace: Duration::from_millis(500),
            poll_jitter: || 1.0,
        },
    }
}

/// One attachment that moves one phase on per describe (attaching → attached, detaching →
/// gone), unless `stuck_detach` holds a normal detach in `detaching` forever.
#[derive(Default)]
struct Model {
    att: Option<(InstanceId, AttachState, bool)>,
    next_id: u32,
    stuck_detach: bool,
    stuck_attach: bool,
    /// Describes that still show a new attach as `attaching` (the API lagging the hot-plug).
    attaching_for: u32,
    forced: bool,
    /// Answer the next attach with InUse and hand the ENI to this instance.
    race_winner: Option<InstanceId>,
    /// Device indexes an attach is refused at with InvalidParameter (AWS after a forced detach).
    refused_indexes: Vec<u32>,
    calls: Vec<Call>,
}

impl Model {
    fn holding(who: &str, state: AttachState, delete_on_termination: bool) -> Self {
        Model {
            att: Some((id(who), state, delete_on_termination)),
            ..Model::default()
        }
    }

    fn attachment_id(&self) -> String {
        format!("eni-attach-{:08x}", self.next_id)
    }

    fn info(&self) -> EniInfo {
        EniInfo {
            eni_id: ctx().eni,
            status: if self.att.is_some() {
                "in-use"
            } else {
                "available"
            }
            .into(),
            attachment: self.att.as_ref().map(|(i, state, dot)| Attachment {
                instance_id: i.clone(),
                attachment_id: self.attachment_id(),
                device_index: 1,
                state: *state,
                delete_on_termination: *dot,
            }),
            mac: "02:00:5e:10:00:25".into(),
            primary_ip: Ipv4Addr::new(198, 18, 1, 25),
            secondary_ips: Vec::new(),
            ipv6: None,
            subnet_cidr: None,
            availability_zone: None,
        }
    }

    fn answer(&mut self, call: &Call) -> Result<Reply, CloudError> {
        self.calls.push(call.clone());
        match call {
            Call::Describe => {
                let info = self.info();
                self.att = match self.att.take() {
                    Some((i, AttachState::Attaching, d)) if self.attaching_for > 0 => {
                        self.attaching_for -= 1;
                        Some((i, AttachState::Attaching, d))
                    }
                    Some((i, AttachState::Attaching, d)) if !self.stuck_attach => {
                        Some((i, AttachState::Attached, d))
                    }
                    Some((_, AttachState::Detaching, _)) if !self.stuck_detach || self.forced => {
                        None
                    }
                    other => other,
                };
                Ok(Reply::Described(info))
            }
            Call::Attach { device_index } => {
                if self.refused_indexes.contains(device_index) {
                    return Err(CloudError::new(
                        CloudErrorKind::InvalidParameter,
                        "already has an interface attached at that device index",
                    ));
                }
                if let Some(w) = self.race_winner.take() {
                    self.att = Some((w, AttachState::Attached, false));
                }
                if self.att.is_some() {
                    return Err(CloudError::new(CloudErrorKind::InUse, "in use"));
                }
                self.next_id += 1;
                self.att = Some((id(ME), AttachState::Attaching, false));
                Ok(Reply::Accepted)
            }
            Call::Detach {
                attachment_id,
                force,
            } => match self.att.take() {
                Some((i, _, d)) if *attachment_id == self.attachment_id() => {
                    self.forced |= *force;
                    self.att = Some((i, AttachState::Detaching, d));
                    Ok(Reply::Accepted)
                }
                other => {
                    self.att = other;
                    Err(CloudError::new(
                        CloudErrorKind::NotFound,
                        "no such attachment",
                    ))
                }
            },
            Call::KeepOnTermination { .. } => {
                if let Some((_, _, d)) = self.att.as_mut() {
                    *d = false;
                }
                Ok(Reply::Accepted)
            }
        }
    }
}

/// Runs `m` to the end against `model`: every call costs 10 ms of fake time.
fn drive<M: Procedure>(mut m: M, model: &mut Model) -> (Result<M::Output, CloudError>, Duration) {
    let mut elapsed = Duration::ZERO;
    let mut last = None;
    for _ in 0..1000 {
        match m.next(elapsed, last.take()) {
            Next::Call(c) => {
                elapsed += Duration::from_millis(10);
                last = Some(model.answer(&c));
            }
            Next::Wait(d) => elapsed += d,
            Next::Done(out) => return (out, elapsed),
        }
    }
    panic!("the procedure did not finish");
}

fn claim(expected: Option<&str>, force: bool) -> ClaimProc {
    claim_at(expected, force, vec![1])
}

fn claim_at(expected: Option<&str>, force: bool, device_indexes: Vec<u32>) -> ClaimProc {
    ClaimProc::new(
        ClaimRequest {
            expected_holder: expected.map(id),
            force,
            device_indexes,
        },
        ctx(),
    )
}

fn detaches(model: &Model) -> Vec<bool> {
    model
        .calls
        .iter()
        .filter_map(|c| match c {
            Call::Detach { force, .. } => Some(*force),
            _ => None,
        })
        .collect()
}

fn labels(steps: &[Step]) -> Vec<&str> {
    steps.iter().map(|s| s.label.as_str()).collect()
}

#[test]
fn adopts_its_own_attachment_and_keeps_it_on_termination() {
    let mut model = Model::holding(ME, AttachState::Attached, true);
    let (out, _) = drive(claim(None, false), &mut model);
    match out.unwrap() {
        ClaimOutcome::Claimed {
            info,
            already_mine,
            steps,
        } => {
            assert!(already_mine);
            assert_eq!(
                info.attachment.map(|a| a.delete_on_termination),
                Some(false)
            );
            assert_eq!(
                labels(&steps),
                [
                    "describe requested",
                    "described",
                    "delete-on-termination clear requested",
                    "delete-on-termination cleared"
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        model.calls[..],
        [Call::Describe, Call::KeepOnTermination { .. }]
    ));
}

#[test]
fn an_unexpected_holder_is_left_alone_even_with_force() {
    let mut model = Model::holding(OTHER, AttachState::Attached, false);
    let (out, _) = drive(claim(Some(PEER), true), &mut model);
    assert!(matches!(out.unwrap(), ClaimOutcome::HeldBy { holder, .. } if holder == id(OTHER)));
    assert_eq!(model.calls, [Call::Describe]);
}

#[test]
fn the_expected_holder_is_detached_then_the_eni_attached_here() {
    let mut model = Model::holding(PEER, AttachState::Attached, false);
    let (out, _) = drive(claim(Some(PEER), false), &mut model);
    assert!(matches!(
        out.unwrap(),
        ClaimOutcome::Claimed {
            already_mine: false,
            ..
        }
    ));
    assert_eq!(detaches(&model), [false], "no force without need");
    assert!(model.calls.contains(&Call::Attach { device_index: 1 }));
    assert_eq!(
        model.att.map(|a| (a.0, a.1)),
        Some((id(ME), AttachState::Attached))
    );
}

#[test]
fn force_is_used_at_once_when_asked() {
    let mut model = Model::holding(PEER, AttachState::Attached, false);
    model.stuck_detach = true;
    let (out, _) = drive(claim(Some(PEER), true), &mut model);
    assert!(out.is_ok());
    assert_eq!(detaches(&model), [true]);
}

#[test]
fn a_normal_detach_is_forced_after_the_grace() {
    let mut model = Model::holding(PEER, AttachState::Attached, false);
    model.stuck_detach = true;
    let (out, elapsed) = drive(claim(Some(PEER), false), &mut model);
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(detaches(&model), [false, true]);
    assert!(elapsed >= ctx().limits.force_detach_grace);
}

#[test]
fn a_pending_detach_of_someone_else_is_waited_out_without_force() {
    let mut model = Model::holding(OTHER, AttachState::Detaching, false);
    let (out, _) = drive(claim(None, true), &mut model);
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(detaches(&model), Vec::<bool>::new());
}

#[test]
fn a_lost_attach_race_names_the_winner() {
    let mut model = Model {
        race_winner: Some(id(OTHER)),
        ..Model::default()
    };
    let (out, _) = drive(claim(None, false), &mut model);
    match out.unwrap() {
        ClaimOutcome::HeldBy { holder, steps } => {
            assert_eq!(holder, id(OTHER));
            assert!(labels(&steps).contains(&"attach refused: in use"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_attach_that_never_finishes_ends_at_the_deadline() {
    let mut model = Model {
        stuck_attach: true,
        ..Model::default()
    };
    let (out, elapsed) = drive(claim(None, false), &mut model);
    let err = out.unwrap_err();
    assert_eq!(err.kind, CloudErrorKind::Deadline);
    assert!(err.retryable());
    assert!(
        elapsed < ctx().limits.deadline,
        "no poll ends past the deadline"
    );
}

#[test]
fn release_detaches_its_own_attachment_without_force() {
    let mut model = Model::holding(ME, AttachState::Attached, false);
    let (out, _) = drive(ReleaseProc::new(ctx()), &mut model);
    let out = out.unwrap();
    assert!(out.detached);
    assert_eq!(labels(&out.steps).last(), Some(&"detached"));
    assert_eq!(detaches(&model), [false]);
    assert_eq!(model.att, None);
}

#[test]
fn release_leaves_someone_elses_attachment_alone() {
    let mut model = Model::holding(PEER, AttachState::Attached, false);
    let (out, _) = drive(ReleaseProc::new(ctx()), &mut model);
    assert!(!out.unwrap().detached);
    assert_eq!(model.calls, [Call::Describe]);
}

#[test]
fn a_driver_answering_the_wrong_call_is_reported_not_guessed() {
    let mut m = claim(None, false);
    assert!(matches!(
        m.next(Duration::ZERO, None),
        Next::Call(Call::Describe)
    ));
    match m.next(Duration::ZERO, Some(Ok(Reply::Accepted))) {
        Next::Done(Err(e)) => assert_eq!(e.kind, CloudErrorKind::BadResponse),
        other => panic!("{other:?}"),
    }
    assert!(matches!(m.next(Duration::ZERO, None), Next::Done(Err(_))));
}

fn attach_indexes(model: &Model) -> Vec<u32> {
    model
        .calls
        .iter()
        .filter_map(|c| match c {
            Call::Attach { device_index } => Some(*device_index),
            _ => None,
        })
        .collect()
}

#[test]
fn a_refused_device_index_falls_back_to_the_next_and_says_so() {
    let mut model = Model {
        refused_indexes: vec![1],
        ..Model::default()
    };
    let (out, _) = drive(claim_at(None, false, vec![1, 2, 3]), &mut model);
    let Ok(ClaimOutcome::Claimed { steps, .. }) = out else {
        panic!("claimed at the next index: {out:?}");
    };
    assert_eq!(attach_indexes(&model), [1, 2]);
    assert!(
        labels(&steps).contains(&"attach refused at device index 1; trying 2"),
        "{:?}",
        labels(&steps)
    );
}

#[test]
fn a_claim_gives_up_only_after_every_listed_index() {
    let mut model = Model {
        refused_indexes: vec![1, 2, 3],
        ..Model::default()
    };
    let (out, _) = drive(claim_at(None, false, vec![1, 2, 3]), &mut model);
    let e = out.expect_err("every index refused");
    assert_eq!(e.kind, CloudErrorKind::InvalidParameter);
    assert!(e.message.contains("[1, 2, 3]"), "{}", e.message);
    assert_eq!(attach_indexes(&model), [1, 2, 3]);
}

#[test]
fn the_first_index_is_used_when_it_is_accepted() {
    let mut model = Model {
        refused_indexes: vec![2],
        ..Model::default()
    };
    let (out, _) = drive(claim_at(None, false, vec![1, 2, 3]), &mut model);
    assert!(matches!(out, Ok(ClaimOutcome::Claimed { .. })), "{out:?}");
    assert_eq!(attach_indexes(&model), [1]);
}

// ---------- the poll schedule ----------

#[test]
fn the_poll_is_steady_for_the_first_seconds_then_backs_off_to_the_cap() {
    let ms = Duration::from_millis;
    let default = PollSchedule::default();
    let table = [
        // (schedule, time into the wait, delay)
        (default, ms(0), ms(100)),
        (default, ms(1_500), ms(100)),
        (default, ms(2_999), ms(100)),
        (default, ms(3_000), ms(100)),
        (default, ms(3_100), ms(100)),
        (default, ms(3_500), ms(250)),
        (default, ms(4_000), ms(500)),
        (default, ms(5_000), ms(1_000)),
        (default, ms(60_000), ms(1_000)),
        (PollSchedule::every(ms(20)), ms(0), ms(20)),
        (PollSchedule::every(ms(20)), ms(3_010), ms(20)),
        (PollSchedule::every(ms(20)), ms(9_000), ms(1_000)),
        // A cadence above the default cap is never backed off below itself.
        (PollSchedule::every(ms(2_000)), ms(0), ms(2_000)),
        (PollSchedule::every(ms(2_000)), ms(60_000), ms(2_000)),
        // Zero is no cadence: it is raised to 1 ms rather than spinning.
        (PollSchedule::every(ms(0)), ms(0), ms(1)),
    ];
    for (schedule, waited, want) in table {
        assert_eq!(schedule.delay(waited), want, "{schedule:?} at {waited:?}");
    }
}

#[test]
fn the_number_of_polls_is_bounded_by_the_deadline() {
    let s = PollSchedule::default();
    let table = [
        // (deadline, most polls): 3 s at 80 ms, then 125, 250, 500 ms ... up to 800 ms each.
        (Duration::from_millis(50), 0),
        (Duration::from_secs(1), 12),
        (Duration::from_secs(3), 37),
        (
            Duration::from_secs(10),
            s.max_polls(Duration::from_secs(10)),
        ),
    ];
    for (deadline, want) in table {
        assert_eq!(s.max_polls(deadline), want, "{deadline:?}");
    }
    let ten = s.max_polls(Duration::from_secs(10));
    assert!((40..=55).contains(&ten), "10 s of polling is {ten} looks");
    assert!(s.max_polls(Duration::from_secs(60)) < ten + 65);
}

/// Runs a claim to the end with the API never saying `attached`; returns the delays it waited.
fn waits_of_a_stuck_attach(schedule: PollSchedule) -> (Vec<Duration>, Model, CallCount) {
    let mut model = Model {
        stuck_attach: true,
        ..Model::default()
    };
    let mut m = claim(None, false).with_poll(schedule);
    let (mut elapsed, mut last, mut waits) = (Duration::ZERO, None, Vec::new());
    loop {
        match m.next(elapsed, last.take()) {
            Next::Call(c) => {
                elapsed += Duration::from_millis(10);
                last = Some(model.answer(&c));
            }
            Next::Wait(d) => {
                waits.push(d);
                elapsed += d;
            }
            Next::Done(out) => {
                assert_eq!(out.unwrap_err().kind, CloudErrorKind::Deadline);
                return (waits, model, m.calls());
            }
        }
    }
}

#[test]
fn a_transition_is_polled_at_the_steady_cadence_and_the_calls_are_counted_and_bounded() {
    let schedule = PollSchedule::every(Duration::from_millis(100));
    let (waits, model, calls) = waits_of_a_stuck_attach(schedule);
    // ctx(): a 5 s deadline; 10 ms per call. 100 ms apart (jitter 1.0 = 100 %) for the first
    // 3 s and until half the time past them exceeds the cadence (3.2 s): 30 looks.
    let steady = waits
        .iter()
        .take_while(|d| **d == Duration::from_millis(100));
    assert_eq!(steady.count(), 30, "{waits:?}");
    assert!(waits.windows(2).all(|w| w[0] <= w[1]), "never faster later");
    assert!(waits.iter().all(|d| *d <= schedule.max), "{waits:?}");
    let described = model.calls.iter().filter(|c| **c == Call::Describe).count();
    assert_eq!(calls.describe as usize, described);
    assert_eq!((calls.attach, calls.detach, calls.keep), (1, 0, 0));
    assert_eq!(calls.total() as usize, model.calls.len());
    assert!(calls.total() <= schedule.claim_call_bound(ctx().limits.deadline));
}

// ---------- acting on the hot-plug ----------

/// Drives a claim, reporting the link right after call number `link_at` (1-based) is asked for,
/// before its answer: what a driver does when the link shows up while a call is in flight.
fn drive_seeing_link(
    mut m: ClaimProc,
    model: &mut Model,
    link_at: usize,
) -> (Result<ClaimOutcome, CloudError>, Vec<Option<EarlyClaim>>) {
    let (mut elapsed, mut last, mut early, mut n) = (Duration::ZERO, None, Vec::new(), 0);
    for _ in 0..1000 {
        match m.next(elapsed, last.take()) {
            Next::Call(c) => {
                n += 1;
                if n == link_at {
                    // Twice: only the first one counts.
                    early.push(m.link_seen());
                    early.push(m.link_seen());
                }
                elapsed += Duration::from_millis(10);
                last = Some(model.answer(&c));
            }
            Next::Wait(d) => elapsed += d,
            Next::Done(out) => return (out, early),
        }
    }
    panic!("the procedure did not finish");
}

#[test]
fn the_link_after_the_attach_is_the_claim_and_the_api_confirms_it_later() {
    // Calls: describe, detach, describe (detaching), describe (gone), attach, describe
    // (attaching) ...
    let table = [
        // (link seen at call, the API still attaching for, early claim?, early's last steps)
        (5, 3, true, ["attach requested", "link seen"]),
        (6, 3, true, ["attach accepted", "link seen"]),
        (7, 3, true, ["attach accepted", "link seen"]),
        // Before the attach: not ours to act on.
        (1, 3, false, ["", ""]),
        (4, 3, false, ["", ""]),
    ];
    for (link_at, lag, acted, last_two) in table {
        let mut model = Model::holding(PEER, AttachState::Attached, false);
        model.attaching_for = lag;
        let (out, early) = drive_seeing_link(claim(Some(PEER), true), &mut model, link_at);
        let first = early[0].as_ref();
        assert_eq!(first.is_some(), acted, "link at call {link_at}");
        assert!(early[1].is_none(), "one early claim at most");
        let ClaimOutcome::Claimed { steps, .. } = out.unwrap() else {
            panic!("the claim is confirmed");
        };
        let rest = labels(&steps);
        assert!(rest.contains(&"attached"), "{rest:?}");
        let Some(e) = first else { continue };
        let l = labels(&e.steps);
        assert_eq!(l[l.len() - 2..], last_two, "link at call {link_at}");
        assert!(!l.contains(&"attached"), "acted on before the API said so");
        assert!(
            !rest.contains(&"describe requested"),
            "steps are reported once"
        );
        assert_eq!(e.info.mac, "02:00:5e:10:00:25");
        assert!(
            e.info.attachment.iter().all(|a| a.instance_id == id(ME)),
            "the early description names no other holder: {:?}",
            e.info.attachment
        );
    }
}

#[test]
fn an_early_claim_whose_attachment_the_api_gives_to_another_is_held_by_it() {
    let mut model = Model {
        attaching_for: 1,
        ..Model::default()
    };
    let mut m = claim(None, false);
    let mut early = None;
    let mut last = None;
    for _ in 0..20 {
        match m.next(Duration::ZERO, last.take()) {
            Next::Call(c) => {
                let answer = model.answer(&c);
                if matches!(c, Call::Attach { .. }) {
                    early = m.link_seen();
                    // Someone else's attach wins in the API after all.
                    model.att = Some((id(OTHER), AttachState::Attached, false));
                }
                last = Some(answer);
            }
            Next::Wait(_) => {}
            Next::Done(out) => {
                assert!(early.is_some());
                assert!(
                    matches!(out.unwrap(), ClaimOutcome::HeldBy { holder, .. } if holder == id(OTHER))
                );
                return;
            }
        }
    }
    panic!("the procedure did not finish");
}

#[test]
fn a_link_after_the_claim_ended_is_no_news() {
    let mut model = Model::default();
    let mut m = claim(None, false);
    let mut last = None;
    loop {
        match m.next(Duration::ZERO, last.take()) {
            Next::Call(c) => last = Some(model.answer(&c)),
            Next::Wait(_) => {}
            Next::Done(out) => {
                assert!(out.is_ok());
                break;
            }
        }
    }
    assert!(m.link_seen().is_none());
}

#[test]
fn a_link_already_here_for_a_pending_attach_of_ours_waits_for_the_api() {
    // An earlier attach of ours is still `attaching`: not this claim's attach to act on.
    let mut model = Model::holding(ME, AttachState::Attaching, false);
    let (out, early) = drive_seeing_link(claim(None, false), &mut model, 2);
    assert!(early.iter().all(Option::is_none));
    assert!(matches!(
        out.unwrap(),
        ClaimOutcome::Claimed {
            already_mine: true,
            ..
        }
    ));
}

// ---------- the describe a forced claim can do without ----------

#[test]
fn a_forced_claim_detaches_the_known_attachment_without_describing_first() {
    let mut model = Model::holding(PEER, AttachState::Attached, false);
    let known = model.attachment_id();
    let m = claim(Some(PEER), true).with_known_attachment(known.clone());
    let (out, _) = drive(m, &mut model);
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(
        model.calls[0],
        Call::Detach {
            attachment_id: known,
            force: true
        }
    );
    assert_eq!(model.calls[1], Call::Describe);
    assert_eq!(detaches(&model), [true]);
}

#[test]
fn a_stale_known_attachment_falls_back_to_describe() {
    let table = [
        // (known attachment id, forced, calls before the attach)
        ("eni-attach-stale", true, 5),
        ("eni-attach-00000000", false, 4),
    ];
    for (known, force, before_attach) in table {
        let mut model = Model::holding(PEER, AttachState::Attached, false);
        let m = claim(Some(PEER), force).with_known_attachment(known.into());
        let (out, _) = drive(m, &mut model);
        assert!(out.is_ok(), "{known}: {out:?}");
        let attach = model
            .calls
            .iter()
            .position(|c| matches!(c, Call::Attach { .. }));
        assert_eq!(attach, Some(before_attach), "{known}: {:?}", model.calls);
        let first_describe = model.calls.iter().position(|c| *c == Call::Describe);
        assert_eq!(first_describe, Some(usize::from(force)), "{known}");
        assert_eq!(
            detaches(&model),
            if force { vec![true, true] } else { vec![false] }
        );
    }
}
