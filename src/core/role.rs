//! The role state machine's states. Each variant carries exactly the data that only that role
//! needs; what every role needs lives on [`Node`](super::Node).

use super::advert::Role;
use super::events::{ClaimKind, Time};
use super::handover::{Accepted, Handover, Reject};
use crate::ids::NodeName;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State {
    /// Just started (or starting over after a fault): listening and asking the cloud.
    Starting {
        settle_until: Time,
        /// An offer this node cannot take, refused in heartbeats until it expires.
        rejecting: Option<Reject>,
    },
    Backup(Backup),
    /// A claim is with the cloud; its answer decides.
    Claiming {
        kind: ClaimKind,
    },
    Master(Master),
    /// Giving the ENI up: host config first, then the detach.
    Releasing {
        purpose: Release,
        /// False while the host config is being removed, true once the detach was requested.
        detaching: bool,
    },
    /// Cannot serve; starts over at `until`.
    Fault {
        until: Time,
        rejecting: Option<Reject>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Backup {
    /// The target side of a handover: this node accepted an offer and waits for `released`.
    pub accepted: Option<Accepted>,
    /// The old-master side of a handover after the release: waiting for the target to report
    /// master (or for the deadline, then [`Handover::then`] decides).
    pub watch: Option<Handover>,
    /// Preempt: since when a lower-priority master has been seen.
    pub preempt_since: Option<Time>,
    /// Preempt: the delay has passed; advertised so the master hands over.
    pub wants_master: bool,
    /// An offer refused because this node's own checks fail.
    pub rejecting: Option<Reject>,
    /// The holder is silent but its service answers through the ENI: shown, warned, no claim.
    pub silent_but_serving: Option<NodeName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Master {
    pub net: NetPhase,
    /// Consecutive failures to apply the host network config.
    pub net_attempts: u32,
    /// A handover this master offered and waits to have accepted.
    pub handover: Option<Handover>,
    /// Checks fail and no healthy peer can take over: serving badly beats not serving.
    pub degraded: bool,
    /// No new handover for failing checks before this (one per handover timeout).
    pub next_health_handover: Time,
    /// The on-master hook's reason, until the host network is applied and the hook started.
    pub pending_hook: Option<String>,
}

impl Master {
    pub fn new() -> Self {
        Master {
            net: NetPhase::Applying,
            net_attempts: 0,
            handover: None,
            degraded: false,
            next_health_handover: Time::ZERO,
            pending_hook: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NetPhase {
    Applying,
    Ready,
    /// Failed; retry at `retry_at`.
    Failed {
        retry_at: Time,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Release {
    /// An orderly handover the target accepted.
    Handover(Handover),
    /// Give it up so a healthy peer can take it (this node cannot serve it).
    Fault(String),
}

impl State {
    pub fn starting(settle_until: Time) -> Self {
        State::Starting {
            settle_until,
            rejecting: None,
        }
    }

    pub fn backup() -> Self {
        State::Backup(Backup::default())
    }

    pub fn role(&self) -> Role {
        match self {
            State::Starting { .. } => Role::Starting,
            State::Backup(_) => Role::Backup,
            State::Claiming { .. } => Role::Claiming,
            State::Master(_) => Role::Master,
            State::Releasing { .. } => Role::Releasing,
            State::Fault { .. } => Role::Fault,
        }
    }

    /// The handover this state is running, on either side of the release.
    pub fn handover(&self) -> Option<&Handover> {
        match self {
            State::Master(Master {
                handover: Some(h), ..
            })
            | State::Releasing {
                purpose: Release::Handover(h),
                ..
            }
            | State::Backup(Backup { watch: Some(h), .. }) => Some(h),
            _ => None,
        }
    }
}
