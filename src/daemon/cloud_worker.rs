//! The cloud worker: every call to the [`Cloud`] goes through here, off the loop, so a slow or
//! throttled API never delays a heartbeat or a control request. Results come back as
//! [`Done::Cloud`] (news for the core) or [`Done::Described`] (for the host network plan).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::Done;
use crate::cloud::{ClaimOutcome, ClaimRequest, Cloud, CloudError};
use crate::core::{ClaimResult, CloudView, Event, Failure};
use crate::net::HostNet;

pub(super) enum CloudJob {
    /// Who holds the ENI, for the core (`QueryCloud`).
    Query,
    /// The ENI's description, to build the host network plan.
    DescribeForPlan,
    Claim {
        req: ClaimRequest,
        /// The ENI's MAC if known, to listen for its link before the attach.
        mac: Option<String>,
    },
    Release,
}

pub(super) async fn run(
    cloud: Arc<dyn Cloud>,
    net: Arc<dyn HostNet>,
    mut jobs: mpsc::UnboundedReceiver<CloudJob>,
    done: mpsc::UnboundedSender<Done>,
) {
    // Unlike host changes, cloud calls run side by side: a describe that hangs until its deadline
    // must not hold up the claim behind it. The core tells a stale answer from a current one.
    while let Some(job) = jobs.recv().await {
        let (cloud, net, done) = (cloud.clone(), net.clone(), done.clone());
        tokio::spawn(async move {
            let msg = call(&*cloud, &*net, job).await;
            // The loop has ended when the send fails; nobody is left to tell.
            let _ = done.send(msg);
        });
    }
}

async fn call(cloud: &dyn Cloud, net: &dyn HostNet, job: CloudJob) -> Done {
    match job {
        CloudJob::Query => query(cloud).await,
        CloudJob::DescribeForPlan => Done::Described(timed("describe", cloud.describe()).await),
        CloudJob::Claim { req, mac } => claim(cloud, net, req, mac).await,
        CloudJob::Release => release(cloud).await,
    }
}

async fn query(cloud: &dyn Cloud) -> Done {
    match timed("describe", cloud.describe()).await {
        Ok(info) => {
            let view = match info.holder() {
                Some(i) => CloudView::Holder(i.to_string()),
                None => CloudView::Nobody,
            };
            Done::Cloud {
                event: Event::CloudState(Ok(view)),
                steps: Vec::new(),
                info: Some(info),
            }
        }
        Err(e) => {
            warn!(error = %e, kind = e.kind_str(), "reading the ENI's attachment failed");
            failed(Event::CloudState(Err(failure(&e))))
        }
    }
}

async fn claim(
    cloud: &dyn Cloud,
    net: &dyn HostNet,
    req: ClaimRequest,
    mac: Option<String>,
) -> Done {
    // Listen for the hot-plugged link before asking for the attach, so a fast hot-plug cannot
    // happen between the attach and the wait.
    if let Some(mac) = mac {
        if let Err(e) = net.prepare(&mac).await {
            warn!(error = %e, "cannot listen for the ENI's link ahead of the attach");
        }
    }
    match timed("claim", cloud.claim(req)).await {
        Ok(ClaimOutcome::Claimed { info, steps, .. }) => Done::Cloud {
            event: Event::ClaimDone(Ok(ClaimResult::Claimed)),
            steps,
            info: Some(info),
        },
        Ok(ClaimOutcome::HeldBy { holder, steps }) => Done::Cloud {
            event: Event::ClaimDone(Ok(ClaimResult::HeldBy(holder.to_string()))),
            steps,
            info: None,
        },
        Err(e) => {
            warn!(error = %e, kind = e.kind_str(), "claim failed");
            failed(Event::ClaimDone(Err(failure(&e))))
        }
    }
}

async fn release(cloud: &dyn Cloud) -> Done {
    match timed("release", cloud.release()).await {
        Ok(out) => Done::Cloud {
            event: Event::ReleaseDone(Ok(())),
            steps: out.steps,
            info: None,
        },
        Err(e) => {
            warn!(error = %e, kind = e.kind_str(), "release failed");
            failed(Event::ReleaseDone(Err(failure(&e))))
        }
    }
}

/// Runs one cloud call and records it in the metrics: "ok" or the error's kind (a claim that
/// found the ENI held by someone else is "held-by").
async fn timed<T: Outcome>(
    action: &'static str,
    call: impl std::future::Future<Output = Result<T, CloudError>>,
) -> Result<T, CloudError> {
    let started = Instant::now();
    let result = call.await;
    let outcome = match &result {
        Ok(t) => t.label(),
        Err(e) => e.kind_str(),
    };
    crate::metrics::cloud_request(action, outcome, started.elapsed());
    result
}

/// The metrics label of a successful call.
trait Outcome {
    fn label(&self) -> &'static str {
        "ok"
    }
}

impl Outcome for crate::cloud::EniInfo {}
impl Outcome for crate::cloud::ReleaseOutcome {}
impl Outcome for ClaimOutcome {
    fn label(&self) -> &'static str {
        match self {
            ClaimOutcome::Claimed { .. } => "ok",
            ClaimOutcome::HeldBy { .. } => "held-by",
        }
    }
}

/// A failed call: no steps (the adapter logged them), no description.
fn failed(event: Event) -> Done {
    Done::Cloud {
        event,
        steps: Vec::new(),
        info: None,
    }
}

fn failure(e: &CloudError) -> Failure {
    Failure {
        retryable: e.retryable(),
        message: e.to_string(),
    }
}
