//! The host side: making the ENI's addresses work on this host once it is attached here (link up,
//! addresses, source-based policy routing) and leaving the host clean when it is not.
//!
//! Desired state is data, a [`NetPlan`], built from the ENI's description and the config; the
//! [`HostNet`] adapter applies and removes exactly that plan. [`netlink::NetlinkNet`] is the real
//! adapter (the only code that speaks rtnetlink); [`NoopNet`] stands in for unprivileged tests.
//! [`coexist`] finds other network managers that would fight over the hot-plugged interface.
//! [`error`] holds the typed errors every adapter returns.
//!
//! The daemon's calling order, per ENI:
//! 1. [`HostNet::prepare`] before the attach is requested, so a fast hot-plug is never missed;
//! 2. [`HostNet::apply`] after the claim succeeded (waits for the link, then configures it);
//! 3. [`HostNet::watch`] while master, and [`HostNet::reconcile`] on each `Changed` event and on
//!    a slow timer;
//! 4. [`HostNet::remove`] on release or step-down, and when `LinkGone` arrives.

pub mod coexist;
pub mod error;
pub mod netlink;
pub mod plan;

pub use coexist::coexistence_warnings;
pub use error::{NetError, NetErrorKind, NetObject, ObjectError, TeardownError};
pub use plan::{AddrSpec, NetPlan, RouteSpec, RuleSpec};

use futures::future::BoxFuture;
use tokio::sync::mpsc;

/// What applying, reconciling or removing a plan changed, for logs and the timeline.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    /// Human descriptions of what was missing and added (apply, reconcile) or what was removed
    /// (remove); empty when nothing had to change.
    pub changed: Vec<String>,
    /// Of `changed`, the routes via the IPv6 router that a reconcile added because the router
    /// has now advertised itself: the plan completing, not drift.
    pub router_routes: Vec<String>,
    /// The IPv6 part of the plan could not be applied (the IPv4 part is in place); retried on
    /// the next reconcile.
    pub ipv6_error: Option<String>,
    pub steps: Vec<crate::timeline::Step>,
}

/// Something happened to the ENI's link or to what the plan put on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetEvent {
    /// The link left this host (detached, deleted, moved away). The watch ends after this.
    LinkGone,
    /// An address, rule or route of the plan's link or table was deleted, or the link went down:
    /// time to reconcile. Bursts are coalesced, so one event may stand for several changes.
    Changed,
}

/// The host network seam. Every method is idempotent; none of them holds a lock across an await.
pub trait HostNet: Send + Sync {
    /// Start listening for the link with this MAC. Call it before requesting the attach: the
    /// following [`HostNet::apply`] for the same MAC then cannot miss a hot-plug that happens
    /// before it starts waiting. A later `prepare` replaces an earlier one.
    fn prepare<'a>(&'a self, mac: &'a str) -> BoxFuture<'a, Result<(), NetError>>;
    /// Resolves once the link with this MAC is on this host (up to the adapter's link timeout),
    /// seeing every hot-plug since the [`HostNet::prepare`] for it. A claim acts on it as the
    /// attachment being done. An adapter that cannot watch links never resolves.
    fn wait_link<'a>(&'a self, mac: &'a str) -> BoxFuture<'a, Result<(), NetError>> {
        let _ = mac;
        Box::pin(futures::future::pending())
    }
    /// Wait for the plan's link (up to the adapter's link timeout), then make the plan true.
    /// Applying a plan that is already in place changes nothing and succeeds.
    fn apply<'a>(&'a self, plan: &'a NetPlan) -> BoxFuture<'a, Result<ApplyReport, NetError>>;
    /// Restore whatever part of the plan is missing, without waiting for the link (`link-gone`
    /// when it is not there). `changed` lists what was missing.
    fn reconcile<'a>(&'a self, plan: &'a NetPlan) -> BoxFuture<'a, Result<ApplyReport, NetError>>;
    /// Add the plan's routes via the IPv6 router once the router is known, and nothing else:
    /// what a host with `network.repair = false` still needs when the router advertises itself
    /// after the apply. `router_routes` lists what was added.
    fn add_router_routes<'a>(
        &'a self,
        plan: &'a NetPlan,
    ) -> BoxFuture<'a, Result<ApplyReport, NetError>> {
        let _ = plan;
        Box::pin(async { Ok(ApplyReport::default()) })
    }
    /// Remove exactly what the plan added. A link that is already gone is success; every step is
    /// attempted and all failures are reported together (`teardown`, with a [`TeardownError`]
    /// listing each failed object).
    fn remove<'a>(&'a self, plan: &'a NetPlan) -> BoxFuture<'a, Result<ApplyReport, NetError>>;
    /// Report link loss and drift for this plan until the receiver is dropped or the link goes.
    /// The channel closes when the watch ends (after `LinkGone`, or if the event socket fails);
    /// a closed channel is not an event, and the caller's reconcile timer covers what follows.
    fn watch<'a>(
        &'a self,
        plan: &'a NetPlan,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<NetEvent>, NetError>>;
}

/// For tests that run unprivileged: changes nothing and says so.
#[derive(Debug, Default)]
pub struct NoopNet;

impl HostNet for NoopNet {
    fn prepare<'a>(&'a self, _mac: &'a str) -> BoxFuture<'a, Result<(), NetError>> {
        Box::pin(async { Ok(()) })
    }

    fn apply<'a>(&'a self, _plan: &'a NetPlan) -> BoxFuture<'a, Result<ApplyReport, NetError>> {
        Box::pin(async { Ok(ApplyReport::default()) })
    }

    fn reconcile<'a>(&'a self, _plan: &'a NetPlan) -> BoxFuture<'a, Result<ApplyReport, NetError>> {
        Box::pin(async { Ok(ApplyReport::default()) })
    }

    fn remove<'a>(&'a self, _plan: &'a NetPlan) -> BoxFuture<'a, Result<ApplyReport, NetError>> {
        Box::pin(async { Ok(ApplyReport::default()) })
    }

    fn watch<'a>(
        &'a self,
        _plan: &'a NetPlan,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<NetEvent>, NetError>> {
        // The sender is dropped at once: the receiver reports a closed channel, never an event,
        // which is what "nothing to watch" means.
        Box::pin(async { Ok(mpsc::channel(1).1) })
    }
}
