//! The rtnetlink adapter: finds the hot-plugged ENI link by MAC through link events, applies a
//! [`NetPlan`] (link, addresses, policy rules, routes, rp_filter), repairs drift and tears it
//! down again. The only module that speaks netlink.
//!
//! Every operation opens its own netlink socket, so the adapter works in whatever network
//! namespace the calling thread is in (that is how the tests confine it) and a dead socket never
//! outlives one call. Idempotency comes from looking before adding (FIB rules are never replaced:
//! re-adding one fails with EEXIST, and a changed one would pile up beside the old) and from
//! treating EEXIST on add and ENOENT/ESRCH/EADDRNOTAVAIL/ENODEV on delete as "already so".
//!
//! `apply` remembers, per MAC, what it found before changing the link (name, MTU, down state,
//! rp_filter) so `remove` can put exactly that back; an adapter that did not do the apply (after
//! a daemon restart) removes addresses, rules and routes and leaves the link settings alone.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedReceiver;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use nix::errno::Errno;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::SocketAddr;
use rtnetlink::{Handle, IpVersion, LinkUnspec, MulticastGroup, RouteMessageBuilder};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::plan::{RouteSpec, RuleSpec};
use super::{ApplyReport, HostNet, NetError, NetEvent, NetPlan};
use crate::cloud::Ipv4Net;
use crate::timeline::Step;

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
}

#[derive(Debug)]
struct Prepared {
    mac: String,
    conn: Conn,
}

#[derive(Debug, Clone, Default)]
struct Memo {
    old_rp_filter: Option<u8>,
    original_name: Option<String>,
    original_mtu: Option<u32>,
    brought_up: bool,
}

impl NetlinkNet {
    /// `link_timeout`: how long `apply` waits for the hot-plugged link to appear.
    pub fn new(link_timeout: Duration) -> Self {
        NetlinkNet {
            link_timeout,
            prepared: Mutex::new(None),
            memos: Mutex::new(HashMap::new()),
        }
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
        let mut memos = self.memos.lock().unwrap_or_else(|e| e.into_inner());
        memos.remove(mac)
    }

    async fn do_prepare(&self, mac: &str) -> Result<(), NetError> {
        let mac = mac.to_ascii_lowercase();
        parse_mac(&mac)?;
        let conn = Conn::open(&[MulticastGroup::Link])?;
        let mut slot = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Prepared { mac, conn });
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
        let link = wait_for_link(subscription, mac, &plan.mac, deadline, self.link_timeout).await?;
        let found = Instant::now();
        steps.push(Step {
            label: "net: link appeared".into(),
            at: found,
        });
        tracing::debug!(mac = %plan.mac, ifindex = link.index, ifname = %link.name, "link found");
        let conn = Conn::open(&[])?;
        let changed = self.ensure(&conn.handle, plan, link).await?;
        steps.push(Step::now("net: plan applied"));
        tracing::info!(
            mac = %plan.mac,
            table = plan.table,
            changes = changed.len(),
            took_ms = found.elapsed().as_secs_f64() * 1000.0,
            "network plan applied"
        );
        Ok(ApplyReport { changed, steps })
    }

    async fn do_reconcile(&self, plan: &NetPlan) -> Result<ApplyReport, NetError> {
        let mac = parse_mac(&plan.mac)?;
        let conn = Conn::open(&[])?;
        let link = find_link(&conn.handle, mac).await?.ok_or_else(|| {
            NetError::new(
                "link-gone",
                format!("no link with MAC {} on this host", plan.mac),
            )
        })?;
        let changed = self.ensure(&conn.handle, plan, link).await?;
        if !changed.is_empty() {
            tracing::debug!(mac = %plan.mac, missing = ?changed, "drift repaired");
        }
        Ok(ApplyReport {
            steps: vec![Step::now("net: reconciled")],
            changed,
        })
    }

    /// Makes the plan true on `link`, returning what was missing. Each part is checked first and
    /// only added when absent, so a plan already in place produces no netlink change at all.
    async fn ensure(
        &self,
        handle: &Handle,
        plan: &NetPlan,
        mut link: LinkState,
    ) -> Result<Vec<String>, NetError> {
        let mut changed = Vec::new();
        let idx = link.index;

        // The kernel refuses to rename a running interface, and applies a rename before flag
        // changes within one message: take it down alone first, then rename and bring it up.
        let rename = plan.rename_to.as_ref().filter(|n| **n != link.name);
        let mtu = plan.mtu.filter(|m| link.mtu != Some(*m));
        if rename.is_some() || mtu.is_some() || !link.up {
            let was_up = link.up;
            let original = link.name.clone();
            let original_mtu = link.mtu;
            self.remember(&plan.mac, |m| {
                if rename.is_some() && m.original_name.is_none() {
                    m.original_name = Some(original);
                }
                if mtu.is_some() && m.original_mtu.is_none() {
                    m.original_mtu = original_mtu;
                }
                if !was_up {
                    m.brought_up = true;
                }
            });
            if let Some(name) = rename {
                if link.up {
                    let msg = LinkUnspec::new_with_index(idx).down().build();
                    handle.link().change(msg).execute().await.map_err(|e| {
                        nl_error(&format!("set {} down to rename it", link.name), e)
                    })?;
                }
                let mut b = LinkUnspec::new_with_index(idx).name(name.clone()).up();
                if let Some(m) = mtu {
                    b = b.mtu(m);
                }
                handle
                    .link()
                    .change(b.build())
                    .execute()
                    .await
                    .map_err(|e| {
                        let why = if errno_of(&e) == Some(Errno::EEXIST) {
                            "the name is taken by another link".to_owned()
                        } else {
                            e.to_string()
                        };
                        NetError::new(
                            "rename",
                            format!(
                                "cannot rename {} ({}) to {name}: {why}",
                                link.name, plan.mac
                            ),
                        )
                    })?;
                changed.push(format!("link {} renamed to {name}", link.name));
                link.name = name.clone();
            } else {
                let mut b = LinkUnspec::new_with_index(idx).up();
                if let Some(m) = mtu {
                    b = b.mtu(m);
                }
                handle
                    .link()
                    .change(b.build())
                    .execute()
                    .await
                    .map_err(|e| nl_error(&format!("set {} up", link.name), e))?;
            }
            if !link.up {
                changed.push(format!("link {} up", link.name));
            }
            if let Some(m) = mtu {
                changed.push(format!("link {} mtu {m}", link.name));
            }
        }

        if let Some(want) = plan.rp_filter {
            let old = read_rp_filter(&link.name)?;
            self.remember(&plan.mac, |m| {
                if m.old_rp_filter.is_none() {
                    m.old_rp_filter = Some(old);
                }
            });
            if old != want {
                write_rp_filter(&link.name, want)?;
                changed.push(format!("rp_filter {want} on {}", link.name));
            }
        }

        let present = link_addresses(handle, idx).await?;
        for a in &plan.addresses {
            if present.iter().any(|(p, _)| p == a) {
                continue;
            }
            match handle
                .address()
                .add(idx, IpAddr::V4(a.addr), a.prefix)
                .execute()
                .await
            {
                Ok(()) => changed.push(format!("address {} on {}", fmt_net(a), link.name)),
                Err(e) if errno_of(&e) == Some(Errno::EEXIST) => {}
                Err(e) => return Err(nl_error(&format!("add address {}", fmt_net(a)), e)),
            }
        }

        // Routes after addresses: the kernel only accepts a `src` that is a local address, and
        // the subnet route before the default so the gateway resolves inside the table.
        let routes = table_routes(handle, plan.table).await?;
        for spec in &plan.routes {
            if routes.iter().any(|r| route_matches(r, spec, Some(idx))) {
                continue;
            }
            // The table belongs to this ENI, so a different route to the same destination in it
            // (a stale gateway, another link) is replaced rather than left to shadow ours.
            let req = handle.route().add(route_message(spec, idx)).replace();
            req.execute().await.map_err(|e| {
                nl_error(
                    &format!("add route {} in table {}", fmt_route(spec), plan.table),
                    e,
                )
            })?;
            changed.push(format!("route {} table {}", fmt_route(spec), spec.table));
        }

        let rules = ipv4_rules(handle).await?;
        for spec in &plan.rules {
            if rules.iter().any(|r| rule_matches(r, spec)) {
                continue;
            }
            let res = handle
                .rule()
                .add()
                .v4()
                .source_prefix(spec.from, 32)
                .table_id(spec.table)
                .priority(spec.priority)
                .action(RuleAction::ToTable)
                .execute()
                .await;
            match res {
                Ok(()) => changed.push(fmt_rule(spec)),
                Err(e) if errno_of(&e) == Some(Errno::EEXIST) => {}
                Err(e) => return Err(nl_error(&format!("add {}", fmt_rule(spec)), e)),
            }
        }
        Ok(changed)
    }

    async fn do_remove(&self, plan: &NetPlan) -> Result<ApplyReport, NetError> {
        // A subscription for this MAC is of no use any more.
        drop(self.take_prepared(&plan.mac));
        let memo = self.forget(&plan.mac).unwrap_or_default();
        let mut failures: Vec<String> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        let conn = Conn::open(&[])?;
        let handle = &conn.handle;

        let link = match parse_mac(&plan.mac) {
            Ok(mac) => match find_link(handle, mac).await {
                Ok(l) => l,
                Err(e) => {
                    failures.push(e.to_string());
                    None
                }
            },
            Err(e) => {
                failures.push(e.to_string());
                None
            }
        };

        // Rules first: they outlive the link, and without them nothing routes via the table.
        match ipv4_rules(handle).await {
            Ok(rules) => {
                for spec in &plan.rules {
                    for r in rules.iter().filter(|r| rule_matches(r, spec)) {
                        match handle.rule().del(r.clone()).execute().await {
                            Ok(()) => removed.push(fmt_rule(spec)),
                            Err(e) if is_gone(&e) => {}
                            Err(e) => failures.push(format!("delete {}: {e}", fmt_rule(spec))),
                        }
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        }

        // Routes vanish with the link; when it is still here only our exact routes go, never
        // other entries someone put in the same table.
        match table_routes(handle, plan.table).await {
            Ok(routes) => {
                let oif = link.as_ref().map(|l| l.index);
                for spec in &plan.routes {
                    for r in routes.iter().filter(|r| route_matches(r, spec, oif)) {
                        match handle.route().del(r.clone()).execute().await {
                            Ok(()) => removed.push(format!(
                                "route {} table {}",
                                fmt_route(spec),
                                spec.table
                            )),
                            Err(e) if is_gone(&e) => {}
                            Err(e) => failures.push(format!(
                                "delete route {} table {}: {e}",
                                fmt_route(spec),
                                spec.table
                            )),
                        }
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        }

        if let Some(link) = &link {
            match link_addresses(handle, link.index).await {
                Ok(present) => {
                    for a in &plan.addresses {
                        for (_, msg) in present.iter().filter(|(p, _)| p == a) {
                            match handle.address().del(msg.clone()).execute().await {
                                Ok(()) => removed.push(format!("address {}", fmt_net(a))),
                                Err(e) if is_gone(&e) => {}
                                Err(e) => {
                                    failures.push(format!("delete address {}: {e}", fmt_net(a)))
                                }
                            }
                        }
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }

            if let Some(old) = memo.old_rp_filter {
                match read_rp_filter(&link.name) {
                    Ok(now) if now == old => {}
                    _ => match write_rp_filter(&link.name, old) {
                        Ok(()) => removed.push(format!("rp_filter {old} restored")),
                        Err(e) => failures.push(e.to_string()),
                    },
                }
            }

            // Only undo the link changes this process made: an interface that was up before
            // enipeer touched it stays up, and then keeps its new name too (renaming needs it
            // down).
            let rename_back = memo
                .original_name
                .as_ref()
                .filter(|o| memo.brought_up && **o != link.name);
            if memo.brought_up || memo.original_mtu.is_some() {
                if rename_back.is_some() && link.up {
                    // Down in its own message first: the kernel renames before it changes flags.
                    let down = LinkUnspec::new_with_index(link.index).down().build();
                    if let Err(e) = handle.link().change(down).execute().await {
                        if !is_gone(&e) {
                            failures.push(format!("set {} down: {e}", link.name));
                        }
                    }
                }
                let mut b = LinkUnspec::new_with_index(link.index);
                if memo.brought_up {
                    b = b.down();
                }
                if let Some(m) = memo.original_mtu {
                    b = b.mtu(m);
                }
                if let Some(orig) = rename_back {
                    b = b.name(orig.clone());
                }
                match handle.link().change(b.build()).execute().await {
                    Ok(()) => {
                        if memo.brought_up {
                            removed.push(format!("link {} down", link.name));
                        }
                        if let Some(m) = memo.original_mtu {
                            removed.push(format!("link {} mtu {m} restored", link.name));
                        }
                        if let Some(orig) = rename_back {
                            removed.push(format!("link {} renamed back to {orig}", link.name));
                        }
                    }
                    Err(e) if is_gone(&e) => {}
                    Err(e) => failures.push(format!("restore link {}: {e}", link.name)),
                }
            }
        }

        if failures.is_empty() {
            tracing::info!(mac = %plan.mac, removed = removed.len(), link_present = link.is_some(), "network plan removed");
            Ok(ApplyReport {
                changed: removed,
                steps: vec![Step::now("net: plan removed")],
            })
        } else {
            Err(NetError::new(
                "teardown",
                format!(
                    "{} step(s) failed removing the plan for {}: {}",
                    failures.len(),
                    plan.mac,
                    failures.join("; ")
                ),
            ))
        }
    }

    async fn do_watch(&self, plan: &NetPlan) -> Result<mpsc::Receiver<NetEvent>, NetError> {
        let mac = parse_mac(&plan.mac)?;
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv4Rule,
        ];
        // Subscribe before looking the link up, so a deletion in between is not missed.
        let conn = Conn::open(&groups)?;
        let link = find_link(&conn.handle, mac).await?;
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
        let event = match &inner {
            RouteNetlinkMessage::DelLink(l) if l.header.index == index => Some(NetEvent::LinkGone),
            RouteNetlinkMessage::NewLink(l)
                if l.header.index == index && !l.header.flags.contains(LinkFlags::Up) =>
            {
                Some(NetEvent::Changed)
            }
            RouteNetlinkMessage::DelAddress(a) if a.header.index == index => {
                Some(NetEvent::Changed)
            }
            RouteNetlinkMessage::DelRoute(r) if route_table(r) == table => Some(NetEvent::Changed),
            RouteNetlinkMessage::DelRule(r) if rule_table(r) == table => Some(NetEvent::Changed),
            _ => None,
        };
        match event {
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

impl HostNet for NetlinkNet {
    fn prepare<'a>(&'a self, mac: &'a str) -> BoxFuture<'a, Result<(), NetError>> {
        Box::pin(self.do_prepare(mac))
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

    fn watch<'a>(
        &'a self,
        plan: &'a NetPlan,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<NetEvent>, NetError>> {
        Box::pin(self.do_watch(plan))
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
        let (conn, handle, messages) =
            opened.map_err(|e| NetError::new("netlink", format!("open netlink socket: {e}")))?;
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

#[derive(Debug, Clone)]
struct LinkState {
    index: u32,
    name: String,
    up: bool,
    mtu: Option<u32>,
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut name = String::new();
    let mut mtu = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            _ => {}
        }
    }
    LinkState {
        index: msg.header.index,
        name,
        up: msg.header.flags.contains(LinkFlags::Up),
        mtu,
    }
}

fn has_mac(msg: &LinkMessage, mac: [u8; 6]) -> bool {
    msg.attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Address(m) if m.as_slice() == mac))
}

fn parse_mac(text: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::new("bad-mac", format!("`{text}` is not a MAC address"));
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

async fn find_link(handle: &Handle, mac: [u8; 6]) -> Result<Option<LinkState>, NetError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_error("list links", e))?;
    Ok(links.iter().find(|l| has_mac(l, mac)).map(link_state))
}

/// Waits for the link with `mac`: a dump first (it may already be here), then the events of a
/// subscription that was opened before the dump, so nothing falls between the two.
async fn wait_for_link(
    mut sub: Conn,
    mac: [u8; 6],
    mac_text: &str,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<LinkState, NetError> {
    if let Some(link) = find_link(&sub.handle, mac).await? {
        return Ok(link);
    }
    loop {
        match tokio::time::timeout_at(deadline, sub.messages.next()).await {
            Ok(Some((msg, _))) => {
                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = &msg.payload
                {
                    if has_mac(l, mac) {
                        return Ok(link_state(l));
                    }
                }
            }
            Ok(None) => {
                return Err(NetError::new(
                    "netlink",
                    format!("link event socket closed while waiting for {mac_text}"),
                ))
            }
            Err(_) => break,
        }
    }
    // A full socket buffer drops events silently (ENOBUFS): one last look before giving up.
    if let Some(link) = find_link(&sub.handle, mac).await? {
        return Ok(link);
    }
    Err(NetError::new(
        "link-timeout",
        format!(
            "no link with MAC {mac_text} appeared within {} ms after the attach",
            timeout.as_millis()
        ),
    ))
}

async fn link_addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Net, AddressMessage)>, NetError> {
    let msgs: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_error("list addresses", e))?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.family == AddressFamily::Inet)
        .filter_map(|m| {
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            })?;
            Some((
                Ipv4Net {
                    addr,
                    prefix: m.header.prefix_len,
                },
                m,
            ))
        })
        .collect())
}

async fn table_routes(handle: &Handle, table: u32) -> Result<Vec<RouteMessage>, NetError> {
    let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let msgs: Vec<RouteMessage> = handle
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_error("list routes", e))?;
    Ok(msgs
        .into_iter()
        .filter(|r| route_table(r) == table)
        .collect())
}

async fn ipv4_rules(handle: &Handle) -> Result<Vec<RuleMessage>, NetError> {
    handle
        .rule()
        .get(IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_error("list rules", e))
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn rule_table(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn route_v4(
    r: &RouteMessage,
    pick: fn(&RouteAttribute) -> Option<&RouteAddress>,
) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match pick(a) {
        Some(RouteAddress::Inet(v)) => Some(*v),
        _ => None,
    })
}

/// Our route, exactly: destination, gateway, source and (when known) the link.
fn route_matches(r: &RouteMessage, spec: &RouteSpec, oif: Option<u32>) -> bool {
    let dst = route_v4(r, |a| match a {
        RouteAttribute::Destination(d) => Some(d),
        _ => None,
    })
    .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let gw = route_v4(r, |a| match a {
        RouteAttribute::Gateway(g) => Some(g),
        _ => None,
    });
    let src = route_v4(r, |a| match a {
        RouteAttribute::PrefSource(s) => Some(s),
        _ => None,
    });
    let route_oif = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    r.header.kind == RouteType::Unicast
        && route_table(r) == spec.table
        && r.header.destination_prefix_length == spec.dst.prefix
        && dst == spec.dst.addr
        && gw == spec.via
        && src == Some(spec.src)
        && oif.is_none_or(|o| route_oif == Some(o))
}

fn route_message(spec: &RouteSpec, oif: u32) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(spec.table)
        .output_interface(oif)
        .pref_source(spec.src);
    if spec.dst.prefix > 0 {
        b = b.destination_prefix(spec.dst.addr, spec.dst.prefix);
    }
    b = match spec.via {
        Some(gw) => b.gateway(gw),
        None => b.scope(RouteScope::Link),
    };
    b.build()
}

/// Our rule, exactly: `from <ip>/32 lookup <table>` at our priority, and no other selector.
fn rule_matches(r: &RuleMessage, spec: &RuleSpec) -> bool {
    if r.header.family != AddressFamily::Inet
        || r.header.action != RuleAction::ToTable
        || r.header.src_len != 32
        || r.header.dst_len != 0
        || rule_table(r) != spec.table
    {
        return false;
    }
    let mut src = None;
    let mut priority = 0;
    for a in &r.attributes {
        match a {
            RuleAttribute::Source(IpAddr::V4(v)) => src = Some(*v),
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::FwMark(_)
            | RuleAttribute::Destination(_) => return false,
            _ => {}
        }
    }
    src == Some(spec.from) && priority == spec.priority
}

fn rp_filter_path(ifname: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter")
}

// Plain blocking file I/O on purpose: /proc/sys/net resolves in the network namespace of the
// calling thread, and tokio::fs would run it on a pool thread that may be in another one. These
// are single small reads and writes of procfs, which do not block.
fn read_rp_filter(ifname: &str) -> Result<u8, NetError> {
    let path = rp_filter_path(ifname);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| NetError::new("sysctl", format!("read {path}: {e}")))?;
    text.trim()
        .parse()
        .map_err(|_| NetError::new("sysctl", format!("{path} holds `{}`", text.trim())))
}

fn write_rp_filter(ifname: &str, value: u8) -> Result<(), NetError> {
    let path = rp_filter_path(ifname);
    std::fs::write(&path, format!("{value}\n"))
        .map_err(|e| NetError::new("sysctl", format!("write {value} to {path}: {e}")))
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

fn nl_error(what: &str, e: rtnetlink::Error) -> NetError {
    NetError::new("netlink", format!("{what}: {e}"))
}

fn fmt_net(n: &Ipv4Net) -> String {
    format!("{}/{}", n.addr, n.prefix)
}

fn fmt_route(r: &RouteSpec) -> String {
    let dst = if r.dst.prefix == 0 {
        "default".to_owned()
    } else {
        fmt_net(&r.dst)
    };
    match r.via {
        Some(gw) => format!("{dst} via {gw} src {}", r.src),
        None => format!("{dst} scope link src {}", r.src),
    }
}

fn fmt_rule(r: &RuleSpec) -> String {
    format!(
        "rule from {} lookup {} priority {}",
        r.from, r.table, r.priority
    )
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
            assert_eq!(parse_mac(bad).unwrap_err().kind, "bad-mac", "{bad}");
        }
    }

    #[test]
    fn rule_match_is_exact() {
        let spec = RuleSpec {
            from: Ipv4Addr::new(198, 18, 1, 25),
            priority: 10001,
            table: 10001,
        };
        let mut r = RuleMessage::default();
        r.header.family = AddressFamily::Inet;
        r.header.action = RuleAction::ToTable;
        r.header.src_len = 32;
        r.attributes = vec![
            RuleAttribute::Source(IpAddr::V4(spec.from)),
            RuleAttribute::Priority(10001),
            RuleAttribute::Table(10001),
        ];
        assert!(rule_matches(&r, &spec));
        let mut other = r.clone();
        other.attributes.push(RuleAttribute::FwMark(1));
        assert!(
            !rule_matches(&other, &spec),
            "an extra selector is not our rule"
        );
        let mut other = r.clone();
        other.attributes[1] = RuleAttribute::Priority(100);
        assert!(!rule_matches(&other, &spec));
        let mut other = r.clone();
        other.header.action = RuleAction::Unspec;
        assert!(!rule_matches(&other, &spec), "a `none` rule routes nothing");
        let mut other = r;
        other.header.src_len = 24;
        assert!(!rule_matches(&other, &spec));
    }

    #[test]
    fn route_message_round_trips_through_the_matcher() {
        let spec = RouteSpec {
            dst: Ipv4Net {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
            },
            via: Some(Ipv4Addr::new(198, 18, 1, 1)),
            src: Ipv4Addr::new(198, 18, 1, 25),
            table: 10001,
        };
        let msg = route_message(&spec, 7);
        assert!(route_matches(&msg, &spec, Some(7)));
        assert!(route_matches(&msg, &spec, None));
        assert!(!route_matches(&msg, &spec, Some(8)));
        let subnet = RouteSpec {
            dst: Ipv4Net {
                addr: Ipv4Addr::new(198, 18, 1, 0),
                prefix: 24,
            },
            via: None,
            ..spec
        };
        assert!(!route_matches(&msg, &subnet, Some(7)));
        let msg = route_message(&subnet, 7);
        assert!(route_matches(&msg, &subnet, Some(7)));
        assert_eq!(msg.header.scope, RouteScope::Link);
    }
}
