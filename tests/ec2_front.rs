//! The EC2 adapter through the cloud front (tests/support/cloud_front.rs), which adds the AWS
//! rules moto lacks: single attachment (`InvalidNetworkInterface.InUse`), taken device indexes
//! (`InvalidParameterValue`), asynchronous attach/detach, remembered DeleteOnTermination, and
//! injected faults (throttling, 500s, hangs).

mod support;

use std::time::{Duration, Instant};

use enipeer::cloud::{ClaimOutcome, Cloud, CloudErrorKind};
use support::cloud_front::{CloudFront, Fault};
use support::*;

async fn front_for(moto: &Moto) -> CloudFront {
    CloudFront::start("127.0.0.1:0".parse().unwrap(), moto.addr)
        .await
        .unwrap()
}

#[tokio::test]
async fn racing_claimers_have_exactly_one_winner() {
    let moto = Moto::start();
    let ec2 = sdk_client(&moto.endpoint_url()).await;
    let lab = seed(&ec2).await;
    let front = front_for(&moto).await;
    let ctl = front.control();
    ctl.set_delays(Duration::from_millis(20), Duration::from_millis(20));
    let a = cloud(&front.endpoint_url(), &lab, &lab.a).await;
    let b = cloud(&front.endpoint_url(), &lab, &lab.b).await;
    a.describe().await.unwrap();
    b.describe().await.unwrap();

    let rounds = 25;
    let mut wins = [0usize; 2];
    let mut refused = 0;
    for round in 0..rounds {
        ctl.clear_calls();
        let (ra, rb) = tokio::join!(a.claim(req(None, false)), b.claim(req(None, false)));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let (winner, loser_says) = match (&ra, &rb) {
            (ClaimOutcome::Claimed { .. }, ClaimOutcome::HeldBy { holder, .. }) => {
                wins[0] += 1;
                (&lab.a, holder)
            }
            (ClaimOutcome::HeldBy { holder, .. }, ClaimOutcome::Claimed { .. }) => {
                wins[1] += 1;
                (&lab.b, holder)
            }
            other => panic!("round {round}: not exactly one winner: {other:#?}"),
        };
        assert_eq!(
            loser_says, winner,
            "round {round}: the loser names the winner"
        );
        let accepted = ctl
            .calls()
            .iter()
            .filter(|c| c.action == "AttachNetworkInterface" && c.status == 200)
            .count();
        assert_eq!(accepted, 1, "round {round}: one attach reached moto");
        refused += ctl.calls().iter().filter(|c| c.outcome == "in-use").count();
        assert_eq!(a.describe().await.unwrap().holder(), Some(winner));
        let released = if winner == &lab.a {
            a.release().await.unwrap()
        } else {
            b.release().await.unwrap()
        };
        assert!(released.detached);
    }
    println!(
        "race wins over {rounds} rounds: a={} b={}; attaches refused as in use: {refused}",
        wins[0], wins[1]
    );
    assert!(
        refused > 0,
        "the race was decided by the front's in-use rule at least once"
    );
}

#[tokio::test]
async fn attach_refused_as_in_use_reports_the_holder() {
    let moto = Moto::start();
    let ec2 = sdk_client(&moto.endpoint_url()).await;
    let lab = seed(&ec2).await;
    let front = front_for(&moto).await;
    let ctl = front.control();
    // B's attach is still "attaching" when A looks, so A decides to attach and is refused.
    ctl.set_delays(Duration::from_millis(400), Duration::ZERO);
    let a = cloud(&front.endpoint_url(), &lab, &lab.a).await;
    let b = cloud(&front.endpoint_url(), &lab, &lab.b).await;
    a.describe().await.unwrap();
    let b_claim = tokio::spawn(async move { b.claim(req(None, false)).await });
    // Let B's attach land first.
    while ctl.count("AttachNetworkInterface") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match a.claim(req(None, false)).await.unwrap() {
        ClaimOutcome::HeldBy { holder, .. } => assert_eq!(holder, lab.b),
        other => panic!("expected HeldBy, got {other:?}"),
    }
    match b_claim.await.unwrap().unwrap() {
        ClaimOutcome::Claimed { steps, .. } => {
            assert!(labels(&steps).contains(&"attached"));
        }
        other => panic!("B should have won: {other:?}"),
    }
}

#[tokio::test]
async fn slow_detach_is_waited_for_and_forced_after_the_grace() {
    let moto = Moto::start();
    let ec2 = sdk_client(&moto.endpoint_url()).await;
    let lab = seed(&ec2).await;
    attach_directly(&ec2, &lab, &lab.b).await;
    let front = front_for(&moto).await;
    let ctl = front.control();
    let a = cloud(&front.endpoint_url(), &lab, &lab.a).await;

    // Detach slower than the 300 ms grace: the adapter forces.
    ctl.set_delays(Duration::from_millis(100), Duration::from_secs(3));
    let ClaimOutcome::Claimed { steps, .. } = a.claim(req(Some(&lab.b), false)).await.unwrap()
    else {
        panic!("claim must succeed");
    };
    let l = labels(&steps);
    let normal = l.iter().position(|s| *s == "detach requested").unwrap();
    let forced = l
        .iter()
        .position(|s| *s == "force detach requested")
        .unwrap();
    let detached = l.iter().position(|s| *s == "detached").unwrap();
    assert!(normal < forced && forced < detached, "{l:?}");
    let gap = steps[forced].at.duration_since(steps[normal].at);
    assert!(
        gap >= Duration::from_millis(300),
        "forced only after the grace: {gap:?}"
    );
    assert!(
        ctl.calls()
            .iter()
            .any(|c| c.action == "DescribeNetworkInterfaces" && c.outcome == "forwarded"),
        "the adapter polled"
    );

    // Back to B with a detach faster than the grace: no force.
    let b = cloud(&front.endpoint_url(), &lab, &lab.b).await;
    ctl.set_delays(Duration::from_millis(100), Duration::from_millis(100));
    let ClaimOutcome::Claimed { steps, .. } = b.claim(req(Some(&lab.a), false)).await.unwrap()
    else {
        panic!("claim back must succeed");
    };
    let l = labels(&steps);
    assert!(
        l.contains(&"detached") && !l.contains(&"force detach requested"),
        "{l:?}"
    );
    assert!(l.contains(&"attached"));
}

#[tokio::test]
async fn delete_on_termination_is_cleared_after_attach() {
    let moto = Moto::start();
    let ec2 = sdk_client(&moto.endpoint_url()).await;
    let lab = seed(&ec2).await;
    let attachment = attach_directly(&ec2, &lab, &lab.a).await;
    let front = front_for(&moto).await;
    let ctl = front.control();
    ctl.set_delete_on_termination(&attachment, true);
    let a = cloud(&front.endpoint_url(), &lab, &lab.a).await;
    assert!(
        a.describe()
            .await
            .unwrap()
            .attachment
            .unwrap()
            .delete_on_termination
    );

    let ClaimOutcome::Claimed {
        info,
        already_mine,
        steps,
    } = a.claim(req(None, false)).await.unwrap()
    else {
        panic!("claim must succeed");
    };
    assert!(already_mine);
    assert!(labels(&steps).contains(&"delete-on-termination cleared"));
    assert!(!info.attachment.unwrap().delete_on_termination);
    assert!(
        !a.describe()
            .await
            .unwrap()
            .attachment
            .unwrap()
            .delete_on_termination
    );
    assert_eq!(ctl.count("ModifyNetworkInterfaceAttribute"), 1);
    assert_eq!(ctl.count("AttachNetworkInterface"), 0);
    assert_eq!(ctl.count("DetachNetworkInterface"), 0);
}

#[tokio::test]
async fn a_taken_device_index_is_a_clear_permanent_error() {
    let moto = Moto::start();
    let ec2 = sdk_client(&moto.endpoint_url()).await;
    let lab = seed(&ec2).await;
    // Another ENI already sits at device index 1 of A.
    let other = ec2
        .create_network_interface()
        .subnet_id(&lab.subnet)
        .send()
        .await
        .unwrap()
        .network_interface
        .and_then(|n| n.network_interface_id)
        .unwrap();
    ec2.attach_network_interface()
        .network_interface_id(&other)
        .instance_id(lab.a.as_str())
        .device_index(1)
        .send()
        .await
        .unwrap();
    let front = front_for(&moto).await;
    let a = cloud(&front.endpoint_url(), &lab, &lab.a).await;
    let err = a.claim(req(None, false)).await.unwrap_err();
    assert_eq!(err.kind, CloudErrorKind::InvalidParameter);
    assert!(!err.retryable());
    assert!(err.message.contains("device index"), "{err}");
    assert_eq!(
        front.control().count("AttachNetworkInterface"),
        1,
        "not retried"
    );
}

#[tokio::test]
async fn faults_that_stop_within_the_deadline_are_survived() {
    let moto = Moto::start();
    let ec2 = sdk_client(&moto.endpoint_url()).await;
    let lab = seed(&ec2).await;
    attach_directly(&ec2, &lab, &lab.b).await;
    let front = front_for(&moto).await;
    let ctl = front.control();
    let a = cloud_with_timeout(&front.endpoint_url(), &lab, &lab.a, Duration::from_secs(6)).await;
    a.describe().await.unwrap();
    ctl.clear_calls();

    ctl.inject(Some("DescribeNetworkInterfaces"), Fault::Throttle, 3);
    ctl.inject(Some("DetachNetworkInterface"), Fault::Hang, 1);
    ctl.inject(Some("AttachNetworkInterface"), Fault::ServerError, 2);
    let ClaimOutcome::Claimed { info, .. } = a.claim(req(Some(&lab.b), false)).await.unwrap()
    else {
        panic!("claim must succeed once the faults stop");
    };
    assert_eq!(info.holder(), Some(&lab.a));
    let calls = ctl.calls();
    let faults = |f: Fault| calls.iter().filter(|c| c.fault == Some(f)).count();
    assert_eq!(faults(Fault::Throttle), 3);
    assert_eq!(faults(Fault::Hang), 1);
    assert_eq!(faults(Fault::ServerError), 2);
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.action == "AttachNetworkInterface" && c.status == 200)
            .count(),
        1
    );
}

#[tokio::test]
async fn persistent_throttling_fails_with_a_clear_deadline_error() {
    let moto = Moto::start();
    let ec2 = sdk_client(&moto.endpoint_url()).await;
    let lab = seed(&ec2).await;
    attach_directly(&ec2, &lab, &lab.b).await;
    let front = front_for(&moto).await;
    let ctl = front.control();
    let timeout = Duration::from_secs(2);
    let a = cloud_with_timeout(&front.endpoint_url(), &lab, &lab.a, timeout).await;
    a.describe().await.unwrap();

    ctl.inject(Some("DetachNetworkInterface"), Fault::Throttle, usize::MAX);
    let started = Instant::now();
    let err = a.claim(req(Some(&lab.b), false)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind, CloudErrorKind::Deadline);
    assert!(err.retryable());
    assert!(err.message.contains("DetachNetworkInterface"), "{err}");
    assert!(err.message.contains("RequestLimitExceeded"), "{err}");
    assert!(
        took < timeout + Duration::from_secs(2),
        "bounded by the deadline: {took:?}"
    );
    assert!(ctl.count("DetachNetworkInterface") >= 3, "it retried");
    // Nothing moved.
    ctl.clear_faults();
    assert_eq!(a.describe().await.unwrap().holder(), Some(&lab.b));
}

#[tokio::test]
async fn a_hanging_endpoint_fails_with_a_clear_deadline_error() {
    let moto = Moto::start();
    let ec2 = sdk_client(&moto.endpoint_url()).await;
    let lab = seed(&ec2).await;
    let front = front_for(&moto).await;
    let ctl = front.control();
    let timeout = Duration::from_secs(2);
    let a = cloud_with_timeout(&front.endpoint_url(), &lab, &lab.a, timeout).await;
    a.describe().await.unwrap();

    ctl.inject(None, Fault::Hang, usize::MAX);
    let started = Instant::now();
    let err = a.describe().await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind, CloudErrorKind::Deadline);
    assert!(err.message.contains("timeout"), "{err}");
    assert!(
        took < timeout + Duration::from_secs(2),
        "bounded by the deadline: {took:?}"
    );
    assert!(
        ctl.count("DescribeNetworkInterfaces") >= 2,
        "hung attempts were retried"
    );
}
