//! What `enipeer role` shows: a snapshot of the daemon's state, produced by the daemon, carried as
//! JSON over the control socket, printed as is by `role --json` (documented in docs/role-json.md),
//! rendered for humans by `role` and judged by `role --check` ([`check`]).

pub mod check;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::timeline::TimelineReport;

pub use check::CheckStatus;

/// Bumped on any change to the JSON that could break a script reading it (a field renamed,
/// removed or retyped); new fields alone do not bump it.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoleReport {
    /// [`SCHEMA_VERSION`] of the daemon that produced this report.
    pub schema_version: u32,
    pub node: String,
    pub instance_id: String,
    pub eni: String,
    pub role: String,
    /// Unix ms of the last transition (or of the start).
    pub since_unix_ms: u64,
    pub last_transition: Option<TransitionReport>,
    pub peers: Vec<PeerReport>,
    /// Who the cloud said holds the ENI at the last look.
    pub cloud_holder: Holder,
    /// How long ago that was, in ms; `None` if never.
    pub cloud_checked_ms_ago: Option<u64>,
    /// Set while this node holds off from claiming after losing the ENI.
    pub hold_down_ms_left: Option<u64>,
    pub last_failover: Option<TimelineReport>,
    /// Heartbeats rejected since start, by reason (reasons with no rejection are left out).
    pub rejected: Vec<RejectCount>,
    /// Service checks and the corroborating probe (absent from reports of older releases).
    #[serde(default)]
    pub health: HealthReport,
    /// The operator's reason while this node is in maintenance.
    #[serde(default)]
    pub maintenance: Option<String>,
    /// Host network config a removal left behind (one line per plan: what failed), retried on
    /// each reconcile until the host is clean; empty when it is.
    #[serde(default)]
    pub leftovers: Vec<String>,
    /// Why the IPv6 part of the host network config is not in place while this node serves
    /// (its IPv4 part is); retried on each reconcile. `None` when it is, or the ENI has no IPv6.
    #[serde(default)]
    pub ipv6_problem: Option<String>,
}

/// Who holds the ENI, as an object so a script tells an instance from "nobody" and "unknown" by
/// `kind` rather than by parsing a string: `{"kind": "instance", "id": "i-…"}`,
/// `{"kind": "nobody"}` (detached) or `{"kind": "unknown"}` (not asked yet, or the last ask failed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Holder {
    Instance { id: String },
    Nobody,
    Unknown,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Instance { id } => f.write_str(id),
            Holder::Nobody => f.write_str("nobody"),
            Holder::Unknown => f.write_str("unknown"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RejectCount {
    /// The rejection's kind, e.g. "bad-mac", "replay", "stale-timestamp", "unknown-node".
    pub reason: String,
    pub count: u64,
}

/// This node's service health as `role` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HealthReport {
    /// Own checks pass (always true without checks).
    pub healthy: bool,
    pub detail: String,
    /// Master with failing checks and no healthy peer: keeps the ENI, serving badly.
    pub degraded: bool,
    /// The holder whose heartbeats are silent but whose service answers through the ENI.
    pub silent_but_serving: Option<String>,
    /// Whether takeover waits for the corroborating probe (false: silence alone decides).
    pub corroborated: bool,
    /// Consecutive failed probes through the ENI, and how long ago the last one passed.
    pub probe_fails: u32,
    pub probe_ok_ms_ago: Option<u64>,
    pub checks: Vec<CheckState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckState {
    pub name: String,
    /// "unknown", "up" or "down".
    pub state: String,
    /// Counts toward this node's own health now (checks on the ENI's address: only as master).
    pub counts: bool,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransitionReport {
    pub from: String,
    pub to: String,
    pub reason: String,
    pub at_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerReport {
    pub name: String,
    pub role: Option<String>,
    pub instance_id: Option<String>,
    pub last_heard_ms_ago: Option<u64>,
    pub alive: bool,
    /// What the peer last said of its own checks.
    #[serde(default)]
    pub healthy: Option<bool>,
    #[serde(default)]
    pub maintenance: Option<bool>,
}

impl RoleReport {
    /// The short human summary printed by `enipeer role`.
    pub fn render(&self, now_unix_ms: u64) -> String {
        let ago = |t: u64| fmt_ms(now_unix_ms.saturating_sub(t));
        let condition = if let Some(reason) = &self.maintenance {
            format!(" (maintenance: {reason})")
        } else if self.health.degraded {
            " (degraded: checks fail, no healthy peer)".into()
        } else if self.health.silent_but_serving.is_some() {
            " (peer silent, service up)".into()
        } else {
            String::new()
        };
        let mut out = format!(
            "node {} ({}): {}{condition} for {}\n",
            self.node,
            self.instance_id,
            self.role.to_uppercase(),
            ago(self.since_unix_ms)
        );
        if let Some(t) = &self.last_transition {
            out.push_str(&format!(
                "  last transition: {} -> {} ({} ago): {}\n",
                t.from,
                t.to,
                ago(t.at_unix_ms),
                t.reason
            ));
        }
        out.push_str(&format!(
            "  ENI {}: cloud says holder is {}{}\n",
            self.eni,
            self.cloud_holder,
            match self.cloud_checked_ms_ago {
                Some(ms) => format!(" (checked {} ago)", fmt_ms(ms)),
                None => " (never checked)".into(),
            }
        ));
        if let Some(ms) = self.hold_down_ms_left {
            out.push_str(&format!("  hold-down: {} left\n", fmt_ms(ms)));
        }
        out.push_str(&self.health.render());
        for l in &self.leftovers {
            out.push_str(&format!("  LEFTOVER on the host (retried): {l}\n"));
        }
        if let Some(e) = &self.ipv6_problem {
            out.push_str(&format!(
                "  IPv6 NOT configured on the host (retried): {e}\n"
            ));
        }
        for p in &self.peers {
            out.push_str(&p.render());
        }
        let rejected: u64 = self.rejected.iter().map(|r| r.count).sum();
        if rejected > 0 {
            let parts: Vec<String> = self
                .rejected
                .iter()
                .map(|r| format!("{}={}", r.reason, r.count))
                .collect();
            out.push_str(&format!(
                "  rejected heartbeats: {rejected} ({})\n",
                parts.join(", ")
            ));
        }
        if let Some(t) = &self.last_failover {
            out.push_str("  last failover: ");
            out.push_str(&t.render());
        }
        out
    }
}

impl PeerReport {
    /// The peer's line in `enipeer role`.
    fn render(&self) -> String {
        format!(
            "  peer {}: {}{}, {}{}\n",
            self.name,
            self.role.as_deref().unwrap_or("never heard"),
            match (self.healthy, self.maintenance) {
                (_, Some(true)) => " (in maintenance)",
                (Some(false), _) => " (checks failing)",
                _ => "",
            },
            match self.last_heard_ms_ago {
                Some(ms) => format!("last heartbeat {} ago", fmt_ms(ms)),
                None => "no heartbeat yet".into(),
            },
            if self.alive { "" } else { " (DEAD)" }
        )
    }
}

impl HealthReport {
    fn render(&self) -> String {
        let mut out = format!(
            "  health: {}{}\n",
            if self.healthy { "ok" } else { "FAILING: " },
            if self.healthy {
                ""
            } else {
                self.detail.as_str()
            }
        );
        for c in &self.checks {
            out.push_str(&format!(
                "    check {}: {}{}{}\n",
                c.name,
                c.state,
                if c.counts {
                    ""
                } else {
                    " (runs only while master: the address is the master's)"
                },
                c.last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default()
            ));
        }
        if !self.corroborated {
            out.push_str(
                "  takeover: uncorroborated (no http/tcp check): heartbeat silence alone decides\n",
            );
        } else {
            out.push_str(&format!(
                "  probe through the ENI: {} failed in a row{}\n",
                self.probe_fails,
                self.probe_ok_ms_ago
                    .map(|ms| format!(", last answer {} ago", fmt_ms(ms)))
                    .unwrap_or_default()
            ));
        }
        out
    }
}

/// Durations for humans: ms below 10 s, then seconds, minutes, hours.
pub fn fmt_ms(ms: u64) -> String {
    match ms {
        0..=9_999 => format!("{ms}ms"),
        10_000..=599_999 => format!("{:.1}s", ms as f64 / 1000.0),
        600_000..=35_999_999 => format!("{}m{}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}
