//! Operator hooks: the commands configured in `[hooks]`, run as child processes on transitions.
//!
//! Owns the queue of transitions, the running of each command (no shell, a timeout with
//! SIGTERM then SIGKILL, output tails captured and logged, the child always reaped), and the
//! [`HookReport`] sent back once all commands of a transition are done. Callers only enqueue
//! through [`HookHandle::run`]; a slow or hanging hook never blocks the daemon.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::HookSettings;

/// Bytes of stdout and of stderr kept per command (the end, where the error usually is).
pub const OUTPUT_TAIL: usize = 4096;
/// Between SIGTERM and SIGKILL for a hook that ran past its timeout.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// After a hook exits, how long its output pipes may stay open: a descendant it left running in
/// the background can hold them forever, and must not stall the queue.
const PIPE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    Master,
    Backup,
    Fault,
    Stop,
    /// Not a role change: something the operator should hear about (`ENIPEER_EVENT`).
    Event,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Master => "master",
            Transition::Backup => "backup",
            Transition::Fault => "fault",
            Transition::Stop => "stop",
            Transition::Event => "event",
        }
    }

    fn commands(self, settings: &HookSettings) -> &[Vec<String>] {
        match self {
            Transition::Master => &settings.on_master,
            Transition::Backup => &settings.on_backup,
            Transition::Fault => &settings.on_fault,
            Transition::Stop => &settings.on_stop,
            Transition::Event => &settings.on_event,
        }
    }
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a hook learns about the transition, through `ENIPEER_*` environment variables.
#[derive(Debug, Clone, PartialEq)]
pub struct HookEnv {
    pub node: String,
    pub role: String,
    pub reason: String,
    pub eni: String,
    /// The ENI's interface name on this host, when known (not while backup, for instance).
    pub interface: Option<String>,
    pub addresses: Vec<Ipv4Addr>,
    /// The ENI's IPv6 addresses (`ENIPEER_ADDRESSES_V6`, empty for an IPv4-only ENI).
    pub addresses_v6: Vec<Ipv6Addr>,
    /// For [`Transition::Event`]: the event's name and details (`ENIPEER_EVENT`,
    /// `ENIPEER_EVENT_<KEY>`).
    pub event: Option<(String, Vec<(String, String)>)>,
}

impl HookEnv {
    /// The variables passed to every command of `transition`, added to the daemon's environment.
    pub fn vars(&self, transition: Transition) -> Vec<(String, String)> {
        let addresses: Vec<String> = self.addresses.iter().map(|a| a.to_string()).collect();
        let addresses_v6: Vec<String> = self.addresses_v6.iter().map(|a| a.to_string()).collect();
        let mut vars: Vec<(String, String)> = [
            ("ENIPEER_TRANSITION", transition.as_str().to_string()),
            ("ENIPEER_NODE", self.node.clone()),
            ("ENIPEER_ROLE", self.role.clone()),
            ("ENIPEER_REASON", self.reason.clone()),
            ("ENIPEER_ENI", self.eni.clone()),
            (
                "ENIPEER_INTERFACE",
                self.interface.clone().unwrap_or_default(),
            ),
            ("ENIPEER_ADDRESSES", addresses.join(" ")),
            ("ENIPEER_ADDRESSES_V6", addresses_v6.join(" ")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some((name, details)) = &self.event {
            vars.push(("ENIPEER_EVENT".into(), name.clone()));
            for (k, v) in details {
                let key = k.to_ascii_uppercase().replace('-', "_");
                vars.push((format!("ENIPEER_EVENT_{key}"), v.clone()));
            }
        }
        vars
    }
}

/// How one command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// Ran past `hooks.timeout` and was killed.
    TimedOut,
    /// Could not be started (not found, not executable, empty argv...).
    FailedToStart {
        error: String,
    },
    /// Started, but waiting for it failed; it was killed.
    WaitFailed {
        error: String,
    },
}

impl HookOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, HookOutcome::Exited { code: 0 })
    }
}

impl std::fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookOutcome::Exited { code } => write!(f, "exit status {code}"),
            HookOutcome::Signaled { signal } => match Signal::try_from(*signal) {
                Ok(s) => write!(f, "killed by {s}"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            HookOutcome::TimedOut => f.write_str("timed out"),
            HookOutcome::FailedToStart { error } => write!(f, "failed to start: {error}"),
            HookOutcome::WaitFailed { error } => write!(f, "wait failed: {error}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HookResult {
    pub argv: Vec<String>,
    pub outcome: HookOutcome,
    pub duration: Duration,
}

/// Sent once every command of one queued transition has finished, in queue order.
#[derive(Debug, Clone)]
pub struct HookReport {
    pub transition: Transition,
    pub results: Vec<HookResult>,
    pub finished_at: Instant,
}

/// Where transitions are queued; cheap to clone.
#[derive(Debug, Clone)]
pub struct HookHandle {
    queue: mpsc::UnboundedSender<(Transition, HookEnv)>,
    settings: Arc<Mutex<HookSettings>>,
}

impl HookHandle {
    /// A reload changed the hooks: transitions queued from now on run the new commands.
    pub fn update(&self, settings: HookSettings) {
        if let Ok(mut s) = self.settings.lock() {
            *s = settings;
        }
    }

    /// Queues the hooks of `transition`; returns at once. Never fails: hooks are the operator's
    /// business and must not stop a failover, so a missing runner is only logged.
    pub fn run(&self, transition: Transition, env: HookEnv) {
        if self.queue.send((transition, env)).is_err() {
            error!(
                transition = transition.as_str(),
                "hook runner is gone; hooks for this transition are not run"
            );
        }
    }
}

/// The background task that runs hooks one at a time.
#[derive(Debug)]
pub struct HookRunner {
    /// Shared with the handles, so that a reload reaches the runner.
    settings: Arc<Mutex<HookSettings>>,
    queue: mpsc::UnboundedReceiver<(Transition, HookEnv)>,
    reports: mpsc::UnboundedSender<HookReport>,
}

impl HookRunner {
    /// Starts the runner on the current tokio runtime. It stops once every [`HookHandle`] is
    /// dropped and the queue is drained; the report channel then closes, which is how the daemon
    /// knows the `stop` hooks are done at shutdown.
    ///
    /// The queue is unbounded because transitions are rare and `run` must never block or drop:
    /// a lost `master` hook is worse than a few queued ones.
    pub fn spawn(settings: HookSettings) -> (HookHandle, mpsc::UnboundedReceiver<HookReport>) {
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let settings = Arc::new(Mutex::new(settings));
        let runner = HookRunner {
            settings: Arc::clone(&settings),
            queue: queue_rx,
            reports: report_tx,
        };
        tokio::spawn(runner.work());
        let handle = HookHandle {
            queue: queue_tx,
            settings,
        };
        (handle, report_rx)
    }

    async fn work(mut self) {
        // Every queued transition runs, even when a newer one is already waiting behind it: the
        // operator's hooks may be paired (a `master` hook adds a route that the `backup` hook
        // removes), and skipping one half would leave the host in a state nobody asked for.
        // Running them in order also keeps the logs telling the story as it happened.
        let mut limit = EventLimit::default();
        while let Some((transition, env)) = self.queue.recv().await {
            if transition == Transition::Event && !limit.allow(Instant::now()) {
                continue;
            }
            let vars = env.vars(transition);
            let settings = match self.settings.lock() {
                Ok(s) => s.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            let mut results = Vec::new();
            for argv in transition.commands(&settings) {
                let result = run_command(argv, &vars, settings.timeout).await;
                results.push(result);
            }
            let report = HookReport {
                transition,
                results,
                finished_at: Instant::now(),
            };
            // Nobody listening for reports is fine: the results have been logged already.
            let _ = self.reports.send(report);
        }
    }
}

/// At most [`EVENTS_PER_MINUTE`] on-event runs a minute: a flapping peer must not fork-bomb the
/// host. What is dropped is counted and said once the window is over.
const EVENTS_PER_MINUTE: u32 = 10;

#[derive(Debug, Default)]
struct EventLimit {
    window_start: Option<Instant>,
    used: u32,
    dropped: u32,
}

impl EventLimit {
    fn allow(&mut self, now: Instant) -> bool {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= Duration::from_secs(60) {
            if self.dropped > 0 {
                warn!(
                    dropped = self.dropped,
                    "on-event hooks were rate-limited ({EVENTS_PER_MINUTE} a minute); the events \
                     are still in this log"
                );
            }
            *self = EventLimit {
                window_start: Some(now),
                ..EventLimit::default()
            };
        }
        if self.used < EVENTS_PER_MINUTE {
            self.used += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// The last [`OUTPUT_TAIL`] bytes of a stream.
#[derive(Debug, Default)]
struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
        let excess = self.bytes.len().saturating_sub(OUTPUT_TAIL);
        self.bytes.drain(..excess);
    }

    fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut all = Vec::with_capacity(a.len() + b.len());
        all.extend_from_slice(a);
        all.extend_from_slice(b);
        String::from_utf8_lossy(&all).trim_end().to_string()
    }
}

async fn drain<R: AsyncRead + Unpin>(pipe: Option<R>, tail: &mut Tail) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => tail.push(&buf[..n]),
        }
    }
}

async fn run_command(argv: &[String], vars: &[(String, String)], timeout: Duration) -> HookResult {
    let started = Instant::now();
    let (outcome, stdout, stderr) = execute(argv, vars, timeout).await;
    let result = HookResult {
        argv: argv.to_vec(),
        outcome,
        duration: started.elapsed(),
    };
    let transition = vars
        .iter()
        .find(|(k, _)| k == "ENIPEER_TRANSITION")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let duration_ms = result.duration.as_millis() as u64;
    if result.outcome.is_success() {
        info!(
            transition,
            argv = ?result.argv,
            duration_ms,
            stdout = %stdout.text(),
            stderr = %stderr.text(),
            "hook succeeded"
        );
    } else {
        warn!(
            transition,
            argv = ?result.argv,
            duration_ms,
            outcome = %result.outcome,
            stderr = %stderr.text(),
            "hook failed"
        );
    }
    result
}

async fn execute(
    argv: &[String],
    vars: &[(String, String)],
    timeout: Duration,
) -> (HookOutcome, Tail, Tail) {
    let mut stdout = Tail::default();
    let mut stderr = Tail::default();
    let Some((program, args)) = argv.split_first() else {
        let outcome = HookOutcome::FailedToStart {
            error: "empty command".into(),
        };
        return (outcome, stdout, stderr);
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // systemd's notification and watchdog variables are for the daemon alone: a hook that
        // called sd_notify would otherwise speak for it (READY=1, STOPPING=1, WATCHDOG=1).
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout also reaches what the hook started (a shell's
        // children), and a Ctrl-C on the daemon's terminal is left for the daemon to handle.
        .process_group(0)
        // If the runner task itself is dropped (runtime shutdown), the hook dies with it.
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let outcome = HookOutcome::FailedToStart {
                error: e.to_string(),
            };
            return (outcome, stdout, stderr);
        }
    };
    let out_pipe = child.stdout.take();
    let err_pipe = child.stderr.take();
    let outcome = {
        let out = drain(out_pipe, &mut stdout);
        let err = drain(err_pipe, &mut stderr);
        crate::process::while_draining(supervise(&mut child, timeout), out, err, PIPE_GRACE).await
    };
    (outcome, stdout, stderr)
}

/// Waits for the child within `timeout`; past it, terminates the hook's process group. Returns
/// only once the child has been reaped, so no zombie is left behind.
async fn supervise(child: &mut Child, timeout: Duration) -> HookOutcome {
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => outcome_of(status),
        Ok(Err(e)) => {
            terminate(child).await;
            HookOutcome::WaitFailed {
                error: e.to_string(),
            }
        }
        Err(_) => {
            terminate(child).await;
            HookOutcome::TimedOut
        }
    }
}

async fn terminate(child: &mut Child) {
    // `id()` is None once the child has been reaped; then there is nothing left to signal, and
    // the pid (also the group id) may belong to someone else already.
    let Some(pid) = child.id() else { return };
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_ok() {
        return;
    }
    let _ = killpg(group, Signal::SIGKILL);
    // SIGKILL cannot be caught, so this returns promptly; if even wait() fails there is nothing
    // more we can do than what kill_on_drop does.
    let _ = child.wait().await;
}

fn outcome_of(status: ExitStatus) -> HookOutcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => HookOutcome::Exited { code },
        (None, Some(signal)) => HookOutcome::Signaled { signal },
        // Neither exit code nor signal does not happen for a reaped child on Unix.
        (None, None) => HookOutcome::WaitFailed {
            error: format!("unexpected status {status}"),
        },
    }
}

#[cfg(test)]
mod tests;
