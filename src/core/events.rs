//! The core's vocabulary: the events the daemon feeds in, the actions it gets back, and the
//! answers of the cloud and the host as the core sees them.

use std::time::Duration;

use super::advert::{Advert, Role};
use super::health::Alert;
use crate::ids::{InstanceId, NodeName};

/// Monotonic time since an arbitrary origin, supplied by the caller.
pub type Time = Duration;

/// What the cloud said about the attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudView {
    Nobody,
    Holder(InstanceId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimResult {
    Claimed,
    /// Someone else holds it: lost race, or a holder we did not expect.
    HeldBy(InstanceId),
}

/// A failed cloud call as the core sees it: the message for the log and whether trying again
/// later can help. Adapters decide `retryable` from their typed error kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// False when retrying cannot help (not found, not authorized): the node goes to fault.
    pub retryable: bool,
    pub message: String,
}

impl Failure {
    pub fn retryable(message: impl Into<String>) -> Self {
        Failure {
            retryable: true,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Failure {
            retryable: false,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed; the daemon calls this at [`Node::next_wakeup`](super::Node::next_wakeup)
    /// at the latest.
    Tick,
    /// An authenticated, non-replayed heartbeat.
    Heartbeat {
        peer: NodeName,
        advert: Advert,
        incarnation: u64,
    },
    CloudState(Result<CloudView, Failure>),
    ClaimDone(Result<ClaimResult, Failure>),
    ReleaseDone(Result<(), Failure>),
    NetApplied(Result<(), String>),
    NetRemoved(Result<(), String>),
    /// The ENI's interface vanished from this host.
    LinkLost,
    YieldRequested {
        token: u64,
        timeout: Duration,
    },
    /// The daemon is stopping; `handover` when the host is going down (hand over to a peer).
    Stop {
        handover: bool,
    },
    /// This node's own service checks changed state (debounced with rise/fall by the runner).
    Health {
        healthy: bool,
        detail: String,
    },
    /// One corroborating probe through the ENI's address, sent at `sent`, answered or not.
    EniProbe {
        sent: Time,
        ok: bool,
    },
    /// An operator put this node into maintenance or took it out. `token` answers the request;
    /// `force` enters maintenance on a master even with no healthy peer to hand over to.
    Maintenance {
        on: bool,
        reason: String,
        force: bool,
        token: Option<u64>,
    },
    /// The loop itself did not run for `gap` (process stopped or starved, VM paused): silence
    /// seen across it is this node's, not the peer's.
    Stalled {
        gap: Duration,
    },
}

/// Why a claim happens; labels the failover timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// The holder is silent.
    Failover,
    /// Nobody holds it; this node is the best candidate.
    Election,
    /// The master offered it.
    Yield,
    /// Taking it back after a failed handover, or after it was detached from under us.
    Reclaim,
}

impl ClaimKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimKind::Failover => "failover",
            ClaimKind::Election => "election",
            ClaimKind::Yield => "yield",
            ClaimKind::Reclaim => "reclaim",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Master,
    Backup,
    Fault,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Log this at info: every change of role, with its reason.
    Transitioned {
        from: Role,
        to: Role,
        reason: String,
    },
    /// Send [`Node::advert`](super::Node::advert) to every peer now.
    SendHeartbeat,
    QueryCloud,
    Claim {
        expected_holder: Option<InstanceId>,
        force: bool,
        kind: ClaimKind,
        reason: String,
    },
    Release,
    ApplyNet,
    RemoveNet,
    RunHooks {
        kind: HookKind,
        reason: String,
    },
    /// Answer a control request (yield).
    Reply {
        token: u64,
        result: Result<String, String>,
    },
    /// The stop sequence is complete: exit the process.
    Exit,
    /// Tell the operator (paced by the core; the daemon logs it with what to do).
    Alert(Alert),
}

/// The last role change, for `enipeer role`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Role,
    pub to: Role,
    pub reason: String,
    pub at: Time,
}
