//! The failover timeline: what happened during one claim or release and when, so the operator can
//! see where the time went (`enipeer role`, logs) instead of guessing.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::info;

/// One step as recorded by whoever performed it (core decision, cloud adapter, net adapter, hooks).
#[derive(Debug, Clone)]
pub struct Step {
    pub label: String,
    pub at: Instant,
}

impl Step {
    pub fn now(label: impl Into<String>) -> Self {
        Step {
            label: label.into(),
            at: Instant::now(),
        }
    }

    /// One of the daemon's own milestones, as a step.
    pub fn mark(mark: Mark, at: Instant) -> Self {
        Step {
            label: mark.label().to_string(),
            at,
        }
    }
}

/// A finished or running timeline as shown to the operator: offsets from its start in ms.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimelineReport {
    /// What kind of move this was: "failover", "adopt", "yield", "reclaim", ...
    pub kind: String,
    pub reason: String,
    /// Wall-clock start, Unix ms, so it can be correlated with other logs.
    pub started_unix_ms: u64,
    pub steps: Vec<StepReport>,
    pub finished: bool,
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepReport {
    pub label: String,
    /// Since the start of the timeline.
    pub at_ms: f64,
    /// Since the previous step.
    pub took_ms: f64,
}

/// What kind of move a timeline records; the operator sees it as the timeline's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The holder went silent.
    Failover,
    /// Nobody held the ENI; this node was the best candidate.
    Election,
    /// The master offered it.
    Yield,
    /// Taken back after a failed handover, or after it was detached from under this node.
    Reclaim,
    /// The ENI was already attached here (a restart): only the host config is applied.
    Adopt,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failover => "failover",
            Kind::Election => "election",
            Kind::Yield => "yield",
            Kind::Reclaim => "reclaim",
            Kind::Adopt => "adopt",
        }
    }
}

/// The steps the daemon records itself. The cloud and net adapters report their own, finer steps
/// as labelled [`Step`]s; these are the milestones between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Decided,
    ClaimStarted,
    /// The hot-plugged link with the ENI's MAC appeared after the attach was requested: the claim
    /// is acted on from here, before (or after) the API's `attached` step.
    LinkSeen,
    /// The API confirmed, in the background, a claim acted on at [`Mark::LinkSeen`].
    Confirmed,
    ReleaseStarted,
    Released,
    NetApplied,
    /// The on-master hook was started (only ever after `NetApplied`).
    HooksStarted,
    HooksDone,
}

impl Mark {
    /// The label shown to the operator (and matched by the lab and daemon tests).
    pub fn label(self) -> &'static str {
        match self {
            Mark::Decided => "decided",
            Mark::ClaimStarted => "claim started",
            Mark::LinkSeen => "link seen",
            Mark::Confirmed => "claim confirmed",
            Mark::ReleaseStarted => "release started",
            Mark::Released => "released",
            Mark::NetApplied => "host network applied",
            Mark::HooksStarted => "hooks started",
            Mark::HooksDone => "hooks done",
        }
    }
}

/// How a timeline ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Serving: the host config is applied and the master hooks have run.
    Master,
    /// The claim found someone else holding the ENI.
    Lost {
        holder: String,
    },
    ClaimFailed(String),
    /// Serving, on a claim acted on at the hot-plug that the API could not be asked to confirm
    /// (the master's verify asks again).
    Unconfirmed(String),
    Released,
    ReleaseFailed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Master => f.write_str("master"),
            Outcome::Lost { holder } => write!(f, "lost: {holder} holds the ENI"),
            Outcome::ClaimFailed(m) => write!(f, "claim failed: {m}"),
            Outcome::Unconfirmed(m) => write!(f, "master, not confirmed by the API: {m}"),
            Outcome::Released => f.write_str("released"),
            Outcome::ReleaseFailed(m) => write!(f, "release failed: {m}"),
        }
    }
}

/// A timeline under construction. Steps may arrive out of order (adapters report them in batches);
/// they are sorted by time when reported.
#[derive(Debug, Clone)]
pub struct Timeline {
    kind: Kind,
    reason: String,
    start: Instant,
    start_wall: SystemTime,
    steps: Vec<Step>,
    outcome: Option<Outcome>,
}

impl Timeline {
    pub fn start(kind: Kind, reason: impl Into<String>) -> Self {
        let start = Instant::now();
        Timeline {
            kind,
            reason: reason.into(),
            start,
            start_wall: SystemTime::now(),
            steps: vec![Step::mark(Mark::Decided, start)],
            outcome: None,
        }
    }

    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    pub fn mark(&mut self, mark: Mark) {
        self.push(Step::mark(mark, Instant::now()));
    }

    pub fn extend(&mut self, steps: impl IntoIterator<Item = Step>) {
        self.steps.extend(steps);
    }

    pub fn finish(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }

    pub fn elapsed(&self) -> Duration {
        self.steps
            .iter()
            .map(|s| s.at.saturating_duration_since(self.start))
            .max()
            .unwrap_or_default()
    }

    pub fn report(&self) -> TimelineReport {
        let mut steps = self.steps.clone();
        steps.sort_by_key(|s| s.at);
        let mut prev = self.start;
        let steps = steps
            .into_iter()
            .map(|s| {
                let r = StepReport {
                    label: s.label,
                    at_ms: ms(s.at.saturating_duration_since(self.start)),
                    took_ms: ms(s.at.saturating_duration_since(prev)),
                };
                prev = s.at;
                r
            })
            .collect();
        TimelineReport {
            kind: self.kind.as_str().to_string(),
            reason: self.reason.clone(),
            started_unix_ms: unix_ms(self.start_wall),
            steps,
            finished: self.outcome.is_some(),
            outcome: self.outcome.as_ref().map(Outcome::to_string),
        }
    }
}

/// The daemon's timeline bookkeeping: at most one timeline running, and the last finished one,
/// kept for `enipeer role`. A finished timeline is logged and moved out at once, so the running
/// one is never finished.
///
/// A claim acted on at the hot-plug ends only once the API has confirmed it (or not), so the
/// timeline shows both the link and the API's `attached`, in the order they came.
#[derive(Debug, Default)]
pub struct Recorder {
    current: Option<Timeline>,
    last: Option<TimelineReport>,
    /// The running claim was acted on before the API confirmed it.
    confirming: bool,
    /// The outcome reached while the confirmation was outstanding.
    held: Option<Outcome>,
}

impl Recorder {
    /// A claim is a new decision: it replaces whatever was running.
    pub fn claim_started(&mut self, kind: Kind, reason: impl Into<String>) {
        let mut t = Timeline::start(kind, reason);
        t.mark(Mark::ClaimStarted);
        self.current = Some(t);
        self.confirming = false;
        self.held = None;
    }

    /// The running claim is acted on before the API confirmed it: it ends at
    /// [`Recorder::confirmed`], whenever the rest is done.
    pub fn expect_confirmation(&mut self) {
        self.confirming = self.current.is_some();
    }

    /// The API's answer to a claim acted on early, with the claim's last steps: `failed` is how
    /// the timeline ends when the API disagreed. Ignored when that claim's timeline is gone.
    pub fn confirmed(&mut self, steps: impl IntoIterator<Item = Step>, failed: Option<Outcome>) {
        if !std::mem::take(&mut self.confirming) {
            return;
        }
        self.extend(steps);
        match failed {
            Some(outcome) => self.finish(outcome),
            None => {
                self.mark(Mark::Confirmed);
                if let Some(outcome) = self.held.take() {
                    self.finish(outcome);
                }
            }
        }
    }

    /// Applying the host config without a claim of ours before it (the ENI was already here):
    /// starts an adopt timeline unless a claim's timeline is running.
    pub fn adopt_unless_running(&mut self, reason: impl Into<String>) {
        if self.current.is_none() {
            self.current = Some(Timeline::start(Kind::Adopt, reason));
        }
    }

    pub fn is_running(&self) -> bool {
        self.current.is_some()
    }

    /// Marks the running timeline, if any, now.
    pub fn mark(&mut self, mark: Mark) {
        self.mark_at(mark, Instant::now());
    }

    /// Marks the running timeline, if any, at a time measured elsewhere (e.g. by the hook runner).
    pub fn mark_at(&mut self, mark: Mark, at: Instant) {
        if let Some(t) = self.current.as_mut() {
            t.push(Step::mark(mark, at));
        }
    }

    /// Adds an adapter's steps to the running timeline, if any.
    pub fn extend(&mut self, steps: impl IntoIterator<Item = Step>) {
        if let Some(t) = self.current.as_mut() {
            t.extend(steps);
        }
    }

    /// Ends the running timeline, if any: logs it and keeps its report as the last one.
    pub fn finish(&mut self, outcome: Outcome) {
        if self.confirming && outcome == Outcome::Master {
            self.held = Some(outcome);
            return;
        }
        self.confirming = false;
        self.held = None;
        let Some(mut t) = self.current.take() else {
            return;
        };
        t.finish(outcome);
        let r = t.report();
        info!(
            kind = %r.kind,
            outcome = r.outcome.as_deref().unwrap_or(""),
            total_ms = r.steps.last().map_or(0.0, |s| s.at_ms),
            "timeline:\n{}",
            r.render()
        );
        self.last = Some(r);
    }

    /// The running timeline, or else the last finished one.
    pub fn report(&self) -> Option<TimelineReport> {
        self.current
            .as_ref()
            .map(Timeline::report)
            .or_else(|| self.last.clone())
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl TimelineReport {
    /// A few lines for humans, one per step, with the duration of each phase.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} ({}){}\n",
            self.kind,
            self.reason,
            match &self.outcome {
                Some(o) => format!(": {o}"),
                None => ": in progress".into(),
            }
        );
        for s in &self.steps {
            out.push_str(&format!(
                "  {:>9.1} ms  (+{:>7.1} ms)  {}\n",
                s.at_ms, s.took_ms, s.label
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_orders_steps_and_computes_phase_durations() {
        let mut t = Timeline::start(Kind::Failover, "peer silent");
        let base = t.start;
        t.push(Step {
            label: "attached".into(),
            at: base + Duration::from_millis(30),
        });
        t.push(Step {
            label: "detached".into(),
            at: base + Duration::from_millis(10),
        });
        t.finish(Outcome::Master);
        let r = t.report();
        let labels: Vec<_> = r.steps.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["decided", "detached", "attached"]);
        assert_eq!(r.steps[2].at_ms, 30.0);
        assert_eq!(r.steps[2].took_ms, 20.0);
        assert!(r.finished);
        assert!(r.render().contains("attached"));
    }

    #[test]
    fn recorder_keeps_one_running_timeline_and_the_last_finished() {
        let mut r = Recorder::default();
        r.mark(Mark::ReleaseStarted);
        assert!(
            r.report().is_none(),
            "a mark without a timeline records nothing"
        );

        r.claim_started(Kind::Failover, "peer silent");
        r.adopt_unless_running("ENI already attached here");
        r.mark(Mark::NetApplied);
        let running = r.report().expect("a running timeline");
        assert_eq!(
            running.kind, "failover",
            "adopt does not replace a claim's timeline"
        );
        assert!(!running.finished);

        r.finish(Outcome::Master);
        assert!(!r.is_running());
        let last = r.report().expect("the last timeline");
        let labels: Vec<_> = last.steps.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["decided", "claim started", "host network applied"]);
        assert_eq!(last.outcome.as_deref(), Some("master"));

        r.adopt_unless_running("ENI already attached here");
        assert_eq!(r.report().map(|t| t.kind), Some("adopt".to_string()));
        r.finish(Outcome::Lost {
            holder: "i-0000000b".into(),
        });
        assert_eq!(
            r.report().and_then(|t| t.outcome),
            Some("lost: i-0000000b holds the ENI".to_string())
        );
    }

    #[test]
    fn a_claim_acted_on_early_ends_when_the_api_has_answered() {
        let labels = |r: &Recorder| -> Vec<String> {
            let t = r.report().expect("a timeline");
            t.steps.into_iter().map(|s| s.label).collect()
        };
        // (API answer, the timeline's outcome)
        let table = [
            (None, "master"),
            (
                Some(Outcome::Lost {
                    holder: "i-0000000b".into(),
                }),
                "lost: i-0000000b holds the ENI",
            ),
        ];
        for (answer, want) in table {
            let mut r = Recorder::default();
            r.claim_started(Kind::Failover, "peer silent");
            r.extend([Step::now("link seen")]);
            r.expect_confirmation();
            r.mark(Mark::NetApplied);
            r.mark(Mark::HooksDone);
            r.finish(Outcome::Master);
            assert!(r.is_running(), "held until the API answers");
            r.confirmed([Step::now("attached")], answer);
            assert!(!r.is_running());
            let last = r.report().expect("the last timeline");
            assert_eq!(last.outcome.as_deref(), Some(want));
            let l = labels(&r);
            let (link, attached) = (
                l.iter().position(|s| s == "link seen"),
                l.iter().position(|s| s == "attached"),
            );
            assert!(link < attached, "the link came first: {l:?}");
        }
        // A confirmation for a timeline a newer claim replaced changes nothing.
        let mut r = Recorder::default();
        r.claim_started(Kind::Failover, "peer silent");
        r.expect_confirmation();
        r.claim_started(Kind::Reclaim, "detached from this master");
        r.confirmed([Step::now("attached")], None);
        assert!(r.is_running());
        assert!(!labels(&r).contains(&"attached".to_string()));
    }
}
