//! The master: it keeps the ENI while the cloud says it holds it, keeps its host network applied
//! (giving the ENI up after repeated failures), verifies the attachment periodically, and steps
//! down at once when the cloud names another holder or the interface vanishes. A master that
//! cannot reach the cloud keeps serving.

use super::events::{Action, ClaimKind, CloudView, HookKind, Time};
use super::handover::After;
use super::health::Alert;
use super::role::{Master, NetPhase, Release, State};
use super::{HolderBelief, Node};

/// Failed host-network applies in a row before a master gives the ENI up.
const NET_ATTEMPTS: u32 = 3;

impl Node {
    pub(super) fn become_master(&mut self, reason: String, now: Time, out: &mut Vec<Action>) {
        self.holder = HolderBelief::Instance(self.cfg.instance_id.clone());
        self.claim_backoff.reset();
        self.cloud.next = now + self.cfg.verify_interval;
        let master = Master {
            // The on-master hook waits for the host network: a service that binds to the ENI's
            // address (the reason to restart it) fails while the address is not there yet.
            pending_hook: Some(reason.clone()),
            ..Master::new()
        };
        self.transition(State::Master(master), reason, now, out);
        out.push(Action::ApplyNet);
    }

    /// Lost the ENI while master: stop serving now, hold off from claiming it back.
    pub(super) fn step_down(&mut self, reason: String, now: Time, out: &mut Vec<Action>) {
        self.start_hold_down(now, out);
        self.cloud.invalidate();
        out.push(Action::RemoveNet);
        self.become_backup(reason.clone(), &reason, now, out);
    }

    pub(super) fn tick_master(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.cloud.verify_due(self.cfg.verify_interval, now) {
            self.query_cloud(out);
        }
        let State::Master(m) = &mut self.state else {
            return;
        };
        if matches!(m.net, NetPhase::Failed { retry_at } if now >= retry_at) {
            m.net = NetPhase::Applying;
            out.push(Action::ApplyNet);
        }
        let due = m.handover.as_ref().map(|h| now >= h.deadline);
        match due {
            Some(true) => self.handover_not_accepted(out),
            Some(false) => {}
            None if !self.fit() => self.hand_over_unfit(now, out),
            None => self.maybe_honour_preempt(now, out),
        }
    }

    /// This master's checks fail or it is in maintenance: hand the ENI to a healthy peer in
    /// order (the yield path), or keep it and say so when there is none.
    fn hand_over_unfit(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        let to = self
            .peers
            .best(&self.cfg, now, None)
            .map(|(_, n)| n.clone());
        let (detail, no_peer) = match &self.maintenance {
            Some(reason) if self.health.healthy => (
                format!("maintenance: {reason}"),
                Alert::MaintenanceNoPeer {
                    reason: reason.clone(),
                },
            ),
            _ => {
                let detail = self.health.detail.clone();
                (detail.clone(), Alert::Degraded { detail })
            }
        };
        let unhealthy = !self.health.healthy;
        let State::Master(m) = &mut self.state else {
            return;
        };
        if now < m.next_health_handover {
            return;
        }
        let Some(to) = to else {
            m.degraded = unhealthy;
            return self.alert(no_peer, now, out);
        };
        m.degraded = false;
        m.next_health_handover = now + self.cfg.handover_timeout;
        self.alerts.clear("degraded");
        let alert = Alert::HandingOverUnhealthy {
            to: to.clone(),
            detail,
        };
        self.alert(alert, now, out);
        let h = self.new_handover(to, None, now + self.cfg.handover_timeout, After::Reclaim);
        self.offer(h, out);
    }

    pub(super) fn master_cloud_view(&mut self, view: CloudView, now: Time, out: &mut Vec<Action>) {
        match view {
            CloudView::Holder(i) if i == self.cfg.instance_id => {}
            CloudView::Holder(i) => {
                let who = self.who(&i);
                self.step_down(format!("the cloud says {who} holds the ENI now"), now, out);
            }
            CloudView::Nobody => {
                // Detached from under us (an operator, or a peer's forced takeover still in its
                // `detaching` phase): count it as a loss, then race for it without force; the
                // claim's compare-and-swap settles a race with the peer.
                self.start_hold_down(now, out);
                out.push(Action::RemoveNet);
                self.claim(
                    None,
                    false,
                    ClaimKind::Reclaim,
                    "the ENI was detached from this master".into(),
                    now,
                    out,
                );
            }
        }
    }

    pub(super) fn on_net_applied(
        &mut self,
        r: Result<(), String>,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let State::Master(m) = &mut self.state else {
            return;
        };
        if m.net != NetPhase::Applying {
            return;
        }
        let e = match r {
            Ok(()) => {
                m.net = NetPhase::Ready;
                if let Some(reason) = m.pending_hook.take() {
                    out.push(Action::RunHooks {
                        kind: HookKind::Master,
                        reason,
                    });
                }
                return;
            }
            Err(e) => e,
        };
        m.net_attempts += 1;
        if m.net_attempts < NET_ATTEMPTS {
            m.net = NetPhase::Failed {
                retry_at: now + self.cfg.retry_delay,
            };
            return;
        }
        let releasing = State::Releasing {
            purpose: Release::Fault(format!("cannot configure the host network: {e}")),
            detaching: false,
        };
        let reason = format!("cannot configure the host network ({e}); giving the ENI up");
        self.transition(releasing, reason, now, out);
        out.push(Action::RemoveNet);
    }

    pub(super) fn on_link_lost(&mut self, now: Time, out: &mut Vec<Action>) {
        if let State::Master(_) = self.state {
            let reason = "the ENI's interface disappeared from this host".to_string();
            self.step_down(reason, now, out);
            self.holder = HolderBelief::Unknown;
            self.cloud.invalidate();
            self.query_cloud(out);
        }
    }
}
