//! The failover timeline: what happened during one claim or release and when, so the operator can
//! see where the time went (`enipeer role`, logs) instead of guessing.

use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

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

/// A timeline under construction. Steps may arrive out of order (adapters report them in batches);
/// they are sorted by time when reported.
#[derive(Debug, Clone)]
pub struct Timeline {
    kind: String,
    reason: String,
    start: Instant,
    start_wall: SystemTime,
    steps: Vec<Step>,
    outcome: Option<String>,
}

impl Timeline {
    pub fn start(kind: impl Into<String>, reason: impl Into<String>) -> Self {
        let start = Instant::now();
        Timeline {
            kind: kind.into(),
            reason: reason.into(),
            start,
            start_wall: SystemTime::now(),
            steps: vec![Step {
                label: "decided".into(),
                at: start,
            }],
            outcome: None,
        }
    }

    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    pub fn mark(&mut self, label: impl Into<String>) {
        self.push(Step::now(label));
    }

    pub fn extend(&mut self, steps: impl IntoIterator<Item = Step>) {
        self.steps.extend(steps);
    }

    pub fn finish(&mut self, outcome: impl Into<String>) {
        self.outcome = Some(outcome.into());
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
            kind: self.kind.clone(),
            reason: self.reason.clone(),
            started_unix_ms: unix_ms(self.start_wall),
            steps,
            finished: self.outcome.is_some(),
            outcome: self.outcome.clone(),
        }
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
        let mut t = Timeline::start("failover", "peer silent");
        let base = t.start;
        t.push(Step {
            label: "attached".into(),
            at: base + Duration::from_millis(30),
        });
        t.push(Step {
            label: "detached".into(),
            at: base + Duration::from_millis(10),
        });
        t.finish("master");
        let r = t.report();
        let labels: Vec<_> = r.steps.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["decided", "detached", "attached"]);
        assert_eq!(r.steps[2].at_ms, 30.0);
        assert_eq!(r.steps[2].took_ms, 20.0);
        assert!(r.finished);
        assert!(r.render().contains("attached"));
    }
}
