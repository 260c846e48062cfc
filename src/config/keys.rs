//! The reference of every config key: its table, type, default, range and meaning, as data.
//! `enipeer.toml(5)` is rendered from [`KEYS`] (see `cli::assets`), and the unit tests in
//! `keys/tests.rs` hold it to the truth: each documented default is what `validate` applies when
//! the key is left out, each documented range is what it accepts and rejects, and the keys are
//! exactly those the parser knows and the example file (`conf/enipeer.toml`) shows.
//!
//! Validation keeps its own literals (it needs typed values and cross-field rules); this table
//! does not drive it, it is checked against it, so documentation cannot drift from behaviour.
//! Doc texts use backticks for names and values, which the man page sets in bold.

/// One top-level table of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableDoc {
    /// The table's name: `node`, `peer`, ...
    pub name: &'static str,
    /// An array of tables (`[[peer]]`, `[[check]]`) rather than a single table.
    pub array: bool,
    /// Whether the file must have it.
    pub required: bool,
    pub doc: &'static str,
}

impl TableDoc {
    /// The header as written in the file: `[node]` or `[[peer]]`.
    pub fn header(&self) -> String {
        if self.array {
            format!("[[{}]]", self.name)
        } else {
            format!("[{}]", self.name)
        }
    }
}

/// What a key is when it is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDefault {
    /// The file must give it.
    Required,
    /// This TOML value (e.g. `100`, `"30s"`, `false`, `[]`); writing it changes nothing.
    Value(&'static str),
    /// Not set, which means what the text says (e.g. "read from instance metadata").
    Unset(&'static str),
    /// Computed from other keys or run-time facts, as the text says.
    Derived(&'static str),
}

/// Which values a key accepts, beyond its TOML type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// Any value of the type; the doc says what it must look like, if anything.
    Any,
    /// An integer in `lo..=hi`.
    Int(i64, i64),
    /// A duration of at least this much (a TOML duration string, e.g. `"50ms"`).
    AtLeast(&'static str),
    /// A duration longer than zero.
    NonZero,
    /// One of these strings.
    OneOf(&'static [&'static str]),
}

/// One key of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    /// The table's name, as in [`TableDoc::name`].
    pub table: &'static str,
    pub key: &'static str,
    /// The value's type as an operator reads it: "integer", "duration", "argv list", ...
    pub kind: &'static str,
    pub default: KeyDefault,
    pub range: Range,
    pub doc: &'static str,
}

impl KeyDoc {
    /// `table.key`, as `enipeer check` names the key in its messages (`peer[0].name` there).
    pub fn path(&self) -> String {
        format!("{}.{}", self.table, self.key)
    }
}

impl Range {
    /// The range as one phrase, or `None` when anything of the type goes.
    pub fn describe(&self) -> Option<String> {
        match self {
            Range::Any => None,
            Range::Int(lo, hi) => Some(format!("{lo}..={hi}")),
            Range::AtLeast(min) => Some(format!("at least {min}")),
            Range::NonZero => Some("longer than zero".to_owned()),
            Range::OneOf(choices) => Some(format!(
                "one of {}",
                choices
                    .iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// The tables in the order the example file documents them. `[testing]` (fake backends for the
/// test suite) is left out on purpose: it is not for deployments.
pub const TABLES: &[TableDoc] = &[
    TableDoc {
        name: "node",
        array: false,
        required: true,
        doc: "This node.",
    },
    TableDoc {
        name: "peer",
        array: true,
        required: true,
        doc: "One table per other node of the group (usually exactly one).",
    },
    TableDoc {
        name: "group",
        array: false,
        required: true,
        doc: "What both nodes share: the group id, the ENI that moves, and when it may move.",
    },
    TableDoc {
        name: "heartbeat",
        array: false,
        required: true,
        doc: "The authenticated UDP heartbeats between the nodes.",
    },
    TableDoc {
        name: "auth",
        array: false,
        required: false,
        doc: "The shared key that authenticates heartbeats.",
    },
    TableDoc {
        name: "aws",
        array: false,
        required: false,
        doc: "The EC2 API.",
    },
    TableDoc {
        name: "network",
        array: false,
        required: false,
        doc: "How the master configures the ENI on its host (addresses, policy routing) over netlink.",
    },
    TableDoc {
        name: "hooks",
        array: false,
        required: false,
        doc: "Commands run on role changes and other events. Each command is an argv array, run \
              without a shell, one after the other.",
    },
    TableDoc {
        name: "control",
        array: false,
        required: false,
        doc: "The Unix socket that `enipeer role`, `yield` and `maintenance` talk to.",
    },
    TableDoc {
        name: "metrics",
        array: false,
        required: false,
        doc: "The Prometheus endpoint (`GET /metrics`); off unless `listen` is set.",
    },
    TableDoc {
        name: "log",
        array: false,
        required: false,
        doc: "What the daemon logs.",
    },
    TableDoc {
        name: "stop",
        array: false,
        required: false,
        doc: "What a stopping master does with the ENI.",
    },
    TableDoc {
        name: "check",
        array: true,
        required: false,
        doc: "Service health checks, at most 16, run off the heartbeat loop: on the master for a \
              check on the ENI's address (the default host), on every node otherwise. A check \
              that fails `fall` times in a row marks the node unhealthy; `rise` passes in a row \
              make it healthy again. With at least one check, a backup also probes the service \
              through the ENI's address and takes over only when heartbeats are silent and that \
              probe fails; without any check, heartbeat silence alone decides.",
    },
];

const DURATION: &str = "duration";
const ARGV_LIST: &str = "array of argv arrays";

/// Every key of every documented table, in the order of the example file.
pub const KEYS: &[KeyDoc] = &[
    // [node]
    KeyDoc {
        table: "node",
        key: "name",
        kind: "string",
        default: KeyDefault::Required,
        range: Range::Any,
        doc: "This node's name: unique within the group, at most 32 characters from \
              `[A-Za-z0-9._-]`. Carried in every heartbeat; breaks ties between equal priorities.",
    },
    KeyDoc {
        table: "node",
        key: "priority",
        kind: "integer",
        default: KeyDefault::Value("100"),
        range: Range::Int(1, 254),
        doc: "The live node with the higher priority becomes master.",
    },
    KeyDoc {
        table: "node",
        key: "instance-id",
        kind: "string",
        default: KeyDefault::Unset("read from instance metadata"),
        range: Range::Any,
        doc: "This instance's id, e.g. `\"i-0123456789abcdef0\"`. Set it only where instance \
              metadata is unreachable.",
    },
    KeyDoc {
        table: "node",
        key: "state-dir",
        kind: "path",
        default: KeyDefault::Value("\"/var/lib/enipeer\""),
        range: Range::Any,
        doc: "An absolute path where state that must survive a restart is kept (maintenance \
              mode). The systemd unit's `StateDirectory=` creates the default.",
    },
    // [[peer]]
    KeyDoc {
        table: "peer",
        key: "name",
        kind: "string",
        default: KeyDefault::Required,
        range: Range::Any,
        doc: "The peer's `node.name`.",
    },
    KeyDoc {
        table: "peer",
        key: "addresses",
        kind: "array of strings",
        default: KeyDefault::Required,
        range: Range::Any,
        doc: "Where heartbeats are sent: `\"IP\"` or `\"IP:port\"` (IPv6 as `\"[addr]:port\"`); \
              without a port, `heartbeat.port` is used. List a second address on another subnet \
              if there is one, so a single broken path does not look like a dead peer.",
    },
    KeyDoc {
        table: "peer",
        key: "instance-id",
        kind: "string",
        default: KeyDefault::Unset("learnt from heartbeats"),
        range: Range::Any,
        doc: "The peer's instance id; lets `enipeer check --preflight` verify the peer.",
    },
    // [group]
    KeyDoc {
        table: "group",
        key: "id",
        kind: "integer",
        default: KeyDefault::Required,
        range: Range::Int(0, u32::MAX as i64),
        doc: "The same on both nodes. Keeps two groups on one network apart: heartbeats with \
              another group id are ignored.",
    },
    KeyDoc {
        table: "group",
        key: "eni",
        kind: "string",
        default: KeyDefault::Required,
        range: Range::Any,
        doc: "The secondary network interface that moves to the master, e.g. \
              `\"eni-0123456789abcdef0\"`. It must be in the availability zone of both instances.",
    },
    KeyDoc {
        table: "group",
        key: "device-index",
        kind: "integer",
        default: KeyDefault::Value("1"),
        range: Range::Int(1, 31),
        doc: "Device index the ENI is attached at (0 is the primary interface).",
    },
    KeyDoc {
        table: "group",
        key: "preempt",
        kind: "boolean",
        default: KeyDefault::Value("false"),
        range: Range::Any,
        doc: "When false, a recovered higher-priority node waits as backup instead of taking the \
              ENI back, which avoids a second interruption. Set it true if the preferred node \
              must serve whenever it can.",
    },
    KeyDoc {
        table: "group",
        key: "preempt-delay",
        kind: DURATION,
        default: KeyDefault::Value("\"30s\""),
        range: Range::Any,
        doc: "With `preempt = true`: how long the higher-priority node must be healthy before it \
              takes over. Longer rides out flapping.",
    },
    KeyDoc {
        table: "group",
        key: "hold-down",
        kind: DURATION,
        default: KeyDefault::Value("\"30s\""),
        range: Range::NonZero,
        doc: "After losing the ENI while master (or losing a race to a peer it cannot hear), wait \
              this long before claiming again; doubles on each repeat up to `hold-down-max`. \
              Under a partition that cuts only heartbeats, the ENI moves at most once per \
              hold-down. At most `hold-down-max`.",
    },
    KeyDoc {
        table: "group",
        key: "hold-down-max",
        kind: DURATION,
        default: KeyDefault::Value("\"10m\""),
        range: Range::NonZero,
        doc: "Upper bound of the doubling hold-down.",
    },
    // [heartbeat]
    KeyDoc {
        table: "heartbeat",
        key: "bind",
        kind: "string",
        default: KeyDefault::Required,
        range: Range::Any,
        doc: "Local address heartbeats are sent from and received on: `\"IP\"` or `\"IP:port\"`. \
              A port given here is used instead of `heartbeat.port`.",
    },
    KeyDoc {
        table: "heartbeat",
        key: "port",
        kind: "integer",
        default: KeyDefault::Value("7460"),
        range: Range::Int(1, 65535),
        doc: "UDP port. Both nodes must agree; open it in the security group between them.",
    },
    KeyDoc {
        table: "heartbeat",
        key: "interval",
        kind: DURATION,
        default: KeyDefault::Value("\"200ms\""),
        range: Range::AtLeast("50ms"),
        doc: "How often heartbeats are sent.",
    },
    KeyDoc {
        table: "heartbeat",
        key: "dead-interval",
        kind: DURATION,
        default: KeyDefault::Value("\"1s\""),
        range: Range::AtLeast("250ms"),
        doc: "The peer is declared dead after this long without a valid heartbeat; must be more \
              than 2 x `interval`. Shorter fails over faster; longer tolerates packet loss.",
    },
    KeyDoc {
        table: "heartbeat",
        key: "max-clock-skew",
        kind: DURATION,
        default: KeyDefault::Value("\"30s\""),
        range: Range::AtLeast("1s"),
        doc: "Heartbeats stamped further than this from our clock are rejected as replays \
              (`stale` in `enipeer role`). Raise it only if the instances' clocks are not \
              synchronised.",
    },
    // [auth]
    KeyDoc {
        table: "auth",
        key: "key-file",
        kind: "path",
        default: KeyDefault::Value("\"/etc/enipeer/peer.key\""),
        range: Range::Any,
        doc: "The shared secret; the same file on both nodes, mode 0600. Create it with \
              `enipeer keygen` and copy it to the peer.",
    },
    KeyDoc {
        table: "auth",
        key: "previous-key-file",
        kind: "path",
        default: KeyDefault::Unset("no previous key"),
        range: Range::Any,
        doc: "During a key rotation only: the key being replaced, still accepted but never used \
              to sign (same checks as `key-file`). Remove it once no node uses the old key.",
    },
    // [aws]
    KeyDoc {
        table: "aws",
        key: "region",
        kind: "string",
        default: KeyDefault::Unset("the instance's own region, from instance metadata"),
        range: Range::Any,
        doc: "The EC2 region, e.g. `\"us-east-1\"`.",
    },
    KeyDoc {
        table: "aws",
        key: "endpoint-url",
        kind: "string",
        default: KeyDefault::Unset("the region's public EC2 endpoint"),
        range: Range::Any,
        doc: "An `https://` (or `http://`) URL for EC2, e.g. a VPC interface endpoint.",
    },
    KeyDoc {
        table: "aws",
        key: "operation-timeout",
        kind: DURATION,
        default: KeyDefault::Value("\"10s\""),
        range: Range::NonZero,
        doc: "Deadline for one cloud operation (claim, release, describe), retries included.",
    },
    KeyDoc {
        table: "aws",
        key: "force-detach-grace",
        kind: DURATION,
        default: KeyDefault::Value("\"2s\""),
        range: Range::Any,
        doc: "How long a normal detach from a live holder may take before it is forced; must be \
              shorter than `operation-timeout`.",
    },
    KeyDoc {
        table: "aws",
        key: "verify-interval",
        kind: DURATION,
        default: KeyDefault::Value("\"5s\""),
        range: Range::NonZero,
        doc: "How often the master re-reads the attachment to confirm it still holds the ENI. \
              Shorter notices a lost ENI sooner at the cost of more API calls.",
    },
    KeyDoc {
        table: "aws",
        key: "poll-interval",
        kind: DURATION,
        default: KeyDefault::Value("\"100ms\""),
        range: Range::AtLeast("10ms"),
        doc: "How often a claim looks at the attachment while EC2 shows it `attaching` or \
              `detaching` (at most 5s), for the first 3 s of each; then it backs off to once a \
              second. `operation-timeout` bounds the number of calls a failover makes.",
    },
    // [network]
    KeyDoc {
        table: "network",
        key: "interface-name",
        kind: "string",
        default: KeyDefault::Unset("keep the kernel's name"),
        range: Range::Any,
        doc: "Rename the interface once it appears (at most 15 characters, no `/` or \
              whitespace), so firewall rules and services can use a stable name.",
    },
    KeyDoc {
        table: "network",
        key: "route-table",
        kind: "integer",
        default: KeyDefault::Derived("10000 + `group.device-index`"),
        range: Range::Int(1, u32::MAX as i64),
        doc: "Policy routing table for traffic sourced from the ENI's addresses; 253, 254 and \
              255 are reserved. Change it only if the number is already used on the host.",
    },
    KeyDoc {
        table: "network",
        key: "rule-priority",
        kind: "integer",
        default: KeyDefault::Value("1000"),
        range: Range::Int(1, 32765),
        doc: "Priority of the policy rule that selects `route-table`.",
    },
    KeyDoc {
        table: "network",
        key: "rp-filter",
        kind: "integer",
        default: KeyDefault::Value("2"),
        range: Range::Int(0, 2),
        doc: "Reverse-path filter on the ENI interface: 0 off, 1 strict, 2 loose. Strict \
              filtering drops replies on a second interface, so loose is the safe choice.",
    },
    KeyDoc {
        table: "network",
        key: "mtu",
        kind: "integer",
        default: KeyDefault::Unset("leave what the VPC gives (9001 inside a VPC)"),
        range: Range::Int(576, 9001),
        doc: "The interface MTU.",
    },
    KeyDoc {
        table: "network",
        key: "repair",
        kind: "boolean",
        default: KeyDefault::Value("true"),
        range: Range::Any,
        doc: "While master, put back rules, routes and addresses that something else removed. \
              Turn it off only if another tool manages the interface.",
    },
    KeyDoc {
        table: "network",
        key: "reconcile-interval",
        kind: DURATION,
        default: KeyDefault::Value("\"30s\""),
        range: Range::NonZero,
        doc: "How often the master compares the host network with what it should be.",
    },
    KeyDoc {
        table: "network",
        key: "link-timeout",
        kind: DURATION,
        default: KeyDefault::Value("\"15s\""),
        range: Range::NonZero,
        doc: "How long to wait for the interface to appear after the ENI is attached.",
    },
    // [hooks]
    KeyDoc {
        table: "hooks",
        key: "timeout",
        kind: DURATION,
        default: KeyDefault::Value("\"30s\""),
        range: Range::NonZero,
        doc: "Each hook command is killed after this long.",
    },
    KeyDoc {
        table: "hooks",
        key: "on-master",
        kind: ARGV_LIST,
        default: KeyDefault::Value("[]"),
        range: Range::Any,
        doc: "Run when this node becomes master, once the host network is applied (a service \
              bound to the ENI's address can start), e.g. \
              `[[\"/usr/sbin/nginx\", \"-s\", \"reload\"]]`. Every hook gets \
              `ENIPEER_TRANSITION`, `ENIPEER_NODE`, `ENIPEER_ROLE`, `ENIPEER_REASON`, \
              `ENIPEER_ENI`, `ENIPEER_INTERFACE`, `ENIPEER_ADDRESSES` and \
              `ENIPEER_ADDRESSES_V6`.",
    },
    KeyDoc {
        table: "hooks",
        key: "on-backup",
        kind: ARGV_LIST,
        default: KeyDefault::Value("[]"),
        range: Range::Any,
        doc: "Run when this node becomes backup.",
    },
    KeyDoc {
        table: "hooks",
        key: "on-fault",
        kind: ARGV_LIST,
        default: KeyDefault::Value("[]"),
        range: Range::Any,
        doc: "Run when this node enters fault.",
    },
    KeyDoc {
        table: "hooks",
        key: "on-stop",
        kind: ARGV_LIST,
        default: KeyDefault::Value("[]"),
        range: Range::Any,
        doc: "Run when the daemon stops.",
    },
    KeyDoc {
        table: "hooks",
        key: "on-event",
        kind: ARGV_LIST,
        default: KeyDefault::Value("[]"),
        range: Range::Any,
        doc: "Run on events that are not role changes (peer-lost, peer-back, hold-down-started, \
              handover-failed, fault-entered, cloud-unreachable, health-changed, degraded, ...). \
              The command gets `ENIPEER_EVENT`, `ENIPEER_REASON` and `ENIPEER_EVENT_<DETAIL>` \
              variables; at most 10 runs a minute.",
    },
    // [control]
    KeyDoc {
        table: "control",
        key: "socket",
        kind: "path",
        default: KeyDefault::Value("\"/run/enipeer/control.sock\""),
        range: Range::Any,
        doc: "An absolute path: the control socket.",
    },
    KeyDoc {
        table: "control",
        key: "group",
        kind: "string",
        default: KeyDefault::Unset("root only (mode 0600)"),
        range: Range::Any,
        doc: "Let members of this group use the socket (mode 0660).",
    },
    // [metrics]
    KeyDoc {
        table: "metrics",
        key: "listen",
        kind: "socket address",
        default: KeyDefault::Unset("metrics off"),
        range: Range::Any,
        doc: "Where to serve Prometheus metrics, e.g. \"127.0.0.1:9460\"; keep it on loopback \
              unless a scraper must reach it over the network.",
    },
    // [log]
    KeyDoc {
        table: "log",
        key: "level",
        kind: "string",
        default: KeyDefault::Value("\"info\""),
        range: Range::Any,
        doc: "A tracing filter: `error`, `warn`, `info`, `debug` or `trace`, or per module such \
              as `info,enipeer::cloud=debug`. Changes on reload. The environment variable \
              ENIPEER_LOG, when set, overrides it.",
    },
    // [stop]
    KeyDoc {
        table: "stop",
        key: "mode",
        kind: "string",
        default: KeyDefault::Value("\"auto\""),
        range: Range::OneOf(&["auto", "hold", "handover"]),
        doc: "`auto` hands over on system shutdown and keeps the ENI across a plain daemon \
              restart; `hold` always keeps it; `handover` always hands it to a live peer.",
    },
    KeyDoc {
        table: "stop",
        key: "restart-grace",
        kind: DURATION,
        default: KeyDefault::Value("\"30s\""),
        range: Range::NonZero,
        doc: "A restarting master promises to be back within this long; the peer waits before \
              taking over.",
    },
    KeyDoc {
        table: "stop",
        key: "handover-timeout",
        kind: DURATION,
        default: KeyDefault::Value("\"20s\""),
        range: Range::NonZero,
        doc: "How long a stopping master waits for the peer to take over.",
    },
    // [[check]]
    KeyDoc {
        table: "check",
        key: "kind",
        kind: "string",
        default: KeyDefault::Required,
        range: Range::OneOf(&["http", "tcp", "exec"]),
        doc: "`http`: a GET that must answer with a status in `status`; `tcp`: a connect; \
              `exec`: a program run without a shell, exit status 0 passes.",
    },
    KeyDoc {
        table: "check",
        key: "name",
        kind: "string",
        default: KeyDefault::Derived(
            "from the kind, e.g. `http-80`, `tcp-5432`, `exec-pg_isready`",
        ),
        range: Range::Any,
        doc: "Shown in logs and `enipeer role`; unique among the checks, at most 32 characters \
              from `[A-Za-z0-9._-]`.",
    },
    KeyDoc {
        table: "check",
        key: "host",
        kind: "string",
        default: KeyDefault::Derived(
            "the ENI's primary private address, learnt from EC2 at run time",
        ),
        range: Range::Any,
        doc: "http and tcp: the IP address to connect to (names are not resolved).",
    },
    KeyDoc {
        table: "check",
        key: "port",
        kind: "integer",
        default: KeyDefault::Derived("80 for http; tcp requires it"),
        range: Range::Int(1, 65535),
        doc: "http and tcp: the port.",
    },
    KeyDoc {
        table: "check",
        key: "path",
        kind: "string",
        default: KeyDefault::Value("\"/\""),
        range: Range::Any,
        doc: "http: the request path, starting with `/`.",
    },
    KeyDoc {
        table: "check",
        key: "status",
        kind: "string, pair or integer",
        default: KeyDefault::Value("\"200-399\""),
        range: Range::Any,
        doc: "http: accepted status codes, `\"200-299\"`, `[200, 299]` or a single `200`. The \
              default accepts redirects: they still mean the service answers.",
    },
    KeyDoc {
        table: "check",
        key: "body-contains",
        kind: "string",
        default: KeyDefault::Unset("any body"),
        range: Range::Any,
        doc: "http: the answer's body (its first 64 KiB) must contain this text.",
    },
    KeyDoc {
        table: "check",
        key: "command",
        kind: "argv array",
        default: KeyDefault::Derived("exec requires it"),
        range: Range::Any,
        doc: "exec: the program and its arguments, run without a shell. It gets \
              `ENIPEER_CHECK_NAME` and `ENIPEER_CHECK_ADDRESS`, never `NOTIFY_SOCKET`.",
    },
    KeyDoc {
        table: "check",
        key: "interval",
        kind: DURATION,
        default: KeyDefault::Value("\"1s\""),
        range: Range::AtLeast("100ms"),
        doc: "Time between two probes.",
    },
    KeyDoc {
        table: "check",
        key: "timeout",
        kind: DURATION,
        default: KeyDefault::Derived("\"500ms\", or half the interval if that is shorter"),
        range: Range::NonZero,
        doc: "Deadline of one probe, connect and answer included; must be shorter than \
              `interval`. An exec program still running then is killed.",
    },
    KeyDoc {
        table: "check",
        key: "rise",
        kind: "integer",
        default: KeyDefault::Value("2"),
        range: Range::Int(1, 100),
        doc: "Passes in a row that make a failed check healthy again.",
    },
    KeyDoc {
        table: "check",
        key: "fall",
        kind: "integer",
        default: KeyDefault::Value("2"),
        range: Range::Int(1, 100),
        doc: "Failures in a row that make a healthy check failed.",
    },
];

#[cfg(test)]
mod tests;
