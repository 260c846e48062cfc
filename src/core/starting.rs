//! Start-up and fault recovery: a starting node listens for a settle time and asks the cloud,
//! then adopts an ENI already attached here, claims a detached one if it is the best candidate,
//! or becomes backup. A node in fault waits out its fault period and starts over.

use super::events::{Action, ClaimKind, CloudView, Time};
use super::role::State;
use super::{HolderBelief, Node};

impl Node {
    pub(super) fn tick_starting(&mut self, settle_until: Time, now: Time, out: &mut Vec<Action>) {
        if now >= self.cloud.next {
            self.query_cloud(out);
        }
        self.expire_rejecting(now);
        if now < settle_until || self.holder != HolderBelief::Nobody {
            return;
        }
        if self.is_best_candidate(now, None) {
            self.claim_detached(now, out);
            return;
        }
        let best = self
            .best_candidate(now, None)
            .map_or_else(String::new, String::from);
        out.push(Action::RemoveNet);
        self.become_backup(
            format!("nobody holds the ENI; {best} is the better candidate"),
            "started as backup",
            now,
            out,
        );
    }

    pub(super) fn starting_cloud_view(
        &mut self,
        view: CloudView,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        match view {
            CloudView::Holder(i) if i == self.cfg.instance_id => self.become_master(
                "adopted: the cloud says this instance already holds the ENI".into(),
                now,
                out,
            ),
            CloudView::Holder(i) => {
                let who = self.who(&i);
                // An earlier run of this node may have been master: clear its host config.
                out.push(Action::RemoveNet);
                self.become_backup(
                    format!("{who} holds the ENI"),
                    "started as backup",
                    now,
                    out,
                );
            }
            // Decided in tick_starting once the settle time has passed.
            CloudView::Nobody => {}
        }
    }

    pub(super) fn tick_fault(&mut self, until: Time, now: Time, out: &mut Vec<Action>) {
        self.expire_rejecting(now);
        if now < until {
            return;
        }
        self.cloud.next = now;
        let reason = "fault period over, starting over".to_string();
        self.transition(State::starting(now + self.cfg.settle()), reason, now, out);
        self.query_cloud(out);
    }

    /// Nobody holds the ENI and this node is the best candidate: claim it, without force.
    pub(super) fn claim_detached(&mut self, now: Time, out: &mut Vec<Action>) {
        self.claim(
            None,
            false,
            ClaimKind::Election,
            "nobody holds the ENI and this node is the best candidate".into(),
            now,
            out,
        );
    }
}
