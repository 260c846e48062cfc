//! Service health as the core sees it: this node's own checks (debounced by the check runner),
//! and the history of the corroborating probe that a backup sends through the ENI's address, the
//! way clients reach the service. The takeover rule asks [`ProbeHistory::service_down_since`]:
//! a silent holder whose service still answers through the ENI is not dead.

use std::collections::BTreeMap;
use std::time::Duration;

use super::events::Time;
use crate::ids::NodeName;

/// How often a standing condition (peer silent but serving, degraded master) is warned about.
pub const ALERT_EVERY: Duration = Duration::from_secs(10);

/// How long every cloud query may fail before the operator is told the cloud is unreachable.
pub const CLOUD_UNREACHABLE_AFTER: Duration = Duration::from_secs(30);

/// This node's own service checks, as the runner last reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnHealth {
    pub healthy: bool,
    /// What the failing check said, or "ok".
    pub detail: String,
    pub since: Time,
}

impl OwnHealth {
    /// Nodes start healthy: without checks they stay so, with checks the runner reports a
    /// failure after `fall` probes (starting unhealthy would delay every start by `rise`).
    pub fn new(now: Time) -> Self {
        OwnHealth {
            healthy: true,
            detail: "ok".into(),
            since: now,
        }
    }
}

/// The corroborating probe's recent results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeHistory {
    /// Consecutive failed probes, newest last.
    pub fails: u32,
    /// When the newest failed probe was sent.
    pub last_fail_sent: Option<Time>,
    /// When the newest probe that passed was sent.
    pub last_ok_sent: Option<Time>,
}

impl ProbeHistory {
    pub fn record(&mut self, sent: Time, ok: bool) {
        if ok {
            // A late answer to an older probe must not hide newer failures.
            if self.last_fail_sent.is_none_or(|f| sent > f) {
                self.fails = 0;
            }
            self.last_ok_sent = self.last_ok_sent.max(Some(sent));
        } else if self.last_ok_sent.is_none_or(|o| sent > o) {
            self.fails += 1;
            self.last_fail_sent = self.last_fail_sent.max(Some(sent));
        }
    }

    /// The service is down through the ENI: `fall` probes in a row failed, and the newest of them
    /// was sent after `silent_since` (so it says something about the silence, not before it).
    pub fn service_down_since(&self, fall: u32, silent_since: Time) -> bool {
        self.fails >= fall && self.last_fail_sent.is_some_and(|t| t > silent_since)
    }

    /// The newest probe passed.
    pub fn service_up(&self) -> bool {
        self.fails == 0 && self.last_ok_sent.is_some()
    }
}

/// Something an operator must hear about that is not a role change. The daemon logs it (warn or
/// error) with what to do, and counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alert {
    /// The holder's heartbeats are silent but its service answers through the ENI: no takeover.
    PeerSilentServiceUp { peer: NodeName, silent: Duration },
    /// The holder has never been heard since this node started and nothing corroborates that it
    /// is down: no forced takeover.
    PeerNeverHeard {
        peer: NodeName,
        since_start: Duration,
    },
    /// This master's checks fail and no healthy peer can take over: it keeps serving, badly.
    Degraded { detail: String },
    /// This master's checks fail: handing the ENI to a healthy peer.
    HandingOverUnhealthy { to: NodeName, detail: String },
    /// This master is in maintenance but no healthy peer can take over yet: it keeps the ENI.
    MaintenanceNoPeer { reason: String },
    /// This node's own checks changed state.
    HealthChanged { healthy: bool, detail: String },
    /// A peer that was alive is dead now (redundancy is gone while it lasts).
    PeerLost { peer: NodeName },
    /// A peer that was lost is heard again.
    PeerBack { peer: NodeName },
    /// This node holds off from forced takeovers for `duration` after losing the ENI.
    HoldDownStarted { duration: Duration },
    /// A handover (yield, maintenance, preempt, health) did not complete.
    HandoverFailed { to: NodeName, reason: String },
    /// This node entered fault.
    FaultEntered { reason: String },
    /// No cloud query has succeeded for `duration`.
    CloudUnreachable { duration: Duration },
}

impl Alert {
    /// Alerts of one kind are paced together.
    pub fn key(&self) -> &'static str {
        match self {
            Alert::PeerSilentServiceUp { .. } => "peer-silent-service-up",
            Alert::PeerNeverHeard { .. } => "peer-never-heard",
            Alert::Degraded { .. } => "degraded",
            Alert::HandingOverUnhealthy { .. } => "handing-over-unhealthy",
            Alert::HealthChanged { .. } => "health-changed",
            Alert::MaintenanceNoPeer { .. } => "maintenance-no-peer",
            Alert::PeerLost { .. } => "peer-lost",
            Alert::PeerBack { .. } => "peer-back",
            Alert::HoldDownStarted { .. } => "hold-down-started",
            Alert::HandoverFailed { .. } => "handover-failed",
            Alert::FaultEntered { .. } => "fault-entered",
            Alert::CloudUnreachable { .. } => "cloud-unreachable",
        }
    }
}

/// At most one alert of a kind per [`ALERT_EVERY`].
#[derive(Debug, Clone, Default)]
pub(super) struct AlertPacer {
    next: BTreeMap<&'static str, Time>,
}

impl AlertPacer {
    /// Whether to raise `alert` now; records it if so.
    pub fn due(&mut self, alert: &Alert, now: Time) -> bool {
        let next = self.next.entry(alert.key()).or_insert(now);
        if now < *next {
            return false;
        }
        *next = now + ALERT_EVERY;
        true
    }

    /// The condition is over: the next occurrence is reported at once.
    pub fn clear(&mut self, key: &'static str) {
        self.next.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Time {
        Duration::from_millis(v)
    }

    #[test]
    fn down_needs_fall_failures_and_one_sent_after_the_silence_began() {
        let mut p = ProbeHistory::default();
        p.record(ms(100), false);
        p.record(ms(200), false);
        assert!(p.service_down_since(2, ms(150)));
        // Both failures predate the silence: they say nothing about it.
        assert!(!p.service_down_since(2, ms(250)));
        // Too few failures.
        assert!(!p.service_down_since(3, ms(150)));
    }

    #[test]
    fn a_pass_resets_the_count_but_a_late_pass_for_an_old_probe_does_not() {
        let mut p = ProbeHistory::default();
        p.record(ms(100), false);
        p.record(ms(200), false);
        p.record(ms(50), true);
        assert_eq!(p.fails, 2);
        p.record(ms(300), true);
        assert_eq!(p.fails, 0);
        assert!(p.service_up());
        // A failure older than the newest pass is not counted.
        p.record(ms(250), false);
        assert_eq!(p.fails, 0);
    }

    #[test]
    fn alerts_are_paced_per_kind_and_cleared() {
        let mut a = AlertPacer::default();
        let d = Alert::Degraded { detail: "x".into() };
        assert!(a.due(&d, ms(0)));
        assert!(!a.due(&d, ms(5000)));
        assert!(a.due(&d, ms(10_000)));
        a.clear(d.key());
        assert!(a.due(&d, ms(10_001)));
    }
}
