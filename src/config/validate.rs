//! Raw tables to [`Settings`]: applies defaults and checks every value and cross-field rule,
//! collecting all problems. A value that fails its check is replaced by its default so the
//! checks that depend on it still run without piling up follow-on complaints.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use humantime::format_duration;

use super::raw::*;
use super::*;
use crate::ids::{EniId, InstanceId, NodeName};

const DEFAULT_PORT: u16 = 7460;
const DEFAULT_KEY_FILE: &str = "/etc/enipeer/peer.key";
const DEFAULT_STATE_DIR: &str = "/var/lib/enipeer";
use super::DEFAULT_SOCKET;
/// IFNAMSIZ - 1.
const MAX_IFNAME_LEN: usize = 15;

/// What validation produced. `key_file` is filled even when other tables are broken so `load`
/// can still check the key file and report its problems in the same run.
pub(crate) struct Validated {
    pub settings: Option<Settings>,
    pub key_file: Option<PathBuf>,
    pub previous_key_file: Option<PathBuf>,
    pub problems: Vec<Problem>,
}

pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        let Some(text) = value else { return default };
        match humantime::parse_duration(text) {
            Ok(d) => d,
            Err(e) => {
                self.push(
                    key,
                    format!(
                        "{text:?} is not a duration ({e}): expected a number with a unit, like \"200ms\", \"1s\" or \"5m\""
                    ),
                );
                default
            }
        }
    }

    /// A duration that must be at least `min` (use 1ns for "non-zero").
    pub(super) fn duration_min(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let d = self.duration(key, value, default);
        if d < min {
            let text = value.unwrap_or_default();
            if min <= Duration::from_nanos(1) {
                self.push(key, format!("{text:?} must not be zero"));
            } else {
                self.push(
                    key,
                    format!(
                        "{text:?} is too short: expected at least {}",
                        format_duration(min)
                    ),
                );
            }
            return default;
        }
        d
    }

    pub(super) fn nonzero(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        self.duration_min(key, value, default, Duration::from_nanos(1))
    }

    /// An integer in `lo..=hi`; `what` explains the range when it is not obvious.
    pub(super) fn int<T: TryFrom<i64>>(
        &mut self,
        key: &str,
        value: Option<i64>,
        default: T,
        lo: i64,
        hi: i64,
        what: &str,
    ) -> T {
        let Some(v) = value else { return default };
        if (lo..=hi).contains(&v) {
            if let Ok(t) = T::try_from(v) {
                return t;
            }
        }
        let sep = if what.is_empty() { "" } else { " " };
        self.push(
            key,
            format!("{v} is out of range: expected {lo}..={hi}{sep}{what}"),
        );
        default
    }

    /// A node name; `None` (with the problem recorded) when it is missing or invalid.
    fn name(&mut self, key: &str, value: Option<&str>) -> Option<NodeName> {
        let Some(name) = value else {
            self.push(
                key,
                "missing: every node needs a name, e.g. name = \"node-a\"",
            );
            return None;
        };
        name.parse::<NodeName>()
            .map_err(|e| self.push(key, e.to_string()))
            .ok()
    }

    fn instance_id(&mut self, key: &str, value: Option<&str>) -> Option<InstanceId> {
        let text = value?;
        match text.parse::<InstanceId>() {
            Ok(id) => Some(id),
            Err(e) => {
                self.push(key, e.to_string());
                None
            }
        }
    }

    fn argv_list(&mut self, key: &str, value: Option<&Vec<Vec<String>>>) -> Vec<Vec<String>> {
        let Some(list) = value else {
            return Vec::new();
        };
        for (i, argv) in list.iter().enumerate() {
            match argv.first() {
                None => self.push(
                    format!("{key}[{i}]"),
                    "empty command: expected [\"/path/to/program\", \"arg\", ...]",
                ),
                Some(p) if p.trim().is_empty() => self.push(
                    format!("{key}[{i}][0]"),
                    format!("{p:?}: the program must not be empty"),
                ),
                Some(_) => {}
            }
        }
        list.clone()
    }
}

/// "IP" or "IP:port" (IPv6 with a port as "[::1]:7460"); the port is `None` when not given.
fn parse_address(text: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some((sa.ip(), Some(sa.port())));
    }
    text.parse::<IpAddr>().ok().map(|ip| (ip, None))
}

/// AWS region shape: `[a-z]{2}(-[a-z]+)+-\d+`, e.g. `us-east-1`, `us-gov-west-1`.
fn looks_like_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return false;
    };
    first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && !middle.is_empty()
        && middle
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// `node.state-dir`: an absolute path (the daemon's working directory is not one to rely on).
fn state_dir(c: &mut Checker, value: Option<&str>) -> PathBuf {
    let dir = PathBuf::from(value.unwrap_or(DEFAULT_STATE_DIR));
    if !dir.is_absolute() {
        c.push(
            "node.state-dir",
            format!(
                "{:?} is not an absolute path: give one, e.g. \"{DEFAULT_STATE_DIR}\"",
                dir
            ),
        );
    }
    dir
}

fn missing_table(c: &mut Checker, failed: &BTreeSet<&'static str>, name: &'static str) {
    if !failed.contains(name) {
        c.push(name, format!("missing required table [{name}]"));
    }
}

// Over 80 lines on purpose: a flat table of the simple keys, one `c.<type>(key, value, default)`
// call each, in file order; the cross-field rules live in the functions it calls.
pub(crate) fn validate(raw: &RawConfig, failed: &BTreeSet<&'static str>) -> Validated {
    let mut c = Checker {
        problems: Vec::new(),
    };

    // [node]
    let node_raw = raw.node.as_ref();
    if node_raw.is_none() {
        missing_table(&mut c, failed, "node");
    }
    let node = node_raw.and_then(|n| {
        // Every field is checked, so one run reports all of [node]'s problems.
        let name = c.name("node.name", n.name.as_deref());
        let priority = c.int(
            "node.priority",
            n.priority,
            100,
            1,
            254,
            "(higher wins elections)",
        );
        let instance_id = c.instance_id("node.instance-id", n.instance_id.as_deref());
        let state_dir = state_dir(&mut c, n.state_dir.as_deref());
        Some(NodeSettings {
            name: name?,
            priority,
            instance_id,
            state_dir,
        })
    });

    // [heartbeat] comes before the peers: it supplies their default port.
    let hb_raw = raw.heartbeat.as_ref();
    if hb_raw.is_none() {
        missing_table(&mut c, failed, "heartbeat");
    }
    let (heartbeat, port, bind) = match hb_raw {
        Some(h) => heartbeat(&mut c, h),
        None => (None, DEFAULT_PORT, None),
    };

    // [[peer]]
    let peers = match &raw.peer {
        Some(list) if !list.is_empty() => Some(peers(&mut c, list, node.as_ref(), bind, port)),
        Some(_) => {
            c.push("peer", "no [[peer]] table: at least one peer is required");
            None
        }
        None if failed.contains("peer") => None,
        None => {
            c.push(
                "peer",
                "missing required table [[peer]]: at least one peer is required",
            );
            None
        }
    };

    // [group]
    let group_raw = raw.group.as_ref();
    if group_raw.is_none() {
        missing_table(&mut c, failed, "group");
    }
    let (group, device_index) = match group_raw {
        Some(g) => group(&mut c, g),
        None => (None, 1),
    };

    // [auth]
    let (key_file, previous_key_file) = auth(&mut c, raw.auth.as_ref(), failed);

    let aws = aws(&mut c, raw.aws.as_ref().unwrap_or(&RawAws::default()));
    let network = network(
        &mut c,
        raw.network.as_ref().unwrap_or(&RawNetwork::default()),
        device_index,
    );
    let no_hooks = RawHooks::default();
    let h = raw.hooks.as_ref().unwrap_or(&no_hooks);
    let hooks = HookSettings {
        timeout: c.nonzero("hooks.timeout", h.timeout.as_deref(), secs(30)),
        on_master: c.argv_list("hooks.on-master", h.on_master.as_ref()),
        on_backup: c.argv_list("hooks.on-backup", h.on_backup.as_ref()),
        on_fault: c.argv_list("hooks.on-fault", h.on_fault.as_ref()),
        on_stop: c.argv_list("hooks.on-stop", h.on_stop.as_ref()),
        on_event: c.argv_list("hooks.on-event", h.on_event.as_ref()),
    };
    let control = control(
        &mut c,
        raw.control.as_ref().unwrap_or(&RawControl::default()),
    );
    let metrics = metrics(
        &mut c,
        raw.metrics.as_ref().unwrap_or(&RawMetrics::default()),
    );
    let log = log(&mut c, raw.log.as_ref().unwrap_or(&RawLog::default()));
    let stop = stop(&mut c, raw.stop.as_ref().unwrap_or(&RawStop::default()));
    let testing = raw.testing.as_ref().and_then(|t| {
        let fake_cloud = match t.fake_cloud.as_deref() {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                c.push(
                    "testing.fake-cloud",
                    "missing: [testing] needs the path of the fake cloud state file",
                );
                return None;
            }
        };
        // Checked on the raw value so an invalid id is not also reported as missing.
        if node_raw.is_some_and(|n| n.instance_id.is_none()) {
            c.push(
                "node.instance-id",
                "missing: required with testing.fake-cloud (there is no instance metadata to ask)",
            );
        }
        Some(TestingSettings {
            fake_cloud,
            fake_net: t.fake_net.unwrap_or(false),
        })
    });

    let checks = super::check::checks(&mut c, raw.check.as_deref().unwrap_or_default());

    let settings = match (node, peers, group, heartbeat, key_file.clone()) {
        (Some(node), Some(peers), Some(group), Some(heartbeat), Some(key_file))
            if c.problems.is_empty() && failed.is_empty() =>
        {
            Some(Settings {
                node,
                peers,
                group,
                heartbeat,
                auth: AuthSettings {
                    key_file,
                    previous_key_file: previous_key_file.clone(),
                },
                aws,
                network,
                hooks,
                control,
                metrics,
                log,
                stop,
                checks,
                testing,
            })
        }
        _ => {
            if c.problems.is_empty() && failed.is_empty() {
                // Every path to a missing part records a problem; this only guards against a
                // future check forgetting to, so an invalid file can never pass silently.
                c.push("", "incomplete configuration");
            }
            None
        }
    };
    Validated {
        settings,
        key_file,
        previous_key_file,
        problems: c.problems,
    }
}

/// The key file (`None` when unusable) and, during a rotation, the previous key's file.
fn auth(
    c: &mut Checker,
    a: Option<&RawAuth>,
    failed: &BTreeSet<&'static str>,
) -> (Option<PathBuf>, Option<PathBuf>) {
    let key_file = match a.and_then(|a| a.key_file.as_deref()) {
        Some("") => {
            c.push("auth.key-file", "must not be empty");
            None
        }
        Some(p) => Some(PathBuf::from(p)),
        None if failed.contains("auth") => None,
        None => Some(PathBuf::from(DEFAULT_KEY_FILE)),
    };
    let previous_key_file = match a.and_then(|a| a.previous_key_file.as_deref()) {
        Some("") => {
            c.push(
                "auth.previous-key-file",
                "must not be empty (leave it out when not rotating)",
            );
            None
        }
        // Only the same spelling is caught here; two names for one file, or two files with the
        // same key, are caught when the keys are read (`load`).
        Some(p) if key_file.as_deref() == Some(Path::new(p)) => {
            c.push(
                "auth.previous-key-file",
                "names the same file as auth.key-file; during a rotation it is the old key's file",
            );
            None
        }
        Some(p) => Some(PathBuf::from(p)),
        None => None,
    };
    (key_file, previous_key_file)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The heartbeat settings (`None` when `bind` is missing or invalid), the resolved default port
/// and the bind address, which the peer checks need either way.
// Slightly over 80 lines: a flat table of the [heartbeat] keys and their one cross-field rule.
fn heartbeat(
    c: &mut Checker,
    h: &RawHeartbeat,
) -> (Option<HeartbeatSettings>, u16, Option<SocketAddr>) {
    let explicit_port: Option<u16> = h
        .port
        .map(|p| c.int("heartbeat.port", Some(p), DEFAULT_PORT, 1, 65535, ""));
    let mut port = explicit_port.unwrap_or(DEFAULT_PORT);
    let bind = match h.bind.as_deref() {
        None => {
            c.push(
                "heartbeat.bind",
                "missing: the local address heartbeats use, e.g. bind = \"198.18.0.10\"",
            );
            None
        }
        Some(text) => match parse_address(text) {
            None => {
                c.push(
                    "heartbeat.bind",
                    format!("{text:?} is not an address: expected \"IP\" or \"IP:port\""),
                );
                None
            }
            Some((_, Some(0))) => {
                c.push("heartbeat.bind", format!("{text:?}: port 0 is not allowed"));
                None
            }
            Some((ip, Some(p))) => {
                if let Some(e) = explicit_port.filter(|e| *e != p) {
                    c.push(
                        "heartbeat.port",
                        format!(
                            "{e} conflicts with the port in heartbeat.bind ({text:?}): give the port in one place"
                        ),
                    );
                }
                port = p;
                Some(SocketAddr::new(ip, p))
            }
            Some((ip, None)) => Some(SocketAddr::new(ip, port)),
        },
    };
    let interval = c.duration_min(
        "heartbeat.interval",
        h.interval.as_deref(),
        Duration::from_millis(200),
        Duration::from_millis(50),
    );
    let dead_interval = c.duration_min(
        "heartbeat.dead-interval",
        h.dead_interval.as_deref(),
        secs(1),
        Duration::from_millis(250),
    );
    if dead_interval <= interval * 2 {
        let shown = h
            .dead_interval
            .clone()
            .unwrap_or_else(|| format_duration(dead_interval).to_string());
        c.push(
            "heartbeat.dead-interval",
            format!(
                "{shown:?} must be more than 2 x heartbeat.interval ({}), so one lost heartbeat does not cause a failover",
                format_duration(interval)
            ),
        );
    }
    let max_clock_skew = c.duration_min(
        "heartbeat.max-clock-skew",
        h.max_clock_skew.as_deref(),
        secs(30),
        secs(1),
    );
    let settings = bind.map(|bind| HeartbeatSettings {
        bind,
        port,
        interval,
        dead_interval,
        max_clock_skew,
    });
    (settings, port, bind)
}

// Over 80 lines on purpose: the per-peer checks are one list (name, addresses, instance id,
// duplicates), in the order the operator reads a [[peer]] table.
fn peers(
    c: &mut Checker,
    list: &[RawPeer],
    node: Option<&NodeSettings>,
    bind: Option<SocketAddr>,
    port: u16,
) -> Vec<PeerSettings> {
    let mut out: Vec<PeerSettings> = Vec::with_capacity(list.len());
    let mut seen_addrs: Vec<(SocketAddr, String)> = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let key = format!("peer[{i}]");
        let name = c.name(&format!("{key}.name"), p.name.as_deref());
        if let Some(name) = &name {
            // Positions in the file, not in `out`: a peer with an invalid name is left out of it.
            let earlier = list[..i]
                .iter()
                .position(|o| o.name.as_deref() == Some(name.as_str()));
            if let Some(j) = earlier {
                c.push(
                    format!("{key}.name"),
                    format!("\"{name}\" is already used by peer[{j}]: peer names must be unique"),
                );
            }
            if node.is_some_and(|n| n.name == *name) {
                c.push(
                    format!("{key}.name"),
                    format!("\"{name}\" is this node's own name (node.name)"),
                );
            }
        }
        let mut addresses = Vec::new();
        match &p.addresses {
            None => c.push(
                format!("{key}.addresses"),
                "missing: expected at least one address, e.g. addresses = [\"198.18.0.11\"]",
            ),
            Some(list) if list.is_empty() => c.push(
                format!("{key}.addresses"),
                "empty: expected at least one address",
            ),
            Some(list) => {
                for (j, text) in list.iter().enumerate() {
                    let akey = format!("{key}.addresses[{j}]");
                    let Some((ip, p)) = parse_address(text) else {
                        c.push(
                            akey,
                            format!("{text:?} is not an address: expected \"IP\" or \"IP:port\""),
                        );
                        continue;
                    };
                    let addr = SocketAddr::new(ip, p.unwrap_or(port));
                    if addr.port() == 0 {
                        c.push(akey, format!("{text:?}: port 0 is not allowed"));
                    } else if ip.is_unspecified() || ip.is_multicast() {
                        c.push(
                            akey,
                            format!("{text:?}: expected the peer's unicast address"),
                        );
                    } else if bind == Some(addr) {
                        c.push(
                            akey,
                            format!(
                                "{text:?} is this node's own heartbeat.bind address: expected the peer's address"
                            ),
                        );
                    } else if bind.is_some_and(|b| b.is_ipv4() != addr.is_ipv4()) {
                        c.push(
                            akey,
                            format!(
                                "{text:?} is not the same IP version as heartbeat.bind: heartbeats could not reach it"
                            ),
                        );
                    } else if let Some((_, other)) = seen_addrs.iter().find(|(a, _)| *a == addr) {
                        c.push(akey, format!("{text:?} is already listed as {other}"));
                    } else {
                        seen_addrs.push((addr, format!("{key}.addresses[{j}]")));
                        addresses.push(addr);
                    }
                }
            }
        }
        let instance_id = c.instance_id(&format!("{key}.instance-id"), p.instance_id.as_deref());
        if let (Some(id), Some(own)) = (&instance_id, node.and_then(|n| n.instance_id.as_ref())) {
            if id == own {
                c.push(
                    format!("{key}.instance-id"),
                    format!("\"{id}\" is this node's own node.instance-id"),
                );
            }
        }
        if let Some(name) = name {
            out.push(PeerSettings {
                name,
                addresses,
                instance_id,
            });
        }
    }
    out
}

/// The group settings (`None` when the ENI is missing or invalid) and the device index, which
/// the network defaults need either way.
fn group(c: &mut Checker, g: &RawGroup) -> (Option<GroupSettings>, u32) {
    let id = match g.id {
        None => {
            c.push(
                "group.id",
                "missing: a number shared by both nodes of this group, e.g. id = 1",
            );
            0
        }
        Some(v) => c.int("group.id", Some(v), 0u32, 0, i64::from(u32::MAX), ""),
    };
    let eni = match g.eni.as_deref() {
        None => {
            c.push(
                "group.eni",
                "missing: the ENI to move, e.g. eni = \"eni-0123456789abcdef0\"",
            );
            None
        }
        Some(text) => match text.parse::<EniId>() {
            Ok(e) => Some(e),
            Err(e) => {
                c.push("group.eni", e.to_string());
                None
            }
        },
    };
    let device_indexes = device_indexes(c, g.device_index.as_ref());
    let device_index = device_indexes.first().copied().unwrap_or(1);
    let hold_down = c.nonzero("group.hold-down", g.hold_down.as_deref(), secs(30));
    let hold_down_max = c.nonzero("group.hold-down-max", g.hold_down_max.as_deref(), secs(600));
    if hold_down > hold_down_max {
        c.push(
            "group.hold-down",
            format!(
                "{} must not be longer than group.hold-down-max ({})",
                format_duration(hold_down),
                format_duration(hold_down_max)
            ),
        );
    }
    let preempt_delay = c.duration("group.preempt-delay", g.preempt_delay.as_deref(), secs(30));
    let settings = eni.map(|eni| GroupSettings {
        id,
        eni,
        device_index,
        device_indexes,
        preempt: g.preempt.unwrap_or(false),
        preempt_delay,
        hold_down,
        hold_down_max,
    });
    (settings, device_index)
}

/// How many indexes after a single configured one a claim also tries.
const NEXT_INDEXES: u32 = 2;

/// `group.device-index`: an integer n means n, then the next two (up to 31); a list is tried as
/// written. Never empty (the default is 1, 2, 3).
fn device_indexes(c: &mut Checker, v: Option<&RawIndexes>) -> Vec<u32> {
    const WHAT: &str = "(0 is the primary interface)";
    let key = "group.device-index";
    let with_next = |n: u32| (n..=(n + NEXT_INDEXES).min(31)).collect::<Vec<u32>>();
    match v {
        None => with_next(1),
        Some(RawIndexes::One(n)) => with_next(c.int(key, Some(*n), 1u32, 1, 31, WHAT)),
        Some(RawIndexes::List(list)) => {
            let mut out: Vec<u32> = Vec::new();
            for (i, n) in list.iter().enumerate() {
                let at = format!("{key}[{i}]");
                let before = c.problems.len();
                let index = c.int(&at, Some(*n), 0u32, 1, 31, WHAT);
                if c.problems.len() != before {
                    continue;
                }
                if out.contains(&index) {
                    c.push(&at, format!("{index} is listed twice"));
                } else {
                    out.push(index);
                }
            }
            if list.is_empty() {
                c.push(key, "empty: give at least one device index, e.g. [1, 2, 3]");
            }
            if out.is_empty() {
                out.push(1);
            }
            out
        }
    }
}

fn aws(c: &mut Checker, a: &RawAws) -> AwsSettings {
    if let Some(r) = a.region.as_deref() {
        if !looks_like_region(r) {
            c.push(
                "aws.region",
                format!("{r:?} does not look like an AWS region: expected e.g. \"us-east-1\""),
            );
        }
    }
    if let Some(u) = a.endpoint_url.as_deref() {
        let rest = u
            .strip_prefix("https://")
            .or_else(|| u.strip_prefix("http://"));
        if rest.is_none_or(|r| r.is_empty()) {
            c.push(
                "aws.endpoint-url",
                format!("{u:?} is not a URL: expected \"https://host\" or \"http://host:port\""),
            );
        }
    }
    let operation_timeout = c.nonzero(
        "aws.operation-timeout",
        a.operation_timeout.as_deref(),
        secs(10),
    );
    let force_detach_grace = c.duration(
        "aws.force-detach-grace",
        a.force_detach_grace.as_deref(),
        secs(2),
    );
    if force_detach_grace >= operation_timeout {
        c.push(
            "aws.force-detach-grace",
            format!(
                "{} must be shorter than aws.operation-timeout ({}): the forced detach has to fit in the operation",
                format_duration(force_detach_grace),
                format_duration(operation_timeout)
            ),
        );
    }
    // Below 10 ms the looks cost more than they save; above 5 s a transition is seen late.
    let poll_interval = c.duration_min(
        "aws.poll-interval",
        a.poll_interval.as_deref(),
        Duration::from_millis(100),
        Duration::from_millis(10),
    );
    if poll_interval > secs(5) {
        c.push(
            "aws.poll-interval",
            format!(
                "{} is too long: expected at most 5s",
                format_duration(poll_interval)
            ),
        );
    }
    AwsSettings {
        poll_interval,
        region: a.region.clone(),
        endpoint_url: a.endpoint_url.clone(),
        operation_timeout,
        force_detach_grace,
        verify_interval: c.nonzero("aws.verify-interval", a.verify_interval.as_deref(), secs(5)),
    }
}

fn network(c: &mut Checker, n: &RawNetwork, device_index: u32) -> NetworkSettings {
    if let Some(name) = n.interface_name.as_deref() {
        if name.is_empty() {
            c.push("network.interface-name", "must not be empty");
        } else if name.len() > MAX_IFNAME_LEN {
            c.push(
                "network.interface-name",
                format!(
                    "{name:?} is {} bytes long: Linux interface names have at most {MAX_IFNAME_LEN}",
                    name.len()
                ),
            );
        } else if name == "."
            || name == ".."
            || name.contains('/')
            || name.contains(char::is_whitespace)
        {
            c.push(
                "network.interface-name",
                format!("{name:?} is not a valid interface name (no '/', no whitespace, not \".\" or \"..\")"),
            );
        }
    }
    let default_table = 10_000 + device_index;
    let route_table = match n.route_table {
        Some(t @ (0 | 253..=255)) => {
            c.push(
                "network.route-table",
                format!(
                    "{t} is reserved (0 unspec, 253 default, 254 main, 255 local): pick another, e.g. {default_table}"
                ),
            );
            default_table
        }
        other => c.int(
            "network.route-table",
            other,
            default_table,
            1,
            i64::from(u32::MAX),
            "",
        ),
    };
    NetworkSettings {
        interface_name: n.interface_name.clone(),
        route_table,
        rule_priority: c.int(
            "network.rule-priority",
            n.rule_priority,
            1000u32,
            1,
            32765,
            "(0, 32766 and 32767 belong to the kernel's own rules)",
        ),
        rp_filter: Some(c.int(
            "network.rp-filter",
            n.rp_filter,
            2u8,
            0,
            2,
            "(0 off, 1 strict, 2 loose)",
        )),
        mtu: n
            .mtu
            .map(|m| c.int("network.mtu", Some(m), 1500u32, 576, 9001, "")),
        repair: n.repair.unwrap_or(true),
        reconcile_interval: c.nonzero(
            "network.reconcile-interval",
            n.reconcile_interval.as_deref(),
            secs(30),
        ),
        link_timeout: c.nonzero("network.link-timeout", n.link_timeout.as_deref(), secs(15)),
    }
}

fn control(c: &mut Checker, ctl: &RawControl) -> ControlSettings {
    let socket = PathBuf::from(ctl.socket.as_deref().unwrap_or(DEFAULT_SOCKET));
    if !socket.is_absolute() {
        c.push(
            "control.socket",
            format!(
                "{:?} must be an absolute path",
                socket.display().to_string()
            ),
        );
    }
    if ctl.group.as_deref() == Some("") {
        c.push(
            "control.group",
            "must not be empty (leave it out for root-only access)",
        );
    }
    ControlSettings {
        socket,
        group: ctl.group.clone(),
    }
}

fn metrics(c: &mut Checker, m: &RawMetrics) -> MetricsSettings {
    let listen = m
        .listen
        .as_deref()
        .and_then(|text| match text.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                c.push(
                    "metrics.listen",
                    format!("{text:?} needs a port, e.g. \"127.0.0.1:9460\""),
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                c.push(
                    "metrics.listen",
                    format!(
                    "{text:?} is not an address and port, e.g. \"127.0.0.1:9460\" or \"[::1]:9460\""
                ),
                );
                None
            }
        });
    MetricsSettings { listen }
}

/// `log.level`: checked here, so a typo is caught by `check` (and refused by a reload) instead
/// of silently logging at the wrong level. Stricter than the logger's own parser, which reads a
/// bare word such as "warning" as a module name and would then drop every line of ours.
fn log(c: &mut Checker, l: &RawLog) -> LogSettings {
    let level = l.level.as_deref().unwrap_or("info");
    if let Err(why) = check_log_filter(level) {
        c.push(
            "log.level",
            format!(
                "{level:?}: {why}: expected off, error, warn, info, debug or trace, or \
                 directives such as \"info,enipeer::cloud=debug\""
            ),
        );
    }
    LogSettings {
        level: level.to_owned(),
    }
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Each comma-separated directive is a level, or `target=level` (span filters in `[...]` are
/// left to the logger's parser).
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("empty (it would log nothing)".into());
    }
    for d in filter.split(',').map(str::trim) {
        let level = match d.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => return Err(format!("{d:?} has no target before '='")),
            None if d.contains('[') => continue,
            None => d,
        };
        if !LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
            return Err(format!("{level:?} in {d:?} is not a level"));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn stop(c: &mut Checker, s: &RawStop) -> StopSettings {
    let mode = match s.mode.as_deref() {
        None | Some("auto") => StopMode::Auto,
        Some("hold") => StopMode::Hold,
        Some("handover") => StopMode::Handover,
        Some(other) => {
            c.push(
                "stop.mode",
                format!(
                    "{other:?} is not a stop mode: expected \"auto\", \"hold\" or \"handover\""
                ),
            );
            StopMode::Auto
        }
    };
    StopSettings {
        mode,
        restart_grace: c.nonzero("stop.restart-grace", s.restart_grace.as_deref(), secs(30)),
        handover_timeout: c.nonzero(
            "stop.handover-timeout",
            s.handover_timeout.as_deref(),
            secs(20),
        ),
    }
}
