//! The cloud worker: every call to the [`Cloud`] goes through here, off the loop, so a slow or
//! throttled API never delays a heartbeat or a control request. Results come back as
//! [`Done::Cloud`] (news for the core) or [`Done::Described`] (for the host network plan).
//!
//! A claim watches for the ENI's hot-plugged link from before the attach: when the link shows
//! up first, the claim is reported done at once ([`Done::EarlyClaim`], the core configures the
//! host) and goes on in the background until the API says `attached` ([`Done::Confirmed`]). A
//! confirmation that does not come, or names another holder, reaches the core as what the cloud
//! says ([`Event::CloudState`], the verify's path), so a master steps down as from any lost
//! claim.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use super::Done;
use crate::cloud::{
    CallCount, ClaimHints, ClaimOutcome, ClaimRequest, Cloud, CloudError, CloudErrorKind,
    EarlyClaim, LinkWatch, Watched,
};
use crate::core::{ClaimResult, CloudView, Event, Failure};
use crate::net::HostNet;
use crate::timeline::{Outcome, Step};

pub(super) enum CloudJob {
    /// Who holds the ENI, for the core (`QueryCloud`).
    Query,
    /// The ENI's description, to build the host network plan.
    DescribeForPlan,
    Claim {
        req: ClaimRequest,
        /// The ENI's MAC if known, to listen for its link before the attach.
        mac: Option<String>,
        /// The expected holder's attachment id from the last look, if any.
        known_attachment: Option<String>,
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
            // The loop has ended when a send fails; nobody is left to tell.
            match job {
                CloudJob::Query => drop(done.send(query(&*cloud).await)),
                CloudJob::DescribeForPlan => {
                    drop(done.send(Done::Described(timed("describe", cloud.describe()).await)))
                }
                CloudJob::Claim {
                    req,
                    mac,
                    known_attachment,
                } => claim(&*cloud, &*net, req, mac, known_attachment, &done).await,
                CloudJob::Release => drop(done.send(release(&*cloud).await)),
            }
        });
    }
}

async fn query(cloud: &dyn Cloud) -> Done {
    match timed("describe", cloud.describe()).await {
        Ok(info) => {
            let view = match info.holder() {
                Some(i) => CloudView::Holder(i.clone()),
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
    known_attachment: Option<String>,
    done: &mpsc::UnboundedSender<Done>,
) {
    // Listen for the hot-plugged link before asking for the attach, so a fast hot-plug cannot
    // happen between the attach and the wait.
    if let Some(mac) = &mac {
        if let Err(e) = net.prepare(mac).await {
            warn!(error = %e, "cannot listen for the ENI's link ahead of the attach");
        }
    }
    let (early_tx, mut early_rx) = oneshot::channel::<EarlyClaim>();
    let link = mac.as_deref().map(|mac| LinkWatch {
        seen: Box::pin(link_seen(net, mac)),
        early: early_tx,
    });
    let hints = ClaimHints {
        known_attachment,
        link,
    };
    let started = Instant::now();
    let claim = async {
        let watched = cloud.claim_watching(req, hints).await;
        let outcome = match &watched.result {
            Ok(o) => o.label(),
            Err(e) => e.kind_str(),
        };
        crate::metrics::cloud_request("claim", outcome, started.elapsed());
        watched
    };
    tokio::pin!(claim);
    let watched = tokio::select! {
        biased;
        Ok(early) = &mut early_rx => {
            let _ = done.send(acted_on(early));
            let watched = claim.await;
            let _ = done.send(confirmation(watched));
            return;
        }
        watched = &mut claim => watched,
    };
    // The claim may have gone on to its end in the same step that sent the early claim.
    if let Ok(early) = early_rx.try_recv() {
        let _ = done.send(acted_on(early));
        let _ = done.send(confirmation(watched));
        return;
    }
    let _ = done.send(claimed(watched));
}

/// Resolves when the ENI's link is on this host; never, if the host cannot tell.
async fn link_seen(net: &dyn HostNet, mac: &str) {
    if let Err(e) = net.wait_link(mac).await {
        warn!(error = %e, kind = e.kind(), "not watching for the ENI's link: the claim waits for the API");
        futures::future::pending::<()>().await;
    }
}

/// The early claim: the core takes over the host now.
fn acted_on(early: EarlyClaim) -> Done {
    Done::EarlyClaim {
        info: early.info,
        steps: early.steps,
    }
}

/// A claim that ended without acting on the link first: what it concluded is news for the core.
fn claimed(watched: Watched) -> Done {
    let calls = calls_step(watched.calls);
    let (event, mut steps, info) = match watched.result {
        Ok(ClaimOutcome::Claimed { info, steps, .. }) => (ClaimResult::Claimed, steps, Some(info)),
        Ok(ClaimOutcome::HeldBy { holder, steps }) => {
            (ClaimResult::HeldBy(holder.clone()), steps, None)
        }
        Err(e) => {
            warn!(error = %e, kind = e.kind_str(), calls = ?watched.calls.map(|c| c.total()), "claim failed");
            return failed(Event::ClaimDone(Err(failure(&e))));
        }
    };
    steps.extend(calls);
    Done::Cloud {
        event: Event::ClaimDone(Ok(event)),
        steps,
        info,
    }
}

/// The end of a claim acted on early: confirmed, or a mismatch the core must learn the way a
/// verify would tell it. A cloud that cannot be reached is no mismatch: the master keeps serving
/// and its verify asks again.
fn confirmation(watched: Watched) -> Done {
    let calls = calls_step(watched.calls);
    let (lost, outcome, mut steps) = match watched.result {
        Ok(ClaimOutcome::Claimed {
            info, mut steps, ..
        }) => {
            info!(eni = %info.eni_id, "the API confirms the attachment acted on");
            steps.extend(calls);
            return Done::Confirmed {
                steps,
                info: Some(info),
                lost: None,
            };
        }
        Ok(ClaimOutcome::HeldBy { holder, steps }) => {
            warn!(%holder, "the API says another instance holds the ENI acted on: stepping down");
            let outcome = Outcome::Lost {
                holder: holder.to_string(),
            };
            (Ok(CloudView::Holder(holder.clone())), outcome, steps)
        }
        Err(e)
            if matches!(
                e.kind,
                CloudErrorKind::Deadline | CloudErrorKind::DetachedMeanwhile
            ) =>
        {
            warn!(error = %e, "the API never said `attached` for the ENI acted on: stepping down");
            let outcome = Outcome::ClaimFailed(format!("not confirmed by the API: {e}"));
            (Ok(CloudView::Nobody), outcome, Vec::new())
        }
        Err(e) => {
            warn!(error = %e, kind = e.kind_str(), "cannot confirm the claim acted on; the verify asks again");
            let outcome = Outcome::Unconfirmed(e.to_string());
            (Err(failure(&e)), outcome, Vec::new())
        }
    };
    steps.extend(calls);
    Done::Confirmed {
        steps,
        info: None,
        lost: Some(Box::new((Event::CloudState(lost), outcome))),
    }
}

/// The claim's cost as a timeline step, when the cloud counted it.
fn calls_step(calls: Option<CallCount>) -> Option<Step> {
    calls.map(|c| Step::now(c.label()))
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
async fn timed<T: CallOutcome>(
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
trait CallOutcome {
    fn label(&self) -> &'static str {
        "ok"
    }
}

impl CallOutcome for crate::cloud::EniInfo {}
impl CallOutcome for crate::cloud::ReleaseOutcome {}
impl CallOutcome for ClaimOutcome {
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
