//! How the core's [`Alert`]s reach the operator: one log line each, at the level the condition
//! deserves, saying what it means and what to do. The core paces them; this only words them.

use tracing::{error, info, warn};

use crate::core::Alert;

/// Logs `alert`. `rejected` is the heartbeat rejection summary (reason and count) that explains a
/// peer that cannot be heard.
pub fn log(alert: &Alert, rejected: &str) {
    match alert {
        Alert::PeerSilentServiceUp { peer, silent } => warn!(
            peer = %peer,
            silent_ms = silent.as_millis() as u64,
            rejected = %rejected,
            "no heartbeats from {peer} but its service answers through the ENI: not taking over. \
             Likely causes: a different key on the two nodes, the heartbeat port closed by a \
             security group or firewall, or the peer's agent down. Check `enipeer role` on both \
             nodes and the rejected-packet counts"
        ),
        Alert::PeerNeverHeard { peer, since_start } => error!(
            peer = %peer,
            since_start_ms = since_start.as_millis() as u64,
            rejected = %rejected,
            "never heard an authenticated heartbeat from {peer}, which holds the ENI: no forced \
             takeover unless a check shows its service down. Rejected packets say why: bad-mac \
             means the two nodes have a different key (a key mismatch), unknown-group means \
             group.id differs, stale means clock skew; none at all means the heartbeat port is \
             closed (security group, firewall) or the peer's agent is down. `enipeer check \
             --preflight` tells which"
        ),
        Alert::Degraded { detail } => warn!(
            detail = %detail,
            "this master's service checks fail and no healthy peer can take over: keeping the \
             ENI (serving badly beats not serving). Fix the service, or bring a peer up"
        ),
        Alert::HandingOverUnhealthy { to, detail } => warn!(
            to = %to,
            detail = %detail,
            "this master's service checks fail: handing the ENI over to {to}"
        ),
        Alert::PeerLost { peer } => warn!(
            peer = %peer,
            "peer {peer} is silent: no redundancy while it lasts. Check its host and agent \
             (`enipeer role` there), or the heartbeat path between the two"
        ),
        Alert::PeerBack { peer } => info!(peer = %peer, "peer {peer} is heard again"),
        Alert::HoldDownStarted { duration } => warn!(
            hold_down_ms = duration.as_millis() as u64,
            "lost the ENI: no forced takeover from this node for the hold-down. If this repeats, \
             look for a partition between the nodes (heartbeats blocked, a security group)"
        ),
        Alert::HandoverFailed { to, reason } => warn!(
            to = %to,
            reason = %reason,
            "a handover to {to} did not complete; see the reason, and `enipeer role` on {to}"
        ),
        Alert::FaultEntered { reason } => error!(
            reason = %reason,
            "entered fault: this node cannot serve the ENI until the fault period is over. Fix \
             what the reason names (permissions, the ENI id, the host network)"
        ),
        Alert::CloudUnreachable { duration } => error!(
            for_ms = duration.as_millis() as u64,
            "every EC2 API call has failed for a while: this node cannot take over or verify the \
             ENI. Check the instance's network path to EC2, IMDS credentials and throttling"
        ),
        Alert::MaintenanceNoPeer { reason } => warn!(
            reason = %reason,
            "this master is in maintenance but no healthy peer can take over: keeping the ENI \
             until one can. Bring a peer up before taking this node down"
        ),
        Alert::HealthChanged {
            healthy: true,
            detail,
        } => {
            info!(detail = %detail, "service checks pass again")
        }
        Alert::HealthChanged {
            healthy: false,
            detail,
        } => warn!(
            detail = %detail,
            "service checks fail: this node will not take the ENI, and hands it over if master. \
             Check the service named by the failing check"
        ),
    }
}

/// One line for the on-event hook's `ENIPEER_REASON`.
pub fn summary(alert: &Alert) -> String {
    match alert {
        Alert::PeerSilentServiceUp { peer, .. } => {
            format!("{peer} silent but its service answers through the ENI")
        }
        Alert::PeerNeverHeard { peer, .. } => format!("{peer} never heard since start"),
        Alert::Degraded { detail } => format!("degraded master: {detail}"),
        Alert::HandingOverUnhealthy { to, detail } => format!("handing over to {to}: {detail}"),
        Alert::MaintenanceNoPeer { reason } => format!("maintenance ({reason}), no peer"),
        Alert::HealthChanged { healthy, detail } => {
            format!(
                "checks {}: {detail}",
                if *healthy { "pass" } else { "fail" }
            )
        }
        Alert::PeerLost { peer } => format!("peer {peer} lost"),
        Alert::PeerBack { peer } => format!("peer {peer} back"),
        Alert::HoldDownStarted { duration } => format!("hold-down {} ms", duration.as_millis()),
        Alert::HandoverFailed { to, reason } => format!("handover to {to} failed: {reason}"),
        Alert::FaultEntered { reason } => format!("fault: {reason}"),
        Alert::CloudUnreachable { duration } => {
            format!("cloud unreachable for {} ms", duration.as_millis())
        }
    }
}

/// The details an on-event hook gets as `ENIPEER_EVENT_<KEY>` variables.
pub fn details(alert: &Alert) -> Vec<(String, String)> {
    let kv = |k: &str, v: String| (k.to_string(), v);
    match alert {
        Alert::PeerSilentServiceUp { peer, silent } => {
            vec![
                kv("peer", peer.to_string()),
                kv("silent_ms", silent.as_millis().to_string()),
            ]
        }
        Alert::PeerNeverHeard { peer, since_start } => vec![
            kv("peer", peer.to_string()),
            kv("since_start_ms", since_start.as_millis().to_string()),
        ],
        Alert::Degraded { detail } => vec![kv("detail", detail.clone())],
        Alert::HandingOverUnhealthy { to, detail } => {
            vec![kv("to", to.to_string()), kv("detail", detail.clone())]
        }
        Alert::MaintenanceNoPeer { reason } => vec![kv("reason", reason.clone())],
        Alert::HealthChanged { healthy, detail } => {
            vec![
                kv("healthy", healthy.to_string()),
                kv("detail", detail.clone()),
            ]
        }
        Alert::PeerLost { peer } | Alert::PeerBack { peer } => vec![kv("peer", peer.to_string())],
        Alert::HoldDownStarted { duration } => {
            vec![kv("duration_ms", duration.as_millis().to_string())]
        }
        Alert::HandoverFailed { to, reason } => {
            vec![kv("to", to.to_string()), kv("reason", reason.clone())]
        }
        Alert::FaultEntered { reason } => vec![kv("reason", reason.clone())],
        Alert::CloudUnreachable { duration } => {
            vec![kv("duration_ms", duration.as_millis().to_string())]
        }
    }
}
