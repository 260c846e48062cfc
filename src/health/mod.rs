//! Service health checks: the only place that probes the service (`[[check]]`, see
//! [`crate::config::CheckSettings`]).
//!
//! Each check runs in its own tokio task ([`spawn`]), off the daemon's event loop, so a slow or
//! hanging service never delays a heartbeat. The task probes once per interval (every probe
//! bounded by the check's timeout, which is shorter than the interval), feeds the outcome to a
//! rise/fall [`Health`] debounce and sends a [`CheckReport`] per probe over an mpsc channel:
//! the outcome, the debounced state and the change, if this probe caused one.
//!
//! Where to probe is decided by the caller at run time ([`ProbeTarget`]): a check's default
//! host is the ENI's primary private address, which only the cloud knows, and the same check
//! definition also serves the backup's corroborating probe *through* the ENI (to the ENI's
//! private address, from the node's own primary address as the source).
//!
//! Probes: http ([`http`]: a bounded HTTP/1.1 GET), tcp (a connect), exec ([`exec`]: argv
//! without a shell, killed on timeout, without `NOTIFY_SOCKET`). [`Health`] is pure.

mod debounce;
mod exec;
mod http;
mod supervisor;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

pub use debounce::{Change, Health, HealthState};
pub use exec::OUTPUT_CAP;
pub use http::MAX_RESPONSE;
pub use supervisor::{CheckView, Supervisor, Verdict};

use crate::config::{CheckHost, CheckSettings, ProbeSpec, StatusRange};

/// Where a check's probes go, decided at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The address http and tcp probes connect to. Exec probes get it as
    /// `ENIPEER_CHECK_ADDRESS`, so a script can probe the same address.
    pub ip: IpAddr,
    /// Local address to connect from; `None` lets the kernel choose. The through-ENI probe sets
    /// the node's own primary address, so the probe takes the path clients take.
    pub source: Option<IpAddr>,
}

impl ProbeTarget {
    /// The check's own target: its `host` when given, otherwise the ENI's address.
    pub fn of_check(check: &CheckSettings, eni_address: IpAddr) -> Self {
        let ip = match check.probe.host() {
            Some(CheckHost::Ip(ip)) => ip,
            Some(CheckHost::EniAddress) | None => eni_address,
        };
        Self { ip, source: None }
    }

    /// The corroborating probe: the ENI's address from this node's primary address, whatever
    /// `host` the check names (a loopback host would not say whether clients are served).
    pub fn through_eni(eni_address: IpAddr, primary_address: IpAddr) -> Self {
        Self {
            ip: eni_address,
            source: Some(primary_address),
        }
    }
}

/// A probe that passed, with what it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    Http { status: u16 },
    Connected,
    Exited,
}

/// Why a probe failed. Every variant is the service's (or the path's) fault, never a bug: a
/// failed probe is an ordinary outcome, logged and counted, never an error of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("connection to {addr} refused")]
    Refused { addr: SocketAddr },
    #[error("no answer within {}", humantime::format_duration(*timeout))]
    TimedOut { timeout: Duration },
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: SocketAddr, error: String },
    #[error("cannot use source address {local}: {error}")]
    Bind { local: IpAddr, error: String },
    #[error("{stage}: {error}")]
    Io { stage: &'static str, error: String },
    #[error("{reason}")]
    Malformed { reason: String },
    #[error("status {got}, expected {want}")]
    Status { got: u16, want: StatusRange },
    #[error("{needle:?} not found in the {read}-byte body{}", if *truncated { " (read up to the 64 KiB limit)" } else { "" })]
    BodyMissing {
        needle: String,
        read: usize,
        truncated: bool,
    },
    #[error("cannot start the command: {error}")]
    Spawn { error: String },
    #[error("exited with status {code}{}", if output.is_empty() { String::new() } else { format!(": {output}") })]
    Exit { code: i32, output: String },
    #[error("killed by signal {signal}")]
    Signaled { signal: i32 },
    #[error("waiting for the command failed: {error}")]
    Wait { error: String },
}

impl ProbeError {
    /// Short machine label for logs, `role --json` and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::Refused { .. } => "refused",
            ProbeError::TimedOut { .. } => "timeout",
            ProbeError::Connect { .. } => "connect",
            ProbeError::Bind { .. } => "bind",
            ProbeError::Io { .. } => "io",
            ProbeError::Malformed { .. } => "malformed",
            ProbeError::Status { .. } => "status",
            ProbeError::BodyMissing { .. } => "body",
            ProbeError::Spawn { .. } => "spawn",
            ProbeError::Exit { .. } => "exit",
            ProbeError::Signaled { .. } => "signal",
            ProbeError::Wait { .. } => "wait",
        }
    }
}

/// One probe's outcome, as sent by the runner.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// The caller's label given to [`spawn`] (e.g. the index in `Settings::checks`, offset for
    /// the through-ENI runners), echoed so one channel can serve many runners.
    pub id: usize,
    pub name: Arc<str>,
    pub target: ProbeTarget,
    pub result: Result<Passed, ProbeError>,
    /// When the probe started and how long it took.
    pub started: Instant,
    pub duration: Duration,
    /// The debounced state after this probe.
    pub state: HealthState,
    /// Set when this probe changed the debounced state.
    pub change: Option<Change>,
}

/// Runs one probe of `check` against `target`, bounded by the check's timeout.
pub async fn probe_once(check: &CheckSettings, target: &ProbeTarget) -> Result<Passed, ProbeError> {
    let timeout = check.timeout;
    match &check.probe {
        ProbeSpec::Http(h) => within(timeout, http::http(h, target)).await,
        ProbeSpec::Tcp(t) => within(timeout, http::tcp(t, target)).await,
        // Exec keeps its own deadline: on timeout it must kill and reap the program.
        ProbeSpec::Exec(e) => exec::exec(e, &check.name, Some(target), timeout).await,
    }
}

async fn within(
    timeout: Duration,
    probe: impl std::future::Future<Output = Result<Passed, ProbeError>>,
) -> Result<Passed, ProbeError> {
    tokio::time::timeout(timeout, probe)
        .await
        .unwrap_or(Err(ProbeError::TimedOut { timeout }))
}

/// A running check. Dropping it stops the task (and kills an exec probe in flight).
#[derive(Debug)]
pub struct CheckHandle {
    probe_now: Arc<Notify>,
    task: JoinHandle<()>,
}

impl CheckHandle {
    /// Starts the next probe at once instead of at the next interval, e.g. the moment
    /// heartbeats go silent; the interval then counts from this probe. A request made while a
    /// probe runs starts one more right after it.
    pub fn probe_now(&self) {
        self.probe_now.notify_one();
    }

    /// True once the task has ended (its report channel was closed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for CheckHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts probing `check` against `target`: the first probe at once, then one per interval.
/// Each probe's [`CheckReport`] goes to `reports`; the task ends when the receiver is dropped
/// or the handle is. Must be called within a tokio runtime.
pub fn spawn(
    id: usize,
    check: CheckSettings,
    target: ProbeTarget,
    reports: mpsc::Sender<CheckReport>,
) -> CheckHandle {
    let probe_now = Arc::new(Notify::new());
    let task = tokio::spawn(run(id, check, target, reports, Arc::clone(&probe_now)));
    CheckHandle { probe_now, task }
}

async fn run(
    id: usize,
    check: CheckSettings,
    target: ProbeTarget,
    reports: mpsc::Sender<CheckReport>,
    probe_now: Arc<Notify>,
) {
    let name: Arc<str> = Arc::from(check.name.as_str());
    let mut health = Health::new(check.rise, check.fall);
    let mut ticker = tokio::time::interval(check.interval);
    // A late probe (a slow report consumer) shifts the schedule instead of bursting to catch up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = probe_now.notified() => ticker.reset(),
        }
        let started = Instant::now();
        let result = probe_once(&check, &target).await;
        let duration = started.elapsed();
        let change = health.record(result.is_ok());
        log(&name, &target, &result, change, &health);
        let report = CheckReport {
            id,
            name: Arc::clone(&name),
            target,
            result,
            started,
            duration,
            state: health.state(),
            change,
        };
        if reports.send(report).await.is_err() {
            debug!(check = %name, "check report receiver gone; check stops");
            return;
        }
    }
}

fn log(
    name: &str,
    target: &ProbeTarget,
    result: &Result<Passed, ProbeError>,
    change: Option<Change>,
    health: &Health,
) {
    let source = target.source.map(|s| s.to_string());
    match (change, result) {
        (Some(c), Ok(_)) => info!(
            check = name,
            target = %target.ip,
            source = source.as_deref().unwrap_or("auto"),
            from = %c.from,
            to = %c.to,
            passes = health.passes(),
            "check healthy"
        ),
        (Some(c), Err(e)) => warn!(
            check = name,
            target = %target.ip,
            source = source.as_deref().unwrap_or("auto"),
            from = %c.from,
            to = %c.to,
            fails = health.fails(),
            kind = e.kind(),
            error = %e,
            "check failed"
        ),
        (None, Err(e)) => debug!(check = name, kind = e.kind(), error = %e, "probe failed"),
        (None, Ok(_)) => {}
    }
}
