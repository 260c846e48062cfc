//! The failover core: every decision enipeer makes, as a pure function
//! `(state, event, now) -> actions`.
//!
//! Nothing here does I/O, reads a clock or draws random numbers: the daemon feeds it events with
//! the time they happened and carries out the [`Action`]s it returns; the simulation in
//! `tests/simulation.rs` does the same with a fake clock, network and cloud. That is what makes
//! the failover logic testable under thousands of fault schedules.
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

use std::collections::BTreeMap;
use std::time::Duration;

pub use advert::{Advert, HolderBelief, Role, YieldMsg};

/// Monotonic time since an arbitrary origin, supplied by the caller.
pub type Time = Duration;

/// What the core needs from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreConfig {
    pub name: String,
    pub priority: u8,
    pub instance_id: String,
    /// Peer names, and their instance ids where the config gives them.
    pub peers: Vec<(String, Option<String>)>,
    pub heartbeat_interval: Duration,
    pub dead_interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub hold_down: Duration,
    pub hold_down_max: Duration,
    pub verify_interval: Duration,
    pub restart_grace: Duration,
    pub handover_timeout: Duration,
    /// Delay before retrying a failed cloud query or claim, and how long a fault lasts before
    /// the node starts over.
    pub retry_delay: Duration,
}

impl CoreConfig {
    /// Short, test-friendly timings (a 10 s hold-down instead of the file default of 30 s).
    pub fn example(name: &str, instance_id: &str, peers: &[(&str, Option<&str>)]) -> Self {
        CoreConfig {
            name: name.into(),
            priority: 100,
            instance_id: instance_id.into(),
            peers: peers
                .iter()
                .map(|(n, i)| (n.to_string(), i.map(str::to_string)))
                .collect(),
            heartbeat_interval: Duration::from_millis(200),
            dead_interval: Duration::from_millis(1000),
            preempt: false,
            preempt_delay: Duration::from_secs(30),
            hold_down: Duration::from_secs(10),
            hold_down_max: Duration::from_secs(300),
            verify_interval: Duration::from_secs(5),
            restart_grace: Duration::from_secs(30),
            handover_timeout: Duration::from_secs(20),
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// What the cloud said about the attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudView {
    Nobody,
    Holder(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimResult {
    Claimed,
    /// Someone else holds it: lost race, or a holder we did not expect.
    HeldBy(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Retrying cannot help (not found, not authorized): go to fault.
    pub permanent: bool,
    pub message: String,
}

impl Failure {
    pub fn transient(message: impl Into<String>) -> Self {
        Failure {
            permanent: false,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Failure {
            permanent: true,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed; the daemon calls this at [`Node::next_wakeup`] at the latest.
    Tick,
    /// An authenticated, non-replayed heartbeat.
    Heartbeat {
        peer: String,
        advert: Advert,
        incarnation: u64,
    },
    CloudState(Result<CloudView, Failure>),
    ClaimDone(Result<ClaimResult, Failure>),
    ReleaseDone(Result<(), Failure>),
    NetApplied(Result<(), String>),
    NetRemoved(Result<(), String>),
    /// The ENI's interface vanished from this host.
    LinkLost,
    YieldRequested {
        token: u64,
        timeout: Duration,
    },
    /// The daemon is stopping; `handover` when the host is going down (hand over to a peer).
    Stop {
        handover: bool,
    },
}

/// Why a claim happens; labels the failover timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// The holder is silent.
    Failover,
    /// Nobody holds it; this node is the best candidate.
    Election,
    /// The master offered it.
    Yield,
    /// Taking it back after a failed handover, or after it was detached from under us.
    Reclaim,
}

impl ClaimKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimKind::Failover => "failover",
            ClaimKind::Election => "election",
            ClaimKind::Yield => "yield",
            ClaimKind::Reclaim => "reclaim",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Master,
    Backup,
    Fault,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Log this at info: every change of role, with its reason.
    Transitioned {
        from: Role,
        to: Role,
        reason: String,
    },
    /// Send [`Node::advert`] to every peer now.
    SendHeartbeat,
    QueryCloud,
    Claim {
        expected_holder: Option<String>,
        force: bool,
        kind: ClaimKind,
        reason: String,
    },
    Release,
    ApplyNet,
    RemoveNet,
    RunHooks {
        kind: HookKind,
        reason: String,
    },
    /// Answer a control request (yield).
    Reply {
        token: u64,
        result: Result<String, String>,
    },
    /// The stop sequence is complete: exit the process.
    Exit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NetPhase {
    Applying,
    Ready,
    /// Failed (see `Node::net_attempts`); retry at `retry_at`.
    Failed {
        retry_at: Time,
    },
}

/// A handover this master is running: offered to `to`, waiting for its accept.
#[derive(Debug, Clone, PartialEq, Eq)]
struct YieldOp {
    id: u32,
    to: String,
    token: Option<u64>,
    deadline: Time,
    /// Part of a stop: exit when it is over instead of reclaiming.
    exit_after: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ReleasePurpose {
    Yield(YieldOp),
    /// Give it up so a healthy peer can take it (this node cannot serve it).
    Fault(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting {
        settle_until: Time,
    },
    Backup,
    Claiming {
        kind: ClaimKind,
    },
    Master {
        net: NetPhase,
        yielding: Option<YieldOp>,
    },
    Releasing {
        purpose: ReleasePurpose,
        /// False while the host config is being removed, true once the detach was requested.
        detaching: bool,
    },
    Fault {
        until: Time,
    },
}

impl State {
    fn role(&self) -> Role {
        match self {
            State::Starting { .. } => Role::Starting,
            State::Backup => Role::Backup,
            State::Claiming { .. } => Role::Claiming,
            State::Master { .. } => Role::Master,
            State::Releasing { .. } => Role::Releasing,
            State::Fault { .. } => Role::Fault,
        }
    }
}

/// What this node knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub name: String,
    pub instance_id: Option<String>,
    pub last_heard: Option<Time>,
    pub advert: Option<Advert>,
    pub incarnation: Option<u64>,
    /// When the peer's advertised role last changed.
    pub role_since: Time,
}

/// The last role change, for `enipeer role`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Role,
    pub to: Role,
    pub reason: String,
    pub at: Time,
}

/// After a yield released the ENI: wait for the target to become master.
#[derive(Debug, Clone, PartialEq, Eq)]
struct YieldWatch {
    op: YieldOp,
}

/// The target side of a yield: accepted offer `id` from `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Accepted {
    id: u32,
    from: String,
    deadline: Time,
}

/// One node's failover state machine.
#[derive(Debug, Clone)]
pub struct Node {
    cfg: CoreConfig,
    state: State,
    started: Time,
    role_since: Time,
    last_transition: Option<Transition>,
    peers: BTreeMap<String, PeerState>,
    holder: HolderBelief,
    cloud_checked: Option<Time>,
    query_pending: bool,
    /// The pending query was sent before something that changes the answer (a claim, a
    /// release, a lost link): its answer is discarded and the query sent again.
    query_stale: bool,
    /// When the next cloud query may be sent (retry backoff in Starting, verify while master).
    next_query: Time,
    next_heartbeat: Time,
    hold_down_until: Time,
    hold_down_level: u32,
    /// No claim before this (backoff after a failed claim).
    claim_retry_at: Time,
    claim_failures: u32,
    /// Consecutive failures to apply the host network config as master.
    net_attempts: u32,
    preempt_since: Option<Time>,
    wants_master: bool,
    next_yield_id: u32,
    yield_watch: Option<YieldWatch>,
    accepted: Option<Accepted>,
    /// A reject to repeat in heartbeats until the master gives up.
    rejecting: Option<(u32, String, Time)>,
    stopping: Option<StopMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopMode {
    Hold,
    Handover,
}

impl Node {
    /// A node that has just started. Call [`Node::start`] for its first actions.
    pub fn new(cfg: CoreConfig, now: Time) -> Self {
        let peers = cfg
            .peers
            .iter()
            .map(|(name, instance_id)| {
                (
                    name.clone(),
                    PeerState {
                        name: name.clone(),
                        instance_id: instance_id.clone(),
                        last_heard: None,
                        advert: None,
                        incarnation: None,
                        role_since: now,
                    },
                )
            })
            .collect();
        let settle = (cfg.heartbeat_interval * 3).min(cfg.dead_interval);
        Node {
            state: State::Starting {
                settle_until: now + settle,
            },
            started: now,
            role_since: now,
            last_transition: None,
            peers,
            holder: HolderBelief::Unknown,
            cloud_checked: None,
            query_pending: false,
            query_stale: false,
            next_query: now,
            next_heartbeat: now,
            hold_down_until: now,
            hold_down_level: 0,
            claim_retry_at: now,
            claim_failures: 0,
            net_attempts: 0,
            preempt_since: None,
            wants_master: false,
            next_yield_id: 1,
            yield_watch: None,
            accepted: None,
            rejecting: None,
            stopping: None,
            cfg,
        }
    }

    pub fn start(&mut self, now: Time) -> Vec<Action> {
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
        self.peers.values()
    }

    pub fn holder(&self) -> &HolderBelief {
        &self.holder
    }

    pub fn cloud_checked(&self) -> Option<Time> {
        self.cloud_checked
    }

    pub fn hold_down_left(&self, now: Time) -> Option<Duration> {
        (self.hold_down_until > now).then(|| self.hold_down_until - now)
    }

    /// True once this node believes it serves the address (master with host config applied).
    pub fn is_serving(&self) -> bool {
        matches!(
            self.state,
            State::Master {
                net: NetPhase::Ready,
                ..
            }
        )
    }

    pub fn is_alive(&self, peer: &str, now: Time) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| self.peer_alive(p, now))
    }

    /// The latest time by which [`Event::Tick`] must be delivered.
    pub fn next_wakeup(&self, now: Time) -> Time {
        let mut t = self.next_heartbeat;
        let mut consider = |x: Time| {
            if x > now && x < t {
                t = x;
            }
        };
        match &self.state {
            State::Starting { settle_until } => {
                consider(*settle_until);
                consider(self.next_query);
            }
            State::Master { net, yielding } => {
                consider(self.next_query);
                if let NetPhase::Failed { retry_at, .. } = net {
                    consider(*retry_at);
                }
                if let Some(op) = yielding {
                    consider(op.deadline);
                }
            }
            State::Fault { until } => consider(*until),
            State::Backup => consider(self.next_query),
            State::Claiming { .. } | State::Releasing { .. } => {}
        }
        consider(self.hold_down_until);
        consider(self.claim_retry_at);
        for p in self.peers.values() {
            if let Some(h) = p.last_heard {
                consider(h + self.dead_after(p) + Duration::from_millis(1));
            }
        }
        if let Some(w) = &self.yield_watch {
            consider(w.op.deadline);
        }
        if let Some(a) = &self.accepted {
            consider(a.deadline);
        }
        if let Some(since) = self.preempt_since {
            consider(since + self.cfg.preempt_delay);
        }
        t.max(now)
    }

    /// The heartbeat payload describing this node now.
    pub fn advert(&self) -> Advert {
        let yield_msg = if let State::Master {
            yielding: Some(op), ..
        } = &self.state
        {
            YieldMsg::Offer {
                id: op.id,
                to: op.to.clone(),
            }
        } else if let State::Releasing {
            purpose: ReleasePurpose::Yield(op),
            ..
        } = &self.state
        {
            // The target accepted; keep showing the offer until the release is done.
            YieldMsg::Offer {
                id: op.id,
                to: op.to.clone(),
            }
        } else if let Some(w) = &self.yield_watch {
            YieldMsg::Released {
                id: w.op.id,
                to: w.op.to.clone(),
            }
        } else if let Some(a) = &self.accepted {
            YieldMsg::Accept {
                id: a.id,
                to: a.from.clone(),
            }
        } else if let Some((id, to, _)) = &self.rejecting {
            YieldMsg::Reject {
                id: *id,
                to: to.clone(),
            }
        } else {
            YieldMsg::None
        };
        Advert {
            role: self.role(),
            priority: self.cfg.priority,
            instance_id: self.cfg.instance_id.clone(),
            holder: self.holder.clone(),
            yield_msg,
            stopping_ms: match self.stopping {
                Some(StopMode::Hold) => {
                    u32::try_from(self.cfg.restart_grace.as_millis()).unwrap_or(u32::MAX)
                }
                _ => 0,
            },
            wants_master: self.wants_master,
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
            Event::NetRemoved(r) => self.on_net_removed(r, now, &mut out),
            Event::LinkLost => self.on_link_lost(now, &mut out),
            Event::YieldRequested { token, timeout } => {
                self.on_yield_requested(token, timeout, now, &mut out)
            }
            Event::Stop { handover } => self.on_stop(handover, now, &mut out),
        }
        // Every event may make a deadline or a claim condition true: evaluate timers after it.
        self.on_tick(now, &mut out);
        if now >= self.next_heartbeat && !out.contains(&Action::Exit) {
            out.push(Action::SendHeartbeat);
        }
        if out.contains(&Action::SendHeartbeat) {
            self.next_heartbeat = now + self.cfg.heartbeat_interval;
            // One heartbeat per call is enough, however many reasons there were to send it.
            let mut seen = false;
            out.retain(|a| {
                if *a == Action::SendHeartbeat {
                    !std::mem::replace(&mut seen, true)
                } else {
                    true
                }
            });
        }
        out
    }

    // ---- transitions ----

    fn transition(&mut self, to: State, reason: String, now: Time, out: &mut Vec<Action>) {
        // A handover in progress that this transition does not carry on must still be answered.
        let running = match &self.state {
            State::Master {
                yielding: Some(op), ..
            }
            | State::Releasing {
                purpose: ReleasePurpose::Yield(op),
                ..
            } => Some(op.clone()),
            _ => None,
        };
        if let Some(op) = running {
            let carried = matches!(&to, State::Releasing { purpose: ReleasePurpose::Yield(o), .. } if o.id == op.id)
                || self.yield_watch.as_ref().is_some_and(|w| w.op.id == op.id);
            if !carried {
                if let Some(token) = op.token {
                    out.push(Action::Reply {
                        token,
                        result: Err(format!("handover interrupted: {reason}")),
                    });
                }
            }
        }
        let from = self.state.role();
        let to_role = to.role();
        self.state = to;
        if from != to_role {
            self.role_since = now;
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

    fn become_master(&mut self, reason: String, now: Time, out: &mut Vec<Action>) {
        self.holder = HolderBelief::Instance(self.cfg.instance_id.clone());
        self.claim_failures = 0;
        self.net_attempts = 0;
        self.wants_master = false;
        self.preempt_since = None;
        self.accepted = None;
        if let Some(token) = self.yield_watch.take().and_then(|w| w.op.token) {
            out.push(Action::Reply {
                token,
                result: Err("the ENI came back to this node before the peer took over".into()),
            });
        }
        self.next_query = now + self.cfg.verify_interval;
        self.transition(
            State::Master {
                net: NetPhase::Applying,
                yielding: None,
            },
            reason.clone(),
            now,
            out,
        );
        out.push(Action::ApplyNet);
        out.push(Action::RunHooks {
            kind: HookKind::Master,
            reason,
        });
    }

    /// Lost the ENI while master: stop serving now, hold off from claiming it back.
    fn step_down(&mut self, reason: String, now: Time, out: &mut Vec<Action>) {
        self.start_hold_down(now);
        self.invalidate_cloud_answer();
        out.push(Action::RemoveNet);
        self.transition(State::Backup, reason.clone(), now, out);
        out.push(Action::RunHooks {
            kind: HookKind::Backup,
            reason,
        });
    }

    fn start_hold_down(&mut self, now: Time) {
        // Forget old losses: a loss long after the last hold-down is not a repeat.
        if now > self.hold_down_until + self.cfg.hold_down_max * 2 {
            self.hold_down_level = 0;
        }
        let factor = 1u32 << self.hold_down_level.min(16);
        let d = self
            .cfg
            .hold_down
            .saturating_mul(factor)
            .min(self.cfg.hold_down_max);
        self.hold_down_level = self.hold_down_level.saturating_add(1);
        self.hold_down_until = now + d;
    }

    fn go_fault(&mut self, reason: String, now: Time, out: &mut Vec<Action>) {
        self.transition(
            State::Fault {
                until: now + self.cfg.retry_delay.max(self.cfg.dead_interval) * 5,
            },
            reason.clone(),
            now,
            out,
        );
        out.push(Action::RunHooks {
            kind: HookKind::Fault,
            reason,
        });
    }

    fn query_cloud(&mut self, out: &mut Vec<Action>) {
        if !self.query_pending {
            self.query_pending = true;
            out.push(Action::QueryCloud);
        }
    }

    /// The attachment may have changed since the pending query was sent.
    fn invalidate_cloud_answer(&mut self) {
        if self.query_pending {
            self.query_stale = true;
        }
    }

    // ---- events ----

    fn on_tick(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.stopping.is_some() && !self.stop_in_progress() {
            return;
        }
        match self.state.clone() {
            State::Starting { settle_until } => {
                if now >= self.next_query {
                    self.query_cloud(out);
                }
                if now >= settle_until
                    && self.holder == HolderBelief::Nobody
                    && !self.claim_if_best(now, out)
                {
                    let best = self.best_candidate(now, None).unwrap_or_default();
                    out.push(Action::RemoveNet);
                    self.transition(
                        State::Backup,
                        format!("nobody holds the ENI; {best} is the better candidate"),
                        now,
                        out,
                    );
                    out.push(Action::RunHooks {
                        kind: HookKind::Backup,
                        reason: "started as backup".into(),
                    });
                }
            }
            State::Backup => {
                // Backups re-read the attachment now and then too: the cloud, not the peers'
                // heartbeats, is the truth, and a belief that went stale (a lost `released`
                // heartbeat, an operator's detach) must not leave the address unserved.
                if now >= self.next_query && !self.query_pending {
                    self.next_query = now + self.cfg.verify_interval;
                    self.query_cloud(out);
                }
                self.expire_yield_side(now, out);
                self.check_preempt_want(now);
                if self.yield_watch.is_none() {
                    self.maybe_claim(now, out);
                }
            }
            State::Claiming { .. } | State::Releasing { .. } => {}
            State::Master { net, yielding } => {
                if now >= self.next_query && !self.query_pending {
                    self.next_query = now + self.cfg.verify_interval;
                    self.query_cloud(out);
                }
                if let NetPhase::Failed { retry_at } = net {
                    if now >= retry_at {
                        self.state = State::Master {
                            net: NetPhase::Applying,
                            yielding: yielding.clone(),
                        };
                        out.push(Action::ApplyNet);
                    }
                }
                match yielding {
                    Some(op) if now >= op.deadline => {
                        self.state = State::Master {
                            net: match &self.state {
                                State::Master { net, .. } => net.clone(),
                                _ => NetPhase::Applying,
                            },
                            yielding: None,
                        };
                        let msg = format!(
                            "{} did not accept the handover in time; keeping the ENI",
                            op.to
                        );
                        if let Some(token) = op.token {
                            out.push(Action::Reply {
                                token,
                                result: Err(msg),
                            });
                        }
                        if op.exit_after {
                            self.finish_stop(out);
                        }
                        out.push(Action::SendHeartbeat);
                    }
                    Some(_) => {}
                    None => self.maybe_honour_preempt(now, out),
                }
            }
            State::Fault { until } => {
                if now >= until {
                    let settle = (self.cfg.heartbeat_interval * 3).min(self.cfg.dead_interval);
                    self.next_query = now;
                    self.transition(
                        State::Starting {
                            settle_until: now + settle,
                        },
                        "fault period over, starting over".into(),
                        now,
                        out,
                    );
                    self.query_cloud(out);
                }
            }
        }
    }

    fn stop_in_progress(&self) -> bool {
        matches!(
            self.state,
            State::Master {
                yielding: Some(YieldOp {
                    exit_after: true,
                    ..
                }),
                ..
            } | State::Releasing {
                purpose: ReleasePurpose::Yield(YieldOp {
                    exit_after: true,
                    ..
                }),
                ..
            }
        ) || self.yield_watch.as_ref().is_some_and(|w| w.op.exit_after)
    }

    fn on_heartbeat(
        &mut self,
        name: &str,
        advert: Advert,
        incarnation: u64,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.advert.as_ref().map(|a| a.role) != Some(advert.role)
            || peer.incarnation != Some(incarnation)
        {
            peer.role_since = now;
        }
        peer.last_heard = Some(now);
        peer.incarnation = Some(incarnation);
        if !advert.instance_id.is_empty() {
            peer.instance_id = Some(advert.instance_id.clone());
        }
        peer.advert = Some(advert.clone());
        let peer_instance = advert.instance_id.clone();

        // A peer that says it is master and holds the ENI is news about the holder.
        let peer_claims_it = advert.role == Role::Master
            && advert.holder == HolderBelief::Instance(peer_instance.clone());
        if peer_claims_it {
            match self.state {
                State::Master { .. } | State::Releasing { .. } => {
                    // Two masters: only the cloud can tell who is right.
                    self.query_cloud(out);
                }
                _ => self.holder = HolderBelief::Instance(peer_instance.clone()),
            }
        }

        // Backups that disagree about the holder ask the cloud (rate-limited) instead of
        // waiting for each other.
        if self.state == State::Backup
            && !matches!(advert.role, Role::Claiming | Role::Releasing)
            && advert.holder != HolderBelief::Unknown
            && self.holder != HolderBelief::Unknown
            && advert.holder != self.holder
        {
            let earliest = self.cloud_checked.map_or(now, |t| t + self.cfg.retry_delay);
            self.next_query = self.next_query.min(earliest.max(now));
        }

        // Yield conversation.
        match (&advert.yield_msg, self.state.clone()) {
            (YieldMsg::Offer { id, to }, State::Backup)
                if to == &self.cfg.name && self.accepted.as_ref().map(|a| a.id) != Some(*id) =>
            {
                self.accepted = Some(Accepted {
                    id: *id,
                    from: name.to_string(),
                    deadline: now + self.cfg.handover_timeout,
                });
                out.push(Action::SendHeartbeat);
            }
            (YieldMsg::Offer { id, to }, State::Fault { .. } | State::Starting { .. })
                if to == &self.cfg.name && self.rejecting.as_ref().map(|r| r.0) != Some(*id) =>
            {
                self.rejecting = Some((*id, name.to_string(), now + self.cfg.dead_interval * 2));
                out.push(Action::SendHeartbeat);
            }
            (YieldMsg::Released { id, to }, State::Backup)
                if to == &self.cfg.name
                    && self
                        .accepted
                        .as_ref()
                        .is_some_and(|a| a.id == *id && a.from == name) =>
            {
                self.accepted = None;
                self.holder = HolderBelief::Nobody;
                self.claim(
                    Some(peer_instance.clone()),
                    false,
                    ClaimKind::Yield,
                    format!("{name} handed the ENI over"),
                    now,
                    out,
                );
            }
            (
                YieldMsg::Accept { id, to },
                State::Master {
                    net,
                    yielding: Some(op),
                },
            ) if to == &self.cfg.name && op.id == *id && op.to == name => {
                let _ = net;
                self.transition(
                    State::Releasing {
                        purpose: ReleasePurpose::Yield(op.clone()),
                        detaching: false,
                    },
                    format!("handing the ENI over to {name}"),
                    now,
                    out,
                );
                out.push(Action::RemoveNet);
                out.push(Action::RunHooks {
                    kind: HookKind::Backup,
                    reason: format!("handed over to {name}"),
                });
            }
            (
                YieldMsg::Reject { id, to },
                State::Master {
                    net,
                    yielding: Some(op),
                },
            ) if to == &self.cfg.name && op.id == *id && op.to == name => {
                self.state = State::Master {
                    net,
                    yielding: None,
                };
                if let Some(token) = op.token {
                    out.push(Action::Reply {
                        token,
                        result: Err(format!("{name} refused to take over (it is not ready)")),
                    });
                }
                if op.exit_after {
                    self.finish_stop(out);
                }
            }
            _ => {}
        }

        // The old master waits for the target to report master.
        if let Some(w) = &self.yield_watch {
            if w.op.to == name && peer_claims_it {
                let op = w.op.clone();
                self.yield_watch = None;
                if let Some(token) = op.token {
                    out.push(Action::Reply {
                        token,
                        result: Ok(format!("{name} is master now")),
                    });
                }
                if op.exit_after {
                    self.finish_stop(out);
                }
            }
        }
    }

    fn on_cloud_state(&mut self, r: Result<CloudView, Failure>, now: Time, out: &mut Vec<Action>) {
        self.query_pending = false;
        if std::mem::take(&mut self.query_stale) {
            // Asked before the last claim, release or lost link: the answer may predate it.
            self.query_cloud(out);
            return;
        }
        let view = match r {
            Ok(v) => v,
            Err(f) => {
                match self.state {
                    State::Starting { .. } => {
                        if f.permanent {
                            self.go_fault(format!("cannot read the ENI: {}", f.message), now, out);
                        } else {
                            self.next_query = now + self.cfg.retry_delay;
                        }
                    }
                    // A master that cannot reach the cloud keeps serving: it has no evidence
                    // that anyone else holds the ENI, and the attachment cannot move without a
                    // working API.
                    _ => self.next_query = now + self.cfg.retry_delay,
                }
                return;
            }
        };
        self.cloud_checked = Some(now);
        let me = self.cfg.instance_id.clone();
        self.holder = match &view {
            CloudView::Nobody => HolderBelief::Nobody,
            CloudView::Holder(i) => HolderBelief::Instance(i.clone()),
        };
        match (self.state.clone(), view) {
            (State::Starting { .. }, CloudView::Holder(i)) if i == me => {
                self.become_master(
                    "adopted: the cloud says this instance already holds the ENI".into(),
                    now,
                    out,
                );
            }
            (State::Starting { .. }, CloudView::Holder(i)) => {
                let who = self.peer_by_instance(&i).unwrap_or(i);
                // An earlier run of this node may have been master: clear its host config.
                out.push(Action::RemoveNet);
                self.transition(State::Backup, format!("{who} holds the ENI"), now, out);
                out.push(Action::RunHooks {
                    kind: HookKind::Backup,
                    reason: "started as backup".into(),
                });
            }
            (State::Starting { .. }, CloudView::Nobody) => {
                // Decided in on_tick once the settle time has passed.
            }
            (State::Master { .. }, CloudView::Holder(i)) if i == me => {}
            (State::Master { .. }, CloudView::Holder(i)) => {
                let who = self.peer_by_instance(&i).unwrap_or(i);
                self.step_down(format!("the cloud says {who} holds the ENI now"), now, out);
            }
            (State::Master { .. }, CloudView::Nobody) => {
                // Detached from under us (an operator, or a peer's forced takeover still in its
                // `detaching` phase): count it as a loss, then race for it without force; the
                // claim's compare-and-swap settles a race with the peer.
                self.start_hold_down(now);
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
            (State::Backup, CloudView::Holder(i)) if i == me => {
                // It is ours (a lost link that came back, or a claim whose answer was lost).
                self.become_master(
                    "the cloud says this instance holds the ENI".into(),
                    now,
                    out,
                );
            }
            _ => {}
        }
    }

    fn on_claim_done(&mut self, r: Result<ClaimResult, Failure>, now: Time, out: &mut Vec<Action>) {
        let State::Claiming { kind } = self.state else {
            return;
        };
        self.invalidate_cloud_answer();
        match r {
            Ok(ClaimResult::Claimed) => {
                self.become_master(format!("claimed the ENI ({})", kind.as_str()), now, out);
            }
            Ok(ClaimResult::HeldBy(i)) => {
                self.holder = HolderBelief::Instance(i.clone());
                let who = self.peer_by_instance(&i);
                let audible = who
                    .as_deref()
                    .and_then(|p| self.peers.get(p))
                    .and_then(|p| p.last_heard)
                    .is_some_and(|h| now.saturating_sub(h) <= self.cfg.dead_interval);
                // A winner we cannot hear may be on the other side of a partition: hold off as
                // after a loss, or the two would trade the ENI every dead interval.
                if !audible {
                    self.start_hold_down(now);
                }
                if let Some(p) = who.as_deref().and_then(|p| self.peers.get_mut(p)) {
                    // Give the winner a full dead interval before judging it.
                    p.last_heard = Some(p.last_heard.map_or(now, |h| h.max(now)));
                }
                let who = who.unwrap_or(i);
                self.transition(
                    State::Backup,
                    format!("lost the race: {who} holds the ENI"),
                    now,
                    out,
                );
                out.push(Action::RunHooks {
                    kind: HookKind::Backup,
                    reason: "lost the claim".into(),
                });
            }
            Err(f) if f.permanent => {
                self.go_fault(format!("claim failed: {}", f.message), now, out);
            }
            Err(f) => {
                self.claim_failures += 1;
                let backoff = self
                    .cfg
                    .retry_delay
                    .saturating_mul(1 << self.claim_failures.min(5))
                    .min(self.cfg.hold_down_max);
                self.claim_retry_at = now + backoff;
                self.transition(
                    State::Backup,
                    format!("claim failed ({}), retrying in {:?}", f.message, backoff),
                    now,
                    out,
                );
            }
        }
    }

    fn on_release_done(&mut self, r: Result<(), Failure>, now: Time, out: &mut Vec<Action>) {
        let State::Releasing { purpose, .. } = self.state.clone() else {
            return;
        };
        self.invalidate_cloud_answer();
        match (purpose, r) {
            (ReleasePurpose::Yield(op), Ok(())) => {
                self.holder = HolderBelief::Nobody;
                let to = op.to.clone();
                self.yield_watch = Some(YieldWatch { op });
                self.transition(
                    State::Backup,
                    format!("released the ENI for {to}"),
                    now,
                    out,
                );
            }
            (ReleasePurpose::Yield(op), Err(f)) => {
                // The reply goes out with the transition below (an interrupted handover).
                // Where the ENI is now is unknown: ask the cloud and adopt it if still here.
                self.holder = HolderBelief::Unknown;
                self.next_query = now;
                self.transition(
                    State::Starting { settle_until: now },
                    format!("release failed: {}", f.message),
                    now,
                    out,
                );
                self.query_cloud(out);
                if op.exit_after {
                    self.finish_stop(out);
                }
            }
            (ReleasePurpose::Fault(reason), r) => {
                if let Err(f) = r {
                    self.holder = HolderBelief::Unknown;
                    self.go_fault(
                        format!("{reason}; release failed too: {}", f.message),
                        now,
                        out,
                    );
                } else {
                    self.holder = HolderBelief::Nobody;
                    self.go_fault(reason, now, out);
                }
            }
        }
    }

    fn on_net_applied(&mut self, r: Result<(), String>, now: Time, out: &mut Vec<Action>) {
        let State::Master { net, yielding } = self.state.clone() else {
            return;
        };
        if net != NetPhase::Applying {
            return;
        }
        match r {
            Ok(()) => {
                self.state = State::Master {
                    net: NetPhase::Ready,
                    yielding,
                };
            }
            Err(e) => {
                self.net_attempts += 1;
                let attempts = self.net_attempts;
                if attempts >= 3 {
                    self.transition(
                        State::Releasing {
                            purpose: ReleasePurpose::Fault(format!(
                                "cannot configure the host network: {e}"
                            )),
                            detaching: false,
                        },
                        format!("cannot configure the host network ({e}); giving the ENI up"),
                        now,
                        out,
                    );
                    out.push(Action::RemoveNet);
                } else {
                    self.state = State::Master {
                        net: NetPhase::Failed {
                            retry_at: now + self.cfg.retry_delay,
                        },
                        yielding,
                    };
                }
            }
        }
    }

    fn on_net_removed(&mut self, r: Result<(), String>, now: Time, out: &mut Vec<Action>) {
        let _ = now;
        if let State::Releasing {
            purpose,
            detaching: false,
        } = self.state.clone()
        {
            // Detach even if some of the host config could not be removed: the address must
            // move, and leftovers are reported (and removed again at the next release).
            let _ = r;
            self.state = State::Releasing {
                purpose,
                detaching: true,
            };
            out.push(Action::Release);
        }
    }

    fn on_link_lost(&mut self, now: Time, out: &mut Vec<Action>) {
        if let State::Master { .. } = self.state {
            self.step_down(
                "the ENI's interface disappeared from this host".into(),
                now,
                out,
            );
            self.holder = HolderBelief::Unknown;
            self.invalidate_cloud_answer();
            self.query_cloud(out);
        }
    }

    fn on_yield_requested(
        &mut self,
        token: u64,
        timeout: Duration,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        let refuse = |out: &mut Vec<Action>, msg: String| {
            out.push(Action::Reply {
                token,
                result: Err(msg),
            })
        };
        let State::Master { net, yielding } = self.state.clone() else {
            return refuse(out, format!("this node is {}, not master", self.role()));
        };
        if yielding.is_some() {
            return refuse(out, "a handover is already in progress".into());
        }
        if self.stopping.is_some() {
            return refuse(out, "this node is stopping".into());
        }
        let Some(to) = self.best_peer(now, None) else {
            return refuse(out, "no live peer that could take over".into());
        };
        let op = self.new_yield(to, Some(token), now + timeout, false);
        self.state = State::Master {
            net,
            yielding: Some(op),
        };
        out.push(Action::SendHeartbeat);
    }

    fn new_yield(
        &mut self,
        to: String,
        token: Option<u64>,
        deadline: Time,
        exit_after: bool,
    ) -> YieldOp {
        let id = self.next_yield_id;
        self.next_yield_id = self.next_yield_id.wrapping_add(1).max(1);
        YieldOp {
            id,
            to,
            token,
            deadline,
            exit_after,
        }
    }

    fn on_stop(&mut self, handover: bool, now: Time, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        match self.state.clone() {
            State::Master {
                net,
                yielding: None,
            } if handover => {
                if let Some(to) = self.best_peer(now, None) {
                    self.stopping = Some(StopMode::Handover);
                    let op = self.new_yield(to, None, now + self.cfg.handover_timeout, true);
                    self.state = State::Master {
                        net,
                        yielding: Some(op),
                    };
                    out.push(Action::SendHeartbeat);
                    return;
                }
                // Nobody to hand over to: keeping the address is better than dropping it.
                self.stopping = Some(StopMode::Hold);
            }
            State::Master { .. } | State::Releasing { .. } | State::Claiming { .. } => {
                self.stopping = Some(StopMode::Hold);
            }
            _ => self.stopping = Some(StopMode::Handover),
        }
        out.push(Action::SendHeartbeat);
        self.finish_stop(out);
    }

    fn finish_stop(&mut self, out: &mut Vec<Action>) {
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

    fn claim(
        &mut self,
        expected_holder: Option<String>,
        force: bool,
        kind: ClaimKind,
        reason: String,
        now: Time,
        out: &mut Vec<Action>,
    ) {
        self.wants_master = false;
        self.preempt_since = None;
        self.transition(State::Claiming { kind }, reason.clone(), now, out);
        out.push(Action::Claim {
            expected_holder,
            force,
            kind,
            reason,
        });
    }

    /// The backup's decision to take the ENI.
    fn maybe_claim(&mut self, now: Time, out: &mut Vec<Action>) {
        if now < self.claim_retry_at || self.accepted.is_some() {
            return;
        }
        // The hold-down only stops forced takeovers (the one move a heartbeat partition can
        // repeat); a detached ENI is claimed at once by the best candidate, so an operator's
        // detach or a lost link does not leave the address unserved for the hold-down.
        let holding_down = now < self.hold_down_until;
        match self.holder.clone() {
            HolderBelief::Unknown => {
                if !self.query_pending && now >= self.next_query {
                    self.next_query = now + self.cfg.retry_delay;
                    self.query_cloud(out);
                }
            }
            HolderBelief::Nobody => {
                self.claim_if_best(now, out);
            }
            HolderBelief::Instance(i) if i == self.cfg.instance_id => {
                self.claim(
                    None,
                    false,
                    ClaimKind::Reclaim,
                    "the ENI is attached here but this node was not master".into(),
                    now,
                    out,
                );
            }
            HolderBelief::Instance(i) => {
                if holding_down {
                    return;
                }
                let Some(holder) = self.peer_by_instance(&i) else {
                    // Not one of ours: never take an ENI from an instance we know nothing of.
                    return;
                };
                let p = &self.peers[&holder];
                if self.peer_alive(p, now) {
                    return;
                }
                if self.best_candidate(now, Some(&holder)).as_deref()
                    != Some(self.cfg.name.as_str())
                {
                    return;
                }
                let silent = now.saturating_sub(p.last_heard.unwrap_or(self.started));
                let reason = if p.last_heard.is_some() {
                    format!("{holder} silent for {} ms", silent.as_millis())
                } else {
                    format!("{holder} not heard since start ({} ms)", silent.as_millis())
                };
                self.claim(Some(i), true, ClaimKind::Failover, reason, now, out);
            }
        }
    }

    /// Nobody holds the ENI: the best live candidate claims it, without force. Returns whether
    /// this node did.
    fn claim_if_best(&mut self, now: Time, out: &mut Vec<Action>) -> bool {
        if self.best_candidate(now, None).as_deref() != Some(self.cfg.name.as_str()) {
            return false;
        }
        self.claim(
            None,
            false,
            ClaimKind::Election,
            "nobody holds the ENI and this node is the best candidate".into(),
            now,
            out,
        );
        true
    }

    /// How long a peer may be silent before it counts as dead.
    fn dead_after(&self, p: &PeerState) -> Duration {
        match &p.advert {
            Some(a) if a.stopping_ms > 0 => self
                .cfg
                .dead_interval
                .max(Duration::from_millis(u64::from(a.stopping_ms))),
            _ => self.cfg.dead_interval,
        }
    }

    fn peer_alive(&self, p: &PeerState, now: Time) -> bool {
        let last = p.last_heard.unwrap_or(self.started);
        now.saturating_sub(last) <= self.dead_after(p)
            && (p.last_heard.is_some()
                || now.saturating_sub(self.started) <= self.cfg.dead_interval)
    }

    /// A peer that could take the ENI: alive, not in fault, not stopping, and not stuck starting.
    fn peer_candidate(&self, p: &PeerState, now: Time) -> bool {
        let Some(a) = &p.advert else {
            return false;
        };
        if p.last_heard
            .is_none_or(|h| now.saturating_sub(h) > self.cfg.dead_interval)
        {
            return false;
        }
        match a.role {
            Role::Fault | Role::Releasing => false,
            _ if a.stopping_ms > 0 => false,
            Role::Starting => now.saturating_sub(p.role_since) <= self.cfg.dead_interval * 2,
            _ => true,
        }
    }

    /// The best live candidate for the ENI among this node and its peers, `except` one.
    fn best_candidate(&self, now: Time, except: Option<&str>) -> Option<String> {
        let me_ok = !matches!(self.state, State::Fault { .. }) && self.stopping.is_none();
        let me = me_ok.then_some((self.cfg.priority, self.cfg.name.as_str()));
        let best = match (me, self.best_peer_entry(now, except)) {
            (Some(m), Some(p)) if better(p.0, p.1, m.0, m.1) => Some(p),
            (Some(m), _) => Some(m),
            (None, p) => p,
        };
        best.map(|(_, n)| n.to_string())
    }

    /// The best peer (not this node) to hand the ENI to.
    fn best_peer(&self, now: Time, except: Option<&str>) -> Option<String> {
        self.best_peer_entry(now, except)
            .map(|(_, n)| n.to_string())
    }

    fn best_peer_entry(&self, now: Time, except: Option<&str>) -> Option<(u8, &str)> {
        let mut best: Option<(u8, &str)> = None;
        for p in self.peers.values() {
            if Some(p.name.as_str()) == except || !self.peer_candidate(p, now) {
                continue;
            }
            let prio = p.advert.as_ref().map_or(0, |a| a.priority);
            if best.is_none_or(|(bp, bn)| better(prio, &p.name, bp, bn)) {
                best = Some((prio, &p.name));
            }
        }
        best
    }

    /// Which peer an instance id belongs to. With one peer whose id is not known yet, an
    /// unknown holder can only be that peer (a two-node group after a restart of this node).
    fn peer_by_instance(&self, instance: &str) -> Option<String> {
        if let Some(p) = self
            .peers
            .values()
            .find(|p| p.instance_id.as_deref() == Some(instance))
        {
            return Some(p.name.clone());
        }
        let unknown: Vec<_> = self
            .peers
            .values()
            .filter(|p| p.instance_id.is_none())
            .collect();
        match unknown.as_slice() {
            [only] if instance != self.cfg.instance_id => Some(only.name.clone()),
            _ => None,
        }
    }

    fn expire_yield_side(&mut self, now: Time, out: &mut Vec<Action>) {
        if self
            .accepted
            .as_ref()
            .is_some_and(|a| now >= a.deadline || !self.is_alive(&a.from, now))
        {
            self.accepted = None;
        }
        if self.rejecting.as_ref().is_some_and(|r| now >= r.2) {
            self.rejecting = None;
        }
        if let Some(w) = &self.yield_watch {
            if now >= w.op.deadline {
                let op = w.op.clone();
                self.yield_watch = None;
                let msg = format!("{} did not become master in time", op.to);
                if let Some(token) = op.token {
                    out.push(Action::Reply {
                        token,
                        result: Err(format!("{msg}; taking the ENI back")),
                    });
                }
                if op.exit_after {
                    self.finish_stop(out);
                    return;
                }
                self.claim(
                    None,
                    false,
                    ClaimKind::Reclaim,
                    format!("handover failed: {msg}"),
                    now,
                    out,
                );
            }
        }
    }

    /// Backup side of preempt: after the delay, ask the lower-priority master to hand over.
    fn check_preempt_want(&mut self, now: Time) {
        let master_lower = self.peers.values().any(|p| {
            p.advert
                .as_ref()
                .is_some_and(|a| a.role == Role::Master && a.priority < self.cfg.priority)
                && self.peer_alive(p, now)
        });
        if self.cfg.preempt && master_lower && now >= self.hold_down_until {
            let since = *self.preempt_since.get_or_insert(now);
            self.wants_master = now >= since + self.cfg.preempt_delay;
        } else {
            self.preempt_since = None;
            self.wants_master = false;
        }
    }

    /// Master side of preempt: hand over to a live, higher-priority peer that asks for it.
    fn maybe_honour_preempt(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        let want = self
            .peers
            .values()
            .filter(|p| self.peer_candidate(p, now))
            .filter_map(|p| p.advert.as_ref().map(|a| (p, a)))
            .find(|(_, a)| {
                a.wants_master && a.role == Role::Backup && a.priority > self.cfg.priority
            })
            .map(|(p, _)| p.name.clone());
        if let (
            Some(to),
            State::Master {
                net,
                yielding: None,
            },
        ) = (want, self.state.clone())
        {
            let op = self.new_yield(to, None, now + self.cfg.handover_timeout, false);
            self.state = State::Master {
                net,
                yielding: Some(op),
            };
            out.push(Action::SendHeartbeat);
        }
    }
}

/// Election order: higher priority wins, then the lexically smaller name.
fn better(prio: u8, name: &str, than_prio: u8, than_name: &str) -> bool {
    prio > than_prio || (prio == than_prio && name < than_name)
}

#[cfg(test)]
mod tests;
