//! The daemon loop: feeds events (timers, heartbeats, cloud and host results, control requests,
//! signals) to the [`core`](crate::core) and carries out the actions it returns.
//!
//! Nothing here decides anything about ownership; it only executes. The loop never awaits the
//! cloud: cloud calls go to the [cloud worker](cloud_worker), host network changes to the
//! [net worker](net_worker) and hooks to the hook runner, and all of them report back as [`Done`]
//! messages on one channel. A result the daemon makes up itself (a plan that cannot be built)
//! takes the same channel, so the core sees every result the same way, one event at a time.
//!
//! - [`actions`]: one method per core [`Action`](crate::core::Action);
//! - [`results`]: what comes back (workers, hooks, control requests) turned into core events;
//! - [`plan`]: the host network plan, and what waits for it while the ENI is being described;
//! - [`report`]: the snapshot `enipeer role` shows;
//! - [`signals`]: stop signals, systemd notification and the watchdog.

mod actions;
mod cloud_worker;
mod health;
mod maintenance;
mod net_worker;
mod plan;
mod reload;
mod report;
mod results;
mod scrape;
mod signals;
mod startup;
#[cfg(test)]
mod tests;
mod timer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::cloud::{Cloud, CloudError, EniInfo};
use crate::config::Settings;
use crate::control::{self, Incoming, Response};
use crate::core::{CoreConfig, Event, Node};
use crate::health::{CheckReport, Supervisor};
use crate::hooks::{HookHandle, HookReport, HookRunner};
use crate::ids::InstanceId;
use crate::net::{HostNet, NetPlan};
use crate::peer::PeerLink;
use crate::timeline::{Recorder, Step};

use cloud_worker::CloudJob;
use net_worker::NetJob;
use plan::PlanUse;
use sd_notify::NotifyState;
pub use signals::{shutdown_signals, StopRequest};

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
    #[error("cannot listen for metrics scrapes on {addr} (metrics.listen)")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
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
            DaemonError::Metrics { .. } => "metrics",
        }
    }
}

/// Everything the loop needs from outside, so tests can inject fakes and pre-bound sockets.
pub struct Parts {
    pub settings: Settings,
    /// Where `settings` came from, re-read on SIGHUP (`None`: reloads are refused).
    pub config_path: Option<std::path::PathBuf>,
    /// SIGHUP, as reload requests.
    pub reloads: mpsc::Receiver<()>,
    pub cloud: Arc<dyn Cloud>,
    pub net: Arc<dyn HostNet>,
    pub peer: PeerLink,
    pub control: startup::ControlEnds,
    /// The scrape endpoint, when `[metrics] listen` is set.
    pub metrics: Option<tokio::net::TcpListener>,
    pub instance_id: InstanceId,
}

/// Builds the adapters the config asks for and runs until stopped.
pub async fn run(
    settings: Settings,
    config_path: Option<std::path::PathBuf>,
) -> Result<(), DaemonError> {
    let key = crate::config::keyfile::read_keys(&settings.auth).map_err(DaemonError::Key)?;
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
    let listener = control::bind(&settings.control.socket, settings.control.group.as_deref())
        .map_err(DaemonError::Control)?;
    let metrics = match settings.metrics.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Metrics { addr, source })?,
        ),
        None => None,
    };
    let mut control = startup::serve_control(listener);
    let mut shutdown = shutdown_signals().map_err(DaemonError::Signal)?;
    // Early, so that a SIGHUP while waiting for the cloud does not end the daemon.
    let reloads = reload::reload_signals()?;
    // Ready once the sockets are bound: the cloud may take a while at boot, and systemd must
    // not kill a daemon that is only waiting for it.
    signals::notify(&[
        NotifyState::Ready,
        NotifyState::Status("waiting for the cloud"),
    ]);
    let Some((cloud, identity)) =
        startup::wait_for_cloud(&settings, &mut control, &mut shutdown).await?
    else {
        return Ok(());
    };
    info!(
        instance = %identity.instance_id,
        region = identity.region.as_deref().unwrap_or("?"),
        az = identity.availability_zone.as_deref().unwrap_or("?"),
        "identity"
    );
    let net = build_net(&settings)?;
    let parts = Parts {
        settings,
        config_path,
        reloads,
        cloud,
        net,
        peer,
        control,
        metrics,
        instance_id: identity.instance_id,
    };
    run_with(parts, shutdown).await;
    Ok(())
}

async fn build_cloud(settings: &Settings) -> Result<Arc<dyn Cloud>, DaemonError> {
    if let Some(t) = &settings.testing {
        let instance = settings.node.instance_id.clone().ok_or_else(|| {
            DaemonError::Cloud(CloudError::new(
                crate::cloud::CloudErrorKind::Config,
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

/// Results of background work, turned into core events by the loop. Every result reaches the
/// core through here, including those the daemon makes up itself.
enum Done {
    /// A cloud call the core asked for; `info` is the ENI's description when the call saw it.
    Cloud {
        event: Event,
        steps: Vec<Step>,
        info: Option<EniInfo>,
    },
    /// A claim acted on at the hot-plug, before the API said `attached`: the core hears
    /// `ClaimDone` now; the API's answer follows as [`Done::Confirmed`].
    EarlyClaim {
        info: EniInfo,
        steps: Vec<Step>,
    },
    /// The end of an early claim: `lost` is what the core must hear when the API disagrees
    /// (and how the timeline ends); `None` when it confirmed the attachment.
    Confirmed {
        steps: Vec<Step>,
        info: Option<EniInfo>,
        lost: Option<Box<(Event, crate::timeline::Outcome)>>,
    },
    /// A describe asked for to build the host network plan: not news for the core.
    Described(Result<EniInfo, CloudError>),
    Net {
        event: Event,
        steps: Vec<Step>,
    },
    /// What a removal (or a cleanup) left on the host: the `tried` plans were removed again,
    /// the `failed` ones are still (partly) there, with why.
    Leftovers {
        tried: Vec<NetPlan>,
        failed: Vec<(NetPlan, String)>,
    },
    /// After an apply or reconcile of a plan with IPv6: why its IPv6 part is not in place, or
    /// `None` when it is.
    Ipv6(Option<String>),
    /// From the link watch while master.
    LinkGone,
    Drift,
    /// An event the daemon made up itself (a health verdict after a role change).
    Core(Event),
}

struct Daemon {
    settings: Settings,
    node: Node,
    started: Instant,
    started_wall: SystemTime,
    /// Only for the link watch; every other host change goes through `net_tx`.
    net: Arc<dyn HostNet>,
    net_tx: mpsc::UnboundedSender<NetJob>,
    cloud_tx: mpsc::UnboundedSender<CloudJob>,
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
    /// Plans whose removal failed, with the last error: removed again on each reconcile tick
    /// while this node does not serve, until the host is clean; `role` lists them.
    leftovers: Vec<(NetPlan, String)>,
    /// Why the IPv6 part of the applied plan is not on the host (the IPv4 part is); `role`
    /// shows it until a reconcile gets it in place.
    ipv6_problem: Option<String>,
    /// Uses of the plan waiting, in order, for the describe in flight (`describing`).
    plan_waiting: Vec<PlanUse>,
    describing: bool,
    pending_yields: HashMap<u64, oneshot::Sender<Response>>,
    next_token: u64,
    timeline: Recorder,
    exit: bool,
    /// The service checks, when any are configured.
    checks: Option<Supervisor>,
    /// The file the settings came from, re-read on SIGHUP.
    config_path: Option<std::path::PathBuf>,
    /// The metrics endpoint (`None` only before the loop starts), moved by a reload.
    scrape: Option<scrape::Scrape>,
    watchdog: signals::Watchdog,
    /// The loop's deadline timer, made when the loop starts (it needs the runtime).
    deadline: Option<timer::Deadline>,
    /// Test seam for the lab's negative control ([`early_hook_seam`]): the on-master hook runs
    /// at the transition, before the host network, as it did before issue 10.
    early_hook: EarlyHook,
}

/// The negative control's seam: whether the on-master hook runs at the transition to master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EarlyHook {
    /// The hook waits for the host network (the core's order).
    Off,
    /// The next transition to master runs the hook at once.
    Armed,
    /// The hook already ran at the transition: the core's (later) one is skipped.
    Ran,
}

/// `ENIPEER_TEST_EARLY_MASTER_HOOK=1` turns the seam on; only debug builds read it, so a
/// release binary always runs the hook after the host network is applied.
fn early_hook_seam() -> EarlyHook {
    let on = cfg!(debug_assertions)
        && std::env::var_os("ENIPEER_TEST_EARLY_MASTER_HOOK").is_some_and(|v| v == "1");
    if on {
        EarlyHook::Armed
    } else {
        EarlyHook::Off
    }
}

/// What woke the loop.
enum Wake {
    Tick,
    Peer(crate::peer::Received),
    Done(Done),
    Control(Incoming),
    Hooks(HookReport),
    Check(CheckReport),
    Reload,
    Reconcile,
    Stop(Option<StopRequest>),
    StopDecided(bool),
    HardStop,
}

/// What the loop listens to besides the core's timer and the heartbeat socket.
struct Inbox {
    done: mpsc::UnboundedReceiver<Done>,
    control: mpsc::Receiver<Incoming>,
    hooks: mpsc::UnboundedReceiver<HookReport>,
    stops: mpsc::Receiver<StopRequest>,
    /// Whether a requested stop hands over, once decided (see [`signals::decide_stop`]).
    stop_decided: mpsc::Receiver<bool>,
    stop_tx: mpsc::Sender<bool>,
    reconcile: tokio::time::Interval,
    checks: mpsc::Receiver<CheckReport>,
    reloads: mpsc::Receiver<()>,
}

/// The loop proper, with injected parts; returns when the core says the stop is complete.
pub async fn run_with(parts: Parts, stops: mpsc::Receiver<StopRequest>) {
    let Parts {
        settings,
        config_path,
        reloads,
        cloud,
        net,
        peer,
        control,
        metrics,
        instance_id,
    } = parts;
    let (done_tx, done) = mpsc::unbounded_channel();
    let (net_tx, net_rx) = mpsc::unbounded_channel();
    tokio::spawn(net_worker::run(net.clone(), net_rx, done_tx.clone()));
    let (cloud_tx, cloud_rx) = mpsc::unbounded_channel();
    tokio::spawn(cloud_worker::run(
        cloud,
        net.clone(),
        cloud_rx,
        done_tx.clone(),
    ));
    let (hooks, hook_reports) = HookRunner::spawn(settings.hooks.clone());
    let startup::ControlEnds {
        requests: ctl_rx,
        requests_tx: ctl_tx,
        stop: ctl_stop_tx,
        task: control_task,
    } = control;
    let scrape = scrape::Scrape::start(metrics, ctl_tx);
    let (stop_tx, stop_decided) = mpsc::channel::<bool>(1);
    let mut reconcile = tokio::time::interval(settings.network.reconcile_interval);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (checks_tx, checks_rx) = mpsc::channel::<CheckReport>(64);
    let checks = start_checks(&settings, checks_tx);
    let mut inbox = Inbox {
        reloads,
        checks: checks_rx,
        done,
        control: ctl_rx,
        hooks: hook_reports,
        stops,
        stop_decided,
        stop_tx,
        reconcile,
    };
    let workers = Workers {
        net,
        net_tx,
        cloud_tx,
        done_tx,
    };
    let mut d = Daemon::new(settings, instance_id, peer, hooks, workers);
    d.checks = checks;
    d.config_path = config_path;
    d.scrape = Some(scrape);
    d.serve(&mut inbox).await;
    // Let the stop hooks run (bounded), then close the control socket.
    drop(d.hooks);
    let _ = tokio::time::timeout(d.settings.hooks.timeout + Duration::from_secs(3), async {
        while inbox.hooks.recv().await.is_some() {}
    })
    .await;
    if let Some(s) = d.scrape.as_mut() {
        s.stop();
    }
    let _ = ctl_stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), control_task).await;
    info!("enipeer stopped");
}

/// The service checks' supervisor, when any checks are configured.
fn start_checks(settings: &Settings, reports: mpsc::Sender<CheckReport>) -> Option<Supervisor> {
    (!settings.checks.is_empty()).then(|| {
        let bind = settings.heartbeat.bind.ip();
        // The corroborating probe leaves from the heartbeat address, the node's primary one.
        let primary = (!bind.is_unspecified()).then_some(bind);
        Supervisor::new(
            &settings.checks,
            primary,
            settings.heartbeat.interval,
            reports,
        )
    })
}

pub fn core_config(settings: &Settings, instance_id: &InstanceId) -> CoreConfig {
    CoreConfig {
        name: settings.node.name.clone(),
        priority: settings.node.priority,
        instance_id: instance_id.clone(),
        peers: settings
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.instance_id.clone()))
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
        corroborate_fall: Supervisor::corroborate_fall(&settings.checks),
        maintenance: maintenance::load(&settings.node.state_dir),
    }
}

/// The loop's ends of the workers: where jobs go and where results come back.
struct Workers {
    net: Arc<dyn HostNet>,
    net_tx: mpsc::UnboundedSender<NetJob>,
    cloud_tx: mpsc::UnboundedSender<CloudJob>,
    done_tx: mpsc::UnboundedSender<Done>,
}

impl Daemon {
    fn new(
        settings: Settings,
        instance_id: InstanceId,
        peer: PeerLink,
        hooks: HookHandle,
        workers: Workers,
    ) -> Daemon {
        let node = Node::new(core_config(&settings, &instance_id), Duration::ZERO);
        let watchdog = signals::Watchdog::from_env(settings.heartbeat.interval);
        Daemon {
            settings,
            node,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            net: workers.net,
            net_tx: workers.net_tx,
            cloud_tx: workers.cloud_tx,
            watch: None,
            coexistence_checked: false,
            done_tx: workers.done_tx,
            hooks,
            peer,
            instance_id,
            eni: None,
            applied: None,
            leftovers: Vec::new(),
            ipv6_problem: None,
            plan_waiting: Vec::new(),
            describing: false,
            pending_yields: HashMap::new(),
            next_token: 1,
            timeline: Recorder::default(),
            exit: false,
            checks: None,
            config_path: None,
            scrape: None,
            watchdog,
            deadline: None,
            early_hook: early_hook_seam(),
        }
    }

    /// Starts the core, then feeds it until it says the stop is complete (or the stop overruns).
    async fn serve(&mut self, inbox: &mut Inbox) {
        info!(
            node = %self.settings.node.name,
            instance = %self.instance_id,
            eni = %self.settings.group.eni,
            heartbeat = ?self.peer.local_addr(),
            "enipeer started"
        );
        signals::notify(&[NotifyState::Ready, NotifyState::Status("starting")]);
        self.deadline = timer::Deadline::new()
            .map_err(
                |e| tracing::debug!(error = %e, "no timerfd; the loop sleeps on tokio's timer"),
            )
            .ok();
        let actions = self.node.start(Duration::ZERO);
        self.execute(actions).await;
        let mut stop_deadline: Option<Instant> = None;
        while !self.exit {
            let wake = self.started + self.node.next_wakeup(self.now());
            let woke = self.wait(inbox, wake, stop_deadline).await;
            // A wake-up far past the planned one means this process did not run meanwhile:
            // deal with that before the event, which may be the very timer that would judge
            // the peers dead.
            if let Some(gap) = health::stalled(wake, self.settings.heartbeat.interval) {
                self.on_stall(gap).await;
            }
            match woke {
                Wake::Tick => {
                    self.watchdog.tick(Instant::now());
                    self.feed(Event::Tick).await;
                }
                Wake::Peer(r) => self.on_received(r).await,
                Wake::Done(done) => self.on_done(done).await,
                Wake::Control(inc) => self.on_control(inc).await,
                Wake::Hooks(report) => self.on_hooks(report),
                Wake::Check(report) => self.on_check(report).await,
                Wake::Reload => self.reload().await,
                Wake::Reconcile => self.reconcile().await,
                Wake::Stop(stop) => {
                    signals::decide_stop(stop, self.settings.stop.mode, inbox.stop_tx.clone());
                    signals::notify(&[NotifyState::Stopping]);
                    // Bound the stop: a handover that hangs must not keep the host from going
                    // down.
                    stop_deadline = Some(
                        Instant::now()
                            + self.settings.stop.handover_timeout
                            + Duration::from_secs(4),
                    );
                }
                Wake::StopDecided(handover) => {
                    info!(handover, "stop requested");
                    self.feed(Event::Stop { handover }).await;
                }
                Wake::HardStop => {
                    warn!("stop did not complete in time; exiting anyway");
                    return;
                }
            }
        }
    }

    /// Waits for the next thing to do.
    async fn wait(&mut self, inbox: &mut Inbox, wake: Instant, stopping: Option<Instant>) -> Wake {
        let hard_stop = stopping.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = timer::sleep_until(self.deadline.as_ref(), wake) => Wake::Tick,
            r = self.peer.recv() => Wake::Peer(r),
            Some(done) = inbox.done.recv() => Wake::Done(done),
            Some(inc) = inbox.control.recv() => Wake::Control(inc),
            Some(report) = inbox.hooks.recv() => Wake::Hooks(report),
            Some(report) = inbox.checks.recv() => Wake::Check(report),
            Some(()) = inbox.reloads.recv() => Wake::Reload,
            _ = inbox.reconcile.tick() => Wake::Reconcile,
            stop = inbox.stops.recv(), if stopping.is_none() => Wake::Stop(stop),
            Some(handover) = inbox.stop_decided.recv() => Wake::StopDecided(handover),
            _ = tokio::time::sleep_until(hard_stop), if stopping.is_some() => Wake::HardStop,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn feed(&mut self, event: Event) {
        let now = self.now();
        let actions = self.node.handle(event, now);
        self.execute(actions).await;
    }

    async fn execute(&mut self, actions: Vec<crate::core::Action>) {
        for action in actions {
            self.act(action).await;
        }
    }

    /// Hands a result to the loop, to be fed to the core in turn. The loop holds the receiver
    /// for as long as this daemon lives, so the send cannot fail while it matters.
    fn report_back(&self, done: Done) {
        let _ = self.done_tx.send(done);
    }
}
