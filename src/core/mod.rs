//! The failover core: every decision enipeer makes, as a pure function
//! `(state, event, now) -> actions`.
//!
//! Nothing here does I/O, reads a clock or draws random numbers: the daemon feeds it events with
//! the time they happened and carries out the [`Action`]s it returns; the simulation in
//! `tests/simulation.rs` does the same with a fake clock, network and cloud. That is what makes
//! the failover logic testable under thousands of fault schedules.
//!
//! Where to read what:
//! - [`role`]: the states, each carrying its own data.
//! - `backup.rs`: **when a backup claims, and with force or without** — the whole takeover rule.
//! - `master.rs`: what keeps a master master, and when it steps down.
//! - `starting.rs`: start-up (adopt, elect, or become backup) and fault recovery.
//! - `claiming.rs` / `releasing.rs`: a claim's and a release's outcome.
//! - `handover.rs`: yield, preempt and stop, the orderly ways the ENI moves.
//! - `peers.rs`: the peer table; `timers.rs`: hold-down, claim backoff, cloud polling.
//!
//! The rules, in short:
//! - The cloud's attachment is the truth. At start the node asks the cloud; if the ENI is already
//!   attached here it adopts it without moving it.
//! - A backup claims when the holder has been silent for the dead interval (or the ENI is
//!   detached) and it is the best live candidate (priority, then name). A claim is a
//!   compare-and-swap on the attachment: it names the holder it expects to replace, and a
//!   different holder makes it stop ([`ClaimResult::HeldBy`]).
//! - A master that finds the ENI gone (cloud says another holder, or its link vanished) steps
//!   down at once and then holds off from claiming for a hold-down that doubles on repeats, so a
//!   heartbeat-only partition cannot make the ENI ping-pong.
//! - Yield and preempt are orderly handovers: offer, accept, release, claim; never stealing.

pub mod advert;
mod backup;
mod claiming;
mod config;
mod events;
mod handover;
mod health;
mod master;
mod peers;
mod releasing;
mod role;
mod starting;
mod timers;

use std::time::Duration;

pub use advert::{Advert, HolderBelief, Role, YieldMsg};
pub use config::CoreConfig;
pub use events::{
    Action, ClaimKind, ClaimResult, CloudView, Event, Failure, HookKind, Time, Transition,
};
pub use health::{Alert, OwnHealth, ProbeHistory, ALERT_EVERY};
pub use peers::PeerState;

use handover::StopMode;
use health::AlertPacer;
use peers::Peers;
use role::{NetPhase, State};
use timers::{ClaimBackoff, CloudPoll, HoldDown};

use crate::ids::{InstanceId, NodeName};

/// One node's failover state machine.
#[derive(Debug, Clone)]
pub struct Node {
    cfg: CoreConfig,
    state: State,
    role_since: Time,
    last_transition: Option<Transition>,
    peers: Peers,
    holder: HolderBelief,
    cloud: CloudPoll,
    next_heartbeat: Time,
    hold_down: HoldDown,
    claim_backoff: ClaimBackoff,
    next_handover_id: u32,
    /// Set once the daemon was told to stop; how peers should treat the silence that follows.
    stopping: Option<StopMode>,
    health: OwnHealth,
    /// The corroborating probe through the ENI's address (what a backup asks before a takeover).
    probe: ProbeHistory,
    /// Probes sent before this are forgotten: set on becoming master, where the probe does not
    /// run, so that a later backup judges a silent holder by fresh probes only, never by the
    /// failures that led to its own takeover.
    probe_since: Time,
    alerts: AlertPacer,
    /// After a stall of this node's own loop, no peer is judged dead before this.
    judge_after: Time,
    /// In maintenance (with the operator's reason): never claims, hands over as master.
    maintenance: Option<String>,
    /// Peers last seen alive (to tell "lost" and "back" apart), and the lost ones.
    peers_alive: std::collections::BTreeMap<NodeName, Liveness>,
    /// Since when every cloud query has failed.
    cloud_failing_since: Option<Time>,
}

impl Node {
    /// A node that has just started. Call [`Node::start`] for its first actions.
    pub fn new(cfg: CoreConfig, now: Time) -> Self {
        Node {
            state: State::starting(now + cfg.settle()),
            role_since: now,
            last_transition: None,
            peers: Peers::new(&cfg, now),
            holder: HolderBelief::Unknown,
            cloud: CloudPoll::new(now),
            next_heartbeat: now,
            hold_down: HoldDown::new(now),
            claim_backoff: ClaimBackoff::new(now),
            next_handover_id: 1,
            stopping: None,
            health: OwnHealth::new(now),
            probe: ProbeHistory::default(),
            probe_since: Time::ZERO,
            alerts: AlertPacer::default(),
            judge_after: now,
            maintenance: cfg.maintenance.clone(),
            peers_alive: Default::default(),
            cloud_failing_since: None,
            cfg,
        }
    }

    pub fn start(&mut self, now: Time) -> Vec<Action> {
        self.handle(Event::Tick, now)
    }

    /// A reload: the settings that can change live (timings, priority, preempt, hold-down, stop)
    /// take effect; the role and everything it carries stay. Identity and peers cannot change
    /// live (the config reload refuses that before it gets here), so they are kept.
    pub fn reconfigure(&mut self, cfg: CoreConfig, now: Time) -> Vec<Action> {
        let old = std::mem::replace(&mut self.cfg, cfg);
        self.cfg.name = old.name;
        self.cfg.instance_id = old.instance_id;
        self.cfg.peers = old.peers;
        // Peers learn a new priority at once rather than at the next interval.
        self.next_heartbeat = now;
        self.handle(Event::Tick, now)
    }

    pub fn role(&self) -> Role {
        self.state.role()
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn role_since(&self) -> Time {
        self.role_since
    }

    pub fn last_transition(&self) -> Option<&Transition> {
        self.last_transition.as_ref()
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerState> {
        self.peers.iter()
    }

    pub fn holder(&self) -> &HolderBelief {
        &self.holder
    }

    pub fn cloud_checked(&self) -> Option<Time> {
        self.cloud.checked
    }

    pub fn hold_down_left(&self, now: Time) -> Option<Duration> {
        self.hold_down.left(now)
    }

    /// True once this node believes it serves the address (master with host config applied).
    pub fn is_serving(&self) -> bool {
        matches!(&self.state, State::Master(m) if m.net == NetPhase::Ready)
    }

    pub fn health(&self) -> &OwnHealth {
        &self.health
    }

    pub fn maintenance(&self) -> Option<&str> {
        self.maintenance.as_deref()
    }

    pub fn probe(&self) -> &ProbeHistory {
        &self.probe
    }

    /// A master whose checks fail and that has no healthy peer to hand over to.
    pub fn is_degraded(&self) -> bool {
        matches!(&self.state, State::Master(m) if m.degraded)
    }

    /// The silent peer whose service still answers through the ENI, while that lasts.
    pub fn silent_but_serving(&self) -> Option<&NodeName> {
        match &self.state {
            State::Backup(b) => b.silent_but_serving.as_ref(),
            _ => None,
        }
    }

    pub fn is_alive(&self, peer: &str, now: Time) -> bool {
        self.peers.is_alive(peer, &self.cfg, now)
    }

    /// The latest time by which [`Event::Tick`] must be delivered.
    pub fn next_wakeup(&self, now: Time) -> Time {
        let mut t = self.next_heartbeat;
        let mut consider = |x: Option<Time>| {
            if let Some(x) = x.filter(|x| *x > now && *x < t) {
                t = x;
            }
        };
        for deadline in self.role_deadlines() {
            consider(Some(deadline));
        }
        consider(Some(self.hold_down.until()));
        consider(Some(self.claim_backoff.retry_at()));
        consider(Some(self.judge_after));
        consider(self.peers.next_death(&self.cfg, now));
        t.max(now)
    }

    /// The deadlines of the current role.
    fn role_deadlines(&self) -> Vec<Time> {
        let mut d = Vec::new();
        match &self.state {
            State::Starting { settle_until, .. } => d.extend([*settle_until, self.cloud.next]),
            State::Master(m) => {
                d.push(self.cloud.next);
                if let NetPhase::Failed { retry_at } = m.net {
                    d.push(retry_at);
                }
            }
            State::Backup(b) => {
                d.push(self.cloud.next);
                d.extend(b.accepted.as_ref().map(|a| a.deadline));
                d.extend(b.preempt_since.map(|s| s + self.cfg.preempt_delay));
            }
            State::Fault { until, .. } => d.push(*until),
            State::Claiming { .. } | State::Releasing { .. } => {}
        }
        d.extend(self.state.handover().map(|h| h.deadline));
        d
    }

    /// The heartbeat payload describing this node now.
    pub fn advert(&self) -> Advert {
        Advert {
            role: self.role(),
            priority: self.cfg.priority,
            instance_id: self.cfg.instance_id.clone(),
            holder: self.holder.clone(),
            yield_msg: self.yield_msg(),
            stopping_ms: match self.stopping {
                Some(StopMode::Hold) => {
                    u32::try_from(self.cfg.restart_grace.as_millis()).unwrap_or(u32::MAX)
                }
                _ => 0,
            },
            wants_master: matches!(&self.state, State::Backup(b) if b.wants_master),
            healthy: self.health.healthy,
            maintenance: self.maintenance.is_some(),
        }
    }

    /// Feed one event; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Tick => {}
            Event::Heartbeat {
                peer,
                advert,
                incarnation,
            } => self.on_heartbeat(&peer, advert, incarnation, now, &mut out),
            Event::CloudState(r) => self.on_cloud_state(r, now, &mut out),
            Event::ClaimDone(r) => self.on_claim_done(r, now, &mut out),
            Event::ReleaseDone(r) => self.on_release_done(r, now, &mut out),
            Event::NetApplied(r) => self.on_net_applied(r, now, &mut out),
            Event::NetRemoved(r) => self.on_net_removed(r, &mut out),
            Event::LinkLost => self.on_link_lost(now, &mut out),
            Event::YieldRequested { token, timeout } => {
                self.on_yield_requested(token, timeout, now, &mut out)
            }
            Event::Stop { handover } => self.on_stop(handover, now, &mut out),
            Event::Health { healthy, detail } => self.on_health(healthy, detail, now, &mut out),
            Event::EniProbe { sent, ok } if sent >= self.probe_since => self.probe.record(sent, ok),
            Event::EniProbe { .. } => {}
            Event::Maintenance {
                on,
                reason,
                force,
                token,
            } => self.on_maintenance(on, reason, force, token, now, &mut out),
            Event::Stalled { gap } => {
                // What arrived while this node was not running has just been drained: give each
                // peer one more interval before judging it by a silence that may be ours.
                let _ = gap;
                self.judge_after = now + self.cfg.heartbeat_interval;
            }
        }
        // Every event may make a deadline or a claim condition true: evaluate timers after it.
        self.on_tick(now, &mut out);
        self.notice_peer_changes(now, &mut out);
        self.pace_heartbeat(now, &mut out);
        out
    }

    /// At most one heartbeat per call, and one at least every interval.
    fn pace_heartbeat(&mut self, now: Time, out: &mut Vec<Action>) {
        if now >= self.next_heartbeat && !out.contains(&Action::Exit) {
            out.push(Action::SendHeartbeat);
        }
        if out.contains(&Action::SendHeartbeat) {
            self.next_heartbeat = now + self.cfg.heartbeat_interval;
            let mut seen = false;
            out.retain(|a| *a != Action::SendHeartbeat || !std::mem::replace(&mut seen, true));
        }
    }

    fn on_tick(&mut self, now: Time, out: &mut Vec<Action>) {
        // Stopped for good: the exit is on its way, nothing more to decide.
        if self.stopping.is_some() && !self.stop_in_progress() {
            return;
        }
        match &self.state {
            State::Starting { settle_until, .. } => self.tick_starting(*settle_until, now, out),
            State::Backup(_) => self.tick_backup(now, out),
            State::Master(_) => self.tick_master(now, out),
            State::Fault { until, .. } => self.tick_fault(*until, now, out),
            State::Claiming { .. } | State::Releasing { .. } => {}
        }
    }

    fn on_heartbeat(
        &mut self,
        name: &NodeName,
        advert: Advert,
        incarnation: u64,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        if !self.peers.heard(name, &advert, incarnation, now) {
            return;
        }
        // Heard again after a loss: whatever cut us off is over, so a later loss is not a repeat
        // of it (the escalation protects against a partition that lasts, not one that healed).
        self.hold_down.forget_escalation();
        // A peer that says it is master and holds the ENI is news about the holder.
        if advert.claims_eni() {
            match self.state {
                // Two masters: only the cloud can tell who is right.
                State::Master(_) | State::Releasing { .. } => self.query_cloud(out),
                _ => self.holder = advert.holder.clone(),
            }
        }
        // Backups that disagree about the holder ask the cloud (rate-limited) instead of
        // waiting for each other.
        if matches!(self.state, State::Backup(_))
            && !matches!(advert.role, Role::Claiming | Role::Releasing)
            && advert.holder != HolderBelief::Unknown
            && self.holder != HolderBelief::Unknown
            && advert.holder != self.holder
        {
            let earliest = self.cloud.checked.map_or(now, |t| t + self.cfg.retry_delay);
            self.cloud.next = self.cloud.next.min(earliest.max(now));
        }
        self.on_handover_message(name, &advert, now, out);
    }

    fn on_cloud_state(&mut self, r: Result<CloudView, Failure>, now: Time, out: &mut Vec<Action>) {
        if !self.cloud.answered() {
            // Asked before the last claim, release or lost link: the answer may predate it.
            self.query_cloud(out);
            return;
        }
        let view = match r {
            Ok(v) => {
                self.cloud_failing_since = None;
                self.alerts.clear("cloud-unreachable");
                v
            }
            Err(f) => {
                let since = *self.cloud_failing_since.get_or_insert(now);
                if now.saturating_sub(since) >= health::CLOUD_UNREACHABLE_AFTER {
                    let duration = now - since;
                    self.alert(Alert::CloudUnreachable { duration }, now, out);
                }
                if matches!(self.state, State::Starting { .. }) && !f.retryable {
                    self.go_fault(format!("cannot read the ENI: {}", f.message), now, out);
                } else {
                    // A master that cannot reach the cloud keeps serving: it has no evidence
                    // that anyone else holds the ENI, and the attachment cannot move without a
                    // working API.
                    self.cloud.next = now + self.cfg.retry_delay;
                }
                return;
            }
        };
        self.cloud.checked = Some(now);
        self.holder = match &view {
            CloudView::Nobody => HolderBelief::Nobody,
            CloudView::Holder(i) => HolderBelief::Instance(i.clone()),
        };
        match self.state {
            State::Starting { .. } => self.starting_cloud_view(view, now, out),
            State::Master(_) => self.master_cloud_view(view, now, out),
            State::Backup(_) => self.backup_cloud_view(view, now, out),
            _ => {}
        }
    }

    // ---- shared by the roles ----

    fn transition(&mut self, to: State, reason: String, now: Time, out: &mut Vec<Action>) {
        // A handover in progress that the new state does not carry on must still be answered.
        if let Some(h) = self.state.handover() {
            if to.handover().map(|t| t.id) != Some(h.id) {
                let h = h.clone();
                self.handover_interrupted(h, &reason, out);
            }
        }
        let from = self.state.role();
        let to_role = to.role();
        self.state = to;
        if from != to_role {
            self.role_since = now;
            if to_role == Role::Master {
                self.probe = ProbeHistory::default();
                self.probe_since = now;
            }
            self.last_transition = Some(Transition {
                from,
                to: to_role,
                reason: reason.clone(),
                at: now,
            });
            out.push(Action::Transitioned {
                from,
                to: to_role,
                reason,
            });
            // Tell peers at once rather than at the next interval: a handover or a takeover
            // should not wait for the heartbeat timer.
            out.push(Action::SendHeartbeat);
        }
    }

    fn become_backup(
        &mut self,
        reason: String,
        hook_reason: &str,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        self.transition(State::backup(), reason, now, out);
        out.push(Action::RunHooks {
            kind: HookKind::Backup,
            reason: hook_reason.into(),
        });
    }

    /// Fit to hold the ENI: own checks pass and not in maintenance.
    fn fit(&self) -> bool {
        self.health.healthy && self.maintenance.is_none()
    }

    /// Raises `alert` unless one of its kind was raised within [`ALERT_EVERY`].
    fn alert(&mut self, alert: Alert, now: Time, out: &mut Vec<Action>) {
        if self.alerts.due(&alert, now) {
            out.push(Action::Alert(alert));
        }
    }

    fn on_health(&mut self, healthy: bool, detail: String, now: Time, out: &mut Vec<Action>) {
        if healthy == self.health.healthy {
            self.health.detail = detail;
            return;
        }
        self.health = OwnHealth {
            healthy,
            detail: detail.clone(),
            since: now,
        };
        out.push(Action::Alert(Alert::HealthChanged { healthy, detail }));
        if healthy {
            self.alerts.clear("degraded");
            if let State::Master(m) = &mut self.state {
                m.degraded = false;
            }
        }
        // Peers choose handover targets by it: tell them now.
        out.push(Action::SendHeartbeat);
    }

    /// Redundancy lost and regained: a peer that was alive died, or a lost one is back.
    fn notice_peer_changes(&mut self, now: Time, out: &mut Vec<Action>) {
        let mut changes = Vec::new();
        for p in self.peers.iter() {
            // A real heartbeat, not a `last_heard` given to a claim's winner to judge it later.
            let alive = p.incarnation.is_some() && self.peers.alive(p, &self.cfg, now);
            let was = self
                .peers_alive
                .get(&p.name)
                .copied()
                .unwrap_or(Liveness::Never);
            // "Back" only after "lost": a peer heard for the first time is not news.
            let (next, alert) = match (was, alive) {
                (Liveness::Alive, false) => (
                    Liveness::Lost,
                    Some(Alert::PeerLost {
                        peer: p.name.clone(),
                    }),
                ),
                (Liveness::Lost, true) => (
                    Liveness::Alive,
                    Some(Alert::PeerBack {
                        peer: p.name.clone(),
                    }),
                ),
                (Liveness::Never, true) => (Liveness::Alive, None),
                (state, _) => (state, None),
            };
            self.peers_alive.insert(p.name.clone(), next);
            changes.extend(alert);
        }
        out.extend(changes.into_iter().map(Action::Alert));
    }

    /// Starts (or escalates) the hold-down and tells the operator.
    fn start_hold_down(&mut self, now: Time, out: &mut Vec<Action>) {
        self.hold_down.start(&self.cfg, now);
        let duration = self.hold_down.left(now).unwrap_or_default();
        out.push(Action::Alert(Alert::HoldDownStarted { duration }));
    }

    fn go_fault(&mut self, reason: String, now: Time, out: &mut Vec<Action>) {
        let until = now + self.cfg.retry_delay.max(self.cfg.dead_interval) * 5;
        let fault = State::Fault {
            until,
            rejecting: None,
        };
        self.transition(fault, reason.clone(), now, out);
        out.push(Action::Alert(Alert::FaultEntered {
            reason: reason.clone(),
        }));
        out.push(Action::RunHooks {
            kind: HookKind::Fault,
            reason,
        });
    }

    fn query_cloud(&mut self, out: &mut Vec<Action>) {
        if self.cloud.ask() {
            out.push(Action::QueryCloud);
        }
    }

    /// A peer's name for an instance id, or the id itself.
    fn who(&self, instance: &InstanceId) -> String {
        self.peers
            .by_instance(instance, &self.cfg.instance_id)
            .map_or_else(|| instance.to_string(), String::from)
    }

    /// The best live candidate for the ENI among this node and its peers, `except` one.
    fn best_candidate(&self, now: Time, except: Option<&str>) -> Option<NodeName> {
        let me_ok =
            !matches!(self.state, State::Fault { .. }) && self.stopping.is_none() && self.fit();
        let me = me_ok.then_some((self.cfg.priority, &self.cfg.name));
        let best = match (me, self.peers.best(&self.cfg, now, except)) {
            (Some(m), Some(p)) if peers::better(p.0, p.1.as_str(), m.0, m.1.as_str()) => Some(p),
            (Some(m), _) => Some(m),
            (None, p) => p,
        };
        best.map(|(_, n)| n.clone())
    }

    fn is_best_candidate(&self, now: Time, except: Option<&str>) -> bool {
        self.best_candidate(now, except).as_ref() == Some(&self.cfg.name)
    }
}

/// What [`Node::notice_peer_changes`] last saw of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// Not heard since this node started.
    Never,
    Alive,
    /// Was alive, is not now: redundancy is gone.
    Lost,
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_health;
