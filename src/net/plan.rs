//! The desired host network state for one ENI, as a value that tests can compare: which link,
//! which addresses, which policy rules and which routes in the ENI's own table, for IPv4 and,
//! when the ENI has IPv6 addresses, for IPv6 too. Each spec displays the way `ip` would write
//! it, which is how logs and change reports name it.
//!
//! IPv6 follows the IPv4 pattern, with one difference that AWS imposes: the subnet router has no
//! fixed unicast address to put in a plan. It advertises itself from a link-local address in
//! router advertisements (RAs), so the IPv6 default route says [`Via::Router`] and the netlink
//! adapter fills in the address the kernel learned from the RAs on the ENI's link.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cloud::{EniInfo, Ipv4Net, Ipv6Net};
use crate::config::NetworkSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// The ENI's MAC, lowercase: how the hot-plugged link is found (never by name).
    pub mac: String,
    /// Rename the link to this before bringing it up, so other configs can name it.
    pub rename_to: Option<String>,
    pub mtu: Option<u32>,
    /// The primary IP with the subnet's prefix, then the secondary IPs as /32; then the IPv6
    /// addresses, the first with the IPv6 subnet's prefix and the others as /128.
    pub addresses: Vec<AddrSpec>,
    /// The ENI's own routing table.
    pub table: u32,
    /// One `from <ip> lookup <table>` per address, so replies leave through the ENI (AWS drops
    /// packets whose source does not belong to the interface they leave from).
    pub rules: Vec<RuleSpec>,
    /// In `table`: the subnet on the link, the default via the subnet gateway, then the table's
    /// last resort (`unreachable default`, see [`Via::Unreachable`]); the same for IPv6 when the
    /// ENI has IPv6 addresses (the default via the router the RAs name).
    pub routes: Vec<RouteSpec>,
    /// Reverse-path filter for the link; `None` leaves it alone.
    pub rp_filter: Option<u8>,
}

/// An address on the ENI's link: `<addr>/<prefix>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrSpec {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// `from <from>/32 lookup <table> priority <priority>` (/128 for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSpec {
    pub from: IpAddr,
    pub priority: u32,
    pub table: u32,
}

/// A route in the ENI's table, always on the ENI's link and with `src` the family's first
/// address (so locally originated traffic picks the ENI's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// The destination network; prefix 0 is the default route.
    pub dst: IpAddr,
    pub dst_prefix: u8,
    pub via: Via,
    pub src: IpAddr,
    pub table: u32,
}

/// How a route reaches its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Directly on the link (scope link).
    Link,
    /// Through this gateway: the IPv4 subnet gateway at network + 1.
    Gateway(IpAddr),
    /// Through the IPv6 subnet router, whose link-local address is learned from the router
    /// advertisements on the ENI's link (AWS documents no fixed address for it).
    Router,
    /// Nowhere: `unreachable default metric` [`GUARD_METRIC`], the table's last resort (its
    /// `src` is not part of the route). Without it a packet from the ENI's address that the
    /// table has no route for yet (halfway through an apply, before the IPv6 router advertised
    /// itself, after someone flushed the table) falls through the rule to the main table and
    /// leaves through the primary interface with the ENI's source, which the VPC drops; with it
    /// the sender gets `EHOSTUNREACH` and retries. The same device the kernel's VRF documentation
    /// recommends for a VRF's table, at the same metric. The IPv6 one stays only until the router
    /// is known (see `is_ipv6_guard` in the netlink adapter): IPv6 lookups would otherwise prefer
    /// it over a router whose neighbour entry has failed.
    Unreachable,
}

/// The routes of `routes` that go `via` (a kind of route, for the adapter's steps).
pub fn routes_via(routes: &[RouteSpec], via: Via) -> Vec<RouteSpec> {
    routes.iter().filter(|r| r.via == via).copied().collect()
}

/// The metric of the tables' last-resort route: far behind every real route.
pub const GUARD_METRIC: u32 = 4_278_198_272;

impl NetPlan {
    pub fn build(info: &EniInfo, net: &NetworkSettings) -> NetPlan {
        let table = net.route_table;
        let mut addresses = ipv4_addresses(info);
        addresses.extend(ipv6_addresses(info));
        let rules = addresses
            .iter()
            .map(|a| RuleSpec {
                from: a.addr,
                priority: net.rule_priority,
                table,
            })
            .collect();
        let mut routes = ipv4_routes(info, table);
        routes.extend(ipv6_routes(info, table));
        NetPlan {
            mac: info.mac.to_ascii_lowercase(),
            rename_to: net.interface_name.clone(),
            mtu: net.mtu,
            addresses,
            table,
            rules,
            routes,
            rp_filter: net.rp_filter,
        }
    }

    /// The ENI's primary IP (the first address).
    pub fn primary(&self) -> Option<Ipv4Addr> {
        self.addresses.iter().find_map(|a| match a.addr {
            IpAddr::V4(v) => Some(v),
            IpAddr::V6(_) => None,
        })
    }

    /// The IPv4 subnet gateway, when the plan has a default route.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.routes.iter().find_map(|r| match r.via {
            Via::Gateway(IpAddr::V4(gw)) => Some(gw),
            _ => None,
        })
    }

    /// The plan configures IPv6: the link's router advertisement handling matters.
    pub fn has_ipv6(&self) -> bool {
        self.addresses.iter().any(|a| a.addr.is_ipv6())
    }

    /// The IPv6 addresses, for hooks.
    pub fn ipv6_addresses(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.addresses.iter().filter_map(|a| match a.addr {
            IpAddr::V6(v) => Some(v),
            IpAddr::V4(_) => None,
        })
    }

    /// The addresses, rules and routes of one address family (IPv6 when `ipv6`): the netlink
    /// adapter applies IPv4 first and whole, so that an IPv6 failure never keeps IPv4 from
    /// being served.
    pub fn family(&self, ipv6: bool) -> Family {
        Family {
            addresses: self
                .addresses
                .iter()
                .filter(|a| a.addr.is_ipv6() == ipv6)
                .copied()
                .collect(),
            rules: self
                .rules
                .iter()
                .filter(|r| r.from.is_ipv6() == ipv6)
                .copied()
                .collect(),
            routes: self
                .routes
                .iter()
                .filter(|r| r.dst.is_ipv6() == ipv6)
                .copied()
                .collect(),
        }
    }
}

/// One address family's part of a [`NetPlan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Family {
    pub addresses: Vec<AddrSpec>,
    pub rules: Vec<RuleSpec>,
    pub routes: Vec<RouteSpec>,
}

fn ipv4_addresses(info: &EniInfo) -> Vec<AddrSpec> {
    let primary = AddrSpec {
        addr: IpAddr::V4(info.primary_ip),
        prefix: info.subnet_cidr.map(|s| s.prefix).unwrap_or(32),
    };
    let mut addresses = vec![primary];
    for &addr in &info.secondary_ips {
        // EC2 lists the primary among the private IPs in some answers; adding it twice
        // (once /32) would make the host answer from a second, unintended address entry.
        if addresses.iter().all(|a| a.addr != addr) {
            addresses.push(AddrSpec {
                addr: IpAddr::V4(addr),
                prefix: 32,
            });
        }
    }
    addresses
}

fn ipv6_addresses(info: &EniInfo) -> Vec<AddrSpec> {
    let mut out: Vec<AddrSpec> = Vec::new();
    let Some(v6) = info.ipv6.as_deref() else {
        return out;
    };
    for &addr in &v6.addresses {
        if out.iter().any(|a| a.addr == addr) {
            continue;
        }
        let prefix = match (out.is_empty(), v6.subnet_cidr) {
            (true, Some(s)) => s.prefix,
            _ => 128,
        };
        out.push(AddrSpec {
            addr: IpAddr::V6(addr),
            prefix,
        });
    }
    out
}

fn ipv4_routes(info: &EniInfo, table: u32) -> Vec<RouteSpec> {
    let Some(s) = info.subnet_cidr else {
        return Vec::new();
    };
    let net = network_of(s);
    let src = IpAddr::V4(info.primary_ip);
    let mut routes = vec![RouteSpec {
        dst: IpAddr::V4(net),
        dst_prefix: s.prefix,
        via: Via::Link,
        src,
        table,
    }];
    // /31 and /32 subnets have no gateway at network + 1 (VPCs never use them).
    if s.prefix < 31 {
        routes.push(RouteSpec {
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst_prefix: 0,
            via: Via::Gateway(IpAddr::V4(Ipv4Addr::from(u32::from(net).wrapping_add(1)))),
            src,
            table,
        });
        routes.push(guard(IpAddr::V4(Ipv4Addr::UNSPECIFIED), src, table));
    }
    routes
}

/// The table's last resort for a family whose table has a default route: without a default,
/// traffic from the ENI's address is meant to go by the main table.
fn guard(unspecified: IpAddr, src: IpAddr, table: u32) -> RouteSpec {
    RouteSpec {
        dst: unspecified,
        dst_prefix: 0,
        via: Via::Unreachable,
        src,
        table,
    }
}

/// The IPv6 subnet on the link (when its CIDR is known) and the default via the router.
fn ipv6_routes(info: &EniInfo, table: u32) -> Vec<RouteSpec> {
    let Some((&first, v6)) = info
        .ipv6
        .as_deref()
        .and_then(|v6| Some((v6.addresses.first()?, v6)))
    else {
        return Vec::new();
    };
    let src = IpAddr::V6(first);
    let mut routes = Vec::new();
    if let Some(s) = v6.subnet_cidr {
        routes.push(RouteSpec {
            dst: IpAddr::V6(network_of_v6(s)),
            dst_prefix: s.prefix,
            via: Via::Link,
            src,
            table,
        });
    }
    routes.push(RouteSpec {
        dst: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        dst_prefix: 0,
        via: Via::Router,
        src,
        table,
    });
    routes.push(guard(IpAddr::V6(Ipv6Addr::UNSPECIFIED), src, table));
    routes
}

impl RouteSpec {
    /// This route with the router's address filled in (a concrete route to add).
    pub fn through(self, router: Ipv6Addr) -> RouteSpec {
        match self.via {
            Via::Router => RouteSpec {
                via: Via::Gateway(IpAddr::V6(router)),
                ..self
            },
            _ => self,
        }
    }
}

impl fmt::Display for AddrSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "from {} lookup {} priority {}",
            self.from, self.table, self.priority
        )
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.via == Via::Unreachable {
            // `0.0.0.0/0` or `::/0` rather than `ip`'s `default`: a change report lists both.
            return write!(
                f,
                "unreachable {}/0 metric {GUARD_METRIC} table {}",
                self.dst, self.table
            );
        }
        if self.dst_prefix == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}/{}", self.dst, self.dst_prefix)?;
        }
        match self.via {
            Via::Gateway(gw) => write!(f, " via {gw}")?,
            Via::Router => f.write_str(" via <router from RAs>")?,
            Via::Link => f.write_str(" scope link")?,
            Via::Unreachable => {}
        }
        write!(f, " src {} table {}", self.src, self.table)
    }
}

/// The network address of `net` (host bits cleared).
pub(crate) fn network_of(net: Ipv4Net) -> Ipv4Addr {
    let mask = if net.prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(net.prefix.min(32)))
    };
    Ipv4Addr::from(u32::from(net.addr) & mask)
}

/// The network address of an IPv6 `net` (host bits cleared).
pub(crate) fn network_of_v6(net: Ipv6Net) -> Ipv6Addr {
    let mask = if net.prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(net.prefix.min(128)))
    };
    Ipv6Addr::from(u128::from(net.addr) & mask)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Ipv4Net {
        let (a, p) = s.split_once('/').unwrap();
        Ipv4Net {
            addr: ip(a),
            prefix: p.parse().unwrap(),
        }
    }

    fn settings(table: u32, priority: u32) -> NetworkSettings {
        NetworkSettings {
            interface_name: None,
            route_table: table,
            rule_priority: priority,
            rp_filter: Some(2),
            mtu: None,
            repair: true,
            reconcile_interval: Duration::from_secs(30),
            link_timeout: Duration::from_secs(10),
        }
    }

    fn eni(primary: &str, secondary: &[&str], cidr: Option<&str>) -> EniInfo {
        EniInfo {
            eni_id: "eni-0123456789abcdef0".parse().unwrap(),
            status: "in-use".into(),
            attachment: None,
            mac: "0A:1B:2C:3D:4E:5F".into(),
            primary_ip: ip(primary),
            secondary_ips: secondary.iter().map(|s| ip(s)).collect(),
            ipv6: None,
            subnet_cidr: cidr.map(net),
            availability_zone: None,
        }
    }

    fn addr(s: &str) -> AddrSpec {
        let (a, p) = s.split_once('/').unwrap();
        AddrSpec {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    fn rule(from: &str, priority: u32, table: u32) -> RuleSpec {
        RuleSpec {
            from: from.parse().unwrap(),
            priority,
            table,
        }
    }

    fn route(dst: &str, via: Option<&str>, src: &str, table: u32) -> RouteSpec {
        let (d, p) = dst.split_once('/').unwrap();
        RouteSpec {
            dst: d.parse().unwrap(),
            dst_prefix: p.parse().unwrap(),
            via: match via {
                Some("router") => Via::Router,
                Some("unreachable") => Via::Unreachable,
                Some(gw) => Via::Gateway(gw.parse().unwrap()),
                None => Via::Link,
            },
            src: src.parse().unwrap(),
            table,
        }
    }

    fn dual_stack(v6: &[&str], cidr6: Option<&str>) -> EniInfo {
        let mut e = eni("198.18.1.25", &[], Some("198.18.1.0/24"));
        e.ipv6 = Some(Box::new(crate::cloud::EniIpv6 {
            addresses: v6.iter().map(|s| s.parse().unwrap()).collect(),
            subnet_cidr: cidr6.map(|c| {
                let (a, p) = c.split_once('/').unwrap();
                Ipv6Net {
                    addr: a.parse().unwrap(),
                    prefix: p.parse().unwrap(),
                }
            }),
        }));
        e
    }

    #[test]
    fn ipv6_addresses_get_rules_and_routes_in_the_same_table() {
        let plan = NetPlan::build(
            &dual_stack(
                &["2001:db8:0:1::25", "2001:db8:0:1::26", "2001:db8:0:1::25"],
                Some("2001:db8:0:1:7::/64"),
            ),
            &settings(10001, 10002),
        );
        assert_eq!(
            plan.addresses,
            vec![
                addr("198.18.1.25/24"),
                addr("2001:db8:0:1::25/64"),
                addr("2001:db8:0:1::26/128"),
            ]
        );
        assert_eq!(
            plan.rules,
            vec![
                rule("198.18.1.25", 10002, 10001),
                rule("2001:db8:0:1::25", 10002, 10001),
                rule("2001:db8:0:1::26", 10002, 10001),
            ]
        );
        assert_eq!(
            plan.routes,
            vec![
                route("198.18.1.0/24", None, "198.18.1.25", 10001),
                route("0.0.0.0/0", Some("198.18.1.1"), "198.18.1.25", 10001),
                route("0.0.0.0/0", Some("unreachable"), "198.18.1.25", 10001),
                route("2001:db8:0:1::/64", None, "2001:db8:0:1::25", 10001),
                route("::/0", Some("router"), "2001:db8:0:1::25", 10001),
                route("::/0", Some("unreachable"), "2001:db8:0:1::25", 10001),
            ]
        );
        assert!(plan.has_ipv6());
        let (v4, v6) = (plan.family(false), plan.family(true));
        assert_eq!(v4.addresses, plan.addresses[..1]);
        assert_eq!(v6.addresses, plan.addresses[1..]);
        assert_eq!(v4.rules.len() + v6.rules.len(), plan.rules.len());
        assert_eq!(v4.routes, plan.routes[..3]);
        assert_eq!(v6.routes, plan.routes[3..]);
        assert_eq!(plan.primary(), Some(ip("198.18.1.25")));
        assert_eq!(plan.gateway(), Some(ip("198.18.1.1")));
        let shown: Vec<String> = plan.routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown[4..],
            [
                "default via <router from RAs> src 2001:db8:0:1::25 table 10001",
                "unreachable ::/0 metric 4278198272 table 10001"
            ]
        );
        let router: Ipv6Addr = "fe80::1ff:fe23:4567:890a".parse().unwrap();
        assert_eq!(
            plan.routes[4].through(router).to_string(),
            "default via fe80::1ff:fe23:4567:890a src 2001:db8:0:1::25 table 10001"
        );
        assert_eq!(plan.routes[0].through(router), plan.routes[0]);
    }

    #[test]
    fn ipv6_without_a_known_subnet_is_host_addresses_and_the_router_default() {
        let plan = NetPlan::build(
            &dual_stack(&["2001:db8:0:1::25"], None),
            &settings(10001, 10001),
        );
        assert_eq!(plan.addresses[1], addr("2001:db8:0:1::25/128"));
        assert_eq!(
            plan.routes[3..],
            [
                route("::/0", Some("router"), "2001:db8:0:1::25", 10001),
                route("::/0", Some("unreachable"), "2001:db8:0:1::25", 10001),
            ]
        );
    }

    #[test]
    fn an_ipv4_only_eni_has_no_ipv6_part() {
        let plan = NetPlan::build(
            &eni("198.18.1.25", &[], Some("198.18.1.0/24")),
            &settings(10001, 10001),
        );
        assert!(!plan.has_ipv6());
        assert!(plan
            .routes
            .iter()
            .chain(std::iter::empty())
            .all(|r| r.dst.is_ipv4() && r.via != Via::Router));
        assert_eq!(plan.ipv6_addresses().count(), 0);
    }

    #[test]
    fn one_ip() {
        let plan = NetPlan::build(
            &eni("198.18.1.25", &[], Some("198.18.1.0/24")),
            &settings(10001, 10001),
        );
        assert_eq!(
            plan,
            NetPlan {
                mac: "0a:1b:2c:3d:4e:5f".into(),
                rename_to: None,
                mtu: None,
                addresses: vec![addr("198.18.1.25/24")],
                table: 10001,
                rules: vec![rule("198.18.1.25", 10001, 10001)],
                routes: vec![
                    route("198.18.1.0/24", None, "198.18.1.25", 10001),
                    route("0.0.0.0/0", Some("198.18.1.1"), "198.18.1.25", 10001),
                    route("0.0.0.0/0", Some("unreachable"), "198.18.1.25", 10001),
                ],
                rp_filter: Some(2),
            }
        );
        assert_eq!(plan.primary(), Some(ip("198.18.1.25")));
        assert_eq!(plan.gateway(), Some(ip("198.18.1.1")));
    }

    #[test]
    fn secondaries_are_host_addresses_each_with_a_rule() {
        let plan = NetPlan::build(
            &eni(
                "198.18.1.25",
                &["198.18.1.26", "198.18.1.25", "198.18.1.40", "198.18.1.26"],
                Some("198.18.1.0/24"),
            ),
            &settings(10001, 10001),
        );
        assert_eq!(
            plan.addresses,
            vec![
                addr("198.18.1.25/24"),
                addr("198.18.1.26/32"),
                addr("198.18.1.40/32")
            ]
        );
        assert_eq!(
            plan.rules,
            vec![
                rule("198.18.1.25", 10001, 10001),
                rule("198.18.1.26", 10001, 10001),
                rule("198.18.1.40", 10001, 10001),
            ]
        );
        // Routes use the primary as source whatever the number of secondaries.
        assert!(plan.routes.iter().all(|r| r.src == ip("198.18.1.25")));
        assert_eq!(plan.routes.len(), 3);
    }

    #[test]
    fn slash_28_subnet() {
        let plan = NetPlan::build(
            &eni("198.18.3.37", &["198.18.3.38"], Some("198.18.3.32/28")),
            &settings(10001, 10001),
        );
        assert_eq!(plan.addresses[0], addr("198.18.3.37/28"));
        assert_eq!(
            plan.routes,
            vec![
                route("198.18.3.32/28", None, "198.18.3.37", 10001),
                route("0.0.0.0/0", Some("198.18.3.33"), "198.18.3.37", 10001),
                route("0.0.0.0/0", Some("unreachable"), "198.18.3.37", 10001),
            ]
        );
    }

    #[test]
    fn slash_20_subnet_given_by_a_host_address() {
        // The CIDR may come with host bits set; the route must use the network address.
        let plan = NetPlan::build(
            &eni("198.18.21.7", &[], Some("198.18.21.7/20")),
            &settings(10002, 10002),
        );
        assert_eq!(plan.addresses, vec![addr("198.18.21.7/20")]);
        assert_eq!(
            plan.routes,
            vec![
                route("198.18.16.0/20", None, "198.18.21.7", 10002),
                route("0.0.0.0/0", Some("198.18.16.1"), "198.18.21.7", 10002),
                route("0.0.0.0/0", Some("unreachable"), "198.18.21.7", 10002),
            ]
        );
    }

    #[test]
    fn custom_table_priority_name_and_mtu() {
        let mut s = settings(200, 90);
        s.interface_name = Some("eni0".into());
        s.mtu = Some(1500);
        s.rp_filter = None;
        let plan = NetPlan::build(
            &eni("198.18.1.25", &["198.18.1.26"], Some("198.18.1.0/24")),
            &s,
        );
        assert_eq!(plan.table, 200);
        assert_eq!(
            plan.rules,
            vec![rule("198.18.1.25", 90, 200), rule("198.18.1.26", 90, 200)]
        );
        assert!(plan.routes.iter().all(|r| r.table == 200));
        assert_eq!(plan.rename_to.as_deref(), Some("eni0"));
        assert_eq!(plan.mtu, Some(1500));
        assert_eq!(plan.rp_filter, None);
    }

    #[test]
    fn unknown_subnet_gives_host_address_and_no_routes() {
        let plan = NetPlan::build(&eni("198.18.1.25", &[], None), &settings(10001, 10001));
        assert_eq!(plan.addresses, vec![addr("198.18.1.25/32")]);
        assert!(plan.routes.is_empty());
        assert_eq!(plan.rules.len(), 1);
        assert_eq!(plan.gateway(), None);
    }

    /// Without a default route in the table, traffic from the ENI's address is meant to go by
    /// the main table, so there is no last resort either.
    #[test]
    fn slash_31_has_no_default_route() {
        let plan = NetPlan::build(
            &eni("198.18.1.24", &[], Some("198.18.1.24/31")),
            &settings(10001, 10001),
        );
        assert_eq!(
            plan.routes,
            vec![route("198.18.1.24/31", None, "198.18.1.24", 10001)]
        );
    }

    #[test]
    fn specs_display_as_ip_writes_them() {
        let plan = NetPlan::build(
            &eni("198.18.1.25", &["198.18.1.26"], Some("198.18.1.0/24")),
            &settings(10001, 10002),
        );
        let shown = |v: &[String]| v.join(" | ");
        let addrs: Vec<String> = plan.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(shown(&addrs), "198.18.1.25/24 | 198.18.1.26/32");
        let rules: Vec<String> = plan.rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown(&rules),
            "from 198.18.1.25 lookup 10001 priority 10002 | \
             from 198.18.1.26 lookup 10001 priority 10002"
        );
        let routes: Vec<String> = plan.routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown(&routes),
            "198.18.1.0/24 scope link src 198.18.1.25 table 10001 | \
             default via 198.18.1.1 src 198.18.1.25 table 10001 | \
             unreachable 0.0.0.0/0 metric 4278198272 table 10001"
        );
    }
}
