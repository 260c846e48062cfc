//! Giving the ENI up: the host config is removed first, then the ENI detached. A handover then
//! waits (as backup) for the target to report master; a fault release ends in fault.

use super::events::{Action, Failure, Time};
use super::role::{Backup, Release, State};
use super::{HolderBelief, Node};

impl Node {
    pub(super) fn on_net_removed(&mut self, r: Result<(), String>, out: &mut Vec<Action>) {
        if let State::Releasing {
            detaching: detaching @ false,
            ..
        } = &mut self.state
        {
            // Detach even if some of the host config could not be removed: the address must
            // move, and leftovers are reported (and removed again at the next release).
            let _ = r;
            *detaching = true;
            out.push(Action::Release);
        }
    }

    pub(super) fn on_release_done(
        &mut self,
        r: Result<(), Failure>,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let State::Releasing { purpose, .. } = &self.state else {
            return;
        };
        let purpose = purpose.clone();
        self.cloud.invalidate();
        match (purpose, r) {
            (Release::Handover(h), Ok(())) => {
                self.holder = HolderBelief::Nobody;
                let reason = format!("released the ENI for {}", h.to);
                let watching = State::Backup(Backup {
                    watch: Some(h),
                    ..Backup::default()
                });
                self.transition(watching, reason, now, out);
            }
            (Release::Handover(_), Err(f)) => {
                // Where the ENI is now is unknown: ask the cloud and adopt it if still here. The
                // handover is answered by the transition (it is interrupted).
                self.holder = HolderBelief::Unknown;
                self.cloud.next = now;
                self.query_cloud(out);
                let reason = format!("release failed: {}", f.message);
                self.transition(State::starting(now), reason, now, out);
            }
            (Release::Fault(reason), Err(f)) => {
                self.holder = HolderBelief::Unknown;
                let reason = format!("{reason}; release failed too: {}", f.message);
                self.go_fault(reason, now, out);
            }
            (Release::Fault(reason), Ok(())) => {
                self.holder = HolderBelief::Nobody;
                self.go_fault(reason, now, out);
            }
        }
    }
}
