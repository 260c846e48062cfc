//! The desired host network state for one ENI, as a value that tests can compare: which link,
//! which addresses, which policy rules and which routes in the ENI's own table. Each spec
//! displays the way `ip` would write it, which is how logs and change reports name it.

use std::fmt;
use std::net::Ipv4Addr;

use crate::cloud::{EniInfo, Ipv4Net};
use crate::config::NetworkSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// The ENI's MAC, lowercase: how the hot-plugged link is found (never by name).
    pub mac: String,
    /// Rename the link to this before bringing it up, so other configs can name it.
    pub rename_to: Option<String>,
    pub mtu: Option<u32>,
    /// The primary IP with the subnet's prefix, then the secondary IPs as /32.
    pub addresses: Vec<AddrSpec>,
    /// The ENI's own routing table.
    pub table: u32,
    /// One `from <ip> lookup <table>` per address, so replies leave through the ENI (AWS drops
    /// packets whose source does not belong to the interface they leave from).
    pub rules: Vec<RuleSpec>,
    /// In `table`: the subnet on the link, then the default via the subnet gateway.
    pub routes: Vec<RouteSpec>,
    /// Reverse-path filter for the link; `None` leaves it alone.
    pub rp_filter: Option<u8>,
}

/// An address on the ENI's link: `<addr>/<prefix>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrSpec {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// `from <from>/32 lookup <table> priority <priority>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSpec {
    pub from: Ipv4Addr,
    pub priority: u32,
    pub table: u32,
}

/// A route in the ENI's table, always on the ENI's link and with `src` the primary IP (so
/// locally originated traffic picks the ENI's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: Ipv4Net,
    /// `None`: directly on the link (scope link).
    pub via: Option<Ipv4Addr>,
    pub src: Ipv4Addr,
    pub table: u32,
}

impl NetPlan {
    pub fn build(info: &EniInfo, net: &NetworkSettings) -> NetPlan {
        let subnet = info.subnet_cidr.map(|c| Ipv4Net {
            addr: network_of(c),
            prefix: c.prefix,
        });
        let primary = AddrSpec {
            addr: info.primary_ip,
            prefix: subnet.map(|s| s.prefix).unwrap_or(32),
        };
        let mut addresses = vec![primary];
        for &addr in &info.secondary_ips {
            // EC2 lists the primary among the private IPs in some answers; adding it twice
            // (once /32) would make the host answer from a second, unintended address entry.
            if addresses.iter().all(|a| a.addr != addr) {
                addresses.push(AddrSpec { addr, prefix: 32 });
            }
        }
        let table = net.route_table;
        let rules = addresses
            .iter()
            .map(|a| RuleSpec {
                from: a.addr,
                priority: net.rule_priority,
                table,
            })
            .collect();
        let mut routes = Vec::new();
        if let Some(s) = subnet {
            routes.push(RouteSpec {
                dst: s,
                via: None,
                src: info.primary_ip,
                table,
            });
            // /31 and /32 subnets have no gateway at network + 1 (VPCs never use them).
            if s.prefix < 31 {
                routes.push(RouteSpec {
                    dst: Ipv4Net {
                        addr: Ipv4Addr::UNSPECIFIED,
                        prefix: 0,
                    },
                    via: Some(Ipv4Addr::from(u32::from(s.addr).wrapping_add(1))),
                    src: info.primary_ip,
                    table,
                });
            }
        }
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
        self.addresses.first().map(|a| a.addr)
    }

    /// The subnet gateway, when the plan has a default route.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.routes.iter().find_map(|r| r.via)
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
        if self.dst.prefix == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}/{}", self.dst.addr, self.dst.prefix)?;
        }
        match self.via {
            Some(gw) => write!(f, " via {gw}")?,
            None => f.write_str(" scope link")?,
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
            subnet_cidr: cidr.map(net),
            availability_zone: None,
        }
    }

    fn addr(s: &str) -> AddrSpec {
        let n = net(s);
        AddrSpec {
            addr: n.addr,
            prefix: n.prefix,
        }
    }

    fn rule(from: &str, priority: u32, table: u32) -> RuleSpec {
        RuleSpec {
            from: ip(from),
            priority,
            table,
        }
    }

    fn route(dst: &str, via: Option<&str>, src: &str, table: u32) -> RouteSpec {
        RouteSpec {
            dst: net(dst),
            via: via.map(ip),
            src: ip(src),
            table,
        }
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
        assert_eq!(plan.routes.len(), 2);
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
             default via 198.18.1.1 src 198.18.1.25 table 10001"
        );
    }
}
