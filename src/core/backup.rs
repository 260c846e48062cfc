//! The backup: when it claims the ENI, and with force or without. The whole takeover rule is
//! here, in [`Node::maybe_claim`]:
//!
//! - nobody holds the ENI (detached): the best live candidate claims it **without force**, at
//!   once, even during a hold-down (an operator's detach or a lost link must not leave the
//!   address unserved);
//! - the cloud says it is attached here: claim it back without force (adopt);
//! - a peer holds it: claim **with force** (the holder is believed dead) only when that peer has
//!   been silent for the dead interval (or its restart grace), this node is the best remaining
//!   candidate, no hold-down is running and the last failed claim's backoff is over;
//! - an instance that is not one of the group's peers holds it: never claim.
//!
//! Every claim names the holder it expects to replace (compare-and-swap in the cloud).

use super::events::{Action, ClaimKind, CloudView, Time};
use super::role::State;
use super::{HolderBelief, Node};

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
        match self.holder.clone() {
            HolderBelief::Unknown => {
                if !self.cloud.pending() && now >= self.cloud.next {
                    self.cloud.next = now + self.cfg.retry_delay;
                    self.query_cloud(out);
                }
            }
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
    fn maybe_take_over(&mut self, instance: String, now: Time, out: &mut Vec<Action>) {
        // The hold-down only stops forced takeovers: the one move a heartbeat partition can
        // repeat.
        if self.hold_down.active(now) {
            return;
        }
        let Some(holder) = self.peers.by_instance(&instance, &self.cfg.instance_id) else {
            // Not one of ours: never take an ENI from an instance we know nothing of.
            return;
        };
        let Some(p) = self.peers.get(&holder) else {
            return;
        };
        if self.peers.alive(p, &self.cfg, now) || !self.is_best_candidate(now, Some(&holder)) {
            return;
        }
        let silent = now.saturating_sub(p.last_heard.unwrap_or(self.peers.started()));
        let reason = match p.last_heard {
            Some(_) => format!("{holder} silent for {} ms", silent.as_millis()),
            None => format!("{holder} not heard since start ({} ms)", silent.as_millis()),
        };
        self.claim(Some(instance), true, ClaimKind::Failover, reason, now, out);
    }
}
