//! What the cores do not see directly: each node's host (up or dead), its service (nginx, up or
//! down independently of the agent), the host network config the agent applied, the agent's own
//! service checks (debounced with rise/fall as the daemon's supervisor does), the corroborating
//! probe a non-master sends through the ENI's address (what a client would see), stalls, and the
//! service invariants:
//!
//! - (a) with corroboration configured, a master whose service answers through the ENI is never
//!   force-detached (see [`Sim::forced_detach`] for the one race the core cannot see);
//! - (b) while a healthy node exists and nothing else is broken, the address is unserved for at
//!   most a bound (see [`outage_bound`]);
//! - (c) a node whose checks fail never claims by failover or election;
//! - (d) a backup has no host config left (every step-down removed it).

use std::time::Duration;

use enipeer::core::{ClaimKind, Event, Role, Time};

use super::{name, Ev, Fault, Sim};
use crate::cloud::{AttState, Rng};

/// Own checks and the corroborating probe run this often (the check interval).
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Checks in a row that flip the debounced verdict, as in `[[check]]`.
pub const RISE: u32 = 2;
pub const FALL: u32 = 2;
/// An answered probe, or a refused connection, comes back within this many ms.
pub const PROBE_FAST: (u64, u64) = (1, 10);
/// A probe to an address nobody answers on (ENI not attached, or on a dead host) times out.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// A detach stuck in `detaching` takes this many ms (unless forced).
pub const STUCK: (u64, u64) = (3_000, 12_000);
/// How long after a change DescribeNetworkInterfaces may still show the previous state.
pub const STALE_LAG: Duration = Duration::from_millis(1_500);

/// One node's host and agent-side state the model keeps.
#[derive(Debug, Clone)]
pub struct Host {
    pub up: bool,
    pub service_up: bool,
    /// Host network config an agent applied and no agent removed since (it survives the agent,
    /// not the host).
    pub net_config: bool,
    /// This agent process applied host config and has not removed it since.
    pub net_wanted: bool,
    /// This process, as backup, found a previous run's host config still applied.
    pub leftover_seen: bool,
    /// This node's key differs from its peers': heartbeats either way are rejected.
    pub wrong_key: bool,
    /// This node's own API path fails this often (one node's credentials or endpoint broken).
    pub cloud_error_rate: f64,
    /// The check runner's debounced verdict, and the run of results against it.
    pub reported: bool,
    pub streak: u32,
    /// The last own-health verdict the core received.
    pub told_healthy: bool,
    /// Bumped to cancel the check runner's schedule (process start, resume).
    pub check_gen: u64,
    /// Since when the agent has been running without a pause.
    pub running_since: Time,
    /// The agent's planned wake-up when it was paused (to measure the stall as the daemon does).
    pub paused_wake: Option<Time>,
}

impl Host {
    pub fn new() -> Host {
        Host {
            up: true,
            service_up: true,
            net_config: false,
            net_wanted: false,
            leftover_seen: false,
            wrong_key: false,
            cloud_error_rate: 0.0,
            reported: true,
            streak: 0,
            told_healthy: true,
            check_gen: 0,
            running_since: Duration::ZERO,
            paused_wake: None,
        }
    }
}

/// The service as clients see it through the ENI, and the invariants' bookkeeping.
#[derive(Debug, Default)]
pub struct Service {
    /// Who serves through the ENI, and since when that has been so (or unserved since when).
    pub served_by: Option<usize>,
    pub since: Time,
    pub calm_since: Option<Time>,
    /// Some fault broke the calm before: its residual timers may still run.
    pub was_disturbed: bool,
    pub eligible_since: Option<Time>,
    /// Invariant (b)'s bound; `None` leaves (b) unchecked.
    pub bound: Option<Duration>,
    /// The longest outage (b) measured, for the report.
    pub outage_max: Duration,
    pub forced_detaches: u32,
    /// Forced detaches of a master whose service answered (allowed only without corroboration).
    pub forced_while_serving: u32,
    pub violation: Option<String>,
    /// Backups that found a previous run's host config still applied (not a step-down of
    /// theirs, so not (d); reported).
    pub leftovers: u32,
    /// How long a scenario's failure took to be repaired (reported).
    pub recovery: Option<Duration>,
}

/// Residual timers a fault can leave running after it is over (claim backoff, hold-down): both
/// are capped at `hold_down_max`. After the first fault, (b) starts counting this long after
/// the calm began.
pub fn residual(sim: &Sim) -> Duration {
    sim.nodes[0].cfg.hold_down_max
}

/// Invariant (b)'s bound on an outage while a healthy node exists and nothing else is broken
/// (no partition, loss, wrong key, pause, cloud errors, stale reads or stuck detaches):
///
/// - detection, the longest of: a dead master host (its last heartbeat up to one interval and
///   the network delay before the death, then the dead interval; the `fall` probes sent after
///   the silence began are answered by their timeout within it), a failing service on the master
///   (`fall` check intervals), a healthy node coming back while the master is degraded (`rise`
///   check intervals);
/// - the move: an unhealthy master's handover may wait out one failed attempt
///   (`handover_timeout`), and a claim takes at most a describe, a detach, the detach's polls, an
///   attach, its polls and a keep-on-termination (≈ 2 × (400 ms change + 750 ms of polls) + 4
///   calls), bounded by the claim's 10 s deadline but in practice under 3 s: 3 s;
/// - a backup whose belief went stale (a release it did not hear of) re-reads every
///   `verify_interval`.
pub fn outage_bound(sim: &Sim) -> Duration {
    let c = &sim.nodes[0].cfg;
    let net = Duration::from_millis(sim.params.net_delay.1);
    let detect = (c.dead_interval + c.heartbeat_interval + net + PROBE_TIMEOUT)
        .max(CHECK_INTERVAL * (FALL + RISE));
    detect + c.handover_timeout + Duration::from_secs(3) + c.verify_interval
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

impl Sim {
    /// Who answers through the ENI now: the node it is attached to, if that host is up, its
    /// host network config applied and its service up (a paused or killed agent still serves).
    pub fn served(&self) -> Option<usize> {
        let a = self.cloud.att.filter(|a| a.state == AttState::Attached)?;
        let h = &self.nodes[a.node].host;
        (h.up && h.net_config && h.service_up).then_some(a.node)
    }

    pub fn corroborated(&self, i: usize) -> bool {
        self.nodes[i].cfg.corroborate_fall.is_some()
    }

    fn violate(&mut self, msg: String) {
        self.log(format!("VIOLATION {msg}"));
        self.service.violation.get_or_insert(msg);
    }

    /// (Re)starts the check runner of node `i` now.
    pub fn schedule_checks(&mut self, i: usize) {
        let h = &mut self.nodes[i].host;
        h.check_gen += 1;
        let (node, gen) = (i, h.check_gen);
        self.at(self.now, Ev::CheckRound { node, gen });
    }

    /// A new agent process: its checks start healthy, as the supervisor's do.
    pub fn agent_started(&mut self, i: usize) {
        let h = &mut self.nodes[i].host;
        h.reported = true;
        h.streak = 0;
        h.told_healthy = true;
        h.net_wanted = false;
        h.leftover_seen = false;
        h.running_since = self.now;
        h.paused_wake = None;
        self.schedule_checks(i);
    }

    /// One round of the check runner: the own check (debounced), and the probe through the ENI
    /// when not master.
    pub fn check_round(&mut self, i: usize, gen: u64) {
        let n = &self.nodes[i];
        if n.host.check_gen != gen || n.paused {
            return;
        }
        let Some(role) = n.core.as_ref().map(|c| c.role()) else {
            return;
        };
        let generation = n.generation;
        let ok = n.host.service_up;
        let h = &mut self.nodes[i].host;
        if ok == h.reported {
            h.streak = 0;
        } else {
            h.streak += 1;
            if h.streak >= if h.reported { FALL } else { RISE } {
                h.reported = ok;
                h.streak = 0;
                let detail = if ok {
                    "ok"
                } else {
                    "http 127.0.0.1:80: refused"
                }
                .to_string();
                let event = Event::Health {
                    healthy: ok,
                    detail,
                };
                self.reply(i, generation, event, Duration::from_millis(1));
            }
        }
        if role != Role::Master {
            let (ok, latency) = self.probe();
            let event = Event::EniProbe { sent: self.now, ok };
            self.reply(i, generation, event, latency);
        }
        self.at(self.now + CHECK_INTERVAL, Ev::CheckRound { node: i, gen });
    }

    /// A probe through the ENI's address now: its result and how long it takes to know it.
    fn probe(&mut self) -> (bool, Duration) {
        let reachable = self
            .cloud
            .att
            .filter(|a| a.state == AttState::Attached && self.nodes[a.node].host.up);
        let ok = self.served().is_some();
        let latency = if ok || reachable.is_some() {
            self.rng.ms(PROBE_FAST.0, PROBE_FAST.1)
        } else {
            PROBE_TIMEOUT
        };
        (ok, latency)
    }

    /// The agent runs again after a pause. As the daemon does: the first wake-up notices the
    /// stall (woken `gap` after it planned), drains the socket, tells the core, and only then
    /// handles what woke it; what was buffered comes in random order around that.
    pub fn resume(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        if !n.paused {
            return;
        }
        n.paused = false;
        let gap = now.saturating_sub(n.host.paused_wake.take().unwrap_or(now));
        n.host.running_since = now;
        let interval = n.cfg.heartbeat_interval;
        let mut events = std::mem::take(&mut n.deferred);
        shuffle(&mut events, &mut self.rng);
        if gap > interval {
            let woke = (!events.is_empty())
                .then(|| events.remove(self.rng.below(events.len() as u64) as usize));
            let (packets, others): (Vec<Event>, Vec<Event>) = events
                .into_iter()
                .partition(|e| matches!(e, Event::Heartbeat { .. }));
            for e in packets {
                self.deliver(i, e);
            }
            self.log(format!("{} stalled for {gap:?}", name(i)));
            self.deliver(i, Event::Stalled { gap });
            for e in woke.into_iter().chain(others) {
                self.deliver(i, e);
            }
        } else {
            for e in events {
                self.deliver(i, e);
            }
        }
        self.deliver(i, Event::Tick);
        // The check runner's timers fire at once after a stop, as tokio's do.
        self.schedule_checks(i);
    }

    /// The faults of hosts, services, keys and the cloud's API.
    pub fn host_fault(&mut self, f: Fault) {
        match f {
            Fault::KillHost(i) => {
                self.fault(Fault::Kill(i));
                let h = &mut self.nodes[i].host;
                h.up = false;
                h.service_up = false;
                h.net_config = false;
            }
            Fault::BootHost(i) if !self.nodes[i].host.up => {
                self.nodes[i].host.up = true;
                self.nodes[i].host.service_up = true;
                self.fault(Fault::Start(i));
            }
            Fault::Service(i, up) => {
                let h = &mut self.nodes[i].host;
                h.service_up = up && h.up;
            }
            Fault::WrongKey(i, on) => self.nodes[i].host.wrong_key = on,
            Fault::NodeCloudErrors(i, p) => self.nodes[i].host.cloud_error_rate = p,
            Fault::StaleDescribe(d) => self.cloud.stale_until = self.now + d,
            Fault::StuckDetach(d) => self.cloud.stuck_until = self.now + d,
            _ => {}
        }
    }

    /// Invariant (a): `claimant`'s claim, decided at `decided`, force-detaches `holder`.
    ///
    /// The core can only know what its probes told it: a service that came back less than a
    /// probe round (interval + answer) before the decision, or while the claimant was paused,
    /// may not be known yet. Anything older is a violation.
    pub fn forced_detach(&mut self, claimant: usize, holder: usize, decided: Time) {
        self.service.forced_detaches += 1;
        if self.served() != Some(holder) {
            return;
        }
        self.service.forced_while_serving += 1;
        let window = CHECK_INTERVAL + Duration::from_millis(PROBE_FAST.1 + 1);
        let known_since = self
            .service
            .since
            .max(self.nodes[claimant].host.running_since);
        if self.corroborated(claimant) && decided >= known_since + window {
            self.violate(format!(
                "(a) {} force-detached {} whose service has answered through the ENI since {:?} \
                 (claim decided at {decided:?})",
                name(claimant),
                name(holder),
                self.service.since
            ));
        }
    }

    /// Invariant (c), at a claim.
    pub fn check_claim(&mut self, i: usize, kind: ClaimKind) {
        if matches!(kind, ClaimKind::Failover | ClaimKind::Election)
            && !self.nodes[i].host.told_healthy
        {
            self.violate(format!(
                "(c) {} claimed ({}) while its own checks failed",
                name(i),
                kind.as_str()
            ));
        }
    }

    /// Invariant (d), after a batch of actions: a backup whose process applied host config
    /// removed it when it stepped down. Config a previous run left behind is counted apart.
    pub fn check_net_removed(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let role = n.core.as_ref().map(|c| c.role());
        if role != Some(Role::Backup) {
            return;
        }
        if n.host.net_config && !n.host.net_wanted && !n.host.leftover_seen {
            n.host.leftover_seen = true;
            self.service.leftovers += 1;
            self.log(format!(
                "{} is backup with a previous run's host config",
                name(i)
            ));
        }
        if self.nodes[i].host.net_wanted {
            self.violate(format!(
                "(d) {} is backup with its host network config still applied",
                name(i)
            ));
        }
    }

    /// Nothing but host deaths, service faults, agent kills and stops is going on.
    fn calm(&self) -> bool {
        self.partitions.is_empty()
            && self.loss == 0.0
            && self.cloud.error_rate == 0.0
            && self.now >= self.cloud.stale_until
            && (self.cloud.stuck_until.is_zero()
                || self.now >= self.cloud.stuck_until + Duration::from_millis(STUCK.1))
            && self
                .nodes
                .iter()
                .all(|n| !n.paused && !n.host.wrong_key && n.host.cloud_error_rate == 0.0)
    }

    /// A node that could serve: host and agent up, service up, checks passing, not in fault.
    fn eligible(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        let role = n.core.as_ref().map(|c| c.role());
        n.host.up
            && !n.paused
            && n.host.service_up
            && n.host.told_healthy
            && role.is_some_and(|r| r != Role::Fault)
    }

    /// Invariant (b) at the current time, with the state as it has been since the last event.
    pub fn check_outage(&mut self) {
        let (Some(bound), None, Some(calm), Some(eligible)) = (
            self.service.bound,
            self.service.served_by,
            self.service.calm_since,
            self.service.eligible_since,
        ) else {
            return;
        };
        let residual = if self.service.was_disturbed {
            residual(self)
        } else {
            Duration::ZERO
        };
        let start = self.service.since.max(calm + residual).max(eligible);
        let outage = self.now.saturating_sub(start);
        self.service.outage_max = self.service.outage_max.max(outage);
        if outage > bound && self.service.violation.is_none() {
            self.violate(format!(
                "(b) the address has been unserved since {:?} (calm since {calm:?}, a healthy \
                 node since {eligible:?}): {outage:?} past the start, bound {bound:?}",
                self.service.since
            ));
        }
    }

    /// After every event: who serves, whether it is calm, whether a healthy node exists.
    pub fn update_service(&mut self) {
        let now = self.now;
        let served = self.served();
        if served != self.service.served_by {
            self.service.served_by = served;
            self.service.since = now;
        }
        let calm = self.calm();
        let s = &mut self.service;
        s.calm_since = if calm {
            s.calm_since.or(Some(now))
        } else {
            None
        };
        s.was_disturbed |= !calm;
        let eligible = (0..self.nodes.len()).any(|i| self.eligible(i));
        let s = &mut self.service;
        s.eligible_since = if eligible {
            s.eligible_since.or(Some(now))
        } else {
            None
        };
    }
}
