//! A claim in flight and its outcome: master when the cloud attached the ENI here; backup (with a
//! hold-down when the winner cannot be heard) when someone else holds it; backoff or fault when
//! the cloud failed.

use super::events::{Action, ClaimKind, ClaimResult, Failure, Time};
use super::role::State;
use super::{HolderBelief, Node};
use crate::ids::InstanceId;

impl Node {
    /// Asks the cloud to attach the ENI here, replacing `expected_holder` (and only it).
    pub(super) fn claim(
        &mut self,
        expected_holder: Option<InstanceId>,
        force: bool,
        kind: ClaimKind,
        reason: String,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        self.transition(State::Claiming { kind }, reason.clone(), now, out);
        out.push(Action::Claim {
            expected_holder,
            force,
            kind,
            reason,
        });
    }

    pub(super) fn on_claim_done(
        &mut self,
        r: Result<ClaimResult, Failure>,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let State::Claiming { kind } = self.state else {
            return;
        };
        self.cloud.invalidate();
        match r {
            Ok(ClaimResult::Claimed) => {
                self.become_master(format!("claimed the ENI ({})", kind.as_str()), now, out);
            }
            Ok(ClaimResult::HeldBy(i)) => self.lost_race(i, now, out),
            Err(f) if !f.retryable => {
                self.go_fault(format!("claim failed: {}", f.message), now, out);
            }
            Err(f) => {
                // A claim that may have half-happened, or a restarted node's earlier run, can
                // leave host config behind: a backup must not keep it.
                out.push(Action::RemoveNet);
                let backoff = self.claim_backoff.failed(&self.cfg, now);
                let reason = format!("claim failed ({}), retrying in {:?}", f.message, backoff);
                self.transition(State::backup(), reason, now, out);
            }
        }
    }

    fn lost_race(&mut self, instance: InstanceId, now: Time, out: &mut Vec<Action>) {
        self.holder = HolderBelief::Instance(instance.clone());
        let who = self.peers.by_instance(&instance, &self.cfg.instance_id);
        let audible = who
            .as_deref()
            .is_some_and(|p| self.peers.audible(p, &self.cfg, now));
        // A winner we cannot hear may be on the other side of a partition: hold off as after a
        // loss, or the two would trade the ENI every dead interval.
        if !audible {
            self.start_hold_down(now, out);
        }
        if let Some(p) = who.as_deref().and_then(|p| self.peers.get_mut(p)) {
            // Give the winner a full dead interval before judging it.
            p.last_heard = Some(p.last_heard.map_or(now, |h| h.max(now)));
        }
        let who = who.map_or_else(|| instance.to_string(), String::from);
        // As at start: an earlier run of this node may have left host config behind.
        out.push(Action::RemoveNet);
        self.become_backup(
            format!("lost the race: {who} holds the ENI"),
            "lost the claim",
            now,
            out,
        );
    }
}
