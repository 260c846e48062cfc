//! The plan's addresses on the ENI's link, added with `IFA_F_NOPREFIXROUTE`: the kernel then
//! puts no `<subnet> dev <eni> proto kernel` route into the main table. That route (metric 0)
//! would win over the primary interface's own subnet route when the ENI shares its subnet (the
//! common EC2 layout; netplan writes metric 100, networkd 512+), and traffic from the primary
//! address to the subnet would leave through the ENI with the wrong source, to be dropped by the
//! source/destination check. The subnet route lives in the ENI's own table instead
//! ([`super::route`]).

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
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
        let mut req = handle
            .address()
            .add(link.index, IpAddr::V4(a.addr), a.prefix);
        if !legacy {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
        }
        if added(req.execute().await).map_err(|e| nl_error(&format!("add address {a}"), e))? {
            changed.push(format!("address {a} on {}", link.name));
        }
    }
    Ok(changed)
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

/// The IPv4 addresses on link `index`, each with the message that deletes it.
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
        .filter(|m| m.header.family == AddressFamily::Inet)
        .filter_map(|m| {
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            })?;
            let prefix = m.header.prefix_len;
            Some((AddrSpec { addr, prefix }, m))
        })
        .collect())
}
