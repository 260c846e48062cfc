//! Deterministic simulation of 2 and 3 enipeer cores against a fake clock, a fake network (loss,
//! delay, duplication, reordering, partitions, paused nodes) and a fake cloud that enforces
//! AWS's single-attachment rule and makes attach and detach asynchronous.
//!
//! Claims and releases run the production procedures (`enipeer::cloud::claim`): the simulation
//! drives their step machines through its event queue and answers their primitive calls from its
//! model cloud, with API latency on every call.
//!
//! Every run is a seed. A failing run prints its seed and the tail of its trace; replay it with
//! `ENIPEER_SIM_SEED=<seed> cargo test --test simulation -- --nocapture`. The number of seeds
//! per scenario comes from `ENIPEER_SIM_SEEDS` (default 1000).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use enipeer::cloud::claim::{
    Call, ClaimProc, Context, Limits, Next, Procedure, ReleaseProc, Reply,
};
use enipeer::cloud::{
    AttachState, Attachment, ClaimOutcome, ClaimRequest, CloudError, CloudErrorKind, EniInfo,
    Ipv4Net, ReleaseOutcome,
};
use enipeer::core::{
    Action, Advert, ClaimResult, CloudView, CoreConfig, Event, Failure, Node, Role, Time,
};
use enipeer::ids::InstanceId;

// ---------- deterministic randomness ----------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64: tiny, good enough for schedules, identical on every platform.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

// ---------- the fake cloud ----------

const ENI: &str = "eni-0000e001";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttState {
    Attaching,
    Attached,
    Detaching,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Att {
    node: usize,
    state: AttState,
    /// Bumped on every change so scheduled transitions for an old attachment are ignored.
    version: u64,
    /// Names the attachment (new on every attach): a detach of an older one is not found.
    id: u64,
    delete_on_termination: bool,
}

impl Att {
    /// An attachment made at launch: attached, and (as the console does) deleted on termination.
    fn launched(node: usize) -> Att {
        Att {
            node,
            state: AttState::Attached,
            version: 0,
            id: 0,
            delete_on_termination: true,
        }
    }
}

#[derive(Debug, Default)]
struct Cloud {
    att: Option<Att>,
    version: u64,
    next_id: u64,
    /// (time, new holder) for every completed attach and detach.
    history: Vec<(Time, Option<usize>)>,
    in_use_rejections: u32,
    /// Probability that one API call fails with a transient error.
    error_rate: f64,
    /// Procedures started: claims and releases.
    claims: u32,
    releases: u32,
}

impl Cloud {
    fn holder_view(&self) -> CloudView {
        match self.att {
            Some(Att {
                node,
                state: AttState::Attached | AttState::Attaching,
                ..
            }) => CloudView::Holder(instance(node)),
            _ => CloudView::Nobody,
        }
    }

    /// DescribeNetworkInterfaces, as EC2 would answer it.
    fn describe(&self) -> EniInfo {
        let attachment = self.att.map(|a| Attachment {
            instance_id: instance_id(a.node),
            attachment_id: attachment_id(a.id),
            device_index: 1,
            state: match a.state {
                AttState::Attaching => AttachState::Attaching,
                AttState::Attached => AttachState::Attached,
                AttState::Detaching => AttachState::Detaching,
            },
            delete_on_termination: a.delete_on_termination,
        });
        EniInfo {
            eni_id: ENI.parse().expect("a valid ENI id"),
            status: if attachment.is_some() {
                "in-use"
            } else {
                "available"
            }
            .into(),
            attachment,
            mac: "02:00:5e:10:00:25".into(),
            primary_ip: "198.18.1.25".parse().expect("an address"),
            secondary_ips: Vec::new(),
            subnet_cidr: Some(Ipv4Net {
                addr: "198.18.1.0".parse().expect("an address"),
                prefix: 24,
            }),
            availability_zone: Some("sim-1a".into()),
        }
    }
}

fn attachment_id(id: u64) -> String {
    format!("eni-attach-{id:08x}")
}

fn instance_id(node: usize) -> InstanceId {
    instance(node).parse().expect("a valid instance id")
}

fn instance(node: usize) -> String {
    format!("i-{:08x}", 0xa0 + node)
}

/// The procedures' context for one node: the same deadline as the old model's (10 s) and the
/// default grace before a normal detach is forced; no poll jitter, so a seed replays exactly.
fn context(node: usize) -> Context {
    Context {
        me: instance_id(node),
        eni: ENI.parse().expect("a valid ENI id"),
        limits: Limits {
            deadline: Duration::from_secs(10),
            force_detach_grace: Duration::from_secs(2),
            poll_jitter: || 1.0,
        },
    }
}

/// What the simulation does with a procedure's next step.
enum Then {
    Call(Call),
    Wait(Duration),
    Deliver(Event),
}

fn then<T>(next: Next<T>, event: fn(Result<T, CloudError>) -> Event) -> Then {
    match next {
        Next::Call(c) => Then::Call(c),
        Next::Wait(d) => Then::Wait(d),
        Next::Done(out) => Then::Deliver(event(out)),
    }
}

/// As `daemon::failure` does it.
fn failure(e: &CloudError) -> Failure {
    Failure {
        retryable: e.retryable(),
        message: e.to_string(),
    }
}

fn claim_event(out: Result<ClaimOutcome, CloudError>) -> Event {
    Event::ClaimDone(match out {
        Ok(ClaimOutcome::Claimed { .. }) => Ok(ClaimResult::Claimed),
        Ok(ClaimOutcome::HeldBy { holder, .. }) => Ok(ClaimResult::HeldBy(holder.to_string())),
        Err(e) => Err(failure(&e)),
    })
}

fn release_event(out: Result<ReleaseOutcome, CloudError>) -> Event {
    Event::ReleaseDone(out.map(drop).map_err(|e| failure(&e)))
}

fn not_found(attachment_id: &str) -> CloudError {
    CloudError::new(
        CloudErrorKind::NotFound,
        format!("InvalidAttachmentID.NotFound: {attachment_id}"),
    )
}

// ---------- events ----------

/// A claim or release in progress: the production step machine and whom it runs for.
#[derive(Debug, Clone)]
enum Proc {
    Claim(ClaimProc),
    Release(ReleaseProc),
}

#[derive(Debug, Clone)]
struct Op {
    node: usize,
    generation: u64,
    started: Time,
    proc: Proc,
}

#[derive(Debug, Clone)]
enum Ev {
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
enum Fault {
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

struct Queued {
    at: Time,
    seq: u64,
    ev: Ev,
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

struct SimNode {
    cfg: CoreConfig,
    core: Option<Node>,
    generation: u64,
    incarnation: u64,
    paused: bool,
    /// Events that arrived while paused, delivered on resume.
    deferred: Vec<Event>,
    tick_at: Option<Time>,
    /// Time spent believing master while another instance holds the ENI (running time only).
    wrong_master: Duration,
    pending_yields: BTreeMap<u64, Time>,
}

struct Params {
    attach_delay: (u64, u64),
    detach_delay: (u64, u64),
    api_latency: (u64, u64),
    net_delay: (u64, u64),
    dup_rate: f64,
    /// Bound for "believes master while another holds it".
    wrong_master_bound: Duration,
}

struct Sim {
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    rng: Rng,
    nodes: Vec<SimNode>,
    cloud: Cloud,
    partitions: Vec<(usize, usize)>,
    loss: f64,
    params: Params,
    trace: VecDeque<String>,
    next_token: u64,
    yields_requested: u32,
    yields_ok: u32,
    last_check: Time,
}

fn config(i: usize, n: usize, prio: &[u8]) -> CoreConfig {
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
        maintenance: None,
    }
}

fn name(i: usize) -> String {
    format!("node-{}", (b'a' + i as u8) as char)
}

impl Sim {
    fn new(seed: u64, n: usize, prio: &[u8]) -> Sim {
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

    fn at(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn log(&mut self, s: String) {
        if self.trace.len() >= 200 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>9.3}s {}", self.now.as_secs_f64(), s));
    }

    fn running(&self, i: usize) -> bool {
        self.nodes[i].core.is_some() && !self.nodes[i].paused
    }

    fn run_until(&mut self, end: Time) -> Result<(), String> {
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
    fn account(&mut self, t: Time) {
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

    fn check_safety(&self) -> Result<(), String> {
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

    fn step(&mut self, ev: Ev) {
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

    fn deliver(&mut self, i: usize, event: Event) {
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

    fn schedule_tick(&mut self, i: usize) {
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

    fn api_latency(&mut self) -> Duration {
        let (lo, hi) = self.params.api_latency;
        self.rng.ms(lo, hi)
    }

    fn reply(&mut self, node: usize, generation: u64, event: Event, after: Duration) {
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

    fn run_actions(&mut self, i: usize, actions: Vec<Action>) {
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

    fn send_heartbeats(&mut self, from: usize) {
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

    fn partitioned(&self, a: usize, b: usize) -> bool {
        self.partitions
            .iter()
            .any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    }

    fn start_proc(&mut self, node: usize, proc: Proc) {
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
    fn advance(&mut self, mut op: Box<Op>, last: Option<Result<Reply, CloudError>>) {
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

    fn cloud_query(&mut self, node: usize, generation: u64) {
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
    fn serve(&mut self, node: usize, call: &Call) -> Result<Reply, CloudError> {
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

    fn set_att(&mut self, att: Option<(usize, AttState, u64, bool)>) {
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

    fn cloud_transition(&mut self, version: u64) {
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

    fn fault(&mut self, f: Fault) {
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
    fn check_converged(&self) -> Result<(), String> {
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

    fn fail(&self, seed: u64, scenario: &str, msg: &str) -> String {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        format!(
            "seed {seed} ({scenario}) failed: {msg}\nreplay: ENIPEER_SIM_SEED={seed} cargo test --test simulation {scenario} -- --nocapture\nlast events:\n{}",
            trace.join("\n")
        )
    }
}

fn seeds(default: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("ENIPEER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var("ENIPEER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (1..=n).collect()
}

fn secs(s: f64) -> Time {
    Duration::from_secs_f64(s)
}

fn priorities(setup: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            if setup.chance(0.3) {
                100 + setup.below(3) as u8
            } else {
                100
            }
        })
        .collect()
}

/// Random faults of every kind for 44 s, then heal and check that one master serves.
fn random_faults(seed: u64, n: usize) -> (Sim, Result<(), String>) {
    let mut setup = Rng(seed ^ 0x5eed);
    let prio = priorities(&mut setup, n);
    let mut sim = Sim::new(seed, n, &prio);
    // Start with the ENI on node-a, or detached.
    if setup.chance(0.5) {
        sim.cloud.att = Some(Att::launched(0));
    }
    for i in 0..n {
        let t = setup.ms(0, 300);
        sim.at(t, Ev::Fault(Fault::Start(i)));
    }
    let faults = 2 + setup.below(8);
    for _ in 0..faults {
        let t = secs(2.0) + setup.ms(0, 38_000);
        let i = setup.below(n as u64) as usize;
        let len = setup.ms(300, 6_000);
        match setup.below(9) {
            0 => {
                sim.at(t, Ev::Fault(Fault::Pause(i)));
                sim.at(t + len, Ev::Fault(Fault::Resume(i)));
            }
            1 => {
                sim.at(t, Ev::Fault(Fault::Kill(i)));
                sim.at(t + len, Ev::Fault(Fault::Start(i)));
            }
            2 => {
                let j = (i + 1 + setup.below(n as u64 - 1) as usize) % n;
                sim.at(t, Ev::Fault(Fault::Partition(i, j, true)));
                sim.at(t + len, Ev::Fault(Fault::Partition(i, j, false)));
            }
            3 => {
                let p = 0.1 + setup.below(60) as f64 / 100.0;
                sim.at(t, Ev::Fault(Fault::Loss(p)));
                sim.at(t + len, Ev::Fault(Fault::Loss(0.0)));
            }
            4 => {
                sim.at(t, Ev::Fault(Fault::CloudErrors(0.3)));
                sim.at(t + len, Ev::Fault(Fault::CloudErrors(0.0)));
            }
            5 | 6 => sim.at(t, Ev::Fault(Fault::Yield)),
            7 => {
                sim.at(t, Ev::Fault(Fault::Stop(i, true)));
                sim.at(t + len, Ev::Fault(Fault::Start(i)));
            }
            _ => {
                sim.at(t, Ev::Fault(Fault::Stop(i, false)));
                let back = setup.ms(50, 2_000);
                sim.at(t + back, Ev::Fault(Fault::Start(i)));
            }
        }
    }
    sim.at(secs(46.0), Ev::Fault(Fault::HealAll));
    // Longest possible wait after healing: the maximum hold-down plus a failover.
    let r = sim
        .run_until(secs(46.0 + 16.0 + 10.0))
        .and_then(|()| sim.check_converged());
    (sim, r)
}

/// A heartbeat-only partition between two live nodes: the ENI may change hands at most once
/// per hold-down period; after healing, one master.
fn persistent_partition(seed: u64) -> (Sim, Result<(), String>) {
    let mut setup = Rng(seed ^ 0xbad);
    let mut sim = Sim::new(seed, 2, &[100, 100]);
    sim.cloud.att = Some(Att::launched(setup.below(2) as usize));
    sim.at(Duration::ZERO, Ev::Fault(Fault::Start(0)));
    sim.at(setup.ms(0, 300), Ev::Fault(Fault::Start(1)));
    let start = secs(3.0) + setup.ms(0, 1000);
    let len = secs(20.0) + setup.ms(0, 40_000);
    sim.at(start, Ev::Fault(Fault::Partition(0, 1, true)));
    sim.at(start + len, Ev::Fault(Fault::Partition(0, 1, false)));
    let r = sim.run_until(start + len).and_then(|()| {
        let changes = sim
            .cloud
            .history
            .iter()
            .filter(|(t, h)| *t >= start && h.is_some())
            .count();
        let hold_down = sim.nodes[0].cfg.hold_down;
        let bound = 1 + (len.as_secs_f64() / hold_down.as_secs_f64()).ceil() as usize;
        if changes > bound {
            Err(format!(
                "stability: {changes} ownership changes in a {len:?} partition (bound {bound})"
            ))
        } else {
            Ok(())
        }
    });
    let r = r
        .and_then(|()| sim.run_until(start + len + secs(16.0 + 10.0)))
        .and_then(|()| sim.check_converged());
    (sim, r)
}

/// Both (or all three) nodes start within a few ms of each other with the ENI detached:
/// exactly one attach succeeds.
fn simultaneous_start(seed: u64, n: usize) -> (Sim, Result<(), String>) {
    let mut setup = Rng(seed ^ 0x51);
    let prio = priorities(&mut setup, n);
    let mut sim = Sim::new(seed, n, &prio);
    for i in 0..n {
        let t = setup.ms(0, 5);
        sim.at(t, Ev::Fault(Fault::Start(i)));
    }
    let r = sim.run_until(secs(10.0)).and_then(|()| {
        let attaches = sim
            .cloud
            .history
            .iter()
            .filter(|(_, h)| h.is_some())
            .count();
        if attaches != 1 {
            return Err(format!("{attaches} attaches after a simultaneous start"));
        }
        sim.check_converged()
    });
    (sim, r)
}

fn run_many(scenario: &str, default: u64, f: impl Fn(u64) -> (Sim, Result<(), String>)) {
    let seeds = seeds(default);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut in_use = 0u64;
    let mut yields = (0u64, 0u64);
    // Schedules that ran the production claim or release at least once, and how many of each.
    let mut through_procs = 0u64;
    let mut procs = (0u64, 0u64);
    for &seed in &seeds {
        let (sim, r) = f(seed);
        in_use += u64::from(sim.cloud.in_use_rejections);
        procs.0 += u64::from(sim.cloud.claims);
        procs.1 += u64::from(sim.cloud.releases);
        if sim.cloud.claims + sim.cloud.releases > 0 {
            through_procs += 1;
        }
        yields.0 += u64::from(sim.yields_requested);
        yields.1 += u64::from(sim.yields_ok);
        if let Err(e) = r {
            failures.push(sim.fail(seed, scenario, &e));
            if failures.len() >= 3 {
                break;
            }
        }
    }
    println!(
        "{scenario}: {} schedules in {:.2}s; attaches refused as in use: {in_use}; yields ok {}/{}; \
         through the production claim/release: {through_procs} schedules ({} claims, {} releases)",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        yields.1,
        yields.0,
        procs.0,
        procs.1
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn two_nodes_random_faults() {
    run_many("two_nodes_random_faults", 1000, |s| random_faults(s, 2));
}

#[test]
fn three_nodes_random_faults() {
    run_many("three_nodes_random_faults", 500, |s| random_faults(s, 3));
}

#[test]
fn heartbeat_partition_is_stable() {
    run_many("heartbeat_partition_is_stable", 300, persistent_partition);
}

#[test]
fn simultaneous_start_elects_one() {
    run_many("simultaneous_start_elects_one", 500, |s| {
        simultaneous_start(s, 2 + (s % 2) as usize)
    });
}

/// The checks themselves must be able to fail: a core that ignores the cloud's single
/// attachment rule is not what we test, but a cloud that lets two attach would be caught.
#[test]
fn checks_catch_a_second_master() {
    let mut sim = Sim::new(1, 2, &[100, 100]);
    sim.at(Duration::ZERO, Ev::Fault(Fault::Start(0)));
    sim.at(Duration::ZERO, Ev::Fault(Fault::Start(1)));
    sim.run_until(secs(5.0)).expect("a quiet start is safe");
    sim.check_converged()
        .expect("one master after a quiet start");
    // Force the cloud to say the backup holds it while the master keeps believing otherwise:
    // with LinkLost and verification suppressed, the wrong-master bound must trip.
    let master = (0..2)
        .find(|&i| {
            sim.nodes[i]
                .core
                .as_ref()
                .is_some_and(|c| c.role() == Role::Master)
        })
        .expect("a master");
    sim.cloud.att = Some(Att {
        version: 999,
        ..Att::launched(1 - master)
    });
    sim.nodes[master].wrong_master = Duration::ZERO;
    sim.last_check = sim.now;
    sim.account(sim.now + secs(7.0));
    assert!(sim.check_safety().is_err());
}
