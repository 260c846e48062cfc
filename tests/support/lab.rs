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
//! Nothing touches the root namespace: every link lives in a namespace the lab creates, and
//! every address is from 198.18.0.0/15 or 203.0.113.0/24. A new lab first removes a previous
//! run's namespaces (and the processes in them) by their exact names; dropping the lab tears
//! everything down, also when a test panics.
//!
//! The cloud front, the IMDS responders and moto run in the cloud namespace: a thread of this
//! process enters it (setns) and runs them on its own runtime. Hot-plug: the front reports each
//! finished attach or detach, and the lab moves the ENI's link between namespaces, which the
//! instance sees as RTM_NEWLINK / RTM_DELLINK exactly like a hot-plugged device.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::cloud_front::{Change, CloudFront, FrontControl};
use super::{imds, sdk_client, seed, Moto, ENI_IP, ENI_SECONDARY_IP};

pub const NS_RT: &str = "enpl-rt";
pub const NS_CLOUD: &str = "enpl-cloud";
pub const NS_CLI: &str = "enpl-cli";
pub const NS_POOL: &str = "enpl-pool";
pub const NS_NODES: [&str; 2] = ["enpl-a", "enpl-b"];
const ALL_NS: [&str; 6] = [NS_RT, NS_CLOUD, "enpl-a", "enpl-b", NS_CLI, NS_POOL];
pub const EIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLOUD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const FRONT_PORT: u16 = 4566;
const IMDS_PORTS: [u16; 2] = [8011, 8012];
const NODE_IPS: [&str; 2] = ["198.18.0.11", "198.18.0.12"];
pub const NAMES: [&str; 2] = ["node-a", "node-b"];
const STATE_DIR: &str = "/run/enipeer-lab";
const ENI_LINK: &str = "eni1";
/// A lab run's logs are copied here at teardown, for the operator to read after a failure.
pub const LOG_DIR: &str = "/tmp/enipeer-lab-logs";

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

/// Per-node agent settings that scenarios change.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub interval: &'static str,
    pub dead_interval: &'static str,
    pub repair: bool,
    pub hold_down: &'static str,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            interval: "200ms",
            dead_interval: "1s",
            repair: true,
            hold_down: "30s",
        }
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a command, failing loudly with its output.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command whose failure is expected at times (cleanup).
fn sh_quiet(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ip(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Pids of the processes in a lab namespace.
pub fn ns_pids(ns: &str) -> Vec<i32> {
    if !ns_exists(ns) {
        return Vec::new();
    }
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn signal_ns(ns: &str, sig: nix::sys::signal::Signal) {
    for pid in ns_pids(ns) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Removes the lab's namespaces and everything running in them, by their exact names.
pub fn remove_leftovers() {
    for ns in ALL_NS {
        if ns_exists(ns) {
            signal_ns(ns, nix::sys::signal::Signal::SIGCONT);
            signal_ns(ns, nix::sys::signal::Signal::SIGKILL);
            sh_quiet(&["ip", "netns", "del", ns]);
        }
    }
    let _ = std::fs::remove_dir_all(STATE_DIR);
}

/// Runs `f` on a thread that has entered namespace `ns`: sockets it opens live there.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || {
        enter_ns(&path);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn enter_ns(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// The MAC-addressed ENI link's name in `ns`, if it is there.
fn link_by_mac(ns: &str, mac: &str) -> Option<String> {
    if !ns_exists(ns) {
        return None;
    }
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show"])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    links.as_array()?.iter().find_map(|l| {
        (l.get("address")?.as_str()? == mac)
            .then(|| l.get("ifname")?.as_str().map(str::to_owned))?
    })
}

// ---------- the cloud namespace ----------

enum Cmd {
    Reseed(mpsc::Sender<Result<Seeded, String>>),
    Holder(String, mpsc::Sender<Result<Option<String>, String>>),
}

#[derive(Debug, Clone)]
pub struct Seeded {
    pub eni: String,
    pub instances: [String; 2],
    pub mac: String,
}

struct CloudThread {
    tx: tokio::sync::mpsc::UnboundedSender<Cmd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CloudThread {
    /// Starts moto, the front and the IMDS responders inside the cloud namespace.
    fn start(ids: [Arc<Mutex<String>>; 2]) -> (CloudThread, FrontControl, Seeded) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let path = Path::new("/run/netns").join(NS_CLOUD);
        let thread = std::thread::spawn(move || {
            enter_ns(&path);
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
                for (i, port) in IMDS_PORTS.iter().enumerate() {
                    let l = tokio::net::TcpListener::bind((CLOUD_IP, *port))
                        .await
                        .expect("imds listener");
                    tokio::spawn(imds::serve(
                        l,
                        ids[i].clone(),
                        Arc::new(AtomicUsize::new(0)),
                    ));
                }
                let ec2 = sdk_client(&moto.endpoint_url()).await;
                let first = reseed(&ec2, moto, false).await;
                let _ = ready_tx.send((front.control(), first));
                while let Some(cmd) = rx.recv().await {
                    match cmd {
                        Cmd::Reseed(reply) => {
                            let _ = reply.send(Ok(reseed(&ec2, moto, true).await));
                        }
                        Cmd::Holder(eni, reply) => {
                            let r = ec2
                                .describe_network_interfaces()
                                .network_interface_ids(eni)
                                .send()
                                .await
                                .map_err(|e| format!("{e:?}"))
                                .map(|out| {
                                    out.network_interfaces()
                                        .iter()
                                        .filter_map(|n| n.attachment())
                                        .find_map(|a| a.instance_id().map(str::to_owned))
                                });
                            let _ = reply.send(r);
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

/// Resets moto (cheap, unlike a restart) and seeds it: VPC, subnet, two instances, the ENI.
async fn reseed(ec2: &aws_sdk_ec2::Client, moto: &Moto, reset: bool) -> Seeded {
    if reset {
        let mut s = TcpStream::connect(moto.addr).expect("moto");
        s.write_all(
            b"POST /moto-api/reset HTTP/1.1\r\nHost: moto\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .expect("reset");
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        assert!(buf.starts_with("HTTP/1.1 200"), "moto reset: {buf}");
    }
    let lab = seed(ec2).await;
    let mac = ec2
        .describe_network_interfaces()
        .network_interface_ids(lab.eni.as_str())
        .send()
        .await
        .expect("describe the ENI")
        .network_interfaces()
        .first()
        .and_then(|n| n.mac_address().map(str::to_owned))
        .expect("ENI MAC");
    Seeded {
        eni: lab.eni.to_string(),
        instances: [lab.a.to_string(), lab.b.to_string()],
        mac,
    }
}

// ---------- hot-plug ----------

struct HotPlug {
    /// Instance id -> namespace, updated on reseed.
    ns_of: Mutex<HashMap<String, &'static str>>,
    mac: Mutex<String>,
    delay: Duration,
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
                std::thread::sleep(this.delay);
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

pub struct Node {
    pub name: &'static str,
    pub ns: &'static str,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    nginx_conf: PathBuf,
    agent: Option<Child>,
    nginx: Option<Child>,
}

pub struct Lab {
    pub profile: Profile,
    pub bin: PathBuf,
    pub nodes: [Node; 2],
    pub front: FrontControl,
    pub seeded: Seeded,
    ids: [Arc<Mutex<String>>; 2],
    cloud: Option<CloudThread>,
    hotplug: Arc<HotPlug>,
    dir: PathBuf,
}

impl Lab {
    /// Checks what the lab needs, with the fix for what is missing.
    pub fn preflight() -> Result<(), String> {
        if !is_root() {
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
        if let Err(e) = Self::preflight() {
            panic!("{e}");
        }
        remove_leftovers();
        let dir = PathBuf::from(STATE_DIR);
        std::fs::create_dir_all(&dir).expect("lab state dir");
        build_topology();
        let ids = [
            Arc::new(Mutex::new(String::new())),
            Arc::new(Mutex::new(String::new())),
        ];
        let (cloud, front, seeded) = CloudThread::start(ids.clone());
        let (attach, detach, hot) = profile.delays();
        front.set_delays(attach, detach);
        let hotplug = Arc::new(HotPlug {
            ns_of: Mutex::new(HashMap::new()),
            mac: Mutex::new(String::new()),
            delay: hot,
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
        let nodes = [0, 1].map(|i| {
            let name = NAMES[i];
            let ns = NS_NODES[i];
            Node {
                name,
                ns,
                config: dir.join(format!("{name}.toml")),
                socket: dir.join(format!("{name}.sock")),
                log: dir.join(format!("{name}.log")),
                nginx_conf: dir.join(format!("nginx-{name}.conf")),
                agent: None,
                nginx: None,
            }
        });
        let mut lab = Lab {
            profile,
            bin,
            nodes,
            front,
            seeded: seeded.clone(),
            ids,
            cloud: Some(cloud),
            hotplug,
            dir,
        };
        lab.apply_seed(seeded);
        for i in 0..2 {
            lab.start_nginx(i);
        }
        lab
    }

    fn apply_seed(&mut self, s: Seeded) {
        for i in 0..2 {
            *self.ids[i].lock().unwrap_or_else(|e| e.into_inner()) = s.instances[i].clone();
        }
        {
            let mut m = self.hotplug.ns_of.lock().unwrap_or_else(|e| e.into_inner());
            m.clear();
            for (id, ns) in s.instances.iter().zip(NS_NODES) {
                m.insert(id.clone(), ns);
            }
        }
        *self.hotplug.mac.lock().unwrap_or_else(|e| e.into_inner()) = s.mac.clone();
        // The ENI's NIC gets the MAC the cloud reports, and the ENI id as its alias.
        let dev = self.park_eni();
        ip(NS_POOL, &["link", "set", &dev, "down"]);
        ip(NS_POOL, &["link", "set", &dev, "address", &s.mac]);
        ip(NS_POOL, &["link", "set", &dev, "name", ENI_LINK]);
        ip(NS_POOL, &["link", "set", ENI_LINK, "alias", &s.eni]);
        // The VPC fabric knows where an ENI's addresses live: no ARP after a move.
        for a in [ENI_IP, ENI_SECONDARY_IP] {
            ip(
                NS_RT,
                &[
                    "neigh",
                    "replace",
                    &a.to_string(),
                    "lladdr",
                    &s.mac,
                    "dev",
                    "br-eni",
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
        for ns in NS_NODES {
            for mac in [old.as_str(), self.seeded.mac.as_str()] {
                if let Some(dev) = link_by_mac(ns, mac) {
                    ip(ns, &["link", "set", &dev, "netns", NS_POOL]);
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
        for i in 0..2 {
            self.kill_agent(i);
            self.thaw(i);
        }
        self.heal_partition();
        self.front.clear_faults();
        self.front.clear_calls();
        for ns in NS_NODES {
            flush_eni_rules(ns);
        }
        let seeded = self
            .cloud
            .as_ref()
            .expect("cloud")
            .call(Cmd::Reseed)
            .expect("reseed");
        self.apply_seed(seeded);
        for i in 0..2 {
            let _ = std::fs::remove_file(&self.nodes[i].socket);
            if self.nodes[i]
                .nginx
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some())
            {
                self.start_nginx(i);
            }
        }
    }

    fn start_nginx(&mut self, i: usize) {
        let n = &self.nodes[i];
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {dir}/nginx-{name}.pid;\n\
             error_log {dir}/nginx-{name}.err warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  server {{\n    listen 80;\n    default_type text/plain;\n\
             \x20   location / {{ return 200 \"{name}\\n\"; }}\n  }}\n}}\n",
            dir = self.dir.display(),
            name = n.name
        );
        std::fs::write(&n.nginx_conf, conf).expect("nginx conf");
        let child = Command::new("ip")
            .args(["netns", "exec", n.ns, "nginx", "-c"])
            .arg(&n.nginx_conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        self.nodes[i].nginx = Some(child);
        let pidfile = self.dir.join(format!("nginx-{}.pid", self.nodes[i].name));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pidfile.exists() {
            assert!(
                Instant::now() < deadline,
                "nginx on {} did not start",
                self.nodes[i].name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn write_config(&self, i: usize, o: &AgentOptions) {
        let n = &self.nodes[i];
        let peer = 1 - i;
        let text = format!(
            r#"# Generated by the lab: the same format an operator writes.
[node]
name = "{name}"

[[peer]]
name = "{peer_name}"
addresses = ["{peer_ip}"]

[group]
id = 1
eni = "{eni}"
device-index = 1
hold-down = "{hold_down}"

[heartbeat]
bind = "{ip}"
interval = "{interval}"
dead-interval = "{dead}"

[auth]
key-file = "{dir}/peer.key"

[aws]
region = "us-east-1"
endpoint-url = "http://{cloud}:{front}"
verify-interval = "2s"

[network]
repair = {repair}
reconcile-interval = "5s"

[hooks]
timeout = "10s"
on-master = [["/usr/sbin/nginx", "-c", "{nginx}", "-s", "reload"]]

[control]
socket = "{socket}"

[stop]
mode = "auto"
restart-grace = "10s"
"#,
            name = n.name,
            peer_name = NAMES[peer],
            peer_ip = NODE_IPS[peer],
            eni = self.seeded.eni,
            hold_down = o.hold_down,
            ip = NODE_IPS[i],
            interval = o.interval,
            dead = o.dead_interval,
            dir = self.dir.display(),
            cloud = CLOUD_IP,
            front = FRONT_PORT,
            repair = o.repair,
            nginx = n.nginx_conf.display(),
            socket = n.socket.display(),
        );
        std::fs::write(&n.config, text).expect("agent config");
    }

    pub fn start_agent(&mut self, i: usize) {
        let n = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("agent log");
        let child = Command::new("ip")
            .args(["netns", "exec", n.ns])
            .arg(&self.bin)
            .args(["run", "-c"])
            .arg(&n.config)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_CONFIG_FILE", "/nonexistent/enipeer-lab")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/enipeer-lab")
            .env(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://{CLOUD_IP}:{}/", IMDS_PORTS[i]),
            )
            .env("ENIPEER_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start enipeer");
        self.nodes[i].agent = Some(child);
    }

    pub fn agent_pid(&self, i: usize) -> Option<i32> {
        self.nodes[i].agent.as_ref().map(|c| c.id() as i32)
    }

    pub fn signal_agent(&mut self, i: usize, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.agent_pid(i) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// Waits for the agent to exit (after a signal); returns its exit code.
    pub fn wait_agent(&mut self, i: usize, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(c) = self.nodes[i].agent.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.nodes[i].agent = None;
                    return st.code();
                }
            } else {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].agent.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The host "dies": every process in its namespace frozen, its primary interface cut.
    pub fn freeze(&self, i: usize) {
        signal_ns(self.nodes[i].ns, nix::sys::signal::Signal::SIGSTOP);
        ip(NS_RT, &["link", "set", mgmt_port(i), "down"]);
    }

    pub fn thaw(&self, i: usize) {
        ip(NS_RT, &["link", "set", mgmt_port(i), "up"]);
        signal_ns(self.nodes[i].ns, nix::sys::signal::Signal::SIGCONT);
    }

    /// Drops heartbeats (UDP 7460) between the instances on the management bridge; the cloud
    /// stays reachable. The cheap split-brain injector.
    pub fn partition_heartbeats(&self) {
        let rules = "table bridge enpl_part {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n    udp dport 7460 drop\n  }\n}\n";
        let f = self.dir.join("partition.nft");
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

    /// What the cloud says: the instance the ENI is attached to, as a node index.
    pub fn holder(&self) -> Option<usize> {
        let id = self
            .cloud
            .as_ref()
            .expect("cloud")
            .call(|tx| Cmd::Holder(self.seeded.eni.clone(), tx))
            .expect("describe");
        id.and_then(|id| self.seeded.instances.iter().position(|x| *x == id))
    }

    pub fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.nodes[i].socket)
            .output()
            .expect("enipeer cli")
    }

    pub fn role(&self, i: usize) -> Option<enipeer::report::RoleReport> {
        let out = self.cli(i, &["role", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn role_name(&self, i: usize) -> String {
        self.role(i)
            .map(|r| r.role)
            .unwrap_or_else(|| "down".into())
    }

    /// The policy rules in a node's namespace that point the ENI's addresses at a table.
    pub fn eni_rules(&self, i: usize) -> Vec<String> {
        ip(self.nodes[i].ns, &["rule", "show"])
            .lines()
            .filter(|l| l.contains("198.18.1.25") || l.contains("198.18.1.26"))
            .map(str::to_owned)
            .collect()
    }

    pub fn logs(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
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
            tail(&self.logs(0), 40),
            tail(&self.logs(1), 40)
        );
    }

    /// The usual start: node-a alone claims the detached ENI, then node-b joins as backup.
    pub fn start_pair(&mut self, o: &AgentOptions) {
        self.write_config(0, o);
        self.write_config(1, o);
        self.start_agent(0);
        self.wait_for("node-a master", Duration::from_secs(20), |l| {
            l.role(0).is_some_and(|r| r.role == "master") && l.serving(0)
        });
        self.start_agent(1);
        self.wait_for(
            "node-b backup and both hear each other",
            Duration::from_secs(20),
            |l| {
                let heard = |r: &enipeer::report::RoleReport| {
                    r.peers[0].alive && r.peers[0].last_heard_ms_ago.is_some()
                };
                l.role(1).is_some_and(|r| r.role == "backup" && heard(&r))
                    && l.role(0).is_some_and(|r| heard(&r))
            },
        );
    }

    /// True once the node answers through the EIP.
    pub fn serving(&self, i: usize) -> bool {
        in_ns(NS_CLI, move || fetch(Duration::from_millis(300))) == Some(NAMES[i].to_string())
    }

    pub fn hotplug_moves(&self) -> usize {
        self.hotplug.moves.load(Ordering::SeqCst)
    }
}

fn mgmt_port(i: usize) -> &'static str {
    ["m-a", "m-b"][i]
}

fn flush_eni_rules(ns: &str) {
    for _ in 0..8 {
        let rules = Command::new("ip")
            .args(["-n", ns, "rule", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let Some(line) = rules.lines().find(|l| l.contains("from 198.18.1.")) else {
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
        for i in 0..2 {
            self.kill_agent(i);
            if let Some(mut c) = self.nodes[i].nginx.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::create_dir_all(LOG_DIR);
        for n in &self.nodes {
            let _ = std::fs::copy(&n.log, Path::new(LOG_DIR).join(format!("{}.log", n.name)));
        }
        self.cloud.take();
        remove_leftovers();
    }
}

fn build_topology() {
    for ns in ALL_NS {
        sh(&["ip", "netns", "add", ns]);
        ip(ns, &["link", "set", "lo", "up"]);
    }
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
    for (port, ns, addr) in [
        ("m-cloud", NS_CLOUD, "198.18.0.2/24"),
        ("m-a", "enpl-a", "198.18.0.11/24"),
        ("m-b", "enpl-b", "198.18.0.12/24"),
    ] {
        r(&[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        r(&["link", "set", port, "master", "br-mgmt", "up"]);
        ip(ns, &["addr", "add", addr, "dev", "eth0"]);
        ip(ns, &["link", "set", "eth0", "up"]);
        ip(ns, &["route", "add", "default", "via", "198.18.0.1"]);
    }
    r(&[
        "link", "add", "e-eni1", "type", "veth", "peer", "name", ENI_LINK, "netns", NS_POOL,
    ]);
    r(&["link", "set", "e-eni1", "master", "br-eni", "up"]);
    // Forwarding, and AWS's source/destination check as strict reverse-path filtering: a reply
    // from the ENI's address that arrives over the management bridge is dropped.
    sh(&[
        "ip",
        "netns",
        "exec",
        NS_RT,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=1",
        "net.ipv4.conf.default.rp_filter=1",
        "net.ipv4.conf.br-mgmt.rp_filter=1",
        "net.ipv4.conf.br-eni.rp_filter=1",
    ]);
    let nft = format!(
        "table ip enpl_eip {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {EIP} dnat to {ENI_IP}\n  }}\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {ENI_IP} oifname \"rt-cli\" snat to {EIP}\n  }}\n}}\n"
    );
    let f = Path::new(STATE_DIR).join("eip.nft");
    std::fs::write(&f, nft).expect("nft file");
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
    let addr = SocketAddr::from((EIP, 80));
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
        let path = Path::new("/run/netns").join(NS_CLI);
        let thread = std::thread::spawn(move || {
            enter_ns(&path);
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
