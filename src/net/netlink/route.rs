//! The plan's routes, all in the ENI's own table and on its link, and the one route enipeer
//! takes out of the main table: the kernel's prefix route for an ENI address added without
//! `IFA_F_NOPREFIXROUTE` (see [`super::addr`]).

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::link::LinkState;
use super::{is_gone, nl_error, Teardown};
use crate::net::{AddrSpec, NetError, NetObject, RouteSpec};

/// The kernel's main table (`RT_TABLE_MAIN`).
const MAIN_TABLE: u32 = 254;

/// Deletes from the main table the kernel's prefix route of each plan address on `link`
/// (`<subnet> dev <link> proto kernel scope link src <addr>`), which an address added without
/// `IFA_F_NOPREFIXROUTE` brings; returns what it deleted. Nothing else in main is touched.
pub(super) async fn remove_prefix_routes(
    handle: &Handle,
    link: &LinkState,
    addrs: &[AddrSpec],
) -> Result<Vec<String>, NetError> {
    let routes = table_routes(handle, MAIN_TABLE).await?;
    let mut changed = Vec::new();
    for a in addrs.iter().filter(|a| a.prefix < 32) {
        let net = crate::net::plan::network_of(crate::cloud::Ipv4Net {
            addr: a.addr,
            prefix: a.prefix,
        });
        let spec = RouteSpec {
            dst: crate::cloud::Ipv4Net {
                addr: net,
                prefix: a.prefix,
            },
            via: None,
            src: a.addr,
            table: MAIN_TABLE,
        };
        let kernel = routes.iter().filter(|r| {
            r.header.protocol == RouteProtocol::Kernel && route_matches(r, &spec, Some(link.index))
        });
        for r in kernel {
            match handle.route().del(r.clone()).execute().await {
                Ok(()) => changed.push(format!(
                    "prefix route {net}/{} dev {} removed from main",
                    a.prefix, link.name
                )),
                Err(e) if is_gone(&e) => {}
                Err(e) => {
                    return Err(nl_error(
                        &format!("delete prefix route {net}/{} from main", a.prefix),
                        e,
                    ))
                }
            }
        }
    }
    Ok(changed)
}

/// Adds the routes of `table` that are missing on link `oif`; returns what it added. The
/// subnet route comes before the default in the plan, so the gateway resolves inside the table.
pub(super) async fn ensure_routes(
    handle: &Handle,
    oif: u32,
    table: u32,
    specs: &[RouteSpec],
) -> Result<Vec<String>, NetError> {
    let routes = table_routes(handle, table).await?;
    let mut changed = Vec::new();
    for spec in specs {
        if routes.iter().any(|r| route_matches(r, spec, Some(oif))) {
            continue;
        }
        // The table belongs to this ENI, so a different route to the same destination in it
        // (a stale gateway, another link) is replaced rather than left to shadow ours.
        let req = handle.route().add(route_message(spec, oif)).replace();
        req.execute()
            .await
            .map_err(|e| nl_error(&format!("add route {spec}"), e))?;
        changed.push(format!("route {spec}"));
    }
    Ok(changed)
}

/// Deletes the plan's routes from `table`, recording each result in `td`. Routes vanish with
/// the link; when it is still here (`oif`) only our exact routes go, never other entries
/// someone put in the same table.
pub(super) async fn remove_routes(
    handle: &Handle,
    table: u32,
    specs: &[RouteSpec],
    oif: Option<u32>,
    td: &mut Teardown,
) {
    let Some(routes) = td.check(NetObject::Route, table_routes(handle, table).await) else {
        return;
    };
    for spec in specs {
        for r in routes.iter().filter(|r| route_matches(r, spec, oif)) {
            let res = match td.injected(NetObject::Route) {
                Some(e) => Err(e),
                None => handle.route().del(r.clone()).execute().await,
            };
            td.deleted(NetObject::Route, format!("route {spec}"), res);
        }
    }
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

pub(super) fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Ipv4Net;

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
