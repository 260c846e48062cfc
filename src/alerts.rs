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
            "never heard an authenticated heartbeat from {peer}, which holds the ENI, and no \
             check corroborates that it is down: no forced takeover. A bad-mac rejection means the \
             keys differ; unknown-group means group.id differs; stale means clock skew; none means \
             the port is closed. Add a [[check]] so a dead holder can still be replaced"
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
