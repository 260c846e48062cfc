//! The daemon's side of the service checks and of stall detection: check reports become core
//! events, role changes tell the supervisor which checks count, late heartbeats hurry the
//! corroborating probe, and a loop that did not run for a while drains its socket before the
//! core judges anyone by the silence.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::{Daemon, Done};
use crate::core::{Event, Role};
use crate::health::{CheckReport, Verdict};

/// At most this many buffered packets are drained after a stall (a bound, not an expectation).
const DRAIN_MAX: usize = 256;

impl Daemon {
    pub(super) async fn on_check(&mut self, report: CheckReport) {
        let Some(sup) = self.checks.as_mut() else {
            return;
        };
        if let Some(v) = sup.on_report(&report) {
            self.feed(self.verdict_event(v)).await;
        }
    }

    fn verdict_event(&self, v: Verdict) -> Event {
        match v {
            Verdict::Own { healthy, detail } => Event::Health { healthy, detail },
            Verdict::ThroughEni { sent, ok } => Event::EniProbe {
                sent: sent.saturating_duration_since(self.started),
                ok,
            },
        }
    }

    /// Checks on the ENI's address count for own health only while master.
    pub(super) fn checks_role_changed(&mut self, to: Role) {
        let Some(sup) = self.checks.as_mut() else {
            return;
        };
        if let Some(v) = sup.set_master(to == Role::Master) {
            let event = self.verdict_event(v);
            // Through the loop's channel, like every other result: never re-enter the core here.
            self.report_back(Done::Core(event));
        }
    }

    /// The host network was applied and this node serves: the ENI's checks count from now.
    pub(super) fn checks_network_applied(&mut self) {
        let Some(sup) = self.checks.as_mut() else {
            return;
        };
        if let Some(v) = sup.network_applied() {
            let event = self.verdict_event(v);
            self.report_back(Done::Core(event));
        }
    }

    /// Called with every heartbeat sent: once a peer is late by half an interval, probe through
    /// the ENI at the heartbeat cadence so that a dead holder is known to be dead by the time
    /// the dead interval ends.
    pub(super) fn hurry_probe_if_late(&self) {
        let Some(sup) = &self.checks else {
            return;
        };
        let now = self.now();
        let late = self.settings.heartbeat.interval * 3 / 2;
        let any_late = self
            .node
            .peers()
            .any(|p| p.last_heard.is_some_and(|h| now.saturating_sub(h) > late));
        if any_late && self.node.role() == Role::Backup {
            sup.poke_through_eni();
        }
    }

    /// The loop woke `gap` after it meant to: this process did not run (stopped, starved, VM
    /// paused). Take in what the peers sent meanwhile before the core judges them.
    pub(super) async fn on_stall(&mut self, gap: Duration) {
        warn!(
            gap_ms = gap.as_millis() as u64,
            "the agent did not run for a while (process stopped or starved, or the VM paused): \
             reading buffered heartbeats before judging peers. If this repeats, give the agent \
             CPU (systemd CPUWeight=) or find what stops it"
        );
        for _ in 0..DRAIN_MAX {
            match tokio::time::timeout(Duration::ZERO, self.peer.recv()).await {
                Ok(r) => self.on_received(r).await,
                Err(_) => break,
            }
        }
        self.feed(Event::Stalled { gap }).await;
    }
}

impl Daemon {
    /// Heartbeats rejected so far, by reason: what explains a peer that cannot be heard.
    pub(super) fn rejected_summary(&self) -> String {
        let parts: Vec<String> = self
            .peer
            .counters()
            .into_iter()
            .filter(|(k, n)| *n > 0 && !k.starts_with("accepted") && k != "sent")
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

/// How late a wake-up must be to count as a stall: more than one heartbeat interval.
pub(super) fn stalled(wake: Instant, interval: Duration) -> Option<Duration> {
    let late = Instant::now().saturating_duration_since(wake);
    (late > interval).then_some(late)
}
