//! Stop signals, the decision whether a stop hands over, and systemd notification.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::error;

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

/// Tells systemd about readiness and status when run as a `Type=notify` service. Without
/// `NOTIFY_SOCKET` (not under systemd) it does nothing.
pub(super) fn sd_notify(msg: &str) {
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
