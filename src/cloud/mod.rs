//! The cloud side: who holds the ENI, and claiming or releasing it. The EC2 attachment is the
//! single source of truth for ownership; everything here reports what the cloud says, never what
//! this node remembers.
//!
//! [`Cloud`] is the seam the daemon uses. Underneath, the claim and release procedures are written
//! once, in [`claim`], against the primitive calls ([`claim::Primitives`]) that the EC2 adapter
//! implements for real, [`fake`] for tests, and the simulation for its model cloud.

pub mod claim;
pub mod ec2;
mod error;
pub mod fake;

pub use error::{CloudError, CloudErrorKind};

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::ids::{EniId, InstanceId};
use crate::timeline::Step;

/// Who this instance is, from instance metadata or config overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: InstanceId,
    pub region: Option<String>,
    pub availability_zone: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachState {
    Attaching,
    Attached,
    Detaching,
    Detached,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub instance_id: InstanceId,
    pub attachment_id: String,
    pub device_index: u32,
    pub state: AttachState,
    pub delete_on_termination: bool,
}

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// An IPv6 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Net {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

/// The ENI's IPv6 addresses and its subnet's IPv6 CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniIpv6 {
    /// At least one.
    pub addresses: Vec<Ipv6Addr>,
    /// The subnet's IPv6 CIDR (a /64 on AWS by default), when known.
    pub subnet_cidr: Option<Ipv6Net>,
}

/// Everything enipeer needs to know about the ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniInfo {
    pub eni_id: EniId,
    /// "available", "in-use", "attaching", "detaching", as EC2 says.
    pub status: String,
    pub attachment: Option<Attachment>,
    pub mac: String,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    pub subnet_cidr: Option<Ipv4Net>,
    /// The ENI's IPv6 side; `None` when it has no IPv6 address (most ENIs: boxed, since the
    /// description travels by value in every cloud result).
    pub ipv6: Option<Box<EniIpv6>>,
    pub availability_zone: Option<String>,
}

impl EniInfo {
    /// The instance the ENI is attached (or attaching) to; `None` when detached or detaching.
    pub fn holder(&self) -> Option<&InstanceId> {
        self.attachment
            .as_ref()
            .filter(|a| matches!(a.state, AttachState::Attached | AttachState::Attaching))
            .map(|a| &a.instance_id)
    }
}

/// What a claim should do about a current holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The holder the caller expects and is entitled to detach. If the ENI turns out to be held
    /// by anyone else, the claim stops and reports [`ClaimOutcome::HeldBy`]: a compare-and-swap on
    /// the attachment, so a node never detaches a holder it did not decide to replace.
    pub expected_holder: Option<InstanceId>,
    /// The expected holder is believed dead: detach with `Force=true` at once.
    pub force: bool,
    /// The device indexes to attach at, tried in order while the cloud refuses one as invalid
    /// (after a forced detach AWS may refuse the old index on that instance); never empty.
    pub device_indexes: Vec<u32>,
}

#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// Attached here now (or already was).
    Claimed {
        info: EniInfo,
        already_mine: bool,
        steps: Vec<Step>,
    },
    /// Someone else holds it: a lost race or a holder the caller did not expect.
    HeldBy {
        holder: InstanceId,
        steps: Vec<Step>,
    },
}

#[derive(Debug, Clone)]
pub struct ReleaseOutcome {
    /// False when it was not attached here in the first place.
    pub detached: bool,
    pub steps: Vec<Step>,
}

/// The operations the daemon needs from the cloud. Implementations bound every call by their own
/// deadline; a future that never finishes would stall a failover.
pub trait Cloud: Send + Sync {
    fn identity(&self) -> BoxFuture<'_, Result<Identity, CloudError>>;
    fn describe(&self) -> BoxFuture<'_, Result<EniInfo, CloudError>>;
    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, Result<ClaimOutcome, CloudError>>;
    fn release(&self) -> BoxFuture<'_, Result<ReleaseOutcome, CloudError>>;
    /// A claim that may act on the hot-plug and skip a describe (see [`ClaimHints`]). A cloud
    /// that cannot ignores the hints: the claim then ends when the API says `attached`.
    fn claim_watching<'a>(
        &'a self,
        req: ClaimRequest,
        hints: ClaimHints<'a>,
    ) -> BoxFuture<'a, Watched> {
        drop(hints);
        Box::pin(async move {
            Watched {
                result: self.claim(req).await,
                calls: None,
            }
        })
    }
}

/// How often a procedure looks at an attachment in transition (`attaching`, `detaching`): at a
/// steady short cadence for the first seconds, where a lab or a fast region finishes and every
/// 100 ms saved is outage saved, then backing off so a slow transition is not hammered. The
/// deadline of the procedure bounds the whole, so the number of looks is bounded too
/// ([`PollSchedule::max_polls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSchedule {
    /// The cadence while the transition is young (`aws.poll-interval`).
    pub interval: Duration,
    /// How long the steady cadence lasts, from the start of each wait.
    pub steady_for: Duration,
    /// The longest delay once backing off.
    pub max: Duration,
}

impl Default for PollSchedule {
    fn default() -> Self {
        PollSchedule {
            interval: Duration::from_millis(100),
            steady_for: Duration::from_secs(3),
            max: Duration::from_secs(1),
        }
    }
}

impl PollSchedule {
    /// The default schedule at another cadence (never below 1 ms, and never backing off to
    /// less than the cadence itself).
    pub fn every(interval: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(1));
        let d = PollSchedule::default();
        PollSchedule {
            interval,
            max: d.max.max(interval),
            ..d
        }
    }

    /// The delay before the next look, `waited` into the wait. Past the steady window each delay
    /// is half the time spent past it, so the looks thin out geometrically up to `max`.
    pub fn delay(&self, waited: Duration) -> Duration {
        let interval = self.interval.max(Duration::from_millis(1));
        if waited < self.steady_for {
            return interval;
        }
        ((waited - self.steady_for) / 2).clamp(interval, self.max.max(interval))
    }

    /// The most looks one wait can make within `deadline`, with every delay as short as the
    /// jitter allows (80 %).
    pub fn max_polls(&self, deadline: Duration) -> u32 {
        let (mut waited, mut polls) = (Duration::ZERO, 0u32);
        loop {
            waited += self.delay(waited).mul_f64(0.8);
            if waited >= deadline {
                return polls;
            }
            polls += 1;
        }
    }

    /// The most cloud calls one claim can make within `deadline` (EC2's own retries of a
    /// throttled call aside): two waits (detach, attach), each bounded by
    /// [`PollSchedule::max_polls`] plus the look that starts it, and at most seven other calls
    /// (the first describe, a detach with a known attachment id, a detach, a forced detach,
    /// the attach, the describe after a refused attach, keep-on-termination).
    pub fn claim_call_bound(&self, deadline: Duration) -> u32 {
        2 * (self.max_polls(deadline) + 1) + 7
    }
}

/// The cloud calls one procedure made, by kind: the cost of a failover, for the timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCount {
    pub describe: u32,
    pub attach: u32,
    pub detach: u32,
    pub keep: u32,
    /// Attempts the adapter repeated (throttling, 5xx), on top of the calls above.
    pub retries: u32,
}

impl CallCount {
    pub fn total(&self) -> u32 {
        self.describe + self.attach + self.detach + self.keep + self.retries
    }

    /// The timeline's summary line.
    pub fn label(&self) -> String {
        format!(
            "cloud calls: {} (describe {}, detach {}, attach {}, keep {}, retries {})",
            self.total(),
            self.describe,
            self.detach,
            self.attach,
            self.keep,
            self.retries
        )
    }
}

/// A claim acted on before the API confirms it: the attach was requested and the hot-plugged
/// link with the ENI's MAC is on this host, so the attachment is done whatever the API says yet.
#[derive(Debug, Clone)]
pub struct EarlyClaim {
    /// The ENI as last described (its attachment only if it is this instance's already).
    pub info: EniInfo,
    /// The claim's steps up to the link.
    pub steps: Vec<Step>,
}

/// What a claim may use besides the request: the link watch and what the last look said.
#[derive(Default)]
pub struct ClaimHints<'a> {
    /// The expected holder's attachment id from the last look at the ENI: a forced detach can go
    /// out at once instead of after a describe. A stale id fails and the claim describes.
    pub known_attachment: Option<String>,
    pub link: Option<LinkWatch<'a>>,
}

/// The host side of a claim: the hot-plug counts as the attachment being done.
pub struct LinkWatch<'a> {
    /// Resolves when a link with the ENI's MAC is on this host (never, if it cannot tell).
    pub seen: BoxFuture<'a, ()>,
    /// Told once, when the link appeared after the attach was requested; the claim then goes on
    /// in the background until the API says `attached` (its outcome is the confirmation).
    pub early: tokio::sync::oneshot::Sender<EarlyClaim>,
}

/// A claim's outcome with its cost.
#[derive(Debug)]
pub struct Watched {
    pub result: Result<ClaimOutcome, CloudError>,
    /// `None` when the cloud does not count its calls.
    pub calls: Option<CallCount>,
}
