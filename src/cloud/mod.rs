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

use std::net::Ipv4Addr;
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
}

/// Polling interval for attachment state changes: starts short because a lab or a fast region
/// finishes in tens of ms, doubles up to a cap so a slow one is not hammered.
pub fn poll_delay(attempt: u32) -> Duration {
    let ms = 50u64.saturating_mul(1u64 << attempt.min(4)).min(500);
    Duration::from_millis(ms)
}
