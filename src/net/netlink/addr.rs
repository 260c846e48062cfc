//! The plan's addresses on the ENI's link, added with `IFA_F_NOPREFIXROUTE`: the kernel then
//! puts no `<subnet> dev <eni> proto kernel` route into the main table. That route (metric 0)
//! would win over the primary interface's own subnet route when the ENI shares its subnet (the
//! common EC2 layout; netplan writes metric 100, networkd 512+), and traffic from the primary
//! address to the subnet would leave through the ENI with the wrong source, to be dropped by the
//! source/destination check. The subnet route lives in the ENI's own table instead
//! ([`super::route`]).

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::Handle;

use super::link::LinkState;
use super::{added, nl_error, Teardown};
use crate::net::{AddrSpec, NetError, NetObject};

/// Adds the addresses that are missing on `link`; returns what it added. `legacy` (test seam
/// only) adds them with the kernel's prefix route, as old releases did.
pub(super) async fn ensure_addresses(
    handle: &Handle,
    link: &LinkState,
    specs: &[AddrSpec],
    legacy: bool,
) -> Result<Vec<String>, NetError> {
    let present = link_addresses(handle, link.index).await?;
    let mut changed = Vec::new();
    for a in specs {
        if present.iter().any(|(p, _)| p == a) {
            continue;
        }
        let mut req = handle.address().add(link.index, a.addr, a.prefix);
        if let Some(flags) = add_flags(a, legacy) {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(flags));
        }
        if added(req.execute().await).map_err(|e| nl_error(&format!("add address {a}"), e))? {
            changed.push(format!("address {a} on {}", link.name));
        }
    }
    Ok(changed)
}

/// The flags an address is added with. Never a prefix route (it would go into the main table,
/// ahead of the primary interface's own, when the ENI shares its subnet; the ENI's table has the
/// subnet route instead). IPv6 also without duplicate address detection: a tentative address
/// can be neither bound nor used as a source for a second or more, and the VPC already
/// guarantees that each address is assigned once.
fn add_flags(a: &AddrSpec, legacy: bool) -> Option<AddressFlags> {
    match a.addr {
        IpAddr::V4(_) if legacy => None,
        IpAddr::V4(_) => Some(AddressFlags::Noprefixroute),
        IpAddr::V6(_) => Some(AddressFlags::Noprefixroute | AddressFlags::Nodad),
    }
}

/// Deletes the global IPv6 addresses the kernel configured on `link` by itself from a router
/// advertisement's prefix (SLAAC: not permanent), which it did if something brought the link up
/// before enipeer turned `accept_ra_pinfo` off; returns what it deleted. The plan's addresses
/// and every address someone added by hand (permanent) stay.
pub(super) async fn remove_autoconf(
    handle: &Handle,
    link: &LinkState,
    keep: &[AddrSpec],
) -> Result<Vec<String>, NetError> {
    let present = link_addresses(handle, link.index).await?;
    let mut changed = Vec::new();
    let autoconf = present.iter().filter(|(a, m)| {
        a.addr.is_ipv6()
            && m.header.scope == AddressScope::Universe
            && !permanent(m)
            && !keep.contains(a)
    });
    for (a, msg) in autoconf {
        match handle.address().del(msg.clone()).execute().await {
            Ok(()) => changed.push(format!(
                "autoconfigured address {a} removed from {}",
                link.name
            )),
            Err(e) if super::is_gone(&e) => {}
            Err(e) => return Err(nl_error(&format!("delete address {a}"), e)),
        }
    }
    Ok(changed)
}

fn permanent(m: &AddressMessage) -> bool {
    m.header.flags.contains(AddressHeaderFlags::Permanent)
        || m.attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Permanent)))
}

/// Deletes the plan's addresses from `link`, recording each result in `td`.
pub(super) async fn remove_addresses(
    handle: &Handle,
    link: &LinkState,
    specs: &[AddrSpec],
    td: &mut Teardown,
) {
    let Some(present) = td.check(NetObject::Address, link_addresses(handle, link.index).await)
    else {
        return;
    };
    for a in specs {
        for (_, msg) in present.iter().filter(|(p, _)| p == a) {
            let res = match td.injected(NetObject::Address) {
                Some(e) => Err(e),
                None => handle.address().del(msg.clone()).execute().await,
            };
            td.deleted(
                NetObject::Address,
                format!("address {a} on {}", link.name),
                res,
            );
        }
    }
}

/// The IPv4 and IPv6 addresses on link `index`, each with the message that deletes it.
async fn link_addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<(AddrSpec, AddressMessage)>, NetError> {
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
        .filter_map(|m| {
            // IPv4 names the address in IFA_LOCAL (IFA_ADDRESS is the peer on point-to-point
            // links); IPv6 only has IFA_ADDRESS.
            let addr = m
                .attributes
                .iter()
                .find_map(|a| match (m.header.family, a) {
                    (AddressFamily::Inet, AddressAttribute::Local(v @ IpAddr::V4(_))) => Some(*v),
                    (AddressFamily::Inet6, AddressAttribute::Address(v @ IpAddr::V6(_))) => {
                        Some(*v)
                    }
                    _ => None,
                })?;
            let prefix = m.header.prefix_len;
            Some((AddrSpec { addr, prefix }, m))
        })
        .collect())
}
