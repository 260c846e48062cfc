//! The daemon's own bookkeeping, driven directly: actions that need the ENI's description hand
//! the describe to the cloud worker instead of awaiting it, wait for it in order, and answer the
//! core through the loop's channel.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use super::{CloudJob, Daemon, Done, NetJob, Workers};
use crate::cloud::{CloudError, EniInfo};
use crate::core::{Action, Event};
use crate::hooks::HookRunner;
use crate::peer::PeerLink;

const CONFIG: &str = r#"
[node]
name = "node-a"

[[peer]]
name = "node-b"
addresses = ["127.0.0.1:9"]

[group]
id = 7
eni = "eni-0123456789abcdef0"

[heartbeat]
# Only to pass validation (port 0 is refused); the test binds its own socket on port 0.
bind = "127.0.0.1:7946"
"#;

struct Ends {
    cloud: UnboundedReceiver<CloudJob>,
    net: UnboundedReceiver<NetJob>,
    done: UnboundedReceiver<Done>,
}

fn daemon() -> (Daemon, Ends) {
    let settings = crate::config::parse(CONFIG, Path::new("test.toml")).expect("test config");
    let peer = PeerLink::bind(
        "127.0.0.1:0".parse().expect("addr"),
        7,
        "node-a".parse().unwrap(),
        vec![(
            "node-b".parse().unwrap(),
            vec!["127.0.0.1:9".parse().expect("addr")],
        )],
        vec![7; 32],
        Duration::from_secs(30),
        1,
    )
    .expect("bind");
    let (hooks, _) = HookRunner::spawn(settings.hooks.clone());
    let (done_tx, done) = mpsc::unbounded_channel();
    let (net_tx, net) = mpsc::unbounded_channel();
    let (cloud_tx, cloud) = mpsc::unbounded_channel();
    let workers = Workers {
        net: Arc::new(crate::net::NoopNet),
        net_tx,
        cloud_tx,
        done_tx,
    };
    let id = "i-0000000a".parse().expect("id");
    let d = Daemon::new(settings, id, peer, hooks, workers);
    (d, Ends { cloud, net, done })
}

fn eni() -> EniInfo {
    EniInfo {
        eni_id: "eni-0123456789abcdef0".parse().expect("eni"),
        status: "in-use".into(),
        attachment: None,
        mac: "02:00:00:00:00:01".into(),
        primary_ip: Ipv4Addr::new(198, 18, 1, 25),
        secondary_ips: Vec::new(),
        ipv6: None,
        subnet_cidr: None,
        availability_zone: None,
    }
}

/// Runs a step of the daemon that must not wait for anything outside it.
fn at_once(f: impl std::future::Future<Output = ()>) {
    f.now_or_never()
        .expect("the step completes without waiting for a worker");
}

#[tokio::test]
async fn apply_without_a_description_is_answered_through_the_channel() {
    let (mut d, mut ends) = daemon();
    at_once(d.act(Action::ApplyNet));
    assert!(matches!(
        ends.cloud.try_recv(),
        Ok(CloudJob::DescribeForPlan)
    ));
    assert!(
        ends.done.try_recv().is_err(),
        "no answer before the describe"
    );
    let failed = CloudError::new(crate::cloud::CloudErrorKind::Timeout, "describe timed out");
    at_once(d.on_done(Done::Described(Err(failed))));
    match ends.done.try_recv() {
        Ok(Done::Net {
            event: Event::NetApplied(Err(_)),
            ..
        }) => {}
        _ => panic!("the failed apply comes back as a net result"),
    }
    assert!(
        ends.net.try_recv().is_err(),
        "nothing applied without a plan"
    );
    let tl = d.timeline.report().expect("an adopt timeline");
    assert_eq!(tl.kind, "adopt");
}

#[tokio::test]
async fn plan_uses_wait_for_one_describe_and_keep_their_order() {
    let (mut d, mut ends) = daemon();
    at_once(d.act(Action::ApplyNet));
    at_once(d.act(Action::RemoveNet));
    assert!(matches!(
        ends.cloud.try_recv(),
        Ok(CloudJob::DescribeForPlan)
    ));
    assert!(ends.cloud.try_recv().is_err(), "one describe for both");
    at_once(d.on_done(Done::Described(Ok(eni()))));
    assert!(matches!(ends.net.try_recv(), Ok(NetJob::Apply(_))));
    assert!(matches!(ends.net.try_recv(), Ok(NetJob::Remove(p)) if p.len() == 1));
    // Known now: the next use goes straight to the net worker.
    at_once(d.act(Action::ApplyNet));
    assert!(ends.cloud.try_recv().is_err());
    assert!(matches!(ends.net.try_recv(), Ok(NetJob::Apply(_))));
}

/// The host adapter with a fault hook: the first removal fails (leaving the host config in
/// place), every later one succeeds. Counts removals. With `ipv6_error`, every apply reports
/// the IPv6 part failed (a host with IPv6 turned off).
#[derive(Default)]
struct FailsFirstRemoval {
    removals: std::sync::atomic::AtomicUsize,
    ipv6_error: Option<String>,
}

impl crate::net::HostNet for FailsFirstRemoval {
    fn prepare<'a>(
        &'a self,
        _mac: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), crate::net::NetError>> {
        Box::pin(async { Ok(()) })
    }

    fn apply<'a>(
        &'a self,
        _plan: &'a crate::net::NetPlan,
    ) -> futures::future::BoxFuture<'a, Result<crate::net::ApplyReport, crate::net::NetError>> {
        let ipv6_error = self.ipv6_error.clone();
        Box::pin(async move {
            Ok(crate::net::ApplyReport {
                ipv6_error,
                ..Default::default()
            })
        })
    }

    fn reconcile<'a>(
        &'a self,
        plan: &'a crate::net::NetPlan,
    ) -> futures::future::BoxFuture<'a, Result<crate::net::ApplyReport, crate::net::NetError>> {
        self.apply(plan)
    }

    fn remove<'a>(
        &'a self,
        _plan: &'a crate::net::NetPlan,
    ) -> futures::future::BoxFuture<'a, Result<crate::net::ApplyReport, crate::net::NetError>> {
        let n = self
            .removals
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if n == 0 {
                return Err(crate::net::NetError::new(
                    crate::net::NetErrorKind::Netlink,
                    "delete rule from 198.18.1.25 lookup 10001: EBUSY",
                ));
            }
            Ok(crate::net::ApplyReport::default())
        })
    }

    fn watch<'a>(
        &'a self,
        _plan: &'a crate::net::NetPlan,
    ) -> futures::future::BoxFuture<
        'a,
        Result<tokio::sync::mpsc::Receiver<crate::net::NetEvent>, crate::net::NetError>,
    > {
        Box::pin(async { Ok(tokio::sync::mpsc::channel(1).1) })
    }
}

/// Waits (bounded) for the next message of the net worker.
async fn next_done(done: &mut UnboundedReceiver<Done>) -> Done {
    tokio::time::timeout(Duration::from_secs(5), done.recv())
        .await
        .expect("the net worker answers")
        .expect("the net worker is running")
}

/// A removal outside the release path (after a step-down: not serving) fails once: the role
/// report lists the leftover, the next reconcile removes it again, and then the host is clean
/// and the report says nothing. The net worker is the real one; the adapter fails once.
#[tokio::test]
async fn a_failed_removal_is_retried_on_reconcile_until_the_host_is_clean() {
    let (mut d, ends) = daemon();
    let net = Arc::new(FailsFirstRemoval::default());
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let (net_tx, net_rx) = mpsc::unbounded_channel();
    tokio::spawn(super::net_worker::run(net.clone(), net_rx, done_tx));
    d.net_tx = net_tx;
    d.remember_eni(eni());
    assert!(!d.node.is_serving());

    at_once(d.act(Action::RemoveNet));
    // The removal's leftovers first, then its result for the core.
    let left = next_done(&mut done).await;
    assert!(matches!(&left, Done::Leftovers { failed, .. } if failed.len() == 1));
    at_once(d.on_done(left));
    assert!(matches!(
        next_done(&mut done).await,
        Done::Net {
            event: Event::NetRemoved(Err(_)),
            ..
        }
    ));
    let report = d.report();
    assert_eq!(report.leftovers.len(), 1, "{:?}", report.leftovers);
    assert!(
        report.leftovers[0].contains("EBUSY"),
        "{:?}",
        report.leftovers
    );
    assert!(report.render(0).contains("LEFTOVER on the host"));

    // The reconcile tick removes it again, off the core's path.
    at_once(d.reconcile());
    let again = next_done(&mut done).await;
    assert!(
        matches!(&again, Done::Leftovers { tried, failed } if tried.len() == 1 && failed.is_empty())
    );
    at_once(d.on_done(again));
    assert_eq!(net.removals.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(d.report().leftovers.is_empty(), "the host is clean");
    assert!(!d.report().render(0).contains("LEFTOVER"));

    // Clean: the next tick has nothing to remove.
    let (net_tx, mut jobs) = mpsc::unbounded_channel();
    d.net_tx = net_tx;
    at_once(d.reconcile());
    assert!(jobs.try_recv().is_err(), "no removal once clean");
    drop(ends);
}

/// An apply whose IPv6 part failed is still an apply (the core hears `NetApplied(Ok)`), and
/// `role` says IPv6 is missing until the net worker reports it in place.
#[tokio::test]
async fn an_ipv6_failure_is_shown_in_role_and_the_apply_still_succeeds() {
    let (mut d, ends) = daemon();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let (net_tx, net_rx) = mpsc::unbounded_channel();
    let net = FailsFirstRemoval {
        ipv6_error: Some("add address 2001:db8:0:1::25/64: Permission denied".into()),
        ..FailsFirstRemoval::default()
    };
    tokio::spawn(super::net_worker::run(Arc::new(net), net_rx, done_tx));
    let mut info = eni();
    info.ipv6 = Some(Box::new(crate::cloud::EniIpv6 {
        addresses: vec!["2001:db8:0:1::25".parse().unwrap()],
        subnet_cidr: None,
    }));
    let plan = crate::net::NetPlan::build(&info, &d.settings.network);
    net_tx.send(NetJob::Apply(plan)).unwrap();
    let first = next_done(&mut done).await;
    assert!(matches!(&first, Done::Ipv6(Some(e)) if e.contains("Permission denied")));
    assert!(matches!(
        next_done(&mut done).await,
        Done::Net {
            event: Event::NetApplied(Ok(())),
            ..
        }
    ));
    at_once(d.on_done(first));
    let report = d.report();
    assert!(report.ipv6_problem.is_some());
    assert!(report.render(0).contains("IPv6 NOT configured on the host"));

    at_once(d.on_done(Done::Ipv6(None)));
    assert_eq!(d.report().ipv6_problem, None, "in place now");
    drop(ends);
}
