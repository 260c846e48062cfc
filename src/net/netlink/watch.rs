//! Watching the ENI's link for loss and the plan's objects for drift, through netlink events,
//! and, for a plan with IPv6, for the subnet router's first router advertisement (a neighbour
//! flagged `router` on the link): the IPv6 default route waits for it ([`super::route`]).

use std::collections::HashSet;
use std::net::Ipv6Addr;

use futures::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;

use super::route::{ipv6_router, is_link_local, route_table};
use super::rule::rule_table;
use super::{link, parse_mac, Conn};
use crate::net::{NetError, NetEvent, NetPlan};

/// Starts a task that reports link loss and drift for `plan` on the returned channel.
pub(super) async fn watch(plan: &NetPlan) -> Result<mpsc::Receiver<NetEvent>, NetError> {
    let mac = parse_mac(&plan.mac)?;
    let mut groups = vec![
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv4Rule,
    ];
    let ipv6 = plan.has_ipv6();
    if ipv6 {
        groups.extend([
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Ipv6Route,
            MulticastGroup::Ipv6Rule,
            MulticastGroup::Neigh,
        ]);
    }
    // Subscribe before looking the link up, so a deletion in between is not missed.
    let conn = Conn::open(&groups)?;
    let link = link::find_link(&conn.handle, mac).await?;
    let (tx, rx) = mpsc::channel(4);
    let Some(link) = link else {
        // Capacity 4 and a fresh channel: this cannot fail.
        let _ = tx.try_send(NetEvent::LinkGone);
        return Ok(rx);
    };
    if ipv6 {
        // The router may have advertised itself between the apply and this subscription: one
        // reconcile now finds it (and costs nothing when the route is already there).
        let _ = tx.try_send(NetEvent::Changed);
    }
    let watch = Watch {
        index: link.index,
        table: plan.table,
        mac: plan.mac.clone(),
        routers: HashSet::new(),
        router_check: ipv6.then(|| tokio::time::Instant::now() + ROUTER_PATIENCE),
    };
    tokio::spawn(watch_task(conn, watch, tx));
    Ok(rx)
}

/// How long after the watch starts a plan with IPv6 may go without a router on the link
/// before a warning says so (the VPC router answers a solicitation within milliseconds).
const ROUTER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// What the watch task looks for.
struct Watch {
    index: u32,
    table: u32,
    mac: String,
    /// The routers seen on the link, so that only a new one asks for a reconcile (an entry
    /// changes state every few seconds while traffic flows).
    routers: HashSet<Ipv6Addr>,
    /// When to check, once, that a router is known (plans with IPv6 only).
    router_check: Option<tokio::time::Instant>,
}

async fn watch_task(mut conn: Conn, mut w: Watch, tx: mpsc::Sender<NetEvent>) {
    let (index, mac) = (w.index, w.mac.clone());
    loop {
        let check = w.router_check;
        let next = tokio::select! {
            m = conn.messages.next() => m,
            () = tx.closed() => return,
            () = sleep_until_some(check) => {
                w.router_check = None;
                warn_without_router(&conn, index, &mac).await;
                continue;
            }
        };
        let Some((msg, _)) = next else {
            // The socket died; events may have been lost, so ask for a reconcile (the daemon's
            // timer keeps repairing drift from here on).
            tracing::warn!(%mac, "netlink event socket closed; watch ends");
            let _ = tx.try_send(NetEvent::Changed);
            return;
        };
        let NetlinkPayload::InnerMessage(inner) = msg.payload else {
            continue;
        };
        if let RouteNetlinkMessage::NewNeighbour(n) = &inner {
            if let Some(r) = router_of(n, index).filter(|r| w.routers.insert(*r)) {
                tracing::debug!(%mac, router = %r, "IPv6 router seen on the ENI's link");
                let _ = tx.try_send(NetEvent::Changed);
            }
            continue;
        }
        match event_for(&inner, index, w.table) {
            Some(NetEvent::LinkGone) => {
                tracing::info!(%mac, ifindex = index, "ENI link left this host");
                let _ = tx.send(NetEvent::LinkGone).await;
                return;
            }
            // A full channel already holds a Changed: one reconcile covers the whole burst.
            Some(NetEvent::Changed) => {
                let _ = tx.try_send(NetEvent::Changed);
            }
            None => {}
        }
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Warns when no IPv6 router is known on the link: the IPv6 default route is still waiting.
async fn warn_without_router(conn: &Conn, index: u32, mac: &str) {
    if let Ok(None) = ipv6_router(&conn.handle, index).await {
        tracing::warn!(
            %mac,
            waited_s = ROUTER_PATIENCE.as_secs(),
            "no IPv6 router advertisement on the ENI yet: its IPv6 default route waits, IPv6 \
             clients beyond the subnet are not served (see docs/troubleshooting.md, IPv6)"
        );
    }
}

/// The router a neighbour message on link `index` announces, if it is one.
fn router_of(n: &NeighbourMessage, index: u32) -> Option<Ipv6Addr> {
    if n.header.ifindex != index || !n.header.flags.contains(NeighbourFlags::Router) {
        return None;
    }
    n.attributes
        .iter()
        .find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some(*v),
            _ => None,
        })
        .filter(is_link_local)
}

/// What a netlink event means for the plan on link `index` with table `table`, if anything.
fn event_for(msg: &RouteNetlinkMessage, index: u32, table: u32) -> Option<NetEvent> {
    match msg {
        RouteNetlinkMessage::DelLink(l) if l.header.index == index => Some(NetEvent::LinkGone),
        RouteNetlinkMessage::NewLink(l)
            if l.header.index == index && !l.header.flags.contains(LinkFlags::Up) =>
        {
            Some(NetEvent::Changed)
        }
        RouteNetlinkMessage::DelAddress(a) if a.header.index == index => Some(NetEvent::Changed),
        RouteNetlinkMessage::DelRoute(r) if route_table(r) == table => Some(NetEvent::Changed),
        RouteNetlinkMessage::DelRule(r) if rule_table(r) == table => Some(NetEvent::Changed),
        _ => None,
    }
}
