//! The host side: making the ENI's addresses work on this host once it is attached here (link up,
//! addresses, source-based policy routing) and leaving the host clean when it is not.
//!
//! Desired state is data, a [`NetPlan`], built from the ENI's description and the config; the
//! [`HostNet`] adapter applies and removes exactly that plan.

pub mod plan;

pub use plan::NetPlan;

use futures::future::BoxFuture;

#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct NetError {
    pub kind: &'static str,
    pub message: String,
}

impl NetError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        NetError {
            kind,
            message: message.into(),
        }
    }
}

/// What applying a plan changed, for logs and the timeline.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    /// Human descriptions of what was missing and added; empty when all was in place.
    pub changed: Vec<String>,
    pub steps: Vec<crate::timeline::Step>,
}

pub trait HostNet: Send + Sync {
    /// Make the plan true on this host (waiting for the link to appear first). Idempotent.
    fn apply<'a>(&'a self, plan: &'a NetPlan) -> BoxFuture<'a, Result<ApplyReport, NetError>>;
    /// Remove what the plan adds. A link that is already gone is success.
    fn remove<'a>(&'a self, plan: &'a NetPlan) -> BoxFuture<'a, Result<(), NetError>>;
}

/// For tests that run unprivileged: changes nothing and says so.
#[derive(Debug, Default)]
pub struct NoopNet;

impl HostNet for NoopNet {
    fn apply<'a>(&'a self, _plan: &'a NetPlan) -> BoxFuture<'a, Result<ApplyReport, NetError>> {
        Box::pin(async { Ok(ApplyReport::default()) })
    }

    fn remove<'a>(&'a self, _plan: &'a NetPlan) -> BoxFuture<'a, Result<(), NetError>> {
        Box::pin(async { Ok(()) })
    }
}
