//! The plan's addresses on the ENI's link.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::Handle;

use super::link::LinkState;
use super::{added, nl_error, Teardown};
use crate::net::{AddrSpec, NetError, NetObject};

/// Adds the addresses that are missing on `link`; returns what it added.
pub(super) async fn ensure_addresses(
    handle: &Handle,
    link: &LinkState,
    specs: &[AddrSpec],
) -> Result<Vec<String>, NetError> {
    let present = link_addresses(handle, link.index).await?;
    let mut changed = Vec::new();
    for a in specs {
        if present.iter().any(|(p, _)| p == a) {
            continue;
        }
        let req = handle
            .address()
            .add(link.index, IpAddr::V4(a.addr), a.prefix);
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
            let res = handle.address().del(msg.clone()).execute().await;
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
