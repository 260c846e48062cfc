//! The configuration file: strict TOML in, validated typed [`Settings`] out.
//!
//! Parsing happens in two layers (as zincati and ntpd-rs do): `raw` mirrors the file with every
//! key optional and unknown keys rejected; `validate` turns it into [`Settings`] with defaults
//! applied and cross-field rules checked, collecting every problem instead of stopping at the
//! first, so `enipeer check` can list them all at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::ids::{EniId, InstanceId};

/// Default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/enipeer/enipeer.toml";

/// The fully validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub node: NodeSettings,
    pub peers: Vec<PeerSettings>,
    pub group: GroupSettings,
    pub heartbeat: HeartbeatSettings,
    pub auth: AuthSettings,
    pub aws: AwsSettings,
    pub network: NetworkSettings,
    pub hooks: HookSettings,
    pub control: ControlSettings,
    pub stop: StopSettings,
    /// Test-only backends; `None` in every real deployment.
    pub testing: Option<TestingSettings>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    /// Unique within the group; carried in heartbeats and used as the final tie-breaker.
    pub name: String,
    /// 1..=254, higher wins elections (and, with preempt, takes over from a lower master).
    pub priority: u8,
    /// Overrides the instance id from instance metadata.
    pub instance_id: Option<InstanceId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerSettings {
    pub name: String,
    /// Where heartbeats are sent; the port defaults to `heartbeat.port` when the file gives an
    /// address without one.
    pub addresses: Vec<SocketAddr>,
    /// Optional: used by the preflight check; otherwise learned from the peer's heartbeats.
    pub instance_id: Option<InstanceId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupSettings {
    /// Carried in every heartbeat so two groups on one network never mix.
    pub id: u32,
    pub eni: EniId,
    /// Device index the ENI is attached at (>= 1; 0 is the primary interface).
    pub device_index: u32,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// First hold-down after this node lost the ENI while master; doubles on repeats.
    pub hold_down: Duration,
    pub hold_down_max: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatSettings {
    /// Local address heartbeats are sent from and received on.
    pub bind: SocketAddr,
    /// Default port for peer addresses given without one (equals `bind`'s port).
    pub port: u16,
    pub interval: Duration,
    pub dead_interval: Duration,
    /// Heartbeats whose timestamp is further than this from our clock are rejected.
    pub max_clock_skew: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Overall deadline of one cloud operation (claim, release, describe), retries included.
    pub operation_timeout: Duration,
    /// How long a normal detach of a live holder may take before it is forced.
    pub force_detach_grace: Duration,
    /// How often the master re-reads the attachment to confirm it still holds the ENI.
    pub verify_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSettings {
    /// Rename the hot-plugged interface to this name (at most 15 bytes).
    pub interface_name: Option<String>,
    /// Policy routing table; default 10000 + device index.
    pub route_table: u32,
    pub rule_priority: u32,
    /// Reverse-path filter value set on the ENI interface (0, 1 or 2); `None` leaves it alone.
    pub rp_filter: Option<u8>,
    pub mtu: Option<u32>,
    /// Repair drift (missing rules, routes, addresses) while master.
    pub repair: bool,
    pub reconcile_interval: Duration,
    /// How long to wait for the hot-plugged interface to appear after attach.
    pub link_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HookSettings {
    pub timeout: Duration,
    pub on_master: Vec<Vec<String>>,
    pub on_backup: Vec<Vec<String>>,
    pub on_fault: Vec<Vec<String>>,
    pub on_stop: Vec<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlSettings {
    pub socket: PathBuf,
    /// When set the socket is mode 0660 and owned by this group; otherwise 0600 root-only.
    pub group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Hand over on system shutdown, keep the ENI on a plain daemon restart.
    Auto,
    /// Always keep the ENI (peers wait `restart_grace`).
    Hold,
    /// Always hand over to a live peer.
    Handover,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StopSettings {
    pub mode: StopMode,
    /// What a restarting master promises its peers: back within this long.
    pub restart_grace: Duration,
    /// How long a stopping master waits for the peer to take over.
    pub handover_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TestingSettings {
    /// Use a file-backed fake cloud shared by the daemons of one test instead of EC2 (this node's
    /// instance id then comes from `node.instance-id`, which becomes required).
    pub fake_cloud: PathBuf,
    /// Skip host network changes (the test runs unprivileged).
    pub fake_net: bool,
}

/// `enipeer check`: prints every problem (stderr) or a summary (stdout); returns the exit code.
pub fn check_command(_path: &std::path::Path, _preflight: bool) -> i32 {
    crate::exit::SOFTWARE
}

/// `enipeer keygen`: writes a new random key with mode 0600; returns the exit code.
pub fn keygen_command(_path: &std::path::Path, _force: bool) -> i32 {
    crate::exit::SOFTWARE
}
