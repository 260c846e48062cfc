//! The orderly ways the ENI moves: yield (an operator's request), preempt (a higher-priority
//! backup asks) and stop (a host shutting down hands over; a restart keeps the ENI).
//!
//! A handover is a conversation carried in heartbeats, so it survives the loss of any packet:
//! the master offers, the target accepts, the master removes its host config and releases, the
//! target claims without force. [`Handover::then`] says what happens when it is over (or fails):
//! the stopping daemon exits, otherwise the master takes the ENI back if it already released it.

use std::time::Duration;

use super::advert::{Advert, Role, YieldMsg};
use super::events::{Action, ClaimKind, HookKind, Time};
use super::role::{Backup, Master, Release, State};
use super::{HolderBelief, Node};
use crate::ids::NodeName;

/// A handover this node runs as the giving side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Handover {
    pub id: u32,
    pub to: NodeName,
    /// The control request to answer, if an operator asked.
    pub token: Option<u64>,
    pub deadline: Time,
    pub then: After,
}

/// What happens once a handover is over, whether it worked or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    /// Part of a stop: the daemon exits.
    Exit,
    /// Keep running; if the ENI was released and the target did not take it, take it back.
    Reclaim,
}

/// The target side: accepted offer `id` from `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Accepted {
    pub id: u32,
    pub from: NodeName,
    pub deadline: Time,
}

/// An offer this node cannot take (starting or in fault), refused until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reject {
    pub id: u32,
    pub to: NodeName,
    pub until: Time,
}

/// How a stopping node wants its silence read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopMode {
    /// A restart: keep the ENI, peers wait the restart grace.
    Hold,
    /// Gone for good: handed over (or had nothing to hand over).
    Handover,
}

impl Node {
    /// The handover message this node repeats in every heartbeat.
    pub(super) fn yield_msg(&self) -> YieldMsg {
        match &self.state {
            State::Master(Master {
                handover: Some(h), ..
            })
            // The target accepted; keep showing the offer until the release is done.
            | State::Releasing {
                purpose: Release::Handover(h),
                ..
            } => YieldMsg::Offer {
                id: h.id,
                to: h.to.clone(),
            },
            State::Backup(Backup { watch: Some(h), .. }) => YieldMsg::Released {
                id: h.id,
                to: h.to.clone(),
            },
            State::Backup(Backup {
                accepted: Some(a), ..
            }) => YieldMsg::Accept {
                id: a.id,
                to: a.from.clone(),
            },
            State::Starting {
                rejecting: Some(r), ..
            }
            | State::Backup(Backup {
                rejecting: Some(r), ..
            })
            | State::Fault {
                rejecting: Some(r), ..
            } => YieldMsg::Reject {
                id: r.id,
                to: r.to.clone(),
            },
            _ => YieldMsg::None,
        }
    }

    /// A peer's heartbeat, as a step of a handover conversation.
    pub(super) fn on_handover_message(
        &mut self,
        name: &NodeName,
        advert: &Advert,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let Some((to, id)) = advert.yield_msg.addressed_to() else {
            return self.watch_for_new_master(name, advert, out);
        };
        if *to != self.cfg.name {
            return self.watch_for_new_master(name, advert, out);
        }
        match &advert.yield_msg {
            YieldMsg::Offer { .. } => self.on_offer(name, id, now, out),
            YieldMsg::Released { .. } => self.on_released(name, id, advert, now, out),
            YieldMsg::Accept { .. } => self.on_accept(name, id, now, out),
            YieldMsg::Reject { .. } => self.on_reject(name, id, out),
            YieldMsg::None => {}
        }
        self.watch_for_new_master(name, advert, out);
    }

    fn on_offer(&mut self, from: &NodeName, id: u32, now: Time, out: &mut Vec<Action>) {
        let deadline = now + self.cfg.handover_timeout;
        let reject_until = now + self.cfg.dead_interval * 2;
        let healthy = self.health.healthy;
        match &mut self.state {
            State::Backup(b) if healthy => {
                if b.accepted.as_ref().map(|a| a.id) == Some(id) {
                    return;
                }
                let from = from.clone();
                b.accepted = Some(Accepted { id, from, deadline });
            }
            // A node whose own checks fail cannot serve what it would be handed.
            State::Backup(Backup { rejecting, .. })
            | State::Starting { rejecting, .. }
            | State::Fault { rejecting, .. }
                if rejecting.as_ref().map(|r| r.id) != Some(id) =>
            {
                let to = from.clone();
                *rejecting = Some(Reject {
                    id,
                    to,
                    until: reject_until,
                });
            }
            _ => return,
        }
        out.push(Action::SendHeartbeat);
    }

    fn on_released(
        &mut self,
        from: &str,
        id: u32,
        advert: &Advert,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let State::Backup(b) = &mut self.state else {
            return;
        };
        if !b
            .accepted
            .as_ref()
            .is_some_and(|a| a.id == id && a.from == from)
        {
            return;
        }
        b.accepted = None;
        self.holder = HolderBelief::Nobody;
        let reason = format!("{from} handed the ENI over");
        let expected = Some(advert.instance_id.clone());
        self.claim(expected, false, ClaimKind::Yield, reason, now, out);
    }

    /// The offered master's side: the handover this master runs, if `to` is its target.
    fn offered(&self, to: &str, id: u32) -> Option<&Handover> {
        match &self.state {
            State::Master(Master {
                handover: Some(h), ..
            }) if h.id == id && h.to == to => Some(h),
            _ => None,
        }
    }

    fn on_accept(&mut self, from: &str, id: u32, now: Time, out: &mut Vec<Action>) {
        let Some(h) = self.offered(from, id).cloned() else {
            return;
        };
        let releasing = State::Releasing {
            purpose: Release::Handover(h),
            detaching: false,
        };
        self.transition(
            releasing,
            format!("handing the ENI over to {from}"),
            now,
            out,
        );
        out.push(Action::RemoveNet);
        out.push(Action::RunHooks {
            kind: HookKind::Backup,
            reason: format!("handed over to {from}"),
        });
    }

    fn on_reject(&mut self, from: &str, id: u32, out: &mut Vec<Action>) {
        if self.offered(from, id).is_none() {
            return;
        }
        if let Some(h) = self.take_handover() {
            let msg = format!("{from} refused to take over (it is not ready)");
            self.handover_over(h, Err(msg), out);
        }
    }

    /// The old master, after releasing, waits for the target to report master.
    fn watch_for_new_master(&mut self, name: &str, advert: &Advert, out: &mut Vec<Action>) {
        let State::Backup(Backup { watch: Some(h), .. }) = &self.state else {
            return;
        };
        if h.to == name && advert.claims_eni() {
            if let Some(h) = self.take_handover() {
                self.handover_over(h, Ok(format!("{name} is master now")), out);
            }
        }
    }

    /// Removes the running handover from the state (master before release, backup after).
    fn take_handover(&mut self) -> Option<Handover> {
        match &mut self.state {
            State::Master(m) => m.handover.take(),
            State::Backup(b) => b.watch.take(),
            _ => None,
        }
    }

    /// A handover ended: answer the operator, and exit if it was part of a stop.
    fn handover_over(
        &mut self,
        h: Handover,
        result: Result<String, String>,
        out: &mut Vec<Action>,
    ) {
        if let Err(reason) = &result {
            out.push(Action::Alert(super::health::Alert::HandoverFailed {
                to: h.to.clone(),
                reason: reason.clone(),
            }));
        }
        if let Some(token) = h.token {
            out.push(Action::Reply { token, result });
        }
        if h.then == After::Exit {
            self.finish_stop(out);
        }
    }

    /// The state a handover ran in is being left for one that does not carry it on.
    pub(super) fn handover_interrupted(
        &mut self,
        h: Handover,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        self.handover_over(h, Err(format!("handover interrupted: {reason}")), out);
    }

    /// Master tick: the target did not accept before the deadline; the ENI stays here.
    pub(super) fn handover_not_accepted(&mut self, out: &mut Vec<Action>) {
        if let Some(h) = self.take_handover() {
            let msg = format!(
                "{} did not accept the handover in time; keeping the ENI",
                h.to
            );
            self.handover_over(h, Err(msg), out);
            out.push(Action::SendHeartbeat);
        }
    }

    /// Backup tick: drop an accepted offer whose master went quiet, and give up on a target
    /// that did not become master in time.
    pub(super) fn expire_handover_side(&mut self, now: Time, out: &mut Vec<Action>) {
        let State::Backup(b) = &self.state else {
            return;
        };
        let accepted_stale = b
            .accepted
            .as_ref()
            .is_some_and(|a| now >= a.deadline || !self.peers.is_alive(&a.from, &self.cfg, now));
        let watch_expired = b.watch.as_ref().is_some_and(|h| now >= h.deadline);
        if let State::Backup(b) = &mut self.state {
            if accepted_stale {
                b.accepted = None;
            }
        }
        if !watch_expired {
            return;
        }
        let Some(h) = self.take_handover() else {
            return;
        };
        let msg = format!("{} did not become master in time", h.to);
        let then = h.then;
        self.handover_over(h, Err(format!("{msg}; taking the ENI back")), out);
        if then == After::Reclaim {
            let reason = format!("handover failed: {msg}");
            self.claim(None, false, ClaimKind::Reclaim, reason, now, out);
        }
    }

    /// A refusal is repeated for two dead intervals, then dropped.
    pub(super) fn expire_rejecting(&mut self, now: Time) {
        if let State::Starting { rejecting, .. }
        | State::Fault { rejecting, .. }
        | State::Backup(Backup { rejecting, .. }) = &mut self.state
        {
            if rejecting.as_ref().is_some_and(|r| now >= r.until) {
                *rejecting = None;
            }
        }
    }

    pub(super) fn new_handover(
        &mut self,
        to: NodeName,
        token: Option<u64>,
        deadline: Time,
        then: After,
    ) -> Handover {
        let id = self.next_handover_id;
        self.next_handover_id = self.next_handover_id.wrapping_add(1).max(1);
        Handover {
            id,
            to,
            token,
            deadline,
            then,
        }
    }

    /// Starts a handover from this master (which must have none running).
    pub(super) fn offer(&mut self, h: Handover, out: &mut Vec<Action>) {
        if let State::Master(m) = &mut self.state {
            m.handover = Some(h);
            out.push(Action::SendHeartbeat);
        }
    }

    pub(super) fn on_yield_requested(
        &mut self,
        token: u64,
        timeout: Duration,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let refusal = match &self.state {
            State::Master(m) if m.handover.is_some() => {
                Some("a handover is already in progress".into())
            }
            State::Master(_) if self.stopping.is_some() => Some("this node is stopping".into()),
            State::Master(_) => None,
            _ => Some(format!("this node is {}, not master", self.role())),
        };
        let to = self
            .peers
            .best(&self.cfg, now, None)
            .map(|(_, n)| n.clone());
        let result = match (refusal, to) {
            (Some(msg), _) => Err(msg),
            (None, None) => Err("no live peer that could take over".into()),
            (None, Some(to)) => {
                let h = self.new_handover(to, Some(token), now + timeout, After::Reclaim);
                return self.offer(h, out);
            }
        };
        out.push(Action::Reply { token, result });
    }

    pub(super) fn on_stop(&mut self, handover: bool, now: Time, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        let mode = match &self.state {
            State::Master(m) if handover && m.handover.is_none() => {
                if let Some((_, to)) = self.peers.best(&self.cfg, now, None) {
                    let to = to.clone();
                    self.stopping = Some(StopMode::Handover);
                    let deadline = now + self.cfg.handover_timeout;
                    let h = self.new_handover(to, None, deadline, After::Exit);
                    return self.offer(h, out);
                }
                // Nobody to hand over to: keeping the address is better than dropping it.
                StopMode::Hold
            }
            State::Master(_) | State::Releasing { .. } | State::Claiming { .. } => StopMode::Hold,
            _ => StopMode::Handover,
        };
        self.stopping = Some(mode);
        out.push(Action::SendHeartbeat);
        self.finish_stop(out);
    }

    pub(super) fn finish_stop(&mut self, out: &mut Vec<Action>) {
        if self.stopping.is_none() {
            self.stopping = Some(StopMode::Handover);
        }
        out.push(Action::SendHeartbeat);
        out.push(Action::RunHooks {
            kind: HookKind::Stop,
            reason: "daemon stopping".into(),
        });
        out.push(Action::Exit);
    }

    /// A stop is waiting for its handover to finish.
    pub(super) fn stop_in_progress(&self) -> bool {
        self.state.handover().is_some_and(|h| h.then == After::Exit)
    }

    /// Backup side of preempt: after the delay, ask the lower-priority master to hand over.
    pub(super) fn check_preempt_want(&mut self, now: Time) {
        let master_lower = self.peers.iter().any(|p| {
            p.advert
                .as_ref()
                .is_some_and(|a| a.role == Role::Master && a.priority < self.cfg.priority)
                && self.peers.alive(p, &self.cfg, now)
        });
        let wanted = self.cfg.preempt && master_lower && !self.hold_down.active(now);
        let delay = self.cfg.preempt_delay;
        if let State::Backup(b) = &mut self.state {
            if wanted {
                let since = *b.preempt_since.get_or_insert(now);
                b.wants_master = now >= since + delay;
            } else {
                b.preempt_since = None;
                b.wants_master = false;
            }
        }
    }

    /// Master side of preempt: hand over to a live, higher-priority peer that asks for it.
    pub(super) fn maybe_honour_preempt(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        let want = self
            .peers
            .iter()
            .filter(|p| self.peers.candidate(p, &self.cfg, now))
            .find(|p| {
                p.advert.as_ref().is_some_and(|a| {
                    a.wants_master && a.role == Role::Backup && a.priority > self.cfg.priority
                })
            })
            .map(|p| p.name.clone());
        if let Some(to) = want {
            let h = self.new_handover(to, None, now + self.cfg.handover_timeout, After::Reclaim);
            self.offer(h, out);
        }
    }
}

impl Node {
    /// Maintenance on or off. A master going into maintenance hands over first (like a yield,
    /// answered when the peer is master); with no healthy peer it refuses unless `force`, and then
    /// keeps the ENI until a peer can take it.
    pub(super) fn on_maintenance(
        &mut self,
        on: bool,
        reason: String,
        force: bool,
        token: Option<u64>,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let reply = |out: &mut Vec<Action>, result: Result<String, String>| {
            if let Some(token) = token {
                out.push(Action::Reply { token, result });
            }
        };
        if !on {
            self.maintenance = None;
            self.alerts.clear("maintenance-no-peer");
            out.push(Action::SendHeartbeat);
            return reply(
                out,
                Ok("maintenance off: this node can take the ENI again".into()),
            );
        }
        let State::Master(m) = &self.state else {
            self.maintenance = Some(reason);
            out.push(Action::SendHeartbeat);
            return reply(
                out,
                Ok("in maintenance: this node will not take the ENI".into()),
            );
        };
        if m.handover.is_some() {
            return reply(out, Err("a handover is already in progress".into()));
        }
        let to = self
            .peers
            .best(&self.cfg, now, None)
            .map(|(_, n)| n.clone());
        match to {
            Some(to) => {
                self.maintenance = Some(reason);
                let deadline = now + self.cfg.handover_timeout;
                let h = self.new_handover(to, token, deadline, After::Reclaim);
                if let State::Master(m) = &mut self.state {
                    m.next_health_handover = deadline;
                }
                self.offer(h, out);
            }
            None if force => {
                self.maintenance = Some(reason);
                out.push(Action::SendHeartbeat);
                reply(
                    out,
                    Ok(
                        "in maintenance, but no healthy peer can take over: keeping the ENI \
                        until one can"
                            .into(),
                    ),
                );
            }
            None => reply(
                out,
                Err(
                    "no healthy peer could take over: the ENI would be unserved. Bring a \
                     peer up, or use --force to enter maintenance and keep the ENI here \
                     until one can take it"
                        .into(),
                ),
            ),
        }
    }
}
