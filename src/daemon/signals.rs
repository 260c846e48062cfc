//! Stop signals, the decision whether a stop hands over, and systemd notification.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::StopMode;

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

/// Decides in a task whether this stop hands over, and sends the answer on `tx`. Asking systemd
/// can take a while on a busy host; the loop keeps heartbeating meanwhile, or the peer would take
/// a silent master for dead. `None` (the signal stream ended) is a stop that holds.
pub(super) fn decide_stop(stop: Option<StopRequest>, mode: StopMode, tx: mpsc::Sender<bool>) {
    tokio::spawn(async move {
        let handover = match (stop, mode) {
            (None, _) | (_, StopMode::Hold) => false,
            (_, StopMode::Handover) => true,
            (_, StopMode::Auto) => host_is_shutting_down().await,
        };
        let _ = tx.send(handover).await;
    });
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

/// Tells systemd about readiness, status and stopping when run as a `Type=notify` service.
/// Without `NOTIFY_SOCKET` (not under systemd) it does nothing.
///
/// The datagram goes out from a thread of its own: `sd_notify` writes to a blocking socket, and a
/// receiver that does not read (a wedged manager, a test's socket) would otherwise block the
/// event loop, and with it the heartbeats. A full queue drops the message rather than wait.
pub(super) fn notify(state: &[NotifyState]) {
    let line = state
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    if notifier().try_send(line).is_err() {
        debug!("systemd notification dropped: the notifier is busy");
    }
}

fn notifier() -> &'static std::sync::mpsc::SyncSender<String> {
    static TX: std::sync::OnceLock<std::sync::mpsc::SyncSender<String>> =
        std::sync::OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(16);
        std::thread::spawn(move || {
            while let Ok(line) = rx.recv() {
                let custom = [NotifyState::Custom(&line)];
                if let Err(e) = sd_notify::notify(&custom) {
                    error!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
                }
            }
        });
        tx
    })
}

/// The systemd watchdog as the loop sees it: `WATCHDOG=1` at most every half `WatchdogSec=`,
/// sent from the loop itself when it handles a timer tick, so a loop that stops turning (a
/// deadlock, an await that never returns) stops the pets and systemd restarts the daemon.
#[derive(Debug)]
pub(super) struct Watchdog {
    /// Half the watchdog timeout; `None` when systemd asked for no watchdog.
    every: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be this process) once, at start.
    pub(super) fn from_env(heartbeat: Duration) -> Watchdog {
        let every = sd_notify::watchdog_enabled().map(|timeout| timeout / 2);
        if let Some(every) = every {
            info!(
                every_ms = every.as_millis() as u64,
                "systemd watchdog enabled"
            );
            if every < heartbeat {
                warn!(
                    "WatchdogSec= is shorter than 2 x heartbeat.interval: the loop ticks once a \
                     heartbeat, so systemd may kill a healthy daemon. Raise WatchdogSec="
                );
            }
        }
        Watchdog { every, last: None }
    }

    /// Called on every tick of the loop: pets the watchdog when half its timeout has passed.
    pub(super) fn tick(&mut self, now: Instant) {
        let Some(every) = self.every else {
            return;
        };
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) < every)
        {
            return;
        }
        self.last = Some(now);
        notify(&[NotifyState::Watchdog]);
    }
}
