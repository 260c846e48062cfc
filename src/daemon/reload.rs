//! SIGHUP: re-read the config file, validate it as `enipeer check` does, and apply what can
//! change live (timings, priority, preempt, hold-down, stop behaviour, hooks, the log level, the
//! metrics endpoint, and the keys, which are re-read for a rotation). An invalid file, one that
//! changes what cannot change live, or a new metrics address that cannot be bound, is refused
//! whole with the same messages, and the daemon runs on as before. No role changes.

use std::path::Path;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::{core_config, Daemon, DaemonError};
use crate::config::{self, Settings};

/// SIGHUP, as a stream of reload requests (without a handler SIGHUP would end the daemon, and
/// systemd would count that as a clean exit).
pub fn reload_signals() -> Result<mpsc::Receiver<()>, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // A reload already queued covers this one too.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}

impl Daemon {
    pub(super) async fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            return error!("reload requested, but this daemon was not started from a file");
        };
        let Some((new, changed)) = self.reloaded_settings(&path) else {
            return;
        };
        // First, as it is the one part that can still fail: bound before anything changes.
        if new.metrics.listen != self.settings.metrics.listen {
            if let Some(scrape) = self.scrape.as_mut() {
                if let Err(e) = scrape.rebind(new.metrics.listen).await {
                    return error!(
                        key = "metrics.listen",
                        listen = ?new.metrics.listen,
                        error = %e,
                        "reload refused, still running on the previous config: cannot listen \
                         there (metrics.listen); free the port or choose another"
                    );
                }
            }
        }
        info!(file = %path.display(), changed = ?changed, "config reloaded");
        if new.log.level != self.settings.log.level {
            set_log_level(&new.log.level);
        }
        self.apply(new).await;
    }

    /// The new settings and the keys that change, or `None` after logging why they are refused.
    fn reloaded_settings(&self, path: &Path) -> Option<(Settings, Vec<&'static str>)> {
        let new = match config::load(path) {
            Ok(s) => s,
            Err(e) => {
                error!(
                    file = %path.display(),
                    "reload refused, still running on the previous config:\n{e}"
                );
                return None;
            }
        };
        match config::live_changes(&self.settings, &new) {
            Ok(changed) => Some((new, changed)),
            Err(refused) => {
                for p in &refused {
                    error!(key = %p.key, "reload refused: {}: {}", p.key, p.message);
                }
                None
            }
        }
    }

    /// Everything but the metrics endpoint and the log level, which [`Daemon::reload`] moved.
    async fn apply(&mut self, new: Settings) {
        match config::keyfile::read_keys(&new.auth) {
            Ok(keys) => self.peer.set_keys(keys),
            Err(e) => {
                // The rest applies; the keys in use stay (a node that cannot read its key file
                // must not stop authenticating).
                error!(error = %e, "reload: cannot read the key files; keeping the keys in use")
            }
        }
        self.hooks.update(new.hooks.clone());
        self.settings = new;
        let cfg = core_config(&self.settings, &self.instance_id);
        let actions = self.node.reconfigure(cfg, self.now());
        self.execute(actions).await;
    }
}

fn set_log_level(level: &str) {
    use crate::logging::{set_level, LevelError};
    match set_level(level) {
        Ok(()) => info!(level, "log level changed (log.level)"),
        Err(e @ LevelError::Overridden) => warn!(level, "log.level not applied: {e}"),
        Err(e) => error!(level, kind = e.kind(), "log.level not applied: {e}"),
    }
}
