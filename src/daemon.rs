//! The daemon loop: feeds events (timers, heartbeats, cloud and host results, control requests,
//! signals) to the [`core`](crate::core) and carries out the actions it returns.
//!
//! Nothing here decides anything about ownership; it only executes. Slow work (cloud calls, host
//! network changes, hooks) runs in tasks that report back as events, so heartbeats and the
//! control socket are never blocked by a slow API call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::cloud::{ClaimOutcome, ClaimRequest, Cloud, CloudError, EniInfo};
use crate::config::{Settings, StopMode};
use crate::control::{self, Incoming, Request, Response};
use crate::core::{
    self, Action, ClaimResult, CloudView, CoreConfig, Event, Failure, HookKind, Node,
};
use crate::hooks::{HookEnv, HookHandle, HookReport, HookRunner, Transition};
use crate::ids::InstanceId;
use crate::net::{HostNet, NetPlan};
use crate::peer::{PeerLink, Received};
use crate::report::{PeerReport, RoleReport, TransitionReport};
use crate::timeline::{self, Step, Timeline, TimelineReport};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot read the heartbeat key")]
    Key(#[source] crate::config::keyfile::KeyFileError),
    #[error("cannot set up the cloud client")]
    Cloud(#[source] CloudError),
    #[error("cannot bind the heartbeat socket")]
    Peer(#[source] crate::peer::PeerError),
    #[error("cannot open the control socket")]
    Control(#[source] crate::control::ControlError),
    #[error("cannot set up the host network adapter")]
    Net(#[source] crate::net::NetError),
    #[error("cannot install signal handlers")]
    Signal(#[source] std::io::Error),
}

impl DaemonError {
    pub fn kind(&self) -> &'static str {
        match self {
            DaemonError::Key(_) => "key",
            DaemonError::Cloud(_) => "cloud",
            DaemonError::Peer(_) => "peer",
            DaemonError::Control(_) => "control",
            DaemonError::Net(_) => "net",
            DaemonError::Signal(_) => "signal",
        }
    }
}

/// Everything the loop needs from outside, so tests can inject fakes and pre-bound sockets.
pub struct Parts {
    pub settings: Settings,
    pub cloud: Arc<dyn Cloud>,
    pub net: Arc<dyn HostNet>,
    pub peer: PeerLink,
    pub control: tokio::net::UnixListener,
    pub instance_id: InstanceId,
}

/// Builds the adapters the config asks for and runs until stopped.
pub async fn run(settings: Settings) -> Result<(), DaemonError> {
    let key = crate::config::keyfile::read_keys(&settings.auth).map_err(DaemonError::Key)?;
    let cloud: Arc<dyn Cloud> = build_cloud(&settings).await?;
    let identity = cloud.identity().await.map_err(DaemonError::Cloud)?;
    info!(
        instance = %identity.instance_id,
        region = identity.region.as_deref().unwrap_or("?"),
        az = identity.availability_zone.as_deref().unwrap_or("?"),
        "identity"
    );
    let net = build_net(&settings)?;
    let peers = settings
        .peers
        .iter()
        .map(|p| (p.name.clone(), p.addresses.clone()))
        .collect();
    let peer = PeerLink::bind(
        settings.heartbeat.bind,
        settings.group.id,
        settings.node.name.clone(),
        peers,
        key,
        settings.heartbeat.max_clock_skew,
        crate::peer::random_incarnation(),
    )
    .map_err(DaemonError::Peer)?;
    let control = control::bind(&settings.control.socket, settings.control.group.as_deref())
        .map_err(DaemonError::Control)?;
    let parts = Parts {
        settings,
        cloud,
        net,
        peer,
        control,
        instance_id: identity.instance_id,
    };
    let shutdown = shutdown_signals().map_err(DaemonError::Signal)?;
    run_with(parts, shutdown).await;
    Ok(())
}

async fn build_cloud(settings: &Settings) -> Result<Arc<dyn Cloud>, DaemonError> {
    if let Some(t) = &settings.testing {
        let instance = settings.node.instance_id.clone().ok_or_else(|| {
            DaemonError::Cloud(CloudError::permanent(
                "config",
                "[testing] fake-cloud needs node.instance-id",
            ))
        })?;
        warn!(state = %t.fake_cloud.display(), "using the file-backed FAKE cloud ([testing] in the config)");
        return Ok(Arc::new(crate::cloud::fake::FileCloud::new(
            t.fake_cloud.clone(),
            instance,
            settings.group.eni.clone(),
        )));
    }
    let ec2 = crate::cloud::ec2::Ec2Cloud::new(
        &settings.aws,
        settings.group.eni.clone(),
        settings.group.device_index,
        settings.node.instance_id.clone(),
    )
    .await
    .map_err(DaemonError::Cloud)?;
    Ok(Arc::new(ec2))
}

fn build_net(settings: &Settings) -> Result<Arc<dyn HostNet>, DaemonError> {
    if settings.testing.as_ref().is_some_and(|t| t.fake_net) {
        warn!("host network changes disabled ([testing] fake-net)");
        return Ok(Arc::new(crate::net::NoopNet));
    }
    Ok(Arc::new(crate::net::netlink::NetlinkNet::new(
        settings.network.link_timeout,
    )))
}

/// Which kind of stop was asked for by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// SIGTERM/SIGINT: decide from `stop.mode` (and, in auto, whether the host shuts down).
    Term,
}

/// SIGTERM and SIGINT as a stream of stop requests.
pub fn shutdown_signals() -> std::io::Result<mpsc::Receiver<StopRequest>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if tx.send(StopRequest::Term).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// True while systemd is taking the system down (shutdown or reboot), as opposed to a plain
/// restart of this unit: `systemctl is-system-running` says "stopping" only then.
async fn host_is_shutting_down() -> bool {
    let out = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::process::Command::new("systemctl")
            .arg("is-system-running")
            .kill_on_drop(true)
            .output(),
    )
    .await;
    match out {
        Ok(Ok(o)) => String::from_utf8_lossy(&o.stdout).trim() == "stopping",
        _ => false,
    }
}

/// Results of background work, turned into core events by the loop.
enum Done {
    Cloud(Event, Vec<Step>, Option<EniInfo>),
    Net(Event, Vec<Step>),
    /// From the link watch while master.
    LinkGone,
    Drift,
}

struct Daemon {
    settings: Settings,
    node: Node,
    started: Instant,
    started_wall: SystemTime,
    cloud: Arc<dyn Cloud>,
    net: Arc<dyn HostNet>,
    net_tx: mpsc::UnboundedSender<NetJob>,
    /// The link watch of the current mastership; aborted when the host config is removed.
    watch: Option<tokio::task::JoinHandle<()>>,
    coexistence_checked: bool,
    done_tx: mpsc::UnboundedSender<Done>,
    hooks: HookHandle,
    peer: PeerLink,
    instance_id: InstanceId,
    eni: Option<EniInfo>,
    /// The plan last sent to be applied: what a removal must take away even if the ENI's
    /// description changed since.
    applied: Option<NetPlan>,
    pending_yields: HashMap<u64, oneshot::Sender<Response>>,
    next_token: u64,
    timeline: Option<Timeline>,
    last_timeline: Option<TimelineReport>,
    exit: bool,
}

enum NetJob {
    Apply(NetPlan),
    /// Every plan that may be on the host: the applied one and the current one, when the ENI's
    /// addresses changed in between.
    Remove(Vec<NetPlan>),
    /// Repair drift; only while master and with `network.repair` on.
    Reconcile(NetPlan),
}

/// The loop proper, with injected parts; returns when the core says the stop is complete.
pub async fn run_with(parts: Parts, mut stops: mpsc::Receiver<StopRequest>) {
    let Parts {
        settings,
        cloud,
        net,
        peer,
        control: listener,
        instance_id,
    } = parts;
    let core_cfg = core_config(&settings, &instance_id);
    let started = Instant::now();
    let node = Node::new(core_cfg, Duration::ZERO);

    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (net_tx, net_rx) = mpsc::unbounded_channel();
    tokio::spawn(net_worker(net.clone(), net_rx, done_tx.clone()));
    let (hooks, mut hook_reports) = HookRunner::spawn(settings.hooks.clone());
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Incoming>(16);
    let (ctl_stop_tx, ctl_stop_rx) = oneshot::channel::<()>();
    let control_task = tokio::spawn(control::serve(listener, ctl_tx, async move {
        let _ = ctl_stop_rx.await;
    }));

    let mut d = Daemon {
        settings,
        node,
        started,
        started_wall: SystemTime::now(),
        cloud,
        net,
        net_tx,
        watch: None,
        coexistence_checked: false,
        done_tx,
        hooks,
        peer,
        instance_id,
        eni: None,
        applied: None,
        pending_yields: HashMap::new(),
        next_token: 1,
        timeline: None,
        last_timeline: None,
        exit: false,
    };
    info!(
        node = %d.settings.node.name,
        instance = %d.instance_id,
        eni = %d.settings.group.eni,
        heartbeat = ?d.peer.local_addr(),
        "enipeer started"
    );
    sd_notify("READY=1\nSTATUS=starting");

    let actions = d.node.start(Duration::ZERO);
    d.execute(actions).await;
    let mut stop_deadline: Option<Instant> = None;
    let (stop_tx, mut stop_rx) = mpsc::channel::<bool>(1);
    let mut reconcile = tokio::time::interval(d.settings.network.reconcile_interval);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    while !d.exit {
        let now = d.now();
        let wake = d.started + d.node.next_wakeup(now);
        let hard_stop = stop_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {
                d.feed(Event::Tick).await;
            }
            r = d.peer.recv() => match r {
                Received::Accepted { peer, advert, incarnation } => {
                    d.feed(Event::Heartbeat { peer, advert, incarnation }).await;
                }
                Received::Rejected { reason, from } => {
                    debug!(%from, reason, "heartbeat rejected");
                }
            },
            Some(done) = done_rx.recv() => d.on_done(done).await,
            Some(inc) = ctl_rx.recv() => d.on_control(inc).await,
            Some(report) = hook_reports.recv() => d.on_hooks(report),
            _ = reconcile.tick() => d.reconcile().await,
            stop = stops.recv(), if stop_deadline.is_none() => {
                let mode = d.settings.stop.mode;
                let tx = stop_tx.clone();
                // Asking systemd can take a while on a busy host; the loop keeps heartbeating
                // meanwhile, or the peer would take a silent master for dead.
                tokio::spawn(async move {
                    let handover = match (stop, mode) {
                        (None, _) | (_, StopMode::Hold) => false,
                        (_, StopMode::Handover) => true,
                        (_, StopMode::Auto) => host_is_shutting_down().await,
                    };
                    let _ = tx.send(handover).await;
                });
                sd_notify("STOPPING=1");
                // Bound the stop: a handover that hangs must not keep the host from going down.
                stop_deadline = Some(Instant::now() + d.settings.stop.handover_timeout + Duration::from_secs(4));
            }
            Some(handover) = stop_rx.recv() => {
                info!(handover, "stop requested");
                d.feed(Event::Stop { handover }).await;
            }
            _ = tokio::time::sleep_until(hard_stop), if stop_deadline.is_some() => {
                warn!("stop did not complete in time; exiting anyway");
                break;
            }
        }
    }
    // Let the stop hooks run (bounded), then close the control socket.
    drop(d.hooks);
    let _ = tokio::time::timeout(d.settings.hooks.timeout + Duration::from_secs(3), async {
        while hook_reports.recv().await.is_some() {}
    })
    .await;
    let _ = ctl_stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), control_task).await;
    info!("enipeer stopped");
}

pub fn core_config(settings: &Settings, instance_id: &InstanceId) -> CoreConfig {
    CoreConfig {
        name: settings.node.name.clone(),
        priority: settings.node.priority,
        instance_id: instance_id.to_string(),
        peers: settings
            .peers
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect(),
        heartbeat_interval: settings.heartbeat.interval,
        dead_interval: settings.heartbeat.dead_interval,
        preempt: settings.group.preempt,
        preempt_delay: settings.group.preempt_delay,
        hold_down: settings.group.hold_down,
        hold_down_max: settings.group.hold_down_max,
        verify_interval: settings.aws.verify_interval,
        restart_grace: settings.stop.restart_grace,
        handover_timeout: settings.stop.handover_timeout,
        retry_delay: Duration::from_secs(1),
        corroborate_fall: None,
    }
}

async fn net_worker(
    net: Arc<dyn HostNet>,
    mut jobs: mpsc::UnboundedReceiver<NetJob>,
    done: mpsc::UnboundedSender<Done>,
) {
    // One job at a time, in order: a remove queued behind an apply must not overtake it.
    while let Some(job) = jobs.recv().await {
        let msg = match job {
            NetJob::Apply(plan) => match net.apply(&plan).await {
                Ok(report) => {
                    if !report.changed.is_empty() {
                        info!(changes = ?report.changed, "host network configured");
                    }
                    Done::Net(Event::NetApplied(Ok(())), report.steps)
                }
                Err(e) => {
                    warn!(error = %e, kind = e.kind(), "applying the host network config failed");
                    Done::Net(Event::NetApplied(Err(e.to_string())), Vec::new())
                }
            },
            NetJob::Remove(plans) => {
                let mut result = Ok(());
                for plan in &plans {
                    match net.remove(plan).await {
                        Ok(report) if !report.changed.is_empty() => {
                            info!(removed = ?report.changed, "host network config removed");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!(error = %e, kind = e.kind(), "removing the host network config failed");
                            result = Err(e.to_string());
                        }
                    }
                }
                Done::Net(Event::NetRemoved(result), Vec::new())
            }
            NetJob::Reconcile(plan) => {
                match net.reconcile(&plan).await {
                    Ok(report) if !report.changed.is_empty() => {
                        warn!(repaired = ?report.changed, "host network drift repaired");
                    }
                    Ok(_) => debug!("host network config in place"),
                    Err(e) => {
                        warn!(error = %e, kind = e.kind(), "repairing the host network config failed")
                    }
                }
                continue;
            }
        };
        if done.send(msg).is_err() {
            return;
        }
    }
}

fn failure(e: &CloudError) -> Failure {
    Failure {
        retryable: e.transient,
        message: e.to_string(),
    }
}

impl Daemon {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn feed(&mut self, event: Event) {
        let now = self.now();
        let actions = self.node.handle(event, now);
        self.execute(actions).await;
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            self.act(action).await;
        }
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Alert(alert) => crate::alerts::log(&alert, ""),
            Action::Transitioned { from, to, reason } => {
                info!(%from, %to, %reason, "transition");
                sd_notify(&format!("STATUS={to}: {reason}"));
            }
            Action::SendHeartbeat => {
                let advert = self.node.advert();
                if let Err(e) = self.peer.send(&advert).await {
                    warn!(error = %e, "sending heartbeats failed");
                }
            }
            Action::QueryCloud => {
                let cloud = self.cloud.clone();
                let done = self.done_tx.clone();
                tokio::spawn(async move {
                    let msg = match cloud.describe().await {
                        Ok(info) => {
                            let view = match info.holder() {
                                Some(i) => CloudView::Holder(i.to_string()),
                                None => CloudView::Nobody,
                            };
                            Done::Cloud(Event::CloudState(Ok(view)), Vec::new(), Some(info))
                        }
                        Err(e) => {
                            warn!(error = %e, kind = e.kind, "reading the ENI's attachment failed");
                            Done::Cloud(Event::CloudState(Err(failure(&e))), Vec::new(), None)
                        }
                    };
                    let _ = done.send(msg);
                });
            }
            Action::Claim {
                expected_holder,
                force,
                kind,
                reason,
            } => {
                let mut t = Timeline::start(kind.as_str(), reason.clone());
                t.mark("claim started");
                self.timeline = Some(t);
                if force {
                    warn!(holder = ?expected_holder, "claiming with a FORCED detach: the holder is believed dead");
                }
                let req = ClaimRequest {
                    expected_holder: expected_holder.and_then(|h| h.parse().ok()),
                    force,
                    device_index: self.settings.group.device_index,
                };
                let cloud = self.cloud.clone();
                let net = self.net.clone();
                let mac = self.eni.as_ref().map(|e| e.mac.clone());
                let done = self.done_tx.clone();
                tokio::spawn(async move {
                    // Listen for the hot-plugged link before asking for the attach, so a fast
                    // hot-plug cannot happen between the attach and the wait.
                    if let Some(mac) = mac {
                        if let Err(e) = net.prepare(&mac).await {
                            warn!(error = %e, "cannot listen for the ENI's link ahead of the attach");
                        }
                    }
                    let msg = match cloud.claim(req).await {
                        Ok(ClaimOutcome::Claimed { info, steps, .. }) => Done::Cloud(
                            Event::ClaimDone(Ok(ClaimResult::Claimed)),
                            steps,
                            Some(info),
                        ),
                        Ok(ClaimOutcome::HeldBy { holder, steps }) => Done::Cloud(
                            Event::ClaimDone(Ok(ClaimResult::HeldBy(holder.to_string()))),
                            steps,
                            None,
                        ),
                        Err(e) => {
                            warn!(error = %e, kind = e.kind, "claim failed");
                            Done::Cloud(Event::ClaimDone(Err(failure(&e))), Vec::new(), None)
                        }
                    };
                    let _ = done.send(msg);
                });
            }
            Action::Release => {
                if let Some(t) = self.timeline.as_mut() {
                    t.mark("release started");
                }
                let cloud = self.cloud.clone();
                let done = self.done_tx.clone();
                tokio::spawn(async move {
                    let msg = match cloud.release().await {
                        Ok(out) => Done::Cloud(Event::ReleaseDone(Ok(())), out.steps, None),
                        Err(e) => {
                            warn!(error = %e, kind = e.kind, "release failed");
                            Done::Cloud(Event::ReleaseDone(Err(failure(&e))), Vec::new(), None)
                        }
                    };
                    let _ = done.send(msg);
                });
            }
            Action::ApplyNet => {
                if self.timeline.as_ref().is_none_or(Timeline::is_finished) {
                    self.timeline = Some(Timeline::start("adopt", "ENI already attached here"));
                }
                match self.plan().await {
                    Some(plan) => {
                        self.applied = Some(plan.clone());
                        let _ = self.net_tx.send(NetJob::Apply(plan));
                    }
                    None => {
                        let now = self.now();
                        let actions = self.node.handle(
                            Event::NetApplied(Err("the ENI's description is not available".into())),
                            now,
                        );
                        Box::pin(self.execute(actions)).await;
                    }
                }
            }
            Action::RemoveNet => match self.plan().await {
                Some(plan) => {
                    if let Some(w) = self.watch.take() {
                        w.abort();
                    }
                    let mut plans = vec![plan];
                    if let Some(applied) = self.applied.take() {
                        if applied != plans[0] {
                            plans.insert(0, applied);
                        }
                    }
                    let _ = self.net_tx.send(NetJob::Remove(plans));
                }
                None => {
                    // Never configured anything here: nothing to remove.
                    let _ = self
                        .done_tx
                        .send(Done::Net(Event::NetRemoved(Ok(())), Vec::new()));
                }
            },
            Action::RunHooks { kind, reason } => {
                let transition = match kind {
                    HookKind::Master => Transition::Master,
                    HookKind::Backup => Transition::Backup,
                    HookKind::Fault => Transition::Fault,
                    HookKind::Stop => Transition::Stop,
                };
                let env = HookEnv {
                    node: self.settings.node.name.clone(),
                    role: self.node.role().to_string(),
                    reason,
                    eni: self.settings.group.eni.to_string(),
                    interface: self.settings.network.interface_name.clone(),
                    addresses: self
                        .eni
                        .as_ref()
                        .map(|e| {
                            std::iter::once(e.primary_ip)
                                .chain(e.secondary_ips.iter().copied())
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                self.hooks.run(transition, env);
            }
            Action::Reply { token, result } => {
                if let Some(tx) = self.pending_yields.remove(&token) {
                    let resp = match result {
                        Ok(message) => Response::Yielded { message },
                        Err(message) => Response::Error { message },
                    };
                    let _ = tx.send(resp);
                }
            }
            Action::Exit => {
                // The last heartbeat says "stopping" (and for how long); one lost datagram would
                // make the peer wait only the dead interval, so say it a few times.
                let advert = self.node.advert();
                for _ in 0..2 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = self.peer.send(&advert).await;
                }
                self.exit = true;
            }
        }
    }

    fn remember_eni(&mut self, info: EniInfo) {
        if !self.coexistence_checked && self.settings.testing.is_none() {
            self.coexistence_checked = true;
            for w in crate::net::coexistence_warnings(&info.mac) {
                warn!("{w}");
            }
        }
        self.eni = Some(info);
    }

    /// The host network plan, from the ENI's description (fetched if not known yet).
    async fn plan(&mut self) -> Option<NetPlan> {
        if self.eni.is_none() {
            match self.cloud.describe().await {
                Ok(info) => self.remember_eni(info),
                Err(e) => {
                    warn!(error = %e, "cannot describe the ENI to plan the host network");
                    return None;
                }
            }
        }
        self.eni
            .as_ref()
            .map(|info| NetPlan::build(info, &self.settings.network))
    }

    async fn on_done(&mut self, done: Done) {
        match done {
            Done::Cloud(event, steps, info) => {
                if let Some(info) = info {
                    self.remember_eni(info);
                }
                if let Some(t) = self.timeline.as_mut() {
                    t.extend(steps);
                    match &event {
                        Event::ClaimDone(Ok(ClaimResult::HeldBy(h))) => {
                            t.finish(format!("lost: {h} holds the ENI"));
                        }
                        Event::ClaimDone(Err(f)) => {
                            t.finish(format!("claim failed: {}", f.message))
                        }
                        Event::ReleaseDone(r) => {
                            t.mark("released");
                            t.finish(match r {
                                Ok(()) => "released".to_string(),
                                Err(f) => format!("release failed: {}", f.message),
                            });
                        }
                        _ => {}
                    }
                }
                self.finish_timeline_if_done();
                self.feed(event).await;
            }
            Done::Net(event, steps) => {
                if let Some(t) = self.timeline.as_mut() {
                    t.extend(steps);
                    if let Event::NetApplied(Ok(())) = event {
                        t.mark("host network applied");
                    }
                }
                let applied = event == Event::NetApplied(Ok(()));
                self.feed(event).await;
                if applied && self.node.is_serving() {
                    self.start_watch().await;
                }
            }
            Done::LinkGone => {
                warn!("the ENI's interface disappeared from this host");
                self.feed(Event::LinkLost).await;
            }
            Done::Drift => self.reconcile().await,
        }
    }

    /// Watches the ENI's link while master: a vanished link is news for the core, a change to
    /// addresses, rules or routes is drift to repair.
    async fn start_watch(&mut self) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
        let Some(plan) = self.plan().await else {
            return;
        };
        let mut rx = match self.net.watch(&plan).await {
            Ok(rx) => rx,
            Err(e) => {
                warn!(error = %e, "cannot watch the ENI's link; relying on the periodic checks");
                return;
            }
        };
        let done = self.done_tx.clone();
        self.watch = Some(tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let msg = match ev {
                    crate::net::NetEvent::LinkGone => Done::LinkGone,
                    crate::net::NetEvent::Changed => Done::Drift,
                };
                if done.send(msg).is_err() {
                    return;
                }
            }
        }));
    }

    /// Queues a drift repair when this node serves the address and repair is on.
    async fn reconcile(&mut self) {
        if !self.settings.network.repair || !self.node.is_serving() {
            return;
        }
        if let Some(plan) = self.plan().await {
            let _ = self.net_tx.send(NetJob::Reconcile(plan));
        }
    }

    fn on_hooks(&mut self, report: HookReport) {
        if report.transition != Transition::Master {
            return;
        }
        let mut done = false;
        if let Some(t) = self.timeline.as_mut() {
            if !t.is_finished() {
                t.push(Step {
                    label: "hooks done".into(),
                    at: report.finished_at,
                });
                t.finish("master");
                done = true;
            }
        }
        if done {
            self.finish_timeline_if_done();
        }
    }

    fn finish_timeline_if_done(&mut self) {
        if let Some(t) = self.timeline.as_ref().filter(|t| t.is_finished()) {
            let r = t.report();
            info!(
                kind = %r.kind,
                outcome = r.outcome.as_deref().unwrap_or(""),
                total_ms = r.steps.last().map_or(0.0, |s| s.at_ms),
                "timeline:\n{}",
                r.render()
            );
            self.last_timeline = Some(r);
            self.timeline = None;
        }
    }

    async fn on_control(&mut self, inc: Incoming) {
        match inc.request {
            Request::Role => {
                let _ = inc.reply.send(Response::Role(self.report()));
            }
            Request::Yield { timeout_ms } => {
                let token = self.next_token;
                self.next_token += 1;
                self.pending_yields.insert(token, inc.reply);
                info!(timeout_ms, "yield requested");
                self.feed(Event::YieldRequested {
                    token,
                    timeout: Duration::from_millis(timeout_ms),
                })
                .await;
            }
        }
    }

    fn unix_ms_at(&self, t: Duration) -> u64 {
        timeline::unix_ms(self.started_wall + t)
    }

    fn report(&self) -> RoleReport {
        let now = self.now();
        RoleReport {
            node: self.settings.node.name.clone(),
            instance_id: self.instance_id.to_string(),
            eni: self.settings.group.eni.to_string(),
            role: self.node.role().to_string(),
            since_unix_ms: self.unix_ms_at(self.node.role_since()),
            last_transition: self.node.last_transition().map(|t| TransitionReport {
                from: t.from.to_string(),
                to: t.to.to_string(),
                reason: t.reason.clone(),
                at_unix_ms: self.unix_ms_at(t.at),
            }),
            peers: self
                .node
                .peers()
                .map(|p| PeerReport {
                    name: p.name.clone(),
                    role: p.advert.as_ref().map(|a| a.role.to_string()),
                    instance_id: p.instance_id.clone(),
                    last_heard_ms_ago: p
                        .last_heard
                        .map(|h| now.saturating_sub(h).as_millis() as u64),
                    alive: self.node.is_alive(&p.name, now),
                })
                .collect(),
            cloud_holder: match self.node.holder() {
                core::HolderBelief::Unknown => "unknown".into(),
                core::HolderBelief::Nobody => "nobody".into(),
                core::HolderBelief::Instance(i) => i.clone(),
            },
            cloud_checked_ms_ago: self
                .node
                .cloud_checked()
                .map(|t| now.saturating_sub(t).as_millis() as u64),
            hold_down_ms_left: self.node.hold_down_left(now).map(|d| d.as_millis() as u64),
            last_failover: self
                .timeline
                .as_ref()
                .map(Timeline::report)
                .or_else(|| self.last_timeline.clone()),
            rejected: self
                .peer
                .counters()
                .into_iter()
                .filter(|(k, _)| !matches!(k.as_str(), "accepted" | "sent"))
                .collect(),
        }
    }
}

/// Tells systemd about readiness and status when run as a `Type=notify` service. Without
/// `NOTIFY_SOCKET` (not under systemd) it does nothing.
fn sd_notify(msg: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(msg.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        error!(error = %e, socket = %path, "sd_notify failed");
    }
}

/// Keeps unused-import lints quiet for helpers only used in some builds.
#[allow(dead_code)]
fn _assert_send<T: Send>() {}

#[allow(dead_code)]
fn _future_is_send(f: impl Future<Output = ()> + Send) -> impl Future<Output = ()> + Send {
    f
}
