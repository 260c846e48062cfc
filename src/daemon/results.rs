//! What comes back to the loop, turned into core events: worker results ([`Done`]), heartbeats,
//! hook reports and control requests. The timeline is kept here, from the typed results, so the
//! workers only report what happened.

use std::time::Duration;

use tracing::{debug, info, warn};

use super::{Daemon, Done};
use crate::control::{Incoming, Request, Response};
use crate::core::{ClaimResult, Event};
use crate::hooks::{HookReport, Transition};
use crate::peer::Received;
use crate::timeline::{Mark, Outcome};

impl Daemon {
    pub(super) async fn on_done(&mut self, done: Done) {
        match done {
            Done::Cloud { event, steps, info } => {
                if let Some(info) = info {
                    self.remember_eni(info);
                }
                self.timeline.extend(steps);
                self.record_cloud_result(&event);
                self.feed(event).await;
            }
            Done::EarlyClaim { info, steps } => {
                self.remember_eni(info);
                self.timeline.extend(steps);
                self.timeline.expect_confirmation();
                self.feed(Event::ClaimDone(Ok(ClaimResult::Claimed))).await;
            }
            Done::Confirmed { steps, info, lost } => {
                if let Some(info) = info {
                    self.remember_eni(info);
                }
                match lost {
                    None => self.timeline.confirmed(steps, None),
                    Some(lost) => {
                        let (event, outcome) = *lost;
                        self.timeline.confirmed(steps, Some(outcome));
                        self.feed(event).await;
                    }
                }
            }
            Done::Described(result) => self.on_described(result).await,
            Done::Net { event, steps } => {
                self.timeline.extend(steps);
                let applied = event == Event::NetApplied(Ok(()));
                if applied {
                    self.timeline.mark(Mark::NetApplied);
                }
                self.feed(event).await;
                if applied && self.node.is_serving() {
                    self.checks_network_applied();
                    self.start_watch().await;
                }
            }
            Done::Leftovers { tried, failed } => self.on_leftovers(tried, failed),
            Done::Ipv6(problem) => self.on_ipv6(problem),
            Done::LinkGone => {
                warn!("the ENI's interface disappeared from this host");
                self.feed(Event::LinkLost).await;
            }
            Done::Drift => self.reconcile().await,
            Done::Core(event) => self.feed(event).await,
        }
    }

    /// Ends the running timeline when a cloud result ends the move: a lost or failed claim, or a
    /// release. A successful claim goes on until the host config and the hooks are done.
    fn record_cloud_result(&mut self, event: &Event) {
        let outcome = match event {
            Event::ClaimDone(Ok(ClaimResult::HeldBy(h))) => Outcome::Lost {
                holder: h.to_string(),
            },
            Event::ClaimDone(Err(f)) => Outcome::ClaimFailed(f.message.clone()),
            Event::ReleaseDone(r) => {
                self.timeline.mark(Mark::Released);
                match r {
                    Ok(()) => Outcome::Released,
                    Err(f) => Outcome::ReleaseFailed(f.message.clone()),
                }
            }
            _ => return,
        };
        self.timeline.finish(outcome);
    }

    pub(super) async fn on_received(&mut self, r: Received) {
        match r {
            Received::Accepted {
                peer,
                advert,
                incarnation,
            } => {
                crate::metrics::heartbeat_received();
                self.feed(Event::Heartbeat {
                    peer,
                    advert,
                    incarnation,
                })
                .await;
            }
            Received::Rejected { reason, from } => {
                debug!(%from, reason, "heartbeat rejected");
                crate::metrics::heartbeat_rejected(reason);
            }
        }
    }

    /// The master hooks are the last step of taking over: they end the running timeline.
    pub(super) fn on_hooks(&mut self, report: HookReport) {
        crate::metrics::hooks_ran(&report);
        if report.transition != Transition::Master || !self.timeline.is_running() {
            return;
        }
        self.timeline.mark_at(Mark::HooksDone, report.finished_at);
        self.timeline.finish(Outcome::Master);
        crate::metrics::move_finished(self.timeline.report().as_ref());
    }

    pub(super) async fn on_control(&mut self, inc: Incoming) {
        match inc.request {
            Request::Role => {
                let _ = inc.reply.send(Response::Role(self.report()));
            }
            Request::Yield { timeout_ms } => {
                let token = self.next_token;
                self.next_token += 1;
                self.pending_yields.insert(token, inc.reply);
                info!(timeout_ms, "yield requested");
                self.feed(Event::YieldRequested {
                    token,
                    timeout: Duration::from_millis(timeout_ms),
                })
                .await;
            }
            Request::Maintenance {
                on,
                reason,
                force,
                timeout_ms: _,
            } => {
                let token = self.next_token;
                self.next_token += 1;
                self.pending_yields.insert(token, inc.reply);
                info!(on, %reason, force, "maintenance requested");
                let event = Event::Maintenance {
                    on,
                    reason,
                    force,
                    token: Some(token),
                };
                self.feed(event).await;
                self.persist_maintenance();
            }
        }
    }
}
