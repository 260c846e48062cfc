//! The rtnetlink adapter: finds the hot-plugged ENI link by MAC through link events, applies a
//! [`NetPlan`] (link, addresses, policy rules, routes, rp_filter), repairs drift and tears it
//! down again. The only module that speaks netlink.
//!
//! One file per kind of object, each with its `ensure_*` (apply, reconcile) and `remove_*`
//! (teardown): [`link`] (finding the link, and its settings: name, MTU, up, rp_filter),
//! [`addr`], [`route`] and [`rule`]; [`watch`] reports link loss and drift; [`ipv6`] applies a
//! plan's IPv6 part after the IPv4 part, so that an IPv6 failure never costs the IPv4 service.
//! This file holds the adapter and the order in which the objects are visited.
//!
//! Every operation opens its own netlink socket, so the adapter works in whatever network
//! namespace the calling thread is in (that is how the tests confine it) and a dead socket never
//! outlives one call. Idempotency comes from looking before adding (FIB rules are never replaced:
//! re-adding one fails with EEXIST, and a changed one would pile up beside the old) and from
//! treating EEXIST on add and ENOENT/ESRCH/EADDRNOTAVAIL/ENODEV on delete as "already so".
//! Teardown goes on past a failure and reports every failed object at the end, so a half-failed
//! removal still removes what it can.
//!
//! `apply` remembers, per MAC, what it found before changing the link (name, MTU, down state,
//! rp_filter) so `remove` can put exactly that back; an adapter that did not do the apply (after
//! a daemon restart) removes addresses, rules and routes and leaves the link settings alone.

mod addr;
mod ipv6;
mod link;
mod route;
mod rule;
mod seam;
mod watch;

pub use seam::{LinkFoundHook, TestSeam};

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedReceiver;
use futures::future::BoxFuture;
use nix::errno::Errno;
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::SocketAddr;
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    ApplyReport, HostNet, NetError, NetErrorKind, NetEvent, NetObject, NetPlan, ObjectError,
    TeardownError,
};
use crate::net::plan::{routes_via, Family, Via};
use crate::timeline::Step;
use link::{LinkState, Memo};

/// The real host network adapter.
#[derive(Debug)]
pub struct NetlinkNet {
    link_timeout: Duration,
    /// The link-event subscription opened by `prepare`, waiting for its `apply`.
    prepared: Mutex<Option<Prepared>>,
    /// What `apply` found before changing it, so `remove` can put it back. Keyed by MAC. Lost on
    /// a daemon restart, which only means rp_filter, name and up state stay as enipeer set them
    /// on an interface that is about to be detached anyway.
    memos: Mutex<HashMap<String, Memo>>,
    /// MACs whose route via the IPv6 router has been in place: adding it again later is drift
    /// (it was deleted), not the router's arrival.
    routers: Mutex<HashSet<String>>,
    seam: TestSeam,
}

#[derive(Debug)]
struct Prepared {
    mac: String,
    conn: Conn,
}

impl NetlinkNet {
    /// `link_timeout`: how long `apply` waits for the hot-plugged link to appear.
    pub fn new(link_timeout: Duration) -> Self {
        NetlinkNet {
            link_timeout,
            prepared: Mutex::new(None),
            memos: Mutex::new(HashMap::new()),
            routers: Mutex::new(HashSet::new()),
            seam: TestSeam::default(),
        }
    }

    /// Faults and old behaviours for tests ([`TestSeam`]); the daemon never touches it.
    pub fn seam(&self) -> &TestSeam {
        &self.seam
    }

    fn take_prepared(&self, mac: &str) -> Option<Conn> {
        let mut slot = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        match slot.take() {
            Some(p) if p.mac == mac => Some(p.conn),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Records what was found before the first change; later applies must not overwrite it with
    /// values enipeer itself set.
    fn remember(&self, mac: &str, update: impl FnOnce(&mut Memo)) {
        let mut memos = self.memos.lock().unwrap_or_else(|e| e.into_inner());
        update(memos.entry(mac.to_owned()).or_default());
    }

    fn forget(&self, mac: &str) -> Option<Memo> {
        self.routers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(mac);
        let mut memos = self.memos.lock().unwrap_or_else(|e| e.into_inner());
        memos.remove(mac)
    }

    /// The routes via the router that count as its arrival: those added before the route was
    /// ever in place for this MAC. Notes when it is.
    fn arrivals(&self, mac: &str, added: Vec<String>, in_place: bool) -> Vec<String> {
        let mut routers = self.routers.lock().unwrap_or_else(|e| e.into_inner());
        let first = !routers.contains(mac);
        if in_place {
            routers.insert(mac.to_owned());
        }
        if first {
            added
        } else {
            Vec::new()
        }
    }

    async fn do_prepare(&self, mac: &str) -> Result<(), NetError> {
        let mac = mac.to_ascii_lowercase();
        parse_mac(&mac)?;
        let conn = Conn::open(&[MulticastGroup::Link])?;
        let mut slot = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Prepared { mac, conn });
        Ok(())
    }

    /// Waits on the prepared subscription (the apply that follows opens its own and finds the
    /// link by its first dump).
    async fn do_wait_link(&self, mac: &str) -> Result<(), NetError> {
        let mac = mac.to_ascii_lowercase();
        let bytes = parse_mac(&mac)?;
        let subscription = match self.take_prepared(&mac) {
            Some(conn) => conn,
            None => Conn::open(&[MulticastGroup::Link])?,
        };
        let deadline = tokio::time::Instant::now() + self.link_timeout;
        link::wait_for_link(subscription, bytes, &mac, deadline, self.link_timeout).await?;
        Ok(())
    }

    async fn do_apply(&self, plan: &NetPlan) -> Result<ApplyReport, NetError> {
        let mac = parse_mac(&plan.mac)?;
        let mut steps = vec![Step::now("net: waiting for link")];
        let deadline = tokio::time::Instant::now() + self.link_timeout;
        let subscription = match self.take_prepared(&plan.mac) {
            Some(conn) => conn,
            None => Conn::open(&[MulticastGroup::Link])?,
        };
        let link =
            link::wait_for_link(subscription, mac, &plan.mac, deadline, self.link_timeout).await?;
        let found = Instant::now();
        steps.push(Step {
            label: "net: link appeared".into(),
            at: found,
        });
        tracing::debug!(mac = %plan.mac, ifindex = link.index, ifname = %link.name, "link found");
        self.seam.link_found(link.index, &link.name);
        let conn = Conn::open(&[])?;
        let done = self.ensure(&conn.handle, plan, link).await?;
        steps.push(Step::now("net: plan applied"));
        tracing::info!(
            mac = %plan.mac,
            table = plan.table,
            changes = done.changed.len(),
            took_ms = found.elapsed().as_secs_f64() * 1000.0,
            "network plan applied"
        );
        Ok(ApplyReport {
            changed: done.changed,
            router_routes: Vec::new(),
            ipv6_error: done.ipv6_error,
            steps,
        })
    }

    async fn do_reconcile(&self, plan: &NetPlan) -> Result<ApplyReport, NetError> {
        let (conn, link) = link_here(plan).await?;
        let done = self.ensure(&conn.handle, plan, link).await?;
        if !done.changed.is_empty() {
            tracing::debug!(mac = %plan.mac, missing = ?done.changed, "drift repaired");
        }
        Ok(ApplyReport {
            steps: vec![Step::now("net: reconciled")],
            changed: done.changed,
            router_routes: done.router_routes,
            ipv6_error: done.ipv6_error,
        })
    }

    async fn do_add_router_routes(&self, plan: &NetPlan) -> Result<ApplyReport, NetError> {
        let (conn, link) = link_here(plan).await?;
        let mut specs = routes_via(&plan.routes, Via::Router);
        // The IPv6 last resort goes once the router is known (see `route::ensure_routes`).
        specs.extend(routes_via(&plan.family(true).routes, Via::Unreachable));
        let routes = route::ensure_routes(&conn.handle, link.index, plan.table, &specs).await?;
        let router_routes =
            self.arrivals(&plan.mac, routes.via_router.clone(), routes.router_in_place);
        Ok(ApplyReport {
            steps: vec![Step::now("net: router routes")],
            changed: routes.added,
            router_routes,
            ipv6_error: None,
        })
    }

    /// Makes the plan true on `link`: the link, then IPv4 whole, then IPv6, whose failure is
    /// reported in the result rather than failing it. Each part is checked first and only added
    /// when absent, so a plan already in place produces no netlink change at all.
    async fn ensure(
        &self,
        handle: &Handle,
        plan: &NetPlan,
        mut link: LinkState,
    ) -> Result<Ensured, NetError> {
        let (mut changed, ra) = self.ensure_link(handle, plan, &mut link).await?;
        let legacy = self.seam.legacy();
        let v4 = plan.family(false);
        changed.extend(
            ensure_guarded_rules(handle, &link, plan.table, &v4)
                .await?
                .added,
        );
        changed.extend(addr::ensure_addresses(handle, &link, &v4.addresses, legacy).await?);
        if !legacy {
            // An address added without IFA_F_NOPREFIXROUTE (by an older release) brought its
            // prefix route into main; the kernel keeps it when the flag changes, so it goes here.
            changed.extend(route::remove_prefix_routes(handle, &link, &v4.addresses).await?);
        }
        // Routes after addresses: the kernel only accepts a `src` that is a local address.
        let routes = route::ensure_routes(handle, link.index, plan.table, &v4.routes).await?;
        changed.extend(routes.added);
        let mut out = Ensured {
            changed,
            ..Ensured::default()
        };
        if !plan.has_ipv6() {
            return Ok(out);
        }
        let v6 = match ra {
            Ok(()) => ipv6::ensure(handle, &link, plan, &plan.family(true)).await,
            Err(e) => Err(e),
        };
        match v6 {
            Ok(done) => {
                out.changed.extend(done.changed);
                out.router_routes = self.arrivals(&plan.mac, done.via_router, done.router_in_place);
            }
            Err(e) => out.ipv6_error = Some(ipv6::with_hint(e).to_string()),
        }
        Ok(out)
    }

    /// The link's settings, remembering what they were before enipeer first changed them;
    /// beside them, whether the IPv6 router advertisement settings could be made (a failure
    /// there must not keep the link down for IPv4).
    async fn ensure_link(
        &self,
        handle: &Handle,
        plan: &NetPlan,
        link: &mut LinkState,
    ) -> Result<(Vec<String>, Result<(), NetError>), NetError> {
        let mut changed = Vec::new();
        let mut ra = Ok(());
        if plan.has_ipv6() {
            // Before the link comes up: up, the kernel solicits an RA at once.
            match link::ensure_ra_settings(handle, link).await {
                Ok(c) => changed.extend(c),
                // The link may be gone; that is the IPv4 part's to find out.
                Err(e) => ra = Err(e),
            }
        }
        let rp_filter = match plan.rp_filter {
            Some(_) => Some(link::read_rp_filter(handle, link).await?),
            None => None,
        };
        self.remember(&plan.mac, |m| m.record(link, rp_filter, plan));
        let want = link::LinkSettings::applied(plan);
        changed.extend(link::set_link(handle, link, rp_filter, &want, link::Wording::Apply).await?);
        Ok((changed, ra))
    }

    async fn do_remove(&self, plan: &NetPlan) -> Result<ApplyReport, NetError> {
        // A subscription for this MAC is of no use any more.
        drop(self.take_prepared(&plan.mac));
        let memo = self.forget(&plan.mac).unwrap_or_default();
        let conn = Conn::open(&[])?;
        let handle = &conn.handle;
        let mut td = Teardown {
            fault: self.seam.take_delete_fault(),
            ..Teardown::default()
        };

        let link = match parse_mac(&plan.mac) {
            Ok(mac) => link::find_link(handle, mac).await,
            Err(e) => Err(e),
        };
        let link = td.check(NetObject::Link, link).flatten();
        // Rules first: they outlive the link, and without them nothing routes via the table.
        rule::remove_rules(handle, &plan.rules, &mut td).await;
        let oif = link.as_ref().map(|l| l.index);
        route::remove_routes(handle, plan.table, &plan.routes, oif, &mut td).await;
        if let Some(link) = link {
            addr::remove_addresses(handle, &link, &plan.addresses, &mut td).await;
            link::restore_link(handle, link, &memo, &mut td).await;
        }
        if !td.failed.is_empty() {
            return Err(TeardownError {
                mac: plan.mac.clone(),
                failed: td.failed,
            }
            .into());
        }
        tracing::info!(mac = %plan.mac, removed = td.removed.len(), link_present = oif.is_some(), "network plan removed");
        Ok(ApplyReport {
            router_routes: Vec::new(),
            ipv6_error: None,
            changed: td.removed,
            steps: vec![Step::now("net: plan removed")],
        })
    }
}

/// The table's last resort, then the rules of family `f`, so that from the moment its
/// addresses exist a packet from them either finds its route in the ENI's table or fails on the
/// host: it never falls through to the main table and out of the primary interface. (A rule
/// needs no local address; a route's `src` does, so the other routes come after the addresses.)
/// (For IPv6 the last resort stays only until the router is known; taking it out then is
/// part of the router's arrival, in `via_router`.)
async fn ensure_guarded_rules(
    handle: &Handle,
    link: &LinkState,
    table: u32,
    f: &Family,
) -> Result<route::Added, NetError> {
    let guard = routes_via(&f.routes, Via::Unreachable);
    let mut done = route::ensure_routes(handle, link.index, table, &guard).await?;
    done.added
        .extend(rule::ensure_rules(handle, &f.rules).await?);
    Ok(done)
}

/// A fresh netlink socket and the plan's link, which must be here already (`link-gone` if not):
/// what reconciling needs, unlike an apply, which waits for the link.
async fn link_here(plan: &NetPlan) -> Result<(Conn, LinkState), NetError> {
    let mac = parse_mac(&plan.mac)?;
    let conn = Conn::open(&[])?;
    let link = link::find_link(&conn.handle, mac).await?.ok_or_else(|| {
        NetError::new(
            NetErrorKind::LinkGone,
            format!("no link with MAC {} on this host", plan.mac),
        )
    })?;
    Ok((conn, link))
}

/// What [`NetlinkNet::ensure`] did.
#[derive(Debug, Default)]
struct Ensured {
    changed: Vec<String>,
    /// Of `changed`, the routes via the IPv6 router that count as its arrival.
    router_routes: Vec<String>,
    /// The IPv6 part failed, with what to check (the IPv4 part is in place).
    ipv6_error: Option<String>,
}

/// What a removal has done so far: what it removed, and every object it could not.
#[derive(Debug, Default)]
struct Teardown {
    removed: Vec<String>,
    failed: Vec<ObjectError>,
    /// From the test seam: the first delete of this kind fails without being sent.
    fault: Option<NetObject>,
}

impl Teardown {
    /// Passes a listing through, or records its failure (the objects it would have named stay
    /// unvisited) and returns `None`.
    fn check<T>(&mut self, object: NetObject, res: Result<T, NetError>) -> Option<T> {
        match res {
            Ok(v) => Some(v),
            Err(e) => {
                self.failed.push(ObjectError::new(object, e));
                None
            }
        }
    }

    /// The error the test seam injects in place of this delete of an `object`, once.
    fn injected(&mut self, object: NetObject) -> Option<rtnetlink::Error> {
        if self.fault == Some(object) {
            self.fault = None;
            return Some(nack(Errno::EBUSY));
        }
        None
    }

    /// Records one delete request: `label` (what it names) removed, already gone, or failed.
    fn deleted(&mut self, object: NetObject, label: String, res: Result<(), rtnetlink::Error>) {
        match res {
            Ok(()) => self.removed.push(label),
            Err(e) if is_gone(&e) => {}
            Err(e) => self.failed.push(ObjectError::new(
                object,
                nl_error(&format!("delete {label}"), e),
            )),
        }
    }
}

impl HostNet for NetlinkNet {
    fn prepare<'a>(&'a self, mac: &'a str) -> BoxFuture<'a, Result<(), NetError>> {
        Box::pin(self.do_prepare(mac))
    }

    fn wait_link<'a>(&'a self, mac: &'a str) -> BoxFuture<'a, Result<(), NetError>> {
        Box::pin(self.do_wait_link(mac))
    }

    fn apply<'a>(&'a self, plan: &'a NetPlan) -> BoxFuture<'a, Result<ApplyReport, NetError>> {
        Box::pin(self.do_apply(plan))
    }

    fn reconcile<'a>(&'a self, plan: &'a NetPlan) -> BoxFuture<'a, Result<ApplyReport, NetError>> {
        Box::pin(self.do_reconcile(plan))
    }

    fn remove<'a>(&'a self, plan: &'a NetPlan) -> BoxFuture<'a, Result<ApplyReport, NetError>> {
        Box::pin(self.do_remove(plan))
    }

    fn add_router_routes<'a>(
        &'a self,
        plan: &'a NetPlan,
    ) -> BoxFuture<'a, Result<ApplyReport, NetError>> {
        Box::pin(self.do_add_router_routes(plan))
    }

    fn watch<'a>(
        &'a self,
        plan: &'a NetPlan,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<NetEvent>, NetError>> {
        Box::pin(watch::watch(plan))
    }
}

/// One netlink socket with its driver task; dropping it stops the task and closes the socket.
struct Conn {
    handle: Handle,
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl Conn {
    fn open(groups: &[MulticastGroup]) -> Result<Conn, NetError> {
        let opened = if groups.is_empty() {
            rtnetlink::new_connection()
        } else {
            rtnetlink::new_multicast_connection(groups)
        };
        let (conn, handle, messages) = opened.map_err(|e| {
            NetError::new(NetErrorKind::Netlink, format!("open netlink socket: {e}"))
        })?;
        Ok(Conn {
            handle,
            messages,
            task: tokio::spawn(conn),
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6], NetError> {
    let bad = || {
        NetError::new(
            NetErrorKind::BadMac,
            format!("`{text}` is not a MAC address"),
        )
    };
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

fn errno_of(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(Errno::from_raw(m.raw_code().abs())),
        _ => None,
    }
}

/// The thing to delete is already gone (or its link is).
fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(
        errno_of(e),
        Some(Errno::ENOENT | Errno::ESRCH | Errno::EADDRNOTAVAIL | Errno::ENODEV)
    )
}

/// The kernel has no such address family (IPv6 turned off with `ipv6.disable=1`).
fn no_family(e: &rtnetlink::Error) -> bool {
    errno_of(e) == Some(Errno::EAFNOSUPPORT)
}

/// The thing to add is already there.
fn exists(e: &rtnetlink::Error) -> bool {
    errno_of(e) == Some(Errno::EEXIST)
}

/// An add request whose object is already there succeeded as far as the plan is concerned:
/// `Ok(true)` added now, `Ok(false)` already there.
fn added(res: Result<(), rtnetlink::Error>) -> Result<bool, rtnetlink::Error> {
    match res {
        Ok(()) => Ok(true),
        Err(e) if exists(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A kernel NACK as rtnetlink reports it (the kernel sends the errno negated).
fn nack(errno: Errno) -> rtnetlink::Error {
    let mut m = rtnetlink::packet_core::ErrorMessage::default();
    m.code = std::num::NonZeroI32::new(-(errno as i32));
    rtnetlink::Error::NetlinkError(m)
}

fn nl_error(what: &str, e: rtnetlink::Error) -> NetError {
    NetError::new(NetErrorKind::Netlink, format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("0a:1b:2c:3d:4e:5f").unwrap(),
            [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]
        );
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:00",
            "0a:1b:2c:3d:4e:5",
            "zz:1b:2c:3d:4e:5f",
        ] {
            assert_eq!(
                parse_mac(bad).unwrap_err().kind,
                NetErrorKind::BadMac,
                "{bad}"
            );
        }
    }

    #[test]
    fn errno_classification() {
        for e in [
            Errno::ENOENT,
            Errno::ESRCH,
            Errno::EADDRNOTAVAIL,
            Errno::ENODEV,
        ] {
            assert!(is_gone(&nack(e)), "{e}");
            assert!(!exists(&nack(e)), "{e}");
        }
        for e in [Errno::EEXIST, Errno::EPERM, Errno::EINVAL, Errno::EBUSY] {
            assert!(!is_gone(&nack(e)), "{e}");
        }
        assert!(!is_gone(&rtnetlink::Error::RequestFailed));
        assert!(exists(&nack(Errno::EEXIST)));
        assert!(matches!(added(Ok(())), Ok(true)));
        assert!(matches!(added(Err(nack(Errno::EEXIST))), Ok(false)));
        assert!(added(Err(nack(Errno::EPERM))).is_err());
    }

    #[test]
    fn teardown_goes_on_past_failures_and_treats_gone_as_done() {
        let mut td = Teardown {
            fault: Some(NetObject::Address),
            ..Teardown::default()
        };
        // The seam's fault fires once, for its kind only.
        assert!(td.injected(NetObject::Rule).is_none());
        assert!(td.injected(NetObject::Address).is_some());
        assert!(td.injected(NetObject::Address).is_none());
        td.deleted(NetObject::Rule, "rule a".into(), Ok(()));
        td.deleted(NetObject::Rule, "rule b".into(), Err(nack(Errno::ENOENT)));
        td.deleted(NetObject::Route, "route c".into(), Err(nack(Errno::EPERM)));
        td.deleted(NetObject::Address, "address d".into(), Ok(()));
        let listed = td.check::<()>(
            NetObject::Link,
            Err(NetError::new(NetErrorKind::Netlink, "list links: boom")),
        );
        assert!(listed.is_none());
        assert_eq!(td.removed, ["rule a", "address d"]);
        let failed: Vec<(NetObject, NetErrorKind)> =
            td.failed.iter().map(|f| (f.object, f.kind)).collect();
        assert_eq!(
            failed,
            [
                (NetObject::Route, NetErrorKind::Netlink),
                (NetObject::Link, NetErrorKind::Netlink)
            ]
        );
        assert!(td.failed[0].message.starts_with("delete route c: "));
    }
}
