//! The backup: when it claims the ENI, and with force or without. The whole takeover rule is
//! here, in `maybe_claim` and `maybe_take_over`:
//!
//! - a backup whose own service checks fail, or that is in maintenance, never claims;
//! - nobody holds the ENI (detached): the best live candidate claims it **without force**, at
//!   once, even during a hold-down (an operator's detach or a lost link must not leave the
//!   address unserved);
//! - the cloud says it is attached here: claim it back without force (adopt);
//! - a peer holds it: claim **with force** (the holder is believed dead) only when that peer has
//!   been silent for the dead interval (or its restart grace, and one more heartbeat interval
//!   after a stall of this node), this node is the best remaining candidate, the last failed
//!   claim's backoff is over, and
//!   - with a corroborating probe configured: `fall` probes in a row through the ENI's address
//!     failed, the newest sent after the silence began (the hold-down does not apply: a dead
//!     master is replaced); while the service still answers, no claim, only a warning;
//!   - without one: no hold-down is running and the peer was heard at least once since this
//!     node started (a holder never heard may just have a different key);
//! - an instance that is not one of the group's peers holds it: never claim.
//!
//! Every claim names the holder it expects to replace (compare-and-swap in the cloud).

use super::events::{Action, ClaimKind, CloudView, Time};
use super::health::Alert;
use super::role::State;
use super::{HolderBelief, Node};
use crate::ids::{InstanceId, NodeName};

impl Node {
    pub(super) fn tick_backup(&mut self, now: Time, out: &mut Vec<Action>) {
        // Backups re-read the attachment now and then too: the cloud, not the peers'
        // heartbeats, is the truth, and a belief that went stale (a lost `released`
        // heartbeat, an operator's detach) must not leave the address unserved.
        if self.cloud.verify_due(self.cfg.verify_interval, now) {
            self.query_cloud(out);
        }
        self.expire_handover_side(now, out);
        let State::Backup(b) = &self.state else {
            return;
        };
        let watching = b.watch.is_some();
        self.check_preempt_want(now);
        if !watching {
            self.maybe_claim(now, out);
        }
    }

    pub(super) fn backup_cloud_view(&mut self, view: CloudView, now: Time, out: &mut Vec<Action>) {
        if view == CloudView::Holder(self.cfg.instance_id.clone()) {
            // It is ours (a lost link that came back, or a claim whose answer was lost).
            self.become_master(
                "the cloud says this instance holds the ENI".into(),
                now,
                out,
            );
        }
    }

    /// The backup's decision to take the ENI (see the module docs).
    fn maybe_claim(&mut self, now: Time, out: &mut Vec<Action>) {
        let State::Backup(b) = &self.state else {
            return;
        };
        if !self.claim_backoff.ready(now) || b.accepted.is_some() {
            return;
        }
        // A node whose own checks fail never claims: it would take the address to serve it
        // worse. It still keeps its view of the holder fresh.
        let healthy = self.fit();
        match self.holder.clone() {
            HolderBelief::Unknown => {
                if !self.cloud.pending() && now >= self.cloud.next {
                    self.cloud.next = now + self.cfg.retry_delay;
                    self.query_cloud(out);
                }
            }
            _ if !healthy => {}
            HolderBelief::Nobody => {
                if self.is_best_candidate(now, None) {
                    self.claim_detached(now, out);
                }
            }
            HolderBelief::Instance(i) if i == self.cfg.instance_id => self.claim(
                None,
                false,
                ClaimKind::Reclaim,
                "the ENI is attached here but this node was not master".into(),
                now,
                out,
            ),
            HolderBelief::Instance(i) => self.maybe_take_over(i, now, out),
        }
    }

    /// A peer holds the ENI: force it off only if that peer is dead and this node is next.
    fn maybe_take_over(&mut self, instance: InstanceId, now: Time, out: &mut Vec<Action>) {
        let Some(holder) = self.peers.by_instance(&instance, &self.cfg.instance_id) else {
            // Not one of ours: never take an ENI from an instance we know nothing of.
            return;
        };
        let Some(p) = self.peers.get(&holder) else {
            return;
        };
        if self.peers.alive(p, &self.cfg, now) || now < self.judge_after {
            return self.set_silent_but_serving(None);
        }
        if !self.is_best_candidate(now, Some(&holder)) {
            return;
        }
        let silent_since = p.last_heard.unwrap_or(self.peers.started());
        let silent = now.saturating_sub(silent_since);
        let never_heard = p.last_heard.is_none();
        let reason = match self.corroborate(silent_since, never_heard) {
            Verdict::ServiceDown(fails) => format!(
                "{holder} silent for {} ms and its service does not answer through the ENI \
                 ({fails} probes failed)",
                silent.as_millis()
            ),
            // The hold-down only stops uncorroborated forced takeovers: the one move a
            // heartbeat partition can repeat. A corroborated one replaces a dead master.
            Verdict::Uncorroborated if self.hold_down.active(now) => return,
            Verdict::Uncorroborated => format!("{holder} silent for {} ms", silent.as_millis()),
            Verdict::ServiceUp => {
                self.set_silent_but_serving(Some(holder.clone()));
                // Never heard at all points at the setup (a key, a port), not at the peer.
                let alert = if never_heard {
                    Alert::PeerNeverHeard {
                        peer: holder,
                        since_start: silent,
                    }
                } else {
                    Alert::PeerSilentServiceUp {
                        peer: holder,
                        silent,
                    }
                };
                return self.alert(alert, now, out);
            }
            Verdict::NeverHeard => {
                let alert = Alert::PeerNeverHeard {
                    peer: holder,
                    since_start: silent,
                };
                return self.alert(alert, now, out);
            }
            Verdict::Pending => return,
        };
        self.set_silent_but_serving(None);
        self.claim(Some(instance), true, ClaimKind::Failover, reason, now, out);
    }

    /// Is a holder silent since `silent_since` also not serving?
    fn corroborate(&self, silent_since: Time, never_heard: bool) -> Verdict {
        let Some(fall) = self.cfg.corroborate_fall else {
            // No probe configured: silence alone decides, except for a holder this node has
            // never heard (a wrong key or a closed port looks exactly like that).
            return if never_heard {
                Verdict::NeverHeard
            } else {
                Verdict::Uncorroborated
            };
        };
        if self.probe.service_down_since(fall, silent_since) {
            Verdict::ServiceDown(self.probe.fails)
        } else if self.probe.service_up() {
            Verdict::ServiceUp
        } else {
            Verdict::Pending
        }
    }

    fn set_silent_but_serving(&mut self, peer: Option<NodeName>) {
        if let State::Backup(b) = &mut self.state {
            if peer.is_none() && b.silent_but_serving.is_some() {
                self.alerts.clear("peer-silent-service-up");
            }
            b.silent_but_serving = peer;
        }
    }
}

/// What the corroborating probe says about a silent holder.
enum Verdict {
    /// `fall` probes in a row failed, the newest after the silence began: take over.
    ServiceDown(u32),
    /// The service answers through the ENI: the holder serves, whatever its heartbeats say.
    ServiceUp,
    /// Failing, but not yet `fall` times since the silence began: wait for the next probe.
    Pending,
    /// No probe configured, and the holder was heard before: silence alone decides.
    Uncorroborated,
    /// No probe configured and the holder never heard: no forced takeover.
    NeverHeard,
}
