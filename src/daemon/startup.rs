//! Start-up before the loop: the sockets are bound first (so `READY=1` and `enipeer role` work at
//! once), then the cloud client and this instance's identity are obtained, retrying transient
//! failures (instance metadata or the EC2 API not reachable yet, as early in a boot) with backoff
//! instead of exiting. While it waits, `role` says what it is waiting for.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{build_cloud, DaemonError, StopRequest};
use crate::cloud::{Cloud, Identity};
use crate::config::Settings;
use crate::control::{self, Incoming, Request, Response};
use crate::report::{RoleReport, TransitionReport};
use crate::timeline;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The control socket, served from start to exit.
pub struct ControlEnds {
    pub requests: mpsc::Receiver<Incoming>,
    /// For other askers of the loop (the metrics endpoint asks for the `role` snapshot).
    pub requests_tx: mpsc::Sender<Incoming>,
    pub stop: oneshot::Sender<()>,
    pub task: JoinHandle<()>,
}

pub fn serve_control(listener: tokio::net::UnixListener) -> ControlEnds {
    let (tx, requests) = mpsc::channel::<Incoming>(16);
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(control::serve(listener, tx.clone(), async move {
        let _ = stop_rx.await;
    }));
    ControlEnds {
        requests,
        requests_tx: tx,
        stop,
        task,
    }
}

/// The cloud client and identity, retried while the failure is transient. `None` when a stop
/// was requested meanwhile.
pub(super) async fn wait_for_cloud(
    settings: &Settings,
    control: &mut ControlEnds,
    stops: &mut mpsc::Receiver<StopRequest>,
) -> Result<Option<(Arc<dyn Cloud>, Identity)>, DaemonError> {
    let since = std::time::SystemTime::now();
    let mut delay = FIRST_RETRY;
    loop {
        let error = match connect(settings).await {
            Ok(ready) => return Ok(Some(ready)),
            Err(DaemonError::Cloud(e)) if e.retryable() => e,
            Err(e) => return Err(e),
        };
        let waiting = format!("waiting for the cloud ({error}); retrying in {delay:?}");
        warn!(
            error = %error,
            retry_in_ms = delay.as_millis() as u64,
            "cannot reach instance metadata or the EC2 API yet; retrying. If this lasts, check \
             the instance's network, IMDS (hop limit, IMDSv2) and the IAM role"
        );
        let report = waiting_report(settings, &waiting, since);
        let retry_at = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(retry_at) => break,
                Some(inc) = control.requests.recv() => answer(inc, &report),
                _ = stops.recv() => {
                    info!("stop requested while waiting for the cloud");
                    return Ok(None);
                }
            }
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}

async fn connect(settings: &Settings) -> Result<(Arc<dyn Cloud>, Identity), DaemonError> {
    let cloud = build_cloud(settings).await?;
    let identity = cloud.identity().await.map_err(DaemonError::Cloud)?;
    Ok((cloud, identity))
}

fn answer(inc: Incoming, report: &RoleReport) {
    let response = match inc.request {
        Request::Role => Response::Role(report.clone()),
        Request::Yield { .. } | Request::Maintenance { .. } => Response::Error {
            message: format!("this node is not master yet: {}", report_reason(report)),
        },
    };
    let _ = inc.reply.send(response);
}

fn report_reason(report: &RoleReport) -> &str {
    report
        .last_transition
        .as_ref()
        .map_or("starting", |t| t.reason.as_str())
}

/// What `role` shows before the core runs.
fn waiting_report(settings: &Settings, waiting: &str, since: std::time::SystemTime) -> RoleReport {
    let at = timeline::unix_ms(since);
    RoleReport {
        schema_version: crate::report::SCHEMA_VERSION,
        node: settings.node.name.to_string(),
        instance_id: settings
            .node
            .instance_id
            .as_ref()
            .map_or_else(|| "unknown".into(), |i| i.to_string()),
        eni: settings.group.eni.to_string(),
        role: "starting".into(),
        since_unix_ms: at,
        last_transition: Some(TransitionReport {
            from: "starting".into(),
            to: "starting".into(),
            reason: waiting.into(),
            at_unix_ms: at,
        }),
        peers: Vec::new(),
        cloud_holder: crate::report::Holder::Unknown,
        cloud_checked_ms_ago: None,
        hold_down_ms_left: None,
        last_failover: None,
        rejected: Vec::new(),
        health: Default::default(),
        maintenance: None,
        leftovers: Vec::new(),
        ipv6_problem: None,
    }
}
