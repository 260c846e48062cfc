//! What one node tells its peers in every heartbeat: its role and what it believes about the ENI.
//! The peer module frames, authenticates and transports this; the core produces and consumes it.

use serde::{Deserialize, Serialize};

use crate::ids::{InstanceId, NodeName};

/// A node's role as advertised on the wire. Stable numeric codes: they are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Starting = 0,
    Backup = 1,
    Claiming = 2,
    Master = 3,
    Releasing = 4,
    Fault = 5,
}

impl Role {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Role> {
        Some(match code {
            0 => Role::Starting,
            1 => Role::Backup,
            2 => Role::Claiming,
            3 => Role::Master,
            4 => Role::Releasing,
            5 => Role::Fault,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Backup => "backup",
            Role::Claiming => "claiming",
            Role::Master => "master",
            Role::Releasing => "releasing",
            Role::Fault => "fault",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the sender believes about who holds the ENI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HolderBelief {
    /// Not known (still starting, or the last cloud query failed).
    Unknown,
    /// Detached: nobody holds it.
    Nobody,
    /// Attached to this instance id.
    Instance(InstanceId),
}

/// The yield (orderly handover) conversation, carried in heartbeats so that it survives the loss
/// of any single packet: each side repeats its last message until the other moves on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum YieldMsg {
    None,
    /// Master → target: please take over. `id` tells requests apart.
    Offer {
        id: u32,
        to: NodeName,
    },
    /// Target → master: ready, release it.
    Accept {
        id: u32,
        to: NodeName,
    },
    /// Target → master: cannot take over (fault, not healthy).
    Reject {
        id: u32,
        to: NodeName,
    },
    /// Old master → target: detached and deconfigured, claim it now.
    Released {
        id: u32,
        to: NodeName,
    },
}

impl YieldMsg {
    pub fn addressed_to(&self) -> Option<(&NodeName, u32)> {
        match self {
            YieldMsg::None => None,
            YieldMsg::Offer { id, to }
            | YieldMsg::Accept { id, to }
            | YieldMsg::Reject { id, to }
            | YieldMsg::Released { id, to } => Some((to, *id)),
        }
    }
}

/// The payload of a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    pub role: Role,
    pub priority: u8,
    /// The sender's own EC2 instance id, so peers can map the cloud's answers to node names.
    pub instance_id: InstanceId,
    pub holder: HolderBelief,
    pub yield_msg: YieldMsg,
    /// Non-zero when the sender is stopping and intends to be back within this many ms (a daemon
    /// restart): peers wait that long before declaring it dead instead of the dead interval.
    pub stopping_ms: u32,
    /// A backup with preempt on and a higher priority asks the master for an orderly handover.
    pub wants_master: bool,
    /// The sender's own service checks pass (always true without checks). An unhealthy node is
    /// never chosen to take the ENI.
    pub healthy: bool,
    /// The sender is in maintenance: it never claims and is never a handover target.
    pub maintenance: bool,
}

impl Advert {
    /// The sender says it is master and holds the ENI itself.
    pub fn claims_eni(&self) -> bool {
        self.role == Role::Master && self.holder == HolderBelief::Instance(self.instance_id.clone())
    }
}
