//! The host network plan: built from the ENI's description, and what is done with it. When the
//! description is not known yet, the uses wait (in order) for a describe by the cloud worker
//! instead of the loop awaiting the cloud.

use tracing::{info, warn};

use super::cloud_worker::CloudJob;
use super::net_worker::NetJob;
use super::{Daemon, Done};
use crate::cloud::{CloudError, EniInfo};
use crate::core::Event;
use crate::net::{NetEvent, NetPlan};

/// What a plan is wanted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PlanUse {
    /// The core's `ApplyNet`.
    Apply,
    /// The core's `RemoveNet`.
    Remove,
    /// The link watch, once the plan is applied and this node serves.
    Watch,
    /// A drift repair.
    Reconcile,
}

impl Daemon {
    /// Carries out `use_` with the plan, now if the ENI's description is known and nothing is
    /// waiting, else after a describe.
    pub(super) async fn with_plan(&mut self, use_: PlanUse) {
        if self.plan_waiting.is_empty() {
            if let Some(plan) = self.plan() {
                self.use_plan(use_, Some(plan)).await;
                return;
            }
        }
        // Uses wait in order: a removal asked for after an apply must not overtake it.
        self.plan_waiting.push(use_);
        if !self.describing {
            self.describing = true;
            self.to_cloud(CloudJob::DescribeForPlan);
        }
    }

    /// The describe asked for by [`Daemon::with_plan`] is back: carry out what waited for it, with
    /// no plan if the describe failed.
    pub(super) async fn on_described(&mut self, result: Result<EniInfo, CloudError>) {
        self.describing = false;
        match result {
            Ok(info) => self.remember_eni(info),
            Err(e) => warn!(error = %e, "cannot describe the ENI to plan the host network"),
        }
        for use_ in std::mem::take(&mut self.plan_waiting) {
            let plan = self.plan();
            self.use_plan(use_, plan).await;
        }
    }

    async fn use_plan(&mut self, use_: PlanUse, plan: Option<NetPlan>) {
        match (use_, plan) {
            (PlanUse::Apply, Some(plan)) => {
                // Applied again, it is wanted on the host: no longer a leftover.
                self.leftovers.retain(|(p, _)| *p != plan);
                self.applied = Some(plan.clone());
                let _ = self.net_tx.send(NetJob::Apply(plan));
            }
            // The core waits for an answer either way; this one takes the same road as the net
            // worker's, so the core meets it in turn rather than inside the action that asked.
            (PlanUse::Apply, None) => self.report_back(Done::Net {
                event: Event::NetApplied(Err("the ENI's description is not available".into())),
                steps: Vec::new(),
            }),
            (PlanUse::Remove, Some(plan)) => self.remove(plan),
            // Never configured anything here: nothing to remove.
            (PlanUse::Remove, None) => self.report_back(Done::Net {
                event: Event::NetRemoved(Ok(())),
                steps: Vec::new(),
            }),
            (PlanUse::Watch, Some(plan)) => self.watch_link(&plan).await,
            (PlanUse::Reconcile, Some(plan)) => {
                let _ = self.net_tx.send(NetJob::Reconcile(plan));
            }
            (PlanUse::Watch | PlanUse::Reconcile, None) => {}
        }
    }

    fn remove(&mut self, plan: NetPlan) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
        // Not serving any more: IPv6 being missing is not news.
        self.ipv6_problem = None;
        let mut plans = vec![plan];
        if let Some(applied) = self.applied.take() {
            if applied != plans[0] {
                plans.insert(0, applied);
            }
        }
        let _ = self.net_tx.send(NetJob::Remove(plans));
    }

    pub(super) fn remember_eni(&mut self, info: EniInfo) {
        if !self.coexistence_checked && self.settings.testing.is_none() {
            self.coexistence_checked = true;
            for w in crate::net::coexistence_warnings(&info.mac) {
                warn!("{w}");
            }
        }
        if let Some(checks) = self.checks.as_mut() {
            checks.eni_known(std::net::IpAddr::V4(info.primary_ip));
        }
        self.eni = Some(info);
    }

    /// The host network plan, if the ENI's description is known.
    fn plan(&self) -> Option<NetPlan> {
        self.eni.as_ref().map(|info| {
            let mut plan = NetPlan::build(info, &self.settings.network);
            if ipv6_unrouted_seam() {
                // The negative control of the IPv6 lab test: the addresses without their rules
                // and routes.
                plan.rules.retain(|r| r.from.is_ipv4());
                plan.routes.retain(|r| r.dst.is_ipv4());
            }
            plan
        })
    }

    /// Watches the ENI's link while master: a vanished link is news for the core, a change to
    /// addresses, rules or routes is drift to repair.
    pub(super) async fn start_watch(&mut self) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
        self.with_plan(PlanUse::Watch).await;
    }

    async fn watch_link(&mut self, plan: &NetPlan) {
        // Subscribing is local and quick, so it is awaited here rather than in the net worker:
        // the handle must be on the loop for a `RemoveNet` to abort the watch at once, before
        // the removal it asks for makes the link look lost.
        let mut rx = match self.net.watch(plan).await {
            Ok(rx) => rx,
            Err(e) => {
                warn!(error = %e, "cannot watch the ENI's link; relying on the periodic checks");
                return;
            }
        };
        let done = self.done_tx.clone();
        self.watch = Some(tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let msg = match ev {
                    NetEvent::LinkGone => Done::LinkGone,
                    NetEvent::Changed => Done::Drift,
                };
                if done.send(msg).is_err() {
                    return;
                }
            }
        }));
    }

    /// Queues a drift repair when this node serves the address and repair is on; otherwise
    /// queues the removal of whatever an earlier removal left behind.
    pub(super) async fn reconcile(&mut self) {
        if !self.node.is_serving() {
            self.clean_leftovers();
            return;
        }
        if !self.settings.network.repair {
            // No repair, but the IPv6 default route may still be waiting for the router.
            if let Some(plan) = self.applied.clone().filter(|p| p.has_ipv6()) {
                let _ = self.net_tx.send(NetJob::RouterRoutes(plan));
            }
            return;
        }
        self.with_plan(PlanUse::Reconcile).await;
    }

    /// Removes the leftovers again. Never while serving: a leftover may share its table with
    /// the plan in use, and the host config of a master is the apply's to keep.
    fn clean_leftovers(&mut self) {
        if self.leftovers.is_empty() {
            return;
        }
        let plans = self.leftovers.iter().map(|(p, _)| p.clone()).collect();
        let _ = self.net_tx.send(NetJob::Cleanup(plans));
    }

    /// The net worker's word on the IPv6 part of the applied plan.
    pub(super) fn on_ipv6(&mut self, problem: Option<String>) {
        if problem.is_none() && self.ipv6_problem.is_some() {
            info!("the IPv6 part of the host network config is in place now");
        }
        self.ipv6_problem = problem;
    }

    /// A removal's report: what it tried is no longer a leftover unless it failed again.
    pub(super) fn on_leftovers(&mut self, tried: Vec<NetPlan>, failed: Vec<(NetPlan, String)>) {
        let before = self.leftovers.len();
        self.leftovers.retain(|(p, _)| !tried.contains(p));
        let cleaned = before - self.leftovers.len();
        if failed.is_empty() && cleaned > 0 {
            info!(
                plans = cleaned,
                "host network leftovers removed: the host is clean"
            );
        }
        for (plan, error) in failed {
            warn!(mac = %plan.mac, %error, "host network config left on the host; retried on the next reconcile");
            self.leftovers.push((plan, error));
        }
    }
}

/// `ENIPEER_TEST_IPV6_UNROUTED=1` leaves the IPv6 policy rules and routes out of the plan (the
/// addresses stay); only debug builds read it, so a release binary never does.
fn ipv6_unrouted_seam() -> bool {
    cfg!(debug_assertions)
        && std::env::var_os("ENIPEER_TEST_IPV6_UNROUTED").is_some_and(|v| v == "1")
}
