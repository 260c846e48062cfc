//! The desired host network state for one ENI, as a value that tests can compare.

use std::net::Ipv4Addr;

use crate::cloud::{EniInfo, Ipv4Net};
use crate::config::NetworkSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// The ENI's MAC: how the hot-plugged link is found (never by name).
    pub mac: String,
    pub rename_to: Option<String>,
    pub mtu: Option<u32>,
    /// Addresses with their prefix length.
    pub addresses: Vec<Ipv4Net>,
    pub table: u32,
    pub rule_priority: u32,
    /// One `from <ip> lookup <table>` rule per address.
    pub rule_sources: Vec<Ipv4Addr>,
    /// Routes in `table`: the subnet on the link, and a default via the gateway.
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub src: Ipv4Addr,
    pub rp_filter: Option<u8>,
}

impl NetPlan {
    pub fn build(info: &EniInfo, net: &NetworkSettings) -> NetPlan {
        let prefix = info.subnet_cidr.map(|c| c.prefix).unwrap_or(32);
        let mut addresses = vec![Ipv4Net {
            addr: info.primary_ip,
            prefix,
        }];
        addresses.extend(
            info.secondary_ips
                .iter()
                .map(|&addr| Ipv4Net { addr, prefix: 32 }),
        );
        let subnet = info.subnet_cidr.map(|c| Ipv4Net {
            addr: network_of(c),
            prefix: c.prefix,
        });
        let gateway = subnet.and_then(|s| {
            (s.prefix < 31).then(|| Ipv4Addr::from(u32::from(s.addr).wrapping_add(1)))
        });
        NetPlan {
            mac: info.mac.to_ascii_lowercase(),
            rename_to: net.interface_name.clone(),
            mtu: net.mtu,
            rule_sources: addresses.iter().map(|a| a.addr).collect(),
            addresses,
            table: net.route_table,
            rule_priority: net.rule_priority,
            subnet,
            gateway,
            src: info.primary_ip,
            rp_filter: net.rp_filter,
        }
    }
}

fn network_of(net: Ipv4Net) -> Ipv4Addr {
    let mask = if net.prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(net.prefix))
    };
    Ipv4Addr::from(u32::from(net.addr) & mask)
}
