//! `[[check]]` tables: the service health checks, validated into [`CheckSettings`].
//!
//! A check says *what* to probe and *how often*; *where* is partly a run-time fact: the default
//! host is the ENI's primary private address, which only the cloud knows, so the typed settings
//! carry [`CheckHost::EniAddress`] and the daemon resolves it once it has described the ENI.
//! The probes themselves run in [`crate::health`].

use std::net::IpAddr;
use std::time::Duration;

use super::raw::{RawCheck, RawStatus};
use super::validate::Checker;

/// At most this many checks: each is a task and a probe per interval, on both nodes.
pub const MAX_CHECKS: usize = 16;
/// Default HTTP port (the seed service, nginx, listens there).
pub const DEFAULT_HTTP_PORT: u16 = 80;
/// Shortest interval: probes more often than this are load, not information.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 2;
/// Longest `path` and `body-contains`: both are written by the operator, and a needle longer
/// than this could hardly be found in the bounded part of the answer the probe reads.
const MAX_TEXT_LEN: usize = 1024;
const MAX_NAME_LEN: usize = 32;

/// One validated `[[check]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSettings {
    /// Unique among the checks; given or derived from the kind and target (`http-80`,
    /// `tcp-5432`, `exec-pgcheck`). Used in logs and in `role`.
    pub name: String,
    pub probe: ProbeSpec,
    /// Time between the starts of two probes (default 1 s, at least 100 ms).
    pub interval: Duration,
    /// Deadline of one probe, connect and answer included; always shorter than `interval`, so
    /// probes of one check never overlap (default 500 ms, or half the interval if shorter).
    pub timeout: Duration,
    /// Consecutive passes that make a failed (or not yet judged) check healthy (default 2).
    pub rise: u32,
    /// Consecutive failures that make a healthy (or not yet judged) check failed (default 2).
    pub fall: u32,
}

impl CheckSettings {
    /// One line for `enipeer check` and logs: what is probed, how often, how it is judged.
    pub fn describe(&self) -> String {
        let d = |x: Duration| humantime::format_duration(x).to_string();
        let what = match &self.probe {
            ProbeSpec::Http(h) => {
                let body = h
                    .body_contains
                    .as_ref()
                    .map_or(String::new(), |b| format!(" containing {b:?}"));
                format!(
                    "GET http://{}{} status {}{body}",
                    host_port(h.host, h.port),
                    h.path,
                    h.status
                )
            }
            ProbeSpec::Tcp(t) => format!("connect {}", host_port(t.host, t.port)),
            ProbeSpec::Exec(e) => format!("run {:?}", e.command),
        };
        format!(
            "{}: {what}, every {}, timeout {}, rise {}, fall {}",
            self.name,
            d(self.interval),
            d(self.timeout),
            self.rise,
            self.fall
        )
    }
}

fn host_port(host: CheckHost, port: u16) -> String {
    match host {
        CheckHost::EniAddress => format!("<ENI address>:{port}"),
        CheckHost::Ip(ip) => std::net::SocketAddr::new(ip, port).to_string(),
    }
}

/// Where an http or tcp probe connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckHost {
    /// The ENI's primary private address (the default): learnt from the cloud at run time.
    EniAddress,
    /// A fixed address given as `host` (e.g. 127.0.0.1 for a service bound to loopback).
    Ip(IpAddr),
}

/// What one check probes.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeSpec {
    Http(HttpProbe),
    Tcp(TcpProbe),
    Exec(ExecProbe),
}

impl ProbeSpec {
    /// The `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeSpec::Http(_) => "http",
            ProbeSpec::Tcp(_) => "tcp",
            ProbeSpec::Exec(_) => "exec",
        }
    }

    /// The configured host of an http or tcp probe; `None` for exec.
    pub fn host(&self) -> Option<CheckHost> {
        match self {
            ProbeSpec::Http(h) => Some(h.host),
            ProbeSpec::Tcp(t) => Some(t.host),
            ProbeSpec::Exec(_) => None,
        }
    }
}

/// `kind = "http"`: a GET whose answer must have a status in `status` and, when set, contain
/// `body_contains`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpProbe {
    pub host: CheckHost,
    /// Default 80.
    pub port: u16,
    /// Request target, starting with '/' (default "/").
    pub path: String,
    /// Default 200-399: a redirect still means the service answers.
    pub status: StatusRange,
    pub body_contains: Option<String>,
}

/// `kind = "tcp"`: a connect that completes within the timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpProbe {
    pub host: CheckHost,
    /// Required: there is no port a tcp check could sensibly assume (an http service is better
    /// checked with kind = "http").
    pub port: u16,
}

/// `kind = "exec"`: a program run without a shell; exit status 0 passes.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecProbe {
    /// argv: the program and its arguments; never empty.
    pub command: Vec<String>,
}

/// An inclusive range of HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub lo: u16,
    pub hi: u16,
}

impl StatusRange {
    pub const DEFAULT: StatusRange = StatusRange { lo: 200, hi: 399 };

    pub fn contains(&self, code: u16) -> bool {
        (self.lo..=self.hi).contains(&code)
    }
}

impl std::fmt::Display for StatusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Tcp,
    Exec,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Tcp => "tcp",
            Kind::Exec => "exec",
        }
    }
}

/// Validates every `[[check]]`; entries with problems are left out (the problems already make
/// the whole file invalid).
pub(super) fn checks(c: &mut Checker, list: &[RawCheck]) -> Vec<CheckSettings> {
    if list.len() > MAX_CHECKS {
        c.push(
            format!("check[{MAX_CHECKS}]"),
            format!("{} checks: expected at most {MAX_CHECKS}", list.len()),
        );
    }
    let mut out: Vec<CheckSettings> = Vec::with_capacity(list.len());
    let mut names: Vec<(String, usize)> = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        let key = format!("check[{i}]");
        let before = c.problems.len();
        let Some(mut check) = check(c, &key, raw) else {
            continue;
        };
        if raw.name.is_none() {
            // A derived name that repeats an earlier one gets the index: two http checks on
            // port 80 with different paths need no names to be told apart.
            if names.iter().any(|(n, _)| *n == check.name) {
                check.name = format!("{}-{i}", check.name);
            }
        } else if let Some((_, j)) = names.iter().find(|(n, _)| *n == check.name) {
            c.push(
                format!("{key}.name"),
                format!(
                    "{:?} is already used by check[{j}]: check names must be unique",
                    check.name
                ),
            );
        }
        names.push((check.name.clone(), i));
        if c.problems.len() == before {
            out.push(check);
        }
    }
    out
}

fn check(c: &mut Checker, key: &str, raw: &RawCheck) -> Option<CheckSettings> {
    let kind = match raw.kind.as_deref() {
        Some("http") => Some(Kind::Http),
        Some("tcp") => Some(Kind::Tcp),
        Some("exec") => Some(Kind::Exec),
        None => {
            c.push(
                format!("{key}.kind"),
                "missing: expected kind = \"http\", \"tcp\" or \"exec\"",
            );
            None
        }
        Some(other) => {
            c.push(
                format!("{key}.kind"),
                format!("{other:?} is not a check kind: expected \"http\", \"tcp\" or \"exec\""),
            );
            None
        }
    };
    let (interval, timeout) = timing(c, key, raw);
    let rise = c.int(&format!("{key}.rise"), raw.rise, DEFAULT_RISE, 1, 100, "");
    let fall = c.int(&format!("{key}.fall"), raw.fall, DEFAULT_FALL, 1, 100, "");
    let explicit_name = raw.name.as_deref().map(|n| name(c, key, n));
    let kind = kind?;
    not_for_kind(c, key, raw, kind);
    let probe = match kind {
        Kind::Http => ProbeSpec::Http(HttpProbe {
            host: host(c, key, raw.host.as_deref()),
            port: c.int(
                &format!("{key}.port"),
                raw.port,
                DEFAULT_HTTP_PORT,
                1,
                65535,
                "",
            ),
            path: path(c, key, raw.path.as_deref()),
            status: status(c, key, raw.status.as_ref()),
            body_contains: body_contains(c, key, raw.body_contains.as_deref()),
        }),
        Kind::Tcp => {
            if raw.port.is_none() {
                c.push(
                    format!("{key}.port"),
                    "missing: a tcp check needs the port to connect to, e.g. port = 5432",
                );
            }
            ProbeSpec::Tcp(TcpProbe {
                host: host(c, key, raw.host.as_deref()),
                port: c.int(&format!("{key}.port"), raw.port, 1, 1, 65535, ""),
            })
        }
        Kind::Exec => ProbeSpec::Exec(ExecProbe {
            command: command(c, key, raw.command.as_deref()),
        }),
    };
    let name = explicit_name.unwrap_or_else(|| derived_name(&probe));
    Some(CheckSettings {
        name,
        probe,
        interval,
        timeout,
        rise,
        fall,
    })
}

fn timing(c: &mut Checker, key: &str, raw: &RawCheck) -> (Duration, Duration) {
    let interval = c.duration_min(
        &format!("{key}.interval"),
        raw.interval.as_deref(),
        DEFAULT_INTERVAL,
        MIN_INTERVAL,
    );
    // Half the interval when that is shorter, so a fast interval alone is a valid check.
    let default_timeout = DEFAULT_TIMEOUT.min(interval / 2);
    let tkey = format!("{key}.timeout");
    let timeout = c.nonzero(&tkey, raw.timeout.as_deref(), default_timeout);
    if timeout >= interval {
        let shown = raw
            .timeout
            .clone()
            .unwrap_or_else(|| humantime::format_duration(timeout).to_string());
        c.push(
            tkey,
            format!(
                "{shown:?} must be shorter than {key}.interval ({}), so probes never overlap",
                humantime::format_duration(interval)
            ),
        );
        return (interval, default_timeout);
    }
    (interval, timeout)
}

/// Keys that were given but mean nothing for this kind: silently ignoring them would leave the
/// operator believing, say, that an exec check also connects to `port`.
fn not_for_kind(c: &mut Checker, key: &str, raw: &RawCheck, kind: Kind) {
    let given: [(&str, bool, &[Kind]); 6] = [
        ("host", raw.host.is_some(), &[Kind::Http, Kind::Tcp]),
        ("port", raw.port.is_some(), &[Kind::Http, Kind::Tcp]),
        ("path", raw.path.is_some(), &[Kind::Http]),
        ("status", raw.status.is_some(), &[Kind::Http]),
        ("body-contains", raw.body_contains.is_some(), &[Kind::Http]),
        ("command", raw.command.is_some(), &[Kind::Exec]),
    ];
    for (name, present, kinds) in given {
        if present && !kinds.contains(&kind) {
            let wanted = kinds
                .iter()
                .map(|k| format!("\"{}\"", k.as_str()))
                .collect::<Vec<_>>()
                .join(" or ");
            c.push(
                format!("{key}.{name}"),
                format!(
                    "does not apply to kind = \"{}\": only to kind = {wanted}",
                    kind.as_str()
                ),
            );
        }
    }
}

fn name(c: &mut Checker, key: &str, name: &str) -> String {
    let nkey = format!("{key}.name");
    if name.is_empty() {
        c.push(nkey, "must not be empty (leave it out for a derived name)");
    } else if name.len() > MAX_NAME_LEN {
        c.push(
            nkey,
            format!(
                "{name:?} is {} bytes long: expected at most {MAX_NAME_LEN}",
                name.len()
            ),
        );
    } else if !name.bytes().all(is_name_byte) {
        c.push(
            nkey,
            format!("{name:?} has characters other than letters, digits, '.', '_' and '-'"),
        );
    }
    name.to_owned()
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn derived_name(probe: &ProbeSpec) -> String {
    match probe {
        ProbeSpec::Http(h) => format!("http-{}", h.port),
        ProbeSpec::Tcp(t) => format!("tcp-{}", t.port),
        ProbeSpec::Exec(e) => {
            let program = e.command.first().map(String::as_str).unwrap_or_default();
            let base = program.rsplit('/').next().unwrap_or_default();
            let mut name: String = format!("exec-{base}")
                .bytes()
                .map(|b| if is_name_byte(b) { b as char } else { '_' })
                .collect();
            name.truncate(MAX_NAME_LEN);
            name
        }
    }
}

fn host(c: &mut Checker, key: &str, text: Option<&str>) -> CheckHost {
    let Some(text) = text else {
        return CheckHost::EniAddress;
    };
    let hkey = format!("{key}.host");
    match text.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
            c.push(hkey, format!("{text:?}: expected a unicast address"));
            CheckHost::EniAddress
        }
        Ok(ip) => CheckHost::Ip(ip),
        Err(_) => {
            let hint = if text.parse::<std::net::SocketAddr>().is_ok() {
                " (give the port as port = N)"
            } else {
                " (names are not resolved: a DNS failure must not look like a service failure)"
            };
            c.push(
                hkey,
                format!("{text:?} is not an IP address{hint}; leave host out to probe the ENI's address"),
            );
            CheckHost::EniAddress
        }
    }
}

fn path(c: &mut Checker, key: &str, text: Option<&str>) -> String {
    let Some(text) = text else {
        return "/".to_owned();
    };
    let pkey = format!("{key}.path");
    if !text.starts_with('/') {
        c.push(pkey, format!("{text:?} must start with '/'"));
    } else if text.len() > MAX_TEXT_LEN {
        c.push(
            pkey,
            format!(
                "is {} bytes long: expected at most {MAX_TEXT_LEN}",
                text.len()
            ),
        );
    } else if !text.bytes().all(|b| b.is_ascii_graphic()) {
        // Spaces or line breaks would end the request line early: escape them (%20).
        c.push(
            pkey,
            format!("{text:?} has spaces or control characters: percent-encode them (%20)"),
        );
    }
    text.to_owned()
}

fn status(c: &mut Checker, key: &str, raw: Option<&RawStatus>) -> StatusRange {
    let Some(raw) = raw else {
        return StatusRange::DEFAULT;
    };
    let skey = format!("{key}.status");
    let (lo, hi, shown) = match raw {
        RawStatus::Code(v) => (Some(*v), Some(*v), v.to_string()),
        RawStatus::Pair(v) if v.len() == 2 => (Some(v[0]), Some(v[1]), format!("{v:?}")),
        RawStatus::Pair(v) => (None, None, format!("{v:?}")),
        RawStatus::Text(t) => {
            let (a, b) = t.split_once('-').unwrap_or((t, t));
            let parse = |s: &str| s.trim().parse::<i64>().ok();
            (parse(a), parse(b), format!("{t:?}"))
        }
    };
    let (Some(lo), Some(hi)) = (lo, hi) else {
        c.push(
            skey,
            format!("{shown} is not a status range: expected \"200-399\", [200, 399] or 200"),
        );
        return StatusRange::DEFAULT;
    };
    let valid = |v: i64| (100..=599).contains(&v);
    if !valid(lo) || !valid(hi) {
        c.push(skey, format!("{shown}: status codes are 100..=599"));
        return StatusRange::DEFAULT;
    }
    if lo > hi {
        c.push(
            skey,
            format!("{shown}: the range is empty (low end above high end)"),
        );
        return StatusRange::DEFAULT;
    }
    // Both fit: checked to be in 100..=599 above.
    StatusRange {
        lo: lo as u16,
        hi: hi as u16,
    }
}

fn body_contains(c: &mut Checker, key: &str, text: Option<&str>) -> Option<String> {
    let text = text?;
    let bkey = format!("{key}.body-contains");
    if text.is_empty() {
        c.push(bkey, "must not be empty (leave it out to accept any body)");
    } else if text.len() > MAX_TEXT_LEN {
        c.push(
            bkey,
            format!(
                "is {} bytes long: expected at most {MAX_TEXT_LEN}",
                text.len()
            ),
        );
    }
    Some(text.to_owned())
}

fn command(c: &mut Checker, key: &str, argv: Option<&[String]>) -> Vec<String> {
    let ckey = format!("{key}.command");
    match argv {
        None => c.push(
            ckey,
            "missing: an exec check needs command = [\"/path/to/program\", \"arg\", ...]",
        ),
        Some([]) => c.push(
            ckey,
            "empty command: expected [\"/path/to/program\", \"arg\", ...]",
        ),
        Some([p, ..]) if p.trim().is_empty() => c.push(
            format!("{ckey}[0]"),
            format!("{p:?}: the program must not be empty"),
        ),
        Some(_) => {}
    }
    argv.map(<[String]>::to_vec).unwrap_or_default()
}
