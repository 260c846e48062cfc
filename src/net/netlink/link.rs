//! The ENI's link: finding it by MAC (now, or when it is hot-plugged) and its settings (name,
//! MTU, up state, rp_filter). The order in which settings change is [`link_steps`], a pure
//! function used both to apply the plan and to put back what was there before.
//!
//! The link is addressed by its index throughout. Its name is only what the kernel said last: a
//! hot-plugged device can be renamed right after the event that announced it (udev's
//! predictable names; `ip link set … netns … name` is two steps). The one place a name is
//! needed, a sysctl path in procfs (rp_filter; for IPv6, router advertisement handling), asks
//! the kernel for the current name by index right before each read or write, and follows a
//! rename that happens in between at once.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use nix::errno::Errno;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkUnspec};

use super::{errno_of, is_gone, nl_error, Conn, Teardown};
use crate::net::{NetError, NetErrorKind, NetObject, NetPlan, ObjectError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LinkState {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mtu: Option<u32>,
}

/// What `apply` found before changing the link, so `remove` can put exactly that back.
#[derive(Debug, Clone, Default)]
pub(super) struct Memo {
    old_rp_filter: Option<u8>,
    original_name: Option<String>,
    original_mtu: Option<u32>,
    brought_up: bool,
}

impl Memo {
    /// Notes what the plan is about to change on `link` (found with `rp_filter`), keeping what
    /// an earlier apply noted: by now those settings are enipeer's own.
    pub fn record(&mut self, link: &LinkState, rp_filter: Option<u8>, plan: &NetPlan) {
        if plan.rename_to.as_ref().is_some_and(|n| *n != link.name) && self.original_name.is_none()
        {
            self.original_name = Some(link.name.clone());
        }
        if plan.mtu.is_some_and(|m| link.mtu != Some(m)) && self.original_mtu.is_none() {
            self.original_mtu = link.mtu;
        }
        if !link.up {
            self.brought_up = true;
        }
        if self.old_rp_filter.is_none() {
            self.old_rp_filter = rp_filter;
        }
    }

    /// The settings that undo what this process changed on `link`. An interface that was up
    /// before enipeer touched it stays up, and then keeps its new name too (renaming needs it
    /// down).
    fn restore(&self, link: &LinkState) -> LinkSettings {
        LinkSettings {
            name: self
                .original_name
                .clone()
                .filter(|o| self.brought_up && *o != link.name),
            mtu: self.original_mtu,
            up: self.brought_up.then_some(false),
            rp_filter: self.old_rp_filter,
        }
    }
}

/// Link settings to reach; `None` leaves that setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LinkSettings {
    name: Option<String>,
    mtu: Option<u32>,
    up: Option<bool>,
    rp_filter: Option<u8>,
}

impl LinkSettings {
    /// What the plan wants: its name and MTU, up, and its rp_filter.
    pub fn applied(plan: &NetPlan) -> LinkSettings {
        LinkSettings {
            name: plan.rename_to.clone(),
            mtu: plan.mtu,
            up: Some(true),
            rp_filter: plan.rp_filter,
        }
    }
}

/// One request of the link sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkStep {
    /// Down, alone: the kernel refuses to rename a running interface and, within one message,
    /// renames before it changes flags.
    Down,
    /// One link message; `None` fields are not sent.
    Set {
        name: Option<String>,
        mtu: Option<u32>,
        up: Option<bool>,
    },
    /// Written by the link's name at that point, so after any rename.
    RpFilter(u8),
}

/// How the change report words what a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wording {
    Apply,
    Restore,
}

/// The requests that take `link` (whose rp_filter is `rp_filter`, when known) to `want`, in
/// order; empty when it is there already.
fn link_steps(link: &LinkState, rp_filter: Option<u8>, want: &LinkSettings) -> Vec<LinkStep> {
    let mut steps = Vec::new();
    let name = want.name.clone().filter(|n| *n != link.name);
    let mtu = want.mtu.filter(|m| link.mtu != Some(*m));
    let mut up_now = link.up;
    if name.is_some() && link.up {
        steps.push(LinkStep::Down);
        up_now = false;
    }
    let up = want.up.filter(|u| *u != up_now);
    if name.is_some() || mtu.is_some() || up.is_some() {
        steps.push(LinkStep::Set { name, mtu, up });
    }
    if let Some(v) = want.rp_filter.filter(|v| rp_filter != Some(*v)) {
        steps.push(LinkStep::RpFilter(v));
    }
    steps
}

/// Takes `link` to `want`, stopping at the first failure; returns what changed.
pub(super) async fn set_link(
    handle: &Handle,
    link: &mut LinkState,
    rp_filter: Option<u8>,
    want: &LinkSettings,
    wording: Wording,
) -> Result<Vec<String>, NetError> {
    let mut changed = Vec::new();
    for step in link_steps(link, rp_filter, want) {
        changed.extend(run_step(handle, link, step, wording).await?);
    }
    Ok(changed)
}

/// Puts back the settings `memo` holds, going on past failures; a link that left meanwhile is
/// success (its settings left with it).
pub(super) async fn restore_link(
    handle: &Handle,
    mut link: LinkState,
    memo: &Memo,
    td: &mut Teardown,
) {
    // An unreadable rp_filter is written anyway.
    let rp_filter = match memo.old_rp_filter {
        Some(_) => read_rp_filter(handle, &mut link).await.ok(),
        None => None,
    };
    let want = memo.restore(&link);
    for step in link_steps(&link, rp_filter, &want) {
        match run_step(handle, &mut link, step, Wording::Restore).await {
            Ok(done) => td.removed.extend(done),
            Err(e) if e.kind == NetErrorKind::LinkGone => return,
            Err(e) => td.failed.push(ObjectError::new(NetObject::Link, e)),
        }
    }
}

/// Sends one step, updating `link` to match; returns what changed. A link that vanished is
/// `link-gone`.
async fn run_step(
    handle: &Handle,
    link: &mut LinkState,
    step: LinkStep,
    wording: Wording,
) -> Result<Vec<String>, NetError> {
    let (msg, what) = match &step {
        LinkStep::Down => (
            LinkUnspec::new_with_index(link.index).down().build(),
            format!("set {} down to rename it", link.name),
        ),
        LinkStep::Set { name, mtu, up } => {
            let mut b = LinkUnspec::new_with_index(link.index);
            if let Some(n) = name {
                b = b.name(n.clone());
            }
            if let Some(m) = mtu {
                b = b.mtu(*m);
            }
            b = match up {
                Some(true) => b.up(),
                Some(false) => b.down(),
                None => b,
            };
            (b.build(), format!("set {}", link.name))
        }
        LinkStep::RpFilter(v) => {
            write_rp_filter(handle, link, *v).await?;
            let on = match wording {
                Wording::Apply => "on",
                Wording::Restore => "restored on",
            };
            return Ok(vec![format!("rp_filter {v} {on} {}", link.name)]);
        }
    };
    if let Err(e) = handle.link().change(msg).execute().await {
        return Err(link_error(link, &step, &what, e));
    }
    let changed = describe(link, &step, wording);
    match step {
        LinkStep::Down => link.up = false,
        LinkStep::Set { name, mtu, up } => {
            link.name = name.unwrap_or_else(|| link.name.clone());
            link.up = up.unwrap_or(link.up);
            link.mtu = mtu.or(link.mtu);
        }
        LinkStep::RpFilter(_) => {}
    }
    Ok(changed)
}

fn link_error(link: &LinkState, step: &LinkStep, what: &str, e: rtnetlink::Error) -> NetError {
    if is_gone(&e) {
        return NetError::new(NetErrorKind::LinkGone, format!("{what}: {e}"));
    }
    match step {
        LinkStep::Set { name: Some(n), .. } => {
            let why = if errno_of(&e) == Some(Errno::EEXIST) {
                "the name is taken by another link".to_owned()
            } else {
                e.to_string()
            };
            NetError::new(
                NetErrorKind::Rename,
                format!("cannot rename {} to {n}: {why}", link.name),
            )
        }
        _ => nl_error(what, e),
    }
}

/// What a successful step changed on `link` (as it was before the step).
fn describe(link: &LinkState, step: &LinkStep, wording: Wording) -> Vec<String> {
    let (name, mtu, up) = match step {
        // Applying, a down is only the way to a rename and the link comes up again at once.
        LinkStep::Down if wording == Wording::Apply => return Vec::new(),
        LinkStep::Down => return vec![format!("link {} down", link.name)],
        LinkStep::Set { name, mtu, up } => (name, mtu, up),
        LinkStep::RpFilter(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    let mut now = &link.name;
    if let Some(n) = name {
        let to = match wording {
            Wording::Apply => "to",
            Wording::Restore => "back to",
        };
        out.push(format!("link {} renamed {to} {n}", link.name));
        now = n;
    }
    match up {
        Some(true) => out.push(format!("link {now} up")),
        Some(false) => out.push(format!("link {now} down")),
        None => {}
    }
    if let Some(m) = mtu {
        let restored = match wording {
            Wording::Apply => "",
            Wording::Restore => " restored",
        };
        out.push(format!("link {now} mtu {m}{restored}"));
    }
    out
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

pub(super) async fn find_link(
    handle: &Handle,
    mac: [u8; 6],
) -> Result<Option<LinkState>, NetError> {
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
pub(super) async fn wait_for_link(
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
                    NetErrorKind::Netlink,
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
        NetErrorKind::LinkTimeout,
        format!(
            "no link with MAC {mac_text} appeared within {} ms after the attach",
            timeout.as_millis()
        ),
    ))
}

/// A per-interface sysctl enipeer sets on the ENI's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Knob {
    RpFilter,
    /// 2: router advertisements are processed even where the host forwards (Docker and
    /// Kubernetes hosts do, and would otherwise never learn the router).
    AcceptRa,
    /// 0: an RA on the ENI does not put a default route into the main table (the ENI's table
    /// gets its own, [`super::route`]); the kernel still notes the router as a neighbour.
    AcceptRaDefrtr,
    /// 0: an RA's prefixes neither add a prefix route to the main table nor autoconfigure
    /// addresses on the ENI (the same reason as `IFA_F_NOPREFIXROUTE`, [`super::addr`]).
    AcceptRaPinfo,
    /// 0: no duplicate address detection on the ENI. The kernel solicits the router's RA only
    /// once the link-local address passed DAD, a second after the link came up; the VPC assigns
    /// each MAC (from which that address derives) and each address once, so there is nothing
    /// to detect, and the IPv6 default route is there a second sooner.
    AcceptDad,
}

impl Knob {
    fn path(self, ifname: &str) -> String {
        let family = match self {
            Knob::RpFilter => "ipv4",
            _ => "ipv6",
        };
        format!("/proc/sys/net/{family}/conf/{ifname}/{}", self.name())
    }

    fn name(self) -> &'static str {
        match self {
            Knob::RpFilter => "rp_filter",
            Knob::AcceptRa => "accept_ra",
            Knob::AcceptRaDefrtr => "accept_ra_defrtr",
            Knob::AcceptRaPinfo => "accept_ra_pinfo",
            Knob::AcceptDad => "accept_dad",
        }
    }
}

/// Router advertisements on the ENI: processed (so the router is learned), but neither a
/// default route nor prefixes into the main table, and the router solicited at once. Set before
/// the link comes up (the kernel solicits an RA as soon as it is up and its link-local address
/// is usable). Not put back on removal: the interface leaves with the detach, and a device
/// attached again starts from the host's defaults.
pub(super) async fn ensure_ra_settings(
    handle: &Handle,
    link: &mut LinkState,
) -> Result<Vec<String>, NetError> {
    let mut changed = Vec::new();
    let wanted = [
        (Knob::AcceptRa, 2),
        (Knob::AcceptRaDefrtr, 0),
        (Knob::AcceptRaPinfo, 0),
        (Knob::AcceptDad, 0),
    ];
    for (knob, value) in wanted {
        if read_sysctl(handle, link, knob).await? != value {
            write_sysctl(handle, link, knob, value).await?;
            changed.push(format!("{} {value} on {}", knob.name(), link.name));
        }
    }
    Ok(changed)
}

/// The link's name as the kernel has it now, asked by index.
async fn name_now(handle: &Handle, index: u32) -> Result<String, NetError> {
    let gone = || {
        NetError::new(
            NetErrorKind::LinkGone,
            format!("no link with index {index}"),
        )
    };
    let mut links = handle.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(link_state(&msg).name),
        Ok(None) => Err(gone()),
        Err(e) if is_gone(&e) => Err(gone()),
        Err(e) => Err(nl_error(&format!("look up link {index}"), e)),
    }
}

/// How many times a sysctl follows a rename that happened between the name lookup and the file
/// access; more than one rename in that window is not a race any more.
const RENAME_RETRIES: usize = 3;

/// Runs `op` on the link's `knob` file, by the name the link has right now (updating
/// `link.name`); a `NotFound` means it was renamed in between, and is followed at once.
async fn on_sysctl<T>(
    handle: &Handle,
    link: &mut LinkState,
    knob: Knob,
    what: &str,
    op: impl Fn(&str) -> std::io::Result<T>,
) -> Result<T, NetError> {
    let mut attempt = 0;
    loop {
        link.name = name_now(handle, link.index).await?;
        let path = knob.path(&link.name);
        // Plain blocking file I/O on purpose: /proc/sys/net resolves in the network namespace
        // of the calling thread, and tokio::fs would run it on a pool thread that may be in
        // another one. These are single small reads and writes of procfs, which do not block.
        match op(&path) {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt + 1 < RENAME_RETRIES => {
                attempt += 1;
                tracing::debug!(ifindex = link.index, %path, "link renamed under us; looking again");
            }
            Err(e) => {
                return Err(NetError::new(
                    NetErrorKind::Sysctl,
                    format!("{what} {path}: {e}"),
                ))
            }
        }
    }
}

async fn read_sysctl(handle: &Handle, link: &mut LinkState, knob: Knob) -> Result<u8, NetError> {
    let text = on_sysctl(handle, link, knob, "read", |p| std::fs::read_to_string(p)).await?;
    text.trim().parse().map_err(|_| {
        NetError::new(
            NetErrorKind::Sysctl,
            format!("{} holds `{}`", knob.path(&link.name), text.trim()),
        )
    })
}

async fn write_sysctl(
    handle: &Handle,
    link: &mut LinkState,
    knob: Knob,
    value: u8,
) -> Result<(), NetError> {
    let what = format!("write {value} to");
    on_sysctl(handle, link, knob, &what, |path| {
        std::fs::write(path, format!("{value}\n"))
    })
    .await
}

pub(super) async fn read_rp_filter(handle: &Handle, link: &mut LinkState) -> Result<u8, NetError> {
    read_sysctl(handle, link, Knob::RpFilter).await
}

async fn write_rp_filter(handle: &Handle, link: &mut LinkState, value: u8) -> Result<(), NetError> {
    write_sysctl(handle, link, Knob::RpFilter, value).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, up: bool, mtu: u32) -> LinkState {
        LinkState {
            index: 7,
            name: name.into(),
            up,
            mtu: Some(mtu),
        }
    }

    fn want(
        name: Option<&str>,
        mtu: Option<u32>,
        up: Option<bool>,
        rp: Option<u8>,
    ) -> LinkSettings {
        LinkSettings {
            name: name.map(Into::into),
            mtu,
            up,
            rp_filter: rp,
        }
    }

    fn set(name: Option<&str>, mtu: Option<u32>, up: Option<bool>) -> LinkStep {
        LinkStep::Set {
            name: name.map(Into::into),
            mtu,
            up,
        }
    }

    #[test]
    fn a_fresh_nic_is_renamed_and_brought_up_in_one_message() {
        let nic = link("nic0", false, 1500);
        let w = want(Some("eni0"), Some(1400), Some(true), Some(2));
        assert_eq!(
            link_steps(&nic, Some(0), &w),
            [
                set(Some("eni0"), Some(1400), Some(true)),
                LinkStep::RpFilter(2)
            ]
        );
    }

    #[test]
    fn a_running_link_goes_down_alone_before_a_rename() {
        let nic = link("nic0", true, 1500);
        let w = want(Some("eni0"), None, Some(true), None);
        assert_eq!(
            link_steps(&nic, None, &w),
            [LinkStep::Down, set(Some("eni0"), None, Some(true))]
        );
    }

    #[test]
    fn settings_in_place_need_no_step() {
        let eni = link("eni0", true, 1400);
        let w = want(Some("eni0"), Some(1400), Some(true), Some(2));
        assert_eq!(link_steps(&eni, Some(2), &w), []);
        // An rp_filter that could not be read is written.
        assert_eq!(link_steps(&eni, None, &w), [LinkStep::RpFilter(2)]);
    }

    #[test]
    fn restore_undoes_exactly_what_apply_changed() {
        let plan_wants = want(Some("eni0"), Some(1400), Some(true), Some(2));
        let before = link("nic0", false, 1500);
        let mut memo = Memo::default();
        let plan = NetPlan {
            mac: "0a:1b:2c:3d:4e:5f".into(),
            rename_to: plan_wants.name.clone(),
            mtu: plan_wants.mtu,
            addresses: Vec::new(),
            table: 10001,
            rules: Vec::new(),
            routes: Vec::new(),
            rp_filter: plan_wants.rp_filter,
        };
        memo.record(&before, Some(0), &plan);
        let applied = link("eni0", true, 1400);
        // A second apply on the already configured link must not overwrite the memo.
        memo.record(&applied, Some(2), &plan);
        assert_eq!(
            link_steps(&applied, Some(2), &memo.restore(&applied)),
            [
                LinkStep::Down,
                set(Some("nic0"), Some(1500), None),
                LinkStep::RpFilter(0)
            ]
        );
    }

    #[test]
    fn a_link_that_was_up_keeps_its_new_name_on_restore() {
        let memo = Memo {
            old_rp_filter: None,
            original_name: Some("nic0".into()),
            original_mtu: None,
            brought_up: false,
        };
        let applied = link("eni0", true, 1500);
        assert_eq!(link_steps(&applied, None, &memo.restore(&applied)), []);
    }

    #[test]
    fn descriptions_name_the_link_as_it_is_after_the_change() {
        let nic = link("nic0", false, 1500);
        let step = set(Some("eni0"), Some(1400), Some(true));
        assert_eq!(
            describe(&nic, &step, Wording::Apply),
            [
                "link nic0 renamed to eni0",
                "link eni0 up",
                "link eni0 mtu 1400"
            ]
        );
        let eni = link("eni0", false, 1400);
        assert_eq!(
            describe(&eni, &set(Some("nic0"), Some(1500), None), Wording::Restore),
            [
                "link eni0 renamed back to nic0",
                "link nic0 mtu 1500 restored"
            ]
        );
        assert_eq!(
            describe(&eni, &LinkStep::Down, Wording::Restore),
            ["link eni0 down"]
        );
        assert!(describe(&eni, &LinkStep::Down, Wording::Apply).is_empty());
    }
}
