//! The lab: one Availability Zone on one machine, for end-to-end tests and `make demo`.
//!
//! ```text
//!  enpl-cli 203.0.113.130 ── enpl-rt (router: bridges, EIP DNAT, source/destination check)
//!                              ├─ br-mgmt 198.18.0.1/24
//!                              │    ├─ enpl-cloud 198.18.0.2: moto, the cloud front, IMDS
//!                              │    ├─ enpl-a 198.18.0.11 (enipeer, nginx)
//!                              │    └─ enpl-b 198.18.0.12 (enipeer, nginx)
//!                              └─ br-eni 198.18.1.1/24
//!                                   └─ e-eni1 ── eni1: the ENI's "NIC", parked in enpl-pool while
//!                                      detached, moved into the instance's namespace on attach
//!  EIP 203.0.113.10 -> 198.18.1.25 (the ENI's primary private IP), nftables DNAT in the router
//! ```
//!
//! That is [`Layout::OwnSubnet`]. [`Layout::SharedSubnet`] is the common EC2 layout instead: the
//! ENI (198.18.0.25, .26) is bridged on br-mgmt, in the instances' own subnet; the instances'
//! subnet and default routes are at metric 100 (their addresses without the kernel's prefix
//! route), as Ubuntu's netplan writes them; and since bridged traffic never meets the router's
//! rp_filter, a bridge-family nftables rule per port enforces the source/destination check
//! (an IPv4 or ARP source that does not belong to the NIC the frame comes from is dropped).
//!
//! Nothing touches the root namespace: every link lives in a namespace the lab creates
//! ([`Netns`], tests/support/netns.rs), and every address is from 198.18.0.0/15 or
//! 203.0.113.0/24. A new lab first removes a previous run's namespaces (and the processes in
//! them) by their exact names; dropping the lab tears everything down, also when a test panics.
//!
//! The two nodes are [`Side::A`] (node-a) and [`Side::B`] (node-b). Their agent configuration is
//! the shipped example `conf/enipeer.toml` with only the lab's addresses, ids, paths and timings
//! overridden ([`agent_config`]).
//!
//! The cloud front, the IMDS responders and moto run in the cloud namespace: a thread of this
//! process enters it (setns) and runs them on its own runtime. Hot-plug: the front reports each
//! finished attach or detach, and the lab moves the ENI's link between namespaces, which the
//! instance sees as RTM_NEWLINK / RTM_DELLINK exactly like a hot-plugged device.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use super::agent_config::AgentConfig;
use super::cloud_front::{Change, CloudFront, FrontControl};
use super::netns::{self, link_by_mac, sh, sh_quiet, Netns};
use super::{imds, sdk_client, seed_in, Moto, Seeded, Side, ENI_IP, ENI_SECONDARY_IP};

mod faults;

pub const NS_RT: &str = "enpl-rt";
pub const NS_CLOUD: &str = "enpl-cloud";
pub const NS_CLI: &str = "enpl-cli";
pub const NS_POOL: &str = "enpl-pool";
pub const EIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLOUD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const FRONT_PORT: u16 = 4566;
const STATE_DIR: &str = "/run/enipeer-lab";
const ENI_LINK: &str = "eni1";
/// A lab run's logs are copied here at teardown, for the operator to read after a failure.
pub const LOG_DIR: &str = "/tmp/enipeer-lab-logs";

/// Where the ENI sits relative to the instances' primary interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The ENI in a subnet of its own, 198.18.1.0/24 on br-eni.
    OwnSubnet,
    /// The ENI in the instances' subnet, 198.18.0.0/24 on br-mgmt (one subnet per AZ).
    SharedSubnet,
    /// [`Layout::OwnSubnet`] dual-stack: the ENI also has [`ENI_IP6`] in [`ENI_SUBNET6`], the
    /// router advertises itself on br-eni as AWS's does, and the client reaches the ENI's IPv6
    /// address directly (no NAT for IPv6 on AWS either).
    DualStack,
}

/// The ENI's IPv6 address in [`Layout::DualStack`].
pub const ENI_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x25);
/// The ENI's IPv6 subnet in [`Layout::DualStack`].
pub const ENI_SUBNET6: &str = "2001:db8:0:1::/64";
/// The client's IPv6 address on the "internet".
const CLIENT_IP6: &str = "2001:db8:0:ff::130";

impl Layout {
    pub fn eni_ip(self) -> Ipv4Addr {
        match self {
            Layout::OwnSubnet | Layout::DualStack => ENI_IP,
            Layout::SharedSubnet => Ipv4Addr::new(198, 18, 0, 25),
        }
    }

    pub fn eni_secondary_ip(self) -> Ipv4Addr {
        match self {
            Layout::OwnSubnet | Layout::DualStack => ENI_SECONDARY_IP,
            Layout::SharedSubnet => Ipv4Addr::new(198, 18, 0, 26),
        }
    }

    fn subnet_cidr(self) -> &'static str {
        match self {
            Layout::OwnSubnet | Layout::DualStack => "198.18.1.0/24",
            Layout::SharedSubnet => "198.18.0.0/24",
        }
    }

    /// The ENI's IPv6 subnet and address, in the dual-stack layout.
    pub fn ipv6(self) -> Option<(&'static str, Ipv6Addr)> {
        (self == Layout::DualStack).then_some((ENI_SUBNET6, ENI_IP6))
    }

    /// The router's bridge the ENI's NIC is a port of.
    fn eni_bridge(self) -> &'static str {
        match self {
            Layout::OwnSubnet | Layout::DualStack => "br-eni",
            Layout::SharedSubnet => "br-mgmt",
        }
    }
}

/// Where each side lives in the lab.
impl Side {
    /// The node's namespace: the instance.
    pub fn ns(self) -> &'static str {
        self.pick(["enpl-a", "enpl-b"])
    }

    /// The instance's primary address, on the management bridge.
    pub fn node_ip(self) -> &'static str {
        self.pick(["198.18.0.11", "198.18.0.12"])
    }

    /// The router's end of the instance's primary interface: down means the host is cut off.
    fn mgmt_port(self) -> &'static str {
        self.pick(["m-a", "m-b"])
    }

    /// The instance's own IMDS responder, in the cloud namespace.
    fn imds_port(self) -> u16 {
        self.pick([8011, 8012])
    }

    fn index(self) -> usize {
        self.pick([0, 1])
    }
}

/// How fast the emulated cloud is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// No added delay: what enipeer itself costs.
    Instant,
    /// Delays of the order real EC2 shows (no published figures; these follow observed ones):
    /// an attach stays `attaching` 1.5 s, a detach `detaching` 2 s, and the guest sees the
    /// hot-plugged device 0.8 s after the attach completes.
    AwsLike,
}

impl Profile {
    pub fn from_env() -> Profile {
        match std::env::var("ENIPEER_LAB_PROFILE").as_deref() {
            Ok("aws-like") => Profile::AwsLike,
            _ => Profile::Instant,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Instant => "instant",
            Profile::AwsLike => "aws-like",
        }
    }

    /// (attach, detach, hot-plug) delays; `ENIPEER_LAB_DELAYS=attach_ms,detach_ms,hotplug_ms`
    /// overrides the profile's, to emulate a slower or faster region.
    fn delays(self) -> (Duration, Duration, Duration) {
        if let Ok(v) = std::env::var("ENIPEER_LAB_DELAYS") {
            let ms: Vec<u64> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            if let [a, d, h] = ms[..] {
                return (
                    Duration::from_millis(a),
                    Duration::from_millis(d),
                    Duration::from_millis(h),
                );
            }
            panic!("ENIPEER_LAB_DELAYS must be attach_ms,detach_ms,hotplug_ms, not {v:?}");
        }
        match self {
            Profile::Instant => (Duration::ZERO, Duration::ZERO, Duration::ZERO),
            Profile::AwsLike => (
                Duration::from_millis(1500),
                Duration::from_millis(2000),
                Duration::from_millis(800),
            ),
        }
    }
}

/// The agent binary the lab runs: `ENIPEER_LAB_BIN` (the release build for the bench, the
/// installed one for the package test), else the one cargo built for this test.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("ENIPEER_LAB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_enipeer")))
}

/// True (having said why) when this machine cannot run the lab: the test then passes as skipped.
pub fn unavailable() -> bool {
    if let Err(e) = Lab::preflight() {
        eprintln!("SKIPPED: {e}");
        return true;
    }
    false
}

/// Per-node agent settings that scenarios change (the rest is the shipped example's).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub interval: &'static str,
    pub dead_interval: &'static str,
    pub repair: bool,
    pub hold_down: &'static str,
    /// `group.device-index` as a list; `None` keeps the example's (1, then the next two).
    pub device_indexes: Option<&'static [i64]>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            interval: "200ms",
            dead_interval: "1s",
            repair: true,
            hold_down: "30s",
            device_indexes: None,
        }
    }
}

fn ip(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    sh(&v)
}

// ---------- the cloud namespace ----------

enum Cmd {
    Reseed(mpsc::Sender<Seeded>),
    Holder(String, mpsc::Sender<Result<Option<String>, String>>),
}

struct CloudThread {
    tx: tokio::sync::mpsc::UnboundedSender<Cmd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CloudThread {
    /// Starts moto, the front and the IMDS responders inside the cloud namespace and seeds the
    /// cloud once (which also warms moto: its first EC2 call is slow).
    fn start(ids: [Arc<Mutex<String>>; 2], layout: Layout) -> (CloudThread, FrontControl, Seeded) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = netns::spawn_in(NS_CLOUD, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cloud runtime");
            let moto = Moto::start();
            let moto = &moto;
            rt.block_on(async move {
                let front = CloudFront::start(SocketAddr::from((CLOUD_IP, FRONT_PORT)), moto.addr)
                    .await
                    .expect("cloud front");
                for side in Side::BOTH {
                    let l = tokio::net::TcpListener::bind((CLOUD_IP, side.imds_port()))
                        .await
                        .expect("imds listener");
                    tokio::spawn(imds::serve(
                        l,
                        ids[side.index()].clone(),
                        Arc::new(AtomicUsize::new(0)),
                    ));
                }
                let ec2 = sdk_client(&moto.endpoint_url()).await;
                let seed = || {
                    seed_in(
                        &ec2,
                        layout.subnet_cidr(),
                        layout.eni_ip(),
                        layout.eni_secondary_ip(),
                        layout.ipv6(),
                    )
                };
                let _ = ready_tx.send((front.control(), seed().await));
                while let Some(cmd) = rx.recv().await {
                    match cmd {
                        Cmd::Reseed(reply) => {
                            moto.reset();
                            let _ = reply.send(seed().await);
                        }
                        Cmd::Holder(eni, reply) => {
                            let _ = reply.send(holder_of(&ec2, eni).await);
                        }
                    }
                }
                drop(front);
            });
        });
        let (front, seeded) = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the cloud namespace did not come up");
        (
            CloudThread {
                tx,
                thread: Some(thread),
            },
            front,
            seeded,
        )
    }

    fn call<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Cmd) -> T {
        let (tx, rx) = mpsc::channel();
        self.tx.send(make(tx)).expect("cloud thread gone");
        rx.recv_timeout(Duration::from_secs(30))
            .expect("cloud thread did not answer")
    }
}

/// The instance the ENI is attached to, as moto says (not through the front).
async fn holder_of(ec2: &aws_sdk_ec2::Client, eni: String) -> Result<Option<String>, String> {
    ec2.describe_network_interfaces()
        .network_interface_ids(eni)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))
        .map(|out| {
            out.network_interfaces()
                .iter()
                .filter_map(|n| n.attachment())
                .find_map(|a| a.instance_id().map(str::to_owned))
        })
}

impl Drop for CloudThread {
    fn drop(&mut self) {
        // Closing the channel ends the command loop, which drops the front and moto.
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------- hot-plug ----------

struct HotPlug {
    /// Instance id -> namespace, updated on reseed.
    ns_of: Mutex<HashMap<String, &'static str>>,
    mac: Mutex<String>,
    /// How long after the cloud says `attached` the guest sees the device.
    delay: Mutex<Duration>,
    /// One move at a time, in the order the cloud finished them.
    order: Mutex<()>,
    moves: AtomicUsize,
}

impl HotPlug {
    fn on_change(self: &Arc<Self>, c: Change) {
        let this = self.clone();
        std::thread::spawn(move || {
            let Some(ns) = this
                .ns_of
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&c.instance)
                .copied()
            else {
                return;
            };
            if c.attached {
                let delay = *this.delay.lock().unwrap_or_else(|e| e.into_inner());
                std::thread::sleep(delay);
            }
            let _order = this.order.lock().unwrap_or_else(|e| e.into_inner());
            let mac = this.mac.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let (from, to) = if c.attached {
                (NS_POOL, ns)
            } else {
                (ns, NS_POOL)
            };
            // A detach's move may still be on its way: wait (bounded) for the link.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(dev) = link_by_mac(from, &mac) {
                    sh_quiet(&["ip", "-n", from, "link", "set", &dev, "netns", to]);
                    this.moves.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if Instant::now() > deadline {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    }
}

// ---------- the lab ----------

/// One instance of the lab: its files and processes (its namespace is `side.ns()`).
pub struct Node {
    pub side: Side,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    nginx_conf: PathBuf,
    agent: Option<Child>,
    nginx: Option<Child>,
}

impl Node {
    fn new(side: Side, dir: &Path) -> Node {
        let name = side.name();
        Node {
            side,
            config: dir.join(format!("{name}.toml")),
            socket: socket_path(side, dir),
            log: dir.join(format!("{name}.log")),
            nginx_conf: nginx_conf_path(side, dir),
            agent: None,
            nginx: None,
        }
    }

    pub fn name(&self) -> &'static str {
        self.side.name()
    }

    pub fn ns(&self) -> &'static str {
        self.side.ns()
    }
}

fn socket_path(side: Side, dir: &Path) -> PathBuf {
    dir.join(format!("{}.sock", side.name()))
}

/// The node's `node.state-dir` in a lab whose files are in `dir`.
pub fn state_dir_path(side: Side, dir: &Path) -> PathBuf {
    dir.join(format!("{}.state", side.name()))
}

fn nginx_conf_path(side: Side, dir: &Path) -> PathBuf {
    dir.join(format!("nginx-{}.conf", side.name()))
}

/// The agent configuration of `side` in a lab whose files are in `dir`: the shipped example
/// with only the lab's addresses, ids, paths and timings overridden. Everything else (priority,
/// ports, tables, stop mode, timeouts the lab does not shorten) is the example's.
pub fn agent_config(side: Side, eni: &str, o: &AgentOptions, dir: &Path) -> String {
    agent_config_table(side, eni, o, dir).render()
}

/// [`agent_config`] before rendering, for scenarios that override more.
pub fn agent_config_table(side: Side, eni: &str, o: &AgentOptions, dir: &Path) -> AgentConfig {
    let peer = side.peer();
    let path = |p: PathBuf| p.display().to_string();
    let nginx = path(nginx_conf_path(side, dir));
    let mut c = AgentConfig::example();
    c.set("node", "name", side.name())
        // Each node's own state (the maintenance mode), in the lab's directory: never the
        // machine's /var/lib/enipeer, which both nodes would share and a later run would read.
        .set("node", "state-dir", path(state_dir_path(side, dir)))
        .single_peer(peer.name(), &[peer.node_ip()])
        .set("group", "eni", eni)
        .set("group", "hold-down", o.hold_down)
        .set("heartbeat", "bind", side.node_ip())
        .set("heartbeat", "interval", o.interval)
        .set("heartbeat", "dead-interval", o.dead_interval)
        .set("auth", "key-file", path(dir.join("peer.key")))
        // No instance metadata for the Region, and the cloud is the lab's front.
        .set("aws", "region", super::REGION)
        .set(
            "aws",
            "endpoint-url",
            format!("http://{CLOUD_IP}:{FRONT_PORT}"),
        )
        // Scenarios wait for a lost ENI and for drift to be noticed: shorter than production.
        .set("aws", "verify-interval", "2s")
        .set("network", "repair", o.repair)
        .set("network", "reconcile-interval", "5s")
        .set("hooks", "timeout", "10s")
        // The lab's nginx runs with its own config file (and there is no systemd).
        .set(
            "hooks",
            "on-master",
            vec![vec![
                "/usr/sbin/nginx",
                "-c",
                nginx.as_str(),
                "-s",
                "reload",
            ]],
        )
        .set("control", "socket", path(socket_path(side, dir)))
        .set("stop", "restart-grace", "10s");
    if let Some(list) = o.device_indexes {
        c.set("group", "device-index", list.to_vec());
    }
    c
}

pub struct Lab {
    pub profile: Profile,
    pub layout: Layout,
    pub bin: PathBuf,
    nodes: [Node; 2],
    pub front: FrontControl,
    pub seeded: Seeded,
    /// The instance id each side's IMDS responder answers, updated on reseed.
    ids: [Arc<Mutex<String>>; 2],
    cloud: Option<CloudThread>,
    hotplug: Arc<HotPlug>,
    dir: PathBuf,
    /// Deleted last, in [`Drop`], after every process in them was stopped.
    spaces: Vec<Netns>,
    /// Extra environment for the agents this lab starts (test seams), until changed.
    pub agent_env: Vec<(String, String)>,
    /// The subnet router's IPv6 advertisements on br-eni, in the dual-stack layout.
    ra: Option<super::ra::Advertiser>,
}

impl Lab {
    /// Checks what the lab needs, with the fix for what is missing.
    pub fn preflight() -> Result<(), String> {
        if !netns::is_root() {
            return Err("the lab needs root (network namespaces)".into());
        }
        for tool in ["ip", "nft", "nginx"] {
            let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(tool).exists());
            if !found {
                return Err(format!(
                    "`{tool}` is missing: apt-get install iproute2 nftables nginx-light"
                ));
            }
        }
        Ok(())
    }

    pub fn up(profile: Profile, bin: PathBuf) -> Lab {
        Self::up_with(profile, bin, Layout::OwnSubnet)
    }

    pub fn up_with(profile: Profile, bin: PathBuf, layout: Layout) -> Lab {
        if let Err(e) = Self::preflight() {
            panic!("{e}");
        }
        let dir = PathBuf::from(STATE_DIR);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab state dir");
        let spaces = build_topology(&dir, layout);
        let ids = [
            Arc::new(Mutex::new(String::new())),
            Arc::new(Mutex::new(String::new())),
        ];
        let (cloud, front, seeded) = CloudThread::start(ids.clone(), layout);
        let (attach, detach, hot) = profile.delays();
        front.set_delays(attach, detach);
        let hotplug = Arc::new(HotPlug {
            ns_of: Mutex::new(HashMap::new()),
            mac: Mutex::new(String::new()),
            delay: Mutex::new(hot),
            order: Mutex::new(()),
            moves: AtomicUsize::new(0),
        });
        let hp = hotplug.clone();
        front.on_change(move |c| hp.on_change(c));
        // The shared heartbeat key, as an operator would copy it to both instances.
        let key = dir.join("peer.key");
        std::fs::write(
            &key,
            "5e6f7a8b9c0d1e2f30415263748596a7b8c9d0e1f2031425364758697a8b9c0d\n",
        )
        .expect("key");
        sh(&["chmod", "600", key.to_str().expect("utf-8")]);
        let mut lab = Lab {
            profile,
            layout,
            bin,
            nodes: Side::BOTH.map(|s| Node::new(s, &dir)),
            front,
            seeded: seeded.clone(),
            ids,
            cloud: Some(cloud),
            hotplug,
            dir,
            spaces,
            agent_env: Vec::new(),
            ra: layout
                .ipv6()
                .map(|_| super::ra::Advertiser::start(NS_RT, "br-eni", super::ra::AWS_ROUTER)),
        };
        lab.apply_seed(seeded);
        for side in Side::BOTH {
            lab.start_nginx(side);
        }
        lab
    }

    pub fn node(&self, side: Side) -> &Node {
        &self.nodes[side.index()]
    }

    fn node_mut(&mut self, side: Side) -> &mut Node {
        &mut self.nodes[side.index()]
    }

    fn apply_seed(&mut self, s: Seeded) {
        for side in Side::BOTH {
            *self.ids[side.index()]
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = s.instance(side).to_string();
        }
        {
            let mut m = self.hotplug.ns_of.lock().unwrap_or_else(|e| e.into_inner());
            m.clear();
            for side in Side::BOTH {
                m.insert(s.instance(side).to_string(), side.ns());
            }
        }
        *self.hotplug.mac.lock().unwrap_or_else(|e| e.into_inner()) = s.mac.clone();
        // The ENI's NIC gets the MAC the cloud reports, and the ENI id as its alias.
        let dev = self.park_eni();
        ip(NS_POOL, &["link", "set", &dev, "down"]);
        ip(NS_POOL, &["link", "set", &dev, "address", &s.mac]);
        ip(NS_POOL, &["link", "set", &dev, "name", ENI_LINK]);
        ip(NS_POOL, &["link", "set", ENI_LINK, "alias", s.eni.as_str()]);
        // The VPC fabric knows where an ENI's addresses live: no ARP after a move.
        for a in [self.layout.eni_ip(), self.layout.eni_secondary_ip()] {
            ip(
                NS_RT,
                &[
                    "neigh",
                    "replace",
                    &a.to_string(),
                    "lladdr",
                    &s.mac,
                    "dev",
                    self.layout.eni_bridge(),
                    "nud",
                    "permanent",
                ],
            );
        }
        self.seeded = s;
    }

    /// Moves the ENI's link back to the pool namespace, wherever it is; returns its name there.
    fn park_eni(&self) -> String {
        let old = self
            .hotplug
            .mac
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for side in Side::BOTH {
            for mac in [old.as_str(), self.seeded.mac.as_str()] {
                if let Some(dev) = link_by_mac(side.ns(), mac) {
                    ip(side.ns(), &["link", "set", &dev, "netns", NS_POOL]);
                }
            }
        }
        for mac in [old.as_str(), self.seeded.mac.as_str()] {
            if let Some(dev) = link_by_mac(NS_POOL, mac) {
                return dev;
            }
        }
        ENI_LINK.to_string()
    }

    /// Back to a clean start between scenarios: agents stopped, ENI detached and parked, stale
    /// rules flushed, the cloud reset and reseeded (new ids), no faults, no partition.
    pub fn reset(&mut self) {
        for side in Side::BOTH {
            self.kill_agent(side);
            self.thaw(side);
        }
        self.heal_partition();
        self.restore_primary_links();
        self.front.clear_faults();
        self.front.clear_calls();
        for side in Side::BOTH {
            flush_eni_rules(side.ns(), self.layout);
        }
        let seeded = self.cloud.as_ref().expect("cloud").call(Cmd::Reseed);
        self.apply_seed(seeded);
        for side in Side::BOTH {
            let _ = std::fs::remove_file(&self.node(side).socket);
            // A scenario's maintenance mode ends with it.
            let _ = std::fs::remove_dir_all(state_dir_path(side, &self.dir));
            if self
                .node_mut(side)
                .nginx
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some())
            {
                self.start_nginx(side);
            }
        }
    }

    fn start_nginx(&mut self, side: Side) {
        let n = self.node(side);
        // Dual-stack: the wildcard of each family.
        let listen = match self.layout.ipv6() {
            Some(_) => "listen 80;\n    listen [::]:80;",
            None => "listen 80;",
        };
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {dir}/nginx-{name}.pid;\n\
             error_log {dir}/nginx-{name}.err warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  server {{\n    {listen}\n    default_type text/plain;\n\
             \x20   location / {{ return 200 \"{name}\\n\"; }}\n  }}\n}}\n",
            dir = self.dir.display(),
            name = n.name()
        );
        std::fs::write(&n.nginx_conf, conf).expect("nginx conf");
        let child = Command::new("ip")
            .args(["netns", "exec", n.ns(), "nginx", "-c"])
            .arg(&n.nginx_conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        self.node_mut(side).nginx = Some(child);
        let pidfile = self.dir.join(format!("nginx-{}.pid", side.name()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pidfile.exists() {
            assert!(
                Instant::now() < deadline,
                "nginx on {} did not start",
                side.name()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn write_config(&self, side: Side, o: &AgentOptions) {
        let text = agent_config(side, self.seeded.eni.as_str(), o, &self.dir);
        std::fs::write(&self.node(side).config, text).expect("agent config");
    }

    /// Writes `c` (from [`agent_config_table`], with a scenario's overrides) as the agent
    /// config of `side`.
    pub fn write_config_table(&self, side: Side, c: &AgentConfig) {
        std::fs::write(&self.node(side).config, c.render()).expect("agent config");
    }

    pub fn start_agent(&mut self, side: Side) {
        let n = self.node(side);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("agent log");
        let child = Command::new("ip")
            .args(["netns", "exec", n.ns()])
            .arg(&self.bin)
            .args(["run", "-c"])
            .arg(&n.config)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_CONFIG_FILE", "/nonexistent/enipeer-lab")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/enipeer-lab")
            .env(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://{CLOUD_IP}:{}/", side.imds_port()),
            )
            .env("ENIPEER_LOG", "info")
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)))
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start enipeer");
        self.node_mut(side).agent = Some(child);
    }

    pub fn agent_pid(&self, side: Side) -> Option<i32> {
        self.node(side).agent.as_ref().map(|c| c.id() as i32)
    }

    pub fn signal_agent(&mut self, side: Side, sig: Signal) {
        if let Some(pid) = self.agent_pid(side) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// Waits for the agent to exit (after a signal); returns its exit code.
    pub fn wait_agent(&mut self, side: Side, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let node = self.node_mut(side);
            let c = node.agent.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                node.agent = None;
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn kill_agent(&mut self, side: Side) {
        if let Some(mut c) = self.node_mut(side).agent.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The host "dies": every process in its namespace frozen, its primary interface cut.
    pub fn freeze(&self, side: Side) {
        netns::signal(side.ns(), Signal::SIGSTOP);
        ip(NS_RT, &["link", "set", side.mgmt_port(), "down"]);
    }

    pub fn thaw(&self, side: Side) {
        ip(NS_RT, &["link", "set", side.mgmt_port(), "up"]);
        netns::signal(side.ns(), Signal::SIGCONT);
    }

    /// Drops heartbeats (UDP 7460) between the instances on the management bridge; the cloud
    /// stays reachable. The cheap split-brain injector.
    pub fn partition_heartbeats(&self) {
        let rules = "table bridge enpl_part {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n    udp dport 7460 drop\n  }\n}\n";
        load_nft(&self.dir, "partition.nft", rules);
    }

    pub fn heal_partition(&self) {
        sh_quiet(&[
            "ip",
            "netns",
            "exec",
            NS_RT,
            "nft",
            "delete",
            "table",
            "bridge",
            "enpl_part",
        ]);
    }

    /// What the cloud says: the side whose instance the ENI is attached to.
    pub fn holder(&self) -> Option<Side> {
        let id = self
            .cloud
            .as_ref()
            .expect("cloud")
            .call(|tx| Cmd::Holder(self.seeded.eni.to_string(), tx))
            .expect("describe");
        id.and_then(|id| self.seeded.side_of(&id))
    }

    pub fn cli(&self, side: Side, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.node(side).socket)
            .output()
            .expect("enipeer cli")
    }

    pub fn role(&self, side: Side) -> Option<enipeer::report::RoleReport> {
        let out = self.cli(side, &["role", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn role_name(&self, side: Side) -> String {
        self.role(side)
            .map(|r| r.role)
            .unwrap_or_else(|| "down".into())
    }

    /// The policy rules in a node's namespace that point the ENI's addresses at a table.
    pub fn eni_rules(&self, side: Side) -> Vec<String> {
        ip(side.ns(), &["rule", "show"])
            .lines()
            .filter(|l| {
                let has = |a: Ipv4Addr| l.contains(&format!("from {a} "));
                has(self.layout.eni_ip()) || has(self.layout.eni_secondary_ip())
            })
            .map(str::to_owned)
            .collect()
    }

    /// Deletes one policy rule for the ENI's primary address behind the agent's back (drift);
    /// false when there was none.
    pub fn delete_eni_rule(&self, side: Side) -> bool {
        sh_quiet(&[
            "ip",
            "-n",
            side.ns(),
            "rule",
            "del",
            "from",
            &self.layout.eni_ip().to_string(),
        ])
    }

    pub fn logs(&self, side: Side) -> String {
        std::fs::read_to_string(&self.node(side).log).unwrap_or_default()
    }

    /// Waits until `f` holds; panics with both agents' logs otherwise.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&Lab) -> bool,
    ) -> Duration {
        let start = Instant::now();
        while start.elapsed() < within {
            if f(self) {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {within:?} waiting for {what}\n--- node-a ---\n{}\n--- node-b ---\n{}",
            tail(&self.logs(Side::A), 40),
            tail(&self.logs(Side::B), 40)
        );
    }

    /// The usual start: node-a alone claims the detached ENI, then node-b joins as backup.
    pub fn start_pair(&mut self, o: &AgentOptions) {
        self.write_config(Side::A, o);
        self.write_config(Side::B, o);
        self.start_pair_as_written();
    }

    /// [`Lab::start_pair`] with the configs already written (for scenarios that override more).
    pub fn start_pair_as_written(&mut self) {
        self.start_agent(Side::A);
        self.wait_for("node-a master", Duration::from_secs(20), |l| {
            l.role(Side::A).is_some_and(|r| r.role == "master") && l.serving(Side::A)
        });
        self.start_agent(Side::B);
        self.wait_for(
            "node-b backup and both hear each other",
            Duration::from_secs(20),
            |l| {
                let heard = |r: &enipeer::report::RoleReport| {
                    r.peers[0].alive && r.peers[0].last_heard_ms_ago.is_some()
                };
                l.role(Side::B)
                    .is_some_and(|r| r.role == "backup" && heard(&r))
                    && l.role(Side::A).is_some_and(|r| heard(&r))
            },
        );
    }

    /// One GET through the EIP from the client: the name of the node that answered.
    pub fn client_fetch(&self, timeout: Duration) -> Option<String> {
        netns::run_in(NS_CLI, move || fetch(timeout))
    }

    /// One GET of the ENI's IPv6 address from the client (dual-stack layout): who answered.
    pub fn client_fetch6(&self, timeout: Duration) -> Option<String> {
        let addr = SocketAddr::from((ENI_IP6, 80));
        netns::run_in(NS_CLI, move || fetch_from(addr, timeout, timeout))
    }

    /// The IPv6 policy rules and the IPv6 routes of the ENI's table on a node, as `ip` prints
    /// them: what enipeer put there for the ENI's IPv6 address.
    pub fn eni_ipv6_state(&self, side: Side) -> (Vec<String>, Vec<String>) {
        let rules = ip(side.ns(), &["-6", "rule", "show"])
            .lines()
            .filter(|l| l.contains(&format!("from {ENI_IP6} ")))
            .map(str::to_owned)
            .collect();
        // `ip` fails on a table that never held an IPv6 route: that, and only that, is an
        // empty table.
        let out = Command::new("ip")
            .args(["-n", side.ns(), "-6", "route", "show", "table", "10001"])
            .output()
            .expect("run ip");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("FIB table does not exist"),
            "ip -6 route show table 10001 in {}: {stderr}",
            side.ns()
        );
        let routes = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        (rules, routes)
    }

    /// IPv6 packets the router's source/destination check dropped so far (an ENI address that
    /// arrived over the wrong NIC; `::` and link-local sources are not counted).
    pub fn ipv6_source_check_drops(&self) -> u64 {
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            NS_RT,
            "nft",
            "list",
            "table",
            "ip6",
            "enpl_srccheck6",
        ]);
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("the source check's counter")
    }

    /// True once the node answers through the EIP.
    pub fn serving(&self, side: Side) -> bool {
        self.client_fetch(Duration::from_millis(300)).as_deref() == Some(side.name())
    }

    /// The lab's state directory (configs, sockets, pid files): where other agents' files go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cloud front's URL, as the instances reach it (an `--endpoint-url` for the AWS CLI).
    pub fn front_url() -> String {
        format!("http://{CLOUD_IP}:{FRONT_PORT}")
    }

    /// The nginx configuration file of `side` (for `nginx -c FILE -s reload`).
    pub fn nginx_conf(&self, side: Side) -> &Path {
        &self.node(side).nginx_conf
    }

    pub fn hotplug_moves(&self) -> usize {
        self.hotplug.moves.load(Ordering::SeqCst)
    }
}

fn flush_eni_rules(ns: &str, layout: Layout) {
    let ours = |l: &str| {
        [layout.eni_ip(), layout.eni_secondary_ip()]
            .iter()
            .any(|a| l.contains(&format!("from {a} ")))
    };
    for _ in 0..8 {
        let rules = Command::new("ip")
            .args(["-n", ns, "rule", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let Some(line) = rules.lines().find(|l| ours(l)) else {
            return;
        };
        let pref = line.split(':').next().unwrap_or("").trim().to_owned();
        sh_quiet(&["ip", "-n", ns, "rule", "del", "pref", &pref]);
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Lab {
    fn drop(&mut self) {
        for side in Side::BOTH {
            self.kill_agent(side);
            if let Some(mut c) = self.node_mut(side).nginx.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::create_dir_all(LOG_DIR);
        for n in &self.nodes {
            let _ = std::fs::copy(&n.log, Path::new(LOG_DIR).join(format!("{}.log", n.name())));
        }
        self.cloud.take();
        self.ra.take();
        // Each namespace goes with whatever still runs in it.
        self.spaces.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The lab's namespaces, each created after removing a leftover of its exact name.
fn create_namespaces() -> Vec<Netns> {
    let names = [NS_RT, NS_CLOUD, Side::A.ns(), Side::B.ns(), NS_CLI, NS_POOL];
    names
        .into_iter()
        .map(|name| {
            let ns = Netns::create(name);
            ns.ip(&["link", "set", "lo", "up"]);
            ns
        })
        .collect()
}

/// Creates the namespaces and wires them as the module's picture shows; returns the guards.
fn build_topology(dir: &Path, layout: Layout) -> Vec<Netns> {
    let spaces = create_namespaces();
    let r = |args: &[&str]| ip(NS_RT, args);
    for (br, addr) in [("br-mgmt", "198.18.0.1/24"), ("br-eni", "198.18.1.1/24")] {
        r(&["link", "add", br, "type", "bridge"]);
        r(&["addr", "add", addr, "dev", br]);
        r(&["link", "set", br, "up"]);
    }
    // The client sits on the "internet", in a /25 that does not contain the EIP.
    r(&[
        "link", "add", "rt-cli", "type", "veth", "peer", "name", "eth0", "netns", NS_CLI,
    ]);
    r(&["addr", "add", "203.0.113.129/25", "dev", "rt-cli"]);
    r(&["link", "set", "rt-cli", "up"]);
    ip(NS_CLI, &["addr", "add", "203.0.113.130/25", "dev", "eth0"]);
    ip(NS_CLI, &["link", "set", "eth0", "up"]);
    ip(NS_CLI, &["route", "add", "default", "via", "203.0.113.129"]);
    let cloud_addr = format!("{CLOUD_IP}/24");
    let nodes = Side::BOTH.map(|s| (s.mgmt_port(), s.ns(), format!("{}/24", s.node_ip())));
    for (port, ns, addr) in [("m-cloud", NS_CLOUD, cloud_addr)].into_iter().chain(nodes) {
        r(&[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        r(&["link", "set", port, "master", "br-mgmt", "up"]);
        primary_interface(ns, &addr, layout);
    }
    r(&[
        "link", "add", "e-eni1", "type", "veth", "peer", "name", ENI_LINK, "netns", NS_POOL,
    ]);
    r(&["link", "set", "e-eni1", "master", layout.eni_bridge(), "up"]);
    router_rules(dir, layout);
    if layout == Layout::SharedSubnet {
        source_check_per_port(dir, layout);
    }
    if layout.ipv6().is_some() {
        ipv6_topology(dir);
    }
    spaces
}

/// IPv6 in the dual-stack layout, all on 2001:db8::/32: the instances' primaries in
/// 2001:db8::/64 on br-mgmt (default via the router there), the ENI's subnet on br-eni, the
/// client in 2001:db8:0:ff::/64. The router forwards and applies the source/destination check
/// as a strict reverse-path test (nftables `fib`): an ENI address arriving over br-mgmt, as a
/// reply without the ENI's IPv6 policy routing would, is dropped. Its advertisements on br-eni
/// come from [`super::ra::Advertiser`], which the lab starts.
fn ipv6_topology(dir: &Path) {
    router_sysctl(&["net.ipv6.conf.all.forwarding=1"]);
    let r = |args: &[&str]| ip(NS_RT, args);
    r(&[
        "-6",
        "addr",
        "add",
        "2001:db8::1/64",
        "dev",
        "br-mgmt",
        "nodad",
    ]);
    r(&[
        "-6",
        "addr",
        "add",
        "2001:db8:0:1::1/64",
        "dev",
        "br-eni",
        "nodad",
    ]);
    r(&[
        "-6",
        "addr",
        "add",
        "2001:db8:0:ff::129/64",
        "dev",
        "rt-cli",
        "nodad",
    ]);
    let cli = format!("{CLIENT_IP6}/64");
    ip(NS_CLI, &["-6", "addr", "add", &cli, "dev", "eth0", "nodad"]);
    ip(
        NS_CLI,
        &["-6", "route", "add", "default", "via", "2001:db8:0:ff::129"],
    );
    for (side, host) in [(Side::A, "11"), (Side::B, "12")] {
        let addr = format!("2001:db8::{host}/64");
        ip(
            side.ns(),
            &["-6", "addr", "add", &addr, "dev", "eth0", "nodad"],
        );
        ip(
            side.ns(),
            &["-6", "route", "add", "default", "via", "2001:db8::1"],
        );
    }
    let nft = "table ip6 enpl_srccheck6 {\n  chain pre {\n    type filter hook prerouting priority 0; policy accept;\n    ip6 saddr != { ::, fe80::/10 } fib saddr . iif oif missing counter drop\n  }\n}\n";
    load_nft(dir, "srccheck6.nft", nft);
}

/// An instance's (or the cloud's) eth0 on br-mgmt. In the shared layout as Ubuntu's netplan
/// (systemd-networkd) configures it: the address without the kernel's prefix route, and the
/// subnet and default routes at metric 100, so an ENI address with its prefix route (metric 0)
/// would win over them.
fn primary_interface(ns: &str, addr: &str, layout: Layout) {
    match layout {
        Layout::OwnSubnet | Layout::DualStack => {
            ip(ns, &["addr", "add", addr, "dev", "eth0"]);
            ip(ns, &["link", "set", "eth0", "up"]);
            ip(ns, &["route", "add", "default", "via", "198.18.0.1"]);
        }
        Layout::SharedSubnet => {
            let src = addr.split('/').next().unwrap_or(addr);
            ip(ns, &["addr", "add", addr, "dev", "eth0", "noprefixroute"]);
            ip(ns, &["link", "set", "eth0", "up"]);
            ip(
                ns,
                &[
                    "route",
                    "add",
                    "198.18.0.0/24",
                    "dev",
                    "eth0",
                    "proto",
                    "kernel",
                    "scope",
                    "link",
                    "src",
                    src,
                    "metric",
                    "100",
                ],
            );
            ip(
                ns,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    "198.18.0.1",
                    "dev",
                    "eth0",
                    "proto",
                    "dhcp",
                    "src",
                    src,
                    "metric",
                    "100",
                ],
            );
        }
    }
}

/// AWS's source/destination check on br-mgmt, where bridged frames never meet the router's
/// rp_filter: per port, an IPv4 packet or ARP message whose source address does not belong to
/// the NIC it comes from is dropped. The ENI's port owns only the ENI's addresses.
fn source_check_per_port(dir: &Path, layout: Layout) {
    let eni = format!("{{ {}, {} }}", layout.eni_ip(), layout.eni_secondary_ip());
    let ports = [
        ("m-cloud", CLOUD_IP.to_string()),
        (Side::A.mgmt_port(), Side::A.node_ip().to_string()),
        (Side::B.mgmt_port(), Side::B.node_ip().to_string()),
        ("e-eni1", eni),
    ];
    let mut nft = String::from(
        "table bridge enpl_srccheck {\n  chain pre {\n    type filter hook prerouting priority 0; policy accept;\n",
    );
    for (port, owned) in ports {
        nft.push_str(&format!(
            "    iifname \"{port}\" ip saddr != {owned} counter drop\n    iifname \"{port}\" arp saddr ip != {owned} counter drop\n"
        ));
    }
    nft.push_str("  }\n}\n");
    load_nft(dir, "srccheck.nft", &nft);
}

/// Forwarding, AWS's source/destination check, and the EIP's NAT in the router.
fn router_rules(dir: &Path, layout: Layout) {
    let eni_ip = layout.eni_ip();
    // The source/destination check as strict reverse-path filtering: a reply from the ENI's
    // address that arrives over the management bridge is dropped.
    router_sysctl(&[
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=1",
        "net.ipv4.conf.default.rp_filter=1",
        "net.ipv4.conf.br-mgmt.rp_filter=1",
        "net.ipv4.conf.br-eni.rp_filter=1",
    ]);
    let nft = format!(
        "table ip enpl_eip {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {EIP} dnat to {eni_ip}\n  }}\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {eni_ip} oifname \"rt-cli\" snat to {EIP}\n  }}\n}}\n"
    );
    load_nft(dir, "eip.nft", &nft);
}

/// Sets `key=value` sysctls in the router's namespace.
fn router_sysctl(settings: &[&str]) {
    let mut args = vec!["ip", "netns", "exec", NS_RT, "sysctl", "-qw"];
    args.extend_from_slice(settings);
    sh(&args);
}

/// Writes `rules` to `file` in the lab's directory `dir` and loads them into the router's
/// nftables (a file, so a failure names its line).
fn load_nft(dir: &Path, file: &str, rules: &str) {
    let f = dir.join(file);
    std::fs::write(&f, rules).expect("nft file");
    sh(&[
        "ip",
        "netns",
        "exec",
        NS_RT,
        "nft",
        "-f",
        f.to_str().expect("utf-8"),
    ]);
}

/// One HTTP GET through the EIP from the current namespace; the node name that answered.
pub fn fetch(timeout: Duration) -> Option<String> {
    fetch_with(timeout, timeout)
}

/// [`fetch`] with its own connect timeout: in the lab an answer takes a few ms, and a SYN sent
/// while the address is unreachable is simply lost (TCP would retry only after 1 s), so a short
/// connect timeout keeps the probe from hiding the moment service resumes.
pub fn fetch_with(connect: Duration, timeout: Duration) -> Option<String> {
    fetch_from(SocketAddr::from((EIP, 80)), connect, timeout)
}

/// One HTTP GET of `addr`; the node name that answered.
pub fn fetch_from(addr: SocketAddr, connect: Duration, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, connect).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: eip\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    if !buf.starts_with("HTTP/1.1 200") {
        return None;
    }
    buf.rsplit("\r\n\r\n").next().map(|b| b.trim().to_owned())
}

// ---------- the client ----------

/// What the client saw: one sample every 10 ms.
#[derive(Debug, Clone)]
pub struct Samples {
    pub start: Instant,
    pub start_wall: SystemTime,
    pub samples: Vec<(Duration, Option<String>)>,
}

impl Samples {
    pub fn failed(&self) -> usize {
        self.samples.iter().filter(|s| s.1.is_none()).count()
    }

    /// From `from` (an offset into the run) to the first answer by `node` after it.
    pub fn first_from(&self, node: &str, from: Duration) -> Option<Duration> {
        self.samples
            .iter()
            .find(|(t, who)| *t >= from && who.as_deref() == Some(node))
            .map(|(t, _)| *t - from)
    }

    /// The longest run of failed probes.
    pub fn longest_gap(&self) -> Duration {
        let mut longest = Duration::ZERO;
        let mut since: Option<Duration> = None;
        for (t, who) in &self.samples {
            match (who, since) {
                (None, None) => since = Some(*t),
                (Some(_), Some(s)) => {
                    longest = longest.max(*t - s);
                    since = None;
                }
                _ => {}
            }
        }
        if let (Some(s), Some((t, _))) = (since, self.samples.last()) {
            longest = longest.max(*t - s);
        }
        longest
    }

    /// Who answered last (ignoring failed probes at the very end: a probe can time out on a
    /// loaded machine without the service being down).
    pub fn last(&self) -> Option<&str> {
        self.samples.iter().rev().find_map(|s| s.1.as_deref())
    }

    /// How many of the last `n` probes failed.
    pub fn failed_at_end(&self, n: usize) -> usize {
        self.samples
            .iter()
            .rev()
            .take(n)
            .filter(|s| s.1.is_none())
            .count()
    }
}

/// A client probing the EIP every 10 ms (30 ms to connect, 100 ms in all) from the client
/// namespace, at most
/// `max` long; stops early when told.
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Samples>,
}

impl Probe {
    pub fn start(max: Duration) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = netns::spawn_in(NS_CLI, move || {
            let start = Instant::now();
            let start_wall = SystemTime::now();
            let mut samples = Vec::new();
            let limit = (max.as_millis() / 10) as usize + 1;
            let mut next = start;
            while samples.len() < limit && !stop2.load(Ordering::SeqCst) && start.elapsed() < max {
                let t = start.elapsed();
                samples.push((
                    t,
                    fetch_with(Duration::from_millis(30), Duration::from_millis(100)),
                ));
                next += Duration::from_millis(10);
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            Samples {
                start,
                start_wall,
                samples,
            }
        });
        Probe { stop, thread }
    }

    pub fn finish(self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}
