//! Prometheus metrics: the registry, every metric family, and one small typed record function per
//! thing the daemon counts. Off unless `[metrics] listen` is set: before [`init`] every record
//! function is a no-op (one atomic load), so the daemon calls them unconditionally.
//!
//! Counters and histograms are recorded where the daemon already logs (a transition, a cloud
//! call, a hook run, a heartbeat). Gauges that describe the current state (role, peers, hold-down,
//! checks) are refreshed on each scrape from the same [`RoleReport`] that `enipeer role` shows,
//! which the [HTTP endpoint](http) asks the loop for like any control client: the loop never
//! waits for a scraper, and keeps no second copy of its state.

pub mod http;

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::core::Role;
use crate::hooks::{HookOutcome, HookReport};
use crate::report::RoleReport;
use crate::timeline::TimelineReport;

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    from: String,
    to: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloudLabels {
    action: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    transition: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabel {
    check: String,
}

/// Every metric family, registered once in [`Metrics::new`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    role: Family<RoleLabel, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    failover_duration: HistogramFamily<KindLabel>,
    heartbeats_sent: Counter,
    heartbeats_received: Counter,
    heartbeats_rejected: Family<ReasonLabel, Counter>,
    peer_alive: Family<PeerLabel, Gauge>,
    peer_last_heard: Family<PeerLabel, FloatGauge>,
    cloud_requests: Family<CloudLabels, Counter>,
    cloud_duration: HistogramFamily<ActionLabel>,
    hook_runs: Family<HookLabels, Counter>,
    hold_down: FloatGauge,
    net_repairs: Counter,
    check_up: Family<CheckLabel, Gauge>,
    healthy: Gauge,
    maintenance: Gauge,
    peer_maintenance: Family<PeerLabel, Gauge>,
    /// 0 when the last scrape got no answer from the loop in time: the state gauges are stale.
    loop_responsive: Gauge,
}

/// Failovers take seconds (dead interval + API calls): 0.25 s to about 2 minutes.
fn move_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.25, 2.0, 10))
}

/// One EC2 call or a whole claim: 25 ms to about 50 s.
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.025, 2.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("enipeer");
        let m = Metrics {
            role: Family::default(),
            transitions: Family::default(),
            failover_duration: Family::new_with_constructor(move_histogram),
            heartbeats_sent: Counter::default(),
            heartbeats_received: Counter::default(),
            heartbeats_rejected: Family::default(),
            peer_alive: Family::default(),
            peer_last_heard: Family::default(),
            cloud_requests: Family::default(),
            cloud_duration: Family::new_with_constructor(call_histogram),
            hook_runs: Family::default(),
            hold_down: FloatGauge::default(),
            net_repairs: Counter::default(),
            check_up: Family::default(),
            healthy: Gauge::default(),
            maintenance: Gauge::default(),
            peer_maintenance: Family::default(),
            loop_responsive: Gauge::default(),
            registry: Registry::default(),
        };
        m.register_loop(&mut registry);
        m.register_work(&mut registry);
        Metrics { registry, ..m }
    }

    /// The loop's own metrics: role, transitions, moves, heartbeats, peers.
    fn register_loop(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "role",
            "1 for this node's current role, 0 for the others",
            m.role.clone(),
        );
        r.register("transitions", "Role transitions", m.transitions.clone());
        r.register(
            "failover_duration_seconds",
            "From the decision to move the ENI to the host being ready (network applied, master \
             hooks done), by kind (failover, election, yield, reclaim, adopt)",
            m.failover_duration.clone(),
        );
        r.register(
            "heartbeats_sent",
            "Heartbeats sent (one per interval, to every peer address)",
            m.heartbeats_sent.clone(),
        );
        r.register(
            "heartbeats_received",
            "Heartbeats received and accepted",
            m.heartbeats_received.clone(),
        );
        r.register(
            "heartbeats_rejected",
            "Datagrams on the heartbeat port that were rejected, by reason",
            m.heartbeats_rejected.clone(),
        );
        r.register(
            "peer_alive",
            "1 while the peer's heartbeats arrive within the dead interval",
            m.peer_alive.clone(),
        );
        r.register(
            "peer_last_heard_seconds",
            "Seconds since the peer's last accepted heartbeat",
            m.peer_last_heard.clone(),
        );
    }

    /// The work the loop hands out and the state it reports: EC2, hooks, host network, checks.
    fn register_work(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "cloud_requests",
            "EC2 requests by action (describe, claim, release) and outcome (ok, held-by, or the \
             error kind: throttled, timeout, unauthorized, ...)",
            m.cloud_requests.clone(),
        );
        r.register(
            "cloud_request_duration_seconds",
            "Duration of EC2 requests by action",
            m.cloud_duration.clone(),
        );
        r.register(
            "hook_runs",
            "Hook commands run, by transition and outcome",
            m.hook_runs.clone(),
        );
        r.register(
            "hold_down_seconds_remaining",
            "Seconds left before this node may claim again after losing the ENI",
            m.hold_down.clone(),
        );
        r.register(
            "net_repairs",
            "Host network drift repairs that changed something",
            m.net_repairs.clone(),
        );
        r.register(
            "check_up",
            "1 when the service check passes, 0 when it fails (absent while unknown)",
            m.check_up.clone(),
        );
        r.register(
            "healthy",
            "1 when this node's own checks pass (always 1 without checks)",
            m.healthy.clone(),
        );
        r.register(
            "maintenance",
            "1 while this node is in maintenance (never claims, hands the ENI over)",
            m.maintenance.clone(),
        );
        r.register(
            "peer_maintenance",
            "1 while the peer says it is in maintenance (absent until heard)",
            m.peer_maintenance.clone(),
        );
        r.register(
            "loop_responsive",
            "0 when the event loop did not answer the last scrape in time",
            m.loop_responsive.clone(),
        );
    }

    /// The text exposition (OpenMetrics 1.0, which Prometheus reads natively).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Refreshes the state gauges from the loop's snapshot.
    pub fn apply(&self, r: &RoleReport) {
        for role in (0..=u8::MAX).map_while(Role::from_code) {
            let on = role.as_str() == r.role;
            self.role
                .get_or_create(&RoleLabel {
                    role: role.as_str(),
                })
                .set(i64::from(on));
        }
        for p in &r.peers {
            let l = PeerLabel {
                peer: p.name.clone(),
            };
            self.peer_alive.get_or_create(&l).set(i64::from(p.alive));
            match p.last_heard_ms_ago {
                Some(ms) => {
                    self.peer_last_heard
                        .get_or_create(&l)
                        .set(ms as f64 / 1000.0);
                }
                None => {
                    self.peer_last_heard.remove(&l);
                }
            }
        }
        self.hold_down
            .set(r.hold_down_ms_left.unwrap_or(0) as f64 / 1000.0);
        self.healthy.set(i64::from(r.health.healthy));
        self.maintenance.set(i64::from(r.maintenance.is_some()));
        for p in &r.peers {
            let l = PeerLabel {
                peer: p.name.clone(),
            };
            // Only what a live peer says: a dead one's last word goes stale.
            match p.maintenance.filter(|_| p.alive) {
                Some(on) => {
                    self.peer_maintenance.get_or_create(&l).set(i64::from(on));
                }
                None => {
                    self.peer_maintenance.remove(&l);
                }
            }
        }
        for c in &r.health.checks {
            let l = CheckLabel {
                check: c.name.clone(),
            };
            match c.state.as_str() {
                "up" => {
                    self.check_up.get_or_create(&l).set(1);
                }
                "down" => {
                    self.check_up.get_or_create(&l).set(0);
                }
                _ => {
                    self.check_up.remove(&l);
                }
            }
        }
        self.loop_responsive.set(1);
    }

    fn stale(&self) {
        self.loop_responsive.set(0);
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Turns metrics on for this process: at start when `[metrics] listen` is set, or at the reload
/// that sets it (counters then start at 0 there, and keep counting if it is unset again).
pub fn init() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

pub fn transition(from: &dyn std::fmt::Display, to: &dyn std::fmt::Display) {
    if let Some(m) = get() {
        let l = TransitionLabels {
            from: from.to_string(),
            to: to.to_string(),
        };
        m.transitions.get_or_create(&l).inc();
    }
}

/// A move of the ENI to this node finished serving: its timeline's total is the duration.
pub fn move_finished(timeline: Option<&TimelineReport>) {
    if let (Some(m), Some(t)) = (get(), timeline) {
        let total_ms = t.steps.last().map_or(0.0, |s| s.at_ms);
        let l = KindLabel {
            kind: t.kind.clone(),
        };
        m.failover_duration
            .get_or_create(&l)
            .observe(total_ms / 1000.0);
    }
}

pub fn heartbeat_sent() {
    if let Some(m) = get() {
        m.heartbeats_sent.inc();
    }
}

pub fn heartbeat_received() {
    if let Some(m) = get() {
        m.heartbeats_received.inc();
    }
}

pub fn heartbeat_rejected(reason: &'static str) {
    if let Some(m) = get() {
        m.heartbeats_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// One EC2 request of the cloud worker: `outcome` is "ok", "held-by" or the error kind.
pub fn cloud_request(action: &'static str, outcome: &'static str, took: Duration) {
    if let Some(m) = get() {
        m.cloud_requests
            .get_or_create(&CloudLabels { action, outcome })
            .inc();
        m.cloud_duration
            .get_or_create(&ActionLabel { action })
            .observe(took.as_secs_f64());
    }
}

pub fn hooks_ran(report: &HookReport) {
    if let Some(m) = get() {
        let transition = report.transition.as_str();
        for r in &report.results {
            let outcome = hook_outcome(&r.outcome);
            m.hook_runs
                .get_or_create(&HookLabels {
                    transition,
                    outcome,
                })
                .inc();
        }
    }
}

fn hook_outcome(o: &HookOutcome) -> &'static str {
    match o {
        HookOutcome::Exited { code: 0 } => "ok",
        HookOutcome::Exited { .. } => "failed",
        HookOutcome::Signaled { .. } => "signaled",
        HookOutcome::TimedOut => "timed-out",
        HookOutcome::FailedToStart { .. } => "failed-to-start",
        HookOutcome::WaitFailed { .. } => "wait-failed",
    }
}

pub fn net_repaired() {
    if let Some(m) = get() {
        m.net_repairs.inc();
    }
}

#[cfg(test)]
mod tests;
