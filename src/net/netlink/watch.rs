//! Watching the ENI's link for loss and the plan's objects for drift, through netlink events.

use futures::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;

use super::route::route_table;
use super::rule::rule_table;
use super::{link, parse_mac, Conn};
use crate::net::{NetError, NetEvent, NetPlan};

/// Starts a task that reports link loss and drift for `plan` on the returned channel.
pub(super) async fn watch(plan: &NetPlan) -> Result<mpsc::Receiver<NetEvent>, NetError> {
    let mac = parse_mac(&plan.mac)?;
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv4Rule,
    ];
    // Subscribe before looking the link up, so a deletion in between is not missed.
    let conn = Conn::open(&groups)?;
    let link = link::find_link(&conn.handle, mac).await?;
    let (tx, rx) = mpsc::channel(4);
    let Some(link) = link else {
        // Capacity 4 and a fresh channel: this cannot fail.
        let _ = tx.try_send(NetEvent::LinkGone);
        return Ok(rx);
    };
    let table = plan.table;
    let mac_text = plan.mac.clone();
    tokio::spawn(watch_task(conn, link.index, table, mac_text, tx));
    Ok(rx)
}

async fn watch_task(
    mut conn: Conn,
    index: u32,
    table: u32,
    mac: String,
    tx: mpsc::Sender<NetEvent>,
) {
    loop {
        let next = tokio::select! {
            m = conn.messages.next() => m,
            () = tx.closed() => return,
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
        match event_for(&inner, index, table) {
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
