//! The plan's routes, all in the ENI's own table and on its link, and the one route enipeer
//! takes out of the main table: the kernel's prefix route for an ENI address added without
//! `IFA_F_NOPREFIXROUTE` (see [`super::addr`]).
//!
//! The IPv6 default route goes through the subnet router, whose link-local address the kernel
//! learned from its router advertisements: the neighbour entry it keeps for the router (flagged
//! `router`) even though the ENI's `accept_ra_defrtr` is 0, which keeps the kernel's own default
//! route out of the main table. Until an RA has arrived that route waits; the watch asks for a
//! reconcile when the router appears ([`super::watch`]).
//!
//! Each table with a default route also gets a last resort, `unreachable default` at
//! [`GUARD_METRIC`] (see [`Via::Unreachable`]): it is added before the rules and addresses, so
//! that no packet with the ENI's source ever leaves through another link, not even halfway
//! through an apply.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::link::LinkState;
use super::{is_gone, nl_error, no_family, Teardown};
use crate::net::plan::{Via, GUARD_METRIC};
use crate::net::{AddrSpec, NetError, NetErrorKind, NetObject, RouteSpec};

/// The kernel's main table (`RT_TABLE_MAIN`).
const MAIN_TABLE: u32 = 254;

/// Deletes from the main table the kernel's prefix route of each IPv4 plan address on `link`
/// (`<subnet> dev <link> proto kernel scope link src <addr>`), which an address added without
/// `IFA_F_NOPREFIXROUTE` brings; returns what it deleted. Nothing else in main is touched.
/// (No release ever added IPv6 addresses with a prefix route.)
pub(super) async fn remove_prefix_routes(
    handle: &Handle,
    link: &LinkState,
    addrs: &[AddrSpec],
) -> Result<Vec<String>, NetError> {
    let routes = table_routes(handle, MAIN_TABLE, false).await?;
    let mut changed = Vec::new();
    for a in addrs.iter().filter(|a| a.prefix < 32) {
        let IpAddr::V4(addr) = a.addr else { continue };
        let net = crate::net::plan::network_of(crate::cloud::Ipv4Net {
            addr,
            prefix: a.prefix,
        });
        let spec = RouteSpec {
            dst: IpAddr::V4(net),
            dst_prefix: a.prefix,
            via: Via::Link,
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

/// What [`ensure_routes`] added.
#[derive(Debug, Default)]
pub(super) struct Added {
    pub added: Vec<String>,
    /// Of `added`, the routes via the IPv6 router.
    pub via_router: Vec<String>,
    /// Every route via the IPv6 router is in the table now (found or added).
    pub router_in_place: bool,
}

/// Adds the routes of `table` that are missing on link `oif`; returns what it added. The
/// subnet route comes before the default in the plan, so the gateway resolves inside the table.
/// A route via the IPv6 router waits (is left out, quietly) until the router is known.
pub(super) async fn ensure_routes(
    handle: &Handle,
    oif: u32,
    table: u32,
    specs: &[RouteSpec],
) -> Result<Added, NetError> {
    let routes = table_routes(handle, table, has_ipv6(specs)).await?;
    let wants_router = specs
        .iter()
        .any(|s| s.via == Via::Router || is_ipv6_guard(s));
    let has_router_route = specs.iter().any(|s| s.via == Via::Router);
    let router = match wants_router {
        true => ipv6_router(handle, oif).await?,
        false => None,
    };
    let mut out = Added {
        router_in_place: wants_router && router.is_some(),
        ..Added::default()
    };
    for spec in specs {
        let spec = match (spec.via, router) {
            (Via::Router, None) => {
                tracing::debug!(%spec, "no router advertisement seen on the link yet; the route waits");
                continue;
            }
            (Via::Router, Some(r)) => spec.through(r),
            (Via::Unreachable, Some(_)) if spec.dst.is_ipv6() => {
                // Taken out only after the route via the router (before it in the plan) is
                // in, never on its own: not a moment without either.
                if has_router_route {
                    let what = remove_ipv6_guard(handle, &routes, spec).await?;
                    out.via_router.extend(what.clone());
                    out.added.extend(what);
                }
                continue;
            }
            _ => *spec,
        };
        if routes.iter().any(|r| route_matches(r, &spec, Some(oif))) {
            continue;
        }
        // The table belongs to this ENI, so a different route to the same destination in it
        // (a stale gateway, another link) is replaced rather than left to shadow ours.
        let msg = route_message(&spec, oif).ok_or_else(|| {
            NetError::new(
                NetErrorKind::Netlink,
                format!("route {spec} mixes address families"),
            )
        })?;
        let req = handle.route().add(msg).replace();
        req.execute()
            .await
            .map_err(|e| nl_error(&format!("add route {spec}"), e))?;
        let what = format!("route {spec}");
        if matches!(spec.via, Via::Gateway(IpAddr::V6(gw)) if Some(gw) == router) {
            out.via_router.push(what.clone());
        }
        out.added.push(what);
    }
    Ok(out)
}

/// The IPv6 last resort, which is in place only until the router is known: an IPv6 lookup
/// first skips routes whose gateway's neighbour entry has failed and, finding none, tries them
/// again regardless (and so probes the router again); a last resort at a higher metric would
/// be found first and answer `unreachable` until the next router advertisement.
fn is_ipv6_guard(spec: &RouteSpec) -> bool {
    spec.via == Via::Unreachable && spec.dst.is_ipv6()
}

/// Deletes the IPv6 last resort from `routes` now that the router is known; what it deleted.
async fn remove_ipv6_guard(
    handle: &Handle,
    routes: &[RouteMessage],
    spec: &RouteSpec,
) -> Result<Vec<String>, NetError> {
    let mut removed = Vec::new();
    for r in routes.iter().filter(|r| route_matches(r, spec, None)) {
        match handle.route().del(r.clone()).execute().await {
            Ok(()) => removed.push(format!("route {spec} removed: the router is known")),
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(nl_error(&format!("delete route {spec}"), e)),
        }
    }
    Ok(removed)
}

/// The IPv6 router on link `oif` as the kernel learned it from router advertisements: the
/// link-local address of a neighbour entry flagged `router`. The lowest address when there are
/// several, so repeated reconciles agree.
pub(super) async fn ipv6_router(handle: &Handle, oif: u32) -> Result<Option<Ipv6Addr>, NetError> {
    let neighbours: Vec<_> = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet6)
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_error("list IPv6 neighbours", e))?;
    Ok(neighbours
        .iter()
        .filter(|n| {
            n.header.family == AddressFamily::Inet6
                && n.header.ifindex == oif
                && n.header.flags.contains(NeighbourFlags::Router)
        })
        .filter_map(|n| {
            n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some(*v),
                _ => None,
            })
        })
        .filter(is_link_local)
        .min())
}

/// fe80::/10: a router advertises from its link-local address.
pub(super) fn is_link_local(v: &Ipv6Addr) -> bool {
    (v.segments()[0] & 0xffc0) == 0xfe80
}

/// Deletes from the main table the routes the kernel learned from router advertisements on
/// `link`: the default (`proto ra`) and the advertised prefixes (`proto kernel` with an expiry,
/// which no route of an address has). The ENI's `accept_ra_defrtr` and `accept_ra_pinfo` are
/// 0 from the moment enipeer first sees the link down, but a link something else brought up
/// first may have learned a default route or a prefix already, which would stay until it
/// expires.
pub(super) async fn remove_ra_routes(
    handle: &Handle,
    link: &LinkState,
) -> Result<Vec<String>, NetError> {
    let routes = table_routes(handle, MAIN_TABLE, true).await?;
    let mut changed = Vec::new();
    let learned = routes.iter().filter(|r| {
        let expires = r.attributes.iter().any(|a| match a {
            RouteAttribute::CacheInfo(ci) => ci.expires != 0,
            _ => false,
        });
        r.header.address_family == AddressFamily::Inet6
            && r.attributes.contains(&RouteAttribute::Oif(link.index))
            && (r.header.protocol == RouteProtocol::Ra
                || (r.header.protocol == RouteProtocol::Kernel && expires))
    });
    for r in learned {
        let dst = route_ip(r, |a| match a {
            RouteAttribute::Destination(d) => Some(d),
            _ => None,
        });
        let what = match dst {
            Some(d) => format!("{d}/{}", r.header.destination_prefix_length),
            None => "default".to_owned(),
        };
        match handle.route().del(r.clone()).execute().await {
            Ok(()) => changed.push(format!(
                "router-advertised route {what} dev {} removed from main",
                link.name
            )),
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(nl_error(&format!("delete route {what} from main"), e)),
        }
    }
    Ok(changed)
}

fn has_ipv6(specs: &[RouteSpec]) -> bool {
    specs.iter().any(|s| s.dst.is_ipv6())
}

/// Deletes the plan's routes from `table`, recording each result in `td`. Routes vanish with
/// the link; when it is still here (`oif`) only our exact routes go, never other entries
/// someone put in the same table. A route via the IPv6 router is ours whatever router it names.
pub(super) async fn remove_routes(
    handle: &Handle,
    table: u32,
    specs: &[RouteSpec],
    oif: Option<u32>,
    td: &mut Teardown,
) {
    let listed = table_routes(handle, table, has_ipv6(specs)).await;
    let Some(routes) = td.check(NetObject::Route, listed) else {
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

/// The IPv4 routes of `table`, and its IPv6 routes when `ipv6` (a kernel without IPv6 has none:
/// an IPv4-only host never depends on IPv6).
async fn table_routes(
    handle: &Handle,
    table: u32,
    ipv6: bool,
) -> Result<Vec<RouteMessage>, NetError> {
    let mut queries = vec![(false, RouteMessageBuilder::<Ipv4Addr>::new().build())];
    if ipv6 {
        queries.push((true, RouteMessageBuilder::<Ipv6Addr>::new().build()));
    }
    let mut out = Vec::new();
    for (v6, query) in queries {
        let listed: Result<Vec<RouteMessage>, _> =
            handle.route().get(query).execute().try_collect().await;
        match listed {
            Ok(msgs) => out.extend(msgs.into_iter().filter(|r| route_table(r) == table)),
            Err(e) if v6 && no_family(&e) => {}
            Err(e) => return Err(nl_error("list routes", e)),
        }
    }
    Ok(out)
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

fn route_ip(
    r: &RouteMessage,
    pick: fn(&RouteAttribute) -> Option<&RouteAddress>,
) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match pick(a) {
        Some(RouteAddress::Inet(v)) => Some(IpAddr::V4(*v)),
        Some(RouteAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
        _ => None,
    })
}

/// Our route, exactly: family, destination, gateway, source and (when known) the link. A spec
/// via the IPv6 router matches whatever gateway the route has.
fn route_matches(r: &RouteMessage, spec: &RouteSpec, oif: Option<u32>) -> bool {
    let family = match spec.dst {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    if spec.via == Via::Unreachable {
        return r.header.address_family == family && is_guard(r, spec.table);
    }
    let unspecified = match spec.dst {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let dst = route_ip(r, |a| match a {
        RouteAttribute::Destination(d) => Some(d),
        _ => None,
    })
    .unwrap_or(unspecified);
    let gw = route_ip(r, |a| match a {
        RouteAttribute::Gateway(g) => Some(g),
        _ => None,
    });
    let gw_ok = match spec.via {
        Via::Link => gw.is_none(),
        Via::Gateway(want) => gw == Some(want),
        Via::Router => gw.is_some(),
        Via::Unreachable => false,
    };
    let src = route_ip(r, |a| match a {
        RouteAttribute::PrefSource(s) => Some(s),
        _ => None,
    });
    let route_oif = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    r.header.address_family == family
        && r.header.kind == RouteType::Unicast
        && route_table(r) == spec.table
        && r.header.destination_prefix_length == spec.dst_prefix
        && dst == spec.dst
        && gw_ok
        && src == Some(spec.src)
        && oif.is_none_or(|o| route_oif == Some(o))
}

/// A table's last resort: an `unreachable` default at [`GUARD_METRIC`], on no link (IPv6 lists
/// it on `lo`) and without a source.
fn is_guard(r: &RouteMessage, table: u32) -> bool {
    let metric = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Priority(m) => Some(*m),
        _ => None,
    });
    r.header.kind == RouteType::Unreachable
        && route_table(r) == table
        && r.header.destination_prefix_length == 0
        && metric == Some(GUARD_METRIC)
}

/// The message that adds `spec` (whose via is a concrete gateway, the link or nowhere) on
/// `oif`; `None` for a spec that mixes address families, which [`crate::net::plan`] never
/// builds.
fn route_message(spec: &RouteSpec, oif: u32) -> Option<RouteMessage> {
    if spec.via == Via::Unreachable {
        return Some(match spec.dst {
            IpAddr::V4(_) => guard_message(RouteMessageBuilder::<Ipv4Addr>::new(), spec.table),
            IpAddr::V6(_) => guard_message(RouteMessageBuilder::<Ipv6Addr>::new(), spec.table),
        });
    }
    let v4 = spec.src.is_ipv4();
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .table_id(spec.table)
        .output_interface(oif)
        .pref_source(spec.src)
        .ok()?;
    if spec.dst_prefix > 0 {
        // Fails for a destination of the other family.
        b = b.destination_prefix(spec.dst, spec.dst_prefix).ok()?;
    } else if spec.dst.is_ipv4() != v4 {
        return None;
    }
    Some(match spec.via {
        Via::Gateway(gw) if gw.is_ipv4() == v4 => b.gateway(gw).ok()?.build(),
        Via::Gateway(_) | Via::Unreachable => return None,
        // IPv6 routes have no scope: on-link is simply a route without a gateway.
        Via::Link | Via::Router if v4 => b.scope(RouteScope::Link).build(),
        Via::Link | Via::Router => b.build(),
    })
}

fn guard_message<T>(b: RouteMessageBuilder<T>, table: u32) -> RouteMessage {
    b.table_id(table)
        .kind(RouteType::Unreachable)
        .priority(GUARD_METRIC)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_message_round_trips_through_the_matcher() {
        let spec = RouteSpec {
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst_prefix: 0,
            via: Via::Gateway(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1))),
            src: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 25)),
            table: 10001,
        };
        let msg = route_message(&spec, 7).unwrap();
        assert!(route_matches(&msg, &spec, Some(7)));
        assert!(route_matches(&msg, &spec, None));
        assert!(!route_matches(&msg, &spec, Some(8)));
        let subnet = RouteSpec {
            dst: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 0)),
            dst_prefix: 24,
            via: Via::Link,
            ..spec
        };
        assert!(!route_matches(&msg, &subnet, Some(7)));
        let msg = route_message(&subnet, 7).unwrap();
        assert!(route_matches(&msg, &subnet, Some(7)));
        assert_eq!(msg.header.scope, RouteScope::Link);
    }

    #[test]
    fn ipv6_router_default_matches_any_gateway_but_only_ipv6() {
        let router: Ipv6Addr = "fe80::1ff:fe23:4567:890a".parse().unwrap();
        let spec = RouteSpec {
            dst: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            dst_prefix: 0,
            via: Via::Router,
            src: IpAddr::V6("2001:db8:0:1::25".parse().unwrap()),
            table: 10001,
        };
        let concrete = spec.through(router);
        let msg = route_message(&concrete, 7).unwrap();
        assert!(route_matches(&msg, &concrete, Some(7)));
        assert!(route_matches(&msg, &spec, Some(7)), "removal finds it");
        let other = spec.through("fe80::1".parse().unwrap());
        assert!(!route_matches(&msg, &other, Some(7)), "ensure replaces it");
        let v4_default = RouteSpec {
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            via: Via::Gateway(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1))),
            src: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 25)),
            ..spec
        };
        assert!(!route_matches(&msg, &v4_default, Some(7)));
        let on_link = RouteSpec {
            dst: IpAddr::V6("2001:db8:0:1::".parse().unwrap()),
            dst_prefix: 64,
            via: Via::Link,
            ..spec
        };
        let msg = route_message(&on_link, 7).unwrap();
        assert!(route_matches(&msg, &on_link, Some(7)));
        assert!(!route_matches(&msg, &spec, Some(7)));
    }

    #[test]
    fn the_last_resort_is_on_no_link_and_matches_only_itself() {
        let v4 = RouteSpec {
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst_prefix: 0,
            via: Via::Unreachable,
            src: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 25)),
            table: 10001,
        };
        let v6 = RouteSpec {
            dst: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            src: IpAddr::V6("2001:db8:0:1::25".parse().unwrap()),
            ..v4
        };
        for spec in [v4, v6] {
            let msg = route_message(&spec, 7).unwrap();
            assert_eq!(msg.header.kind, RouteType::Unreachable);
            assert!(!msg
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(_) | RouteAttribute::PrefSource(_))));
            // Whatever link the kernel lists it on (IPv6: `lo`).
            assert!(route_matches(&msg, &spec, Some(1)));
            assert!(route_matches(&msg, &spec, None));
            assert!(!route_matches(
                &msg,
                &RouteSpec {
                    table: 10002,
                    ..spec
                },
                None
            ));
        }
        let guard = route_message(&v4, 7).unwrap();
        assert!(!route_matches(&guard, &v6, None), "families never mix");
        let default = RouteSpec {
            via: Via::Gateway(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1))),
            ..v4
        };
        assert!(!route_matches(&guard, &default, Some(7)));
        let msg = route_message(&default, 7).unwrap();
        assert!(!route_matches(&msg, &v4, Some(7)), "a default is no guard");
    }
}
