//! `enipeer role --check`: a [`RoleReport`] judged the way monitoring plugins (Nagios, Icinga,
//! Sensu, Zabbix's "external check") expect, as an exit code and one line of text.
//!
//! From this node's point of view: it sees its own role and health, every peer's last advert and
//! the cloud's holder at the last look. The worst finding decides the code; the line lists every
//! finding of that severity.

use std::fmt;

use super::{Holder, RoleReport};

/// The monitoring-plugin exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckStatus {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    /// The daemon could not be asked (decided by the CLI, never from a report).
    Unknown = 3,
}

impl CheckStatus {
    pub fn code(self) -> i32 {
        self as i32
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckStatus::Ok => "OK",
            CheckStatus::Warning => "WARNING",
            CheckStatus::Critical => "CRITICAL",
            CheckStatus::Unknown => "UNKNOWN",
        })
    }
}

/// The line for a daemon that could not be asked.
pub fn unknown_line(why: &str) -> String {
    format!(
        "ENIPEER {}: daemon unreachable: {why}",
        CheckStatus::Unknown
    )
}

impl RoleReport {
    /// The exit code and the one-line summary of `enipeer role --check`.
    pub fn check(&self) -> (CheckStatus, String) {
        let findings = self.findings();
        let worst = findings
            .iter()
            .map(|(s, _)| *s)
            .max()
            .unwrap_or(CheckStatus::Ok);
        let text = if worst == CheckStatus::Ok {
            self.ok_summary()
        } else {
            let parts: Vec<&str> = findings
                .iter()
                .filter(|(s, _)| *s == worst)
                .map(|(_, t)| t.as_str())
                .collect();
            format!("{} ({})", parts.join("; "), self.whoami())
        };
        (worst, format!("ENIPEER {worst}: {text}"))
    }

    /// "node-a master"
    fn whoami(&self) -> String {
        format!("{} {}", self.node, self.role)
    }

    fn ok_summary(&self) -> String {
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|p| {
                format!(
                    "peer {} {}",
                    p.name,
                    p.role.as_deref().unwrap_or("never heard")
                )
            })
            .collect();
        format!(
            "{}, {}, ENI {} on {}",
            self.whoami(),
            peers.join(", "),
            self.eni,
            self.cloud_holder
        )
    }

    /// Every problem this report shows, with its severity.
    // Over 80 lines on purpose: a flat list of rules, one `if` each, in the order an operator
    // reads the findings.
    fn findings(&self) -> Vec<(CheckStatus, String)> {
        use CheckStatus::{Critical, Warning};
        let mut out = Vec::new();
        let me_master = self.role == "master";
        let live_masters: Vec<&str> = self
            .peers
            .iter()
            .filter(|p| p.alive && p.role.as_deref() == Some("master"))
            .map(|p| p.name.as_str())
            .collect();
        if self.role == "fault" {
            let why = self
                .last_transition
                .as_ref()
                .map(|t| format!(": {}", t.reason))
                .unwrap_or_default();
            out.push((Critical, format!("this node is in FAULT{why}")));
        }
        if self.cloud_holder == Holder::Nobody {
            out.push((Critical, "nobody holds the ENI".to_string()));
        }
        if me_master && !live_masters.is_empty() {
            out.push((
                Critical,
                format!("two masters: this node and {}", live_masters.join(", ")),
            ));
        }
        if !me_master && live_masters.is_empty() && self.cloud_holder != Holder::Nobody {
            out.push((
                Warning,
                format!("no master in sight (ENI held by {})", self.cloud_holder),
            ));
        }
        if self.cloud_holder == Holder::Unknown {
            out.push((
                Warning,
                "ENI holder unknown (cloud not asked yet, or unreachable)".to_string(),
            ));
        }
        for p in &self.peers {
            if !p.alive {
                let heard = p
                    .last_heard_ms_ago
                    .map(|ms| format!("last heard {} ago", super::fmt_ms(ms)))
                    .unwrap_or_else(|| "never heard".into());
                out.push((
                    Warning,
                    format!("no redundancy: peer {} dead ({heard})", p.name),
                ));
            } else if p.maintenance == Some(true) {
                out.push((
                    Warning,
                    format!("no redundancy: peer {} in maintenance", p.name),
                ));
            } else if p.healthy == Some(false) {
                out.push((
                    Warning,
                    format!("no redundancy: peer {}'s checks fail", p.name),
                ));
            }
        }
        if let Some(reason) = &self.maintenance {
            out.push((Warning, format!("this node is in maintenance ({reason})")));
        }
        if !self.leftovers.is_empty() {
            out.push((
                Warning,
                format!("host config left behind: {}", self.leftovers.join("; ")),
            ));
        }
        if let Some(e) = &self.ipv6_problem {
            out.push((Warning, format!("IPv6 not configured on the host: {e}")));
        }
        if let Some(ms) = self.hold_down_ms_left {
            out.push((
                Warning,
                format!("hold-down active ({} left)", super::fmt_ms(ms)),
            ));
        }
        if self.health.degraded {
            out.push((
                Warning,
                format!(
                    "degraded master: checks fail, no healthy peer ({})",
                    self.health.detail
                ),
            ));
        } else if !self.health.healthy {
            out.push((
                Warning,
                format!("this node's checks fail ({})", self.health.detail),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests;
