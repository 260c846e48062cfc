//! An IPv6 subnet router's router advertisements, as EC2 instances in a dual-stack subnet see
//! the VPC router: they learn the IPv6 default gateway from router advertisements (RAs) sent
//! from the router's link-local address (on Nitro instances it shows as
//! `fe80::1ff:fe23:4567:890a`, the address [`AWS_ROUTER`] uses), in answer to a router
//! solicitation and now and then unsolicited. AWS assigns the addresses through the API (and
//! DHCPv6); these RAs nevertheless carry the subnet's prefix as on-link and autonomous, which
//! is harder on the host than needed: a host that processed it would get a prefix route in its
//! main table and a SLAAC address, and the tests check that enipeer's ENI gets neither.
//!
//! The advertiser runs on a thread inside a namespace the test created, on one interface. It is
//! bounded like every traffic loop of the tests: it stops when dropped, after [`MAX_RUN`], or
//! after [`MAX_SENT`] advertisements, whichever comes first.

#![allow(dead_code)]

use std::io::Read;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The subnet router's link-local address as AWS Nitro instances see it.
pub const AWS_ROUTER: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x1ff, 0xfe23, 0x4567, 0x890a);
/// The prefix the advertisements carry (on-link, autonomous): the lab's ENI subnet.
pub const PREFIX: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0);
/// Longest an advertiser runs.
pub const MAX_RUN: Duration = Duration::from_secs(1800);
/// Most advertisements one advertiser sends.
pub const MAX_SENT: usize = 20_000;
/// Unsolicited advertisements this often (solicited ones go out at once).
const PERIOD: Duration = Duration::from_secs(10);

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

pub struct Advertiser {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Advertiser {
    /// Advertises `router` (a link-local address it adds to `ifname`, without DAD) as the
    /// default router on `ifname` in namespace `ns`, with the prefix [`PREFIX`]/64.
    pub fn start(ns: &str, ifname: &str, router: Ipv6Addr) -> Advertiser {
        let (index, mac) = link_of(ns, ifname);
        super::netns::sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "replace",
            &format!("{router}/64"),
            "dev",
            ifname,
            "nodad",
        ]);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ifname = ifname.to_owned();
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            super::netns::spawn_in(ns, move || {
                let sock = match open(&ifname, index, router) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                run(&sock.0, sock.1, mac, &stop, &sent);
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("router advertiser on {ns}: {e}"),
            Err(_) => panic!("router advertiser on {ns} did not start"),
        }
        Advertiser {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Advertisements sent so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The index and MAC of `ifname` in `ns` (from `ip -j`: /sys shows the namespace it was
/// mounted in, not the one a thread entered).
fn link_of(ns: &str, ifname: &str) -> (u32, [u8; 6]) {
    let text = super::netns::sh(&["ip", "-n", ns, "-j", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_str(&text).expect("ip -j link");
    let index = v[0]["ifindex"].as_u64().expect("ifindex") as u32;
    let mut mac = [0u8; 6];
    let text = v[0]["address"].as_str().expect("address");
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("MAC");
    }
    (index, mac)
}

/// The raw ICMPv6 socket on `ifname` (index `index`), bound to `router`.
fn open(ifname: &str, index: u32, router: Ipv6Addr) -> std::io::Result<(Socket, u32)> {
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    sock.bind_device(Some(ifname.as_bytes()))?;
    // RFC 4861: a node ignores an RA whose hop limit is not 255 (it was not sent on-link).
    sock.set_multicast_hops_v6(255)?;
    sock.set_unicast_hops_v6(255)?;
    sock.set_multicast_if_v6(index)?;
    sock.join_multicast_v6(&ALL_ROUTERS, index)?;
    sock.bind(&SockAddr::from(SocketAddrV6::new(router, 0, 0, index)))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok((sock, index))
}

fn run(sock: &Socket, index: u32, mac: [u8; 6], stop: &AtomicBool, sent: &AtomicUsize) {
    let started = Instant::now();
    let ra = advertisement(mac);
    let to = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, index));
    let mut last: Option<Instant> = None;
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst)
        && started.elapsed() < MAX_RUN
        && sent.load(Ordering::SeqCst) < MAX_SENT
    {
        // A raw ICMPv6 socket hands over the ICMPv6 message without the IPv6 header.
        let solicited = match (&*sock).read(&mut buf) {
            Ok(n) if n > 0 => buf[0] == ROUTER_SOLICITATION,
            _ => false,
        };
        if solicited || last.is_none_or(|t| t.elapsed() >= PERIOD) {
            // The kernel fills in the ICMPv6 checksum of a raw ICMPv6 socket.
            if sock.send_to(&ra, &to).is_ok() {
                sent.fetch_add(1, Ordering::SeqCst);
            }
            last = Some(Instant::now());
        }
    }
}

/// A router advertisement: default router for 1800 s, the source link-layer address option
/// (without it the host could not note the router as a neighbour) and [`PREFIX`]/64.
fn advertisement(mac: [u8; 6]) -> Vec<u8> {
    let mut ra = vec![
        ROUTER_ADVERTISEMENT,
        0, // code
        0,
        0,  // checksum
        64, // current hop limit
        0,  // flags: addresses come from the API, not SLAAC
    ];
    ra.extend_from_slice(&1800u16.to_be_bytes()); // router lifetime
    ra.extend_from_slice(&0u32.to_be_bytes()); // reachable time: unspecified
    ra.extend_from_slice(&0u32.to_be_bytes()); // retrans timer: unspecified
    ra.extend_from_slice(&[1, 1]); // option: source link-layer address, 8 bytes
    ra.extend_from_slice(&mac);
    ra.extend_from_slice(&[3, 4, 64, 0xc0]); // option: prefix information, 32 bytes, /64, L and A
    ra.extend_from_slice(&2_592_000u32.to_be_bytes()); // valid lifetime
    ra.extend_from_slice(&604_800u32.to_be_bytes()); // preferred lifetime
    ra.extend_from_slice(&0u32.to_be_bytes()); // reserved
    ra.extend_from_slice(&PREFIX.octets());
    ra
}
