//! The net worker: applies, removes and repairs the host network config, one job at a time, off
//! the loop, and reports each apply and removal back as a [`Done::Net`]. Every removal also
//! reports what it left on the host ([`Done::Leftovers`]), so the loop can retry it later
//! ([`NetJob::Cleanup`]) until the host is clean.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Done;
use crate::core::Event;
use crate::net::{HostNet, NetPlan};

pub(super) enum NetJob {
    Apply(NetPlan),
    /// Every plan that may be on the host: the applied one and the current one, when the ENI's
    /// addresses changed in between.
    Remove(Vec<NetPlan>),
    /// Repair drift; only while master and with `network.repair` on. Not news for the core.
    Reconcile(NetPlan),
    /// With `network.repair` off: only add the routes via the IPv6 router, which wait for its
    /// advertisement. Not news for the core.
    RouterRoutes(NetPlan),
    /// Remove again what an earlier removal left behind. Not news for the core: only the
    /// [`Done::Leftovers`] comes back.
    Cleanup(Vec<NetPlan>),
}

pub(super) async fn run(
    net: Arc<dyn HostNet>,
    mut jobs: mpsc::UnboundedReceiver<NetJob>,
    done: mpsc::UnboundedSender<Done>,
) {
    // One job at a time, in order: a remove queued behind an apply must not overtake it.
    while let Some(job) = jobs.recv().await {
        let msg = match job {
            NetJob::Apply(plan) => {
                let (msg, ipv6) = apply(&*net, &plan).await;
                if ipv6.is_some_and(|v| done.send(v).is_err()) {
                    return;
                }
                msg
            }
            NetJob::Remove(plans) => {
                let (done_msg, left) = remove(&*net, &plans).await;
                if done.send(left).is_err() {
                    return;
                }
                done_msg
            }
            NetJob::Reconcile(plan) => {
                if let Some(v) = reconcile(&*net, &plan).await {
                    if done.send(v).is_err() {
                        return;
                    }
                }
                continue;
            }
            NetJob::RouterRoutes(plan) => {
                match net.add_router_routes(&plan).await {
                    Ok(r) if !r.router_routes.is_empty() => {
                        info!(added = ?r.router_routes, "IPv6 router advertised itself: default route added");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, kind = e.kind(), "adding the IPv6 default route failed")
                    }
                }
                continue;
            }
            NetJob::Cleanup(plans) => remove(&*net, &plans).await.1,
        };
        if done.send(msg).is_err() {
            return;
        }
    }
}

/// The apply's result for the core and, for a plan with IPv6, the state of its IPv6 part.
async fn apply(net: &dyn HostNet, plan: &NetPlan) -> (Done, Option<Done>) {
    match net.apply(plan).await {
        Ok(report) => {
            if !report.changed.is_empty() {
                info!(changes = ?report.changed, "host network configured");
            }
            let ipv6 = ipv6_status(plan, &report);
            let done = Done::Net {
                event: Event::NetApplied(Ok(())),
                steps: report.steps,
            };
            (done, ipv6)
        }
        Err(e) => {
            warn!(error = %e, kind = e.kind(), "applying the host network config failed");
            let done = Done::Net {
                event: Event::NetApplied(Err(e.to_string())),
                steps: Vec::new(),
            };
            (done, None)
        }
    }
}

/// Removes every plan, going on past a failure so that one stuck rule does not leave the rest
/// behind; the result is the last failure, if any, and what is left on the host.
async fn remove(net: &dyn HostNet, plans: &[NetPlan]) -> (Done, Done) {
    let mut result = Ok(());
    let mut failed = Vec::new();
    for plan in plans {
        match net.remove(plan).await {
            Ok(report) if !report.changed.is_empty() => {
                info!(removed = ?report.changed, "host network config removed");
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, kind = e.kind(), "removing the host network config failed");
                result = Err(e.to_string());
                failed.push((plan.clone(), e.to_string()));
            }
        }
    }
    let net = Done::Net {
        event: Event::NetRemoved(result),
        steps: Vec::new(),
    };
    let left = Done::Leftovers {
        tried: plans.to_vec(),
        failed,
    };
    (net, left)
}

/// For a plan with IPv6: whether its IPv6 part is in place, for `role`; a failure is also
/// logged (the IPv4 part is in place and served, the IPv6 part is retried on each reconcile).
fn ipv6_status(plan: &NetPlan, report: &crate::net::ApplyReport) -> Option<Done> {
    if let Some(e) = &report.ipv6_error {
        warn!(error = %e, "the IPv6 part of the host network config failed; IPv4 is served, IPv6 is retried on each reconcile (network.reconcile-interval)");
    }
    plan.has_ipv6()
        .then(|| Done::Ipv6(report.ipv6_error.clone()))
}

/// Repairs drift; for a plan with IPv6, returns the state of its IPv6 part.
async fn reconcile(net: &dyn HostNet, plan: &NetPlan) -> Option<Done> {
    let result = net.reconcile(plan).await;
    let ipv6 = result.as_ref().ok().and_then(|r| ipv6_status(plan, r));
    match result {
        Ok(report) if !report.changed.is_empty() => {
            // The IPv6 default route waits for the router's first advertisement; adding it
            // then completes the plan and is not drift.
            let drift: Vec<&String> = report
                .changed
                .iter()
                .filter(|c| !report.router_routes.contains(c))
                .collect();
            if !report.router_routes.is_empty() {
                info!(added = ?report.router_routes, "IPv6 router advertised itself: default route added");
            }
            if !drift.is_empty() {
                warn!(repaired = ?drift, "host network drift repaired");
                crate::metrics::net_repaired();
            }
        }
        Ok(_) => debug!("host network config in place"),
        Err(e) => {
            warn!(error = %e, kind = e.kind(), "repairing the host network config failed")
        }
    }
    ipv6
}
