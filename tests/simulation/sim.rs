//! The simulation engine: the event queue, the nodes (agent, host, service), the network, the
//! faults, and the cloud's server side.

mod host;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use enipeer::cloud::claim::{Call, ClaimProc, Procedure, ReleaseProc, Reply};
use enipeer::cloud::{ClaimRequest, CloudError, CloudErrorKind};
use enipeer::core::{Action, Advert, CoreConfig, Event, Failure, Node, Role, Time};

use crate::cloud::*;

// ---------- events ----------

/// A claim or release in progress: the production step machine and whom it runs for.
#[derive(Debug, Clone)]
pub enum Proc {
    Claim(ClaimProc),
    Release(ReleaseProc),
}

#[derive(Debug, Clone)]
pub struct Op {
    pub node: usize,
    pub generation: u64,
    pub started: Time,
    pub proc: Proc,
}

#[derive(Debug, Clone)]
pub enum Ev {
    Tick {
        node: usize,
        generation: u64,
    },
    Packet {
        to: usize,
        from: usize,
        advert: Advert,
        incarnation: u64,
    },
    Deliver {
        node: usize,
        generation: u64,
        event: Event,
    },
    /// The cloud answers a QueryCloud (server side).
    CloudQuery {
        node: usize,
        generation: u64,
    },
    /// A procedure's call reaches the cloud (server side).
    CloudCall(Box<Op>, Call),
    /// The answer reaches the procedure.
    CloudAnswer(Box<Op>, Result<Reply, CloudError>),
    /// A procedure's poll delay is over.
    CloudWaited(Box<Op>),
    Transition {
        version: u64,
    },
    Fault(Fault),
}

#[derive(Debug, Clone)]
pub enum Fault {
    Pause(usize),
    Resume(usize),
    Kill(usize),
    Start(usize),
    /// Stop the daemon as systemd would, with or without handover.
    Stop(usize, bool),
    Partition(usize, usize, bool),
    Loss(f64),
    CloudErrors(f64),
    Yield,
    HealAll,
}

pub struct Queued {
    pub at: Time,
    pub seq: u64,
    pub ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

// ---------- nodes ----------

pub struct SimNode {
    pub cfg: CoreConfig,
    pub core: Option<Node>,
    pub generation: u64,
    pub incarnation: u64,
    pub paused: bool,
    /// Events that arrived while paused, delivered on resume.
    pub deferred: Vec<Event>,
    pub tick_at: Option<Time>,
    /// Time spent believing master while another instance holds the ENI (running time only).
    pub wrong_master: Duration,
    pub pending_yields: BTreeMap<u64, Time>,
}

pub struct Params {
    pub attach_delay: (u64, u64),
    pub detach_delay: (u64, u64),
    pub api_latency: (u64, u64),
    pub net_delay: (u64, u64),
    pub dup_rate: f64,
    /// Bound for "believes master while another holds it".
    pub wrong_master_bound: Duration,
}

pub struct Sim {
    pub now: Time,
    pub seq: u64,
    pub queue: BinaryHeap<Reverse<Queued>>,
    pub rng: Rng,
    pub nodes: Vec<SimNode>,
    pub cloud: Cloud,
    pub partitions: Vec<(usize, usize)>,
    pub loss: f64,
    pub params: Params,
    pub trace: VecDeque<String>,
    pub next_token: u64,
    pub yields_requested: u32,
    pub yields_ok: u32,
    pub last_check: Time,
}

pub fn config(i: usize, n: usize, prio: &[u8]) -> CoreConfig {
    let peers: Vec<(String, Option<String>)> = (0..n)
        .filter(|&j| j != i)
        .map(|j| (name(j), None))
        .collect();
    CoreConfig {
        name: name(i),
        priority: prio[i],
        instance_id: instance(i),
        peers,
        heartbeat_interval: Duration::from_millis(200),
        dead_interval: Duration::from_millis(1000),
        preempt: prio.iter().any(|&p| p != prio[0]),
        preempt_delay: Duration::from_secs(3),
        hold_down: Duration::from_secs(4),
        hold_down_max: Duration::from_secs(16),
        verify_interval: Duration::from_secs(5),
        restart_grace: Duration::from_secs(3),
        handover_timeout: Duration::from_secs(5),
        retry_delay: Duration::from_millis(500),
        corroborate_fall: None,
    }
}

pub fn name(i: usize) -> String {
    format!("node-{}", (b'a' + i as u8) as char)
}

impl Sim {
    pub fn new(seed: u64, n: usize, prio: &[u8]) -> Sim {
        let nodes = (0..n)
            .map(|i| SimNode {
                cfg: config(i, n, prio),
                core: None,
                generation: 0,
                incarnation: 0,
                paused: false,
                deferred: Vec::new(),
                tick_at: None,
                wrong_master: Duration::ZERO,
                pending_yields: BTreeMap::new(),
            })
            .collect();
        Sim {
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            rng: Rng(seed),
            nodes,
            cloud: Cloud::default(),
            partitions: Vec::new(),
            loss: 0.0,
            params: Params {
                attach_delay: (5, 400),
                detach_delay: (5, 400),
                api_latency: (2, 60),
                net_delay: (1, 40),
                dup_rate: 0.02,
                wrong_master_bound: Duration::from_secs(6),
            },
            trace: VecDeque::new(),
            next_token: 1,
            yields_requested: 0,
            yields_ok: 0,
            last_check: Duration::ZERO,
        }
    }

    pub fn at(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            ev,
        }));
    }

    pub fn log(&mut self, s: String) {
        if self.trace.len() >= 200 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>9.3}s {}", self.now.as_secs_f64(), s));
    }

    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].core.is_some() && !self.nodes[i].paused
    }

    pub fn run_until(&mut self, end: Time) -> Result<(), String> {
        while let Some(Reverse(q)) = self.queue.peek() {
            if q.at > end {
                break;
            }
            let Some(Reverse(q)) = self.queue.pop() else {
                break;
            };
            self.account(q.at);
            self.now = q.at;
            self.step(q.ev);
            self.check_safety()?;
        }
        self.account(end);
        self.now = end;
        self.check_safety()
    }

    /// Adds the time since the last event to each node's "wrong master" counter.
    pub fn account(&mut self, t: Time) {
        let dt = t.saturating_sub(self.last_check);
        self.last_check = t;
        let holder = self.cloud.att.map(|a| a.node);
        for i in 0..self.nodes.len() {
            let running = self.running(i);
            let n = &mut self.nodes[i];
            let believes = n.core.as_ref().is_some_and(|c| c.role() == Role::Master);
            if running && believes && holder.is_some_and(|h| h != i) {
                n.wrong_master += dt;
            } else if !believes || holder == Some(i) {
                n.wrong_master = Duration::ZERO;
            }
        }
    }

    pub fn check_safety(&self) -> Result<(), String> {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.wrong_master > self.params.wrong_master_bound {
                return Err(format!(
                    "safety: {} believed it was master for {:?} while {:?} held the ENI",
                    name(i),
                    n.wrong_master,
                    self.cloud.att
                ));
            }
        }
        Ok(())
    }

    pub fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { node, generation } => {
                if self.nodes[node].generation == generation
                    && self.nodes[node].tick_at == Some(self.now)
                {
                    self.nodes[node].tick_at = None;
                    self.deliver(node, Event::Tick);
                }
            }
            Ev::Packet {
                to,
                from,
                advert,
                incarnation,
            } => {
                if self.running(to) {
                    self.deliver(
                        to,
                        Event::Heartbeat {
                            peer: name(from),
                            advert,
                            incarnation,
                        },
                    );
                }
            }
            Ev::Deliver {
                node,
                generation,
                event,
            } => {
                if self.nodes[node].generation != generation || self.nodes[node].core.is_none() {
                    return;
                }
                if self.nodes[node].paused {
                    self.nodes[node].deferred.push(event);
                } else {
                    self.deliver(node, event);
                }
            }
            Ev::CloudQuery { node, generation } => self.cloud_query(node, generation),
            Ev::CloudCall(op, call) => {
                let result = self.serve(op.node, &call);
                let half = self.api_latency() / 2;
                self.at(self.now + half, Ev::CloudAnswer(op, result));
            }
            Ev::CloudAnswer(op, result) => self.advance(op, Some(result)),
            Ev::CloudWaited(op) => self.advance(op, None),
            Ev::Transition { version } => self.cloud_transition(version),
            Ev::Fault(f) => self.fault(f),
        }
    }

    pub fn deliver(&mut self, i: usize, event: Event) {
        let now = self.now;
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let before = core.role();
        let actions = core.handle(event, now);
        let _ = before;
        self.run_actions(i, actions);
        self.schedule_tick(i);
    }

    pub fn schedule_tick(&mut self, i: usize) {
        let now = self.now;
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        let t = core.next_wakeup(now).max(now + Duration::from_millis(1));
        let n = &mut self.nodes[i];
        if n.tick_at.is_none_or(|cur| t < cur || cur < now) {
            n.tick_at = Some(t);
            let generation = n.generation;
            self.at(
                t,
                Ev::Tick {
                    node: i,
                    generation,
                },
            );
        }
    }

    pub fn api_latency(&mut self) -> Duration {
        let (lo, hi) = self.params.api_latency;
        self.rng.ms(lo, hi)
    }

    pub fn reply(&mut self, node: usize, generation: u64, event: Event, after: Duration) {
        let t = self.now + after;
        self.at(
            t,
            Ev::Deliver {
                node,
                generation,
                event,
            },
        );
    }

    pub fn run_actions(&mut self, i: usize, actions: Vec<Action>) {
        let generation = self.nodes[i].generation;
        for a in actions {
            match a {
                Action::Transitioned { from, to, reason } => {
                    self.log(format!("{} {from} -> {to}: {reason}", name(i)));
                }
                Action::SendHeartbeat => self.send_heartbeats(i),
                Action::Alert(alert) => self.log(format!("{} alert {alert:?}", name(i))),
                Action::QueryCloud => {
                    let half = self.api_latency() / 2;
                    self.at(
                        self.now + half,
                        Ev::CloudQuery {
                            node: i,
                            generation,
                        },
                    );
                }
                Action::Claim {
                    expected_holder,
                    force,
                    ..
                } => {
                    let req = ClaimRequest {
                        // As the daemon does: an id that does not parse expects nobody.
                        expected_holder: expected_holder.and_then(|h| h.parse().ok()),
                        force,
                        device_index: 1,
                    };
                    self.start_proc(i, Proc::Claim(ClaimProc::new(req, context(i))));
                }
                Action::Release => self.start_proc(i, Proc::Release(ReleaseProc::new(context(i)))),
                Action::ApplyNet => {
                    let attached_here = matches!(
                        self.cloud.att,
                        Some(Att {
                            node,
                            state: AttState::Attached,
                            ..
                        }) if node == i
                    );
                    if attached_here {
                        self.reply(
                            i,
                            generation,
                            Event::NetApplied(Ok(())),
                            Duration::from_millis(5),
                        );
                    } else {
                        self.reply(
                            i,
                            generation,
                            Event::NetApplied(Err("link did not appear".into())),
                            Duration::from_millis(1500),
                        );
                    }
                }
                Action::RemoveNet => self.reply(
                    i,
                    generation,
                    Event::NetRemoved(Ok(())),
                    Duration::from_millis(2),
                ),
                Action::RunHooks { .. } => {}
                Action::Reply { token, result } => {
                    self.log(format!("{} reply {token}: {result:?}", name(i)));
                    if self.nodes[i].pending_yields.remove(&token).is_some() && result.is_ok() {
                        self.yields_ok += 1;
                    }
                }
                Action::Exit => {
                    self.log(format!("{} exited", name(i)));
                    self.nodes[i].core = None;
                    self.nodes[i].generation += 1;
                    self.nodes[i].pending_yields.clear();
                    return;
                }
            }
        }
    }

    pub fn send_heartbeats(&mut self, from: usize) {
        let Some(core) = self.nodes[from].core.as_ref() else {
            return;
        };
        let advert = core.advert();
        let incarnation = self.nodes[from].incarnation;
        for to in 0..self.nodes.len() {
            if to == from || self.partitioned(from, to) || self.rng.chance(self.loss) {
                continue;
            }
            let copies = if self.rng.chance(self.params.dup_rate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let (lo, hi) = self.params.net_delay;
                let d = self.rng.ms(lo, hi);
                let t = self.now + d;
                self.at(
                    t,
                    Ev::Packet {
                        to,
                        from,
                        advert: advert.clone(),
                        incarnation,
                    },
                );
            }
        }
    }

    pub fn partitioned(&self, a: usize, b: usize) -> bool {
        self.partitions
            .iter()
            .any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    }

    pub fn start_proc(&mut self, node: usize, proc: Proc) {
        match proc {
            Proc::Claim(_) => self.cloud.claims += 1,
            Proc::Release(_) => self.cloud.releases += 1,
        }
        let op = Op {
            node,
            generation: self.nodes[node].generation,
            started: self.now,
            proc,
        };
        self.advance(Box::new(op), None);
    }

    /// One step of a procedure: send its call to the cloud, sleep its poll delay, or deliver
    /// its outcome to the node. A procedure dies with its process (a killed or exited node's
    /// generation moves on); a call it already sent still reaches the cloud.
    pub fn advance(&mut self, mut op: Box<Op>, last: Option<Result<Reply, CloudError>>) {
        if self.nodes[op.node].generation != op.generation {
            return;
        }
        let elapsed = self.now.saturating_sub(op.started);
        let then = match &mut op.proc {
            Proc::Claim(m) => then(m.next(elapsed, last), claim_event),
            Proc::Release(m) => then(m.next(elapsed, last), release_event),
        };
        match then {
            Then::Call(call) => {
                let half = self.api_latency() / 2;
                self.at(self.now + half, Ev::CloudCall(op, call));
            }
            Then::Wait(d) => self.at(self.now + d, Ev::CloudWaited(op)),
            Then::Deliver(event) => self.reply(op.node, op.generation, event, Duration::ZERO),
        }
    }

    pub fn cloud_query(&mut self, node: usize, generation: u64) {
        let event = if self.rng.chance(self.cloud.error_rate) {
            Event::CloudState(Err(Failure::retryable("RequestLimitExceeded")))
        } else {
            Event::CloudState(Ok(self.cloud.holder_view()))
        };
        let half = self.api_latency() / 2;
        self.reply(node, generation, event, half);
    }

    /// One primitive call, answered as EC2 would: attach of an ENI in use fails as in use,
    /// device index 0 is taken by the primary interface, a detach must name the current
    /// attachment, and attach and detach finish later (see [`Sim::cloud_transition`]).
    pub fn serve(&mut self, node: usize, call: &Call) -> Result<Reply, CloudError> {
        if self.rng.chance(self.cloud.error_rate) {
            return Err(CloudError::new(
                CloudErrorKind::Throttled,
                "RequestLimitExceeded",
            ));
        }
        let current = self.cloud.att;
        let named = |id: &str| current.filter(|a| attachment_id(a.id) == id);
        match call {
            Call::Describe => Ok(Reply::Described(self.cloud.describe())),
            Call::Attach { device_index: 0 } => Err(CloudError::new(
                CloudErrorKind::InvalidParameter,
                "already has an interface attached at device index '0'",
            )),
            Call::Attach { .. } => {
                if current.is_some() {
                    self.cloud.in_use_rejections += 1;
                    return Err(CloudError::new(
                        CloudErrorKind::InUse,
                        format!("Interface: [{ENI}] in use."),
                    ));
                }
                self.log(format!("cloud: attach to {}", name(node)));
                self.cloud.next_id += 1;
                let id = self.cloud.next_id;
                self.set_att(Some((node, AttState::Attaching, id, false)));
                Ok(Reply::Accepted)
            }
            Call::Detach {
                attachment_id,
                force,
            } => match named(attachment_id) {
                Some(a) => {
                    if a.state != AttState::Detaching {
                        self.log(format!(
                            "cloud: {} detaches {}{}",
                            name(node),
                            name(a.node),
                            if *force { " (forced)" } else { "" }
                        ));
                        self.set_att(Some((
                            a.node,
                            AttState::Detaching,
                            a.id,
                            a.delete_on_termination,
                        )));
                    }
                    Ok(Reply::Accepted)
                }
                None => Err(not_found(attachment_id)),
            },
            Call::KeepOnTermination { attachment_id } => match named(attachment_id) {
                Some(_) => {
                    if let Some(a) = self.cloud.att.as_mut() {
                        a.delete_on_termination = false;
                    }
                    Ok(Reply::Accepted)
                }
                None => Err(not_found(attachment_id)),
            },
        }
    }

    pub fn set_att(&mut self, att: Option<(usize, AttState, u64, bool)>) {
        self.cloud.version += 1;
        let version = self.cloud.version;
        self.cloud.att = att.map(|(node, state, id, delete_on_termination)| Att {
            node,
            state,
            version,
            id,
            delete_on_termination,
        });
        let delay = match att {
            Some((_, AttState::Attaching, ..)) => Some(self.params.attach_delay),
            Some((_, AttState::Detaching, ..)) => Some(self.params.detach_delay),
            _ => None,
        };
        if let Some((lo, hi)) = delay {
            let t = self.now + self.rng.ms(lo, hi);
            self.at(t, Ev::Transition { version });
        }
    }

    pub fn cloud_transition(&mut self, version: u64) {
        let Some(att) = self.cloud.att else { return };
        if att.version != version {
            return;
        }
        match att.state {
            AttState::Attaching => {
                self.log(format!("cloud: attached to {}", name(att.node)));
                self.cloud.history.push((self.now, Some(att.node)));
                self.set_att(Some((
                    att.node,
                    AttState::Attached,
                    att.id,
                    att.delete_on_termination,
                )));
            }
            AttState::Detaching => {
                self.log(format!("cloud: detached from {}", name(att.node)));
                self.cloud.history.push((self.now, None));
                self.set_att(None);
                // The hot-unplug: the old holder's daemon sees its link vanish.
                let g = self.nodes[att.node].generation;
                self.reply(att.node, g, Event::LinkLost, Duration::from_millis(3));
            }
            AttState::Attached => {}
        }
    }

    pub fn fault(&mut self, f: Fault) {
        self.log(format!("fault: {f:?}"));
        match f {
            Fault::Pause(i) => {
                if self.nodes[i].core.is_some() {
                    self.nodes[i].paused = true;
                }
            }
            Fault::Resume(i) => {
                if self.nodes[i].paused {
                    self.nodes[i].paused = false;
                    let deferred = std::mem::take(&mut self.nodes[i].deferred);
                    for e in deferred {
                        self.deliver(i, e);
                    }
                    self.deliver(i, Event::Tick);
                }
            }
            Fault::Kill(i) => {
                let n = &mut self.nodes[i];
                n.core = None;
                n.paused = false;
                n.deferred.clear();
                n.generation += 1;
                n.pending_yields.clear();
            }
            Fault::Start(i) => {
                if self.nodes[i].core.is_none() {
                    let n = &mut self.nodes[i];
                    n.generation += 1;
                    n.incarnation += 1;
                    n.tick_at = None;
                    let mut core = Node::new(n.cfg.clone(), self.now);
                    let actions = core.start(self.now);
                    n.core = Some(core);
                    self.run_actions(i, actions);
                    self.schedule_tick(i);
                }
            }
            Fault::Stop(i, handover) => {
                if self.running(i) {
                    self.deliver(i, Event::Stop { handover });
                }
            }
            Fault::Partition(a, b, on) => {
                self.partitions.retain(|&p| p != (a, b));
                if on {
                    self.partitions.push((a, b));
                }
            }
            Fault::Loss(p) => self.loss = p,
            Fault::CloudErrors(p) => self.cloud.error_rate = p,
            Fault::Yield => {
                let master = (0..self.nodes.len()).find(|&i| {
                    self.running(i)
                        && self.nodes[i]
                            .core
                            .as_ref()
                            .is_some_and(|c| c.role() == Role::Master)
                });
                if let Some(i) = master {
                    let token = self.next_token;
                    self.next_token += 1;
                    self.yields_requested += 1;
                    self.nodes[i].pending_yields.insert(token, self.now);
                    self.deliver(
                        i,
                        Event::YieldRequested {
                            token,
                            timeout: Duration::from_secs(5),
                        },
                    );
                }
            }
            Fault::HealAll => {
                self.partitions.clear();
                self.loss = 0.0;
                self.cloud.error_rate = 0.0;
                for i in 0..self.nodes.len() {
                    self.fault(Fault::Resume(i));
                    self.fault(Fault::Start(i));
                }
            }
        }
    }

    /// Liveness: exactly one master, serving, holding the attachment; everyone else backup.
    pub fn check_converged(&self) -> Result<(), String> {
        let masters: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.role() == Role::Master)
            })
            .collect();
        let [m] = masters.as_slice() else {
            return Err(format!("liveness: masters after healing: {masters:?}"));
        };
        let serving = self.nodes[*m].core.as_ref().is_some_and(|c| c.is_serving());
        let att = self.cloud.att;
        if !serving || att.map(|a| (a.node, a.state)) != Some((*m, AttState::Attached)) {
            return Err(format!(
                "liveness: master {} serving={serving}, cloud attachment {att:?}",
                name(*m)
            ));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let role = n.core.as_ref().map(|c| c.role());
            if i != *m && role != Some(Role::Backup) {
                return Err(format!("liveness: {} is {role:?}", name(i)));
            }
        }
        Ok(())
    }

    pub fn fail(&self, seed: u64, scenario: &str, msg: &str) -> String {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        format!(
            "seed {seed} ({scenario}) failed: {msg}\nreplay: ENIPEER_SIM_SEED={seed} cargo test --test simulation {scenario} -- --nocapture\nlast events:\n{}",
            trace.join("\n")
        )
    }
}
