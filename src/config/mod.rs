//! The configuration file: strict TOML in, validated typed [`Settings`] out.
//!
//! Parsing happens in two layers (as zincati and ntpd-rs do): `raw` mirrors the file with every
//! key optional and unknown keys rejected; `validate` turns it into [`Settings`] with defaults
//! applied and cross-field rules checked, collecting every problem instead of stopping at the
//! first, so `enipeer check` can list them all at once.

mod check;
mod document;
pub mod keyfile;
pub mod keys;
pub mod raw;
mod reload;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use humantime::format_duration;

use crate::ids::{EniId, InstanceId, NodeName};

pub use check::{
    CheckHost, CheckSettings, ExecProbe, HttpProbe, ProbeSpec, StatusRange, TcpProbe,
    DEFAULT_HTTP_PORT, MAX_CHECKS,
};
pub use reload::live_changes;
pub use validate::check_log_filter;

/// Default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/enipeer/enipeer.toml";

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/enipeer/control.sock";

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
    pub metrics: MetricsSettings,
    pub log: LogSettings,
    pub stop: StopSettings,
    /// `[[check]]` tables in file order; empty when none are configured (takeover is then
    /// decided by heartbeats alone).
    pub checks: Vec<CheckSettings>,
    /// Test-only backends; `None` in every real deployment.
    pub testing: Option<TestingSettings>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    /// Unique within the group; carried in heartbeats and used as the final tie-breaker.
    pub name: NodeName,
    /// 1..=254, higher wins elections (and, with preempt, takes over from a lower master).
    pub priority: u8,
    /// Overrides the instance id from instance metadata.
    pub instance_id: Option<InstanceId>,
    /// Where state that outlives a restart is kept (maintenance mode); the unit's
    /// `StateDirectory=` creates the default.
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerSettings {
    pub name: NodeName,
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
    /// Device index the ENI is attached at (>= 1; 0 is the primary interface): the first of
    /// `device_indexes`, the one the route table's default follows.
    pub device_index: u32,
    /// The indexes a claim tries in order: after a forced detach AWS may refuse the old index on
    /// that instance until it is stopped and started.
    pub device_indexes: Vec<u32>,
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
    /// The key being rotated out: accepted on receipt, never used to sign (see README, key
    /// rotation). Checked like `key_file`.
    pub previous_key_file: Option<PathBuf>,
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
    /// How often a claim or release looks at an attachment in transition, for its first seconds
    /// (then it backs off).
    pub poll_interval: Duration,
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
    /// Run on events that are not role changes (peer lost or back, hold-down, fault, ...), with
    /// `ENIPEER_EVENT` and details; rate-limited.
    pub on_event: Vec<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlSettings {
    pub socket: PathBuf,
    /// When set the socket is mode 0660 and owned by this group; otherwise 0600 root-only.
    pub group: Option<String>,
}

/// The Prometheus endpoint (`[metrics]`); off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Where `GET /metrics` is served. Loopback unless the operator chooses otherwise.
    pub listen: Option<std::net::SocketAddr>,
}

/// What the daemon logs (`[log]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A tracing `EnvFilter` directive, checked when the file is validated.
    pub level: String,
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

/// sysexits(3) EX_CANTCREAT: `keygen` could not create the key file.
const EX_CANTCREAT: i32 = 73;

/// One thing wrong with the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key as written in the file (`heartbeat.dead-interval`, `peer[1].addresses[0]`);
    /// empty for file-wide problems such as a syntax error.
    pub key: String,
    /// 1-based line in the file, when the problem can be pinned to one.
    pub line: Option<usize>,
    /// What is wrong and what is expected, quoting the bad value.
    pub message: String,
}

/// A config file that cannot be used: every problem found, or why it could not be read.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
    /// Set when the file itself could not be read; `problems` is then empty.
    #[source]
    pub io: Option<std::io::Error>,
}

impl ConfigError {
    fn new(origin: &Path, problems: Vec<Problem>) -> Self {
        Self {
            path: origin.to_owned(),
            problems,
            io: None,
        }
    }

    /// Number of problems, counting an unreadable file as one.
    pub fn count(&self) -> usize {
        self.problems.len() + usize::from(self.io.is_some())
    }

    /// Short machine label for logs.
    pub fn kind(&self) -> &'static str {
        if self.io.is_some() {
            "unreadable"
        } else {
            "invalid"
        }
    }

    /// One line per problem, `FILE:LINE: KEY: MESSAGE`, the format editors and CI logs link.
    pub fn lines(&self) -> Vec<String> {
        let path = self.path.display();
        let mut out = Vec::with_capacity(self.count());
        if let Some(e) = &self.io {
            out.push(format!("{path}: cannot read the config file: {e}"));
        }
        for p in &self.problems {
            let mut line = format!("{path}:");
            if let Some(n) = p.line {
                line.push_str(&format!("{n}:"));
            }
            if !p.key.is_empty() {
                line.push_str(&format!(" {}:", p.key));
            }
            line.push_str(&format!(" {}", p.message));
            out.push(line);
        }
        out
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

/// Parses and validates config text; touches no file (the key file is not checked).
pub fn parse(text: &str, origin: &Path) -> Result<Settings, ConfigError> {
    parse_inner(text, origin, false)
}

/// Reads, parses and validates the config file, then checks the key file it names (exists, a
/// regular file, owner-only permissions, a valid key), reporting every problem at once.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        problems: Vec::new(),
        io: Some(e),
    })?;
    parse_inner(&text, path, true)
}

fn parse_inner(text: &str, origin: &Path, check_key: bool) -> Result<Settings, ConfigError> {
    let doc = document::Document::parse(text).map_err(|p| ConfigError::new(origin, vec![p]))?;
    let sections = doc.sections();
    let validated = validate::validate(&sections.raw, &sections.failed);
    let mut problems = sections.problems;
    problems.extend(validated.problems.into_iter().filter(|p| {
        !sections.stripped.iter().any(|s| {
            p.key == *s
                || p.key
                    .strip_prefix(s.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    }));
    if check_key {
        let files = [
            ("auth.key-file", validated.key_file.as_ref()),
            (
                "auth.previous-key-file",
                validated.previous_key_file.as_ref(),
            ),
        ];
        for (key, file) in files {
            if let Some(Err(e)) = file.map(|f| keyfile::read_key(f)) {
                problems.push(Problem {
                    key: key.to_owned(),
                    line: None,
                    message: e.to_string(),
                });
            }
        }
        // Two different files holding the same key are a rotation that was never started: say
        // so, since the operator believes the previous key is the old one.
        if let (Some(cur), Some(prev)) = (&validated.key_file, &validated.previous_key_file) {
            if let (Ok(a), Ok(b)) = (keyfile::read_key(cur), keyfile::read_key(prev)) {
                if a == b {
                    problems.push(Problem {
                        key: "auth.previous-key-file".to_owned(),
                        line: None,
                        message: "holds the same key as auth.key-file; install the new key as \
                                  key-file and keep the old one here"
                            .to_owned(),
                    });
                }
            }
        }
    }
    for p in &mut problems {
        if p.line.is_none() && !p.key.is_empty() {
            p.line = doc.line_of_key(&p.key);
        }
    }
    // Problems come out grouped by how they were found; the reader wants file order.
    // Problems without a line (missing tables, the key file) follow in table order.
    problems.sort_by_key(|p| {
        let table = p.key.split(['.', '[']).next().unwrap_or_default();
        let rank = raw::SECTIONS
            .iter()
            .position(|s| *s == table)
            .unwrap_or(raw::SECTIONS.len());
        (p.line.unwrap_or(usize::MAX), rank)
    });
    match validated.settings {
        Some(settings) if problems.is_empty() => {
            tracing::debug!(path = %origin.display(), node = %settings.node.name, "config valid");
            Ok(settings)
        }
        _ => Err(ConfigError::new(origin, problems)),
    }
}

impl Settings {
    /// A one-screen human summary, printed by `enipeer check`.
    // Over 80 lines on purpose: a flat list of one line per table, read top to bottom like the
    // output it prints; splitting it would only scatter that list.
    pub fn summary(&self) -> String {
        fn d(x: Duration) -> String {
            format_duration(x).to_string()
        }
        fn addrs(a: &[SocketAddr]) -> String {
            a.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
        let mut s = String::new();
        let mut row = |label: &str, value: String| {
            s.push_str(&format!("{label:<11}{value}\n"));
        };
        let n = &self.node;
        row(
            "node",
            format!(
                "{} (priority {}, instance {})",
                n.name,
                n.priority,
                n.instance_id
                    .as_ref()
                    .map_or("from instance metadata".to_owned(), |i| i.to_string())
            ),
        );
        for p in &self.peers {
            let id = p
                .instance_id
                .as_ref()
                .map_or(String::new(), |i| format!(" ({i})"));
            row("peer", format!("{}{id}: {}", p.name, addrs(&p.addresses)));
        }
        let g = &self.group;
        row(
            "group",
            format!(
                "{}: ENI {} at device index {}, preempt {}",
                g.id,
                g.eni,
                g.device_index,
                if g.preempt {
                    format!("on after {}", d(g.preempt_delay))
                } else {
                    "off".to_owned()
                }
            ),
        );
        let h = &self.heartbeat;
        row(
            "heartbeat",
            format!(
                "bind {}, every {}, peer dead after {}, max clock skew {}",
                h.bind,
                d(h.interval),
                d(h.dead_interval),
                d(h.max_clock_skew)
            ),
        );
        row(
            "hold-down",
            format!("{} doubling up to {}", d(g.hold_down), d(g.hold_down_max)),
        );
        let mut keys = self.auth.key_file.display().to_string();
        if let Some(prev) = &self.auth.previous_key_file {
            keys.push_str(&format!(
                " (also accepting {} during a rotation)",
                prev.display()
            ));
        }
        row("key file", keys);
        let a = &self.aws;
        row(
            "aws",
            format!(
                "region {}{}, operation timeout {}, force detach after {}, verify every {}, \
                 poll transitions every {}",
                a.region.as_deref().unwrap_or("from instance metadata"),
                a.endpoint_url
                    .as_ref()
                    .map_or(String::new(), |u| format!(", endpoint {u}")),
                d(a.operation_timeout),
                d(a.force_detach_grace),
                d(a.verify_interval),
                d(a.poll_interval)
            ),
        );
        let net = &self.network;
        row(
            "network",
            format!(
                "interface {}, table {}, rule priority {}, rp_filter {}, mtu {}, repair {}",
                net.interface_name.as_deref().unwrap_or("(kernel name)"),
                net.route_table,
                net.rule_priority,
                net.rp_filter
                    .map_or("unchanged".to_owned(), |v| v.to_string()),
                net.mtu.map_or("unchanged".to_owned(), |v| v.to_string()),
                if net.repair {
                    format!("every {}", d(net.reconcile_interval))
                } else {
                    "off".to_owned()
                }
            ),
        );
        let k = &self.hooks;
        row(
            "hooks",
            format!(
                "on-master {}, on-backup {}, on-fault {}, on-stop {} (timeout {})",
                k.on_master.len(),
                k.on_backup.len(),
                k.on_fault.len(),
                k.on_stop.len(),
                d(k.timeout)
            ),
        );
        let c = &self.control;
        row(
            "control",
            format!(
                "{} ({})",
                c.socket.display(),
                c.group
                    .as_ref()
                    .map_or("root only".to_owned(), |g| format!("group {g}"))
            ),
        );
        row(
            "metrics",
            match self.metrics.listen {
                Some(a) => format!("http://{a}/metrics"),
                None => "off".to_owned(),
            },
        );
        row("log level", self.log.level.clone());
        let st = &self.stop;
        row(
            "stop",
            format!(
                "{}, restart grace {}, handover timeout {}",
                match st.mode {
                    StopMode::Auto => "auto",
                    StopMode::Hold => "hold",
                    StopMode::Handover => "handover",
                },
                d(st.restart_grace),
                d(st.handover_timeout)
            ),
        );
        for check in &self.checks {
            row("check", check.describe());
        }
        if let Some(t) = &self.testing {
            row(
                "testing",
                format!(
                    "fake cloud {}, fake net {}",
                    t.fake_cloud.display(),
                    t.fake_net
                ),
            );
        }
        s
    }
}

/// `enipeer check`: prints every problem (stderr) or a summary (stdout); returns the exit code
/// and, when valid, the settings (for `--preflight`, which the CLI runs against the cloud).
pub fn check_command(path: &Path) -> (i32, Option<Settings>) {
    match load(path) {
        Ok(settings) => {
            print!("{}", settings.summary());
            if settings.checks.is_empty() {
                // Valid, but worth saying: without a check a silent peer is presumed dead.
                eprintln!(
                    "enipeer: warning: no [[check]] configured: takeover is uncorroborated (heartbeat silence alone decides it)"
                );
            }
            (crate::exit::OK, Some(settings))
        }
        Err(err) => {
            for line in err.lines() {
                eprintln!("{line}");
            }
            eprintln!("enipeer: {} problem(s) in {}", err.count(), path.display());
            (crate::exit::CONFIG, None)
        }
    }
}

/// `enipeer keygen`: writes a new random key with mode 0600; returns the exit code.
pub fn keygen_command(path: &Path, force: bool) -> i32 {
    match keyfile::write_new_key(path, force) {
        Ok(()) => {
            println!("{}", path.display());
            crate::exit::OK
        }
        Err(e) => {
            eprintln!("enipeer: {e}");
            EX_CANTCREAT
        }
    }
}
