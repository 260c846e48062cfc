//! The node's clocks that outlive a role: the hold-down after a loss, the backoff after a failed
//! claim, and the pacing of cloud queries (with the rule for discarding a stale answer).

use std::time::Duration;

use super::config::CoreConfig;
use super::events::Time;

/// After losing the ENI (or a race against a winner it cannot hear), a node holds off from forced
/// takeovers for a while, doubling on repeats: a heartbeat-only partition then cannot make the ENI
/// ping-pong every dead interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HoldDown {
    until: Time,
    level: u32,
}

impl HoldDown {
    pub fn new(now: Time) -> Self {
        HoldDown {
            until: now,
            level: 0,
        }
    }

    pub fn start(&mut self, cfg: &CoreConfig, now: Time) {
        // Forget old losses: a loss long after the last hold-down is not a repeat.
        if now > self.until + cfg.hold_down_max * 2 {
            self.level = 0;
        }
        let factor = 1u32 << self.level.min(16);
        let d = cfg.hold_down.saturating_mul(factor).min(cfg.hold_down_max);
        self.level = self.level.saturating_add(1);
        self.until = now + d;
    }

    /// The hold-down that runs stays; the next loss starts again from the base duration.
    pub fn forget_escalation(&mut self) {
        self.level = 0;
    }

    pub fn active(&self, now: Time) -> bool {
        now < self.until
    }

    pub fn until(&self) -> Time {
        self.until
    }

    pub fn left(&self, now: Time) -> Option<Duration> {
        self.active(now).then(|| self.until - now)
    }
}

/// Backoff between failed claims: retry delay doubling per failure, capped by the hold-down max.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClaimBackoff {
    retry_at: Time,
    failures: u32,
}

impl ClaimBackoff {
    pub fn new(now: Time) -> Self {
        ClaimBackoff {
            retry_at: now,
            failures: 0,
        }
    }

    /// Records a failure; returns how long to wait.
    pub fn failed(&mut self, cfg: &CoreConfig, now: Time) -> Duration {
        self.failures += 1;
        let backoff = cfg
            .retry_delay
            .saturating_mul(1 << self.failures.min(5))
            .min(cfg.hold_down_max);
        self.retry_at = now + backoff;
        backoff
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn ready(&self, now: Time) -> bool {
        now >= self.retry_at
    }

    pub fn retry_at(&self) -> Time {
        self.retry_at
    }
}

/// Cloud queries: at most one in flight, paced by `next`, and an answer that may predate a change
/// this node made (a claim, a release, a lost link) is discarded and asked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CloudPoll {
    /// When the last good answer arrived.
    pub checked: Option<Time>,
    pending: bool,
    stale: bool,
    /// When the next query may be sent (retry backoff in Starting, verify as master or backup).
    pub next: Time,
}

impl CloudPoll {
    pub fn new(now: Time) -> Self {
        CloudPoll {
            checked: None,
            pending: false,
            stale: false,
            next: now,
        }
    }

    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Whether to send a query now (at most one in flight).
    pub fn ask(&mut self) -> bool {
        !std::mem::replace(&mut self.pending, true)
    }

    /// The attachment may have changed since the pending query was sent.
    pub fn invalidate(&mut self) {
        if self.pending {
            self.stale = true;
        }
    }

    /// An answer arrived; false when it must be discarded (and asked again).
    pub fn answered(&mut self) -> bool {
        self.pending = false;
        !std::mem::take(&mut self.stale)
    }

    /// The periodic verify is due (and nothing is in flight): schedules the next one.
    pub fn verify_due(&mut self, every: Duration, now: Time) -> bool {
        if now >= self.next && !self.pending {
            self.next = now + every;
            return true;
        }
        false
    }
}
