//! The simulation engine: the event queue, the nodes (agent, host, service), the network, the
//! faults, and the cloud's server side.

mod host;

pub use host::{outage_bound, Host, Service};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use enipeer::cloud::claim::{Call, ClaimProc, Procedure, ReleaseProc, Reply};
use enipeer::cloud::{ClaimRequest, CloudError, CloudErrorKind};
use enipeer::core::{Action, Advert, CoreConfig, Event, Failure, Node, Role, Time};
use enipeer::ids::{InstanceId, NodeName};

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
    /// A round of a node's check runner (own checks, probe through the ENI).
    CheckRound {
        node: usize,
        gen: u64,
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
    /// The host dies (agent, service and host config with it) / boots (service, then agent).
    KillHost(usize),
    BootHost(usize),
    /// The node's service (nginx) goes down or up; the agent keeps running.
    Service(usize, bool),
    /// The node's key differs from its peers' (set around a restart of its agent).
    WrongKey(usize, bool),
    /// One node's API path fails this often.
    NodeCloudErrors(usize, f64),
    /// DescribeNetworkInterfaces may show the previous state for a while after a change.
    StaleDescribe(Duration),
    /// Normal detaches started in the next while stay in `detaching` for seconds.
    StuckDetach(Duration),
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
    pub host: Host,
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
    pub service: Service,
}

pub fn config(i: usize, n: usize, prio: &[u8]) -> CoreConfig {
    let peers: Vec<(NodeName, Option<InstanceId>)> = (0..n)
        .filter(|&j| j != i)
        .map(|j| (name(j), None))
        .collect();
    CoreConfig {
        name: name(i),
        priority: prio[i],
        instance_id: instance_id(i),
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
        maintenance: None,
    }
}

pub fn name(i: usize) -> NodeName {
    format!("node-{}", (b'a' + i as u8) as char)
        .parse()
        .expect("a valid node name")
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
                host: Host::new(),
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
            service: Service::default(),
        }
    }

    /// Every node corroborates a silent holder's death with `fall` probes (or not, `None`).
    pub fn corroborate(&mut self, fall: Option<u32>) {
        for n in &mut self.nodes {
            n.cfg.corroborate_fall = fall;
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
            // The state since the last event held until now: judge it before it changes.
            self.check_outage();
            self.step(q.ev);
            self.update_service();
            self.check_safety()?;
        }
        self.account(end);
        self.now = end;
        self.check_outage();
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
        if let Some(v) = &self.service.violation {
            return Err(v.clone());
        }
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
                // A paused agent misses its timers; resuming ticks it.
                if self.nodes[node].generation == generation
                    && self.nodes[node].tick_at == Some(self.now)
                    && !self.nodes[node].paused
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
                let event = Event::Heartbeat {
                    peer: name(from),
                    advert,
                    incarnation,
                };
                if self.running(to) {
                    self.deliver(to, event);
                } else if self.nodes[to].paused {
                    // The socket buffers what arrives while the agent is stopped.
                    self.nodes[to].deferred.push(event);
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
                let result = self.serve(op.node, op.started, &call);
                let half = self.api_latency() / 2;
                self.at(self.now + half, Ev::CloudAnswer(op, result));
            }
            Ev::CloudAnswer(op, result) => self.advance(op, Some(result)),
            Ev::CloudWaited(op) => self.advance(op, None),
            Ev::Transition { version } => self.cloud_transition(version),
            Ev::CheckRound { node, gen } => self.check_round(node, gen),
            Ev::Fault(f) => self.fault(f),
        }
    }

    pub fn deliver(&mut self, i: usize, event: Event) {
        let now = self.now;
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let health = match &event {
            Event::Health { healthy, .. } => Some(*healthy),
            _ => None,
        };
        let actions = core.handle(event, now);
        if let Some(h) = health {
            self.nodes[i].host.told_healthy = h;
        }
        self.run_actions(i, actions);
        self.check_net_removed(i);
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
                    kind,
                    ..
                } => {
                    self.check_claim(i, kind);
                    let req = ClaimRequest {
                        expected_holder,
                        force,
                        device_indexes: vec![1],
                    };
                    self.start_proc(i, Proc::Claim(ClaimProc::new(req, context(i))));
                }
                Action::Release => self.start_proc(i, Proc::Release(ReleaseProc::new(context(i)))),
                Action::ApplyNet => self.apply_net(i, generation),
                Action::RemoveNet => {
                    self.nodes[i].host.net_config = false;
                    self.nodes[i].host.net_wanted = false;
                    let removed = Event::NetRemoved(Ok(()));
                    self.reply(i, generation, removed, Duration::from_millis(2));
                }
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

    /// The host config takes effect at once if the ENI's link is here; the answer follows.
    fn apply_net(&mut self, i: usize, generation: u64) {
        let attached_here = matches!(
            self.cloud.att,
            Some(Att {
                node,
                state: AttState::Attached,
                ..
            }) if node == i
        );
        let (event, after) = if attached_here {
            self.nodes[i].host.net_config = true;
            self.nodes[i].host.net_wanted = true;
            (Ok(()), 5)
        } else {
            (Err("link did not appear".into()), 1500)
        };
        let event = Event::NetApplied(event);
        self.reply(i, generation, event, Duration::from_millis(after));
    }

    pub fn send_heartbeats(&mut self, from: usize) {
        let Some(core) = self.nodes[from].core.as_ref() else {
            return;
        };
        let advert = core.advert();
        let incarnation = self.nodes[from].incarnation;
        for to in 0..self.nodes.len() {
            // A wrong key on either side: the receiver rejects the packet (bad MAC).
            let rejected = self.nodes[from].host.wrong_key || self.nodes[to].host.wrong_key;
            if to == from || rejected || self.partitioned(from, to) || self.rng.chance(self.loss) {
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

    /// How often a call from `node` fails: the cloud's rate or that node's path's.
    fn error_rate(&self, node: usize) -> f64 {
        self.cloud
            .error_rate
            .max(self.nodes[node].host.cloud_error_rate)
    }

    /// The attachment as a read sees it: shortly after a change, during a stale spell, it may
    /// still show the previous state.
    fn visible_att(&mut self) -> Option<Att> {
        let c = &self.cloud;
        let recent = self.now < c.changed_at + host::STALE_LAG;
        if self.now < c.stale_until && recent && self.rng.chance(0.5) {
            return self.cloud.before;
        }
        self.cloud.att
    }

    pub fn cloud_query(&mut self, node: usize, generation: u64) {
        let event = if self.rng.chance(self.error_rate(node)) {
            Event::CloudState(Err(Failure::retryable("RequestLimitExceeded")))
        } else {
            let att = self.visible_att();
            Event::CloudState(Ok(Cloud::holder_view(att)))
        };
        let half = self.api_latency() / 2;
        self.reply(node, generation, event, half);
    }

    /// One primitive call, answered as EC2 would: attach of an ENI in use fails as in use,
    /// device index 0 is taken by the primary interface, a detach must name the current
    /// attachment, and attach and detach finish later (see [`Sim::cloud_transition`]).
    /// `decided` is when the node decided on the procedure making the call.
    pub fn serve(&mut self, node: usize, decided: Time, call: &Call) -> Result<Reply, CloudError> {
        if self.rng.chance(self.error_rate(node)) {
            return Err(CloudError::new(
                CloudErrorKind::Throttled,
                "RequestLimitExceeded",
            ));
        }
        let current = self.cloud.att;
        let named = |id: &str| current.filter(|a| attachment_id(a.id) == id);
        match call {
            Call::Describe => {
                let att = self.visible_att();
                Ok(Reply::Described(Cloud::describe(att)))
            }
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
                    self.detach(node, a, *force, decided);
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

    /// A detach of `a` requested by `node`: a normal one may get stuck in `detaching`; a
    /// forced one finishes in the usual time, even over a stuck one.
    fn detach(&mut self, node: usize, a: Att, force: bool, decided: Time) {
        if a.state == AttState::Detaching && !force {
            return;
        }
        let forced = if force { " (forced)" } else { "" };
        self.log(format!(
            "cloud: {} detaches {}{forced}",
            name(node),
            name(a.node)
        ));
        if force && a.state == AttState::Attached {
            self.forced_detach(node, a.node, decided);
        }
        let stuck = !force && self.now < self.cloud.stuck_until;
        let delay = stuck.then(|| self.rng.ms(host::STUCK.0, host::STUCK.1));
        let att = (a.node, AttState::Detaching, a.id, a.delete_on_termination);
        self.set_att_after(Some(att), delay);
    }

    pub fn set_att(&mut self, att: Option<(usize, AttState, u64, bool)>) {
        self.set_att_after(att, None);
    }

    /// Changes the attachment; an attaching or detaching one finishes after `delay`, or after
    /// the usual random delay.
    fn set_att_after(
        &mut self,
        att: Option<(usize, AttState, u64, bool)>,
        delay: Option<Duration>,
    ) {
        self.cloud.before = self.cloud.att;
        self.cloud.changed_at = self.now;
        self.cloud.version += 1;
        let version = self.cloud.version;
        self.cloud.att = att.map(|(node, state, id, delete_on_termination)| Att {
            node,
            state,
            version,
            id,
            delete_on_termination,
        });
        let range = match att {
            Some((_, AttState::Attaching, ..)) => Some(self.params.attach_delay),
            Some((_, AttState::Detaching, ..)) => Some(self.params.detach_delay),
            _ => None,
        };
        if let Some((lo, hi)) = range {
            let t = self.now + delay.unwrap_or_else(|| self.rng.ms(lo, hi));
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
                let n = &mut self.nodes[i];
                if n.core.is_some() && !n.paused {
                    n.paused = true;
                    n.host.paused_wake = Some(n.tick_at.unwrap_or(self.now));
                }
            }
            Fault::Resume(i) => self.resume(i),
            Fault::Kill(i) => {
                let n = &mut self.nodes[i];
                n.core = None;
                n.paused = false;
                n.deferred.clear();
                n.generation += 1;
                n.pending_yields.clear();
            }
            Fault::Start(i) => {
                if self.nodes[i].core.is_none() && self.nodes[i].host.up {
                    let n = &mut self.nodes[i];
                    n.generation += 1;
                    n.incarnation += 1;
                    n.tick_at = None;
                    let mut core = Node::new(n.cfg.clone(), self.now);
                    let actions = core.start(self.now);
                    n.core = Some(core);
                    self.agent_started(i);
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
            f @ (Fault::KillHost(_)
            | Fault::BootHost(_)
            | Fault::Service(..)
            | Fault::WrongKey(..)
            | Fault::NodeCloudErrors(..)
            | Fault::StaleDescribe(_)
            | Fault::StuckDetach(_)) => self.host_fault(f),
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
            Fault::HealAll => self.heal_all(),
        }
    }

    /// Ends every fault: what is left must converge to one serving master.
    pub fn heal_all(&mut self) {
        self.partitions.clear();
        self.loss = 0.0;
        self.cloud.error_rate = 0.0;
        self.cloud.stale_until = self.cloud.stale_until.min(self.now);
        self.cloud.stuck_until = self.cloud.stuck_until.min(self.now);
        for i in 0..self.nodes.len() {
            self.fault(Fault::Resume(i));
            if self.nodes[i].host.wrong_key {
                self.fault(Fault::Kill(i));
                self.nodes[i].host.wrong_key = false;
            }
            self.nodes[i].host.cloud_error_rate = 0.0;
            self.fault(Fault::BootHost(i));
            self.fault(Fault::Service(i, true));
            self.fault(Fault::Start(i));
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
