//! The rise/fall debounce: consecutive probe outcomes in, a health state change out. Pure (no
//! clock, no I/O), so the core can keep one per peer-reported or through-ENI check as well.

/// What a run of probes says about a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Not yet `rise` passes or `fall` failures in a row since the check started.
    Unknown,
    Up,
    Down,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A debounced transition; `from` is never equal to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: HealthState,
    pub to: HealthState,
}

/// Counts consecutive passes and failures: `rise` passes in a row make the state `Up`, `fall`
/// failures in a row make it `Down`; one outcome of the other sort restarts the count, so a
/// flapping service never changes state until it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    rise: u32,
    fall: u32,
    state: HealthState,
    passes: u32,
    fails: u32,
}

impl Health {
    /// `rise` and `fall` of 0 are taken as 1 (config validation never gives 0).
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            state: HealthState::Unknown,
            passes: 0,
            fails: 0,
        }
    }

    /// Records one probe outcome; returns the change it caused, if any.
    pub fn record(&mut self, pass: bool) -> Option<Change> {
        let from = self.state;
        let to = if pass {
            self.passes = self.passes.saturating_add(1);
            self.fails = 0;
            (self.passes >= self.rise).then_some(HealthState::Up)
        } else {
            self.fails = self.fails.saturating_add(1);
            self.passes = 0;
            (self.fails >= self.fall).then_some(HealthState::Down)
        };
        match to {
            Some(to) if to != from => {
                self.state = to;
                Some(Change { from, to })
            }
            _ => None,
        }
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Passes in a row so far (0 after a failure).
    pub fn passes(&self) -> u32 {
        self.passes
    }

    /// Failures in a row so far (0 after a pass).
    pub fn fails(&self) -> u32 {
        self.fails
    }
}

#[cfg(test)]
mod tests {
    use super::HealthState::{Down, Unknown, Up};
    use super::*;

    /// Each case: rise, fall, outcomes ('+' pass, '-' fail), and the state after each outcome
    /// with the outcomes that changed it marked by an upper-case letter (u/d/? = unchanged).
    #[test]
    fn record_follows_rise_and_fall() {
        let cases: &[(u32, u32, &str, &str)] = &[
            (2, 2, "++", "?U"),
            (2, 2, "--", "?D"),
            (1, 1, "+-+-", "UDUD"),
            (2, 2, "+-+-+-", "??????"),
            (2, 3, "++--+---", "?UuuuuuD"),
            (2, 3, "++---", "?UuuD"),
            (3, 2, "--+++", "?DddU"),
            (3, 2, "--++++", "?DddUu"),
            (3, 2, "--++-+++", "?DdddddU"),
            (1, 2, "-+--", "?UuD"),
            (2, 1, "+--++", "?DddU"),
            // 0 is treated as 1, never as "always".
            (0, 0, "+-", "UD"),
        ];
        for (rise, fall, outcomes, expected) in cases {
            let mut h = Health::new(*rise, *fall);
            let mut got = String::new();
            for o in outcomes.chars() {
                let change = h.record(o == '+');
                let letter = match (h.state(), change.is_some()) {
                    (Up, true) => 'U',
                    (Down, true) => 'D',
                    (Up, false) => 'u',
                    (Down, false) => 'd',
                    (Unknown, false) => '?',
                    (Unknown, true) => panic!("a change never leads to unknown"),
                };
                got.push(letter);
            }
            assert_eq!(
                &got, expected,
                "rise {rise} fall {fall} outcomes {outcomes}"
            );
        }
    }

    #[test]
    fn change_names_both_ends_and_streaks_reset() {
        let mut h = Health::new(2, 2);
        assert_eq!(h.record(true), None);
        assert_eq!(
            h.record(true),
            Some(Change {
                from: Unknown,
                to: Up
            })
        );
        assert_eq!(h.passes(), 2);
        assert_eq!(h.record(false), None);
        assert_eq!((h.passes(), h.fails()), (0, 1));
        assert_eq!(h.record(false), Some(Change { from: Up, to: Down }));
        assert_eq!(h.state(), Down);
    }
}
