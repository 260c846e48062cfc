//! The snapshot `enipeer role` shows, read from the core, the peer link and the timeline.

use std::time::Duration;

use super::Daemon;
use crate::core::HolderBelief;
use crate::ids::{InstanceId, NodeName};
use crate::report::{
    CheckState, HealthReport, Holder, PeerReport, RejectCount, RoleReport, TransitionReport,
};
use crate::timeline;

impl Daemon {
    fn unix_ms_at(&self, t: Duration) -> u64 {
        timeline::unix_ms(self.started_wall + t)
    }

    pub(super) fn report(&self) -> RoleReport {
        let now = self.now();
        RoleReport {
            schema_version: crate::report::SCHEMA_VERSION,
            node: self.settings.node.name.to_string(),
            instance_id: self.instance_id.to_string(),
            eni: self.settings.group.eni.to_string(),
            role: self.node.role().to_string(),
            since_unix_ms: self.unix_ms_at(self.node.role_since()),
            last_transition: self.node.last_transition().map(|t| TransitionReport {
                from: t.from.to_string(),
                to: t.to.to_string(),
                reason: t.reason.clone(),
                at_unix_ms: self.unix_ms_at(t.at),
            }),
            peers: self.peer_reports(now),
            cloud_holder: match self.node.holder() {
                HolderBelief::Unknown => Holder::Unknown,
                HolderBelief::Nobody => Holder::Nobody,
                HolderBelief::Instance(i) => Holder::Instance { id: i.to_string() },
            },
            cloud_checked_ms_ago: self
                .node
                .cloud_checked()
                .map(|t| now.saturating_sub(t).as_millis() as u64),
            hold_down_ms_left: self.node.hold_down_left(now).map(|d| d.as_millis() as u64),
            last_failover: self.timeline.report(),
            rejected: self
                .peer
                .counters()
                .into_iter()
                .filter(|(k, n)| *n > 0 && !k.starts_with("accepted") && k != "sent")
                .map(|(reason, count)| RejectCount { reason, count })
                .collect(),
            health: self.health_report(now),
            maintenance: self.node.maintenance().map(str::to_string),
            leftovers: self
                .leftovers
                .iter()
                .map(|(p, e)| format!("ENI {}: {e}", p.mac))
                .collect(),
            ipv6_problem: self.ipv6_problem.clone(),
        }
    }

    fn health_report(&self, now: Duration) -> HealthReport {
        let own = self.node.health();
        let probe = self.node.probe();
        HealthReport {
            healthy: own.healthy,
            detail: own.detail.clone(),
            degraded: self.node.is_degraded(),
            silent_but_serving: self.node.silent_but_serving().map(NodeName::to_string),
            corroborated: self.node.config().corroborate_fall.is_some(),
            probe_fails: probe.fails,
            probe_ok_ms_ago: probe
                .last_ok_sent
                .map(|t| now.saturating_sub(t).as_millis() as u64),
            checks: self
                .checks
                .iter()
                .flat_map(|s| s.views())
                .map(|v| CheckState {
                    name: v.name,
                    state: v.state.as_str().to_string(),
                    counts: v.counts,
                    last_error: v.last_error,
                })
                .collect(),
        }
    }

    fn peer_reports(&self, now: Duration) -> Vec<PeerReport> {
        self.node
            .peers()
            .map(|p| PeerReport {
                name: p.name.to_string(),
                role: p.advert.as_ref().map(|a| a.role.to_string()),
                instance_id: p.instance_id.as_ref().map(InstanceId::to_string),
                last_heard_ms_ago: p
                    .last_heard
                    .map(|h| now.saturating_sub(h).as_millis() as u64),
                alive: self.node.is_alive(&p.name, now),
                healthy: p.advert.as_ref().map(|a| a.healthy),
                maintenance: p.advert.as_ref().map(|a| a.maintenance),
            })
            .collect()
    }
}
